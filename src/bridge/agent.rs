//! The Entra Agent User behind a bot, as the bridge uses it: its Graph client, its mode (`bot_only`
//! or `fallback`), the people it may reach without asking, and the owner approvals that let it reach
//! someone new.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::entra::{AgentMode, AgentUserTokens, Authority, TokenClient, TokenClientSettings};
use crate::graph::{GraphClient, GraphEndpoint, GraphSettings};

/// One bot's Agent User.
pub struct AgentActor {
    pub bot_app_id: String,
    pub tokens: Arc<AgentUserTokens>,
    pub graph: GraphClient,
    pub mode: AgentMode,
    /// People (object ids, UPNs, emails; lower case) an owner approved during this run.
    approved: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for AgentActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentActor").field("bot", &self.bot_app_id).field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl AgentActor {
    /// The Agent User of bot `bot_app_id`, acting through `graph` with `tokens`, in `mode`.
    pub fn new(bot_app_id: impl Into<String>, tokens: Arc<AgentUserTokens>, graph: GraphClient, mode: AgentMode) -> Self {
        Self { bot_app_id: bot_app_id.into(), tokens, graph, mode, approved: Mutex::new(HashSet::new()) }
    }

    /// How the audit log and tool results name this identity.
    pub fn identity(&self) -> crate::store::Identity {
        crate::store::Identity::agent_user(self.tokens.user().as_str())
    }

    pub fn falls_back(&self) -> bool {
        self.mode == AgentMode::Fallback
    }

    /// Whether `who` may be added or messaged without asking: listed in `contacts_allow`, or approved
    /// by an owner earlier in this run.
    pub fn may_reach(&self, contacts_allow: &[String], who: &str) -> bool {
        let who = who.trim().to_ascii_lowercase();
        contacts_allow.iter().any(|c| c.trim().eq_ignore_ascii_case(&who))
            || self.approved.lock().unwrap_or_else(PoisonError::into_inner).contains(&who)
    }

    pub fn remember_approved(&self, people: &[String]) {
        let mut approved = self.approved.lock().unwrap_or_else(PoisonError::into_inner);
        approved.extend(people.iter().map(|p| p.trim().to_ascii_lowercase()));
    }
}

/// Every configured Agent User, by lower-case bot app id. The Blueprint credentials are loaded now, so
/// that a bad one stops start-up with the field named.
pub(crate) async fn build(cfg: &Config) -> anyhow::Result<HashMap<String, Arc<AgentActor>>> {
    let mut out = HashMap::new();
    if cfg.bots.iter().all(|b| b.agent_user.is_none()) {
        return Ok(out);
    }
    let client = Arc::new(TokenClient::new(TokenClientSettings::default()).context("building the token client")?);
    for (i, bot) in cfg.bots.iter().enumerate() {
        let Some(au) = &bot.agent_user else { continue };
        let at = format!("bots[{i}].agent_user");
        let authority = match &cfg.clouds.get(bot.cloud).token_authority {
            Some(a) => Authority::parse(a).map_err(|e| anyhow::anyhow!("clouds.{}.token_authority: {e}", bot.cloud))?,
            None => Authority::for_cloud(bot.cloud),
        };
        let tokens = AgentUserTokens::from_config(au, &at, authority, Arc::clone(&client))
            .await
            .map_err(|e| anyhow::anyhow!("configuration error in {e}"))?;
        let tokens = Arc::new(tokens);
        let endpoint = match &au.graph_base_url {
            Some(u) => GraphEndpoint::parse(u).map_err(|e| anyhow::anyhow!("configuration error in {at}.graph_base_url: {e}"))?,
            None => GraphEndpoint::global(),
        };
        let graph = GraphClient::new(endpoint, Arc::clone(&tokens) as Arc<dyn crate::graph::GraphToken>, GraphSettings::default())
            .map_err(|e| anyhow::anyhow!("building the Graph client for {at}: {e}"))?;
        out.insert(bot.app_id.to_ascii_lowercase(), Arc::new(AgentActor::new(bot.app_id.to_string(), tokens, graph, au.mode)));
    }
    Ok(out)
}

/// The Agent User chains of the bots that accept agentic activities: every Connector call in their
/// agentic conversations acts as the Agent User ([`crate::connector::acting`]).
pub(crate) fn agentic_chains(cfg: &Config, agents: &HashMap<String, Arc<AgentActor>>) -> crate::connector::acting::AgenticChains {
    cfg.bots
        .iter()
        .filter(|b| b.agentic.enabled)
        .filter_map(|b| {
            let actor = agents.get(&b.app_id.to_ascii_lowercase())?;
            Some((b.app_id.to_string(), (Arc::clone(actor.tokens.chain()), actor.tokens.agentic_scope().to_owned())))
        })
        .collect()
}

/// How long a Graph tool waits for an owner's answer before giving up (nothing is done then).
pub(crate) const APPROVAL_WAIT: Duration = Duration::from_secs(120);
