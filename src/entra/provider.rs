//! A configured bot's outbound identity: its credential, token endpoint and Bot Framework scope.

use std::fmt;
use std::sync::Arc;

use super::client::{AccessToken, TokenClient, TokenRequest};
use super::credential::ClientCredential;
use super::endpoint::{Authority, bot_scope, bot_tenant};
use super::error::{SetupError, TokenError};
use crate::config::BotConfig;

/// Gets Bot Connector tokens for one configured bot, through a shared [`TokenClient`] (and its cache).
pub struct BotTokenProvider {
    client: Arc<TokenClient>,
    request: TokenRequest,
}

impl fmt::Debug for BotTokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotTokenProvider").field("request", &self.request).finish()
    }
}

impl BotTokenProvider {
    /// A provider for an explicit request (any client id, endpoint, scope and credential).
    pub fn new(client: Arc<TokenClient>, request: TokenRequest) -> Self {
        Self { client, request }
    }

    /// Load the bot's credential and build its request: the endpoint of its tenant (`tenant_id`, or the
    /// cloud's legacy Bot Framework tenant) under `authority` (default: the cloud's), and its cloud's scope.
    pub async fn from_config(bot: &BotConfig, authority: Option<&Authority>, client: Arc<TokenClient>) -> Result<Self, SetupError> {
        let endpoint = authority
            .cloned()
            .unwrap_or_else(|| Authority::for_cloud(bot.cloud))
            .token_endpoint(bot_tenant(bot))
            .map_err(|source| SetupError::BotTenant { app_id: bot.app_id.clone(), source: Box::new(source) })?;
        let credential = ClientCredential::from_bot_config(bot).await?;
        tracing::info!(app_id = %bot.app_id, endpoint = %endpoint, credential = credential.kind(), "bot credential loaded");
        let request = TokenRequest::new(bot.app_id.clone(), endpoint, bot_scope(bot.cloud), Arc::new(credential));
        Ok(Self { client, request })
    }

    /// A Bot Connector token for this bot (cached; refreshed 5 minutes before expiry).
    pub async fn bot_token(&self) -> Result<AccessToken, TokenError> {
        self.client.token(&self.request).await
    }

    /// Drop the cached token (after the Connector refused it with 401), so the next call fetches anew.
    pub fn invalidate(&self) {
        self.client.invalidate(&self.request);
    }

    /// What this provider asks for.
    pub fn request(&self) -> &TokenRequest {
        &self.request
    }
}
