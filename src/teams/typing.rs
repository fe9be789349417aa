//! Typing indicators.
//!
//! A typing activity is `{"type":"typing"}` posted to the conversation. Clients show it for about 3 s, and the
//! activity spec says senders should not send one more often than every 3 s (A6001); each one counts against
//! the conversation's send rate limits, and a typing loop is a known way into a 429 spiral (OpenClaw #53184).
//! Teams shows none in channels, so none is sent there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[cfg(test)]
use crate::activity::Activity;

/// The minimum time between two typing indicators in one conversation.
pub(crate) const TYPING_INTERVAL: Duration = Duration::from_secs(3);

/// Conversations remembered before old entries are pruned.
const PRUNE_ABOVE: usize = 4096;

/// A typing activity, as posted with `sendToConversation`.
pub(crate) fn typing_activity() -> Value {
    json!({"type": "typing"})
}

/// Decides whether a typing indicator may be sent now: at most one per conversation per
/// [`TYPING_INTERVAL`], none in channel conversations, none while a conversation is backing off after a
/// `429`. Time is passed in, so a test clock drives it. Not synchronised: wrap it in a mutex to share it.
#[derive(Debug)]
pub(crate) struct TypingGovernor {
    interval: Duration,
    /// Per conversation id: the earliest time the next indicator may go out.
    next_allowed: HashMap<String, Instant>,
}

impl Default for TypingGovernor {
    fn default() -> Self {
        Self::new()
    }
}

impl TypingGovernor {
    /// A governor with the [`TYPING_INTERVAL`] of 3 s.
    pub(crate) fn new() -> Self {
        Self::with_interval(TYPING_INTERVAL)
    }

    /// A governor with another minimum interval.
    pub(crate) fn with_interval(interval: Duration) -> Self {
        Self { interval, next_allowed: HashMap::new() }
    }

    /// Whether an indicator may be sent to `conversation_id` (of `conversation_type`, e.g. `personal`,
    /// `groupChat`, `channel`) at `now`; if so, the send is recorded and the next one is allowed
    /// [`TYPING_INTERVAL`] later. Always `false` for `channel` conversations.
    pub(crate) fn allow(&mut self, conversation_id: &str, conversation_type: Option<&str>, now: Instant) -> bool {
        if conversation_type.is_some_and(|t| t.eq_ignore_ascii_case("channel")) || conversation_id.is_empty() {
            return false;
        }
        if self.next_allowed.get(conversation_id).is_some_and(|&next| now < next) {
            return false;
        }
        self.prune(now);
        self.next_allowed.insert(conversation_id.to_owned(), now + self.interval);
        true
    }

    #[cfg(test)]
    /// [`allow`](Self::allow) for the conversation of an inbound activity: the typing activity to send, or
    /// `None`.
    pub(crate) fn typing_for(&mut self, activity: &Activity, now: Instant) -> Option<Value> {
        let conversation = activity.conversation.as_ref()?;
        self.allow(&conversation.id, conversation.conversation_type.as_deref(), now).then(typing_activity)
    }

    #[cfg(test)]
    /// Records that a typing send was throttled (429): no indicator goes to `conversation_id` before
    /// `now + back_off` (or before the interval, if that is later).
    pub(crate) fn throttled(&mut self, conversation_id: &str, now: Instant, back_off: Duration) {
        let until = now + back_off.max(self.interval);
        let entry = self.next_allowed.entry(conversation_id.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Forgets conversations whose interval has passed, once many are remembered.
    fn prune(&mut self, now: Instant) {
        if self.next_allowed.len() >= PRUNE_ABOVE {
            self.next_allowed.retain(|_, next| *next > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teams::testdata;

    #[test]
    fn typing_is_just_the_type() {
        assert_eq!(typing_activity(), json!({"type": "typing"}));
    }

    #[test]
    fn at_most_one_per_conversation_every_three_seconds() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut g = TypingGovernor::new();
        assert!(g.allow("a:1", Some("personal"), at(0)));
        assert!(!g.allow("a:1", Some("personal"), at(1)));
        assert!(!g.allow("a:1", Some("personal"), at(2_999)));
        assert!(g.allow("19:g@thread.v2", Some("groupChat"), at(100)), "other conversations are independent");
        assert!(g.allow("a:1", Some("personal"), at(3_000)));
        assert!(!g.allow("a:1", Some("personal"), at(5_999)));
        assert!(g.allow("a:1", None, at(6_000)));
    }

    #[test]
    fn never_in_channels() {
        let t0 = Instant::now();
        let mut g = TypingGovernor::new();
        assert!(!g.allow("19:team-general@thread.tacv2;messageid=1", Some("channel"), t0));
        assert!(!g.allow("19:team-general@thread.tacv2;messageid=1", Some("channel"), t0 + Duration::from_secs(60)));
        let channel = testdata::activity(testdata::CHANNEL_MENTION_PREFIXED);
        assert_eq!(g.typing_for(&channel, t0), None);
        let personal = testdata::activity(testdata::MESSAGE_PERSONAL);
        assert_eq!(g.typing_for(&personal, t0), Some(typing_activity()));
        assert_eq!(g.typing_for(&personal, t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn backs_off_after_a_429() {
        let t0 = Instant::now();
        let mut g = TypingGovernor::new();
        assert!(g.allow("a:1", Some("personal"), t0));
        g.throttled("a:1", t0, Duration::from_secs(30));
        assert!(!g.allow("a:1", Some("personal"), t0 + Duration::from_secs(29)));
        assert!(g.allow("a:1", Some("personal"), t0 + Duration::from_secs(30)));
        // A shorter back-off does not shorten the interval already granted.
        g.throttled("a:1", t0 + Duration::from_secs(30), Duration::from_secs(1));
        assert!(!g.allow("a:1", Some("personal"), t0 + Duration::from_secs(32)));
    }

    #[test]
    fn prunes_old_conversations() {
        let t0 = Instant::now();
        let mut g = TypingGovernor::with_interval(Duration::from_secs(1));
        for i in 0..PRUNE_ABOVE {
            assert!(g.allow(&format!("a:{i}"), Some("personal"), t0));
        }
        assert!(g.allow("a:new", Some("personal"), t0 + Duration::from_secs(2)));
        assert_eq!(g.next_allowed.len(), 1);
    }
}
