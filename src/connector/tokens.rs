//! Bot tokens for the outbound worker, from each bot's configured credential.

use std::collections::HashMap;

use async_trait::async_trait;
use secrecy::SecretString;

use super::outbox::{BotTokens, TokenFailure};
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::Config;
use crate::entra::{Authority, BotTokenProvider, TokenClient, TokenClientSettings};

/// The token a bot without a credential presents in `--dev` mode. It is worthless anywhere but the
/// Agents Playground's mock Connector, which accepts any token. It is also the only token the Playground's
/// loopback connector ever receives, whatever the bot's credential: the Connector client swaps it in for
/// every call there ([`super::ConnectorClient`]).
pub(crate) const DEV_PLACEHOLDER_TOKEN: &str = "agentgate-dev-mode-no-credential";

/// Tokens for every bot with a credential; in dev mode, a placeholder for bots without one.
#[derive(Debug, Default)]
pub struct ConfiguredTokens {
    providers: HashMap<String, BotTokenProvider>,
    dev: bool,
}

impl ConfiguredTokens {
    pub fn new(providers: HashMap<String, BotTokenProvider>, dev: bool) -> Self {
        Self { providers, dev }
    }
}

#[async_trait]
impl BotTokens for ConfiguredTokens {
    async fn bot_token(&self, bot_app_id: &str) -> Result<SecretString, TokenFailure> {
        match self.providers.get(bot_app_id) {
            Some(p) => p
                .bot_token()
                .await
                .map(|t| t.secret().clone())
                .map_err(|e| TokenFailure { retryable: e.is_transient(), message: e.to_string() }),
            None if self.dev => Ok(SecretString::from(DEV_PLACEHOLDER_TOKEN.to_owned())),
            None => Err(TokenFailure {
                message: format!("bot {bot_app_id} has no `credential` configured, so it cannot send"),
                retryable: false,
            }),
        }
    }

    fn invalidate(&self, bot_app_id: &str) {
        if let Some(p) = self.providers.get(bot_app_id) {
            p.invalidate();
        }
    }
}

/// Each configured bot's token provider (its credential loaded now, so that a bad credential stops
/// start-up with the field named). Bots without a credential get none; in `--dev` they present a
/// placeholder the Agents Playground accepts.
pub async fn bot_tokens(cfg: &Config, dev: bool) -> anyhow::Result<ConfiguredTokens> {
    let client = Arc::new(TokenClient::new(TokenClientSettings::default()).context("building the token client")?);
    let mut providers = std::collections::HashMap::new();
    for (i, bot) in cfg.bots.iter().enumerate() {
        if bot.credential.is_none() {
            if !dev {
                tracing::warn!(app_id = %bot.app_id, "bot has no credential: it receives but cannot send (set bots[{i}].credential)");
            }
            continue;
        }
        let authority = match &cfg.clouds.get(bot.cloud).token_authority {
            Some(a) => Some(Authority::parse(a).map_err(|e| anyhow::anyhow!("clouds.{}.token_authority: {e}", bot.cloud))?),
            None => None,
        };
        let provider = BotTokenProvider::from_config(bot, authority.as_ref(), Arc::clone(&client)).await.map_err(|e| {
            let field = e.field().map_or_else(String::new, |f| format!("bots[{i}].{f}: "));
            anyhow::anyhow!("configuration error in {field}{e}")
        })?;
        providers.insert(bot.app_id.clone(), provider);
    }
    Ok(ConfiguredTokens::new(providers, dev))
}
