//! Sending: message bodies from a request (mentions, lossless splitting, checked cards), the outbox entry
//! (committed with its audit event), how it ended, and what happens when the bot cannot write: in a
//! group chat it was removed from, or to a person it cannot reach, the bot's Agent User may answer
//! through Graph (`fallback` mode), never silently: the result names the identity that acted.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::agent::AgentActor;
use super::graph::{GraphSent, Person};
use super::route::{Personal, Reach};
use super::{Caller, Error, Hub, Result};
use crate::config::BotConfig;
use crate::connector::send::message;
use crate::graph::MessageBody;
use crate::store::{ConversationRef, ErrorClass, Failed, NewOutbound, OutboundOp, OutboxState, now_ms};

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
    /// Refused for good: the class of the failure (what decisions read) and its message.
    Dead(Failed),
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
    /// Decided by the failure's class ([`ErrorClass::BotCannotReach`]), never by its message.
    pub fn bot_cannot_reach(&self) -> bool {
        matches!(self, Self::Dead(f) if f.class == ErrorClass::BotCannotReach)
    }
}

/// What was queued for a request: outbox entries as the bot, or (when the bot cannot write there) a
/// message its Agent User already sent through Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Outbox entries as the bot.
    Bot(Entry),
    /// Sent through Graph as the Agent User.
    Graph(GraphSent),
    /// Nothing to send: what was asked has no equivalent on the path the conversation takes (the
    /// typing indicator in a Graph chat). Names the identity that would have acted.
    Skipped { identity: crate::store::Identity, why: String },
}

/// The (last) outbox entry queued for a request, as bot `bot_app_id` in `conversation_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub bot_app_id: crate::ids::AppId,
    pub conversation_id: crate::ids::ConversationId,
    pub outbox_id: i64,
}

/// What became of a request, as far as the caller waits: refusals and unreadable entries are errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// As the bot through the outbox: the last entry and how far it got.
    Bot { bot_app_id: String, outbox_id: i64, progress: Progress },
    /// Through Graph as the Agent User.
    Graph(GraphSent),
    /// Nothing was sent (see [`Queued::Skipped`]).
    Skipped { identity: crate::store::Identity, why: String },
}

/// How far an outbox entry got within the wait (other endings are errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Delivered; the Connector's message id.
    Delivered(String),
    /// The request failed in a way that may have delivered it; it is not re-sent.
    Uncertain,
    /// Still being retried: attempts so far and the last error.
    Queued(i64, Option<String>),
}

/// After the bot's attempt at a 1:1 message: done (or refused), or the Agent User sends it instead.
#[derive(Debug)]
pub enum AfterBot {
    Sent(Sent),
    /// The bot cannot reach the person and its Agent User falls back: it sends, and why the bot could not.
    FallBack(Arc<AgentActor>, String),
}

/// A text message for a conversation (`reply`, `send_message`).
#[derive(Debug, Clone, Default)]
pub struct TextMessage {
    pub chat_id: String,
    /// The bot (app id), when several in scope have seen the conversation.
    pub bot: Option<String>,
    pub text: String,
    /// The message the first part answers.
    pub reply_to: Option<String>,
    pub mentions: Vec<Mention>,
    /// The "AI generated" label and citations (sent as the bot only; Graph has no such entity).
    pub(crate) ai: crate::teams::ai::AiMarks,
    /// The id of a message to quote (Teams' quoted reply; sent as the bot only).
    pub quote: Option<String>,
    /// The root message id of the channel thread to send into (channels only).
    pub thread: Option<String>,
}

/// A `quote` argument as a quoted reply's message id, or why not.
pub(crate) fn quote_id(id: &str) -> Result<crate::teams::quote::QuoteId> {
    crate::teams::quote::QuoteId::parse(id.trim()).map_err(|e| Error::invalid(e.to_string()))
}

/// Make the first of `messages` quote `quote`: its text starts with the placeholder, and it carries the
/// `quotedReply` entity. The text parts must have been cut with the placeholder in ([`quoted_text`]).
pub(crate) fn add_quote(messages: &mut [Value], quote: &crate::teams::quote::QuoteId) {
    if let Some(first) = messages.first_mut() {
        crate::teams::quote::add_entity(first, quote);
    }
}

/// `text` as a quoted reply's text (the placeholder first), when quoting.
pub(crate) fn quoted_text(text: &str, quote: Option<&crate::teams::quote::QuoteId>) -> String {
    quote.map_or_else(|| text.to_owned(), |q| q.prefix(text))
}

/// A 1:1 message to a person by AAD object id (`send_to_user`).
#[derive(Debug, Clone, Default)]
pub struct PersonMessage {
    pub user_id: String,
    pub tenant: Option<String>,
    pub text: Option<String>,
    pub card: Option<Value>,
    pub bot: Option<String>,
}

/// A change to a conversation other than new text.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new card message (with optional text), possibly answering a message.
    Card { card: Value, text: Option<String>, reply_to: Option<String> },
    /// Replace a card the bot sent (with optional text).
    UpdateCard { message_id: String, card: Value, text: Option<String> },
    /// Edit the text of a message the bot sent.
    UpdateText { message_id: String, text: String },
    /// Delete a message the bot sent.
    Delete { message_id: String },
    /// The bot's reaction on a message (`like`, `heart`, `1f44b_wavinghand`…), added or removed.
    React { message_id: String, reaction: String, remove: bool },
    /// The typing indicator (not in channels).
    Typing,
}

/// Longest reaction id accepted.
const MAX_REACTION_CHARS: usize = 64;

/// A Teams reaction id: `like`, `heart`, `1f440_eyes`, `1f44b_wavinghand-tone2`, an org custom emoji id.
fn check_reaction(reaction: &str) -> Result<()> {
    let ok = !reaction.is_empty()
        && reaction.chars().count() <= MAX_REACTION_CHARS
        && reaction.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "reaction must be a Teams reaction id (letters, digits, _ and -, at most {MAX_REACTION_CHARS}), such as like, heart, 1f440_eyes or 2705_whiteheavycheckmark"
        )))
    }
}

impl Change {
    /// The operation, checked as far as it can be without the conversation.
    fn into_op(self) -> Result<OutboundOp> {
        let nonempty = |id: &str| if id.trim().is_empty() { Err(Error::invalid("message_id is empty")) } else { Ok(()) };
        Ok(match self {
            Self::Card { card, text, reply_to } => {
                let activity = card_message(text.as_deref(), card)?;
                match reply_to {
                    Some(id) => OutboundOp::Reply { reply_to: id, activity },
                    None => OutboundOp::Send { activity },
                }
            }
            Self::UpdateCard { message_id, card, text } => {
                let activity = card_message(text.as_deref(), card)?;
                nonempty(&message_id)?;
                OutboundOp::Update { activity_id: message_id, activity }
            }
            Self::UpdateText { message_id, text } => {
                let activity = edited_text(&message_id, &text)?;
                OutboundOp::Update { activity_id: message_id, activity }
            }
            Self::Delete { message_id } => {
                nonempty(&message_id)?;
                OutboundOp::Delete { activity_id: message_id }
            }
            Self::React { message_id, reaction, remove } => {
                nonempty(&message_id)?;
                check_reaction(&reaction)?;
                OutboundOp::React { activity_id: message_id, reaction, remove }
            }
            Self::Typing => OutboundOp::Send { activity: crate::teams::typing_activity() },
        })
    }
}

/// The new text of a message the bot sent: not empty, within one Teams message.
pub(crate) fn edited_text(message_id: &str, text: &str) -> Result<Value> {
    if text.trim().is_empty() || message_id.trim().is_empty() {
        return Err(Error::invalid("message_id and text must not be empty (to remove a message, use delete_message)"));
    }
    if crate::teams::utf16_len(text) > crate::teams::MAX_TEXT_UTF16 {
        return Err(Error::invalid("the new text is longer than one Teams message"));
    }
    Ok(message(Some(text), None))
}

/// The message activities of text and/or a card: long text split losslessly, the card (checked) on the
/// first part. At least one of them.
pub(crate) fn messages(text: Option<&str>, card: Option<Value>) -> Result<Vec<Value>> {
    let text = text.filter(|t| !t.trim().is_empty());
    match (text, card) {
        (None, None) => Err(Error::invalid("nothing to send: pass text, a card or both")),
        (Some(t), None) => text_messages(t, &[]),
        (None, Some(card)) => Ok(vec![card_message(None, card)?]),
        (Some(t), Some(card)) => {
            let mut parts = text_messages(t, &[])?;
            let first = parts.remove(0);
            let mut out = vec![card_message(first["text"].as_str(), card)?];
            out.extend(parts);
            Ok(out)
        }
    }
}

/// The single activity of a proactive message: a checked card with optional text, or text within Teams' size limit.
pub(crate) fn person_activity(text: Option<&str>, card: Option<&Value>) -> Result<Value> {
    match card {
        Some(card) => card_message(text, card.clone()),
        None => {
            let activity = message(text, None);
            crate::teams::check_activity_size(&activity).map_err(|e| Error::invalid(format!("too large for Teams: {e}")))?;
            Ok(activity)
        }
    }
}

/// How an entry sent as the bot ended, for the caller: delivered, uncertain or still queued; a refusal
/// or an unreadable state is an error.
pub(crate) fn sent_as_bot(bot_app_id: String, outbox_id: i64, settled: Settled) -> Result<Sent> {
    let progress = match settled {
        Settled::Delivered(message_id) => Progress::Delivered(message_id),
        Settled::Uncertain => Progress::Uncertain,
        Settled::Queued(attempts, last_error) => Progress::Queued(attempts, last_error),
        Settled::Dead(e) => return Err(Error::refused(format!("not delivered: {}", e.message))),
        Settled::Unreadable(e) => {
            return Err(Error::unavailable(format!("queued as outbox #{outbox_id}, but its state cannot be read: {e}")));
        }
    };
    Ok(Sent::Bot { bot_app_id, outbox_id, progress })
}

/// The mention entities for `text`: each mention needs an id and a name, and its `<at>` tag in the text.
pub(crate) fn mention_entities(text: &str, mentions: &[Mention]) -> Result<Vec<Value>> {
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
pub(crate) fn text_messages(text: &str, entities: &[Value]) -> Result<Vec<Value>> {
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

/// Put the AI marks (one root message entity per part; citations only on a message that fits in one part)
/// and, when the bot has them on, the feedback buttons on the parts of a text message.
pub(crate) fn mark_messages(messages: &mut [Value], ai: &crate::teams::ai::AiMarks, feedback: bool) -> Result<()> {
    if !ai.citations.is_empty() && messages.len() > 1 {
        return Err(Error::invalid(format!(
            "a message with citations must fit in one Teams message ({} UTF-16 units); shorten it",
            crate::teams::MAX_TEXT_UTF16
        )));
    }
    for m in messages.iter_mut() {
        let text = m["text"].as_str().unwrap_or_default().to_owned();
        if let Some(entity) = crate::teams::ai::message_entity(&text, ai).map_err(Error::invalid)? {
            match m.get_mut("entities").and_then(Value::as_array_mut) {
                Some(list) => list.push(entity),
                None => m["entities"] = Value::Array(vec![entity]),
            }
        }
        if feedback {
            crate::teams::ai::enable_feedback(m);
        }
    }
    Ok(())
}

/// A text with `<at>Name</at>` mentions as a Graph message body: each tag of a listed mention becomes a
/// Graph mention of that person (by object id), in place.
pub(crate) fn graph_text_body(text: &str, mentions: &[Mention]) -> MessageBody {
    let mut body = MessageBody::new();
    let mut rest = text;
    loop {
        let next = mentions
            .iter()
            .filter(|m| !m.user_id.trim().is_empty() && !m.name.trim().is_empty())
            .filter_map(|m| {
                let tag = format!("<at>{}</at>", m.name);
                rest.find(&tag).map(|i| (i, tag.len(), m))
            })
            .min_by_key(|(i, _, _)| *i);
        match next {
            Some((i, len, m)) => {
                if i > 0 {
                    body = body.text(&rest[..i]);
                }
                body = body.mention(m.user_id.trim(), m.name.trim());
                rest = &rest[i + len..];
            }
            None => {
                if !rest.is_empty() {
                    body = body.text(rest);
                }
                return body;
            }
        }
    }
}

/// A card message from the agent, checked: a valid Adaptive Card that does not use the approval verb,
/// within Teams' size limit.
pub(crate) fn card_message(text: Option<&str>, card: Value) -> Result<Value> {
    crate::teams::validate_card(&card).map_err(|e| Error::invalid(format!("card is not a valid Adaptive Card: {e}")))?;
    if super::approval::uses_reserved_verb(&card) {
        return Err(Error::invalid(super::approval::RESERVED_VERB_ERROR));
    }
    let activity = message(text, Some(card));
    crate::teams::check_activity_size(&activity).map_err(|e| Error::invalid(format!("too large for Teams: {e}")))?;
    Ok(activity)
}

impl Hub {
    /// Queue text (split when too long) into a conversation; the first part may answer a message. Where
    /// the bot was removed from a group chat, its Agent User may answer through Graph (`fallback` mode).
    pub async fn queue_text(&self, caller: Caller<'_>, req: &TextMessage) -> Result<Queued> {
        if req.text.trim().is_empty() {
            return Err(Error::invalid("text is empty"));
        }
        let entities = mention_entities(&req.text, &req.mentions)?;
        crate::teams::ai::message_entity(&req.text, &req.ai).map_err(Error::invalid)?;
        let quote = req.quote.as_deref().map(quote_id).transpose()?;
        let (bot, r) = match req.thread.as_deref() {
            Some(root) => self.thread_conversation(caller.scope, &req.chat_id, req.bot.as_deref(), root).await?,
            None => self.conversation_any(caller.scope, &req.chat_id, req.bot.as_deref()).await?,
        };
        match self.reach(&bot, &r, !req.mentions.is_empty()) {
            Reach::Bot => {}
            Reach::AgentUser if quote.is_some() => {
                return Err(Error::refused(format!(
                    "{} is answered by the Agent User through Microsoft Graph here, which has no quoted replies: leave quote out",
                    req.chat_id
                )));
            }
            Reach::AgentUser => {
                if let Some(actor) = self.agents.get(&bot.app_id.to_ascii_lowercase()).cloned() {
                    if super::route::lives_in_graph(&r) {
                        tracing::info!(bot = %bot.app_id, identity = %actor.identity(), "the Agent User's own chat: answered through Graph");
                        let body = graph_text_body(&req.text, &req.mentions);
                        return Ok(Queued::Graph(self.graph_send_body(caller, &actor, &r.conversation_id, body).await?));
                    }
                    tracing::info!(bot = %bot.app_id, identity = %actor.identity(), "the bot cannot write here; the Agent User answers through Graph");
                    let chat = crate::teams::thread_root(&req.chat_id);
                    return Ok(Queued::Graph(self.graph_send_body(caller, &actor, chat, MessageBody::from_text(&req.text)).await?));
                }
            }
            Reach::Nobody(why) => return Err(Error::refused(why)),
        }
        let mut messages = text_messages(&quoted_text(&req.text, quote.as_ref()), &entities)?;
        if let Some(q) = &quote {
            add_quote(&mut messages, q);
        }
        mark_messages(&mut messages, &req.ai, bot.feedback)?;
        let outbox_id = self.enqueue_messages(caller.requester, &bot, &r, messages, req.reply_to.as_deref()).await?;
        Ok(Queued::Bot(Entry { bot_app_id: bot.app_id.clone(), conversation_id: r.conversation_id, outbox_id }))
    }

    /// A change as the MCP tools ask for it: in the Agent User's own chats (they live in Graph) a card goes
    /// out through Graph as the Agent User and the typing indicator is skipped (Graph has none); edits
    /// and deletions there are refused. Elsewhere as [`Hub::queue_change`].
    pub async fn queue_change_routed(&self, caller: Caller<'_>, chat_id: &str, bot: Option<&str>, change: Change) -> Result<Queued> {
        if chat_id.trim().is_empty() {
            return self.queue_change(caller, chat_id, bot, change).await.map(Queued::Bot);
        }
        let (b, r) = self.conversation_any(caller.scope, chat_id, bot).await?;
        if !super::route::lives_in_graph(&r) {
            return self.queue_change(caller, chat_id, bot, change).await.map(Queued::Bot);
        }
        let Some(actor) = self.agents.get(&b.app_id.to_ascii_lowercase()).cloned() else {
            return match self.reach(&b, &r, false) {
                Reach::Nobody(why) => Err(Error::refused(why)),
                _ => Err(Error::refused("no Agent User answers in this chat")),
            };
        };
        match change {
            Change::Typing => Ok(Queued::Skipped {
                identity: actor.identity(),
                why: "Graph has no typing indicator for the Agent User's chats; nothing was sent".to_owned(),
            }),
            Change::Card { card, text, reply_to: _ } => {
                // Checked as a bot card is (valid, no reserved verb, within Teams' size).
                card_message(text.as_deref(), card.clone())?;
                let mut body = MessageBody::new();
                if let Some(t) = text.as_deref().filter(|t| !t.trim().is_empty()) {
                    body = body.text(t);
                }
                let body = body.card(&card);
                Ok(Queued::Graph(self.graph_send_body(caller, &actor, &r.conversation_id, body).await?))
            }
            Change::UpdateCard { .. } | Change::UpdateText { .. } | Change::Delete { .. } => Err(Error::refused(format!(
                "{chat_id} is the Agent User's chat in Microsoft Graph: editing or deleting its messages from here is not supported yet"
            ))),
            // The bot is not in the Agent User's chats: the Agent User reacts, through Graph.
            Change::React { message_id, reaction, remove } => {
                if message_id.trim().is_empty() {
                    return Err(Error::invalid("message_id is empty"));
                }
                check_reaction(&reaction)?;
                Ok(Queued::Graph(self.graph_react(caller, &actor, &r.conversation_id, &message_id, &reaction, remove).await?))
            }
        }
    }

    /// Queue a change (a card, an edit, a deletion, the typing indicator) into a conversation the bot can write in.
    pub async fn queue_change(&self, caller: Caller<'_>, chat_id: &str, bot: Option<&str>, change: Change) -> Result<Entry> {
        let typing = matches!(change, Change::Typing);
        let op = change.into_op()?;
        let (bot, r) = self.conversation(caller.scope, chat_id, bot).await?;
        if typing && r.conversation_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("channel")) {
            return Err(Error::invalid("Teams shows no typing indicator in channels; show it in a 1:1 or group chat"));
        }
        let outbox_id = self.enqueue(caller.requester, &bot, &r, op).await?;
        Ok(Entry { bot_app_id: bot.app_id.clone(), conversation_id: r.conversation_id, outbox_id })
    }

    /// Wait for what was queued to settle (up to 15 s).
    pub async fn outcome(&self, queued: Queued) -> Result<Sent> {
        match queued {
            Queued::Graph(sent) => Ok(Sent::Graph(sent)),
            Queued::Skipped { identity, why } => Ok(Sent::Skipped { identity, why }),
            Queued::Bot(e) => sent_as_bot(e.bot_app_id.to_string(), e.outbox_id, self.settle(e.outbox_id).await),
        }
    }

    /// Send a 1:1 message to a person: in the bot's chat with them, or a new one; when the bot cannot
    /// reach them, its Agent User through Graph (`fallback` mode, same tenant), or an error that says how
    /// to allow it.
    pub async fn send_to_person(&self, caller: Caller<'_>, req: &PersonMessage) -> Result<Sent> {
        if req.text.as_deref().is_none_or(|t| t.trim().is_empty()) && req.card.is_none() {
            return Err(Error::invalid("pass text, card or both"));
        }
        if req.user_id.trim().is_empty() || req.user_id.contains(char::is_whitespace) {
            return Err(Error::invalid("user_id must be the person's AAD object id (a GUID), never a name"));
        }
        let activity = person_activity(req.text.as_deref(), req.card.as_ref())?;
        let target = self.person_target(caller.scope, &req.user_id, req.bot.as_deref(), req.tenant.as_deref()).await?;
        let (bot, tenant) = (target.bot, target.tenant.as_str());
        let (r, op) = match self.personal(&target, &req.user_id).await? {
            Personal::Chat(r) => (r, OutboundOp::Send { activity }),
            Personal::Create(r) => (r, OutboundOp::CreatePersonal { user_id: req.user_id.clone(), activity }),
            Personal::Unknown(why) => {
                let actor = self.fallback(bot, tenant, &why)?;
                return self.send_as_agent_user(caller, bot, &actor, req, &why).await;
            }
        };
        let outbox_id = self.enqueue(caller.requester, bot, &r, op).await?;
        match self.after_bot(bot, tenant, outbox_id, self.settle(outbox_id).await)? {
            AfterBot::Sent(sent) => Ok(sent),
            AfterBot::FallBack(actor, why) => self.send_as_agent_user(caller, bot, &actor, req, &why).await,
        }
    }

    /// The bot's attempt at a 1:1 message ended (`settled`): its result, or, when the bot cannot reach
    /// the person (not installed for them, blocked, refused), the Agent User that sends instead.
    pub fn after_bot(&self, bot: &BotConfig, tenant: &str, outbox_id: i64, settled: Settled) -> Result<AfterBot> {
        if settled.bot_cannot_reach()
            && let Settled::Dead(why) = &settled
        {
            let why = format!("the bot could not deliver: {}", why.message);
            return Ok(AfterBot::FallBack(self.fallback(bot, tenant, &why)?, why));
        }
        sent_as_bot(bot.app_id.to_string(), outbox_id, settled).map(AfterBot::Sent)
    }

    /// When the bot cannot reach a person (`why`): the bot's Agent User, if the bot is configured to fall
    /// back and the person is in the Agent User's tenant; otherwise why not, and how to allow it.
    pub fn fallback(&self, bot: &BotConfig, tenant: &str, why: &str) -> Result<Arc<AgentActor>> {
        let key = bot.app_id.to_ascii_lowercase();
        let Some(actor) = self.agents.get(&key).filter(|x| x.falls_back()).cloned() else {
            let hint = if self.agents.contains_key(&key) {
                "this bot is bot_only: set its agent_user.mode = \"fallback\" to let its Agent User send through Graph"
            } else {
                "this bot has no Agent User to fall back to ([bots.agent_user], mode = \"fallback\")"
            };
            return Err(Error::refused(format!("not delivered: {why}; {hint}, or ask the person to install the app")));
        };
        if !actor.tokens.tenant().eq_ignore_ascii_case(tenant) {
            return Err(Error::refused(format!(
                "not delivered: {why}; the Agent User lives in another tenant ({}), so it needs the person's email: use graph_create_chat with members [{{user: EMAIL, tenant: \"{tenant}\"}}]",
                actor.tokens.tenant()
            )));
        }
        Ok(actor)
    }

    /// The 1:1 message sent as the Agent User through Graph. Never a silent identity switch: the result
    /// and the audit event name the Agent User.
    async fn send_as_agent_user(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        actor: &AgentActor,
        req: &PersonMessage,
        why: &str,
    ) -> Result<Sent> {
        tracing::info!(bot = %bot.app_id, identity = %actor.identity(), why, "falling back to the Agent User");
        let mut body = MessageBody::new();
        if let Some(t) = req.text.as_deref() {
            body = body.text(t);
        }
        if let Some(card) = &req.card {
            body = body.card(card);
        }
        let person = Person { user: req.user_id.clone(), tenant: None };
        Ok(Sent::Graph(self.graph_message_person(caller, bot, actor, &person, body).await?))
    }

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
                Some(i) if i.state == OutboxState::Dead => {
                    // An entry dead before classes were stored counts as a plain refusal: nothing falls back on it.
                    let class = i.error_class.unwrap_or(ErrorClass::Refused);
                    return Settled::Dead(Failed::new(class, i.last_error.unwrap_or_else(|| "refused".into())));
                }
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
