//! A file offered in a 1:1 chat: the consent card, the person's answer, the upload, the file info card.
//!
//! 1. `send_file` in a 1:1 chat writes the bytes to `<data_dir>/files/outgoing/<consent id>` (mode 0600),
//!    records the offer in the store (a row of `file_offers`, written after the audit event
//!    `send_file`/`offered`), and queues the consent card through the outbox.
//! 2. Teams answers with `fileConsent/invoke`; intake commits it (the host gets a `file_consent` event) and
//!    answers 200 with an empty body at once (Teams allows 15 s; an upload can take longer).
//! 3. After the commit ([`answered`]), on its own task: a decline deletes the bytes; an accept marks the
//!    offer `uploading` (audited first), PUTs the bytes to the `uploadUrl` Teams gave (a OneDrive upload session, on an
//!    allowed file host; fragments with `Content-Range`), queues the file info card through the outbox,
//!    and tells the host how it went with a `file_upload` event (`uploaded` or `failed`).
//!
//! Restarts: an offer outlives the process (store record and bytes on disk), so an answer after a restart
//! still uploads. An upload cut off by a restart is not resumed: the sweep at start ([`sweep`]) marks it
//! failed and tells the host (`file_upload`, `failed`: send it again). An answer to an offer this gateway
//! has no record or no bytes of (expired after `files.consent_ttl_secs`, or made by a replica whose data
//! directory this one does not share) gets a `file_upload` `failed` event that says so. Offers nobody
//! answers are forgotten after `files.consent_ttl_secs`, their bytes deleted.
//!
//! Every change of an offer's state is one conditional write ([`Store::transition_file_offer`]: from the
//! state this process read to the next): two answers to one card, on one replica or two, never both accept
//! or decline it; the one that loses does nothing more.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Files, hex};
use crate::activity::Activity;
use crate::ids::AuthKind;
use crate::store::{AuditEvent, ConversationRef, FileOffer, InboundRecord, InboxState, NewOutbound, OfferState, OutboundOp, Store, now_ms};
use crate::teams::files::{ConsentAnswer, consent_answer, info_card};

/// Who the audit log names for what the gateway does on its own after an answer.
const ACTOR: &str = "agentgate:files";
/// The synthetic activity that carries an upload's outcome to the host.
pub(crate) const OUTCOME_EVENT: &str = "agentgate/fileUpload";
/// The `channelId` of that activity (it comes from the gateway, not from Teams).
pub(crate) const OUTCOME_CHANNEL: &str = "agentgate";

/// Whether `id` can be a consent id (`fc` and 16 hex digits): nothing else is ever a file name in the spool.
pub(crate) fn is_consent_id(id: &str) -> bool {
    id.len() == 18 && id.starts_with("fc") && id[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// A fresh consent id.
pub(crate) fn new_consent_id() -> String {
    format!("fc{:016x}", fastrand::u64(..))
}

async fn load(store: &dyn Store, consent_id: &str) -> Option<FileOffer> {
    match store.file_offer(consent_id).await {
        Ok(offer) => offer,
        Err(e) => {
            tracing::warn!(error = %e, consent_id, "reading a file offer failed");
            None
        }
    }
}

/// Move an offer on from the state it was read in (`offer.state`, then set to `to`); false when it was not
/// there any more (another answer, another replica, moved it first) or the store failed (logged).
async fn transition(store: &dyn Store, offer: &mut FileOffer, to: OfferState, detail: Option<String>) -> bool {
    match store.transition_file_offer(&offer.id, offer.state, to, detail.as_deref(), now_ms()).await {
        Ok(true) => {
            offer.state = to;
            offer.detail = detail;
            true
        }
        Ok(false) => {
            tracing::info!(consent_id = %offer.id, from = %offer.state, to = %to, "the file offer was moved on by someone else meanwhile");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, consent_id = %offer.id, to = %to, "cannot record a file offer's step");
            false
        }
    }
}

/// Write the bytes of an offer to the spool (the directory 0700, the file 0600).
pub(crate) fn spool_write(dir: &Path, consent_id: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let path = dir.join(consent_id);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    use std::io::Write as _;
    let mut f = opts.open(&path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(path)
}

pub(crate) fn spool_remove(dir: &Path, consent_id: &str) {
    if let Err(e) = std::fs::remove_file(dir.join(consent_id))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, consent_id, "could not delete an offered file's bytes");
    }
}

/// Record a step of an offer; `Err` when the audit log cannot be written (then nothing more is done
/// where the step is an action).
async fn audit(store: &dyn Store, offer: &FileOffer, actor: &str, outcome: &str, detail: String) -> Result<(), ()> {
    let event = AuditEvent::new(
        now_ms(),
        actor,
        crate::store::Identity::bot(&offer.bot_app_id),
        "send_file",
        crate::store::Target::conversation(&offer.tenant_id, &offer.conversation_id),
        outcome,
    )
    .with_detail(detail);
    store.record_audit(event).await.map_err(|e| tracing::error!(error = %e, "could not audit a file offer's step"))
}

impl crate::bridge::Hub {
    /// Offer `bytes` as `name` in a 1:1 chat: audited, the bytes spooled, the offer recorded, the consent
    /// card queued (and waited for up to 15 s). Undone (bytes and record) when the card cannot be queued.
    pub(crate) async fn offer_file(
        &self,
        caller: crate::bridge::Caller<'_>,
        bot: &crate::config::BotConfig,
        r: &ConversationRef,
        name: &str,
        description: &str,
        bytes: &[u8],
    ) -> crate::bridge::Result<super::FileSent> {
        use crate::bridge::Error;
        let files = self.files()?;
        let consent_id = new_consent_id();
        let sha256 = hex(&sha2::Sha256::digest(bytes));
        let now = now_ms();
        let ttl_ms = i64::try_from(files.cfg.consent_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut offer = FileOffer {
            id: consent_id.clone(),
            bot_app_id: bot.app_id.clone(),
            tenant_id: r.tenant_id.clone(),
            conversation_id: r.conversation_id.clone(),
            name: name.to_owned(),
            size: bytes.len() as u64,
            sha256: sha256.clone(),
            requested_by: caller.requester.to_owned(),
            state: OfferState::Offered,
            detail: None,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        // Audited first: no audit record, no offer.
        let event = AuditEvent::new(
            now_ms(),
            caller.requester,
            crate::store::Identity::bot(&bot.app_id),
            "send_file",
            crate::store::Target::conversation(&r.tenant_id, &r.conversation_id),
            "offered",
        )
        .with_detail(format!("consent {consent_id}, {name}, {} bytes, sha256 {sha256}", bytes.len()));
        self.store
            .record_audit(event)
            .await
            .map_err(|e| Error::unavailable(format!("not sent: the audit log could not be written ({e})")))?;
        spool_write(&files.spool, &consent_id, bytes)
            .map_err(|e| Error::unavailable(format!("not sent: the file could not be kept for the upload ({e})")))?;
        if let Err(e) = self.store.create_file_offer(&offer).await {
            spool_remove(&files.spool, &consent_id);
            return Err(Error::unavailable(format!("not sent: the offer could not be recorded ({e})")));
        }
        let card = crate::teams::files::consent_card(name, description, bytes.len() as u64, &consent_id);
        let outbox_id = match self.enqueue(caller.requester, bot, r, OutboundOp::Send { activity: card }).await {
            Ok(id) => id,
            Err(e) => {
                spool_remove(&files.spool, &consent_id);
                let _ = self.store.delete_file_offer(&consent_id).await;
                return Err(e);
            }
        };
        let sent = crate::bridge::deliver::sent_as_bot(bot.app_id.to_string(), outbox_id, self.settle(outbox_id).await);
        let progress = match sent {
            Ok(crate::bridge::deliver::Sent::Bot { progress, .. }) => progress,
            Ok(_) => crate::bridge::deliver::Progress::Uncertain,
            Err(e) => {
                // The card was refused: nobody can answer it.
                spool_remove(&files.spool, &consent_id);
                transition(self.store.as_ref(), &mut offer, OfferState::Failed, Some(e.to_string())).await;
                return Err(e);
            }
        };
        Ok(super::FileSent::Offered { consent_id, outbox_id, progress, size: bytes.len() as u64, sha256 })
    }
}

/// After intake committed a `fileConsent/invoke` in (`bot`, `conversation`): act on the answer on a task
/// of its own. Anything else is ignored.
pub(crate) fn answered(files: &Arc<Files>, bot: &str, tenant: &str, conversation: &str, activity: &Activity, auth: AuthKind) {
    let Some(answer) = consent_answer(activity) else { return };
    let Some(consent_id) = answer.consent_id.clone().filter(|c| is_consent_id(c)) else {
        tracing::info!("an answer to a file consent card that agentgate did not send; nothing to do");
        return;
    };
    let files = Arc::clone(files);
    let (bot, tenant, conversation) = (bot.to_owned(), tenant.to_owned(), conversation.to_owned());
    tokio::spawn(async move {
        handle(&files, &bot, &tenant, &conversation, &consent_id, answer, auth).await;
    });
}

async fn handle(files: &Files, bot: &str, tenant: &str, conversation: &str, consent_id: &str, answer: ConsentAnswer, auth: AuthKind) {
    let store = files.store.as_ref();
    let Some(mut offer) = load(store, consent_id).await else {
        if answer.accepted {
            let why = "agentgate has no pending file with this consent id: the offer expired (files.consent_ttl_secs), or another gateway replica made it and this one does not share its data directory. Send the file again";
            let name = answer.upload.as_ref().map(|u| u.name.clone()).unwrap_or_default();
            outcome_event(files, bot, tenant, conversation, consent_id, &name, Err(why.to_owned()), auth).await;
        }
        return;
    };
    if !offer.bot_app_id.as_str().eq_ignore_ascii_case(bot) || offer.conversation_id != conversation {
        tracing::warn!(consent_id, "an answer to a file offer came from another conversation; ignored");
        return;
    }
    if offer.state != OfferState::Offered {
        tracing::info!(consent_id, state = ?offer.state, "a file offer was answered again; nothing more to do");
        return;
    }
    let Some(upload) = answer.upload.filter(|_| answer.accepted) else {
        if !transition(store, &mut offer, OfferState::Declined, None).await {
            return;
        }
        spool_remove(&files.spool, consent_id);
        let _ = audit(store, &offer, ACTOR, "declined", format!("consent {consent_id}, {}", offer.name)).await;
        tracing::info!(consent_id, "a file offer was declined");
        return;
    };
    // Only the answer that moves the offer to `uploading` uploads it.
    if !transition(store, &mut offer, OfferState::Uploading, None).await {
        tracing::info!(consent_id, "not uploading: the offer was not taken for this answer");
        return;
    }
    // Audited first: no audit record, no upload.
    let result = match audit(store, &offer, &offer.requested_by, "uploading", format!("consent {consent_id}, {}", offer.name)).await {
        Ok(()) => upload_offer(files, consent_id, &offer, &upload).await,
        Err(()) => Err("not uploaded: the audit log could not be written".to_owned()),
    };
    spool_remove(&files.spool, consent_id);
    let done = if result.is_ok() { OfferState::Uploaded } else { OfferState::Failed };
    let detail = match &result {
        Ok(id) => format!("file card: outbox #{id}"),
        Err(e) => e.clone(),
    };
    transition(store, &mut offer, done, Some(detail)).await;
    let (outcome, detail) = match &result {
        Ok(id) => ("uploaded", format!("consent {consent_id}, {}; file card outbox #{id}", offer.name)),
        Err(e) => ("failed", format!("consent {consent_id}, {}: {e}", offer.name)),
    };
    let _ = audit(store, &offer, ACTOR, outcome, detail).await;
    outcome_event(files, bot, tenant, conversation, consent_id, &offer.name, result, auth).await;
}

/// Upload an accepted offer's bytes and queue its file info card; the card's outbox id.
async fn upload_offer(files: &Files, consent_id: &str, offer: &FileOffer, upload: &crate::teams::files::UploadInfo) -> Result<i64, String> {
    let bytes = std::fs::read(files.spool.join(consent_id)).map_err(|_| {
        "the offered file's bytes are gone (deleted, or held by another replica's data directory); send it again".to_owned()
    })?;
    if hex(&sha2::Sha256::digest(&bytes)) != offer.sha256 || bytes.len() as u64 != offer.size {
        return Err("the offered file's bytes changed on disk; not uploaded".to_owned());
    }
    files.transfer.upload(&upload.upload_url, &bytes, files.cfg.upload_chunk_bytes).await.map_err(|e| format!("the upload failed: {e}"))?;
    let r = files
        .store
        .conversation_ref(&offer.bot_app_id, &offer.conversation_id)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| "uploaded, but the conversation is no longer known: no file card was sent".to_owned())?;
    let item = NewOutbound {
        bot_app_id: offer.bot_app_id.clone(),
        tenant_id: offer.tenant_id.clone(),
        conversation_id: offer.conversation_id.clone(),
        service_url: r.service_url,
        op: OutboundOp::Send { activity: info_card(upload) },
        requested_by: offer.requested_by.clone(),
        now_ms: now_ms(),
    };
    files.store.enqueue_outbound(item).await.map_err(|e| format!("uploaded, but the file card could not be queued: {e}"))
}

/// Tell the host how an accepted offer ended: an inbox entry of its own (`file_upload` event).
#[allow(clippy::too_many_arguments)]
async fn outcome_event(
    files: &Files,
    bot: &str,
    tenant: &str,
    conversation: &str,
    consent_id: &str,
    name: &str,
    result: Result<i64, String>,
    auth: AuthKind,
) {
    let store = files.store.as_ref();
    let reference = match store.conversation_ref(bot, conversation).await {
        Ok(Some(r)) => r,
        _ => {
            tracing::warn!(consent_id, "the conversation of a file offer is not known; the host is not told how it ended");
            return;
        }
    };
    let mut value = json!({"consent_id": consent_id, "name": name});
    match &result {
        Ok(outbox_id) => {
            value["status"] = json!("uploaded");
            value["outbox_id"] = json!(outbox_id);
        }
        Err(e) => {
            value["status"] = json!("failed");
            value["error"] = json!(e);
        }
    }
    let activity_id = format!("agentgate:file:{consent_id}");
    let activity = outcome_activity(&reference, &activity_id, value);
    let now = now_ms();
    let record = InboundRecord {
        bot_app_id: reference.bot_app_id.clone(),
        tenant_id: tenant.to_owned().into(),
        conversation_id: reference.conversation_id.clone(),
        activity_id,
        activity_type: "event".into(),
        auth,
        body: activity.to_string(),
        received_at_ms: now,
        dedupe_expires_at_ms: now.saturating_add(7 * 24 * 3600 * 1000),
        reference,
        state: InboxState::Pending,
    };
    match store.commit_inbound(record).await {
        Ok(crate::store::CommitOutcome::Accepted { inbox_id }) => {
            if let Some(gate) = &files.gate {
                gate.wake(inbox_id);
            }
        }
        Ok(crate::store::CommitOutcome::Duplicate) => {}
        Err(e) => tracing::error!(error = %e, consent_id, "could not tell the host how a file offer ended"),
    }
}

/// The activity that carries an outcome: from the person the file was offered to, in their chat.
fn outcome_activity(r: &ConversationRef, id: &str, value: Value) -> Value {
    json!({
        "type": "event",
        "name": OUTCOME_EVENT,
        "id": id,
        "channelId": OUTCOME_CHANNEL,
        "serviceUrl": r.service_url,
        "from": {"id": r.user_id.clone().unwrap_or_default(), "aadObjectId": r.user_aad_object_id.as_ref().map(ToString::to_string)},
        "recipient": {"id": r.bot_id.clone().unwrap_or_else(|| format!("28:{}", r.bot_app_id))},
        "conversation": {"id": r.conversation_id.to_string(), "conversationType": r.conversation_type, "tenantId": r.tenant_id.to_string()},
        "channelData": {"tenant": {"id": r.tenant_id.to_string()}},
        "value": value,
    })
}

/// At start and then every `every`: offers nobody answered within `files.consent_ttl_secs` are forgotten
/// (their bytes deleted); uploads a restart cut off are marked failed and the host is told; bytes without
/// an open offer are deleted.
pub(crate) fn spawn_sweep(files: Arc<Files>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut first = true;
        loop {
            sweep(&files, first).await;
            first = false;
            tokio::time::sleep(every).await;
        }
    })
}

/// One sweep; `at_start`: uploads still marked `uploading` were cut off by a restart.
pub(crate) async fn sweep(files: &Files, at_start: bool) {
    let Ok(dir) = std::fs::read_dir(&files.spool) else { return };
    for entry in dir.flatten() {
        let Some(consent_id) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !is_consent_id(&consent_id) {
            continue;
        }
        let store = files.store.as_ref();
        let Some(mut offer) = load(store, &consent_id).await else {
            spool_remove(&files.spool, &consent_id);
            continue;
        };
        match offer.state {
            OfferState::Offered if now_ms() > offer.expires_at_ms => {
                if !transition(store, &mut offer, OfferState::Expired, None).await {
                    continue;
                }
                spool_remove(&files.spool, &consent_id);
                let _ = audit(store, &offer, ACTOR, "expired", format!("consent {consent_id}, {}: nobody answered", offer.name)).await;
            }
            OfferState::Offered => {}
            OfferState::Uploading if at_start => {
                let why = "the upload was cut off by a restart of the gateway; send the file again".to_owned();
                if !transition(store, &mut offer, OfferState::Failed, Some(why.clone())).await {
                    continue;
                }
                spool_remove(&files.spool, &consent_id);
                let _ = audit(store, &offer, ACTOR, "failed", format!("consent {consent_id}, {}: {why}", offer.name)).await;
                let (bot, tenant, conversation, name) =
                    (offer.bot_app_id.to_string(), offer.tenant_id.to_string(), offer.conversation_id.to_string(), offer.name.clone());
                outcome_event(files, &bot, &tenant, &conversation, &consent_id, &name, Err(why), AuthKind::Anonymous).await;
            }
            OfferState::Uploading => {}
            _ => spool_remove(&files.spool, &consent_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_ids() {
        let id = new_consent_id();
        assert!(is_consent_id(&id), "{id}");
        for bad in ["fc", "fc123", "xx0123456789abcdef", "fc0123456789abcdeg", "../fc0123456789abc", "fc0123456789abcdef0"] {
            assert!(!is_consent_id(bad), "{bad}");
        }
    }

    /// The sweep expires an offer by the expiry stored with it (made with the TTL of its day, whatever the
    /// configuration says now), deletes its bytes and bytes no offer owns, and leaves open offers alone.
    #[tokio::test]
    async fn the_sweep_expires_offers_by_their_stored_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let store: Arc<dyn Store> = Arc::new(
            crate::store::SqliteStore::open(&dir.path().join("s.db"), crate::config::Synchronous::Normal, 8, metrics).expect("store"),
        );
        let cfg = crate::config::Config::from_sources(
            Some("[[bots]]\napp_id = \"app-1\"\nallowed_tenants = [\"t\"]\n"),
            "test",
            std::iter::empty(),
        )
        .expect("config");
        let transfer = crate::graph::FileTransfer::new(crate::graph::FileHosts::new(&[]), std::time::Duration::from_secs(5)).unwrap();
        let spool = dir.path().join("outgoing");
        let files = Files { cfg: cfg.files.clone(), transfer, spool: spool.clone(), store: Arc::clone(&store), gate: None };
        let now = now_ms();
        let offer = |id: &str, state: OfferState, created_at_ms: i64, expires_at_ms: i64| FileOffer {
            id: id.into(),
            bot_app_id: "app-1".into(),
            tenant_id: "t".into(),
            conversation_id: "a:1".into(),
            name: "n.txt".into(),
            size: 1,
            sha256: "00".into(),
            requested_by: "mcp:stdio:test".into(),
            state,
            detail: None,
            created_at_ms,
            updated_at_ms: created_at_ms,
            expires_at_ms,
        };
        let (due, open, uploading, orphan) = ("fc0000000000000001", "fc0000000000000002", "fc0000000000000003", "fc0000000000000004");
        // Due: its expiry passed. Open: made long ago (beyond the configured TTL) but its expiry is ahead.
        store.create_file_offer(&offer(due, OfferState::Offered, now - 1_000, now - 1)).await.unwrap();
        store.create_file_offer(&offer(open, OfferState::Offered, 0, now + 3_600_000)).await.unwrap();
        store.create_file_offer(&offer(uploading, OfferState::Uploading, now, now - 1)).await.unwrap();
        for id in [due, open, uploading, orphan] {
            spool_write(&spool, id, b"x").unwrap();
        }
        sweep(&files, false).await;
        let state = |id: &'static str| {
            let store = Arc::clone(&store);
            async move { store.file_offer(id).await.unwrap().map(|o| o.state) }
        };
        assert_eq!(state(due).await, Some(OfferState::Expired));
        assert_eq!(state(open).await, Some(OfferState::Offered));
        assert_eq!(state(uploading).await, Some(OfferState::Uploading), "an upload under way (not at start) is left alone");
        let kept: Vec<bool> = [due, open, uploading, orphan].iter().map(|id| spool.join(id).exists()).collect();
        assert_eq!(kept, [false, true, true, false]);
        let trail = store.audit_events(10).await.unwrap();
        assert_eq!(trail.iter().filter(|r| r.event.outcome == "expired").count(), 1);
        store.close().await;
    }

    #[test]
    fn the_spool_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("files").join("outgoing");
        let p = spool_write(&spool, "fc0123456789abcdef", b"bytes").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"bytes");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777, 0o700);
        }
        assert!(spool_write(&spool, "fc0123456789abcdef", b"again").is_err(), "never overwritten");
        spool_remove(&spool, "fc0123456789abcdef");
        assert!(!p.exists());
    }
}
