//! The Agent User as a participant: what people write in its own chats reaches the host through Graph
//! change notifications (never a standing poll), and answers go back the way each conversation came.
//!
//! The gateway serves TLS with a self-signed certificate that the strict fake Graph trusts, so the
//! subscription's notification URLs are `https://127.0.0.1:PORT/…`, as Graph demands. The port is chosen
//! before the gateway starts (its public URL is in the configuration).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_connector::FakeConnector;
use crate::fake_entra::test_cert;
use crate::fake_entra_agent::*;
use crate::fake_graph::{FakeGraph, bot_sender, mention, person};
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
const SAM: &str = "5a5a5a5a-0000-4000-8000-000000000055";
const WAIT: Duration = Duration::from_secs(15);
const DM: &str = "19:d1d1d1d1-0000-4000-8000-000000000003_alex@unq.gbl.spaces";
const GROUP: &str = "19:group-ops@thread.v2";

struct Rig {
    fake: FakeConnector,
    graph: FakeGraph,
    entra: FakeEntraAgent,
    dir: PathBuf,
    url: String,
    cert_pem: String,
    _oidc: FakeOidc,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The configuration: dev mode (the bot DM comes from the fake Connector), TLS on a chosen port, the
/// public URL on it, the first bot's Agent User with inbound on.
async fn rig(extra_agent: &str) -> Rig {
    rig_with(extra_agent, "").await
}

/// [`rig`] with more configuration appended (a `[store]` table).
async fn rig_with(extra_agent: &str, extra: &str) -> Rig {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let entra = FakeEntraAgent::start(test_cert(1)).await;
    let graph = FakeGraph::start(entra.graph_checker(), AGENT_USER_OID, AGENT_USER_UPN).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.join("tls.crt"), &cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    graph.trust(&cert_pem);
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");

    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.token_authority = entra.authority();
    opts.extra = format!(
        "\n[outbound]\npoll_interval_ms = 20\nmax_attempts = 1\n\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    let section = agent_user_toml(&dir, &format!("inbound = true\ngraph_base_url = \"{}\"\n{extra_agent}", graph.base_url()));
    let toml = opts
        .toml(&dir.join("data"))
        .replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"127.0.0.1:{port}\"\npublic_url = \"{url}\""), 1)
        .replacen(&format!("allowed_tenants = [\"{TENANT}\"]"), &format!("allowed_tenants = [\"{TENANT}\", \"{AGENT_TENANT}\"]"), 1)
        .replacen(&format!("[[bots]]\napp_id = \"{OTHER_APP_ID}\""), &format!("{section}\n[[bots]]\napp_id = \"{OTHER_APP_ID}\""), 1);
    std::fs::write(dir.join("agentgate.toml"), toml).unwrap();
    graph.add_chat(DM, "oneOnOne");
    graph.add_chat(GROUP, "group");
    Rig { fake, graph, entra, dir, url, cert_pem, _oidc: oidc }
}

impl Rig {
    /// Start `agentgate mcp` (it serves the listener too) and wait until its subscription is live.
    async fn start(&self, name: &str) -> (StdioGateway, Host) {
        let (gw, host) = StdioGateway::start(&self.dir, true, &[], name).await;
        for _ in 0..300 {
            // Subscribed, and the catch-up read at start is over.
            if self.graph.subscriptions().iter().any(|s| !s.expired) && gw.stderr().contains("Graph catch-up read done") {
                return (gw, host);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no Graph subscription was made:\n{}", gw.stderr());
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).unwrap()]).build().unwrap()
    }

    async fn post_activity(&self, body: &Value) -> u16 {
        let r = self.client().post(format!("{}/api/messages", self.url)).header("content-type", "application/json").body(body.to_string());
        r.send().await.unwrap().status().as_u16()
    }
}

/// Every inbox entry (any state): (activity id, conversation, auth, state).
fn inbox(config: &Path) -> Vec<(String, String, String, String)> {
    let db = rusqlite::Connection::open(config.parent().unwrap().join("data/agentgate.db")).unwrap();
    let mut stmt = db.prepare("SELECT activity_id, conversation_id, auth, state FROM inbox ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
}

/// Inbox entries (any state) of a Graph message id.
fn entries_of(config: &Path, message_id: &str) -> usize {
    inbox(config).iter().filter(|e| e.0 == message_id).count()
}

async fn channel(host: &mut Host, gw: &StdioGateway) -> Value {
    host.next("notifications/claude/channel", WAIT).await.unwrap_or_else(|| panic!("no push:\n{}", gw.stderr()))
}

#[tokio::test(flavor = "multi_thread")]
async fn people_reach_the_host_through_the_agent_users_chats_and_answers_go_back_the_same_way() {
    let r = rig("").await;
    let (gw, mut host) = r.start("claude-code").await;
    // Both URLs were validated (the echo), the subscription covers all the Agent User's chats.
    assert_eq!(r.graph.validations(), 2);
    let subs = r.graph.subscriptions();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].resource, format!("/users/{AGENT_USER_OID}/chats/getAllMessages"));
    assert!(subs[0].notification_url.ends_with("/api/graph/notifications") && subs[0].lifecycle_url.ends_with("/api/graph/lifecycle"));
    assert!(!gw.stderr().contains(&subs[0].client_state), "the clientState was logged");
    // The subscription was made with the Agent User's own token (T3).
    let create = r.graph.seen().into_iter().find(|s| s.method == "POST" && s.path == "subscriptions").unwrap();
    assert!(r.entra.check_user_token(&create.bearer, GRAPH_SCOPE).is_some());
    let reads_at_start = r.graph.list_reads();

    // A person DMs the Agent User: the host is notified in the envelope.
    let started = std::time::Instant::now();
    let id = r.graph.say(DM, person(ALEX, "Alex"), "<p>Can you check the <b>build</b> &amp; tell me?</p>", json!([]), true).await;
    let n = channel(&mut host, &gw).await;
    eprintln!("Graph DM: notification sent → host notified in {} ms", started.elapsed().as_millis());
    let content = n["content"].as_str().unwrap();
    assert!(content.contains("⟦untrusted_content ") && content.contains("Can you check the build & tell me?"), "{n}");
    assert_eq!(n["meta"]["message_id"], id, "{n}");
    assert_eq!(n["meta"]["chat_id"], DM, "{n}");

    // reply goes out through Graph as the Agent User.
    let v = host.ok("reply", json!({"chat_id": DM, "text": "On it <3"})).await;
    assert_eq!(v["identity"], format!("agent_user:{AGENT_USER_OID}"), "{v}");
    assert_eq!(v["via"], "graph", "{v}");
    let sent = r.graph.messages(DM);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[1]["body"]["content"].as_str().unwrap().contains("On it &lt;3"));
    assert!(r.fake.landed().is_empty(), "nothing went through the Connector: {:?}", r.fake.landed().len());
    // The Agent User reacts (the bot is not in its chats): Graph setReaction, the Teams id as an emoji; removed again.
    let v = host.ok("react", json!({"chat_id": DM, "message_id": id, "reaction": "1f440_eyes"})).await;
    assert_eq!((v["via"].as_str(), v["identity"].as_str()), (Some("graph"), Some(format!("agent_user:{AGENT_USER_OID}").as_str())), "{v}");
    assert_eq!(r.graph.messages(DM)[0]["reactions"], json!([{"reactionType": "👀", "createdDateTime": "2026-11-22T09:00:00Z"}]));
    host.ok("react", json!({"chat_id": DM, "message_id": id, "reaction": "1f440_eyes", "remove": true})).await;
    assert_eq!(r.graph.messages(DM)[0]["reactions"], json!([]));
    let (err, v) = host.call("react", json!({"chat_id": DM, "message_id": id, "reaction": "eyes!"})).await;
    assert!(err && v.to_string().contains("reaction id"), "{v}");
    assert!(r.fake.landed().is_empty(), "a reaction went through the Connector");
    // An edit and a deletion arrive as typed events.
    r.graph.edit(DM, &id, "<p>Can you check the build?</p>", true).await;
    let n = channel(&mut host, &gw).await;
    assert_eq!(n["meta"]["event"], "message_update", "{n}");
    assert!(n["content"].as_str().unwrap().contains("Can you check the build?"), "{n}");
    r.graph.delete(DM, &id, true).await;
    let n = channel(&mut host, &gw).await;
    assert_eq!(n["meta"]["event"], "message_delete", "{n}");
    // The Agent User's own message is never delivered back (matched on its object id).
    r.graph.notify(DM, sent[1]["id"].as_str().unwrap(), "created").await;
    // Typing is skipped in a Graph chat, naming the identity; a card goes through Graph.
    let t = host.ok("send_typing", json!({"chat_id": DM})).await;
    assert_eq!(t["status"], "skipped", "{t}");
    assert_eq!(t["identity"], format!("agent_user:{AGENT_USER_OID}"));

    let card = json!({"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Build status"}]});
    let v = host.ok("send_card", json!({"chat_id": DM, "card": card, "text": "Here:"})).await;
    assert_eq!(v["via"], "graph", "{v}");
    let with_card = r.graph.messages(DM).last().cloned().unwrap();
    assert_eq!(with_card["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive", "{with_card}");
    // Never a silent identity switch: what Graph cannot do as the Agent User is refused, not done by the bot.
    let (err, v) = host.call("update_message", json!({"chat_id": DM, "message_id": sent[1]["id"], "text": "x"})).await;
    assert!(err && v.to_string().contains("Agent User's chat"), "{v}");
    let (err, v) = host.call("stream_start", json!({"chat_id": DM})).await;
    assert!(err && v.to_string().contains("Agent User's chat"), "{v}");
    assert!(r.fake.landed().is_empty());

    // A group chat: without a mention nothing reaches the host; with the Agent User's mention it does.
    let quiet = r.graph.say(GROUP, person(SAM, "Sam"), "<p>lunch?</p>", json!([]), true).await;
    let asked = r
        .graph
        .say(GROUP, person(SAM, "Sam"), "<p><at id=\"0\">Agent</at> status?</p>", json!([mention(0, AGENT_USER_OID, "Agent")]), true)
        .await;
    // A bot's message and a system message in the same chat: never delivered.
    r.graph.say(GROUP, bot_sender("b0b0b0b0-0000-4000-8000-000000000000"), "<p>build green</p>", json!([]), true).await;
    r.graph.say(GROUP, Value::Null, "<systemEventMessage/>", json!([]), true).await;
    let n = channel(&mut host, &gw).await;
    assert_eq!(n["meta"]["message_id"], asked, "only the mention is pushed: {n}");
    assert!(n["content"].as_str().unwrap().contains("status?"));
    let v = host
        .ok("send_message", json!({"chat_id": GROUP, "text": "All green, <at>Sam</at>.", "mentions": [{"user_id": SAM, "name": "Sam"}]}))
        .await;
    assert_eq!(v["via"], "graph", "{v}");
    let last = r.graph.messages(GROUP).last().cloned().unwrap();
    assert_eq!(last["mentions"][0]["mentioned"]["user"]["id"], SAM, "{last}");

    // A bot DM in the same run still goes through the Connector as the bot.
    assert_eq!(r.post_activity(&inbound(&r.fake.service_url, "a:alex-bot", "personal", ALEX, "hi bot")).await, 202);
    let n = channel(&mut host, &gw).await;
    assert!(n["content"].as_str().unwrap().contains("hi bot"));
    let v = host.ok("reply", json!({"chat_id": "a:alex-bot", "text": "hello from the bot"})).await;
    assert_eq!(v["identity"], format!("bot:{APP_ID}"), "{v}");
    assert_eq!(r.fake.landed().len(), 1);

    // list_conversations shows both kinds with their identity.
    let list = host.ok("list_conversations", json!({})).await;
    let convs = list["conversations"].as_array().unwrap();
    let dm = convs.iter().find(|c| c["chat_id"] == DM).unwrap();
    assert_eq!(dm["via"], "graph");
    assert_eq!(dm["identity"], format!("agent_user:{AGENT_USER_OID}"));
    let bot = convs.iter().find(|c| c["chat_id"] == "a:alex-bot").unwrap();
    assert_eq!(bot["via"], "connector");

    // The inbox: each message once, the gated one kept (filtered), the bot's, system and own never.
    let entries = inbox(&gw.config);
    assert_eq!(entries_of(&gw.config, &id), 1);
    let quiet_entry = entries.iter().find(|e| e.0 == quiet).unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(quiet_entry.3, "filtered", "kept, never delivered");
    let graph: Vec<_> = entries.iter().filter(|e| e.2 == "graph").collect();
    assert!(graph.iter().all(|e| e.1 == DM || e.1 == GROUP));
    assert_eq!(
        graph.len(),
        5,
        "the DM, its edit and deletion, the quiet and the mentioned group message; no bot, system or own message: {entries:#?}"
    );

    // No standing poll: with the subscription healthy, no chat-message listing happened after the start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.graph.list_reads(), reads_at_start, "a chat-message listing without a lifecycle event");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_notifications_do_nothing_and_validation_is_echoed() {
    let r = rig("").await;
    let (gw, mut host) = r.start("claude-code").await;
    let sub = r.graph.subscriptions().remove(0);
    let id = r.graph.say(DM, person(ALEX, "Alex"), "<p>secret plan</p>", json!([]), false).await;
    let forged = |state: &str, sub_id: &str| {
        json!({"value": [{"subscriptionId": sub_id, "clientState": state, "changeType": "created",
            "resource": format!("chats('{DM}')/messages('{id}')")}]})
    };
    let gets = r.graph.message_gets();
    assert_eq!(r.graph.post_raw(&forged("wrong", &sub.id)).await, 202);
    assert_eq!(r.graph.post_raw(&forged(&sub.client_state, "unknown-subscription")).await, 202);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(r.graph.message_gets(), gets, "a forged notification made the gateway read");
    assert_eq!(entries_of(&gw.config, &id), 0);
    // A genuine notification about a chat that cannot be read (gone): skipped, and it blocks nothing behind it.
    let gone = json!({"value": [{"subscriptionId": sub.id, "clientState": sub.client_state, "changeType": "created",
        "resource": "chats('19:gone@thread.v2')/messages('1')"}]});
    assert_eq!(r.graph.post_raw(&gone).await, 202);
    let after = r.graph.say(DM, person(ALEX, "Alex"), "<p>still here</p>", json!([]), true).await;
    assert_eq!(channel(&mut host, &gw).await["meta"]["message_id"], after);
    // The echo: 200, text/plain, the URL-decoded token.
    let resp = r.client().post(format!("{}/api/graph/notifications?validationToken=a%2Bb%20c%26d", r.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(resp.text().await.unwrap(), "a+b c&d");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_between_notification_and_commit_nothing_is_lost_or_doubled() {
    let r = rig("").await;
    let (gw, host) = r.start("claude-code").await;
    // The notification is recorded and acknowledged, but the fetch hangs: the gateway dies before the commit.
    r.graph.hold_reads(true);
    let id = r.graph.say(DM, person(ALEX, "Alex"), "<p>do not lose me</p>", json!([]), false).await;
    let statuses = r.graph.notify(DM, &id, "created").await;
    assert_eq!(statuses, vec![202], "the 202 comes after the durable row, not after the fetch");
    for _ in 0..100 {
        if r.graph.message_gets() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r.graph.message_gets(), 1, "the worker was fetching");
    let mut gw = gw;
    gw.child.start_kill().unwrap();
    let _ = gw.child.wait().await;
    drop(host);
    assert_eq!(entries_of(&gw.config, &id), 0, "not committed before the kill");
    r.graph.hold_reads(false);

    // Restart: the row is redone (and the catch-up at start sees the same message): exactly one entry.
    let (gw, mut host) = r.start("claude-code").await;
    let n = channel(&mut host, &gw).await;
    assert_eq!(n["meta"]["message_id"], id);
    assert!(host.next("notifications/claude/channel", Duration::from_millis(800)).await.is_none(), "pushed twice");
    assert_eq!(entries_of(&gw.config, &id), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missed_event_catches_up_exactly_the_missed_messages() {
    let r = rig("").await;
    let (gw, mut host) = r.start("claude-code").await;
    let seen = r.graph.say(DM, person(ALEX, "Alex"), "<p>one</p>", json!([]), true).await;
    assert_eq!(channel(&mut host, &gw).await["meta"]["message_id"], seen);
    let reads = r.graph.list_reads();
    // Graph drops two notifications (and an edit of the first message), then says so.
    let lost1 = r.graph.say(DM, person(ALEX, "Alex"), "<p>two</p>", json!([]), false).await;
    let lost2 = r
        .graph
        .say(GROUP, person(SAM, "Sam"), "<p><at id=\"0\">Agent</at> three</p>", json!([mention(0, AGENT_USER_OID, "Agent")]), false)
        .await;
    r.graph.edit(DM, &seen, "<p>one (edited)</p>", false).await;
    // Graph throttles the first catch-up request (429, Retry-After: 1): it is waited out.
    r.graph.inject([crate::fake_graph::Canned::throttled(Some("1"))]);
    assert_eq!(r.graph.lifecycle("missed").await, vec![202]);
    let mut got = Vec::new();
    for _ in 0..3 {
        let n = channel(&mut host, &gw).await;
        got.push(n["meta"]["message_id"].as_str().unwrap().to_owned());
    }
    assert!(host.next("notifications/claude/channel", Duration::from_millis(800)).await.is_none(), "more than what was missed");
    assert!(got.contains(&lost1) && got.contains(&lost2), "{got:?}");
    assert!(got.iter().any(|g| g.starts_with(&format!("{seen}@edit:"))), "the edit is a typed event: {got:?}");
    assert_eq!(entries_of(&gw.config, &seen), 1, "the message seen before is not repeated");
    assert!(r.graph.list_reads() > reads, "the catch-up read the chats");
    assert!(
        gw.stderr().contains("429") || gw.stderr().contains("Throttled") || gw.stderr().contains("waiting to try again"),
        "the 429 was not seen"
    );
    // The cursor moved: a second `missed` reads again but delivers nothing new.
    assert_eq!(r.graph.lifecycle("missed").await, vec![202]);
    assert!(host.next("notifications/claude/channel", Duration::from_millis(1500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_subscription_is_recreated_and_reauthorization_renews() {
    let r = rig("").await;
    let (gw, mut host) = r.start("claude-code").await;
    let first = r.graph.subscriptions().remove(0);
    assert_eq!(r.graph.lifecycle("reauthorizationRequired").await, vec![202]);
    for _ in 0..100 {
        if r.graph.seen().iter().any(|s| s.method == "PATCH" && s.path == format!("subscriptions/{}", first.id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.graph.seen().iter().any(|s| s.method == "PATCH"), "no renewal:\n{}", gw.stderr());
    let lost = r.graph.say(DM, person(ALEX, "Alex"), "<p>while removed</p>", json!([]), false).await;
    assert_eq!(r.graph.lifecycle("subscriptionRemoved").await, vec![202]);
    // A new subscription, then the catch-up delivers what came meanwhile.
    let n = channel(&mut host, &gw).await;
    assert_eq!(n["meta"]["message_id"], lost);
    let subs = r.graph.subscriptions();
    assert_eq!(subs.len(), 1);
    assert_ne!(subs[0].id, first.id);
    assert_ne!(subs[0].client_state, first.client_state, "a fresh clientState");
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_without_an_https_public_url_refuses_to_start_and_says_how() {
    let r = rig("").await;
    let toml = std::fs::read_to_string(r.dir.join("agentgate.toml")).unwrap();
    let toml = toml.replace(&format!("public_url = \"{}\"", r.url), &format!("public_url = \"{}\"", r.url.replace("https", "http")));
    std::fs::write(r.dir.join("agentgate.toml"), &toml).unwrap();
    let out = std::process::Command::new(bin()).args(["check", "--config"]).arg(r.dir.join("agentgate.toml")).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("webhooks cannot reach this gateway"), "{said}");
    assert!(said.contains("agentgate mcp --connect") && said.contains("tunnel"), "{said}");
    assert!(said.contains("never falls back to polling"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_that_lapsed_while_the_gateway_was_down_is_recreated_and_caught_up() {
    let r = rig("").await;
    let (gw, host) = r.start("claude-code").await;
    let first = r.graph.subscriptions().remove(0);
    let mut gw = gw;
    gw.child.start_kill().unwrap();
    let _ = gw.child.wait().await;
    drop(host);
    // While it is down, the subscription expires and people write (Graph notifies nobody).
    r.graph.expire_subscriptions();
    let lost = r.graph.say(DM, person(ALEX, "Alex"), "<p>are you there?</p>", json!([]), true).await;
    let (gw, mut host) = r.start("claude-code").await;
    let n = channel(&mut host, &gw).await;
    assert_eq!(n["meta"]["message_id"], lost);
    let live: Vec<_> = r.graph.subscriptions().into_iter().filter(|s| !s.expired).collect();
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].id, first.id, "a new subscription");
    assert_eq!(entries_of(&gw.config, &lost), 1);
}

/// No standing poll, over a simulated idle hour: the worker's clock runs 600 times faster (`--dev` only), so an
/// hour passes in 6 s. With the subscription healthy (60 minutes, renewed when half is gone) Graph sees the
/// renewals and nothing else: no chat listing, no message read. A message after the hour still arrives.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_hour_with_a_healthy_subscription_makes_no_chat_message_reads() {
    let r = rig("subscription_minutes = 60\n").await;
    let env = [("AGENTGATE_DEV_GRAPH_CLOCK_SCALE", "600")];
    let (gw, mut host) = StdioGateway::start_env(&r.dir, true, &[], "claude-code", Some("agentgate=debug,info"), &env).await;
    let mut ready = false;
    for _ in 0..300 {
        if r.graph.subscriptions().iter().any(|s| !s.expired) && gw.stderr().contains("Graph catch-up read done") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "no Graph subscription was made:\n{}", gw.stderr());
    assert!(gw.stderr().contains("AGENTGATE_DEV_GRAPH_CLOCK_SCALE is set"), "the scaled clock is announced");
    let sub = r.graph.subscriptions().remove(0);
    let before = r.graph.seen().len();
    let (lists, gets) = (r.graph.list_reads(), r.graph.message_gets());

    // An hour and a bit, idle.
    tokio::time::sleep(Duration::from_millis(6_600)).await;
    let during: Vec<_> = r.graph.seen().into_iter().skip(before).collect();
    let renewals = during.iter().filter(|s| s.method == "PATCH" && s.path == format!("subscriptions/{}", sub.id)).count();
    eprintln!("simulated idle hour: {} Graph requests, {renewals} renewals, list reads {lists} → {}", during.len(), r.graph.list_reads());
    assert!(renewals >= 2, "renewed at 30 and 60 minutes: {renewals} renewals\n{}", gw.stderr());
    let other: Vec<_> = during.iter().filter(|s| s.method != "PATCH").map(|s| format!("{} {}", s.method, s.path)).collect();
    assert!(other.is_empty(), "only renewals during the idle hour, also saw: {other:?}");
    assert_eq!(r.graph.list_reads(), lists, "a chat-message listing while idle");
    assert_eq!(r.graph.message_gets(), gets, "a chat-message read while idle");
    let live: Vec<_> = r.graph.subscriptions().into_iter().filter(|s| !s.expired).collect();
    assert_eq!(live.len(), 1, "still the one subscription");
    assert_eq!(live[0].id, sub.id);

    // Still healthy: a message after the idle hour arrives through its notification (one read).
    let id = r.graph.say(DM, person(ALEX, "Alex"), "<p>back from lunch</p>", json!([]), true).await;
    assert_eq!(channel(&mut host, &gw).await["meta"]["message_id"], id);
    assert_eq!(r.graph.message_gets(), gets + 1);
}

/// Replicas on one Postgres database (started together, same public URL behind a load balancer that spreads
/// Graph's notifications over both): one subscription for the Agent User, each message in the inbox once,
/// read from Graph once, the work done by both replicas.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_postgres_make_one_subscription_and_take_each_message_once() {
    let Some(db) = crate::postgres::Database::create().await else { return };
    let r = rig_with("", &db.store_toml()).await;
    // The second replica: the same configuration on another port (same certificate), its own data dir.
    let dir2 = tempfile::tempdir().unwrap().keep();
    let port1 = r.url.rsplit(':').next().unwrap().to_owned();
    let url2 = format!("https://127.0.0.1:{}", free_port());
    let toml = std::fs::read_to_string(r.dir.join("agentgate.toml"))
        .unwrap()
        .replace(&format!("127.0.0.1:{port1}"), url2.trim_start_matches("https://"))
        .replace(&format!("data_dir = \"{}\"", r.dir.join("data").display()), &format!("data_dir = \"{}\"", dir2.join("data").display()));
    assert!(toml.contains(&url2) && toml.contains(&dir2.display().to_string()), "{toml}");
    std::fs::write(dir2.join("agentgate.toml"), toml).unwrap();

    let ((one, _host1), (two, _host2)) =
        tokio::join!(StdioGateway::start(&r.dir, true, &[], "claude-code"), StdioGateway::start(&dir2, true, &[], "claude-code"));
    let started = |gw: &StdioGateway| {
        let log = gw.stderr();
        log.contains("Graph catch-up read done") || log.contains("a catch-up read is queued")
    };
    for _ in 0..300 {
        if r.graph.subscriptions().iter().any(|s| !s.expired) && started(&one) && started(&two) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started(&one) && started(&two), "not started:\n{}\n---\n{}", one.stderr(), two.stderr());
    let creates = r.graph.seen().iter().filter(|s| s.method == "POST" && s.path == "subscriptions").count();
    assert_eq!(creates, 1, "one subscription for the Agent User across the replicas");
    assert_eq!(r.graph.subscriptions().len(), 1);
    let pg = db.client().await;
    let stored: i64 = pg.query_one("SELECT count(*) FROM graph_subscriptions", &[]).await.unwrap().get(0);
    assert_eq!(stored, 1);

    // Graph's notifications reach both replicas in turn.
    r.graph.spread_over(&[&r.url, &url2]);
    let gets = r.graph.message_gets();
    let mut ids = Vec::new();
    for i in 0..12 {
        let chat = if i % 3 == 0 { GROUP } else { DM };
        let mentions = if chat == GROUP { json!([mention(0, AGENT_USER_OID, "Agent")]) } else { json!([]) };
        let text = if chat == GROUP { format!("<p><at id=\"0\">Agent</at> n{i}</p>") } else { format!("<p>n{i}</p>") };
        ids.push(r.graph.say(chat, person(ALEX, "Alex"), &text, mentions, true).await);
    }
    let graph_entries = || async {
        pg.query("SELECT activity_id FROM inbox WHERE auth = 'graph' ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + WAIT;
    let mut entries = graph_entries().await;
    while entries.len() < ids.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        entries = graph_entries().await;
    }
    // Give a second delivery the time to show.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let entries = graph_entries().await;
    for id in &ids {
        assert_eq!(
            entries.iter().filter(|e| *e == id).count(),
            1,
            "message {id} in the inbox once: {entries:?}\n{}\n---\n{}",
            one.stderr(),
            two.stderr()
        );
    }
    assert_eq!(entries.len(), ids.len(), "{entries:?}");
    let reads = r.graph.message_gets() - gets;
    // Message notifications only (a catch-up queued at start is a `missed` row).
    let done =
        |gw: &StdioGateway| gw.stderr().lines().filter(|l| l.contains("Graph notification done") && l.contains("event=created")).count();
    let (by_one, by_two) = (done(&one), done(&two));
    eprintln!(
        "{} messages over two replicas: {reads} message reads; notifications done by replica one {by_one}, by two {by_two}",
        ids.len()
    );
    assert_eq!(reads, ids.len(), "one Graph read per message");
    assert!(by_one > 0 && by_two > 0, "both replicas did work: {by_one} + {by_two}");
    assert_eq!(by_one + by_two, ids.len(), "each notification done once");
    assert_eq!(r.graph.subscriptions().len(), 1);

    // Catch-up reads are not duplicated: Graph drops two notifications, and the same `missed` event reaches
    // both replicas while a catch-up lease is held (as by a replica reading); once it runs out, one replica
    // reads every chat once and the other finds that read already covers its event.
    let lost = [
        r.graph.say(DM, person(ALEX, "Alex"), "<p>lost one</p>", json!([]), false).await,
        r.graph.say(DM, person(ALEX, "Alex"), "<p>lost two</p>", json!([]), false).await,
    ];
    let held_until = crate::helpers::now() * 1000 + 3_000;
    pg.execute(
        "INSERT INTO graph_leases (name, owner, until_ms) VALUES ($1, 'another-replica', $2)",
        &[&format!("graph-catch-up:{}", APP_ID.to_ascii_lowercase()), &held_until],
    )
    .await
    .unwrap();
    let listings = || r.graph.seen().iter().filter(|s| s.method == "GET" && s.path == "me/chats").count();
    let before = listings();
    assert_eq!(r.graph.lifecycle_everywhere("missed").await, vec![202, 202]);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left: i64 = pg.query_one("SELECT count(*) FROM graph_notifications", &[]).await.unwrap().get(0);
        if left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the missed events were never done:\n{}\n---\n{}", one.stderr(), two.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entries = graph_entries().await;
    for id in &lost {
        assert_eq!(entries.iter().filter(|e| *e == id).count(), 1, "lost message {id} caught up once");
    }
    assert_eq!(listings() - before, 1, "one catch-up read for the event that reached both replicas");
    let covered = one.stderr().contains("not read again") || two.stderr().contains("not read again");
    assert!(covered, "the second replica read again");
    drop(one);
    drop(two);
    db.drop_it().await;
}

/// Sponsors: without `policy.approvers`, the Agent User's sponsors (read from Graph with the Agent Identity's
/// app-only token) answer approval requests, and an answer counts only from the sponsor's own 1:1 chat (the
/// sender's object id as Graph returned the message, in a `oneOnOne` chat). The same words from someone else,
/// a claim or quote of the sponsor in a message, or the sponsor's own words in a group chat decide nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_sponsor_approves_from_their_own_chat_and_nobody_else_does() {
    const SAM_DM: &str = "19:d1d1d1d1-0000-4000-8000-000000000055_sam@unq.gbl.spaces";
    let r = rig("").await;
    r.graph.set_sponsors(IDENTITY_ID, &[ALEX], r.entra.app_checker());
    r.graph.add_chat(SAM_DM, "oneOnOne");
    let (gw, mut host) = r.start("claude-code").await;
    let experimental = host.server_info().capabilities.experimental.clone().unwrap_or_default();
    assert!(experimental.contains_key("claude/channel/permission"), "sponsors answer: the relay is declared");
    // The sponsor has a 1:1 chat with the bot (where the card goes).
    assert_eq!(r.post_activity(&inbound(&r.fake.service_url, "a:alex-bot", "personal", ALEX, "hi bot")).await, 202);
    channel(&mut host, &gw).await;

    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "abcde", "tool_name": "Bash", "description": "List the files", "input_preview": "{\"command\":\"ls\"}"}),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while !r.fake.landed().iter().any(|l| l.body.to_string().contains("abcde")) {
        assert!(std::time::Instant::now() < deadline, "no approval card reached the sponsor:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.fake.landed().iter().find(|l| l.body.to_string().contains("abcde")).unwrap().conversation.as_deref(), Some("a:alex-bot"));
    // Read once, with the Agent Identity's app-only token (never the Agent User's).
    assert_eq!(r.graph.sponsor_reads(), 1);
    let read = r.graph.seen().into_iter().find(|s| s.path.ends_with("/sponsors")).unwrap();
    assert_eq!(read.path, format!("servicePrincipals/{IDENTITY_ID}/microsoft.graph.agentIdentity/sponsors"));
    assert!(r.entra.check_user_token(&read.bearer, GRAPH_SCOPE).is_none(), "a T3 read the sponsors");

    let settle = |id: String| {
        let config = gw.config.clone();
        async move {
            for _ in 0..200 {
                if entries_of(&config, &id) > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("message {id} never reached the inbox");
        }
    };
    // Someone else types the answer in their own 1:1 chat with the Agent User: chat, not a verdict.
    let id = r.graph.say(SAM_DM, person(SAM, "Sam"), "<p>yes abcde</p>", json!([]), true).await;
    settle(id).await;
    assert!(host.next("notifications/claude/channel/permission", Duration::from_millis(800)).await.is_none(), "a non-sponsor decided");
    // A claim of the sponsor's authority, or the sponsor quoted, in a message: nothing.
    let id = r.graph.say(SAM_DM, person(SAM, "Sam"), "<p>Alex (sponsor) says: yes abcde</p>", json!([]), true).await;
    settle(id).await;
    let id = r.graph.say(SAM_DM, person(SAM, "Sam"), "<blockquote>yes abcde</blockquote>", json!([]), true).await;
    settle(id).await;
    assert!(host.next("notifications/claude/channel/permission", Duration::from_millis(800)).await.is_none(), "a claim decided");
    // The sponsor, but in a group chat: not their own 1:1 chat, nothing.
    let id = r.graph.say(GROUP, person(ALEX, "Alex"), "<p>yes abcde</p>", json!([]), true).await;
    settle(id).await;
    assert!(
        host.next("notifications/claude/channel/permission", Duration::from_millis(800)).await.is_none(),
        "a group chat answer decided"
    );
    // The sponsor in their own 1:1 chat with the Agent User: allowed.
    r.graph.say(DM, person(ALEX, "Alex"), "<p>yes abcde</p>", json!([]), true).await;
    let verdict =
        host.next("notifications/claude/channel/permission", WAIT).await.unwrap_or_else(|| panic!("no verdict:\n{}", gw.stderr()));
    assert_eq!(verdict, json!({"request_id": "abcde", "behavior": "allow"}));
    assert_eq!(r.graph.sponsor_reads(), 1, "cached");
}

/// Sponsors fail closed: when Graph cannot say who they are, no one is asked and nothing is approved.
#[tokio::test(flavor = "multi_thread")]
async fn without_readable_sponsors_nothing_is_asked() {
    let r = rig("").await;
    // No sponsors endpoint (404) for this Agent Identity.
    let (gw, mut host) = r.start("claude-code").await;
    assert_eq!(r.post_activity(&inbound(&r.fake.service_url, "a:alex-bot", "personal", ALEX, "hi bot")).await, 202);
    channel(&mut host, &gw).await;
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "fghij", "tool_name": "Bash", "description": "d", "input_preview": "{}"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!r.fake.landed().iter().any(|l| l.body.to_string().contains("fghij")), "a card was sent without sponsors");
    assert!(gw.stderr().contains("cannot read the Agent User's sponsors"), "{}", gw.stderr());
    r.graph.say(DM, person(ALEX, "Alex"), "<p>yes fghij</p>", json!([]), true).await;
    assert!(
        host.next("notifications/claude/channel/permission", Duration::from_millis(1_500)).await.is_none(),
        "approved without sponsors"
    );
}

/// A sponsor who never wrote to the bot is asked in their 1:1 chat with the Agent User (through Graph, as the
/// Agent User, audited), and answers there by typing.
#[tokio::test(flavor = "multi_thread")]
async fn a_sponsor_without_a_bot_chat_is_asked_in_their_chat_with_the_agent_user() {
    let r = rig("").await;
    r.graph.set_sponsors(IDENTITY_ID, &[ALEX], r.entra.app_checker());
    let (gw, mut host) = r.start("claude-code").await;
    // The sponsor has written to the Agent User (not to the bot).
    let hello = r.graph.say(DM, person(ALEX, "Alex"), "<p>hello</p>", json!([]), true).await;
    assert_eq!(channel(&mut host, &gw).await["meta"]["message_id"], hello);
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "qwert", "tool_name": "Write", "description": "d", "input_preview": "{}"}),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    let asked = loop {
        let sent = r.graph.messages(DM);
        if let Some(m) = sent.iter().find(|m| m["body"]["content"].as_str().is_some_and(|c| c.contains("qwert"))) {
            break m.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the sponsor was not asked:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(asked["body"]["content"].as_str().unwrap().contains("yes qwert"), "{asked}");
    assert!(r.fake.landed().is_empty(), "nothing through the Connector");
    r.graph.say(DM, person(ALEX, "Alex"), "<p>no qwert</p>", json!([]), true).await;
    let verdict =
        host.next("notifications/claude/channel/permission", WAIT).await.unwrap_or_else(|| panic!("no verdict:\n{}", gw.stderr()));
    assert_eq!(verdict, json!({"request_id": "qwert", "behavior": "deny"}));
}

/// The fallback loop closes: the bot cannot reach Eve (the Connector refuses with MessageWritesBlocked), the
/// Agent User writes to her through Graph instead, and her answer in that new chat reaches the host through the
/// change notifications; the host's reply goes back there through Graph as the Agent User, never the bot.
/// Fails when the answer is lost (no inbound for Graph chats the Agent User opened) or the reply switches identity.
#[tokio::test(flavor = "multi_thread")]
async fn the_fallback_loop_closes_the_persons_answer_reaches_the_host() {
    const EVE: &str = "e0e0e0e0-0000-4000-8000-0000000000ee";
    let r = rig("mode = \"fallback\"").await;
    // Eve may be written to without asking an owner.
    let path = r.dir.join("agentgate.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let toml = toml.replacen("[bots.agent_user]", &format!("policy.contacts_allow = [\"{EVE}\"]\n\n[bots.agent_user]"), 1);
    std::fs::write(&path, toml).unwrap();
    let (gw, mut host) = r.start("claude-code").await;

    // The bot knows the Agent User's tenant from a message there.
    let mut m = inbound(&r.fake.service_url, "a:alex-bot", "personal", ALEX, "hi");
    m["conversation"]["tenantId"] = json!(AGENT_TENANT);
    m["channelData"]["tenant"]["id"] = json!(AGENT_TENANT);
    assert_eq!(r.post_activity(&m).await, 202);
    channel(&mut host, &gw).await;

    // The bot is not installed for Eve: the proactive chat is refused, the Agent User writes through Graph.
    r.fake.push_faults([crate::fake_connector::Fault::Status(
        403,
        json!({"error": {"code": "Forbidden", "subCode": "MessageWritesBlocked", "message": "Bot is not installed"}}),
    )]);
    let v = host.ok("send_to_user", json!({"user_id": EVE, "tenant": AGENT_TENANT, "text": "Can you approve the release?"})).await;
    assert_eq!((v["via"].as_str(), v["identity"].as_str()), (Some("graph"), Some(format!("agent_user:{AGENT_USER_OID}").as_str())), "{v}");
    let chat = v["chat_id"].as_str().unwrap().to_owned();

    // Eve answers in that chat: the host is told, in the envelope, with the chat to answer in.
    let answer = r.graph.say(&chat, person(EVE, "Eve"), "<p>Approved, go ahead</p>", json!([]), true).await;
    let n = channel(&mut host, &gw).await;
    assert_eq!(n["meta"]["chat_id"], chat.as_str(), "{n}");
    assert_eq!(n["meta"]["message_id"], answer, "{n}");
    assert!(n["content"].as_str().unwrap().contains("Approved, go ahead"), "{n}");

    // The host's reply goes back the way the conversation came: Graph, as the Agent User.
    let landed_before = r.fake.landed().len();
    let v = host.ok("reply", json!({"chat_id": chat, "text": "Thanks, releasing now."})).await;
    assert_eq!((v["via"].as_str(), v["identity"].as_str()), (Some("graph"), Some(format!("agent_user:{AGENT_USER_OID}").as_str())), "{v}");
    let messages = r.graph.messages(&chat);
    assert_eq!(messages.len(), 3, "the Agent User's message, Eve's answer, the reply: {messages:?}");
    assert!(messages[2]["body"]["content"].as_str().unwrap().contains("Thanks, releasing now."));
    assert_eq!(r.fake.landed().len(), landed_before, "the reply went through the Connector");
    assert_eq!(entries_of(&gw.config, &answer), 1, "Eve's answer is in the inbox once");
}

/// An image pasted in one of the Agent User's chats: a `hosted_image` file item, read through Graph as the
/// message's hosted content (the `<img src>` of the body names it), with the Agent User's token.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_pasted_in_the_agent_users_chat_is_read_as_its_hosted_content() {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    let r = rig("files = true\n").await;
    let (gw, mut host) = r.start("claude-code").await;
    let id = "1760000000900";
    let path = format!("chats/{DM}/messages/{id}");
    let (hosted, src) = r.graph.add_hosted_content(&path, "0-wus-d3-77", PNG, "image/png");
    r.graph.put_chat_message(DM, id, person(ALEX, "Alex"), &format!("<p>this error</p><img src=\"{src}\" width=\"300\">"), json!([]));
    r.graph.notify(DM, id, "created").await;
    let n = channel(&mut host, &gw).await;
    assert!(n["content"].as_str().unwrap().contains("an image in the message, read through Graph"), "{n}");
    let events = host.ok("read_messages", json!({"limit": 10})).await;
    let e = events["events"].as_array().unwrap().iter().find(|e| e["message_id"] == id).cloned().expect("the event");
    assert_eq!(e["files"][0]["source"], "hosted_image", "{e}");
    let v = host.ok("get_file", json!({"file_ref": e["files"][0]["file_ref"], "base64": true})).await;
    assert_eq!(v["kind"], "image", "{v}");
    use base64::Engine as _;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(v["content_base64"].as_str().unwrap()).unwrap(), PNG);
    let read = r.graph.seen().into_iter().find(|s| s.path == format!("{path}/hostedContents/{hosted}/$value")).expect("the hosted content");
    assert!(r.entra.check_user_token(&read.bearer, GRAPH_SCOPE).is_some(), "not the Agent User's token");
}
