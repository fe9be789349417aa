//! Teams' rate limits, applied before a request is made.
//!
//! Per bot and conversation: 7 sends per 1 s, 8 per 2 s, 60 per 30 s, 1,800 per hour. Per bot and
//! tenant: 50 requests per second. Each window is a sliding log of send times. A slot is reserved a
//! moment before the request reaches Teams, and requests reserved together do not all arrive at once, so
//! every window is kept a little longer than Teams' own ([`margin`]: a tenth, at most 1 s): without it,
//! two bursts a window apart can overlap in Teams' count. Time comes from the caller, so tests drive the
//! windows with a fake clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// `(window, most sends in it)`.
pub(crate) type Limit = (Duration, usize);

/// Teams' per-conversation limits for sends and creates.
pub(crate) const CONVERSATION_LIMITS: [Limit; 4] =
    [(Duration::from_secs(1), 7), (Duration::from_secs(2), 8), (Duration::from_secs(30), 60), (Duration::from_secs(3600), 1800)];

/// Teams' global limit per app per tenant.
pub(crate) const TENANT_LIMITS: [Limit; 1] = [(Duration::from_secs(1), 50)];

/// How much longer than Teams' window a window is kept.
pub(crate) fn margin(window: Duration) -> Duration {
    (window / 10).min(Duration::from_secs(1))
}

/// The windows of one send as the replicas share them ([`crate::store::Store::reserve_sends`]): the same limits
/// and margins, keyed by bot and conversation (exact: conversation ids are case-sensitive) and by bot and
/// tenant (app and tenant ids are GUIDs, compared case-insensitively); reservations lock the tenant's key, which
/// every conversation of the tenant shares. `token` names what the slots are for (an outbox entry's attempt).
pub(crate) fn shared_slots(bot: &str, tenant: &str, conversation: &str, slots: u32, token: Option<String>) -> crate::store::SlotRequest {
    use crate::store::SlotWindow;
    // The unit separator cannot occur in an app id, so the keys of different bots never collide.
    let bot = bot.to_ascii_lowercase();
    let tenant_key = format!("t\u{1f}{bot}\u{1f}{}", tenant.to_ascii_lowercase());
    let conversation_key = format!("c\u{1f}{bot}\u{1f}{conversation}");
    let window = |key: &str, (teams_window, max): Limit| SlotWindow {
        key: key.to_owned(),
        window_ms: i64::try_from((teams_window + margin(teams_window)).as_millis()).unwrap_or(i64::MAX),
        max: i64::try_from(max).unwrap_or(i64::MAX),
    };
    let windows = CONVERSATION_LIMITS
        .iter()
        .map(|l| window(&conversation_key, *l))
        .chain(TENANT_LIMITS.iter().map(|l| window(&tenant_key, *l)))
        .collect();
    crate::store::SlotRequest { lock: tenant_key, windows, slots: i64::from(slots), token }
}

#[derive(Debug, Default)]
struct Log {
    sends: VecDeque<Instant>,
}

impl Log {
    /// How long until one more send fits every limit (zero: now).
    fn wait(&mut self, limits: &[Limit], now: Instant) -> Duration {
        let longest = limits.iter().map(|l| l.0 + margin(l.0)).max().unwrap_or_default();
        while self.sends.front().is_some_and(|t| now.saturating_duration_since(*t) >= longest) {
            self.sends.pop_front();
        }
        let mut wait = Duration::ZERO;
        for &(teams_window, max) in limits {
            let window = teams_window + margin(teams_window);
            // Sends inside the window ending now.
            let inside = self.sends.iter().rev().take_while(|t| now.saturating_duration_since(**t) < window).count();
            if inside >= max {
                // The oldest send that must leave the window before one more fits.
                let idx = self.sends.len() - inside + (inside - max);
                let leaves_at = self.sends[idx] + window;
                wait = wait.max(leaves_at.saturating_duration_since(now));
            }
        }
        wait
    }
}

/// Sliding-window limiter keyed by conversation and by tenant.
#[derive(Debug, Default)]
pub struct Throttle {
    conversations: HashMap<(String, String), Log>,
    tenants: HashMap<(String, String), Log>,
    disabled: bool,
}

impl Throttle {
    pub fn new() -> Self {
        Self::default()
    }

    /// A limiter that never waits (benchmarks against a fake Connector).
    pub fn disabled() -> Self {
        Self { disabled: true, ..Self::default() }
    }

    /// Whether this limiter never waits ([`Self::disabled`]).
    pub(crate) fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Reserve a send to `conversation` of `bot` in `tenant` at `now`: `Ok(())` records it, `Err(wait)`
    /// says how long until it would fit (nothing is recorded).
    pub fn try_acquire(&mut self, bot: &str, tenant: &str, conversation: &str, now: Instant) -> Result<(), Duration> {
        if self.disabled {
            return Ok(());
        }
        let ck = (bot.to_owned(), conversation.to_owned());
        let tk = (bot.to_owned(), tenant.to_owned());
        let conv = self.conversations.entry(ck).or_default();
        let w1 = conv.wait(&CONVERSATION_LIMITS, now);
        let tenant_log = self.tenants.entry(tk.clone()).or_default();
        let w2 = tenant_log.wait(&TENANT_LIMITS, now);
        let wait = w1.max(w2);
        if wait > Duration::ZERO {
            return Err(wait);
        }
        tenant_log.sends.push_back(now);
        if let Some(c) = self.conversations.get_mut(&(bot.to_owned(), conversation.to_owned())) {
            c.sends.push_back(now);
        }
        Ok(())
    }

    /// Forget logs with no send in the last hour (bounded memory).
    pub fn prune(&mut self, now: Instant) {
        let hour = Duration::from_secs(3600);
        self.conversations.retain(|_, l| l.sends.back().is_some_and(|t| now.saturating_duration_since(*t) < hour + margin(hour)));
        let second = Duration::from_secs(1);
        self.tenants.retain(|_, l| l.sends.back().is_some_and(|t| now.saturating_duration_since(*t) < second + margin(second)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send as fast as allowed from `start` for `span`, returning the send times (relative).
    fn drive(t: &mut Throttle, conv: &str, start: Instant, n: usize) -> Vec<Duration> {
        let mut now = start;
        let mut times = Vec::new();
        while times.len() < n {
            match t.try_acquire("bot", "tenant", conv, now) {
                Ok(()) => times.push(now - start),
                Err(wait) => {
                    assert!(wait > Duration::ZERO);
                    now += wait;
                }
            }
        }
        times
    }

    fn max_in_window(times: &[Duration], window: Duration) -> usize {
        (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t - times[i] < window).count()).max().unwrap_or(0)
    }

    #[test]
    fn per_conversation_windows_hold() {
        let mut t = Throttle::new();
        let times = drive(&mut t, "c1", Instant::now(), 200);
        for (window, max) in CONVERSATION_LIMITS {
            assert!(max_in_window(&times, window) <= max, "{window:?} allows at most {max}");
        }
        // 7 go at once, the 8th waits for the 1 s window (plus its margin), the 9th for the 2 s one.
        assert_eq!(times[6], Duration::ZERO);
        assert_eq!(times[7], Duration::from_millis(1100));
        assert_eq!(times[8], Duration::from_millis(2200));
        // 60 per 30 s: the 61st send is at 30 s plus the margin (capped at 1 s).
        assert_eq!(times[60], Duration::from_secs(31));
    }

    #[test]
    fn hourly_limit_holds() {
        let mut t = Throttle::new();
        let times = drive(&mut t, "c1", Instant::now(), 1801);
        assert_eq!(max_in_window(&times, Duration::from_secs(3600)), 1800);
        assert!(times[1800] >= Duration::from_secs(3601));
    }

    #[test]
    fn tenant_limit_spans_conversations() {
        let mut t = Throttle::new();
        let now = Instant::now();
        let mut ok = 0;
        for i in 0..100 {
            if t.try_acquire("bot", "tenant", &format!("c{i}"), now).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 50);
        assert!(t.try_acquire("bot", "other-tenant", "c-x", now).is_ok(), "tenants are separate");
        assert!(t.try_acquire("other-bot", "tenant", "c-y", now).is_ok(), "bots are separate");
        assert!(t.try_acquire("bot", "tenant", "c-z", now + Duration::from_secs(1)).is_err(), "the margin holds");
        assert_eq!(t.try_acquire("bot", "tenant", "c-z", now + Duration::from_millis(1100)), Ok(()));
    }

    #[test]
    fn a_refused_send_is_not_recorded_and_disabled_never_waits() {
        let mut t = Throttle::new();
        let now = Instant::now();
        for _ in 0..7 {
            t.try_acquire("b", "t", "c", now).unwrap();
        }
        for _ in 0..5 {
            assert_eq!(t.try_acquire("b", "t", "c", now), Err(Duration::from_millis(1100)));
        }
        assert_eq!(t.try_acquire("b", "t", "c", now + Duration::from_millis(1100)), Ok(()));
        let mut off = Throttle::disabled();
        for _ in 0..1000 {
            off.try_acquire("b", "t", "c", now).unwrap();
        }
        t.prune(now + Duration::from_secs(7300));
        assert!(t.conversations.is_empty() && t.tenants.is_empty());
    }
}
