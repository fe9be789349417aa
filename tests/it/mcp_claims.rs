//! Several hosts on one bot (claims on conversations) and least privilege per MCP token (read-only,
//! named tools, tools that wait for the owner's approval), through the real binary: `/mcp` sessions and
//! `agentgate mcp` over stdio, Teams traffic through `/api/messages`, sends on the strict fake Connector.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use crate::fake_connector::FakeConnector;
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const FULL: &str = "token-full-access-0123456789abcdef0123456789ab";
const READER: &str = "token-read-only-0123456789abcdef0123456789abc";
const LIMITED: &str = "token-three-tools-0123456789abcdef0123456789";
const GUARDED: &str = "token-approve-delete-0123456789abcdef01234567";
const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
const WAIT: Duration = Duration::from_secs(10);
const CHANNEL: &str = "notifications/claude/channel";

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("file:{}", p.display())
}

/// The configuration's extra tables: `/mcp` with four tokens (full, read-only, three tools, delete with
/// approval), a claim lease of `lease_secs`, and `store` (a Postgres `[store]`, or nothing for SQLite).
fn extra(dir: &Path, lease_secs: u64, store: &str) -> String {
    let file = |name: &str, value: &str| secret_file(dir, name, value);
    format!(
        r#"{store}
[outbound]
poll_interval_ms = 20

[mcp]
bind = "127.0.0.1:0"
claim_lease_secs = {lease_secs}

[[mcp.tokens]]
name = "full"
token = "{full}"

[[mcp.tokens]]
name = "reader"
token = "{reader}"
read_only = true

[[mcp.tokens]]
name = "limited"
token = "{limited}"
tools = ["status", "read_messages", "reply"]

[[mcp.tokens]]
name = "guarded"
token = "{guarded}"
approve = ["delete_message"]
"#,
        full = file("full.token", FULL),
        reader = file("reader.token", READER),
        limited = file("limited.token", LIMITED),
        guarded = file("guarded.token", GUARDED),
    )
}

/// The first bot gets approvers (Alex) and a short approval timeout.
fn with_approvers(toml: String) -> String {
    toml.replacen(
        "policy.dm = \"open\"",
        &format!("policy.dm = \"open\"\npolicy.approvers = [\"{ALEX}\"]\npolicy.approval_timeout_secs = 30"),
        1,
    )
}

/// A dev-mode `serve` on `dir` (a fresh one, or one another gateway shares); the app and its `/mcp` URL.
async fn serve_in(dir: &Path, oidc: &FakeOidc, lease_secs: u64, store: &str) -> (TestApp, String) {
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = extra(dir, lease_secs, store);
    let app = TestApp::spawn_in_with(dir, &opts, with_approvers).await.unwrap_or_else(|e| panic!("did not start:\n{e}"));
    let url = mcp_url(|| app.stderr()).await;
    (app, url)
}

async fn mcp_url(log: impl Fn() -> String) -> String {
    for _ in 0..200 {
        if let Some(rest) = log().split("MCP Streamable HTTP listening at /mcp").nth(1)
            && let Some(addr) = rest.split("addr=").nth(1).and_then(|r| r.split_whitespace().next())
        {
            return format!("http://{addr}/mcp");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no /mcp listener:\n{}", log());
}

async fn http_host(url: &str, token: &str, name: &str) -> Host {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    Host::over(StreamableHttpClientTransport::from_config(config), name).await
}

/// The channel pushes a host gets within `wait`: (chat_id, message_id).
async fn pushes(host: &mut Host, wait: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(n) = host.next(CHANNEL, deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        out.push((
            n["meta"]["chat_id"].as_str().unwrap_or_default().to_owned(),
            n["meta"]["message_id"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    out
}

/// Wait for the push of message `id`; the pushes before it are returned.
async fn push_of(host: &mut Host, id: &str, what: &str) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let Some(n) = host.next(CHANNEL, deadline.saturating_duration_since(tokio::time::Instant::now())).await else {
            panic!("{what}: message {id} was never pushed (got {before:?})");
        };
        let got =
            (n["meta"]["chat_id"].as_str().unwrap_or_default().to_owned(), n["meta"]["message_id"].as_str().unwrap_or_default().to_owned());
        if got.1 == id {
            return before;
        }
        before.push(got);
    }
}

fn message_ids(v: &Value) -> Vec<String> {
    v["events"].as_array().unwrap().iter().filter_map(|e| e["message_id"].as_str().map(str::to_owned)).collect()
}

fn inbox_ids(v: &Value) -> Vec<i64> {
    v["events"].as_array().unwrap().iter().filter_map(|e| e["inbox_id"].as_i64()).collect()
}

fn tool_names(tools: &[rmcp::model::Tool]) -> Vec<String> {
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    names
}

/// Two sessions on one bot: A claims conversation X; X's new messages reach A only (pushes, reads, waits);
/// B sees them only with include_claimed, and may answer there only once shown; status and
/// list_conversations say who holds X; when A's session ends, X's next message reaches B.
#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_conversation_reaches_its_holder_only_until_its_session_ends() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (app, url) = serve_in(&dir, &oidc, 60, "").await;
    let mut a = http_host(&url, FULL, "host-a").await;
    let mut b = http_host(&url, FULL, "host-b").await;
    let (x, y) = ("a:conv-x", "a:conv-y");
    let post = async |chat: &str, text: &str| -> String {
        let m = inbound(&fake.service_url, chat, "personal", ALEX, text);
        assert_eq!(app.status(None, &m).await, 202, "{}", app.stderr());
        m["id"].as_str().unwrap().to_owned()
    };

    // Before any claim both sessions get everything. A handles the first messages.
    let (x1, y1) = (post(x, "x1").await, post(y, "y1").await);
    push_of(&mut b, &y1, "B, unclaimed").await;
    push_of(&mut a, &y1, "A, unclaimed").await;
    let first = a.ok("read_messages", json!({})).await;
    assert_eq!(message_ids(&first), vec![x1.clone(), y1.clone()]);
    a.ok("ack_messages", json!({"ids": inbox_ids(&first)})).await;

    // A claims X.
    let c = a.ok("claim_conversations", json!({"chat_ids": [x]})).await;
    assert_eq!(c["claimed"][0]["chat_id"], x, "{c}");
    assert_eq!((c["claimed"][0]["mine"].as_bool(), c["claimed"][0]["client"].as_str()), (Some(true), Some("host-a")), "{c}");
    let (err, v) = b.call("claim_conversations", json!({"chat_ids": [x, y]})).await;
    assert!(err && v.to_string().contains("host-a") && v.to_string().contains("nothing was claimed"), "{v}");
    let status = b.ok("status", json!({})).await;
    let held: Vec<&Value> = status["claims"].as_array().unwrap().iter().collect();
    assert_eq!(held.len(), 1, "B's failed claim took nothing: {status}");
    assert_eq!(
        (held[0]["chat_id"].as_str(), held[0]["client"].as_str(), held[0]["mine"].as_bool()),
        (Some(x), Some("host-a"), Some(false))
    );
    let convs = b.ok("list_conversations", json!({})).await;
    let claimed_by =
        |chat: &str| convs["conversations"].as_array().unwrap().iter().find(|c| c["chat_id"] == chat).unwrap()["claimed_by"].clone();
    assert_eq!(claimed_by(x)["client"], "host-a", "{convs}");
    assert!(claimed_by(y).is_null(), "{convs}");

    // New messages: X's reaches A only; Y's reaches both.
    let (x2, y2) = (post(x, "x2").await, post(y, "y2").await);
    let to_a = push_of(&mut a, &y2, "A").await;
    assert!(to_a.iter().any(|(_, id)| *id == x2), "A gets X's message: {to_a:?}");
    let to_b = push_of(&mut b, &y2, "B").await;
    assert!(to_b.iter().all(|(chat, _)| chat != x), "B was pushed a claimed message: {to_b:?}");
    assert!(pushes(&mut b, Duration::from_secs(3)).await.iter().all(|(chat, _)| chat != x), "pushed to B later");
    let read_b = b.ok("read_messages", json!({})).await;
    assert_eq!(message_ids(&read_b), vec![y2.clone()], "B reads what is not claimed: {read_b}");
    assert_eq!(message_ids(&a.ok("read_messages", json!({})).await), vec![x2.clone(), y2.clone()], "A reads both");

    // B may not write into X before it was shown anything from there: refused, nothing sent.
    let (err, v) = b.call("send_message", json!({"chat_id": x, "text": "from B"})).await;
    assert!(err && v.to_string().contains("claimed by another session") && v.to_string().contains("host-a"), "{v}");
    let (err, v) = b.call("send_typing", json!({"chat_id": x})).await;
    assert!(err && v.to_string().contains("claimed"), "{v}");
    assert!(fake.texts().is_empty(), "{:?}", fake.texts());
    // On request B sees X's message, marked as claimed; then it may answer it.
    let all_b = b.ok("read_messages", json!({"include_claimed": true, "ack": inbox_ids(&read_b)})).await;
    let x_event =
        all_b["events"].as_array().unwrap().iter().find(|e| e["message_id"] == x2.as_str()).cloned().expect("X's message on request");
    assert_eq!(x_event["claimed_by"]["client"], "host-a", "{x_event}");
    let r = b.ok("reply", json!({"chat_id": x, "text": "B answers what it was shown"})).await;
    assert_eq!(r["status"], "delivered", "{r}");

    // wait_for_messages passes X by, unless asked.
    let x3 = post(x, "x3").await;
    let w = b.ok("wait_for_messages", json!({"timeout_secs": 2})).await;
    assert_eq!(w["timed_out"], true, "B waited past a claimed message: {w}");
    let w = b.ok("wait_for_messages", json!({"timeout_secs": 5, "include_claimed": true})).await;
    assert!(message_ids(&w).contains(&x3), "{w}");
    push_of(&mut a, &x3, "A").await;

    // A's session ends (DELETE): its claim goes at once, and X's next message reaches B.
    a.client.cancel().await.unwrap();
    let deadline = Instant::now() + WAIT;
    while !b.ok("status", json!({})).await["claims"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the ended session's claim stayed\n{}", app.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let x4 = post(x, "x4").await;
    push_of(&mut b, &x4, "B after A's session ended").await;
    assert_eq!(fake.texts(), vec!["B answers what it was shown"]);
}

/// Replicas on Postgres: a claim taken on one gateway holds on another; when its host's process dies
/// without releasing it, the lease (2 s here) lapses and the conversation's messages reach the session on
/// the other replica, the one held back meanwhile included.
#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_claim_hands_over_across_postgres_replicas() {
    let Some(db) = crate::postgres::Database::create().await else { return };
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let (dir_one, dir_two) = (tempfile::tempdir().unwrap().keep(), tempfile::tempdir().unwrap().keep());
    // Replica two: `serve` with B's session. Replica one: `agentgate mcp` on the same database, A's session.
    let (two, url) = serve_in(&dir_two, &oidc, 2, &db.store_toml()).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = extra(&dir_one, 2, &db.store_toml());
    std::fs::write(dir_one.join("agentgate.toml"), with_approvers(opts.toml(&dir_one.join("data")))).unwrap();
    let (mut one, mut a) = StdioGateway::start(&dir_one, true, &[], "host-a").await;
    let mut b = http_host(&url, FULL, "host-b").await;
    let x = "a:conv-x";
    let m = inbound(&fake.service_url, x, "personal", ALEX, "x1");
    assert_eq!(one.post(&m).await.status(), 202, "{}", one.stderr());
    push_of(&mut a, m["id"].as_str().unwrap(), "A").await;
    a.ok("claim_conversations", json!({"chat_ids": [x]})).await;

    // Posted to replica two, the claim from replica one holds there: A gets it, B does not.
    let m = inbound(&fake.service_url, x, "personal", ALEX, "x2");
    assert_eq!(two.status(None, &m).await, 202);
    let x2 = m["id"].as_str().unwrap().to_owned();
    push_of(&mut a, &x2, "A across replicas").await;
    let to_b = pushes(&mut b, Duration::from_secs(4)).await;
    assert!(to_b.iter().all(|(_, id)| *id != x2), "B got a message A claimed on another replica: {to_b:?}");

    // Replica one dies (SIGKILL: nothing released). Once the lease lapsed, X's messages reach B.
    one.child.kill().await.unwrap();
    let killed = Instant::now();
    let m = inbound(&fake.service_url, x, "personal", ALEX, "x3");
    assert_eq!(two.status(None, &m).await, 202);
    let x3 = m["id"].as_str().unwrap().to_owned();
    let before = push_of(&mut b, &x3, "B after the lease lapsed").await;
    assert!(killed.elapsed() >= Duration::from_millis(1300), "handed over before the lease could lapse: {:?}", killed.elapsed());
    let got: Vec<String> = before.into_iter().map(|(_, id)| id).collect();
    assert!(got.contains(&x2), "the held-back message reached B too: {got:?}");
    assert!(b.ok("status", json!({})).await["claims"].as_array().unwrap().is_empty());
    let c = b.ok("claim_conversations", json!({"chat_ids": [x]})).await;
    assert_eq!(c["claimed"][0]["client"], "host-b", "{c}");
    drop(two);
    db.drop_it().await;
}

/// One process on SQLite: the host's gateway dies holding a claim (SIGKILL: nothing released) and a
/// gateway restarts on the store. The stale claim still holds until its lease (10 s here) lapses; then the
/// conversation's messages reach the new session.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_left_by_a_dead_process_lapses_after_its_lease() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = extra(&dir, 10, "");
    std::fs::write(dir.join("agentgate.toml"), with_approvers(opts.toml(&dir.join("data")))).unwrap();
    let (mut one, mut a) = StdioGateway::start(&dir, true, &[], "host-a").await;
    let x = "a:conv-x";
    let m = inbound(&fake.service_url, x, "personal", ALEX, "x1");
    assert_eq!(one.post(&m).await.status(), 202, "{}", one.stderr());
    push_of(&mut a, m["id"].as_str().unwrap(), "A").await;
    a.ok("claim_conversations", json!({"chat_ids": [x]})).await;
    one.child.kill().await.unwrap();
    let killed = Instant::now();

    let (two, url) = serve_in(&dir, &oidc, 10, "").await;
    let mut b = http_host(&url, FULL, "host-b").await;
    let status = b.ok("status", json!({})).await;
    let stale = &status["claims"][0];
    assert_eq!((stale["chat_id"].as_str(), stale["client"].as_str()), (Some(x), Some("host-a")), "{status}");
    let m = inbound(&fake.service_url, x, "personal", ALEX, "x2");
    assert_eq!(two.status(None, &m).await, 202);
    let x2 = m["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut got = Vec::new();
    while let Some(n) = b.next(CHANNEL, deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        got.push(n["meta"]["message_id"].as_str().unwrap_or_default().to_owned());
        if got.contains(&x2) {
            break;
        }
    }
    assert!(got.contains(&x2), "never handed over: {got:?}\n{}", two.stderr());
    // Renewed every 3.3 s until the kill: live for at least 6.6 s after it.
    assert!(killed.elapsed() >= Duration::from_millis(6500), "handed over before the lease lapsed: {:?}", killed.elapsed());
}

/// A read-only token lists and calls only the reading tools; a token limited to three tools sees
/// exactly those; a refused call is a generic tool error and sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_see_and_call_only_their_tools() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (app, url) = serve_in(&dir, &oidc, 60, "").await;
    let m = inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hello");
    assert_eq!(app.status(None, &m).await, 202);

    let reader = http_host(&url, READER, "monitor").await;
    let listed = tool_names(&reader.client.list_all_tools().await.unwrap());
    assert_eq!(listed, ["get_file", "list_conversations", "list_members", "read_messages", "recent_audit", "status", "wait_for_messages"]);
    assert_eq!(message_ids(&reader.ok("read_messages", json!({})).await), vec![m["id"].as_str().unwrap()]);
    for (tool, args) in [
        ("reply", json!({"chat_id": "a:conv-1", "text": "leak"})),
        ("send_to_user", json!({"user_id": ALEX, "text": "leak"})),
        ("ack_messages", json!({"ids": [1]})),
        ("claim_conversations", json!({"chat_ids": ["a:conv-1"]})),
    ] {
        let (err, v) = reader.call(tool, args).await;
        assert!(err, "{tool} ran for a read-only token: {v}");
        assert_eq!(v, json!(format!("the tool {tool} is not available to this session")), "{tool}");
    }
    let (err, v) = reader.call("read_messages", json!({"ack": [1]})).await;
    assert!(err && v.to_string().contains("ack_messages"), "a read-only token acknowledged: {v}");
    let status = reader.ok("status", json!({})).await;
    assert_eq!(
        (status["session"]["read_only"].as_bool(), status["session"]["tools"].as_str()),
        (Some(true), Some("read_only")),
        "{status}"
    );

    let limited = http_host(&url, LIMITED, "triage").await;
    assert_eq!(tool_names(&limited.client.list_all_tools().await.unwrap()), ["read_messages", "reply", "status"]);
    let (err, v) = limited.call("send_message", json!({"chat_id": "a:conv-1", "text": "leak"})).await;
    assert!(err && v.to_string().contains("not available"), "{v}");
    let r = limited.ok("reply", json!({"chat_id": "a:conv-1", "text": "allowed"})).await;
    assert_eq!(r["status"], "delivered", "{r}");
    assert_eq!(fake.texts(), vec!["allowed"], "only the allowed tool sent anything");

    // The full token is unchanged: every tool.
    let full = http_host(&url, FULL, "host").await;
    let all = tool_names(&full.client.list_all_tools().await.unwrap());
    assert!(all.len() >= 21 && all.contains(&"claim_conversations".to_owned()) && all.contains(&"delete_message".to_owned()), "{all:?}");
}

/// A token whose `delete_message` needs approval: the call waits for the owner's card in Teams and
/// deletes only on Allow (a signed click); a Deny refuses it and nothing is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn an_approve_tool_runs_only_on_the_owners_allow() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (app, url) = serve_in(&dir, &oidc, 60, "").await;
    let token = bf_token(&fake.service_url);
    // Alex (the approver) has a 1:1 chat with the bot.
    assert_eq!(app.status(None, &inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hi")).await, 202);
    let host = std::sync::Arc::new(http_host(&url, GUARDED, "guarded-host").await);
    let tools = host.client.list_all_tools().await.unwrap();
    let delete = tools.iter().find(|t| t.name == "delete_message").expect("listed");
    assert!(delete.description.as_deref().unwrap_or_default().contains("owner's approval"), "{delete:?}");
    let sent = host.ok("send_message", json!({"chat_id": "a:conv-1", "text": "to be deleted"})).await;
    let message_id = sent["message_id"].as_str().unwrap().to_owned();

    for (behavior, deleted) in [("deny", false), ("allow", true)] {
        let landed_before = fake.landed().len();
        let call = {
            let (host, message_id) = (std::sync::Arc::clone(&host), message_id.clone());
            tokio::spawn(async move { host.call("delete_message", json!({"chat_id": "a:conv-1", "message_id": message_id})).await })
        };
        // The approval card reaches Alex; nothing is deleted meanwhile.
        let deadline = Instant::now() + WAIT;
        let card = loop {
            let landed = fake.landed();
            if let Some(l) = landed[landed_before..].iter().find(|l| l.body.to_string().contains("agentgate.permission")) {
                break l.clone();
            }
            assert!(Instant::now() < deadline, "no approval card: {landed:?}\n{}", app.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let content = &card.body["attachments"][0]["content"];
        // Shown to the owner as plain text (underscores neutralised): the tool and its input.
        assert!(content.to_string().contains("delete message") && content.to_string().contains(&message_id), "{content}");
        let request_id = content["actions"][0]["data"]["request_id"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!call.is_finished(), "the call did not wait for the owner");
        assert!(fake.landed().iter().all(|l| l.method != "DELETE"), "deleted before the answer");
        let click = crate::mcp_relay::card_click(&fake.service_url, ALEX, &request_id, behavior, card.answered.as_deref().unwrap());
        assert_eq!(app.post(Some(&token), &click).await.status(), 200);
        let (err, v) = tokio::time::timeout(WAIT, call).await.expect("the call ended").unwrap();
        let deletes = fake.landed().iter().filter(|l| l.method == "DELETE").count();
        if deleted {
            assert!(!err && v["status"] == "delivered", "{v}");
            assert_eq!(deletes, 1);
        } else {
            assert!(err && v.to_string().contains("denied"), "{v}");
            assert_eq!(deletes, 0, "deleted although denied");
        }
    }
}

/// `agentgate mcp` takes the same limits as flags; an unknown tool name stops it, naming the valid ones.
#[tokio::test(flavor = "multi_thread")]
async fn stdio_flags_limit_the_tools() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    std::fs::write(dir.join("agentgate.toml"), opts.toml(&dir.join("data"))).unwrap();
    let (_gw, host) = StdioGateway::start(&dir, true, &["--tool", "status", "--tool", "reply", "--approve", "reply"], "claude-code").await;
    let tools = host.client.list_all_tools().await.unwrap();
    assert_eq!(tool_names(&tools), ["reply", "status"]);
    let (err, v) = host.call("react", json!({"chat_id": "a:1", "message_id": "1", "reaction": "like"})).await;
    assert!(err && v.to_string().contains("not available"), "{v}");
    drop(host);
    let other = tempfile::tempdir().unwrap().keep();
    std::fs::write(other.join("agentgate.toml"), opts.toml(&other.join("data"))).unwrap();
    let (_gw2, host) = StdioGateway::start(&other, true, &["--read-only"], "claude-code").await;
    let names = tool_names(&host.client.list_all_tools().await.unwrap());
    assert!(names.contains(&"read_messages".to_owned()) && !names.iter().any(|n| n == "reply" || n == "ack_messages"), "{names:?}");

    let out = std::process::Command::new(bin())
        .args(["mcp", "--dev", "--tool", "sned_message", "--config"])
        .arg(dir.join("agentgate.toml"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("--tool") && said.contains("`sned_message` is not a tool") && said.contains("send_message"), "{said}");
}
