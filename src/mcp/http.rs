//! Streamable HTTP at `/mcp`: its own listener (loopback by default), bearer tokens from secret
//! sources, each token's scope, rmcp's `Host` check against `mcp.allowed_hosts`, the `Origin` check, and
//! each session bound to the token that opened it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::SessionManager as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use secrecy::ExposeSecret as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::task::JoinHandle;

use super::{Bridge, Hub, Scope};
use crate::config::McpConfig;

/// The accepted tokens, by SHA-256 (the tokens themselves are not kept).
#[derive(Clone)]
pub struct Tokens(Arc<Vec<([u8; 32], Scope)>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(_, s)| &s.name)).finish()
    }
}

impl Tokens {
    /// Load every configured token from its secret source.
    pub async fn load(cfg: &McpConfig) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for (i, t) in cfg.tokens.iter().enumerate() {
            let secret = t.token.load().await.map_err(|e| anyhow::anyhow!("configuration error in mcp.tokens[{i}].token: {e}"))?;
            let token = secret.expose_secret();
            if token.len() < 32 {
                anyhow::bail!(
                    "configuration error in mcp.tokens[{i}].token: the token is shorter than 32 characters; use a long random one (openssl rand -hex 32)"
                );
            }
            let tools = t.tool_policy().map_err(|e| anyhow::anyhow!("configuration error in mcp.tokens[{i}]: {}", e.problem))?;
            out.push((Sha256::digest(token.as_bytes()).into(), Scope::new(t.name.clone(), &t.bots, &t.tenants).with_tools(tools)));
        }
        Ok(Self(Arc::new(out)))
    }

    /// The scope of a presented token. Compares digests in constant time over every entry.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (d, scope) in self.0.iter() {
            if bool::from(d[..].ct_eq(&digest[..])) {
                found = Some(scope.clone());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn unauthorized() -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")], r#"{"error":"unauthorized"}"#).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn authenticate(State(tokens): State<Tokens>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(scope) = presented.and_then(|t| tokens.scope_of(t)) else {
        tracing::warn!("/mcp request refused: missing or unknown bearer token");
        return unauthorized();
    };
    req.extensions_mut().insert(scope);
    next.run(req).await
}

/// The header naming a Streamable HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Which token opened each session (session id → SHA-256 of the token) and when it was last used.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, Owned>>>);

#[derive(Clone, Copy)]
struct Owned {
    digest: [u8; 32],
    used: Instant,
}

/// A session with no request for this long is forgotten (rmcp's own worker ends after its keep-alive,
/// 5 minutes by default, so the session is dead by then; its handle is closed too).
const SESSION_IDLE: Duration = Duration::from_secs(15 * 60);

impl Sessions {
    /// The owner of `id`, marking the session used.
    fn owner(&self, id: &str) -> Option<[u8; 32]> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get_mut(id).map(|o| {
            o.used = Instant::now();
            o.digest
        })
    }

    fn bind(&self, id: &str, digest: [u8; 32]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned(), Owned { digest, used: Instant::now() });
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    /// Forget the sessions idle past `idle` (returned, so their rmcp handles can be closed), then count the
    /// ones `digest` holds.
    fn prune_and_count(&self, digest: &[u8; 32], idle: Duration) -> (Vec<String>, usize) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let stale: Vec<String> = map.iter().filter(|(_, o)| now.duration_since(o.used) > idle).map(|(id, _)| id.clone()).collect();
        for id in &stale {
            map.remove(id);
        }
        let held = map.values().filter(|o| same_digest(&o.digest, digest)).count();
        (stale, held)
    }
}

/// What [`guard`] checks a request against.
#[derive(Clone)]
struct Guard {
    sessions: Sessions,
    allowed_hosts: Arc<Vec<String>>,
    /// rmcp's sessions, to close the handles of the ones [`Sessions`] forgot as idle.
    manager: Arc<LocalSessionManager>,
    max_per_token: usize,
    idle: Duration,
}

/// The bearer token of a request, as [`authenticate`] reads it.
fn presented(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Equal digests, compared in constant time.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A host name for comparison: lower case, no brackets around an IPv6 address, no trailing dot.
fn bare_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a browser `Origin` may use `/mcp`: an http(s) origin whose host is a loopback name, or is
/// listed in `mcp.allowed_hosts` (an entry with a port matches that port only). `null` and anything
/// unparsable are refused.
fn origin_allowed(origin: &str, allowed_hosts: &[String]) -> bool {
    let Ok(url) = url::Url::parse(origin.trim()) else { return false };
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    let Some(host) = url.host_str().map(bare_host) else { return false };
    if matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1") {
        return true;
    }
    let port = url.port_or_known_default();
    allowed_hosts.iter().any(|entry| {
        let (h, p) = match entry.parse::<axum::http::uri::Authority>() {
            Ok(a) => (bare_host(a.host()), a.port_u16()),
            Err(_) => (bare_host(entry), None),
        };
        h == host && p.is_none_or(|p| Some(p) == port)
    })
}

fn refused(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// In front of rmcp, after [`authenticate`]: the `Origin` check (DNS rebinding), then the session's owner.
/// A session belongs to the token whose `initialize` opened it; every later request on it (POST, GET,
/// DELETE) with another token, or naming a session this listener never opened, gets 404 before rmcp
/// sees it.
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !origin.to_str().is_ok_and(|o| origin_allowed(o, &g.allowed_hosts))
    {
        tracing::warn!("/mcp request refused: its Origin is not a loopback or allowed host");
        return refused(StatusCode::FORBIDDEN, r#"{"error":"forbidden"}"#);
    }
    let Some(digest) = presented(req.headers()).map(|t| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() }) else {
        return unauthorized();
    };
    let session = req.headers().get(SESSION_HEADER).map(|v| v.to_str().map(str::to_owned));
    let session = match session {
        None => None,
        Some(Ok(id)) if g.sessions.owner(&id).is_some_and(|owner| same_digest(&owner, &digest)) => Some(id),
        Some(_) => {
            tracing::warn!("/mcp request refused: unknown session, or a session opened with another token");
            return refused(StatusCode::NOT_FOUND, r#"{"error":"session not found"}"#);
        }
    };
    if session.is_none() && req.method() == axum::http::Method::POST {
        let (stale, held) = g.sessions.prune_and_count(&digest, g.idle);
        if !stale.is_empty() {
            let manager = Arc::clone(&g.manager);
            tokio::spawn(async move {
                for id in stale {
                    let _ = manager.close_session(&id.into()).await;
                }
            });
        }
        if held >= g.max_per_token {
            tracing::warn!(held, max = g.max_per_token, "/mcp initialize refused: the token has too many open sessions");
            return refused(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"too many open MCP sessions for this token: end one (DELETE /mcp with its mcp-session-id) or wait until an idle one expires; mcp.max_sessions_per_token sets the limit"}"#,
            );
        }
    }
    let deleting = req.method() == axum::http::Method::DELETE;
    let resp = next.run(req).await;
    match session {
        // `initialize`: the new session belongs to this token.
        None => {
            if let Some(id) = resp.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
                g.sessions.bind(id, digest);
                tracing::debug!(session = id, "MCP session opened");
            }
        }
        Some(id) => {
            if (deleting && resp.status().is_success()) || resp.status() == StatusCode::NOT_FOUND {
                g.sessions.forget(&id);
            }
        }
    }
    resp
}

/// The `/mcp` router over a hub.
pub fn router(hub: Arc<Hub>, tokens: Tokens, cfg: &McpConfig) -> Router {
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(cfg.allowed_hosts.clone());
    let manager = Arc::new(LocalSessionManager::default());
    let service = StreamableHttpService::new(move || Ok(Bridge::http(Arc::clone(&hub))), Arc::clone(&manager), config);
    let guard_state = Guard {
        sessions: Sessions::default(),
        allowed_hosts: Arc::new(cfg.allowed_hosts.clone()),
        manager,
        max_per_token: cfg.max_sessions_per_token,
        idle: SESSION_IDLE,
    };
    Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(guard_state, guard))
        .layer(axum::middleware::from_fn_with_state(tokens, authenticate))
}

/// Start `/mcp` when tokens are configured: its address and task.
pub async fn serve(hub: Arc<Hub>, cfg: &McpConfig) -> anyhow::Result<Option<(SocketAddr, JoinHandle<()>)>> {
    let tokens = Tokens::load(cfg).await?;
    if tokens.is_empty() {
        tracing::info!("/mcp is off: no mcp.tokens configured (stdio hosts use `agentgate mcp`)");
        return Ok(None);
    }
    let bind: SocketAddr = cfg.bind.parse().context("mcp.bind")?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} for /mcp: is another process using it? change mcp.bind"))?;
    let addr = listener.local_addr()?;
    let app = router(hub, tokens, cfg);
    tracing::info!(%addr, "MCP Streamable HTTP listening at /mcp");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "/mcp server stopped");
        }
    });
    Ok(Some((addr, task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_loopback_or_allowed_hosts() {
        let allowed = vec!["localhost".to_owned(), "agents.contoso.com".to_owned(), "proxy.contoso.com:8443".to_owned()];
        for ok in [
            "http://localhost:5173",
            "http://127.0.0.1",
            "http://[::1]:8080",
            "https://agents.contoso.com",
            "https://proxy.contoso.com:8443",
        ] {
            assert!(origin_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "null",
            "http://localhost.evil.example",
            "https://proxy.contoso.com",
            "file:///etc/passwd",
            "https://agents.contoso.com.evil.example",
            "",
        ] {
            assert!(!origin_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn tokens_map_to_their_scope_only() {
        let t = Tokens(Arc::new(vec![
            (Sha256::digest(b"alpha-token").into(), Scope::new("a", &[], &["tenant-a".into()])),
            (Sha256::digest(b"beta-token").into(), Scope::all("b")),
        ]));
        assert_eq!(t.scope_of("alpha-token").map(|s| s.name), Some("a".into()));
        assert_eq!(t.scope_of("beta-token").map(|s| s.name), Some("b".into()));
        assert!(t.scope_of("alpha-token ").is_none());
        assert!(t.scope_of("").is_none());
        assert!(!format!("{t:?}").contains("token"), "Debug shows names only");
    }
}
