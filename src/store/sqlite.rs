//! The embedded SQLite store.
//!
//! All writes go through one writer thread that drains its queue into a single transaction (group
//! commit): under load many activities share one fsync, and each caller is answered only after the
//! transaction that holds its activity has committed. Reads use a second connection (WAL mode lets
//! them run beside the writer). The audit chain's rules are in [`super::audit`]; this file only stores
//! its rows.
//!
//! The group commit is written by hand on purpose: rusqlite is synchronous, and the ready-made async
//! wrappers (`tokio-rusqlite`, connection pools) run one closure per call in its own transaction, which
//! means one fsync per activity. Here one thread owns the write connection, takes every job queued
//! while the previous batch was committing, runs each inside a savepoint of one transaction, and answers
//! the callers only after that transaction committed. The bounded queue is the backpressure.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::audit::{self, AuditHead, AuditKey, Broken, Verified};
use super::claims::CLAIM_ROWS_KEPT_MS;
use super::offers::{self, FileOffer, OfferState};
use super::{
    Amended, Amendment, AuditEvent, AuditRecord, ChatCursor, Claim, ClaimHolder, ClaimOutcome, ClaimTarget, CommitOutcome, ConversationRef,
    Finish, GRAPH_CLAIM_MS, GraphCommit, GraphNotification, GraphSubscription, Identity, InboundRecord, InboxItem, InboxState, Lease,
    MailCursor, NewGraphNotification, NewOutbound, OUTBOX_LEASE_MS, OutboundOp, OutboxItem, OutboxState, ProvisioningRecord, Store,
    StoreError, Target, now_ms,
};
use crate::config::Synchronous;
use crate::ids::{AppId, ConversationId};
use crate::metrics::Metrics;

/// Schema version 1: the first release (it also wrote `PRAGMA user_version = 1`).
const V1_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversation_refs (
    bot_app_id         TEXT    NOT NULL,
    conversation_id    TEXT    NOT NULL,
    tenant_id          TEXT    NOT NULL,
    service_url        TEXT    NOT NULL,
    channel_id         TEXT    NOT NULL,
    conversation_type  TEXT,
    user_id            TEXT,
    user_aad_object_id TEXT,
    bot_id             TEXT,
    usable             INTEGER NOT NULL,
    updated_at_ms      BIGINT  NOT NULL,
    PRIMARY KEY (bot_app_id, conversation_id)
);
CREATE TABLE IF NOT EXISTS inbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    bot_app_id      TEXT    NOT NULL,
    tenant_id       TEXT    NOT NULL,
    conversation_id TEXT    NOT NULL,
    activity_id     TEXT    NOT NULL,
    activity_type   TEXT    NOT NULL,
    auth            TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending',
    received_at_ms  BIGINT  NOT NULL,
    acked_at_ms     BIGINT,
    body            TEXT    NOT NULL
);
DROP INDEX IF EXISTS inbox_unacked;
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (id) WHERE state = 'pending';
-- conversation first: Teams activity ids grow with time inside a conversation, so new keys land at
-- the end of their conversation's range instead of at random places in the index.
CREATE TABLE IF NOT EXISTS dedupe (
    conversation_id TEXT   NOT NULL,
    activity_id     TEXT   NOT NULL,
    bot_app_id      TEXT   NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, activity_id, bot_app_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe (expires_at_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    bot_app_id         TEXT    NOT NULL,
    tenant_id          TEXT    NOT NULL,
    conversation_id    TEXT    NOT NULL,
    service_url        TEXT    NOT NULL,
    op                 TEXT    NOT NULL,
    requested_by       TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    created_at_ms      BIGINT  NOT NULL,
    updated_at_ms      BIGINT  NOT NULL,
    next_attempt_at_ms BIGINT  NOT NULL,
    result_id          TEXT,
    last_error         TEXT
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (bot_app_id, conversation_id, id) WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (state, next_attempt_at_ms) WHERE state IN ('pending', 'sending');
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    identity  TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    target    TEXT   NOT NULL,
    outcome   TEXT   NOT NULL,
    detail    TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);
";

/// One schema step, run inside its own transaction.
type Migration = fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>;

/// The schema's history, oldest first. `PRAGMA user_version` is the number of steps applied. Append only:
/// never edit a step that has shipped.
const MIGRATIONS: &[Migration] = &[
    |tx| tx.execute_batch(V1_SCHEMA),
    // 2: the Agent 365 recipient of a conversation. Version-1 files written by later builds of the first
    // release already have the column (they added it at every start).
    |tx| {
        let has_agentic: bool = tx.prepare("SELECT 1 FROM pragma_table_info('conversation_refs') WHERE name = 'agentic'")?.exists([])?;
        if !has_agentic {
            tx.execute_batch("ALTER TABLE conversation_refs ADD COLUMN agentic TEXT")?;
        }
        Ok(())
    },
    // 3: whether a Microsoft-signed token vouched for the activity that wrote a reference. References from
    // before the mark count as authenticated: an anonymous (dev) activity may not overwrite them.
    |tx| tx.execute_batch("ALTER TABLE conversation_refs ADD COLUMN authenticated INTEGER NOT NULL DEFAULT 1"),
    // 4: the class of an outbox entry's last error, so that decisions never read the message text.
    |tx| tx.execute_batch("ALTER TABLE outbox ADD COLUMN error_class TEXT"),
    // 5: outbox claims carry an owner and a lease, so that a claim is taken over only once its lease ran out
    // (its owner died). Entries left `sending` by older builds have no lease: they count as expired.
    |tx| tx.execute_batch("ALTER TABLE outbox ADD COLUMN lease_owner TEXT; ALTER TABLE outbox ADD COLUMN lease_until_ms INTEGER;"),
    // 6: `agentgate agent-id provision`: each run's state machine (the objects created, the step reached), as JSON.
    |tx| {
        tx.execute_batch(
            "CREATE TABLE agent_id_provisioning (
                key           TEXT    PRIMARY KEY,
                state         TEXT    NOT NULL,
                updated_at_ms INTEGER NOT NULL
            )",
        )
    },
    // 7: the Agent User's inbound through Graph: its subscriptions (the clientState is a secret), the
    // notifications made durable before their 202 (deleted once done), and each chat's catch-up cursor.
    |tx| tx.execute_batch(GRAPH_INBOUND_SCHEMA),
    // 8: the Graph inbound shared by processes: a notification is worked on by the handle that claimed it
    // (`claim_graph_notifications`, until `claim_until_ms`), and work that one handle at a time may do (a
    // bot's subscription, a catch-up read) is guarded by a named lease (`take_graph_lease`).
    |tx| {
        tx.execute_batch(
            "ALTER TABLE graph_notifications ADD COLUMN claimed_by TEXT;
             ALTER TABLE graph_notifications ADD COLUMN claim_until_ms INTEGER;
             CREATE TABLE graph_leases (
                 name     TEXT    PRIMARY KEY,
                 owner    TEXT    NOT NULL,
                 until_ms INTEGER NOT NULL
             );",
        )
    },
    // 9: claims on conversations (`claim_conversations`): the MCP session that owns a conversation, a bot's
    // conversations in a tenant, or all of a bot's, until its lease runs out.
    |tx| tx.execute_batch(CLAIMS_SCHEMA),
    // 10: the Agent User's mail: how far the Inbox's delta query got (the link to read next, the newest
    // `receivedDateTime` committed), one row per bot, written with the mail's inbox entries.
    |tx| {
        tx.execute_batch(
            "CREATE TABLE mail_cursors (
                 bot_app_id    TEXT    PRIMARY KEY,
                 link          TEXT    NOT NULL,
                 since_ms      INTEGER NOT NULL,
                 updated_at_ms INTEGER NOT NULL
             );",
        )
    },
    // 11: the welcome marker and the files offered with a consent card, each in a table of its own; the rows
    // they kept in `agent_id_provisioning` (`welcome:…`, `file_consent:…`) move there.
    |tx| {
        tx.execute_batch(OFFERS_SCHEMA)?;
        move_provisioned_state(tx)
    },
];

const OFFERS_SCHEMA: &str = "
CREATE TABLE welcomes (
    bot_app_id      TEXT    NOT NULL,
    conversation_id TEXT    NOT NULL,
    welcomed_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (bot_app_id, conversation_id)
) WITHOUT ROWID;
CREATE TABLE file_offers (
    id              TEXT    PRIMARY KEY,
    bot_app_id      TEXT    NOT NULL,
    tenant_id       TEXT    NOT NULL,
    conversation_id TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    size            INTEGER NOT NULL,
    sha256          TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    detail          TEXT,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL
);
";

/// The provisioning records that were welcome markers or file offers (before step 11).
const PROVISIONED_STATE: &str = "substr(key, 1, 8) = 'welcome:' OR substr(key, 1, 13) = 'file_consent:'";

/// Step 11: move the welcome markers and file offers kept as provisioning records into their tables (read by
/// `offers::legacy_*`; a record that does not read as one is dropped, as the code that wrote it ignored it),
/// and delete them from `agent_id_provisioning`.
fn move_provisioned_state(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let rows = {
        let mut stmt = tx.prepare(&format!("SELECT key, state, updated_at_ms FROM agent_id_provisioning WHERE {PROVISIONED_STATE}"))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    for (key, state, updated_at_ms) in rows {
        if let Some((bot, conversation)) = offers::legacy_welcome(&key) {
            tx.execute(
                "INSERT INTO welcomes (bot_app_id, conversation_id, welcomed_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![bot, conversation, updated_at_ms],
            )?;
        } else if let Some(offer) = offers::legacy_offer(&key, &state, updated_at_ms) {
            insert_offer(tx, &offer, true)?;
        }
    }
    tx.execute(&format!("DELETE FROM agent_id_provisioning WHERE {PROVISIONED_STATE}"), [])?;
    Ok(())
}

const OFFER_COLUMNS: &str = "id, bot_app_id, tenant_id, conversation_id, name, size, sha256, requested_by, state, detail, created_at_ms, updated_at_ms, expires_at_ms";

/// Insert an offer; `or_ignore`: an id already there is kept (else it is a constraint violation).
fn insert_offer(tx: &rusqlite::Transaction<'_>, o: &FileOffer, or_ignore: bool) -> rusqlite::Result<usize> {
    let size = i64::try_from(o.size).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let conflict = if or_ignore { "ON CONFLICT DO NOTHING" } else { "" };
    tx.prepare_cached(&format!(
        "INSERT INTO file_offers ({OFFER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) {conflict}"
    ))?
    .execute(params![
        o.id,
        o.bot_app_id,
        o.tenant_id,
        o.conversation_id,
        o.name,
        size,
        o.sha256,
        o.requested_by,
        o.state.as_str(),
        o.detail,
        o.created_at_ms,
        o.updated_at_ms,
        o.expires_at_ms
    ])
}

fn offer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileOffer> {
    let unreadable = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::<dyn std::error::Error + Send + Sync>::from(what))
    };
    let size: i64 = r.get(5)?;
    let state: String = r.get(8)?;
    Ok(FileOffer {
        id: r.get(0)?,
        bot_app_id: r.get(1)?,
        tenant_id: r.get(2)?,
        conversation_id: r.get(3)?,
        name: r.get(4)?,
        size: u64::try_from(size).map_err(|_| unreadable(5, format!("a file offer of size {size}")))?,
        sha256: r.get(6)?,
        requested_by: r.get(7)?,
        state: OfferState::parse(&state).ok_or_else(|| unreadable(8, format!("a file offer in an unknown state `{state}`")))?,
        detail: r.get(9)?,
        created_at_ms: r.get(10)?,
        updated_at_ms: r.get(11)?,
        expires_at_ms: r.get(12)?,
    })
}

const CLAIMS_SCHEMA: &str = "
CREATE TABLE conversation_claims (
    target          TEXT    PRIMARY KEY,
    kind            TEXT    NOT NULL,
    bot_app_id      TEXT    NOT NULL,
    tenant_id       TEXT,
    conversation_id TEXT,
    session         TEXT    NOT NULL,
    client          TEXT    NOT NULL,
    scope           TEXT    NOT NULL,
    claimed_at_ms   INTEGER NOT NULL,
    until_ms        INTEGER NOT NULL
);
CREATE INDEX conversation_claims_session ON conversation_claims (session);
";

const GRAPH_INBOUND_SCHEMA: &str = "
CREATE TABLE graph_subscriptions (
    subscription_id TEXT    PRIMARY KEY,
    bot_app_id      TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    client_state    TEXT    NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);
CREATE TABLE graph_notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT    NOT NULL,
    bot_app_id      TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    received_at_ms  INTEGER NOT NULL
);
CREATE TABLE graph_cursors (
    bot_app_id  TEXT    NOT NULL,
    chat_id     TEXT    NOT NULL,
    modified_ms INTEGER NOT NULL,
    PRIMARY KEY (bot_app_id, chat_id)
);
";

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the file to [`SCHEMA_VERSION`]: apply only the missing steps, each in its own (immediate) transaction
/// that also records the new version. A file newer than this build is refused, untouched.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version = |c: &Connection| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0));
    let found = version(conn).map_err(db_err)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, known: SCHEMA_VERSION });
    }
    let step_err = |target: i64| {
        move |e: rusqlite::Error| match db_err(e) {
            StoreError::Database(s) => StoreError::Database(format!("schema step {target}: {s}")),
            other => other,
        }
    };
    for (i, step) in MIGRATIONS.iter().enumerate() {
        let target = i as i64 + 1;
        if target <= found {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
        // Another process may have migrated while this one waited for the lock.
        if version(&tx).map_err(db_err)? >= target {
            continue;
        }
        step(&tx).and_then(|()| tx.pragma_update(None, "user_version", target)).map_err(step_err(target))?;
        tx.commit().map_err(step_err(target))?;
        if found > 0 {
            tracing::info!(from = target - 1, to = target, "store schema migrated");
        }
    }
    Ok(())
}

/// Answers a caller once the transaction is settled (`Some` = it failed).
type Deliver = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// A write, run inside the batch transaction (in its own savepoint); returns how to answer its caller and
/// whether it succeeded (else its savepoint is rolled back).
type WriteFn = Box<dyn FnOnce(&rusqlite::Transaction<'_>, &mut WriterState) -> (Deliver, bool) + Send>;

/// State the writer keeps between batches, and what the current batch did.
struct WriterState {
    refs: RefCache,
    audit_key: Option<Arc<AuditKey>>,
    /// References written by this batch: remembered in `refs` once it commits.
    refs_written: Vec<((AppId, ConversationId), u64)>,
    /// Activities accepted by this batch (the commit metrics).
    activities: usize,
    truncation_reported: bool,
}

impl WriterState {
    fn new(audit_key: Option<Arc<AuditKey>>) -> Self {
        Self { refs: RefCache::default(), audit_key, refs_written: Vec::new(), activities: 0, truncation_reported: false }
    }

    /// Append an audit event to the hash chain. The head is read inside the (immediate, so exclusive)
    /// transaction every time: other processes (`agentgate send`) append to the same chain.
    fn audit(&mut self, tx: &rusqlite::Transaction<'_>, e: &AuditEvent) -> rusqlite::Result<()> {
        let highest: i64 =
            tx.prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'audit'")?.query_row([], |r| r.get(0)).optional()?.unwrap_or(0);
        let last: Option<(i64, String)> = tx
            .prepare_cached("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let last_id = last.as_ref().map_or(0, |l| l.0);
        if highest > last_id && !self.truncation_reported {
            self.truncation_reported = true;
            tracing::error!(newest = last_id, issued = highest, "audit log: its newest events were removed (`agentgate audit --verify`)");
        }
        let sealed = audit::seal(self.audit_key.as_deref(), highest, last.as_ref().map(|(id, h)| (*id, h.as_str())), e);
        tx.prepare_cached(
            "INSERT INTO audit (id, at_ms, actor, identity, action, target, outcome, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            sealed.id,
            e.at_ms,
            e.actor,
            e.identity.to_string(),
            e.action,
            e.target.to_string(),
            e.outcome,
            e.detail,
            sealed.prev_hash,
            sealed.hash
        ])?;
        Ok(())
    }
}

enum Job {
    Write(WriteFn),
    Stop,
}

/// SQLite behind the [`Store`] trait.
pub struct SqliteStore {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    audit_key: Option<Arc<AuditKey>>,
    /// The audit head last computed, so that the next one counts only newer events.
    head: Arc<Mutex<Option<AuditHead>>>,
    /// The owner recorded on the outbox entries this handle claims ([`super::new_replica_id`]).
    replica: Arc<str>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

/// Ids are stored as their text as received (case kept); reading one back types it again.
macro_rules! sqlite_text_id {
    ($($ty:ty),*) => {$(
        impl rusqlite::ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $ty {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                value.as_str().map(<$ty>::from)
            }
        }
    )*};
}

sqlite_text_id!(crate::ids::AppId, crate::ids::TenantId, crate::ids::ConversationId, crate::ids::AadObjectId);

/// A SQLite error, classified: a locked or unreadable file, a full disk or I/O failure is
/// [`StoreError::Unavailable`], a constraint [`StoreError::Conflict`], a damaged file or a row this version
/// cannot read [`StoreError::Corrupt`].
fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let text = e.to_string();
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DatabaseBusy | C::DatabaseLocked | C::SystemIoFailure | C::DiskFull | C::CannotOpen | C::ReadOnly | C::OutOfMemory => {
                StoreError::Unavailable(text)
            }
            C::ConstraintViolation => StoreError::Conflict(text),
            C::DatabaseCorrupt | C::NotADatabase => StoreError::Corrupt(text),
            _ => StoreError::Database(text),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(text),
        _ => StoreError::Database(text),
    }
}

fn open_connection(path: &Path, sync: Synchronous) -> Result<Connection, StoreError> {
    let open_err = |e: rusqlite::Error| StoreError::Open { path: path.display().to_string(), reason: e.to_string() };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )
    .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
    // Room for every statement the store runs (the default is 16), so none is parsed twice.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Create the parent folder (0700) and the database file (0600) when they do not exist yet. SQLite gives
/// its `-wal` and `-shm` files the database file's mode. Existing folders and files keep their modes.
fn create_private(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(parent)?;
    }
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    match file.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl SqliteStore {
    /// Open without an audit key; see [`SqliteStore::open_keyed`].
    pub fn open(path: &Path, sync: Synchronous, max_batch: usize, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        Self::open_keyed(path, sync, max_batch, metrics, None)
    }

    /// Open (creating the file, its parent folder and the schema as needed, migrating an older schema) and
    /// start the writer. Audit events are signed with `audit_key` when there is one.
    pub fn open_keyed(
        path: &Path,
        sync: Synchronous,
        max_batch: usize,
        metrics: Arc<Metrics>,
        audit_key: Option<AuditKey>,
    ) -> Result<Self, StoreError> {
        let open_err = |e: String| StoreError::Open { path: path.display().to_string(), reason: e };
        create_private(path).map_err(|e| open_err(format!("cannot create it: {e}")))?;
        let mut writer_conn = open_connection(path, sync)?;
        migrate(&mut writer_conn).map_err(|e| match e {
            StoreError::SchemaTooNew { .. } => e,
            other => open_err(other.to_string()),
        })?;
        let audit_key = audit_key.map(Arc::new);
        let writer_key = audit_key.clone();
        // Checkpoints (copying the WAL into the database, with its fsyncs) run on their own thread so
        // that they never stall a group commit.
        writer_conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| open_err(e.to_string()))?;
        writer_conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES as i64).map_err(|e| open_err(e.to_string()))?;
        let reader = open_connection(path, sync)?;
        let checkpoint_conn = open_connection(path, sync)?;
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 8);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let writer = std::thread::Builder::new()
            .name("agentgate-store".into())
            .spawn(move || writer_loop(writer_conn, &wal, rx, max_batch.max(1), &metrics, writer_key))
            .map_err(|e| open_err(e.to_string()))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stopping);
        let checkpointer = std::thread::Builder::new()
            .name("agentgate-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoint_conn, &stop_flag))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            jobs: tx,
            reader: Arc::new(Mutex::new(reader)),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            stopping,
            audit_key,
            head: Arc::new(Mutex::new(None)),
            replica: super::new_replica_id().into(),
        })
    }

    /// Run `f` inside the writer's next transaction; answered after it commits.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &mut WriterState) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job = Job::Write(Box::new(move |t, st| {
            let r = f(t, st).map_err(db_err);
            let ok = r.is_ok();
            let deliver: Deliver = Box::new(move |failed: Option<&StoreError>| {
                let _ = tx.send(match failed {
                    Some(e) => Err(e.clone()),
                    None => r,
                });
            });
            (deliver, ok)
        }));
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static) -> Result<T, StoreError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn).map_err(db_err)
        })
        .await
        .map_err(|e| StoreError::Database(format!("a store read panicked: {e}")))?
    }
}

/// WAL size above which the writer itself checkpoints between two batches. Under sustained writes
/// the background (passive) checkpoints never see the end of the log, so the log could only grow; a
/// checkpoint run by the writer, with no transaction open, reaches the end, and the next commit then
/// starts the log over. The background checkpoints keep what is left to copy small.
const WAL_LIMIT_BYTES: u64 = 128 * 1024 * 1024;

/// Run a checkpoint; returns the WAL's frame count (`None` if it failed).
fn checkpoint(conn: &Connection, mode: &str) -> Option<i64> {
    match conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(1)) {
        Ok(frames) => Some(frames),
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed");
            None
        }
    }
}

/// Shortest and longest pause between two background checkpoints.
const CHECKPOINT_BUSY: Duration = Duration::from_millis(5);
const CHECKPOINT_IDLE: Duration = Duration::from_millis(200);

/// Copy the WAL into the database in small, frequent passive steps (they never block the writer): every
/// 5 ms while the log is growing, backing off to every 200 ms when nothing changes. Small steps keep each
/// checkpoint's I/O (and its fsync) short, which is what keeps commit latency flat under load (measured on
/// this project's 2-core machine: p99 about 4 ms with 5-10 ms steps, about 14 ms with 100 ms steps).
/// The log is truncated when the store closes.
fn checkpoint_loop(conn: &Connection, stopping: &AtomicBool) {
    let mut pause = CHECKPOINT_IDLE;
    let mut last_frames = -1;
    while !stopping.load(Ordering::Acquire) {
        std::thread::sleep(pause);
        let frames = checkpoint(conn, "PASSIVE").unwrap_or(last_frames);
        pause = if frames == last_frames { (pause * 2).min(CHECKPOINT_IDLE) } else { CHECKPOINT_BUSY };
        last_frames = frames;
    }
    let _ = checkpoint(conn, "TRUNCATE");
}

fn writer_loop(
    mut conn: Connection,
    wal: &Path,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    metrics: &Metrics,
    audit_key: Option<Arc<AuditKey>>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut state = WriterState::new(audit_key);
    let mut batches = 0u32;
    loop {
        batches = batches.wrapping_add(1);
        if batches.is_multiple_of(64) && std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_LIMIT_BYTES) {
            let _ = checkpoint(&conn, "PASSIVE");
        }
        let Some(first) = rx.blocking_recv() else { return };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let stop = run_batch(&mut conn, &mut batch, &mut state, metrics);
        if stop {
            return;
        }
    }
}

/// What the writer last wrote for each conversation reference, so that an unchanged reference costs
/// no write. Updated only after the transaction that wrote it committed.
#[derive(Default)]
struct RefCache {
    written: HashMap<(AppId, ConversationId), u64>,
}

impl RefCache {
    const MAX: usize = 100_000;

    fn fingerprint(r: &ConversationRef) -> u64 {
        let mut h = DefaultHasher::new();
        (
            &r.tenant_id,
            &r.service_url,
            &r.channel_id,
            &r.conversation_type,
            &r.user_id,
            &r.user_aad_object_id,
            &r.bot_id,
            r.usable,
            &r.agentic,
            r.authenticated,
        )
            .hash(&mut h);
        h.finish()
    }

    fn unchanged(&self, r: &ConversationRef) -> bool {
        self.written.get(&(r.bot_app_id.clone(), r.conversation_id.clone())) == Some(&Self::fingerprint(r))
    }

    /// The reference was changed outside the inbound path: write the next inbound one in full.
    fn forget(&mut self, bot: &str, conversation: &str) {
        self.written.remove(&(AppId::new(bot), ConversationId::from(conversation)));
    }

    fn remember(&mut self, written: Vec<((AppId, ConversationId), u64)>) {
        if self.written.len() + written.len() > Self::MAX {
            self.written.clear();
        }
        self.written.extend(written);
    }
}

/// Run every job of the batch in one transaction, each in its own savepoint (a job that fails leaves
/// nothing behind, and the others still commit); answer each caller after the commit.
fn run_batch(conn: &mut Connection, batch: &mut Vec<Job>, state: &mut WriterState, metrics: &Metrics) -> bool {
    let started = Instant::now();
    let mut stop = false;
    state.refs_written.clear();
    state.activities = 0;
    let mut delivers: Vec<Deliver> = Vec::with_capacity(batch.len());
    let tx_result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in batch.drain(..) {
            match job {
                Job::Write(f) => {
                    tx.prepare_cached("SAVEPOINT job")?.execute([])?;
                    let (deliver, ok) = f(&tx, state);
                    let end = if ok { "RELEASE job" } else { "ROLLBACK TO job" };
                    tx.prepare_cached(end)?.execute([])?;
                    if !ok {
                        tx.prepare_cached("RELEASE job")?.execute([])?;
                    }
                    delivers.push(deliver);
                }
                Job::Stop => stop = true,
            }
        }
        tx.commit()
    })();
    let failed = tx_result.err().map(db_err);
    if let Some(e) = &failed {
        tracing::error!(error = %e, "store transaction failed; every activity in it was refused");
    } else {
        state.refs.remember(std::mem::take(&mut state.refs_written));
        if state.activities > 0 {
            metrics.commit(started.elapsed(), state.activities);
        }
    }
    for deliver in delivers {
        deliver(failed.as_ref());
    }
    stop
}

fn commit_one(tx: &rusqlite::Transaction<'_>, r: &InboundRecord, write_ref: bool) -> rusqlite::Result<CommitOutcome> {
    let fresh = tx
        .prepare_cached(
            "INSERT INTO dedupe (conversation_id, activity_id, bot_app_id, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (conversation_id, activity_id, bot_app_id) DO NOTHING",
        )?
        .execute(params![r.conversation_id, r.activity_id, r.bot_app_id, r.dedupe_expires_at_ms])?;
    if fresh == 0 {
        return Ok(CommitOutcome::Duplicate);
    }
    if write_ref {
        upsert_ref(tx, &r.reference)?;
    }
    tx.prepare_cached(
        "INSERT INTO inbox (bot_app_id, tenant_id, conversation_id, activity_id, activity_type, auth, received_at_ms, body, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        r.bot_app_id,
        r.tenant_id,
        r.conversation_id,
        r.activity_id,
        r.activity_type,
        r.auth.as_str(),
        r.received_at_ms,
        r.body,
        r.state.as_str()
    ])?;
    Ok(CommitOutcome::Accepted { inbox_id: tx.last_insert_rowid() })
}

fn upsert_ref(tx: &rusqlite::Transaction<'_>, c: &ConversationRef) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO conversation_refs (bot_app_id, conversation_id, tenant_id, service_url, channel_id, conversation_type,
                                        user_id, user_aad_object_id, bot_id, usable, updated_at_ms, agentic, authenticated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (bot_app_id, conversation_id) DO UPDATE SET
             tenant_id = excluded.tenant_id, service_url = excluded.service_url, channel_id = excluded.channel_id,
             conversation_type = COALESCE(excluded.conversation_type, conversation_refs.conversation_type),
             user_id = COALESCE(excluded.user_id, conversation_refs.user_id),
             user_aad_object_id = COALESCE(excluded.user_aad_object_id, conversation_refs.user_aad_object_id),
             bot_id = COALESCE(excluded.bot_id, conversation_refs.bot_id),
             usable = excluded.usable, updated_at_ms = excluded.updated_at_ms,
             agentic = COALESCE(excluded.agentic, conversation_refs.agentic),
             authenticated = excluded.authenticated
         WHERE excluded.authenticated OR NOT conversation_refs.authenticated",
    )?
    .execute(params![
        c.bot_app_id,
        c.conversation_id,
        c.tenant_id,
        c.service_url,
        c.channel_id,
        c.conversation_type,
        c.user_id,
        c.user_aad_object_id,
        c.bot_id,
        c.usable,
        c.updated_at_ms,
        c.agentic.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default()),
        c.authenticated
    ])?;
    Ok(())
}

fn ack(tx: &rusqlite::Transaction<'_>, ids: &[i64], now: i64) -> rusqlite::Result<u64> {
    let mut stmt = tx.prepare_cached("UPDATE inbox SET state = 'acked', acked_at_ms = ?2 WHERE id = ?1 AND state = 'pending'")?;
    let mut n = 0;
    for id in ids {
        n += stmt.execute(params![id, now])? as u64;
    }
    Ok(n)
}

const INBOX_COLUMNS: &str = "id, bot_app_id, tenant_id, conversation_id, activity_id, activity_type, auth, state, received_at_ms, body";

fn inbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InboxItem> {
    Ok(InboxItem {
        id: r.get(0)?,
        bot_app_id: r.get(1)?,
        tenant_id: r.get(2)?,
        conversation_id: r.get(3)?,
        activity_id: r.get(4)?,
        activity_type: r.get(5)?,
        auth: crate::ids::AuthKind::from_stored(&r.get::<_, String>(6)?),
        state: {
            let name: String = r.get(7)?;
            super::InboxState::parse(&name).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, format!("unknown inbox state `{name}`").into())
            })?
        },
        received_at_ms: r.get(8)?,
        body: r.get(9)?,
    })
}

const REF_COLUMNS: &str = "bot_app_id, conversation_id, tenant_id, service_url, channel_id, conversation_type, user_id, user_aad_object_id, bot_id, usable, updated_at_ms, agentic, authenticated";

fn ref_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationRef> {
    Ok(ConversationRef {
        bot_app_id: r.get(0)?,
        conversation_id: r.get(1)?,
        tenant_id: r.get(2)?,
        service_url: r.get(3)?,
        channel_id: r.get(4)?,
        conversation_type: r.get(5)?,
        user_id: r.get(6)?,
        user_aad_object_id: r.get(7)?,
        bot_id: r.get(8)?,
        usable: r.get(9)?,
        updated_at_ms: r.get(10)?,
        // An agentic recipient that cannot be read fails the read: replies must never fall back to acting
        // as the bot in a conversation that was answered as the Agent User.
        agentic: match r.get::<_, Option<String>>(11)? {
            Some(json) => Some(
                serde_json::from_str(&json)
                    .map_err(|e| rusqlite::Error::FromSqlConversionFailure(11, rusqlite::types::Type::Text, Box::new(e)))?,
            ),
            None => None,
        },
        authenticated: r.get(12)?,
    })
}

const CLAIM_COLUMNS: &str = "kind, bot_app_id, tenant_id, conversation_id, session, client, scope, until_ms";

/// A claim row; an unreadable one is an `Err` inside (a row of a kind this version does not know).
fn claim_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Claim, StoreError>> {
    let (kind, bot, tenant, conversation): (String, String, Option<String>, Option<String>) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    let (session, client, scope, until_ms) = (r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?);
    Ok(ClaimTarget::from_columns(&kind, bot, tenant, conversation).map(|target| Claim { target, session, client, scope, until_ms }))
}

const AUDIT_COLUMNS: &str = "id, at_ms, actor, identity, action, target, outcome, detail, prev_hash, hash";

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.get(0)?,
        event: AuditEvent {
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            identity: Identity::from(r.get::<_, String>(3)?),
            action: r.get(4)?,
            target: Target::from(r.get::<_, String>(5)?),
            outcome: r.get(6)?,
            detail: r.get(7)?,
        },
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

const OUTBOX_COLUMNS: &str = "id, bot_app_id, tenant_id, conversation_id, service_url, op, requested_by, state, attempts, created_at_ms, next_attempt_at_ms, result_id, last_error, error_class, lease_owner, lease_until_ms";

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxItem> {
    let op_json: String = r.get(5)?;
    let op: OutboundOp = serde_json::from_str(&op_json)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e)))?;
    Ok(OutboxItem {
        id: r.get(0)?,
        bot_app_id: r.get(1)?,
        tenant_id: r.get(2)?,
        conversation_id: r.get(3)?,
        service_url: r.get(4)?,
        op,
        requested_by: r.get(6)?,
        state: OutboxState::parse(&r.get::<_, String>(7)?),
        attempts: r.get(8)?,
        created_at_ms: r.get(9)?,
        next_attempt_at_ms: r.get(10)?,
        result_id: r.get(11)?,
        last_error: r.get(12)?,
        error_class: r.get::<_, Option<String>>(13)?.as_deref().and_then(super::ErrorClass::parse),
        lease: r
            .get::<_, Option<String>>(14)?
            .map(|owner| r.get::<_, Option<i64>>(15).map(|until_ms| Lease { owner, until_ms: until_ms.unwrap_or(0) }))
            .transpose()?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue_outbound(&self, item: NewOutbound) -> Result<i64, StoreError> {
        let op_json = serde_json::to_string(&item.op).map_err(|e| StoreError::Database(format!("the outbox op cannot be written: {e}")))?;
        self.write(move |tx, st| {
            st.audit(
                tx,
                &AuditEvent::new(
                    item.now_ms,
                    item.requested_by.as_str(),
                    Identity::bot(&item.bot_app_id),
                    item.op.name(),
                    Target::conversation(&item.tenant_id, &item.conversation_id),
                    "queued",
                ),
            )?;
            tx.prepare_cached(
                "INSERT INTO outbox (bot_app_id, tenant_id, conversation_id, service_url, op, requested_by, state, created_at_ms, updated_at_ms, next_attempt_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?7)",
            )?
            .execute(params![item.bot_app_id, item.tenant_id, item.conversation_id, item.service_url, op_json, item.requested_by, item.now_ms])?;
            Ok(tx.last_insert_rowid())
        })
        .await
    }

    async fn due_outbound(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let sql = format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox o WHERE state = 'pending' AND next_attempt_at_ms <= ?1
                   AND id = (SELECT MIN(id) FROM outbox p WHERE p.state IN ('pending', 'sending') AND p.bot_app_id = o.bot_app_id AND p.conversation_id = o.conversation_id)
                 ORDER BY id LIMIT ?2"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![now_ms, limit], outbox_row)?;
            rows.collect()
        })
        .await
    }

    async fn begin_outbound_attempt(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        // Writes are serialized (one writer per process, `BEGIN IMMEDIATE` across processes): the checks and
        // the claim are one step.
        let owner = Arc::clone(&self.replica);
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached(
                    "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at_ms = ?2, lease_owner = ?3, lease_until_ms = ?4
                     WHERE id = ?1 AND state = 'pending' AND next_attempt_at_ms <= ?2
                       AND id = (SELECT MIN(id) FROM outbox p WHERE p.state IN ('pending', 'sending')
                                 AND p.bot_app_id = outbox.bot_app_id AND p.conversation_id = outbox.conversation_id)",
                )?
                .execute(params![id, now_ms, &*owner, now_ms.saturating_add(OUTBOX_LEASE_MS)])?;
            Ok(n == 1)
        })
        .await
    }

    async fn renew_outbound_lease(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        let owner = Arc::clone(&self.replica);
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached("UPDATE outbox SET lease_until_ms = ?3 WHERE id = ?1 AND state = 'sending' AND lease_owner = ?2")?
                .execute(params![id, &*owner, now_ms.saturating_add(OUTBOX_LEASE_MS)])?;
            Ok(n == 1)
        })
        .await
    }

    async fn finish_outbound(&self, id: i64, finish: Finish, event: AuditEvent) -> Result<(), StoreError> {
        let owner = Arc::clone(&self.replica);
        let changed = self
            .write(move |tx, st| {
                st.audit(tx, &event)?;
                let now = event.at_ms;
                let mut stmt = tx.prepare_cached(
                    "UPDATE outbox SET state = ?2, result_id = COALESCE(?3, result_id), last_error = ?4, error_class = ?5,
                                      next_attempt_at_ms = ?6, updated_at_ms = ?7, lease_owner = NULL, lease_until_ms = NULL
                     WHERE id = ?1 AND (state = 'pending' OR (state = 'sending' AND lease_owner = ?8))",
                )?;
                let none = None::<String>;
                let owner = &*owner;
                let n = match finish {
                    Finish::Delivered { result_id } => stmt.execute(params![id, "delivered", result_id, none, none, now, now, owner])?,
                    Finish::Retry { at_ms, error } => {
                        stmt.execute(params![id, "pending", none, error.message, error.class.as_str(), at_ms, now, owner])?
                    }
                    Finish::Uncertain { error } => {
                        stmt.execute(params![id, "uncertain", none, error.message, error.class.as_str(), now, now, owner])?
                    }
                    Finish::Dead { error } => {
                        stmt.execute(params![id, "dead", none, error.message, error.class.as_str(), now, now, owner])?
                    }
                };
                Ok(n)
            })
            .await?;
        if changed == 0 {
            tracing::warn!(
                id,
                "outbox entry no longer held by this replica (its lease ran out and it was taken over); outcome kept in the audit log only"
            );
        }
        Ok(())
    }

    async fn recover_outbound(&self, now_ms: i64) -> Result<(u64, u64), StoreError> {
        self.write(move |tx, st| {
            let stuck: Vec<OutboxItem> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'sending' AND (lease_until_ms IS NULL OR lease_until_ms < ?1) ORDER BY id"
                ))?;
                let rows = stmt.query_map([now_ms], outbox_row)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let (mut requeued, mut uncertain) = (0, 0);
            for item in stuck {
                let create = item.op.is_create();
                let state = if create { "uncertain" } else { "pending" };
                tx.execute(
                    "UPDATE outbox SET state = ?2, last_error = 'the process stopped while the request was in flight',
                                      error_class = 'interrupted', updated_at_ms = ?3, lease_owner = NULL, lease_until_ms = NULL WHERE id = ?1",
                    params![item.id, state, now_ms],
                )?;
                st.audit(
                    tx,
                    &AuditEvent::new(
                        now_ms,
                        "agentgate",
                        Identity::bot(&item.bot_app_id),
                        item.op.name(),
                        Target::conversation(&item.tenant_id, &item.conversation_id),
                        if create { "uncertain" } else { "requeued" },
                    )
                    .with_detail(format!("outbox #{}: interrupted by a restart", item.id)),
                )?;
                if create {
                    uncertain += 1;
                } else {
                    requeued += 1;
                }
            }
            Ok((requeued, uncertain))
        })
        .await
    }

    async fn outbox(&self, id: Option<i64>, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE (?1 IS NULL OR id = ?1) ORDER BY id LIMIT ?2");
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![id, limit], outbox_row)?;
            rows.collect()
        })
        .await
    }

    async fn audit_events(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"))?;
            let rows = stmt.query_map(params![limit], audit_row)?;
            rows.collect()
        })
        .await
    }

    async fn verify_audit(&self, expect: Option<&AuditHead>) -> Result<Result<Verified, Broken>, StoreError> {
        let (key, expect) = (self.audit_key.clone(), expect.cloned());
        self.read(move |c| {
            // One snapshot for the rows and the sequence.
            let snapshot = c.unchecked_transaction()?;
            let mut verifier = audit::ChainVerifier::new(key.as_deref(), expect.as_ref());
            {
                let mut stmt = snapshot.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"))?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    if let Err(broken) = verifier.push(&audit_row(row)?) {
                        return Ok(Err(broken));
                    }
                }
            }
            let highest: i64 =
                snapshot.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'audit'", [], |r| r.get(0)).optional()?.unwrap_or(0);
            Ok(verifier.finish(highest))
        })
        .await
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let cache = Arc::clone(&self.head);
        self.read(move |c| {
            let snapshot = c.unchecked_transaction()?;
            let mut known = cache.lock().unwrap_or_else(PoisonError::into_inner);
            let last: Option<(i64, String)> = snapshot
                .prepare_cached("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let head = match last {
                None => AuditHead::default(),
                Some((last_id, hash)) => {
                    // Count only the events after the head computed last time (the chain only grows).
                    let (base, after) = match known.as_ref() {
                        Some(k) if k.last_id > 0 && k.last_id <= last_id => (k.count, k.last_id),
                        _ => (0, 0),
                    };
                    let newer: i64 = snapshot
                        .prepare_cached("SELECT count(*) FROM audit WHERE id > ?1 AND id <= ?2")?
                        .query_row(params![after, last_id], |r| r.get(0))?;
                    AuditHead { count: base + newer.unsigned_abs(), last_id, hash }
                }
            };
            *known = Some(head.clone());
            Ok(head)
        })
        .await
    }

    async fn commit_inbound(&self, record: InboundRecord) -> Result<CommitOutcome, StoreError> {
        self.write(move |tx, st| {
            let write_ref = !st.refs.unchanged(&record.reference);
            let outcome = commit_one(tx, &record, write_ref)?;
            if matches!(outcome, CommitOutcome::Accepted { .. }) {
                st.activities += 1;
                if write_ref {
                    let c = &record.reference;
                    st.refs_written.push(((c.bot_app_id.clone(), c.conversation_id.clone()), RefCache::fingerprint(c)));
                }
            }
            Ok(outcome)
        })
        .await
    }

    async fn commit_amendment(&self, record: InboundRecord, amendment: Amendment) -> Result<Amended, StoreError> {
        self.write(move |tx, st| {
            let mut record = record;
            // A duplicate writes nothing, not even the amendment (see the trait).
            let seen = tx
                .prepare_cached("SELECT 1 FROM dedupe WHERE conversation_id = ?1 AND activity_id = ?2 AND bot_app_id = ?3")?
                .query_row(params![record.conversation_id, record.activity_id, record.bot_app_id], |_| Ok(()))
                .optional()?
                .is_some();
            if seen {
                return Ok(Amended { outcome: CommitOutcome::Duplicate, amended: None, original: None });
            }
            let original = tx
                .prepare_cached(
                    "SELECT id, state FROM inbox
                     WHERE bot_app_id = ?1 AND conversation_id = ?2 AND activity_id = ?3 AND activity_type = 'message'
                       AND (?4 OR auth = 'dev-anonymous')
                     ORDER BY id DESC LIMIT 1",
                )?
                .query_row(
                    params![record.bot_app_id, record.conversation_id, amendment.message_id, record.auth.is_authenticated()],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?
                .map(|(id, state)| (id, InboxState::parse(&state).unwrap_or(InboxState::Consumed)));
            let mut amended = None;
            match original {
                Some((id, InboxState::Pending)) => {
                    tx.prepare_cached("UPDATE inbox SET body = ?1, state = CASE WHEN ?2 THEN 'withdrawn' ELSE state END WHERE id = ?3")?
                        .execute(params![amendment.body, amendment.withdraw, id])?;
                    amended = Some(id);
                    record.state = amendment.state_if_amended;
                }
                Some((_, InboxState::Acked | InboxState::Withdrawn)) => record.state = amendment.state_if_delivered,
                _ => {}
            }
            let write_ref = !st.refs.unchanged(&record.reference);
            let outcome = commit_one(tx, &record, write_ref)?;
            if matches!(outcome, CommitOutcome::Accepted { .. }) {
                st.activities += 1;
                if write_ref {
                    let c = &record.reference;
                    st.refs_written.push(((c.bot_app_id.clone(), c.conversation_id.clone()), RefCache::fingerprint(c)));
                }
            }
            Ok(Amended { outcome, amended, original })
        })
        .await
    }

    async fn pending_inbox(&self, bot: Option<&str>, limit: usize) -> Result<Vec<InboxItem>, StoreError> {
        let bot = bot.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, bot_app_id, tenant_id, conversation_id, activity_id, activity_type, auth, state, received_at_ms, body
                 FROM inbox WHERE state = 'pending' AND (?1 IS NULL OR bot_app_id = ?1) ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![bot, limit], inbox_row)?;
            rows.collect()
        })
        .await
    }

    async fn inbox_after(&self, after_id: i64, limit: usize) -> Result<Vec<InboxItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE state = 'pending' AND id > ?1 ORDER BY id LIMIT ?2"))?;
            let rows = stmt.query_map(params![after_id, limit], inbox_row)?;
            rows.collect()
        })
        .await
    }

    async fn inbox_by_ids(&self, ids: &[i64]) -> Result<Vec<InboxItem>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE id = ?1"))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(item) = stmt.query_row(params![id], inbox_row).optional()? {
                    out.push(item);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn conversations(&self, limit: usize) -> Result<Vec<ConversationRef>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {REF_COLUMNS} FROM conversation_refs ORDER BY updated_at_ms DESC LIMIT ?1"))?;
            let rows = stmt.query_map(params![limit], ref_row)?;
            rows.collect()
        })
        .await
    }

    async fn personal_conversation(&self, bot_app_id: &str, aad_object_id: &str) -> Result<Option<ConversationRef>, StoreError> {
        let (bot, aad) = (bot_app_id.to_owned(), aad_object_id.to_ascii_lowercase());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {REF_COLUMNS} FROM conversation_refs
                 WHERE bot_app_id = ?1 AND lower(user_aad_object_id) = ?2 AND conversation_type = 'personal' AND usable AND channel_id <> 'graph'
                 ORDER BY updated_at_ms DESC LIMIT 1"
            ))?
            .query_row(params![bot, aad], ref_row)
            .optional()
        })
        .await
    }

    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.write(move |tx, st| st.audit(tx, &event)).await
    }

    async fn ack_inbox(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        let now = now_ms();
        self.write(move |tx, _| ack(tx, &ids, now)).await
    }

    async fn conversation_ref(&self, bot_app_id: &str, conversation_id: &str) -> Result<Option<ConversationRef>, StoreError> {
        let (bot, conv) = (bot_app_id.to_owned(), conversation_id.to_owned());
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {REF_COLUMNS} FROM conversation_refs WHERE bot_app_id = ?1 AND conversation_id = ?2"))?
                .query_row(params![bot, conv], ref_row)
                .optional()
        })
        .await
    }

    async fn upsert_conversation_ref(&self, reference: ConversationRef) -> Result<(), StoreError> {
        self.write(move |tx, st| {
            st.refs.forget(&reference.bot_app_id, &reference.conversation_id);
            upsert_ref(tx, &reference)
        })
        .await
    }

    async fn set_conversation_usable(&self, bot_app_id: &str, conversation_id: &str, usable: bool) -> Result<(), StoreError> {
        let (bot, conv) = (bot_app_id.to_owned(), conversation_id.to_owned());
        self.write(move |tx, st| {
            st.refs.forget(&bot, &conv);
            tx.prepare_cached("UPDATE conversation_refs SET usable = ?3 WHERE bot_app_id = ?1 AND conversation_id = ?2")?
                .execute(params![bot, conv, usable])?;
            Ok(())
        })
        .await
    }

    async fn tenant_service_url(&self, bot_app_id: &str, tenant_id: &str) -> Result<Option<String>, StoreError> {
        let (bot, tenant) = (bot_app_id.to_owned(), tenant_id.to_owned());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT service_url FROM conversation_refs WHERE bot_app_id = ?1 AND lower(tenant_id) = lower(?2) AND usable
                 AND channel_id NOT IN ('graph', 'mail') ORDER BY updated_at_ms DESC LIMIT 1",
            )?
            .query_row(params![bot, tenant], |r| r.get(0))
            .optional()
        })
        .await
    }

    async fn provisioning(&self, key: &str) -> Result<Option<ProvisioningRecord>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT key, state, updated_at_ms FROM agent_id_provisioning WHERE key = ?1")?
                .query_row(params![key], |r| Ok(ProvisioningRecord { key: r.get(0)?, state: r.get(1)?, updated_at_ms: r.get(2)? }))
                .optional()
        })
        .await
    }

    async fn save_provisioning(&self, record: ProvisioningRecord) -> Result<(), StoreError> {
        self.write(move |tx, _| {
            tx.prepare_cached(
                "INSERT INTO agent_id_provisioning (key, state, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET state = excluded.state, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![record.key, record.state, record.updated_at_ms])
            .map(|_| ())
        })
        .await
    }

    async fn delete_provisioning(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(move |tx, _| tx.prepare_cached("DELETE FROM agent_id_provisioning WHERE key = ?1")?.execute(params![key]).map(|n| n > 0))
            .await
    }

    async fn record_welcome(&self, bot_app_id: &str, conversation_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let (bot, conversation) = (bot_app_id.to_ascii_lowercase(), conversation_id.to_owned());
        self.write(move |tx, _| {
            tx.prepare_cached(
                "INSERT INTO welcomes (bot_app_id, conversation_id, welcomed_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![bot, conversation, now_ms])
            .map(|n| n == 1)
        })
        .await
    }

    async fn welcomed_at(&self, bot_app_id: &str, conversation_id: &str) -> Result<Option<i64>, StoreError> {
        let (bot, conversation) = (bot_app_id.to_ascii_lowercase(), conversation_id.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT welcomed_at_ms FROM welcomes WHERE bot_app_id = ?1 AND conversation_id = ?2")?
                .query_row(params![bot, conversation], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn create_file_offer(&self, offer: &FileOffer) -> Result<(), StoreError> {
        let offer = offer.clone();
        self.write(move |tx, _| insert_offer(tx, &offer, false).map(|_| ())).await
    }

    async fn file_offer(&self, id: &str) -> Result<Option<FileOffer>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {OFFER_COLUMNS} FROM file_offers WHERE id = ?1"))?
                .query_row(params![id], offer_row)
                .optional()
        })
        .await
    }

    async fn transition_file_offer(
        &self,
        id: &str,
        from: OfferState,
        to: OfferState,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        offers::check_transition(from, to)?;
        let (id, detail) = (id.to_owned(), detail.map(str::to_owned));
        self.write(move |tx, _| {
            tx.prepare_cached("UPDATE file_offers SET state = ?3, detail = ?4, updated_at_ms = ?5 WHERE id = ?1 AND state = ?2")?
                .execute(params![id, from.as_str(), to.as_str(), detail, now_ms])
                .map(|n| n == 1)
        })
        .await
    }

    async fn delete_file_offer(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |tx, _| tx.prepare_cached("DELETE FROM file_offers WHERE id = ?1")?.execute(params![id]).map(|n| n > 0)).await
    }

    async fn purge_dedupe(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.write(move |tx, _| {
            tx.prepare_cached("DELETE FROM dedupe WHERE expires_at_ms < ?1")?.execute(params![now_ms]).map(|n| n as u64)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            return Err(StoreError::Closed);
        }
        self.read(|c| c.prepare_cached("SELECT 1")?.query_row([], |r| r.get::<_, i64>(0))).await.map(|_| ())
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(|c| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))).await
    }

    async fn put_graph_subscription(&self, sub: GraphSubscription) -> Result<(), StoreError> {
        use secrecy::ExposeSecret as _;
        self.write(move |tx, _| {
            tx.prepare_cached(
                "INSERT INTO graph_subscriptions (subscription_id, bot_app_id, resource, client_state, expires_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (subscription_id) DO UPDATE SET bot_app_id = excluded.bot_app_id, resource = excluded.resource,
                     client_state = excluded.client_state, expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                sub.subscription_id,
                sub.bot_app_id,
                sub.resource,
                sub.client_state.expose_secret(),
                sub.expires_at_ms,
                sub.updated_at_ms
            ])?;
            Ok(())
        })
        .await
    }

    async fn graph_subscriptions(&self, bot: Option<&str>) -> Result<Vec<GraphSubscription>, StoreError> {
        let bot = bot.map(str::to_ascii_lowercase);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT subscription_id, bot_app_id, resource, client_state, expires_at_ms, updated_at_ms FROM graph_subscriptions
                 WHERE ?1 IS NULL OR lower(bot_app_id) = ?1 ORDER BY subscription_id",
            )?;
            let rows = stmt.query_map(params![bot], |r| {
                Ok(GraphSubscription {
                    subscription_id: r.get(0)?,
                    bot_app_id: r.get(1)?,
                    resource: r.get(2)?,
                    client_state: secrecy::SecretString::from(r.get::<_, String>(3)?),
                    expires_at_ms: r.get(4)?,
                    updated_at_ms: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_graph_subscription(&self, subscription_id: &str) -> Result<(), StoreError> {
        let id = subscription_id.to_owned();
        self.write(move |tx, _| {
            tx.prepare_cached("DELETE FROM graph_subscriptions WHERE subscription_id = ?1")?.execute(params![id])?;
            Ok(())
        })
        .await
    }

    async fn record_graph_notifications(&self, items: Vec<NewGraphNotification>) -> Result<Vec<i64>, StoreError> {
        self.write(move |tx, _| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO graph_notifications (subscription_id, bot_app_id, event, resource, received_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut ids = Vec::with_capacity(items.len());
            for n in &items {
                stmt.execute(params![n.subscription_id, n.bot_app_id, n.event, n.resource, n.received_at_ms])?;
                ids.push(tx.last_insert_rowid());
            }
            Ok(ids)
        })
        .await
    }

    async fn pending_graph_notifications(&self, limit: usize) -> Result<Vec<GraphNotification>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, subscription_id, bot_app_id, event, resource, received_at_ms FROM graph_notifications ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| {
                Ok(GraphNotification {
                    id: r.get(0)?,
                    subscription_id: r.get(1)?,
                    bot_app_id: r.get(2)?,
                    event: r.get(3)?,
                    resource: r.get(4)?,
                    received_at_ms: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn claim_graph_notifications(&self, limit: usize, now_ms: i64) -> Result<Vec<GraphNotification>, StoreError> {
        let (owner, limit) = (Arc::clone(&self.replica), i64::try_from(limit).unwrap_or(i64::MAX));
        // Writes are serialized (one writer per process, `BEGIN IMMEDIATE` across processes): the choice and
        // the claim are one step.
        self.write(move |tx, _| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, subscription_id, bot_app_id, event, resource, received_at_ms FROM graph_notifications
                 WHERE claimed_by IS NULL OR claimed_by = ?1 OR claim_until_ms IS NULL OR claim_until_ms < ?2
                 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![&*owner, now_ms, limit], |r| {
                Ok(GraphNotification {
                    id: r.get(0)?,
                    subscription_id: r.get(1)?,
                    bot_app_id: r.get(2)?,
                    event: r.get(3)?,
                    resource: r.get(4)?,
                    received_at_ms: r.get(5)?,
                })
            })?;
            let claimed: Vec<GraphNotification> = rows.collect::<rusqlite::Result<_>>()?;
            let mut claim = tx.prepare_cached("UPDATE graph_notifications SET claimed_by = ?2, claim_until_ms = ?3 WHERE id = ?1")?;
            for n in &claimed {
                claim.execute(params![n.id, &*owner, now_ms.saturating_add(GRAPH_CLAIM_MS)])?;
            }
            Ok(claimed)
        })
        .await
    }

    async fn take_graph_lease(&self, name: &str, now_ms: i64, ttl_ms: i64) -> Result<bool, StoreError> {
        let (owner, name) = (Arc::clone(&self.replica), name.to_owned());
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached(
                    "INSERT INTO graph_leases (name, owner, until_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
                     WHERE graph_leases.owner = excluded.owner OR graph_leases.until_ms < ?4",
                )?
                .execute(params![name, &*owner, now_ms.saturating_add(ttl_ms), now_ms])?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_graph_lease(&self, name: &str) -> Result<(), StoreError> {
        let (owner, name) = (Arc::clone(&self.replica), name.to_owned());
        self.write(move |tx, _| {
            tx.prepare_cached("DELETE FROM graph_leases WHERE name = ?1 AND owner = ?2")?.execute(params![name, &*owner])?;
            Ok(())
        })
        .await
    }

    async fn commit_graph(&self, commit: GraphCommit) -> Result<Vec<CommitOutcome>, StoreError> {
        self.write(move |tx, st| {
            let mut outcomes = Vec::with_capacity(commit.records.len());
            let mut written = Vec::new();
            for record in &commit.records {
                let write_ref = !st.refs.unchanged(&record.reference);
                let outcome = commit_one(tx, record, write_ref)?;
                if matches!(outcome, CommitOutcome::Accepted { .. }) && write_ref {
                    let c = &record.reference;
                    written.push(((c.bot_app_id.clone(), c.conversation_id.clone()), RefCache::fingerprint(c)));
                }
                outcomes.push(outcome);
            }
            for c in &commit.cursors {
                tx.prepare_cached(
                    "INSERT INTO graph_cursors (bot_app_id, chat_id, modified_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (bot_app_id, chat_id) DO UPDATE SET modified_ms = MAX(modified_ms, excluded.modified_ms)",
                )?
                .execute(params![c.bot_app_id, c.chat_id, c.modified_ms])?;
            }
            if let Some(m) = &commit.mail {
                tx.prepare_cached(
                    "INSERT INTO mail_cursors (bot_app_id, link, since_ms, updated_at_ms) VALUES (lower(?1), ?2, ?3, ?4)
                     ON CONFLICT (bot_app_id) DO UPDATE SET link = excluded.link, since_ms = MAX(since_ms, excluded.since_ms),
                         updated_at_ms = excluded.updated_at_ms",
                )?
                .execute(params![m.bot_app_id, m.link, m.since_ms, m.updated_at_ms])?;
            }
            if let Some(id) = commit.done {
                tx.prepare_cached("DELETE FROM graph_notifications WHERE id = ?1")?.execute(params![id])?;
            }
            st.activities += outcomes.iter().filter(|o| matches!(o, CommitOutcome::Accepted { .. })).count();
            st.refs_written.extend(written);
            Ok(outcomes)
        })
        .await
    }

    async fn graph_cursors(&self, bot_app_id: &str) -> Result<Vec<ChatCursor>, StoreError> {
        let bot = bot_app_id.to_ascii_lowercase();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT bot_app_id, chat_id, modified_ms FROM graph_cursors WHERE lower(bot_app_id) = ?1 ORDER BY chat_id",
            )?;
            let rows =
                stmt.query_map(params![bot], |r| Ok(ChatCursor { bot_app_id: r.get(0)?, chat_id: r.get(1)?, modified_ms: r.get(2)? }))?;
            rows.collect()
        })
        .await
    }

    async fn claim_conversations(
        &self,
        targets: &[ClaimTarget],
        holder: &ClaimHolder,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<ClaimOutcome, StoreError> {
        let (targets, holder) = (targets.to_vec(), holder.clone());
        let until = now_ms.saturating_add(ttl_ms);
        // Writes are serialized (one writer per process, `BEGIN IMMEDIATE` across processes): the check for
        // another session's live claims and the upserts are one step.
        self.write(move |tx, _| {
            tx.prepare_cached("DELETE FROM conversation_claims WHERE until_ms < ?1")?
                .execute(params![now_ms.saturating_sub(CLAIM_ROWS_KEPT_MS)])?;
            let mut held = Vec::new();
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {CLAIM_COLUMNS} FROM conversation_claims WHERE target = ?1 AND session <> ?2 AND until_ms >= ?3"
                ))?;
                for t in &targets {
                    match stmt.query_row(params![t.key(), holder.session, now_ms], claim_row).optional()? {
                        Some(Ok(c)) => held.push(c),
                        Some(Err(e)) => return Ok(Err(e)),
                        None => {}
                    }
                }
            }
            if !held.is_empty() {
                return Ok(Ok(ClaimOutcome::Held(held)));
            }
            let mut upsert = tx.prepare_cached(
                "INSERT INTO conversation_claims (target, kind, bot_app_id, tenant_id, conversation_id, session, client, scope, claimed_at_ms, until_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (target) DO UPDATE SET session = excluded.session, client = excluded.client, scope = excluded.scope,
                     claimed_at_ms = CASE WHEN conversation_claims.session = excluded.session THEN conversation_claims.claimed_at_ms
                                          ELSE excluded.claimed_at_ms END,
                     until_ms = excluded.until_ms
                 WHERE conversation_claims.session = excluded.session OR conversation_claims.until_ms < ?11",
            )?;
            let mut taken = Vec::with_capacity(targets.len());
            for t in &targets {
                let (kind, bot, tenant, conversation) = t.columns();
                let n = upsert.execute(params![
                    t.key(),
                    kind,
                    bot,
                    tenant,
                    conversation,
                    holder.session,
                    holder.client,
                    holder.scope,
                    now_ms,
                    until,
                    now_ms
                ])?;
                if n != 1 {
                    // Unreachable under the writer's serialization; never report a claim not taken.
                    return Err(rusqlite::Error::QueryReturnedNoRows);
                }
                taken.push(Claim {
                    target: t.clone(),
                    session: holder.session.clone(),
                    client: holder.client.clone(),
                    scope: holder.scope.clone(),
                    until_ms: until,
                });
            }
            Ok(Ok(ClaimOutcome::Taken(taken)))
        })
        .await?
    }

    async fn renew_claims(&self, session: &str, now_ms: i64, ttl_ms: i64) -> Result<u64, StoreError> {
        let session = session.to_owned();
        let until = now_ms.saturating_add(ttl_ms);
        self.write(move |tx, _| {
            tx.prepare_cached("UPDATE conversation_claims SET until_ms = ?3 WHERE session = ?1 AND until_ms >= ?2")?
                .execute(params![session, now_ms, until])
                .map(|n| n as u64)
        })
        .await
    }

    async fn mail_cursor(&self, bot_app_id: &str) -> Result<Option<MailCursor>, StoreError> {
        let bot = bot_app_id.to_ascii_lowercase();
        self.read(move |c| {
            c.prepare_cached("SELECT bot_app_id, link, since_ms, updated_at_ms FROM mail_cursors WHERE bot_app_id = ?1")?
                .query_row(params![bot], |r| {
                    Ok(MailCursor { bot_app_id: r.get(0)?, link: r.get(1)?, since_ms: r.get(2)?, updated_at_ms: r.get(3)? })
                })
                .optional()
        })
        .await
    }

    async fn release_claims(&self, session: &str, targets: Option<&[ClaimTarget]>) -> Result<u64, StoreError> {
        let (session, targets) = (session.to_owned(), targets.map(<[ClaimTarget]>::to_vec));
        self.write(move |tx, _| match targets {
            None => tx.prepare_cached("DELETE FROM conversation_claims WHERE session = ?1")?.execute(params![session]).map(|n| n as u64),
            Some(targets) => {
                let mut stmt = tx.prepare_cached("DELETE FROM conversation_claims WHERE target = ?1 AND session = ?2")?;
                let mut n = 0;
                for t in &targets {
                    n += stmt.execute(params![t.key(), session])? as u64;
                }
                Ok(n)
            }
        })
        .await
    }

    async fn live_claims(&self, now_ms: i64) -> Result<Vec<Claim>, StoreError> {
        let rows = self
            .read(move |c| {
                let mut stmt =
                    c.prepare_cached(&format!("SELECT {CLAIM_COLUMNS} FROM conversation_claims WHERE until_ms >= ?1 ORDER BY target"))?;
                let rows = stmt.query_map(params![now_ms], claim_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().collect()
    }

    async fn close(&self) {
        let _ = self.jobs.send(Job::Stop).await;
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(h) = writer {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.stopping.store(true, Ordering::Release);
        let checkpointer = self.checkpointer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(h) = checkpointer {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::{self, Backend};

    /// SQLite in a fresh folder (a sub-folder the store has to create).
    struct Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
        metrics: Arc<Metrics>,
    }

    fn sqlite() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/agentgate.db");
        Sqlite { _dir: dir, path, metrics: Arc::new(Metrics::default()) }
    }

    #[async_trait]
    impl Backend for Sqlite {
        async fn open(&self, key: Option<&str>) -> Arc<dyn Store> {
            let key = key.map(|k| AuditKey::new(k.as_bytes()).unwrap());
            Arc::new(SqliteStore::open_keyed(&self.path, Synchronous::Full, 64, Arc::clone(&self.metrics), key).unwrap())
        }
        fn metrics(&self) -> Arc<Metrics> {
            Arc::clone(&self.metrics)
        }
        fn execute(&self, sql: &str) {
            Connection::open(&self.path).unwrap().execute_batch(sql).unwrap();
        }
        fn refuse_inserts(&self, table: &str) {
            self.execute(&format!(
                "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{table} unavailable'); END;"
            ));
        }
        fn create_at_version(&self, version: i64) {
            std::fs::create_dir_all(self.path.parent().unwrap()).unwrap();
            let mut conn = Connection::open(&self.path).unwrap();
            for step in &MIGRATIONS[..usize::try_from(version).unwrap()] {
                let tx = conn.transaction().unwrap();
                step(&tx).unwrap();
                tx.commit().unwrap();
            }
            conn.pragma_update(None, "user_version", version).unwrap();
        }
    }

    crate::store_suite!(sqlite);

    /// One process per SQLite file: it shares no rate-limit windows, the outbox limits in memory.
    #[tokio::test]
    async fn sqlite_leaves_the_rate_limits_to_the_process() {
        let b = sqlite();
        let store = b.open(None).await;
        let request = crate::connector::throttle::shared_slots("bot", "t", "a:1", 1, None);
        assert_eq!(store.reserve_sends(&request).await.unwrap(), None);
        assert!(store.shared_approvals().is_none(), "approvals stay in the process too");
        store.close().await;
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn a_version_1_database_is_migrated_and_its_chain_still_verifies() {
        let b = sqlite();
        // A store as the first release left it: the version-1 schema (without `agentic`), a conversation,
        // two audit events hashed with the first release's rule.
        std::fs::create_dir_all(b.path.parent().unwrap()).unwrap();
        let conn = Connection::open(&b.path).unwrap();
        conn.execute_batch(V1_SCHEMA).unwrap();
        conn.execute_batch("PRAGMA user_version = 1;").unwrap();
        conn.execute(
            "INSERT INTO conversation_refs (bot_app_id, conversation_id, tenant_id, service_url, channel_id, usable, updated_at_ms)
             VALUES ('bot', 'c1', 't', 'https://smba.trafficmanager.net/amer/', 'msteams', 1, 1)",
            [],
        )
        .unwrap();
        let mut prev = String::new();
        for i in 1..=2 {
            let e = AuditEvent::new(i, "cli", Identity::bot("bot"), "send", Target::conversation("t", "c1"), "queued");
            let hash = audit::legacy_hash(&prev, &e);
            conn.execute(
                "INSERT INTO audit (at_ms, actor, identity, action, target, outcome, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, ?8)",
                params![e.at_ms, e.actor, e.identity.to_string(), e.action, e.target.to_string(), e.outcome, prev, hash],
            )
            .unwrap();
            prev = hash;
        }
        drop(conn);

        let store = b.open(None).await;
        assert_eq!(user_version(&b.path), SCHEMA_VERSION);
        let r = store.conversation_ref("bot", "c1").await.unwrap().unwrap();
        assert_eq!(r.agentic, None, "the column added by the migration is readable");
        // The chain goes on from the old events; they are checked with the old rule up to there.
        store.record_audit(AuditEvent::new(3, "cli", Identity::bot("bot"), "send", Target::Other("x".into()), "queued")).await.unwrap();
        let v = store.verify_audit(None).await.unwrap().unwrap();
        assert_eq!((v.legacy_through, v.head.count, v.head.last_id), (Some(2), 3, 3));
        assert!(v.head.hash.starts_with("sha256:"));
        store.close().await;
        // Opening again applies nothing.
        let store = b.open(None).await;
        assert_eq!(store.verify_audit(None).await.unwrap().unwrap().head.count, 3);
        store.close().await;
        assert_eq!(user_version(&b.path), SCHEMA_VERSION);
    }

    /// Step 11 moves the welcome markers and file offers out of `agent_id_provisioning`.
    #[tokio::test]
    async fn a_version_10_database_moves_welcomes_and_file_offers_to_their_tables() {
        suite::provisioned_state_moves_to_its_own_tables(&sqlite(), 10).await;
    }

    #[tokio::test]
    async fn a_database_from_a_newer_release_is_refused() {
        let b = sqlite();
        b.open(None).await.close().await;
        b.execute(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 7));
        let key = None;
        let err = SqliteStore::open_keyed(&b.path, Synchronous::Full, 8, Arc::new(Metrics::default()), key).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, known } if found == SCHEMA_VERSION + 7 && known == SCHEMA_VERSION),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(err.contains(&format!("schema version {}", SCHEMA_VERSION + 7)) && err.contains("newer"), "{err}");
        assert_eq!(user_version(&b.path), SCHEMA_VERSION + 7, "left untouched");
    }

    #[test]
    fn sqlite_errors_are_classified_by_code() {
        use rusqlite::ffi;
        let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        assert!(matches!(db_err(failure(ffi::SQLITE_BUSY)), StoreError::Unavailable(_)));
        assert!(matches!(db_err(failure(ffi::SQLITE_FULL)), StoreError::Unavailable(_)));
        assert!(matches!(db_err(failure(ffi::SQLITE_CORRUPT)), StoreError::Corrupt(_)));
        assert!(matches!(db_err(failure(ffi::SQLITE_ERROR)), StoreError::Database(_)));
        // A real constraint violation, from a real statement.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);").unwrap();
        let dup = conn.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
        assert!(matches!(db_err(dup), StoreError::Conflict(_)));
        let wrong_type = conn.query_row("SELECT 'text'", [], |r| r.get::<_, i64>(0)).unwrap_err();
        assert!(matches!(db_err(wrong_type), StoreError::Corrupt(_)));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_folder_and_database_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let b = sqlite();
        let store = b.open(None).await;
        store.commit_inbound(suite_record()).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(b.path.parent().unwrap()), 0o700);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = b.path.as_os_str().to_owned();
            p.push(suffix);
            assert_eq!(mode(Path::new(&p)), 0o600, "agentgate.db{suffix}");
        }
        store.close().await;
    }

    fn suite_record() -> InboundRecord {
        suite::record("a1", "c1")
    }
}
