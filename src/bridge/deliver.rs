//! Sending as the bot: message bodies from an agent's request (mentions, splitting), the outbox entry
//! (committed with its audit event), and how it ended.

use std::time::Duration;

use serde_json::Value;

use super::{Error, Hub, Result};
use crate::config::BotConfig;
use crate::connector::send::message;
use crate::store::{ConversationRef, NewOutbound, OutboundOp, OutboxState, now_ms};

/// An @mention the agent asked for: the person's id and the name shown in `<at>name</at>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub user_id: String,
    pub name: String,
}

/// How an outbox entry ended, as far as a caller waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Delivered; the Connector's message id.
    Delivered(String),
    /// Refused for good; why.
    Dead(String),
    /// The request failed in a way that may have delivered it; it is not re-sent.
    Uncertain,
    /// Still being retried after the wait: attempts so far and the last error.
    Queued(i64, Option<String>),
    /// The entry's state could not be read.
    Unreadable(String),
}

impl Settled {
    /// Whether the Connector's refusal means the bot cannot reach the person (not installed for them,
    /// blocked, no such conversation), as opposed to a bad request that Graph would refuse too.
    pub fn bot_cannot_reach(&self) -> bool {
        let Self::Dead(error) = self else { return false };
        [
            "refused the request: 403",
            "refused the request: 404",
            "MessageWritesBlocked",
            "ConversationNotFound",
            "BotNotInConversationRoster",
        ]
        .iter()
        .any(|m| error.contains(m))
    }
}

/// The mention entities for `text`: each mention needs an id and a name, and its `<at>` tag in the text.
pub fn mention_entities(text: &str, mentions: &[Mention]) -> Result<Vec<Value>> {
    mentions
        .iter()
        .map(|m| {
            if m.user_id.trim().is_empty() || m.name.trim().is_empty() {
                return Err(Error::invalid("each mention needs a user_id and a name"));
            }
            let (tag, entity) = crate::teams::mention(&m.user_id, &m.name);
            if !text.contains(&tag) {
                return Err(Error::invalid(format!("the text does not contain {tag}: put it where the mention belongs")));
            }
            Ok(entity)
        })
        .collect()
}

/// The message activities that carry `text`: one, or several when it is longer than a Teams message
/// (split losslessly). A message with mentions must fit in one.
pub fn text_messages(text: &str, entities: &[Value]) -> Result<Vec<Value>> {
    if text.trim().is_empty() {
        return Err(Error::invalid("text is empty"));
    }
    let parts = if crate::teams::utf16_len(text) > crate::teams::MAX_TEXT_UTF16 {
        if !entities.is_empty() {
            return Err(Error::invalid(format!(
                "a message with mentions must fit in one Teams message ({} UTF-16 units); shorten it or send the rest separately",
                crate::teams::MAX_TEXT_UTF16
            )));
        }
        crate::teams::split_text(text, crate::teams::MAX_TEXT_UTF16)
    } else {
        vec![text.to_owned()]
    };
    Ok(parts
        .iter()
        .map(|part| {
            let mut activity = message(Some(part), None);
            if !entities.is_empty() {
                activity["entities"] = Value::Array(entities.to_vec());
            }
            activity
        })
        .collect())
}

/// A card message from the agent, checked: a valid Adaptive Card that does not use the approval verb,
/// within Teams' size limit.
pub fn card_message(text: Option<&str>, card: Value) -> Result<Value> {
    crate::teams::validate_card(&card).map_err(|e| Error::invalid(format!("card is not a valid Adaptive Card: {e}")))?;
    if super::approval::uses_reserved_verb(&card) {
        return Err(Error::invalid(super::approval::RESERVED_VERB_ERROR));
    }
    let activity = message(text, Some(card));
    crate::teams::check_activity_size(&activity).map_err(|e| Error::invalid(format!("too large for Teams: {e}")))?;
    Ok(activity)
}

impl Hub {
    /// Queue one operation as `bot` in the conversation of `r`. The audit event and the outbox entry commit
    /// together, or neither does. `requester` is who asked (`mcp:<scope>:<client>`, `cli`).
    pub async fn enqueue(&self, requester: &str, bot: &BotConfig, r: &ConversationRef, op: OutboundOp) -> Result<i64> {
        let item = NewOutbound {
            bot_app_id: bot.app_id.clone(),
            tenant_id: r.tenant_id.clone(),
            conversation_id: r.conversation_id.clone(),
            service_url: r.service_url.clone(),
            op,
            requested_by: requester.to_owned(),
            now_ms: now_ms(),
        };
        self.outbound
            .enqueue(item)
            .await
            .map_err(|e| Error::unavailable(format!("not sent: the audit log or outbox could not be written ({e})")))
    }

    /// Queue text messages in order; the first may answer `reply_to`. Returns the last outbox id.
    pub async fn enqueue_messages(
        &self,
        requester: &str,
        bot: &BotConfig,
        r: &ConversationRef,
        messages: Vec<Value>,
        reply_to: Option<&str>,
    ) -> Result<i64> {
        let mut last = None;
        for (i, activity) in messages.into_iter().enumerate() {
            let op = match reply_to {
                Some(id) if i == 0 => OutboundOp::Reply { reply_to: id.to_owned(), activity },
                _ => OutboundOp::Send { activity },
            };
            last = Some(self.enqueue(requester, bot, r, op).await?);
        }
        last.ok_or_else(|| Error::invalid("nothing to send"))
    }

    /// Wait (up to 15 s) for the outbox to settle an entry.
    pub async fn settle(&self, outbox_id: i64) -> Settled {
        self.settle_within(outbox_id, Duration::from_secs(15)).await
    }

    pub(crate) async fn settle_within(&self, outbox_id: i64, wait: Duration) -> Settled {
        let mut delay = Duration::from_millis(5);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let item = match self.store.outbox(Some(outbox_id), 1).await {
                Ok(items) => items.into_iter().next(),
                Err(e) => return Settled::Unreadable(e.to_string()),
            };
            match item {
                Some(i) if i.state == OutboxState::Delivered => {
                    let id = i.result_id.unwrap_or_default();
                    return Settled::Delivered(id.rsplit('|').next().unwrap_or_default().to_owned());
                }
                Some(i) if i.state == OutboxState::Dead => return Settled::Dead(i.last_error.unwrap_or_else(|| "refused".into())),
                Some(i) if i.state == OutboxState::Uncertain => return Settled::Uncertain,
                Some(_) if tokio::time::Instant::now() < deadline => {}
                Some(i) => return Settled::Queued(i.attempts, i.last_error),
                None => return Settled::Unreadable("the entry vanished".into()),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}
