//! Posting one Teams stream's activities, as Teams requires of the wire (the state machine in
//! [`crate::teams::Stream`] decides *what* to post; this decides *when* and what an answer means), and the
//! one loop both stream drivers (the live one in `bridge::live`, the queued one in `outbox`) post through
//! ([`post_sends`]):
//!
//! * **One request per second per stream.** Every request of a stream (start, update, final, placeholder,
//!   edit) waits until the gap ([`STREAM_REQUEST_GAP`], 1 s) after the previous request of the same stream
//!   was answered; the final too, however soon the reply finishes. Plain messages are not paced.
//! * **429 is retried**: nothing landed, so the same activity is posted again after `Retry-After` (at
//!   least the gap), at most [`STREAM_MAX_RETRIES`] times and [`STREAM_RETRY_BUDGET`] of waiting per post —
//!   except a progress edit: it is not repeated as it was but handed back ([`Posted::Throttled`]), and the
//!   machine's next edit, after `Retry-After`, carries everything written by then.
//! * **`403 ContentStreamNotAllowed`** on a native stream: past Teams' 2 minutes ([`Posted::Expired`]) the
//!   stream goes on in place — a refused final is put in place with the same text, a refused update makes
//!   the machine edit the streamed message from then on; otherwise (the user pressed Stop) the stream
//!   ends as cancelled: nothing more, not even a final, is posted.
//! * **404 on an edit**: the message being edited is gone (the user deleted it): the stream ends with
//!   [`Stopped::Gone`], nothing more is posted.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{ConnectorError, ResourceResponse};
use crate::teams::{Stream, StreamSend, StreamSendKind};

/// Teams' limit: one streaming request per second per stream.
pub(crate) const STREAM_REQUEST_GAP: Duration = Duration::from_secs(1);
/// Most times one stream post is retried after a 429.
pub(crate) const STREAM_MAX_RETRIES: u32 = 5;
/// Most time spent waiting out 429s for one stream post.
pub(crate) const STREAM_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// What became of one stream post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Posted {
    /// Accepted; the id Teams answered (empty when it answered without a body).
    Id(String),
    /// `403 ContentStreamNotAllowed` (Stop): the stream is over; post nothing more to it.
    Cancelled,
    /// `403 ContentStreamNotAllowed` for the stream's age: the streamed message can still be edited.
    Expired,
    /// A progress edit was throttled (429): not repeated as it was.
    Throttled(Option<Duration>),
    Failed(ConnectorError),
}

/// The last-line record as stored for a cancelled stream.
pub(crate) const CANCELLED: &str = "cancelled: ContentStreamNotAllowed";

/// What the host is told when the message being edited in place was deleted.
pub(crate) const GONE: &str =
    "the stream's message was deleted in Teams (the update was answered 404); the stream has ended: start a new one or reply";

/// The pacing state of one stream (one per reply; a new stream after a size limit keeps it, which only
/// errs on the slow side).
#[derive(Debug)]
pub(crate) struct StreamLink {
    gap: Duration,
    last_request: Option<Instant>,
}

impl Default for StreamLink {
    fn default() -> Self {
        Self::new(STREAM_REQUEST_GAP)
    }
}

impl StreamLink {
    /// A link holding requests `gap` apart (Teams' second; shorter only under a test clock).
    pub(crate) fn new(gap: Duration) -> Self {
        Self { gap, last_request: None }
    }

    /// Post one activity through `send` (called again for each retry), paced and retried as the module
    /// docs say. Plain messages (buffered mode) are not stream requests: they are not paced, but a 429
    /// is retried the same way.
    pub(crate) async fn post<F, Fut>(&mut self, kind: StreamSendKind, mut send: F) -> Posted
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<ResourceResponse, ConnectorError>>,
    {
        let paced = !matches!(kind, StreamSendKind::Message);
        let (mut retries, mut waited) = (0u32, Duration::ZERO);
        loop {
            if paced && let Some(last) = self.last_request {
                tokio::time::sleep_until(last + self.gap).await;
            }
            let result = send().await;
            if paced {
                self.last_request = Some(Instant::now());
            }
            match result {
                Ok(r) => return Posted::Id(r.id),
                // A 2xx whose body we could not read: the request was accepted.
                Err(ConnectorError::BadResponse(_)) => return Posted::Id(String::new()),
                Err(e) if kind.is_native() && e.stream_time_exceeded() => return Posted::Expired,
                Err(e) if kind.is_native() && e.stream_not_allowed() => return Posted::Cancelled,
                // A progress edit is superseded by the next one: hand the wait back instead of repeating it.
                Err(ConnectorError::Throttled { retry_after }) if kind == StreamSendKind::Edit => {
                    return Posted::Throttled(retry_after);
                }
                Err(ConnectorError::Throttled { retry_after }) if retries < STREAM_MAX_RETRIES => {
                    let wait = retry_after.unwrap_or(self.gap).max(if paced { self.gap } else { Duration::ZERO });
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

/// Posts one [`StreamSend`] (POST, or PUT for an edit) somewhere: the Connector through a [`StreamLink`], or
/// a test's script.
pub(crate) trait PostStream {
    fn post(&mut self, send: &StreamSend) -> impl Future<Output = Posted> + Send;
}

/// Why a stream stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The user pressed Stop (`403 ContentStreamNotAllowed`).
    Cancelled,
    /// The message being edited in place was deleted (404).
    Gone,
    /// A final, final edit or plain message failed.
    Failed(ConnectorError),
}

/// What the posts of one stream came to.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The id of the last message written to (the one holding the end of the reply once it is over).
    pub final_id: Option<String>,
    /// Requests that landed.
    pub landed: usize,
    pub stopped: Option<Stopped>,
}

/// Post `sends` in order, one at a time, feeding each answer back into `stream` (and posting what it
/// answers in turn). Stops at the first failure that ends the stream (recorded in `progress.stopped`).
pub(crate) async fn post_sends(stream: &mut Stream, sends: Vec<StreamSend>, progress: &mut Progress, poster: &mut impl PostStream) {
    use StreamSendKind as K;
    let mut queue: VecDeque<StreamSend> = sends.into();
    while let Some(send) = queue.pop_front() {
        if progress.stopped.is_some() {
            return;
        }
        let posted = poster.post(&send).await;
        let now = Instant::now().into_std();
        match (send.kind, posted) {
            (K::Start | K::Placeholder, Posted::Id(id)) => {
                progress.landed += 1;
                // The message being written (its final edit may be skipped when it already shows it all).
                if !id.is_empty() {
                    progress.final_id = Some(id.clone());
                }
                queue.extend(stream.started(&id, now));
            }
            // Teams may answer a final or an edit without a body: the message keeps its id.
            (K::Final | K::EditFinal | K::Message, Posted::Id(id)) => {
                progress.landed += 1;
                progress.final_id = Some(if id.is_empty() { send.target.clone().unwrap_or_default() } else { id });
            }
            (K::Update | K::Edit, Posted::Id(_)) => progress.landed += 1,
            (_, Posted::Cancelled) => {
                tracing::info!("the stream was cancelled (ContentStreamNotAllowed); nothing more is posted");
                stream.cancelled();
                progress.stopped = Some(Stopped::Cancelled);
            }
            (K::Final, Posted::Expired) => {
                // Past Teams' 2 minutes: the streamed message gets the same text in place.
                tracing::info!("the stream passed Teams' time limit; its final text is put in place");
                queue.extend(send.final_in_place());
            }
            (_, Posted::Expired) => {
                tracing::info!("the stream passed Teams' time limit; it goes on by editing its message in place");
                queue.extend(stream.expired(now));
            }
            (_, Posted::Throttled(retry_after)) => {
                tracing::debug!(?retry_after, "an in-place update was throttled; the next one carries the text written meanwhile");
                queue.extend(stream.throttled(now, retry_after));
            }
            (K::Edit | K::EditFinal, Posted::Failed(e)) if e.not_found() => {
                tracing::warn!("the message a stream was editing is gone (404); the stream has ended");
                stream.cancelled();
                progress.stopped = Some(Stopped::Gone);
            }
            // An edit that may not have landed is superseded by the next one.
            (K::Edit, Posted::Failed(e)) if e.idempotent_may_retry() => {
                tracing::debug!(error = %e, "an in-place update failed; the next one carries the text written meanwhile");
                queue.extend(stream.throttled(now, None));
            }
            (K::Start | K::Update | K::Placeholder | K::Edit, Posted::Failed(e)) => {
                tracing::warn!(error = %e, kind = ?send.kind, "a stream update failed; the reply continues without it");
                queue.extend(stream.failed(now));
            }
            (K::Final | K::EditFinal | K::Message, Posted::Failed(e)) => {
                tracing::warn!(error = %e, "a streamed reply's message failed");
                progress.stopped = Some(Stopped::Failed(e));
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
        let mut link = StreamLink::default();
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
        let mut plain = StreamLink::default();
        plain.post(StreamSendKind::Message, &mut send).await;
        plain.post(StreamSendKind::Message, &mut send).await;
        let times = times.lock().unwrap().clone();
        assert_eq!(times[0], times[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_is_posted_again_after_retry_after_and_gives_up_within_bounds() {
        let throttled = |s| Err(ConnectorError::Throttled { retry_after: Some(Duration::from_secs(s)) });
        let mut link = StreamLink::default();
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
    async fn a_throttled_edit_is_handed_back_and_the_time_limit_is_told_from_stop() {
        let throttled = Err(ConnectorError::Throttled { retry_after: Some(Duration::from_secs(3)) });
        let mut link = StreamLink::default();
        let (times, mut send) = script(vec![throttled.clone(), throttled]);
        assert_eq!(link.post(StreamSendKind::Edit, &mut send).await, Posted::Throttled(Some(Duration::from_secs(3))));
        assert_eq!(times.lock().unwrap().len(), 1, "a progress edit is not repeated as it was");
        // The final edit is retried like any post.
        assert_eq!(link.post(StreamSendKind::EditFinal, &mut send).await, Posted::Id("x".into()));
        assert_eq!(times.lock().unwrap().len(), 3);

        let refused =
            |sub: &str| Err(ConnectorError::Rejected { status: 403, code: "ContentStreamNotAllowed".into(), sub_code: Some(sub.into()) });
        let (_, mut send) = script(vec![refused(super::super::STREAM_TIME_EXCEEDED), refused("ContentStreamNotAllowed")]);
        assert_eq!(link.post(StreamSendKind::Update, &mut send).await, Posted::Expired);
        assert_eq!(link.post(StreamSendKind::Final, &mut send).await, Posted::Cancelled);
        // An edit is no stream request: the same refusal is a plain failure.
        let (_, mut send) = script(vec![refused("ContentStreamNotAllowed")]);
        assert!(matches!(link.post(StreamSendKind::Edit, &mut send).await, Posted::Failed(_)));
    }

    /// A scripted Connector for [`post_sends`]: answers each send by its kind, records them.
    struct Script {
        sent: Vec<(Instant, StreamSend)>,
        answers: std::collections::VecDeque<Posted>,
    }

    impl PostStream for Script {
        async fn post(&mut self, send: &StreamSend) -> Posted {
            self.sent.push((Instant::now(), send.clone()));
            self.answers.pop_front().unwrap_or_else(|| match send.kind {
                StreamSendKind::Start => Posted::Id("S".into()),
                StreamSendKind::Placeholder => Posted::Id("P".into()),
                _ => Posted::Id(String::new()),
            })
        }
    }

    fn script_of(answers: Vec<Posted>) -> Script {
        Script { sent: Vec::new(), answers: answers.into() }
    }

    fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_refused_for_age_is_put_in_place_and_a_refused_update_goes_on_in_place() {
        use crate::teams::{StreamConfig, StreamMode};
        // The final: put in place, same text, to the stream id; the message id is the stream's.
        let mut stream = Stream::new(StreamMode::Streaming, StreamConfig::default(), now());
        let mut script = script_of(vec![Posted::Id("S".into()), Posted::Expired]);
        let mut progress = Progress::default();
        let sends = stream.append("all of it", now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        let sends = stream.finish(now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        let kinds: Vec<StreamSendKind> = script.sent.iter().map(|(_, s)| s.kind).collect();
        assert_eq!(kinds, [StreamSendKind::Start, StreamSendKind::Final, StreamSendKind::EditFinal]);
        let edit = &script.sent[2].1;
        assert_eq!((edit.target.as_deref(), &edit.activity["text"]), (Some("S"), &serde_json::json!("all of it")));
        assert_eq!((progress.final_id.as_deref(), &progress.stopped), (Some("S"), &None));

        // An update: the machine edits the streamed message from then on, with everything.
        let mut stream = Stream::new(StreamMode::Streaming, StreamConfig::default(), now());
        let mut script = script_of(vec![Posted::Id("S".into()), Posted::Expired]);
        let mut progress = Progress::default();
        let sends = stream.append("one ", now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        stream.append("two ", now());
        tokio::time::advance(Duration::from_secs(2)).await;
        let sends = stream.poll(now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        assert_eq!(stream.mode(), StreamMode::Updating);
        stream.append("three", now());
        let sends = stream.finish(now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        let last = &script.sent.last().unwrap().1;
        assert_eq!((last.kind, last.target.as_deref()), (StreamSendKind::EditFinal, Some("S")));
        assert_eq!(last.activity["text"], "one two three");
        assert_eq!(progress.stopped, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_message_ends_the_stream_and_a_throttled_edit_comes_back_coalesced() {
        use crate::teams::{StreamConfig, StreamMode};
        let not_found = Posted::Failed(ConnectorError::Rejected { status: 404, code: "NotFound".into(), sub_code: None });
        let mut stream = Stream::new(StreamMode::Updating, StreamConfig::default(), now());
        let throttled = Posted::Throttled(Some(Duration::from_secs(5)));
        let mut script = script_of(vec![Posted::Id("P".into()), throttled, Posted::Id(String::new()), not_found]);
        let mut progress = Progress::default();
        let sends = stream.append("one", now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        let sends = stream.append(" two", now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        // Throttled: the next edit waits out Retry-After and carries what was written meanwhile.
        let throttled_at = script.sent[1].0;
        assert!(stream.append(" three", now()).is_empty());
        let due = stream.next_deadline().unwrap();
        assert!(due >= throttled_at.into_std() + Duration::from_secs(5), "{:?}", due - throttled_at.into_std());
        tokio::time::advance(Duration::from_secs(5)).await;
        let sends = stream.poll(now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        assert_eq!(script.sent[2].1.activity["text"], "one two three");
        // The user deletes the message: the next edit is answered 404 and the stream ends, nothing more.
        tokio::time::advance(Duration::from_secs(2)).await;
        let sends = stream.append(" four", now());
        post_sends(&mut stream, sends, &mut progress, &mut script).await;
        assert_eq!(progress.stopped, Some(Stopped::Gone));
        assert!(stream.ended().is_some());
        let sends = stream.finish(now());
        assert!(sends.is_empty());
        assert_eq!(script.sent.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn content_stream_not_allowed_cancels_and_other_refusals_fail() {
        let refused = |code: &str| Err(ConnectorError::Rejected { status: 403, code: code.into(), sub_code: None });
        let mut link = StreamLink::default();
        let (_, mut send) = script(vec![refused("ContentStreamNotAllowed"), refused("Forbidden")]);
        assert_eq!(link.post(StreamSendKind::Update, &mut send).await, Posted::Cancelled);
        assert!(matches!(link.post(StreamSendKind::Final, &mut send).await, Posted::Failed(ConnectorError::Rejected { .. })));
        // The code may come in the message only.
        let e = ConnectorError::Rejected { status: 403, code: "Forbidden".into(), sub_code: Some("ContentStreamNotAllowed".into()) };
        assert!(e.stream_not_allowed());
    }
}
