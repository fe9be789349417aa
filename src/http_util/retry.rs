//! The one retry loop of the outbound HTTP clients (Entra token requests, Microsoft Graph), on [`backon`].
//!
//! * The caller runs one attempt at a time and says, for each failure, whether it may be tried again
//!   ([`Retry`]): never, after the backoff, or after exactly what the server asked for (`Retry-After`).
//! * The backoff is exponential (doubled per attempt from [`RetryPolicy::base_delay`], capped at
//!   [`RetryPolicy::max_delay`]) with jitter: each wait is between half and all of that delay.
//! * A `Retry-After` is waited exactly; one longer than [`RetryPolicy::max_retry_after`] is not waited
//!   for: the attempt's error is returned at once.
//! * At most [`RetryPolicy::max_attempts`] attempts in all, the first included; then the last error.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

/// How failed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry; 0 counts as 1).
    pub max_attempts: u32,
    /// The first backoff; doubled on each retry.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: the request fails at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// Whether a failed attempt may be tried again, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: a permanent error, or a request that may have landed and must not be sent twice.
    Never,
    /// After the policy's backoff.
    Backoff,
    /// After exactly this long (the server's `Retry-After`); given up at once when it is longer than
    /// [`RetryPolicy::max_retry_after`].
    After(Duration),
}

/// A failed attempt: the error (returned if no attempt follows) and whether another may follow.
#[derive(Debug)]
pub struct Failed<E> {
    /// What went wrong.
    pub error: E,
    /// Whether (and when) to try again.
    pub retry: Retry,
}

impl<E> Failed<E> {
    /// A failure that is never retried.
    pub fn never(error: E) -> Self {
        Self { error, retry: Retry::Never }
    }

    /// A failure retried after the backoff.
    pub fn backoff(error: E) -> Self {
        Self { error, retry: Retry::Backoff }
    }

    /// A failure retried after exactly `after`.
    pub fn after(error: E, after: Duration) -> Self {
        Self { error, retry: Retry::After(after) }
    }

    /// A transient failure: retried after the server's `Retry-After` when it sent one, else after the backoff.
    pub fn transient(error: E, retry_after: Option<Duration>) -> Self {
        Self { error, retry: retry_after.map_or(Retry::Backoff, Retry::After) }
    }
}

impl RetryPolicy {
    /// The backoff steps. backon's jitter adds up to 100 % of a step, so steps of half the delay give
    /// waits from half to all of the doubled, capped delay.
    fn backoff(&self) -> ExponentialBuilder {
        let retries = usize::try_from(self.max_attempts.max(1) - 1).unwrap_or(usize::MAX);
        ExponentialBuilder::new()
            .with_min_delay(self.base_delay.min(self.max_delay) / 2)
            .with_max_delay(self.max_delay / 2)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(retries)
    }

    /// The wait before the next attempt after a failure that asks for `retry`, when the backoff's next
    /// step is `next` (`None`: the budget is spent). `None`: give up.
    fn wait(&self, retry: Retry, next: Option<Duration>) -> Option<Duration> {
        let next = next?;
        match retry {
            Retry::Never => None,
            Retry::Backoff => Some(next),
            Retry::After(after) if after > self.max_retry_after => None,
            Retry::After(after) => Some(after),
        }
    }

    /// Run `attempt` until it succeeds, fails for good or the budget is spent; the last error is returned.
    /// `on_retry` sees each failure that will be retried, the number of the attempt that failed (from 1)
    /// and the wait before the next.
    pub async fn run<T, E, F, Fut>(&self, attempt: F, mut on_retry: impl FnMut(&E, u32, Duration)) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failed<E>>>,
    {
        let mut failed = 0u32;
        attempt
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(|f: &Failed<E>| f.retry != Retry::Never)
            .adjust(|f, next| self.wait(f.retry, next))
            .notify(|f, wait| {
                failed += 1;
                on_retry(&f.error, failed, wait);
            })
            .await
            .map_err(|f| f.error)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(300),
        max_retry_after: Duration::from_secs(10),
    };

    /// Runs `policy` over attempts that fail with `script` (in order; then succeed), and returns the
    /// result, the attempts made, the waits reported and the (paused) time that passed.
    async fn run(policy: RetryPolicy, script: Vec<Retry>) -> (Result<u32, String>, u32, Vec<Duration>, Duration) {
        let attempts = Mutex::new(0u32);
        let mut waits = Vec::new();
        let start = Instant::now();
        let result = policy
            .run(
                || {
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        *a += 1;
                        *a
                    };
                    let outcome = script.get(n as usize - 1).copied();
                    async move {
                        match outcome {
                            Some(retry) => Err(Failed { error: format!("failure {n}"), retry }),
                            None => Ok(n),
                        }
                    }
                },
                |_, _, wait| waits.push(wait),
            )
            .await;
        let n = *attempts.lock().unwrap();
        (result, n, waits, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_with_jitter_up_to_the_cap() {
        let (result, attempts, waits, elapsed) = run(POLICY, vec![Retry::Backoff; 4]).await;
        assert_eq!(result, Ok(5));
        assert_eq!(attempts, 5);
        // 100 ms, 200 ms, then capped at 300 ms: each wait is between half and all of it (backon computes
        // in f32, hence the microsecond of slack).
        let caps = [100, 200, 300, 300].map(Duration::from_millis);
        let slack = Duration::from_micros(1);
        assert_eq!(waits.len(), caps.len());
        for (wait, cap) in waits.iter().zip(caps) {
            assert!(*wait + slack >= cap / 2 && *wait <= cap + slack, "{wait:?} not within {:?}..={cap:?}", cap / 2);
        }
        // The reported waits are the waits (tokio's timer rounds each up to the millisecond).
        let total: Duration = waits.iter().sum();
        assert!(elapsed >= total && elapsed <= total + Duration::from_millis(4), "{elapsed:?} vs {total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_exactly() {
        let asked = [Duration::from_secs(7), Duration::ZERO, Duration::from_millis(1500)];
        let (result, attempts, waits, elapsed) = run(POLICY, asked.iter().map(|d| Retry::After(*d)).collect()).await;
        assert_eq!(result, Ok(4));
        assert_eq!(attempts, 4);
        assert_eq!(waits, asked);
        assert_eq!(elapsed, Duration::from_millis(8500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_maximum_gives_up_at_once() {
        let script = vec![Retry::After(Duration::from_secs(2)), Retry::After(Duration::from_secs(11)), Retry::Backoff];
        let (result, attempts, waits, elapsed) = run(POLICY, script).await;
        assert_eq!(result, Err("failure 2".into()));
        assert_eq!(attempts, 2);
        assert_eq!(waits, [Duration::from_secs(2)]);
        assert_eq!(elapsed, Duration::from_secs(2), "no wait after the refused Retry-After");
        // Exactly the maximum is still waited.
        let (result, _, waits, _) = run(POLICY, vec![Retry::After(Duration::from_secs(10))]).await;
        assert_eq!(result, Ok(2));
        assert_eq!(waits, [Duration::from_secs(10)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_never_retried() {
        let script = vec![Retry::After(Duration::from_secs(1)), Retry::Never, Retry::Backoff];
        let (result, attempts, waits, elapsed) = run(POLICY, script).await;
        assert_eq!(result, Err("failure 2".into()));
        assert_eq!(attempts, 2);
        assert_eq!(waits, [Duration::from_secs(1)]);
        assert_eq!(elapsed, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_counts_every_attempt_and_returns_the_last_error() {
        let policy = RetryPolicy { max_attempts: 3, ..POLICY };
        let script = vec![Retry::Backoff, Retry::After(Duration::from_secs(1)), Retry::Backoff, Retry::Backoff];
        let (result, attempts, waits, _) = run(policy, script).await;
        assert_eq!(result, Err("failure 3".into()));
        assert_eq!(attempts, 3);
        assert_eq!(waits.len(), 2);
        assert_eq!(waits[1], Duration::from_secs(1));

        for max_attempts in [0, 1] {
            let (result, attempts, waits, elapsed) = run(RetryPolicy { max_attempts, ..POLICY }, vec![Retry::Backoff]).await;
            assert_eq!(result, Err("failure 1".into()), "max_attempts {max_attempts}");
            assert_eq!((attempts, waits.len(), elapsed), (1, 0, Duration::ZERO), "max_attempts {max_attempts}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_base_delay_above_the_cap_is_capped() {
        let policy = RetryPolicy { base_delay: Duration::from_secs(5), max_delay: Duration::from_secs(1), ..POLICY };
        let (_, _, waits, _) = run(policy, vec![Retry::Backoff; 3]).await;
        assert_eq!(waits.len(), 3);
        let slack = Duration::from_micros(1);
        assert!(waits.iter().all(|w| *w + slack >= Duration::from_millis(500) && *w <= Duration::from_secs(1) + slack), "{waits:?}");
    }

    #[test]
    fn transient_uses_retry_after_when_the_server_sent_one() {
        assert_eq!(Failed::transient((), Some(Duration::from_secs(3))).retry, Retry::After(Duration::from_secs(3)));
        assert_eq!(Failed::transient((), None).retry, Retry::Backoff);
    }
}
