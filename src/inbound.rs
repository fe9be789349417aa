//! `POST /api/messages`: authenticate, parse, gate, deduplicate, commit, then acknowledge.
//!
//! Order of checks: content type (415), body size (413), token signature and claims (401, or 503 with
//! no signing keys), body shape (400), token binding to the activity (401), Connector allow-list of the
//! `serviceUrl` (400), tenant allow-list (403), then the durable commit. Nothing is acknowledged before
//! it is committed. Failure bodies are generic; the reason goes to the log and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::activity::{Activity, InvokeResponse, Kind};
use crate::auth::{AuthError, Verifier};
use crate::ids::{AadObjectId, AuthKind};
use crate::metrics::{AuthReason, Metrics, Outcome};
use crate::service_url::{self, ConnectorPolicy};
use crate::store::{CommitOutcome, ConversationRef, InboundRecord, RecentCommits, Store, now_ms};

pub(crate) mod graph;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub connectors: ConnectorPolicy,
    /// `serve --dev`: unauthenticated Playground requests are accepted (loopback only).
    pub dev: bool,
    pub invoke_ack_text: String,
    pub dedupe_ttl: Duration,
    /// The activities committed here lately: a redelivery of one is acknowledged without asking the store.
    pub recent: RecentCommits,
    /// Policy, approval answers and the MCP sessions' wake-up.
    pub gate: Arc<crate::bridge::gate::InboundGate>,
    /// The Agent User inbound through Graph change notifications, when some bot has it on.
    pub(crate) graph: Option<Arc<crate::bridge::graph_inbound::GraphInbound>>,
    /// The Agent User's mail, when some bot has it on and Graph can reach the gateway (else it polls).
    pub(crate) mail: Option<Arc<crate::bridge::mail_inbound::MailInbound>>,
    /// Each bot's welcome message (by lower-case app id), for bots that have one.
    pub(crate) welcome: std::collections::HashMap<String, serde_json::Value>,
    /// Files: a committed answer to a file consent card starts the upload.
    pub(crate) files: Option<Arc<crate::bridge::files::Files>>,
}

/// A refused request. The response body never says more than the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    BadRequest(&'static str),
    Unauthorized(AuthReason),
    Forbidden(&'static str),
    PayloadTooLarge,
    UnsupportedMediaType,
    NoKeys,
    StoreUnavailable,
}

impl Refusal {
    fn outcome(self) -> Outcome {
        match self {
            Refusal::BadRequest(_) => Outcome::BadRequest,
            Refusal::Unauthorized(_) => Outcome::Unauthorized,
            Refusal::Forbidden(_) => Outcome::Forbidden,
            Refusal::PayloadTooLarge => Outcome::PayloadTooLarge,
            Refusal::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            Refusal::NoKeys | Refusal::StoreUnavailable => Outcome::Unavailable,
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Refused(r) => Refusal::Unauthorized(r),
            AuthError::NoKeys => Refusal::NoKeys,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Refusal::BadRequest(_) => (StatusCode::BAD_REQUEST, r#"{"error":"bad request"}"#),
            Refusal::Unauthorized(_) => (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#),
            Refusal::Forbidden(_) => (StatusCode::FORBIDDEN, r#"{"error":"forbidden"}"#),
            Refusal::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, r#"{"error":"payload too large"}"#),
            Refusal::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, r#"{"error":"expected application/json"}"#),
            Refusal::NoKeys | Refusal::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"unavailable"}"#),
        };
        let mut resp = (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
        match self {
            Refusal::Unauthorized(_) => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::NoKeys | Refusal::StoreUnavailable => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            _ => {}
        }
        resp
    }
}

/// The handler for `POST /api/messages`.
pub(crate) async fn api_messages(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // `serve --dev` takes unauthenticated requests: only from pages and tools that name a loopback host,
    // so a web page elsewhere cannot reach it through DNS rebinding.
    // Every log line of this request carries the bot, tenant and activity it is about, once known (never a
    // token). The fields are recorded by `intake` as it learns them.
    let span = tracing::info_span!(
        "activity",
        bot = tracing::field::Empty,
        tenant = tracing::field::Empty,
        activity_id = tracing::field::Empty,
        kind = tracing::field::Empty
    );
    let intake = if state.dev && !loopback_host(&headers, &uri) {
        Err(Refusal::Forbidden("dev mode: the Host header is not a loopback name"))
    } else {
        intake(&state, &headers, body).instrument(span.clone()).await
    };
    let _entered = span.enter();
    match intake {
        Ok((outcome, response)) => {
            state.metrics.request(outcome);
            response
        }
        Err(refusal) => {
            state.metrics.request(refusal.outcome());
            match refusal {
                Refusal::Unauthorized(reason) => {
                    state.metrics.auth_failure(reason);
                    tracing::warn!(reason = reason.label(), "inbound request refused: 401");
                }
                Refusal::BadRequest(why) => tracing::warn!(reason = why, "inbound request refused: 400"),
                Refusal::Forbidden(why) => tracing::warn!(reason = why, "inbound request refused: 403"),
                Refusal::NoKeys => tracing::error!("inbound request refused: 503, no signing keys are loaded"),
                Refusal::StoreUnavailable => tracing::error!("inbound request refused: 503, the store did not commit"),
                Refusal::PayloadTooLarge | Refusal::UnsupportedMediaType => {
                    tracing::info!(outcome = refusal.outcome().label(), "inbound request refused");
                }
            }
            refusal.into_response()
        }
    }
}

/// 405 for anything but POST on `/api/messages`.
pub(crate) async fn method_not_allowed(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request(Outcome::MethodNotAllowed);
    let mut resp =
        (StatusCode::METHOD_NOT_ALLOWED, [(header::CONTENT_TYPE, "application/json")], r#"{"error":"method not allowed"}"#).into_response();
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    resp
}

/// Whether the request names a loopback host (`localhost`, `127.0.0.1` or `[::1]`, any port) in `Host`
/// (or, without it, the request target's authority, as HTTP/2 sends it).
fn loopback_host(headers: &HeaderMap, uri: &Uri) -> bool {
    let authority = match headers.get(header::HOST) {
        Some(v) => v.to_str().ok().and_then(|v| v.parse::<Authority>().ok()),
        None => uri.authority().cloned(),
    };
    authority.is_some_and(|a| {
        let host = a.host().trim_end_matches('.');
        host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "[::1]" || host == "::1"
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

async fn intake(state: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<(Outcome, Response), Refusal> {
    if !is_json(headers) {
        return Err(Refusal::UnsupportedMediaType);
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE { Refusal::PayloadTooLarge } else { Refusal::BadRequest("unreadable body") }
    })?;

    // Authenticate before looking at the body.
    let token = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(state.verifier.verify(value.as_bytes()).await?),
        None if state.dev => None,
        None => return Err(Refusal::Unauthorized(AuthReason::MissingHeader)),
    };

    let activity: Activity = serde_json::from_slice(&body).map_err(|_| Refusal::BadRequest("body is not an activity"))?;
    if activity.kind.is_empty() {
        return Err(Refusal::BadRequest("activity has no type"));
    }
    let conversation_id = activity.conversation_id().ok_or(Refusal::BadRequest("activity has no conversation.id"))?.to_owned();
    let raw_service_url = activity.service_url.as_deref().ok_or(Refusal::BadRequest("activity has no serviceUrl"))?;
    // Parsed once: every check below reads the same URL.
    let parsed_service_url = url::Url::parse(raw_service_url.trim()).map_err(|_| Refusal::BadRequest("serviceUrl is not a valid URL"))?;
    let normalized_service_url =
        service_url::normalize_url(&parsed_service_url).ok_or(Refusal::BadRequest("serviceUrl is not a valid URL"))?;

    let (bot_index, auth) = match &token {
        // An Entra-issued (agentic) token carries no serviceurl: it is bound to the activity's tenant below.
        Some(t) if t.agentic_tenant.is_some() => (t.bot, AuthKind::Entra),
        Some(t) => {
            state.verifier.bind(t, &normalized_service_url, activity.channel_id.as_deref()).map_err(Refusal::Unauthorized)?;
            (t.bot, AuthKind::BotFramework)
        }
        None => {
            // Dev mode, no token: only the Playground's loopback connector, only for a configured bot.
            if !service_url::is_dev_connector(&parsed_service_url) {
                return Err(Refusal::Unauthorized(AuthReason::MissingHeader));
            }
            let recipient = activity.recipient.as_ref().map_or("", |r| r.id.as_str());
            let app_id = recipient.strip_prefix("28:").unwrap_or(recipient);
            let bot = state.verifier.bot_by_app_id(app_id).ok_or(Refusal::Unauthorized(AuthReason::DevAnonymousRefused))?;
            // A configured Connector endpoint receives real tokens: only an authenticated activity may
            // name it, never an anonymous dev one.
            if state.connectors.is_configured_endpoint_url(state.verifier.bot(bot).cloud, &parsed_service_url) {
                return Err(Refusal::Unauthorized(AuthReason::DevAnonymousRefused));
            }
            (bot, AuthKind::Anonymous)
        }
    };
    let bot = state.verifier.bot(bot_index);
    let span = tracing::Span::current();
    span.record("bot", bot.app_id.as_str());
    span.record("kind", activity.kind.as_str());
    if let Some(id) = activity.id.as_deref() {
        span.record("activity_id", id);
    }

    state
        .connectors
        .check_url(bot.cloud, &parsed_service_url)
        .map_err(|_| Refusal::BadRequest("serviceUrl is not an allow-listed Connector endpoint"))?;

    let tenant = activity.tenant_id().map_err(|e| match e {
        crate::activity::TenantError::Missing => Refusal::Forbidden("activity names no tenant"),
        crate::activity::TenantError::Disagree => Refusal::Forbidden("channelData.tenant.id and conversation.tenantId disagree"),
    })?;
    tracing::Span::current().record("tenant", tenant);
    if !bot.allows_tenant(tenant) {
        return Err(Refusal::Forbidden("tenant is not on the bot's allow-list"));
    }
    if let Some(tid) = token.as_ref().and_then(|t| t.agentic_tenant.as_deref())
        && !tid.eq_ignore_ascii_case(tenant)
    {
        return Err(Refusal::Unauthorized(AuthReason::TenantMismatch));
    }
    let agentic = crate::activity::agentic_recipient(&activity);
    // An Entra-authenticated activity must be addressed to this bot's own Agent Identity and User: the
    // reply tokens are minted for them.
    if auth == AuthKind::Entra {
        let owned = agentic.as_ref().zip(bot.agentic.as_ref()).is_some_and(|(r, entry)| entry.owns(r, tenant));
        if !owned {
            return Err(Refusal::Forbidden("the agentic recipient is not this bot's Agent Identity and Agent User"));
        }
    }
    if let Some(recipient) = activity.recipient.as_ref().map(|r| r.id.as_str()).filter(|_| agentic.is_none()) {
        let expected = recipient.strip_prefix("28:").unwrap_or(recipient);
        if !expected.eq_ignore_ascii_case(&bot.app_id) {
            tracing::warn!(recipient, "activity recipient is not the bot the token was issued for");
        }
    }

    let now = now_ms();
    let kind = activity.kind();
    // A user's edit or deletion carries the id of the message it changes: keyed by the change instead.
    let change = crate::bridge::amend::Change::of(&activity);
    let message_id = activity.id.as_deref().filter(|s| !s.is_empty());
    let activity_id = match (message_id, change) {
        (Some(id), Some(change)) => crate::bridge::amend::dedupe_key(id, change, &body),
        (Some(id), None) => id.to_owned(),
        (None, _) => format!("agentgate:{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
    };
    // A redelivery of what this process committed moments ago: acknowledged as the store would answer it,
    // without the round trip (everything above, authentication included, was checked all the same).
    if message_id.is_some() && state.recent.committed(&bot.app_id, &conversation_id, &activity_id, now) {
        tracing::info!(activity_id = %activity_id, "duplicate delivery acknowledged without a second commit");
        return Ok((Outcome::Duplicate, acknowledgement(state, &activity, kind, None)));
    }
    // installationUpdate remove, or a conversationUpdate removing the bot: the reference stays, marked
    // unusable, so that nothing is sent there until the bot is added again.
    let uninstalled = crate::teams::installation_change(&activity) == Some(crate::teams::Installation::Removed);
    let mut classified = state.gate.classify(&bot.app_id, &activity, token.is_some());
    let record = InboundRecord {
        bot_app_id: bot.app_id.clone().into(),
        tenant_id: tenant.to_owned().into(),
        conversation_id: conversation_id.clone().into(),
        activity_id: activity_id.clone(),
        activity_type: activity.kind.clone(),
        auth,
        body: std::str::from_utf8(&body).map_err(|_| Refusal::BadRequest("body is not UTF-8"))?.to_owned(),
        received_at_ms: now,
        dedupe_expires_at_ms: now.saturating_add(i64::try_from(state.dedupe_ttl.as_millis()).unwrap_or(i64::MAX)),
        reference: ConversationRef {
            bot_app_id: bot.app_id.clone().into(),
            conversation_id: conversation_id.into(),
            tenant_id: tenant.to_owned().into(),
            service_url: raw_service_url.to_owned(),
            channel_id: activity.channel_id.clone().unwrap_or_default(),
            conversation_type: activity.conversation.as_ref().and_then(|c| c.conversation_type.clone()),
            user_id: activity.from.as_ref().map(|f| f.id.clone()).filter(|s| !s.is_empty()),
            user_aad_object_id: activity.from.as_ref().and_then(|f| f.aad_object_id.as_deref()).map(AadObjectId::new),
            bot_id: activity.recipient.as_ref().map(|r| r.id.clone()).filter(|s| !s.is_empty()),
            usable: !uninstalled,
            updated_at_ms: now,
            // Replies to an agentic activity go out as its recipient (only for Entra-authenticated ones).
            agentic: agentic.filter(|_| auth == AuthKind::Entra),
            // An anonymous (dev) activity never overwrites what an authenticated one recorded.
            authenticated: auth.is_authenticated(),
        },
        state: classified.inbox_state(),
    };
    let record_conversation = record.conversation_id.clone();
    let (bot_key, expires) = (record.bot_app_id.clone(), record.dedupe_expires_at_ms);
    let amendment = change.zip(message_id).and_then(|(change, message_id)| {
        let seen = state.gate.delivered.contains(&bot.app_id, &record_conversation, message_id);
        crate::bridge::amend::amendment(change, message_id, &record.body, seen)
    });
    let outcome = match amendment {
        Some(amendment) => {
            let done = state.store.commit_amendment(record, amendment.clone()).await.map_err(|e| {
                tracing::error!(error = %e, "commit failed");
                Refusal::StoreUnavailable
            })?;
            classified = amended_classification(classified, &amendment, &done);
            done.outcome
        }
        None => state.store.commit_inbound(record).await.map_err(|e| {
            tracing::error!(error = %e, "commit failed");
            Refusal::StoreUnavailable
        })?,
    };
    let mut answer = None;
    let outcome = match outcome {
        CommitOutcome::Accepted { inbox_id } => {
            state.recent.remember(&bot_key, &record_conversation, &activity_id, expires);
            tracing::debug!(inbox_id, activity_id, kind = %activity.kind, "activity committed");
            answer = state.gate.committed(state.store.as_ref(), &classified, inbox_id, &bot.app_id, tenant, &record_conversation).await;
            if !uninstalled
                && crate::teams::installation_change(&activity) == Some(crate::teams::Installation::Added)
                && let Some(welcome) = state.welcome.get(&bot.app_id.to_ascii_lowercase())
            {
                crate::bridge::welcome::welcome(state.store.as_ref(), welcome, &bot.app_id, tenant, &record_conversation, raw_service_url)
                    .await;
            }
            if let Some(files) = &state.files {
                crate::bridge::files::consent::answered(files, &bot.app_id, tenant, &record_conversation, &activity, auth);
            }
            if let Some(feedback) = crate::teams::ai::feedback(&activity) {
                crate::bridge::gate::audit_feedback(state.store.as_ref(), &bot.app_id, tenant, &record_conversation, &activity, &feedback)
                    .await;
            }
            Outcome::Accepted
        }
        CommitOutcome::Duplicate => {
            tracing::info!(activity_id, "duplicate delivery acknowledged without a second commit");
            Outcome::Duplicate
        }
    };
    Ok((outcome, acknowledgement(state, &activity, kind, answer)))
}

/// How intake goes on after an edit or deletion was committed: its record's state as the store chose it
/// ([`Store::commit_amendment`](crate::store::Store::commit_amendment)), so that the sessions are woken for
/// a change that is for the host.
fn amended_classification(
    classified: crate::bridge::gate::Classified,
    amendment: &crate::store::Amendment,
    done: &crate::store::Amended,
) -> crate::bridge::gate::Classified {
    use crate::bridge::gate::Classified;
    use crate::store::InboxState;
    let state = match (done.amended, done.original) {
        (Some(id), _) => {
            let what = if amendment.withdraw { "withdrawn" } else { "patched" };
            tracing::info!(inbox_id = id, what, "a user's change applied to a pending inbox entry");
            amendment.state_if_amended
        }
        (None, Some((_, InboxState::Acked | InboxState::Withdrawn))) => amendment.state_if_delivered,
        _ => return classified,
    };
    match state {
        InboxState::Pending => Classified::Deliver,
        _ => Classified::Filter("change_applied_in_place"),
    }
}

/// The answer to a committed (or already committed) activity: 202, or for an invoke the invoke response.
fn acknowledgement(state: &AppState, activity: &Activity, kind: Kind, answer: Option<InvokeResponse>) -> Response {
    if kind != Kind::Invoke {
        return StatusCode::ACCEPTED.into_response();
    }
    let r = match answer {
        // An approval answer: the card shows the outcome.
        Some(r) => r,
        // Universal Actions are checked as botbuilder checks them (missing value, not Action.Execute).
        None => match activity.name.as_deref() {
            Some("adaptiveCard/action") => match crate::teams::execute_action(activity) {
                Ok(_) => InvokeResponse::acknowledge(activity, &state.invoke_ack_text),
                Err(e) => e.response(),
            },
            _ => InvokeResponse::acknowledge(activity, &state.invoke_ack_text),
        },
    };
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    if r.body.is_null() {
        return status.into_response();
    }
    (status, axum::Json(r.body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_mode_hosts_are_loopback_names_only() {
        let check = |host: Option<&str>, uri: &str| {
            let mut headers = HeaderMap::new();
            if let Some(h) = host {
                headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            }
            loopback_host(&headers, &uri.parse().unwrap())
        };
        for ok in ["localhost", "LOCALHOST:3978", "127.0.0.1:56150", "[::1]:3978", "[::1]", "localhost."] {
            assert!(check(Some(ok), "/api/messages"), "{ok}");
        }
        for bad in ["evil.example", "localhost.evil.example", "127.0.0.2:3978", "10.0.0.1", "", "localhost@evil.example"] {
            assert!(!check(Some(bad), "/api/messages"), "{bad}");
        }
        assert!(!check(None, "/api/messages"), "no Host at all");
        assert!(check(None, "http://localhost:3978/api/messages"), "HTTP/2 authority");
    }
}
