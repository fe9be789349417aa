//! `POST /api/graph/notifications` and `/api/graph/lifecycle`: Microsoft Graph change and lifecycle
//! notifications for the Agent User's chats and mail.
//!
//! A `?validationToken=` is echoed at once (200, `text/plain`, the URL-decoded token). Otherwise each
//! notification's `clientState` is compared in constant time with its stored subscription's, the accepted
//! ones are made durable (a small row each) and only then is the request answered 202; the slow work (the
//! fetch with the Agent User's token, the conversion, the inbox commit) happens afterwards, in the worker
//! ([`crate::bridge::graph_inbound`]). A mail notification makes no row: it wakes the mail worker
//! ([`crate::bridge::mail_inbound`]), whose Inbox delta token is the durable state (a notification lost in a
//! crash is covered by the read every start makes). An unknown subscription or a wrong `clientState` still gets
//! its 202, and nothing is done.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Longest validation token echoed (Graph's are far shorter).
const MAX_VALIDATION_TOKEN: usize = 4096;

/// The handler of both paths.
pub(crate) async fn notifications(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if state.graph.is_none() && state.mail.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(token) = query.get("validationToken") {
        if token.len() > MAX_VALIDATION_TOKEN {
            return StatusCode::BAD_REQUEST.into_response();
        }
        let headers = [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ];
        return (StatusCode::OK, headers, token.clone()).into_response();
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        tracing::warn!("a Graph notification request that is not JSON was refused: 400");
        return StatusCode::BAD_REQUEST.into_response();
    };
    let accepted = match crate::bridge::graph_inbound::check_notifications(state.store.as_ref(), &body).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "Graph notifications refused: 503, the subscriptions could not be read");
            return unavailable();
        }
    };
    let count = accepted.len();
    // Mail: each notification only says "read the Inbox" (its delta token is the durable state), so it needs no row.
    if let Some(mail) = &state.mail {
        mail.notified(&accepted);
    }
    if let Some(graph) = &state.graph
        && let Err(e) = graph.record(accepted).await
    {
        // Graph tries again for up to 4 hours.
        tracing::error!(error = %e, "Graph notifications refused: 503, the store did not commit");
        return unavailable();
    }
    tracing::debug!(count, "Graph notifications recorded");
    StatusCode::ACCEPTED.into_response()
}

fn unavailable() -> Response {
    let mut resp = StatusCode::SERVICE_UNAVAILABLE.into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    resp
}
