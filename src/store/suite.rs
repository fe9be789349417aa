//! The store's test suite, written once against the [`Store`] trait and run for every backend (teloxide's
//! way): a backend provides a [`Backend`] and invokes [`store_suite!`](crate::store_suite) in its test module.
//!
//! Most tests take a `&dyn Store`; the ones that reopen the store or change its storage behind its back
//! (an attacker with write access to the database) take the [`Backend`].

use std::sync::Arc;

use async_trait::async_trait;

use super::audit::{self, AuditHead, Broken};
use super::{
    Amended, Amendment, AuditEvent, ChatCursor, ClaimHolder, ClaimOutcome, ClaimTarget, CommitOutcome, ConversationRef, ErrorClass, Failed,
    FileOffer, Finish, GRAPH_CLAIM_MS, GraphCommit, GraphSubscription, Identity, InboundRecord, InboxState, MailCursor,
    NewGraphNotification, NewOutbound, OUTBOX_LEASE_MS, OfferState, OutboundOp, OutboxState, ProvisioningRecord, Store, StoreError, Target,
};
use crate::metrics::Metrics;

/// The audit key the keyed tests use.
pub(crate) const KEY: &str = "test-audit-key-0123456789";

/// What the suite needs from a backend besides the [`Store`] itself.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// Open the store (again) on this backend's storage, signing audit events with `key` if given.
    async fn open(&self, key: Option<&str>) -> Arc<dyn Store>;
    /// The metrics the stores of this backend report to.
    fn metrics(&self) -> Arc<Metrics>;
    /// Run SQL statements against the storage, outside the store (another process, or an attacker).
    fn execute(&self, sql: &str);
    /// Make every insert into `table` fail from now on (a full disk, a broken file).
    fn refuse_inserts(&self, table: &str);
    /// Create the storage as a release at schema `version` left it: only the first `version` migration steps
    /// applied (the store is not opened).
    fn create_at_version(&self, version: i64);
}

/// Instantiate the suite: `store_suite!(make_backend)` where `make_backend()` returns the backend, or
/// `store_suite!(optional make_backend)` where it returns `Option<backend>` (`None`: the backend is not
/// available here, and each test passes after saying so).
#[macro_export]
#[doc(hidden)]
macro_rules! store_suite {
    (optional $backend:expr) => {
        $crate::store_suite!(@store $backend;
            inbox_states_cursor_and_personal_chats, purge_forgets_expired_dedupe_keys, closed_store_refuses_writes,
            audit_head_follows_the_chain, an_agentic_recipient_is_kept_typed, provisioning_state_is_saved_replaced_and_forgotten,
            graph_inbound_state_commits_with_its_entries, edits_and_deletions_amend_only_pending_entries,
            the_mail_cursor_commits_with_its_entries, a_conversation_is_welcomed_once_whatever_the_bot_s_case,
            file_offers_move_only_from_the_state_they_are_in);
        $crate::store_suite!(@backend $backend;
            commit_dedupe_ack_and_reopen, concurrent_commits_share_transactions_and_stay_unique,
            outbox_keeps_per_conversation_order_and_recovers_after_a_crash, two_replicas_never_claim_the_same_entry,
            only_expired_claims_are_taken_over_by_another_replica, conversation_order_holds_across_two_claimers, no_audit_event_no_send,
            a_failed_write_leaves_nothing_behind, audit_chain_detects_an_edit, audit_detects_a_truncated_tail,
            audit_detects_that_every_event_was_deleted, audit_detects_a_renumbered_event,
            audit_detects_a_chain_recomputed_without_the_key, audit_expected_head_catches_an_unkeyed_rewrite,
            an_anonymous_activity_never_overwrites_an_authenticated_reference, an_unreadable_agentic_recipient_fails_closed,
            graph_notifications_and_leases_are_held_by_one_replica_at_a_time,
            conversation_claims_are_exclusive_across_handles_lapse_and_release,
            replicas_welcome_once_and_take_an_offer_once);
    };
    (@store $backend:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(backend) = ($backend)() else { return };
            let store = $crate::store::suite::Backend::open(&backend, None).await;
            $crate::store::suite::$name(store.as_ref()).await;
            store.close().await;
        }
    )*};
    (@backend $backend:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(backend) = ($backend)() else { return };
            $crate::store::suite::$name(&backend).await;
        }
    )*};
    ($backend:expr) => {
        $crate::store_suite!(optional || Some(($backend)()));
    };
}

pub(crate) fn record(activity_id: &str, conv: &str) -> InboundRecord {
    InboundRecord {
        bot_app_id: "bot".into(),
        tenant_id: "t".into(),
        conversation_id: conv.into(),
        activity_id: activity_id.into(),
        activity_type: "message".into(),
        auth: crate::ids::AuthKind::BotFramework,
        body: format!("{{\"id\":\"{activity_id}\"}}"),
        received_at_ms: 1,
        dedupe_expires_at_ms: 1_000,
        reference: ConversationRef {
            bot_app_id: "bot".into(),
            conversation_id: conv.into(),
            tenant_id: "t".into(),
            service_url: "https://smba.trafficmanager.net/amer/".into(),
            channel_id: "msteams".into(),
            conversation_type: Some("personal".into()),
            user_id: Some("29:u".into()),
            user_aad_object_id: Some("oid".into()),
            bot_id: Some("28:bot".into()),
            usable: true,
            updated_at_ms: 1,
            agentic: None,
            authenticated: true,
        },
        state: InboxState::Pending,
    }
}

fn outbound(conv: &str, op: OutboundOp) -> NewOutbound {
    NewOutbound {
        bot_app_id: "bot".into(),
        tenant_id: "t".into(),
        conversation_id: conv.into(),
        service_url: "https://smba.trafficmanager.net/amer/".into(),
        op,
        requested_by: "test".into(),
        now_ms: 10,
    }
}

fn send(text: &str) -> OutboundOp {
    OutboundOp::Send { activity: serde_json::json!({"type": "message", "text": text}) }
}

fn event(outcome: &str) -> AuditEvent {
    AuditEvent::new(20, "agentgate", Identity::bot("bot"), "send", Target::conversation("t", "c"), outcome)
}

/// The chain's event count, which must verify.
async fn intact(store: &dyn Store) -> u64 {
    match store.verify_audit(None).await.unwrap() {
        Ok(v) => v.head.count,
        Err(broken) => panic!("the chain should verify: {broken}"),
    }
}

pub(crate) async fn inbox_states_cursor_and_personal_chats(store: &dyn Store) {
    assert!(store.schema_version().await.unwrap() >= 1, "migrated on open");
    store.ping().await.unwrap();
    let mut ids = Vec::new();
    for (i, state) in [InboxState::Pending, InboxState::Filtered, InboxState::Pending, InboxState::Consumed].into_iter().enumerate() {
        let mut r = record(&format!("a{i}"), "c1");
        r.state = state;
        match store.commit_inbound(r).await.unwrap() {
            CommitOutcome::Accepted { inbox_id } => ids.push(inbox_id),
            CommitOutcome::Duplicate => panic!("not a duplicate"),
        }
    }
    // Only pending entries are offered, in order, after the cursor.
    let after: Vec<i64> = store.inbox_after(0, 10).await.unwrap().iter().map(|i| i.id).collect();
    assert_eq!(after, vec![ids[0], ids[2]]);
    assert_eq!(store.inbox_after(ids[0], 10).await.unwrap().len(), 1);
    assert_eq!(store.pending_inbox(None, 10).await.unwrap().len(), 2);
    // A filtered entry cannot be acknowledged into view; a pending one can.
    assert_eq!(store.ack_inbox(&[ids[1], ids[2]]).await.unwrap(), 1);
    let states: Vec<InboxState> = store.inbox_by_ids(&[ids[1], ids[2], 999]).await.unwrap().into_iter().map(|i| i.state).collect();
    assert_eq!(states, vec![InboxState::Filtered, InboxState::Acked]);
    // The reference of c1 is a personal chat with "oid" (matched case-insensitively).
    let found = store.personal_conversation("bot", "OID").await.unwrap().unwrap();
    assert_eq!(found.conversation_id, "c1");
    assert!(store.personal_conversation("bot", "other").await.unwrap().is_none());
    store.set_conversation_usable("bot", "c1", false).await.unwrap();
    assert!(store.personal_conversation("bot", "oid").await.unwrap().is_none());
    assert_eq!(store.conversations(10).await.unwrap().len(), 1);
    // Standalone audit events join the chain.
    let event = AuditEvent::new(5, "mcp:test", Identity::bot("bot"), "ack", Target::conversation("t", "c1"), "ok");
    store.record_audit(event.clone()).await.unwrap();
    store.record_audit(event).await.unwrap();
    assert_eq!(intact(store).await, 2);
}

/// An edit or deletion record for message `target` in `conv`.
fn amendment_record(key: &str, conv: &str, kind: &str) -> InboundRecord {
    let mut r = record(key, conv);
    r.activity_type = kind.into();
    r.body = format!("{{\"type\":\"{kind}\"}}");
    r
}

fn amend(target: &str, body: &str, withdraw: bool) -> Amendment {
    Amendment {
        message_id: target.into(),
        body: body.into(),
        withdraw,
        state_if_amended: InboxState::Consumed,
        state_if_delivered: InboxState::Pending,
    }
}

pub(crate) async fn edits_and_deletions_amend_only_pending_entries(store: &dyn Store) {
    let accepted = |o: CommitOutcome| match o {
        CommitOutcome::Accepted { inbox_id } => inbox_id,
        CommitOutcome::Duplicate => panic!("not a duplicate"),
    };
    let m1 = accepted(store.commit_inbound(record("m1", "c1")).await.unwrap());
    let m2 = accepted(store.commit_inbound(record("m2", "c1")).await.unwrap());
    let other_conv = accepted(store.commit_inbound(record("m1", "c2")).await.unwrap());

    // An edit of a pending entry patches it in place; the edit's own record takes `state_if_amended`.
    let edit = amendment_record("m1@editMessage:1", "c1", "messageUpdate");
    let done = store.commit_amendment(edit.clone(), amend("m1", r#"{"text":"fixed"}"#, false)).await.unwrap();
    assert_eq!(done.amended, Some(m1));
    let edit_id = accepted(done.outcome);
    let items = store.inbox_by_ids(&[m1, edit_id, other_conv]).await.unwrap();
    assert_eq!((items[0].state, items[0].body.as_str()), (InboxState::Pending, r#"{"text":"fixed"}"#));
    assert_eq!(items[1].state, InboxState::Consumed);
    assert_eq!(items[2].body, r#"{"id":"m1"}"#, "only the same conversation's entry");

    // A redelivered edit writes nothing, not even its amendment (a newer edit is not undone).
    store
        .commit_amendment(amendment_record("m1@editMessage:2", "c1", "messageUpdate"), amend("m1", r#"{"text":"newer"}"#, false))
        .await
        .unwrap();
    let again = store.commit_amendment(edit, amend("m1", r#"{"text":"fixed"}"#, false)).await.unwrap();
    assert_eq!(again, Amended { outcome: CommitOutcome::Duplicate, amended: None, original: None });
    assert_eq!(store.inbox_by_ids(&[m1]).await.unwrap()[0].body, r#"{"text":"newer"}"#);

    // A deletion withdraws a pending entry: it is never offered again.
    let done =
        store.commit_amendment(amendment_record("m2@softDeleteMessage:1", "c1", "messageDelete"), amend("m2", "{}", true)).await.unwrap();
    assert_eq!(done.amended, Some(m2));
    let item = &store.inbox_by_ids(&[m2]).await.unwrap()[0];
    assert_eq!((item.state, item.body.as_str()), (InboxState::Withdrawn, "{}"));
    let pending: Vec<i64> = store.inbox_after(0, 10).await.unwrap().iter().map(|i| i.id).collect();
    assert!(!pending.contains(&m2), "withdrawn: {pending:?}");
    assert_eq!(store.ack_inbox(&[m2]).await.unwrap(), 0, "a withdrawn entry cannot be acknowledged into view");

    // An acknowledged entry is left alone: the change is committed in `state_if_delivered` (the host gets it
    // as an event), whatever the record's own state (a deletion names no sender: the policy filters it).
    assert_eq!(store.ack_inbox(&[m1]).await.unwrap(), 1);
    let mut delete = amendment_record("m1@softDeleteMessage:3", "c1", "messageDelete");
    delete.state = InboxState::Filtered;
    let late = store.commit_amendment(delete, amend("m1", "{}", true)).await.unwrap();
    assert_eq!((late.amended, late.original), (None, Some((m1, InboxState::Acked))));
    let late_id = accepted(late.outcome);
    let items = store.inbox_by_ids(&[m1, late_id]).await.unwrap();
    assert_eq!((items[0].state, items[0].body.as_str()), (InboxState::Acked, r#"{"text":"newer"}"#));
    assert_eq!(items[1].state, InboxState::Pending, "delivered: the change is for the host");

    // A message the gateway never delivered (unknown here): the record keeps its own state.
    let mut unknown = amendment_record("m9@softDeleteMessage:8", "c1", "messageDelete");
    unknown.state = InboxState::Filtered;
    let done = store.commit_amendment(unknown, amend("m9", "{}", true)).await.unwrap();
    assert_eq!((done.amended, done.original), (None, None));
    assert_eq!(store.inbox_by_ids(&[accepted(done.outcome)]).await.unwrap()[0].state, InboxState::Filtered);

    // A message a host may have seen: amended all the same, and the change stays visible.
    let m6 = accepted(store.commit_inbound(record("m6", "c1")).await.unwrap());
    let mut seen = amend("m6", r#"{"text":"seen"}"#, false);
    seen.state_if_amended = InboxState::Pending;
    let done = store.commit_amendment(amendment_record("m6@editMessage:7", "c1", "messageUpdate"), seen).await.unwrap();
    assert_eq!(done.amended, Some(m6));
    assert_eq!(store.inbox_by_ids(&[accepted(done.outcome)]).await.unwrap()[0].state, InboxState::Pending);

    // An anonymous (dev) record never amends an authenticated entry; it may amend an anonymous one.
    let m3 = accepted(store.commit_inbound(record("m3", "c1")).await.unwrap());
    let mut anon = amendment_record("m3@softDeleteMessage:4", "c1", "messageDelete");
    anon.auth = crate::ids::AuthKind::Anonymous;
    assert_eq!(store.commit_amendment(anon, amend("m3", "{}", true)).await.unwrap().amended, None);
    let mut m4 = record("m4", "c1");
    m4.auth = crate::ids::AuthKind::Anonymous;
    let m4 = accepted(store.commit_inbound(m4).await.unwrap());
    let mut anon = amendment_record("m4@softDeleteMessage:5", "c1", "messageDelete");
    anon.auth = crate::ids::AuthKind::Anonymous;
    assert_eq!(store.commit_amendment(anon, amend("m4", "{}", true)).await.unwrap().amended, Some(m4));
    assert_eq!(store.inbox_by_ids(&[m3]).await.unwrap()[0].state, InboxState::Pending);

    // Only message entries are amended (never, say, an invoke that shares the id).
    let mut invoke = record("m5", "c1");
    invoke.activity_type = "invoke".into();
    let m5 = accepted(store.commit_inbound(invoke).await.unwrap());
    let done =
        store.commit_amendment(amendment_record("m5@softDeleteMessage:6", "c1", "messageDelete"), amend("m5", "{}", true)).await.unwrap();
    assert_eq!(done.amended, None);
    assert_eq!(store.inbox_by_ids(&[m5]).await.unwrap()[0].state, InboxState::Pending);
}

pub(crate) async fn an_agentic_recipient_is_kept_typed(store: &dyn Store) {
    let recipient = crate::activity::AgenticRecipient {
        id: "agent@contoso.com".into(),
        role: "agenticUser".into(),
        agentic_app_id: Some("instance-app".into()),
        agentic_user_id: Some("agent-user-oid".into()),
        tenant_id: Some("t".into()),
    };
    let mut r = record("ag1", "agentic-chat");
    r.reference.agentic = Some(recipient.clone());
    assert!(matches!(store.commit_inbound(r).await.unwrap(), CommitOutcome::Accepted { .. }));
    let found = store.conversation_ref("bot", "agentic-chat").await.unwrap().unwrap();
    assert_eq!(found.agentic, Some(recipient.clone()));
    // A later activity without the recipient keeps it.
    assert!(matches!(store.commit_inbound(record("ag2", "agentic-chat")).await.unwrap(), CommitOutcome::Accepted { .. }));
    assert_eq!(store.conversation_ref("bot", "agentic-chat").await.unwrap().unwrap().agentic, Some(recipient));
}

/// A stored agentic recipient that cannot be read makes the reference unreadable: a reply must never go
/// out as the bot where the Agent User answered before.
pub(crate) async fn an_unreadable_agentic_recipient_fails_closed(b: &dyn Backend) {
    let store = b.open(None).await;
    let mut r = record("ag1", "agentic-chat");
    r.reference.agentic = Some(crate::activity::AgenticRecipient {
        id: "agent@contoso.com".into(),
        role: "agenticUser".into(),
        agentic_app_id: None,
        agentic_user_id: Some("oid".into()),
        tenant_id: None,
    });
    store.commit_inbound(r).await.unwrap();
    store.close().await;
    b.execute("UPDATE conversation_refs SET agentic = '{\"id\": 7' WHERE conversation_id = 'agentic-chat'");
    let store = b.open(None).await;
    assert!(store.conversation_ref("bot", "agentic-chat").await.is_err(), "read as if the conversation were not agentic");
    store.close().await;
}

pub(crate) async fn purge_forgets_expired_dedupe_keys(store: &dyn Store) {
    store.commit_inbound(record("a1", "c1")).await.unwrap();
    assert_eq!(store.purge_dedupe(999).await.unwrap(), 0);
    assert_eq!(store.purge_dedupe(1_001).await.unwrap(), 1);
    assert!(matches!(store.commit_inbound(record("a1", "c1")).await.unwrap(), CommitOutcome::Accepted { .. }));
}

pub(crate) async fn closed_store_refuses_writes(store: &dyn Store) {
    store.close().await;
    assert!(matches!(store.commit_inbound(record("a", "c")).await, Err(StoreError::Closed)));
}

pub(crate) async fn audit_head_follows_the_chain(store: &dyn Store) {
    assert_eq!(store.audit_head().await.unwrap(), AuditHead::default());
    for i in 0..3 {
        store.enqueue_outbound(outbound(&format!("c{i}"), send("x"))).await.unwrap();
    }
    let head = store.audit_head().await.unwrap();
    let newest = store.audit_events(1).await.unwrap();
    assert_eq!(newest[0].event.outcome, "queued");
    assert_eq!(head, AuditHead { count: 3, last_id: newest[0].id, hash: newest[0].hash.clone() });
    // Counted on from the previous head, and equal to what a full verification finds.
    store.record_audit(event("ok")).await.unwrap();
    let head = store.audit_head().await.unwrap();
    assert_eq!(head.count, 4);
    assert_eq!(store.verify_audit(None).await.unwrap().unwrap().head, head);
}

pub(crate) async fn commit_dedupe_ack_and_reopen(b: &dyn Backend) {
    let store = b.open(None).await;
    let first = store.commit_inbound(record("a1", "c1")).await.unwrap();
    assert!(matches!(first, CommitOutcome::Accepted { .. }));
    assert_eq!(store.commit_inbound(record("a1", "c1")).await.unwrap(), CommitOutcome::Duplicate);
    // The same activity id in another conversation is a different activity.
    assert!(matches!(store.commit_inbound(record("a1", "c2")).await.unwrap(), CommitOutcome::Accepted { .. }));
    let pending = store.pending_inbox(Some("bot"), 10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(store.ack_inbox(&[pending[0].id]).await.unwrap(), 1);
    assert_eq!(store.ack_inbox(&[pending[0].id]).await.unwrap(), 0);
    store.close().await;
    let store = b.open(None).await;
    let pending = store.pending_inbox(None, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].conversation_id, "c2");
    let r = store.conversation_ref("bot", "c1").await.unwrap().unwrap();
    assert_eq!(r.user_aad_object_id.as_deref(), Some("oid"));
    assert!(store.conversation_ref("bot", "nope").await.unwrap().is_none());
    store.close().await;
}

pub(crate) async fn concurrent_commits_share_transactions_and_stay_unique(b: &dyn Backend) {
    let store = b.open(None).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = Arc::clone(&store);
        // Every activity is sent twice.
        tasks.push(tokio::spawn(async move { s.commit_inbound(record(&format!("a{}", i / 2), "c")).await.unwrap() }));
    }
    let mut accepted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), CommitOutcome::Accepted { .. }) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 100);
    assert_eq!(store.pending_inbox(None, 1000).await.unwrap().len(), 100);
    let text = b.metrics().render();
    assert!(text.contains("agentgate_store_committed_activities_total 100"), "{text}");
    store.close().await;
}

pub(crate) async fn outbox_keeps_per_conversation_order_and_recovers_after_a_crash(b: &dyn Backend) {
    let store = b.open(None).await;
    let a1 = store.enqueue_outbound(outbound("a", send("a1"))).await.unwrap();
    let a2 = store.enqueue_outbound(outbound("a", send("a2"))).await.unwrap();
    let b1 = store.enqueue_outbound(outbound("b", send("b1"))).await.unwrap();
    let due: Vec<i64> = store.due_outbound(10, 10).await.unwrap().iter().map(|i| i.id).collect();
    assert_eq!(due, vec![a1, b1], "only the head of each conversation is due");
    assert!(store.begin_outbound_attempt(a1, 11).await.unwrap());
    assert!(!store.begin_outbound_attempt(a1, 11).await.unwrap(), "an attempt is taken once");
    let lease = store.outbox(Some(a1), 1).await.unwrap().remove(0).lease.expect("a claimed entry shows its lease");
    assert_eq!(lease.until_ms, 11 + OUTBOX_LEASE_MS);
    assert!(!lease.owner.is_empty());
    assert_eq!(store.outbox(Some(a2), 1).await.unwrap()[0].lease, None, "an unclaimed entry has none");
    // a1 is in flight: a2 must wait for it.
    let due: Vec<i64> = store.due_outbound(12, 10).await.unwrap().iter().map(|i| i.id).collect();
    assert_eq!(due, vec![b1]);
    // A retry in the future keeps the conversation blocked until then.
    store
        .finish_outbound(a1, Finish::Retry { at_ms: 100, error: Failed::new(ErrorClass::Throttled, "429") }, event("retry"))
        .await
        .unwrap();
    let retried = store.outbox(Some(a1), 1).await.unwrap().remove(0);
    assert_eq!((retried.last_error.as_deref(), retried.error_class), (Some("429"), Some(ErrorClass::Throttled)), "the class is kept");
    assert_eq!(retried.lease, None, "a finished attempt gives its claim up");
    assert_eq!(store.due_outbound(50, 10).await.unwrap().iter().map(|i| i.id).collect::<Vec<_>>(), vec![b1]);
    assert!(store.due_outbound(100, 10).await.unwrap().iter().any(|i| i.id == a1));
    assert!(store.begin_outbound_attempt(a1, 101).await.unwrap());
    store.finish_outbound(a1, Finish::Delivered { result_id: "1:xyz".into() }, event("delivered")).await.unwrap();
    assert_eq!(store.outbox(Some(a1), 1).await.unwrap()[0].error_class, None, "a delivery clears the class");
    assert!(store.due_outbound(102, 10).await.unwrap().iter().any(|i| i.id == a2));

    // b1 and an update are in flight when the process dies.
    let u = store.enqueue_outbound(outbound("c", OutboundOp::Delete { activity_id: "9".into() })).await.unwrap();
    assert!(store.begin_outbound_attempt(b1, 103).await.unwrap());
    assert!(store.begin_outbound_attempt(u, 103).await.unwrap());
    store.close().await;
    let store = b.open(None).await;
    // Their leases still run: the restarted process cannot tell a dead sender from a live replica yet.
    assert_eq!(store.recover_outbound(200).await.unwrap(), (0, 0));
    assert_eq!(store.recover_outbound(103 + OUTBOX_LEASE_MS + 1).await.unwrap(), (1, 1));
    let all = store.outbox(None, 10).await.unwrap();
    let state = |id: i64| all.iter().find(|i| i.id == id).unwrap().state;
    assert_eq!(state(a1), OutboxState::Delivered);
    assert_eq!(all.iter().find(|i| i.id == a1).unwrap().result_id.as_deref(), Some("1:xyz"));
    assert_eq!(state(b1), OutboxState::Uncertain, "a create that may have landed is never re-posted");
    assert_eq!(all.iter().find(|i| i.id == b1).unwrap().error_class, Some(ErrorClass::Interrupted));
    assert_eq!(state(u), OutboxState::Pending, "an idempotent delete is simply retried");
    assert_eq!(intact(store.as_ref()).await, 8);
    store.close().await;
}

/// Two replicas (two handles on one storage) claiming every entry at once: each entry is claimed once.
pub(crate) async fn two_replicas_never_claim_the_same_entry(b: &dyn Backend) {
    let (one, two) = (b.open(None).await, b.open(None).await);
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(one.enqueue_outbound(outbound(&format!("c{i}"), send("x"))).await.unwrap());
    }
    let mut tasks = Vec::new();
    for id in ids.iter().copied() {
        for s in [&one, &two, &one, &two] {
            let s = Arc::clone(s);
            tasks.push(tokio::spawn(async move { (id, s.begin_outbound_attempt(id, 11).await.unwrap()) }));
        }
    }
    let mut claims = std::collections::HashMap::<i64, u32>::new();
    for t in tasks {
        let (id, won) = t.await.unwrap();
        *claims.entry(id).or_default() += u32::from(won);
    }
    for id in ids {
        assert_eq!(claims.get(&id).copied(), Some(1), "entry {id} claimed exactly once");
        assert_eq!(one.outbox(Some(id), 1).await.unwrap()[0].attempts, 1);
    }
    one.close().await;
    two.close().await;
}

/// A claim whose lease runs (renewed by its owner) survives another replica's recovery; one whose lease ran
/// out is taken over (a create becomes uncertain, a delete pending), and its old owner can neither renew
/// nor finish it any more.
pub(crate) async fn only_expired_claims_are_taken_over_by_another_replica(b: &dyn Backend) {
    let (one, two) = (b.open(None).await, b.open(None).await);
    let create = one.enqueue_outbound(outbound("a", send("a1"))).await.unwrap();
    let delete = one.enqueue_outbound(outbound("b", OutboundOp::Delete { activity_id: "9".into() })).await.unwrap();
    assert!(one.begin_outbound_attempt(create, 1_000).await.unwrap());
    assert!(one.begin_outbound_attempt(delete, 1_000).await.unwrap());
    let state = |s: Arc<dyn Store>, id: i64| async move { s.outbox(Some(id), 1).await.unwrap()[0].state };
    // Replica two restarts while one is sending: nothing of one's is touched.
    assert_eq!(two.recover_outbound(2_000).await.unwrap(), (0, 0));
    assert_eq!(state(Arc::clone(&two), create).await, OutboxState::Sending);
    // One renews the delete (a slow request), not the create (it died sending it, say).
    assert!(one.renew_outbound_lease(delete, 30_000).await.unwrap());
    assert!(!two.renew_outbound_lease(delete, 30_000).await.unwrap(), "only the owner renews");
    assert_eq!(two.recover_outbound(1_000 + OUTBOX_LEASE_MS + 1).await.unwrap(), (0, 1));
    assert_eq!(state(Arc::clone(&two), create).await, OutboxState::Uncertain, "a create that may have landed is never re-posted");
    assert_eq!(state(Arc::clone(&two), delete).await, OutboxState::Sending, "a renewed lease is respected");
    assert_eq!(two.recover_outbound(30_000 + OUTBOX_LEASE_MS + 1).await.unwrap(), (1, 0));
    assert_eq!(state(Arc::clone(&two), delete).await, OutboxState::Pending);
    // Two claims it again; one's late outcome does not overwrite two's claim.
    assert!(two.begin_outbound_attempt(delete, 100_000).await.unwrap());
    assert!(!one.renew_outbound_lease(delete, 100_001).await.unwrap(), "the old owner lost its claim");
    one.finish_outbound(delete, Finish::Dead { error: Failed::new(ErrorClass::Refused, "late") }, event("dead")).await.unwrap();
    assert_eq!(state(Arc::clone(&one), delete).await, OutboxState::Sending, "the old owner's outcome is not applied");
    two.finish_outbound(delete, Finish::Delivered { result_id: "9".into() }, event("delivered")).await.unwrap();
    assert_eq!(state(Arc::clone(&one), delete).await, OutboxState::Delivered);
    one.close().await;
    two.close().await;
}

/// Sends to one conversation keep their order across replicas: while one replica holds the head, the other
/// can neither see nor claim the next entry.
pub(crate) async fn conversation_order_holds_across_two_claimers(b: &dyn Backend) {
    let (one, two) = (b.open(None).await, b.open(None).await);
    let a1 = one.enqueue_outbound(outbound("a", send("a1"))).await.unwrap();
    let a2 = two.enqueue_outbound(outbound("a", send("a2"))).await.unwrap();
    assert!(one.begin_outbound_attempt(a1, 11).await.unwrap());
    assert!(two.due_outbound(12, 10).await.unwrap().is_empty(), "a2 waits while a1 is claimed elsewhere");
    assert!(!two.begin_outbound_attempt(a2, 12).await.unwrap(), "a2 cannot be claimed before a1 is done");
    // A retry later keeps a2 behind a1 too.
    one.finish_outbound(a1, Finish::Retry { at_ms: 50, error: Failed::new(ErrorClass::Throttled, "429") }, event("retry")).await.unwrap();
    assert!(!two.begin_outbound_attempt(a1, 20).await.unwrap(), "not due yet");
    assert!(!two.begin_outbound_attempt(a2, 20).await.unwrap(), "a1 is still open");
    assert!(two.begin_outbound_attempt(a1, 50).await.unwrap());
    two.finish_outbound(a1, Finish::Delivered { result_id: "1".into() }, event("delivered")).await.unwrap();
    assert_eq!(one.due_outbound(51, 10).await.unwrap().iter().map(|i| i.id).collect::<Vec<_>>(), vec![a2]);
    assert!(one.begin_outbound_attempt(a2, 51).await.unwrap());
    one.close().await;
    two.close().await;
}

pub(crate) async fn no_audit_event_no_send(b: &dyn Backend) {
    let store = b.open(None).await;
    store.enqueue_outbound(outbound("c", send("first"))).await.unwrap();
    // The audit table refuses writes (a full disk, a broken file): nothing may be queued.
    b.refuse_inserts("audit");
    assert!(store.enqueue_outbound(outbound("c", send("second"))).await.is_err());
    let queued = store.outbox(None, 10).await.unwrap();
    assert_eq!(queued.len(), 1, "the send without its audit event was not queued");
    store.close().await;
}

pub(crate) async fn a_failed_write_leaves_nothing_behind(b: &dyn Backend) {
    let store = b.open(None).await;
    store.enqueue_outbound(outbound("c", send("first"))).await.unwrap();
    // The audit event is written, then the outbox refuses the entry: the event must go too.
    b.refuse_inserts("outbox");
    assert!(store.enqueue_outbound(outbound("c", send("second"))).await.is_err());
    assert_eq!(intact(store.as_ref()).await, 1, "no audit event for a send that was never queued");
    // The writer goes on: other writes in later (or the same) transactions still commit.
    assert!(matches!(store.commit_inbound(record("a1", "c1")).await.unwrap(), CommitOutcome::Accepted { .. }));
    store.close().await;
}

/// A chain of `n` events (enqueued sends), closed.
async fn chain(b: &dyn Backend, key: Option<&str>, n: usize) {
    let store = b.open(key).await;
    for i in 0..n {
        store.enqueue_outbound(outbound(&format!("c{i}"), send("x"))).await.unwrap();
    }
    assert_eq!(intact(store.as_ref()).await, n as u64);
    store.close().await;
}

async fn verdict(b: &dyn Backend, key: Option<&str>, expect: Option<&AuditHead>) -> Result<audit::Verified, Broken> {
    let store = b.open(key).await;
    let v = store.verify_audit(expect).await.unwrap();
    store.close().await;
    v
}

pub(crate) async fn audit_chain_detects_an_edit(b: &dyn Backend) {
    chain(b, None, 3).await;
    b.execute("UPDATE audit SET target = 'somewhere else' WHERE id = 2");
    assert_eq!(verdict(b, None, None).await, Err(Broken::Altered { id: 2 }));
}

pub(crate) async fn audit_detects_a_truncated_tail(b: &dyn Backend) {
    chain(b, None, 4).await;
    b.execute("DELETE FROM audit WHERE id > 2");
    assert_eq!(verdict(b, None, None).await, Err(Broken::Truncated { last_id: 2, highest: 4 }));
    // Appending after the cut does not hide it: the ids jump.
    let store = b.open(None).await;
    store.record_audit(event("ok")).await.unwrap();
    assert_eq!(store.verify_audit(None).await.unwrap(), Err(Broken::Gap { id: 5, after: 2 }));
    store.close().await;
}

pub(crate) async fn audit_detects_that_every_event_was_deleted(b: &dyn Backend) {
    chain(b, None, 3).await;
    b.execute("DELETE FROM audit");
    assert_eq!(verdict(b, None, None).await, Err(Broken::Truncated { last_id: 0, highest: 3 }));
}

pub(crate) async fn audit_detects_a_renumbered_event(b: &dyn Backend) {
    chain(b, None, 3).await;
    b.execute("UPDATE audit SET id = 10 WHERE id = 3");
    assert_eq!(verdict(b, None, None).await, Err(Broken::Gap { id: 10, after: 2 }));
    // Every id shifted: the chain must start at #1.
    b.execute("UPDATE audit SET id = 3 WHERE id = 10");
    b.execute("UPDATE audit SET id = id + 10");
    assert_eq!(verdict(b, None, None).await, Err(Broken::Gap { id: 11, after: 0 }));
}

/// Rewrite events `from..` the way an attacker without the key can: edit event `from`, then recompute the
/// links with the unkeyed rule.
async fn recompute_without_key(b: &dyn Backend, from: i64) {
    b.execute(&format!("UPDATE audit SET target = 'somewhere else' WHERE id = {from}"));
    let store = b.open(None).await;
    let mut rows = store.audit_events(1000).await.unwrap();
    store.close().await;
    rows.reverse();
    let mut prev = String::new();
    for r in rows {
        if r.id >= from {
            let hash = audit::link_hash(None, r.id, &prev, &r.event);
            b.execute(&format!("UPDATE audit SET prev_hash = '{prev}', hash = '{hash}' WHERE id = {}", r.id));
            prev = hash;
        } else {
            prev = r.hash;
        }
    }
}

pub(crate) async fn audit_detects_a_chain_recomputed_without_the_key(b: &dyn Backend) {
    chain(b, Some(KEY), 4).await;
    // Signed events verify with their key only.
    assert_eq!(verdict(b, None, None).await, Err(Broken::KeyNeeded { id: 1 }));
    assert_eq!(verdict(b, Some("another-key-of-enough-length"), None).await, Err(Broken::Altered { id: 1 }));
    recompute_without_key(b, 2).await;
    assert_eq!(verdict(b, Some(KEY), None).await, Err(Broken::Unsigned { id: 2 }));
    // All of it recomputed: nothing is signed any more.
    recompute_without_key(b, 1).await;
    assert_eq!(verdict(b, Some(KEY), None).await, Err(Broken::UnsignedTail { id: 1 }));
}

pub(crate) async fn audit_expected_head_catches_an_unkeyed_rewrite(b: &dyn Backend) {
    chain(b, None, 3).await;
    let head = verdict(b, None, None).await.unwrap().head;
    assert_eq!((head.count, head.last_id), (3, 3));
    assert!(verdict(b, None, Some(&head)).await.is_ok());
    // Without a key, a recomputed chain verifies on its own; the head recorded elsewhere does not match it.
    recompute_without_key(b, 2).await;
    assert!(verdict(b, None, None).await.is_ok());
    assert_eq!(verdict(b, None, Some(&head)).await, Err(Broken::HeadMismatch { expected: head }));
}

/// Dev mode: a reference written by an authenticated activity is never overwritten by an anonymous one (the
/// activity itself is kept); anonymous over anonymous and authenticated over anything are written.
pub(crate) async fn an_anonymous_activity_never_overwrites_an_authenticated_reference(b: &dyn Backend) {
    let store = b.open(None).await;
    let mut anonymous = record("a1", "c1");
    anonymous.reference.service_url = "http://127.0.0.1:1/_connector".into();
    anonymous.reference.authenticated = false;
    store.commit_inbound(anonymous.clone()).await.unwrap();
    // Anonymous over anonymous: written (dev mode alone still works).
    let mut again = anonymous.clone();
    again.activity_id = "a2".into();
    again.reference.service_url = "http://127.0.0.1:2/_connector".into();
    store.commit_inbound(again).await.unwrap();
    let r = store.conversation_ref("bot", "c1").await.unwrap().unwrap();
    assert_eq!((r.service_url.as_str(), r.authenticated), ("http://127.0.0.1:2/_connector", false));
    // Authenticated over anonymous: written and marked.
    store.commit_inbound(record("a3", "c1")).await.unwrap();
    let r = store.conversation_ref("bot", "c1").await.unwrap().unwrap();
    assert_eq!((r.service_url.as_str(), r.authenticated), ("https://smba.trafficmanager.net/amer/", true));
    // Anonymous over authenticated: the activity is kept, the reference is not touched.
    let mut forged = anonymous.clone();
    forged.activity_id = "a4".into();
    forged.reference.usable = false;
    assert!(matches!(store.commit_inbound(forged).await.unwrap(), CommitOutcome::Accepted { .. }));
    let r = store.conversation_ref("bot", "c1").await.unwrap().unwrap();
    assert_eq!((r.service_url.as_str(), r.authenticated, r.usable), ("https://smba.trafficmanager.net/amer/", true, true));
    store.close().await;
    let store = b.open(None).await;
    assert!(store.conversation_ref("bot", "c1").await.unwrap().unwrap().authenticated);
    store.close().await;
}

/// `agent-id provision` keeps one state per key: saved, replaced (never duplicated), read back, deleted.
pub(crate) async fn provisioning_state_is_saved_replaced_and_forgotten(store: &dyn Store) {
    assert_eq!(store.provisioning("bot-a/tenant").await.unwrap(), None);
    let first = ProvisioningRecord { key: "bot-a/tenant".into(), state: r#"{"step":1}"#.into(), updated_at_ms: 10 };
    store.save_provisioning(first.clone()).await.unwrap();
    store
        .save_provisioning(ProvisioningRecord { key: "bot-b/tenant".into(), state: r#"{"step":9}"#.into(), updated_at_ms: 11 })
        .await
        .unwrap();
    assert_eq!(store.provisioning("bot-a/tenant").await.unwrap(), Some(first));
    let second = ProvisioningRecord { key: "bot-a/tenant".into(), state: r#"{"step":2}"#.into(), updated_at_ms: 20 };
    store.save_provisioning(second.clone()).await.unwrap();
    assert_eq!(store.provisioning("bot-a/tenant").await.unwrap(), Some(second));
    assert!(store.delete_provisioning("bot-a/tenant").await.unwrap());
    assert!(!store.delete_provisioning("bot-a/tenant").await.unwrap());
    assert_eq!(store.provisioning("bot-a/tenant").await.unwrap(), None);
    // The other key is untouched.
    assert_eq!(store.provisioning("bot-b/tenant").await.unwrap().map(|r| r.updated_at_ms), Some(11));
}

/// The welcome marker: recorded once per (bot, conversation); the bot's case does not matter, the
/// conversation's does. Nothing is written to the provisioning table any more.
pub(crate) async fn a_conversation_is_welcomed_once_whatever_the_bot_s_case(store: &dyn Store) {
    assert_eq!(store.welcomed_at("app-1", "a:1Case").await.unwrap(), None);
    assert!(store.record_welcome("APP-1", "a:1Case", 10).await.unwrap(), "the first call records it");
    assert!(!store.record_welcome("app-1", "a:1Case", 20).await.unwrap(), "the second finds it");
    assert_eq!(store.welcomed_at("App-1", "a:1Case").await.unwrap(), Some(10), "the first time is kept");
    assert!(store.record_welcome("app-1", "a:1case", 30).await.unwrap(), "another conversation (ids are compared exactly)");
    assert!(store.record_welcome("app-2", "a:1Case", 40).await.unwrap(), "another bot");
    assert_eq!(store.provisioning("welcome:app-1:a:1Case").await.unwrap(), None);
}

pub(crate) fn offer(id: &str, state: OfferState) -> FileOffer {
    FileOffer {
        id: id.into(),
        bot_app_id: "App-1".into(),
        tenant_id: "t".into(),
        conversation_id: "a:1Case".into(),
        name: "notes.txt".into(),
        size: 12,
        sha256: "ab".repeat(32),
        requested_by: "mcp:stdio:claude-code".into(),
        state,
        detail: None,
        created_at_ms: 100,
        updated_at_ms: 100,
        expires_at_ms: 86_400_100,
    }
}

/// A file offer is recorded once, read back whole, and moved only from the state the caller names, to a state
/// the consent flow goes to; it can be forgotten.
pub(crate) async fn file_offers_move_only_from_the_state_they_are_in(store: &dyn Store) {
    let id = "fc0123456789abcdef";
    assert_eq!(store.file_offer(id).await.unwrap(), None);
    let mut o = offer(id, OfferState::Offered);
    store.create_file_offer(&o).await.unwrap();
    assert_eq!(store.file_offer(id).await.unwrap(), Some(o.clone()));
    assert!(matches!(store.create_file_offer(&offer(id, OfferState::Uploaded)).await, Err(StoreError::Conflict(_))), "an id is used once");
    assert_eq!(store.file_offer(id).await.unwrap(), Some(o.clone()), "the offer is unchanged");
    // Accepted: offered → uploading; a second answer (a decline, another accept) finds it moved.
    assert!(store.transition_file_offer(id, OfferState::Offered, OfferState::Uploading, None, 200).await.unwrap());
    assert!(!store.transition_file_offer(id, OfferState::Offered, OfferState::Declined, None, 210).await.unwrap());
    assert!(!store.transition_file_offer(id, OfferState::Offered, OfferState::Uploading, None, 220).await.unwrap());
    (o.state, o.updated_at_ms) = (OfferState::Uploading, 200);
    assert_eq!(store.file_offer(id).await.unwrap(), Some(o.clone()));
    assert!(store.transition_file_offer(id, OfferState::Uploading, OfferState::Uploaded, Some("file card: outbox #4"), 300).await.unwrap());
    (o.state, o.updated_at_ms, o.detail) = (OfferState::Uploaded, 300, Some("file card: outbox #4".into()));
    assert_eq!(store.file_offer(id).await.unwrap(), Some(o.clone()));
    // A step the flow does not have is refused before anything is written.
    let refused = store.transition_file_offer(id, OfferState::Uploaded, OfferState::Failed, Some("x"), 400).await;
    assert!(matches!(refused, Err(StoreError::Database(_))), "{refused:?}");
    assert_eq!(store.file_offer(id).await.unwrap(), Some(o.clone()));
    assert!(
        !store.transition_file_offer("fc00000000000000ff", OfferState::Offered, OfferState::Expired, None, 1).await.unwrap(),
        "unknown"
    );
    // Expired and failed offers (the sweep, a refused card), then forgotten.
    let other = "fc00000000000000ee";
    store.create_file_offer(&offer(other, OfferState::Offered)).await.unwrap();
    assert!(store.transition_file_offer(other, OfferState::Offered, OfferState::Expired, None, 500).await.unwrap());
    assert_eq!(store.file_offer(other).await.unwrap().map(|o| o.state), Some(OfferState::Expired));
    assert!(store.delete_file_offer(other).await.unwrap());
    assert!(!store.delete_file_offer(other).await.unwrap());
    assert_eq!(store.file_offer(other).await.unwrap(), None);
    assert_eq!(store.file_offer(id).await.unwrap(), Some(o), "the other offer is untouched");
    assert_eq!(store.provisioning(&format!("file_consent:{id}")).await.unwrap(), None);
}

/// Two replicas (two handles on one database) answering at once: each conversation is welcomed by exactly
/// one call, each offer taken (accepted or declined) by exactly one answer.
pub(crate) async fn replicas_welcome_once_and_take_an_offer_once(b: &dyn Backend) {
    let (one, two) = (b.open(None).await, b.open(None).await);
    let ids: Vec<String> = (0..12).map(|i| format!("fc{i:016x}")).collect();
    for id in &ids {
        one.create_file_offer(&offer(id, OfferState::Offered)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for (n, s) in [&one, &two, &one, &two].into_iter().enumerate() {
            let (s, id) = (Arc::clone(s), id.clone());
            let to = if n % 2 == 0 { OfferState::Uploading } else { OfferState::Declined };
            tasks.push(tokio::spawn(async move {
                let welcomed = s.record_welcome("bot", &format!("c{i}"), 1).await.unwrap();
                let took = s.transition_file_offer(&id, OfferState::Offered, to, None, 2).await.unwrap();
                (i, welcomed, took)
            }));
        }
    }
    let mut counts = vec![(0u32, 0u32); ids.len()];
    for t in tasks {
        let (i, welcomed, took) = t.await.unwrap();
        counts[i].0 += u32::from(welcomed);
        counts[i].1 += u32::from(took);
    }
    for (i, (welcomed, took)) in counts.into_iter().enumerate() {
        assert_eq!((welcomed, took), (1, 1), "conversation c{i} welcomed once, offer {} taken once", ids[i]);
        let state = two.file_offer(&ids[i]).await.unwrap().unwrap().state;
        assert!(matches!(state, OfferState::Uploading | OfferState::Declined), "{state:?}");
    }
    one.close().await;
    two.close().await;
}

/// The welcome markers and file offers an older release kept as provisioning records (`welcome:…`,
/// `file_consent:…`) are moved into their tables when a store at schema `before` is opened, and are gone from
/// `agent_id_provisioning` (records that never read as either are dropped); `agent-id provision`'s own
/// records stay.
pub(crate) async fn provisioned_state_moves_to_its_own_tables(b: &dyn Backend, before: i64) {
    b.create_at_version(before);
    let offered = r#"{"bot":"App-1","tenant":"t","conversation":"a:1Case","name":"notes.txt","size":12,"sha256":"abab","requested_by":"mcp:stdio:claude-code","created_ms":100,"state":"offered","detail":null}"#;
    let uploaded = r#"{"bot":"app-1","tenant":"t","conversation":"19:c@thread.v2","name":"x.csv","size":3,"sha256":"cd","requested_by":"mcp:http:ops","created_ms":200,"state":"uploaded","detail":"file card: outbox #7"}"#;
    b.execute(&format!(
        "INSERT INTO agent_id_provisioning (key, state, updated_at_ms) VALUES
         ('app-1/tenant-1', '{{\"status\":\"ready\"}}', 5),
         ('welcome:app-1:19:c@thread.v2', 'sent', 7),
         ('welcome:app-2:a:1Case:x', 'sent', 8),
         ('welcome:broken', 'sent', 9),
         ('file_consent:fc0123456789abcdef', '{offered}', 150),
         ('file_consent:fc00000000000000ff', '{uploaded}', 250),
         ('file_consent:fc00000000000000aa', 'not json', 11),
         ('file_consent:fc00000000000000bb', '{{\"bot\":\"app-1\"}}', 12)"
    ));
    let store = b.open(None).await;
    let version = store.schema_version().await.unwrap();
    assert!(version > before, "migrated from {before} to {version}");
    for moved in [
        "welcome:app-1:19:c@thread.v2",
        "welcome:app-2:a:1Case:x",
        "welcome:broken",
        "file_consent:fc0123456789abcdef",
        "file_consent:fc00000000000000ff",
        "file_consent:fc00000000000000aa",
        "file_consent:fc00000000000000bb",
    ] {
        assert_eq!(store.provisioning(moved).await.unwrap(), None, "{moved} is still a provisioning record");
    }
    assert_eq!(
        store.provisioning("app-1/tenant-1").await.unwrap().map(|r| (r.state, r.updated_at_ms)),
        Some((r#"{"status":"ready"}"#.into(), 5))
    );
    assert_eq!(store.welcomed_at("app-1", "19:c@thread.v2").await.unwrap(), Some(7));
    assert_eq!(store.welcomed_at("APP-2", "a:1Case:x").await.unwrap(), Some(8), "the conversation is everything after the bot");
    assert!(!store.record_welcome("app-1", "19:c@thread.v2", 50).await.unwrap(), "a moved welcome is not sent again");
    let mut expected = offer("fc0123456789abcdef", OfferState::Offered);
    expected.sha256 = "abab".into();
    expected.updated_at_ms = 150;
    expected.expires_at_ms = 100 + super::offers::LEGACY_OFFER_TTL_MS;
    assert_eq!(store.file_offer("fc0123456789abcdef").await.unwrap(), Some(expected));
    let done = store.file_offer("fc00000000000000ff").await.unwrap().unwrap();
    assert_eq!(
        (
            done.bot_app_id.as_str(),
            done.conversation_id.as_str(),
            done.state,
            done.detail.as_deref(),
            done.size,
            done.requested_by.as_str()
        ),
        ("app-1", "19:c@thread.v2", OfferState::Uploaded, Some("file card: outbox #7"), 3, "mcp:http:ops")
    );
    assert_eq!(store.file_offer("fc00000000000000aa").await.unwrap(), None);
    assert_eq!(store.file_offer("fc00000000000000bb").await.unwrap(), None);
    // A moved offer goes on like any other: the person's answer takes it.
    assert!(store.transition_file_offer("fc0123456789abcdef", OfferState::Offered, OfferState::Uploading, None, 300).await.unwrap());
    store.close().await;
    // Opening again moves nothing more.
    let store = b.open(None).await;
    assert_eq!(store.schema_version().await.unwrap(), version);
    assert_eq!(store.file_offer("fc0123456789abcdef").await.unwrap().map(|o| o.state), Some(OfferState::Uploading));
    store.close().await;
}

pub(crate) async fn graph_inbound_state_commits_with_its_entries(store: &dyn Store) {
    use secrecy::ExposeSecret as _;
    let sub = |expires| GraphSubscription {
        subscription_id: "sub-1".into(),
        bot_app_id: "bot".into(),
        resource: "/me/chats/getAllMessages".into(),
        client_state: secrecy::SecretString::from("s3cret-state".to_owned()),
        expires_at_ms: expires,
        updated_at_ms: 1,
    };
    store.put_graph_subscription(sub(100)).await.unwrap();
    store.put_graph_subscription(sub(200)).await.unwrap();
    let subs = store.graph_subscriptions(Some("BOT")).await.unwrap();
    assert_eq!(subs, vec![sub(200)], "replaced, found case-insensitively by bot");
    assert_eq!(subs[0].client_state.expose_secret(), "s3cret-state");
    assert!(!format!("{:?}", subs[0]).contains("s3cret"), "the clientState never shows in Debug");
    assert!(store.graph_subscriptions(Some("other")).await.unwrap().is_empty());

    let note = |event: &str, at| NewGraphNotification {
        subscription_id: "sub-1".into(),
        bot_app_id: "bot".into(),
        event: event.into(),
        resource: "chats('19:c')/messages('1')".into(),
        received_at_ms: at,
    };
    let ids = store.record_graph_notifications(vec![note("created", 5), note("missed", 6)]).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let pending = store.pending_graph_notifications(10).await.unwrap();
    assert_eq!(pending.iter().map(|n| (n.id, n.event.as_str())).collect::<Vec<_>>(), vec![(ids[0], "created"), (ids[1], "missed")]);

    let mut r = record("m1", "19:c");
    r.auth = crate::ids::AuthKind::Graph;
    let cursor = |ms| ChatCursor { bot_app_id: "bot".into(), chat_id: "19:c".into(), modified_ms: ms };
    let out = store
        .commit_graph(GraphCommit { records: vec![r.clone()], cursors: vec![cursor(50)], mail: None, done: Some(ids[0]) })
        .await
        .unwrap();
    assert!(matches!(out[..], [CommitOutcome::Accepted { .. }]));
    let pending = store.pending_graph_notifications(10).await.unwrap();
    assert_eq!(pending.len(), 1, "the finished notification is gone with the commit");
    assert_eq!(pending[0].id, ids[1]);
    let inbox = store.pending_inbox(Some("bot"), 10).await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].auth, crate::ids::AuthKind::Graph, "stored as `graph`");
    assert_eq!(store.graph_cursors("bot").await.unwrap(), vec![cursor(50)]);

    // A re-read (catch-up after a restart): the entry is a duplicate and the cursor never moves back.
    let out =
        store.commit_graph(GraphCommit { records: vec![r], cursors: vec![cursor(40)], mail: None, done: Some(ids[1]) }).await.unwrap();
    assert_eq!(out, vec![CommitOutcome::Duplicate]);
    assert_eq!(store.graph_cursors("bot").await.unwrap(), vec![cursor(50)]);
    assert!(store.pending_graph_notifications(10).await.unwrap().is_empty());
    assert_eq!(store.pending_inbox(Some("bot"), 10).await.unwrap().len(), 1);

    store.delete_graph_subscription("sub-1").await.unwrap();
    assert!(store.graph_subscriptions(None).await.unwrap().is_empty());
}

/// The Agent User's mail: entries and the Inbox's cursor commit together; the link is replaced, `since_ms` never
/// moves back; a mail read twice (a restart, a new round) is a duplicate. Graph chats and mail threads never
/// give a proactive send its service URL.
pub(crate) async fn the_mail_cursor_commits_with_its_entries(store: &dyn Store) {
    assert_eq!(store.mail_cursor("bot").await.unwrap(), None);
    let cursor = |link: &str, since| MailCursor { bot_app_id: "bot".into(), link: link.into(), since_ms: since, updated_at_ms: 7 };
    let mail = |id: &str| {
        let mut r = record(id, "mail:AAQkThread=");
        r.auth = crate::ids::AuthKind::Graph;
        r.activity_type = "mail".into();
        r.reference.channel_id = "mail".into();
        r.reference.service_url = "https://graph.microsoft.com/v1.0".into();
        r.reference.conversation_type = Some("mail".into());
        r.reference.updated_at_ms = 50;
        r
    };
    // The first read's baseline, before anything was read.
    store.commit_graph(GraphCommit { mail: Some(cursor("", 100)), ..GraphCommit::default() }).await.unwrap();
    assert_eq!(store.mail_cursor("BOT").await.unwrap(), Some(cursor("", 100)), "found case-insensitively by bot");
    let page = GraphCommit {
        records: vec![mail("<a@x>"), mail("<b@x>")],
        mail: Some(cursor("https://g/next?$skiptoken=1", 300)),
        ..GraphCommit::default()
    };
    let out = store.commit_graph(page).await.unwrap();
    assert!(matches!(out[..], [CommitOutcome::Accepted { .. }, CommitOutcome::Accepted { .. }]), "{out:?}");
    assert_eq!(store.mail_cursor("bot").await.unwrap(), Some(cursor("https://g/next?$skiptoken=1", 300)));
    // A later page: the link moves on, the newest time never back; a mail seen before is a duplicate.
    let page = GraphCommit {
        records: vec![mail("<b@x>"), mail("<c@x>")],
        mail: Some(cursor("https://g/delta?$deltatoken=2", 200)),
        ..GraphCommit::default()
    };
    let out = store.commit_graph(page).await.unwrap();
    assert!(matches!(out[..], [CommitOutcome::Duplicate, CommitOutcome::Accepted { .. }]), "{out:?}");
    assert_eq!(store.mail_cursor("bot").await.unwrap(), Some(cursor("https://g/delta?$deltatoken=2", 300)));
    assert_eq!(store.pending_inbox(Some("bot"), 10).await.unwrap().len(), 3);
    // Not a Connector conversation: no proactive send takes its service URL.
    assert_eq!(store.tenant_service_url("bot", "t").await.unwrap(), None);
    let mut chat = record("m1", "19:chat@unq.gbl.spaces");
    chat.reference.channel_id = "graph".into();
    chat.reference.service_url = "https://graph.microsoft.com/v1.0".into();
    chat.reference.updated_at_ms = 60;
    store.commit_inbound(chat).await.unwrap();
    assert_eq!(store.tenant_service_url("bot", "t").await.unwrap(), None, "a Graph chat is not a Connector conversation");
    store.commit_inbound(record("m2", "a:bot-chat")).await.unwrap();
    assert_eq!(store.tenant_service_url("bot", "t").await.unwrap().as_deref(), Some("https://smba.trafficmanager.net/amer/"));
    assert_eq!(store.mail_cursor("other").await.unwrap(), None);
}

/// Two replicas on one database share the Graph inbound's work: a notification is claimed by one of them at a
/// time (another's live claim is skipped, an expired one taken over), and a named lease (a bot's
/// subscription, a catch-up read) is held by one at a time, renewed by its holder, taken over once it ran out.
pub(crate) async fn graph_notifications_and_leases_are_held_by_one_replica_at_a_time(b: &dyn Backend) {
    let (one, two) = (b.open(None).await, b.open(None).await);
    let note = |i: i64| NewGraphNotification {
        subscription_id: "sub-1".into(),
        bot_app_id: "bot".into(),
        event: "created".into(),
        resource: format!("chats('19:c')/messages('{i}')"),
        received_at_ms: i,
    };
    let ids = one.record_graph_notifications((0..5).map(note).collect()).await.unwrap();
    let of = |ns: Vec<crate::store::GraphNotification>| ns.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(of(one.claim_graph_notifications(3, 1_000).await.unwrap()), ids[..3], "the oldest first");
    assert_eq!(of(two.claim_graph_notifications(10, 1_000).await.unwrap()), ids[3..], "another replica's claims are skipped");
    assert!(two.claim_graph_notifications(10, 2_000).await.unwrap().iter().all(|n| ids[3..].contains(&n.id)));
    assert_eq!(of(one.claim_graph_notifications(10, 2_000).await.unwrap()), ids[..3], "a replica's own claims come back to it");
    // One dies: once its claims ran out, two takes them over (and one no longer gets them).
    let later = 2_000 + GRAPH_CLAIM_MS + 1;
    assert_eq!(of(two.claim_graph_notifications(10, later).await.unwrap()), ids, "expired claims are taken over");
    assert!(one.claim_graph_notifications(10, later).await.unwrap().is_empty());
    // Finished work is gone for everyone.
    two.commit_graph(GraphCommit { done: Some(ids[0]), ..GraphCommit::default() }).await.unwrap();
    assert!(!of(two.claim_graph_notifications(10, later).await.unwrap()).contains(&ids[0]));

    // Claimed at the same moment by both: every row goes to exactly one of them.
    let fresh = one.record_graph_notifications((10..40).map(note).collect()).await.unwrap();
    let now = later + 10 * GRAPH_CLAIM_MS;
    let mut tasks = Vec::new();
    for (replica, s) in [(1, &one), (2, &two), (1, &one), (2, &two)] {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move { (replica, s.claim_graph_notifications(8, now).await.unwrap()) }));
    }
    let mut owner = std::collections::HashMap::<i64, u8>::new();
    for t in tasks {
        let (replica, claimed) = t.await.unwrap();
        for n in claimed {
            let held = owner.entry(n.id).or_insert(replica);
            assert_eq!(*held, replica, "notification {} claimed by both replicas", n.id);
        }
    }
    assert!(owner.keys().all(|id| fresh.contains(id) || ids.contains(id)));

    // A lease: one holder at a time, renewed by it, taken over once it ran out, released only by its holder.
    let lease = "graph-subscription:bot";
    assert!(one.take_graph_lease(lease, 10_000, 1_000).await.unwrap());
    assert!(!two.take_graph_lease(lease, 10_500, 1_000).await.unwrap(), "held by one");
    assert!(one.take_graph_lease(lease, 10_900, 1_000).await.unwrap(), "renewed by its holder (until 11_900)");
    assert!(!two.take_graph_lease(lease, 11_500, 1_000).await.unwrap(), "the renewal counts");
    two.release_graph_lease(lease).await.unwrap();
    assert!(!two.take_graph_lease(lease, 11_600, 1_000).await.unwrap(), "only the holder releases");
    assert!(two.take_graph_lease(lease, 12_000, 1_000).await.unwrap(), "ran out: taken over");
    assert!(!one.take_graph_lease(lease, 12_100, 1_000).await.unwrap(), "the old holder lost it");
    assert!(one.take_graph_lease("graph-catch-up:bot", 12_100, 1_000).await.unwrap(), "leases are independent by name");
    two.release_graph_lease(lease).await.unwrap();
    assert!(one.take_graph_lease(lease, 12_200, 1_000).await.unwrap(), "released: free at once");
    one.close().await;
    two.close().await;
}

fn holder(session: &str) -> ClaimHolder {
    ClaimHolder { session: session.into(), client: format!("client-{session}"), scope: "stdio".into() }
}

/// Who holds each live claim at `now`, as "key=session".
async fn holders(store: &dyn Store, now: i64) -> Vec<String> {
    store.live_claims(now).await.unwrap().into_iter().map(|c| format!("{}={}", c.target.key(), c.session)).collect()
}

/// Claims on conversations: one session at a time per target, across two handles (replicas); all or none;
/// renewed by the holder while live; a lapsed one stays lapsed and is handed over; released only by its
/// holder.
pub(crate) async fn conversation_claims_are_exclusive_across_handles_lapse_and_release(b: &dyn Backend) {
    let (one, two) = (b.open(None).await, b.open(None).await);
    let (a, bee) = (holder("sa"), holder("sb"));
    let (x, y, t) =
        (ClaimTarget::conversation("Bot", "t", "a:X"), ClaimTarget::conversation("bot", "t", "a:Y"), ClaimTarget::tenant("bot", "T"));
    let ClaimOutcome::Taken(taken) = one.claim_conversations(&[x.clone(), t.clone()], &a, 10_000, 1_000).await.unwrap() else {
        panic!("free targets were not taken")
    };
    assert_eq!(taken.iter().map(|c| (c.session.as_str(), c.until_ms)).collect::<Vec<_>>(), vec![("sa", 11_000), ("sa", 11_000)]);

    // Held by A: B gets nothing, not even the free target it asked for alongside (all or none).
    let held = two.claim_conversations(&[y.clone(), x.clone()], &bee, 10_500, 1_000).await.unwrap();
    let ClaimOutcome::Held(held) = held else { panic!("another session's live claim was taken: {held:?}") };
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0].target.clone(), held[0].session.as_str(), held[0].client.as_str(), held[0].until_ms),
        (x.clone(), "sa", "client-sa", 11_000)
    );
    assert_eq!(holders(two.as_ref(), 10_500).await, vec!["conversation/bot/a:X=sa", "tenant/bot/t=sa"], "nothing of B's was written");
    assert!(matches!(two.claim_conversations(std::slice::from_ref(&y), &bee, 10_500, 1_000).await.unwrap(), ClaimOutcome::Taken(_)));
    assert!(
        matches!(one.claim_conversations(std::slice::from_ref(&x), &a, 10_600, 1_000).await.unwrap(), ClaimOutcome::Taken(_)),
        "a holder extends its own"
    );
    assert_eq!(holders(one.as_ref(), 10_600).await, vec!["conversation/bot/a:X=sa", "conversation/bot/a:Y=sb", "tenant/bot/t=sa"]);

    // Renewed while live: the renewal counts on the other handle.
    assert_eq!(one.renew_claims("sa", 11_500, 1_000).await.unwrap(), 1, "x (until 11_600) renewed; t lapsed at 11_000");
    assert!(matches!(two.claim_conversations(std::slice::from_ref(&x), &bee, 12_000, 1_000).await.unwrap(), ClaimOutcome::Held(_)));
    // The lapsed tenant claim is not renewed again, and another session takes it.
    assert_eq!(one.renew_claims("sa", 12_000, 1_000).await.unwrap(), 1);
    assert!(matches!(two.claim_conversations(std::slice::from_ref(&t), &bee, 12_000, 1_000).await.unwrap(), ClaimOutcome::Taken(_)));
    // A stops renewing: once x lapsed it is handed over, and A cannot renew or retake it.
    assert!(matches!(two.claim_conversations(std::slice::from_ref(&x), &bee, 13_001, 1_000).await.unwrap(), ClaimOutcome::Taken(_)));
    assert_eq!(one.renew_claims("sa", 13_002, 1_000).await.unwrap(), 0);
    assert!(matches!(one.claim_conversations(std::slice::from_ref(&x), &a, 13_002, 1_000).await.unwrap(), ClaimOutcome::Held(_)));
    assert_eq!(holders(one.as_ref(), 13_002).await, vec!["conversation/bot/a:X=sb"], "y and t lapsed at 11_500 and 13_000");

    // Released only by the holder; then free at once.
    assert_eq!(one.release_claims("sa", Some(std::slice::from_ref(&x))).await.unwrap(), 0);
    assert_eq!(two.release_claims("sb", Some(std::slice::from_ref(&x))).await.unwrap(), 1);
    assert!(holders(one.as_ref(), 13_003).await.is_empty());
    assert!(matches!(one.claim_conversations(&[x.clone(), y.clone()], &a, 13_003, 1_000).await.unwrap(), ClaimOutcome::Taken(_)));
    two.release_claims("sa", None).await.unwrap();
    assert!(holders(two.as_ref(), 13_004).await.is_empty(), "a session's release lets go of all its claims");

    // Racing sessions on two handles: exactly one takes a free target.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = Arc::clone(if i % 2 == 0 { &one } else { &two });
        let h = holder(&format!("racer{i}"));
        tasks.push(tokio::spawn(async move { s.claim_conversations(&[ClaimTarget::bot("b2")], &h, 20_000, 1_000).await.unwrap() }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(matches!(t.await.unwrap(), ClaimOutcome::Taken(_)));
    }
    assert_eq!(won, 1, "one session holds a target at a time");
    one.close().await;
    two.close().await;
}
