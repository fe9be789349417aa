//! The administrator's Graph calls: one request at a time, the token only to an allow-listed Graph host
//! (or the configured loopback fake), redirects never followed; `--dry-run` prints each request instead
//! and answers it from placeholders.

use std::fmt;
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::ids::graph_url::GraphEndpoint;

/// Longest Graph error message kept.
const MAX_MESSAGE: usize = 400;

/// One Graph request: a path under the API base (`applications/…`), its query, its JSON body.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) body: Option<Value>,
    pub(crate) prefer: Option<&'static str>,
}

impl Req {
    pub(crate) fn get(path: impl Into<String>) -> Self {
        Self { method: Method::GET, path: path.into(), query: Vec::new(), body: None, prefer: None }
    }
    pub(crate) fn post(path: impl Into<String>, body: Value) -> Self {
        Self { method: Method::POST, path: path.into(), query: Vec::new(), body: Some(body), prefer: None }
    }
    pub(crate) fn patch(path: impl Into<String>, body: Value) -> Self {
        Self { method: Method::PATCH, path: path.into(), query: Vec::new(), body: Some(body), prefer: None }
    }
    pub(crate) fn delete(path: impl Into<String>) -> Self {
        Self { method: Method::DELETE, path: path.into(), query: Vec::new(), body: None, prefer: None }
    }
    pub(crate) fn q(mut self, k: &str, v: impl Into<String>) -> Self {
        self.query.push((k.to_owned(), v.into()));
        self
    }
}

impl fmt::Display for Req {
    /// `METHOD /path?query` and the body on the next line (the form `--dry-run` prints). Bodies never hold
    /// secrets: the certificate's public part is shortened to a placeholder.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} /{}", self.method, self.path)?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        if let Some(p) = self.prefer {
            write!(f, "  (Prefer: {p})")?;
        }
        if let Some(body) = &self.body {
            let mut shown = body.clone();
            if let Some(keys) = shown.get_mut("keyCredentials").and_then(Value::as_array_mut) {
                for k in keys {
                    k["key"] = json!("<the certificate's public part, base64 DER>");
                }
            }
            write!(f, "\n    {}", serde_json::to_string(&shown).unwrap_or_default())?;
        }
        Ok(())
    }
}

/// Graph's answer.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Resp {
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// The `value` array of a listing (empty when absent).
    pub(crate) fn values(&self) -> Vec<Value> {
        self.body.get("value").and_then(Value::as_array).cloned().unwrap_or_default()
    }
    /// Graph's error code and message (`error.code`, `error.message`), shortened.
    pub(crate) fn error(&self) -> GraphFailure {
        let code = self.body.pointer("/error/code").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut message = self.body.pointer("/error/message").and_then(Value::as_str).unwrap_or("").to_owned();
        if message.chars().count() > MAX_MESSAGE {
            message = message.chars().take(MAX_MESSAGE).collect::<String>() + "…";
        }
        GraphFailure { status: self.status, code, message }
    }
}

/// A Graph error as shown to the administrator (never a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphFailure {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
}

impl fmt::Display for GraphFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            0 => write!(f, "{}", self.message),
            s => write!(f, "HTTP {s} {}: {}", if self.code.is_empty() { "(no code)" } else { &self.code }, self.message),
        }
    }
}

impl GraphFailure {
    pub(crate) fn local(message: impl Into<String>) -> Self {
        Self { status: 0, code: String::new(), message: message.into() }
    }

    /// Whether this is the directory not yet seeing an object created moments ago (30–120 s): a 404, or
    /// a 400 saying a referenced object does not exist.
    pub(crate) fn is_propagation(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        self.status == 404
            || (self.status == 400
                && (m.contains("does not exist")
                    || m.contains("does not reference a valid application")
                    || m.contains("was not found")
                    || m.contains("not found")
                    || self.code == "Request_ResourceNotFound"))
    }
}

/// How long the directory's propagation is waited out: the first wait, doubled each time up to `max_wait`,
/// for at most `budget` in all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) budget: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { first: Duration::from_secs(5), max_wait: Duration::from_secs(30), budget: Duration::from_secs(180) }
    }
}

/// The administrator's Graph client, or its dry run.
pub(crate) struct Api {
    endpoint: GraphEndpoint,
    mode: Mode,
    pub(crate) backoff: Backoff,
}

enum Mode {
    Live { http: reqwest::Client, token: SecretString },
    DryRun,
}

impl Api {
    pub(crate) fn live(endpoint: GraphEndpoint, token: SecretString, backoff: Backoff) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self { endpoint, mode: Mode::Live { http, token }, backoff })
    }

    pub(crate) fn dry_run(endpoint: GraphEndpoint) -> Self {
        Self { endpoint, mode: Mode::DryRun, backoff: Backoff::default() }
    }

    pub(crate) fn is_dry_run(&self) -> bool {
        matches!(self.mode, Mode::DryRun)
    }

    /// The API base URL (`https://graph.microsoft.com/v1.0`), for `@odata.bind` values.
    pub(crate) fn base(&self) -> &str {
        self.endpoint.base()
    }

    /// The API base's path (`/v1.0`), for printing.
    pub(crate) fn base_path(&self) -> String {
        url::Url::parse(self.endpoint.base()).map(|u| u.path().trim_end_matches('/').to_owned()).unwrap_or_default()
    }

    /// Send one request (once: no retry here).
    pub(crate) async fn send(&self, req: &Req) -> Result<Resp, GraphFailure> {
        let (http, token) = match &self.mode {
            Mode::DryRun => {
                let text = {
                    let r = req.to_string();
                    let (m, rest) = r.split_once(' ').unwrap_or((&r, ""));
                    format!("{m} {}{rest}", self.base_path())
                };
                println!("{text}");
                return Ok(dry_answer(req));
            }
            Mode::Live { http, token } => (http, token),
        };
        let mut url = url::Url::parse(&format!("{}/{}", self.endpoint.base(), req.path))
            .map_err(|e| GraphFailure::local(format!("bad Graph path {}: {e}", req.path)))?;
        if !req.query.is_empty() {
            url.query_pairs_mut().extend_pairs(req.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        self.endpoint.check(&url).map_err(|e| GraphFailure::local(e.to_string()))?;
        let mut rb = http.request(req.method.clone(), url).bearer_auth(token.expose_secret()).header("Accept", "application/json");
        if let Some(p) = req.prefer {
            rb = rb.header("Prefer", p);
        }
        if let Some(b) = &req.body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| GraphFailure::local(format!("Graph did not answer: {}", crate::http_util::error_chain(&e.without_url()))))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| GraphFailure::local(format!("reading Graph's answer: {e}")))?;
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok(Resp { status, body })
    }

    /// Send, and fail unless 2xx.
    pub(crate) async fn expect(&self, req: &Req) -> Result<Resp, GraphFailure> {
        let r = self.send(req).await?;
        if r.ok() { Ok(r) } else { Err(r.error()) }
    }

    /// Send a request that refers to objects created moments ago: waits out propagation errors (404, "does
    /// not exist") with bounded backoff, saying so on stderr; any other answer is returned.
    pub(crate) async fn send_propagating(&self, req: &Req, what: &str) -> Result<Resp, GraphFailure> {
        let mut waited = Duration::ZERO;
        let mut wait = self.backoff.first;
        loop {
            let r = self.send(req).await?;
            if r.ok() || !r.error().is_propagation() || self.is_dry_run() {
                return Ok(r);
            }
            if waited + wait > self.backoff.budget {
                return Ok(r);
            }
            eprintln!(
                "  {what}: the directory does not see it yet ({}); waiting {} s ({} s of at most {} s)",
                r.error(),
                wait.as_secs_f32(),
                waited.as_secs(),
                self.backoff.budget.as_secs()
            );
            tokio::time::sleep(wait).await;
            waited += wait;
            wait = (wait * 2).min(self.backoff.max_wait);
        }
    }
}

/// What a dry run pretends Graph answered: nothing exists yet, except the facts the plan needs to go on
/// (the signed-in administrator, a verified domain, Graph's own service principal), which are placeholders.
fn dry_answer(req: &Req) -> Resp {
    let filter = req.query.iter().find(|(k, _)| k == "$filter").map(|(_, v)| v.as_str()).unwrap_or("");
    if req.method == Method::GET {
        let body = match req.path.as_str() {
            "me" => json!({"id": "<signed-in-administrator-id>"}),
            "domains" => json!({"value": [{"id": "<verified-domain>", "isVerified": true, "isDefault": true}]}),
            "servicePrincipals" if filter.contains(super::GRAPH_APP_ID) => json!({"value": [{"id": "<graph-service-principal-id>"}]}),
            _ if !req.query.is_empty() && !req.path.contains('/') && !req.path.contains('(') => json!({"value": []}),
            _ => return Resp { status: 404, body: json!({"error": {"code": "Request_ResourceNotFound", "message": "(dry run)"}}) },
        };
        return Resp { status: 200, body };
    }
    let kind = req.path.rsplit('.').next().unwrap_or("object").trim_end_matches('s');
    Resp { status: 201, body: json!({"id": format!("<new-{kind}-id>"), "appId": format!("<new-{kind}-app-id>")}) }
}

/// OData string literal content: single quotes doubled.
pub(crate) fn odata(s: &str) -> String {
    s.replace('\'', "''")
}
