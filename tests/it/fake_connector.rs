//! A strict fake of the Bot Framework Connector (as the Agents Playground serves it, under
//! `/_connector`): it checks the bearer token, the exact percent-encoding of every path segment, the
//! content type and the body, records what landed, and can answer with scripted faults.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

/// Decides whether a bearer token is one the bot legitimately holds.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

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
    (status, axum::Json(json!({"error": {"code": "BadArgument", "message": why}}))).into_response()
}

async fn handle(State(s): State<Arc<ConnectorState>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    s.seen_tokens.lock().unwrap().push(token.to_owned());
    let known = s.tokens.lock().unwrap().iter().any(|t| t == token);
    let checked = s.check.lock().unwrap().as_ref().is_some_and(|c| c(token));
    if token.is_empty() || !(known || checked) {
        return refuse(&s, StatusCode::UNAUTHORIZED, "bearer token missing or not issued for the bot");
    }
    let Some(rest) = uri.path().strip_prefix("/_connector/v3/conversations") else {
        return refuse(&s, StatusCode::NOT_FOUND, "unknown path");
    };
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    let (conversation, activity, kind) = match (method.clone(), parts.as_slice()) {
        (Method::POST, []) => (None, None, "create"),
        (Method::POST, [c, "activities"]) => (Some(*c), None, "send"),
        (Method::POST, [c, "activities", a]) => (Some(*c), Some(*a), "reply"),
        (Method::PUT, [c, "activities", a]) => (Some(*c), Some(*a), "update"),
        (Method::DELETE, [c, "activities", a]) => (Some(*c), Some(*a), "delete"),
        (Method::GET, [c, "pagedmembers"]) => (Some(*c), None, "members"),
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
    let body: Value = if matches!(kind, "delete" | "members") {
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
    if kind == "create"
        && (body["bot"]["id"].as_str().is_none()
            || body["members"].as_array().is_none_or(Vec::is_empty)
            || body["tenantId"].as_str().is_none())
    {
        return refuse(&s, StatusCode::BAD_REQUEST, "conversation parameters incomplete");
    }
    let fault = s.faults.lock().unwrap().pop_front();
    let mut landed = Landed { method: method.to_string(), conversation, activity, body, answered: None };
    match fault {
        Some(Fault::Status(code, b)) => return (StatusCode::from_u16(code).unwrap(), axum::Json(b)).into_response(),
        Some(Fault::TooMany(after)) => {
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
        None => {}
    }
    let n = s.next_id.fetch_add(1, Ordering::SeqCst);
    let answer = match kind {
        "create" => json!({"id": format!("a:created-{n}")}),
        "members" => json!({"members": [{"id": "29:user-1", "aadObjectId": "00000000-0000-0000-0000-0000000000aa"}]}),
        "delete" => {
            s.landed.lock().unwrap().push(landed);
            return StatusCode::OK.into_response();
        }
        _ => {
            landed.answered = Some(format!("1:{n}"));
            json!({"id": format!("1:{n}")})
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
