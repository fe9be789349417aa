//! Teams streaming (`streaminfo`) and update-in-place progress as a transport-free state machine.
//!
//! # Wire format
//!
//! **Native streaming** (1:1 chats), what Microsoft's own SDKs post (Agents-for-js `StreamingResponse`,
//! teams.ts `HttpStream` / `TypingActivity.addStreamUpdate` / `MessageActivity.addStreamFinal`), each to
//! `sendToConversation`:
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
//! **Update in place** (group chats, channels, and a 1:1 stream past Teams' two minutes): one placeholder
//! message (`{"type":"message","text":<status line or text so far>}`, posted; Teams answers its id), then
//! plain edits of it, `PUT …/activities/{id}` with `{"type":"message","text":<status line or text so far>}`
//! (no `streaminfo`; the sender adds `id`), the last one with the whole text. This is how the SDKs go on past
//! the streaming window (teams.py #453, Agents-for-net #950, teams-sdk PR #2989): "no streaming window
//! applies to plain edits". Edits do not notify anyone again.
//!
//! # Behaviour
//!
//! * [`StreamMode::Streaming`] in personal (1:1) chats, [`StreamMode::Updating`] elsewhere, and
//!   [`StreamMode::Buffered`] (the text kept and sent as plain message(s) at the end) where the sender
//!   chooses it (agentic conversations) or when the placeholder could not be posted.
//! * Lazy: nothing is sent before the first text (or informative line).
//! * Informative (status) lines are shown only before the first text; later ones are ignored.
//! * At most one streaming update per [`StreamConfig::update_interval`] (1.5 s) and one edit per
//!   [`StreamConfig::edit_interval`] (2 s): input in between is coalesced, so nothing is lost and no limit is
//!   exceeded; only the final goes out at once from here — the poster (`connector::streaming::StreamLink`)
//!   still holds every request to [`StreamConfig::request_gap`] (1 s) after the previous one.
//! * Teams ends a stream after 2 minutes: a stream older than [`StreamConfig::max_age`] (110 s) gets its
//!   final with its text so far (or its status line) and then **continues in place**: the same message is
//!   edited as above ([`Stream::expired`] does the same when Teams already refused an update for age).
//! * An edit refused for throttling (or lost in transit) is not repeated as it was: [`Stream::throttled`]
//!   holds the next edit until after `Retry-After`, and that edit carries everything written by then.
//! * One message's text stays within [`StreamConfig::max_text_utf16`]: text beyond it closes the stream (or
//!   gives the placeholder its final text) at a split boundary ([`split_text`] rules) and continues in a new
//!   one.
//! * Abandonment: no input for [`StreamConfig::idle_timeout`], or the `Stream` dropped with an
//!   [`on_drop`](Stream::on_drop) hook set, finishes it with everything received so far.
//! * If the first streaming request fails (or is answered without an id) the stream goes on in place; if
//!   the placeholder fails, buffered. If a later update fails for good, no more updates are sent and the
//!   final still closes the message; [`Stream::cancelled`] (the user pressed Stop, or the message was
//!   deleted) ends it silently.
//!
//! The machine never emits anything after a start or placeholder until [`Stream::started`] or
//! [`Stream::failed`], so the sends it returns can be posted in order, one at a time. Call [`Stream::poll`]
//! at [`Stream::next_deadline`].

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

/// How a [`Stream`] shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Teams streaming: informative and streaming updates, then a final message (personal chats only).
    Streaming,
    /// One placeholder message edited in place (group chats, channels, and streams past Teams' 2 minutes).
    Updating,
    /// No progress: the text is sent as plain message(s) when the stream finishes.
    Buffered,
}

impl StreamMode {
    /// `Streaming` for `personal` conversations, `Updating` for everything else (group chats, channels,
    /// unknown: a bot may edit its messages wherever it may post).
    pub fn for_conversation_type(conversation_type: Option<&str>) -> Self {
        match conversation_type {
            Some(t) if t.eq_ignore_ascii_case("personal") => Self::Streaming,
            _ => Self::Updating,
        }
    }

    /// The mode for replies to `activity`'s conversation.
    pub fn for_activity(activity: &Activity) -> Self {
        Self::for_conversation_type(activity.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()))
    }

    /// The name a host sees (`stream_start`'s `mode`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Updating => "updating",
            Self::Buffered => "buffered",
        }
    }
}

/// Tunables of a [`Stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamConfig {
    /// The minimum time between two streaming updates (updates are coalesced in between). Default 1.5 s.
    pub update_interval: Duration,
    /// The minimum time between two edits of a message updated in place. Default 2 s
    /// (`outbound.stream_update_ms`).
    pub edit_interval: Duration,
    /// The minimum time between two requests of one stream, answer to request (Teams: one per second);
    /// applied by the poster. Default 1 s.
    pub request_gap: Duration,
    /// Age (from its first send) at which a stream is finalised and continues in place, before Teams'
    /// 2-minute limit. Default 110 s (`outbound.stream_max_age_ms`).
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
            edit_interval: Duration::from_millis(2000),
            request_gap: Duration::from_secs(1),
            max_age: Duration::from_secs(110),
            idle_timeout: Duration::from_secs(60),
            max_text_utf16: MAX_TEXT_UTF16,
            empty_final_text: "(no reply)".to_owned(),
        }
    }
}

impl StreamConfig {
    /// Every Teams pacing and limit divided by `scale` (a test clock running `scale` times faster; `--dev`
    /// only). The idle timeout is not: it guards against a host that went away, and a slow machine running
    /// a scaled test must not look like one.
    #[must_use]
    pub(crate) fn scaled(self, scale: u32) -> Self {
        let scale = scale.max(1);
        Self {
            update_interval: self.update_interval / scale,
            edit_interval: self.edit_interval / scale,
            request_gap: self.request_gap / scale,
            max_age: self.max_age / scale,
            ..self
        }
    }
}

/// What a [`StreamSend`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamSendKind {
    /// The first activity of a native stream (an informative or streaming update without `streamId`). Post
    /// it and pass the id Teams returns to [`Stream::started`], or call [`Stream::failed`].
    Start,
    /// A later informative or streaming update.
    Update,
    /// The final message of a native stream.
    Final,
    /// The placeholder of a message updated in place (a plain message). Post it and pass the id Teams
    /// returns to [`Stream::started`], or call [`Stream::failed`].
    Placeholder,
    /// An edit of the message [`StreamSend::target`] showing progress (`PUT`).
    Edit,
    /// The last edit of the message [`StreamSend::target`]: its final text (`PUT`).
    EditFinal,
    /// A plain message (buffered mode, or text that could not be streamed).
    Message,
}

impl StreamSendKind {
    /// Whether the send replaces a message in place (`PUT …/activities/{target}`) rather than posting.
    pub(crate) fn is_edit(self) -> bool {
        matches!(self, Self::Edit | Self::EditFinal)
    }

    /// Whether the send belongs to a native (`streaminfo`) stream.
    pub(crate) fn is_native(self) -> bool {
        matches!(self, Self::Start | Self::Update | Self::Final)
    }
}

/// An activity to post (or, for an edit, to put) to the conversation, in the order returned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamSend {
    pub kind: StreamSendKind,
    pub activity: Value,
    /// The message this send writes to: the stream id of a native update or final, the placeholder's id
    /// of an edit. `None` for starts, placeholders and plain messages.
    pub target: Option<String>,
}

impl StreamSend {
    /// A native final that Teams refused because the stream passed its time limit, as the edit that gives
    /// the streamed message the same text in place (what teams.py does: `PUT` to the stream id, without
    /// the stream info).
    pub(crate) fn final_in_place(&self) -> Option<StreamSend> {
        let target = self.target.clone().filter(|_| self.kind == StreamSendKind::Final)?;
        let text = self.activity["text"].as_str().unwrap_or_default();
        Some(StreamSend { kind: StreamSendKind::EditFinal, activity: plain(text), target: Some(target) })
    }
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// [`Stream::finish`] was called.
    Finished,
    /// Idle timeout or drop.
    Abandoned,
    /// [`Stream::cancelled`]: the user stopped it (or its message is gone).
    Cancelled,
}

/// One streamed reply. See the [module docs](self) for the protocol and the behaviour.
pub(crate) struct Stream {
    mode: StreamMode,
    config: StreamConfig,
    /// Text of the current stream or message (cumulative), within `max_text_utf16`.
    text: String,
    text_units: usize,
    /// Bytes of `text` already shown by an update or edit.
    sent_len: usize,
    /// The latest informative (status) line, while there is no text.
    status: Option<String>,
    /// Whether `status` is what the message shows.
    status_shown: bool,
    /// The id of the open stream (native) or of the placeholder (in place).
    message_id: Option<String>,
    sequence: u32,
    awaiting_id: bool,
    segment_started: Option<Instant>,
    /// The current stream or message must be closed (size); text arriving meanwhile goes to `carry`.
    close_requested: bool,
    carry: String,
    degraded: bool,
    /// No edit before this (a throttled edit's `Retry-After`).
    hold_until: Option<Instant>,
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
            .field("message_id", &self.message_id)
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
            status: None,
            status_shown: false,
            message_id: None,
            sequence: 0,
            awaiting_id: false,
            segment_started: None,
            close_requested: false,
            carry: String::new(),
            degraded: false,
            hold_until: None,
            finish_requested: None,
            ended: None,
            created: now,
            last_send: None,
            last_input: now,
            drop_hook: None,
        }
    }

    #[cfg(test)]
    /// Called with what a dropped, unfinished stream still has to send (its final, or plain messages), so
    /// that an abandoned reply is closed rather than left as a typing bubble.
    pub(crate) fn on_drop(&mut self, hook: impl FnOnce(Vec<StreamSend>) + Send + 'static) {
        self.drop_hook = Some(Box::new(hook));
    }

    /// The current mode (a failed start turns `Streaming` into `Updating`, a stream past its age limit
    /// goes on `Updating`, a failed placeholder makes it `Buffered`).
    pub(crate) fn mode(&self) -> StreamMode {
        self.mode
    }

    #[cfg(test)]
    /// The id of the open stream or placeholder message, once known.
    pub(crate) fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// How the stream ended, once it has.
    pub(crate) fn ended(&self) -> Option<StreamEnd> {
        self.ended
    }

    /// An informative line ("Searching the documents…"), clamped to Teams' 1000 characters / 1 KB. Shown only
    /// before any text of the current stream or message (later ones are ignored), and not when buffered.
    pub(crate) fn informative(&mut self, line: &str, now: Instant) -> Vec<StreamSend> {
        if self.ended.is_some() || self.finish_requested.is_some() {
            return Vec::new();
        }
        self.last_input = now;
        if self.mode != StreamMode::Buffered && self.text.is_empty() && !self.close_requested {
            self.status = Some(clamp_informative(line));
            self.status_shown = false;
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
            if self.mode != StreamMode::Buffered {
                self.enforce_text_limit();
            }
        }
        self.step(now)
    }

    /// The id Teams returned for the [`Start`](StreamSendKind::Start) or
    /// [`Placeholder`](StreamSendKind::Placeholder) send. An empty id (Teams answered without a body)
    /// cannot be written to: as [`failed`](Self::failed).
    pub(crate) fn started(&mut self, id: &str, now: Instant) -> Vec<StreamSend> {
        if !self.awaiting_id {
            return self.step(now);
        }
        if id.is_empty() {
            return self.failed(now);
        }
        self.awaiting_id = false;
        self.message_id = Some(id.to_owned());
        self.step(now)
    }

    /// The last send failed. A failed start makes the stream go on in place (a placeholder next), a failed
    /// placeholder makes it buffered (its text goes out as plain messages at the end); a failed update or
    /// edit stops the progress (the final still closes the message).
    pub(crate) fn failed(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.awaiting_id {
            self.awaiting_id = false;
            self.mode = if self.mode == StreamMode::Streaming { StreamMode::Updating } else { StreamMode::Buffered };
            self.segment_started = None;
            self.sequence = 0;
            self.sent_len = 0;
            self.status_shown = false;
        } else if self.message_id.is_some() {
            self.degraded = true;
        }
        self.step(now)
    }

    /// The last edit was refused for throttling (or may not have landed): the next one, after
    /// `retry_after` (at least the edit interval), shows everything written by then.
    pub(crate) fn throttled(&mut self, now: Instant, retry_after: Option<Duration>) -> Vec<StreamSend> {
        self.sent_len = 0;
        self.status_shown = false;
        self.last_send = Some(now);
        self.hold_until = retry_after.map(|r| now + r);
        self.step(now)
    }

    /// Teams refused a streaming update because the stream passed its time limit: the stream goes on in
    /// place, editing the streamed message (its id is the stream id) with everything written so far.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.mode == StreamMode::Streaming && self.message_id.is_some() {
            self.go_on_in_place(now);
            self.sent_len = 0;
            self.status_shown = false;
        }
        self.step(now)
    }

    /// The user stopped the stream (Teams refused an update as cancelled), or its message is gone: nothing
    /// more is sent.
    pub(crate) fn cancelled(&mut self) {
        self.ended = Some(StreamEnd::Cancelled);
        self.drop_hook = None;
    }

    /// The reply is complete: the final message or edit (or plain messages), now or — while a start or
    /// placeholder is still awaiting its id — after [`started`](Self::started).
    pub(crate) fn finish(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.ended.is_none() && self.finish_requested.is_none() {
            self.finish_requested = Some(StreamEnd::Finished);
        }
        self.step(now)
    }

    /// Whatever is due at `now`: a coalesced update or edit, a stream closed for age or size, an abandoned
    /// stream's final.
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
        if self.mode != StreamMode::Buffered && !self.awaiting_id {
            let due = self.last_send.map_or(self.created, |t| t + self.interval());
            let due = self.hold_until.map_or(due, |h| due.max(h));
            let open = self.message_id.is_some();
            let pending = if open {
                (self.has_unsent() && !self.degraded) || self.close_requested
            } else {
                !self.text.is_empty() || self.status.is_some()
            };
            if self.finish_requested.is_some() {
                deadlines.push(self.last_send.unwrap_or(self.created));
            } else if pending {
                deadlines.push(due);
            }
            if self.mode == StreamMode::Streaming
                && open
                && let Some(started) = self.segment_started
            {
                deadlines.push(started + self.config.max_age);
            }
        }
        deadlines.into_iter().min()
    }

    fn interval(&self) -> Duration {
        match self.mode {
            StreamMode::Updating => self.config.edit_interval,
            _ => self.config.update_interval,
        }
    }

    fn has_unsent(&self) -> bool {
        self.text.len() > self.sent_len || (self.text.is_empty() && self.status.is_some() && !self.status_shown)
    }

    fn due(&self, now: Instant) -> bool {
        self.last_send.is_none_or(|t| now >= t + self.interval()) && self.hold_until.is_none_or(|h| now >= h)
    }

    /// What the message shows now: the text, or while there is none the status line.
    fn shown_text(&self) -> &str {
        if self.text.is_empty() { self.status.as_deref().unwrap_or_default() } else { &self.text }
    }

    /// Keeps `text` within the limit: the excess (cut at a split boundary, never before what an update
    /// already showed) moves to `carry` and the stream is to be closed.
    fn enforce_text_limit(&mut self) {
        if self.text_units <= self.config.max_text_utf16 {
            return;
        }
        let cut = cut_point(&self.text, self.config.max_text_utf16).unwrap_or(self.text.len()).max(self.sent_len.min(self.text.len()));
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
            StreamMode::Updating => self.step_updating(now),
        }
    }

    fn step_streaming(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.awaiting_id {
            return Vec::new();
        }
        if self.message_id.is_some() {
            if let Some(end) = self.finish_requested {
                return self.end_open_stream(end, now);
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
            if self.segment_started.is_some_and(|s| now >= s + self.config.max_age) {
                // Before Teams' 2 minutes: close the stream with what it shows, then edit it in place.
                let out = vec![self.final_send()];
                self.go_on_in_place(now);
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
        if !self.text.is_empty() || self.status.is_some() {
            self.segment_started = Some(now);
            self.awaiting_id = true;
            return vec![self.update(StreamSendKind::Start, now)];
        }
        Vec::new()
    }

    fn step_updating(&mut self, now: Instant) -> Vec<StreamSend> {
        if self.awaiting_id {
            return Vec::new();
        }
        if self.message_id.is_some() {
            if let Some(end) = self.finish_requested {
                return self.end_open_placeholder(end, now);
            }
            if self.close_requested {
                // The message is full: its final text, then the rest in a new one.
                let out = self.edit(StreamSendKind::EditFinal, now).into_iter().collect();
                self.next_segment();
                return out;
            }
            if !self.degraded && self.due(now) && self.has_unsent() {
                return self.edit(StreamSendKind::Edit, now).into_iter().collect();
            }
            return Vec::new();
        }
        if let Some(end) = self.finish_requested {
            return self.end_with_messages(end, now);
        }
        if !self.due(now) {
            return Vec::new();
        }
        if self.close_requested {
            let out = vec![message(&mem::take(&mut self.text))];
            self.last_send = Some(now);
            self.next_segment();
            return out;
        }
        if !self.text.is_empty() || self.status.is_some() {
            self.awaiting_id = true;
            self.last_send = Some(now);
            self.sent_len = self.text.len();
            self.status_shown = self.text.is_empty();
            return vec![StreamSend { kind: StreamSendKind::Placeholder, activity: plain(self.shown_text()), target: None }];
        }
        Vec::new()
    }

    /// The open native stream goes on in place: its message (the stream id) is edited from now on.
    fn go_on_in_place(&mut self, now: Instant) {
        self.mode = StreamMode::Updating;
        self.segment_started = None;
        self.sequence = 0;
        self.last_send = Some(now);
    }

    /// The next streaming update (text if there is any, else the pending informative line).
    fn update(&mut self, kind: StreamSendKind, now: Instant) -> StreamSend {
        self.sequence += 1;
        self.last_send = Some(now);
        let id = self.message_id.as_deref();
        let activity = if self.text.is_empty() {
            self.status_shown = true;
            stream_activity("typing", self.status.as_deref().unwrap_or_default(), "informative", self.sequence, id)
        } else {
            self.sent_len = self.text.len();
            stream_activity("typing", &self.text, "streaming", self.sequence, id)
        };
        StreamSend { kind, activity, target: self.message_id.clone() }
    }

    /// The native final: the text, or (a stream that only showed status lines) the last status line when
    /// the stream goes on in place, else the empty-final text.
    fn final_send(&mut self) -> StreamSend {
        self.sequence += 1;
        let goes_on = self.finish_requested.is_none() && !self.close_requested;
        let text = match (self.text.is_empty(), &self.status) {
            (false, _) => self.text.as_str(),
            (true, Some(status)) if goes_on => status.as_str(),
            (true, _) => self.config.empty_final_text.as_str(),
        };
        let activity = stream_activity("message", text, "final", self.sequence, self.message_id.as_deref());
        self.sent_len = self.text.len();
        self.status_shown = self.text.is_empty() && goes_on;
        StreamSend { kind: StreamSendKind::Final, activity, target: self.message_id.clone() }
    }

    /// An edit of the placeholder with the text so far (or the status line); the final one with the whole
    /// text (or the empty-final text). `None` when a final edit would change nothing.
    fn edit(&mut self, kind: StreamSendKind, now: Instant) -> Option<StreamSend> {
        let fully_shown = !self.text.is_empty() && self.sent_len == self.text.len();
        if kind == StreamSendKind::EditFinal && fully_shown {
            return None;
        }
        let text = if kind == StreamSendKind::EditFinal && self.text.is_empty() {
            self.config.empty_final_text.clone()
        } else {
            self.shown_text().to_owned()
        };
        self.last_send = Some(now);
        self.hold_until = None;
        self.sent_len = self.text.len();
        self.status_shown = self.text.is_empty();
        Some(StreamSend { kind, activity: plain(&text), target: self.message_id.clone() })
    }

    /// Takes the carried text into the final message if it fits; returns what does not.
    fn absorb_carry(&mut self) -> String {
        let carry = mem::take(&mut self.carry);
        if self.text_units + utf16_len(&carry) <= self.config.max_text_utf16 {
            self.text_units += utf16_len(&carry);
            self.text.push_str(&carry);
            String::new()
        } else {
            carry
        }
    }

    /// Finishes an open stream: the final with all remaining text if it fits, else the final with the
    /// stream's text and the rest as plain messages.
    fn end_open_stream(&mut self, end: StreamEnd, now: Instant) -> Vec<StreamSend> {
        let rest = self.absorb_carry();
        let mut out = vec![self.final_send()];
        out.extend(split_text(&rest, self.config.max_text_utf16).iter().map(|c| message(c)));
        self.last_send = Some(now);
        self.ended = Some(end);
        out
    }

    /// Finishes a message updated in place: its final edit (unless it already shows the whole text), and
    /// what does not fit as plain messages.
    fn end_open_placeholder(&mut self, end: StreamEnd, now: Instant) -> Vec<StreamSend> {
        let rest = self.absorb_carry();
        let mut out: Vec<StreamSend> = self.edit(StreamSendKind::EditFinal, now).into_iter().collect();
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

    /// Starts over after a stream or message was closed: the carried text becomes the next one's text.
    fn next_segment(&mut self) {
        self.text = mem::take(&mut self.carry);
        self.text_units = utf16_len(&self.text);
        self.sent_len = 0;
        self.status = None;
        self.status_shown = false;
        self.message_id = None;
        self.sequence = 0;
        self.segment_started = None;
        self.close_requested = false;
        self.degraded = false;
        self.hold_until = None;
        self.enforce_text_limit();
    }

    /// What a dropped, unfinished stream still owes, without a clock: the final of an open stream or
    /// placeholder, or else (buffered, never started, or the start's id still unknown) its text as plain
    /// messages.
    fn drain_for_drop(&mut self) -> Vec<StreamSend> {
        if self.ended.is_some() {
            return Vec::new();
        }
        let now = self.last_send.map_or(self.last_input, |t| t.max(self.last_input));
        let end = self.finish_requested.unwrap_or(StreamEnd::Abandoned);
        match self.mode {
            StreamMode::Streaming if self.message_id.is_some() && !self.awaiting_id => self.end_open_stream(end, now),
            StreamMode::Updating if self.message_id.is_some() && !self.awaiting_id => self.end_open_placeholder(end, now),
            // Buffered, never started, or the start's id never came: nothing can close a bubble, so the
            // text goes out as plain messages.
            _ => self.end_with_messages(end, now),
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

fn plain(text: &str) -> Value {
    json!({"type": "message", "text": text})
}

fn message(text: &str) -> StreamSend {
    StreamSend { kind: StreamSendKind::Message, activity: plain(text), target: None }
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
        assert_eq!(StreamMode::for_activity(&testdata::activity(testdata::CHANNEL_MENTION)), StreamMode::Updating);
        assert_eq!(StreamMode::for_conversation_type(Some("groupChat")), StreamMode::Updating);
        assert_eq!(StreamMode::for_conversation_type(None), StreamMode::Updating);
        assert_eq!(
            [StreamMode::Streaming, StreamMode::Updating, StreamMode::Buffered].map(StreamMode::name),
            ["streaming", "updating", "buffered"]
        );
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
        assert_eq!(s.message_id(), Some("S1"));
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
                let start = matches!(send.kind, StreamSendKind::Start | StreamSendKind::Placeholder);
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
    fn a_stream_is_finalised_before_the_two_minute_limit_and_continues_in_place() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        let sent = drive(&mut s, t0, ms(1000), Duration::from_secs(200), |i| format!("{i} "));
        let full: String = (0..200).map(|i| format!("{i} ")).collect();
        assert_eq!(s.mode(), StreamMode::Updating);

        // One stream: a start, cumulative updates and its final within Teams' 2 minutes; then edits of the
        // same message (the stream id), the last one with the whole reply.
        let kinds: Vec<StreamSendKind> = sent.iter().map(|(_, x)| x.kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == StreamSendKind::Start).count(), 1, "{kinds:?}");
        assert!(!kinds.contains(&StreamSendKind::Placeholder) && !kinds.contains(&StreamSendKind::Message), "{kinds:?}");
        let final_at = sent.iter().position(|(_, x)| x.kind == StreamSendKind::Final).expect("the stream got its final");
        assert_eq!(kinds.iter().filter(|k| **k == StreamSendKind::Final).count(), 1);
        let (opened, _) = sent[0];
        assert!(sent[final_at].0 - opened < TEAMS_STREAM_LIMIT, "{:?}", sent[final_at].0 - opened);
        assert!(sent[..final_at].iter().all(|(_, x)| x.activity.to_string().contains("streaminfo")));
        let after = &sent[final_at + 1..];
        assert!(after.len() > 5, "the reply went on in place: {kinds:?}");
        let mut previous_at = sent[final_at].0;
        let mut previous = sent[final_at].1.activity["text"].as_str().unwrap().to_owned();
        for (at, send) in after {
            assert!(send.kind.is_edit(), "{:?}", send.kind);
            assert_eq!(send.target.as_deref(), Some("S1"), "edits go to the streamed message");
            assert_eq!(send.activity, json!({"type": "message", "text": send.activity["text"]}), "a plain message, no stream info");
            assert!(*at - previous_at >= ms(2000) || send.kind == StreamSendKind::EditFinal, "edits coalesced: {:?}", *at - previous_at);
            let text = send.activity["text"].as_str().unwrap();
            assert!(text.starts_with(&previous) && text.len() > previous.len(), "each edit shows more");
            (previous_at, previous) = (*at, text.to_owned());
        }
        assert_eq!(after.last().unwrap().1.kind, StreamSendKind::EditFinal);
        assert_eq!(previous, full, "the last edit is the whole reply: nothing lost or repeated");
    }

    #[test]
    fn a_stream_that_only_showed_status_lines_goes_on_in_place_showing_the_last_one() {
        let t0 = Instant::now();
        let config = StreamConfig { idle_timeout: Duration::from_secs(600), ..StreamConfig::default() };
        let mut s = Stream::new(StreamMode::Streaming, config, t0);
        one(s.informative("Searching", t0));
        s.started("S", t0);
        one(s.informative("Reading 3 files", t0 + ms(2000)));
        let f = one(s.poll(t0 + Duration::from_secs(110)));
        assert_eq!((info(&f), &f.activity["text"]), (("message", "final", Some("S"), 3), &json!("Reading 3 files")));
        assert_eq!(s.mode(), StreamMode::Updating);
        assert!(s.informative("Drafting", t0 + Duration::from_secs(111)).is_empty(), "an edit waits for its interval");
        let e = one(s.poll(t0 + Duration::from_secs(112)));
        assert_eq!((e.kind, e.target.as_deref(), &e.activity["text"]), (StreamSendKind::Edit, Some("S"), &json!("Drafting")));
        assert!(s.append("The answer", t0 + Duration::from_secs(113)).is_empty());
        let f = one(s.finish(t0 + Duration::from_secs(113)));
        assert_eq!((f.kind, &f.activity["text"]), (StreamSendKind::EditFinal, &json!("The answer")));
    }

    #[test]
    fn teams_refusing_an_update_for_age_makes_the_stream_go_on_in_place_with_all_its_text() {
        let t0 = Instant::now();
        // A clock that disagrees with Teams': our limit is later than Teams'.
        let config = StreamConfig { max_age: Duration::from_secs(115), ..StreamConfig::default() };
        let mut s = Stream::new(StreamMode::Streaming, config, t0);
        one(s.append("one ", t0));
        s.started("S", t0);
        s.append("two ", t0 + ms(100));
        let u = one(s.poll(t0 + ms(1500)));
        assert_eq!(u.activity["text"], "one two ");
        s.append("three ", t0 + ms(1600));
        // Teams refused that update (or the next one) for age: nothing is lost, the message is edited.
        one(s.poll(t0 + ms(3000)));
        assert!(s.expired(t0 + ms(3100)).is_empty(), "the first edit waits for the edit interval");
        assert_eq!(s.mode(), StreamMode::Updating);
        s.append("four", t0 + ms(3200));
        let e = one(s.poll(t0 + ms(5100)));
        assert_eq!((e.kind, e.target.as_deref(), &e.activity["text"]), (StreamSendKind::Edit, Some("S"), &json!("one two three four")));
        assert!(s.append(" five", t0 + ms(5200)).is_empty());
        let f = one(s.finish(t0 + ms(5300)));
        assert_eq!((f.kind, &f.activity["text"]), (StreamSendKind::EditFinal, &json!("one two three four five")));

        // Finished with nothing new since the last edit: the message already shows it all, nothing is sent.
        let mut s = Stream::new(StreamMode::Updating, StreamConfig::default(), t0);
        one(s.append("done", t0));
        assert!(s.started("P", t0).is_empty());
        assert!(s.finish(t0 + ms(10)).is_empty());
        assert_eq!(s.ended(), Some(StreamEnd::Finished));
    }

    #[test]
    fn a_final_refused_for_age_is_put_in_place_with_the_same_text() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.append("all of it", t0));
        s.started("S", t0);
        let f = one(s.finish(t0 + ms(10)));
        let edit = f.final_in_place().unwrap();
        assert_eq!(edit.kind, StreamSendKind::EditFinal);
        assert_eq!(edit.target.as_deref(), Some("S"));
        assert_eq!(edit.activity, json!({"type": "message", "text": "all of it"}));
        // Only a native final has one.
        assert!(edit.final_in_place().is_none());
    }

    fn updating(t0: Instant) -> Stream {
        Stream::new(StreamMode::Updating, StreamConfig::default(), t0)
    }

    #[test]
    fn in_place_a_placeholder_shows_status_lines_then_the_text_and_gets_the_whole_text_last() {
        let t0 = Instant::now();
        let mut s = updating(t0);
        assert!(s.poll(t0 + ms(500)).is_empty(), "nothing before the first input");
        let p = one(s.informative("Searching the docs…", t0 + ms(600)));
        assert_eq!((p.kind, p.target.as_deref()), (StreamSendKind::Placeholder, None));
        assert_eq!(p.activity, json!({"type": "message", "text": "Searching the docs…"}));
        assert!(s.informative("Reading 3 files…", t0 + ms(700)).is_empty(), "nothing while the id is unknown");
        assert!(s.started("1:7", t0 + ms(800)).is_empty(), "an edit waits 2 s after the placeholder");
        assert_eq!(s.next_deadline(), Some(t0 + ms(2600)));
        let e = one(s.poll(t0 + ms(2600)));
        assert_eq!((e.kind, e.target.as_deref(), &e.activity["text"]), (StreamSendKind::Edit, Some("1:7"), &json!("Reading 3 files…")));
        assert_eq!(e.activity, json!({"type": "message", "text": "Reading 3 files…"}), "no stream info on an edit");
        assert!(s.append("The answer", t0 + ms(2700)).is_empty());
        assert!(s.informative("ignored once text flows", t0 + ms(2800)).is_empty());
        assert!(s.append(" is", t0 + ms(3000)).is_empty());
        assert!(s.poll(t0 + ms(4599)).is_empty());
        let e = one(s.poll(t0 + ms(4600)));
        assert_eq!(e.activity["text"], "The answer is");
        assert!(s.poll(t0 + ms(7000)).is_empty(), "nothing new, nothing sent");
        assert_eq!(one(s.append(" 42.", t0 + ms(7100))).activity["text"], "The answer is 42.", "due: sent at once");
        assert!(s.append(" Done.", t0 + ms(7200)).is_empty(), "coalesced until the next interval");
        let f = one(s.finish(t0 + ms(7300)));
        assert_eq!(
            (f.kind, f.target.as_deref(), &f.activity["text"]),
            (StreamSendKind::EditFinal, Some("1:7"), &json!("The answer is 42. Done."))
        );
        assert_eq!(s.ended(), Some(StreamEnd::Finished));
        assert!(s.append("late", t0 + ms(9300)).is_empty() && s.next_deadline().is_none());

        // One that showed only status lines ends with the empty-reply text.
        let mut s = updating(t0);
        one(s.informative("Thinking", t0));
        s.started("1:9", t0);
        let f = one(s.finish(t0 + ms(10)));
        assert_eq!((f.kind, &f.activity["text"]), (StreamSendKind::EditFinal, &json!("(no reply)")));
    }

    #[test]
    fn a_throttled_edit_is_sent_again_after_retry_after_with_the_text_written_meanwhile() {
        let t0 = Instant::now();
        let mut s = updating(t0);
        one(s.append("one", t0));
        s.started("P", t0);
        s.append(" two", t0 + ms(100));
        let e = one(s.poll(t0 + ms(2000)));
        assert_eq!(e.activity["text"], "one two");
        // Refused with 429, Retry-After 5 s: nothing before it, then everything at once.
        assert!(s.throttled(t0 + ms(2100), Some(Duration::from_secs(5))).is_empty());
        s.append(" three", t0 + ms(3000));
        assert_eq!(s.next_deadline(), Some(t0 + ms(7100)));
        assert!(s.poll(t0 + ms(7000)).is_empty(), "not before Retry-After");
        let e = one(s.poll(t0 + ms(7100)));
        assert_eq!((e.kind, &e.activity["text"]), (StreamSendKind::Edit, &json!("one two three")));
        // Without Retry-After: the edit interval. And a throttled edit with nothing new is still re-sent
        // (it may not have landed).
        assert!(s.throttled(t0 + ms(7200), None).is_empty());
        let e = one(s.poll(t0 + ms(9200)));
        assert_eq!(e.activity["text"], "one two three");
        // The final is never skipped after a throttled edit.
        assert!(s.throttled(t0 + ms(9300), None).is_empty());
        let f = one(s.finish(t0 + ms(9400)));
        assert_eq!((f.kind, &f.activity["text"]), (StreamSendKind::EditFinal, &json!("one two three")));
    }

    #[test]
    fn in_place_text_over_the_size_limit_finishes_the_message_and_goes_on_in_a_new_one() {
        let t0 = Instant::now();
        let config = StreamConfig { max_text_utf16: 40, ..StreamConfig::default() };
        let mut s = Stream::new(StreamMode::Updating, config, t0);
        let sent = drive(&mut s, t0, ms(700), Duration::from_secs(20), |i| format!("word{i} "));
        let full: String = (0..29).map(|i| format!("word{i} ")).collect();
        // Each message's last edit (or its placeholder, when never edited) holds its part of the reply.
        let mut parts: Vec<(String, String)> = Vec::new();
        let mut ids = 0;
        for (_, send) in &sent {
            let text = send.activity["text"].as_str().unwrap();
            assert!(utf16_len(text) <= 40, "{text:?}");
            match send.kind {
                StreamSendKind::Placeholder => {
                    ids += 1;
                    parts.push((format!("S{ids}"), text.to_owned()));
                }
                StreamSendKind::Edit | StreamSendKind::EditFinal => {
                    let last = parts.last_mut().unwrap();
                    assert_eq!(send.target.as_deref(), Some(last.0.as_str()), "edits go to the newest message");
                    last.1 = text.to_owned();
                }
                StreamSendKind::Message => parts.push((String::new(), text.to_owned())),
                other => panic!("{other:?} in place"),
            }
        }
        assert!(parts.len() >= 4, "{parts:?}");
        assert_eq!(parts.iter().map(|p| p.1.as_str()).collect::<String>(), full);
    }

    /// Teams' limits as the strict fake Connector holds them, for edits of one message: at least 1 s
    /// between two (the machine keeps 2 s; the final edit goes at once, and the poster holds it to 1 s),
    /// and per conversation 7 per 1 s, 8 per 2 s, 60 per 30 s.
    fn within_edit_limits(times: &[Instant]) {
        let (last, progress) = times.split_last().unwrap();
        for pair in progress.windows(2) {
            assert!(pair[1] - pair[0] >= ms(2000), "{:?}", pair[1] - pair[0]);
        }
        assert!(*last >= *progress.last().unwrap());
        for (window, max) in [(ms(1000), 7), (ms(2000), 8), (Duration::from_secs(30), 60)] {
            for (i, t) in times.iter().enumerate() {
                let inside = times[i..].iter().take_while(|u| **u - *t < window).count();
                assert!(inside <= max, "{inside} in {window:?}");
            }
        }
    }

    #[test]
    fn a_three_minute_group_chat_answer_is_one_placeholder_edited_within_the_limits() {
        let t0 = Instant::now();
        let mut s = updating(t0);
        let mut sent = Vec::new();
        let handle = |s: &mut Stream, now: Instant, sends: Vec<StreamSend>, sent: &mut Vec<(Instant, StreamSend)>| {
            for send in sends {
                let placeholder = send.kind == StreamSendKind::Placeholder;
                sent.push((now, send));
                if placeholder {
                    for more in s.started("1:42", now) {
                        sent.push((now, more));
                    }
                }
            }
        };
        let sends = s.informative("Searching the docs…", t0);
        handle(&mut s, t0, sends, &mut sent);
        let mut full = String::new();
        // Status lines for the first 20 s, then a word every 300 ms up to three minutes, polling as a
        // driver does at the machine's deadlines (and after every input).
        let mut now = t0;
        let mut i = 0u64;
        while now - t0 < Duration::from_secs(180) {
            now += ms(300);
            i += 1;
            let sends = if now - t0 < Duration::from_secs(20) {
                if i.is_multiple_of(20) { s.informative(&format!("Step {}…", i / 20), now) } else { s.poll(now) }
            } else {
                let word = format!("w{i} ");
                full.push_str(&word);
                s.append(&word, now)
            };
            handle(&mut s, now, sends, &mut sent);
            let sends = s.poll(now);
            handle(&mut s, now, sends, &mut sent);
        }
        let sends = s.finish(now);
        handle(&mut s, now, sends, &mut sent);

        assert_eq!(sent.iter().filter(|(_, x)| x.kind == StreamSendKind::Placeholder).count(), 1);
        assert_eq!(sent[0].1.activity["text"], "Searching the docs…");
        let edits: Vec<&(Instant, StreamSend)> = sent[1..].iter().collect();
        assert!(edits.iter().all(|(_, x)| x.kind.is_edit() && x.target.as_deref() == Some("1:42")), "only edits of the placeholder");
        assert_eq!(edits.last().unwrap().1.kind, StreamSendKind::EditFinal);
        assert_eq!(edits.iter().filter(|(_, x)| x.kind == StreamSendKind::EditFinal).count(), 1, "one final");
        let texts: Vec<&str> = edits.iter().map(|(_, x)| x.activity["text"].as_str().unwrap()).collect();
        assert!(texts.iter().any(|t| t.starts_with("Step")), "status lines are shown: {texts:?}");
        assert_eq!(*texts.last().unwrap(), full, "the last edit is the whole answer");
        assert!(edits.len() >= 80, "progress all along: {} edits", edits.len());
        let times: Vec<Instant> = sent.iter().map(|(t, _)| *t).collect();
        within_edit_limits(&times);
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
        let mut s = Stream::new(StreamMode::Buffered, config, t0);
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
    fn a_failed_start_goes_on_in_place_and_a_failed_placeholder_falls_back_to_one_message() {
        let t0 = Instant::now();
        let mut s = streaming(t0);
        one(s.append("Hello", t0));
        assert!(s.failed(t0 + ms(100)).is_empty(), "the placeholder waits for the edit interval");
        assert_eq!(s.mode(), StreamMode::Updating);
        assert!(s.append(" there", t0 + ms(1000)).is_empty());
        let p = one(s.poll(t0 + ms(2000)));
        assert_eq!((p.kind, &p.activity), (StreamSendKind::Placeholder, &json!({"type": "message", "text": "Hello there"})));
        assert!(s.failed(t0 + ms(2100)).is_empty());
        assert_eq!(s.mode(), StreamMode::Buffered);
        let m = one(s.finish(t0 + ms(3000)));
        assert_eq!((m.kind, &m.activity["text"]), (StreamSendKind::Message, &json!("Hello there")));

        // So does a start answered without an id.
        let mut s = streaming(t0);
        one(s.append("Hi", t0));
        assert!(s.started("", t0).is_empty());
        assert_eq!(s.mode(), StreamMode::Updating);
        assert_eq!(one(s.finish(t0)).kind, StreamSendKind::Message, "finished before any placeholder: one message");
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
