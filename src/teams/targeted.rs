//! Targeted (private) messages: a message in a group chat, channel or meeting chat that only one member
//! sees, labelled "Only you can see this message" (Teams preview, learn.microsoft.com
//! `agents-in-teams/targeted-messages`; teams.py `activity_sender.py`, teams.net `ChannelAccount.cs`).
//!
//! * Create: `POST …/v3/conversations/{id}/activities?isTargetedActivity=true`, the body's `recipient`
//!   `{"id": "29:…", "isTargeted": true}` (the Teams SDK's `withRecipient(user, true)`).
//! * Update: `PUT …/activities/{id}?isTargetedActivity=true`, **without** a recipient (400 otherwise).
//! * Never in 1:1 chats; the recipient must be a member of the conversation. Refusals: 400 (recipient
//!   missing on create or present on update), 404 `BotNotInConversationRoster`, 404
//!   `ActivityNotFoundInConversation` (deleted, or past the 24 hours a targeted message lives).
//!
//! The M365 Agents SDK marks the body with an `activityTreatment` entity instead; which body marker the
//! service needs is unconfirmed, so this follows the Teams SDK (both send the query flag).

use serde_json::{Value, json};

/// The query that makes a create or update targeted.
pub(crate) const QUERY: &str = "isTargetedActivity=true";

/// The `recipient` of a targeted create: the member (`29:…`) who alone sees it.
pub(crate) fn recipient(member_id: &str) -> Value {
    json!({"id": member_id, "isTargeted": true})
}

/// Whether Teams offers targeted messages in a conversation of this type: group chats (meeting chats are
/// group chats) and channels, never 1:1 chats; unknown types are treated as unsupported.
pub(crate) fn supported_in(conversation_type: Option<&str>) -> bool {
    conversation_type.is_some_and(|t| t.eq_ignore_ascii_case("groupChat") || t.eq_ignore_ascii_case("channel"))
}

/// The activity of a targeted create: `activity` addressed privately to `member_id`.
pub(crate) fn create(mut activity: Value, member_id: &str) -> Value {
    if let Some(obj) = activity.as_object_mut() {
        obj.insert("recipient".into(), recipient(member_id));
    }
    activity
}

/// The activity of a targeted update: any recipient removed (the service refuses one).
pub(crate) fn update(mut activity: Value) -> Value {
    if let Some(obj) = activity.as_object_mut() {
        obj.remove("recipient");
    }
    activity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_name_the_member_and_updates_name_nobody() {
        let a = create(json!({"type": "message", "text": "x"}), "29:alex");
        assert_eq!(a["recipient"], json!({"id": "29:alex", "isTargeted": true}));
        assert_eq!(a["text"], "x");
        let u = update(a);
        assert!(u.get("recipient").is_none(), "{u}");
        assert_eq!(u["type"], "message");
    }

    #[test]
    fn only_group_chats_and_channels() {
        assert!(supported_in(Some("groupChat")) && supported_in(Some("channel")) && supported_in(Some("GroupChat")));
        assert!(!supported_in(Some("personal")) && !supported_in(None) && !supported_in(Some("meeting")));
    }
}
