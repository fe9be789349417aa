//! The transport-free core: what the gateway does with Teams traffic and with an agent's requests,
//! whatever carries them (MCP over stdio or HTTP, the command line).
//!
//! | module | what |
//! |---|---|
//! | [`gate`] | intake's side: policy before the commit, approval answers, waking sessions |
//! | [`policy`] | who may reach the agent, per bot |
//! | [`approval`] | permission requests waiting for an approver in Teams; owner approval of a token's tool calls |
//! | [`claims`] | several hosts on one bot: which session owns a conversation |
//! | [`agent`] | the bot's Entra Agent User: Graph client, mode, who it may reach |
//! | [`envelope`] | untrusted text for the model: HTML to text, the marked envelope, meta values |
//! | [`events`] | inbox entries as typed events |
//! | [`amend`] | users' edits and deletions: applied to pending entries, or typed events |
//! | [`live`] | streamed replies written while the model writes them |
//! | [`route`] | the one bot resolver; which conversation a request goes to; bot, Agent User or nobody |
//! | [`deliver`] | message bodies (mentions, splitting, cards), the outbox entry, how it ended; sending as the bot with the fallback to the Agent User |
//! | [`graph`] | acting through Graph as the Agent User: owner approval, audit-first writes |
//! | [`files`] | files on inbound events (`get_file`), files the agent sends (consent card, or the Agent User's OneDrive), the Agent User's files |
//! | [`mail`] | the Agent User's mail: the sender policy, mail as inbox entries, reply/forward/send/drafts |
//! | [`mail_inbound`] | the Agent User's Inbox read with the delta query: on change notifications, or a bounded poll |
//! | [`calendar`] | the Agent User's calendar: events, free times, new events and Teams meetings, answers; meeting requests as typed events |
//! | [`inbox`] | pending entries within a scope, acknowledgements |
//! | [`welcome`] | the welcome message, once per conversation the app is installed in |
//! | [`error`] | the one error type of the bridge |
//!
//! Every session of every transport shares one [`Hub`]: the configuration, the store, the outbound
//! worker and the open approval requests. A session sees and acts only within its [`Scope`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::config::mcp_tools::ToolPolicy;
use crate::connector::outbox::Outbound;
use crate::store::{AuditEvent, Store, now_ms};

pub(crate) mod agent;
pub(crate) mod amend;
pub(crate) mod approval;
pub(crate) mod calendar;
pub(crate) mod claims;
pub(crate) mod deliver;
pub(crate) mod envelope;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod files;
pub(crate) mod gate;
pub(crate) mod graph;
pub(crate) mod graph_inbound;
pub(crate) mod inbox;
pub(crate) mod live;
pub(crate) mod mail;
pub(crate) mod mail_inbound;
pub(crate) mod policy;
pub(crate) mod route;
pub(crate) mod welcome;

pub use approval::Approvals;
pub(crate) use error::{Error, Result};

/// How the caller names the choices it can make, so that an error says how to fix the request in the
/// caller's own terms (`bot` and `chat_id` for MCP tools, `--bot APP_ID` and `--conversation` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// MCP tool parameters.
    #[default]
    Mcp,
    /// `agentgate` command-line flags.
    Cli,
}

/// What a session may see and act on: some or all bots, some or all tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Who this is, for logs and the audit trail (`stdio`, or the `/mcp` token's name).
    pub name: String,
    /// Lower-case app ids; empty means every configured bot.
    bots: Vec<String>,
    /// Lower-case tenant ids; empty means every tenant the bots serve.
    tenants: Vec<String>,
    /// How errors name the caller's options.
    pub dialect: Dialect,
    /// Which tools the session may call, and which need the owner's approval per call.
    pub tools: ToolPolicy,
}

impl Scope {
    /// Every bot, every tenant.
    pub fn all(name: impl Into<String>) -> Self {
        Self { name: name.into(), bots: Vec::new(), tenants: Vec::new(), dialect: Dialect::Mcp, tools: ToolPolicy::default() }
    }

    pub fn new(name: impl Into<String>, bots: &[String], tenants: &[String]) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect();
        Self { name: name.into(), bots: lower(bots), tenants: lower(tenants), dialect: Dialect::Mcp, tools: ToolPolicy::default() }
    }

    /// The same scope, limited to the tools `tools` allows.
    #[must_use]
    pub fn with_tools(mut self, tools: ToolPolicy) -> Self {
        self.tools = tools;
        self
    }

    /// The command line's scope: every configured bot and tenant, errors in terms of its flags.
    pub fn command_line() -> Self {
        Self { dialect: Dialect::Cli, ..Self::all("cli") }
    }

    pub fn allows_bot(&self, bot_app_id: &str) -> bool {
        self.bots.is_empty() || self.bots.iter().any(|b| b.eq_ignore_ascii_case(bot_app_id))
    }

    pub fn allows_tenant(&self, tenant_id: &str) -> bool {
        self.tenants.is_empty() || self.tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant_id))
    }

    pub fn allows(&self, bot_app_id: &str, tenant_id: &str) -> bool {
        self.allows_bot(bot_app_id) && self.allows_tenant(tenant_id)
    }

    /// Every bot and every tenant.
    pub fn is_unrestricted(&self) -> bool {
        self.bots.is_empty() && self.tenants.is_empty()
    }

    /// The explicit tenant list (empty: all).
    pub fn tenants(&self) -> &[String] {
        &self.tenants
    }
}

/// Who asks the bridge to act: the scope it acts within, how the audit log names the requester
/// (`mcp:<scope>:<client>`, `cli`), and the conversation it is working in, if known.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub scope: &'a Scope,
    pub requester: &'a str,
    pub origin: Option<&'a Origin>,
}

impl<'a> Caller<'a> {
    pub fn new(scope: &'a Scope, requester: &'a str) -> Self {
        Self { scope, requester, origin: None }
    }

    /// The same caller, working in `origin`.
    #[must_use]
    pub fn with_origin(self, origin: Option<&'a Origin>) -> Self {
        Self { origin, ..self }
    }
}

/// The conversation a session is working in: the last one it was shown an entry from or acted in. An
/// approval the session causes there (a group chat or channel) is asked privately, in that conversation
/// ([`approval`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub bot_app_id: String,
    pub conversation_id: String,
}

/// What every MCP session (and a one-shot command) shares.
pub struct Hub {
    pub(crate) cfg: Arc<Config>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) outbound: Arc<Outbound>,
    /// The id of the newest inbox entry committed (changes wake the sessions).
    pub(crate) inbox: watch::Receiver<i64>,
    pub(crate) approvals: Arc<Approvals>,
    pub(crate) started: Instant,
    /// `--dev`: bots without a credential can still send (to the Playground).
    pub(crate) dev: bool,
    /// Each bot's Entra Agent User, by lower-case app id.
    pub(crate) agents: std::collections::HashMap<String, Arc<agent::AgentActor>>,
    /// What the sessions pushed to a host (shared with intake's [`gate`], which amends entries).
    pub(crate) delivered: Arc<amend::Delivered>,
    /// Files (limits, transfers, offers waiting for an answer); `None` in one-shot commands.
    pub(crate) files: Option<Arc<files::Files>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("bots", &self.cfg.bots.len()).finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        outbound: Arc<Outbound>,
        inbox: watch::Receiver<i64>,
        approvals: Arc<Approvals>,
        dev: bool,
        agents: std::collections::HashMap<String, Arc<agent::AgentActor>>,
    ) -> Self {
        Self { cfg, store, outbound, inbox, approvals, started: Instant::now(), dev, agents, delivered: Arc::default(), files: None }
    }

    /// Fetch and send files with `files` (shared with intake, which acts on consent answers).
    pub(crate) fn with_files(mut self, files: Arc<files::Files>) -> Self {
        self.files = Some(files);
        self
    }

    /// Share `delivered` with intake (the [`gate`]'s), so that edits of pushed messages reach the host.
    pub(crate) fn with_delivered(mut self, delivered: Arc<amend::Delivered>) -> Self {
        self.delivered = delivered;
        self
    }

    /// Whether any bot in `scope` can ask an owner (then sessions declare the permission relay).
    pub fn relays_permissions(&self, scope: &Scope) -> bool {
        self.cfg.bots.iter().any(|b| scope.allows_bot(&b.app_id) && self.can_ask_owners(b))
    }

    /// Whether `bot` has someone to ask: its `policy.approvers`, or else (a bot with an Agent User) the
    /// Agent User's sponsors.
    pub fn can_ask_owners(&self, bot: &crate::config::BotConfig) -> bool {
        !bot.policy.approvers.is_empty() || self.agents.contains_key(&bot.app_id.to_ascii_lowercase())
    }

    /// Who answers `bot`'s approval requests: `policy.approvers`; when none are set, the Agent User's
    /// sponsors (read from Graph, cached; none when that read fails: nothing is approved then).
    pub async fn approvers_of(&self, bot: &crate::config::BotConfig) -> Vec<crate::ids::AadObjectId> {
        if !bot.policy.approvers.is_empty() {
            return bot.policy.approvers.clone();
        }
        match self.agents.get(&bot.app_id.to_ascii_lowercase()) {
            Some(actor) => actor.sponsors().await,
            None => Vec::new(),
        }
    }

    /// Update the cards of decided requests, expire open ones and forget those of ended sessions, twice a second.
    pub fn spawn_approval_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                for s in hub.approvals.take_settled() {
                    hub.settle_cards(&s.request_id, &s.tool_name, &s.cards, &s.text, "decided").await;
                }
                for p in hub.approvals.take_expired(now_ms()) {
                    hub.approvals.close_shared(&p.request_id).await;
                    hub.settle_cards(
                        &p.request_id,
                        &p.tool_name,
                        &p.cards,
                        "Expired: nobody answered in time (or the terminal answered first). Nothing was approved from Teams.",
                        "expired",
                    )
                    .await;
                }
                for p in hub.approvals.take_orphaned() {
                    hub.approvals.close_shared(&p.request_id).await;
                    hub.settle_cards(
                        &p.request_id,
                        &p.tool_name,
                        &p.cards,
                        "Closed: the agent's session ended before an answer.",
                        "closed",
                    )
                    .await;
                }
            }
        })
    }

    /// Replace every card of a settled request with one that says how it ended, and audit it.
    pub(crate) async fn settle_cards(
        &self,
        request_id: &str,
        tool_name: &str,
        cards: &[approval::CardRef],
        outcome_text: &str,
        outcome: &str,
    ) {
        let card = approval::settled_card(request_id, tool_name, outcome_text);
        for c in cards {
            let event = AuditEvent::new(
                now_ms(),
                "agentgate",
                crate::store::Identity::bot(&c.bot_app_id),
                "permission_card",
                crate::store::Target::conversation(&c.tenant_id, &c.conversation_id),
                outcome,
            )
            .with_detail(format!("request {request_id}{}", if c.targeted { " (targeted)" } else { "" }));
            if let Err(e) = self.store.record_audit(event).await {
                tracing::error!(error = %e, "could not audit an approval card update; leaving the card as it is");
                continue;
            }
            // The card's message id is known once the outbox delivered it.
            let delivered = match self.store.outbox(Some(c.outbox_id), 1).await {
                Ok(items) => items.into_iter().next().and_then(|i| i.result_id).filter(|id| !id.is_empty()),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the outbox failed");
                    None
                }
            };
            let Some(activity_id) = delivered else {
                tracing::info!(request_id, "the approval card was never delivered; nothing to update");
                continue;
            };
            // A targeted card is replaced as one (where it was sent: only the approver sees it).
            let activity = crate::connector::send::message(None, Some(card.clone()));
            let op = if c.targeted {
                crate::store::OutboundOp::UpdateTargeted { activity_id, activity }
            } else {
                crate::store::OutboundOp::Update { activity_id, activity }
            };
            let item = crate::store::NewOutbound {
                bot_app_id: c.bot_app_id.clone(),
                tenant_id: c.tenant_id.clone(),
                conversation_id: c.conversation_id.clone(),
                service_url: c.service_url.clone(),
                op,
                requested_by: "agentgate".into(),
                now_ms: now_ms(),
            };
            if let Err(e) = self.outbound.enqueue(item).await {
                tracing::error!(error = %e, "could not queue an approval card update");
            }
        }
    }
}

#[cfg(test)]
mod tests;
