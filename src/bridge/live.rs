//! A streamed reply written while the model writes it (`stream_start` / `stream_append` /
//! `stream_finish`): one task per stream drives the [`Stream`](crate::teams::Stream) state machine and
//! posts what it asks for, in order, through [`Outbound::post_live`] (one [`StreamLink`] per stream: a
//! second between requests, the final included; 429 retried; `ContentStreamNotAllowed` = cancelled).
//! It acts as whoever acts in the conversation (the Agent User in an agentic one, where the reply is
//! buffered into one message until streaming as the Agent User is proven).
//!
//! Live posts bypass the outbox (a stream cut by a restart is not resumed: its updates would be stale);
//! the start and the end are audited by the caller. A stream nobody finishes is finished with its text so
//! far after the state machine's idle timeout, or when the session ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::connector::outbox::Outbound;
use crate::connector::streaming::{Posted, StreamLink};
use crate::store::ConversationRef;
use crate::teams::{Stream, StreamConfig, StreamSend, StreamSendKind};

enum Command {
    Informative(String),
    Append(String),
    Finish(oneshot::Sender<Result<Finished, String>>),
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finished {
    /// The final message landed: its id.
    Delivered(String),
    /// Teams refused a post with `ContentStreamNotAllowed` (the user pressed Stop, or the stream passed
    /// 2 minutes): nothing more was posted, no final.
    Cancelled,
}

/// Whether a stream still takes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveStatus {
    Open,
    /// Cancelled by the user (or Teams' limit): later text is dropped.
    Cancelled,
}

/// The handle of a running stream. Dropping it finishes the stream with what it has.
#[derive(Debug)]
pub(crate) struct LiveStream {
    pub reference: ConversationRef,
    commands: mpsc::UnboundedSender<Command>,
    /// Set when the stream finished on its own (idle): later text would be lost, so it is refused.
    ended: Arc<AtomicBool>,
    /// Set when Teams cancelled the stream (Stop): later text is dropped, and said so.
    cancelled: Arc<AtomicBool>,
}

impl LiveStream {
    /// Start a stream in the conversation; nothing is posted before the first text or informative line.
    pub(crate) fn start(outbound: Arc<Outbound>, reference: ConversationRef, config: StreamConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mode = outbound.stream_mode(&reference);
        let stream = Stream::new(mode, config, Instant::now());
        let ended = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(outbound, reference.clone(), stream, rx, Arc::clone(&ended), Arc::clone(&cancelled)));
        Self { reference, commands: tx, ended, cancelled }
    }

    /// Whether the stream takes text (cancelled by the user: not, and that is no error).
    pub(crate) fn status(&self) -> LiveStatus {
        if self.cancelled.load(Ordering::Acquire) { LiveStatus::Cancelled } else { LiveStatus::Open }
    }

    fn send(&self, c: Command) -> Result<LiveStatus, String> {
        if self.status() == LiveStatus::Cancelled {
            return Ok(LiveStatus::Cancelled);
        }
        if self.ended.load(Ordering::Acquire) {
            return Err("the stream was finished after a minute without text; start a new one".to_owned());
        }
        self.commands.send(c).map_err(|_| "the stream has ended".to_owned())?;
        Ok(LiveStatus::Open)
    }

    /// A status line ("Searching…"), shown only where Teams streams (1:1 chats).
    pub(crate) fn informative(&self, line: &str) -> Result<LiveStatus, String> {
        self.send(Command::Informative(line.to_owned()))
    }

    pub(crate) fn append(&self, text: &str) -> Result<LiveStatus, String> {
        self.send(Command::Append(text.to_owned()))
    }

    /// Finish and wait for the final message (its id), or learn that the stream was cancelled.
    pub(crate) async fn finish(self) -> Result<Finished, String> {
        if self.status() == LiveStatus::Cancelled {
            return Ok(Finished::Cancelled);
        }
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Finish(tx)).map_err(|_| "the stream has ended".to_owned())?;
        rx.await.map_err(|_| "the stream ended without a final message".to_owned())?
    }
}

async fn drive(
    outbound: Arc<Outbound>,
    reference: ConversationRef,
    mut stream: Stream,
    mut rx: mpsc::UnboundedReceiver<Command>,
    ended: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
) {
    let mut poster = Poster { outbound, reference, link: StreamLink::new(), final_id: String::new(), error: None, cancelled };
    loop {
        let deadline = stream.next_deadline();
        let command = tokio::select! {
            c = rx.recv() => c,
            () = sleep_until(deadline) => {
                let sends = stream.poll(Instant::now());
                poster.post_all(&mut stream, sends).await;
                if stream.ended().is_some() {
                    // Abandoned (idle): refuse more text; a finish gets the outcome.
                    ended.store(true, Ordering::Release);
                    while let Some(c) = rx.recv().await {
                        if let Command::Finish(reply) = c {
                            let _ = reply.send(poster.result());
                            return;
                        }
                    }
                    return;
                }
                continue;
            }
        };
        match command {
            Some(Command::Informative(line)) => {
                let sends = stream.informative(&line, Instant::now());
                poster.post_all(&mut stream, sends).await;
            }
            Some(Command::Append(text)) => {
                let mut sends = stream.append(&text, Instant::now());
                sends.extend(stream.poll(Instant::now()));
                poster.post_all(&mut stream, sends).await;
            }
            Some(Command::Finish(reply)) => {
                let sends = stream.finish(Instant::now());
                poster.post_all(&mut stream, sends).await;
                let _ = reply.send(poster.result());
                return;
            }
            None => {
                // The handle was dropped (the session ended): finish with what there is.
                let sends = stream.finish(Instant::now());
                poster.post_all(&mut stream, sends).await;
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

struct Poster {
    outbound: Arc<Outbound>,
    reference: ConversationRef,
    link: StreamLink,
    final_id: String,
    error: Option<String>,
    cancelled: Arc<AtomicBool>,
}

impl Poster {
    async fn post_all(&mut self, stream: &mut Stream, sends: Vec<StreamSend>) {
        let mut queue: std::collections::VecDeque<StreamSend> = sends.into();
        while let Some(send) = queue.pop_front() {
            match self.outbound.post_live(&self.reference, &mut self.link, send.kind, &send.activity).await {
                Posted::Cancelled => {
                    tracing::info!("the stream was cancelled (ContentStreamNotAllowed); nothing more is posted");
                    stream.cancelled();
                    self.cancelled.store(true, Ordering::Release);
                    return;
                }
                Posted::Id(id) => match send.kind {
                    StreamSendKind::Start if !id.is_empty() => queue.extend(stream.started(&id, Instant::now())),
                    StreamSendKind::Start => queue.extend(stream.failed(Instant::now())),
                    // Teams may answer the final without a body: the message keeps the stream's id.
                    StreamSendKind::Final if id.is_empty() => self.final_id = stream.stream_id().unwrap_or_default().to_owned(),
                    StreamSendKind::Final | StreamSendKind::Message => self.final_id = id,
                    StreamSendKind::Update => {}
                },
                Posted::Failed(e) if matches!(send.kind, StreamSendKind::Start | StreamSendKind::Update) => {
                    tracing::warn!(error = %e, "a stream update failed; the reply continues without updates");
                    queue.extend(stream.failed(Instant::now()));
                }
                Posted::Failed(e) => {
                    tracing::warn!(error = %e, "a streamed reply's message failed");
                    self.error = Some(e.to_string());
                }
            }
        }
    }

    fn result(&self) -> Result<Finished, String> {
        if self.cancelled.load(Ordering::Acquire) {
            return Ok(Finished::Cancelled);
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(Finished::Delivered(self.final_id.clone())),
        }
    }
}
