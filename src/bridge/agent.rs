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
    /// Graph with the Agent Identity's app-only token (its sponsors); `None`: no sponsors are read.
    identity_graph: Option<GraphClient>,
    /// The sponsors as last read, and until when they count.
    sponsors: tokio::sync::Mutex<Option<(std::time::Instant, Vec<crate::ids::AadObjectId>)>>,
    /// With `agent_user.mail` on: who may write to it and whom it may write to ([`super::mail`]).
    pub mail: Option<super::mail::MailPolicy>,
}

/// How long the sponsors read from Graph count before they are read again.
pub(crate) const SPONSORS_TTL: Duration = Duration::from_secs(600);
/// After a failed read, how long "no sponsors" counts before Graph is asked again.
pub(crate) const SPONSORS_RETRY: Duration = Duration::from_secs(30);

impl std::fmt::Debug for AgentActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentActor").field("bot", &self.bot_app_id).field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl AgentActor {
    /// The Agent User of bot `bot_app_id`, acting through `graph` with `tokens`, in `mode`.
    pub fn new(bot_app_id: impl Into<String>, tokens: Arc<AgentUserTokens>, graph: GraphClient, mode: AgentMode) -> Self {
        Self {
            bot_app_id: bot_app_id.into(),
            tokens,
            graph,
            mode,
            approved: Mutex::new(HashSet::new()),
            identity_graph: None,
            sponsors: tokio::sync::Mutex::new(None),
            mail: None,
        }
    }

    /// Give the Agent User its mailbox (`agent_user.mail`): the mail events and the `mail_*` tools.
    #[must_use]
    pub fn with_mail(mut self, policy: super::mail::MailPolicy) -> Self {
        self.mail = Some(policy);
        self
    }

    /// Read the sponsors through `graph` (a client with the Agent Identity's app-only token).
    #[must_use]
    pub fn with_identity_graph(mut self, graph: GraphClient) -> Self {
        self.identity_graph = Some(graph);
        self
    }

    /// The Agent User's sponsors (the users among its Agent Identity's sponsors, by object id), read from
    /// Graph and kept [`SPONSORS_TTL`]. A failed read gives none (fail closed: nothing is approved by a
    /// sponsor then), and Graph is asked again after [`SPONSORS_RETRY`].
    pub async fn sponsors(&self) -> Vec<crate::ids::AadObjectId> {
        let mut cached = self.sponsors.lock().await;
        if let Some((until, list)) = cached.as_ref()
            && std::time::Instant::now() < *until
        {
            return list.clone();
        }
        let read = match &self.identity_graph {
            Some(g) => g.agent_identity_sponsors(self.tokens.agent_identity_id()).await,
            None => Ok(Vec::new()),
        };
        let now = std::time::Instant::now();
        let (list, until) = match read {
            Ok(ids) => {
                tracing::info!(bot = %self.bot_app_id, sponsors = ids.len(), "the Agent User's sponsors were read");
                (ids.iter().map(|i| crate::ids::AadObjectId::new(i.trim().to_ascii_lowercase())).collect(), now + SPONSORS_TTL)
            }
            Err(e) => {
                tracing::warn!(bot = %self.bot_app_id, error = %e, "cannot read the Agent User's sponsors: none count (nothing is approved by a sponsor)");
                (Vec::new(), now + SPONSORS_RETRY)
            }
        };
        *cached = Some((until, list.clone()));
        list
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
        let identity = crate::graph::AgentIdentityToken(Arc::clone(&tokens));
        let identity_graph = GraphClient::new(graph.endpoint().clone(), Arc::new(identity), GraphSettings::default())
            .map_err(|e| anyhow::anyhow!("building the Graph client for {at}: {e}"))?;
        let mut actor = AgentActor::new(bot.app_id.to_string(), tokens, graph, au.mode).with_identity_graph(identity_graph);
        if au.mail {
            actor = actor.with_mail(super::mail::MailPolicy::new(au, &bot.policy));
        }
        out.insert(bot.app_id.to_ascii_lowercase(), Arc::new(actor));
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
