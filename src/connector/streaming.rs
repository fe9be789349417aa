//! Posting one Teams stream's activities, as Teams requires of the wire (the state machine in
//! [`crate::teams::Stream`] decides *what* to post; this decides *when* and what an answer means):
//!
//! * **One request per second per stream.** Every streaming request (start, update, final) waits until
//!   [`STREAM_REQUEST_GAP`] after the previous request of the same stream was answered; the final too,
//!   however soon the reply finishes.
//! * **429 is retried**: nothing landed, so the same activity is posted again after `Retry-After` (at
//!   least the gap), at most [`STREAM_MAX_RETRIES`] times and [`STREAM_RETRY_BUDGET`] of waiting per post.
//! * **`403 ContentStreamNotAllowed`** (the user pressed Stop, or the stream passed Teams' 2-minute limit)
//!   ends the stream as cancelled: nothing more, not even a final, is posted.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{ConnectorError, ResourceResponse};
use crate::teams::StreamSendKind;

/// Teams' limit: one streaming request per second per stream.
pub(crate) const STREAM_REQUEST_GAP: Duration = Duration::from_secs(1);
/// Most times one stream post is retried after a 429.
pub(crate) const STREAM_MAX_RETRIES: u32 = 5;
/// Most time spent waiting out 429s for one stream post.
pub(crate) const STREAM_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// What became of one stream post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Accepted; the id Teams answered (empty when it answered without a body).
    Id(String),
    /// `403 ContentStreamNotAllowed`: the stream is over; post nothing more to it.
    Cancelled,
    Failed(ConnectorError),
}

/// The last-line record as stored for a cancelled stream.
pub(crate) const CANCELLED: &str = "cancelled: ContentStreamNotAllowed";

/// The pacing state of one stream (one per reply; a new stream after Teams' 2-minute limit keeps it, which
/// only errs on the slow side).
#[derive(Debug, Default)]
pub struct StreamLink {
    last_request: Option<Instant>,
}

impl StreamLink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Post one activity through `send` (called again for each retry), paced and retried as the module
    /// docs say. Plain messages (buffered mode) are not streaming requests: they are not paced, but a 429
    /// is retried the same way.
    pub async fn post<F, Fut>(&mut self, kind: StreamSendKind, mut send: F) -> Posted
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<ResourceResponse, ConnectorError>>,
    {
        let paced = !matches!(kind, StreamSendKind::Message);
        let (mut retries, mut waited) = (0u32, Duration::ZERO);
        loop {
            if paced && let Some(last) = self.last_request {
                tokio::time::sleep_until(last + STREAM_REQUEST_GAP).await;
            }
            let result = send().await;
            if paced {
                self.last_request = Some(Instant::now());
            }
            match result {
                Ok(r) => return Posted::Id(r.id),
                // A 2xx whose body we could not read: the request was accepted.
                Err(ConnectorError::BadResponse(_)) => return Posted::Id(String::new()),
                Err(e) if paced && e.stream_not_allowed() => return Posted::Cancelled,
                Err(ConnectorError::Throttled { retry_after }) if retries < STREAM_MAX_RETRIES => {
                    let wait = retry_after.unwrap_or(STREAM_REQUEST_GAP).max(if paced { STREAM_REQUEST_GAP } else { Duration::ZERO });
                    if waited + wait > STREAM_RETRY_BUDGET {
                        return Posted::Failed(ConnectorError::Throttled { retry_after });
                    }
                    retries += 1;
                    waited += wait;
                    tracing::debug!(retries, wait_ms = wait.as_millis(), "a stream post was throttled; posting it again");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Posted::Failed(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Answer = Result<ResourceResponse, ConnectorError>;
    type Times = Arc<Mutex<Vec<Instant>>>;

    /// A scripted Connector: answers in order, records when each request came.
    fn script(answers: Vec<Answer>) -> (Times, impl FnMut() -> std::future::Ready<Answer>) {
        let times = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&times);
        let mut answers = answers.into_iter();
        let send = move || {
            seen.lock().unwrap().push(Instant::now());
            std::future::ready(answers.next().unwrap_or_else(|| Ok(ResourceResponse { id: "x".into() })))
        };
        (times, send)
    }

    fn ok(id: &str) -> Answer {
        Ok(ResourceResponse { id: id.into() })
    }

    #[tokio::test(start_paused = true)]
    async fn stream_requests_are_a_second_apart_the_final_included() {
        let mut link = StreamLink::new();
        let t0 = Instant::now();
        let (times, mut send) = script(vec![ok("s1"), ok(""), ok("m1")]);
        assert_eq!(link.post(StreamSendKind::Start, &mut send).await, Posted::Id("s1".into()));
        assert_eq!(link.post(StreamSendKind::Update, &mut send).await, Posted::Id(String::new()));
        assert_eq!(link.post(StreamSendKind::Final, &mut send).await, Posted::Id("m1".into()));
        let times = times.lock().unwrap().clone();
        assert_eq!(times[0], t0, "the first request goes at once");
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= STREAM_REQUEST_GAP, "{:?}", pair[1] - pair[0]);
        }
        // Plain messages are not streaming requests.
        let (times, mut send) = script(vec![ok("a"), ok("b")]);
        let mut plain = StreamLink::new();
        plain.post(StreamSendKind::Message, &mut send).await;
        plain.post(StreamSendKind::Message, &mut send).await;
        let times = times.lock().unwrap().clone();
        assert_eq!(times[0], times[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_is_posted_again_after_retry_after_and_gives_up_within_bounds() {
        let throttled = |s| Err(ConnectorError::Throttled { retry_after: Some(Duration::from_secs(s)) });
        let mut link = StreamLink::new();
        let (times, mut send) = script(vec![throttled(3), ok("s1")]);
        assert_eq!(link.post(StreamSendKind::Start, &mut send).await, Posted::Id("s1".into()));
        let times = times.lock().unwrap().clone();
        assert_eq!(times.len(), 2);
        assert!(times[1] - times[0] >= Duration::from_secs(3));

        // Five retries at most.
        let (times, mut send) = script((0..10).map(|_| throttled(1)).collect());
        assert!(matches!(link.post(StreamSendKind::Update, &mut send).await, Posted::Failed(ConnectorError::Throttled { .. })));
        assert_eq!(times.lock().unwrap().len(), 1 + STREAM_MAX_RETRIES as usize);
        // And no more than 30 s of waiting: a Retry-After beyond the budget is not waited for.
        let (times, mut send) = script(vec![throttled(20), throttled(20), ok("late")]);
        let started = Instant::now();
        assert!(matches!(link.post(StreamSendKind::Update, &mut send).await, Posted::Failed(ConnectorError::Throttled { .. })));
        assert_eq!(times.lock().unwrap().len(), 2);
        assert!(started.elapsed() <= STREAM_RETRY_BUDGET + STREAM_REQUEST_GAP);
    }

    #[tokio::test(start_paused = true)]
    async fn content_stream_not_allowed_cancels_and_other_refusals_fail() {
        let refused = |code: &str| Err(ConnectorError::Rejected { status: 403, code: code.into(), sub_code: None });
        let mut link = StreamLink::new();
        let (_, mut send) = script(vec![refused("ContentStreamNotAllowed"), refused("Forbidden")]);
        assert_eq!(link.post(StreamSendKind::Update, &mut send).await, Posted::Cancelled);
        assert!(matches!(link.post(StreamSendKind::Final, &mut send).await, Posted::Failed(ConnectorError::Rejected { .. })));
        // The code may come in the message only.
        let e = ConnectorError::Rejected { status: 403, code: "Forbidden".into(), sub_code: Some("ContentStreamNotAllowed".into()) };
        assert!(e.stream_not_allowed());
    }
}
