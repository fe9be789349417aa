//! The token cache of [`TokenClient`](super::TokenClient) (the bot's client-credentials tokens) and of
//! [`AgentTokenChain`](super::AgentTokenChain) (T1, T2 and T3): single-flight, refresh-ahead, one slot
//! per key.
//!
//! * A token is served from the cache until its `refresh_at` (set by whoever fetched it: 5 minutes
//!   before it expires, half its lifetime for tokens that live less than 10 minutes).
//! * One refresh at a time per key: callers that arrive while it runs wait for it and share its outcome
//!   (token or error), however many they are. Callers whose cached token is still usable (more than a
//!   minute left) get it without waiting.
//! * When a refresh fails and the old token is still usable, the old token is served, and no refresh is
//!   tried for a few seconds (the token endpoint is not hammered).
//! * An expired token is never served, and a failure is never cached beyond the callers that shared it.
//! * Keys never hold a token value.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use super::Clock;
use super::client::AccessToken;

/// A cached token still counts as usable (served while a refresh runs or after one failed) until this
/// long before it expires.
pub(crate) const USABLE_MARGIN: Duration = Duration::from_secs(60);

/// After a failed refresh while the old token is still usable, wait this long before trying again.
pub(crate) const FAILED_REFRESH_QUIET: Duration = Duration::from_secs(10);

/// A fetched token and when to refresh it.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    /// The token (`Debug` shows only its expiry).
    pub token: AccessToken,
    /// From then on, a caller refreshes it.
    pub refresh_at: SystemTime,
}

impl Cached {
    fn usable_at(&self, now: SystemTime) -> bool {
        now + USABLE_MARGIN < self.token.expires_at
    }
}

struct SlotState<E> {
    cached: Option<Cached>,
    /// Bumped when a refresh finishes; a caller that waited sees the change and shares `outcome`.
    generation: u64,
    /// What the last refresh gave its caller: a new token, the old one (refresh failed) or the error.
    outcome: Option<Result<AccessToken, E>>,
    /// After a failed refresh with a usable old token: serve it without refreshing until then.
    quiet_until: Option<SystemTime>,
}

struct Slot<E> {
    state: Mutex<SlotState<E>>,
    flight: tokio::sync::Mutex<()>,
}

impl<E> Slot<E> {
    fn new() -> Self {
        Self {
            state: Mutex::new(SlotState { cached: None, generation: 0, outcome: None, quiet_until: None }),
            flight: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, SlotState<E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn clear(&self) {
        let mut st = self.state();
        st.cached = None;
        st.outcome = None;
        st.quiet_until = None;
    }
}

/// Tokens by key `K`; refreshes fail with `E` (cloned to every caller that shares a failure).
pub(crate) struct TokenCache<K, E> {
    slots: Mutex<HashMap<K, Arc<Slot<E>>>>,
}

impl<K, E> fmt::Debug for TokenCache<K, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.slots.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("TokenCache").field("slots", &n).finish()
    }
}

impl<K, E> TokenCache<K, E>
where
    K: Eq + Hash + Clone + fmt::Debug,
    E: Clone + fmt::Display,
{
    /// An empty cache.
    pub(crate) fn new() -> Self {
        Self { slots: Mutex::new(HashMap::new()) }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<K, Arc<Slot<E>>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, key: &K) -> Arc<Slot<E>> {
        let mut slots = self.slots();
        if let Some(s) = slots.get(key) {
            return Arc::clone(s);
        }
        let slot = Arc::new(Slot::new());
        slots.insert(key.clone(), Arc::clone(&slot));
        slot
    }

    /// The token for `key`: cached, or the outcome of one `fetch` shared by every caller that arrives
    /// while it runs (see the module docs). `clock` says what time it is.
    pub(crate) async fn get<F, Fut>(&self, clock: &dyn Clock, key: &K, fetch: F) -> Result<AccessToken, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Cached, E>>,
    {
        let slot = self.slot(key);
        let now = clock.now();
        let seen = {
            let st = slot.state();
            if let Some(c) = &st.cached {
                let quiet = st.quiet_until.is_some_and(|q| now < q);
                if (now < c.refresh_at && now < c.token.expires_at) || (quiet && c.usable_at(now)) {
                    return Ok(c.token.clone());
                }
            }
            st.generation
        };
        let _flight = match slot.flight.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Someone is refreshing: a still-usable token needs no wait.
                if let Some(c) = slot.state().cached.as_ref().filter(|c| c.usable_at(now)) {
                    return Ok(c.token.clone());
                }
                slot.flight.lock().await
            }
        };
        {
            let st = slot.state();
            if st.generation != seen {
                // A refresh finished while we waited: share its outcome (however short the new token's life).
                match &st.outcome {
                    Some(Ok(t)) if clock.now() < t.expires_at => return Ok(t.clone()),
                    Some(Err(e)) => return Err(e.clone()),
                    _ => {}
                }
            }
        }
        let result = fetch().await;
        let now = clock.now();
        let mut st = slot.state();
        st.generation += 1;
        let outcome = match result {
            Ok(fresh) => {
                st.cached = Some(fresh.clone());
                st.quiet_until = None;
                Ok(fresh.token)
            }
            Err(e) => match st.cached.as_ref().filter(|c| c.usable_at(now)) {
                Some(old) => {
                    tracing::warn!(key = ?key, error = %e, "token refresh failed; serving the cached token until it nears expiry");
                    let token = old.token.clone();
                    st.quiet_until = Some(now + FAILED_REFRESH_QUIET);
                    Ok(token)
                }
                None => Err(e),
            },
        };
        st.outcome = Some(outcome.clone());
        outcome
    }

    /// Forget the token for `key` (the resource refused it with 401): the next call fetches anew.
    pub(crate) fn invalidate(&self, key: &K) {
        let slot = self.slots().get(key).map(Arc::clone);
        if let Some(slot) = slot {
            slot.clear();
        }
    }

    /// Forget the tokens of every key for which `pred` holds.
    pub(crate) fn invalidate_where(&self, pred: impl Fn(&K) -> bool) {
        let slots: Vec<_> = self.slots().iter().filter(|(k, _)| pred(k)).map(|(_, s)| Arc::clone(s)).collect();
        for slot in slots {
            slot.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use secrecy::{ExposeSecret, SecretString};

    use super::*;

    struct TestClock(Mutex<SystemTime>);

    impl TestClock {
        fn new() -> Arc<Self> {
            Arc::new(Self(Mutex::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))))
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    /// Hands out tokens `t1`, `t2`… living `lifetime` (refresh 5 minutes ahead) and counts the fetches;
    /// fails instead while `fail` is set. Each fetch takes `delay` (tokio time).
    struct Issuer {
        clock: Arc<TestClock>,
        fetches: AtomicU32,
        fail: Mutex<bool>,
        lifetime: Duration,
        delay: Duration,
    }

    impl Issuer {
        fn new(clock: &Arc<TestClock>, delay: Duration) -> Self {
            Self {
                clock: Arc::clone(clock),
                fetches: AtomicU32::new(0),
                fail: Mutex::new(false),
                lifetime: Duration::from_secs(3600),
                delay,
            }
        }

        fn fetches(&self) -> u32 {
            self.fetches.load(Ordering::SeqCst)
        }

        fn set_fail(&self, fail: bool) {
            *self.fail.lock().unwrap() = fail;
        }

        async fn fetch(&self) -> Result<Cached, String> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if *self.fail.lock().unwrap() {
                return Err(format!("refresh {n} failed"));
            }
            let expires_at = self.clock.now() + self.lifetime;
            let token = AccessToken { value: SecretString::from(format!("t{n}")), expires_at };
            Ok(Cached { token, refresh_at: expires_at - Duration::from_secs(300) })
        }
    }

    type Cache = TokenCache<&'static str, String>;

    async fn get(cache: &Cache, issuer: &Issuer, key: &'static str) -> Result<String, String> {
        cache.get(issuer.clock.as_ref(), &key, || issuer.fetch()).await.map(|t| t.value.expose_secret().to_owned())
    }

    async fn many(cache: &Arc<Cache>, issuer: &Arc<Issuer>, n: usize) -> Vec<Result<String, String>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (cache, issuer) = (Arc::clone(cache), Arc::clone(issuer));
                tokio::spawn(async move { get(&cache, &issuer, "k").await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_on_a_cold_cache_cause_one_fetch() {
        let clock = TestClock::new();
        let (cache, issuer) = (Arc::new(Cache::new()), Arc::new(Issuer::new(&clock, Duration::from_millis(200))));
        let results = many(&cache, &issuer, 50).await;
        assert_eq!(issuer.fetches(), 1);
        assert!(results.iter().all(|r| r.as_deref() == Ok("t1")), "{results:?}");
        // Warm: none more, and other keys have their own slot.
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t1"));
        assert_eq!(issuer.fetches(), 1);
        assert_eq!(get(&cache, &issuer, "other").await.as_deref(), Ok("t2"));
        assert_eq!(issuer.fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_failure_which_is_not_cached() {
        let clock = TestClock::new();
        let (cache, issuer) = (Arc::new(Cache::new()), Arc::new(Issuer::new(&clock, Duration::from_millis(200))));
        issuer.set_fail(true);
        let results = many(&cache, &issuer, 20).await;
        assert_eq!(issuer.fetches(), 1);
        assert!(results.iter().all(|r| *r == Err("refresh 1 failed".to_owned())), "{results:?}");
        issuer.set_fail(false);
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_refreshed_ahead_of_expiry_once() {
        let clock = TestClock::new();
        let (cache, issuer) = (Arc::new(Cache::new()), Arc::new(Issuer::new(&clock, Duration::from_millis(200))));
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t1"));
        clock.advance(Duration::from_secs(3600 - 301)); // 5 min 1 s left: cached
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t1"));
        assert_eq!(issuer.fetches(), 1);
        clock.advance(Duration::from_secs(2)); // 4 min 59 s left: one refresh
        let results = many(&cache, &issuer, 20).await;
        assert_eq!(issuer.fetches(), 2);
        // The refresher gets the new token; callers that came while it ran may get the still-usable old one.
        assert!(results.iter().all(|r| matches!(r.as_deref(), Ok("t1" | "t2"))), "{results:?}");
        assert!(results.iter().any(|r| r.as_deref() == Ok("t2")), "{results:?}");
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t2"));
        assert_eq!(issuer.fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_with_a_usable_token_do_not_wait_for_the_refresh() {
        let clock = TestClock::new();
        let (cache, issuer) = (Arc::new(Cache::new()), Arc::new(Issuer::new(&clock, Duration::from_secs(5))));
        get(&cache, &issuer, "k").await.unwrap();
        clock.advance(Duration::from_secs(3400)); // refresh due, valid 200 s more
        let refresher = {
            let (cache, issuer) = (Arc::clone(&cache), Arc::clone(&issuer));
            tokio::spawn(async move { get(&cache, &issuer, "k").await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(issuer.fetches(), 2, "the refresh is running");
        let start = tokio::time::Instant::now();
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t1"));
        assert_eq!(start.elapsed(), Duration::ZERO, "served without waiting");
        assert_eq!(refresher.await.unwrap().as_deref(), Ok("t2"));
        assert_eq!(issuer.fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_serves_the_usable_old_token_and_waits_before_trying_again() {
        let clock = TestClock::new();
        let (cache, issuer) = (Arc::new(Cache::new()), Arc::new(Issuer::new(&clock, Duration::ZERO)));
        get(&cache, &issuer, "k").await.unwrap();
        clock.advance(Duration::from_secs(3400)); // refresh due, valid 200 s more
        issuer.set_fail(true);
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t1"));
        assert_eq!(issuer.fetches(), 2);
        clock.advance(FAILED_REFRESH_QUIET - Duration::from_secs(1));
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t1"));
        assert_eq!(issuer.fetches(), 2, "quiet after a failed refresh");
        clock.advance(Duration::from_secs(1));
        issuer.set_fail(false);
        assert_eq!(get(&cache, &issuer, "k").await.as_deref(), Ok("t3"));
        assert_eq!(issuer.fetches(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_or_nearly_expired_token_is_never_served() {
        let clock = TestClock::new();
        let (cache, issuer) = (Arc::new(Cache::new()), Arc::new(Issuer::new(&clock, Duration::from_millis(100))));
        get(&cache, &issuer, "k").await.unwrap();
        issuer.set_fail(true);

        // Within the last minute: not usable, so a failed refresh is an error, however often asked.
        clock.advance(Duration::from_secs(3600 - 30));
        assert_eq!(get(&cache, &issuer, "k").await, Err("refresh 2 failed".to_owned()));
        assert_eq!(get(&cache, &issuer, "k").await, Err("refresh 3 failed".to_owned()));

        // Expired: every caller waits for the one refresh and shares its outcome.
        clock.advance(Duration::from_secs(60));
        let results = many(&cache, &issuer, 20).await;
        assert_eq!(issuer.fetches(), 4);
        assert!(results.iter().all(|r| *r == Err("refresh 4 failed".to_owned())), "{results:?}");
        issuer.set_fail(false);
        let results = many(&cache, &issuer, 20).await;
        assert_eq!(issuer.fetches(), 5);
        assert!(results.iter().all(|r| r.as_deref() == Ok("t5")), "{results:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forgets_only_the_keys_named() {
        let clock = TestClock::new();
        let (cache, issuer) = (Arc::new(Cache::new()), Arc::new(Issuer::new(&clock, Duration::ZERO)));
        for k in ["a1", "a2", "b1"] {
            get(&cache, &issuer, k).await.unwrap();
        }
        cache.invalidate(&"b1");
        cache.invalidate(&"never-asked");
        assert_eq!(get(&cache, &issuer, "b1").await.as_deref(), Ok("t4"));
        cache.invalidate_where(|k| k.starts_with('a'));
        assert_eq!(get(&cache, &issuer, "a1").await.as_deref(), Ok("t5"));
        assert_eq!(get(&cache, &issuer, "a2").await.as_deref(), Ok("t6"));
        assert_eq!(get(&cache, &issuer, "b1").await.as_deref(), Ok("t4"));
        assert_eq!(issuer.fetches(), 6);
    }

    #[test]
    fn debug_shows_no_token() {
        let cache = Cache::new();
        let key = "k";
        let slot = cache.slot(&key);
        let token = AccessToken { value: SecretString::from("secret-token-value"), expires_at: SystemTime::now() };
        slot.state().cached = Some(Cached { token: token.clone(), refresh_at: SystemTime::now() });
        slot.state().outcome = Some(Ok(token));
        let shown = format!("{cache:?} {:?}", slot.state().cached);
        assert!(!shown.contains("secret-token-value"), "{shown}");
    }
}
