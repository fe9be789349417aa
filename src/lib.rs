//! agentgate: gives an LLM agent a real seat in Microsoft Teams.
//!
//! The crate is organised by concern (see `docs/architecture.md`):
//! [`activity`] holds the Bot Framework wire types, [`auth`] validates inbound tokens,
//! [`inbound`] is the `/api/messages` pipeline, [`store`] is the durable state,
//! [`server`] wires it all into a running HTTP(S) server and [`cli`] is the command line.
//!
//! Only what the binary, the integration tests and the examples use is public; everything else is
//! `pub(crate)` (the `unreachable_pub` lint keeps it so).

#![warn(unreachable_pub)]

pub(crate) mod activity;
pub(crate) mod agent_id;
pub(crate) mod auth;
pub(crate) mod bridge;
pub mod cli;
pub mod config;
pub(crate) mod connector;
pub(crate) mod doctor;
pub mod entra;
pub mod graph;
pub(crate) mod http_util;
pub mod ids;
pub(crate) mod inbound;
pub mod mcp;
pub mod metrics;
pub mod secrets;
pub mod server;
pub(crate) mod service_url;
pub mod store;
pub(crate) mod teams;
pub mod teams_app;
pub(crate) mod telemetry;

/// Entry points for the coverage-guided fuzz targets in `fuzz/` (docs/fuzzing.md).
///
/// The fuzz crate is a separate crate and sees only the public API, while what it must reach (activity
/// parsing, the token check, splitting, the envelope) is `pub(crate)` and should stay so. These thin
/// wrappers expose exactly the calls the targets make, composed the way the intake and the bridge compose
/// them, and nothing else. Not an API: hidden from the docs, no stability promise, used by nothing else.
#[doc(hidden)]
pub mod fuzzing {
    use std::pin::pin;
    use std::sync::{Arc, OnceLock};
    use std::task::{Context, Poll, Waker};

    use crate::activity::Activity;
    use crate::auth::{BotEntry, Verifier};
    use crate::ids::Cloud;
    use crate::service_url::{self, ConnectorPolicy};

    /// The app id of the one bot [`verify_token`] knows.
    pub const BOT_APP_ID: &str = "11111111-2222-3333-4444-555555555555";

    /// What the intake makes of a body, up to the bot and tenant checks.
    #[derive(Debug)]
    pub struct Intake {
        /// The parsed activity serialized again, and parsed and serialized once more (they must agree).
        pub reserialized: serde_json::Value,
        pub reserialized_twice: serde_json::Value,
        /// `channelData.tenant.id` and `conversation.tenantId` as sent, and what `tenant_id()` made of them.
        pub tenant_fields: (Option<String>, Option<String>),
        pub tenant: Option<String>,
        /// The `serviceUrl` as sent; normalised the intake's way (parsed once, then normalised); normalised
        /// from the string.
        pub service_url: Option<String>,
        pub service_url_parsed: Option<String>,
        pub service_url_raw: Option<String>,
        /// Whether the public cloud's Connector allow-list accepts it (not in dev mode).
        pub service_url_allowed: bool,
        /// The text, and the text after the bot's own mention (bot id `28:bot`) is stripped, with the count.
        pub text: Option<String>,
        pub stripped: (Option<String>, usize),
    }

    /// A request body read the intake's way; `None` when it is not an activity.
    pub fn intake(body: &[u8]) -> Option<Intake> {
        let mut activity: Activity = serde_json::from_slice(body).ok()?;
        let reserialized = serde_json::to_value(&activity).ok()?;
        let again: Activity = serde_json::from_value(reserialized.clone()).ok()?;
        let reserialized_twice = serde_json::to_value(&again).ok()?;
        let tenant_fields = (
            activity.channel_data.as_ref().and_then(|c| c.tenant.as_ref()).map(|t| t.id.clone()),
            activity.conversation.as_ref().and_then(|c| c.tenant_id.clone()),
        );
        let tenant = activity.tenant_id().ok().map(str::to_owned);
        let service_url = activity.service_url.clone();
        let parsed = service_url.as_deref().and_then(|s| url::Url::parse(s.trim()).ok());
        let service_url_parsed = parsed.as_ref().and_then(service_url::normalize_url);
        let service_url_raw = service_url.as_deref().and_then(service_url::normalize);
        let service_url_allowed = parsed.as_ref().is_some_and(|u| ConnectorPolicy::new(false).check_url(Cloud::Public, u).is_ok());
        let _ = crate::activity::agentic_recipient(&activity);
        let text = activity.text.clone();
        let removed = crate::teams::mention::strip_bot_mention(&mut activity, "28:bot");
        Some(Intake {
            reserialized,
            reserialized_twice,
            tenant_fields,
            tenant,
            service_url,
            service_url_parsed,
            service_url_raw,
            service_url_allowed,
            text,
            stripped: (activity.text, removed),
        })
    }

    /// [`service_url::normalize`].
    pub fn normalize_service_url(raw: &str) -> Option<String> {
        service_url::normalize(raw)
    }

    /// Whether a token whose `serviceurl` claim is `claim` binds to an activity whose normalised
    /// `serviceUrl` is `activity_normalized`, as the verifier decides it (the claim is normalised the way
    /// verification does; one that does not normalise refuses the token).
    pub fn service_url_binds(claim: &str, activity_normalized: &str) -> bool {
        service_url::normalize(claim).is_some_and(|c| crate::auth::jwt::bind_service_url(Some(&c), activity_normalized).is_ok())
    }

    /// Whether the `Authorization` header value verifies for a verifier of one public-cloud bot
    /// ([`BOT_APP_ID`]) that has no signing keys: everything before the key lookup runs (the bearer
    /// scheme, the three segments, the header and the claims, issuer and audience checks). `None` if
    /// verification did not finish at once, which without keys it always does.
    pub fn verify_token(authorization: &[u8]) -> Option<bool> {
        static VERIFIER: OnceLock<Verifier> = OnceLock::new();
        let verifier = VERIFIER.get_or_init(|| {
            let bot = BotEntry {
                app_id: BOT_APP_ID.to_owned(),
                cloud: Cloud::Public,
                require_endorsement: true,
                allowed_tenants: std::collections::HashSet::new(),
                agentic: None,
            };
            Verifier::new(vec![bot], [None, None, None], 300, 64, Arc::new(crate::metrics::Metrics::new()))
        });
        match pin!(verifier.verify(authorization)).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r.is_ok()),
            Poll::Pending => None,
        }
    }

    /// [`crate::teams::split::split_text`].
    pub fn split_text(text: &str, limit: usize) -> Vec<String> {
        crate::teams::split::split_text(text, limit)
    }

    /// [`crate::teams::split::utf16_len`].
    pub fn utf16_len(s: &str) -> usize {
        crate::teams::split::utf16_len(s)
    }

    /// [`crate::bridge::envelope::wrap`].
    pub fn wrap(body: &str, nonce: &str) -> String {
        crate::bridge::envelope::wrap(body, nonce)
    }

    /// [`crate::bridge::envelope::new_nonce`].
    pub fn new_nonce() -> String {
        crate::bridge::envelope::new_nonce()
    }

    /// [`crate::bridge::envelope::html_to_text`] (the bridge's, for inbound Teams HTML).
    pub fn html_to_text(html: &str) -> String {
        crate::bridge::envelope::html_to_text(html)
    }

    /// [`crate::bridge::envelope::meta_value`].
    pub fn meta_value(s: &str) -> String {
        crate::bridge::envelope::meta_value(s)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_facade_reads_a_playground_activity_and_refuses_tokens() {
            let i = intake(crate::teams::testdata::CHANNEL_MENTION.as_bytes()).unwrap();
            assert_eq!(i.reserialized, i.reserialized_twice);
            assert!(i.tenant.is_some() && i.service_url_parsed.is_some());
            assert_eq!(i.service_url_parsed, i.service_url_raw);
            assert!(intake(b"[]").is_none());
            assert_eq!(verify_token(b"Bearer a.b.c"), Some(false));
            assert!(service_url_binds("https://SMBA.trafficmanager.net/amer/", "https://smba.trafficmanager.net/amer"));
            assert!(!service_url_binds("https://smba.trafficmanager.net/emea/", "https://smba.trafficmanager.net/amer"));
        }
    }
}
