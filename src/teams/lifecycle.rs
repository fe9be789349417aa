//! Whether an activity says the bot was installed in, or removed from, its conversation.
//!
//! `installationUpdate` carries `action` `add`, `add-upgrade`, `remove` or `remove-upgrade` (botbuilder
//! `dispatchInstallationUpdateActivity` treats the `-upgrade` forms like the plain ones);
//! `conversationUpdate` lists the bot in `membersAdded` / `membersRemoved` under its id `28:<appId>` (the
//! Playground uses the bare id). A removal makes the stored conversation reference unusable.

use serde_json::Value;

use super::mention::same_bot_id;
use crate::activity::{Activity, Kind};

/// What happened to the bot's membership of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Installation {
    /// Installed or added (also an upgrade that keeps it installed).
    Added,
    /// Uninstalled or removed.
    Removed,
}

/// The bot's installation change carried by `activity`, if any. The bot is the activity's `recipient`
/// (compared as in [`same_bot_id`]: with or without `28:`, case-insensitive). For a `conversationUpdate`
/// that both adds and removes the bot, `Removed` wins.
pub(crate) fn installation_change(activity: &Activity) -> Option<Installation> {
    match activity.kind() {
        Kind::InstallationUpdate => {
            let action = activity.action.as_deref()?.trim().to_ascii_lowercase();
            match action.as_str() {
                "add" | "add-upgrade" => Some(Installation::Added),
                "remove" | "remove-upgrade" => Some(Installation::Removed),
                _ => None,
            }
        }
        Kind::ConversationUpdate => {
            let bot = activity.recipient.as_ref().map(|r| r.id.as_str()).filter(|id| !id.is_empty())?;
            let lists = |key: &str| {
                activity.extra.get(key).and_then(Value::as_array).is_some_and(|members| {
                    members.iter().any(|m| m.get("id").and_then(Value::as_str).is_some_and(|id| same_bot_id(id, bot)))
                })
            };
            if lists("membersRemoved") {
                Some(Installation::Removed)
            } else if lists("membersAdded") {
                Some(Installation::Added)
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::teams::testdata;

    fn parse(v: Value) -> Activity {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn playground_install_and_conversation_update_add_the_bot() {
        assert_eq!(installation_change(&testdata::activity(testdata::INSTALLATION_UPDATE)), Some(Installation::Added));
        assert_eq!(installation_change(&testdata::activity(testdata::CONVERSATION_UPDATE)), Some(Installation::Added));
        assert_eq!(installation_change(&testdata::activity(testdata::MESSAGE_PERSONAL)), None);
    }

    #[test]
    fn installation_update_actions() {
        let mut a = testdata::activity(testdata::INSTALLATION_UPDATE);
        for (action, expected) in [
            ("add", Some(Installation::Added)),
            ("add-upgrade", Some(Installation::Added)),
            ("remove", Some(Installation::Removed)),
            ("Remove-Upgrade", Some(Installation::Removed)),
            ("something-else", None),
        ] {
            a.action = Some(action.into());
            assert_eq!(installation_change(&a), expected, "{action}");
        }
        a.action = None;
        assert_eq!(installation_change(&a), None);
    }

    #[test]
    fn conversation_update_with_prefixed_ids() {
        let update = |added: Value, removed: Value| {
            parse(json!({
                "type": "conversationUpdate",
                "recipient": {"id": "28:test-bot-app-id", "name": "Rusty Bot"},
                "conversation": {"id": "19:team-general@thread.tacv2", "conversationType": "channel"},
                "membersAdded": added, "membersRemoved": removed,
                "channelData": {"eventType": "teamMemberAdded"}
            }))
        };
        assert_eq!(installation_change(&update(json!([{"id": "28:test-bot-app-id"}]), json!([]))), Some(Installation::Added));
        assert_eq!(installation_change(&update(json!([{"id": "test-bot-app-id"}]), json!([]))), Some(Installation::Added));
        assert_eq!(installation_change(&update(json!([]), json!([{"id": "28:TEST-BOT-APP-ID"}]))), Some(Installation::Removed));
        assert_eq!(installation_change(&update(json!([{"id": "29:alice"}]), json!([{"id": "29:bob"}]))), None, "other members");
        assert_eq!(
            installation_change(&update(json!([{"id": "28:test-bot-app-id"}]), json!([{"id": "28:test-bot-app-id"}]))),
            Some(Installation::Removed)
        );
        assert_eq!(installation_change(&update(Value::Null, Value::Null)), None);
    }
}
