//! A strict fake of Microsoft Graph v1.0 (the chat, message, member and user endpoints agentgate uses),
//! on 127.0.0.1.
//!
//! Every request needs `Authorization: Bearer <token>` that the supplied checker accepts (a live Graph
//! T3 from the fake Entra); paths are percent-decoded per segment. Bodies are checked strictly: member
//! objects (`@odata.type`, `roles: ["owner"]`, a `user@odata.bind` of the form
//! `https://graph.microsoft.com/v1.0/users('…')` with OData quotes doubled, `tenantId` for members outside
//! the home domain), chat types and member counts, message bodies (`contentType: html`, every mention's
//! `<at id="N">escaped text</at>` present and every `<at>` backed by a mention, every card attachment
//! referenced by `<attachment id>`, at most 28,000 characters). Injected responses (429 with
//! `Retry-After`, 401, any status) are served first; listings page with `@odata.nextLink`, which a test
//! can point elsewhere.
//!
//! Calendar endpoints: [`crate::fake_calendar`].
//!
//! Change notifications: `POST /subscriptions` (only with a valid Agent User token; `https` URLs; a
//! `lifecycleNotificationUrl` whenever the expiry is over an hour away; a `clientState` of at most 128
//! characters; the Agent User's own `getAllMessages` resource) first POSTs `?validationToken=` to both URLs
//! and demands the plain-text echo within 10 s, as Graph does. A test then makes people write
//! ([`FakeGraph::say`], with or without the notification Graph would send), sends lifecycle events, expires
//! subscriptions, and counts the chat-message reads. Catch-up reads take only
//! `$orderby=lastModifiedDateTime desc` with `$filter=lastModifiedDateTime gt …` (or none).
//!
//! Files (`driveItem`), the Agent User's OneDrive (`/me/drive`) and sites' libraries (`/sites/{id}/drive`):
//! items by id or by `root:/path:`, children, `search(q='…')` (OData quotes doubled), `/sites?search=`,
//! `…/content` answered with a 302 to a pre-authenticated download, a small `PUT …:/content` (raw bytes,
//! a conflict behaviour), `createUploadSession`, `createLink` (type view/edit/embed, scope
//! anonymous/organization/users, recipients exactly for users, each with one of email/objectId/alias) and
//! `/shares/u!{base64url}/driveItem`. A SharePoint-like file host under `/sp/` serves the downloads and
//! the upload sessions as the real ones behave: no `Authorization` header accepted (the URLs are
//! pre-authenticated); a fragment needs `Content-Range: bytes a-b/total` that agrees with its
//! `Content-Length` and body, starts exactly where the session expects (a gap or an overlap is 416), keeps
//! the total, stays under 60 MiB and, unless it is the last, is a multiple of 320 KiB; `GET` on a session
//! says `nextExpectedRanges`. Faults for the file host ([`FileFault`]): 429 with `Retry-After`, a status,
//! or a fragment that lands and is then answered with an error (a lost answer).
//!
//! Mail (the Agent User's mailbox): [`FakeGraph::mail`] delivers a message to the Inbox (with its attachments,
//! optionally notifying the mail subscriptions with `Users/{id}/Messages/{id}`). The Inbox delta query
//! (`users/{id}/mailFolders/inbox/messages/delta`) takes on its first request only `$select`, `$filter`
//! (`receivedDateTime ge|gt …`), `changeType` and `$top`, and on later ones only the `$skiptoken` /
//! `$deltatoken` of the links it returned (opaque, unknown or expired ones answer 410 `SyncStateNotFound`);
//! it pages with `@odata.nextLink` and ends a round with `@odata.deltaLink`, returning only the selected
//! fields. Attachments are listed with `contentBytes` unless `$select` leaves them out. Sending checks the
//! bodies as Graph does: `reply` / `replyAll` / `createReply` / `createReplyAll` take a `comment` or a
//! `message` (not both with a body), `forward` its recipients once (`toRecipients` or `message.toRecipients`),
//! `sendMail` a `message` with a subject, a body and a recipient; every address must be a plain address.
//! Mail subscriptions are `/users/{id}/mailFolders('Inbox')/messages` (`created`), at most 7 days.
//! [`FakeGraph::invite`] delivers a meeting request (`#microsoft.graph.eventMessageRequest`) for an event of the
//! calendar; a message read with `$expand=microsoft.graph.eventMessage/event` (the only `$expand` served) carries
//! that event, its times in Pacific Standard Time unless the request sends `Prefer: outlook.timezone="UTC"`.
//! [`FakeGraph::inject_for`] serves a canned answer to the next request whose path contains a needle.
//!
//! Channel and group chat messages with files and inline images (read as the Agent User): teams by group id
//! ([`FakeGraph::add_team`]; a thread id `19:…@thread.tacv2` as the team id answers 400, a team without the
//! Agent User 403), root posts at `teams/{g}/channels/{c}/messages/{id}`, replies at
//! `…/messages/{root}/replies/{id}` ([`FakeGraph::put_channel_message`]), chat messages with attachments
//! ([`FakeGraph::put_chat_message`]; [`FakeGraph::deny_chat`] makes a chat's messages 403), and inline images
//! at `…/hostedContents/{id}/$value` under any of them ([`FakeGraph::add_hosted_content`]).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The home domain: members under it are in-tenant, others need `tenantId`.
pub const HOME_DOMAIN: &str = "contoso.onmicrosoft.test";

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Decoded segments after `/v1.0/`, joined with `/`.
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Option<Value>,
    pub bearer: String,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// A response to serve instead of processing a request.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Canned {
    pub fn status(status: u16, code: &str) -> Self {
        Self { status, retry_after: None, body: json!({"error": {"code": code, "message": format!("injected {status}")}}) }
    }
    pub fn throttled(retry_after: Option<&str>) -> Self {
        Self {
            status: 429,
            retry_after: retry_after.map(str::to_owned),
            body: json!({"error": {"code": "TooManyRequests", "message": "Too many requests"}}),
        }
    }
}

struct Chat {
    id: String,
    chat_type: String,
    topic: Option<String>,
    members: Vec<Value>,
    messages: Vec<Value>,
    /// The Agent User is not a member ([`FakeGraph::deny_chat`]): its messages answer 403.
    denied: bool,
}

/// A team (by its Microsoft 365 group id, lowercase), its members' object ids, its channels and their messages.
struct Team {
    id: String,
    members: Vec<String>,
    channels: Vec<String>,
    messages: Vec<ChannelMessage>,
}

/// A channel message: a root post (`root` None) or a reply to `root`.
struct ChannelMessage {
    channel: String,
    root: Option<String>,
    json: Value,
}

/// An inline image of a message (`…/hostedContents/{id}/$value`).
struct HostedContent {
    /// The owning message's canonical path after `/v1.0/` (decoded; the team id lowercase).
    message_path: String,
    id: String,
    bytes: Vec<u8>,
    content_type: String,
}

struct GraphState {
    base: String,
    checker: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    agent_oid: String,
    agent_upn: String,
    users: Mutex<Vec<Value>>,
    chats: Mutex<Vec<Chat>>,
    teams: Mutex<Vec<Team>>,
    hosted_contents: Mutex<Vec<HostedContent>>,
    seen: Mutex<Vec<Seen>>,
    injected: Mutex<VecDeque<Canned>>,
    next_link: Mutex<Option<String>>,
    page_size: Mutex<usize>,
    seq: AtomicUsize,
    subs: Mutex<Vec<Sub>>,
    /// The gateway's certificate (PEM) the fake trusts when it calls the notification URLs.
    trust: Mutex<Option<String>>,
    /// While set, reading one message waits (a gateway can be killed in the middle).
    hold_reads: std::sync::atomic::AtomicBool,
    list_reads: AtomicUsize,
    message_gets: AtomicUsize,
    validations: AtomicUsize,
    /// Gateways (origins) a load balancer in front of them spreads change notifications over, in turn; empty:
    /// each goes to its subscription's URL as it is.
    spread: Mutex<Vec<String>>,
    spread_next: AtomicUsize,
    /// The Agent Identity (object id) whose sponsors are served, its sponsors (user object ids), and the
    /// checker of its app-only token; `None`: the sponsors endpoint answers 404.
    sponsors: Mutex<Option<Sponsors>>,
    sponsor_reads: AtomicUsize,
    drive: Mutex<DriveState>,
    /// The Agent User's calendar ([`crate::fake_calendar`]).
    calendar: crate::fake_calendar::Calendar,
    /// Answers served to the next request whose path contains the needle (before `injected`).
    injected_for: Mutex<Vec<(String, Canned)>>,
    /// The Agent User's Inbox, oldest first.
    mailbox: Mutex<Vec<Mail>>,
    /// Delta state tokens Graph handed out.
    delta_tokens: Mutex<HashMap<String, DeltaState>>,
    /// Mail the Agent User wrote (replies, forwards, sends, drafts).
    outbox: Mutex<Vec<SentMail>>,
    /// Requests for an attachment's bytes (`…/attachments/{id}` or `$value`).
    attachment_opens: AtomicUsize,
}

/// A file in a fake drive.
#[derive(Clone, Debug)]
pub struct DriveFile {
    pub id: String,
    /// `me`, or a site id.
    pub drive: String,
    /// From the drive's root: `Reports/q3.txt`.
    pub path: String,
    pub bytes: Vec<u8>,
    pub mime: String,
    pub web_url: String,
}

/// An upload session of the fake file host.
#[derive(Clone, Debug, Default)]
pub struct UploadSession {
    /// For a Graph session: the drive, path and conflict behaviour of the file it creates.
    target: Option<(String, String, String)>,
    total: Option<u64>,
    next: u64,
    pub data: Vec<u8>,
    /// Accepted fragments: (first, last, total).
    pub fragments: Vec<(u64, u64, u64)>,
    pub done: bool,
}

/// A request to the file host.
#[derive(Clone, Debug)]
pub struct FileSeen {
    pub method: String,
    pub path: String,
    pub content_range: Option<String>,
    /// Whether an `Authorization` header came along (never acceptable there).
    pub authorization: bool,
}

/// A fault of the file host, for its next request.
#[derive(Clone, Debug)]
pub enum FileFault {
    /// 429 with this `Retry-After`; nothing lands.
    Throttle(String),
    /// This status; nothing lands.
    Status(u16),
    /// An upload fragment lands, then the answer is this status (the client lost it).
    LandThen(u16),
    /// No fault for this request (to aim a later fault at a later request).
    Pass,
    /// Nothing lands; the answer comes after this long (a gateway can be killed meanwhile).
    Hang(std::time::Duration),
}

#[derive(Default)]
struct DriveState {
    files: Vec<DriveFile>,
    sessions: HashMap<String, UploadSession>,
    /// Pre-authenticated downloads: token → (bytes, content type).
    hosted: HashMap<String, (Vec<u8>, String)>,
    links: Vec<Value>,
    sites: Vec<Value>,
    faults: VecDeque<FileFault>,
    seen: Vec<FileSeen>,
    seq: usize,
}

/// A mail in the fake Inbox.
#[derive(Clone, Debug)]
struct Mail {
    seq: usize,
    message: Value,
    attachments: Vec<Value>,
    /// For a meeting request: the event it put in the Agent User's calendar.
    event: Option<String>,
}

/// What a delta token stands for: the options of the round's first request, the messages of the round
/// (their sequence numbers, fixed when it started), how far the pages got, and the newest message seen.
#[derive(Clone, Debug)]
struct DeltaState {
    filter: Option<(String, String)>,
    select: Option<Vec<String>>,
    round: Vec<usize>,
    offset: usize,
    /// The newest message in the Inbox when the round started (`-1`: none): the next round lists what came after.
    watermark: i64,
    page: usize,
}

/// Mail the Agent User wrote, as the fake received it.
#[derive(Clone, Debug)]
pub struct SentMail {
    /// `reply`, `replyAll`, `forward`, `createReply`, `createReplyAll`, `draft` or `sendMail`.
    pub kind: String,
    /// The message answered or forwarded (none for `sendMail` and new drafts).
    pub message_id: Option<String>,
    pub body: Value,
}

/// A mail to deliver to the fake Inbox ([`FakeGraph::mail`]).
#[derive(Clone, Debug, Default)]
pub struct NewMail {
    pub from: (String, String),
    pub to: Vec<(String, String)>,
    pub cc: Vec<(String, String)>,
    pub subject: String,
    pub html: String,
    /// (name, content type, bytes).
    pub attachments: Vec<(String, String, Vec<u8>)>,
    pub internet_message_id: Option<String>,
    pub reply_to: Vec<(String, String)>,
}

impl NewMail {
    /// A mail from `(name, address)` to the Agent User.
    pub fn from(name: &str, address: &str, subject: &str, html: &str) -> Self {
        Self {
            from: (name.to_owned(), address.to_owned()),
            to: vec![("Agent User".to_owned(), "agent@contoso.onmicrosoft.test".to_owned())],
            subject: subject.to_owned(),
            html: html.to_owned(),
            ..Self::default()
        }
    }
}

/// An Agent Identity (object id), its sponsors (user object ids), and the checker of its app-only token.
type Sponsors = (String, Vec<String>, Arc<dyn Fn(&str) -> bool + Send + Sync>);

/// A subscription as the fake keeps it.
#[derive(Clone, Debug)]
pub struct Sub {
    pub id: String,
    pub resource: String,
    pub notification_url: String,
    pub lifecycle_url: String,
    pub client_state: String,
    pub expires: String,
    pub expired: bool,
}

/// The fake; stops when dropped.
pub struct FakeGraph {
    state: Arc<GraphState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGraph {
    /// Start; `checker` says which bearer tokens are valid; the agent user is `agent_oid` / `agent_upn`.
    pub async fn start(checker: Arc<dyn Fn(&str) -> bool + Send + Sync>, agent_oid: &str, agent_upn: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let me =
            json!({"id": agent_oid, "displayName": "Agent User", "userPrincipalName": agent_upn, "mail": agent_upn, "userType": "Member"});
        let state = Arc::new(GraphState {
            base,
            checker,
            agent_oid: agent_oid.to_owned(),
            agent_upn: agent_upn.to_owned(),
            users: Mutex::new(vec![me]),
            chats: Mutex::new(Vec::new()),
            teams: Mutex::new(Vec::new()),
            hosted_contents: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            injected: Mutex::new(VecDeque::new()),
            next_link: Mutex::new(None),
            page_size: Mutex::new(50),
            seq: AtomicUsize::new(0),
            subs: Mutex::new(Vec::new()),
            trust: Mutex::new(None),
            hold_reads: std::sync::atomic::AtomicBool::new(false),
            spread: Mutex::new(Vec::new()),
            sponsors: Mutex::new(None),
            sponsor_reads: AtomicUsize::new(0),
            drive: Mutex::new(DriveState::default()),
            spread_next: AtomicUsize::new(0),
            injected_for: Mutex::new(Vec::new()),
            mailbox: Mutex::new(Vec::new()),
            delta_tokens: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            attachment_opens: AtomicUsize::new(0),
            list_reads: AtomicUsize::new(0),
            message_gets: AtomicUsize::new(0),
            validations: AtomicUsize::new(0),
            calendar: crate::fake_calendar::Calendar::default(),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, task }
    }

    /// The `graph_base_url` to configure.
    pub fn base_url(&self) -> String {
        format!("{}/v1.0", self.state.base)
    }

    /// Add a user (`id`, `userPrincipalName`, …) for `GET /users/{id | upn}`.
    pub fn add_user(&self, user: Value) {
        self.state.users.lock().unwrap().push(user);
    }

    /// A chat with `n` messages already in it; returns its id.
    pub fn seed_chat(&self, n: usize) -> String {
        let id = format!("19:seed{}@thread.v2", self.state.seq.fetch_add(1, Ordering::SeqCst));
        let messages = (0..n)
            .map(|i| json!({"id": format!("{}", 1_700_000_000_000u64 + i as u64), "messageType": "message", "createdDateTime": format!("2026-11-22T08:{:02}:00Z", i % 60), "body": {"contentType": "html", "content": format!("m{i}")}}))
            .collect();
        self.state.chats.lock().unwrap().push(Chat {
            id: id.clone(),
            chat_type: "group".into(),
            topic: None,
            members: vec![],
            messages,
            denied: false,
        });
        id
    }

    /// The Agent User's calendar: events, other people's busy blocks, answers ([`crate::fake_calendar`]).
    pub fn calendar(&self) -> &crate::fake_calendar::Calendar {
        &self.state.calendar
    }

    /// Serve these responses to the next requests, in order.
    pub fn inject(&self, canned: impl IntoIterator<Item = Canned>) {
        self.state.injected.lock().unwrap().extend(canned);
    }

    /// Give every listing page this `@odata.nextLink` instead of the real one.
    pub fn set_next_link(&self, link: &str) {
        *self.state.next_link.lock().unwrap() = Some(link.to_owned());
    }

    /// Items per listing page (before `$top`).
    pub fn set_page_size(&self, n: usize) {
        *self.state.page_size.lock().unwrap() = n;
    }

    /// Requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The stored messages of a chat.
    pub fn messages(&self, chat_id: &str) -> Vec<Value> {
        self.state.chats.lock().unwrap().iter().find(|c| c.id == chat_id).map(|c| c.messages.clone()).unwrap_or_default()
    }

    /// Trust this certificate (PEM) when calling the gateway's notification URLs.
    pub fn trust(&self, cert_pem: &str) {
        *self.state.trust.lock().unwrap() = Some(cert_pem.to_owned());
    }

    /// A chat of the Agent User's (`oneOnOne`, `group` or `meeting`) with the given id.
    pub fn add_chat(&self, id: &str, chat_type: &str) {
        self.state.chats.lock().unwrap().push(Chat {
            id: id.to_owned(),
            chat_type: chat_type.to_owned(),
            topic: None,
            members: vec![],
            messages: vec![],
            denied: false,
        });
    }

    /// Someone writes in a chat (`from`: Graph's `from`, e.g. [`person`]); with `notify`, Graph tells every
    /// live subscription (as a basic notification: the gateway fetches the message). The message id.
    pub async fn say(&self, chat_id: &str, from: Value, html: &str, mentions: Value, notify: bool) -> String {
        let id = format!("{}", 1_750_000_000_000u64 + self.state.seq.fetch_add(1, Ordering::SeqCst) as u64);
        let now = now_rfc3339();
        let msg = json!({
            "id": id, "etag": id, "messageType": "message", "chatId": chat_id, "replyToId": null,
            "createdDateTime": now, "lastModifiedDateTime": now, "lastEditedDateTime": null, "deletedDateTime": null,
            "from": from, "body": {"contentType": "html", "content": html}, "attachments": [], "mentions": mentions, "reactions": [],
        });
        {
            let mut chats = self.state.chats.lock().unwrap();
            let chat = chats.iter_mut().find(|c| c.id == chat_id).expect("add_chat first");
            chat.messages.push(msg);
        }
        if notify {
            self.notify(chat_id, &id, "created").await;
        }
        id
    }

    /// Store a message with this id in a chat added with [`Self::add_chat`] (the shape [`Self::say`] gives it),
    /// with these `attachments` (Graph's `chatMessageAttachment`s); no notification.
    pub fn put_chat_message(&self, chat_id: &str, message_id: &str, from: Value, html: &str, attachments: Value) {
        let now = now_rfc3339();
        let msg = json!({
            "id": message_id, "etag": message_id, "messageType": "message", "chatId": chat_id, "replyToId": null,
            "createdDateTime": now, "lastModifiedDateTime": now, "lastEditedDateTime": null, "deletedDateTime": null,
            "from": from, "body": {"contentType": "html", "content": html}, "attachments": attachments, "mentions": [], "reactions": [],
        });
        let mut chats = self.state.chats.lock().unwrap();
        let chat = chats.iter_mut().find(|c| c.id == chat_id).expect("add_chat first");
        assert!(chat.messages.iter().all(|m| m["id"] != message_id), "message {message_id} is already in {chat_id}");
        chat.messages.push(msg);
    }

    /// The Agent User is not (or no longer) a member of this chat: reading its messages (one, the list, a
    /// hosted content) answers 403 `Forbidden`.
    pub fn deny_chat(&self, chat_id: &str) {
        let mut chats = self.state.chats.lock().unwrap();
        chats.iter_mut().find(|c| c.id == chat_id).expect("add_chat first").denied = true;
    }

    /// A team by its Microsoft 365 group id (a GUID) with these members (user object ids); channels come with
    /// [`Self::put_channel_message`]. Without the Agent User among them its messages answer 403 `Forbidden`.
    pub fn add_team(&self, group_id: &str, members: &[&str]) {
        assert!(is_guid(group_id), "a team is added by its group id (a GUID), not {group_id}");
        self.state.teams.lock().unwrap().push(Team {
            id: group_id.to_ascii_lowercase(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            channels: Vec::new(),
            messages: Vec::new(),
        });
    }

    /// Store a channel message of a team added with [`Self::add_team`] (the channel comes into being): a root
    /// post when `root_id` is None, else a reply to that root (which must be there); served as
    /// [`channel_message_json`] gives it.
    #[allow(clippy::too_many_arguments)]
    pub fn put_channel_message(
        &self,
        group_id: &str,
        channel_id: &str,
        message_id: &str,
        root_id: Option<&str>,
        from: Value,
        html: &str,
        attachments: Value,
    ) {
        let mut teams = self.state.teams.lock().unwrap();
        let team = teams.iter_mut().find(|t| t.id.eq_ignore_ascii_case(group_id)).expect("add_team first");
        if !team.channels.iter().any(|c| c == channel_id) {
            team.channels.push(channel_id.to_owned());
        }
        if let Some(root) = root_id {
            assert!(
                team.messages.iter().any(|m| m.channel == channel_id && m.root.is_none() && m.json["id"] == root),
                "put the root {root} first"
            );
        }
        assert!(
            !team.messages.iter().any(|m| m.channel == channel_id && m.json["id"] == message_id),
            "message {message_id} is already in {channel_id}"
        );
        let json = channel_message_json(&team.id, channel_id, message_id, root_id, from, html, attachments);
        team.messages.push(ChannelMessage { channel: channel_id.to_owned(), root: root_id.map(str::to_owned), json });
    }

    /// An inline image of the message at `message_path` (unencoded, after `/v1.0/`: `chats/{id}/messages/{id}`,
    /// `teams/{g}/channels/{c}/messages/{id}` or `…/messages/{root}/replies/{id}`), served at
    /// `…/hostedContents/{id}/$value` as `content_type`. Returns Graph's id (standard base64 of
    /// `id=x_{ams},type=1,url=https://us-api.asm.skype.com/v1/objects/{ams}/views/imgo`) and the URL as Graph
    /// writes it in the body's `<img src>`: this fake's base, the path's `:` and `@` literal, `$value` literal.
    pub fn add_hosted_content(&self, message_path: &str, ams_object_id: &str, bytes: &[u8], content_type: &str) -> (String, String) {
        use base64::Engine as _;
        let segs: Vec<&str> = message_path.split('/').collect();
        let path = canonical_message_path(&segs).expect("a chat or channel message path");
        let id = base64::engine::general_purpose::STANDARD
            .encode(format!("id=x_{ams_object_id},type=1,url=https://us-api.asm.skype.com/v1/objects/{ams_object_id}/views/imgo"));
        // Graph writes the path as it is (`19:…@thread.v2`); a `/` of the id cannot stay literal in a segment.
        let url = format!("{}/v1.0/{message_path}/hostedContents/{}/$value", self.state.base, id.replace('/', "%2F").replace('+', "%2B"));
        self.state.hosted_contents.lock().unwrap().push(HostedContent {
            message_path: path,
            id: id.clone(),
            bytes: bytes.to_vec(),
            content_type: content_type.to_owned(),
        });
        (id, url)
    }

    /// Edit a message (its `lastEditedDateTime` and `lastModifiedDateTime` move); with `notify`, an
    /// `updated` notification.
    pub async fn edit(&self, chat_id: &str, message_id: &str, html: &str, notify: bool) {
        {
            let mut chats = self.state.chats.lock().unwrap();
            let chat = chats.iter_mut().find(|c| c.id == chat_id).unwrap();
            let m = chat.messages.iter_mut().find(|m| m["id"] == message_id).unwrap();
            let now = now_rfc3339();
            m["body"]["content"] = json!(html);
            m["lastEditedDateTime"] = json!(now);
            m["lastModifiedDateTime"] = json!(now);
        }
        if notify {
            self.notify(chat_id, message_id, "updated").await;
        }
    }

    /// Someone deletes their message (soft delete: `deletedDateTime` set); with `notify`, a `deleted`
    /// notification.
    pub async fn delete(&self, chat_id: &str, message_id: &str, notify: bool) {
        {
            let mut chats = self.state.chats.lock().unwrap();
            let chat = chats.iter_mut().find(|c| c.id == chat_id).unwrap();
            let m = chat.messages.iter_mut().find(|m| m["id"] == message_id).unwrap();
            let now = now_rfc3339();
            m["deletedDateTime"] = json!(now);
            m["lastModifiedDateTime"] = json!(now);
        }
        if notify {
            self.notify(chat_id, message_id, "deleted").await;
        }
    }

    /// POST a change notification for a message to every live subscription; the statuses.
    pub async fn notify(&self, chat_id: &str, message_id: &str, change: &str) -> Vec<u16> {
        let subs: Vec<Sub> =
            self.state.subs.lock().unwrap().iter().filter(|s| !s.expired && s.resource.contains("/chats/")).cloned().collect();
        let mut out = Vec::new();
        for sub in subs {
            let body = json!({"value": [{
                "subscriptionId": sub.id, "clientState": sub.client_state, "changeType": change,
                "resource": format!("chats('{chat_id}')/messages('{message_id}')"),
                "subscriptionExpirationDateTime": sub.expires, "tenantId": "cccccccc-0000-0000-0000-000000000003",
                "resourceData": {"id": message_id, "@odata.type": "#Microsoft.Graph.chatMessage"},
            }]});
            let url = self.spread_url(&sub.notification_url);
            out.push(self.post_to(&url, &body).await);
        }
        out
    }

    /// POST a lifecycle notification of every subscription to each origin given to [`Self::spread_over`] (the
    /// same event reaching every replica); the statuses.
    pub async fn lifecycle_everywhere(&self, event: &str) -> Vec<u16> {
        let subs: Vec<Sub> = self.state.subs.lock().unwrap().clone();
        let origins = self.state.spread.lock().unwrap().clone();
        let mut out = Vec::new();
        for sub in &subs {
            let body = json!({"value": [{
                "subscriptionId": sub.id, "clientState": sub.client_state, "lifecycleEvent": event,
                "subscriptionExpirationDateTime": sub.expires, "tenantId": "cccccccc-0000-0000-0000-000000000003",
            }]});
            let path = sub.lifecycle_url.splitn(4, '/').nth(3).unwrap_or_default().to_owned();
            for origin in &origins {
                out.push(self.post_to(&format!("{origin}/{path}"), &body).await);
            }
        }
        out
    }

    /// Serve the sponsors of the Agent Identity `identity` (`GET /servicePrincipals/{id}/microsoft.graph.
    /// agentIdentity/sponsors`), only to the Agent Identity's app-only token (`app_checker`; a T3 is refused).
    pub fn set_sponsors(&self, identity: &str, sponsors: &[&str], app_checker: Arc<dyn Fn(&str) -> bool + Send + Sync>) {
        *self.state.sponsors.lock().unwrap() = Some((identity.to_owned(), sponsors.iter().map(|s| (*s).to_owned()).collect(), app_checker));
    }

    /// Successful sponsor reads.
    pub fn sponsor_reads(&self) -> usize {
        self.state.sponsor_reads.load(Ordering::SeqCst)
    }

    /// Deliver change notifications to these origins in turn (`https://127.0.0.1:PORT`, replicas behind one
    /// public URL), whatever the subscription's URL names.
    pub fn spread_over(&self, origins: &[&str]) {
        *self.state.spread.lock().unwrap() = origins.iter().map(|o| (*o).to_owned()).collect();
    }

    fn spread_url(&self, url: &str) -> String {
        let origins = self.state.spread.lock().unwrap().clone();
        if origins.is_empty() {
            return url.to_owned();
        }
        let i = self.state.spread_next.fetch_add(1, Ordering::SeqCst) % origins.len();
        let path = url.splitn(4, '/').nth(3).unwrap_or_default();
        format!("{}/{path}", origins[i])
    }

    /// POST a lifecycle notification (`missed`, `subscriptionRemoved`, `reauthorizationRequired`) for every
    /// subscription; the statuses. `subscriptionRemoved` also removes them here.
    pub async fn lifecycle(&self, event: &str) -> Vec<u16> {
        let subs: Vec<Sub> = self.state.subs.lock().unwrap().clone();
        let mut out = Vec::new();
        for sub in &subs {
            let body = json!({"value": [{
                "subscriptionId": sub.id, "clientState": sub.client_state, "lifecycleEvent": event,
                "subscriptionExpirationDateTime": sub.expires, "tenantId": "cccccccc-0000-0000-0000-000000000003",
            }]});
            out.push(self.post_to(&sub.lifecycle_url, &body).await);
        }
        if event == "subscriptionRemoved" {
            self.state.subs.lock().unwrap().retain(|s| !subs.iter().any(|x| x.id == s.id));
        }
        out
    }

    /// POST any body to the first subscription's notification URL (forged notifications); the status.
    pub async fn post_raw(&self, body: &Value) -> u16 {
        let url = self.state.subs.lock().unwrap().first().map(|s| s.notification_url.clone()).expect("a subscription");
        self.post_to(&url, body).await
    }

    async fn post_to(&self, url: &str, body: &Value) -> u16 {
        let client = https_client(&self.state);
        match client.post(url).header("content-type", "application/json").body(body.to_string()).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Expire every subscription (renewals answer 404, nothing is delivered).
    pub fn expire_subscriptions(&self) {
        for s in self.state.subs.lock().unwrap().iter_mut() {
            s.expired = true;
        }
    }

    /// The subscriptions (live and expired).
    pub fn subscriptions(&self) -> Vec<Sub> {
        self.state.subs.lock().unwrap().clone()
    }

    /// Hold (or release) single-message reads.
    pub fn hold_reads(&self, hold: bool) {
        self.state.hold_reads.store(hold, Ordering::SeqCst);
    }

    /// Chat-message listings served so far (catch-up reads; a standing poll would show here).
    pub fn list_reads(&self) -> usize {
        self.state.list_reads.load(Ordering::SeqCst)
    }

    /// Single chat messages served so far (fetches after notifications).
    pub fn message_gets(&self) -> usize {
        self.state.message_gets.load(Ordering::SeqCst)
    }

    /// Validation requests answered correctly.
    pub fn validations(&self) -> usize {
        self.state.validations.load(Ordering::SeqCst)
    }

    // ------------------------------------------------------------ files

    /// The file host's base URL (`files.endpoints` in the gateway's configuration).
    pub fn file_host(&self) -> String {
        format!("{}/sp", self.state.base)
    }

    /// A pre-authenticated download link to `bytes` served as `content_type` (`None`: no `Content-Type`).
    pub fn host_file(&self, bytes: &[u8], content_type: Option<&str>) -> String {
        let mut d = self.state.drive.lock().unwrap();
        d.seq += 1;
        let token = format!("dl{}", d.seq);
        d.hosted.insert(token.clone(), (bytes.to_vec(), content_type.unwrap_or("").to_owned()));
        format!("{}/sp/download/{token}?tempauth=v1.pre-authenticated-{}", self.state.base, d.seq)
    }

    /// A new upload session as Teams hands one out in a file consent answer; its `uploadUrl`.
    pub fn new_upload_session(&self) -> String {
        let mut d = self.state.drive.lock().unwrap();
        d.seq += 1;
        let id = format!("up{}", d.seq);
        d.sessions.insert(id.clone(), UploadSession::default());
        format!("{}/sp/upload/{id}?guid=sess-{}", self.state.base, d.seq)
    }

    /// An upload session by its `uploadUrl` (or id).
    pub fn session(&self, url_or_id: &str) -> UploadSession {
        let id = url_or_id.split("/sp/upload/").last().unwrap_or(url_or_id).split('?').next().unwrap_or_default();
        self.state.drive.lock().unwrap().sessions.get(id).cloned().expect("a session")
    }

    /// Every upload session (Graph's and the consent flow's).
    pub fn sessions(&self) -> Vec<UploadSession> {
        self.state.drive.lock().unwrap().sessions.values().cloned().collect()
    }

    /// A file in the Agent User's OneDrive (`drive` `me`) or a site's library; its id.
    pub fn add_drive_file(&self, drive: &str, path: &str, bytes: &[u8], mime: &str) -> String {
        let mut d = self.state.drive.lock().unwrap();
        d.seq += 1;
        let id = format!("01ITEM{:04}", d.seq);
        let web_url = format!("https://contoso-my.sharepoint.com/personal/agent/Documents/{}", path.replace(' ', "%20"));
        d.files.push(DriveFile {
            id: id.clone(),
            drive: drive.to_owned(),
            path: path.to_owned(),
            bytes: bytes.to_vec(),
            mime: mime.to_owned(),
            web_url,
        });
        id
    }

    pub fn drive_files(&self) -> Vec<DriveFile> {
        self.state.drive.lock().unwrap().files.clone()
    }

    /// A SharePoint site the Agent User can reach.
    pub fn add_site(&self, id: &str, name: &str) {
        self.state
            .drive
            .lock()
            .unwrap()
            .sites
            .push(json!({"id": id, "displayName": name, "name": name, "webUrl": format!("https://contoso.sharepoint.com/sites/{name}")}));
    }

    /// The `createLink` bodies accepted, each with its item id (`itemId`).
    pub fn links(&self) -> Vec<Value> {
        self.state.drive.lock().unwrap().links.clone()
    }

    /// Serve these faults to the file host's next requests, in order.
    pub fn inject_file_host(&self, faults: impl IntoIterator<Item = FileFault>) {
        self.state.drive.lock().unwrap().faults.extend(faults);
    }

    /// Requests the file host received.
    pub fn file_requests(&self) -> Vec<FileSeen> {
        self.state.drive.lock().unwrap().seen.clone()
    }

    /// The members a chat was created with or given.
    pub fn members(&self, chat_id: &str) -> Vec<Value> {
        self.state.chats.lock().unwrap().iter().find(|c| c.id == chat_id).map(|c| c.members.clone()).unwrap_or_default()
    }

    /// Serve `canned` to the next request whose path (decoded, after `/v1.0/`) contains `needle`.
    pub fn inject_for(&self, needle: &str, canned: Canned) {
        self.state.injected_for.lock().unwrap().push((needle.to_owned(), canned));
    }

    /// A mail reaches the Agent User's Inbox (received now, Graph's whole seconds); with `notify`, Graph tells
    /// every live mail subscription. Graph's id of the message.
    pub async fn mail(&self, m: NewMail, notify: bool) -> String {
        self.deliver(m, None, notify).await
    }

    /// A meeting request (`#microsoft.graph.eventMessageRequest`) for `event_id` (an event of
    /// [`Self::calendar`], as Exchange puts it there on delivery) reaches the Inbox, sent by `m.from`
    /// (its subject and body are the mail's). Graph's id of the message.
    pub async fn invite(&self, m: NewMail, event_id: &str, notify: bool) -> String {
        self.deliver(m, Some((event_id.to_owned(), "#microsoft.graph.eventMessageRequest", "meetingRequest")), notify).await
    }

    /// A meeting's cancellation (`#microsoft.graph.eventMessage`, `meetingCancelled`) for `event_id` reaches the Inbox.
    pub async fn cancel(&self, m: NewMail, event_id: &str, notify: bool) -> String {
        self.deliver(m, Some((event_id.to_owned(), "#microsoft.graph.eventMessage", "meetingCancelled")), notify).await
    }

    async fn deliver(&self, m: NewMail, meeting: Option<(String, &str, &str)>, notify: bool) -> String {
        let seq = self.state.seq.fetch_add(1, Ordering::SeqCst);
        let id = format!("AAMkAGI2TG93AAA{seq:06}=");
        let who = |(name, address): &(String, String)| json!({"emailAddress": {"name": name, "address": address}});
        let now = now_rfc3339();
        let received = format!("{}Z", &now[..19]);
        let attachments: Vec<Value> = m
            .attachments
            .iter()
            .enumerate()
            .map(|(i, (name, kind, bytes))| {
                use base64::Engine as _;
                json!({"@odata.type": "#microsoft.graph.fileAttachment", "id": format!("AAMkATT{seq}-{i}"), "name": name, "contentType": kind,
                    "size": bytes.len(), "isInline": false, "lastModifiedDateTime": received,
                    "contentBytes": base64::engine::general_purpose::STANDARD.encode(bytes)})
            })
            .collect();
        let message = json!({
            "@odata.type": "#microsoft.graph.message", "@odata.etag": format!("W/\"CQAAABYAAAA{seq}\""),
            "id": id, "createdDateTime": received, "lastModifiedDateTime": received, "receivedDateTime": received, "sentDateTime": received,
            "internetMessageId": m.internet_message_id.clone().unwrap_or_else(|| format!("<{seq}.fake@mail.contoso.test>")),
            "conversationId": format!("AAQkADThread{seq}="), "subject": m.subject, "isDraft": false, "isRead": false,
            "hasAttachments": !attachments.is_empty(), "importance": "normal", "bodyPreview": "",
            "body": {"contentType": "html", "content": m.html},
            "from": who(&m.from), "sender": who(&m.from),
            "toRecipients": m.to.iter().map(who).collect::<Vec<_>>(), "ccRecipients": m.cc.iter().map(who).collect::<Vec<_>>(),
            "bccRecipients": [], "replyTo": m.reply_to.iter().map(who).collect::<Vec<_>>(),
        });
        let mut message = message;
        let event = meeting.as_ref().map(|(id, _, _)| id.clone());
        if let Some(((_, odata_type, kind), e)) = meeting.as_ref().zip(event.as_deref().and_then(|id| self.state.calendar.event(id))) {
            for (k, v) in [
                ("@odata.type", json!(odata_type)),
                ("meetingMessageType", json!(kind)),
                ("meetingRequestType", json!(if *kind == "meetingRequest" { "newMeetingRequest" } else { "none" })),
                ("startDateTime", e["start"].clone()),
                ("endDateTime", e["end"].clone()),
                ("location", e["location"].clone()),
                ("isAllDay", e["isAllDay"].clone()),
                ("isOutOfDate", json!(false)),
                ("responseRequested", json!(true)),
                ("isDelegated", json!(false)),
                ("type", json!("singleInstance")),
            ] {
                message[k] = v;
            }
        }
        self.state.mailbox.lock().unwrap().push(Mail { seq, message, attachments, event });
        if notify {
            self.notify_mail(&id).await;
        }
        id
    }

    /// POST a `created` change notification for a mail to every live mail subscription; the statuses.
    pub async fn notify_mail(&self, id: &str) -> Vec<u16> {
        let subs: Vec<Sub> = self
            .state
            .subs
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !s.expired && s.resource.to_ascii_lowercase().contains("/mailfolders("))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for sub in subs {
            let resource = format!("Users/{}/Messages/{id}", self.state.agent_oid);
            let body = json!({"value": [{
                "subscriptionId": sub.id, "clientState": sub.client_state, "changeType": "created", "resource": resource,
                "subscriptionExpirationDateTime": sub.expires, "tenantId": "cccccccc-0000-0000-0000-000000000003",
                "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "@odata.id": resource, "@odata.etag": "W/\"x\"", "id": id},
            }]});
            out.push(self.post_to(&sub.notification_url, &body).await);
        }
        out
    }

    /// Mail the Agent User wrote, in order.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        self.state.outbox.lock().unwrap().clone()
    }

    /// Forget every delta state token (Graph dropped them): the next request with one answers 410.
    pub fn expire_delta_tokens(&self) {
        self.state.delta_tokens.lock().unwrap().clear();
    }

    /// Requests for an attachment's bytes so far.
    pub fn attachment_opens(&self) -> usize {
        self.state.attachment_opens.load(Ordering::SeqCst)
    }

    /// Inbox delta requests so far, in order.
    pub fn delta_requests(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path.ends_with("/messages/delta")).collect()
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            json!({"error": {"code": code, "message": message, "innerError": {"request-id": "00000000-0000-0000-0000-000000000000"}}}),
        ),
    )
        .into_response()
}

fn bad(message: &str) -> Response {
    error(400, "BadRequest", message)
}

/// The sponsors of an Agent Identity: GET only, the Agent Identity's app-only token only (Graph documents no
/// delegated access), `$select` of `id` at most.
fn sponsors(s: &GraphState, method: &str, id: &str, query: &HashMap<String, String>, bearer: &str) -> Response {
    let Some((identity, sponsors, app_checker)) = s.sponsors.lock().unwrap().clone() else {
        return error(404, "Request_ResourceNotFound", "Resource does not exist.");
    };
    if bearer.is_empty() || !app_checker(bearer) {
        return error(401, "InvalidAuthenticationToken", "Access token validation failure.");
    }
    if method != "GET" {
        return error(405, "Request_BadRequest", "Method not allowed.");
    }
    if query.keys().any(|k| k != "$select") || query.get("$select").is_some_and(|v| v != "id") {
        return bad("Only $select=id is served here.");
    }
    if !id.eq_ignore_ascii_case(&identity) {
        return error(404, "Request_ResourceNotFound", &format!("Resource '{id}' does not exist."));
    }
    s.sponsor_reads.fetch_add(1, Ordering::SeqCst);
    let value: Vec<Value> = sponsors.iter().map(|u| json!({"@odata.type": "#microsoft.graph.user", "id": u})).collect();
    axum::Json(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects", "value": value})).into_response()
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg).decode_utf8().unwrap().into_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#x27;")
}

async fn handle(State(s): State<Arc<GraphState>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let raw = uri.path();
    if let Some(rest) = raw.strip_prefix("/sp/") {
        let hang = {
            let mut d = s.drive.lock().unwrap();
            match d.faults.front() {
                Some(FileFault::Hang(t)) => {
                    let t = *t;
                    d.faults.pop_front();
                    d.seen.push(FileSeen { method: method.to_string(), path: rest.to_owned(), content_range: None, authorization: false });
                    Some(t)
                }
                _ => None,
            }
        };
        if let Some(t) = hang {
            tokio::time::sleep(t).await;
            return file_error(504, "timeout", "no answer");
        }
        return file_host(&s, &method, rest, &headers, &body);
    }
    let Some(rest) = raw.strip_prefix("/v1.0/") else { return error(404, "NotFound", "only /v1.0 is served") };
    let segments: Vec<String> = rest.split('/').map(decode).collect();
    let query: HashMap<String, String> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").to_owned();
    // A file's bytes (`PUT …:/content`) are not JSON.
    let raw_upload = method == Method::PUT && segments.last().is_some_and(|l| l == "content");
    if raw_upload {
        if bearer.is_empty() || !(s.checker)(&bearer) {
            return error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.");
        }
        s.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: segments.join("/"),
            query: query.clone(),
            body: None,
            bearer,
            at: std::time::Instant::now(),
        });
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if ct.is_empty() {
            return bad("Content-Type is required.");
        }
        return drive_route(&s, "PUT", &segments, &query, None, &body);
    }
    let json_body: Option<Value> = if body.is_empty() { None } else { serde_json::from_slice(&body).ok() };
    if !body.is_empty() && json_body.is_none() {
        return bad("The body is not JSON.");
    }
    if json_body.is_some()
        && headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_none_or(|v| !v.starts_with("application/json"))
    {
        return bad("Content-Type must be application/json.");
    }
    s.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: segments.join("/"),
        query: query.clone(),
        body: json_body.clone(),
        bearer: bearer.clone(),
        at: std::time::Instant::now(),
    });

    let path = segments.join("/");
    let targeted = {
        let mut list = s.injected_for.lock().unwrap();
        list.iter().position(|(needle, _)| path.contains(needle.as_str())).map(|i| list.remove(i).1)
    };
    let canned = targeted.or_else(|| s.injected.lock().unwrap().pop_front());
    if let Some(c) = canned {
        let mut r = (StatusCode::from_u16(c.status).unwrap(), axum::Json(c.body)).into_response();
        if let Some(a) = c.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&a).unwrap());
        }
        return r;
    }
    if let ["servicePrincipals", id, "microsoft.graph.agentIdentity", "sponsors"] =
        segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice()
    {
        return sponsors(&s, method.as_str(), id, &query, &bearer);
    }
    if bearer.is_empty() || !(s.checker)(&bearer) {
        return error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.");
    }
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let m = method.as_str();
    if matches!(segs.as_slice(), ["me", "drive", ..] | ["sites", _, "drive", ..] | ["shares", ..] | ["sites"]) {
        return drive_route(&s, m, &segments, &query, json_body, &body);
    }
    if let Some(r) = s.calendar.route(&s.base, &s.agent_upn, m, &segs, &query, &headers, json_body.clone()) {
        return r;
    }
    match (m, segs.as_slice()) {
        ("GET", [msg @ .., "hostedContents", hid, "$value"]) => hosted_value(&s, msg, hid),
        ("GET", ["teams", _, "channels", _, "messages", _] | ["teams", _, "channels", _, "messages", _, "replies", _]) => {
            match find_message(&s, &segs) {
                Ok(msg) => axum::Json(msg).into_response(),
                Err(r) => *r,
            }
        }
        ("GET", ["me"]) => user(&s, &s.agent_oid.clone()),
        ("GET", ["users", key]) => user(&s, key),
        ("POST", ["chats"]) => create_chat(&s, json_body),
        ("GET", ["chats", id]) => with_chat(&s, id, |c| axum::Json(chat_json(c)).into_response()),
        ("POST", ["chats", id, "messages"]) => post_message(&s, id, json_body),
        ("POST", ["subscriptions"]) => create_subscription(&s, json_body).await,
        ("PATCH", ["subscriptions", id]) => {
            let mut subs = s.subs.lock().unwrap();
            let Some(sub) = subs.iter_mut().find(|x| x.id == *id && !x.expired) else {
                return error(404, "ResourceNotFound", "The object was not found.");
            };
            let Some(exp) = json_body.as_ref().and_then(|b| b["expirationDateTime"].as_str()) else {
                return bad("expirationDateTime is required.");
            };
            sub.expires = exp.to_owned();
            axum::Json(sub_json(sub)).into_response()
        }
        ("DELETE", ["subscriptions", id]) => {
            s.subs.lock().unwrap().retain(|x| x.id != *id);
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["chats", id, "messages"]) => {
            s.list_reads.fetch_add(1, Ordering::SeqCst);
            let order = query.get("$orderby").map(String::as_str);
            let filter = query.get("$filter").map(String::as_str);
            let since = match (order, filter) {
                (_, None) => None,
                (Some("lastModifiedDateTime desc"), Some(f)) => match f.strip_prefix("lastModifiedDateTime gt ") {
                    Some(t) if t.ends_with('Z') && t.contains('T') => Some(t.to_owned()),
                    _ => return bad("Only lastModifiedDateTime gt <time> is supported with this $orderby."),
                },
                _ => return bad("$filter needs $orderby on the same property (descending)."),
            };
            let mut items = match s.chats.lock().unwrap().iter().find(|c| c.id == *id) {
                Some(c) if c.denied => return error(403, "Forbidden", "Forbidden: the caller is not a member of the chat."),
                Some(c) => c.messages.iter().rev().cloned().collect::<Vec<_>>(),
                None => return error(404, "NotFound", "Chat not found"),
            };
            if order == Some("lastModifiedDateTime desc") {
                items.sort_by(|a, b| b["lastModifiedDateTime"].as_str().cmp(&a["lastModifiedDateTime"].as_str()));
            }
            if let Some(t) = since {
                let t = normalize_time(&t);
                items.retain(|m| m["lastModifiedDateTime"].as_str().is_some_and(|x| normalize_time(x) > t));
            }
            page(&s, &format!("chats/{}/messages", enc(id)), items, &query)
        }
        ("GET", ["chats", id, "messages", mid]) => {
            s.message_gets.fetch_add(1, Ordering::SeqCst);
            while s.hold_reads.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            match find_message(&s, &["chats", id, "messages", mid]) {
                Ok(msg) => axum::Json(msg).into_response(),
                Err(r) => *r,
            }
        }
        ("PATCH", ["chats", id, "messages", mid]) => patch_message(&s, id, mid, json_body),
        ("POST", ["chats", _, "messages", _, "softDelete"]) => {
            error(405, "MethodNotAllowed", "Use /me/chats/{id}/messages/{id}/softDelete.")
        }
        ("POST", ["chats", id, "messages", mid, action @ ("setReaction" | "unsetReaction")]) => {
            let Some(kind) = json_body.as_ref().and_then(|b| b["reactionType"].as_str()).filter(|k| !k.is_empty()).map(str::to_owned)
            else {
                return bad("reactionType is required.");
            };
            let mut chats = s.chats.lock().unwrap();
            let Some(c) = chats.iter_mut().find(|c| c.id == *id) else { return error(404, "NotFound", "Chat not found") };
            let Some(msg) = c.messages.iter_mut().find(|x| x["id"] == *mid) else { return error(404, "NotFound", "Message not found") };
            if !msg["reactions"].is_array() {
                msg["reactions"] = json!([]);
            }
            let list = msg["reactions"].as_array_mut().unwrap();
            list.retain(|r| r["reactionType"] != kind.as_str());
            if *action == "setReaction" {
                list.push(json!({"reactionType": kind, "createdDateTime": "2026-11-22T09:00:00Z"}));
            }
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["me", "chats", id, "messages", mid, "softDelete"]) => {
            let mut chats = s.chats.lock().unwrap();
            let Some(c) = chats.iter_mut().find(|c| c.id == *id) else { return error(404, "NotFound", "Chat not found") };
            let Some(msg) = c.messages.iter_mut().find(|x| x["id"] == *mid) else { return error(404, "NotFound", "Message not found") };
            msg["deletedDateTime"] = json!("2026-11-22T09:00:00Z");
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["me", "chats"]) => {
            if query.contains_key("$orderby") {
                return bad("Query option 'OrderBy' is not allowed.");
            }
            let items = s.chats.lock().unwrap().iter().map(chat_json).collect();
            page(&s, "me/chats", items, &query)
        }
        ("GET", ["chats", id, "members"]) => {
            let items = match s.chats.lock().unwrap().iter().find(|c| c.id == *id) {
                Some(c) => c.members.iter().enumerate().map(|(i, m)| member_view(i, m)).collect::<Vec<_>>(),
                None => return error(404, "NotFound", "Chat not found"),
            };
            page(&s, &format!("chats/{}/members", enc(id)), items, &query)
        }
        ("POST", ["chats", id, "members"]) => {
            let Some(member) = json_body else { return bad("A member is required.") };
            if let Err(why) = check_member(&member) {
                return bad(&why);
            }
            let mut chats = s.chats.lock().unwrap();
            let Some(c) = chats.iter_mut().find(|c| c.id == *id) else { return error(404, "NotFound", "Chat not found") };
            if c.chat_type == "oneOnOne" {
                return bad("Members cannot be added to a oneOnOne chat.");
            }
            c.members.push(member);
            // Graph may answer 201 with an empty body.
            StatusCode::CREATED.into_response()
        }
        (_, ["users", key, rest @ ..]) if !rest.is_empty() && is_agent(&s, key) => {
            let utc = crate::fake_calendar::prefer_values(&headers).iter().any(|p| p == "outlook.timezone=\"UTC\"");
            mail_route(&s, m, rest, &query, json_body, utc)
        }
        _ => error(404, "UnknownRequest", &format!("{m} {} is not served by the fake", segments.join("/"))),
    }
}

fn is_agent(s: &GraphState, key: &str) -> bool {
    key == s.agent_oid || key.eq_ignore_ascii_case(&s.agent_upn)
}

/// The Agent User's mailbox: `users/{me}/…`.
fn mail_route(s: &GraphState, m: &str, rest: &[&str], query: &HashMap<String, String>, body: Option<Value>, utc: bool) -> Response {
    // `mailFolders('inbox')` (the form of Graph's own links) is `mailFolders/inbox`.
    let mut lower: Vec<String> = Vec::new();
    for r in rest {
        let r = r.to_ascii_lowercase();
        match r.split_once("('").and_then(|(name, key)| Some((name.to_owned(), key.strip_suffix("')")?.to_owned()))) {
            Some((name, key)) => lower.extend([name, key]),
            None => lower.push(r),
        }
    }
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match (m, lower.as_slice()) {
        ("GET", ["mailfolders", "inbox", "messages", "delta"]) => mail_delta(s, query),
        ("GET", ["messages", _]) => {
            if let Some(k) = query.keys().find(|k| !["$select", "$expand"].contains(&k.as_str())) {
                return bad(&format!("The query option '{k}' is not supported here."));
            }
            match query.get("$expand").map(String::as_str) {
                None => with_mail(s, rest[1], |mail| axum::Json(project(&mail.message, query)).into_response()),
                // The event of a meeting message, through the cast (`event` is not a property of `message`).
                Some(e) if e.eq_ignore_ascii_case("microsoft.graph.eventMessage/event") => {
                    let found = s.mailbox.lock().unwrap().iter().find(|x| x.message["id"] == rest[1]).cloned();
                    let Some(mail) = found else {
                        return error(404, "ErrorItemNotFound", "The specified object was not found in the store.");
                    };
                    let mut v = project(&mail.message, query);
                    if let Some(event) = mail.event.as_deref().and_then(|id| s.calendar.event(id)) {
                        v["event"] = event;
                    }
                    if !utc {
                        // Without `Prefer: outlook.timezone="UTC"` Graph answers in the mailbox's zone.
                        pacific(&mut v);
                    }
                    axum::Json(v).into_response()
                }
                Some(e) => bad(&format!("Could not find a property named '{e}' on type 'microsoft.graph.message'.")),
            }
        }
        ("GET", ["messages", _, "attachments"]) => with_mail(s, rest[1], |mail| {
            let select = query.get("$select").map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>());
            if select.as_ref().is_none_or(|f| f.iter().any(|x| x == "contentBytes")) {
                s.attachment_opens.fetch_add(mail.attachments.len(), Ordering::SeqCst);
            }
            let value: Vec<Value> = mail.attachments.iter().map(|a| project(a, query)).collect();
            axum::Json(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#attachments", "value": value})).into_response()
        }),
        ("GET", ["messages", _, "attachments", ..]) => {
            s.attachment_opens.fetch_add(1, Ordering::SeqCst);
            with_mail(s, rest[1], |mail| axum::Json(mail.attachments.first().cloned().unwrap_or_default()).into_response())
        }
        ("POST", ["messages", _, action @ ("reply" | "replyall" | "createreply" | "createreplyall" | "forward")]) => {
            let id = rest[1].to_owned();
            let Some(original) = s.mailbox.lock().unwrap().iter().find(|x| x.message["id"] == id).cloned() else {
                return error(404, "ErrorItemNotFound", "The specified object was not found in the store.");
            };
            let Some(b) = body else { return bad("A body is required.") };
            let checked = if *action == "forward" { check_forward(&b) } else { check_reply(&b) };
            if let Err(why) = checked {
                return error(400, "ErrorInvalidRequest", &why);
            }
            let kind = rest[2].to_owned();
            s.outbox.lock().unwrap().push(SentMail { kind: kind.clone(), message_id: Some(id), body: b.clone() });
            if kind.starts_with("create") {
                let n = s.seq.fetch_add(1, Ordering::SeqCst);
                let to = if kind == "createReplyAll" {
                    original.message["toRecipients"].clone()
                } else {
                    json!([original.message["from"].clone()])
                };
                let draft = json!({"id": format!("AAMkDRAFT{n}="), "isDraft": true, "conversationId": original.message["conversationId"],
                    "subject": format!("RE: {}", original.message["subject"].as_str().unwrap_or_default()), "toRecipients": to, "ccRecipients": [],
                    "body": b["message"]["body"].clone()});
                return (StatusCode::CREATED, axum::Json(draft)).into_response();
            }
            StatusCode::ACCEPTED.into_response()
        }
        ("POST", ["messages"]) => {
            let Some(b) = body else { return bad("A body is required.") };
            if let Err(why) = check_new_message(&b, false) {
                return error(400, "ErrorInvalidRequest", &why);
            }
            s.outbox.lock().unwrap().push(SentMail { kind: "draft".into(), message_id: None, body: b.clone() });
            let n = s.seq.fetch_add(1, Ordering::SeqCst);
            let mut draft = b;
            draft["id"] = json!(format!("AAMkDRAFT{n}="));
            draft["isDraft"] = json!(true);
            draft["conversationId"] = json!(format!("AAQkNEW{n}="));
            (StatusCode::CREATED, axum::Json(draft)).into_response()
        }
        ("POST", ["sendmail"]) => {
            let Some(b) = body else { return bad("A body is required.") };
            if let Some(k) = b.as_object().and_then(|o| o.keys().find(|k| !["message", "saveToSentItems"].contains(&k.as_str())).cloned()) {
                return bad(&format!("unexpected property '{k}'"));
            }
            if let Err(why) = check_new_message(&b["message"], true) {
                return error(400, "ErrorInvalidRecipients", &why);
            }
            s.outbox.lock().unwrap().push(SentMail { kind: "sendMail".into(), message_id: None, body: b });
            StatusCode::ACCEPTED.into_response()
        }
        _ => error(404, "UnknownRequest", &format!("{m} users/…/{} is not served by the fake", rest.join("/"))),
    }
}

fn with_mail(s: &GraphState, id: &str, f: impl FnOnce(&Mail) -> Response) -> Response {
    match s.mailbox.lock().unwrap().iter().find(|x| x.message["id"] == id) {
        Some(mail) => f(mail),
        None => error(404, "ErrorItemNotFound", "The specified object was not found in the store."),
    }
}

/// Times of a meeting message and its event as a mailbox in Pacific Standard Time (UTC−8) reads them.
fn pacific(v: &mut Value) {
    let fix = |t: &mut Value| {
        if t["timeZone"] == "UTC"
            && let Some(at) = t["dateTime"].as_str().and_then(|d| time::PrimitiveDateTime::parse(&d[..19], TIME_LOCAL).ok())
        {
            let local = at - time::Duration::hours(8);
            *t = json!({"dateTime": format!("{}.0000000", local.format(TIME_LOCAL).unwrap()), "timeZone": "Pacific Standard Time"});
        }
    };
    for k in ["startDateTime", "endDateTime"] {
        fix(&mut v[k]);
    }
    for k in ["start", "end"] {
        fix(&mut v["event"][k]);
    }
}

const TIME_LOCAL: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");

/// A resource with only the `$select`ed properties (and `id`, and the OData annotations), as Graph returns it.
fn project(v: &Value, query: &HashMap<String, String>) -> Value {
    let Some(select) = query.get("$select") else { return v.clone() };
    let fields: Vec<&str> = select.split(',').map(str::trim).collect();
    let mut out = serde_json::Map::new();
    for (k, val) in v.as_object().into_iter().flatten() {
        if k == "id" || k.starts_with('@') || fields.contains(&k.as_str()) {
            out.insert(k.clone(), val.clone());
        }
    }
    Value::Object(out)
}

fn mail_time(v: &Value) -> String {
    normalize_time(v["receivedDateTime"].as_str().unwrap_or_default())
}

/// The Inbox's delta query: a round's first request, or a state token of a link it returned.
fn mail_delta(s: &GraphState, query: &HashMap<String, String>) -> Response {
    let token = query.get("$skiptoken").or_else(|| query.get("$deltatoken")).cloned();
    let mut state = match token {
        Some(t) => {
            if query.len() != 1 {
                return bad("A delta link's request takes no other query option: they are encoded in its token.");
            }
            let Some(st) = s.delta_tokens.lock().unwrap().get(&t).cloned() else {
                return error(410, "SyncStateNotFound", "The sync state generation is not found or was reset.");
            };
            if query.contains_key("$deltatoken") {
                // A new round: the messages that came since the last one.
                let mailbox = s.mailbox.lock().unwrap();
                let round = mailbox.iter().filter(|x| x.seq as i64 > st.watermark && delta_keeps(&st, &x.message)).map(|x| x.seq).collect();
                let watermark = newest(&mailbox).max(st.watermark);
                DeltaState { round, offset: 0, watermark, ..st }
            } else {
                st
            }
        }
        None => {
            for k in query.keys() {
                if !["$select", "$filter", "changeType", "$top"].contains(&k.as_str()) {
                    return bad(&format!("The query option '{k}' is not supported with delta for messages."));
                }
            }
            if let Some(c) = query.get("changeType")
                && !["created", "updated", "deleted"].contains(&c.as_str())
            {
                return bad("changeType must be created, updated or deleted.");
            }
            let filter = match query.get("$filter") {
                None => None,
                Some(f) => {
                    let parts: Vec<&str> = f.split(' ').collect();
                    match parts.as_slice() {
                        ["receivedDateTime", op @ ("ge" | "gt"), t] if t.ends_with('Z') && t.contains('T') => {
                            Some(((*op).to_owned(), normalize_time(t)))
                        }
                        _ => return bad("Only receivedDateTime ge|gt <time> is supported as $filter with delta for messages."),
                    }
                }
            };
            let select = query.get("$select").map(|v| v.split(',').map(|x| x.trim().to_owned()).collect());
            let mailbox = s.mailbox.lock().unwrap();
            let st = DeltaState { filter, select, round: Vec::new(), offset: 0, watermark: newest(&mailbox), page: 0 };
            let round = mailbox.iter().filter(|x| delta_keeps(&st, &x.message)).map(|x| x.seq).collect();
            let page = query.get("$top").and_then(|t| t.parse().ok()).unwrap_or(10);
            DeltaState { round, page, ..st }
        }
    };
    let size = if state.page == 0 { 10 } else { state.page }.min(*s.page_size.lock().unwrap());
    let mailbox = s.mailbox.lock().unwrap().clone();
    let chunk: Vec<Value> = state
        .round
        .iter()
        .skip(state.offset)
        .take(size)
        .filter_map(|seq| mailbox.iter().find(|x| x.seq == *seq))
        .map(|x| match &state.select {
            Some(fields) => project(&x.message, &HashMap::from([("$select".to_owned(), fields.join(","))])),
            None => x.message.clone(),
        })
        .collect();
    state.offset += size;
    let more = state.offset < state.round.len();
    let base = format!("{}/v1.0/users/{}/mailFolders('inbox')/messages/delta", s.base, s.agent_oid);
    let new_token = format!("{:032x}", fastrand::u128(..));
    let mut out = json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(message)", "value": chunk});
    if more {
        out["@odata.nextLink"] = json!(format!("{base}?$skiptoken={new_token}"));
    } else {
        out["@odata.deltaLink"] = json!(format!("{base}?$deltatoken={new_token}"));
    }
    s.delta_tokens.lock().unwrap().insert(new_token, state);
    axum::Json(out).into_response()
}

/// The newest message's sequence number (`-1`: an empty Inbox).
fn newest(mailbox: &[Mail]) -> i64 {
    mailbox.iter().map(|x| x.seq as i64).max().unwrap_or(-1)
}

fn delta_keeps(st: &DeltaState, message: &Value) -> bool {
    match &st.filter {
        None => true,
        Some((op, t)) if op == "ge" => mail_time(message) >= *t,
        Some((_, t)) => mail_time(message) > *t,
    }
}

/// A list of recipients as Graph takes them: `[{"emailAddress": {"address": …, "name"?: …}}]`.
fn check_recipients(v: &Value, what: &str) -> Result<usize, String> {
    let list = v.as_array().ok_or_else(|| format!("{what} must be an array"))?;
    for r in list {
        let obj = r.as_object().ok_or_else(|| format!("a {what} entry must be an object"))?;
        if obj.keys().any(|k| k != "emailAddress") {
            return Err(format!("a {what} entry has only emailAddress"));
        }
        let addr = r["emailAddress"]["address"].as_str().unwrap_or_default();
        let ok = addr.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
            && !addr.contains(|c: char| c.is_whitespace() || "<>,;\"".contains(c));
        if !ok {
            return Err(format!("At least one recipient is not valid: '{addr}'."));
        }
    }
    Ok(list.len())
}

fn check_body(v: &Value) -> Result<(), String> {
    let kind = v["contentType"].as_str().unwrap_or_default();
    if !kind.eq_ignore_ascii_case("html") && !kind.eq_ignore_ascii_case("text") {
        return Err("body.contentType must be html or text".into());
    }
    let content = v["content"].as_str().ok_or("body.content must be a string")?;
    if content.len() > 4 * 1024 * 1024 {
        return Err("The request is larger than 4 MB.".into());
    }
    Ok(())
}

/// A `message` of a reply, forward or new message: known writable properties only.
fn check_message_object(m: &Value) -> Result<(), String> {
    let obj = m.as_object().ok_or("message must be an object")?;
    if let Some(k) = obj.keys().find(|k| !["subject", "body", "toRecipients", "ccRecipients", "bccRecipients"].contains(&k.as_str())) {
        return Err(format!("unexpected message property '{k}'"));
    }
    if let Some(b) = obj.get("body") {
        check_body(b)?;
    }
    for k in ["toRecipients", "ccRecipients", "bccRecipients"] {
        if let Some(r) = obj.get(k) {
            check_recipients(r, k)?;
        }
    }
    Ok(())
}

/// `reply`, `replyAll`, `createReply`, `createReplyAll`: a `comment` or a `message`, not a comment and a body.
fn check_reply(b: &Value) -> Result<(), String> {
    let obj = b.as_object().ok_or("the body must be an object")?;
    if let Some(k) = obj.keys().find(|k| !["comment", "message"].contains(&k.as_str())) {
        return Err(format!("unexpected property '{k}'"));
    }
    if obj.is_empty() {
        return Err("Specify a comment or a message.".into());
    }
    if let Some(m) = obj.get("message") {
        check_message_object(m)?;
        if obj.contains_key("comment") && m.get("body").is_some() {
            return Err("Specify either a comment or the body property of the message parameter, not both.".into());
        }
    }
    Ok(())
}

/// `forward`: the recipients once, as `toRecipients` or as the message's.
fn check_forward(b: &Value) -> Result<(), String> {
    let obj = b.as_object().ok_or("the body must be an object")?;
    if let Some(k) = obj.keys().find(|k| !["comment", "toRecipients", "message"].contains(&k.as_str())) {
        return Err(format!("unexpected property '{k}'"));
    }
    if let Some(m) = obj.get("message") {
        check_message_object(m)?;
        if obj.contains_key("comment") && m.get("body").is_some() {
            return Err("Specify either a comment or the body property of the message parameter, not both.".into());
        }
    }
    let top = obj.get("toRecipients").map(|r| check_recipients(r, "toRecipients")).transpose()?.unwrap_or(0);
    let inner =
        obj.get("message").and_then(|m| m.get("toRecipients")).map(|r| check_recipients(r, "toRecipients")).transpose()?.unwrap_or(0);
    match (top, inner) {
        (0, 0) => Err("Specify either the toRecipients parameter or the toRecipients property of the message parameter.".into()),
        (a, b) if a > 0 && b > 0 => {
            Err("Specify either the toRecipients parameter or the toRecipients property of the message parameter, not both.".into())
        }
        _ => Ok(()),
    }
}

/// A new message (`sendMail`'s, or a draft): a subject, a body, and (to send) a recipient.
fn check_new_message(m: &Value, send: bool) -> Result<(), String> {
    check_message_object(m)?;
    let count: usize = ["toRecipients", "ccRecipients", "bccRecipients"].iter().filter_map(|k| m[*k].as_array()).map(Vec::len).sum();
    if send && count == 0 {
        return Err("At least one recipient is required.".into());
    }
    if send && m["subject"].as_str().is_none_or(|s| s.trim().is_empty()) {
        return Err("A subject is required here.".into());
    }
    if m.get("body").is_none() {
        return Err("body is required".into());
    }
    Ok(())
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn user(s: &GraphState, key: &str) -> Response {
    let users = s.users.lock().unwrap();
    let found = users.iter().find(|u| u["id"] == key || u["userPrincipalName"].as_str().is_some_and(|p| p.eq_ignore_ascii_case(key)));
    match found {
        Some(u) => axum::Json(u.clone()).into_response(),
        None => error(
            404,
            "Request_ResourceNotFound",
            &format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
        ),
    }
}

fn with_chat(s: &GraphState, id: &str, f: impl FnOnce(&Chat) -> Response) -> Response {
    match s.chats.lock().unwrap().iter().find(|c| c.id == id) {
        Some(c) => f(c),
        None => error(404, "NotFound", "Chat not found"),
    }
}

/// Whether `s` is a GUID (8-4-4-4-12 hex digits), as a team's group id is.
fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// A message's path (decoded segments after `/v1.0/`) as the fake keys it: the team id lowercase; None for
/// anything but `chats/{c}/messages/{m}`, `teams/{t}/channels/{c}/messages/{m}` and `…/{root}/replies/{m}`.
fn canonical_message_path(segs: &[&str]) -> Option<String> {
    match segs {
        ["chats", _, "messages", _]
        | ["teams", _, "channels", _, "messages", _]
        | ["teams", _, "channels", _, "messages", _, "replies", _] => {
            let mut v: Vec<String> = segs.iter().map(|x| (*x).to_owned()).collect();
            if v[0] == "teams" {
                v[1] = v[1].to_ascii_lowercase();
            }
            Some(v.join("/"))
        }
        _ => None,
    }
}

/// Graph's `chatMessage` for a channel message (a root post when `root_id` is None, else a reply).
pub fn channel_message_json(
    team_id: &str,
    channel_id: &str,
    message_id: &str,
    root_id: Option<&str>,
    from: Value,
    html: &str,
    attachments: Value,
) -> Value {
    let now = now_rfc3339();
    json!({
        "id": message_id, "replyToId": root_id, "etag": message_id, "messageType": "message",
        "createdDateTime": now, "lastModifiedDateTime": now, "lastEditedDateTime": null, "deletedDateTime": null,
        "subject": null, "summary": null, "chatId": null, "importance": "normal", "locale": "en-us",
        "from": from, "body": {"contentType": "html", "content": html}, "attachments": attachments,
        "mentions": [], "reactions": [], "channelIdentity": {"teamId": team_id, "channelId": channel_id},
    })
}

/// The team a channel path names, if the Agent User may read it: 400 for a team id that is not a group id
/// (a GUID; Graph rejects a `19:…@thread.tacv2` thread id), 404 for an unknown team, 403 for a non-member.
fn readable_team<'a>(s: &GraphState, teams: &'a [Team], team_id: &str) -> Result<&'a Team, Box<Response>> {
    if !is_guid(team_id) {
        return Err(Box::new(error(
            400,
            "BadRequest",
            &format!("Invalid team id '{team_id}': a team is addressed by its group id (a GUID)."),
        )));
    }
    let Some(team) = teams.iter().find(|t| t.id.eq_ignore_ascii_case(team_id)) else {
        return Err(Box::new(error(404, "NotFound", &format!("No team found with Group Id {team_id}."))));
    };
    if !team.members.iter().any(|m| m.eq_ignore_ascii_case(&s.agent_oid)) {
        return Err(Box::new(error(403, "Forbidden", "Forbidden: the caller is not a member of the team.")));
    }
    Ok(team)
}

/// One message by its path (decoded segments after `/v1.0/`), with the checks Graph makes: a denied chat
/// answers 403; a team as [`readable_team`]; a root only at `…/messages/{id}`, a reply only under its root.
fn find_message(s: &GraphState, segs: &[&str]) -> Result<Value, Box<Response>> {
    let not_found = || Box::new(error(404, "NotFound", "Message not found."));
    match segs {
        ["chats", id, "messages", mid] => {
            let chats = s.chats.lock().unwrap();
            let Some(c) = chats.iter().find(|c| c.id == *id) else { return Err(Box::new(error(404, "NotFound", "Chat not found"))) };
            if c.denied {
                return Err(Box::new(error(403, "Forbidden", "Forbidden: the caller is not a member of the chat.")));
            }
            c.messages.iter().find(|x| x["id"] == *mid).cloned().ok_or_else(not_found)
        }
        ["teams", team_id, "channels", channel, "messages", rest @ ..] => {
            let (root, mid) = match rest {
                [mid] => (None, *mid),
                [root, "replies", mid] => (Some(*root), *mid),
                _ => return Err(Box::new(error(404, "UnknownRequest", &format!("{} is not served by the fake", segs.join("/"))))),
            };
            let teams = s.teams.lock().unwrap();
            let team = readable_team(s, &teams, team_id)?;
            if !team.channels.iter().any(|c| c == channel) {
                return Err(Box::new(error(404, "NotFound", &format!("Channel {channel} not found."))));
            }
            team.messages
                .iter()
                .find(|m| m.channel == *channel && m.root.as_deref() == root && m.json["id"] == mid)
                .map(|m| m.json.clone())
                .ok_or_else(not_found)
        }
        _ => Err(Box::new(error(404, "UnknownRequest", &format!("{} is not served by the fake", segs.join("/"))))),
    }
}

/// `…/messages/{id}/hostedContents/{id}/$value`: the bytes of an inline image of a readable message.
fn hosted_value(s: &GraphState, msg: &[&str], hosted_id: &str) -> Response {
    let Some(path) = canonical_message_path(msg) else {
        return error(404, "UnknownRequest", &format!("{}/hostedContents is not served by the fake", msg.join("/")));
    };
    if let Err(r) = find_message(s, msg) {
        return *r;
    }
    let hosted = s.hosted_contents.lock().unwrap();
    match hosted.iter().find(|h| h.message_path == path && h.id == hosted_id) {
        Some(h) => {
            let mut r = (StatusCode::OK, h.bytes.clone()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(&h.content_type).unwrap());
            r
        }
        None => error(404, "NotFound", "Hosted content not found."),
    }
}

fn chat_json(c: &Chat) -> Value {
    json!({"id": c.id, "chatType": c.chat_type, "topic": c.topic, "createdDateTime": "2026-11-22T08:00:00Z", "tenantId": "cccccccc-0000-0000-0000-000000000003", "webUrl": "https://teams.microsoft.com/l/chat/x"})
}

fn member_view(i: usize, m: &Value) -> Value {
    let key = bind_key(m["user@odata.bind"].as_str().unwrap_or("")).unwrap_or_default();
    json!({"id": format!("member-{i}"), "displayName": key, "roles": m["roles"], "userId": key, "email": if key.contains('@') { key.clone() } else { String::new() }, "tenantId": m.get("tenantId").cloned().unwrap_or(json!("cccccccc-0000-0000-0000-000000000003"))})
}

/// The key inside `https://graph.microsoft.com/v1.0/users('…')`, with `''` undone; lone quotes are an error.
fn bind_key(bind: &str) -> Result<String, String> {
    let inner = bind
        .strip_prefix("https://graph.microsoft.com/v1.0/users('")
        .and_then(|r| r.strip_suffix("')"))
        .ok_or_else(|| format!("user@odata.bind `{bind}` is not https://graph.microsoft.com/v1.0/users('…')"))?;
    let undone = inner.replace("''", "");
    if undone.contains('\'') {
        return Err(format!("user@odata.bind `{bind}`: a quote in the key is not doubled"));
    }
    Ok(inner.replace("''", "'"))
}

fn check_member(m: &Value) -> Result<(), String> {
    let obj = m.as_object().ok_or("a member must be an object")?;
    if let Some(k) = obj.keys().find(|k| !["@odata.type", "roles", "user@odata.bind", "tenantId"].contains(&k.as_str())) {
        return Err(format!("unexpected member property '{k}'"));
    }
    if m["@odata.type"] != "#microsoft.graph.aadUserConversationMember" {
        return Err("@odata.type must be #microsoft.graph.aadUserConversationMember".into());
    }
    if m["roles"] != json!(["owner"]) {
        return Err("roles must be [\"owner\"]".into());
    }
    let key = bind_key(m["user@odata.bind"].as_str().ok_or("user@odata.bind is required")?)?;
    let external = key.contains('@') && !key.to_ascii_lowercase().ends_with(&format!("@{HOME_DOMAIN}"));
    match m.get("tenantId").and_then(Value::as_str) {
        Some(t) if t.len() == 36 => Ok(()),
        Some(t) => Err(format!("tenantId `{t}` is not a tenant id")),
        None if external => Err(format!("`{key}` is outside the tenant: bind them by email with their home tenantId")),
        None => Ok(()),
    }
}

fn create_chat(s: &GraphState, body: Option<Value>) -> Response {
    let Some(b) = body else { return bad("A body is required.") };
    if let Some(k) = b.as_object().and_then(|o| o.keys().find(|k| !["chatType", "members", "topic"].contains(&k.as_str())).cloned()) {
        return bad(&format!("unexpected property '{k}'"));
    }
    let members = b["members"].as_array().cloned().unwrap_or_default();
    for m in &members {
        if let Err(why) = check_member(m) {
            return bad(&why);
        }
    }
    let keys: Vec<String> = members.iter().filter_map(|m| bind_key(m["user@odata.bind"].as_str()?).ok()).collect();
    if !keys.iter().any(|k| *k == s.agent_oid || k.eq_ignore_ascii_case(&s.agent_upn)) {
        return bad("The caller must be a member of the chat.");
    }
    let chat_type = b["chatType"].as_str().unwrap_or("").to_owned();
    let ok = match chat_type.as_str() {
        "oneOnOne" => members.len() == 2 && b.get("topic").is_none(),
        "group" => members.len() >= 3,
        _ => false,
    };
    if !ok {
        return bad("chatType and members do not agree (oneOnOne: 2 members, no topic; group: at least 3).");
    }
    let n = s.seq.fetch_add(1, Ordering::SeqCst);
    let id = if chat_type == "oneOnOne" { format!("19:{}_{n}@unq.gbl.spaces", s.agent_oid) } else { format!("19:group{n}@thread.v2") };
    let chat = Chat { id, chat_type, topic: b["topic"].as_str().map(str::to_owned), members, messages: Vec::new(), denied: false };
    let out = chat_json(&chat);
    s.chats.lock().unwrap().push(chat);
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

fn check_message(b: &Value) -> Result<(), String> {
    let obj = b.as_object().ok_or("the message must be an object")?;
    if let Some(k) = obj.keys().find(|k| !["body", "mentions", "attachments"].contains(&k.as_str())) {
        return Err(format!("unexpected property '{k}'"));
    }
    if b["body"]["contentType"] != "html" {
        return Err("body.contentType must be html".into());
    }
    let content = b["body"]["content"].as_str().ok_or("body.content is required")?;
    let mentions = b.get("mentions").and_then(Value::as_array).cloned().unwrap_or_default();
    let attachments = b.get("attachments").and_then(Value::as_array).cloned().unwrap_or_default();
    let total = content.chars().count() + attachments.iter().map(|a| a["content"].as_str().map_or(0, |c| c.chars().count())).sum::<usize>();
    if total > 28_000 {
        return Err("The message is too large.".into());
    }
    for m in &mentions {
        let (Some(id), Some(text)) = (m["id"].as_u64(), m["mentionText"].as_str()) else {
            return Err("a mention needs id and mentionText".into());
        };
        if m["mentioned"]["user"]["userIdentityType"] != "aadUser" || m["mentioned"]["user"]["id"].as_str().is_none_or(str::is_empty) {
            return Err("mentioned.user needs id and userIdentityType aadUser".into());
        }
        if !content.contains(&format!("<at id=\"{id}\">{}</at>", escape(text))) {
            return Err(format!("mention {id} has no matching <at id=\"{id}\"> tag with its escaped text"));
        }
    }
    let at_tags = content.matches("<at id=").count();
    if at_tags != mentions.len() {
        return Err(format!("{at_tags} <at> tags but {} mentions", mentions.len()));
    }
    for a in &attachments {
        let id = a["id"].as_str().ok_or("an attachment needs an id")?;
        if a["contentType"] != "application/vnd.microsoft.card.adaptive" {
            return Err("only adaptive card attachments are accepted here".into());
        }
        serde_json::from_str::<Value>(a["content"].as_str().ok_or("attachment content must be a JSON string")?)
            .map_err(|_| "attachment content is not JSON")?;
        if !content.contains(&format!("<attachment id=\"{id}\"></attachment>")) {
            return Err(format!("attachment {id} is not referenced in the body"));
        }
    }
    Ok(())
}

fn post_message(s: &GraphState, chat_id: &str, body: Option<Value>) -> Response {
    let Some(b) = body else { return bad("A body is required.") };
    if let Err(why) = check_message(&b) {
        return bad(&why);
    }
    let mut chats = s.chats.lock().unwrap();
    let Some(c) = chats.iter_mut().find(|c| c.id == chat_id) else { return error(404, "NotFound", "Chat not found") };
    let id = format!("{}", 1_800_000_000_000u64 + s.seq.fetch_add(1, Ordering::SeqCst) as u64);
    let mut msg = b.clone();
    msg["id"] = json!(id);
    msg["chatId"] = json!(chat_id);
    msg["messageType"] = json!("message");
    msg["createdDateTime"] = json!("2026-11-22T08:30:00Z");
    msg["from"] = json!({"user": {"id": s.agent_oid, "displayName": "Agent User", "userIdentityType": "aadUser"}});
    if let Some(a) = msg.get_mut("attachments") {
        for att in a.as_array_mut().into_iter().flatten() {
            att["contentUrl"] = Value::Null;
        }
    }
    c.messages.push(msg.clone());
    (StatusCode::CREATED, axum::Json(msg)).into_response()
}

fn patch_message(s: &GraphState, chat_id: &str, mid: &str, body: Option<Value>) -> Response {
    let Some(b) = body else { return bad("A body is required.") };
    if let Err(why) = check_message(&b) {
        return bad(&why);
    }
    let mut chats = s.chats.lock().unwrap();
    let Some(c) = chats.iter_mut().find(|c| c.id == chat_id) else { return error(404, "NotFound", "Chat not found") };
    let Some(msg) = c.messages.iter_mut().find(|x| x["id"] == mid) else { return error(404, "NotFound", "Message not found") };
    msg["body"] = b["body"].clone();
    msg["lastModifiedDateTime"] = json!("2026-11-22T08:45:00Z");
    StatusCode::NO_CONTENT.into_response()
}

/// A page of `items` honouring `$top` and `$skiptoken` (an offset), with a nextLink when more remain.
fn page(s: &GraphState, path: &str, items: Vec<Value>, query: &HashMap<String, String>) -> Response {
    let size = query.get("$top").and_then(|t| t.parse::<usize>().ok()).unwrap_or(50).min(*s.page_size.lock().unwrap());
    let offset = query.get("$skiptoken").and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    let chunk: Vec<Value> = items.iter().skip(offset).take(size).cloned().collect();
    let mut out = json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#collection", "value": chunk});
    if offset + size < items.len() {
        let link = s
            .next_link
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| format!("{}/v1.0/{path}?$top={size}&$skiptoken={}", s.base, offset + size));
        out["@odata.nextLink"] = json!(link);
    }
    axum::Json(out).into_response()
}

/// Graph's `from` for a person.
pub fn person(oid: &str, name: &str) -> Value {
    json!({"application": null, "device": null, "user": {"@odata.type": "#microsoft.graph.teamworkUserIdentity", "id": oid, "displayName": name, "userIdentityType": "aadUser", "tenantId": "cccccccc-0000-0000-0000-000000000003"}})
}

/// Graph's `from` for a bot.
pub fn bot_sender(app_id: &str) -> Value {
    json!({"user": null, "device": null, "application": {"id": app_id, "displayName": "Some Bot", "applicationIdentityType": "bot"}})
}

/// A mention of `oid` as Graph lists it (`<at id="N">text</at>` in the body).
pub fn mention(n: u32, oid: &str, text: &str) -> Value {
    json!({"id": n, "mentionText": text, "mentioned": {"application": null, "device": null, "conversation": null, "tag": null, "user": {"id": oid, "displayName": text, "userIdentityType": "aadUser"}}})
}

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil(days);
    // Seven fraction digits, as Graph writes them.
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}0000Z", rem / 3600, rem % 3600 / 60, rem % 60, ms.rem_euclid(1000))
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A time with any number of fraction digits, comparable as text (fraction padded to 7 digits).
fn normalize_time(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (main, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{main}.{frac:0<7}Z")
}

fn https_client(s: &GraphState) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
    if let Some(pem) = s.trust.lock().unwrap().as_deref() {
        b = b.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]);
    }
    b.build().unwrap()
}

fn sub_json(sub: &Sub) -> Value {
    json!({"id": sub.id, "resource": sub.resource, "changeType": "created,updated,deleted", "notificationUrl": sub.notification_url,
        "lifecycleNotificationUrl": sub.lifecycle_url, "expirationDateTime": sub.expires, "clientState": null, "includeResourceData": false})
}

/// Graph's check of a new subscription, then the validation of both URLs (plain-text echo within 10 s).
async fn create_subscription(s: &Arc<GraphState>, body: Option<Value>) -> Response {
    let Some(b) = body else { return bad("A body is required.") };
    let allowed = [
        "changeType",
        "notificationUrl",
        "lifecycleNotificationUrl",
        "resource",
        "expirationDateTime",
        "clientState",
        "includeResourceData",
    ];
    if let Some(k) = b.as_object().and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())).cloned()) {
        return bad(&format!("unexpected property '{k}'"));
    }
    let resource = b["resource"].as_str().unwrap_or_default().to_owned();
    let chats = [format!("/users/{}/chats/getAllMessages", s.agent_oid), "/me/chats/getAllMessages".to_owned()];
    let inbox = [format!("/users/{}/mailfolders('inbox')/messages", s.agent_oid), "/me/mailfolders('inbox')/messages".to_owned()];
    let mail = inbox.contains(&resource.to_ascii_lowercase());
    if !chats.contains(&resource) && !mail {
        return error(403, "Forbidden", "The resource is not the caller's chats or Inbox.");
    }
    let change = b["changeType"].as_str().unwrap_or_default();
    if change.is_empty() || !change.split(',').all(|c| ["created", "updated", "deleted"].contains(&c)) {
        return bad("changeType must be created, updated and/or deleted.");
    }
    if mail {
        // Outlook messages: at most 10,080 minutes.
        let week = {
            let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 10_080 * 60_000;
            let secs = ms / 1000;
            let (y, m, d) = civil(secs / 86_400);
            let rem = secs % 86_400;
            format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.9999999Z", rem / 3600, rem % 3600 / 60, rem % 60)
        };
        if normalize_time(b["expirationDateTime"].as_str().unwrap_or_default()) > week {
            return bad("Subscription expiration can only be 10080 minutes in the future.");
        }
    }
    let url = b["notificationUrl"].as_str().unwrap_or_default().to_owned();
    let lifecycle = b["lifecycleNotificationUrl"].as_str().unwrap_or_default().to_owned();
    if !url.starts_with("https://") {
        return bad("Subscription validation request failed. Notification endpoint must be HTTPS.");
    }
    let Some(expires) = b["expirationDateTime"].as_str().map(str::to_owned) else { return bad("expirationDateTime is required.") };
    let in_an_hour = {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 3_600_000;
        let secs = ms / 1000;
        let (y, m, d) = civil(secs / 86_400);
        let rem = secs % 86_400;
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.0000000Z", rem / 3600, rem % 3600 / 60, rem % 60)
    };
    if normalize_time(&expires) > in_an_hour && !lifecycle.starts_with("https://") {
        return bad("lifecycleNotificationUrl is required (HTTPS) when expirationDateTime is more than 1 hour away.");
    }
    let client_state = b["clientState"].as_str().unwrap_or_default().to_owned();
    if client_state.len() > 128 {
        return bad("clientState is longer than 128 characters.");
    }
    // Validation: both URLs, each must echo the token as plain text within 10 s.
    let client = https_client(s);
    for target in [&url, &lifecycle] {
        if target.is_empty() {
            continue;
        }
        let token = format!(
            "Validation: Testing client application reachability for subscription Request-Id: {}+/=",
            s.seq.fetch_add(1, Ordering::SeqCst)
        );
        let full =
            format!("{target}?validationToken={}", percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC));
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.post(&full).header("content-type", "text/plain; charset=utf-8").send(),
        )
        .await;
        let ok = match sent {
            Ok(Ok(r)) => {
                let plain =
                    r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/plain"));
                r.status() == 200 && plain && r.text().await.is_ok_and(|t| t == token)
            }
            _ => false,
        };
        if !ok {
            return bad("Subscription validation request failed. Response must exactly match validationToken query parameter.");
        }
        s.validations.fetch_add(1, Ordering::SeqCst);
    }
    let sub = Sub {
        id: format!("5ub5c41b-0000-4000-8000-{:012}", s.seq.fetch_add(1, Ordering::SeqCst)),
        resource,
        notification_url: url,
        lifecycle_url: lifecycle,
        client_state,
        expires,
        expired: false,
    };
    let out = sub_json(&sub);
    s.subs.lock().unwrap().push(sub);
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

// ------------------------------------------------------------ files

fn file_error(status: u16, code: &str, message: &str) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// The SharePoint-like host: pre-authenticated downloads and upload sessions (see the module docs).
fn file_host(s: &GraphState, method: &Method, rest: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let content_range = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let authorization = headers.contains_key(header::AUTHORIZATION);
    let mut d = s.drive.lock().unwrap();
    d.seen.push(FileSeen { method: method.to_string(), path: rest.to_owned(), content_range: content_range.clone(), authorization });
    if authorization {
        return file_error(401, "unauthenticated", "Pre-authenticated URLs take no Authorization header.");
    }
    let fault = d.faults.pop_front();
    match fault {
        Some(FileFault::Throttle(after)) => {
            let mut r = file_error(429, "activityLimitReached", "Throttled");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&after).unwrap());
            return r;
        }
        Some(FileFault::Status(code)) => return file_error(code, "injected", "injected failure"),
        _ => {}
    }
    let land_then = match fault {
        Some(FileFault::LandThen(code)) => Some(code),
        _ => None,
    };
    if let Some(token) = rest.strip_prefix("download/") {
        if method != Method::GET {
            return file_error(405, "notAllowed", "GET only");
        }
        return match d.hosted.get(token) {
            Some((bytes, ct)) => {
                let mut r = (StatusCode::OK, bytes.clone()).into_response();
                if !ct.is_empty() {
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
                }
                r
            }
            None => file_error(404, "itemNotFound", "The download link expired."),
        };
    }
    let Some(id) = rest.strip_prefix("upload/") else { return file_error(404, "notFound", "unknown file host path") };
    let id = id.to_owned();
    if !d.sessions.contains_key(&id) {
        return file_error(404, "itemNotFound", "The upload session was not found.");
    }
    if *method == Method::GET {
        let sess = &d.sessions[&id];
        return axum::Json(json!({"expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": [format!("{}-", sess.next)]}))
            .into_response();
    }
    if *method != Method::PUT {
        return file_error(405, "notAllowed", "PUT fragments, GET the status");
    }
    // Content-Range: bytes a-b/total, exactly.
    let Some((a, b, total)) = content_range.as_deref().and_then(parse_range) else {
        return file_error(400, "invalidRange", "Content-Range must be bytes first-last/total.");
    };
    let len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if len != Some(b - a + 1) || body.len() as u64 != b - a + 1 {
        return file_error(400, "invalidRequest", "Content-Length does not match the Content-Range and the body.");
    }
    if b - a + 1 > 60 * 1024 * 1024 {
        return file_error(413, "requestTooLarge", "A fragment must be smaller than 60 MiB.");
    }
    let sess = d.sessions.get_mut(&id).unwrap();
    if sess.done {
        return file_error(409, "uploadComplete", "The upload session is complete.");
    }
    if sess.total.is_some_and(|t| t != total) {
        return file_error(400, "invalidRange", "The total size changed between fragments.");
    }
    if a != sess.next {
        let why = if a < sess.next { "The fragment overlaps data already received." } else { "The fragment leaves a gap." };
        return file_error(416, "invalidRange", why);
    }
    let last = b + 1 == total;
    if !last && (b - a + 1) % (320 * 1024) != 0 {
        return file_error(400, "invalidRange", "A fragment other than the last must be a multiple of 320 KiB.");
    }
    sess.total = Some(total);
    sess.data.extend_from_slice(body);
    sess.fragments.push((a, b, total));
    sess.next = b + 1;
    if let Some(code) = land_then {
        return file_error(code, "injected", "the fragment landed; the answer was lost");
    }
    if !last {
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({"expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": [format!("{}-", b + 1)]})),
        )
            .into_response();
    }
    sess.done = true;
    let data = sess.data.clone();
    match sess.target.clone() {
        Some((drive, path, conflict)) => match put_file(&mut d, &drive, &path, &data, "application/octet-stream", &conflict) {
            Ok(item) => (StatusCode::CREATED, axum::Json(item)).into_response(),
            Err(r) => *r,
        },
        None => (StatusCode::CREATED, axum::Json(json!({"id": format!("consent-{id}"), "size": data.len()}))).into_response(),
    }
}

fn parse_range(v: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?, total.parse::<u64>().ok()?);
    (a <= b && b < total).then_some((a, b, total))
}

fn drive_item_json(f: &DriveFile) -> Value {
    let parent = f.path.rsplit_once('/').map_or(String::new(), |(p, _)| format!("/{p}"));
    let name = f.path.rsplit('/').next().unwrap_or_default();
    json!({"id": f.id, "name": name, "size": f.bytes.len(), "webUrl": f.web_url, "eTag": format!("\"{{{}}},1\"", f.id),
           "lastModifiedDateTime": "2026-11-22T09:00:00Z", "file": {"mimeType": f.mime},
           "parentReference": {"driveId": f.drive, "path": format!("/drive/root:{parent}")}})
}

fn folder_json(drive: &str, path: &str, children: usize) -> Value {
    let name = path.rsplit('/').next().unwrap_or_default();
    json!({"id": format!("folder:{path}"), "name": name, "folder": {"childCount": children}, "parentReference": {"driveId": drive}})
}

/// Store a file at `path` of `drive` with a conflict behaviour; the item, or the error response.
fn put_file(d: &mut DriveState, drive: &str, path: &str, bytes: &[u8], mime: &str, conflict: &str) -> Result<Value, Box<Response>> {
    let mut path = path.to_owned();
    if let Some(i) = d.files.iter().position(|f| f.drive == drive && f.path == path) {
        match conflict {
            "replace" => {
                d.files[i].bytes = bytes.to_vec();
                return Ok(drive_item_json(&d.files[i]));
            }
            "fail" => return Err(Box::new(file_error(409, "nameAlreadyExists", "The specified item name already exists."))),
            _ => {
                let (stem, ext) = path.rsplit_once('.').map_or((path.clone(), String::new()), |(a, b)| (a.to_owned(), format!(".{b}")));
                path = format!("{stem} 1{ext}");
            }
        }
    }
    d.seq += 1;
    let id = format!("01ITEM{:04}", d.seq);
    let web_url = format!("https://contoso-my.sharepoint.com/personal/agent/Documents/{}", path.replace(' ', "%20"));
    let f = DriveFile { id, drive: drive.to_owned(), path, bytes: bytes.to_vec(), mime: mime.to_owned(), web_url };
    let out = drive_item_json(&f);
    d.files.push(f);
    Ok(out)
}

/// What a drive URL names: the drive, and the item with what follows it.
enum Target {
    Root,
    Id(String),
    Path(String),
}

fn drive_route(
    s: &GraphState,
    m: &str,
    segments: &[String],
    query: &HashMap<String, String>,
    json_body: Option<Value>,
    raw: &Bytes,
) -> Response {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    if let ["sites"] = segs.as_slice() {
        let Some(q) = query.get("search").filter(|q| !q.is_empty()) else { return bad("search is required.") };
        let sites: Vec<Value> = s
            .drive
            .lock()
            .unwrap()
            .sites
            .iter()
            .filter(|x| x["name"].as_str().unwrap_or("").to_lowercase().contains(&q.to_lowercase()))
            .cloned()
            .collect();
        return page(s, "sites", sites, query);
    }
    // /shares/{share id}/driveItem[/content]
    if let ["shares", share, "driveItem", rest @ ..] = segs.as_slice() {
        let Some(url) = share
            .strip_prefix("u!")
            .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b).ok())
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return bad("The share id is not u! and unpadded base64url.");
        };
        let d = s.drive.lock().unwrap();
        let Some(f) = d.files.iter().find(|f| f.web_url == url).cloned() else {
            return error(404, "itemNotFound", "The sharing link is not valid.");
        };
        drop(d);
        return match (m, rest) {
            ("GET", []) => axum::Json(drive_item_json(&f)).into_response(),
            ("GET", ["content"]) => redirect_to(s, &f),
            _ => error(400, "invalidRequest", "unsupported on a share"),
        };
    }
    let (drive, rest): (String, &[&str]) = match segs.as_slice() {
        ["me", "drive", rest @ ..] => ("me".to_owned(), rest),
        ["sites", id, "drive", rest @ ..] => ((*id).to_owned(), rest),
        _ => return error(404, "UnknownRequest", "unknown drive path"),
    };
    let (target, action): (Target, &[&str]) = match rest {
        ["root", action @ ..] => (Target::Root, action),
        ["items", id, action @ ..] => (Target::Id((*id).to_owned()), action),
        [first, more @ ..] if first.starts_with("root:") => {
            // root:/a/b.txt: → ["root:", "a", "b.txt:", …]
            let Some(end) = more.iter().position(|p| p.ends_with(':')) else { return bad("A path must end with ':'.") };
            let parts: Vec<&str> = more[..=end].iter().map(|p| p.trim_end_matches(':')).collect();
            if parts.iter().any(|p| p.is_empty()) {
                return bad("Empty path segment.");
            }
            (Target::Path(parts.join("/")), &more[end + 1..])
        }
        _ => return error(404, "UnknownRequest", "unknown drive item path"),
    };
    let mut d = s.drive.lock().unwrap();
    let find = |d: &DriveState| -> Option<DriveFile> {
        match &target {
            Target::Id(id) => d.files.iter().find(|f| f.drive == drive && f.id == *id).cloned(),
            Target::Path(p) => d.files.iter().find(|f| f.drive == drive && f.path == *p).cloned(),
            Target::Root => None,
        }
    };
    let folder_path = match &target {
        Target::Root => Some(String::new()),
        Target::Id(id) => id.strip_prefix("folder:").map(str::to_owned),
        Target::Path(p) if find(&d).is_none() && d.files.iter().any(|f| f.drive == drive && f.path.starts_with(&format!("{p}/"))) => {
            Some(p.clone())
        }
        Target::Path(_) => None,
    };
    match (m, action) {
        ("GET", []) => match (find(&d), &folder_path) {
            (Some(f), _) => axum::Json(drive_item_json(&f)).into_response(),
            (None, Some(p)) => axum::Json(folder_json(&drive, p, 0)).into_response(),
            _ => error(404, "itemNotFound", "The resource could not be found."),
        },
        ("GET", ["children"]) => {
            let Some(p) = folder_path else { return error(404, "itemNotFound", "Not a folder.") };
            let prefix = if p.is_empty() { String::new() } else { format!("{p}/") };
            let mut folders: Vec<String> = Vec::new();
            let mut items = Vec::new();
            for f in d.files.iter().filter(|f| f.drive == drive && f.path.starts_with(&prefix)) {
                let rest = &f.path[prefix.len()..];
                match rest.split_once('/') {
                    None => items.push(drive_item_json(f)),
                    Some((dir, _)) if !folders.contains(&dir.to_owned()) => folders.push(dir.to_owned()),
                    _ => {}
                }
            }
            let mut all: Vec<Value> = folders.iter().map(|f| folder_json(&drive, &format!("{prefix}{f}"), 1)).collect();
            all.extend(items);
            drop(d);
            page(s, &segments.join("/"), all, query)
        }
        ("GET", [search]) if search.starts_with("search(q='") && search.ends_with("')") && matches!(target, Target::Root) => {
            let q = &search["search(q='".len()..search.len() - 2];
            if q.replace("''", "").contains('\'') {
                return bad("A quote in the search text must be doubled.");
            }
            let q = q.replace("''", "'").to_lowercase();
            let hits: Vec<Value> = d
                .files
                .iter()
                .filter(|f| f.drive == drive)
                .filter(|f| f.path.to_lowercase().contains(&q) || String::from_utf8_lossy(&f.bytes).to_lowercase().contains(&q))
                .map(drive_item_json)
                .collect();
            drop(d);
            page(s, &segments.join("/"), hits, query)
        }
        ("GET", ["content"]) => match find(&d) {
            Some(f) => {
                drop(d);
                redirect_to(s, &f)
            }
            None => error(404, "itemNotFound", "The resource could not be found."),
        },
        ("PUT", ["content"]) => {
            let Target::Path(p) = &target else { return bad("Upload by path: root:/path:/content.") };
            let conflict = query.get("@microsoft.graph.conflictBehavior").cloned().unwrap_or_else(|| "fail".into());
            if !["rename", "replace", "fail"].contains(&conflict.as_str()) {
                return bad("Invalid conflict behavior.");
            }
            match put_file(&mut d, &drive, p, raw, "application/octet-stream", &conflict) {
                Ok(item) => (StatusCode::CREATED, axum::Json(item)).into_response(),
                Err(r) => *r,
            }
        }
        ("POST", ["createUploadSession"]) => {
            let Target::Path(p) = &target else { return bad("An upload session is created by path.") };
            let body = json_body.unwrap_or(json!({}));
            if body.as_object().is_some_and(|o| o.keys().any(|k| k != "item"))
                || body["item"].as_object().is_some_and(|o| o.keys().any(|k| k != "@microsoft.graph.conflictBehavior" && k != "name"))
            {
                return bad("unexpected property in the upload session request");
            }
            let conflict = body["item"]["@microsoft.graph.conflictBehavior"].as_str().unwrap_or("fail").to_owned();
            d.seq += 1;
            let id = format!("up{}", d.seq);
            d.sessions.insert(id.clone(), UploadSession { target: Some((drive.clone(), p.clone(), conflict)), ..Default::default() });
            axum::Json(json!({"uploadUrl": format!("{}/sp/upload/{id}?guid=g{}", s.base, d.seq), "expirationDateTime": "2030-01-01T00:00:00Z", "nextExpectedRanges": ["0-"]})).into_response()
        }
        ("POST", ["createLink"]) => {
            let Target::Id(item_id) = &target else { return bad("createLink takes an item id.") };
            if find(&d).is_none() {
                return error(404, "itemNotFound", "The resource could not be found.");
            }
            let Some(b) = json_body else { return bad("A body is required.") };
            let allowed = [
                "type",
                "scope",
                "recipients",
                "expirationDateTime",
                "password",
                "retainInheritedPermissions",
                "sendNotification",
                "message",
            ];
            if let Some(k) = b.as_object().and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())).cloned()) {
                return bad(&format!("unexpected property '{k}'"));
            }
            let kind = b["type"].as_str().unwrap_or("");
            let scope = b["scope"].as_str().unwrap_or("");
            if !["view", "edit", "embed"].contains(&kind) || !["anonymous", "organization", "users"].contains(&scope) {
                return bad("type must be view, edit or embed; scope anonymous, organization or users.");
            }
            let recipients = b.get("recipients").and_then(Value::as_array).cloned().unwrap_or_default();
            if (scope == "users") == recipients.is_empty() {
                return bad("recipients are required for scope users, and only for it.");
            }
            for r in &recipients {
                let keys: Vec<&String> = r.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                if keys.len() != 1
                    || !["email", "objectId", "alias"].contains(&keys[0].as_str())
                    || r[keys[0].as_str()].as_str().is_none_or(str::is_empty)
                {
                    return bad("a recipient has exactly one of email, objectId or alias");
                }
            }
            d.seq += 1;
            let n = d.seq;
            let mut recorded = b.clone();
            recorded["itemId"] = json!(item_id);
            d.links.push(recorded);
            let role = if kind == "edit" { "write" } else { "read" };
            axum::Json(json!({"id": format!("perm{n}"), "roles": [role], "link": {"type": kind, "scope": scope,
                "webUrl": format!("https://contoso-my.sharepoint.com/:t:/g/personal/agent/E{n}")}}))
            .into_response()
        }
        _ => error(400, "invalidRequest", &format!("{m} {} is not served by the fake", segments.join("/"))),
    }
}

/// `…/content`: 302 to a fresh pre-authenticated download on the file host.
fn redirect_to(s: &GraphState, f: &DriveFile) -> Response {
    let mut d = s.drive.lock().unwrap();
    d.seq += 1;
    let token = format!("dl{}", d.seq);
    d.hosted.insert(token.clone(), (f.bytes.clone(), f.mime.clone()));
    let location = format!("{}/sp/download/{token}?tempauth=v1.pre-authenticated-{}", s.base, d.seq);
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// The fake's channel, reply, group chat and hosted content reads, with their membership and id rules.
#[tokio::test]
async fn fake_graph_channel_and_hosted_contents() {
    const AGENT: &str = "aaaaaaaa-0000-0000-0000-00000000a9e7";
    const TEAM: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const OTHER_TEAM: &str = "11111111-2222-3333-4444-555555555555";
    const CHANNEL: &str = "19:abc@thread.tacv2";
    const CHAT: &str = "19:g@thread.v2";
    let graph = FakeGraph::start(Arc::new(|t: &str| t == "agent-token"), AGENT, "agent@contoso.onmicrosoft.test").await;
    graph.add_team(TEAM, &["bbbbbbbb-0000-0000-0000-000000000001", AGENT]);
    graph.add_team(OTHER_TEAM, &["bbbbbbbb-0000-0000-0000-000000000001"]);
    let alice = person("bbbbbbbb-0000-0000-0000-000000000001", "Alice");
    let file = json!([{"id": "f1", "contentType": "reference", "contentUrl": "https://contoso.sharepoint.com/x.txt", "name": "x.txt"}]);
    graph.put_channel_message(TEAM, CHANNEL, "1700", None, alice.clone(), "<p>root</p>", file.clone());
    graph.put_channel_message(TEAM, CHANNEL, "1701", Some("1700"), alice.clone(), "<p>reply</p>", json!([]));
    graph.put_channel_message(OTHER_TEAM, CHANNEL, "1700", None, alice.clone(), "<p>hidden</p>", json!([]));
    graph.add_chat(CHAT, "group");
    graph.put_chat_message(CHAT, "1800", alice.clone(), "<p>chat</p>", file.clone());
    let (chat_hid, chat_url) = graph.add_hosted_content(&format!("chats/{CHAT}/messages/1800"), "0-wus-d1-aaaa", b"PNGCHAT", "image/png");
    let reply_path = format!("teams/{TEAM}/channels/{CHANNEL}/messages/1700/replies/1701");
    let (reply_hid, reply_url) = graph.add_hosted_content(&reply_path, "0-wus-d1-bbbb", b"JPEGREPLY", "image/jpeg");
    {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(&chat_hid).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "id=x_0-wus-d1-aaaa,type=1,url=https://us-api.asm.skype.com/v1/objects/0-wus-d1-aaaa/views/imgo"
        );
    }
    assert_eq!(chat_url, format!("{}/chats/{CHAT}/messages/1800/hostedContents/{chat_hid}/$value", graph.base_url()));

    let http = reqwest::Client::new();
    let base = graph.base_url();
    let e = enc;
    let get = |url: String, token: Option<&'static str>| {
        let mut r = http.get(url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            (status, ct, r.bytes().await.unwrap().to_vec())
        }
    };
    let json_of = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
    let channel_url = format!("{base}/teams/{TEAM}/channels/{}/messages", e(CHANNEL));

    // Root post and reply.
    let (st, _, b) = get(format!("{channel_url}/1700"), Some("agent-token")).await;
    assert_eq!(st, 200);
    let root = json_of(&b);
    assert_eq!((root["id"].as_str(), root["replyToId"].is_null()), (Some("1700"), true));
    assert_eq!(root["channelIdentity"], json!({"teamId": TEAM, "channelId": CHANNEL}));
    assert_eq!(root["body"], json!({"contentType": "html", "content": "<p>root</p>"}));
    assert_eq!(root["attachments"], file);
    let (st, _, b) = get(format!("{channel_url}/1700/replies/1701"), Some("agent-token")).await;
    assert_eq!(st, 200);
    let reply = json_of(&b);
    assert_eq!((reply["id"].as_str(), reply["replyToId"].as_str()), (Some("1701"), Some("1700")));
    // A reply is not a root, and not a reply of another root.
    assert_eq!(get(format!("{channel_url}/1701"), Some("agent-token")).await.0, 404);
    assert_eq!(get(format!("{channel_url}/1701/replies/1700"), Some("agent-token")).await.0, 404);
    assert_eq!(get(format!("{base}/teams/{TEAM}/channels/{}/messages/1700", e("19:nope@thread.tacv2")), Some("agent-token")).await.0, 404);

    // A thread id where the group id belongs; a team without the Agent User; an unknown team.
    let (st, _, b) = get(format!("{base}/teams/{}/channels/{}/messages/1700", e(CHANNEL), e(CHANNEL)), Some("agent-token")).await;
    assert_eq!((st, json_of(&b)["error"]["code"].as_str()), (400, Some("BadRequest")));
    let (st, _, b) = get(format!("{base}/teams/{OTHER_TEAM}/channels/{}/messages/1700", e(CHANNEL)), Some("agent-token")).await;
    assert_eq!((st, json_of(&b)["error"]["code"].as_str()), (403, Some("Forbidden")));
    let unknown = "99999999-2222-3333-4444-555555555555";
    assert_eq!(get(format!("{base}/teams/{unknown}/channels/{}/messages/1700", e(CHANNEL)), Some("agent-token")).await.0, 404);

    // Hosted contents: the chat message's and the reply's, through the URLs Graph writes and encoded ones.
    let (st, ct, b) = get(chat_url.clone(), Some("agent-token")).await;
    assert_eq!((st, ct.as_str(), b.as_slice()), (200, "image/png", b"PNGCHAT".as_slice()));
    let (st, ct, b) = get(reply_url.clone(), Some("agent-token")).await;
    assert_eq!((st, ct.as_str(), b.as_slice()), (200, "image/jpeg", b"JPEGREPLY".as_slice()));
    let encoded = format!("{channel_url}/1700/replies/1701/hostedContents/{}/$value", e(&reply_hid));
    assert_eq!(get(encoded, Some("agent-token")).await.0, 200);
    // Under another message (the root), or an unknown id: 404.
    assert_eq!(get(format!("{channel_url}/1700/hostedContents/{}/$value", e(&reply_hid)), Some("agent-token")).await.0, 404);
    assert_eq!(get(format!("{channel_url}/1700/replies/1701/hostedContents/aWQ9eA==/$value"), Some("agent-token")).await.0, 404);
    // Without a token, or a wrong one: 401.
    assert_eq!(get(reply_url.clone(), None).await.0, 401);
    assert_eq!(get(reply_url.clone(), Some("other")).await.0, 401);

    // The chat message, then the Agent User loses the chat.
    let (st, _, b) = get(format!("{base}/chats/{}/messages/1800", e(CHAT)), Some("agent-token")).await;
    assert_eq!((st, json_of(&b)["attachments"].clone()), (200, file.clone()));
    graph.deny_chat(CHAT);
    for url in [format!("{base}/chats/{}/messages/1800", e(CHAT)), format!("{base}/chats/{}/messages", e(CHAT)), chat_url] {
        let (st, _, b) = get(url, Some("agent-token")).await;
        assert_eq!((st, json_of(&b)["error"]["code"].as_str()), (403, Some("Forbidden")));
    }
    assert!(graph.seen().iter().any(|x| x.path == format!("teams/{TEAM}/channels/{CHANNEL}/messages/1700/replies/1701")));
}
