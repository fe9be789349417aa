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
//! | [`quote`] | quoted replies: the `<quoted messageId=…/>` placeholder and the `quotedReply` entity |
//! | [`targeted`] | targeted (private) messages in group chats and channels |
//! | [`card`] | Adaptive Card validation, card messages, `Action.Submit` and `Action.Execute` (invoke) handling |
//! | [`typing`] | typing indicators and the per-conversation typing governor |
//! | [`split`] | UTF-16 sizes, the message size limits and lossless text splitting |
//! | [`stream`] | Teams streaming (`streaminfo`) in 1:1 chats, one message updated in place elsewhere and past 2 minutes |
//! | [`ai`] | the "AI generated" label, citations, feedback buttons and the user's feedback |
//! | [`lifecycle`] | bot installed / removed, from `installationUpdate` and `conversationUpdate` |
//! | [`files`] | files in activities, the file consent card, the consent answer, the file info card |

pub(crate) mod ai;
pub(crate) mod card;
pub(crate) mod files;
pub(crate) mod lifecycle;
pub(crate) mod mention;
pub(crate) mod quote;
pub(crate) mod split;
pub(crate) mod stream;
pub(crate) mod targeted;
pub(crate) mod thread;
pub(crate) mod typing;

pub(crate) use card::{card_response, card_submit, execute_action, message_response, validate_card};
pub(crate) use lifecycle::{Installation, installation_change};
pub(crate) use mention::{is_bot_mentioned, mention, strip_bot_mention};
pub(crate) use split::{MAX_TEXT_UTF16, check_activity_size, split_text, utf16_len};
pub(crate) use stream::{Stream, StreamConfig, StreamMode, StreamSend, StreamSendKind};
pub(crate) use thread::{reply_in_thread, thread_root};
pub(crate) use typing::{TypingGovernor, typing_activity};

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
