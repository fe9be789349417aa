//! Who acts in a conversation: the one decision every Connector call makes (sends, replies, updates,
//! streams, live streams, member listings).
//!
//! A conversation an agentic activity came from (Agent 365: the stored reference names an agentic
//! recipient) of a bot with an Agent User chain is answered **as the Agent User**: its Connector token
//! (T3 for the `agentic_scope`) and the agentic account as `from`. Every other conversation is the bot's:
//! the bot token and `28:<app id>`. The Connector checks that `from` matches the token, so the two never
//! come from different decisions.

use std::collections::HashMap;
use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{Value, json};

use super::outbox::{BotTokens, TokenFailure};
use crate::activity::AgenticRecipient;
use crate::entra::{AgentTokenChain, AgentUser};
use crate::store::{ConversationRef, Identity, Store};

/// Agent 365 bots: their Agent User chain and the Connector scope of its tokens, by bot app id.
pub(crate) type AgenticChains = HashMap<String, (Arc<AgentTokenChain>, String)>;

/// The identity a call acts as: its token, its `from`, and what the audit log calls it.
pub(crate) struct Acting {
    pub token: SecretString,
    /// The `from` account of every activity posted as this identity.
    pub from: Value,
    /// In an agentic conversation: the Agent User's object id.
    pub agent_user: Option<String>,
    /// The conversation's channel (`msteams`, `agents`, …), when a reference is known.
    pub channel_id: Option<String>,
}

impl std::fmt::Debug for Acting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acting").field("from", &self.from).field("agent_user", &self.agent_user).finish_non_exhaustive()
    }
}

impl Acting {
    /// How the audit log names this identity.
    pub(crate) fn identity(&self, bot_app_id: &str) -> Identity {
        identity(bot_app_id, self.agent_user.as_deref())
    }

    /// Whether this is the Agent User (an agentic conversation).
    pub(crate) fn is_agentic(&self) -> bool {
        self.agent_user.is_some()
    }

    /// The conversation id to put in the URL path ([`super::url_conversation_id`]).
    pub(crate) fn path_conversation_id<'a>(&self, conversation: &'a str) -> std::borrow::Cow<'a, str> {
        let role = self.from.get("role").and_then(Value::as_str);
        super::url_conversation_id(conversation, self.channel_id.as_deref(), role)
    }
}

fn identity(bot_app_id: &str, agent_user: Option<&str>) -> Identity {
    match agent_user {
        Some(u) => Identity::agent_user(u),
        None => Identity::bot(bot_app_id),
    }
}

/// The agentic recipient the conversation is answered as, if it is agentic for this bot (the bot has an
/// Agent User chain and the reference names an agentic recipient). The pure half of [`acting`].
pub(crate) fn agentic_recipient(chains: &AgenticChains, r: Option<&ConversationRef>) -> Option<AgenticRecipient> {
    let r = r?;
    chains.get(r.bot_app_id.as_str())?;
    r.agentic.clone()
}

/// How the audit log names whoever acts in the conversation, without fetching a token.
pub(crate) fn acting_identity(chains: &AgenticChains, r: &ConversationRef) -> Identity {
    let user = agentic_recipient(chains, Some(r)).and_then(|a| a.agentic_user_id);
    identity(&r.bot_app_id, user.as_deref())
}

/// The identity, token and `from` for a call in `conversation` of `bot_app_id`: the Agent User in an
/// agentic conversation, the bot otherwise. A failure sends nothing.
pub(crate) async fn acting(
    store: &dyn Store,
    tokens: &dyn BotTokens,
    chains: &AgenticChains,
    bot_app_id: &str,
    conversation: &str,
) -> Result<Acting, TokenFailure> {
    let r = store.conversation_ref(bot_app_id, conversation).await.ok().flatten();
    let channel_id = r.as_ref().map(|r| r.channel_id.clone()).filter(|c| !c.is_empty());
    let Some(recipient) = agentic_recipient(chains, r.as_ref()) else {
        let token = tokens.bot_token(bot_app_id).await?;
        return Ok(Acting { token, from: json!({"id": format!("28:{bot_app_id}")}), agent_user: None, channel_id });
    };
    let fail = |message: String| TokenFailure { message, retryable: false };
    let (chain, scope) = chains.get(bot_app_id).ok_or_else(|| fail("the bot has no Agent User".into()))?;
    let app = recipient.agentic_app_id.clone().ok_or_else(|| fail("the agentic activity named no agenticAppId".into()))?;
    let tenant = recipient.tenant_id.clone().or_else(|| r.as_ref().map(|r| r.tenant_id.to_string())).unwrap_or_default();
    if !recipient.is_user() {
        // The instance's own Connector token is not the exchange token (T2) the chain makes.
        return Err(fail("replies to agenticAppInstance activities are not supported yet (only agenticUser); nothing was sent".into()));
    }
    let user = recipient.agentic_user_id.clone().ok_or_else(|| fail("the agentic activity named no agenticUserId".into()))?;
    let token = chain
        .user_token(&tenant, &app, &AgentUser::ObjectId(user.clone()), scope)
        .await
        .map_err(|e| TokenFailure { retryable: e.is_transient(), message: e.to_string() })?;
    let from = serde_json::to_value(&recipient).unwrap_or(Value::Null);
    Ok(Acting { token: token.secret().clone(), from, agent_user: Some(user), channel_id })
}
