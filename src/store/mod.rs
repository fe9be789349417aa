//! Durable state behind one [`Store`] trait: conversation references, the inbox and dedupe keys.
//!
//! SQLite ([`sqlite::SqliteStore`]) is the embedded default. The SQL is kept portable (no SQLite-only
//! upsert tricks beyond `ON CONFLICT … DO`, which Postgres shares) so that a Postgres store can share
//! the same test body.

use async_trait::async_trait;
use serde::Serialize;

pub mod sqlite;

pub use sqlite::SqliteStore;

/// What an accepted activity leaves behind: its inbox entry, its dedupe key and the conversation
/// reference it refreshes, written in one transaction.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub bot_app_id: String,
    pub tenant_id: String,
    pub conversation_id: String,
    pub activity_id: String,
    pub activity_type: String,
    /// How the request was authenticated: `botframework` or `dev-anonymous`.
    pub auth: &'static str,
    /// The activity exactly as received.
    pub body: String,
    pub received_at_ms: i64,
    pub dedupe_expires_at_ms: i64,
    pub reference: ConversationRef,
}

/// Enough to talk to a conversation later (replies, proactive messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationRef {
    pub bot_app_id: String,
    pub conversation_id: String,
    pub tenant_id: String,
    pub service_url: String,
    pub channel_id: String,
    pub conversation_type: Option<String>,
    pub user_id: Option<String>,
    pub user_aad_object_id: Option<String>,
    pub bot_id: Option<String>,
    /// False once the bot was uninstalled from the conversation.
    pub usable: bool,
    pub updated_at_ms: i64,
}

/// The result of committing an inbound activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Durable now, under this inbox id.
    Accepted { inbox_id: i64 },
    /// The same (bot, conversation, activity id) was already accepted; nothing was written.
    Duplicate,
}

/// One inbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxItem {
    pub id: i64,
    pub bot_app_id: String,
    pub tenant_id: String,
    pub conversation_id: String,
    pub activity_id: String,
    pub activity_type: String,
    pub auth: String,
    pub state: String,
    pub received_at_ms: i64,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is closed")]
    Closed,
    #[error("database error: {0}")]
    Database(String),
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
}

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Make an inbound activity durable (inbox + dedupe key + conversation reference) or report it as a
    /// duplicate. Returns only after the transaction is committed.
    async fn commit_inbound(&self, record: InboundRecord) -> Result<CommitOutcome, StoreError>;

    /// Inbox entries not yet acknowledged, oldest first; `bot` filters by app id.
    async fn pending_inbox(&self, bot: Option<&str>, limit: usize) -> Result<Vec<InboxItem>, StoreError>;

    /// Mark inbox entries acknowledged; returns how many changed.
    async fn ack_inbox(&self, ids: &[i64]) -> Result<u64, StoreError>;

    async fn conversation_ref(&self, bot_app_id: &str, conversation_id: &str) -> Result<Option<ConversationRef>, StoreError>;

    /// Forget dedupe keys that expired before `now_ms`; returns how many were removed.
    async fn purge_dedupe(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finish every write already submitted, then stop accepting writes.
    async fn close(&self);
}
