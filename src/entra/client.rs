//! The token client: client-credentials requests to an Entra v2 token endpoint, a cache per
//! (client id, endpoint, scope) with refresh-ahead and single-flight refreshes, and bounded retries.
//!
//! * A cached token is served until 5 minutes before it expires (half its lifetime for tokens that
//!   live less than 10 minutes).
//! * One refresh at a time per cache key: concurrent callers wait for it and share its outcome (token
//!   or error). While a refresh is in flight, callers whose cached token is still valid get that token
//!   without waiting; when a refresh fails and the old token is still valid, it is served (and the
//!   next attempt waits a few seconds). The cache is `entra::cache`, shared with the Agent User chain.
//! * Retried: HTTP 429 (waiting exactly its `Retry-After`, seconds or HTTP date), 5xx,
//!   `temporarily_unavailable`, connection failures and timeouts, with capped exponential backoff and
//!   jitter, within [`RetryPolicy::max_attempts`]; a `Retry-After` beyond
//!   [`RetryPolicy::max_retry_after`] fails at once ([`crate::http_util::retry`]). Never retried:
//!   `invalid_client`, `unauthorized_client`, `invalid_request` and every other OAuth error.
//! * The response's `error` field is checked before `access_token`: some proxies turn Entra errors
//!   into HTTP 200.
//! * Secrets, assertions and tokens never appear in errors, logs or `Debug` output.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use super::cache::{Cached, TokenCache};
use super::credential::{ASSERTION_TYPE, ClientCredential};
use super::endpoint::TokenEndpoint;
use super::error::{EntraError, TokenError};
use super::{Clock, SystemClock};
use crate::config::check_fetch_url;
use crate::http_util::retry::Failed;
pub use crate::http_util::retry::RetryPolicy;

/// The longest token lifetime believed.
const MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// Largest token response accepted.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An access token. `Debug` shows only its expiry.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub value: SecretString,
    /// When Entra says it expires (computed from `expires_in` at the time the request was sent).
    pub expires_at: SystemTime,
}

impl AccessToken {
    /// The bearer token, for an `Authorization` header.
    pub fn secret(&self) -> &SecretString {
        &self.value
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("value", &"<redacted>").field("expires_at", &httpdate::fmt_http_date(self.expires_at)).finish()
    }
}

/// What to ask for: a client-credentials token for `client_id` from `endpoint` for `scope`.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The app (client) id.
    pub client_id: String,
    /// The token endpoint (tenant included); the only place the credential is sent.
    pub endpoint: TokenEndpoint,
    /// The scope, such as `https://api.botframework.com/.default`.
    pub scope: String,
    /// The client secret or certificate.
    pub credential: Arc<ClientCredential>,
}

impl TokenRequest {
    /// A request; `credential` is shared so that many requests can use one loaded credential.
    pub fn new(client_id: impl Into<String>, endpoint: TokenEndpoint, scope: impl Into<String>, credential: Arc<ClientCredential>) -> Self {
        Self { client_id: client_id.into(), endpoint, scope: scope.into(), credential }
    }

    fn cache_key(&self) -> CacheKey {
        CacheKey { client_id: self.client_id.clone(), endpoint: self.endpoint.as_str().to_owned(), scope: self.scope.clone() }
    }
}

/// Token client settings.
#[derive(Debug, Clone, Copy)]
pub struct TokenClientSettings {
    /// Timeout of one HTTP request to the token endpoint.
    pub request_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Refresh a cached token this long before it expires.
    pub refresh_before_expiry: Duration,
}

impl Default for TokenClientSettings {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(10), retry: RetryPolicy::default(), refresh_before_expiry: Duration::from_secs(300) }
    }
}

/// A cache key: no credential, no token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    client_id: String,
    endpoint: String,
    scope: String,
}

/// Gets and caches client-credentials tokens. One per process; cheap to share in an `Arc`.
pub struct TokenClient {
    http: reqwest::Client,
    settings: TokenClientSettings,
    clock: Arc<dyn Clock>,
    cache: TokenCache<CacheKey, TokenError>,
    sent: AtomicU64,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient").field("settings", &self.settings).field("requests_sent", &self.requests_sent()).finish()
    }
}

/// A failed attempt and whether (and when) it may be retried.
type Failure = Failed<TokenError>;

impl TokenClient {
    /// A client with its own HTTP connection pool (no redirects are followed).
    pub fn new(settings: TokenClientSettings) -> Result<Self, TokenError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TokenError::Setup(crate::http_util::error_chain(&e)))?;
        Ok(Self { http, settings, clock: Arc::new(SystemClock), cache: TokenCache::new(), sent: AtomicU64::new(0) })
    }

    /// Use another clock for expiry and assertion times (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// HTTP requests sent to token endpoints so far (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Forget the cached token for `req` (e.g. after the Connector refused it with 401).
    pub fn invalidate(&self, req: &TokenRequest) {
        self.cache.invalidate(&req.cache_key());
    }

    /// A token for `req`: cached, or fetched (once, however many callers ask at the same time).
    pub async fn token(&self, req: &TokenRequest) -> Result<AccessToken, TokenError> {
        self.cache.get(self.clock.as_ref(), &req.cache_key(), || self.fetch(req)).await
    }

    /// One refresh: attempts with backoff until success, a permanent error or the budget is spent.
    async fn fetch(&self, req: &TokenRequest) -> Result<Cached, TokenError> {
        let build = |now: SystemTime| req_form(req, now);
        self.fetch_with(&req.endpoint, &req.client_id, req.credential.kind(), &build).await
    }

    /// The clock this client reads (shared with callers that keep their own caches).
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// One token request with an arbitrary form (the Agent User chain's hops), with this client's
    /// retries and response checks, and no caching. `build` is called afresh for each attempt (a client
    /// assertion is single-use) with the time the request is sent. Returns the token and when to refresh it.
    pub(crate) async fn exchange(
        &self,
        endpoint: &TokenEndpoint,
        client_id: &str,
        kind: &'static str,
        build: &(dyn Fn(SystemTime) -> Result<TokenForm, TokenError> + Send + Sync),
    ) -> Result<Cached, TokenError> {
        self.fetch_with(endpoint, client_id, kind, build).await
    }

    async fn fetch_with(
        &self,
        endpoint: &TokenEndpoint,
        client_id: &str,
        kind: &'static str,
        build: &(dyn Fn(SystemTime) -> Result<TokenForm, TokenError> + Send + Sync),
    ) -> Result<Cached, TokenError> {
        let on_retry = |error: &TokenError, attempt: u32, delay: Duration| {
            tracing::warn!(client_id, endpoint = %endpoint, attempt, delay_ms = delay.as_millis() as u64, error = %error, "token request failed; retrying");
        };
        self.settings.retry.run(|| self.attempt(endpoint, client_id, kind, build), on_retry).await
    }

    async fn attempt(
        &self,
        req_endpoint: &TokenEndpoint,
        client_id: &str,
        kind: &'static str,
        build: &(dyn Fn(SystemTime) -> Result<TokenForm, TokenError> + Send + Sync),
    ) -> Result<Cached, Failure> {
        let endpoint = req_endpoint.as_str();
        // The endpoint type only admits https or loopback http; check again right before the credential leaves.
        check_fetch_url(endpoint).map_err(|e| Failure::never(TokenError::Setup(format!("refusing to send a credential: {e}"))))?;

        let now = self.clock.now();
        let TokenForm { body, sensitive } = build(now).map_err(Failure::never)?;

        tracing::debug!(client_id, endpoint, credential = kind, "requesting a token");
        self.sent.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .http
            .post(req_endpoint.url().clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body.expose_secret().to_owned())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let reason = crate::http_util::error_chain(&e.without_url());
                return Err(Failure::backoff(TokenError::Unreachable { endpoint: endpoint.to_owned(), reason }));
            }
        };
        let status = resp.status();
        let retry_after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(crate::http_util::parse_retry_after);
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > MAX_RESPONSE_BYTES {
                        return Err(Failure::never(TokenError::BadResponse {
                            endpoint: endpoint.to_owned(),
                            reason: "response larger than 64 KiB".into(),
                        }));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("reading the response: {}", crate::http_util::error_chain(&e.without_url()));
                    return Err(Failure::backoff(TokenError::Unreachable { endpoint: endpoint.to_owned(), reason }));
                }
            }
        }
        let first = sensitive.first().map_or("", |s| s.expose_secret());
        interpret(endpoint, status.as_u16(), retry_after, &bytes, first, now, &self.settings).map_err(|mut f| {
            for s in sensitive.iter().skip(1) {
                f.error.scrub(s.expose_secret());
            }
            f
        })
    }
}

/// The form of one token request and the secrets in it (scrubbed from any error text).
pub(crate) struct TokenForm {
    /// `application/x-www-form-urlencoded` body.
    pub body: SecretString,
    /// The secret, assertions or tokens the body carries.
    pub sensitive: Vec<SecretString>,
}

/// The client-credentials form of `req` as of `now`.
fn req_form(req: &TokenRequest, now: SystemTime) -> Result<TokenForm, TokenError> {
    let endpoint = req.endpoint.as_str();
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials").append_pair("client_id", &req.client_id).append_pair("scope", &req.scope);
    let sensitive: SecretString = match req.credential.as_ref() {
        ClientCredential::Secret(s) => {
            form.append_pair("client_secret", s.expose_secret());
            s.clone()
        }
        ClientCredential::Certificate(c) => {
            let assertion = c.client_assertion_at(&req.client_id, endpoint, now).map_err(|e| TokenError::Credential(e.to_string()))?;
            form.append_pair("client_assertion_type", ASSERTION_TYPE).append_pair("client_assertion", assertion.expose_secret());
            assertion
        }
    };
    Ok(TokenForm { body: SecretString::from(form.finish()), sensitive: vec![sensitive] })
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    access_token: Option<SecretString>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
}

/// `expires_in` is a number from Entra, a string from some proxies and ADFS.
fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Str(String),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::Num(n)) => Ok(Some(n)),
        Some(N::Str(s)) => s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom("expires_in is not a number")),
    }
}

fn interpret(
    endpoint: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    sensitive: &str,
    sent_at: SystemTime,
    settings: &TokenClientSettings,
) -> Result<Cached, Failure> {
    let transient_status = status == 429 || (500..=599).contains(&status);
    let bad = |reason: String| TokenError::BadResponse { endpoint: endpoint.to_owned(), reason };
    let parsed: Result<TokenResponse, _> = serde_json::from_slice(body);
    let parsed = match parsed {
        Ok(p) => p,
        Err(_) if !(200..300).contains(&status) => {
            let e = TokenError::Status { endpoint: endpoint.to_owned(), status, retry_after };
            return Err(if transient_status { Failure::transient(e, retry_after) } else { Failure::never(e) });
        }
        Err(e) => return Err(Failure::never(bad(format!("HTTP {status} with a body that is not a token response ({e})")))),
    };
    // `error` first: some proxies answer Entra errors with HTTP 200.
    if let Some(error) = parsed.error.filter(|e| !e.is_empty()) {
        let entra = EntraError::new(
            status,
            &error,
            parsed.error_codes.as_deref().unwrap_or_default(),
            parsed.error_description.as_deref().unwrap_or_default(),
            parsed.trace_id,
            parsed.correlation_id,
            sensitive,
        );
        let retryable = entra.is_transient();
        let e = TokenError::Refused { endpoint: endpoint.to_owned(), detail: Box::new(entra) };
        return Err(if retryable { Failure::transient(e, retry_after) } else { Failure::never(e) });
    }
    if !(200..300).contains(&status) {
        let e = TokenError::Status { endpoint: endpoint.to_owned(), status, retry_after };
        return Err(if transient_status { Failure::transient(e, retry_after) } else { Failure::never(e) });
    }
    let Some(value) = parsed.access_token.filter(|t| !t.expose_secret().is_empty()) else {
        return Err(Failure::never(bad("no access_token in the response".into())));
    };
    if let Some(tt) = parsed.token_type.as_deref()
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(Failure::never(bad(format!("token_type `{tt}` is not Bearer"))));
    }
    // Capped at a day (Entra's are about an hour): a bogus huge value must neither overflow nor pin a token.
    let Some(lifetime) = parsed.expires_in.filter(|s| *s > 0).map(|s| Duration::from_secs(s.min(MAX_LIFETIME_SECS))) else {
        return Err(Failure::never(bad("no positive expires_in in the response".into())));
    };
    let expires_at = sent_at + lifetime;
    let ahead = settings.refresh_before_expiry.min(lifetime / 2);
    Ok(Cached { token: AccessToken { value, expires_at }, refresh_at: expires_at - ahead })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_util::retry::Retry;

    fn run(status: u16, body: &str) -> Result<Cached, Failure> {
        interpret(
            "https://login.example.test/t/oauth2/v2.0/token",
            status,
            None,
            body.as_bytes(),
            "s3cr3t",
            SystemTime::now(),
            &TokenClientSettings::default(),
        )
    }

    #[test]
    fn error_is_checked_before_access_token() {
        let f = run(200, r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"access_token":"x","expires_in":3600}"#)
            .err()
            .unwrap();
        assert_eq!(f.retry, Retry::Never);
        let msg = f.error.to_string();
        assert!(msg.contains("AADSTS7000215") && msg.contains("invalid_client"), "{msg}");
    }

    #[test]
    fn success_sets_refresh_five_minutes_ahead() {
        let c = run(200, r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"tok"}"#).ok().unwrap();
        assert_eq!(c.token.expires_at.duration_since(c.refresh_at).unwrap(), Duration::from_secs(300));
        let c = run(200, r#"{"token_type":"Bearer","expires_in":18446744073709551615,"access_token":"tok"}"#).ok().unwrap();
        assert!(c.token.expires_at < SystemTime::now() + Duration::from_secs(24 * 3600 + 1));
        let c = run(200, r#"{"token_type":"Bearer","expires_in":"120","access_token":"tok"}"#).ok().unwrap();
        assert_eq!(c.token.expires_at.duration_since(c.refresh_at).unwrap(), Duration::from_secs(60));
    }

    #[test]
    fn classification() {
        let retry = |status: u16, body: &str| run(status, body).err().unwrap().retry;
        assert_eq!(retry(429, ""), Retry::Backoff);
        assert_eq!(retry(503, "<html>busy</html>"), Retry::Backoff);
        assert_eq!(retry(200, r#"{"error":"temporarily_unavailable"}"#), Retry::Backoff);
        assert_eq!(retry(500, r#"{"error":"invalid_client"}"#), Retry::Never);
        assert_eq!(retry(400, r#"{"error":"invalid_request"}"#), Retry::Never);
        assert_eq!(retry(401, r#"{"error":"unauthorized_client"}"#), Retry::Never);
        assert_eq!(retry(404, "not found"), Retry::Never);
        assert_eq!(retry(200, r#"{"token_type":"Bearer","expires_in":3600}"#), Retry::Never);
        assert_eq!(retry(200, r#"{"token_type":"pop","expires_in":3600,"access_token":"t"}"#), Retry::Never);
        assert_eq!(retry(200, "not json"), Retry::Never);
    }

    #[test]
    fn retry_after_is_passed_on_for_transient_failures_only() {
        let after = Some(Duration::from_secs(7));
        let with = |status: u16, body: &str| {
            let settings = TokenClientSettings::default();
            interpret("https://login.example.test/t/oauth2/v2.0/token", status, after, body.as_bytes(), "", SystemTime::now(), &settings)
                .err()
                .unwrap()
                .retry
        };
        assert_eq!(with(429, ""), Retry::After(Duration::from_secs(7)));
        assert_eq!(with(503, r#"{"error":"temporarily_unavailable"}"#), Retry::After(Duration::from_secs(7)));
        assert_eq!(with(400, r#"{"error":"invalid_request"}"#), Retry::Never);
    }

    #[test]
    fn an_echoed_secret_is_scrubbed_from_errors() {
        let f = run(401, r#"{"error":"invalid_client","error_description":"AADSTS7000215: secret s3cr3t is wrong"}"#).err().unwrap();
        let msg = f.error.to_string();
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn access_token_debug_is_redacted() {
        let t = AccessToken { value: SecretString::from("eyJ0eXAi.secret-token"), expires_at: SystemTime::now() };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret-token") && shown.contains("<redacted>"), "{shown}");
    }
}
