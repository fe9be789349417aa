//! Users' edits and deletions (`messageUpdate` with `channelData.eventType` `editMessage` or
//! `undeleteMessage`, `messageDelete` with `softDeleteMessage`): applied in place to the message's inbox entry
//! while no host has seen it (the edited text replaces it; a deletion withdraws it, so deleted text never
//! reaches the model); otherwise, and for an undelete, delivered to the host as a typed event.
//!
//! Teams gives an edit or a deletion the **id of the message it changes** (teams.ts
//! `message-update.ts`, `message-delete.ts`; botbuilder-js `teamsActivityHandler.ts`), so it cannot be
//! deduplicated on its id: [`dedupe_key`] keys it by the message, the change and a digest of the body (a
//! redelivery is the same body; a second edit of one message is another).
//!
//! "Seen by a host" is known to this process only: sessions record what they push in [`Delivered`]. A
//! host on another replica may have been pushed the message without this replica knowing (see the docs).

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::activity::Activity;
use crate::store::{Amendment, InboxState};

/// What a user did to one of their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// `messageUpdate` / `editMessage` (or without an event type: Teams sends edits only).
    Edit,
    /// `messageUpdate` / `undeleteMessage`.
    Undelete,
    /// `messageDelete` / `softDeleteMessage`.
    Delete,
}

impl Change {
    /// The change an activity is, if it is one.
    pub(crate) fn of(activity: &Activity) -> Option<Self> {
        match (activity.kind.as_str(), event_type(activity)) {
            ("messageUpdate", Some("undeleteMessage")) => Some(Self::Undelete),
            ("messageUpdate", _) => Some(Self::Edit),
            ("messageDelete", _) => Some(Self::Delete),
            _ => None,
        }
    }

    /// The Teams `eventType` name (also the key's middle part).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Edit => "editMessage",
            Self::Undelete => "undeleteMessage",
            Self::Delete => "softDeleteMessage",
        }
    }
}

/// `channelData.eventType`.
pub(crate) fn event_type(activity: &Activity) -> Option<&str> {
    activity.channel_data.as_ref()?.event_type.as_deref()
}

/// The dedupe key of a change to message `message_id`: `{message_id}@{eventType}:{16 hex digits of the
/// body's SHA-256}`.
pub(crate) fn dedupe_key(message_id: &str, change: Change, body: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = Sha256::digest(body);
    let mut key = format!("{message_id}@{}:", change.label());
    for b in digest.iter().take(8) {
        let _ = write!(key, "{b:02x}");
    }
    key
}

/// The amendment a change makes to the entry of `message_id`, for [`Store::commit_amendment`]: an edit's
/// (or undelete's) body is the revised message (typed `message` again; Teams sends it whole), a deletion's
/// body is the deletion itself without any text, and withdraws the entry. `seen`: a session here pushed
/// the message to a host, so the change must reach the host even when the pending entry is amended. A
/// change to a delivered (acknowledged or withdrawn) message reaches the host whatever the policy says of
/// the change itself (a deletion names no sender): its message passed the policy. `None` for a body that
/// is not a JSON object.
///
/// [`Store::commit_amendment`]: crate::store::Store::commit_amendment
pub(crate) fn amendment(change: Change, message_id: &str, body: &str, seen: bool) -> Option<Amendment> {
    let mut v: Value = serde_json::from_str(body).ok()?;
    let obj = v.as_object_mut()?;
    let withdraw = change == Change::Delete;
    if withdraw {
        for key in ["text", "attachments", "entities", "value", "summary", "speak"] {
            obj.remove(key);
        }
    } else {
        obj.insert("type".into(), Value::String("message".into()));
        obj.insert("id".into(), Value::String(message_id.to_owned()));
    }
    Some(Amendment {
        message_id: message_id.to_owned(),
        body: v.to_string(),
        withdraw,
        state_if_amended: if seen { InboxState::Pending } else { InboxState::Consumed },
        state_if_delivered: InboxState::Pending,
    })
}

/// Most messages [`Delivered`] remembers.
const DELIVERED_MAX: usize = 8192;

/// (lower-case bot app id, conversation, activity id).
type Key = (String, String, String);

/// The messages this process's sessions pushed to a host lately, by (bot, conversation, activity id).
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    inner: Mutex<(HashSet<Key>, VecDeque<Key>)>,
}

impl Delivered {
    /// Record that a session pushed this message (before it is sent, so an amendment racing with the push
    /// errs towards telling the host).
    pub(crate) fn mark(&self, bot: &str, conversation: &str, activity_id: &str) {
        let key = (bot.to_ascii_lowercase(), conversation.to_owned(), activity_id.to_owned());
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *guard;
        if set.insert(key.clone()) {
            order.push_back(key);
            if order.len() > DELIVERED_MAX
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
    }

    /// Whether a session here pushed this message.
    pub(crate) fn contains(&self, bot: &str, conversation: &str, activity_id: &str) -> bool {
        let key = (bot.to_ascii_lowercase(), conversation.to_owned(), activity_id.to_owned());
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).0.contains(&key)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn activity(v: Value) -> Activity {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn changes_are_read_from_type_and_event_type() {
        let edit = activity(json!({"type": "messageUpdate", "channelData": {"eventType": "editMessage"}}));
        let undelete = activity(json!({"type": "messageUpdate", "channelData": {"eventType": "undeleteMessage"}}));
        let delete = activity(json!({"type": "messageDelete", "channelData": {"eventType": "softDeleteMessage"}}));
        let message = activity(json!({"type": "message", "channelData": {"eventType": "editMessage"}}));
        assert_eq!(Change::of(&edit), Some(Change::Edit));
        assert_eq!(Change::of(&undelete), Some(Change::Undelete));
        assert_eq!(Change::of(&delete), Some(Change::Delete));
        assert_eq!(Change::of(&message), None);
    }

    #[test]
    fn keys_tell_redeliveries_from_new_edits() {
        let a = dedupe_key("1700", Change::Edit, br#"{"text":"a"}"#);
        assert_eq!(a, dedupe_key("1700", Change::Edit, br#"{"text":"a"}"#));
        assert_ne!(a, dedupe_key("1700", Change::Edit, br#"{"text":"b"}"#));
        assert_ne!(a, dedupe_key("1700", Change::Delete, br#"{"text":"a"}"#));
        assert!(a.starts_with("1700@editMessage:") && a.len() == "1700@editMessage:".len() + 16, "{a}");
    }

    #[test]
    fn a_deletion_carries_no_text_and_an_edit_is_a_message_again() {
        let body =
            json!({"type": "messageDelete", "id": "m1", "text": "secret", "attachments": [{"content": "x"}], "conversation": {"id": "c"}});
        let a = amendment(Change::Delete, "m1", &body.to_string(), false).unwrap();
        assert!(a.withdraw);
        assert!(!a.body.contains("secret") && !a.body.contains("attachments"), "{}", a.body);
        assert_eq!((a.state_if_amended, a.state_if_delivered), (InboxState::Consumed, InboxState::Pending));
        let body = json!({"type": "messageUpdate", "id": "m1", "text": "fixed", "channelData": {"eventType": "editMessage"}});
        let a = amendment(Change::Edit, "m1", &body.to_string(), true).unwrap();
        let v: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!((v["type"].as_str(), v["text"].as_str(), a.withdraw), (Some("message"), Some("fixed"), false));
        assert_eq!(a.state_if_amended, InboxState::Pending, "seen by a host: the change is for the host too");
        assert!(!amendment(Change::Undelete, "m1", &body.to_string(), false).unwrap().withdraw);
        assert_eq!(amendment(Change::Edit, "m1", "[1]", false), None);
    }

    #[test]
    fn delivered_remembers_a_bounded_window() {
        let d = Delivered::default();
        d.mark("BOT", "c", "m0");
        assert!(d.contains("bot", "c", "m0"));
        assert!(!d.contains("bot", "c2", "m0"));
        for i in 1..=DELIVERED_MAX {
            d.mark("bot", "c", &format!("m{i}"));
        }
        assert!(!d.contains("bot", "c", "m0"), "the oldest is forgotten");
        assert!(d.contains("bot", "c", &format!("m{DELIVERED_MAX}")));
    }
}
