//! The Agent User's inbound: what people write in its chats (1:1, group, meeting) becomes inbox entries,
//! through Microsoft Graph change notifications, never a standing poll (Teams allows polling a resource
//! once a day).
//!
//! * Subscriptions: one per Agent User covering all its chats (`/users/{oid}/chats/getAllMessages`,
//!   metered: payment model B), created and renewed (PATCH, when half its life is left) with the Agent
//!   User's own token, with a `lifecycleNotificationUrl`. Kept in the store with their secret
//!   `clientState`.
//! * Notifications are made durable by the intake (`inbound::graph`) before the 202; this worker does the
//!   slow part afterwards: fetch the message with the Agent User's token, convert it into the
//!   Bot-Framework-style activity the bridge understands ([`to_activity`]), apply the bot's policy and commit
//!   the inbox entry with the notification's end in one transaction. Rows not done are redone at start.
//! * Lifecycle: `reauthorizationRequired` renews; `subscriptionRemoved` recreates and catches up; `missed`
//!   catches up.
//! * Catch-up reads (at start, after `missed` or `subscriptionRemoved`, after a lapsed subscription): each
//!   chat from its durable cursor (`lastModifiedDateTime`), committed with the entries, paced to about
//!   3 reads/s, `Retry-After` honoured by the client.
//! * Deduplicated on (bot, chat id, Graph message id); edits and deletions are typed events
//!   (`messageUpdate`, `messageDelete`) keyed by their own change. Never the Agent User's own messages
//!   (matched on `from.user.id`, its object id), never bots' (`from.application`) or system messages
//!   (`from: null`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::agent::AgentActor;
use super::gate::{Classified, InboundGate};
use crate::activity::Activity;
use crate::graph::{GraphError, GraphErrorKind, html_to_text};
use crate::ids::{AadObjectId, AuthKind};
use crate::store::{
    ChatCursor, CommitOutcome, ConversationRef, GraphCommit, GraphNotification, GraphSubscription, InboundRecord, Store, now_ms,
};

/// The `channelId` of conversations that live in Graph (the Agent User's chats): replies go out through
/// Graph as the Agent User, never through the Connector.
pub(crate) use crate::teams::files::GRAPH_CHANNEL;

/// The path Graph posts change notifications to.
pub(crate) const NOTIFICATIONS_PATH: &str = "/api/graph/notifications";
/// The path Graph posts lifecycle notifications to.
pub(crate) const LIFECYCLE_PATH: &str = "/api/graph/lifecycle";

/// The pause before each catch-up read: Teams allows about 3 chat-message reads per second per app and
/// tenant.
const READ_PACE: Duration = Duration::from_millis(350);
/// Most messages one catch-up read of a chat takes.
const CATCH_UP_MAX: usize = 1000;
/// Most chats a catch-up reads.
const MAX_CHATS: usize = 500;
/// How often the worker looks at its subscriptions (renewals), when nothing wakes it.
const TICK: Duration = Duration::from_secs(30);
/// How long a lease on a bot's subscription or catch-up lasts unless its replica renews it (a catch-up
/// renews it before each chat).
const LEASE_MS: i64 = 120_000;
/// Notifications claimed at once: small, so that replicas share a burst.
const CLAIM_BATCH: usize = 10;
/// How soon a notification waiting for another replica (its catch-up read, its subscription) is tried again.
const BUSY_RETRY: Duration = Duration::from_secs(2);
/// The pseudo-chat whose cursor holds when the last complete catch-up read began: a `missed` event received
/// before then is covered by it (whichever replica read), and is not read again.
const CAUGHT_UP: &str = "#caught-up";

/// The worker's clock for subscription lifetimes and its own pauses: the system's, or, for tests of long
/// idle periods (`--dev` only), one that runs `scale` times faster. Everything else (cursors, inbox times,
/// leases) keeps the system's time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    scale: u32,
    origin: std::time::Instant,
    origin_ms: i64,
}

impl Clock {
    fn system() -> Self {
        Self { scale: 1, origin: std::time::Instant::now(), origin_ms: now_ms() }
    }

    fn now_ms(&self) -> i64 {
        if self.scale <= 1 {
            return now_ms();
        }
        let elapsed = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
        self.origin_ms.saturating_add(elapsed.saturating_mul(i64::from(self.scale)))
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d / self.scale.max(1)).await;
    }
}

/// One bot's Agent User, as the inbound worker uses it.
struct InboundBot {
    app_id: String,
    actor: Arc<AgentActor>,
    lifetime: Duration,
    /// The Agent User's object id, resolved once (`/me` when only a UPN is configured).
    oid: tokio::sync::OnceCell<String>,
    /// Chat id → (conversation type, tenant id), read once per chat.
    chats: Mutex<HashMap<String, (String, String)>>,
}

/// The Agent User inbound of every bot that has it on.
pub(crate) struct GraphInbound {
    store: Arc<dyn Store>,
    gate: Arc<InboundGate>,
    bots: Vec<InboundBot>,
    notification_url: String,
    lifecycle_url: String,
    dedupe_ttl: Duration,
    wake: tokio::sync::Notify,
    pace: Duration,
    clock: Clock,
}

impl std::fmt::Debug for GraphInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphInbound")
            .field("bots", &self.bots.iter().map(|b| b.app_id.as_str()).collect::<Vec<_>>())
            .field("notification_url", &self.notification_url)
            .finish_non_exhaustive()
    }
}

/// A notification that passed the `clientState` check, as the intake records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub subscription_id: String,
    pub bot_app_id: String,
    pub event: String,
    pub resource: String,
    /// Whether its subscription is to the Agent User's mail (then [`super::mail_inbound`] takes it), not its chats.
    pub mail: bool,
}

/// Check each notification of a request body against its stored subscription (chats and mail alike): the
/// accepted ones (an unknown subscription or a wrong `clientState` is dropped, logged without details).
pub(crate) async fn check_notifications(store: &dyn Store, body: &Value) -> Result<Vec<Accepted>, crate::store::StoreError> {
    let items = body.get("value").and_then(Value::as_array).cloned().unwrap_or_default();
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let subs = store.graph_subscriptions(None).await?;
    let mut out = Vec::new();
    for item in items {
        let id = item.get("subscriptionId").and_then(Value::as_str).unwrap_or_default();
        let state = item.get("clientState").and_then(Value::as_str).unwrap_or_default();
        let Some(sub) = subs.iter().find(|s| s.subscription_id == id) else {
            tracing::warn!("a Graph notification for an unknown subscription was ignored");
            continue;
        };
        if !same_secret(sub.client_state.expose_secret(), state) {
            tracing::warn!(bot = %sub.bot_app_id, "a Graph notification with a wrong clientState was ignored");
            continue;
        }
        let event = item
            .get("lifecycleEvent")
            .or_else(|| item.get("changeType"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect::<String>();
        let resource = item.get("resource").and_then(Value::as_str).unwrap_or_default().chars().take(1024).collect();
        out.push(Accepted {
            subscription_id: sub.subscription_id.clone(),
            bot_app_id: sub.bot_app_id.to_string(),
            event,
            resource,
            mail: super::mail_inbound::is_mail_resource(&sub.resource),
        });
    }
    Ok(out)
}

impl GraphInbound {
    /// The inbound of the bots whose `agent_user.inbound` is on (`None` when no bot has it).
    pub(crate) fn new(
        cfg: &crate::config::Config,
        agents: &HashMap<String, Arc<AgentActor>>,
        store: Arc<dyn Store>,
        gate: Arc<InboundGate>,
    ) -> Option<Arc<Self>> {
        let bots: Vec<InboundBot> = cfg
            .bots
            .iter()
            .filter_map(|b| {
                let au = b.agent_user.as_ref().filter(|a| a.inbound)?;
                let actor = agents.get(&b.app_id.to_ascii_lowercase())?;
                Some(InboundBot {
                    app_id: b.app_id.to_string(),
                    actor: Arc::clone(actor),
                    lifetime: Duration::from_secs(u64::from(au.subscription_minutes) * 60),
                    oid: tokio::sync::OnceCell::new(),
                    chats: Mutex::new(HashMap::new()),
                })
            })
            .collect();
        if bots.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            store,
            gate,
            bots,
            notification_url: cfg.public_endpoint(NOTIFICATIONS_PATH)?,
            lifecycle_url: cfg.public_endpoint(LIFECYCLE_PATH)?,
            dedupe_ttl: Duration::from_secs(cfg.store.dedupe_ttl_secs),
            wake: tokio::sync::Notify::new(),
            pace: READ_PACE,
            clock: Clock::system(),
        }))
    }

    /// Run the worker's clock `scale` times faster (a simulated idle hour in a test; `--dev` only).
    pub(crate) fn with_clock_scale(self: Arc<Self>, scale: u32) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut this) => {
                this.clock = Clock { scale: scale.max(1), ..Clock::system() };
                Arc::new(this)
            }
            Err(shared) => shared,
        }
    }

    /// Make accepted notifications of the chats' subscriptions durable (before the 202), then wake the worker.
    pub(crate) async fn record(&self, accepted: Vec<Accepted>) -> Result<(), crate::store::StoreError> {
        let accepted: Vec<Accepted> = accepted.into_iter().filter(|a| !a.mail).collect();
        if accepted.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let rows = accepted
            .into_iter()
            .map(|a| crate::store::NewGraphNotification {
                subscription_id: a.subscription_id,
                bot_app_id: a.bot_app_id.into(),
                event: a.event,
                resource: a.resource,
                received_at_ms: now,
            })
            .collect();
        self.store.record_graph_notifications(rows).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Run the worker: notifications left over from before are redone, subscriptions ensured, every chat
    /// caught up once; then notifications as they come and renewals when due.
    pub(crate) fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.drain().await;
            for bot in &this.bots {
                // A stored subscription may have lapsed at Graph while the gateway was down: renewing it
                // at start finds out (a 404 recreates it and catches up). With replicas, the one holding the
                // bot's subscription lease does it; the others leave it to that one.
                if this.lease(&subscription_lease(bot)).await {
                    let live = this.store.graph_subscriptions(Some(&bot.app_id)).await.unwrap_or_default();
                    let chats = live.iter().filter(|s| !super::mail_inbound::is_mail_resource(&s.resource));
                    for sub in chats.filter(|s| s.expires_at_ms > this.clock.now_ms()) {
                        this.renew(bot, &sub.subscription_id).await;
                    }
                    this.release(&subscription_lease(bot)).await;
                }
                let _ = this.ensure_subscription(bot).await;
                // Another replica reading now (or a lease left by a process that died reading): queued, so
                // the read happens once that lease is given up or runs out.
                this.catch_up_or_defer(bot).await;
            }
            loop {
                let waiting = this.drain().await;
                for bot in &this.bots {
                    let _ = this.ensure_subscription(bot).await;
                }
                tokio::select! {
                    () = this.wake.notified() => {}
                    () = this.clock.sleep(if waiting { BUSY_RETRY } else { TICK }) => {}
                }
            }
        })
    }

    fn bot(&self, app_id: &str) -> Option<&InboundBot> {
        self.bots.iter().find(|b| b.app_id.eq_ignore_ascii_case(app_id))
    }

    /// Take (or extend) a lease for this replica; false while another replica holds it, or when the store
    /// cannot say (then the work is left for later).
    async fn lease(&self, name: &str) -> bool {
        take_lease(self.store.as_ref(), name).await
    }

    async fn release(&self, name: &str) {
        release_lease(self.store.as_ref(), name).await;
    }

    /// Ask for a catch-up read that cannot be done here now (another replica is reading): a durable `missed`
    /// row, done by whichever replica claims it once the reading replica is finished.
    async fn defer_catch_up(&self, bot: &InboundBot) {
        let row = crate::store::NewGraphNotification {
            subscription_id: String::new(),
            bot_app_id: bot.app_id.clone().into(),
            event: "missed".to_owned(),
            resource: String::new(),
            received_at_ms: now_ms(),
        };
        match self.store.record_graph_notifications(vec![row]).await {
            Ok(_) => tracing::info!(bot = %bot.app_id, "another replica is reading the Agent User's chats; a catch-up read is queued"),
            Err(e) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "cannot queue a catch-up read; it is tried again after the next lifecycle event")
            }
        }
    }

    /// Work through the recorded notifications, oldest first. A transient failure leaves the row for later.
    /// Whether some row waits for another replica (then the worker looks again soon).
    async fn drain(&self) -> bool {
        let mut waiting = std::collections::HashSet::new();
        loop {
            // Claimed: with replicas, each notification is worked on by one of them.
            let pending = match self.store.claim_graph_notifications(CLAIM_BATCH, now_ms()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the Graph notifications to do");
                    return !waiting.is_empty();
                }
            };
            let pending: Vec<GraphNotification> = pending.into_iter().filter(|n| !waiting.contains(&n.id)).collect();
            if pending.is_empty() {
                return !waiting.is_empty();
            }
            for n in pending {
                match self.handle(&n).await {
                    Ok(()) => tracing::debug!(bot = %n.bot_app_id, event = %n.event, "Graph notification done"),
                    Err(Deferred::Busy(why)) => {
                        // Another replica holds what this needs: the row waits (claimed here), the rest goes on.
                        tracing::debug!(bot = %n.bot_app_id, event = %n.event, why, "a Graph notification waits for another replica");
                        waiting.insert(n.id);
                    }
                    Err(Deferred::Failed(e)) => {
                        tracing::warn!(bot = %n.bot_app_id, event = %n.event, error = %e, "a Graph notification could not be handled yet; tried again later");
                        return !waiting.is_empty();
                    }
                }
            }
        }
    }

    async fn handle(&self, n: &GraphNotification) -> Result<(), Deferred> {
        let done = |store: Arc<dyn Store>, id: i64| async move {
            store
                .commit_graph(GraphCommit { done: Some(id), ..GraphCommit::default() })
                .await
                .map(drop)
                .map_err(|e| Deferred::Failed(e.to_string()))
        };
        let Some(bot) = self.bot(n.bot_app_id.as_str()) else {
            return done(Arc::clone(&self.store), n.id).await;
        };
        match n.event.as_str() {
            "created" | "updated" | "deleted" => {
                let Some((chat_id, message_id)) = parse_resource(&n.resource) else {
                    tracing::warn!(bot = %bot.app_id, "a Graph notification names no chat message; ignored");
                    return done(Arc::clone(&self.store), n.id).await;
                };
                match self.chat(bot, &chat_id).await {
                    Ok(_) => {}
                    Err(e) if permanent(&e) => {
                        tracing::warn!(bot = %bot.app_id, error = %e, "a notified chat cannot be read; skipped");
                        return done(Arc::clone(&self.store), n.id).await;
                    }
                    Err(e) => return Err(Deferred::Failed(e.to_string())),
                }
                let message = match bot.actor.graph.get_chat_message_json(&chat_id, &message_id).await {
                    Ok(m) => m,
                    Err(e) if permanent(&e) => {
                        tracing::warn!(bot = %bot.app_id, error = %e, "a notified chat message cannot be read; skipped");
                        return done(Arc::clone(&self.store), n.id).await;
                    }
                    Err(e) => return Err(Deferred::Failed(e.to_string())),
                };
                let records = self.records(bot, &chat_id, &message, Some(n.event.as_str())).await?;
                Ok(self.commit(bot, records, Vec::new(), Some(n.id)).await?)
            }
            "reauthorizationRequired" => {
                let lease = subscription_lease(bot);
                if !self.lease(&lease).await {
                    return Err(Deferred::Busy("another replica is renewing or creating the subscription"));
                }
                self.renew(bot, &n.subscription_id).await;
                self.release(&lease).await;
                done(Arc::clone(&self.store), n.id).await
            }
            "subscriptionRemoved" => {
                let _ = self.store.delete_graph_subscription(&n.subscription_id).await;
                if !self.ensure_subscription(bot).await {
                    return Err(Deferred::Busy("another replica is recreating the subscription"));
                }
                if !self.catch_up(bot).await? {
                    return Err(Deferred::Busy("another replica is reading the chats; the catch-up waits for it"));
                }
                done(Arc::clone(&self.store), n.id).await
            }
            "missed" => {
                if self.caught_up_since(bot, n.received_at_ms).await {
                    tracing::info!(bot = %bot.app_id, "a catch-up read that began after this `missed` event is done already; not read again");
                    return done(Arc::clone(&self.store), n.id).await;
                }
                if !self.catch_up(bot).await? {
                    return Err(Deferred::Busy("another replica is reading the chats; the catch-up waits for it"));
                }
                done(Arc::clone(&self.store), n.id).await
            }
            other => {
                tracing::info!(bot = %bot.app_id, event = other, "a Graph notification of a kind agentgate does not use; ignored");
                done(Arc::clone(&self.store), n.id).await
            }
        }
    }

    /// Commit entries (with cursors and the notification's end) in one transaction, then wake the sessions.
    async fn commit(
        &self,
        bot: &InboundBot,
        records: Vec<(InboundRecord, Classified)>,
        cursors: Vec<ChatCursor>,
        done: Option<i64>,
    ) -> Result<(), String> {
        let (records, classified): (Vec<InboundRecord>, Vec<Classified>) = records.into_iter().unzip();
        let keys: Vec<(String, String)> = records.iter().map(|r| (r.tenant_id.to_string(), r.conversation_id.to_string())).collect();
        let outcomes = self.store.commit_graph(GraphCommit { records, cursors, mail: None, done }).await.map_err(|e| e.to_string())?;
        for ((outcome, c), (tenant, conversation)) in outcomes.into_iter().zip(&classified).zip(&keys) {
            if let CommitOutcome::Accepted { inbox_id } = outcome {
                self.gate.committed(self.store.as_ref(), c, inbox_id, &bot.app_id, tenant, conversation).await;
            }
        }
        Ok(())
    }

    /// The Agent User's object id.
    async fn oid(&self, bot: &InboundBot) -> Result<String, String> {
        bot.oid
            .get_or_try_init(|| async {
                match bot.actor.tokens.user() {
                    crate::entra::AgentUser::ObjectId(id) if !id.is_empty() => Ok(id.clone()),
                    _ => bot.actor.graph.me().await.map(|u| u.id).map_err(|e| e.to_string()),
                }
            })
            .await
            .cloned()
    }

    /// A chat's conversation type (`personal` / `groupChat`) and tenant, read once.
    async fn chat(&self, bot: &InboundBot, chat_id: &str) -> Result<(String, String), GraphError> {
        if let Some(c) = bot.chats.lock().unwrap_or_else(PoisonError::into_inner).get(chat_id) {
            return Ok(c.clone());
        }
        let chat = bot.actor.graph.get_chat(chat_id).await?;
        let kind = if chat.chat_type.eq_ignore_ascii_case("oneOnOne") { "personal" } else { "groupChat" };
        let tenant = chat.tenant_id.filter(|t| !t.is_empty()).unwrap_or_else(|| bot.actor.tokens.tenant().to_owned());
        let info = (kind.to_owned(), tenant);
        bot.chats.lock().unwrap_or_else(PoisonError::into_inner).insert(chat_id.to_owned(), info.clone());
        Ok(info)
    }

    /// The inbox records a fetched message makes (none for the Agent User's own, bots' and system
    /// messages). `event` is the notification's change type; `None` for a catch-up read.
    async fn records(
        &self,
        bot: &InboundBot,
        chat_id: &str,
        message: &Value,
        event: Option<&str>,
    ) -> Result<Vec<(InboundRecord, Classified)>, String> {
        let oid = self.oid(bot).await?;
        if let Some(why) = skip_reason(message, &oid) {
            tracing::debug!(bot = %bot.app_id, why, "a Graph chat message is not for the host");
            return Ok(Vec::new());
        }
        let (conversation_type, tenant) = self.chat(bot, chat_id).await.map_err(|e| e.to_string())?;
        let chat = ChatInfo { id: chat_id, conversation_type: &conversation_type, tenant: &tenant, agent_user: &oid };
        let now = now_ms();
        let mut out = Vec::new();
        for (kind, key) in changes(message, event) {
            let activity = to_activity(message, &chat, kind, &key);
            let Ok(parsed) = serde_json::from_value::<Activity>(activity.clone()) else {
                tracing::warn!(bot = %bot.app_id, "a Graph chat message could not be converted; skipped");
                continue;
            };
            let classified = self.gate.classify(&bot.app_id, &parsed, true);
            let record = InboundRecord {
                bot_app_id: bot.app_id.clone().into(),
                tenant_id: tenant.clone().into(),
                conversation_id: chat_id.to_owned().into(),
                activity_id: key,
                activity_type: kind.to_owned(),
                auth: AuthKind::Graph,
                body: activity.to_string(),
                received_at_ms: now,
                dedupe_expires_at_ms: now.saturating_add(i64::try_from(self.dedupe_ttl.as_millis()).unwrap_or(i64::MAX)),
                reference: graph_reference(bot, &chat, &parsed, now),
                state: classified.inbox_state(),
            };
            out.push((record, classified));
        }
        Ok(out)
    }

    // ------------------------------------------------------------ subscriptions

    /// The bot's subscriptions as stored, and whether one is live with more than half its life left.
    async fn subscriptions(&self, bot: &InboundBot) -> Option<(Vec<GraphSubscription>, bool)> {
        let subs = match self.store.graph_subscriptions(Some(&bot.app_id)).await {
            // The Agent User's mail has its own subscription (`mail_inbound`).
            Ok(s) => s.into_iter().filter(|s| !super::mail_inbound::is_mail_resource(&s.resource)).collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "cannot read the Graph subscriptions");
                return None;
            }
        };
        let now = self.clock.now_ms();
        let half = i64::try_from(bot.lifetime.as_millis() / 2).unwrap_or(i64::MAX);
        let healthy = subs.iter().any(|s| s.expires_at_ms - now > half);
        Some((subs, healthy))
    }

    /// Make sure the bot has a live subscription: create one when there is none or it lapsed (then catch
    /// up), renew it when half its life is gone. With replicas, one of them does it (the holder of the bot's
    /// subscription lease, who looks again once it holds it): never two subscriptions for one Agent User.
    /// False when another replica is seeing to it right now (or the store cannot say).
    async fn ensure_subscription(&self, bot: &InboundBot) -> bool {
        // The usual case (healthy) costs one read and no lease.
        match self.subscriptions(bot).await {
            Some((_, true)) => return true,
            Some((_, false)) => {}
            None => return false,
        }
        let lease = subscription_lease(bot);
        if !self.lease(&lease).await {
            tracing::debug!(bot = %bot.app_id, "another replica is seeing to the Graph subscription");
            return false;
        }
        let Some((subs, false)) = self.subscriptions(bot).await else {
            self.release(&lease).await;
            return true;
        };
        let now = self.clock.now_ms();
        match subs.iter().find(|s| s.expires_at_ms > now) {
            Some(live) => self.renew(bot, &live.subscription_id).await,
            None => {
                let lapsed = !subs.is_empty();
                for s in &subs {
                    let _ = self.store.delete_graph_subscription(&s.subscription_id).await;
                }
                if self.create(bot).await && lapsed {
                    tracing::info!(bot = %bot.app_id, "the Graph subscription had lapsed: reading what was missed");
                    self.catch_up_or_defer(bot).await;
                }
            }
        }
        self.release(&lease).await;
        true
    }

    /// A catch-up read now, or, while another replica is reading, queued for after it.
    async fn catch_up_or_defer(&self, bot: &InboundBot) {
        match self.catch_up(bot).await {
            Ok(true) => {}
            Ok(false) => self.defer_catch_up(bot).await,
            Err(e) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "the catch-up read failed; it is tried again after the next lifecycle event")
            }
        }
    }

    async fn create(&self, bot: &InboundBot) -> bool {
        let oid = match self.oid(bot).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "cannot resolve the Agent User's object id; no Graph subscription");
                return false;
            }
        };
        let expires = self.clock.now_ms() + i64::try_from(bot.lifetime.as_millis()).unwrap_or(i64::MAX / 2);
        let spec = SubscriptionSpec {
            resource: format!("/users/{oid}/chats/getAllMessages"),
            change_type: "created,updated,deleted",
            notification_url: &self.notification_url,
            lifecycle_url: &self.lifecycle_url,
            expires_ms: expires,
            what: "the Agent User's chats",
        };
        if subscribe(&bot.actor, self.store.as_ref(), &bot.app_id, spec).await.is_none() {
            return false;
        }
        // Chats before the first subscription are not read: the catch-up base starts now.
        let base = ChatCursor { bot_app_id: bot.app_id.clone().into(), chat_id: String::new(), modified_ms: now_ms() };
        let has_base = self.store.graph_cursors(&bot.app_id).await.is_ok_and(|c| c.iter().any(|c| c.chat_id.is_empty()));
        if !has_base {
            let _ = self.store.commit_graph(GraphCommit { cursors: vec![base], ..GraphCommit::default() }).await;
        }
        true
    }

    /// Renew (and so reauthorize) a subscription with a fresh token. The caller holds the bot's
    /// subscription lease.
    async fn renew(&self, bot: &InboundBot, subscription_id: &str) {
        let expires = self.clock.now_ms() + i64::try_from(bot.lifetime.as_millis()).unwrap_or(i64::MAX / 2);
        match bot.actor.graph.renew_subscription(subscription_id, &rfc3339_ms(expires)).await {
            Ok(renewed) => {
                let expires = renewed.get("expirationDateTime").and_then(Value::as_str).and_then(parse_rfc3339_ms).unwrap_or(expires);
                if let Ok(subs) = self.store.graph_subscriptions(Some(&bot.app_id)).await
                    && let Some(mut sub) = subs.into_iter().find(|s| s.subscription_id == subscription_id)
                {
                    sub.expires_at_ms = expires;
                    sub.updated_at_ms = now_ms();
                    if let Err(e) = self.store.put_graph_subscription(sub).await {
                        tracing::warn!(bot = %bot.app_id, error = %e, "a renewed Graph subscription could not be stored");
                    }
                }
                tracing::info!(bot = %bot.app_id, subscription = subscription_id, "Graph subscription renewed");
            }
            Err(e) if e.status() == Some(404) => {
                tracing::warn!(bot = %bot.app_id, "the Graph subscription is gone; creating a new one");
                let _ = self.store.delete_graph_subscription(subscription_id).await;
                if self.create(bot).await {
                    self.catch_up_or_defer(bot).await;
                }
            }
            Err(e) => tracing::warn!(bot = %bot.app_id, error = %e, "cannot renew the Graph subscription; tried again later"),
        }
    }

    // ------------------------------------------------------------ catch-up

    /// Read each chat from its cursor and commit what was missed, the cursor with the entries. With
    /// replicas, one of them reads at a time (the holder of the bot's catch-up lease): `Ok(false)` when
    /// another replica is reading now (nothing was read here).
    async fn catch_up(&self, bot: &InboundBot) -> Result<bool, String> {
        let lease = catch_up_lease(bot);
        if !self.lease(&lease).await {
            return Ok(false);
        }
        let started = now_ms();
        let result = self.catch_up_chats(bot, &lease).await;
        if result.is_ok() {
            let mark = ChatCursor { bot_app_id: bot.app_id.clone().into(), chat_id: CAUGHT_UP.to_owned(), modified_ms: started };
            if let Err(e) = self.store.commit_graph(GraphCommit { cursors: vec![mark], ..GraphCommit::default() }).await {
                tracing::warn!(bot = %bot.app_id, error = %e, "cannot record when the catch-up read began");
            }
        }
        self.release(&lease).await;
        if let Ok((chats, read)) = &result {
            tracing::info!(bot = %bot.app_id, chats, messages = read, "Graph catch-up read done");
        }
        result.map(|_| true)
    }

    /// Whether a complete catch-up read (by any replica) began at or after `at_ms`.
    async fn caught_up_since(&self, bot: &InboundBot, at_ms: i64) -> bool {
        self.store.graph_cursors(&bot.app_id).await.is_ok_and(|c| c.iter().any(|c| c.chat_id == CAUGHT_UP && c.modified_ms >= at_ms))
    }

    /// The catch-up: the chats looked at and the messages read.
    async fn catch_up_chats(&self, bot: &InboundBot, lease: &str) -> Result<(usize, usize), String> {
        let cursors = self.store.graph_cursors(&bot.app_id).await.map_err(|e| e.to_string())?;
        let Some(base) = cursors.iter().find(|c| c.chat_id.is_empty()).map(|c| c.modified_ms) else {
            // No subscription was ever made: nothing can have been missed.
            return Ok((0, 0));
        };
        let chats = bot.actor.graph.list_chats(MAX_CHATS).await.map_err(|e| e.to_string())?;
        let (count, mut read) = (chats.len(), 0);
        for chat in chats {
            // A long read keeps its lease; one lost (this replica stalled past it) ends the read here.
            if !self.lease(lease).await {
                return Err("the catch-up lease was lost to another replica".to_owned());
            }
            let from = cursors.iter().find(|c| c.chat_id == chat.id).map_or(base, |c| c.modified_ms.max(base));
            {
                let kind = if chat.chat_type.eq_ignore_ascii_case("oneOnOne") { "personal" } else { "groupChat" };
                let tenant = chat.tenant_id.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| bot.actor.tokens.tenant().to_owned());
                bot.chats.lock().unwrap_or_else(PoisonError::into_inner).insert(chat.id.clone(), (kind.to_owned(), tenant));
            }
            let messages = bot
                .actor
                .graph
                .chat_messages_modified_after(&chat.id, &rfc3339_ms(from), CATCH_UP_MAX, self.pace)
                .await
                .map_err(|e| e.to_string())?;
            if messages.is_empty() {
                continue;
            }
            read += messages.len();
            let newest = messages
                .iter()
                .filter_map(|m| m.get("lastModifiedDateTime").and_then(Value::as_str).and_then(parse_rfc3339_ms))
                .max()
                .unwrap_or(from);
            let mut records = Vec::new();
            // Oldest first, so the inbox keeps the chat's order.
            for m in messages.iter().rev() {
                records.extend(self.records(bot, &chat.id, m, None).await?);
            }
            let cursor = ChatCursor { bot_app_id: bot.app_id.clone().into(), chat_id: chat.id.clone(), modified_ms: newest };
            self.commit(bot, records, vec![cursor], None).await?;
        }
        Ok((count, read))
    }
}

/// Why a notification is not done yet: another replica holds what it needs (it waits, the others go on),
/// or something failed (tried again later).
#[derive(Debug)]
enum Deferred {
    Busy(&'static str),
    Failed(String),
}

impl From<String> for Deferred {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

/// The lease of a bot's subscription: one replica at a time creates, renews or recreates it.
fn subscription_lease(bot: &InboundBot) -> String {
    format!("graph-subscription:{}", bot.app_id.to_ascii_lowercase())
}

/// The lease of a bot's catch-up read: one replica at a time reads the Agent User's chats.
fn catch_up_lease(bot: &InboundBot) -> String {
    format!("graph-catch-up:{}", bot.app_id.to_ascii_lowercase())
}

/// A Graph failure that will not go away by trying again (the message is gone or not ours to read).
fn permanent(e: &GraphError) -> bool {
    matches!(e.kind(), GraphErrorKind::NotFound | GraphErrorKind::Forbidden)
}

/// Compare two secrets in constant time (for equal lengths; a length difference answers at once).
pub(super) fn same_secret(expected: &str, got: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    expected.len() == got.len() && bool::from(expected.as_bytes().ct_eq(got.as_bytes()))
}

/// A fresh `clientState`: 32 random bytes from the operating system's CSPRNG, hex (64 chars, within Graph's
/// Take (or extend) the Graph lease `name` for this replica ([`LEASE_MS`]); false while another replica holds
/// it, or when the store cannot say (then the work is left for later).
pub(super) async fn take_lease(store: &dyn Store, name: &str) -> bool {
    match store.take_graph_lease(name, now_ms(), LEASE_MS).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(lease = name, error = %e, "cannot take a Graph lease; the work waits");
            false
        }
    }
}

/// Give the Graph lease `name` back (if that fails it runs out by itself).
pub(super) async fn release_lease(store: &dyn Store, name: &str) {
    if let Err(e) = store.release_graph_lease(name).await {
        tracing::warn!(lease = name, error = %e, "cannot release a Graph lease (it runs out by itself)");
    }
}

/// What [`subscribe`] asks Graph for.
pub(super) struct SubscriptionSpec<'a> {
    pub resource: String,
    pub change_type: &'a str,
    pub notification_url: &'a str,
    pub lifecycle_url: &'a str,
    pub expires_ms: i64,
    /// For the log: "the Agent User's chats", "the Agent User's Inbox".
    pub what: &'a str,
}

/// Create a Graph subscription with a fresh secret `clientState` and store it; its id. A subscription that
/// was created but could not be stored is deleted again (a notification for it could not be checked).
/// Failures are logged with the bot and `spec.what`.
pub(super) async fn subscribe(actor: &AgentActor, store: &dyn Store, bot_app_id: &str, spec: SubscriptionSpec<'_>) -> Option<String> {
    let what = spec.what;
    let Some(client_state) = random_secret() else {
        tracing::error!(bot = %bot_app_id, "no secure randomness for a clientState; no Graph subscription to {what}");
        return None;
    };
    let body = json!({
        "changeType": spec.change_type,
        "notificationUrl": spec.notification_url,
        "lifecycleNotificationUrl": spec.lifecycle_url,
        "resource": spec.resource,
        "expirationDateTime": rfc3339_ms(spec.expires_ms),
        "clientState": client_state.expose_secret(),
        "includeResourceData": false,
    });
    let created = match actor.graph.create_subscription(&body).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(bot = %bot_app_id, error = %e, "cannot create the Graph subscription to {what}");
            return None;
        }
    };
    let Some(id) = created.get("id").and_then(Value::as_str) else {
        tracing::warn!(bot = %bot_app_id, "Graph created a subscription to {what} without an id");
        return None;
    };
    let expires = created.get("expirationDateTime").and_then(Value::as_str).and_then(parse_rfc3339_ms).unwrap_or(spec.expires_ms);
    let sub = GraphSubscription {
        subscription_id: id.to_owned(),
        bot_app_id: bot_app_id.to_owned().into(),
        resource: spec.resource,
        client_state,
        expires_at_ms: expires,
        updated_at_ms: now_ms(),
    };
    if let Err(e) = store.put_graph_subscription(sub).await {
        tracing::error!(bot = %bot_app_id, error = %e, "a Graph subscription to {what} was created but could not be stored");
        let _ = actor.graph.delete_subscription(id).await;
        return None;
    }
    tracing::info!(bot = %bot_app_id, subscription = id, "Graph subscription to {what} created");
    Some(id.to_owned())
}

/// 128). `None` when no secure randomness is available (then no subscription is made).
pub(super) fn random_secret() -> Option<SecretString> {
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider().secure_random.fill(&mut bytes).ok()?;
    Some(SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// `chats('19:…')/messages('123')` (or `chats/19:…/messages/123`) → (chat id, message id).
pub(crate) fn parse_resource(resource: &str) -> Option<(String, String)> {
    let r = resource.trim().trim_start_matches('/');
    let (chat, message) = if let Some(rest) = r.strip_prefix("chats('") {
        let (chat, rest) = rest.split_once("')/messages('")?;
        (chat, rest.strip_suffix("')")?)
    } else {
        let rest = r.strip_prefix("chats/")?;
        let (chat, message) = rest.split_once("/messages/")?;
        (chat, message)
    };
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned());
    let (chat, message) = (decode(chat)?, decode(message)?);
    (!chat.is_empty() && !message.is_empty() && !message.contains('/')).then_some((chat, message))
}

/// Why a chat message is not for the host, if it is not: a system message (`from: null`), a bot's or
/// app's (`from.application`), the Agent User's own (`from.user.id` = its object id), or not a plain
/// message.
pub(crate) fn skip_reason(message: &Value, agent_user_oid: &str) -> Option<&'static str> {
    let from = message.get("from").filter(|f| !f.is_null());
    let Some(from) = from else { return Some("system message (no sender)") };
    if from.get("application").is_some_and(|a| !a.is_null()) {
        return Some("sent by a bot or app");
    }
    let Some(user) = from.get("user").and_then(|u| u.get("id")).and_then(Value::as_str).filter(|s| !s.is_empty()) else {
        return Some("no user sender");
    };
    if user.trim().eq_ignore_ascii_case(agent_user_oid.trim()) {
        return Some("the Agent User's own message");
    }
    match message.get("messageType").and_then(Value::as_str) {
        None | Some("message") => None,
        Some(_) => Some("not a chat message (system event)"),
    }
}

/// The events a message makes, with their dedupe keys: a new message (`message`, keyed by its id), an
/// edit (`messageUpdate`, keyed by the id and the edit time), a deletion (`messageDelete`). A catch-up read
/// (`event` = `None`) makes the message and, if edited, its latest edit; a deleted one only the deletion.
fn changes(message: &Value, event: Option<&str>) -> Vec<(&'static str, String)> {
    let id = message.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let deleted = message.get("deletedDateTime").is_some_and(|d| !d.is_null());
    let edited = message.get("lastEditedDateTime").and_then(Value::as_str).map(str::to_owned);
    let edit_key = |at: Option<&str>| {
        let at = at.or_else(|| message.get("lastModifiedDateTime").and_then(Value::as_str)).unwrap_or_default();
        format!("{id}@edit:{at}")
    };
    if deleted || event == Some("deleted") {
        return vec![("messageDelete", format!("{id}@deleted"))];
    }
    let edit = edit_key(edited.as_deref());
    match event {
        Some("updated") => vec![("messageUpdate", edit)],
        Some(_) => vec![("message", id)],
        None if edited.is_some() => vec![("message", id), ("messageUpdate", edit)],
        None => vec![("message", id)],
    }
}

/// The chat a message is in, as the conversion needs it.
pub(crate) struct ChatInfo<'a> {
    pub id: &'a str,
    /// `personal` (a 1:1 chat) or `groupChat` (group and meeting chats).
    pub conversation_type: &'a str,
    pub tenant: &'a str,
    /// The Agent User's object id (the recipient).
    pub agent_user: &'a str,
}

/// A Graph chatMessage as the Bot-Framework-style activity the bridge understands: `channelId` `graph`,
/// the text (HTML turned to plain text) with `textFormat`, the sender's object id, the chat as the
/// conversation, its mentions as mention entities (matched on object ids).
pub(crate) fn to_activity(message: &Value, chat: &ChatInfo<'_>, kind: &str, key: &str) -> Value {
    let str_at = |v: &Value, path: &[&str]| {
        let mut cur = v;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_str().map(str::to_owned)
    };
    let sender = str_at(message, &["from", "user", "id"]).unwrap_or_default();
    let name = str_at(message, &["from", "user", "displayName"]);
    let content = str_at(message, &["body", "content"]).unwrap_or_default();
    let html = str_at(message, &["body", "contentType"]).is_none_or(|t| t.eq_ignore_ascii_case("html"));
    // Images pasted in the chat: the message's hosted contents, named in the body's `<img src>`.
    let images = if html { hosted_content_ids(&content) } else { Vec::new() };
    let text = if html { html_to_text(&content) } else { content };
    let mentions: Vec<Value> = message
        .get("mentions")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    let id = str_at(m, &["mentioned", "user", "id"])?;
                    let shown = str_at(m, &["mentionText"]).unwrap_or_default();
                    let name = str_at(m, &["mentioned", "user", "displayName"]).unwrap_or_else(|| shown.clone());
                    Some(json!({"type": "mention", "text": format!("<at>{}</at>", shown), "mentioned": {"id": id, "name": name}}))
                })
                .collect()
        })
        .unwrap_or_default();
    let message_id = str_at(message, &["id"]).unwrap_or_default();
    let mut activity = json!({
        "type": kind,
        "id": key,
        "channelId": GRAPH_CHANNEL,
        "serviceUrl": "https://graph.microsoft.com",
        "timestamp": str_at(message, &["lastModifiedDateTime"]).or_else(|| str_at(message, &["createdDateTime"])),
        "text": text,
        "textFormat": "plain",
        "from": {"id": sender, "aadObjectId": sender, "name": name},
        "recipient": {"id": chat.agent_user, "aadObjectId": chat.agent_user},
        "conversation": {"id": chat.id, "conversationType": chat.conversation_type, "tenantId": chat.tenant},
        "channelData": {
            "tenant": {"id": chat.tenant},
            "graph": {"chatId": chat.id, "messageId": message_id},
        },
        "entities": mentions,
    });
    // Files shared in the chat: SharePoint links (`reference`), read through Graph as the Agent User.
    let mut files: Vec<Value> = message
        .get("attachments")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|a| a.get("contentType").and_then(Value::as_str) == Some("reference"))
                .filter_map(|a| {
                    let url = str_at(a, &["contentUrl"])?;
                    Some(json!({"contentType": "reference", "contentUrl": url, "name": str_at(a, &["name"])}))
                })
                .take(crate::teams::files::MAX_FILES)
                .collect()
        })
        .unwrap_or_default();
    let room = crate::teams::files::MAX_FILES.saturating_sub(files.len());
    files.extend(
        images
            .into_iter()
            .take(room)
            .map(|id| json!({"contentType": crate::teams::files::HOSTED_CONTENT, "content": {"hostedContentId": id}})),
    );
    if !files.is_empty() {
        activity["attachments"] = Value::Array(files);
    }
    if kind != "message" {
        activity["replyToId"] = json!(message_id);
    }
    if let Some(reply_to) = str_at(message, &["replyToId"]) {
        activity["replyToId"] = json!(reply_to);
    }
    activity
}

/// The hosted-content ids of a Graph message body's inline images (`<img src="…/hostedContents/{id}/$value">`),
/// in document order, each once.
pub(crate) fn hosted_content_ids(html: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in html5gum::Tokenizer::new(html).flatten() {
        let html5gum::Token::StartTag(tag) = token else { continue };
        if tag.name.as_slice() != b"img" {
            continue;
        }
        let Some(src) = tag.attributes.get(b"src".as_slice()).map(|v| String::from_utf8_lossy(&v.value).into_owned()) else { continue };
        if let Some(id) = hosted_content_id(&src)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

/// The id in a `…/hostedContents/{id}/$value` URL (percent-decoded), if it is one.
pub(crate) fn hosted_content_id(src: &str) -> Option<String> {
    let path = src.split(['?', '#']).next()?;
    let (_, rest) = path.split_once("/hostedContents/")?;
    let id = rest.strip_suffix("/$value").or_else(|| rest.strip_suffix("/%24value"))?;
    let id = percent_encoding::percent_decode_str(id).decode_utf8().ok()?;
    (!id.is_empty() && id.len() <= 1000 && !id.contains('/')).then(|| id.into_owned())
}

/// The reference of a Graph chat: it lives in Graph (`channel_id` `graph`), so answers go out through
/// Graph as the Agent User.
fn graph_reference(bot: &InboundBot, chat: &ChatInfo<'_>, activity: &Activity, now: i64) -> ConversationRef {
    ConversationRef {
        bot_app_id: bot.app_id.clone().into(),
        conversation_id: chat.id.to_owned().into(),
        tenant_id: chat.tenant.to_owned().into(),
        service_url: bot.actor.graph.endpoint().to_string(),
        channel_id: GRAPH_CHANNEL.to_owned(),
        conversation_type: Some(chat.conversation_type.to_owned()),
        user_id: activity.from.as_ref().map(|f| f.id.clone()).filter(|s| !s.is_empty()),
        user_aad_object_id: activity.from.as_ref().and_then(|f| f.aad_object_id.as_deref()).map(AadObjectId::new),
        bot_id: Some(chat.agent_user.to_owned()),
        usable: true,
        updated_at_ms: now,
        agentic: None,
        authenticated: true,
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds (`2026-12-05T08:00:00.000Z`).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok().and_then(|t| t.format(FORMAT).ok()).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)` → milliseconds since the epoch (fraction truncated to ms).
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time_part) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da): (i32, u8, u8) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let (hms, frac) = time_part.split_once('.').unwrap_or((time_part, ""));
    let mut t = hms.split(':');
    let (h, mi, se): (u8, u8, u8) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ms: u16 = format!("{frac:0<3}")[..3].parse().ok()?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).ok()?, da).ok()?;
    let time = time::Time::from_hms_milli(h, mi, se, ms).ok()?;
    let at = time::PrimitiveDateTime::new(date, time).assume_utc();
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "aaaaaaaa-0000-4000-8000-0000000000a0";
    const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";

    fn msg(from: Value) -> Value {
        json!({
            "id": "1700000000001",
            "messageType": "message",
            "chatId": "19:abc@unq.gbl.spaces",
            "createdDateTime": "2026-12-05T08:00:00.1234567Z",
            "lastModifiedDateTime": "2026-12-05T08:00:00.1234567Z",
            "lastEditedDateTime": null,
            "deletedDateTime": null,
            "from": from,
            "body": {"contentType": "html", "content": "<p>Hi <at id=\"0\">Agent</at> &amp; co</p>"},
            "mentions": [{"id": 0, "mentionText": "Agent", "mentioned": {"user": {"id": ME, "displayName": "Agent"}}}],
        })
    }

    fn user(id: &str, name: &str) -> Value {
        json!({"user": {"id": id, "displayName": name, "userIdentityType": "aadUser"}, "application": null, "device": null})
    }

    #[test]
    fn only_other_peoples_messages_reach_the_host() {
        assert_eq!(skip_reason(&msg(user(ALEX, "Alex")), ME), None);
        // The Agent User's own message, matched on its object id (any case), never on a name.
        assert!(skip_reason(&msg(user(&ME.to_ascii_uppercase(), "Alex")), ME).is_some());
        assert_eq!(skip_reason(&msg(user(ALEX, "Agent")), ME), None, "a display name equal to the Agent User's is someone else");
        assert!(skip_reason(&msg(Value::Null), ME).is_some(), "system message");
        let bot = json!({"user": null, "application": {"id": "b", "applicationIdentityType": "bot"}});
        assert!(skip_reason(&msg(bot), ME).is_some(), "a bot's message");
        let mut system = msg(user(ALEX, "Alex"));
        system["messageType"] = json!("systemEventMessage");
        assert!(skip_reason(&system, ME).is_some());
    }

    #[test]
    fn a_chat_message_becomes_an_activity_the_bridge_understands() {
        let m = msg(user(ALEX, "Alex"));
        let chat = ChatInfo { id: "19:abc@unq.gbl.spaces", conversation_type: "groupChat", tenant: "t1", agent_user: ME };
        let v = to_activity(&m, &chat, "message", "1700000000001");
        let a: Activity = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(a.channel_id.as_deref(), Some(GRAPH_CHANNEL));
        assert_eq!(a.text.as_deref(), Some("Hi Agent & co"), "HTML to text: {v}");
        assert_eq!(a.from.as_ref().unwrap().aad_object_id.as_deref(), Some(ALEX));
        assert_eq!(a.conversation_id(), Some("19:abc@unq.gbl.spaces"));
        assert_eq!(a.tenant_id().unwrap(), "t1");
        // Mentioned on the Agent User's object id: the group policy (mention-only) lets it through.
        let policy = crate::config::policy::BotPolicy::default();
        assert!(matches!(crate::bridge::policy::evaluate(&policy, "bot-app", &a), crate::bridge::policy::Verdict::Deliver));
        let mut unmentioned = m.clone();
        unmentioned["mentions"] = json!([{"id": 0, "mentionText": "Agent", "mentioned": {"user": {"id": ALEX}}}]);
        let a: Activity = serde_json::from_value(to_activity(&unmentioned, &chat, "message", "k")).unwrap();
        assert!(!matches!(crate::bridge::policy::evaluate(&policy, "bot-app", &a), crate::bridge::policy::Verdict::Deliver));
    }

    /// Graph `reference` attachments (files shared in the chat) become file items fetched through Graph;
    /// other attachments (cards, hosted content) do not.
    #[test]
    fn files_shared_in_a_graph_chat_are_references() {
        let mut m = msg(user(ALEX, "Alex"));
        m["attachments"] = json!([
            {"id": "a1", "contentType": "reference", "contentUrl": "https://contoso.sharepoint.com/sites/t/Shared Documents/plan.docx", "name": "plan.docx"},
            {"id": "c1", "contentType": "application/vnd.microsoft.card.adaptive", "content": "{}"},
        ]);
        let chat = ChatInfo { id: "19:abc@unq.gbl.spaces", conversation_type: "groupChat", tenant: "t1", agent_user: ME };
        let a: Activity = serde_json::from_value(to_activity(&m, &chat, "message", "k")).unwrap();
        let files = crate::teams::files::attached_files(&a);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].source, crate::teams::files::FileSource::Reference);
        assert_eq!(files[0].name.as_deref(), Some("plan.docx"));
        assert!(files[0].url.as_deref().unwrap().starts_with("https://contoso.sharepoint.com/"));
    }

    /// An image pasted in a Graph chat is the message's hosted content, named in the body's `<img src>`.
    #[test]
    fn images_pasted_in_a_graph_chat_are_hosted_contents() {
        let mut m = msg(user(ALEX, "Alex"));
        let src = |id: &str| format!("https://graph.microsoft.com/v1.0/chats/19:abc@unq.gbl.spaces/messages/1/hostedContents/{id}/$value");
        m["body"]["content"] = json!(format!(
            "<p>look</p><img src=\"{}\" width=\"10\"><img src=\"{}\"><img src=\"https://example.test/x.png\"><img src=\"{}\">",
            src("aWQ9eF8wLWE%3D"),
            src("aWQ9eF8wLWI="),
            src("aWQ9eF8wLWI=")
        ));
        let chat = ChatInfo { id: "19:abc@unq.gbl.spaces", conversation_type: "groupChat", tenant: "t1", agent_user: ME };
        let a: Activity = serde_json::from_value(to_activity(&m, &chat, "message", "k")).unwrap();
        let files = crate::teams::files::attached_files(&a);
        let locators: Vec<_> = files.iter().map(|f| (f.source, f.locator.clone())).collect();
        use crate::teams::files::{FileSource, Locator};
        assert_eq!(
            locators,
            [
                (FileSource::HostedImage, Some(Locator::Hosted("aWQ9eF8wLWE=".into()))),
                (FileSource::HostedImage, Some(Locator::Hosted("aWQ9eF8wLWI=".into()))),
            ],
            "decoded, each once, other pictures left out"
        );
        assert_eq!(hosted_content_id("https://graph.microsoft.com/v1.0/chats/c/messages/1/hostedContents/a%2Fb/$value"), None);
        assert_eq!(hosted_content_id("https://graph.microsoft.com/v1.0/chats/c/messages/1/hostedContents//$value"), None);
    }

    #[test]
    fn edits_and_deletions_are_typed_events_with_their_own_keys() {
        let mut m = msg(user(ALEX, "Alex"));
        assert_eq!(changes(&m, Some("created")), vec![("message", "1700000000001".to_owned())]);
        m["lastEditedDateTime"] = json!("2026-12-05T08:01:00Z");
        assert_eq!(changes(&m, Some("updated")), vec![("messageUpdate", "1700000000001@edit:2026-12-05T08:01:00Z".to_owned())]);
        assert_eq!(changes(&m, None).len(), 2, "a catch-up read: the message and its edit");
        m["deletedDateTime"] = json!("2026-12-05T08:02:00Z");
        assert_eq!(changes(&m, None), vec![("messageDelete", "1700000000001@deleted".to_owned())]);
    }

    #[test]
    fn resources_and_times_parse() {
        assert_eq!(
            parse_resource("chats('19:abc@unq.gbl.spaces')/messages('1700000000001')"),
            Some(("19:abc@unq.gbl.spaces".to_owned(), "1700000000001".to_owned()))
        );
        assert_eq!(parse_resource("/chats/19%3Aabc/messages/17"), Some(("19:abc".to_owned(), "17".to_owned())));
        assert_eq!(parse_resource("users('x')/messages('1')"), None);
        assert_eq!(parse_resource("chats('a')/messages('')"), None);
        let ms = parse_rfc3339_ms("2026-12-05T08:00:00.1234567Z").unwrap();
        assert_eq!(rfc3339_ms(ms), "2026-12-05T08:00:00.123Z");
        assert_eq!(parse_rfc3339_ms("2026-12-05T08:00:00Z").unwrap() + 123, ms);
        assert_eq!(parse_rfc3339_ms("2026-12-05 08:00:00"), None);
    }

    #[test]
    fn secrets_compare_in_constant_time_and_are_random() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        let (a, b) = (random_secret().unwrap(), random_secret().unwrap());
        assert_eq!(a.expose_secret().len(), 64);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
