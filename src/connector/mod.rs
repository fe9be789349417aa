//! The Bot Framework Connector client: replies, proactive sends, updates, deletes, conversations and
//! members, as the bot.
//!
//! The bot token is only ever sent over https to an allow-listed Connector host of the bot's cloud
//! ([`ConnectorPolicy`]) or to an operator-configured `clouds.<cloud>.connector_endpoints` entry; `--dev`
//! adds the Agents Playground's loopback connector, which only ever receives a placeholder token. Anything
//! else is refused before a request is made. Conversation and activity ids are percent-encoded as path segments.
//! An empty 2xx body is success. Errors are classified so that a caller can tell whether a create
//! certainly did not land (and may be retried) or might have (and must not be re-posted blindly).

pub(crate) mod acting;
pub(crate) mod outbox;
pub(crate) mod send;
pub(crate) mod streaming;
pub(crate) mod throttle;
pub(crate) mod tokens;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http_util::path_segment as segment;
use crate::ids::Cloud;
use crate::service_url::ConnectorPolicy;

/// What the Connector answers to a create or update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceResponse {
    #[serde(default)]
    pub id: String,
}

/// The answer to creating a conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationResource {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub activity_id: Option<String>,
    #[serde(default)]
    pub service_url: Option<String>,
}

/// One page of conversation members.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PagedMembers {
    #[serde(default)]
    pub continuation_token: Option<String>,
    #[serde(default)]
    pub members: Vec<Value>,
}

/// Why a Connector call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// Refused locally: the service URL is not an allow-listed Connector endpoint. Nothing was sent.
    #[error("the service URL is not an allow-listed Connector endpoint; nothing was sent")]
    HostNotAllowed,
    /// Refused locally: a conversation or activity id is empty, `.` or `..`. Nothing was sent.
    #[error("a conversation or activity id is empty, '.' or '..'; nothing was sent")]
    BadId,
    /// 429: the Connector did not accept the request. Safe to retry after `retry_after`.
    #[error("throttled by the Connector (retry after {retry_after:?})")]
    Throttled { retry_after: Option<Duration> },
    /// The request never reached the Connector (connection refused, DNS, TLS). Safe to retry.
    #[error("could not reach the Connector: {0}")]
    Unreachable(String),
    /// The request may have been processed (timeout after sending, 5xx, connection reset): a create must
    /// not be re-posted blindly.
    #[error("the Connector's answer was lost or failed after the request was sent ({0})")]
    Ambiguous(String),
    /// A definite refusal (4xx other than 429). `code` and `sub_code` come from the error body.
    #[error("the Connector refused the request: {status} {code}{}", sub_code.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Rejected { status: u16, code: String, sub_code: Option<String> },
    /// A 2xx whose body could not be read as the expected resource.
    #[error("unexpected Connector response: {0}")]
    BadResponse(String),
    /// A download larger than the caller's bound (nothing kept).
    #[error("the attachment is larger than {limit} bytes; refused")]
    TooLarge { limit: u64 },
}

impl ConnectorError {
    /// The class stored with the outbox entry: what decisions (such as falling back to the Agent User)
    /// read, instead of the message.
    pub fn class(&self) -> crate::store::ErrorClass {
        use crate::store::ErrorClass;
        match self {
            Self::HostNotAllowed | Self::BadId => ErrorClass::Local,
            Self::Throttled { .. } => ErrorClass::Throttled,
            Self::Unreachable(_) => ErrorClass::Unreachable,
            Self::Ambiguous(_) => ErrorClass::Ambiguous,
            Self::Rejected { status, code, sub_code } => {
                let named = |c: &str| code.eq_ignore_ascii_case(c) || sub_code.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(c));
                if matches!(status, 403 | 404)
                    || ["MessageWritesBlocked", "ConversationNotFound", "BotNotInConversationRoster"].into_iter().any(named)
                {
                    ErrorClass::BotCannotReach
                } else {
                    ErrorClass::Refused
                }
            }
            Self::BadResponse(_) => ErrorClass::BadResponse,
            Self::TooLarge { .. } => ErrorClass::Refused,
        }
    }

    /// Whether a non-idempotent create may be retried: only when it certainly did not land.
    pub fn create_may_retry(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Unreachable(_))
    }

    /// Whether an idempotent call (update, delete, reads) may be retried.
    pub fn idempotent_may_retry(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Unreachable(_) | Self::Ambiguous(_))
    }

    /// Teams refused a stream post because the stream may no longer be written to: the user pressed
    /// Stop, or the stream passed its 2-minute limit (`403` with `ContentStreamNotAllowed`).
    pub fn stream_not_allowed(&self) -> bool {
        matches!(self, Self::Rejected { status: 403, code, sub_code } if code == "ContentStreamNotAllowed" || matches!(sub_code.as_deref(), Some("ContentStreamNotAllowed" | STREAM_TIME_EXCEEDED)))
    }

    /// Teams refused a stream post because the stream passed its 2-minute limit (the streamed message can
    /// still be edited in place), as opposed to the user pressing Stop.
    pub fn stream_time_exceeded(&self) -> bool {
        matches!(self, Self::Rejected { status: 403, sub_code: Some(s), .. } if s == STREAM_TIME_EXCEEDED)
    }

    /// `404`: the message (or conversation) is not there, e.g. the user deleted the message being edited.
    pub fn not_found(&self) -> bool {
        matches!(self, Self::Rejected { status: 404, .. })
    }

    /// The bot was blocked or uninstalled (`403` with `MessageWritesBlocked`).
    pub fn writes_blocked(&self) -> bool {
        matches!(self, Self::Rejected { status: 403, code, sub_code } if code == "MessageWritesBlocked" || sub_code.as_deref() == Some("MessageWritesBlocked"))
    }
}

/// The sub code given to a `403 ContentStreamNotAllowed` whose message says the stream passed Teams' time
/// limit (Teams has no code of its own for it): [`ConnectorError::stream_time_exceeded`].
pub(crate) const STREAM_TIME_EXCEEDED: &str = "ContentStreamTimeExceeded";

/// Where a call goes: the conversation's service URL and the bot's cloud.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    pub cloud: Cloud,
    pub service_url: &'a str,
}

/// A request's URL, and whether it may carry only the dev placeholder token.
struct Target {
    url: String,
    placeholder: bool,
}

/// Bot Connector REST client.
#[derive(Debug, Clone)]
pub struct ConnectorClient {
    http: reqwest::Client,
    policy: ConnectorPolicy,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    sub_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl ConnectorClient {
    pub fn new(policy: ConnectorPolicy, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, policy })
    }

    fn url(&self, ep: &Endpoint<'_>, path: &str) -> Result<Target, ConnectorError> {
        self.policy.check(ep.cloud, ep.service_url).map_err(|_| ConnectorError::HostNotAllowed)?;
        if crate::http_util::has_dot_or_empty_segment(path) {
            return Err(ConnectorError::BadId);
        }
        let base = ep.service_url.trim();
        let sep = if base.ends_with('/') { "" } else { "/" };
        let url = format!("{base}{sep}{path}");
        // The Agents Playground's loopback connector (dev mode) only ever gets the placeholder: any local
        // process can listen there, so a real bot or Agent User token must never go to it. An endpoint
        // the operator configured (`clouds.<cloud>.connector_endpoints`) is trusted with real tokens.
        let placeholder = self.policy.placeholder_only(ep.cloud, ep.service_url);
        Ok(Target { url, placeholder })
    }

    async fn call(
        &self,
        method: Method,
        target: Target,
        token: &SecretString,
        body: Option<&Value>,
    ) -> Result<(StatusCode, bytes::Bytes), ConnectorError> {
        let token = if target.placeholder { tokens::DEV_PLACEHOLDER_TOKEN } else { token.expose_secret() };
        let mut req = self.http.request(method, target.url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(classify_send_error)?;
        let status = resp.status();
        let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let bytes = resp.bytes().await.map_err(|e| ConnectorError::Ambiguous(format!("reading the answer: {}", e.without_url())))?;
        if status.is_success() {
            return Ok((status, bytes));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(ConnectorError::Throttled { retry_after });
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::PRECONDITION_FAILED {
            return Err(ConnectorError::Ambiguous(format!("HTTP {}", status.as_u16())));
        }
        Err(rejected(status.as_u16(), &bytes))
    }

    fn resource<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, ConnectorError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default()); // Teams often answers 2xx with no body
        }
        serde_json::from_slice(bytes).map_err(|e| ConnectorError::BadResponse(e.to_string()))
    }

    /// `POST v3/conversations/{conversation}/activities`
    pub async fn send_to_conversation(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        activity: &Value,
    ) -> Result<ResourceResponse, ConnectorError> {
        let url = self.url(ep, &format!("v3/conversations/{}/activities", segment(conversation)))?;
        let (_, body) = self.call(Method::POST, url, token, Some(activity)).await?;
        Self::resource(&body)
    }

    /// `POST v3/conversations/{conversation}/activities/{reply_to}`
    pub async fn reply_to_activity(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        reply_to: &str,
        activity: &Value,
    ) -> Result<ResourceResponse, ConnectorError> {
        let url = self.url(ep, &format!("v3/conversations/{}/activities/{}", segment(conversation), segment(reply_to)))?;
        let (_, body) = self.call(Method::POST, url, token, Some(activity)).await?;
        Self::resource(&body)
    }

    /// `PUT v3/conversations/{conversation}/activities/{activity_id}`
    pub async fn update_activity(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        activity_id: &str,
        activity: &Value,
    ) -> Result<ResourceResponse, ConnectorError> {
        let url = self.url(ep, &format!("v3/conversations/{}/activities/{}", segment(conversation), segment(activity_id)))?;
        let (_, body) = self.call(Method::PUT, url, token, Some(activity)).await?;
        Self::resource(&body)
    }

    /// `POST v3/conversations/{conversation}/activities?isTargetedActivity=true`: a targeted (private)
    /// message; the activity names its one recipient ([`crate::teams::targeted::create`]).
    pub async fn send_targeted(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        activity: &Value,
    ) -> Result<ResourceResponse, ConnectorError> {
        let path = format!("v3/conversations/{}/activities?{}", segment(conversation), crate::teams::targeted::QUERY);
        let (_, body) = self.call(Method::POST, self.url(ep, &path)?, token, Some(activity)).await?;
        Self::resource(&body)
    }

    /// `PUT v3/conversations/{conversation}/activities/{activity_id}?isTargetedActivity=true`: replace a
    /// targeted message (the activity names no recipient, [`crate::teams::targeted::update`]).
    pub async fn update_targeted(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        activity_id: &str,
        activity: &Value,
    ) -> Result<ResourceResponse, ConnectorError> {
        let path =
            format!("v3/conversations/{}/activities/{}?{}", segment(conversation), segment(activity_id), crate::teams::targeted::QUERY);
        let (_, body) = self.call(Method::PUT, self.url(ep, &path)?, token, Some(activity)).await?;
        Self::resource(&body)
    }

    /// `GET v3/conversations/{conversation}/members/{member}`: one member's account, by Teams id (`29:…`)
    /// or AAD object id (`TeamsInfo.getMember`); `None` when the Connector says there is no such member
    /// (404).
    pub async fn conversation_member(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        member: &str,
    ) -> Result<Option<Value>, ConnectorError> {
        let url = self.url(ep, &format!("v3/conversations/{}/members/{}", segment(conversation), segment(member)))?;
        match self.call(Method::GET, url, token, None).await {
            Ok((_, body)) => {
                let account: Value = Self::resource::<Option<Value>>(&body)?.unwrap_or(Value::Null);
                if account.get("id").and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(ConnectorError::BadResponse("the member has no id".into()));
                }
                Ok(Some(account))
            }
            Err(ConnectorError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET v3/teams/{team}`: a team's details (`TeamsInfo.getTeamDetails`: `id`, `name`, `aadGroupId`,
    /// the team's Microsoft 365 group id that Graph names it by); `None` when the Connector has no such team
    /// for the bot (404).
    pub async fn team_details(&self, ep: &Endpoint<'_>, token: &SecretString, team: &str) -> Result<Option<Value>, ConnectorError> {
        let url = self.url(ep, &format!("v3/teams/{}", segment(team)))?;
        match self.call(Method::GET, url, token, None).await {
            Ok((_, body)) => Ok(Self::resource::<Option<Value>>(&body)?.filter(Value::is_object)),
            Err(ConnectorError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE v3/conversations/{conversation}/activities/{activity_id}`
    pub async fn delete_activity(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        activity_id: &str,
    ) -> Result<(), ConnectorError> {
        let url = self.url(ep, &format!("v3/conversations/{}/activities/{}", segment(conversation), segment(activity_id)))?;
        self.call(Method::DELETE, url, token, None).await.map(|_| ())
    }

    /// `PUT` (add) or `DELETE` (remove) `v3/conversations/{id}/activities/{id}/reactions/{type}`: the bot's
    /// reaction on a message, no body (teams.py `clients/reaction/client.py`; .NET `AddReactionAsync`).
    pub async fn set_reaction(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        activity_id: &str,
        reaction: &str,
        remove: bool,
    ) -> Result<(), ConnectorError> {
        let url = self.url(
            ep,
            &format!("v3/conversations/{}/activities/{}/reactions/{}", segment(conversation), segment(activity_id), segment(reaction)),
        )?;
        let method = if remove { Method::DELETE } else { Method::PUT };
        self.call(method, url, token, None).await.map(|_| ())
    }

    /// `GET` an attachment on the Connector (an inline image, `…/v3/attachments/{id}/views/original`) with
    /// the bot's (or the acting identity's) token, at most `limit` bytes: the body and its `Content-Type`.
    /// The URL itself must be on an allow-listed Connector host of the cloud (or a configured endpoint);
    /// the Playground's loopback connector gets the placeholder, as for every call.
    pub async fn get_attachment(
        &self,
        cloud: Cloud,
        url: &str,
        token: &SecretString,
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), ConnectorError> {
        self.policy.check(cloud, url).map_err(|_| ConnectorError::HostNotAllowed)?;
        let token = if self.policy.placeholder_only(cloud, url) { tokens::DEV_PLACEHOLDER_TOKEN } else { token.expose_secret() };
        let mut resp = self.http.get(url.trim()).bearer_auth(token).send().await.map_err(classify_send_error)?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            return Err(ConnectorError::Throttled { retry_after });
        }
        if status.is_server_error() {
            return Err(ConnectorError::Ambiguous(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(ConnectorError::Rejected { status: status.as_u16(), code: String::new(), sub_code: None });
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(ConnectorError::TooLarge { limit });
        }
        let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut out = Vec::new();
        while let Some(chunk) =
            resp.chunk().await.map_err(|e| ConnectorError::Ambiguous(format!("reading the answer: {}", e.without_url())))?
        {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(ConnectorError::TooLarge { limit });
            }
        }
        Ok((out, content_type))
    }

    /// `POST v3/conversations`: a 1:1 conversation with `user_id` (proactive messaging).
    pub async fn create_personal_conversation(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        bot_id: &str,
        user_id: &str,
        tenant_id: &str,
    ) -> Result<ConversationResource, ConnectorError> {
        let url = self.url(ep, "v3/conversations")?;
        let body = serde_json::json!({
            "isGroup": false,
            "bot": {"id": bot_id},
            "members": [{"id": user_id}],
            "tenantId": tenant_id,
            "channelData": {"tenant": {"id": tenant_id}},
        });
        let (_, bytes) = self.call(Method::POST, url, token, Some(&body)).await?;
        let r: ConversationResource = Self::resource(&bytes)?;
        if r.id.is_empty() {
            return Err(ConnectorError::BadResponse("the created conversation has no id".into()));
        }
        Ok(r)
    }

    /// `GET v3/conversations/{conversation}/pagedmembers`
    pub async fn members_page(
        &self,
        ep: &Endpoint<'_>,
        token: &SecretString,
        conversation: &str,
        page_size: u32,
        continuation: Option<&str>,
    ) -> Result<PagedMembers, ConnectorError> {
        let mut path = format!("v3/conversations/{}/pagedmembers?pageSize={page_size}", segment(conversation));
        if let Some(c) = continuation {
            path.push_str("&continuationToken=");
            path.push_str(&segment(c));
        }
        let url = self.url(ep, &path)?;
        let (_, body) = self.call(Method::GET, url, token, None).await?;
        Self::resource(&body)
    }
}

/// Longest conversation id Microsoft's SDKs put in the URL of an agentic call on the `agents` channel.
pub(crate) const AGENTS_MAX_CONVERSATION_ID: usize = 150;

/// The conversation id as it goes into the URL path of a send or reply: for an agentic sender
/// (`agenticUser` / `agenticAppInstance`) on the `agents` channel (Agent 365 notifications), cut to 150
/// characters and with `/ \ # ?` replaced by `_`, as Microsoft's SDKs do; unchanged otherwise (the
/// activity's own `conversation.id` always keeps the full id). Then percent-encoded as a path segment.
///
/// Mirrors Agents-for-js `packages/agents-hosting/src/connector-client/connectorClient.ts`
/// (`conditionallyTruncateConversationId`, used by `sendToConversation` and `replyToActivity`;
/// `MAX_APX_CONVERSATION_ID_LENGTH`, default 150, `replace(/[/\\#?]/g, '_')`, at f503cf98) and
/// Agents-for-python `libraries/microsoft-agents-hosting-core/microsoft_agents/hosting/core/connector/client/connector_client.py`
/// (`_normalize_conversation_id` / `_should_sanitize_conversation_id`, at 8ff0ac3b). The channel may carry
/// a sub-channel (`agents:email`); its base is compared, as Python does. JS cuts UTF-16 units, Python code
/// points; we cut characters (code points), which never splits one.
pub(crate) fn url_conversation_id<'a>(
    conversation: &'a str,
    channel_id: Option<&str>,
    from_role: Option<&str>,
) -> std::borrow::Cow<'a, str> {
    let agents = channel_id.is_some_and(|c| c.split(':').next().is_some_and(|base| base.eq_ignore_ascii_case("agents")));
    let agentic = from_role.is_some_and(|r| r.eq_ignore_ascii_case("agenticUser") || r.eq_ignore_ascii_case("agenticAppInstance"));
    if !(agents && agentic) {
        return std::borrow::Cow::Borrowed(conversation);
    }
    let cut: String =
        conversation.chars().take(AGENTS_MAX_CONVERSATION_ID).map(|c| if matches!(c, '/' | '\\' | '#' | '?') { '_' } else { c }).collect();
    std::borrow::Cow::Owned(cut)
}

/// A definite refusal, with the code and sub code of its error body.
fn rejected(status: u16, bytes: &[u8]) -> ConnectorError {
    let detail = serde_json::from_slice::<ErrorBody>(bytes).ok().and_then(|b| b.error);
    let (code, sub_code) = match detail {
        Some(d) => {
            let m = d.message.unwrap_or_default();
            // Teams sometimes puts the sub code in the message only.
            let mut sub = d
                .sub_code
                .or_else(|| ["MessageWritesBlocked", "ContentStreamNotAllowed"].into_iter().find(|c| m.contains(c)).map(str::to_owned));
            // A stream past Teams' 2 minutes and a stream the user stopped share their code: only the
            // message tells them apart ("Content stream finished due to exceeded streaming time.").
            let not_allowed = d.code == "ContentStreamNotAllowed" || sub.as_deref() == Some("ContentStreamNotAllowed");
            if not_allowed && m.to_ascii_lowercase().contains("exceeded streaming time") {
                sub = Some(STREAM_TIME_EXCEEDED.to_owned());
            }
            (d.code, sub)
        }
        None => (String::new(), None),
    };
    ConnectorError::Rejected { status, code, sub_code }
}

fn classify_send_error(e: reqwest::Error) -> ConnectorError {
    let e = e.without_url();
    if e.is_connect() {
        ConnectorError::Unreachable(crate::http_util::error_chain(&e))
    } else {
        ConnectorError::Ambiguous(crate::http_util::error_chain(&e))
    }
}

pub(crate) use crate::http_util::parse_retry_after;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classed_by_status_and_code_never_by_message() {
        use crate::store::ErrorClass;
        let rejected =
            |status, code: &str, sub: Option<&str>| ConnectorError::Rejected { status, code: code.into(), sub_code: sub.map(Into::into) };
        assert_eq!(rejected(403, "Forbidden", None).class(), ErrorClass::BotCannotReach);
        assert_eq!(rejected(404, "NotFound", None).class(), ErrorClass::BotCannotReach);
        assert_eq!(rejected(400, "ConversationNotFound", None).class(), ErrorClass::BotCannotReach);
        assert_eq!(rejected(400, "BadArgument", Some("botnotinconversationroster")).class(), ErrorClass::BotCannotReach);
        assert_eq!(rejected(400, "BadArgument", Some("MessageWritesBlocked")).class(), ErrorClass::BotCannotReach);
        assert_eq!(rejected(400, "BadArgument", None).class(), ErrorClass::Refused);
        assert_eq!(rejected(413, "MessageSizeTooBig", None).class(), ErrorClass::Refused);
        assert_eq!(ConnectorError::Throttled { retry_after: None }.class(), ErrorClass::Throttled);
        assert_eq!(ConnectorError::Unreachable("refused".into()).class(), ErrorClass::Unreachable);
        assert_eq!(ConnectorError::Ambiguous("timeout".into()).class(), ErrorClass::Ambiguous);
        assert_eq!(ConnectorError::HostNotAllowed.class(), ErrorClass::Local);
        for class in [ErrorClass::BotCannotReach, ErrorClass::Cancelled, ErrorClass::Interrupted, ErrorClass::Throttled] {
            assert_eq!(ErrorClass::parse(class.as_str()), Some(class));
        }
        assert_eq!(ErrorClass::parse("403"), None);
    }

    #[test]
    fn a_stream_past_its_time_limit_is_told_from_a_stopped_one_by_the_message() {
        let body = |message: &str| json_body(&serde_json::json!({"error": {"code": "ContentStreamNotAllowed", "message": message}}));
        let expired = rejected(403, &body("Content stream finished due to exceeded streaming time."));
        assert!(expired.stream_time_exceeded() && expired.stream_not_allowed(), "{expired:?}");
        let stopped = rejected(403, &body("Content stream was cancelled by user."));
        assert!(stopped.stream_not_allowed() && !stopped.stream_time_exceeded(), "{stopped:?}");
        // The code in the message only, as Teams sometimes sends it.
        let only_message = json_body(
            &serde_json::json!({"error": {"code": "Forbidden", "message": "ContentStreamNotAllowed: Content stream finished due to exceeded streaming time."}}),
        );
        assert!(rejected(403, &only_message).stream_time_exceeded());
        // The same words under another code, or another status, are not the time limit.
        let other = json_body(&serde_json::json!({"error": {"code": "BadArgument", "message": "exceeded streaming time"}}));
        assert!(!rejected(403, &other).stream_time_exceeded());
        assert!(!rejected(400, &body("Content stream finished due to exceeded streaming time.")).stream_time_exceeded());
        assert!(rejected(404, b"").not_found() && !rejected(403, b"").not_found());
    }

    fn json_body(v: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("19:abc@thread.tacv2;messageid=123"), "19%3Aabc%40thread.tacv2%3Bmessageid%3D123");
        assert_eq!(segment("a:1/2 3"), "a%3A1%2F2%203");
    }

    #[test]
    fn agents_channel_conversation_ids_are_cut_and_sanitised_for_agentic_senders_only() {
        let long: String = "a/b\\c#d?e".repeat(20); // 180 characters
        let cut = url_conversation_id(&long, Some("agents"), Some("agenticUser"));
        assert_eq!(cut.chars().count(), 150);
        assert_eq!(&cut[..9], "a_b_c_d_e");
        assert!(!cut.contains(['/', '\\', '#', '?']));
        assert_eq!(url_conversation_id(&long, Some("agents:email"), Some("agenticAppInstance")), cut);
        // Short ids are only sanitised; other channels and non-agentic senders are left alone.
        assert_eq!(url_conversation_id("19:x/y", Some("agents"), Some("agenticuser")), "19:x_y");
        assert_eq!(url_conversation_id(&long, Some("msteams"), Some("agenticUser")), long);
        assert_eq!(url_conversation_id(&long, Some("agents"), None), long);
        assert_eq!(url_conversation_id(&long, Some("agents"), Some("bot")), long);
        assert_eq!(url_conversation_id(&long, None, Some("agenticUser")), long);
        // Multi-byte characters are counted, never split.
        let wide = "漢".repeat(200);
        assert_eq!(url_conversation_id(&wide, Some("agents"), Some("agenticUser")).chars().count(), 150);
        // Then encoded as a path segment.
        assert_eq!(segment(&url_conversation_id("a:1 2/3", Some("agents"), Some("agenticUser"))), "a%3A1%202_3");
    }

    #[test]
    fn retry_classification() {
        assert!(ConnectorError::Throttled { retry_after: None }.create_may_retry());
        assert!(ConnectorError::Unreachable("refused".into()).create_may_retry());
        assert!(!ConnectorError::Ambiguous("timeout".into()).create_may_retry());
        assert!(ConnectorError::Ambiguous("timeout".into()).idempotent_may_retry());
        let blocked = ConnectorError::Rejected { status: 403, code: "Forbidden".into(), sub_code: Some("MessageWritesBlocked".into()) };
        assert!(blocked.writes_blocked() && !blocked.create_may_retry());
    }
}
