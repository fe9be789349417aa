//! The bridge core without a transport: no rmcp, no sockets. A real SQLite store in a temporary folder,
//! an outbound worker that is never started (entries stay queued), configuration from TOML.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::deliver::{self, Mention, Settled};
use super::{Approvals, Error, Hub, Reach, Scope};
use crate::config::{Config, Synchronous};
use crate::connector::ConnectorClient;
use crate::connector::outbox::{BotTokens, Outbound, RetryPolicy};
use crate::connector::throttle::Throttle;
use crate::connector::tokens::ConfiguredTokens;
use crate::metrics::Metrics;
use crate::service_url::ConnectorPolicy;
use crate::store::{ConversationRef, InboundRecord, InboxState, OutboundOp, SqliteStore, Store, now_ms};

const BOT_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const BOT_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
const TENANT_1: &str = "11111111-0000-4000-8000-000000000001";
const TENANT_2: &str = "22222222-0000-4000-8000-000000000002";

struct Fixture {
    hub: Arc<Hub>,
    _dir: tempfile::TempDir,
}

fn config() -> Config {
    let toml = format!(
        r#"
[[bots]]
app_id = "{BOT_A}"
allowed_tenants = ["{TENANT_1}", "{TENANT_2}"]

[[bots]]
app_id = "{BOT_B}"
allowed_tenants = ["{TENANT_1}"]
"#
    );
    Config::from_sources(Some(&toml), "test", std::iter::empty()).expect("config")
}

async fn fixture() -> Fixture {
    let cfg = Arc::new(config());
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::default());
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("bridge.db"), Synchronous::Normal, 64, Arc::clone(&metrics)).expect("store"));
    let connector = ConnectorClient::new(ConnectorPolicy::new(false), Duration::from_secs(1)).expect("client");
    let tokens: Arc<dyn BotTokens> = Arc::new(ConfiguredTokens::new(HashMap::new(), false));
    let clouds = cfg.bots.iter().map(|b| (b.app_id.clone(), b.cloud)).collect();
    let outbound = Arc::new(Outbound::new(Arc::clone(&store), connector, tokens, clouds, Throttle::new(), RetryPolicy::default(), metrics));
    let (_tx, rx) = watch::channel(0);
    let hub = Arc::new(Hub::new(cfg, store, outbound, rx, Arc::new(Approvals::default()), false, HashMap::new()));
    Fixture { hub, _dir: dir }
}

fn reference(bot: &str, conversation: &str, tenant: &str, kind: &str) -> ConversationRef {
    ConversationRef {
        bot_app_id: bot.to_owned(),
        conversation_id: conversation.to_owned(),
        tenant_id: tenant.to_owned(),
        service_url: "https://smba.trafficmanager.net/teams/".to_owned(),
        channel_id: "msteams".to_owned(),
        conversation_type: Some(kind.to_owned()),
        user_id: None,
        user_aad_object_id: None,
        bot_id: None,
        usable: true,
        updated_at_ms: now_ms(),
        agentic: None,
        authenticated: true,
    }
}

async fn seen(f: &Fixture, r: ConversationRef) {
    f.hub.store.upsert_conversation_ref(r).await.expect("upsert");
}

async fn inbound(f: &Fixture, bot: &str, conversation: &str, tenant: &str, id: &str) {
    let record = InboundRecord {
        bot_app_id: bot.to_owned(),
        tenant_id: tenant.to_owned(),
        conversation_id: conversation.to_owned(),
        activity_id: id.to_owned(),
        activity_type: "message".to_owned(),
        auth: crate::ids::AuthKind::BotFramework,
        body: json!({"type": "message", "id": id, "text": "hi"}).to_string(),
        received_at_ms: now_ms(),
        dedupe_expires_at_ms: now_ms() + 60_000,
        reference: reference(bot, conversation, tenant, "personal"),
        state: InboxState::Pending,
    };
    f.hub.store.commit_inbound(record).await.expect("commit");
}

#[tokio::test]
async fn a_conversation_resolves_to_the_one_bot_in_scope_that_has_seen_it() {
    let f = fixture().await;
    seen(&f, reference(BOT_A, "a:1", TENANT_1, "personal")).await;
    let all = Scope::all("test");
    let (bot, r) = f.hub.conversation(&all, "a:1", None).await.expect("found");
    assert_eq!(bot.app_id, BOT_A);
    assert_eq!(r.conversation_id, "a:1");
    // The same with the bot named in another case.
    let (bot, _) = f.hub.conversation(&all, "a:1", Some(&BOT_A.to_ascii_uppercase())).await.expect("found by id");
    assert_eq!(bot.app_id, BOT_A);
    // Empty, unknown, out of scope.
    assert!(matches!(f.hub.conversation(&all, " ", None).await, Err(Error::Invalid(_))));
    assert!(matches!(f.hub.conversation(&all, "a:2", None).await, Err(Error::NotFound(_))));
    let only_b = Scope::new("b", &[BOT_B.to_owned()], &[]);
    assert!(matches!(f.hub.conversation(&only_b, "a:1", None).await, Err(Error::NotFound(_))));
    assert!(matches!(f.hub.conversation(&only_b, "a:1", Some(BOT_A)).await, Err(Error::NotFound(_))));
    let other_tenant = Scope::new("t2", &[], &[TENANT_2.to_owned()]);
    assert!(matches!(f.hub.conversation(&other_tenant, "a:1", None).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn two_bots_in_one_conversation_need_the_caller_to_choose() {
    let f = fixture().await;
    seen(&f, reference(BOT_A, "19:g@thread.v2", TENANT_1, "groupChat")).await;
    seen(&f, reference(BOT_B, "19:g@thread.v2", TENANT_1, "groupChat")).await;
    let all = Scope::all("test");
    let err = f.hub.conversation(&all, "19:g@thread.v2", None).await.expect_err("ambiguous");
    assert!(matches!(&err, Error::Invalid(m) if m.contains("say which with `bot`")), "{err}");
    let (bot, _) = f.hub.conversation(&all, "19:g@thread.v2", Some(BOT_B)).await.expect("chosen");
    assert_eq!(bot.app_id, BOT_B);
}

#[tokio::test]
async fn a_conversation_the_bot_was_removed_from_is_refused_and_nobody_can_answer_without_an_agent_user() {
    let f = fixture().await;
    let mut r = reference(BOT_A, "19:g@thread.v2", TENANT_1, "groupChat");
    r.usable = false;
    seen(&f, r).await;
    let all = Scope::all("test");
    assert!(matches!(f.hub.conversation(&all, "19:g@thread.v2", None).await, Err(Error::Refused(_))));
    let (bot, r) = f.hub.conversation_any(&all, "19:g@thread.v2", None).await.expect("still known");
    match f.hub.reach(&bot, &r, false) {
        Reach::Nobody(why) => assert!(why.contains("no Agent User is configured"), "{why}"),
        other => panic!("expected nobody, got {other:?}"),
    }
    let usable = reference(BOT_A, "a:1", TENANT_1, "personal");
    assert_eq!(f.hub.reach(&bot, &usable, true), Reach::Bot);
}

#[tokio::test]
async fn a_person_target_picks_the_bot_and_tenant_or_says_what_to_add() {
    let f = fixture().await;
    let all = Scope::all("test");
    let user = "33333333-0000-4000-8000-000000000003";
    // Two bots serve tenant 1 and neither chats with the person yet: ambiguous.
    let err = f.hub.person_target(&all, user, None, Some(TENANT_1)).await.expect_err("two bots");
    assert!(err.to_string().contains("several bots"), "{err}");
    // Only bot A serves tenant 2.
    let t = f.hub.person_target(&all, user, None, Some(TENANT_2)).await.expect("bot A");
    assert_eq!((t.bot.app_id.as_str(), t.tenant.as_str()), (BOT_A, TENANT_2));
    // Bot A serves two tenants: the caller must say which.
    let err = f.hub.person_target(&all, user, Some(BOT_A), None).await.expect_err("two tenants");
    assert!(err.to_string().contains("several tenants"), "{err}");
    // A tenant the bot does not serve.
    let err = f.hub.person_target(&all, user, Some(BOT_B), Some(TENANT_2)).await.expect_err("not served");
    assert!(matches!(err, Error::NotFound(_)));
    // An existing 1:1 chat with bot B decides between the two bots.
    let mut chat = reference(BOT_B, "a:b", TENANT_1, "personal");
    chat.user_aad_object_id = Some(user.to_owned());
    seen(&f, chat).await;
    let t = f.hub.person_target(&all, user, None, Some(TENANT_1)).await.expect("bot B, already chatting");
    assert_eq!(t.bot.app_id, BOT_B);
}

#[test]
fn mentions_need_their_tag_in_the_text() {
    let m = Mention { user_id: "29:x".into(), name: "Ada".into() };
    let entities = deliver::mention_entities("hi <at>Ada</at>", std::slice::from_ref(&m)).expect("tag present");
    assert_eq!(entities.len(), 1);
    assert!(matches!(deliver::mention_entities("hi Ada", std::slice::from_ref(&m)), Err(Error::Invalid(_))));
    let nameless = Mention { user_id: "29:x".into(), name: " ".into() };
    assert!(matches!(deliver::mention_entities("hi <at> </at>", &[nameless]), Err(Error::Invalid(_))));
}

#[test]
fn long_text_is_split_losslessly_but_not_with_mentions() {
    let long = "word ".repeat(9_000);
    let parts = deliver::text_messages(&long, &[]).expect("split");
    assert!(parts.len() > 1);
    let joined: String = parts.iter().filter_map(|a| a["text"].as_str()).collect();
    assert_eq!(joined, long);
    assert!(matches!(deliver::text_messages(&long, &[json!({"type": "mention"})]), Err(Error::Invalid(_))));
    assert!(matches!(deliver::text_messages("  ", &[]), Err(Error::Invalid(_))));
    let one = deliver::text_messages("hello", &[json!({"type": "mention"})]).expect("one");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["entities"][0]["type"], "mention");
}

#[test]
fn cards_are_checked_before_anything_is_queued() {
    assert!(matches!(deliver::card_message(None, json!({"type": "NotACard"})), Err(Error::Invalid(_))));
    let card = json!({"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "hi"}]});
    let activity = deliver::card_message(Some("t"), card).expect("valid");
    assert_eq!(activity["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
}

#[test]
fn only_refusals_that_mean_unreachable_fall_back() {
    assert!(Settled::Dead("the Connector refused the request: 403 Forbidden".into()).bot_cannot_reach());
    assert!(Settled::Dead("ConversationNotFound".into()).bot_cannot_reach());
    assert!(!Settled::Dead("the Connector refused the request: 400 BadArgument".into()).bot_cannot_reach());
    assert!(!Settled::Uncertain.bot_cannot_reach());
}

#[tokio::test]
async fn queued_messages_carry_the_requester_and_stay_queued_until_the_worker_runs() {
    let f = fixture().await;
    seen(&f, reference(BOT_A, "a:1", TENANT_1, "personal")).await;
    let all = Scope::all("test");
    let (bot, r) = f.hub.conversation(&all, "a:1", None).await.expect("found");
    let messages = deliver::text_messages("one", &[]).expect("body");
    let id = f.hub.enqueue_messages("mcp:test:host", &bot, &r, messages, Some("parent")).await.expect("queued");
    let items = f.hub.store.outbox(Some(id), 1).await.expect("outbox");
    let item = items.first().expect("entry");
    assert_eq!(item.requested_by, "mcp:test:host");
    assert!(matches!(&item.op, OutboundOp::Reply { reply_to, .. } if reply_to == "parent"));
    // Nobody delivers it here: after the wait it is still queued.
    assert!(matches!(f.hub.settle_within(id, Duration::from_millis(30)).await, Settled::Queued(0, None)));
    assert!(matches!(f.hub.enqueue_messages("x", &bot, &r, Vec::new(), None).await, Err(Error::Invalid(_))));
}

#[tokio::test]
async fn acknowledgements_are_all_in_scope_or_nothing() {
    let f = fixture().await;
    inbound(&f, BOT_A, "a:1", TENANT_1, "m1").await;
    inbound(&f, BOT_A, "a:2", TENANT_2, "m2").await;
    let all = Scope::all("test");
    let pending = f.hub.pending(&all, None, 10, &HashSet::new()).await.expect("pending");
    assert_eq!(pending.len(), 2);
    let ids: Vec<i64> = pending.iter().map(|i| i.id).collect();
    let t1 = Scope::new("t1", &[], &[TENANT_1.to_owned()]);
    assert_eq!(f.hub.pending(&t1, None, 10, &HashSet::new()).await.expect("t1").len(), 1);
    // Tenant 1's session cannot acknowledge tenant 2's entry, and acknowledges nothing when it tries.
    assert!(matches!(f.hub.ack_in_scope(&t1, &ids).await, Err(Error::NotFound(_))));
    assert_eq!(f.hub.pending(&all, None, 10, &HashSet::new()).await.expect("still").len(), 2);
    let (acked, n) = f.hub.ack_in_scope(&all, &ids).await.expect("acked");
    assert_eq!((acked.len(), n), (2, 2));
    assert!(f.hub.pending(&all, None, 10, &HashSet::new()).await.expect("none").is_empty());
    let too_many: Vec<i64> = (0..1001).collect();
    assert!(matches!(f.hub.ack_in_scope(&all, &too_many).await, Err(Error::Invalid(_))));
}
