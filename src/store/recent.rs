//! The activities this process committed lately, so that a redelivery is acknowledged without a round
//! trip to the store.
//!
//! Teams redelivers an activity when its acknowledgement was slow or lost, usually within seconds. The
//! store's dedupe keys are the truth; this is a small window in front of them that only ever answers
//! "already committed" for a key the store accepted in this process, with the store's own expiry. A
//! miss says nothing (the store decides), so a bounded FIFO window is enough: an evicted key costs one
//! store round trip, never a second commit. Another replica's commits are not seen here, and need not be.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

#[cfg(doc)]
use super::InboundRecord;

/// How many keys the window holds by default: a few seconds of traffic at thousands of activities a
/// second, under a megabyte.
pub const DEFAULT_CAPACITY: usize = 4096;

/// A bounded window of committed dedupe keys (bot, conversation, activity id) with their expiry.
#[derive(Debug)]
pub struct RecentCommits {
    capacity: usize,
    inner: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    expiry: HashMap<String, i64>,
    order: VecDeque<String>,
}

/// One dedupe key as one string. Each part is length-prefixed, so no two different triples give the
/// same string whatever characters the ids hold.
fn key(bot_app_id: &str, conversation_id: &str, activity_id: &str) -> String {
    format!("{}:{bot_app_id}{}:{conversation_id}{activity_id}", bot_app_id.len(), conversation_id.len())
}

impl Default for RecentCommits {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl RecentCommits {
    /// A window of `capacity` keys (0 turns it off: every lookup misses).
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::new(Window::default()) }
    }

    /// Whether this exact activity was committed here and its dedupe key has not expired at `now_ms`:
    /// then a redelivery is a duplicate for certain. `false` means "ask the store".
    pub fn committed(&self, bot_app_id: &str, conversation_id: &str, activity_id: &str, now_ms: i64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let k = key(bot_app_id, conversation_id, activity_id);
        let window = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        window.expiry.get(&k).is_some_and(|&expires| expires >= now_ms)
    }

    /// Remember an activity the store has just accepted (committed durably), with the expiry of the
    /// dedupe key it wrote ([`InboundRecord::dedupe_expires_at_ms`]).
    pub fn remember(&self, bot_app_id: &str, conversation_id: &str, activity_id: &str, expires_at_ms: i64) {
        if self.capacity == 0 {
            return;
        }
        let k = key(bot_app_id, conversation_id, activity_id);
        let mut window = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if window.expiry.insert(k.clone(), expires_at_ms).is_none() {
            window.order.push_back(k);
        }
        while window.order.len() > self.capacity {
            if let Some(old) = window.order.pop_front() {
                window.expiry.remove(&old);
            }
        }
    }

    /// How many keys the window holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).order.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_remembered_unexpired_key_is_a_duplicate() {
        let recent = RecentCommits::new(8);
        assert!(!recent.committed("bot", "c", "1", 0), "nothing remembered yet");
        recent.remember("bot", "c", "1", 100);
        assert!(recent.committed("bot", "c", "1", 100));
        assert!(!recent.committed("bot", "c", "1", 101), "expired with the store's key");
        assert!(!recent.committed("other", "c", "1", 0), "another bot");
        assert!(!recent.committed("bot", "c", "2", 0), "another activity");
        assert!(!recent.committed("bot", "c1", "", 0));
    }

    #[test]
    fn keys_cannot_run_into_each_other() {
        let recent = RecentCommits::new(8);
        recent.remember("bot", "a:b", "c", 100);
        assert!(!recent.committed("bot", "a", "b:c", 0));
        assert!(!recent.committed("bot", "a:", "bc", 0));
        assert_ne!(key("b", "ab", "c"), key("b", "a", "bc"));
        assert_ne!(key("b1", "2", "x"), key("b", "12", "x"));
    }

    #[test]
    fn the_window_is_bounded_and_forgets_the_oldest_first() {
        let recent = RecentCommits::new(3);
        for i in 0..5 {
            recent.remember("bot", "c", &i.to_string(), 100);
        }
        assert_eq!(recent.len(), 3);
        assert!(!recent.committed("bot", "c", "0", 0));
        assert!(!recent.committed("bot", "c", "1", 0));
        for i in 2..5 {
            assert!(recent.committed("bot", "c", &i.to_string(), 0), "{i}");
        }
        // Remembering a key again does not grow the window.
        recent.remember("bot", "c", "4", 100);
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn capacity_zero_turns_it_off() {
        let recent = RecentCommits::new(0);
        recent.remember("bot", "c", "1", 100);
        assert!(!recent.committed("bot", "c", "1", 0));
        assert!(recent.is_empty());
    }
}
