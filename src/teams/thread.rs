//! Channel threads.
//!
//! A Teams channel is a conversation `19:…@thread.tacv2`; a thread in it (a post and its replies) is the
//! conversation `19:…@thread.tacv2;messageid=<id of the post>`. Sending to the channel id starts a new post;
//! sending to the thread id replies in that thread. The root id is numeric and non-zero (teams.py
//! `utils/thread.py`; teams-sdk blog "Quoted Replies and Threaded Replies"); any thread part already in
//! the conversation id is replaced, never doubled. Threads in chats and meetings are "coming": only
//! channels have them today.

use std::fmt;

#[cfg(test)]
use crate::activity::Activity;

const MESSAGE_ID_KEY: &str = ";messageid=";

/// A conversation id split into its channel part and the thread's root message id, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ThreadId {
    channel: String,
    message_id: Option<String>,
}

/// Why a thread id could not be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ThreadError {
    #[error("the conversation id is empty")]
    EmptyConversation,
    #[error("the root message id is empty")]
    EmptyMessageId,
    #[error("the root message id contains `;`, `=`, whitespace or control characters")]
    InvalidMessageId,
    #[error("the root message id must be a Teams message id: digits, not zero")]
    NotNumeric,
}

impl ThreadId {
    #[cfg(test)]
    /// Splits `conversation_id` at `;messageid=` (matched case-insensitively). Anything after a further `;`
    /// in the message id part is not part of the message id.
    pub(crate) fn parse(conversation_id: &str) -> Self {
        match find_key(conversation_id) {
            Some(i) => {
                let rest = &conversation_id[i + MESSAGE_ID_KEY.len()..];
                let id = rest.split(';').next().unwrap_or_default();
                Self { channel: conversation_id[..i].to_owned(), message_id: Some(id.to_owned()).filter(|s| !s.is_empty()) }
            }
            None => Self { channel: conversation_id.to_owned(), message_id: None },
        }
    }

    /// A thread in `channel` rooted at `message_id`; any thread part already in `channel` is replaced.
    pub(crate) fn new(channel: &str, message_id: &str) -> Result<Self, ThreadError> {
        let channel = thread_root(channel);
        if channel.is_empty() {
            return Err(ThreadError::EmptyConversation);
        }
        if message_id.is_empty() {
            return Err(ThreadError::EmptyMessageId);
        }
        if message_id.chars().any(|c| c == ';' || c == '=' || c.is_whitespace() || c.is_control()) {
            return Err(ThreadError::InvalidMessageId);
        }
        if !message_id.bytes().all(|b| b.is_ascii_digit()) || message_id.bytes().all(|b| b == b'0') {
            return Err(ThreadError::NotNumeric);
        }
        Ok(Self { channel: channel.to_owned(), message_id: Some(message_id.to_owned()) })
    }

    #[cfg(test)]
    /// The channel (thread-less) conversation id.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    #[cfg(test)]
    /// The root message id of the thread, if this names a thread.
    pub(crate) fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.channel)?;
        if let Some(id) = &self.message_id {
            f.write_str(MESSAGE_ID_KEY)?;
            f.write_str(id)?;
        }
        Ok(())
    }
}

/// The conversation id without its `;messageid=…` part: where a new top-level post goes.
pub(crate) fn thread_root(conversation_id: &str) -> &str {
    find_key(conversation_id).map_or(conversation_id, |i| &conversation_id[..i])
}

/// The root message id a thread conversation id names (`…;messageid=<id>`), if any.
pub(crate) fn thread_message_id(conversation_id: &str) -> Option<&str> {
    find_key(conversation_id).map(|i| &conversation_id[i + MESSAGE_ID_KEY.len()..]).map(str::trim).filter(|s| !s.is_empty())
}

/// The conversation id of the thread rooted at `root_message_id` in the channel of `conversation_id`
/// (which may itself be a thread id): `19:…@thread.tacv2;messageid=<root_message_id>`.
pub(crate) fn reply_in_thread(conversation_id: &str, root_message_id: &str) -> Result<String, ThreadError> {
    ThreadId::new(conversation_id, root_message_id).map(|t| t.to_string())
}

#[cfg(test)]
/// Where a reply to `activity` keeps the thread: for a channel message whose conversation id names no thread
/// (a new post), the thread rooted at the activity's own id; otherwise the conversation id as it is. `None`
/// without a conversation id.
pub(crate) fn thread_conversation_id(activity: &Activity) -> Option<String> {
    let conversation = activity.conversation_id()?;
    let is_channel = activity.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()) == Some("channel");
    if is_channel
        && find_key(conversation).is_none()
        && let Some(Ok(thread)) = activity.id.as_deref().map(|id| reply_in_thread(conversation, id))
    {
        return Some(thread);
    }
    Some(conversation.to_owned())
}

fn find_key(conversation_id: &str) -> Option<usize> {
    conversation_id
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| conversation_id.get(i..i + MESSAGE_ID_KEY.len()).is_some_and(|s| s.eq_ignore_ascii_case(MESSAGE_ID_KEY)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teams::testdata;

    #[test]
    fn forms_and_parses_thread_ids() {
        let channel = "19:team-general@thread.tacv2";
        let thread = reply_in_thread(channel, "1795320446875").unwrap();
        assert_eq!(thread, "19:team-general@thread.tacv2;messageid=1795320446875");
        let parsed = ThreadId::parse(&thread);
        assert_eq!(parsed.channel(), channel);
        assert_eq!(parsed.message_id(), Some("1795320446875"));
        assert_eq!(parsed.to_string(), thread);
        assert_eq!(thread_root(&thread), channel);
        assert_eq!(thread_root(channel), channel);
        // A thread id given as the channel: the thread part is replaced, not doubled.
        assert_eq!(reply_in_thread(&thread, "42").unwrap(), "19:team-general@thread.tacv2;messageid=42");
    }

    #[test]
    fn parses_ids_without_a_thread_and_odd_casing() {
        let personal = ThreadId::parse("a:1xyz");
        assert_eq!(personal.message_id(), None);
        assert_eq!(personal.to_string(), "a:1xyz");
        let upper = ThreadId::parse("19:abc@thread.tacv2;MessageId=7");
        assert_eq!((upper.channel(), upper.message_id()), ("19:abc@thread.tacv2", Some("7")));
        assert_eq!(ThreadId::parse("19:abc@thread.tacv2;messageid=").message_id(), None);
    }

    #[test]
    fn refuses_bad_parts() {
        assert_eq!(reply_in_thread("19:a@thread.tacv2", ""), Err(ThreadError::EmptyMessageId));
        assert_eq!(reply_in_thread("19:a@thread.tacv2", "1;messageid=2"), Err(ThreadError::InvalidMessageId));
        assert_eq!(reply_in_thread("19:a@thread.tacv2", "1 2"), Err(ThreadError::InvalidMessageId));
        assert_eq!(reply_in_thread(";messageid=3", "4"), Err(ThreadError::EmptyConversation));
        // The root is a Teams message id: digits, not zero.
        assert_eq!(reply_in_thread("19:a@thread.tacv2", "1:42"), Err(ThreadError::NotNumeric));
        assert_eq!(reply_in_thread("19:a@thread.tacv2", "abc"), Err(ThreadError::NotNumeric));
        assert_eq!(reply_in_thread("19:a@thread.tacv2", "000"), Err(ThreadError::NotNumeric));
        assert_eq!(reply_in_thread("19:a@thread.tacv2", "0123").as_deref(), Ok("19:a@thread.tacv2;messageid=0123"));
    }

    #[test]
    fn replies_stay_in_the_playground_thread() {
        let a = testdata::activity(testdata::CHANNEL_MENTION_PREFIXED);
        assert_eq!(thread_conversation_id(&a).as_deref(), Some("19:team-general@thread.tacv2;messageid=1795320446875"));
        // A channel post whose conversation id has no thread part: the post becomes the thread root.
        let mut post = a.clone();
        post.conversation.as_mut().unwrap().id = "19:team-general@thread.tacv2".into();
        post.id = Some("1795320446875".into());
        assert_eq!(thread_conversation_id(&post).as_deref(), Some("19:team-general@thread.tacv2;messageid=1795320446875"));
        // Personal chats have no threads.
        let personal = testdata::activity(testdata::MESSAGE_PERSONAL);
        assert_eq!(thread_conversation_id(&personal).as_deref(), Some("32bad99c-23bf-4c9b-80be-6132fe6f656d"));
    }
}
