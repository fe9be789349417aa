//! The Graph client: requests as the Agent User, with the host allow-list, 429 and 401 handling.
//!
//! * Every URL, `@odata.nextLink` included, passes [`GraphEndpoint::check`] before a token is attached;
//!   redirects are never followed.
//! * 429: waits exactly `Retry-After` (seconds or an HTTP date; [`GraphSettings::default_retry_after`]
//!   when absent) and tries again, within [`GraphSettings::max_attempts`]; a `Retry-After` longer than
//!   [`GraphSettings::max_retry_after`] is returned as [`GraphError::Throttled`] at once.
//! * 401: the cached token is dropped, a fresh one fetched and the request sent once more (not counted
//!   as an attempt; once per call).
//! * 5xx and network failures are retried for reads and edits only, after `Retry-After` when Graph sent
//!   one no longer than the maximum, else after a backoff doubling from [`GraphSettings::base_backoff`]
//!   with jitter; a create (chat, message, member) is never re-posted after it may have landed (only a
//!   connection that was never made is tried again).
//! * The waits and the budget are the shared retry loop's ([`crate::http_util::retry`]).
//! * Errors are classified ([`GraphErrorKind`]) and never carry a token.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{ACCEPT, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use super::message::{MAX_MESSAGE_CHARS, MessageBody};
use super::model::{Chat, ChatMember, ChatMessage, ConversationMember, NewChat, Page, User};
use crate::entra::{AccessToken, AgentTokenError, AgentUserTokens};
use crate::http_util::path_segment as segment;
use crate::http_util::retry::{Failed, Retry, RetryPolicy};
use crate::ids::graph_url::{GraphEndpoint, GraphUrlError};

/// Most pages followed for one listing.
pub(super) const MAX_PAGES: usize = 100;

/// Longest error message kept from a Graph error body.
const MAX_ERROR_MESSAGE: usize = 300;

/// Where the Graph client gets its bearer token.
#[async_trait]
pub trait GraphToken: Send + Sync + 'static {
    /// A token for Graph (cached by the implementation).
    async fn token(&self) -> Result<AccessToken, AgentTokenError>;
    /// Drop the cached token: Graph refused it with 401.
    fn invalidate(&self);
    /// The Agent User as a `users('…')` key (object id or UPN): the creator of chats.
    fn agent_user(&self) -> String;
}

#[async_trait]
impl GraphToken for AgentUserTokens {
    async fn token(&self) -> Result<AccessToken, AgentTokenError> {
        self.graph_token().await
    }

    fn invalidate(&self) {
        AgentUserTokens::invalidate(self, self.graph_scope());
    }

    fn agent_user(&self) -> String {
        self.user().as_str().to_owned()
    }
}

/// The Agent Identity's own app-only token (two hops), for reads about the Agent Identity itself (its
/// sponsors). A client with it never acts in chats.
pub struct AgentIdentityToken(pub Arc<AgentUserTokens>);

#[async_trait]
impl GraphToken for AgentIdentityToken {
    async fn token(&self) -> Result<AccessToken, AgentTokenError> {
        self.0.identity_graph_token().await
    }

    fn invalidate(&self) {}

    fn agent_user(&self) -> String {
        self.0.user().as_str().to_owned()
    }
}

/// How the client retries and what it accepts.
#[derive(Debug, Clone, Copy)]
pub struct GraphSettings {
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Attempts in all for 429 (and 5xx on reads), the first included.
    pub max_attempts: u32,
    /// The wait after a 429 without `Retry-After`.
    pub default_retry_after: Duration,
    /// A longer `Retry-After` is not waited for: the call fails with [`GraphError::Throttled`].
    pub max_retry_after: Duration,
    /// The first backoff after a 5xx or network failure on a read; doubled each time.
    pub base_backoff: Duration,
    /// Largest response body read.
    pub max_response_bytes: usize,
}

impl GraphSettings {
    /// The shared retry policy these settings make: `base_backoff` doubled per retry up to 256 times
    /// itself, `max_attempts` and `max_retry_after`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base_delay: self.base_backoff,
            max_delay: self.base_backoff.saturating_mul(256),
            max_retry_after: self.max_retry_after,
        }
    }
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            default_retry_after: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
            base_backoff: Duration::from_millis(500),
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The class of a Graph failure, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphErrorKind {
    /// Refused here before anything was sent (host not allowed, invalid input, message too large).
    Refused,
    /// No token (a hop of the chain failed).
    Token,
    /// 429: try again later.
    Throttled,
    /// 401 twice: the token is not accepted.
    Unauthorized,
    /// 403: missing permission, licence or membership.
    Forbidden,
    /// 404.
    NotFound,
    /// 5xx, a timeout or a network failure: may succeed later (a create may have landed).
    Transient,
    /// Any other 4xx: the request is wrong.
    BadRequest,
    /// A success whose body could not be read.
    BadResponse,
}

/// Why a Graph call failed. Never holds a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    /// The URL is not a Graph host: nothing was sent.
    #[error("refused before sending: {0}")]
    NotAllowed(GraphUrlError),
    /// The input cannot be sent (nothing was sent).
    #[error("refused before sending: {0}")]
    Invalid(String),
    /// No Graph token.
    #[error("no Graph token as the Agent User: {0}")]
    Token(AgentTokenError),
    /// Throttled (429), also after the allowed retries.
    #[error("throttled by Graph{}", retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    Throttled {
        /// What Graph asked for.
        retry_after: Option<Duration>,
    },
    /// HTTP error with Graph's error code and message.
    #[error("Graph answered HTTP {status} {code}: {message}")]
    Http {
        /// The status.
        status: u16,
        /// Graph's `error.code`.
        code: String,
        /// Graph's `error.message`, shortened.
        message: String,
    },
    /// No answer (timeout, connection failure) or a 5xx.
    #[error("Graph unavailable: {0}")]
    Unavailable(String),
    /// A 2xx whose body is not what was expected.
    #[error("unexpected Graph response: {0}")]
    BadResponse(String),
}

// Not `#[from]`: the messages above include the inner error, so it is not repeated as a `source()`.
impl From<GraphUrlError> for GraphError {
    fn from(e: GraphUrlError) -> Self {
        Self::NotAllowed(e)
    }
}

impl From<AgentTokenError> for GraphError {
    fn from(e: AgentTokenError) -> Self {
        Self::Token(e)
    }
}

impl GraphError {
    /// The class of the failure.
    pub fn kind(&self) -> GraphErrorKind {
        match self {
            Self::NotAllowed(_) | Self::Invalid(_) => GraphErrorKind::Refused,
            Self::Token(_) => GraphErrorKind::Token,
            Self::Throttled { .. } => GraphErrorKind::Throttled,
            Self::Http { status: 401, .. } => GraphErrorKind::Unauthorized,
            Self::Http { status: 403, .. } => GraphErrorKind::Forbidden,
            Self::Http { status: 404, .. } => GraphErrorKind::NotFound,
            Self::Http { status, .. } if *status >= 500 => GraphErrorKind::Transient,
            Self::Http { .. } => GraphErrorKind::BadRequest,
            Self::Unavailable(_) => GraphErrorKind::Transient,
            Self::BadResponse(_) => GraphErrorKind::BadResponse,
        }
    }

    /// The HTTP status, when Graph answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Throttled { .. } => Some(429),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Microsoft Graph (v1.0) as the Agent User. Cheap to clone.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    endpoint: GraphEndpoint,
    tokens: Arc<dyn GraphToken>,
    settings: GraphSettings,
    sent: Arc<AtomicU64>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient").field("endpoint", &self.endpoint).field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client for `endpoint` (see [`GraphEndpoint::parse`]) getting tokens from `tokens`.
    pub fn new(endpoint: GraphEndpoint, tokens: Arc<dyn GraphToken>, settings: GraphSettings) -> Result<Self, GraphError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::Invalid(format!("building the HTTP client: {}", crate::http_util::error_chain(&e))))?;
        Ok(Self { http, endpoint, tokens, settings, sent: Arc::new(AtomicU64::new(0)) })
    }

    /// The Graph client of a bot's Agent User: its `graph_base_url` (default: the global Graph) and its tokens.
    pub fn for_agent_user(tokens: Arc<AgentUserTokens>, settings: GraphSettings) -> Result<Self, GraphError> {
        let endpoint = match tokens.graph_base_url() {
            Some(base) => GraphEndpoint::parse(base)?,
            None => GraphEndpoint::global(),
        };
        Self::new(endpoint, tokens, settings)
    }

    /// The API base.
    pub fn endpoint(&self) -> &GraphEndpoint {
        &self.endpoint
    }

    /// The Agent User as a `users('…')` path key (its object id or UPN).
    pub(super) fn agent_user_key(&self) -> String {
        self.tokens.agent_user()
    }

    /// HTTP requests sent so far (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    // ------------------------------------------------------------ operations

    /// The Agent User itself (`GET /me`).
    pub async fn me(&self) -> Result<User, GraphError> {
        self.get(self.url("/me", &[("$select", USER_SELECT)])?).await
    }

    /// A user by object id or UPN (`GET /users/{id | upn}`).
    pub async fn get_user(&self, id_or_upn: &str) -> Result<User, GraphError> {
        let key = non_empty("user id or UPN", id_or_upn)?;
        self.get(self.url(&format!("/users/{}", segment(key)), &[("$select", USER_SELECT)])?).await
    }

    /// Create a chat with the Agent User as a member (`POST /chats`). A 1:1 chat that exists is returned
    /// as it is; a group chat is new each time.
    pub async fn create_chat(&self, chat: &NewChat) -> Result<Chat, GraphError> {
        let me = self.member_json(&ChatMember::InTenant(self.tokens.agent_user()))?;
        let body = match chat {
            NewChat::OneOnOne(other) => json!({"chatType": "oneOnOne", "members": [me, self.member_json(other)?]}),
            NewChat::Group { topic, members } => {
                if members.len() < 2 {
                    return Err(GraphError::Invalid("a group chat needs at least two members besides the Agent User".into()));
                }
                let mut all = vec![me];
                for m in members {
                    all.push(self.member_json(m)?);
                }
                let mut body = json!({"chatType": "group", "members": all});
                if let Some(t) = topic.as_deref().filter(|t| !t.trim().is_empty()) {
                    body["topic"] = json!(t);
                }
                body
            }
        };
        self.send_json(Method::POST, self.url("/chats", &[])?, Some(&body), false).await
    }

    /// A chat (`GET /chats/{id}`).
    pub async fn get_chat(&self, chat_id: &str) -> Result<Chat, GraphError> {
        self.get(self.url(&format!("/chats/{}", segment(non_empty("chat id", chat_id)?)), &[])?).await
    }

    /// Send a message to a chat (`POST /chats/{id}/messages`). Its size is checked first.
    pub async fn send_chat_message(&self, chat_id: &str, message: &MessageBody) -> Result<ChatMessage, GraphError> {
        check_message(message)?;
        let url = self.url(&format!("/chats/{}/messages", segment(non_empty("chat id", chat_id)?)), &[])?;
        self.send_json(Method::POST, url, Some(&message.to_json()), false).await
    }

    /// One message of a chat (`GET /chats/{id}/messages/{id}`).
    pub async fn get_chat_message(&self, chat_id: &str, message_id: &str) -> Result<ChatMessage, GraphError> {
        let path = format!("/chats/{}/messages/{}", segment(non_empty("chat id", chat_id)?), segment(non_empty("message id", message_id)?));
        self.get(self.url(&path, &[])?).await
    }

    /// A chat or channel message as Graph returns it, every field kept (`GET /chats/{id}/messages/{id}`,
    /// `/teams/{id}/channels/{id}/messages/{id}[/replies/{id}]`).
    pub async fn message_json(&self, at: &MessageAt) -> Result<Value, GraphError> {
        self.get(self.url(&at.path()?, &[])?).await
    }

    /// The bytes of a message's hosted content (an inline image, `GET …/hostedContents/{id}/$value`), at
    /// most `limit`.
    pub async fn hosted_content(&self, at: &MessageAt, id: &str, limit: usize) -> Result<crate::graph::Content, GraphError> {
        let path = format!("{}/hostedContents/{}/$value", at.path()?, segment(non_empty("hosted content id", id)?));
        self.content_at(self.url(&path, &[])?, limit).await
    }

    /// Replace a message's body (`PATCH /chats/{id}/messages/{id}`); only the sender may.
    pub async fn edit_chat_message(&self, chat_id: &str, message_id: &str, message: &MessageBody) -> Result<(), GraphError> {
        check_message(message)?;
        let path = format!("/chats/{}/messages/{}", segment(non_empty("chat id", chat_id)?), segment(non_empty("message id", message_id)?));
        self.call(Method::PATCH, self.url(&path, &[])?, Some(&message.to_json()), true).await.map(drop)
    }

    /// Soft-delete a message the Agent User sent (`POST /me/chats/{id}/messages/{id}/softDelete`; the
    /// `/chats/…` form answers 405).
    pub async fn soft_delete_chat_message(&self, chat_id: &str, message_id: &str) -> Result<(), GraphError> {
        let path = format!(
            "/me/chats/{}/messages/{}/softDelete",
            segment(non_empty("chat id", chat_id)?),
            segment(non_empty("message id", message_id)?)
        );
        // Deleting twice is harmless, so a lost answer may be retried.
        self.call(Method::POST, self.url(&path, &[])?, Some(&json!({})), true).await.map(drop)
    }

    /// Add (`setReaction`) or remove (`unsetReaction`) the signed-in user's reaction on a chat message
    /// (`POST /chats/{id}/messages/{id}/setReaction`, body `{"reactionType": …}`: a Unicode emoji or `like`,
    /// `heart`, `laugh`, `surprised`, `sad`, `angry`). Delegated only. Idempotent, so a lost answer may be retried.
    pub async fn set_chat_message_reaction(
        &self,
        chat_id: &str,
        message_id: &str,
        reaction_type: &str,
        remove: bool,
    ) -> Result<(), GraphError> {
        let action = if remove { "unsetReaction" } else { "setReaction" };
        let path = format!(
            "/chats/{}/messages/{}/{action}",
            segment(non_empty("chat id", chat_id)?),
            segment(non_empty("message id", message_id)?)
        );
        let body = json!({"reactionType": non_empty("reaction type", reaction_type)?});
        self.call(Method::POST, self.url(&path, &[])?, Some(&body), true).await.map(drop)
    }

    /// The newest messages of a chat, newest first, at most `max` (pages followed as needed).
    pub async fn list_chat_messages(&self, chat_id: &str, max: usize) -> Result<Vec<ChatMessage>, GraphError> {
        let top = max.clamp(1, 50).to_string();
        let url = self.url(
            &format!("/chats/{}/messages", segment(non_empty("chat id", chat_id)?)),
            &[("$top", &top), ("$orderby", "createdDateTime desc")],
        )?;
        self.collect(url, max).await
    }

    /// The users among an Agent Identity's sponsors, by object id
    /// (`GET /servicePrincipals/{id}/microsoft.graph.agentIdentity/sponsors`; needs the Agent Identity's
    /// app-only token, [`AgentIdentityToken`]). Groups are left out.
    pub async fn agent_identity_sponsors(&self, agent_identity_id: &str) -> Result<Vec<String>, GraphError> {
        let path = format!(
            "/servicePrincipals/{}/microsoft.graph.agentIdentity/sponsors",
            segment(non_empty("agent identity id", agent_identity_id)?)
        );
        let items: Vec<Value> = self.collect(self.url(&path, &[("$select", "id")])?, 100).await?;
        Ok(items
            .into_iter()
            .filter(|v| v.get("@odata.type").and_then(Value::as_str).is_none_or(|t| t.eq_ignore_ascii_case("#microsoft.graph.user")))
            .filter_map(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }

    /// The Agent User's chats, at most `max` (`GET /me/chats`; Graph refuses `$orderby` here).
    pub async fn list_chats(&self, max: usize) -> Result<Vec<Chat>, GraphError> {
        let top = max.clamp(1, 50).to_string();
        self.collect(self.url("/me/chats", &[("$top", &top)])?, max).await
    }

    /// A chat's members (`GET /chats/{id}/members`).
    pub async fn list_chat_members(&self, chat_id: &str) -> Result<Vec<ConversationMember>, GraphError> {
        self.collect(self.url(&format!("/chats/{}/members", segment(non_empty("chat id", chat_id)?)), &[])?, 1000).await
    }

    /// Add someone to a group chat (`POST /chats/{id}/members`). Graph may answer 201 with no body:
    /// then `None`.
    pub async fn add_chat_member(&self, chat_id: &str, member: &ChatMember) -> Result<Option<ConversationMember>, GraphError> {
        let body = self.member_json(member)?;
        let url = self.url(&format!("/chats/{}/members", segment(non_empty("chat id", chat_id)?)), &[])?;
        let bytes = self.call(Method::POST, url, Some(&body), false).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse(&bytes).map(Some)
    }

    // ------------------------------------------------------------ change notifications

    /// Subscribe to change notifications (`POST /subscriptions`): `body` is the subscription resource
    /// (`changeType`, `notificationUrl`, `lifecycleNotificationUrl`, `resource`, `expirationDateTime`,
    /// `clientState`). Never re-posted once it may have landed.
    pub async fn create_subscription(&self, body: &Value) -> Result<Value, GraphError> {
        self.send_json(Method::POST, self.url("/subscriptions", &[])?, Some(body), false).await
    }

    /// Renew (and so reauthorize) a subscription (`PATCH /subscriptions/{id}` with a new expiry).
    pub async fn renew_subscription(&self, subscription_id: &str, expiration: &str) -> Result<Value, GraphError> {
        let url = self.url(&format!("/subscriptions/{}", segment(non_empty("subscription id", subscription_id)?)), &[])?;
        self.send_json(Method::PATCH, url, Some(&json!({"expirationDateTime": expiration})), true).await
    }

    /// Delete a subscription (`DELETE /subscriptions/{id}`).
    pub async fn delete_subscription(&self, subscription_id: &str) -> Result<(), GraphError> {
        let url = self.url(&format!("/subscriptions/{}", segment(non_empty("subscription id", subscription_id)?)), &[])?;
        self.call(Method::DELETE, url, None, true).await.map(drop)
    }

    /// One message of a chat as Graph returns it (`GET /chats/{id}/messages/{id}`), every field kept.
    pub async fn get_chat_message_json(&self, chat_id: &str, message_id: &str) -> Result<Value, GraphError> {
        let path = format!("/chats/{}/messages/{}", segment(non_empty("chat id", chat_id)?), segment(non_empty("message id", message_id)?));
        self.get(self.url(&path, &[])?).await
    }

    /// A catch-up read: the messages of a chat modified after `after` (an ISO 8601 UTC time), newest
    /// first (`$orderby=lastModifiedDateTime desc&$filter=lastModifiedDateTime gt …`, `@odata.nextLink`
    /// followed), at most `max`. Each page waits `pace` first (Teams allows about 3 reads/s per app and
    /// tenant); 429 waits `Retry-After`.
    pub async fn chat_messages_modified_after(
        &self,
        chat_id: &str,
        after: &str,
        max: usize,
        pace: Duration,
    ) -> Result<Vec<Value>, GraphError> {
        let filter = format!("lastModifiedDateTime gt {after}");
        let mut url = self.url(
            &format!("/chats/{}/messages", segment(non_empty("chat id", chat_id)?)),
            &[("$top", "50"), ("$orderby", "lastModifiedDateTime desc"), ("$filter", &filter)],
        )?;
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            tokio::time::sleep(pace).await;
            let page: Page<Value> = self.get(url).await?;
            out.extend(page.value);
            if out.len() >= max {
                out.truncate(max);
                return Ok(out);
            }
            match page.next_link {
                Some(link) => url = self.endpoint.next_link(&link)?,
                None => return Ok(out),
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------ plumbing

    pub(super) fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, GraphError> {
        if crate::http_util::has_dot_or_empty_segment(path) {
            return Err(GraphError::Invalid("an id is empty, '.' or '..'".into()));
        }
        let mut url = self.endpoint.url(path)?;
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn member_json(&self, member: &ChatMember) -> Result<Value, GraphError> {
        let (key, tenant) = match member {
            ChatMember::InTenant(id) => (non_empty("member id or UPN", id)?, None),
            ChatMember::External { email, tenant_id } => {
                if !email.contains('@') || email.contains(char::is_whitespace) {
                    return Err(GraphError::Invalid(format!("`{email}` is not an email address (external members are bound by email)")));
                }
                if !crate::ids::is_guid(tenant_id) {
                    return Err(GraphError::Invalid(format!("`{tenant_id}` is not a tenant id (the member's home tenant GUID)")));
                }
                (email.as_str(), Some(tenant_id))
            }
        };
        let mut m = json!({
            "@odata.type": "#microsoft.graph.aadUserConversationMember",
            "roles": ["owner"],
            "user@odata.bind": self.endpoint.user_bind(key),
        });
        if let Some(t) = tenant {
            m["tenantId"] = json!(t);
        }
        Ok(m)
    }

    pub(super) async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, GraphError> {
        self.send_json(Method::GET, url, None, true).await
    }

    pub(super) async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        idempotent: bool,
    ) -> Result<T, GraphError> {
        let bytes = self.call(method, url, body, idempotent).await?;
        parse(&bytes)
    }

    /// Follow `@odata.nextLink` (each checked against the allow-list) until `max` items or the end.
    pub(super) async fn collect<T: DeserializeOwned>(&self, first: Url, max: usize) -> Result<Vec<T>, GraphError> {
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..MAX_PAGES {
            let page: Page<T> = self.get(url).await?;
            out.extend(page.value);
            if out.len() >= max {
                out.truncate(max);
                return Ok(out);
            }
            match page.next_link {
                Some(link) => url = self.endpoint.next_link(&link)?,
                None => return Ok(out),
            }
        }
        Ok(out)
    }

    /// One call with the retry rules of the module docs; the 2xx body.
    pub(super) async fn call(&self, method: Method, url: Url, body: Option<&Value>, idempotent: bool) -> Result<Vec<u8>, GraphError> {
        self.call_prefer(method, url, body, idempotent, &[]).await
    }

    /// [`Self::call`] with `Prefer` headers (`outlook.timezone="UTC"`, …).
    pub(super) async fn call_prefer(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        idempotent: bool,
        prefer: &'static [&'static str],
    ) -> Result<Vec<u8>, GraphError> {
        let body = body.map_or(Body::None, Body::Json);
        let limit = self.settings.max_response_bytes;
        self.call_with(method, url, body, idempotent, Answer { redirect: false, limit, prefer }).await.map(|r| r.bytes)
    }

    pub(super) async fn call_with(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        idempotent: bool,
        answer: Answer,
    ) -> Result<Reply, GraphError> {
        self.endpoint.check(&url)?;
        let refreshed = AtomicBool::new(false);
        let on_retry = |error: &GraphError, attempt: u32, wait: Duration| {
            tracing::warn!(%method, path = url.path(), attempt, wait_ms = wait.as_millis() as u64, %error, "Graph request failed; waiting to try again");
        };
        self.settings.retry_policy().run(|| self.attempt(&method, &url, body, idempotent, answer, &refreshed), on_retry).await
    }

    /// One attempt: the request, sent once more with a fresh token when Graph refuses the token with
    /// 401 for the first time in this call (`refreshed`).
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Body<'_>,
        idempotent: bool,
        answer: Answer,
        refreshed: &AtomicBool,
    ) -> Result<Reply, Failed<GraphError>> {
        let (mut token, mut reply) = self.send(method, url, body, idempotent, answer).await?;
        if reply.status == 401 && !refreshed.swap(true, Ordering::Relaxed) {
            tracing::debug!(%method, path = url.path(), "Graph refused the token (401); refreshing it once");
            self.tokens.invalidate();
            (token, reply) = self.send(method, url, body, idempotent, answer).await?;
        }
        let status = reply.status;
        match status {
            200..=299 => Ok(reply),
            300..=399 if answer.redirect => Ok(reply),
            429 => {
                let wait = reply.retry_after.unwrap_or(self.settings.default_retry_after);
                Err(Failed::after(GraphError::Throttled { retry_after: reply.retry_after }, wait))
            }
            500..=599 if idempotent => {
                let retry = reply.retry_after.filter(|d| *d <= self.settings.max_retry_after).map_or(Retry::Backoff, Retry::After);
                Err(Failed { error: http_error(status, &reply.bytes, token.value.expose_secret()), retry })
            }
            300..=399 => Err(Failed::never(GraphError::BadResponse(format!("HTTP {status} redirect (not followed)")))),
            _ => Err(Failed::never(http_error(status, &reply.bytes, token.value.expose_secret()))),
        }
    }

    /// Send the request once with the current token; the token and Graph's answer (a body up to `limit`).
    async fn send(
        &self,
        method: &Method,
        url: &Url,
        body: Body<'_>,
        idempotent: bool,
        answer: Answer,
    ) -> Result<(AccessToken, Reply), Failed<GraphError>> {
        let token = self.tokens.token().await.map_err(|e| Failed::never(e.into()))?;
        let mut req =
            self.http.request(method.clone(), url.clone()).bearer_auth(token.value.expose_secret()).header(ACCEPT, "application/json");
        match body {
            Body::None => {}
            Body::Json(b) => req = req.json(b),
            Body::Bytes(bytes, content_type) => {
                req = req.header(reqwest::header::CONTENT_TYPE, content_type).body(bytes.to_vec());
            }
        }
        if *method == Method::GET {
            // Without it a system message's `messageType` reads `unknownFutureValue`.
            req = req.header("Prefer", "include-unknown-enum-members");
        }
        for p in answer.prefer {
            req = req.header("Prefer", *p);
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let connect = e.is_connect();
                let error = GraphError::Unavailable(crate::http_util::error_chain(&e.without_url()));
                // A request that never connected did not land: safe to try again even for a create.
                return Err(if idempotent || connect { Failed::backoff(error) } else { Failed::never(error) });
            }
        };
        let status = resp.status().as_u16();
        let header = |name: reqwest::header::HeaderName| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = header(RETRY_AFTER).as_deref().and_then(crate::http_util::parse_retry_after);
        let location = header(reqwest::header::LOCATION);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let bytes = read_capped(resp, answer.limit).await.map_err(Failed::never)?;
        Ok((token, Reply { status, retry_after, location, content_type, bytes }))
    }
}

/// A request body.
#[derive(Clone, Copy)]
pub(super) enum Body<'a> {
    None,
    Json(&'a Value),
    /// Raw bytes with their content type (file uploads).
    Bytes(&'a [u8], &'a str),
}

/// What a call accepts as an answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Answer {
    /// A 3xx is an answer (its `Location` for the caller to check), not an error.
    pub(super) redirect: bool,
    /// The largest body read.
    pub(super) limit: usize,
    /// `Prefer` headers to send (`outlook.timezone="UTC"`, …).
    pub(super) prefer: &'static [&'static str],
}

/// Graph's answer to one request.
pub(super) struct Reply {
    pub(super) status: u16,
    retry_after: Option<Duration>,
    /// A redirect's target (never followed here).
    pub(super) location: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) bytes: Vec<u8>,
}

/// Where a Teams message is in Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageAt {
    /// A message of a chat (`/chats/{chat}/messages/{message}`).
    Chat { chat: String, message: String },
    /// A channel post (`/teams/{team}/channels/{channel}/messages/{root}`) or, with `reply`, a reply to it
    /// (`…/messages/{root}/replies/{reply}`). `team` is the team's Microsoft 365 group id.
    Channel { team: String, channel: String, root: String, reply: Option<String> },
}

impl MessageAt {
    fn path(&self) -> Result<String, GraphError> {
        Ok(match self {
            Self::Chat { chat, message } => {
                format!("/chats/{}/messages/{}", segment(non_empty("chat id", chat)?), segment(non_empty("message id", message)?))
            }
            Self::Channel { team, channel, root, reply } => {
                let mut path = format!(
                    "/teams/{}/channels/{}/messages/{}",
                    segment(non_empty("team id", team)?),
                    segment(non_empty("channel id", channel)?),
                    segment(non_empty("message id", root)?)
                );
                if let Some(reply) = reply {
                    path.push_str("/replies/");
                    path.push_str(&segment(non_empty("reply id", reply)?));
                }
                path
            }
        })
    }
}

const USER_SELECT: &str = "id,displayName,userPrincipalName,mail,userType";

pub(super) fn non_empty<'a>(what: &str, s: &'a str) -> Result<&'a str, GraphError> {
    if s.trim().is_empty() { Err(GraphError::Invalid(format!("the {what} is empty"))) } else { Ok(s) }
}

fn check_message(m: &MessageBody) -> Result<(), GraphError> {
    if m.is_empty() {
        return Err(GraphError::Invalid("the message is empty".into()));
    }
    let n = m.len_chars();
    if n > MAX_MESSAGE_CHARS {
        return Err(GraphError::Invalid(format!(
            "the message is {n} characters (HTML and cards); Teams accepts at most {MAX_MESSAGE_CHARS}: split it"
        )));
    }
    Ok(())
}

async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, GraphError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(GraphError::BadResponse(format!("response larger than {max} bytes")));
    }
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > max {
                    return Err(GraphError::BadResponse(format!("response larger than {max} bytes")));
                }
            }
            Ok(None) => return Ok(bytes),
            Err(e) => {
                return Err(GraphError::Unavailable(format!("reading the response: {}", crate::http_util::error_chain(&e.without_url()))));
            }
        }
    }
}

pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GraphError> {
    serde_json::from_slice(bytes).map_err(|e| GraphError::BadResponse(format!("the body is not the expected JSON ({e})")))
}

fn http_error(status: u16, bytes: &[u8], token: &str) -> GraphError {
    let detail = serde_json::from_slice::<ErrorBody>(bytes).ok().and_then(|b| b.error);
    let (code, message) = detail.map_or_else(|| (String::new(), String::new()), |d| (d.code, d.message));
    let mut message: String = message.lines().next().unwrap_or_default().chars().take(MAX_ERROR_MESSAGE).collect();
    if !token.is_empty() && message.contains(token) {
        message = message.replace(token, "<redacted>");
    }
    let code: String = code.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    GraphError::Http { status, code: if code.is_empty() { "(no code)".into() } else { code }, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_classify() {
        let e = |s: u16| http_error(s, br#"{"error":{"code":"X","message":"m"}}"#, "tok");
        assert_eq!(e(403).kind(), GraphErrorKind::Forbidden);
        assert_eq!(e(404).kind(), GraphErrorKind::NotFound);
        assert_eq!(e(400).kind(), GraphErrorKind::BadRequest);
        assert_eq!(e(409).kind(), GraphErrorKind::BadRequest);
        assert_eq!(e(503).kind(), GraphErrorKind::Transient);
        assert_eq!(e(401).kind(), GraphErrorKind::Unauthorized);
        assert_eq!(GraphError::Throttled { retry_after: None }.kind(), GraphErrorKind::Throttled);
        let leaked = http_error(400, br#"{"error":{"code":"BadRequest","message":"token eyJsecret is bad"}}"#, "eyJsecret");
        assert!(!leaked.to_string().contains("eyJsecret"), "{leaked}");
        assert_eq!(http_error(500, b"<html>", "t").to_string(), "Graph answered HTTP 500 (no code): ");
    }

    #[test]
    fn message_size_is_checked_before_sending() {
        assert!(check_message(&MessageBody::from_text(&"x".repeat(MAX_MESSAGE_CHARS))).is_ok());
        let e = check_message(&MessageBody::from_text(&"x".repeat(MAX_MESSAGE_CHARS + 1))).unwrap_err();
        assert_eq!(e.kind(), GraphErrorKind::Refused);
        assert!(e.to_string().contains("28000"), "{e}");
        // Escaping counts: 10,000 `<` are 40,000 characters of HTML.
        assert!(check_message(&MessageBody::from_text(&"<".repeat(10_000))).is_err());
        assert!(check_message(&MessageBody::new()).is_err());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("19:abc@thread.v2"), "19%3Aabc%40thread.v2");
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
    }
}
