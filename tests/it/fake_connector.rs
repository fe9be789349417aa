//! A strict fake of the Bot Framework Connector (served under `/_connector`, as the Agents Playground
//! serves it): it checks the bearer token, the exact percent-encoding of every path segment, the content
//! type and the body, records what landed, and can answer with scripted faults.
//!
//! As strict as Teams where the service must be:
//! * `from` matches the identity of the bearer token (a bot token: `28:<app id>`; an Agent User token:
//!   the agentic user, role `agenticUser`, its `agenticUserId`), when the token's identity is known
//!   ([`FakeConnector::accept_identities`]; the dev placeholder says nothing about who sends);
//! * a create is 1:1 only: `isGroup: false`, exactly one member, `bot` the token's bot;
//! * a reply's `replyToId` is the activity id in the path; the body's `conversation.id` is the path's
//!   (or, for an agentic sender, its agents-channel form: cut to 150 characters, `/ \ # ?` → `_`);
//! * no typing indicator in channels (`19:…@thread.tacv2` / `@thread.skype`);
//! * streaming: 1:1 chats only (`a:…`); the first request has no `streamId` and `streamSequence` 1 and is
//!   answered `201 {"id": <stream id>}`; later ones name a stream id from an earlier answer, grow the
//!   sequence by one, carry all the text so far (cumulative), come at least 1 s after the stream's
//!   previous request (else 429), within 2 minutes of its start (else 403 `ContentStreamNotAllowed`,
//!   "Content stream finished due to exceeded streaming time."; Stop: "Content stream was cancelled by
//!   user."), and are answered `202` with no body; the entity and `channelData` agree; nothing after the
//!   final;
//! * updates (`PUT …/activities/{id}`): of a message this fake created in that conversation (an answered
//!   send or reply, or a stream) and not deleted since (else 404); a plain activity without stream info,
//!   its `id`, if any, the one in the path; at most one per [`UPDATE_GAP`] per message and, per
//!   conversation, 7 per 1 s, 8 per 2 s, 60 per 30 s (else 429) — Teams documents no numbers for
//!   updates, so the fake holds them to its send limits and to the streaming pace;
//! * the limits tied to streams (the 1 s gap, the 2 minutes, the update gap) can run on a faster clock
//!   ([`FakeConnector::set_clock_scale`]), matching the gateway's `AGENTGATE_DEV_STREAM_CLOCK_SCALE`;
//! * AI marks ([`check_ai_marks`]): one root message entity, Teams' citation limits, one feedback flag;
//! * reactions: `PUT`/`DELETE …/activities/{id}/reactions/{type}` with no body, the type percent-encoded
//!   (recorded as a body `{"reaction": type}`);
//! * members: `GET …/members/{id}` by Teams id or AAD object id from the conversation's roster
//!   ([`FakeConnector::set_roster`]; a channel thread asks its channel), 404 for anyone else;
//! * targeted messages (teams-surface §3): a create is `POST …/activities?isTargetedActivity=true` in a
//!   group chat or channel (`19:…`, never `a:…`) whose body's `recipient` is `{"id": <a member of the
//!   roster>, "isTargeted": true}`; a body marked targeted without the query flag is refused, so is any
//!   other query; an update is `PUT …/activities/{id}?isTargetedActivity=true` **without** a recipient, of a
//!   targeted message this fake answered in that conversation (a plain `PUT` of a targeted message is
//!   answered 404 `ActivityNotFoundInConversation`, as the plain endpoint does not find private messages);
//!   [`FakeConnector::refuse_targeted`] answers every targeted create with a refusal;
//! * quoted replies (§4): every `<quoted messageId="X"/>` in the text has exactly one entity
//!   `{"type": "quotedReply", "quotedReply": {"messageId": "X"}}` and every such entity its placeholder
//!   (matched by id, not order), with no client-built snippet fields;
//! * channel threads (§4): a `;messageid=R` conversation names a numeric, non-zero root `R`.
//! * files (bots-filesv4): a file consent or file info card goes to 1:1 chats only (`a:…`), in the shape
//!   Teams reads (consent: `name`, `content.sizeInBytes`, `acceptContext`, `declineContext`; info:
//!   `contentUrl`, `name`, `content.uniqueId`, `content.fileType`); inline images are served at
//!   `GET /_connector/v3/attachments/{id}/views/original` to a token the fake accepts, nothing else
//!   ([`FakeConnector::add_attachment`], [`file_consent_invoke`]);
//! * team details (`TeamsInfo.getTeamDetails`): `GET /_connector/v3/teams/{id}`, the thread id
//!   percent-encoded, answers `{id, name, aadGroupId, …}` for a team the bot is in
//!   ([`FakeConnector::add_team`]), 404 otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request the fake accepted as landed.
#[derive(Debug, Clone)]
pub struct Landed {
    pub method: String,
    /// Decoded conversation id from the path (`None` for a create-conversation).
    pub conversation: Option<String>,
    /// Decoded activity id from the path, for replies, updates and deletes.
    pub activity: Option<String>,
    pub body: Value,
    /// The id the fake answered with (`1:N`), for sends and replies.
    pub answered: Option<String>,
    /// The request's query string (`isTargetedActivity=true`), if any.
    pub query: Option<String>,
    /// When the request arrived.
    pub at: Instant,
}

/// What the next request gets instead of success.
#[derive(Debug, Clone)]
pub enum Fault {
    /// A status with a body, nothing lands.
    Status(u16, Value),
    /// 429 with this `Retry-After` value, nothing lands.
    TooMany(String),
    /// The request lands, but the answer is this status (an ambiguous failure for the sender).
    LandThenFail(u16),
    /// Nothing lands; the answer comes after this long (longer than the client's timeout).
    Hang(Duration),
    /// No fault for this request (to aim a later fault at a later request).
    Pass,
}

/// Decides whether a bearer token is one the bot legitimately holds.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Who a bearer token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A bot token for this app id: `from` must be `28:<app id>`.
    Bot(String),
    /// An Agent User token (T3) for this object id: `from` must be that agentic user.
    AgentUser(String),
    /// Accepted, but says nothing about who sends (the dev placeholder).
    Unknown,
}

/// Maps a bearer token to the identity it was issued to (`None`: not a token this fake accepts).
pub type IdentityCheck = Arc<dyn Fn(&str) -> Option<Identity> + Send + Sync>;

/// One stream, as the fake tracks it.
#[derive(Debug, Clone)]
struct FakeStream {
    conversation: String,
    sequence: u64,
    text: String,
    started: Instant,
    last_request: Instant,
    finished: bool,
}

/// Teams' limits on a stream.
pub const STREAM_GAP: Duration = Duration::from_secs(1);
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(120);
/// The least time between two updates of one message.
pub const UPDATE_GAP: Duration = Duration::from_secs(1);
/// Per conversation, at most this many updates per window.
pub const UPDATE_WINDOWS: [(Duration, usize); 3] =
    [(Duration::from_secs(1), 7), (Duration::from_secs(2), 8), (Duration::from_secs(30), 60)];

/// A message this fake created (an answered send or reply, or a stream).
#[derive(Debug, Clone)]
struct FakeMessage {
    conversation: String,
    deleted: bool,
    last_update: Option<Instant>,
}

/// The stream limits in force (divided by the clock scale).
#[derive(Debug, Clone, Copy)]
struct Limits {
    stream_gap: Duration,
    stream_max_age: Duration,
    update_gap: Duration,
}

pub struct ConnectorState {
    tokens: Mutex<Vec<String>>,
    check: Mutex<Option<TokenCheck>>,
    faults: Mutex<VecDeque<Fault>>,
    pub landed: Mutex<Vec<Landed>>,
    pub requests: AtomicUsize,
    pub refused: Mutex<Vec<String>>,
    /// Every bearer token presented, accepted or not.
    pub seen_tokens: Mutex<Vec<String>>,
    next_id: AtomicUsize,
    identities: Mutex<Option<IdentityCheck>>,
    streams: Mutex<HashMap<String, FakeStream>>,
    /// The user pressed Stop: every later request to an open stream is refused as cancelled.
    stopped: std::sync::atomic::AtomicBool,
    /// Stream requests answered `ContentStreamNotAllowed`.
    pub cancelled: AtomicUsize,
    /// Members by conversation (a channel's thread asks the channel); a conversation without one has
    /// [`default_roster`].
    rosters: Mutex<HashMap<String, Vec<Value>>>,
    /// Targeted messages answered: id → (conversation, recipient).
    targeted: Mutex<HashMap<String, (String, String)>>,
    /// The answer to every targeted create (the service refusing it), if set.
    targeted_refusal: Mutex<Option<(u16, Value)>>,
    /// Messages by id.
    messages: Mutex<HashMap<String, FakeMessage>>,
    /// When each landed update arrived, by conversation.
    updates: Mutex<HashMap<String, Vec<Instant>>>,
    limits: Mutex<Limits>,
    /// Requests answered with an injected fault (nothing landed).
    pub faulted: Mutex<Vec<Landed>>,
    /// Inline images by attachment id: (bytes, content type).
    attachments: Mutex<HashMap<String, (Vec<u8>, String)>>,
    /// Attachment downloads served: the identity of the token each came with.
    pub attachment_reads: Mutex<Vec<Identity>>,
    /// Teams by thread id (`19:…`): their details (`TeamsInfo.getTeamDetails`).
    teams: Mutex<HashMap<String, Value>>,
    /// Team details served.
    pub team_reads: AtomicUsize,
}

/// The roster of a conversation nobody set one for: one user, whose AAD object id is the tests' Alex.
fn default_roster() -> Vec<Value> {
    vec![json!({"id": "29:user-1", "aadObjectId": "00000000-0000-0000-0000-0000000000aa"})]
}

/// The conversation id without its `;messageid=…` thread part.
fn channel_of(conversation: &str) -> &str {
    conversation.find(";messageid=").map_or(conversation, |i| &conversation[..i])
}

fn roster_of(s: &ConnectorState, conversation: &str) -> Vec<Value> {
    s.rosters.lock().unwrap().get(channel_of(conversation)).cloned().unwrap_or_else(default_roster)
}

/// A member of the roster by Teams id or AAD object id (any case).
fn find_member(roster: &[Value], id: &str) -> Option<Value> {
    roster.iter().find(|m| ["id", "aadObjectId"].iter().any(|k| m[*k].as_str().is_some_and(|v| v.eq_ignore_ascii_case(id)))).cloned()
}

/// Teams' quoted-reply shape: placeholders in the text and `quotedReply` entities, one for one, by id.
fn check_quotes(body: &Value) -> Result<(), String> {
    let text = body["text"].as_str().unwrap_or("");
    let mut placeholders = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("<quoted ") {
        let tail = &rest[i..];
        let end = tail.find("/>").ok_or("an unterminated <quoted …/> placeholder")?;
        let inner = &tail["<quoted ".len()..end];
        let id = inner
            .strip_prefix("messageId=\"")
            .and_then(|v| v.strip_suffix('"'))
            .filter(|id| !id.is_empty() && !id.contains(['"', '<', '>', ' ']))
            .ok_or_else(|| format!("a malformed quote placeholder: {}", &tail[..end + 2]))?;
        placeholders.push(id.to_owned());
        rest = &tail[end + 2..];
    }
    let mut quoted = Vec::new();
    for e in body["entities"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if e["type"] != "quotedReply" {
            continue;
        }
        let q = e["quotedReply"].as_object().ok_or("a quotedReply entity without quotedReply")?;
        let id = q.get("messageId").and_then(Value::as_str).filter(|id| !id.is_empty()).ok_or("a quotedReply without messageId")?;
        if q.len() != 1 || e.as_object().map(serde_json::Map::len) != Some(2) {
            return Err("a quotedReply entity names only the messageId (the service stamps the snippet)".into());
        }
        quoted.push(id.to_owned());
    }
    placeholders.sort();
    quoted.sort();
    if placeholders != quoted {
        return Err(format!("quote placeholders {placeholders:?} and quotedReply entities {quoted:?} do not match"));
    }
    Ok(())
}

pub struct FakeConnector {
    pub state: Arc<ConnectorState>,
    /// `http://127.0.0.1:PORT/_connector`
    pub service_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeConnector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A path segment as a Connector client must send it: reserved characters percent-encoded.
fn decode_segment(raw: &str) -> Option<String> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"%-._~".contains(&b)) {
        return None;
    }
    percent_encoding::percent_decode_str(raw).decode_utf8().ok().map(|s| s.into_owned())
}

fn refuse(s: &ConnectorState, status: StatusCode, why: &str) -> Response {
    s.refused.lock().unwrap().push(why.to_owned());
    if status == StatusCode::TOO_MANY_REQUESTS {
        return (status, [("retry-after", "1")], axum::Json(json!({"error": {"code": "Throttled", "message": why}}))).into_response();
    }
    (status, axum::Json(json!({"error": {"code": "BadArgument", "message": why}}))).into_response()
}

/// `403 ContentStreamNotAllowed`, with Teams' messages: the user pressed Stop, or the stream is too old.
fn cancelled(s: &ConnectorState, expired: bool) -> Response {
    s.cancelled.fetch_add(1, Ordering::SeqCst);
    let message = if expired { "Content stream finished due to exceeded streaming time." } else { "Content stream was cancelled by user." };
    let body = json!({"error": {"code": "ContentStreamNotAllowed", "message": message}});
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// The conversation id as an agentic sender's SDK puts it in the URL on the agents channel.
pub fn agents_path_id(id: &str) -> String {
    id.chars().take(150).map(|c| if matches!(c, '/' | '\\' | '#' | '?') { '_' } else { c }).collect()
}

fn is_agentic_role(from: &Value) -> bool {
    from["role"].as_str().is_some_and(|r| r.eq_ignore_ascii_case("agenticUser") || r.eq_ignore_ascii_case("agenticAppInstance"))
}

/// `from` against the token's identity.
fn check_from(identity: &Identity, from: &Value) -> Result<(), String> {
    let id = from["id"].as_str().unwrap_or("");
    match identity {
        Identity::Bot(app) if id.eq_ignore_ascii_case(&format!("28:{app}")) && !is_agentic_role(from) => Ok(()),
        Identity::Bot(app) => Err(format!("from {from} is not the bot token's identity 28:{app}")),
        Identity::AgentUser(oid)
            if from["role"] == "agenticUser" && from["agenticUserId"].as_str().is_some_and(|u| u.eq_ignore_ascii_case(oid)) =>
        {
            Ok(())
        }
        Identity::AgentUser(oid) => Err(format!("from {from} is not the Agent User token's identity {oid}")),
        Identity::Unknown if !id.is_empty() => Ok(()),
        Identity::Unknown => Err("activity has no from.id".into()),
    }
}

fn is_channel(conversation: &str) -> bool {
    conversation.starts_with("19:") && (conversation.contains("@thread.tacv2") || conversation.contains("@thread.skype"))
}

/// The stream info of an activity: entity and channel data must agree. `Ok(None)`: not a stream activity.
struct StreamInfo {
    id: Option<String>,
    kind: String,
    seq: Option<u64>,
}

fn stream_info(body: &Value) -> Result<Option<StreamInfo>, String> {
    let entity = body["entities"].as_array().and_then(|es| es.iter().find(|e| e["type"] == "streaminfo")).cloned();
    let cd = &body["channelData"];
    let cd_has = cd.get("streamType").is_some() || cd.get("streamId").is_some();
    let Some(e) = entity else {
        return if cd_has { Err("stream info in channelData only".into()) } else { Ok(None) };
    };
    for k in ["streamId", "streamType", "streamSequence"] {
        if e.get(k) != cd.get(k) {
            return Err(format!("streaminfo entity and channelData disagree on {k}"));
        }
    }
    let kind = e["streamType"].as_str().ok_or("streaminfo without streamType")?.to_owned();
    Ok(Some(StreamInfo { id: e["streamId"].as_str().map(str::to_owned), kind, seq: e["streamSequence"].as_u64() }))
}

/// Teams' streaming rules for one request. `Some((answer, landed))`: answer this (and whether the
/// request landed); `None`: not a stream activity.
fn check_stream(s: &ConnectorState, conversation: &str, body: &Value, n: usize) -> Option<(Response, bool)> {
    let refused = |status, why: &str| Some((refuse(s, status, why), false));
    let info = match stream_info(body) {
        Ok(i) => i?,
        Err(why) => return refused(StatusCode::BAD_REQUEST, &why),
    };
    let StreamInfo { id, kind, seq } = info;
    if !conversation.starts_with("a:") {
        return refused(StatusCode::FORBIDDEN, "streaming api is not enabled: streams are for 1:1 chats only");
    }
    let ty = body["type"].as_str().unwrap_or("");
    let text = body["text"].as_str().unwrap_or("").to_owned();
    let now = Instant::now();
    let limits = *s.limits.lock().unwrap();
    let mut streams = s.streams.lock().unwrap();
    let Some(sid) = id else {
        if ty != "typing" || !matches!(kind.as_str(), "informative" | "streaming") || seq != Some(1) {
            return refused(StatusCode::BAD_REQUEST, "a stream's first activity is a typing update with streamSequence 1");
        }
        let sid = format!("stream-{n}");
        let text = if kind == "streaming" { text } else { String::new() };
        let st = FakeStream { conversation: conversation.to_owned(), sequence: 1, text, started: now, last_request: now, finished: false };
        streams.insert(sid.clone(), st);
        let message = FakeMessage { conversation: conversation.to_owned(), deleted: false, last_update: None };
        s.messages.lock().unwrap().insert(sid.clone(), message);
        return Some(((StatusCode::CREATED, axum::Json(json!({"id": sid}))).into_response(), true));
    };
    let Some(st) = streams.get_mut(&sid) else {
        return refused(StatusCode::BAD_REQUEST, "streamId is not one this Connector answered");
    };
    if st.conversation != conversation || st.finished {
        return refused(StatusCode::BAD_REQUEST, "stream belongs to another conversation or has ended");
    }
    if s.stopped.load(Ordering::SeqCst) {
        st.finished = true;
        return Some((cancelled(s, false), false));
    }
    if now.duration_since(st.started) > limits.stream_max_age {
        st.finished = true;
        return Some((cancelled(s, true), false));
    }
    if now.duration_since(st.last_request) < limits.stream_gap {
        let gap = now.duration_since(st.last_request);
        return refused(StatusCode::TOO_MANY_REQUESTS, &format!("stream requests {gap:?} apart (at most 1 per second)"));
    }
    st.last_request = now;
    let final_ = kind == "final";
    let shape_ok = if final_ { ty == "message" } else { ty == "typing" && matches!(kind.as_str(), "informative" | "streaming") };
    if !shape_ok {
        return refused(StatusCode::BAD_REQUEST, &format!("a {kind} stream activity of type {ty}"));
    }
    match seq {
        Some(q) if q == st.sequence + 1 => st.sequence = q,
        None if final_ => {}
        other => {
            return refused(StatusCode::BAD_REQUEST, &format!("streamSequence {other:?} after {}", st.sequence));
        }
    }
    if (kind == "streaming" || final_) && !text.starts_with(&st.text) {
        return refused(StatusCode::BAD_REQUEST, "stream text is not cumulative (it drops text shown before)");
    }
    if kind == "streaming" {
        st.text = text;
    }
    if final_ {
        st.finished = true;
        return Some(((StatusCode::CREATED, axum::Json(json!({"id": sid}))).into_response(), true));
    }
    Some((StatusCode::ACCEPTED.into_response(), true))
}

/// Teams' rules for an update (`PUT …/activities/{id}`): the message exists here and was not deleted (else
/// 404), the body is a plain activity naming the same id, and the update rate holds (else 429).
fn check_update(s: &ConnectorState, conversation: &str, id: &str, body: &Value) -> Result<(), (StatusCode, String)> {
    let limits = *s.limits.lock().unwrap();
    let messages = s.messages.lock().unwrap();
    let Some(m) = messages.get(id).filter(|m| m.conversation == conversation && !m.deleted) else {
        return Err((StatusCode::NOT_FOUND, format!("update of {id}: no such message in this conversation (never sent, or deleted)")));
    };
    if matches!(stream_info(body), Ok(Some(_)) | Err(_)) {
        return Err((StatusCode::BAD_REQUEST, "an update is a plain activity, without stream info".into()));
    }
    if body.get("id").is_some_and(|i| i.as_str() != Some(id)) {
        return Err((StatusCode::BAD_REQUEST, "the activity's id is not the one in the path".into()));
    }
    let now = Instant::now();
    if let Some(last) = m.last_update
        && now.duration_since(last) < limits.update_gap
    {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!("updates of {id} {:?} apart (at most 1 per {:?})", now - last, limits.update_gap),
        ));
    }
    if let Some(times) = s.updates.lock().unwrap().get(conversation) {
        for (window, max) in UPDATE_WINDOWS {
            let inside = times.iter().filter(|t| now.duration_since(**t) < window).count();
            if inside >= max {
                return Err((StatusCode::TOO_MANY_REQUESTS, format!("more than {max} updates in {window:?} in {conversation}")));
            }
        }
    }
    Ok(())
}

/// Teams' rules for the AI label, citations and feedback buttons (learn.microsoft.com "Bot messages with
/// AI-generated content"; teams.py `_ensure_single_root_level_message_entity`): one root message entity,
/// at most 20 citations with unique positions, `name` 1–80 and `abstract` 1–160 characters, at most 3
/// keywords of at most 28, a non-empty `appearance`; `feedbackLoop` and `feedbackLoopEnabled` not both.
fn check_ai_marks(body: &Value) -> Result<(), String> {
    let roots: Vec<&Value> = body["entities"]
        .as_array()
        .map(|es| es.iter().filter(|e| e["type"] == "https://schema.org/Message" && e["@type"] == "Message").collect())
        .unwrap_or_default();
    if roots.len() > 1 {
        return Err("Multiple root message entities found".into());
    }
    if let Some(root) = roots.first() {
        let citations = root["citation"].as_array().map(Vec::as_slice).unwrap_or_default();
        if citations.len() > 20 {
            return Err("more than 20 citations".into());
        }
        let mut positions = std::collections::HashSet::new();
        for c in citations {
            let a = &c["appearance"];
            let chars = |v: &Value| v.as_str().map(|s| s.chars().count());
            if c["@type"] != "Claim" || !positions.insert(c["position"].as_u64().unwrap_or(0)) || a.as_object().is_none_or(|o| o.is_empty())
            {
                return Err("a citation needs a unique position and an appearance".into());
            }
            if !matches!(chars(&a["name"]), Some(1..=80)) || !matches!(chars(&a["abstract"]), Some(1..=160)) {
                return Err("citation name (1-80) or abstract (1-160) out of range".into());
            }
            let keywords = a["keywords"].as_array().map(Vec::as_slice).unwrap_or_default();
            if keywords.len() > 3 || keywords.iter().any(|k| !matches!(chars(k), Some(1..=28))) {
                return Err("citation keywords: at most 3 of at most 28 characters".into());
            }
        }
    }
    let cd = &body["channelData"];
    if !cd["feedbackLoop"].is_null() && !cd["feedbackLoopEnabled"].is_null() {
        return Err("feedbackLoop and feedbackLoopEnabled are exclusive".into());
    }
    Ok(())
}

/// Teams' rules for the file cards: 1:1 chats only, and the fields Teams reads.
fn check_file_cards(conversation: &str, body: &Value) -> Result<(), String> {
    let Some(list) = body["attachments"].as_array() else { return Ok(()) };
    for a in list {
        let ct = a["contentType"].as_str().unwrap_or("");
        let consent = ct == "application/vnd.microsoft.teams.card.file.consent";
        let info = ct == "application/vnd.microsoft.teams.card.file.info";
        if !(consent || info) {
            continue;
        }
        if !conversation.starts_with("a:") {
            return Err("file cards are supported in 1:1 chats only".into());
        }
        if a["name"].as_str().is_none_or(str::is_empty) {
            return Err("a file card needs a name".into());
        }
        let c = &a["content"];
        if consent && (c["sizeInBytes"].as_u64().is_none() || !c["acceptContext"].is_object() || !c["declineContext"].is_object()) {
            return Err("a file consent card needs content.sizeInBytes, acceptContext and declineContext".into());
        }
        if info
            && (a["contentUrl"].as_str().is_none_or(str::is_empty) || c["uniqueId"].as_str().is_none() || c["fileType"].as_str().is_none())
        {
            return Err("a file info card needs contentUrl, content.uniqueId and content.fileType".into());
        }
    }
    Ok(())
}

/// `GET /_connector/v3/attachments/{id}/views/original`: an inline image, to an accepted token only
/// (checked before this is reached).
fn attachment(s: &ConnectorState, method: &Method, rest: &str, identity: Identity) -> Response {
    if method != Method::GET {
        return refuse(s, StatusCode::METHOD_NOT_ALLOWED, "attachments are read with GET");
    }
    let Some((id, "views/original")) = rest.split_once('/') else {
        return refuse(s, StatusCode::NOT_FOUND, "unknown attachment view");
    };
    let Some((bytes, content_type)) = decode_segment(id).and_then(|id| s.attachments.lock().unwrap().get(&id).cloned()) else {
        return refuse(s, StatusCode::NOT_FOUND, "no such attachment");
    };
    s.attachment_reads.lock().unwrap().push(identity);
    ([("content-type", content_type)], bytes).into_response()
}

/// `GET v3/teams/{team id}`: the team's details (`id`, `name`, `aadGroupId`, …), the id percent-encoded;
/// 404 for a team the bot is not in.
fn team(s: &ConnectorState, method: &Method, rest: &str, query: Option<&str>) -> Response {
    if method != Method::GET || query.is_some() {
        return refuse(s, StatusCode::METHOD_NOT_ALLOWED, "team details are read with a plain GET");
    }
    let Some(id) = decode_segment(rest).filter(|id| !id.is_empty() && !id.contains('/')) else {
        return refuse(s, StatusCode::BAD_REQUEST, "team id missing or not percent-encoded");
    };
    let Some(details) = s.teams.lock().unwrap().get(&id).cloned() else {
        s.refused.lock().unwrap().push(format!("team {id}: not found"));
        let body = json!({"error": {"code": "NotFound", "message": "The team was not found or the bot is not in it"}});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    s.team_reads.fetch_add(1, Ordering::SeqCst);
    axum::Json(details).into_response()
}

/// The `fileConsent/invoke` Teams sends when the person answers a consent card: `accept` with where to
/// upload (`upload_url`), or `decline` (no `uploadInfo`); `context` is the card's accept/decline context.
pub fn file_consent_invoke(activity: &Value, accept: bool, context: &Value, name: &str, upload_url: &str) -> Value {
    let mut v = activity.clone();
    v["type"] = json!("invoke");
    v["name"] = json!("fileConsent/invoke");
    v.as_object_mut().unwrap().remove("text");
    v["value"] = if accept {
        json!({"type": "fileUpload", "action": "accept", "context": context, "uploadInfo": {
            "contentUrl": format!("https://contoso-my.sharepoint.com/personal/alex/Documents/Applications/{name}"),
            "name": name, "uploadUrl": upload_url, "uniqueId": "1150D938-8870-4044-9F2C-5BBDEBA70C9D",
            "fileType": name.rsplit('.').next().unwrap_or(""), "etag": "\"{1150D938-8870-4044-9F2C-5BBDEBA70C9D},1\""}})
    } else {
        json!({"type": "fileUpload", "action": "decline", "context": context})
    };
    v
}

async fn handle(State(s): State<Arc<ConnectorState>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    s.requests.fetch_add(1, Ordering::SeqCst);
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    s.seen_tokens.lock().unwrap().push(token.to_owned());
    let known = s.tokens.lock().unwrap().iter().any(|t| t == token);
    let checked = s.check.lock().unwrap().as_ref().is_some_and(|c| c(token));
    let identity = s.identities.lock().unwrap().as_ref().and_then(|c| c(token));
    if token.is_empty() || !(known || checked || identity.is_some()) {
        return refuse(&s, StatusCode::UNAUTHORIZED, "bearer token missing or not issued for the bot");
    }
    let identity = identity.unwrap_or(Identity::Unknown);
    if let Some(rest) = uri.path().strip_prefix("/_connector/v3/attachments/") {
        return attachment(&s, &method, rest, identity);
    }
    if let Some(rest) = uri.path().strip_prefix("/_connector/v3/teams/") {
        return team(&s, &method, rest, uri.query());
    }
    let Some(rest) = uri.path().strip_prefix("/_connector/v3/conversations") else {
        return refuse(&s, StatusCode::NOT_FOUND, "unknown path");
    };
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    // The bot's reactions (preview): `PUT`/`DELETE …/activities/{id}/reactions/{type}`, no body.
    let mut reaction = None;
    if let [_, "activities", _, "reactions", r] = parts.as_slice() {
        match decode_segment(r) {
            Some(r) if !r.is_empty() => reaction = Some(r),
            _ => return refuse(&s, StatusCode::BAD_REQUEST, "reaction type missing or not percent-encoded"),
        }
        if !body.is_empty() {
            return refuse(&s, StatusCode::BAD_REQUEST, "a reaction request has no body");
        }
    }
    let (conversation, activity, kind) = match (method.clone(), parts.as_slice()) {
        (Method::PUT, [c, "activities", a, "reactions", _]) => (Some(*c), Some(*a), "react"),
        (Method::DELETE, [c, "activities", a, "reactions", _]) => (Some(*c), Some(*a), "unreact"),
        (Method::POST, []) => (None, None, "create"),
        (Method::POST, [c, "activities"]) => (Some(*c), None, "send"),
        (Method::POST, [c, "activities", a]) => (Some(*c), Some(*a), "reply"),
        (Method::PUT, [c, "activities", a]) => (Some(*c), Some(*a), "update"),
        (Method::DELETE, [c, "activities", a]) => (Some(*c), Some(*a), "delete"),
        (Method::GET, [c, "pagedmembers"]) => (Some(*c), None, "members"),
        (Method::GET, [c, "members", m]) => (Some(*c), Some(*m), "member"),
        _ => return refuse(&s, StatusCode::NOT_FOUND, "unknown path or method"),
    };
    let conversation = match conversation.map(decode_segment) {
        Some(None) => return refuse(&s, StatusCode::BAD_REQUEST, "conversation id not percent-encoded"),
        other => other.flatten(),
    };
    let activity = match activity.map(decode_segment) {
        Some(None) => return refuse(&s, StatusCode::BAD_REQUEST, "activity id not percent-encoded"),
        other => other.flatten(),
    };
    let body: Value = if let Some(r) = &reaction {
        json!({"reaction": r})
    } else if matches!(kind, "delete" | "members" | "member") {
        Value::Null
    } else {
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/json") {
            return refuse(&s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "content type is not JSON");
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_object() => v,
            _ => return refuse(&s, StatusCode::BAD_REQUEST, "body is not a JSON object"),
        }
    };
    if matches!(kind, "send" | "reply" | "update") && body["type"].as_str().is_none() {
        return refuse(&s, StatusCode::BAD_REQUEST, "activity has no type");
    }
    // Targeted messages: the query flag and the body agree; only sends and updates take the flag.
    let query = uri.query().map(str::to_owned);
    let targeted = query.as_deref() == Some("isTargetedActivity=true");
    if matches!(kind, "send" | "reply" | "update") && query.is_some() && !(targeted && matches!(kind, "send" | "update")) {
        return refuse(&s, StatusCode::BAD_REQUEST, &format!("unexpected query {query:?}"));
    }
    if let Some(c) = conversation.as_deref()
        && let Some(i) = c.find(";messageid=")
    {
        let root = &c[i + ";messageid=".len()..];
        if root.is_empty() || !root.bytes().all(|b| b.is_ascii_digit()) || root.bytes().all(|b| b == b'0') {
            return refuse(&s, StatusCode::BAD_REQUEST, "a thread's root message id is numeric and not zero");
        }
    }
    if matches!(kind, "send" | "reply") && body["recipient"]["isTargeted"] == json!(true) && !targeted {
        return refuse(&s, StatusCode::BAD_REQUEST, "a targeted recipient without ?isTargetedActivity=true");
    }
    if kind == "send" && targeted {
        let path = conversation.as_deref().unwrap_or("");
        if !path.starts_with("19:") {
            return refuse(&s, StatusCode::BAD_REQUEST, "Bad argument: targeted messages are for group chats and channels, not 1:1 chats");
        }
        let recipient = body["recipient"]["id"].as_str().filter(|id| !id.is_empty());
        let Some(recipient) = recipient.filter(|_| body["recipient"]["isTargeted"] == json!(true)) else {
            return refuse(&s, StatusCode::BAD_REQUEST, "Bad argument: a targeted create needs recipient {id, isTargeted: true}");
        };
        if find_member(&roster_of(&s, path), recipient).is_none_or(|m| m["id"].as_str() != Some(recipient)) {
            return refuse(&s, StatusCode::BAD_REQUEST, "Bad argument: the targeted recipient is not a member (by Teams id)");
        }
        if let Some((status, answer)) = s.targeted_refusal.lock().unwrap().clone() {
            s.refused.lock().unwrap().push(format!("targeted refused: {answer}"));
            return (StatusCode::from_u16(status).unwrap(), axum::Json(answer)).into_response();
        }
    }
    if kind == "update" {
        let id = activity.as_deref().unwrap_or("");
        let known = s.targeted.lock().unwrap().get(id).cloned();
        match (targeted, known) {
            (true, _) if body.get("recipient").is_some() => {
                return refuse(&s, StatusCode::BAD_REQUEST, "Bad argument: a targeted update names no recipient");
            }
            (true, Some((c, _))) if Some(c.as_str()) == conversation.as_deref() => {}
            (false, None) => {}
            _ => {
                s.refused.lock().unwrap().push(format!("update of {id}: ActivityNotFoundInConversation (targeted: {targeted})"));
                let body = json!({"error": {"code": "ActivityNotFoundInConversation", "message": "activity not found"}});
                return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
            }
        }
    }
    if kind == "create"
        && (body["bot"]["id"].as_str().is_none()
            || body["members"].as_array().is_none_or(Vec::is_empty)
            || body["tenantId"].as_str().is_none())
    {
        return refuse(&s, StatusCode::BAD_REQUEST, "conversation parameters incomplete");
    }
    if kind == "create" {
        if body["isGroup"] != json!(false) || body["members"].as_array().map(Vec::len) != Some(1) {
            return refuse(&s, StatusCode::BAD_REQUEST, "a 1:1 create has isGroup false and exactly one member");
        }
        if let Err(why) = check_from(&identity, &body["bot"]) {
            return refuse(&s, StatusCode::FORBIDDEN, &format!("create: {why}"));
        }
    }
    if matches!(kind, "send" | "reply" | "update") {
        if let Err(why) = check_from(&identity, &body["from"]) {
            return refuse(&s, StatusCode::FORBIDDEN, &why);
        }
        let path = conversation.as_deref().unwrap_or("");
        if let Some(c) = body["conversation"]["id"].as_str()
            && c != path
            && !(is_agentic_role(&body["from"]) && agents_path_id(c) == path)
        {
            return refuse(&s, StatusCode::BAD_REQUEST, "conversation.id does not match the path");
        }
        if kind == "reply" && body["replyToId"].as_str() != activity.as_deref() {
            return refuse(&s, StatusCode::BAD_REQUEST, "replyToId does not match the activity id in the path");
        }
        if body["type"] == "typing" && is_channel(path) {
            return refuse(&s, StatusCode::BAD_REQUEST, "no typing indicator in channels");
        }
        if let Err(why) = check_ai_marks(&body) {
            return refuse(&s, StatusCode::BAD_REQUEST, &why);
        }
        if let Err(why) = check_quotes(&body) {
            return refuse(&s, StatusCode::BAD_REQUEST, &why);
        }
        if let Err(why) = check_file_cards(path, &body) {
            return refuse(&s, StatusCode::BAD_REQUEST, &why);
        }
    }
    if kind == "update"
        && let Err((status, why)) = check_update(&s, conversation.as_deref().unwrap_or(""), activity.as_deref().unwrap_or(""), &body)
    {
        if status == StatusCode::NOT_FOUND {
            s.refused.lock().unwrap().push(why.clone());
            return (status, axum::Json(json!({"error": {"code": "NotFound", "message": why}}))).into_response();
        }
        return refuse(&s, status, &why);
    }
    let fault = s.faults.lock().unwrap().pop_front();
    let mut landed = Landed { method: method.to_string(), conversation, activity, body, answered: None, query, at: arrived };
    match fault {
        Some(Fault::Status(code, b)) => {
            s.faulted.lock().unwrap().push(landed);
            return (StatusCode::from_u16(code).unwrap(), axum::Json(b)).into_response();
        }
        Some(Fault::TooMany(after)) => {
            s.faulted.lock().unwrap().push(landed);
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", after)], axum::Json(json!({"error": {"code": "Throttled"}})))
                .into_response();
        }
        Some(Fault::LandThenFail(code)) => {
            s.landed.lock().unwrap().push(landed);
            return StatusCode::from_u16(code).unwrap().into_response();
        }
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Some(Fault::Pass) | None => {}
    }
    let n = s.next_id.fetch_add(1, Ordering::SeqCst);
    if kind == "send"
        && let Some((answer, landed_too)) = check_stream(&s, landed.conversation.as_deref().unwrap_or(""), &landed.body, n)
    {
        if landed_too {
            s.landed.lock().unwrap().push(landed);
        }
        return answer;
    }
    let answer = match kind {
        "create" => json!({"id": format!("a:created-{n}")}),
        "members" => json!({"members": roster_of(&s, landed.conversation.as_deref().unwrap_or(""))}),
        "member" => {
            let roster = roster_of(&s, landed.conversation.as_deref().unwrap_or(""));
            let found = find_member(&roster, landed.activity.as_deref().unwrap_or(""));
            s.landed.lock().unwrap().push(landed);
            return match found {
                Some(m) => axum::Json(m).into_response(),
                None => (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"code": "NotFound", "message": "member not found"}})))
                    .into_response(),
            };
        }
        "delete" | "react" | "unreact" => {
            if kind == "delete"
                && let Some(m) = s.messages.lock().unwrap().get_mut(landed.activity.as_deref().unwrap_or(""))
            {
                m.deleted = true;
            }
            s.landed.lock().unwrap().push(landed);
            return StatusCode::OK.into_response();
        }
        "update" => {
            let now = Instant::now();
            let conversation = landed.conversation.clone().unwrap_or_default();
            s.updates.lock().unwrap().entry(conversation).or_default().push(now);
            if let Some(m) = s.messages.lock().unwrap().get_mut(landed.activity.as_deref().unwrap_or("")) {
                m.last_update = Some(now);
            }
            json!({"id": landed.activity.clone().unwrap_or_default()})
        }
        _ => {
            let id = format!("1:{n}");
            let message = FakeMessage { conversation: landed.conversation.clone().unwrap_or_default(), deleted: false, last_update: None };
            s.messages.lock().unwrap().insert(id.clone(), message);
            landed.answered = Some(id.clone());
            if kind == "send" && targeted {
                let recipient = landed.body["recipient"]["id"].as_str().unwrap_or("").to_owned();
                let conversation = landed.conversation.clone().unwrap_or_default();
                s.targeted.lock().unwrap().insert(id.clone(), (conversation, recipient));
            }
            json!({"id": id})
        }
    };
    s.landed.lock().unwrap().push(landed);
    axum::Json(answer).into_response()
}

impl FakeConnector {
    /// Accepts only the given bearer tokens.
    pub async fn start(tokens: Vec<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ConnectorState {
            tokens: Mutex::new(tokens),
            check: Mutex::new(None),
            faults: Mutex::new(VecDeque::new()),
            landed: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            refused: Mutex::new(Vec::new()),
            seen_tokens: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(1),
            identities: Mutex::new(None),
            streams: Mutex::new(HashMap::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            cancelled: AtomicUsize::new(0),
            rosters: Mutex::new(HashMap::new()),
            targeted: Mutex::new(HashMap::new()),
            targeted_refusal: Mutex::new(None),
            messages: Mutex::new(HashMap::new()),
            updates: Mutex::new(HashMap::new()),
            limits: Mutex::new(Limits { stream_gap: STREAM_GAP, stream_max_age: STREAM_MAX_AGE, update_gap: UPDATE_GAP }),
            faulted: Mutex::new(Vec::new()),
            attachments: Mutex::new(HashMap::new()),
            attachment_reads: Mutex::new(Vec::new()),
            teams: Mutex::new(HashMap::new()),
            team_reads: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, service_url: format!("http://127.0.0.1:{}/_connector", addr.port()), task }
    }

    /// Accept the tokens this check accepts (e.g. those a fake Entra issued for the bot).
    pub fn accept_tokens(&self, check: TokenCheck) {
        *self.state.check.lock().unwrap() = Some(check);
    }

    /// Accept the tokens this check maps to an identity, and hold `from` to it.
    pub fn accept_identities(&self, check: IdentityCheck) {
        *self.state.identities.lock().unwrap() = Some(check);
    }

    /// Serve an inline image (`image/*` attachment of a 1:1 message); its `contentUrl`.
    pub fn add_attachment(&self, id: &str, bytes: &[u8], content_type: &str) -> String {
        self.state.attachments.lock().unwrap().insert(id.to_owned(), (bytes.to_vec(), content_type.to_owned()));
        format!("{}/v3/attachments/{id}/views/original", self.service_url)
    }

    /// A team the bot is in: `GET v3/teams/{thread_id}` answers its details with `aad_group_id`.
    pub fn add_team(&self, thread_id: &str, name: &str, aad_group_id: &str) {
        let details =
            json!({"id": thread_id, "name": name, "aadGroupId": aad_group_id, "type": "standard", "channelCount": 1, "memberCount": 2});
        self.state.teams.lock().unwrap().insert(thread_id.to_owned(), details);
    }

    /// Team details served.
    pub fn team_reads(&self) -> usize {
        self.state.team_reads.load(Ordering::SeqCst)
    }

    /// Attachment downloads served, with the identity of each token.
    pub fn attachment_reads(&self) -> Vec<Identity> {
        self.state.attachment_reads.lock().unwrap().clone()
    }

    /// The user presses Stop: every later request to an open stream is answered 403 `ContentStreamNotAllowed`.
    pub fn stop_streams(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
    }

    /// Run the stream limits (the 1 s gap, the 2 minutes, the update gap) `scale` times faster, as the
    /// gateway does under `AGENTGATE_DEV_STREAM_CLOCK_SCALE`. The per-conversation windows stay Teams'.
    pub fn set_clock_scale(&self, scale: u32) {
        *self.state.limits.lock().unwrap() =
            Limits { stream_gap: STREAM_GAP / scale, stream_max_age: STREAM_MAX_AGE / scale, update_gap: UPDATE_GAP / scale };
    }

    /// Teams ends streams earlier than the gateway expects (real time; after any scale).
    pub fn set_stream_max_age(&self, age: Duration) {
        self.state.limits.lock().unwrap().stream_max_age = age;
    }

    /// The user deletes a message: later updates of it are answered 404.
    pub fn user_deletes(&self, id: &str) {
        if let Some(m) = self.state.messages.lock().unwrap().get_mut(id) {
            m.deleted = true;
        }
    }

    /// Requests answered with an injected fault (nothing landed), in order.
    pub fn faulted(&self) -> Vec<Landed> {
        self.state.faulted.lock().unwrap().clone()
    }

    /// Stream requests answered `ContentStreamNotAllowed`.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// The members of a conversation (its threads share it): accounts `{"id": "29:…", "aadObjectId": …}`.
    pub fn set_roster(&self, conversation: &str, members: Vec<Value>) {
        self.state.rosters.lock().unwrap().insert(channel_of(conversation).to_owned(), members);
    }

    /// Answer every targeted create with this refusal (`None`: accept them again).
    pub fn refuse_targeted(&self, refusal: Option<(u16, Value)>) {
        *self.state.targeted_refusal.lock().unwrap() = refusal;
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().unwrap().extend(faults);
    }

    pub fn landed(&self) -> Vec<Landed> {
        self.state.landed.lock().unwrap().clone()
    }

    pub fn seen_tokens(&self) -> Vec<String> {
        self.state.seen_tokens.lock().unwrap().clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.state.refused.lock().unwrap().clone()
    }

    /// Landed message texts, in order.
    pub fn texts(&self) -> Vec<String> {
        self.landed().iter().filter_map(|l| l.body["text"].as_str().map(str::to_owned)).collect()
    }
}
