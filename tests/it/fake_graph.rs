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
    if bearer.is_empty() || !(s.checker)(&bearer) {
        return error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.");
    }
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let m = method.as_str();
    match (m, segs.as_slice()) {
        ("GET", ["me"]) => user(&s, &s.agent_oid.clone()),
        ("GET", ["users", key]) => user(&s, key),
        ("POST", ["chats"]) => create_chat(&s, json_body),
        ("GET", ["chats", id]) => with_chat(&s, id, |c| axum::Json(chat_json(c)).into_response()),
        ("POST", ["chats", id, "messages"]) => post_message(&s, id, json_body),
        ("GET", ["chats", id, "messages"]) => {
            let items = match s.chats.lock().unwrap().iter().find(|c| c.id == *id) {
                Some(c) => c.messages.iter().rev().cloned().collect::<Vec<_>>(),
                None => return error(404, "NotFound", "Chat not found"),
            };
            page(&s, &format!("chats/{}/messages", enc(id)), items, &query)
        }
        ("GET", ["chats", id, "messages", mid]) => {
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
