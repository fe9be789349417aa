//! The outbound worker: delivers queued side effects from the durable outbox to the Connector.
//!
//! Every side effect is written to the store first, with its audit event ([`Store::enqueue_outbound`]);
//! this worker then delivers it. Per conversation only the oldest open entry is worked on, so sends to
//! one conversation keep their order. Teams' rate limits are applied before each request. A create is
//! retried only when it certainly did not land (429, or the Connector was unreachable); after an
//! ambiguous failure it is recorded as `uncertain` and never re-posted. Updates and deletes are
//! idempotent and retried. Entries that run out of attempts are dead-lettered. On start, entries a dead
//! process left in flight are recovered the same way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::{Notify, Semaphore};

use super::acting::{Acting, AgenticChains, acting};
use super::streaming::{CANCELLED, GONE, PostStream, Posted, Progress, Stopped, StreamLink, post_sends};
use super::throttle::Throttle;
use super::{ConnectorClient, ConnectorError, Endpoint};
use crate::ids::{AadObjectId, AppId, Cloud, ConversationId};
use crate::metrics::{Metrics, OutboundOutcome};
use serde_json::Value;

use crate::teams::{StreamConfig, StreamSend};

use crate::store::{
    AuditEvent, ConversationRef, ErrorClass, Failed, Finish, NewOutbound, OutboundOp, OutboxItem, Store, StoreError, now_ms,
};

/// Why no bot token could be had. The message never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFailure {
    pub message: String,
    /// Worth trying again later (network, 5xx, throttling) rather than a configuration error.
    pub retryable: bool,
}

/// Bot tokens for the Connector, by bot app id.
#[async_trait]
pub trait BotTokens: Send + Sync + 'static {
    async fn bot_token(&self, bot_app_id: &str) -> Result<SecretString, TokenFailure>;

    /// The Connector refused the bot's token (401): forget it so the next call fetches a new one.
    fn invalidate(&self, bot_app_id: &str);
}

/// How hard the worker tries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before an entry is dead-lettered.
    pub max_attempts: i64,
    /// First backoff; doubled per attempt, with full jitter.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Entries older than this are dead-lettered instead of retried.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
        }
    }
}

/// The outbound side of the gateway.
pub struct Outbound {
    store: Arc<dyn Store>,
    connector: ConnectorClient,
    tokens: Arc<dyn BotTokens>,
    clouds: HashMap<AppId, Cloud>,
    throttle: Mutex<Throttle>,
    /// Whether the store may hold Teams' windows for every replica ([`Store::reserve_sends`]); cleared the
    /// first time it says it does not (one process: the windows are `throttle`'s).
    shared_limits: std::sync::atomic::AtomicBool,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    wake: Notify,
    in_flight: Mutex<HashSet<(AppId, ConversationId)>>,
    typing: Mutex<crate::teams::TypingGovernor>,
    /// Consecutive token failures per bot, for backoff (token failures do not use up attempts).
    token_failures: Mutex<HashMap<AppId, u32>>,
    /// See [`Outbound::sole_worker`].
    sole_worker: bool,
    last_prune: Mutex<Instant>,
    stopping: std::sync::atomic::AtomicBool,
    permits: Arc<Semaphore>,
    /// Agent 365 bots: their Agent User chain and the Connector scope of its tokens, by app id.
    agentic: AgenticChains,
    /// Streams' tunables (`outbound.stream_*`, and the `--dev` test clock).
    stream_config: StreamConfig,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("bots", &self.clouds.keys().collect::<Vec<_>>()).finish()
    }
}

/// How often the worker looks for claims whose lease ran out (a replica died mid-send).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How often a claim is renewed while its request is under way (three times per lease).
const RENEW_EVERY: Duration = Duration::from_millis(crate::store::OUTBOX_LEASE_MS.unsigned_abs() / 3);

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Outbound {
    /// `bots` maps each configured bot's app id to its cloud.
    pub fn new(
        store: Arc<dyn Store>,
        connector: ConnectorClient,
        tokens: Arc<dyn BotTokens>,
        bots: HashMap<AppId, Cloud>,
        throttle: Throttle,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            connector,
            tokens,
            clouds: bots,
            throttle: Mutex::new(throttle),
            shared_limits: std::sync::atomic::AtomicBool::new(true),
            retry,
            metrics,
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            typing: Mutex::new(crate::teams::TypingGovernor::new()),
            token_failures: Mutex::new(HashMap::new()),
            sole_worker: false,
            last_prune: Mutex::new(Instant::now()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(32)),
            agentic: HashMap::new(),
            stream_config: StreamConfig::default(),
        }
    }

    /// Bots that accept agentic activities: every call in those conversations (sends, streams, member
    /// listings) acts as the Agent User ([`acting`]).
    /// This worker is the only one on its store (SQLite under `serve`'s lock): at start, every claim left
    /// `sending` is a dead process's and is recovered at once, whatever its lease says.
    #[must_use]
    pub fn sole_worker(mut self, sole: bool) -> Self {
        self.sole_worker = sole;
        self
    }

    #[must_use]
    pub fn with_agentic(mut self, agentic: AgenticChains) -> Self {
        self.agentic = agentic;
        self
    }

    /// Streams' tunables: intervals, the native age limit, the test clock.
    #[must_use]
    pub(crate) fn with_stream_config(mut self, config: StreamConfig) -> Self {
        self.stream_config = config;
        self
    }

    /// Who acts in the conversation: the one decision of [`super::acting`].
    async fn acting(&self, bot_app_id: &str, conversation: &str) -> Result<Acting, TokenFailure> {
        acting(self.store.as_ref(), self.tokens.as_ref(), &self.agentic, bot_app_id, conversation).await
    }

    /// How the audit log names whoever acts in the conversation (`bot:…` or `agent_user:…`).
    pub fn acting_identity(&self, reference: &ConversationRef) -> crate::store::Identity {
        super::acting::acting_identity(&self.agentic, reference)
    }

    /// How a stream in the conversation is sent: streaming in 1:1 chats; a placeholder updated in place
    /// elsewhere; buffered in agentic conversations (one message at the end, no `streaminfo`, no edits)
    /// until streaming and editing as the Agent User are proven.
    pub fn stream_mode(&self, reference: &ConversationRef) -> crate::teams::StreamMode {
        if super::acting::agentic_recipient(&self.agentic, Some(reference)).is_some() {
            return crate::teams::StreamMode::Buffered;
        }
        crate::teams::StreamMode::for_conversation_type(reference.conversation_type.as_deref())
    }

    /// Queue a side effect (audit event + outbox entry, durably) and wake the worker.
    pub async fn enqueue(&self, item: NewOutbound) -> Result<i64, StoreError> {
        let id = self.store.enqueue_outbound(item).await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Stop starting attempts and wait (up to `grace`) for those under way to record their outcome.
    pub async fn drain(&self, grace: Duration) {
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        let deadline = Instant::now() + grace;
        while !self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wake the worker (entries were queued by another process).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Post one activity of a live stream now, outside the outbox: its updates only make sense while the
    /// reply is being written (a stream interrupted by a restart is not resumed). Waits for the throttle
    /// like queued sends do (an edit is a send in Teams' windows too), then posts through `link` (paced,
    /// 429 retried, Stop and the time limit recognised) — or, for an edit, puts it in place; acts as
    /// whoever acts in the conversation. The caller audits.
    pub(crate) async fn post_live(&self, reference: &ConversationRef, link: &mut StreamLink, send: &StreamSend) -> Posted {
        let bot = &reference.bot_app_id;
        let Some(cloud) = self.clouds.get(bot).copied() else {
            return Posted::Failed(ConnectorError::BadResponse("the bot is no longer configured".into()));
        };
        while let Err(wait) = self.reserve(bot, &reference.tenant_id, &reference.conversation_id, 1, None).await {
            tokio::time::sleep(wait).await;
        }
        let who = match self.acting(bot, &reference.conversation_id).await {
            Ok(a) => a,
            Err(f) => return Posted::Failed(ConnectorError::Unreachable(format!("no token: {}", f.message))),
        };
        let ep = Endpoint { cloud, service_url: &reference.service_url };
        let posted = post_stream_send(&self.connector, &ep, &who, &reference.conversation_id, link, send).await;
        if let Posted::Failed(ConnectorError::Rejected { status: 401, .. }) = posted {
            self.tokens.invalidate(bot);
        }
        posted
    }

    /// The tunables of streams (live and queued).
    pub(crate) fn stream_config(&self) -> &StreamConfig {
        &self.stream_config
    }

    /// Every member of a conversation, paged through the Connector as whoever acts there (a read: no
    /// outbox, no audit).
    pub async fn list_members(&self, reference: &ConversationRef) -> Result<Vec<Value>, String> {
        let bot = &reference.bot_app_id;
        let cloud = *self.clouds.get(bot).ok_or("the bot is no longer configured")?;
        let who = self.acting(bot, &reference.conversation_id).await.map_err(|f| format!("no token: {}", f.message))?;
        list_members(&self.connector, &Endpoint { cloud, service_url: &reference.service_url }, &who, &reference.conversation_id)
            .await
            .map_err(|e| e.to_string())
    }

    /// One member of a conversation (by `29:` id or AAD object id), through the Connector as whoever acts
    /// there: `None` when they are not a member (a read: no outbox, no audit). In a channel thread the
    /// channel is asked.
    pub async fn member(&self, reference: &ConversationRef, member: &str) -> Result<Option<Value>, String> {
        let bot = &reference.bot_app_id;
        let cloud = *self.clouds.get(bot).ok_or("the bot is no longer configured")?;
        let who = self.acting(bot, &reference.conversation_id).await.map_err(|f| format!("no token: {}", f.message))?;
        let ep = Endpoint { cloud, service_url: &reference.service_url };
        let conversation = crate::teams::thread_root(&reference.conversation_id);
        self.connector.conversation_member(&ep, &who.token, conversation, member).await.map_err(|e| e.to_string())
    }

    /// The Microsoft 365 group id of the team `team` (its `19:…` thread id) that the conversation of
    /// `reference` is in, from the Connector's team details as whoever acts there; `None` when the
    /// Connector knows no such team or names no group id (a read: no outbox, no audit).
    pub async fn team_group_id(&self, reference: &ConversationRef, team: &str) -> Result<Option<String>, String> {
        let bot = &reference.bot_app_id;
        let cloud = *self.clouds.get(bot).ok_or("the bot is no longer configured")?;
        let who = self.acting(bot, &reference.conversation_id).await.map_err(|f| format!("no token: {}", f.message))?;
        let ep = Endpoint { cloud, service_url: &reference.service_url };
        let details = self.connector.team_details(&ep, &who.token, team).await.map_err(|e| e.to_string())?;
        Ok(details
            .as_ref()
            .and_then(|d| d.get("aadGroupId"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned))
    }

    /// An attachment on the conversation's Connector (an inline image), fetched with the token of whoever
    /// acts there, at most `limit` bytes (a read: no outbox, no audit).
    pub async fn fetch_attachment(
        &self,
        reference: &ConversationRef,
        url: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), ConnectorError> {
        let bot = &reference.bot_app_id;
        let cloud = *self.clouds.get(bot).ok_or_else(|| ConnectorError::BadResponse("the bot is no longer configured".into()))?;
        let who = self
            .acting(bot, &reference.conversation_id)
            .await
            .map_err(|f| ConnectorError::Unreachable(format!("no token: {}", f.message)))?;
        self.connector.get_attachment(cloud, url, &who.token, limit).await
    }

    /// The store this worker delivers from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Take over the entries a dead replica (or this process before a restart) left in flight: those whose
    /// lease ran out.
    async fn sweep(&self, at_start: bool) {
        // The sole worker's claims at start are all a dead process's: recovered whatever their lease says.
        let now = if at_start && self.sole_worker { i64::MAX } else { now_ms() };
        match self.store.recover_outbound(now).await {
            Ok((0, 0)) => {}
            Ok((requeued, uncertain)) => {
                // The message predates leases (alert rules match it): "a restart" is now also a replica that died.
                tracing::warn!(requeued, uncertain, "outbox entries interrupted by a restart were recovered");
            }
            Err(e) => tracing::error!(error = %e, "outbox recovery failed"),
        }
    }

    /// Recover what a dead process left in flight, then deliver until the task is aborted, taking over
    /// expired claims every [`SWEEP_EVERY`].
    pub fn spawn(self: Arc<Self>, poll: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            self.sweep(true).await;
            let mut swept = Instant::now();
            loop {
                if swept.elapsed() >= SWEEP_EVERY {
                    self.sweep(false).await;
                    swept = Instant::now();
                }
                let next = self.run_once().await;
                let wait = next.unwrap_or(poll).min(poll);
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    /// Reserve `slots` sends to the conversation within Teams' limits: in the windows every replica shares when
    /// the store holds them (Postgres), else in this process's limiter. `Err` says how long until they fit.
    /// Should the database not answer, this process's windows still apply.
    async fn reserve(&self, bot: &str, tenant: &str, conversation: &str, slots: u32, token: Option<String>) -> Result<(), Duration> {
        use std::sync::atomic::Ordering;
        if self.shared_limits.load(Ordering::Relaxed) && !self.throttle.lock().unwrap_or_else(PoisonError::into_inner).is_disabled() {
            let request = super::throttle::shared_slots(bot, tenant, conversation, slots, token);
            match self.store.reserve_sends(&request).await {
                Ok(Some(verdict)) => return verdict,
                Ok(None) => self.shared_limits.store(false, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "could not reserve a send in the shared rate limits; limiting in this process"),
            }
        }
        let mut throttle = self.throttle.lock().unwrap_or_else(PoisonError::into_inner);
        (0..slots).try_for_each(|_| throttle.try_acquire(bot, tenant, conversation, Instant::now()))
    }

    /// Start every due entry whose conversation is free and within its limits. Returns how soon to look
    /// again when something is waiting for the throttle.
    pub async fn run_once(self: &Arc<Self>) -> Option<Duration> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        {
            let mut last = self.last_prune.lock().unwrap_or_else(PoisonError::into_inner);
            if last.elapsed() > Duration::from_secs(60) {
                self.throttle.lock().unwrap_or_else(PoisonError::into_inner).prune(Instant::now());
                *last = Instant::now();
            }
        }
        let items = match self.store.due_outbound(now_ms(), 256).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return Some(Duration::from_secs(1));
            }
        };
        let mut soonest: Option<Duration> = None;
        for item in items {
            let key = (item.bot_app_id.clone(), item.conversation_id.clone());
            if self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).contains(&key) {
                continue;
            }
            if is_typing(&item.op)
                && !self.typing.lock().unwrap_or_else(PoisonError::into_inner).allow(&item.conversation_id, None, Instant::now())
            {
                // Teams shows an indicator for 3 s; a second one sooner only uses up the rate limit.
                self.metrics.outbound(OutboundOutcome::Skipped);
                let event = self.event(&item, "skipped", "typing indicator sent less than 3 s ago".into());
                let finish =
                    Finish::Dead { error: Failed::new(ErrorClass::Skipped, "skipped: a typing indicator was sent less than 3 s ago") };
                if let Err(e) = self.store.finish_outbound(item.id, finish, event).await {
                    tracing::error!(error = %e, id = item.id, "could not record a skipped typing indicator");
                }
                continue;
            }
            if item.op.is_create() || matches!(item.op, OutboundOp::Update { .. } | OutboundOp::UpdateTargeted { .. }) {
                // A proactive send is two requests (create the chat, then post): two slots.
                let slots = if matches!(item.op, OutboundOp::CreatePersonal { .. }) { 2 } else { 1 };
                // Replicas racing for the same attempt of an entry share one reservation (one of them sends it).
                let token = format!("outbox:{}:{}", item.id, item.attempts);
                let verdict = self.reserve(&item.bot_app_id, &item.tenant_id, &item.conversation_id, slots, Some(token)).await;
                if let Err(wait) = verdict {
                    self.metrics.outbound(OutboundOutcome::Throttled);
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                    continue;
                }
            }
            self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone());
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else { return None };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.attempt(item).await;
                this.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                drop(permit);
                this.wake.notify_one();
            });
        }
        soonest
    }

    #[tracing::instrument(
        name = "outbound",
        skip_all,
        fields(id = item.id, op = item.op.name(), bot = %item.bot_app_id, tenant = %item.tenant_id, conversation = %item.conversation_id)
    )]
    async fn attempt(&self, item: OutboxItem) {
        // The token comes first: a failure here leaves nothing on the wire, so the entry stays pending
        // (a process killed now never leaves an ambiguous create behind).
        let who = self.acting(&item.bot_app_id, &item.conversation_id).await;
        // In an agentic conversation the Agent User acts: the audit says so.
        let identity = who.as_ref().ok().map(|a| a.identity(&item.bot_app_id));
        let (result, attempts) = match who {
            Err(failure) => {
                *self.token_failures.lock().unwrap_or_else(PoisonError::into_inner).entry(item.bot_app_id.clone()).or_default() += 1;
                (Err(Failure::Token(failure)), item.attempts)
            }
            Ok(who) => {
                self.token_failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&item.bot_app_id);
                match self.store.begin_outbound_attempt(item.id, now_ms()).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::error!(error = %e, id = item.id, "could not record the attempt; not sending");
                        return;
                    }
                }
                (self.deliver_leased(&item, &who).await, item.attempts + 1)
            }
        };
        if let Err(Failure::Connector(ConnectorError::Rejected { status: 401, .. })) = &result {
            self.tokens.invalidate(&item.bot_app_id);
        }
        if let Err(Failure::Connector(e)) = &result
            && e.writes_blocked()
        {
            // Blocked or uninstalled: nothing more goes to this conversation until the bot is added again.
            if let Err(e) = self.store.set_conversation_usable(&item.bot_app_id, &item.conversation_id, false).await {
                tracing::warn!(error = %e, "could not mark the conversation unusable");
            }
        }
        let (finish, outcome, metric) = self.judge(&item, attempts, result);
        let outcome = if matches!(&finish, Finish::Dead { error } if error.class == ErrorClass::Cancelled) { "cancelled" } else { outcome };
        tracing::info!(id = item.id, op = item.op.name(), outcome, "outbound attempt finished");
        self.metrics.outbound(metric);
        let mut event = self.event(&item, outcome, format!("outbox #{} attempt {attempts}", item.id));
        if let Some(identity) = identity {
            event.identity = identity;
        }
        if let Err(e) = self.store.finish_outbound(item.id, finish, event).await {
            tracing::error!(error = %e, id = item.id, "could not record the outcome of an outbound attempt");
        }
    }

    fn event(&self, item: &OutboxItem, outcome: &str, detail: String) -> AuditEvent {
        AuditEvent::new(
            now_ms(),
            item.requested_by.as_str(),
            crate::store::Identity::bot(&item.bot_app_id),
            item.op.name(),
            crate::store::Target::conversation(&item.tenant_id, &item.conversation_id),
            outcome,
        )
        .with_detail(detail)
    }

    /// [`Self::deliver`], renewing the claim's lease while it lasts (a stream, a slow Connector), so that no
    /// other replica takes over an entry this one is still sending.
    async fn deliver_leased(&self, item: &OutboxItem, who: &Acting) -> Result<String, Failure> {
        let deliver = self.deliver(item, who);
        tokio::pin!(deliver);
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
        loop {
            tokio::select! {
                result = &mut deliver => return result,
                _ = renew.tick() => match self.store.renew_outbound_lease(item.id, now_ms()).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(id = item.id, "lost the claim on an outbox entry while sending it (lease expired)"),
                    Err(e) => tracing::warn!(error = %e, id = item.id, "could not renew the claim on an outbox entry"),
                },
            }
        }
    }

    async fn deliver(&self, item: &OutboxItem, who: &Acting) -> Result<String, Failure> {
        let cloud = *self.clouds.get(&item.bot_app_id).ok_or(Failure::Local("the bot is no longer configured".into()))?;
        let ep = Endpoint { cloud, service_url: &item.service_url };
        let c = &self.connector;
        let conv = &item.conversation_id;
        let token = &who.token;
        // The id in the URL (cut and sanitised on the agents channel); the body keeps the full id.
        let path = who.path_conversation_id(conv);
        let addressed = |a: &Value, reply_to: Option<&str>| {
            let mut a = a.clone();
            address(&mut a, who, conv, reply_to);
            a
        };
        let r = match &item.op {
            OutboundOp::Send { activity } => c.send_to_conversation(&ep, token, &path, &addressed(activity, None)).await.map(|r| r.id),
            OutboundOp::Reply { reply_to, activity } => {
                c.reply_to_activity(&ep, token, &path, reply_to, &addressed(activity, Some(reply_to))).await.map(|r| r.id)
            }
            OutboundOp::Update { activity_id, activity } => {
                let mut a = addressed(activity, None);
                a["id"] = Value::String(activity_id.clone());
                c.update_activity(&ep, token, conv, activity_id, &a).await.map(|r| r.id)
            }
            OutboundOp::Targeted { recipient, activity } => {
                let a = crate::teams::targeted::create(addressed(activity, None), recipient);
                c.send_targeted(&ep, token, &path, &a).await.map(|r| r.id)
            }
            OutboundOp::UpdateTargeted { activity_id, activity } => {
                let mut a = crate::teams::targeted::update(addressed(activity, None));
                a["id"] = Value::String(activity_id.clone());
                c.update_targeted(&ep, token, conv, activity_id, &a).await.map(|r| r.id)
            }
            OutboundOp::Delete { activity_id } => c.delete_activity(&ep, token, conv, activity_id).await.map(|()| activity_id.clone()),
            OutboundOp::React { activity_id, reaction, remove } => {
                c.set_reaction(&ep, token, conv, activity_id, reaction, *remove).await.map(|()| activity_id.clone())
            }
            OutboundOp::CreatePersonal { user_id, activity } => {
                let created = c
                    .create_personal_conversation(&ep, token, &format!("28:{}", item.bot_app_id), user_id, &item.tenant_id)
                    .await
                    .map_err(Failure::Connector)?;
                // Remember the new chat so that later sends can name it.
                if let Err(e) = self
                    .store
                    .upsert_conversation_ref(ConversationRef {
                        bot_app_id: item.bot_app_id.clone(),
                        conversation_id: created.id.as_str().into(),
                        tenant_id: item.tenant_id.clone(),
                        service_url: created.service_url.clone().unwrap_or_else(|| item.service_url.clone()),
                        channel_id: "msteams".into(),
                        conversation_type: Some("personal".into()),
                        user_id: Some(user_id.clone()),
                        // An AAD object id (not a `29:` Teams id) finds this chat again for the person.
                        user_aad_object_id: (!user_id.contains(':')).then(|| AadObjectId::new(user_id)),
                        bot_id: Some(format!("28:{}", item.bot_app_id)),
                        usable: true,
                        updated_at_ms: now_ms(),
                        agentic: None,
                        authenticated: true,
                    })
                    .await
                {
                    tracing::warn!(error = %e, "could not store the reference of a new 1:1 chat");
                }
                let a = addressed(activity, None);
                let a = {
                    let mut a = a;
                    a["conversation"] = serde_json::json!({"id": created.id});
                    a
                };
                c.send_to_conversation(&ep, token, &created.id, &a).await.map(|r| format!("{}|{}", created.id, r.id))
            }
            OutboundOp::Stream { chunks, interval_ms, conversation_type } => {
                return self.stream(&ep, who, item, chunks, Duration::from_millis(*interval_ms), conversation_type.as_deref()).await;
            }
        };
        match r {
            Ok(id) => Ok(id),
            // A 2xx whose body we could not read: the request was accepted.
            Err(ConnectorError::BadResponse(_)) => Ok(String::new()),
            Err(e) => Err(Failure::Connector(e)),
        }
    }

    /// Drive a [`Stream`](crate::teams::Stream) over the chunks, posting what it asks for in order through
    /// one [`StreamLink`] ([`post_sends`]: paced, 429 retried, Stop and the time limit recognised, edits
    /// put in place); the result is the id of the message that got the final text.
    async fn stream(
        &self,
        ep: &Endpoint<'_>,
        who: &Acting,
        item: &OutboxItem,
        chunks: &[String],
        interval: Duration,
        conversation_type: Option<&str>,
    ) -> Result<String, Failure> {
        use crate::teams::{Stream, StreamMode};
        let now = || tokio::time::Instant::now().into_std();
        // Agentic conversations are sent buffered until streaming as the Agent User is proven.
        let mode = if who.is_agentic() { StreamMode::Buffered } else { StreamMode::for_conversation_type(conversation_type) };
        let mut stream = Stream::new(mode, self.stream_config.clone(), now());
        let mut poster = QueuedPoster {
            connector: &self.connector,
            ep,
            who,
            conversation: item.conversation_id.as_str(),
            link: StreamLink::new(self.stream_config.request_gap),
        };
        let mut progress = Progress::default();
        let mut chunks = chunks.iter();
        loop {
            let chunk = chunks.next();
            let sends = match chunk {
                Some(chunk) => {
                    tokio::time::sleep(interval).await;
                    let mut sends = stream.append(chunk, now());
                    sends.extend(stream.poll(now()));
                    sends
                }
                None => stream.finish(now()),
            };
            post_sends(&mut stream, sends, &mut progress, &mut poster).await;
            match progress.stopped.take() {
                None => {}
                // The user pressed Stop: nothing more, not even a final.
                Some(Stopped::Cancelled) => return Err(Failure::Cancelled),
                Some(Stopped::Gone) => return Err(Failure::Local(GONE.to_owned())),
                // Part of the reply is already in the chat: never post it again.
                Some(Stopped::Failed(e)) if progress.landed > 0 => {
                    return Err(Failure::Connector(ConnectorError::Ambiguous(format!(
                        "the stream was interrupted after {} posts: {e}",
                        progress.landed
                    ))));
                }
                Some(Stopped::Failed(e)) => return Err(Failure::Connector(e)),
            }
            if chunk.is_none() {
                return Ok(progress.final_id.unwrap_or_default());
            }
        }
    }

    fn backoff(&self, attempts: i64, retry_after: Option<Duration>) -> Duration {
        let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
        let cap = self.retry.base_backoff.saturating_mul(2u32.saturating_pow(exp)).min(self.retry.max_backoff);
        let jittered = cap.mul_f64(fastrand::f64());
        retry_after.map_or(jittered, |r| r.max(jittered))
    }

    fn judge(&self, item: &OutboxItem, attempts: i64, result: Result<String, Failure>) -> (Finish, &'static str, OutboundOutcome) {
        let error = match result {
            Ok(result_id) => return (Finish::Delivered { result_id }, "delivered", OutboundOutcome::Delivered),
            Err(f) => f,
        };
        let retryable = match &error {
            Failure::Token(t) => t.retryable,
            Failure::Local(_) | Failure::Cancelled => false,
            // A refused token: the request was not processed; retry with a fresh token.
            Failure::Connector(ConnectorError::Rejected { status: 401, .. }) => true,
            Failure::Connector(e) if item.op.is_create() => e.create_may_retry(),
            Failure::Connector(e) => e.idempotent_may_retry(),
        };
        let message = Failed::new(error.class(), error.to_string());
        let too_old = now_ms().saturating_sub(item.created_at_ms) > ms(self.retry.max_age);
        // Token failures sent nothing and do not use up attempts; age bounds them.
        let within_budget = matches!(error, Failure::Token(_)) || attempts < self.retry.max_attempts;
        if retryable && within_budget && !too_old {
            let retry_after = match &error {
                Failure::Connector(ConnectorError::Throttled { retry_after }) => *retry_after,
                _ => None,
            };
            // Token failures back off on the bot's run of consecutive failures.
            let n = match &error {
                Failure::Token(_) => {
                    i64::from(*self.token_failures.lock().unwrap_or_else(PoisonError::into_inner).get(&item.bot_app_id).unwrap_or(&1))
                }
                _ => attempts,
            };
            let at_ms = now_ms().saturating_add(ms(self.backoff(n.max(1), retry_after)));
            return (Finish::Retry { at_ms, error: message }, "retry", OutboundOutcome::Retried);
        }
        if let Failure::Connector(ConnectorError::Ambiguous(_)) = &error
            && item.op.is_create()
        {
            return (Finish::Uncertain { error: message }, "uncertain", OutboundOutcome::Uncertain);
        }
        (Finish::Dead { error: message }, "dead", OutboundOutcome::Dead)
    }
}

fn is_typing(op: &OutboundOp) -> bool {
    matches!(op, OutboundOp::Send { activity } if activity["type"] == "typing")
}

/// Fill in what the SDKs' adapters add before posting: whoever acts as `from` (always: the Connector
/// checks it against the token), the conversation, and `replyToId` for replies.
fn address(activity: &mut Value, who: &Acting, conversation: &str, reply_to: Option<&str>) {
    let Some(obj) = activity.as_object_mut() else { return };
    obj.insert("from".into(), who.from.clone());
    obj.entry("conversation").or_insert_with(|| serde_json::json!({"id": conversation}));
    if let Some(r) = reply_to {
        obj.entry("replyToId").or_insert_with(|| Value::String(r.to_owned()));
    }
}

/// Post one stream activity as `who`: a `POST` to the conversation, or for an edit a `PUT` of the message
/// it names (with its `id`), through `link`.
async fn post_stream_send(
    connector: &ConnectorClient,
    ep: &Endpoint<'_>,
    who: &Acting,
    conversation: &str,
    link: &mut StreamLink,
    send: &StreamSend,
) -> Posted {
    let mut a = send.activity.clone();
    address(&mut a, who, conversation, None);
    match (send.kind.is_edit(), send.target.as_deref()) {
        (true, Some(target)) => {
            a["id"] = Value::String(target.to_owned());
            link.post(send.kind, || connector.update_activity(ep, &who.token, conversation, target, &a)).await
        }
        (true, None) => Posted::Failed(ConnectorError::BadResponse("an edit without the message to edit".into())),
        (false, _) => {
            // The id in the URL (cut and sanitised on the agents channel); the body keeps the full id.
            let path = who.path_conversation_id(conversation);
            link.post(send.kind, || connector.send_to_conversation(ep, &who.token, &path, &a)).await
        }
    }
}

/// A queued stream's poster: straight to the Connector (the entry holds its slot in Teams' windows).
struct QueuedPoster<'a> {
    connector: &'a ConnectorClient,
    ep: &'a Endpoint<'a>,
    who: &'a Acting,
    conversation: &'a str,
    link: StreamLink,
}

impl PostStream for QueuedPoster<'_> {
    async fn post(&mut self, send: &StreamSend) -> Posted {
        post_stream_send(self.connector, self.ep, self.who, self.conversation, &mut self.link, send).await
    }
}

impl Failure {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Token(_) => ErrorClass::Token,
            Self::Local(_) => ErrorClass::Local,
            Self::Cancelled => ErrorClass::Cancelled,
            Self::Connector(e) => e.class(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no bot token: {}", .0.message)]
    Token(TokenFailure),
    #[error("{0}")]
    Local(String),
    /// Teams refused a stream post with `ContentStreamNotAllowed` (Stop pressed).
    #[error("{CANCELLED}")]
    Cancelled,
    #[error(transparent)]
    Connector(ConnectorError),
}

/// Every member of a conversation, paged through the Connector as `who`.
pub(crate) async fn list_members(
    connector: &ConnectorClient,
    ep: &Endpoint<'_>,
    who: &Acting,
    conversation: &str,
) -> Result<Vec<Value>, ConnectorError> {
    let mut members = Vec::new();
    let mut continuation: Option<String> = None;
    for _ in 0..1000 {
        let page = connector.members_page(ep, &who.token, conversation, 100, continuation.as_deref()).await?;
        members.extend(page.members);
        match page.continuation_token.filter(|c| !c.is_empty()) {
            Some(c) => continuation = Some(c),
            None => return Ok(members),
        }
    }
    Err(ConnectorError::BadResponse("the Connector kept returning continuation tokens after 1000 pages".into()))
}
