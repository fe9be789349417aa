//! Claude Code's permission relay, answered from Teams.
//!
//! A host asks (`notifications/claude/channel/permission_request`); the session sends each reachable
//! approver an Adaptive Card and registers the request here. The answer comes back through
//! `/api/messages`: an `Action.Execute` on the card, or a typed `yes abcde` / `no abcde`, and only an
//! approver's counts. The verdict goes to the asking session, which turns it into
//! `notifications/claude/channel/permission`. Claude Code never says when its terminal answered first,
//! so requests expire and their cards are updated to say so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The card verb of an approval answer.
pub(crate) const VERB: &str = "agentgate.permission";

/// Why an agent's card is refused: it carries the approval verb, which only the gateway's own approval
/// cards may use.
pub(crate) const RESERVED_VERB_ERROR: &str =
    "the card uses the verb `agentgate.permission`, which is reserved for agentgate's approval cards; use another verb";

/// Whether `card` carries the reserved approval verb anywhere (any action, at any depth, any case).
pub(crate) fn uses_reserved_verb(card: &Value) -> bool {
    match card {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k.eq_ignore_ascii_case("verb") && v.as_str().is_some_and(|s| s.trim().eq_ignore_ascii_case(VERB))) || uses_reserved_verb(v)
        }),
        Value::Array(items) => items.iter().any(uses_reserved_verb),
        _ => false,
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Allow,
    Deny,
}

impl Behavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "allow" | "y" | "yes" => Some(Self::Allow),
            "deny" | "n" | "no" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// A verdict on its way to the session that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub request_id: String,
    pub behavior: Behavior,
    /// The approver's AAD object id.
    pub by: String,
}

/// A card sent for a request (to update when it is decided or expires).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CardRef {
    pub outbox_id: i64,
    pub bot_app_id: crate::ids::AppId,
    pub tenant_id: crate::ids::TenantId,
    pub conversation_id: crate::ids::ConversationId,
    pub service_url: String,
    /// A targeted (private) message in a group chat or channel: updated as one.
    #[serde(default)]
    pub targeted: bool,
}

/// A request waiting for an approver.
#[derive(Debug)]
pub struct PendingApproval {
    pub request_id: String,
    pub bot_app_id: String,
    /// Lower-case AAD object ids.
    pub approvers: Vec<crate::ids::AadObjectId>,
    pub tool_name: String,
    pub verdicts: mpsc::UnboundedSender<Verdict>,
    pub cards: Vec<CardRef>,
    pub expires_at_ms: i64,
}

/// What an answer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Decided now; the cards to update.
    Decided { verdict: Verdict, tool_name: String, cards: Vec<CardRef> },
    /// The request exists, but the person is not one of its approvers.
    NotApprover { tool_name: String },
    /// The click was not on a delivered approval card of this request (in this conversation).
    NotTheCard,
    /// No such request (never issued, already decided, or expired).
    Unknown,
}

/// A decided request whose cards still say "waiting".
#[derive(Debug)]
pub struct Settled {
    pub request_id: String,
    pub tool_name: String,
    pub cards: Vec<CardRef>,
    pub text: String,
}

/// Open requests, keyed by request id. An id is open at most once at a time, across every session and
/// bot: a second request with the id of an open one is refused ([`Approvals::register`]), so that an
/// answer (typed or clicked) names exactly one request and reaches only the session that asked.
///
/// With replicas on Postgres ([`Approvals::shared`]) the requests are also in the database: an id is refused
/// when it is open on any replica, an answer reaching any replica decides the request there (once,
/// cluster-wide, [`crate::store::SharedApprovals::decide_approval`]) and that replica updates the cards; the
/// replica whose session asked (the owner) forwards the verdict when the decision is announced (NOTIFY) or at
/// the latest at its next re-scan. Intake decides from memory whether a message could be an answer: the open
/// requests of the whole cluster are mirrored here, refreshed on each announcement and every
/// [`RESCAN_EVERY`].
#[derive(Debug, Default)]
pub struct Approvals {
    /// The requests of this process's sessions.
    pending: Mutex<HashMap<String, PendingApproval>>,
    settled: Mutex<Vec<Settled>>,
    cluster: Option<Cluster>,
}

/// How often the open requests of the cluster are re-read even without an announcement.
pub(crate) const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The database that shares the requests, and the cluster's open requests as last read.
#[derive(Debug)]
struct Cluster {
    store: Arc<dyn crate::store::Store>,
    open: Mutex<HashMap<String, crate::store::ApprovalRecord>>,
}

impl Cluster {
    fn shared(&self) -> &dyn crate::store::SharedApprovals {
        self.store.shared_approvals().unwrap_or_else(|| unreachable!("built only for a store that shares approvals"))
    }
}

impl Approvals {
    /// Requests shared through `store` when it shares them (Postgres), else kept in memory.
    pub fn shared(store: Arc<dyn crate::store::Store>) -> Self {
        if store.shared_approvals().is_none() {
            return Self::default();
        }
        Self { cluster: Some(Cluster { store, open: Mutex::new(HashMap::new()) }), ..Self::default() }
    }

    /// The open requests of the cluster as last read ([`Self::sync`]); none without replicas.
    fn mirrored<T>(&self, request_id: &str, f: impl FnOnce(&crate::store::ApprovalRecord) -> T) -> Option<T> {
        let cluster = self.cluster.as_ref()?;
        let open = cluster.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(request_id).filter(|r| r.expires_at_ms > crate::store::now_ms()).map(f)
    }

    /// Publish a request registered here to the cluster: false when its id is open on another replica (or
    /// the database could not say otherwise). Without replicas: true.
    pub async fn open_shared(&self, request_id: &str) -> bool {
        let Some(cluster) = &self.cluster else { return true };
        let record = {
            let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(p) = pending.get(request_id) else { return false };
            crate::store::ApprovalRecord {
                request_id: p.request_id.clone(),
                bot_app_id: p.bot_app_id.to_ascii_lowercase(),
                approvers: p.approvers.iter().map(|a| a.as_str().trim().to_ascii_lowercase()).collect(),
                tool_name: p.tool_name.clone(),
                cards: Vec::new(),
                owner: cluster.shared().replica_id().to_owned(),
                expires_at_ms: p.expires_at_ms,
            }
        };
        match cluster.shared().open_approval(&record, crate::store::now_ms()).await {
            Ok(true) => {
                cluster.open.lock().unwrap_or_else(PoisonError::into_inner).insert(record.request_id.clone(), record);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(error = %e, "could not record a permission request in the store; refused");
                false
            }
        }
    }

    /// Record a card of a request this process opened, for every replica.
    pub async fn add_card_shared(&self, request_id: &str, card: &CardRef) {
        let Some(cluster) = &self.cluster else { return };
        let json = serde_json::to_value(card).unwrap_or_default();
        if let Some(r) = cluster.open.lock().unwrap_or_else(PoisonError::into_inner).get_mut(request_id) {
            r.cards.push(json.clone());
        }
        if let Err(e) = cluster.shared().add_approval_card(request_id, &json).await {
            tracing::warn!(error = %e, request_id, "could not record an approval card in the store; clicks on it reaching another replica are refused");
        }
    }

    /// Close, for every replica, a request this process opened (withdrawn, expired, or its session ended).
    pub async fn close_shared(&self, request_id: &str) {
        let Some(cluster) = &self.cluster else { return };
        cluster.open.lock().unwrap_or_else(PoisonError::into_inner).remove(request_id);
        if let Err(e) = cluster.shared().close_approval(request_id).await {
            tracing::warn!(error = %e, request_id, "could not close a permission request in the store (it expires there by itself)");
        }
    }

    /// Re-read the cluster's open requests, and forward the verdicts given on other replicas to the sessions
    /// of this process. Without replicas: nothing.
    pub async fn sync(&self) {
        let Some(cluster) = &self.cluster else { return };
        match cluster.shared().open_approvals(crate::store::now_ms()).await {
            Ok(records) => {
                *cluster.open.lock().unwrap_or_else(PoisonError::into_inner) =
                    records.into_iter().map(|r| (r.request_id.clone(), r)).collect();
            }
            Err(e) => tracing::warn!(error = %e, "could not read the open permission requests"),
        }
        match cluster.shared().take_verdicts().await {
            Ok(verdicts) => {
                for v in verdicts {
                    let Some(behavior) = Behavior::parse(&v.behavior) else { continue };
                    self.forward(Verdict { request_id: v.request_id, behavior, by: v.by });
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the verdicts for this replica's permission requests"),
        }
    }

    /// Keep the mirror and the verdicts current: on every announcement, and every [`RESCAN_EVERY`] (the
    /// safety net for a lost one). `None` without replicas.
    pub fn spawn_sync(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let cluster = self.cluster.as_ref()?;
        let mut announced = cluster.shared().subscribe_approvals();
        let this = Arc::clone(self);
        Some(tokio::spawn(async move {
            loop {
                this.sync().await;
                tokio::select! {
                    changed = announced.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(RESCAN_EVERY) => {}
                }
            }
        }))
    }

    /// Hand a verdict decided elsewhere to the session of this process that asked (once: the request leaves
    /// `pending`). The deciding replica updates the cards.
    fn forward(&self, verdict: Verdict) {
        let Some(p) = self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&verdict.request_id) else { return };
        tracing::info!(request_id = %verdict.request_id, "a verdict given on another replica reached the session that asked");
        let _ = p.verdicts.send(verdict);
    }

    /// An answer from `aad` through `bot_app_id`, on any replica: with replicas, decided in the database
    /// (once, cluster-wide) and the verdict forwarded by the owner; else [`Self::decide`].
    pub async fn decide_anywhere(&self, bot_app_id: &str, request_id: &str, aad: &str, behavior: Behavior) -> Decision {
        let Some(cluster) = &self.cluster else { return self.decide(bot_app_id, request_id, aad, behavior) };
        let shared = cluster.shared();
        let decided = shared.decide_approval(bot_app_id, request_id, aad, behavior.as_str(), crate::store::now_ms()).await;
        match decided {
            Ok(crate::store::ApprovalDecision::Decided { tool_name, cards, owner }) => {
                cluster.open.lock().unwrap_or_else(PoisonError::into_inner).remove(request_id);
                let verdict = Verdict { request_id: request_id.to_owned(), behavior, by: aad.trim().to_ascii_lowercase() };
                if owner == shared.replica_id() {
                    // Asked here: forward now (the re-scan finds nothing left to forward).
                    self.forward(verdict.clone());
                }
                let cards = cards.into_iter().filter_map(|c| serde_json::from_value(c).ok()).collect();
                Decision::Decided { verdict, tool_name, cards }
            }
            Ok(crate::store::ApprovalDecision::NotApprover { tool_name }) => Decision::NotApprover { tool_name },
            Ok(crate::store::ApprovalDecision::Unknown) => Decision::Unknown,
            Err(e) => {
                tracing::error!(error = %e, request_id, "could not decide a permission request in the store; nothing was decided");
                Decision::Unknown
            }
        }
    }

    /// Queue the card updates of a decided request (done by the hub's sweeper).
    pub fn push_settled(&self, request_id: String, tool_name: String, cards: Vec<CardRef>, text: String) {
        self.settled.lock().unwrap_or_else(PoisonError::into_inner).push(Settled { request_id, tool_name, cards, text });
    }

    pub fn take_settled(&self) -> Vec<Settled> {
        std::mem::take(&mut *self.settled.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Open a request; false (and nothing changes) when a request with this id is open already.
    #[must_use]
    pub fn register(&self, p: PendingApproval) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.contains_key(&p.request_id) {
            return false;
        }
        pending.insert(p.request_id.clone(), p);
        true
    }

    /// Withdraw an open request (no card could be sent for it).
    pub fn withdraw(&self, request_id: &str) -> Option<PendingApproval> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(request_id)
    }

    /// The cards sent for an open request of this bot (asked here, or on another replica).
    pub fn cards_of(&self, bot_app_id: &str, request_id: &str) -> Vec<CardRef> {
        let local = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(request_id)
            .filter(|p| p.bot_app_id.eq_ignore_ascii_case(bot_app_id))
            .map(|p| p.cards.clone());
        local
            .or_else(|| {
                self.mirrored(request_id, |r| {
                    (r.bot_app_id.eq_ignore_ascii_case(bot_app_id))
                        .then(|| r.cards.iter().filter_map(|c| serde_json::from_value(c.clone()).ok()).collect())
                })
                .flatten()
            })
            .unwrap_or_default()
    }

    pub fn add_card(&self, request_id: &str, card: CardRef) {
        if let Some(p) = self.pending.lock().unwrap_or_else(PoisonError::into_inner).get_mut(request_id) {
            p.cards.push(card);
        }
    }

    /// Whether no request is open at all, here or (as last read) on another replica: then no message can
    /// be an answer. No database trip.
    pub fn none_open(&self) -> bool {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
            && self.cluster.as_ref().is_none_or(|c| c.open.lock().unwrap_or_else(PoisonError::into_inner).is_empty())
    }

    /// Whether a request with this id is open for this bot (here, or on another replica as last read).
    pub fn is_open(&self, bot_app_id: &str, request_id: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(request_id)
            .is_some_and(|p| p.bot_app_id.eq_ignore_ascii_case(bot_app_id))
            || self.mirrored(request_id, |r| r.bot_app_id.eq_ignore_ascii_case(bot_app_id)).unwrap_or(false)
    }

    /// Whether `aad` may answer the open request `request_id` through this bot (here, or on another replica
    /// as last read).
    pub fn is_open_for(&self, bot_app_id: &str, request_id: &str, aad: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(request_id)
            .is_some_and(|p| p.bot_app_id.eq_ignore_ascii_case(bot_app_id) && p.approvers.iter().any(|a| a.matches(aad)))
            || self
                .mirrored(request_id, |r| {
                    r.bot_app_id.eq_ignore_ascii_case(bot_app_id) && r.approvers.iter().any(|a| a.eq_ignore_ascii_case(aad.trim()))
                })
                .unwrap_or(false)
    }

    /// Whether a session of this process asked for `request_id` (and it is still open).
    pub fn is_local(&self, request_id: &str) -> bool {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).contains_key(request_id)
    }

    /// Whether requests are shared with other replicas.
    pub fn is_shared(&self) -> bool {
        self.cluster.is_some()
    }

    /// An answer from `aad` (an AAD object id) through `bot_app_id`. Only an approver of the request,
    /// through the bot that asked, decides it; the verdict is sent to the asking session.
    pub fn decide(&self, bot_app_id: &str, request_id: &str, aad: &str, behavior: Behavior) -> Decision {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(p) = pending.get(request_id).filter(|p| p.bot_app_id.eq_ignore_ascii_case(bot_app_id)) else {
            return Decision::Unknown;
        };
        if !p.approvers.iter().any(|a| a.matches(aad)) {
            return Decision::NotApprover { tool_name: p.tool_name.clone() };
        }
        let Some(p) = pending.remove(request_id) else { return Decision::Unknown };
        let verdict = Verdict { request_id: p.request_id.clone(), behavior, by: aad.to_ascii_lowercase() };
        // The session may be gone (the host quit): the verdict then has no one to go to.
        let _ = p.verdicts.send(verdict.clone());
        Decision::Decided { verdict, tool_name: p.tool_name, cards: p.cards }
    }

    /// Remove and return the requests that expired by `now_ms`.
    pub fn take_expired(&self, now_ms: i64) -> Vec<PendingApproval> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let ids: Vec<String> = pending.values().filter(|p| p.expires_at_ms <= now_ms).map(|p| p.request_id.clone()).collect();
        ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
    }

    /// Drop the requests of a session that ended (its verdict channel is closed).
    pub fn take_orphaned(&self) -> Vec<PendingApproval> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let ids: Vec<String> = pending.values().filter(|p| p.verdicts.is_closed()).map(|p| p.request_id.clone()).collect();
        ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
    }
}

impl super::Hub {
    /// Queue `card` to each of `bot`'s approvers, in their 1:1 chat with the bot within the caller's scope,
    /// and register the request so that an approver's answer reaches `verdicts` (it expires after
    /// `timeout`). Returns how many cards were queued; with none, nothing is registered.
    #[allow(clippy::too_many_arguments)]
    pub async fn ask_approvers(
        &self,
        caller: super::Caller<'_>,
        bot: &crate::config::BotConfig,
        request_id: &str,
        tool_name: &str,
        card: &Value,
        timeout: std::time::Duration,
        verdicts: mpsc::UnboundedSender<Verdict>,
    ) -> usize {
        // `policy.approvers`, or else the Agent User's sponsors (none when Graph could not say: fail closed).
        let approvers = self.approvers_of(bot).await;
        if approvers.is_empty() {
            tracing::warn!(request_id, bot = %bot.app_id, "no approver (no policy.approvers, and no sponsor could be read); nothing asked");
            return 0;
        }
        // Reserve the id first: a request whose id is open already (another session's, or another bot's)
        // is refused, never merged or replaced, so an answer can only ever reach the session that asked.
        let reserved = self.approvals.register(PendingApproval {
            request_id: request_id.to_owned(),
            bot_app_id: bot.app_id.to_string(),
            approvers: approvers.clone(),
            tool_name: tool_name.to_owned(),
            verdicts,
            cards: Vec::new(),
            expires_at_ms: crate::store::now_ms().saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2)),
        });
        if !reserved {
            tracing::warn!(request_id, "a permission request reuses the id of an open request; refused (no card sent)");
            return 0;
        }
        if !self.approvals.open_shared(request_id).await {
            self.approvals.withdraw(request_id);
            tracing::warn!(request_id, "a permission request reuses the id of a request open on another replica; refused (no card sent)");
            return 0;
        }
        let from_sponsors = bot.policy.approvers.is_empty();
        let mut sent = 0;
        for approver in &approvers {
            // Where the session works in a group chat or channel: privately there, when Teams takes it.
            let not_targeted = match self.ask_targeted(caller, bot, approver, request_id, card).await {
                Ok(card) => {
                    self.approvals.add_card_shared(request_id, &card).await;
                    self.approvals.add_card(request_id, card);
                    sent += 1;
                    continue;
                }
                Err(why) => why,
            };
            let r = match self.store.personal_conversation(&bot.app_id, approver.as_str()).await {
                Ok(Some(r)) if caller.scope.allows_tenant(&r.tenant_id) => r,
                Ok(_) if from_sponsors && self.ask_in_agent_user_chat(caller, bot, approver, request_id, tool_name).await => {
                    sent += 1;
                    continue;
                }
                Ok(_) => {
                    tracing::warn!(approver = %approver, bot = %bot.app_id, "approver has no 1:1 chat with the bot in scope: they must message the bot once before approvals can reach them");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "store unavailable; no approval card sent");
                    continue;
                }
            };
            let activity = crate::connector::send::message(Some(&format!("Approval needed: {request_id}")), Some(card.clone()));
            match self.enqueue(caller.requester, bot, &r, crate::store::OutboundOp::Send { activity }).await {
                Ok(outbox_id) => {
                    let path = Asked { request_id, approver, how: "personal", why: not_targeted.as_deref() };
                    self.audit_asked(caller, bot, &r, &path).await;
                    let card = CardRef {
                        outbox_id,
                        bot_app_id: bot.app_id.clone(),
                        tenant_id: r.tenant_id,
                        conversation_id: r.conversation_id,
                        service_url: r.service_url,
                        targeted: false,
                    };
                    self.approvals.add_card_shared(request_id, &card).await;
                    self.approvals.add_card(request_id, card);
                    sent += 1;
                }
                Err(e) => tracing::error!(error = %e, "an approval card could not be queued"),
            }
        }
        if sent == 0 {
            self.approvals.withdraw(request_id);
            self.approvals.close_shared(request_id).await;
        }
        sent
    }
}

/// Which way an approver was asked, for the audit log (`permission_ask`).
struct Asked<'a> {
    request_id: &'a str,
    approver: &'a crate::ids::AadObjectId,
    /// `targeted` (privately, in the conversation the session works in) or `personal` (their 1:1 chat).
    how: &'a str,
    /// Why not targeted, when the session works in a group chat or channel.
    why: Option<&'a str>,
}

impl super::Hub {
    /// Ask `approver` privately in the conversation the caller works in: a targeted message only they see,
    /// when that conversation is a group chat or channel of `bot` they are a member of, the bot's
    /// `policy.targeted_approvals` is on, and Teams takes it (the entry is delivered, or still being
    /// retried). Otherwise why not (`None`: the caller works in no such conversation, nothing was tried);
    /// the approver is then asked in their 1:1 chat, as without a group chat.
    async fn ask_targeted(
        &self,
        caller: super::Caller<'_>,
        bot: &crate::config::BotConfig,
        approver: &crate::ids::AadObjectId,
        request_id: &str,
        card: &Value,
    ) -> Result<CardRef, Option<String>> {
        let Some(origin) = caller.origin.filter(|o| o.bot_app_id.eq_ignore_ascii_case(&bot.app_id)) else { return Err(None) };
        let r = match self.origin_ref(&bot.app_id, &origin.conversation_id).await {
            Ok(Some(r)) if crate::teams::targeted::supported_in(r.conversation_type.as_deref()) => r,
            Ok(_) => return Err(None),
            Err(e) => return Err(Some(format!("the conversation could not be read ({e})"))),
        };
        if !bot.policy.targeted_approvals {
            return Err(Some("policy.targeted_approvals is off for this bot".into()));
        }
        if !caller.scope.allows_tenant(&r.tenant_id) {
            return Err(Some("the conversation is outside the session's scope".into()));
        }
        if !r.usable || super::route::lives_in_graph(&r) || r.agentic.is_some() {
            return Err(Some("the bot does not write in that conversation itself".into()));
        }
        let member = match self.outbound.member(&r, approver.as_str()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(Some("the approver is not a member of the conversation".into())),
            Err(e) => return Err(Some(format!("the approver's membership could not be read ({e})"))),
        };
        let Some(member_id) = member.get("id").and_then(Value::as_str) else {
            return Err(Some("the Connector named no id for the approver".into()));
        };
        let activity = crate::connector::send::message(Some(&format!("Approval needed: {request_id}")), Some(card.clone()));
        let op = crate::store::OutboundOp::Targeted { recipient: member_id.to_owned(), activity };
        let outbox_id = match self.enqueue(caller.requester, bot, &r, op).await {
            Ok(id) => id,
            Err(e) => return Err(Some(e.to_string())),
        };
        // Teams may refuse a targeted message (preview; 400, 404): then the 1:1 chat, at once.
        let why = match self.settle(outbox_id).await {
            super::deliver::Settled::Delivered(_) | super::deliver::Settled::Queued(..) => None,
            super::deliver::Settled::Dead(f) => Some(format!("Teams refused the targeted message ({})", f.message)),
            super::deliver::Settled::Uncertain => Some("the targeted message may not have arrived".to_owned()),
            super::deliver::Settled::Unreadable(e) => Some(format!("the targeted message's state could not be read ({e})")),
        };
        if let Some(why) = why {
            tracing::warn!(request_id, why, "an approval card could not be sent privately; asking in the approver's 1:1 chat");
            return Err(Some(why));
        }
        self.audit_asked(caller, bot, &r, &Asked { request_id, approver, how: "targeted", why: None }).await;
        Ok(CardRef {
            outbox_id,
            bot_app_id: bot.app_id.clone(),
            tenant_id: r.tenant_id,
            conversation_id: r.conversation_id,
            service_url: r.service_url,
            targeted: true,
        })
    }

    /// The reference of the conversation a session works in; for a channel thread the session only sent
    /// into (no activity came from it), its channel's, addressed to the thread.
    async fn origin_ref(&self, bot: &str, conversation: &str) -> Result<Option<crate::store::ConversationRef>, crate::store::StoreError> {
        if let Some(r) = self.store.conversation_ref(bot, conversation).await? {
            return Ok(Some(r));
        }
        let channel = crate::teams::thread_root(conversation);
        if channel == conversation {
            return Ok(None);
        }
        let r = self.store.conversation_ref(bot, channel).await?.filter(|r| r.conversation_type.as_deref() == Some("channel"));
        Ok(r.map(|mut r| {
            r.conversation_id = conversation.into();
            r
        }))
    }

    /// Say in the audit log which way an approver was asked (the card's own send is audited with its entry).
    async fn audit_asked(
        &self,
        caller: super::Caller<'_>,
        bot: &crate::config::BotConfig,
        r: &crate::store::ConversationRef,
        asked: &Asked<'_>,
    ) {
        let mut detail = format!("request {}, approver {}", asked.request_id, asked.approver);
        if let Some(why) = asked.why {
            detail.push_str(&format!("; not targeted: {why}"));
        }
        let event = crate::store::AuditEvent::new(
            crate::store::now_ms(),
            caller.requester,
            crate::store::Identity::bot(&bot.app_id),
            "permission_ask",
            crate::store::Target::conversation(&r.tenant_id, &r.conversation_id),
            asked.how,
        )
        .with_detail(detail);
        if let Err(e) = self.store.record_audit(event).await {
            tracing::error!(error = %e, "could not audit which way an approver was asked");
        }
    }

    /// The bot whose approvers decide a tool call: the conversation's (`chat_id`), else the one named, else
    /// the first in scope that has someone to ask.
    pub async fn approving_bot(
        &self,
        scope: &super::Scope,
        chat_id: Option<&str>,
        bot: Option<&str>,
    ) -> super::Result<crate::config::BotConfig> {
        if let Some(chat) = chat_id.filter(|c| !c.trim().is_empty()) {
            return Ok(self.conversation_any(scope, chat, bot).await?.0);
        }
        let mut bots = self.bots_in(scope, bot).peekable();
        if bots.peek().is_none() {
            return Err(super::Error::not_found("no bot in this session's scope matches"));
        }
        let found = bots.find(|b| self.can_ask_owners(b)).or_else(|| self.bots_in(scope, bot).next());
        found.cloned().ok_or_else(|| super::Error::not_found("no bot in this session's scope matches"))
    }

    /// Ask `bot`'s approvers (the same cards and answers as the permission relay) whether the session may
    /// call `tool` with `input`, and wait for the answer, at most min(`approval_timeout_secs`, 120 s). Ok
    /// only when an approver allowed it; denied, unanswered or nobody to ask: refused, nothing done.
    pub async fn approve_tool_call(
        &self,
        caller: super::Caller<'_>,
        bot: &crate::config::BotConfig,
        tool: &str,
        input: &str,
    ) -> super::Result<()> {
        if !self.can_ask_owners(bot) {
            return Err(super::Error::refused(format!(
                "{tool} needs an owner's approval for this token, and bot {} has no policy.approvers; nothing was done",
                bot.app_id
            )));
        }
        let request_id = new_request_id();
        let timeout = std::time::Duration::from_secs(bot.policy.approval_timeout_secs).min(super::agent::APPROVAL_WAIT);
        let description = format!("A host ({}) wants to use {tool}, which needs an owner's approval for its token.", caller.requester);
        let card = request_card(&request_id, tool, &description, input, timeout.as_secs().div_ceil(60));
        let (tx, mut rx) = mpsc::unbounded_channel();
        if self.ask_approvers(caller, bot, &request_id, tool, &card, timeout, tx).await == 0 {
            return Err(super::Error::refused(format!(
                "{tool} needs an owner's approval, and no approver could be reached (each must have messaged the bot once); nothing was done"
            )));
        }
        tracing::info!(request_id, tool, "waiting for an owner's approval of a tool call");
        match tokio::time::timeout(timeout + std::time::Duration::from_secs(1), rx.recv()).await {
            Ok(Some(v)) if v.behavior == Behavior::Allow => Ok(()),
            Ok(Some(_)) => Err(super::Error::refused(format!("an owner denied {tool} (request {request_id}); nothing was done"))),
            _ => Err(super::Error::refused(format!(
                "no owner answered within {} s (request {request_id}); {tool} was not done",
                timeout.as_secs()
            ))),
        }
    }

    /// Ask a sponsor who has no 1:1 chat with the bot in their 1:1 chat with the Agent User (through Graph,
    /// as the Agent User, audited): a text naming the request, answered by typing `yes <id>` / `no <id>`
    /// there (a card's buttons reach no bot in a Graph chat). Whether it was sent.
    async fn ask_in_agent_user_chat(
        &self,
        caller: super::Caller<'_>,
        bot: &crate::config::BotConfig,
        sponsor: &crate::ids::AadObjectId,
        request_id: &str,
        tool_name: &str,
    ) -> bool {
        let Some(actor) = self.agents.get(&bot.app_id.to_ascii_lowercase()).cloned() else { return false };
        let chats = match self.store.conversations(1000).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "store unavailable; no approval request sent");
                return false;
            }
        };
        let Some(chat) = chats.into_iter().find(|r| {
            r.bot_app_id.matches(bot.app_id.as_str())
                && super::route::lives_in_graph(r)
                && r.conversation_type.as_deref() == Some("personal")
                && r.user_aad_object_id.as_ref().is_some_and(|u| u.matches(sponsor.as_str()))
                && caller.scope.allows_tenant(&r.tenant_id)
        }) else {
            return false;
        };
        let tool: String = tool_name.chars().filter(|c| !c.is_control()).take(100).collect();
        let text = format!(
            "Approval needed ({request_id}): the agent asks to use {tool}. Answer here with \"yes {request_id}\" or \"no {request_id}\"."
        );
        match self.graph_send_body(caller, &actor, chat.conversation_id.as_str(), crate::graph::MessageBody::from_text(&text)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "an approval request could not be sent in the sponsor's chat with the Agent User");
                false
            }
        }
    }
}

/// A fresh request id in Claude Code's shape (for approvals agentgate asks for itself).
pub(crate) fn new_request_id() -> String {
    const LETTERS: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    (0..5).map(|_| char::from(LETTERS[fastrand::usize(..LETTERS.len())])).collect()
}

/// Whether `id` is shaped like Claude Code's request ids: five letters `a`–`z` without `l`.
pub(crate) fn is_request_id(id: &str) -> bool {
    id.len() == 5 && id.bytes().all(|b| b.is_ascii_lowercase() && b != b'l')
}

/// A typed answer, `yes abcde` / `no abcde` (also `y` / `n`, any case, spaces around): the behavior
/// and the lower-cased request id.
pub(crate) fn parse_text_verdict(text: &str) -> Option<(Behavior, String)> {
    let mut words = text.split_whitespace();
    let (answer, id) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let behavior = match answer.to_ascii_lowercase().as_str() {
        "y" | "yes" => Behavior::Allow,
        "n" | "no" => Behavior::Deny,
        _ => return None,
    };
    let id = id.to_ascii_lowercase();
    is_request_id(&id).then_some((behavior, id))
}

/// The answer carried by an `Action.Execute` on an approval card: `(request id, behavior)`.
pub(crate) fn parse_card_verdict(verb: &str, data: &Value) -> Option<(String, Behavior)> {
    if verb != VERB {
        return None;
    }
    let id = data.get("request_id")?.as_str()?.to_ascii_lowercase();
    let behavior = Behavior::parse(data.get("behavior")?.as_str()?)?;
    is_request_id(&id).then_some((id, behavior))
}

fn fact(title: &str, value: &str) -> Value {
    json!({"title": title, "value": value})
}

/// Host-supplied text for a card: control characters dropped, bounded, and Markdown's active characters
/// (TextBlocks render Markdown) neutralised.
fn plain(s: &str, max: usize) -> String {
    let cleaned: String = s.chars().filter(|c| !c.is_control() || *c == '\n').take(max).collect();
    cleaned.replace('\\', "\\\\").replace(['*', '_', '[', ']', '`', '#'], " ")
}

/// The card an approver receives. The tool's description and input come from the host and are shown
/// as untrusted text (plain `TextBlock`s, Markdown-free, bounded).
pub(crate) fn request_card(request_id: &str, tool_name: &str, description: &str, input_preview: &str, minutes: u64) -> Value {
    json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "body": [
            {"type": "TextBlock", "text": "The agent asks to use a tool", "weight": "Bolder", "size": "Medium", "wrap": true},
            {"type": "FactSet", "facts": [fact("Tool", &plain(tool_name, 100)), fact("Request", request_id)]},
            {"type": "TextBlock", "text": "What the agent says it does (unverified):", "isSubtle": true, "wrap": true},
            {"type": "TextBlock", "text": plain(description, 1000), "wrap": true},
            {"type": "TextBlock", "text": "Input (unverified):", "isSubtle": true, "wrap": true},
            {"type": "TextBlock", "text": plain(input_preview, 1500), "wrap": true, "fontType": "Monospace"},
            {"type": "TextBlock", "text": format!("Expires in {minutes} min. You can also answer `yes {request_id}` or `no {request_id}`."), "isSubtle": true, "wrap": true}
        ],
        "actions": [
            {"type": "Action.Execute", "title": "Allow", "verb": VERB, "data": {"request_id": request_id, "behavior": "allow"}, "style": "positive"},
            {"type": "Action.Execute", "title": "Deny", "verb": VERB, "data": {"request_id": request_id, "behavior": "deny"}, "style": "destructive"}
        ]
    })
}

/// The card once the request is settled (no actions left).
pub(crate) fn settled_card(request_id: &str, tool_name: &str, outcome: &str) -> Value {
    json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.5",
        "body": [
            {"type": "TextBlock", "text": "Tool use request", "weight": "Bolder", "wrap": true},
            {"type": "FactSet", "facts": [fact("Tool", &plain(tool_name, 100)), fact("Request", request_id)]},
            {"type": "TextBlock", "text": outcome, "wrap": true}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_verdicts_follow_the_channel_contract() {
        assert_eq!(parse_text_verdict("yes abcde"), Some((Behavior::Allow, "abcde".into())));
        assert_eq!(parse_text_verdict("  N   ABCDE "), Some((Behavior::Deny, "abcde".into())));
        assert_eq!(parse_text_verdict("Y qwert"), Some((Behavior::Allow, "qwert".into())));
        // `l` is never in an id; wrong lengths, extra words and other answers are chat.
        for text in ["yes abcle", "yes abcd", "yes abcdef", "yes abcde please", "ok abcde", "yes", "yes ab1de", ""] {
            assert_eq!(parse_text_verdict(text), None, "{text:?}");
        }
    }

    #[test]
    fn card_verdicts_need_the_verb_and_a_well_formed_id() {
        let data = json!({"request_id": "ABCDE", "behavior": "deny"});
        assert_eq!(parse_card_verdict(VERB, &data), Some(("abcde".into(), Behavior::Deny)));
        assert_eq!(parse_card_verdict("other", &data), None);
        assert_eq!(parse_card_verdict(VERB, &json!({"request_id": "abcde", "behavior": "maybe"})), None);
        assert_eq!(parse_card_verdict(VERB, &json!({"request_id": "lllll", "behavior": "allow"})), None);
    }

    fn pending(id: &str, tx: mpsc::UnboundedSender<Verdict>, expires_at_ms: i64) -> PendingApproval {
        PendingApproval {
            request_id: id.into(),
            bot_app_id: "Bot".into(),
            approvers: vec!["aaaa".into()],
            tool_name: "Bash".into(),
            verdicts: tx,
            cards: vec![],
            expires_at_ms,
        }
    }

    #[test]
    fn only_an_approver_through_the_asking_bot_decides_once() {
        let approvals = Approvals::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(approvals.register(pending("abcde", tx, 1_000)));
        assert_eq!(approvals.decide("bot", "abcde", "bbbb", Behavior::Allow), Decision::NotApprover { tool_name: "Bash".into() });
        assert_eq!(approvals.decide("other-bot", "abcde", "AAAA", Behavior::Allow), Decision::Unknown);
        assert!(rx.try_recv().is_err(), "no verdict from a non-approver");
        match approvals.decide("bot", "abcde", "AAAA", Behavior::Deny) {
            Decision::Decided { verdict, .. } => assert_eq!(verdict.behavior, Behavior::Deny),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.try_recv().unwrap(), Verdict { request_id: "abcde".into(), behavior: Behavior::Deny, by: "aaaa".into() });
        assert_eq!(approvals.decide("bot", "abcde", "aaaa", Behavior::Allow), Decision::Unknown, "decided once");
    }

    #[test]
    fn an_open_request_id_is_never_registered_twice() {
        let approvals = Approvals::default();
        let (first, mut first_rx) = mpsc::unbounded_channel();
        let (second, mut second_rx) = mpsc::unbounded_channel();
        assert!(approvals.register(pending("abcde", first, 1_000)));
        let mut other = pending("abcde", second, 1_000);
        other.bot_app_id = "other-bot".into();
        assert!(!approvals.register(other), "a duplicate id replaced an open request");
        assert!(matches!(approvals.decide("bot", "abcde", "aaaa", Behavior::Allow), Decision::Decided { .. }));
        assert_eq!(first_rx.try_recv().unwrap().behavior, Behavior::Allow);
        assert!(second_rx.try_recv().is_err(), "the verdict reached the second asker");
    }

    #[test]
    fn the_approval_verb_is_found_at_any_depth() {
        assert!(uses_reserved_verb(&request_card("abcde", "Bash", "d", "{}", 1)));
        let nested = json!({"type": "AdaptiveCard", "body": [{"type": "ActionSet", "actions": [{"type": "Action.Execute", "verb": " AgentGate.Permission "}]}]});
        assert!(uses_reserved_verb(&nested));
        assert!(!uses_reserved_verb(&json!({"type": "AdaptiveCard", "actions": [{"type": "Action.Execute", "verb": "deploy"}]})));
    }

    #[test]
    fn expiry_and_orphans() {
        let approvals = Approvals::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        assert!(approvals.register(pending("abcde", tx.clone(), 1_000)));
        assert!(approvals.register(pending("fghij", tx, 5_000)));
        assert!(approvals.take_expired(999).is_empty());
        let expired: Vec<String> = approvals.take_expired(1_000).into_iter().map(|p| p.request_id).collect();
        assert_eq!(expired, vec!["abcde"]);
        assert!(approvals.take_orphaned().is_empty());
        drop(_rx);
        assert_eq!(approvals.take_orphaned().len(), 1);
    }

    #[test]
    fn cards_validate_and_keep_markdown_out() {
        let card = request_card("abcde", "Bash", "**click** [here](https://evil)", "{\"cmd\":\"rm -rf /\"}", 10);
        crate::teams::validate_card(&card).unwrap();
        let text = card.to_string();
        assert!(!text.contains("**click**") && !text.contains("[here]"));
        crate::teams::validate_card(&settled_card("abcde", "Bash", "Allowed")).unwrap();
    }
}
