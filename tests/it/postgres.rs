//! The real binary on the Postgres store (`store.url`): intake, read-back through the CLI, dedupe, readiness
//! and recovery when the database goes away and comes back. Runs when `AGENTGATE_TEST_POSTGRES_URL` names a
//! server (each test in a fresh database); otherwise each test says it was skipped and passes.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::helpers::*;

const TEST_URL_VAR: &str = "AGENTGATE_TEST_POSTGRES_URL";
/// The value behind `store.password = "env:AGENTGATE_TEST_SECRET"` (the harness sets it for the app).
const PASSWORD: &str = "s3cr3t-value-that-must-never-be-logged";

/// A fresh database on the test server, dropped at the end.
pub(crate) struct Database {
    admin: tokio_postgres::Config,
    name: String,
    /// host:port of the server.
    addr: String,
    user: String,
}

impl Database {
    pub(crate) async fn create() -> Option<Self> {
        let Ok(url) = std::env::var(TEST_URL_VAR) else {
            eprintln!("skipped: set {TEST_URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres to run the Postgres integration tests");
            return None;
        };
        let admin: tokio_postgres::Config = url.parse().unwrap();
        let host = match admin.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => panic!("{TEST_URL_VAR} must name a TCP host"),
        };
        let addr = format!("{host}:{}", admin.get_ports().first().copied().unwrap_or(5432));
        let user = admin.get_user().unwrap_or("postgres").to_owned();
        let name = unique_id("agentgate_it").to_ascii_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        run(&admin, &format!("CREATE DATABASE {name}")).await;
        Some(Self { admin, name, addr, user })
    }

    /// The configuration that points `agentgate` at this database through `addr` (the server or a proxy).
    pub(crate) fn store_toml(&self) -> String {
        self.store_toml_at(&self.addr)
    }

    /// A connection to this database (to look at what the gateways wrote).
    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let mut config = self.admin.clone();
        config.dbname(&self.name);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    fn store_toml_at(&self, addr: &str) -> String {
        format!(
            "\n[store]\nurl = \"postgres://{user}@{addr}/{db}?sslmode=disable\"\npassword = \"env:AGENTGATE_TEST_SECRET\"\npool_size = 4\n",
            user = self.user,
            db = self.name
        )
    }

    pub(crate) async fn drop_it(self) {
        run(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

async fn run(config: &tokio_postgres::Config, sql: &str) {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    drop(client);
    let _ = driver.await;
}

/// An `agentgate` command against the app's configuration (with the password's variable set).
fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).arg("--config").arg(&app.config).env("AGENTGATE_TEST_SECRET", PASSWORD).output().unwrap()
}

fn inbox_ids(app: &TestApp) -> Vec<String> {
    let out = cli(app, &["inbox", "--limit", "1000"]);
    assert!(out.status.success(), "inbox failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["activity_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A TCP proxy in front of the database that can be cut (every connection dropped, new ones refused) and
/// restored: the database going away and coming back, as seen from the gateway.
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (up, cut) = (Arc::new(AtomicBool::new(true)), Arc::new(Notify::new()));
        let (up2, cut2) = (Arc::clone(&up), Arc::clone(&cut));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let (target, cut) = (target.clone(), Arc::clone(&cut2));
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.notify_waiters();
        }
    }
}

#[tokio::test]
async fn the_gateway_on_postgres_commits_reads_back_and_deduplicates() {
    let Some(db) = Database::create().await else { return };
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.extra = db.store_toml_at(&db.addr);
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;

    // `migrate` finds the schema `serve` created.
    let out = cli(&app, &["migrate"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && said.contains(&format!("schema version {}", agentgate::store::postgres::SCHEMA_VERSION))
            && said.contains("postgres"),
        "{said}"
    );

    let id = unique_id("pg");
    let token = key.mint(&good_claims());
    assert_eq!(app.status(Some(&token), &message(&id)).await, 202);
    assert_eq!(inbox_ids(&app), vec![id.clone()], "committed to Postgres, read back by another process");
    // Teams redelivers: acknowledged, stored once.
    assert_eq!(app.status(Some(&token), &message(&id)).await, 202);
    assert_eq!(inbox_ids(&app).len(), 1);
    assert_eq!(app.metric("agentgate_requests_total{outcome=\"duplicate\"}").await, 1);
    // Nothing wrote the store's password (or the data dir's SQLite file: Postgres was used).
    assert!(!app.stderr().contains(PASSWORD));
    assert!(!app.dir.join("data/agentgate.db").exists());
    drop(app);
    db.drop_it().await;
}

// Multi-threaded: the proxy runs on this runtime, and the CLI read-back blocks one thread meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_readyz_fails_and_intake_answers_503_then_both_recover() {
    let Some(db) = Database::create().await else { return };
    let proxy = Proxy::start(db.addr.clone()).await;
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.extra = db.store_toml_at(&proxy.addr);
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    let token = key.mint(&good_claims());
    let readyz = async || app.client().get(format!("{}/readyz", app.url)).send().await.unwrap().status().as_u16();

    proxy.set_up(false);
    assert_eq!(readyz().await, 503);
    let lost = unique_id("down");
    assert_eq!(app.status(Some(&token), &message(&lost)).await, 503, "not acknowledged: Teams will redeliver");

    proxy.set_up(true);
    let mut ready = false;
    for _ in 0..100 {
        if readyz().await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readyz recovers by itself:\n{}", app.stderr());
    let back = unique_id("back");
    assert_eq!(app.status(Some(&token), &message(&back)).await, 202);
    assert_eq!(app.status(Some(&token), &message(&lost)).await, 202, "the redelivery is accepted now");
    let ids = inbox_ids(&app);
    assert!(ids.contains(&back) && ids.contains(&lost) && ids.len() == 2, "{ids:?}");
    drop(app);
    db.drop_it().await;
}

/// Two gateways on one database share one outbox: sends queued through either (to two conversations) are each
/// delivered exactly once, in order per conversation, whichever replica claims them; the audit chain stays
/// one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_send_once_and_in_order() {
    use crate::fake_connector::FakeConnector;
    const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
    let Some(db) = Database::create().await else { return };
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = format!("{}\n[outbound]\npoll_interval_ms = 20\n", db.store_toml_at(&db.addr));
    let one = TestApp::spawn(&opts).await;
    let two = TestApp::spawn(&opts).await;
    one.wait_ready().await;
    two.wait_ready().await;
    for conversation in ["a:conv-1", "a:conv-2"] {
        let mut m = message(&unique_id("in"));
        m["serviceUrl"] = serde_json::json!(fake.service_url);
        m["conversation"]["id"] = serde_json::json!(conversation);
        m["conversation"]["conversationType"] = serde_json::json!("personal");
        assert_eq!(one.status(None, &m).await, 202, "{}", one.stderr());
    }
    let mut ids = Vec::new();
    for i in 0..16 {
        let app = if i % 2 == 0 { &one } else { &two };
        let conversation = if i % 4 < 2 { "a:conv-1" } else { "a:conv-2" };
        let out = cli(app, &["send", "--conversation", conversation, "--text", &format!("{conversation} m{i}")]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
        ids.push(said.split("outbox #").nth(1).and_then(|r| r.split(';').next()).and_then(|n| n.trim().parse::<i64>().ok()).unwrap());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            let out = cli(&two, &["outbox", "--id", &id.to_string()]);
            let item: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if item["state"] == "delivered" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "outbox #{id} never delivered: {item}\n{}\n{}", one.stderr(), two.stderr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let texts = fake.texts();
    for conversation in ["a:conv-1", "a:conv-2"] {
        let got: Vec<&String> = texts.iter().filter(|t| t.starts_with(conversation)).collect();
        let want: Vec<String> =
            (0..16).filter(|i| (i % 4 < 2) == (conversation == "a:conv-1")).map(|i| format!("{conversation} m{i}")).collect();
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "each exactly once, in order");
    }
    let delivered = "agentgate_outbound_attempts_total{outcome=\"delivered\"}";
    let (by_one, by_two) = (one.metric(delivered).await, two.metric(delivered).await);
    eprintln!("delivered by replica one: {by_one}, by replica two: {by_two}");
    assert_eq!(by_one + by_two, 16, "one delivering attempt per entry across the replicas");
    let out = cli(&one, &["audit", "--verify"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("audit chain intact"), "{out:?}");
    assert!(!one.stderr().contains(PASSWORD) && !two.stderr().contains(PASSWORD));
    drop(one);
    drop(two);
    db.drop_it().await;
}

/// A replica starting (or restarting) while another has a request on the wire leaves that claim alone: the
/// entry stays `sending` with its live lease, is not requeued, and its owner records the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_replica_leaves_another_replicas_send_in_flight_alone() {
    use crate::fake_connector::{FakeConnector, Fault};
    const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
    let Some(db) = Database::create().await else { return };
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = format!("{}\n[outbound]\npoll_interval_ms = 20\n", db.store_toml_at(&db.addr));
    let one = TestApp::spawn(&opts).await;
    one.wait_ready().await;
    let mut m = message(&unique_id("in"));
    m["serviceUrl"] = serde_json::json!(fake.service_url);
    m["conversation"]["id"] = serde_json::json!("a:conv-1");
    m["conversation"]["conversationType"] = serde_json::json!("personal");
    assert_eq!(one.status(None, &m).await, 202, "{}", one.stderr());
    // The delete hangs for a while (then fails with 504 and is retried: deletes are idempotent).
    fake.push_faults([Fault::Hang(Duration::from_secs(4))]);
    let out = cli(&one, &["send", "--conversation", "a:conv-1", "--delete", "1:5"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = said.split("outbox #").nth(1).and_then(|r| r.split(';').next()).and_then(|n| n.trim().parse::<i64>().ok()).unwrap();
    let item =
        |app: &TestApp| -> serde_json::Value { serde_json::from_slice(&cli(app, &["outbox", "--id", &id.to_string()]).stdout).unwrap() };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while item(&one)["state"] != "sending" {
        assert!(std::time::Instant::now() < deadline, "never claimed: {}", item(&one));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second replica starts now; its recovery runs before it is ready.
    let two = TestApp::spawn(&opts).await;
    two.wait_ready().await;
    let now = item(&two);
    assert_eq!((now["state"].as_str(), now["attempts"].as_i64()), (Some("sending"), Some(1)), "the live claim was left alone: {now}");
    assert!(!two.stderr().contains("interrupted by a restart"), "{}", two.stderr());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let now = item(&two);
        if now["state"] == "delivered" {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "never delivered: {now}\n{}\n{}", one.stderr(), two.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["attempts"], 2, "the hung attempt, then one retry: {done}");
    drop(one);
    drop(two);
    db.drop_it().await;
}

/// The most arrivals in any window of `window` (each arrival opening one); `times` sorted.
fn most_in_window(times: &[std::time::Instant], window: Duration) -> usize {
    (0..times.len()).map(|i| times[i..].iter().take_while(|t| t.duration_since(times[i]) < window).count()).max().unwrap_or(0)
}

/// Queue `sends` (conversation, text) straight into the shared outbox (as a third process would: all at once,
/// so that a backlog forms), then wait until every entry is delivered.
async fn queue_and_deliver(db: &Database, fake: &crate::fake_connector::FakeConnector, sends: &[(String, String)]) {
    use agentgate::store::{NewOutbound, OutboundOp, OutboxState, PostgresOptions, PostgresStore, Store};
    let config: tokio_postgres::Config = format!("postgres://{}@{}/{}?sslmode=disable", db.user, db.addr, db.name).parse().unwrap();
    let metrics = Arc::new(agentgate::metrics::Metrics::default());
    let store = PostgresStore::connect(config, PostgresOptions::default(), metrics, None).await.unwrap();
    for (conversation, text) in sends {
        let op = OutboundOp::Send { activity: serde_json::json!({"type": "message", "text": text}) };
        let item = NewOutbound {
            bot_app_id: APP_ID.into(),
            tenant_id: TENANT.into(),
            conversation_id: conversation.clone().into(),
            service_url: fake.service_url.clone(),
            op,
            requested_by: "test".into(),
            now_ms: agentgate::store::now_ms(),
        };
        store.enqueue_outbound(item).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let items = store.outbox(None, 10_000).await.unwrap();
        if items.iter().all(|i| i.state == OutboxState::Delivered) && items.len() >= sends.len() {
            break;
        }
        let stuck: Vec<_> =
            items.iter().filter(|i| i.state != OutboxState::Delivered).map(|i| (i.id, i.state, i.last_error.clone())).collect();
        assert!(std::time::Instant::now() < deadline, "not delivered: {stuck:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await;
}

/// Two gateways on one database hold Teams' rate limits together: sends queued for one conversation, and
/// for many conversations of one tenant, delivered by both replicas, never arrive at the Connector faster
/// than Teams allows (7 in any 1 s and 8 in any 2 s per conversation, 50 in any 1 s per tenant), though
/// each replica alone would have let through as many again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hold_teams_rate_limits_together() {
    use crate::fake_connector::FakeConnector;
    const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
    let Some(db) = Database::create().await else { return };
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = format!("{}\n[outbound]\npoll_interval_ms = 20\n", db.store_toml_at(&db.addr));
    let one = TestApp::spawn(&opts).await;
    let two = TestApp::spawn(&opts).await;
    one.wait_ready().await;
    two.wait_ready().await;
    let delivered = "agentgate_outbound_attempts_total{outcome=\"delivered\"}";

    // One conversation: 20 sends.
    let sends: Vec<(String, String)> = (0..20).map(|i| ("a:conv-1".to_owned(), format!("one m{i}"))).collect();
    queue_and_deliver(&db, &fake, &sends).await;
    let landed = fake.landed();
    let times: Vec<_> = landed.iter().map(|l| l.at).collect();
    assert_eq!(times.len(), 20, "each once");
    let (by_one, by_two) = (one.metric(delivered).await, two.metric(delivered).await);
    eprintln!(
        "one conversation: delivered by replica one {by_one}, by two {by_two}; at most {} in 1 s, {} in 2 s",
        most_in_window(&times, Duration::from_secs(1)),
        most_in_window(&times, Duration::from_secs(2))
    );
    assert!(most_in_window(&times, Duration::from_secs(1)) <= 7, "7 per second per conversation");
    assert!(most_in_window(&times, Duration::from_secs(2)) <= 8, "8 per 2 s per conversation");

    // One tenant: 60 conversations, two sends each (120 sends, beyond 50 per second).
    let sends: Vec<(String, String)> = (0..120).map(|i| (format!("a:tenant-{}", i % 60), format!("tenant m{i}"))).collect();
    queue_and_deliver(&db, &fake, &sends).await;
    let landed = fake.landed();
    let times: Vec<_> = landed[20..].iter().map(|l| l.at).collect();
    assert_eq!(times.len(), 120, "each once");
    let (now_one, now_two) = (one.metric(delivered).await, two.metric(delivered).await);
    eprintln!(
        "one tenant: delivered by replica one {}, by two {}; at most {} in 1 s",
        now_one - by_one,
        now_two - by_two,
        most_in_window(&times, Duration::from_secs(1))
    );
    assert!(now_one > by_one && now_two > by_two, "both replicas delivered");
    assert!(most_in_window(&times, Duration::from_secs(1)) <= 50, "50 per second per tenant, across conversations and replicas");
    assert_eq!(fake.state.requests.load(std::sync::atomic::Ordering::SeqCst), 140, "nothing refused, nothing sent twice");
    drop(one);
    drop(two);
    db.drop_it().await;
}

/// Two gateways on one database share permission requests: an MCP host's request on replica B is answered by
/// the approver's signed card click on replica A, and the verdict reaches the host on B; a second answer and a
/// non-approver's are refused; a typed answer on A to another request of B's is a verdict too (not chat); the
/// card is updated once, by the replica that decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_on_one_replica_reaches_the_session_on_another() {
    use crate::fake_connector::FakeConnector;
    use crate::mcp_host::{StdioGateway, bf_token, inbound};
    use crate::mcp_relay::card_click;
    use serde_json::{Value, json};
    const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
    const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
    const EVE: &str = "00000000-0000-0000-0000-0000000000ee";
    const WAIT: Duration = Duration::from_secs(10);
    let Some(db) = Database::create().await else { return };
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = format!("{}\n[outbound]\npoll_interval_ms = 20\n", db.store_toml_at(&db.addr));
    let approvers = |toml: String| {
        toml.replacen(
            "policy.dm = \"open\"",
            &format!("policy.dm = \"open\"\npolicy.approvers = [\"{ALEX}\"]\npolicy.approval_timeout_secs = 60"),
            1,
        )
    };
    // Replica A: `serve`. Replica B: `mcp` over stdio, the host's session.
    let a = TestApp::spawn_in_with(&tempfile::tempdir().unwrap().keep(), &opts, approvers).await.unwrap();
    a.wait_ready().await;
    let dir_b = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir_b.join("agentgate.toml"), approvers(opts.toml(&dir_b.join("data")))).unwrap();
    let (b, mut host) = StdioGateway::start(&dir_b, true, &[], "claude-code").await;
    let token = bf_token(&fake.service_url);
    let click = async |aad: &str, behavior: &str, card_id: &str| -> Value {
        let r = a.post(Some(&token), &card_click(&fake.service_url, aad, "abcde", behavior, card_id)).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    };

    // The approver's 1:1 chat with the bot (through B; the reference is shared).
    assert_eq!(b.post(&inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hi")).await.status(), 202);
    assert!(host.next("notifications/claude/channel", WAIT).await.is_some());

    // The host on B asks; the card goes out (through whichever replica claims it).
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "abcde", "tool_name": "Bash", "description": "List the files", "input_preview": "{\"command\":\"ls\"}"}),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    let card_id = loop {
        if let Some(l) = fake.landed().iter().find(|l| l.body.to_string().contains("abcde")) {
            break l.answered.clone().expect("the card's message id");
        }
        assert!(std::time::Instant::now() < deadline, "no card: {}\n{}", a.stderr(), b.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Eve (not an approver) clicks on A: refused, no verdict on B.
    let body = click(EVE, "allow", &card_id).await;
    assert!(body.to_string().contains("Only an approver"), "{body}");
    assert!(host.next("notifications/claude/channel/permission", Duration::from_secs(1)).await.is_none(), "a non-approver decided");

    // Alex allows on A: the verdict reaches the host on B.
    let body = click(ALEX, "allow", &card_id).await;
    assert!(body.to_string().contains("Allowed"), "{body}\n{}", a.stderr());
    let verdict = host.next("notifications/claude/channel/permission", WAIT).await.expect("the verdict reaches B");
    assert_eq!(verdict, json!({"request_id": "abcde", "behavior": "allow"}));

    // A second answer, on A or on B, decides nothing.
    let again = click(ALEX, "deny", &card_id).await;
    assert!(again.to_string().contains("no longer open"), "{again}");
    let on_b: Value = b.post_as(&token, &card_click(&fake.service_url, ALEX, "abcde", "deny", &card_id)).await.json().await.unwrap();
    assert!(on_b.to_string().contains("no longer open"), "{on_b}");
    assert!(host.next("notifications/claude/channel/permission", Duration::from_millis(500)).await.is_none());

    // A typed answer on A to another request of B's is a verdict, not chat.
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "fghij", "tool_name": "Write", "description": "d", "input_preview": "{}"}),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while !fake.landed().iter().any(|l| l.body.to_string().contains("fghij")) {
        assert!(std::time::Instant::now() < deadline, "no second card");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open request reaches A's mirror by NOTIFY (or, at the latest, its 2 s re-scan).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.status(Some(&token), &inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "no fghij")).await, 202);
    let verdict = host.next("notifications/claude/channel/permission", WAIT).await.expect("the typed verdict reaches B");
    assert_eq!(verdict, json!({"request_id": "fghij", "behavior": "deny"}));
    let read = host.ok("read_messages", json!({})).await.to_string();
    assert!(!read.contains("no fghij"), "the typed verdict was delivered as chat: {read}");

    // Each card is updated once (by A, which decided), and says how it ended.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let puts: Vec<_> = fake.landed().into_iter().filter(|l| l.method == "PUT").collect();
    let first: Vec<_> = puts.iter().filter(|l| l.activity.as_deref() == Some(card_id.as_str())).collect();
    assert_eq!(first.len(), 1, "one update of the first card: {puts:?}");
    assert!(first[0].body.to_string().contains("Allowed in Teams"), "{:?}", first[0].body);
    assert_eq!(puts.iter().filter(|l| l.body.to_string().contains("fghij")).count(), 1, "{puts:?}");
    drop(b);
    drop(a);
    db.drop_it().await;
}
