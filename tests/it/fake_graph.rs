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
}

struct GraphState {
    base: String,
    checker: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    agent_oid: String,
    agent_upn: String,
    users: Mutex<Vec<Value>>,
    chats: Mutex<Vec<Chat>>,
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
    /// The Agent User's calendar ([`crate::fake_calendar`]).
    calendar: crate::fake_calendar::Calendar,
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
            spread_next: AtomicUsize::new(0),
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
        self.state.chats.lock().unwrap().push(Chat { id: id.clone(), chat_type: "group".into(), topic: None, members: vec![], messages });
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
        let subs: Vec<Sub> = self.state.subs.lock().unwrap().iter().filter(|s| !s.expired).cloned().collect();
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

    /// The members a chat was created with or given.
    pub fn members(&self, chat_id: &str) -> Vec<Value> {
        self.state.chats.lock().unwrap().iter().find(|c| c.id == chat_id).map(|c| c.members.clone()).unwrap_or_default()
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
    let Some(rest) = raw.strip_prefix("/v1.0/") else { return error(404, "NotFound", "only /v1.0 is served") };
    let segments: Vec<String> = rest.split('/').map(decode).collect();
    let query: HashMap<String, String> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").to_owned();
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
    });

    let canned = s.injected.lock().unwrap().pop_front();
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
    if let Some(r) = s.calendar.route(&s.base, &s.agent_upn, m, &segs, &query, &headers, json_body.clone()) {
        return r;
    }
    match (m, segs.as_slice()) {
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
            let chats = s.chats.lock().unwrap();
            match chats.iter().find(|c| c.id == *id).and_then(|c| c.messages.iter().find(|x| x["id"] == *mid)) {
                Some(msg) => axum::Json(msg.clone()).into_response(),
                None => error(404, "NotFound", "Message not found"),
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
        _ => error(404, "UnknownRequest", &format!("{m} {} is not served by the fake", segments.join("/"))),
    }
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
    let chat = Chat { id, chat_type, topic: b["topic"].as_str().map(str::to_owned), members, messages: Vec::new() };
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
    let mine = [format!("/users/{}/chats/getAllMessages", s.agent_oid), "/me/chats/getAllMessages".to_owned()];
    if !mine.contains(&resource) {
        return error(403, "Forbidden", "The resource is not the caller's chats.");
    }
    let change = b["changeType"].as_str().unwrap_or_default();
    if change.is_empty() || !change.split(',').all(|c| ["created", "updated", "deleted"].contains(&c)) {
        return bad("changeType must be created, updated and/or deleted.");
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
