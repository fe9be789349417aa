//! Teams streaming (`streaminfo`) as a transport-free state machine.
//!
//! # Wire format
//!
//! What Microsoft's own SDKs post (Agents-for-js `StreamingResponse`, teams.ts `HttpStream` /
//! `TypingActivity.addStreamUpdate` / `MessageActivity.addStreamFinal`), each to `sendToConversation`:
//!
//! * **informative update**: `{"type":"typing", "text":"Searching…", …}` with `streamType: "informative"`;
//! * **streaming update**: `{"type":"typing", "text":<all text so far>, …}` with `streamType: "streaming"`;
//!   Teams requires every update to contain the previous one's text (cumulative);
//! * **final**: `{"type":"message", "text":<the whole text>, …}` with `streamType: "final"`;
//!
//! where `…` is the stream info written **twice**, as an entity and in `channelData`, as both SDKs do
//! (newer Teams clients read the entity, older service paths the channel data):
//!
//! ```json
//! "entities":    [{"type":"streaminfo","streamId":"<id>","streamType":"streaming","streamSequence":3}],
//! "channelData": {"streamId":"<id>","streamType":"streaming","streamSequence":3}
//! ```
//!
//! `streamSequence` starts at 1 for a stream's first activity and grows by one with every activity, the final
//! included (as Agents-for-js does; the Teams docs' REST sample omits it on the final). The first activity
//! has no `streamId`: Teams answers it `201 {"id": …}`, and that id is the stream id of every later activity —
//! hence [`Stream::started`]. The activity's own `id` is never set (the SDKs' adapters delete it before
//! posting). Nothing else is added: the sender fills in `conversation`, `from`, `recipient`, `replyToId`.
//!
//! # Behaviour
//!
//! * Streaming only in personal (1:1) chats, as Teams allows; elsewhere ([`StreamMode::Buffered`]) the text
//!   is kept and sent as plain message(s) at the end.
//! * Lazy: nothing is sent before the first text (or informative line).
//! * At most one send per [`StreamConfig::update_interval`] (1.5 s): updates in between are coalesced; only
//!   the final goes out at once from here — the poster (`connector::streaming::StreamLink`) still holds every
//!   request, the final included, to Teams' one request per second per stream.
//! * Teams ends a stream after 2 minutes: a stream older than [`StreamConfig::max_age`] (110 s) is finalised
//!   with its text so far, and later text opens a new stream (which shows the continuation only).
//! * A stream that only showed informative lines when it reaches that age is not finalised (it has no
//!   text); Teams lets it expire and the first text opens a new stream.
//! * A stream's text stays within [`StreamConfig::max_text_utf16`]: text beyond it closes the stream at a
//!   split boundary ([`split_text`] rules) and continues in a new one.
//! * Abandonment: no input for [`StreamConfig::idle_timeout`], or the `Stream` dropped with an
//!   [`on_drop`](Stream::on_drop) hook set, finishes it with everything received so far.
//! * If the first send fails (or is answered without an id), the stream falls back to buffered; if a later
//!   update fails, no more updates are sent and the final still closes the bubble; [`Stream::cancelled`]
//!   (the user pressed Stop) ends it silently.
//!
//! The machine never emits anything after a start until [`Stream::started`] or [`Stream::failed`], so the
//! sends it returns can be posted in order, one at a time. Call [`Stream::poll`] at
//! [`Stream::next_deadline`].

use std::fmt;
use std::mem;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::split::{MAX_TEXT_UTF16, cut_point, split_text, utf16_len};
use crate::activity::Activity;

#[cfg(test)]
/// Teams' limit on the lifetime of one stream.
pub(crate) const TEAMS_STREAM_LIMIT: Duration = Duration::from_secs(120);

/// Teams' limit on an informative line: 1000 characters or 1 KB.
pub(crate) const INFORMATIVE_MAX_CHARS: usize = 1000;
const INFORMATIVE_MAX_BYTES: usize = 1024;

/// Whether a [`Stream`] streams or buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Teams streaming: informative and streaming updates, then a final message (personal chats only).
    Streaming,
    /// No updates: the text is sent as plain message(s) when the stream finishes.
    Buffered,
}

impl StreamMode {
    /// `Streaming` for `personal` conversations, `Buffered` for everything else (group chats, channels,
    /// unknown).
    pub fn for_conversation_type(conversation_type: Option<&str>) -> Self {
        match conversation_type {
            Some(t) if t.eq_ignore_ascii_case("personal") => Self::Streaming,
            _ => Self::Buffered,
        }
    }

    /// The mode for replies to `activity`'s conversation.
    pub fn for_activity(activity: &Activity) -> Self {
        Self::for_conversation_type(activity.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()))
    }
}

/// Tunables of a [`Stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamConfig {
    /// The minimum time between two sends (updates are coalesced in between). Default 1.5 s.
    pub update_interval: Duration,
    /// Age (from its first send) at which a stream is finalised, before Teams' 2-minute limit. Default 110 s.
    pub max_age: Duration,
    /// Time without input after which the stream is abandoned and finished. Default 60 s.
    pub idle_timeout: Duration,
    /// Largest text of one stream or message, in UTF-16 units. Default [`MAX_TEXT_UTF16`].
    pub max_text_utf16: usize,
    /// Final text of a stream that only ever showed informative lines (Teams refuses an empty final).
    pub empty_final_text: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            update_interval: Duration::from_millis(1500),
            max_age: Duration::from_secs(110),
            idle_timeout: Duration::from_secs(60),
            max_text_utf16: MAX_TEXT_UTF16,
            empty_final_text: "(no reply)".to_owned(),
        }
    }
}

/// What a [`StreamSend`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSendKind {
    /// The first activity of a stream (an informative or streaming update without `streamId`). Post it and
    /// pass the id Teams returns to [`Stream::started`], or call [`Stream::failed`].
    Start,
    /// A later informative or streaming update.
    Update,
    /// The final message of a stream.
    Final,
    /// A plain message (buffered mode, or text that could not be streamed).
    Message,
}

/// An activity to post to the conversation, in the order returned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamSend {
    pub kind: StreamSendKind,
    pub activity: Value,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// [`Stream::finish`] was called.
    Finished,
    /// Idle timeout or drop.
    Abandoned,
    /// [`Stream::cancelled`]: the user stopped it.
    Cancelled,
}

/// One streamed reply. See the [module docs](self) for the protocol and the behaviour.
pub(crate) struct Stream {
    mode: StreamMode,
    config: StreamConfig,
    /// Text of the current stream (cumulative), within `max_text_utf16`.
    text: String,
    text_units: usize,
    /// Bytes of `text` already shown by a streaming update.
    sent_len: usize,
    /// The latest informative line not yet sent.
    informative: Option<String>,
    stream_id: Option<String>,
    sequence: u32,
    awaiting_id: bool,
    segment_started: Option<Instant>,
    /// The current stream must be closed (age or size); text arriving meanwhile goes to `carry`.
    close_requested: bool,
    carry: String,
    degraded: bool,
    finish_requested: Option<StreamEnd>,
    ended: Option<StreamEnd>,
    created: Instant,
    last_send: Option<Instant>,
    last_input: Instant,
    drop_hook: Option<Box<dyn FnOnce(Vec<StreamSend>) + Send>>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("mode", &self.mode)
            .field("stream_id", &self.stream_id)
            .field("sequence", &self.sequence)
            .field("text_units", &self.text_units)
            .field("awaiting_id", &self.awaiting_id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// A stream created at `now` (the idle timer starts here). Nothing is sent yet.
    pub(crate) fn new(mode: StreamMode, config: StreamConfig, now: Instant) -> Self {
        Self {
            mode,
            config,
            text: String::new(),
            text_units: 0,
            sent_len: 0,
            informative: None,
            stream_id: None,
            sequence: 0,
            awaiting_id: false,
            segment_started: None,
            close_requested: false,
            carry: String::new(),
            degraded: false,
            finish_requested: None,
            ended: None,
            created: now,
            last_send: None,
            last_input: now,
            drop_hook: None,
        }
    }

    #[cfg(test)]
    /// A stream replying in `activity`'s conversation: streaming in personal chats, buffered elsewhere.
    pub(crate) fn for_activity(activity: &Activity, config: StreamConfig, now: Instant) -> Self {
        Self::new(StreamMode::for_activity(activity), config, now)
    }

    #[cfg(test)]
    /// Called with what a dropped, unfinished stream still has to send (its final, or plain messages), so
    /// that an abandoned reply is closed rather than left as a typing bubble.
    pub(crate) fn on_drop(&mut self, hook: impl FnOnce(Vec<StreamSend>) + Send + 'static) {
        self.drop_hook = Some(Box::new(hook));
    }

    #[cfg(test)]
    /// The current mode (a failed start turns `Streaming` into `Buffered`).
    pub(crate) fn mode(&self) -> StreamMode {
        self.mode
    }

    /// The stream id of the open stream, once known.
    pub(crate) fn stream_id(&self) -> Option<&str> {
        self.stream_id.as_deref()
    }

    /// How the stream ended, once it has.
    pub(crate) fn ended(&self) -> Option<StreamEnd> {
        self.ended
    }

    /// An informative line ("Searching the documents…"), clamped to Teams' 1000 characters / 1 KB. Shown only
    /// before any text of the current stream (later ones are ignored), and only when streaming.
    pub(crate) fn informative(&mut self, line: &str, now: Instant) -> Vec<StreamSend> {
        if self.ended.is_some() || self.finish_requested.is_some() {
            return Vec::new();
        }
        self.last_input = now;
        if self.mode == StreamMode::Streaming && self.text.is_empty() && !self.close_requested {
            self.informative = Some(clamp_informative(line));
        }
        self.step(now)
    }

    /// Appends `delta` to the reply.
    pub(crate) fn append(&mut self, delta: &str, now: Instant) -> Vec<StreamSend> {
        if self.ended.is_some() || self.finish_requested.is_some() {
            return Vec::new();
        }
        self.last_input = now;
        if delta.is_empty() {
            return self.step(now);
        }
        if self.close_requested {
            self.carry.push_str(delta);
        } else {
            self.text.push_str(delta);
            self.text_units += utf16_len(delta);
            if self.mode == StreamMode::Streaming {
                self.enforce_text_limit();
            }
        }
        self.step(now)
    }

    /// The id Teams returned for the [`Start`](StreamSendKind::Start) send. An empty id (Teams answered
    /// without a body) cannot be streamed to: the stream falls back to buffered.
    pub(crate) fn started(&mut self, stream_id: &str, now: Instant) -> Vec<StreamSend> {
        if !self.awaiting_id {
            return self.step(now);
        }
        self.awaiting_id = false;
        if stream_id.is_empty() {
            self.mode = StreamMode::Buffered;
        } else {
            self.stream_id = Some(stream_id.to_owned());
        }
        self.step(now)
    }

    /// The last send failed. A failed start makes the stream buffered (its text goes out as plain messages
    /// at the end); a failed update stops the updates (the final still closes the stream).
    pub(crate) fn failed(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.awaiting_id {
            self.awaiting_id = false;
            self.mode = StreamMode::Buffered;
        } else if self.stream_id.is_some() {
            self.degraded = true;
        }
        self.step(now)
    }

    /// The user stopped the stream (Teams refused an update as cancelled): nothing more is sent.
    pub(crate) fn cancelled(&mut self) {
        self.ended = Some(StreamEnd::Cancelled);
        self.drop_hook = None;
    }

    /// The reply is complete: the final message (or plain messages), now or — while the start is still
    /// awaiting its id — after [`started`](Self::started).
    pub(crate) fn finish(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.ended.is_none() && self.finish_requested.is_none() {
            self.finish_requested = Some(StreamEnd::Finished);
        }
        self.step(now)
    }

    /// Whatever is due at `now`: a coalesced update, a stream closed for age or size, an abandoned stream's
    /// final.
    pub(crate) fn poll(&mut self, now: Instant) -> Vec<StreamSend> {
        self.step(now)
    }

    /// When [`poll`](Self::poll) next has something to do (`None`: nothing until the next input or id).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let mut deadlines = Vec::new();
        if self.finish_requested.is_none() {
            deadlines.push(self.last_input + self.config.idle_timeout);
        }
        if self.mode == StreamMode::Streaming && !self.awaiting_id {
            let due = self.last_send.map_or(self.created, |t| t + self.config.update_interval);
            let open = self.stream_id.is_some();
            let pending = if open {
                (self.has_unsent() && !self.degraded) || self.close_requested
            } else {
                !self.text.is_empty() || self.informative.is_some()
            };
            if self.finish_requested.is_some() {
                deadlines.push(self.last_send.unwrap_or(self.created));
            } else if pending {
                deadlines.push(due);
            }
            if open && let Some(started) = self.segment_started {
                deadlines.push(started + self.config.max_age);
            }
        }
        deadlines.into_iter().min()
    }

    fn has_unsent(&self) -> bool {
        self.text.len() > self.sent_len || (self.text.is_empty() && self.informative.is_some())
    }

    fn due(&self, now: Instant) -> bool {
        self.last_send.is_none_or(|t| now >= t + self.config.update_interval)
    }

    /// Keeps `text` within the limit: the excess (cut at a split boundary, never before what an update
    /// already showed) moves to `carry` and the stream is to be closed.
    fn enforce_text_limit(&mut self) {
        if self.text_units <= self.config.max_text_utf16 {
            return;
        }
        let cut = cut_point(&self.text, self.config.max_text_utf16).unwrap_or(self.text.len()).max(self.sent_len);
        self.carry = self.text.split_off(cut) + &self.carry;
        self.text_units = utf16_len(&self.text);
        self.close_requested = true;
    }

    fn step(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.ended.is_some() {
            return Vec::new();
        }
        if self.finish_requested.is_none() && now >= self.last_input + self.config.idle_timeout {
            self.finish_requested = Some(StreamEnd::Abandoned);
        }
        match self.mode {
            StreamMode::Buffered => match self.finish_requested {
                Some(end) => self.end_with_messages(end, now),
                None => Vec::new(),
            },
            StreamMode::Streaming => self.step_streaming(now),
        }
    }

    fn step_streaming(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.awaiting_id {
            return Vec::new();
        }
        if self.stream_id.is_some() {
            if let Some(end) = self.finish_requested {
                return self.end_open_stream(end, now);
            }
            if !self.close_requested && self.segment_started.is_some_and(|s| now >= s + self.config.max_age) {
                self.close_requested = true;
            }
            if self.close_requested {
                let mut out = Vec::new();
                if !self.text.is_empty() {
                    out.push(self.final_send());
                    self.last_send = Some(now);
                }
                self.next_segment();
                return out;
            }
            if !self.degraded && self.due(now) && self.has_unsent() {
                return vec![self.update(StreamSendKind::Update, now)];
            }
            return Vec::new();
        }
        // No stream open.
        if let Some(end) = self.finish_requested {
            return self.end_with_messages(end, now);
        }
        if !self.due(now) {
            return Vec::new();
        }
        if self.close_requested {
            // Over the limit before any stream opened: no point streaming text about to be closed.
            let out = vec![message(&mem::take(&mut self.text))];
            self.last_send = Some(now);
            self.next_segment();
            return out;
        }
        if !self.text.is_empty() || self.informative.is_some() {
            self.segment_started = Some(now);
            self.awaiting_id = true;
            return vec![self.update(StreamSendKind::Start, now)];
        }
        Vec::new()
    }

    /// The next streaming update (text if there is any, else the pending informative line).
    fn update(&mut self, kind: StreamSendKind, now: Instant) -> StreamSend {
        self.sequence += 1;
        self.last_send = Some(now);
        let id = self.stream_id.as_deref();
        let activity = if self.text.is_empty() {
            let line = self.informative.take().unwrap_or_default();
            stream_activity("typing", &line, "informative", self.sequence, id)
        } else {
            self.informative = None;
            self.sent_len = self.text.len();
            stream_activity("typing", &self.text, "streaming", self.sequence, id)
        };
        StreamSend { kind, activity }
    }

    fn final_send(&mut self) -> StreamSend {
        self.sequence += 1;
        let text = if self.text.is_empty() { self.config.empty_final_text.as_str() } else { self.text.as_str() };
        StreamSend {
            kind: StreamSendKind::Final,
            activity: stream_activity("message", text, "final", self.sequence, self.stream_id.as_deref()),
        }
    }

    /// Finishes an open stream: the final with all remaining text if it fits, else the final with the
    /// stream's text and the rest as plain messages.
    fn end_open_stream(&mut self, end: StreamEnd, now: Instant) -> Vec<StreamSend> {
        let carry = mem::take(&mut self.carry);
        let rest = if self.text_units + utf16_len(&carry) <= self.config.max_text_utf16 {
            self.text.push_str(&carry);
            String::new()
        } else {
            carry
        };
        let mut out = vec![self.final_send()];
        out.extend(split_text(&rest, self.config.max_text_utf16).iter().map(|c| message(c)));
        self.last_send = Some(now);
        self.ended = Some(end);
        out
    }

    fn end_with_messages(&mut self, end: StreamEnd, now: Instant) -> Vec<StreamSend> {
        let all = mem::take(&mut self.text) + &mem::take(&mut self.carry);
        let out: Vec<StreamSend> = split_text(&all, self.config.max_text_utf16).iter().map(|c| message(c)).collect();
        if !out.is_empty() {
            self.last_send = Some(now);
        }
        self.ended = Some(end);
        out
    }

    /// Starts over after a stream was closed: the carried text becomes the next stream's text.
    fn next_segment(&mut self) {
        self.text = mem::take(&mut self.carry);
        self.text_units = utf16_len(&self.text);
        self.sent_len = 0;
        self.informative = None;
        self.stream_id = None;
        self.sequence = 0;
        self.segment_started = None;
        self.close_requested = false;
        self.degraded = false;
        self.enforce_text_limit();
    }

    /// What a dropped, unfinished stream still owes, without a clock: the final of an open stream, or else
    /// (buffered, never started, or the start's id still unknown) its text as plain messages.
    fn drain_for_drop(&mut self) -> Vec<StreamSend> {
        if self.ended.is_some() {
            return Vec::new();
        }
        let now = self.last_send.map_or(self.last_input, |t| t.max(self.last_input));
        let end = self.finish_requested.unwrap_or(StreamEnd::Abandoned);
        if self.mode == StreamMode::Streaming && self.stream_id.is_some() && !self.awaiting_id {
            self.end_open_stream(end, now)
        } else {
            // Buffered, never started, or the start's id never came: nothing can close a bubble, so the
            // text goes out as plain messages.
            self.end_with_messages(end, now)
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(hook) = self.drop_hook.take() {
            let sends = self.drain_for_drop();
            if !sends.is_empty() {
                hook(sends);
            }
        }
    }
}

fn stream_activity(kind: &str, text: &str, stream_type: &str, sequence: u32, stream_id: Option<&str>) -> Value {
    let mut info = json!({"type": "streaminfo", "streamType": stream_type, "streamSequence": sequence});
    let mut channel_data = json!({"streamType": stream_type, "streamSequence": sequence});
    if let Some(id) = stream_id {
        info["streamId"] = json!(id);
        channel_data["streamId"] = json!(id);
    }
    json!({"type": kind, "text": text, "entities": [info], "channelData": channel_data})
}

fn message(text: &str) -> StreamSend {
    StreamSend { kind: StreamSendKind::Message, activity: json!({"type": "message", "text": text}) }
}

fn clamp_informative(line: &str) -> String {
    let mut end = 0;
    for (n, (i, c)) in line.char_indices().enumerate() {
        if n >= INFORMATIVE_MAX_CHARS || i + c.len_utf8() > INFORMATIVE_MAX_BYTES {
            break;
        }
        end = i + c.len_utf8();
    }
    line[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::teams::testdata;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn streaming(t0: Instant) -> Stream {
        Stream::new(StreamMode::Streaming, StreamConfig::default(), t0)
    }

    fn one(sends: Vec<StreamSend>) -> StreamSend {
        assert_eq!(sends.len(), 1, "{sends:?}");
        sends.into_iter().next().unwrap()
    }

    fn info(send: &StreamSend) -> (&str, &str, Option<&str>, u64) {
        let a = &send.activity;
        let e = &a["entities"][0];
        assert_eq!(e["type"], "streaminfo");
        // The entity and channelData carry the same stream info.
        for key in ["streamType", "streamSequence", "streamId"] {
            assert_eq!(e.get(key), a["channelData"].get(key), "{key}");
        }
        (a["type"].as_str().unwrap(), e["streamType"].as_str().unwrap(), e["streamId"].as_str(), e["streamSequence"].as_u64().unwrap())
    }

    #[test]
    fn streams_and_sends_can_move_between_tasks() {
        fn send<T: Send>() {}
        send::<Stream>();
        send::<StreamSend>();
    }

    #[test]
    fn mode_follows_the_conversation_type() {
        assert_eq!(StreamMode::for_activity(&testdata::activity(testdata::MESSAGE_PERSONAL)), StreamMode::Streaming);
        assert_eq!(StreamMode::for_activity(&testdata::activity(testdata::CHANNEL_MENTION)), StreamMode::Buffered);
        assert_eq!(StreamMode::for_conversation_type(Some("groupChat")), StreamMode::Buffered);
        assert_eq!(StreamMode::for_conversation_type(None), StreamMode::Buffered);
    }

    #[test]
    fn lazy_start_then_cumulative_coalesced_updates_then_final() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        assert!(s.poll(t0 + ms(500)).is_empty(), "nothing before the first text");

        let start = one(s.append("Hel", t0 + ms(600)));
        assert_eq!(start.kind, StreamSendKind::Start);
        assert_eq!(info(&start), ("typing", "streaming", None, 1));
        assert_eq!(start.activity["text"], "Hel");
        assert_eq!(start.activity.get("id"), None);

        assert!(s.append("lo", t0 + ms(700)).is_empty(), "nothing while the stream id is unknown");
        assert!(s.started("S1", t0 + ms(800)).is_empty(), "not due before 1.5 s");
        assert_eq!(s.stream_id(), Some("S1"));
        assert_eq!(s.next_deadline(), Some(t0 + ms(2100)));

        let u = one(s.poll(t0 + ms(2100)));
        assert_eq!((u.kind, info(&u)), (StreamSendKind::Update, ("typing", "streaming", Some("S1"), 2)));
        assert_eq!(u.activity["text"], "Hello");

        assert!(s.append(",", t0 + ms(2200)).is_empty());
        assert!(s.append(" world", t0 + ms(2300)).is_empty());
        assert!(s.poll(t0 + ms(3599)).is_empty());
        let u = one(s.poll(t0 + ms(3600)));
        assert_eq!(info(&u).3, 3);
        assert_eq!(u.activity["text"], "Hello, world");
        assert!(s.poll(t0 + ms(6000)).is_empty(), "nothing new, nothing sent");

        let f = one(s.finish(t0 + ms(6100)));
        assert_eq!((f.kind, info(&f)), (StreamSendKind::Final, ("message", "final", Some("S1"), 4)));
        assert_eq!(f.activity["text"], "Hello, world");
        assert_eq!(s.ended(), Some(StreamEnd::Finished));
        assert!(s.append("late", t0 + ms(9000)).is_empty());
        assert!(s.finish(t0 + ms(9000)).is_empty());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn informative_lines_come_first_and_are_clamped() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        let start = one(s.informative("Searching the documents…", t0));
        assert_eq!((start.kind, info(&start)), (StreamSendKind::Start, ("typing", "informative", None, 1)));
        assert_eq!(start.activity["text"], "Searching the documents…");
        assert!(s.started("S", t0 + ms(100)).is_empty());
        assert!(s.informative("Reading 3 files", t0 + ms(200)).is_empty());
        let second = one(s.poll(t0 + ms(1500)));
        assert_eq!(info(&second), ("typing", "informative", Some("S"), 2));
        assert!(s.append("Answer", t0 + ms(1600)).is_empty());
        assert!(s.informative("ignored once text flows", t0 + ms(1700)).is_empty());
        let u = one(s.poll(t0 + ms(3000)));
        assert_eq!((info(&u).1, &u.activity["text"]), ("streaming", &json!("Answer")));

        assert_eq!(clamp_informative(&"x".repeat(1500)).len(), INFORMATIVE_MAX_CHARS);
        let wide = clamp_informative(&"日".repeat(600)); // 3 bytes each: the 1 KB limit bites first
        assert_eq!(wide.chars().count(), 341);
        assert!(wide.len() <= INFORMATIVE_MAX_BYTES);
    }

    #[test]
    fn a_stream_with_only_informative_lines_closes_with_placeholder_text() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.informative("Thinking", t0));
        s.started("S", t0);
        let f = one(s.finish(t0 + ms(10)));
        assert_eq!(info(&f), ("message", "final", Some("S"), 2));
        assert_eq!(f.activity["text"], "(no reply)");
    }

    #[test]
    fn finish_before_the_id_arrives_waits_for_it() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.append("quick answer", t0));
        assert!(s.finish(t0 + ms(10)).is_empty());
        let f = one(s.started("S", t0 + ms(50)));
        assert_eq!((info(&f), &f.activity["text"]), (("message", "final", Some("S"), 2), &json!("quick answer")));
    }

    #[test]
    fn updates_stay_monotonic_and_at_most_one_per_interval() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        let mut sent: Vec<(Instant, StreamSend)> = Vec::new();
        let mut full = String::new();
        for i in 0..200u64 {
            let now = t0 + ms(i * 100);
            let word = format!("w{i} ");
            full.push_str(&word);
            for send in s.append(&word, now) {
                if send.kind == StreamSendKind::Start {
                    assert!(s.started("S", now).is_empty());
                }
                sent.push((now, send));
            }
        }
        sent.extend(s.finish(t0 + ms(20_000)).into_iter().map(|x| (t0 + ms(20_000), x)));
        let mut previous = String::new();
        for pair in sent.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(pair[1].1.kind == StreamSendKind::Final || gap >= ms(1500), "{gap:?}");
        }
        for (_, send) in &sent {
            let text = send.activity["text"].as_str().unwrap();
            assert!(text.starts_with(&previous), "cumulative");
            previous = text.to_owned();
        }
        assert_eq!(previous, full);
        assert!(sent.len() <= 20_000 / 1500 + 2);
    }

    /// Drives a stream with `append` every `step` from `t0` for `total`, answering starts with ids
    /// `S1`, `S2`…, then finishes; returns every send with its time.
    fn drive(s: &mut Stream, t0: Instant, step: Duration, total: Duration, text: impl Fn(u32) -> String) -> Vec<(Instant, StreamSend)> {
        let mut sent = Vec::new();
        let mut ids = 0;
        let mut handle = |s: &mut Stream, now: Instant, sends: Vec<StreamSend>, sent: &mut Vec<(Instant, StreamSend)>| {
            let mut queue = sends;
            while !queue.is_empty() {
                let send = queue.remove(0);
                let start = send.kind == StreamSendKind::Start;
                sent.push((now, send));
                if start {
                    ids += 1;
                    queue.extend(s.started(&format!("S{ids}"), now));
                }
            }
        };
        let mut i = 0;
        let mut now = t0;
        while now - t0 < total {
            let sends = s.append(&text(i), now);
            handle(s, now, sends, &mut sent);
            let sends = s.poll(now);
            handle(s, now, sends, &mut sent);
            i += 1;
            now += step;
        }
        let sends = s.finish(now);
        handle(s, now, sends, &mut sent);
        sent
    }

    #[test]
    fn a_stream_is_finalised_before_the_two_minute_limit_and_continues_in_a_new_one() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        let sent = drive(&mut s, t0, ms(1000), Duration::from_secs(200), |i| format!("{i} "));
        let full: String = (0..200).map(|i| format!("{i} ")).collect();

        // Group the sends by stream: each starts with a Start and ends with a Final.
        let mut finals = String::new();
        let mut opened: Option<Instant> = None;
        let mut streams = 0;
        for (at, send) in &sent {
            match send.kind {
                StreamSendKind::Start => {
                    assert!(opened.is_none());
                    opened = Some(*at);
                    streams += 1;
                    assert_eq!(info(send).2, None);
                }
                StreamSendKind::Update => assert!(*at - opened.unwrap() < TEAMS_STREAM_LIMIT),
                StreamSendKind::Final => {
                    let age = *at - opened.take().unwrap();
                    assert!(age < TEAMS_STREAM_LIMIT, "{age:?}");
                    assert_eq!(info(send).2, Some(format!("S{streams}").as_str()));
                    finals.push_str(send.activity["text"].as_str().unwrap());
                }
                StreamSendKind::Message => panic!("no plain messages expected"),
            }
        }
        assert_eq!(streams, 2);
        assert_eq!(finals, full, "the finals together are the whole reply, nothing lost or repeated");
    }

    #[test]
    fn text_over_the_size_limit_rolls_over_into_a_new_stream() {
        let t0 = Instant::now();
        let config = StreamConfig { max_text_utf16: 40, ..StreamConfig::default() };
        let mut s = Stream::new(StreamMode::Streaming, config, t0);
        let sent = drive(&mut s, t0, ms(700), Duration::from_secs(20), |i| format!("word{i} "));
        let full: String = (0..29).map(|i| format!("word{i} ")).collect();
        let mut finals = String::new();
        let mut messages = String::new();
        for (_, send) in &sent {
            let text = send.activity["text"].as_str().unwrap();
            assert!(utf16_len(text) <= 40, "{text:?}");
            match send.kind {
                StreamSendKind::Final => finals.push_str(text),
                StreamSendKind::Message => messages.push_str(text),
                _ => {}
            }
        }
        assert_eq!(finals + &messages, full);
        assert!(sent.iter().filter(|(_, x)| x.kind == StreamSendKind::Final).count() >= 4);
    }

    #[test]
    fn an_idle_stream_is_abandoned_with_what_it_has() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.append("partial ", t0));
        s.started("S", t0 + ms(10));
        assert!(s.append("answer", t0 + ms(20)).is_empty());
        assert_eq!(s.next_deadline(), Some(t0 + ms(1500)));
        one(s.poll(t0 + ms(1500)));
        assert!(s.append(" and more", t0 + ms(1600)).is_empty());
        assert!(s.poll(t0 + ms(3100)).len() == 1);
        assert_eq!(s.next_deadline(), Some(t0 + ms(1600) + Duration::from_secs(60)));
        assert!(s.poll(t0 + ms(61_599)).is_empty());
        let f = one(s.poll(t0 + ms(61_600)));
        assert_eq!((f.kind, &f.activity["text"]), (StreamSendKind::Final, &json!("partial answer and more")));
        assert_eq!(s.ended(), Some(StreamEnd::Abandoned));
    }

    #[test]
    fn a_dropped_stream_sends_its_final_through_the_hook() {
        let t0 = Instant::now();
        let sink: Arc<Mutex<Vec<StreamSend>>> = Arc::default();

        let mut s = streaming(t0);
        let to = Arc::clone(&sink);
        s.on_drop(move |sends| to.lock().unwrap().extend(sends));
        one(s.append("half an ans", t0));
        s.started("S", t0);
        s.append("wer", t0 + ms(100));
        drop(s);
        let got = mem::take(&mut *sink.lock().unwrap());
        let f = one(got);
        assert_eq!((info(&f), &f.activity["text"]), (("message", "final", Some("S"), 2), &json!("half an answer")));

        // Dropped while the start's id is unknown: the text goes out as a plain message.
        let mut s = streaming(t0);
        let to = Arc::clone(&sink);
        s.on_drop(move |sends| to.lock().unwrap().extend(sends));
        one(s.append("never acknowledged", t0));
        drop(s);
        let m = one(mem::take(&mut *sink.lock().unwrap()));
        assert_eq!((m.kind, &m.activity["text"]), (StreamSendKind::Message, &json!("never acknowledged")));

        // Finished, cancelled or empty streams owe nothing.
        for end in 0..3 {
            let mut s = streaming(t0);
            let to = Arc::clone(&sink);
            s.on_drop(move |sends| to.lock().unwrap().extend(sends));
            if end < 2 {
                one(s.append("x", t0));
                s.started("S", t0);
            }
            if end == 0 {
                one(s.finish(t0));
            } else if end == 1 {
                s.cancelled();
            }
            drop(s);
        }
        assert!(sink.lock().unwrap().is_empty());
    }

    #[test]
    fn buffered_streams_send_plain_messages_at_the_end() {
        let t0 = Instant::now();
        let config = StreamConfig { max_text_utf16: 10, ..StreamConfig::default() };
        let mut s = Stream::for_activity(&testdata::activity(testdata::CHANNEL_MENTION_PREFIXED), config, t0);
        assert_eq!(s.mode(), StreamMode::Buffered);
        assert!(s.informative("Thinking", t0).is_empty());
        assert!(s.append("one two ", t0).is_empty());
        assert!(s.append("three four five", t0 + ms(5000)).is_empty());
        assert!(s.poll(t0 + ms(10_000)).is_empty());
        let sends = s.finish(t0 + ms(10_000));
        assert!(sends.iter().all(|x| x.kind == StreamSendKind::Message && x.activity.get("entities").is_none()));
        let texts: Vec<&str> = sends.iter().map(|x| x.activity["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["one two ", "three ", "four five"]);
    }

    #[test]
    fn a_failed_start_falls_back_to_one_message() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.append("Hello", t0));
        assert!(s.failed(t0 + ms(100)).is_empty());
        assert_eq!(s.mode(), StreamMode::Buffered);
        assert!(s.append(" there", t0 + ms(2000)).is_empty());
        let m = one(s.finish(t0 + ms(3000)));
        assert_eq!((m.kind, &m.activity["text"]), (StreamSendKind::Message, &json!("Hello there")));

        // So does a start answered without an id.
        let mut s = streaming(t0);
        one(s.append("Hi", t0));
        assert!(s.started("", t0).is_empty());
        assert_eq!(one(s.finish(t0)).kind, StreamSendKind::Message);
    }

    #[test]
    fn a_failed_update_stops_updates_but_the_final_still_closes() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.append("a", t0));
        s.started("S", t0);
        s.append("b", t0 + ms(100));
        one(s.poll(t0 + ms(1500)));
        assert!(s.failed(t0 + ms(1600)).is_empty());
        s.append("c", t0 + ms(1700));
        assert!(s.poll(t0 + ms(5000)).is_empty(), "no more updates");
        let f = one(s.finish(t0 + ms(5000)));
        assert_eq!((info(&f).0, &f.activity["text"]), ("message", &json!("abc")));
    }

    #[test]
    fn a_cancelled_stream_sends_nothing_more() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.append("a", t0));
        s.started("S", t0);
        s.cancelled();
        assert!(s.append("b", t0 + ms(2000)).is_empty());
        assert!(s.finish(t0 + ms(2000)).is_empty());
        assert_eq!(s.ended(), Some(StreamEnd::Cancelled));
    }
}
