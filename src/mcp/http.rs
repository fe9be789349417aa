//! Streamable HTTP at `/mcp`: its own listener (loopback by default), bearer tokens from secret
//! sources, each token's scope, and rmcp's `Host` check against `mcp.allowed_hosts`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
            out.push((Sha256::digest(token.as_bytes()).into(), Scope::new(t.name.clone(), &t.bots, &t.tenants)));
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

/// The `/mcp` router over a hub.
pub fn router(hub: Arc<Hub>, tokens: Tokens, cfg: &McpConfig) -> Router {
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(cfg.allowed_hosts.clone());
    let service = StreamableHttpService::new(move || Ok(Bridge::http(Arc::clone(&hub))), Arc::new(LocalSessionManager::default()), config);
    Router::new().nest_service("/mcp", service).layer(axum::middleware::from_fn_with_state(tokens, authenticate))
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
