//! A streamed reply written while the model writes it (`stream_start` / `stream_append` /
//! `stream_finish`): one task per stream drives the [`Stream`](crate::teams::Stream) state machine and
//! posts what it asks for, in order, through [`Outbound::post_live`] (one [`StreamLink`] per stream: a
//! second between requests, the final included; 429 retried or, for progress edits, coalesced into the
//! next; `ContentStreamNotAllowed` = Stop, or past 2 minutes = go on in place; 404 on an edit = the
//! message is gone).
//!
//! The host uses the same three calls whatever the conversation: Teams streaming in 1:1 chats, one
//! placeholder message updated in place in group chats and channels (and in a 1:1 stream past Teams' two
//! minutes), one message at the end where whoever acts cannot edit yet (the Agent User in an agentic
//! conversation). [`LiveStream::mode`] says which applies now.
//!
//! Live posts bypass the outbox (a stream cut by a restart is not resumed: its updates would be stale);
//! the start and the end are audited by the caller. A stream nobody finishes is finished with its text so
//! far after the state machine's idle timeout, or when the session ends.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::connector::outbox::Outbound;
use crate::connector::streaming::{GONE, PostStream, Posted, Progress, Stopped, StreamLink, post_sends};
use crate::store::ConversationRef;
use crate::teams::{Stream, StreamConfig, StreamMode, StreamSend};

enum Command {
    Informative(String),
    Append(String),
    Finish(oneshot::Sender<Result<Finished, String>>),
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finished {
    /// The final message (or final edit) landed: the id of the message holding the end of the reply, and
    /// how the stream showed progress at the end.
    Delivered { message_id: String, mode: StreamMode },
    /// Teams refused a post with `ContentStreamNotAllowed` (the user pressed Stop): nothing more was
    /// posted, no final.
    Cancelled,
}

/// Whether a stream still takes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveStatus {
    Open,
    /// Cancelled by the user: later text is dropped.
    Cancelled,
}

/// What the driving task shares with the handle.
#[derive(Debug)]
struct Shared {
    /// Set when the stream finished on its own (idle): later text would be lost, so it is refused.
    ended: AtomicBool,
    /// Set when Teams cancelled the stream (Stop): later text is dropped, and said so.
    cancelled: AtomicBool,
    /// Why the stream can no longer be written (its message was deleted, its final failed): later calls
    /// get this error.
    failed: Mutex<Option<String>>,
    /// The current [`StreamMode`], as [`mode_code`] writes it.
    mode: AtomicU8,
}

fn mode_code(mode: StreamMode) -> u8 {
    match mode {
        StreamMode::Streaming => 0,
        StreamMode::Updating => 1,
        StreamMode::Buffered => 2,
    }
}

impl Shared {
    fn mode(&self) -> StreamMode {
        match self.mode.load(Ordering::Acquire) {
            0 => StreamMode::Streaming,
            1 => StreamMode::Updating,
            _ => StreamMode::Buffered,
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The handle of a running stream. Dropping it finishes the stream with what it has.
#[derive(Debug)]
pub(crate) struct LiveStream {
    pub reference: ConversationRef,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl LiveStream {
    /// Start a stream in the conversation with the outbound side's stream settings; nothing is posted
    /// before the first text or informative line.
    pub(crate) fn start(outbound: Arc<Outbound>, reference: ConversationRef) -> Self {
        let config = outbound.stream_config().clone();
        let mode = outbound.stream_mode(&reference);
        let link = StreamLink::new(config.request_gap);
        let poster = LivePoster { outbound, reference: reference.clone(), link };
        Self::spawn(poster, reference, mode, config)
    }

    fn spawn(poster: impl PostStream + Send + 'static, reference: ConversationRef, mode: StreamMode, config: StreamConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = Stream::new(mode, config, now());
        let shared = Arc::new(Shared {
            ended: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            failed: Mutex::new(None),
            mode: AtomicU8::new(mode_code(mode)),
        });
        tokio::spawn(drive(poster, stream, rx, Arc::clone(&shared)));
        Self { reference, commands: tx, shared }
    }

    /// How the stream shows progress now (a 1:1 stream past Teams' two minutes goes on `Updating`).
    pub(crate) fn mode(&self) -> StreamMode {
        self.shared.mode()
    }

    /// Whether the stream takes text (cancelled by the user: not, and that is no error).
    pub(crate) fn status(&self) -> LiveStatus {
        if self.shared.cancelled.load(Ordering::Acquire) { LiveStatus::Cancelled } else { LiveStatus::Open }
    }

    fn send(&self, c: Command) -> Result<LiveStatus, String> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        if self.status() == LiveStatus::Cancelled {
            return Ok(LiveStatus::Cancelled);
        }
        if self.shared.ended.load(Ordering::Acquire) {
            return Err("the stream was finished after a minute without text; start a new one".to_owned());
        }
        self.commands.send(c).map_err(|_| "the stream has ended".to_owned())?;
        Ok(LiveStatus::Open)
    }

    /// A status line ("Searching…"), shown until the first text (not in a buffered stream).
    pub(crate) fn informative(&self, line: &str) -> Result<LiveStatus, String> {
        self.send(Command::Informative(line.to_owned()))
    }

    pub(crate) fn append(&self, text: &str) -> Result<LiveStatus, String> {
        self.send(Command::Append(text.to_owned()))
    }

    /// Finish and wait for the final message (its id), or learn that the stream was cancelled.
    pub(crate) async fn finish(self) -> Result<Finished, String> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        if self.status() == LiveStatus::Cancelled {
            return Ok(Finished::Cancelled);
        }
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Finish(tx)).map_err(|_| "the stream has ended".to_owned())?;
        rx.await.map_err(|_| "the stream ended without a final message".to_owned())?
    }
}

/// The machine's clock: tokio's, so that a test with paused time drives it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The finish of a stream that ended (idle) while more text was being handed to it.
const LATE: &str =
    "the stream had already ended (no text for too long) when more text arrived; that text was not posted: send it with reply";

async fn drive(mut poster: impl PostStream, mut stream: Stream, mut rx: mpsc::UnboundedReceiver<Command>, shared: Arc<Shared>) {
    let mut progress = Progress::default();
    loop {
        let deadline = stream.next_deadline();
        let command = tokio::select! {
            c = rx.recv() => c,
            () = sleep_until(deadline) => {
                let sends = stream.poll(now());
                post(&mut poster, &mut stream, sends, &mut progress, &shared).await;
                if stream.ended().is_some() {
                    // Abandoned (idle), cancelled or gone: refuse more text; a finish gets the outcome.
                    shared.ended.store(true, Ordering::Release);
                    // Text handed over while the end was being posted never reaches Teams: the finish says so.
                    let mut late = false;
                    while let Some(c) = rx.recv().await {
                        match c {
                            Command::Finish(reply) => {
                                let outcome = if late && progress.stopped.is_none() {
                                    Err(LATE.to_owned())
                                } else {
                                    result(&progress, &stream)
                                };
                                let _ = reply.send(outcome);
                                return;
                            }
                            Command::Append(_) => late = true,
                            Command::Informative(_) => {}
                        }
                    }
                    return;
                }
                continue;
            }
        };
        match command {
            Some(Command::Informative(line)) => {
                let sends = stream.informative(&line, now());
                post(&mut poster, &mut stream, sends, &mut progress, &shared).await;
            }
            Some(Command::Append(text)) => {
                let mut sends = stream.append(&text, now());
                sends.extend(stream.poll(now()));
                post(&mut poster, &mut stream, sends, &mut progress, &shared).await;
            }
            Some(Command::Finish(reply)) => {
                let sends = stream.finish(now());
                post(&mut poster, &mut stream, sends, &mut progress, &shared).await;
                let _ = reply.send(result(&progress, &stream));
                return;
            }
            None => {
                // The handle was dropped (the session ended): finish with what there is.
                let sends = stream.finish(now());
                post(&mut poster, &mut stream, sends, &mut progress, &shared).await;
                return;
            }
        }
    }
}

/// Post the sends, then tell the handle what changed (mode, Stop, a deleted message).
async fn post(poster: &mut impl PostStream, stream: &mut Stream, sends: Vec<StreamSend>, progress: &mut Progress, shared: &Shared) {
    if sends.is_empty() {
        return;
    }
    post_sends(stream, sends, progress, poster).await;
    shared.mode.store(mode_code(stream.mode()), Ordering::Release);
    match &progress.stopped {
        Some(Stopped::Cancelled) => shared.cancelled.store(true, Ordering::Release),
        Some(Stopped::Gone) => *shared.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(GONE.to_owned()),
        Some(Stopped::Failed(e)) => {
            *shared.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(failed_message(e));
        }
        None => {}
    }
}

fn result(progress: &Progress, stream: &Stream) -> Result<Finished, String> {
    match &progress.stopped {
        None => Ok(Finished::Delivered { message_id: progress.final_id.clone().unwrap_or_default(), mode: stream.mode() }),
        Some(Stopped::Cancelled) => Ok(Finished::Cancelled),
        Some(Stopped::Gone) => Err(GONE.to_owned()),
        Some(Stopped::Failed(e)) => Err(failed_message(e)),
    }
}

fn failed_message(e: &crate::connector::ConnectorError) -> String {
    format!("the streamed reply's message failed: {e}")
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Posts through the outbound side, as whoever acts in the conversation, within Teams' windows.
struct LivePoster {
    outbound: Arc<Outbound>,
    reference: ConversationRef,
    link: StreamLink,
}

impl PostStream for LivePoster {
    async fn post(&mut self, send: &StreamSend) -> Posted {
        self.outbound.post_live(&self.reference, &mut self.link, send).await
    }
}

#[cfg(test)]
mod tests {
    //! The live driver under tokio's paused clock: a whole long turn (three minutes) in milliseconds,
    //! against a strict stand-in for Teams that refuses what Teams would.

    use std::collections::HashMap;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::connector::{ConnectorError, ResourceResponse};
    use crate::teams::StreamSendKind as K;

    /// One request Teams accepted.
    #[derive(Debug, Clone)]
    struct Seen {
        at: Instant,
        kind: K,
        target: Option<String>,
        text: String,
    }

    #[derive(Debug, Default)]
    struct TeamsState {
        seen: Vec<Seen>,
        refused: Vec<String>,
        /// Stream id → when it started.
        streams: HashMap<String, Instant>,
        /// Message id → its last edit.
        edited: HashMap<String, Instant>,
        next: u32,
    }

    /// Teams as far as streams go: a stream lasts 2 minutes (then `403 ContentStreamNotAllowed`, "exceeded
    /// streaming time"); a message is edited at most once a second (else 429); per conversation at most 7
    /// requests per 1 s, 8 per 2 s, 60 per 30 s (else 429). Posts go through a real [`StreamLink`].
    struct StrictTeams {
        link: StreamLink,
        state: Arc<Mutex<TeamsState>>,
    }

    fn judge(state: &mut TeamsState, send: &StreamSend) -> Result<ResourceResponse, ConnectorError> {
        let now = Instant::now();
        let throttled = |state: &mut TeamsState, why: String| {
            state.refused.push(why);
            Err(ConnectorError::Throttled { retry_after: Some(Duration::from_secs(1)) })
        };
        for (window, max) in [(Duration::from_secs(1), 7), (Duration::from_secs(2), 8), (Duration::from_secs(30), 60)] {
            if state.seen.iter().filter(|s| now - s.at < window).count() >= max {
                return throttled(state, format!("more than {max} requests in {window:?}"));
            }
        }
        let target = send.target.clone();
        if send.kind.is_native()
            && let Some(id) = &target
            && now - state.streams[id] > Duration::from_secs(120)
        {
            return Err(ConnectorError::Rejected {
                status: 403,
                code: "ContentStreamNotAllowed".into(),
                sub_code: Some(crate::connector::STREAM_TIME_EXCEEDED.into()),
            });
        }
        if send.kind.is_edit() {
            let id = target.clone().unwrap();
            assert!(state.seen.iter().any(|s| s.target.as_ref() == Some(&id)), "an edit of a message never posted");
            if let Some(last) = state.edited.get(&id)
                && now - *last < Duration::from_secs(1)
            {
                return throttled(state, format!("edits of {id} {:?} apart", now - *last));
            }
            state.edited.insert(id, now);
        }
        state.next += 1;
        let id = match send.kind {
            K::Start => {
                let id = format!("S{}", state.next);
                state.streams.insert(id.clone(), now);
                id
            }
            K::Placeholder | K::Message => format!("1:{}", state.next),
            _ => String::new(),
        };
        let text = send.activity["text"].as_str().unwrap_or_default().to_owned();
        let target = if matches!(send.kind, K::Start | K::Placeholder) { Some(id.clone()) } else { target };
        state.seen.push(Seen { at: now, kind: send.kind, target, text });
        Ok(ResourceResponse { id })
    }

    impl PostStream for StrictTeams {
        async fn post(&mut self, send: &StreamSend) -> Posted {
            let Self { link, state } = self;
            link.post(send.kind, || std::future::ready(judge(&mut state.lock().unwrap(), send))).await
        }
    }

    /// A Connector that takes 5 s to answer a placeholder or a final and throttles every progress edit (so
    /// the final always has something to show).
    struct Slow;

    impl PostStream for Slow {
        async fn post(&mut self, send: &StreamSend) -> Posted {
            use crate::teams::StreamSendKind as K;
            if send.kind == K::Edit {
                return Posted::Throttled(None);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            Posted::Id(if send.kind == K::Placeholder { "P".into() } else { String::new() })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn text_handed_over_while_an_idle_stream_ends_is_reported_not_dropped() {
        let stream = LiveStream::spawn(Slow, reference("groupChat"), StreamMode::Updating, StreamConfig::default());
        stream.append("one ").unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        stream.append("two ").unwrap();
        // Idle past the timeout: the stream ends and its final edit is on its way (5 s) when more text comes.
        tokio::time::sleep(StreamConfig::default().idle_timeout + Duration::from_secs(2)).await;
        assert!(stream.append("three").is_ok(), "the end is still being posted");
        let finished = stream.finish().await;
        assert!(finished.as_ref().is_err_and(|e| e.contains("not posted")), "{finished:?}");
    }

    fn reference(kind: &str) -> ConversationRef {
        ConversationRef {
            bot_app_id: "bot".to_owned().into(),
            conversation_id: "19:group@thread.v2".to_owned().into(),
            tenant_id: "tenant".to_owned().into(),
            service_url: "https://smba.trafficmanager.net/teams/".to_owned(),
            channel_id: "msteams".to_owned(),
            conversation_type: Some(kind.to_owned()),
            user_id: None,
            user_aad_object_id: None,
            bot_id: None,
            usable: true,
            updated_at_ms: 0,
            agentic: None,
            authenticated: true,
        }
    }

    /// A three-minute turn: status lines for 20 s, then a word every 300 ms, then finish.
    async fn long_turn(mode: StreamMode) -> (Result<Finished, String>, String, TeamsState, StreamMode) {
        let state = Arc::new(Mutex::new(TeamsState::default()));
        let poster = StrictTeams { link: StreamLink::default(), state: Arc::clone(&state) };
        let kind = if mode == StreamMode::Streaming { "personal" } else { "groupChat" };
        let stream = LiveStream::spawn(poster, reference(kind), mode, StreamConfig::default());
        assert_eq!(stream.mode(), mode);
        let started = Instant::now();
        stream.informative("Searching the docs…").unwrap();
        let mut full = String::new();
        let mut i = 0u32;
        while started.elapsed() < Duration::from_secs(180) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            i += 1;
            if started.elapsed() < Duration::from_secs(20) {
                if i.is_multiple_of(20) {
                    stream.informative(&format!("Step {}…", i / 20)).unwrap();
                }
            } else {
                let word = format!("w{i} ");
                full.push_str(&word);
                assert_eq!(stream.append(&word).unwrap(), LiveStatus::Open);
            }
        }
        let mode = stream.mode();
        let result = stream.finish().await;
        let state = std::mem::take(&mut *state.lock().unwrap());
        (result, full, state, mode)
    }

    fn assert_paced(seen: &[Seen]) {
        for pair in seen.windows(2) {
            assert!(pair[1].at - pair[0].at >= Duration::from_secs(1), "requests of one stream a second apart: {pair:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_three_minute_group_chat_answer_is_one_placeholder_updated_in_place() {
        let (result, full, teams, _) = long_turn(StreamMode::Updating).await;
        assert!(teams.refused.is_empty(), "a limit was exceeded: {:?}", teams.refused);
        let placeholder = &teams.seen[0];
        assert_eq!((placeholder.kind, placeholder.text.as_str()), (K::Placeholder, "Searching the docs…"));
        let id = placeholder.target.clone().unwrap();
        let edits = &teams.seen[1..];
        assert!(edits.iter().all(|s| s.kind.is_edit() && s.target.as_ref() == Some(&id)), "only edits of the placeholder");
        assert!(
            edits.iter().any(|s| s.text == "Step 1…") && edits.iter().any(|s| s.text.starts_with("w")),
            "status lines, then the answer"
        );
        assert_eq!(edits.iter().filter(|s| s.kind == K::EditFinal).count(), 1);
        let last = edits.last().unwrap();
        assert_eq!((last.kind, &last.text), (K::EditFinal, &full), "the final edit is the whole answer");
        assert!(edits.len() > 60, "progress all along: {} edits", edits.len());
        assert_paced(&teams.seen);
        assert_eq!(result, Ok(Finished::Delivered { message_id: id, mode: StreamMode::Updating }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_to_one_stream_past_two_minutes_goes_on_in_place_with_all_its_text() {
        let (result, full, teams, mode) = long_turn(StreamMode::Streaming).await;
        assert!(teams.refused.is_empty(), "a limit was exceeded: {:?}", teams.refused);
        assert_eq!(mode, StreamMode::Updating, "the stream went on in place");
        let kinds: Vec<K> = teams.seen.iter().map(|s| s.kind).collect();
        let final_at = kinds.iter().position(|k| *k == K::Final).expect("the stream was finalised");
        assert_eq!(kinds.iter().filter(|k| **k == K::Start).count(), 1, "one stream: {kinds:?}");
        let stream_id = teams.seen[0].target.clone().unwrap();
        assert!(teams.seen[final_at].at - teams.seen[0].at < Duration::from_secs(120), "the final beat Teams' limit");
        let after = &teams.seen[final_at + 1..];
        assert!(after.len() > 20 && after.iter().all(|s| s.kind.is_edit() && s.target.as_ref() == Some(&stream_id)), "{kinds:?}");
        assert_eq!(after.last().unwrap().text, full, "no text lost");
        assert_paced(&teams.seen);
        assert_eq!(result, Ok(Finished::Delivered { message_id: stream_id, mode: StreamMode::Updating }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_to_one_stream_teams_ends_early_goes_on_in_place_with_all_its_text() {
        // Our limit is the latest the configuration allows; Teams' clock runs ahead of ours by 10 s.
        let state = Arc::new(Mutex::new(TeamsState::default()));
        let poster = StrictTeams { link: StreamLink::default(), state: Arc::clone(&state) };
        let config = StreamConfig { max_age: Duration::from_secs(125), ..StreamConfig::default() };
        let stream = LiveStream::spawn(poster, reference("personal"), StreamMode::Streaming, config);
        let mut full = String::new();
        for i in 0..500 {
            let word = format!("w{i} ");
            full.push_str(&word);
            stream.append(&word).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(stream.mode(), StreamMode::Updating);
        let result = stream.finish().await;
        let teams = std::mem::take(&mut *state.lock().unwrap());
        assert!(!teams.seen.iter().any(|s| s.kind == K::Final), "Teams ended the stream before our final");
        let last = teams.seen.last().unwrap();
        assert_eq!((last.kind, last.target.as_deref(), &last.text), (K::EditFinal, Some("S1"), &full));
        assert!(matches!(result, Ok(Finished::Delivered { .. })), "{result:?}");
    }
}
