//! The Teams message toolkit: transport-free helpers for reading and building Teams activities.
//!
//! Nothing here does I/O. Functions take activities (our [`Activity`](crate::activity::Activity) or raw
//! `serde_json::Value`) and return the activities or invoke responses a sender would post; the small state
//! machines ([`TypingGovernor`], [`Stream`]) take the current [`Instant`](std::time::Instant) as an
//! argument, so tests drive them with a synthetic clock.
//!
//! | module | what |
//! |---|---|
//! | [`mention`](mod@mention) | strip the bot's own `<at>` mention from inbound text; build outbound mentions |
//! | [`thread`] | channel thread ids (`19:…@thread.tacv2;messageid=…`) |
//! | [`card`] | Adaptive Card validation, card messages, `Action.Submit` and `Action.Execute` (invoke) handling |
//! | [`typing`] | typing indicators and the per-conversation typing governor |
//! | [`split`] | UTF-16 sizes, the message size limits and lossless text splitting |
//! | [`stream`] | Teams streaming (`streaminfo`) in 1:1 chats, buffered elsewhere |
//! | [`lifecycle`] | bot installed / removed, from `installationUpdate` and `conversationUpdate` |

pub mod card;
pub mod lifecycle;
pub mod mention;
pub mod split;
pub mod stream;
pub mod thread;
pub mod typing;

pub use card::{
    ADAPTIVE_CARD_CONTENT_TYPE, CardError, ExecuteAction, InvokeError, Trigger, card_message, card_response, card_submit, error_response,
    execute_action, message_response, validate_card,
};
pub use lifecycle::{Installation, installation_change};
pub use mention::{is_bot_mentioned, mention, same_bot_id, strip_bot_mention};
pub use split::{
    LOCAL_MAX_ACTIVITY_UTF16, MAX_TEXT_UTF16, SizeError, TEAMS_MAX_ACTIVITY_UTF16, activity_size_utf16, check_activity_size, split_text,
    utf16_len,
};
pub use stream::{Stream, StreamConfig, StreamEnd, StreamMode, StreamSend, StreamSendKind};
pub use thread::{ThreadError, ThreadId, reply_in_thread, thread_conversation_id, thread_root};
pub use typing::{TYPING_INTERVAL, TypingGovernor, typing_activity};

/// Entities of an activity (`entities` lives in [`Activity::extra`](crate::activity::Activity::extra)).
fn entities(activity: &crate::activity::Activity) -> &[serde_json::Value] {
    activity.extra.get("entities").and_then(serde_json::Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Playground payloads (trimmed copies of `shared/fixtures/playground`, request bodies only).

    use crate::activity::Activity;

    pub(crate) const INSTALLATION_UPDATE: &str = include_str!("testdata/installation_update.json");
    pub(crate) const CONVERSATION_UPDATE: &str = include_str!("testdata/conversation_update.json");
    pub(crate) const MESSAGE_PERSONAL: &str = include_str!("testdata/message_personal.json");
    pub(crate) const CARD_SUBMIT: &str = include_str!("testdata/card_submit.json");
    pub(crate) const INVOKE_ADAPTIVE_CARD_ACTION: &str = include_str!("testdata/invoke_adaptive_card_action.json");
    pub(crate) const CHANNEL_MENTION: &str = include_str!("testdata/channel_mention.json");
    pub(crate) const CHANNEL_MENTION_PREFIXED: &str = include_str!("testdata/channel_mention_prefixed.json");
    pub(crate) const OUT_REPLY_CARD: &str = include_str!("testdata/out_reply_card.json");

    pub(crate) fn activity(raw: &str) -> Activity {
        serde_json::from_str(raw).unwrap()
    }
}
