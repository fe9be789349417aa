//! Durable state behind one [`Store`] trait: conversation references, the inbox and dedupe keys.
//!
//! SQLite ([`sqlite::SqliteStore`]) is the embedded default; Postgres ([`postgres::PostgresStore`]) serves
//! several replicas from one database (`store.url`). Both run the same test body ([`suite`]). [`open`] opens
//! whichever the configuration names.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{AadObjectId, AppId, ConversationId, TenantId};

pub mod audit;
pub mod claims;
pub mod offers;
pub mod postgres;
pub mod recent;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

pub use audit::{AuditEvent, AuditHead, AuditKey, AuditRecord, Broken, Identity, Target, Verified};
pub use claims::{Claim, ClaimHolder, ClaimOutcome, ClaimTarget};
pub use offers::{FileOffer, OfferState};
pub use postgres::{PostgresOptions, PostgresStore};
pub use recent::RecentCommits;
pub use sqlite::SqliteStore;

/// Which backend a configuration names, in words safe to print (a Postgres URL without its password).
pub fn describe(cfg: &crate::config::Config) -> String {
    match &cfg.store.url {
        Some(url) => format!("postgres {}", url.redacted()),
        None => format!("sqlite {}", cfg.sqlite_path().display()),
    }
}

/// Open the configured store: Postgres when `store.url` is set (its password loaded from `store.password`),
/// else the SQLite file under `data_dir`. Both migrate their schema first and refuse a newer one. `max_batch`
/// caps a group commit (1 for one-shot commands).
pub async fn open(
    cfg: &crate::config::Config,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    max_batch: usize,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    use secrecy::ExposeSecret as _;
    let key = AuditKey::load(cfg.store.audit_key.as_ref()).await?;
    match &cfg.store.url {
        Some(url) => {
            let password = match &cfg.store.password {
                Some(r) => Some(r.load().await.map_err(|e| anyhow::anyhow!("store.password: {e}"))?),
                None => None,
            };
            let connection = url.connection(password.as_ref().map(|p| p.expose_secret()))?;
            let options = PostgresOptions { pool_size: cfg.store.pool_size, max_batch, ..PostgresOptions::default() };
            Ok(std::sync::Arc::new(PostgresStore::connect(connection, options, metrics, key).await?))
        }
        None => {
            let (db, sync) = (cfg.sqlite_path(), cfg.store.synchronous);
            let store = tokio::task::spawn_blocking(move || SqliteStore::open_keyed(&db, sync, max_batch, metrics, key)).await??;
            Ok(std::sync::Arc::new(store))
        }
    }
}

/// How long a claim on an outbox entry ([`Store::begin_outbound_attempt`]) lasts unless its owner renews it
/// ([`Store::renew_outbound_lease`]). A claim whose lease ran out belongs to a replica that died mid-send:
/// [`Store::recover_outbound`] takes it over.
pub const OUTBOX_LEASE_MS: i64 = 60_000;

/// How long a replica's claim on a Graph notification ([`Store::claim_graph_notifications`]) lasts: a
/// claim older than this belongs to a replica that died before finishing it, and another one takes it over.
pub const GRAPH_CLAIM_MS: i64 = 120_000;

/// A random name for this store handle (one per process in practice): the owner recorded on the outbox
/// entries it claims, so that replicas sharing one database tell their claims apart.
pub fn new_replica_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Milliseconds since the Unix epoch: the time stamps the store keeps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What an accepted activity leaves behind: its inbox entry, its dedupe key and the conversation
/// reference it refreshes, written in one transaction.
/// The saved state of one `agentgate agent-id provision` run: `state` is the run's own JSON (the step
/// reached, the ids of the objects it created), read and written only by `agent_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningRecord {
    pub key: String,
    pub state: String,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub bot_app_id: AppId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub activity_id: String,
    pub activity_type: String,
    /// How the request was authenticated.
    pub auth: crate::ids::AuthKind,
    /// The activity exactly as received.
    pub body: String,
    pub received_at_ms: i64,
    pub dedupe_expires_at_ms: i64,
    pub reference: ConversationRef,
    /// Whether a host is to see it.
    pub state: InboxState,
}

/// Where an inbox entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxState {
    /// Waiting for a host to receive and acknowledge it.
    Pending,
    /// A host acknowledged it.
    Acked,
    /// The bot's policy keeps it from the agent (kept for the record, never delivered).
    Filtered,
    /// The gateway handled it itself (an approval verdict, an edit or deletion applied to a pending entry);
    /// never delivered.
    Consumed,
    /// The sender deleted the message before any host acknowledged it: never delivered, its text removed.
    Withdrawn,
}

impl InboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Acked => "acked",
            Self::Filtered => "filtered",
            Self::Consumed => "consumed",
            Self::Withdrawn => "withdrawn",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Acked, Self::Filtered, Self::Consumed, Self::Withdrawn].into_iter().find(|s| s.as_str() == name)
    }
}

/// Enough to talk to a conversation later (replies, proactive messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationRef {
    pub bot_app_id: AppId,
    pub conversation_id: ConversationId,
    pub tenant_id: TenantId,
    pub service_url: String,
    pub channel_id: String,
    pub conversation_type: Option<String>,
    pub user_id: Option<String>,
    pub user_aad_object_id: Option<AadObjectId>,
    pub bot_id: Option<String>,
    /// False once the bot was uninstalled from the conversation.
    pub usable: bool,
    pub updated_at_ms: i64,
    /// Agent 365: the inbound recipient (the agentic user's account, JSON). Replies then go out with the
    /// Agent User's token and this account as `from`.
    pub agentic: Option<crate::activity::AgenticRecipient>,
    /// Written by an authenticated activity (or by the gateway itself). An unauthenticated (`serve --dev`)
    /// activity never overwrites a reference marked so.
    pub authenticated: bool,
}

/// A Graph change-notification subscription of a bot's Agent User (`/me/chats/getAllMessages`). Its
/// `client_state` is a secret: compared in constant time with each notification's, never logged, never
/// in `Debug`.
#[derive(Clone)]
pub struct GraphSubscription {
    pub subscription_id: String,
    pub bot_app_id: AppId,
    pub resource: String,
    pub client_state: secrecy::SecretString,
    pub expires_at_ms: i64,
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for GraphSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSubscription")
            .field("subscription_id", &self.subscription_id)
            .field("bot_app_id", &self.bot_app_id)
            .field("resource", &self.resource)
            .field("client_state", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl PartialEq for GraphSubscription {
    fn eq(&self, o: &Self) -> bool {
        use secrecy::ExposeSecret as _;
        self.subscription_id == o.subscription_id
            && self.bot_app_id == o.bot_app_id
            && self.resource == o.resource
            && self.client_state.expose_secret() == o.client_state.expose_secret()
            && self.expires_at_ms == o.expires_at_ms
            && self.updated_at_ms == o.updated_at_ms
    }
}

/// A Graph notification made durable before it is acknowledged (a small row): the worker fetches and
/// commits it afterwards, and rows not done are redone at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNotification {
    pub id: i64,
    pub subscription_id: String,
    pub bot_app_id: AppId,
    /// `created`, `updated`, `deleted`, or a lifecycle event (`missed`, `subscriptionRemoved`,
    /// `reauthorizationRequired`).
    pub event: String,
    /// The resource the notification names (`chats('…')/messages('…')`); empty for lifecycle events.
    pub resource: String,
    pub received_at_ms: i64,
}

/// A notification to record (its id is the store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGraphNotification {
    pub subscription_id: String,
    pub bot_app_id: AppId,
    pub event: String,
    pub resource: String,
    pub received_at_ms: i64,
}

/// How far the catch-up read of one Agent User chat got: the newest `lastModifiedDateTime` committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatCursor {
    pub bot_app_id: AppId,
    pub chat_id: String,
    pub modified_ms: i64,
}

/// How far the reading of one Agent User's Inbox got (the mail delta query): the link to read next (an
/// `@odata.nextLink` within a round, the `@odata.deltaLink` after it; empty: start a new round), and the newest
/// `receivedDateTime` committed (at first, when mail was first read), where a new round starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailCursor {
    pub bot_app_id: AppId,
    pub link: String,
    pub since_ms: i64,
    pub updated_at_ms: i64,
}

/// What one piece of Graph work leaves behind, in one transaction: the inbox entries (deduplicated like
/// any inbound activity), the chat's cursor (only ever moved forward), the mail cursor (its link replaced,
/// its `since_ms` only ever moved forward), and the notification it finishes.
#[derive(Debug, Clone, Default)]
pub struct GraphCommit {
    pub records: Vec<InboundRecord>,
    pub cursors: Vec<ChatCursor>,
    pub mail: Option<MailCursor>,
    pub done: Option<i64>,
}

/// The result of committing an inbound activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Durable now, under this inbox id.
    Accepted { inbox_id: i64 },
    /// The same (bot, conversation, activity id) was already accepted; nothing was written.
    Duplicate,
}

/// A user's edit or deletion of a message, applied to its inbox entry while that entry is still pending
/// ([`Store::commit_amendment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amendment {
    /// The edited or deleted message's activity id (the pending entry's `activity_id`).
    pub message_id: String,
    /// The entry's new body: the revised message, or for a deletion a body without its text.
    pub body: String,
    /// A deletion: the entry becomes [`InboxState::Withdrawn`] (never delivered).
    pub withdraw: bool,
    /// The state of the change's own record when it amended the pending entry.
    pub state_if_amended: InboxState,
    /// The state of the change's own record when the entry was acknowledged (a host has it) or withdrawn.
    pub state_if_delivered: InboxState,
}

/// What [`Store::commit_amendment`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amended {
    /// The outcome for the edit or deletion's own record.
    pub outcome: CommitOutcome,
    /// The pending entry that was patched or withdrawn, if one was.
    pub amended: Option<i64>,
    /// The message's entry as it was found (before the amendment): its id and state.
    pub original: Option<(i64, InboxState)>,
}

/// One inbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxItem {
    pub id: i64,
    pub bot_app_id: AppId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub activity_id: String,
    pub activity_type: String,
    pub auth: crate::ids::AuthKind,
    pub state: InboxState,
    pub received_at_ms: i64,
    pub body: String,
}

/// One outbound side effect, as queued in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OutboundOp {
    /// `POST v3/conversations/{conversation}/activities`
    Send { activity: Value },
    /// `POST v3/conversations/{conversation}/activities/{reply_to}`
    Reply { reply_to: String, activity: Value },
    /// `PUT v3/conversations/{conversation}/activities/{activity_id}`
    Update { activity_id: String, activity: Value },
    /// `DELETE v3/conversations/{conversation}/activities/{activity_id}`
    Delete { activity_id: String },
    /// `PUT` (or with `remove`, `DELETE`) `v3/conversations/{conversation}/activities/{activity_id}/reactions/{reaction}`:
    /// the bot's reaction on a message (Teams preview, 2026-05; no body).
    React {
        activity_id: String,
        reaction: String,
        #[serde(default)]
        remove: bool,
    },
    /// Create a 1:1 conversation with `user_id` (proactive), then send `activity` into it.
    CreatePersonal { user_id: String, activity: Value },
    /// `POST v3/conversations/{conversation}/activities?isTargetedActivity=true`: a targeted (private)
    /// message in a group chat or channel that only the member `recipient` (`29:…`) sees (Teams preview).
    Targeted { recipient: String, activity: Value },
    /// `PUT v3/conversations/{conversation}/activities/{activity_id}?isTargetedActivity=true`: replace a
    /// targeted message (the body names no recipient).
    UpdateTargeted { activity_id: String, activity: Value },
    /// A streamed reply: `chunks` appended one by one, `interval_ms` apart, as Teams streaming in a 1:1
    /// chat (informative/streaming updates, then the final message); elsewhere one message at the end.
    Stream { chunks: Vec<String>, interval_ms: u64, conversation_type: Option<String> },
}

impl OutboundOp {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Send { .. } => "send",
            Self::Reply { .. } => "reply",
            Self::Update { .. } => "update",
            Self::Delete { .. } => "delete",
            Self::React { remove: false, .. } => "react",
            Self::React { remove: true, .. } => "unreact",
            Self::CreatePersonal { .. } => "create_personal",
            Self::Targeted { .. } => "send_targeted",
            Self::UpdateTargeted { .. } => "update_targeted",
            Self::Stream { .. } => "stream",
        }
    }

    /// Creates may duplicate a message when re-posted after an ambiguous failure; updates and deletes
    /// are idempotent.
    pub fn is_create(&self) -> bool {
        matches!(self, Self::Send { .. } | Self::Reply { .. } | Self::CreatePersonal { .. } | Self::Targeted { .. } | Self::Stream { .. })
    }
}

/// A side effect to queue.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub bot_app_id: AppId,
    pub tenant_id: TenantId,
    /// The conversation, or `user:<id>` for a proactive 1:1 not created yet (keeps per-user order).
    pub conversation_id: ConversationId,
    pub service_url: String,
    pub op: OutboundOp,
    /// Who asked (`cli`, an MCP client's name…), recorded in the audit log.
    pub requested_by: String,
    pub now_ms: i64,
}

/// Where an outbox entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its turn (or for a retry time).
    Pending,
    /// A request is (or was, if the process died) on the wire.
    Sending,
    /// Done; `result_id` is the Teams activity (or conversation) id.
    Delivered,
    /// A create failed ambiguously: it may have landed, so it is not re-posted.
    Uncertain,
    /// Gave up (definite refusal, or the retry budget ran out).
    Dead,
}

impl OutboxState {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "sending" => Self::Sending,
            "delivered" => Self::Delivered,
            "uncertain" => Self::Uncertain,
            "dead" => Self::Dead,
            _ => Self::Pending,
        }
    }
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxItem {
    pub id: i64,
    pub bot_app_id: AppId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub service_url: String,
    pub op: OutboundOp,
    pub requested_by: String,
    pub state: OutboxState,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub next_attempt_at_ms: i64,
    pub result_id: Option<String>,
    pub last_error: Option<String>,
    /// What kind of failure `last_error` describes, for decisions (never match on the message text).
    /// `None` for entries that never failed, or failed before the class was recorded.
    pub error_class: Option<ErrorClass>,
    /// Who holds the entry's claim and until when (set while `sending`; `None` otherwise).
    pub lease: Option<Lease>,
}

/// A replica's claim on an outbox entry ([`Store::begin_outbound_attempt`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The replica id of the store handle that claimed the entry ([`new_replica_id`]).
    pub owner: String,
    /// When the claim runs out unless renewed (ms since the epoch).
    pub until_ms: i64,
}

/// The kind of an outbound failure, stored beside its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 429: not accepted; retried after `Retry-After`.
    Throttled,
    /// The request never reached the Connector (connection refused, DNS, TLS).
    Unreachable,
    /// The request may have landed (timeout after sending, 5xx, reset).
    Ambiguous,
    /// The bot cannot reach the person or conversation: 403 or 404, `MessageWritesBlocked`,
    /// `ConversationNotFound`, `BotNotInConversationRoster`. Another identity (the Agent User through
    /// Graph) might.
    BotCannotReach,
    /// Any other definite refusal (a bad request that any identity would get refused).
    Refused,
    /// A 2xx whose body was not the expected resource.
    BadResponse,
    /// No token could be had for the bot or the Agent User.
    Token,
    /// Refused before sending (configuration, allow-list).
    Local,
    /// Teams ended a stream (`ContentStreamNotAllowed`: Stop pressed, or past 2 minutes).
    Cancelled,
    /// Not sent on purpose (a typing indicator too soon after the last).
    Skipped,
    /// The process stopped while the request was in flight.
    Interrupted,
}

impl ErrorClass {
    const ALL: [Self; 11] = [
        Self::Throttled,
        Self::Unreachable,
        Self::Ambiguous,
        Self::BotCannotReach,
        Self::Refused,
        Self::BadResponse,
        Self::Token,
        Self::Local,
        Self::Cancelled,
        Self::Skipped,
        Self::Interrupted,
    ];

    /// The stored name (`outbox.error_class`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Unreachable => "unreachable",
            Self::Ambiguous => "ambiguous",
            Self::BotCannotReach => "bot_cannot_reach",
            Self::Refused => "refused",
            Self::BadResponse => "bad_response",
            Self::Token => "token",
            Self::Local => "local",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
            Self::Interrupted => "interrupted",
        }
    }

    /// The class a stored name stands for (`None` for a name this version does not know).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A failed attempt: its class (for decisions) and its message (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub class: ErrorClass,
    pub message: String,
}

impl Failed {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into() }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Delivered {
        result_id: String,
    },
    /// Try again at `at_ms` (the request certainly did not land, or the call is idempotent).
    Retry {
        at_ms: i64,
        error: Failed,
    },
    Uncertain {
        error: Failed,
    },
    Dead {
        error: Failed,
    },
}

/// One sliding window of a rate limit shared by the replicas: at most `max` sends to `key` within `window_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotWindow {
    pub key: String,
    pub window_ms: i64,
    pub max: i64,
}

/// A request for send slots in windows shared by every replica ([`Store::reserve_sends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// Reservations with the same lock are serialised; every two requests that share a window must share it.
    pub lock: String,
    /// Every window the sends count in (several windows may share a key).
    pub windows: Vec<SlotWindow>,
    /// Sends to reserve, recorded under every key of `windows` when they all fit.
    pub slots: i64,
    /// Names what the slots are for (an outbox entry's attempt): a second reservation with the same token
    /// (another replica about to race for the same entry) is granted without taking more slots.
    pub token: Option<String>,
}

/// A permission request as every replica sees it ([`SharedApprovals`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    /// Unique among the open requests of the whole cluster.
    pub request_id: String,
    /// Lower-case app id of the bot that asked.
    pub bot_app_id: String,
    /// Lower-case AAD object ids of the people who may answer.
    pub approvers: Vec<String>,
    pub tool_name: String,
    /// The approval cards sent for it (opaque JSON, written by the bridge).
    pub cards: Vec<Value>,
    /// The replica whose session asked (the one that forwards the verdict).
    pub owner: String,
    pub expires_at_ms: i64,
}

/// What an answer to a shared request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovalDecision {
    /// Decided now, by this answer (no other answer can decide it again); the cards to update.
    Decided { tool_name: String, cards: Vec<Value>, owner: String },
    /// The request is open, but the person is not one of its approvers.
    NotApprover { tool_name: String },
    /// No open request with this id for this bot (never issued, already decided, or expired).
    Unknown,
}

/// A verdict given on any replica for a request this replica owns, to forward to the session that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedVerdict {
    pub request_id: String,
    /// `allow` or `deny`.
    pub behavior: String,
    /// The approver's lower-case AAD object id.
    pub by: String,
}

/// Permission requests shared by the replicas of one database: opened by the replica whose session asked,
/// decided on whichever replica the approver's answer reaches, forwarded by the owner.
#[async_trait]
pub trait SharedApprovals: Send + Sync {
    /// This replica's id (the owner recorded on the requests it opens).
    fn replica_id(&self) -> &str;

    /// Open `record` (owned by this replica). False, and nothing changes, when a request with its id is open
    /// (not decided, closed or expired by `now_ms`) anywhere in the cluster.
    async fn open_approval(&self, record: &ApprovalRecord, now_ms: i64) -> Result<bool, StoreError>;

    /// Add a card to an open request.
    async fn add_approval_card(&self, request_id: &str, card: &Value) -> Result<(), StoreError>;

    /// Decide in one conditional update: only an open, unexpired request of `bot_app_id` whose approvers
    /// include `aad`, and only once. Announces the decision to every replica.
    async fn decide_approval(
        &self,
        bot_app_id: &str,
        request_id: &str,
        aad: &str,
        behavior: &str,
        now_ms: i64,
    ) -> Result<ApprovalDecision, StoreError>;

    /// Close a request this replica owns that is still open (withdrawn, expired, or its session ended).
    async fn close_approval(&self, request_id: &str) -> Result<(), StoreError>;

    /// Every request open in the cluster at `now_ms`.
    async fn open_approvals(&self, now_ms: i64) -> Result<Vec<ApprovalRecord>, StoreError>;

    /// The verdicts given (on any replica) for requests this replica owns and has not forwarded yet; each is
    /// returned once.
    async fn take_verdicts(&self) -> Result<Vec<SharedVerdict>, StoreError>;

    /// Wake-ups when a request is opened, decided or closed anywhere (and after the listener reconnects).
    fn subscribe_approvals(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Why the store could not do what was asked, by kind: callers decide on the variant (503 and retry for
/// [`StoreError::Unavailable`], refuse to start for [`StoreError::SchemaTooNew`]…), never on the message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// This handle was closed (shutdown): nothing more is written.
    #[error("store is closed")]
    Closed,
    /// The database cannot be reached or did not answer in time (connection refused or lost, pool timeout,
    /// server shutting down, disk I/O, file locked). Nothing was written; trying again later may succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The write conflicted with another one (a unique key taken meanwhile, a serialization failure or
    /// deadlock). Nothing was written.
    #[error("conflicting write: {0}")]
    Conflict(String),
    /// Stored data this version cannot read (a malformed row, an unknown state name, a damaged file).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The storage was migrated by a newer release; it is left untouched.
    #[error(
        "the database has schema version {found}, newer than this agentgate understands (version {known}); it was migrated by a \
         newer release: run that release, or restore a backup taken before the upgrade"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// The database refused the statement for another reason (a bug in agentgate, or a server misconfigured).
    #[error("database error: {0}")]
    Database(String),
    /// The store could not be opened or created (the path or URL is named).
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
}

impl StoreError {
    /// Whether the failure is passing (the database is down or busy, or a write lost a race): the caller
    /// answers 503 / retries rather than reporting a fault.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Conflict(_))
    }
}

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Make an inbound activity durable (inbox + dedupe key + conversation reference) or report it as a
    /// duplicate. Returns only after the transaction is committed.
    async fn commit_inbound(&self, record: InboundRecord) -> Result<CommitOutcome, StoreError>;

    /// Commit a change to a message (an edit, a deletion: `record`) and, in the same transaction, look at the
    /// message's own entry (same bot and conversation, `activity_type` `message`, its `activity_id`; an
    /// anonymous record only ever looks at anonymous entries): still pending, it is amended (its body
    /// replaced, or for a deletion withdrawn) and `record` takes [`Amendment::state_if_amended`]; acknowledged
    /// or withdrawn, `record` takes [`Amendment::state_if_delivered`]; otherwise (filtered, unknown) its own
    /// state. Nothing is written for a duplicate `record`, not even the amendment (a late redelivery of an old
    /// edit never undoes a newer one).
    async fn commit_amendment(&self, record: InboundRecord, amendment: Amendment) -> Result<Amended, StoreError>;

    /// Inbox entries not yet acknowledged, oldest first; `bot` filters by app id.
    async fn pending_inbox(&self, bot: Option<&str>, limit: usize) -> Result<Vec<InboxItem>, StoreError>;

    /// Pending inbox entries with an id above `after_id`, oldest first.
    async fn inbox_after(&self, after_id: i64, limit: usize) -> Result<Vec<InboxItem>, StoreError>;

    /// The inbox entries with these ids (any state; unknown ids are left out).
    async fn inbox_by_ids(&self, ids: &[i64]) -> Result<Vec<InboxItem>, StoreError>;

    /// Conversation references, most recently active first.
    async fn conversations(&self, limit: usize) -> Result<Vec<ConversationRef>, StoreError>;

    /// The bot's usable 1:1 chat with this user (by AAD object id), if it has one.
    async fn personal_conversation(&self, bot_app_id: &str, aad_object_id: &str) -> Result<Option<ConversationRef>, StoreError>;

    /// Append an event to the audit chain (committed when this returns).
    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError>;

    /// Mark pending inbox entries acknowledged; returns how many changed.
    async fn ack_inbox(&self, ids: &[i64]) -> Result<u64, StoreError>;

    async fn conversation_ref(&self, bot_app_id: &str, conversation_id: &str) -> Result<Option<ConversationRef>, StoreError>;

    /// Create or replace a conversation reference (a 1:1 chat the bot opened itself).
    async fn upsert_conversation_ref(&self, reference: ConversationRef) -> Result<(), StoreError>;

    /// Mark a reference usable or not (the bot was blocked or removed: `403 MessageWritesBlocked`).
    async fn set_conversation_usable(&self, bot_app_id: &str, conversation_id: &str, usable: bool) -> Result<(), StoreError>;

    /// The service URL of the bot's most recently updated usable Connector reference in `tenant` (proactive
    /// sends; the Agent User's Graph chats and mail threads are not Connector conversations).
    async fn tenant_service_url(&self, bot_app_id: &str, tenant_id: &str) -> Result<Option<String>, StoreError>;

    /// The saved state of an `agentgate agent-id provision` run (its key names the bot and tenant).
    async fn provisioning(&self, key: &str) -> Result<Option<ProvisioningRecord>, StoreError>;

    /// Save (insert or replace) a provisioning run's state.
    async fn save_provisioning(&self, record: ProvisioningRecord) -> Result<(), StoreError>;

    /// Forget a provisioning run (after its teardown); whether there was one.
    async fn delete_provisioning(&self, key: &str) -> Result<bool, StoreError>;

    /// Record that the bot's welcome goes to `conversation_id` now, unless it was recorded before: true when
    /// this call recorded it (its caller sends the welcome), false when an earlier one did, on any replica
    /// (one conditional insert). The bot is compared in lower case, the conversation exactly.
    async fn record_welcome(&self, bot_app_id: &str, conversation_id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// When the bot's welcome to `conversation_id` was recorded, if it was.
    async fn welcomed_at(&self, bot_app_id: &str, conversation_id: &str) -> Result<Option<i64>, StoreError>;

    /// Record a file offered with a consent card (its id is new: an id taken is a [`StoreError::Conflict`]).
    async fn create_file_offer(&self, offer: &FileOffer) -> Result<(), StoreError>;

    /// The offer with this consent id, if any.
    async fn file_offer(&self, id: &str) -> Result<Option<FileOffer>, StoreError>;

    /// Move an offer from `from` to `to` (its `detail` replaced, `updated_at_ms` set), only if it is still in
    /// `from`: true when this call moved it, false when it was not there (unknown, or another call or replica
    /// moved it first: two answers to one card, on two replicas, never both accept it). A transition the
    /// consent flow does not have ([`OfferState::can_become`]) is refused.
    async fn transition_file_offer(
        &self,
        id: &str,
        from: OfferState,
        to: OfferState,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Forget an offer (its card could not be queued); whether there was one.
    async fn delete_file_offer(&self, id: &str) -> Result<bool, StoreError>;

    /// Forget dedupe keys that expired before `now_ms`; returns how many were removed.
    async fn purge_dedupe(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The schema version the storage is at (the number of migration steps applied).
    async fn schema_version(&self) -> Result<i64, StoreError>;

    /// Queue an outbound side effect: its audit event and its outbox entry in one transaction. If the
    /// audit event cannot be written, nothing is queued.
    async fn enqueue_outbound(&self, item: NewOutbound) -> Result<i64, StoreError>;

    /// Entries whose turn it is: the oldest pending entry of each conversation, due by `now_ms`.
    async fn due_outbound(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;

    /// Claim the entry for an attempt: state `sending`, attempts + 1, owned by this store's replica id until
    /// `now_ms + OUTBOX_LEASE_MS`. Returns false if the entry was not pending, not due, not the oldest open
    /// entry of its conversation, or being claimed by another replica right now (someone else took it).
    async fn begin_outbound_attempt(&self, id: i64, now_ms: i64) -> Result<bool, StoreError>;

    /// Extend this replica's claim on an entry it is still sending to `now_ms + OUTBOX_LEASE_MS`. Returns
    /// false if the claim is no longer this replica's (its lease ran out and another replica took it over).
    async fn renew_outbound_lease(&self, id: i64, now_ms: i64) -> Result<bool, StoreError>;

    /// Record how the attempt ended, with its audit event. The entry changes only if it is pending or this
    /// replica's claim; a claim taken over meanwhile keeps its new state (the audit event is still recorded).
    async fn finish_outbound(&self, id: i64, finish: Finish, event: AuditEvent) -> Result<(), StoreError>;

    /// Take over entries left `sending` by a replica that died: those whose lease ran out by `now_ms`
    /// (claims of live replicas are left alone). Idempotent ones go back to pending; creates become
    /// uncertain (they may have landed). Run at start and periodically. Returns (requeued, uncertain).
    async fn recover_outbound(&self, now_ms: i64) -> Result<(u64, u64), StoreError>;

    async fn outbox(&self, id: Option<i64>, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;

    /// The newest audit events, newest first.
    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    /// Check the whole hash chain (rules in [`audit`]), with the store's audit key; `expect` is a head recorded
    /// earlier that must be part of the chain. Returns the chain's head, or the first thing found wrong.
    async fn verify_audit(&self, expect: Option<&AuditHead>) -> Result<Result<Verified, Broken>, StoreError>;

    /// The chain's head as it is now (count, newest id, its hash), cheap enough to poll.
    async fn audit_head(&self) -> Result<AuditHead, StoreError>;

    /// Wake-ups for inbox entries committed by other processes (replicas sharing the database): the
    /// receiver changes to the newest inbox id announced. `None` when the backend has no such signal (the
    /// caller polls).
    fn subscribe_inbox(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        None
    }

    /// Reserve `request.slots` sends in windows every replica shares, by the database's clock: `Ok(Some(Ok(())))`
    /// when they fit every window (recorded), `Ok(Some(Err(wait)))` with how long until they would (nothing
    /// recorded). `Ok(None)`: this backend shares no windows (one process): the caller limits in memory.
    async fn reserve_sends(&self, request: &SlotRequest) -> Result<Option<Result<(), std::time::Duration>>, StoreError> {
        let _ = request;
        Ok(None)
    }

    /// Permission requests shared by every replica of the database; `None` (one process): the bridge keeps
    /// them in memory.
    fn shared_approvals(&self) -> Option<&dyn SharedApprovals> {
        None
    }

    /// Finish every write already submitted, then stop accepting writes.
    /// Store (or replace) a Graph subscription.
    async fn put_graph_subscription(&self, sub: GraphSubscription) -> Result<(), StoreError>;

    /// The Graph subscriptions, every bot's or one bot's.
    async fn graph_subscriptions(&self, bot: Option<&str>) -> Result<Vec<GraphSubscription>, StoreError>;

    /// Forget a Graph subscription (removed by Graph, or replaced).
    async fn delete_graph_subscription(&self, subscription_id: &str) -> Result<(), StoreError>;

    /// Make notifications durable (before they are acknowledged); returns their ids in order.
    async fn record_graph_notifications(&self, items: Vec<NewGraphNotification>) -> Result<Vec<i64>, StoreError>;

    /// The notifications not done yet, oldest first.
    async fn pending_graph_notifications(&self, limit: usize) -> Result<Vec<GraphNotification>, StoreError>;

    /// Claim up to `limit` notifications not done yet, oldest first, for this replica until
    /// `now_ms + GRAPH_CLAIM_MS`: those no replica holds, those this replica holds already, and those whose
    /// claim ran out by `now_ms` (their replica died). Another replica's live claims are skipped without
    /// waiting, so replicas sharing one database never work on the same notification at once.
    async fn claim_graph_notifications(&self, limit: usize, now_ms: i64) -> Result<Vec<GraphNotification>, StoreError>;

    /// Take the named lease for this replica until `now_ms + ttl_ms`, or extend it: true when it was free,
    /// ran out by `now_ms`, or is this replica's already; false (nothing changes) while another replica
    /// holds it. Guards Graph work that one replica at a time may do (a bot's subscription, a catch-up).
    async fn take_graph_lease(&self, name: &str, now_ms: i64, ttl_ms: i64) -> Result<bool, StoreError>;

    /// Give up the named lease if this replica holds it (another replica's is left alone).
    async fn release_graph_lease(&self, name: &str) -> Result<(), StoreError>;

    /// Commit Graph work in one transaction (see [`GraphCommit`]); the outcome of each record in order.
    async fn commit_graph(&self, commit: GraphCommit) -> Result<Vec<CommitOutcome>, StoreError>;

    /// The catch-up cursors of one bot's Agent User chats.
    async fn graph_cursors(&self, bot_app_id: &str) -> Result<Vec<ChatCursor>, StoreError>;

    /// Claim `targets` for `holder`'s session until `now_ms + ttl_ms`, all or none, in one transaction:
    /// each target is taken with one conditional upsert (free, lapsed by `now_ms`, or already the
    /// session's, which is extended). When another session holds any of them (live), nothing changes and
    /// those claims are returned. Rows that lapsed long ago ([`claims::CLAIM_ROWS_KEPT_MS`]) are deleted.
    async fn claim_conversations(
        &self,
        targets: &[ClaimTarget],
        holder: &ClaimHolder,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Extend the session's claims still live at `now_ms` to `now_ms + ttl_ms` (a lapsed claim stays
    /// lapsed: another session may have taken it); how many were extended.
    async fn renew_claims(&self, session: &str, now_ms: i64, ttl_ms: i64) -> Result<u64, StoreError>;

    /// Give up the session's claims on `targets`, or all of them (`None`); another session's are left
    /// alone. How many were given up.
    async fn release_claims(&self, session: &str, targets: Option<&[ClaimTarget]>) -> Result<u64, StoreError>;

    /// Every claim live at `now_ms` (its lease runs out later), of every session on every replica.
    async fn live_claims(&self, now_ms: i64) -> Result<Vec<Claim>, StoreError>;
    /// How far the reading of the bot's Agent User's Inbox got (written by [`Store::commit_graph`]).
    async fn mail_cursor(&self, bot_app_id: &str) -> Result<Option<MailCursor>, StoreError>;

    async fn close(&self);
}
