//! Outbound token acquisition from Microsoft Entra ID: the bot's own client-credentials token for the
//! Bot Connector.
//!
//! * [`ClientCredential`]: a client secret, or a certificate whose key signs RS256 client assertions
//!   (`x5t#S256` and `x5t` thumbprints, `x5c` on request).
//! * [`Authority`] / [`TokenEndpoint`]: `{authority}/{tenant}/oauth2/v2.0/token` per cloud; https only
//!   (plain http on loopback for local fakes).
//! * [`TokenClient`]: the request, response checks (the `error` field first; AADSTS codes with hints),
//!   retries (the shared loop of [`crate::http_util::retry`]) and the cache.
//! * `cache`: the single-flight, refresh-ahead token cache of [`TokenClient`] and [`AgentTokenChain`].
//! * [`BotTokenProvider`]: a configured bot tied to all of the above.
//! * [`AgentTokenChain`] / [`AgentUserTokens`]: the three-hop Agent User chain (Blueprint → Agent
//!   Identity → Agent User) with its caches (the same cache).

use std::time::SystemTime;

pub mod agent;
mod cache;
pub mod client;
pub mod credential;
pub mod endpoint;
pub mod error;
pub mod inspect;
pub mod provider;

pub use agent::{
    AgentMode, AgentTokenChain, AgentTokenError, AgentUser, AgentUserConfig, AgentUserTokens, DEFAULT_AGENTIC_SCOPE, DEFAULT_GRAPH_SCOPE,
    Hop, TOKEN_EXCHANGE_SCOPE,
};
pub use client::{AccessToken, RetryPolicy, TokenClient, TokenClientSettings, TokenRequest};
pub use credential::{CertificateCredential, ClientCredential};
pub use endpoint::{Authority, TokenEndpoint, bot_scope, bot_tenant, default_authority, legacy_bot_tenant};
pub use error::{EntraError, SetupError, TokenError};
pub use provider::BotTokenProvider;

/// The time source for token expiry and client assertion times (a test clock can move time forward).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
