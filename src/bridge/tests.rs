//! The bridge core without a transport: no rmcp, no sockets. A real SQLite store in a temporary folder,
//! an outbound worker that is never started (entries stay queued), configuration from TOML.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::agent::AgentActor;
use super::deliver::{self, AfterBot, Change, Mention, Progress, Queued, Sent, Settled, TextMessage};
use super::route::Reach;
use super::route::{self, Personal};
use super::{Approvals, Caller, Error, Hub, Scope};
use crate::config::{Config, Synchronous};
use crate::connector::ConnectorClient;
use crate::connector::outbox::{BotTokens, Outbound, RetryPolicy};
use crate::connector::throttle::Throttle;
use crate::connector::tokens::ConfiguredTokens;
use crate::entra::AgentMode;
use crate::metrics::Metrics;
use crate::service_url::ConnectorPolicy;
use crate::store::{ConversationRef, ErrorClass, Failed, InboundRecord, InboxState, OutboundOp, SqliteStore, Store, now_ms};

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
    fixture_with(config(), HashMap::new()).await
}

/// Bot A's Agent User in tenant 1, in `mode`. Its Graph client is never called here.
fn agent_user(mode: AgentMode) -> HashMap<String, Arc<AgentActor>> {
    use crate::entra::agent::{AgentTokenChain, AgentUser, AgentUserTokens};
    use crate::entra::{Authority, CertificateCredential, TokenClient, TokenClientSettings};
    use crate::graph::{GraphClient, GraphEndpoint, GraphSettings};
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["blueprint.example.test".to_owned()]).expect("params").self_signed(&kp).expect("cert");
    let credential = CertificateCredential::from_pem(kp.serialize_pem().as_bytes(), cert.pem().as_bytes(), false).expect("credential");
    let client = Arc::new(TokenClient::new(TokenClientSettings::default()).expect("token client"));
    let chain = Arc::new(AgentTokenChain::new(client, Authority::for_cloud(crate::ids::Cloud::Public), "blueprint", credential));
    let user = AgentUser::ObjectId("44444444-0000-4000-8000-000000000004".to_owned());
    let tokens = Arc::new(AgentUserTokens::new(chain, TENANT_1, "identity", user));
    let graph =
        GraphClient::new(GraphEndpoint::global(), Arc::clone(&tokens) as Arc<dyn crate::graph::GraphToken>, GraphSettings::default())
            .expect("graph client");
    HashMap::from([(BOT_A.to_owned(), Arc::new(AgentActor::new(BOT_A, tokens, graph, mode)))])
}

async fn fixture_with(cfg: Config, agents: HashMap<String, Arc<AgentActor>>) -> Fixture {
    let cfg = Arc::new(cfg);
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::default());
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("bridge.db"), Synchronous::Normal, 64, Arc::clone(&metrics)).expect("store"));
    let connector = ConnectorClient::new(ConnectorPolicy::new(false), Duration::from_secs(1)).expect("client");
    let tokens: Arc<dyn BotTokens> = Arc::new(ConfiguredTokens::new(HashMap::new(), false));
    let clouds = cfg.bots.iter().map(|b| (b.app_id.clone(), b.cloud)).collect();
    let outbound = Arc::new(Outbound::new(Arc::clone(&store), connector, tokens, clouds, Throttle::new(), RetryPolicy::default(), metrics));
    let (_tx, rx) = watch::channel(0);
    let hub = Arc::new(Hub::new(cfg, store, outbound, rx, Arc::new(Approvals::default()), false, agents));
    Fixture { hub, _dir: dir }
}

fn reference(bot: &str, conversation: &str, tenant: &str, kind: &str) -> ConversationRef {
    ConversationRef {
        bot_app_id: bot.to_owned().into(),
        conversation_id: conversation.to_owned().into(),
        tenant_id: tenant.to_owned().into(),
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
        bot_app_id: bot.to_owned().into(),
        tenant_id: tenant.to_owned().into(),
        conversation_id: conversation.to_owned().into(),
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
    chat.user_aad_object_id = Some(user.to_owned().into());
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
    assert!(Settled::Dead(Failed::new(ErrorClass::BotCannotReach, "the Connector refused the request: 403 Forbidden")).bot_cannot_reach());
    // The class decides, not the text.
    assert!(!Settled::Dead(Failed::new(ErrorClass::Refused, "the Connector refused the request: 403 Forbidden")).bot_cannot_reach());
    assert!(Settled::Dead(Failed::new(ErrorClass::BotCannotReach, "anything")).bot_cannot_reach());
    assert!(!Settled::Dead(Failed::new(ErrorClass::Refused, "the Connector refused the request: 400 BadArgument")).bot_cannot_reach());
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
    let pending = f.hub.pending(&all, None, 10, &HashSet::new(), None).await.expect("pending");
    assert_eq!(pending.len(), 2);
    let ids: Vec<i64> = pending.iter().map(|i| i.id).collect();
    let t1 = Scope::new("t1", &[], &[TENANT_1.to_owned()]);
    assert_eq!(f.hub.pending(&t1, None, 10, &HashSet::new(), None).await.expect("t1").len(), 1);
    // Tenant 1's session cannot acknowledge tenant 2's entry, and acknowledges nothing when it tries.
    assert!(matches!(f.hub.ack_in_scope(&t1, &ids).await, Err(Error::NotFound(_))));
    assert_eq!(f.hub.pending(&all, None, 10, &HashSet::new(), None).await.expect("still").len(), 2);
    let (acked, n) = f.hub.ack_in_scope(&all, &ids).await.expect("acked");
    assert_eq!((acked.len(), n), (2, 2));
    assert!(f.hub.pending(&all, None, 10, &HashSet::new(), None).await.expect("none").is_empty());
    let too_many: Vec<i64> = (0..1001).collect();
    assert!(matches!(f.hub.ack_in_scope(&all, &too_many).await, Err(Error::Invalid(_))));
}

// ---- the fallback to the Agent User, and the one bot resolver in the command line's words ----

/// The Connector's refusals as the outbox records them.
const FORBIDDEN: &str = "the Connector refused the request: 403 Forbidden";
const BAD_REQUEST: &str = "the Connector refused the request: 400 BadArgument";

fn bot_a(f: &Fixture) -> crate::config::BotConfig {
    f.hub.configured_bot(BOT_A).expect("bot A").clone()
}

#[tokio::test]
async fn a_bot_that_cannot_reach_the_person_falls_back_only_to_an_agent_user_in_fallback_mode() {
    // No Agent User at all: refused, saying what to configure.
    let f = fixture().await;
    let bot = bot_a(&f);
    match f.hub.after_bot(&bot, TENANT_1, 7, Settled::Dead(Failed::new(ErrorClass::BotCannotReach, FORBIDDEN))) {
        Err(Error::Refused(m)) => {
            assert!(m.starts_with("not delivered: the bot could not deliver: ") && m.contains("403"), "{m}");
            assert!(m.contains("no Agent User to fall back to") && m.contains("mode = \"fallback\""), "{m}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An Agent User in bot_only mode: refused, saying how to allow it.
    let f = fixture_with(config(), agent_user(AgentMode::BotOnly)).await;
    let bot = bot_a(&f);
    let err = f
        .hub
        .after_bot(&bot, TENANT_1, 7, Settled::Dead(Failed::new(ErrorClass::BotCannotReach, "MessageWritesBlocked")))
        .expect_err("bot_only");
    assert!(matches!(&err, Error::Refused(m) if m.contains("bot_only") && m.contains("fallback")), "{err}");
    // In fallback mode, in the Agent User's tenant: the Agent User sends, and the reason is kept.
    let f = fixture_with(config(), agent_user(AgentMode::Fallback)).await;
    let bot = bot_a(&f);
    match f.hub.after_bot(&bot, TENANT_1, 7, Settled::Dead(Failed::new(ErrorClass::BotCannotReach, FORBIDDEN))).expect("falls back") {
        AfterBot::FallBack(actor, why) => {
            assert_eq!(actor.bot_app_id, BOT_A);
            assert!(why.contains("403"), "{why}");
        }
        AfterBot::Sent(s) => panic!("expected the fallback, got {s:?}"),
    }
    // A person in another tenant: the Agent User needs their email; say how.
    let err =
        f.hub.after_bot(&bot, TENANT_2, 7, Settled::Dead(Failed::new(ErrorClass::BotCannotReach, FORBIDDEN))).expect_err("other tenant");
    assert!(err.to_string().contains("graph_create_chat") && err.to_string().contains(TENANT_2), "{err}");
    // No known service URL is the same decision.
    assert!(f.hub.fallback(&bot, TENANT_1, "no known service URL").is_ok());
}

#[tokio::test]
async fn only_an_unreachable_bot_falls_back_other_endings_are_results_or_errors() {
    let f = fixture_with(config(), agent_user(AgentMode::Fallback)).await;
    let bot = bot_a(&f);
    // A bad request is refused by Graph too: no fallback, just the refusal.
    match f.hub.after_bot(&bot, TENANT_1, 7, Settled::Dead(Failed::new(ErrorClass::Refused, BAD_REQUEST))) {
        Err(Error::Refused(m)) => assert_eq!(m, format!("not delivered: {BAD_REQUEST}")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let sent = |s| match f.hub.after_bot(&bot, TENANT_1, 7, s) {
        Ok(AfterBot::Sent(Sent::Bot { bot_app_id, outbox_id, progress })) => {
            assert_eq!((bot_app_id.as_str(), outbox_id), (BOT_A, 7));
            progress
        }
        other => panic!("expected the bot's result, got {other:?}"),
    };
    assert_eq!(sent(Settled::Delivered("1:99".into())), Progress::Delivered("1:99".into()));
    assert_eq!(sent(Settled::Uncertain), Progress::Uncertain);
    assert_eq!(sent(Settled::Queued(2, Some("429".into()))), Progress::Queued(2, Some("429".into())));
    assert!(
        matches!(f.hub.after_bot(&bot, TENANT_1, 7, Settled::Unreadable("gone".into())), Err(Error::Unavailable(m)) if m.contains("#7"))
    );
}

#[tokio::test]
async fn a_group_chat_the_bot_was_removed_from_goes_to_the_agent_user_in_fallback_mode_only() {
    let mut removed = reference(BOT_A, "19:g@thread.v2", TENANT_1, "groupChat");
    removed.usable = false;
    let mut channel = reference(BOT_A, "19:c@thread.tacv2", TENANT_1, "channel");
    channel.usable = false;
    let f = fixture_with(config(), agent_user(AgentMode::Fallback)).await;
    let bot = bot_a(&f);
    assert_eq!(f.hub.reach(&bot, &removed, false), Reach::AgentUser);
    // Graph has no Teams mentions here, and a channel is not a Graph chat.
    assert!(matches!(f.hub.reach(&bot, &removed, true), Reach::Nobody(_)));
    assert!(matches!(f.hub.reach(&bot, &channel, false), Reach::Nobody(_)));
    // bot_only: nobody, and no claim that an Agent User is missing.
    let f = fixture_with(config(), agent_user(AgentMode::BotOnly)).await;
    match f.hub.reach(&bot, &removed, false) {
        Reach::Nobody(why) => assert!(!why.contains("no Agent User"), "{why}"),
        other => panic!("expected nobody, got {other:?}"),
    }
    // Without an Agent User, text to that chat is refused before anything is queued.
    let f = fixture().await;
    seen(&f, removed.clone()).await;
    let all = Scope::all("test");
    let req = TextMessage { chat_id: removed.conversation_id.to_string(), text: "hello".into(), ..TextMessage::default() };
    let err = f.hub.queue_text(Caller::new(&all, "mcp:test:host"), &req).await.expect_err("nobody");
    assert!(matches!(&err, Error::Refused(m) if m.contains("no Agent User is configured")), "{err}");
    assert!(f.hub.store.outbox(None, 10).await.expect("outbox").is_empty());
}

#[tokio::test]
async fn text_and_changes_are_queued_as_the_bot_with_their_checks() {
    let f = fixture().await;
    seen(&f, reference(BOT_A, "a:1", TENANT_1, "personal")).await;
    seen(&f, reference(BOT_A, "19:c@thread.tacv2", TENANT_1, "channel")).await;
    let all = Scope::all("test");
    let caller = Caller::new(&all, "mcp:test:host");
    let long = "word ".repeat(9_000);
    let req = TextMessage { chat_id: "a:1".into(), text: long, reply_to: Some("parent".into()), ..TextMessage::default() };
    let Queued::Bot(entry) = f.hub.queue_text(caller, &req).await.expect("queued") else { panic!("not as the bot") };
    assert_eq!((entry.bot_app_id.as_str(), entry.conversation_id.as_str()), (BOT_A, "a:1"));
    let items = f.hub.store.outbox(None, 10).await.expect("outbox");
    assert!(items.len() > 1, "split");
    assert!(items.iter().any(|i| matches!(&i.op, OutboundOp::Reply { reply_to, .. } if reply_to == "parent")));
    let err = f.hub.queue_change(caller, "19:c@thread.tacv2", None, Change::Typing).await.expect_err("channel");
    assert!(err.to_string().contains("no typing indicator in channels"), "{err}");
    let err = f.hub.queue_change(caller, "a:1", None, Change::Delete { message_id: " ".into() }).await.expect_err("empty id");
    assert!(matches!(err, Error::Invalid(_)));
    let forged = json!({"type": "AdaptiveCard", "version": "1.5", "body": [],
        "actions": [{"type": "Action.Execute", "title": "Allow", "verb": "agentgate.permission"}]});
    let err =
        f.hub.queue_change(caller, "a:1", None, Change::Card { card: forged, text: None, reply_to: None }).await.expect_err("reserved");
    assert!(err.to_string().contains("reserved"), "{err}");
    let entry = f
        .hub
        .queue_change(caller, "a:1", None, Change::UpdateText { message_id: "1:5".into(), text: "fixed".into() })
        .await
        .expect("update");
    let items = f.hub.store.outbox(Some(entry.outbox_id), 1).await.expect("outbox");
    assert!(matches!(&items[0].op, OutboundOp::Update { activity_id, .. } if activity_id == "1:5"));
}

#[tokio::test]
async fn a_proactive_message_uses_the_existing_chat_or_creates_one_or_knows_no_way() {
    let f = fixture().await;
    let all = Scope::all("test");
    let user = "33333333-0000-4000-8000-000000000003";
    let target = f.hub.person_target(&all, user, Some(BOT_A), Some(TENANT_2)).await.expect("target");
    match f.hub.personal(&target, user).await.expect("route") {
        Personal::Create(r) => {
            assert_eq!(r.conversation_id, format!("user:{user}"));
            assert_eq!(r.service_url, "https://smba.trafficmanager.net/teams/");
        }
        other => panic!("expected a new chat, got {other:?}"),
    }
    let mut chat = reference(BOT_A, "a:p", TENANT_2, "personal");
    chat.user_aad_object_id = Some(user.to_owned().into());
    seen(&f, chat).await;
    assert!(matches!(f.hub.personal(&target, user).await.expect("route"), Personal::Chat(r) if r.conversation_id == "a:p"));
    // China has no default proactive service URL.
    let toml = format!("[[bots]]\napp_id = \"{BOT_A}\"\ncloud = \"china\"\nallowed_tenants = [\"{TENANT_1}\"]\n");
    let f = fixture_with(Config::from_sources(Some(&toml), "test", std::iter::empty()).expect("config"), HashMap::new()).await;
    let target = f.hub.person_target(&all, user, None, None).await.expect("the only bot and tenant");
    assert!(matches!(f.hub.personal(&target, user).await.expect("route"), Personal::Unknown(why) if why.contains(TENANT_1)));
}

#[tokio::test]
async fn the_command_line_gets_the_same_decisions_in_its_own_words() {
    let f = fixture().await;
    let cli = Scope::command_line();
    let bots = &f.hub.cfg.bots;
    // One bot resolver: named (any case), the only one, or say how to choose.
    assert_eq!(route::one_bot(bots, &cli, Some(&BOT_B.to_ascii_uppercase())).expect("named").0, 1);
    let err = route::one_bot(bots, &cli, None).expect_err("two bots");
    assert!(err.to_string().contains("2 bots are configured: pass --bot APP_ID"), "{err}");
    let err = route::one_bot(bots, &cli, Some("nope")).expect_err("unknown");
    assert!(matches!(&err, Error::NotFound(m) if m.contains("no configured bot has app id nope") && m.contains("--bot")), "{err}");
    assert!(route::one_bot(&[], &cli, None).expect_err("none").to_string().contains("[[bots]]"));
    let mcp = Scope::all("test");
    assert!(route::one_bot(bots, &mcp, None).expect_err("two bots").to_string().contains("say which with `bot`"));
    // Conversations.
    let err = f.hub.conversation(&cli, "a:nowhere", None).await.expect_err("unknown");
    assert!(err.to_string().contains("no configured bot has seen conversation a:nowhere"), "{err}");
    let mut gone = reference(BOT_A, "a:gone", TENANT_1, "personal");
    gone.usable = false;
    seen(&f, gone).await;
    let err = f.hub.conversation(&cli, "a:gone", None).await.expect_err("removed");
    assert!(err.to_string().contains(&format!("bot {BOT_A} was removed from conversation a:gone")), "{err}");
    seen(&f, reference(BOT_A, "19:g@thread.v2", TENANT_1, "groupChat")).await;
    seen(&f, reference(BOT_B, "19:g@thread.v2", TENANT_1, "groupChat")).await;
    let err = f.hub.conversation(&cli, "19:g@thread.v2", None).await.expect_err("two bots");
    assert!(err.to_string().contains("--bot APP_ID"), "{err}");
    // Proactive targets.
    let user = "29:someone";
    let err = f.hub.person_target(&cli, user, Some(BOT_B), Some(TENANT_2)).await.expect_err("not served");
    assert!(err.to_string().contains(&format!("tenant {TENANT_2} is not in bot {BOT_B}'s allowed_tenants")), "{err}");
    let err = f.hub.person_target(&cli, user, None, Some(TENANT_1)).await.expect_err("two bots serve it");
    assert!(err.to_string().contains(&format!("several bots serve tenant {TENANT_1}: say which with --bot")), "{err}");
    let err = f.hub.person_target(&cli, user, None, Some("99999999-0000-4000-8000-000000000009")).await.expect_err("nobody serves it");
    assert!(err.to_string().contains("is not in any bot's allowed_tenants"), "{err}");
    let t = f.hub.person_target(&cli, user, None, Some(TENANT_2)).await.expect("only bot A serves tenant 2");
    assert_eq!(t.bot.app_id, BOT_A);
}

#[tokio::test]
async fn a_quote_starts_the_first_part_and_a_thread_names_the_channel_thread() {
    let f = fixture().await;
    let channel = "19:c@thread.tacv2";
    seen(&f, reference(BOT_A, "a:1", TENANT_1, "personal")).await;
    seen(&f, reference(BOT_A, &format!("{channel};messageid=111"), TENANT_1, "channel")).await;
    let all = Scope::all("test");
    let caller = Caller::new(&all, "mcp:test:host");
    let ops = |items: Vec<crate::store::OutboxItem>| -> Vec<(String, serde_json::Value)> {
        items
            .into_iter()
            .map(|i| match i.op {
                OutboundOp::Send { activity } | OutboundOp::Reply { activity, .. } => (i.conversation_id.to_string(), activity),
                other => panic!("{other:?}"),
            })
            .collect()
    };

    // A long quoted reply: the placeholder opens the first part, which alone carries the entity.
    let long = "word ".repeat(9_000);
    let req = TextMessage { chat_id: "a:1".into(), text: long.clone(), quote: Some("1:7".into()), ..TextMessage::default() };
    f.hub.queue_text(caller, &req).await.expect("queued");
    let mut sent = ops(f.hub.store.outbox(None, 10).await.expect("outbox"));
    sent.sort_by_key(|(_, a)| !a["text"].as_str().unwrap_or("").starts_with("<quoted"));
    assert!(sent.len() > 1, "split");
    let first = &sent[0].1;
    assert!(first["text"].as_str().unwrap().starts_with("<quoted messageId=\"1:7\"/>word "), "{first}");
    assert_eq!(first["entities"], json!([{"type": "quotedReply", "quotedReply": {"messageId": "1:7"}}]));
    assert!(sent[1..].iter().all(|(_, a)| a.get("entities").is_none() && !a.to_string().contains("quoted")));
    let joined: String = sent.iter().map(|(_, a)| a["text"].as_str().unwrap()).collect();
    assert_eq!(joined, format!("<quoted messageId=\"1:7\"/>{long}"), "nothing lost");

    // Into a thread of the channel: named by another thread's chat_id, or by the channel id (which has no
    // reference of its own) when the bot saw the thread itself; the entry's conversation is the thread.
    for (chat_id, root) in [(format!("{channel};messageid=111"), "222"), (channel.to_owned(), "111")] {
        let req = TextMessage { chat_id, text: "late".into(), thread: Some(root.into()), ..TextMessage::default() };
        let Queued::Bot(entry) = f.hub.queue_text(caller, &req).await.expect("queued") else { panic!("not as the bot") };
        assert_eq!(entry.conversation_id.as_str(), format!("{channel};messageid={root}"));
    }

    // Refused, with nothing queued: bad ids, threads outside channels, unknown chats.
    let before = f.hub.store.outbox(None, 100).await.expect("outbox").len();
    let refuse = |chat_id: &str, quote: Option<&str>, thread: Option<&str>| TextMessage {
        chat_id: chat_id.into(),
        text: "x".into(),
        quote: quote.map(Into::into),
        thread: thread.map(Into::into),
        ..TextMessage::default()
    };
    for (req, says) in [
        (refuse("a:1", Some("1\"/><b>x</b>"), None), "quote must be a message id"),
        (refuse("a:1", Some(""), None), "quote must be a message id"),
        (refuse(channel, None, Some("abc")), "digits"),
        (refuse(channel, None, Some("0")), "digits"),
        (refuse(channel, None, Some("1;messageid=2")), "thread"),
        (refuse("a:1", None, Some("222")), "threads exist in Teams channels only"),
        (refuse("19:other@thread.tacv2", None, Some("222")), "unknown chat_id 19:other@thread.tacv2"),
    ] {
        let err = f.hub.queue_text(caller, &req).await.expect_err(says);
        assert!(err.to_string().contains(says), "{err} (wanted {says})");
    }
    assert_eq!(f.hub.store.outbox(None, 100).await.expect("outbox").len(), before);
}

#[tokio::test]
async fn a_quote_is_refused_where_the_agent_user_answers_through_graph() {
    let mut removed = reference(BOT_A, "19:g@thread.v2", TENANT_1, "groupChat");
    removed.usable = false;
    let f = fixture_with(config(), agent_user(AgentMode::Fallback)).await;
    seen(&f, removed).await;
    let all = Scope::all("test");
    let req = TextMessage { chat_id: "19:g@thread.v2".into(), text: "hello".into(), quote: Some("1700".into()), ..TextMessage::default() };
    let err = f.hub.queue_text(Caller::new(&all, "mcp:test:host"), &req).await.expect_err("no quotes through Graph");
    assert!(matches!(&err, Error::Refused(m) if m.contains("no quoted replies")), "{err}");
    assert!(f.hub.store.outbox(None, 10).await.expect("outbox").is_empty());
}

fn holder(session: &str) -> crate::store::ClaimHolder {
    crate::store::ClaimHolder { session: session.into(), client: format!("host-{session}"), scope: "test".into() }
}

#[tokio::test]
async fn claims_route_entries_to_their_holder_most_specific_first() {
    use super::claims::{ClaimRequest, may_act_in};
    let f = fixture().await;
    inbound(&f, BOT_A, "a:1", TENANT_1, "m1").await;
    inbound(&f, BOT_A, "a:2", TENANT_1, "m2").await;
    inbound(&f, BOT_A, "a:3", TENANT_2, "m3").await;
    inbound(&f, BOT_B, "a:4", TENANT_1, "m4").await;
    let all = Scope::all("test");
    let ids = |items: Vec<crate::store::InboxItem>| items.into_iter().map(|i| i.activity_id).collect::<Vec<_>>();
    let read = |session: &'static str| {
        let hub = Arc::clone(&f.hub);
        async move {
            let claims = hub.claims().await.expect("claims");
            ids(hub.pending(&Scope::all("test"), None, 10, &HashSet::new(), Some((&claims, session))).await.expect("pending"))
        }
    };
    // No claims: everyone sees everything.
    assert_eq!(read("one").await, vec!["m1", "m2", "m3", "m4"]);

    // One claims bot A in tenant 1 (by tenant); two claims conversation a:2 inside it (more specific).
    let tenant = ClaimRequest { tenants: vec![TENANT_1.to_owned()], bot: None, ..ClaimRequest::default() };
    let claimed = f.hub.claim(&Scope::new("a-only", &[BOT_A.to_owned()], &[]), &holder("one"), &tenant).await.expect("claim");
    assert_eq!(claimed.len(), 1, "only the bot in scope serving tenant 1: {claimed:?}");
    let conv = ClaimRequest { chat_ids: vec!["a:2".to_owned()], ..ClaimRequest::default() };
    f.hub.claim(&all, &holder("two"), &conv).await.expect("carve one conversation out");
    assert_eq!(read("one").await, vec!["m1", "m3", "m4"]);
    assert_eq!(read("two").await, vec!["m2", "m3", "m4"]);
    assert_eq!(read("three").await, vec!["m3", "m4"], "a third session gets only what nobody claimed");
    let everything = f.hub.pending(&all, None, 10, &HashSet::new(), None).await.expect("include claimed");
    assert_eq!(ids(everything), vec!["m1", "m2", "m3", "m4"]);

    // Taking what another session holds is refused, naming the holder; nothing else is taken.
    let both = ClaimRequest { chat_ids: vec!["a:2".to_owned(), "a:3".to_owned()], ..ClaimRequest::default() };
    let e = f.hub.claim(&all, &holder("three"), &both).await.expect_err("held by two");
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("conversation a:2") && m.contains("host-two") && m.contains("nothing was claimed")),
        "{e}"
    );
    assert_eq!(read("three").await, vec!["m3", "m4"]);

    // Acting: refused in another session's conversation unless shown an entry from there.
    let claims = f.hub.claims().await.expect("claims");
    assert!(may_act_in(&claims, "three", BOT_A, TENANT_1, "a:2", false).is_err());
    assert!(may_act_in(&claims, "three", BOT_A, TENANT_1, "a:2", true).is_ok());
    assert!(may_act_in(&claims, "two", BOT_A, TENANT_1, "a:2", false).is_ok());
    assert!(may_act_in(&claims, "two", BOT_A, TENANT_1, "a:1", false).is_err(), "a:1 is one's (tenant claim)");
    assert!(may_act_in(&claims, "two", BOT_A, TENANT_2, "a:3", false).is_ok());

    // A session limited to tenant 2 is shown none of the claims in tenant 1.
    let t2 = Scope::new("t2", &[], &[TENANT_2.to_owned()]);
    assert_eq!(claims.within(&all).count(), 2);
    assert_eq!(claims.within(&t2).count(), 0, "claims in another tenant are not shown");
    // A whole bot, from a session limited to tenant 2: claimed for tenant 2 only.
    let bot = ClaimRequest { bots: vec![BOT_A.to_uppercase()], ..ClaimRequest::default() };
    let targets = f.hub.claim_targets(&t2, &bot).await.expect("targets");
    assert_eq!(targets, vec![crate::store::ClaimTarget::tenant(BOT_A, TENANT_2)]);
    let e = f
        .hub
        .claim_targets(&t2, &ClaimRequest { bots: vec![BOT_B.to_owned()], ..ClaimRequest::default() })
        .await
        .expect_err("B serves no tenant 2");
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let e = f.hub.claim_targets(&t2, &ClaimRequest::default()).await.expect_err("empty");
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    let e =
        f.hub.claim_targets(&t2, &ClaimRequest { chat_ids: vec!["a:1".to_owned()], ..ClaimRequest::default() }).await.expect_err("outside");
    assert!(matches!(e, Error::NotFound(_)), "a conversation outside the scope cannot be claimed: {e}");

    // Released: back to everyone.
    assert_eq!(f.hub.release(&all, "two", Some(&conv)).await.expect("release"), 1);
    assert_eq!(f.hub.release(&all, "one", None).await.expect("release all"), 1);
    assert_eq!(read("three").await, vec!["m1", "m2", "m3", "m4"]);
}
