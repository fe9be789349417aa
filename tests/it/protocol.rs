//! Wire rules Microsoft's SDKs follow and Teams enforces, through the strict fake Connector reached as a
//! configured endpoint (`clouds.public.connector_endpoints`), so that it sees the real bot token and can
//! hold `from` to it: a second between a stream's requests (the final included), 429 on a stream post
//! retried, `ContentStreamNotAllowed` ending a stream as cancelled.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_connector::{FakeConnector, Fault, Identity};
use crate::fake_entra::{BOTFRAMEWORK_TENANT, FakeApp, FakeEntra};
use crate::helpers::*;

const SECRET: &str = "s3cr3t-value-that-must-never-be-logged";
const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";

pub struct BotSetup {
    pub _oidc: FakeOidc,
    pub entra: Arc<FakeEntra>,
    pub fake: FakeConnector,
    pub app: TestApp,
}

/// A production-mode gateway whose bot has a client secret (from the fake Entra); the fake Connector is
/// a configured endpoint and knows the bot's tokens.
pub async fn bot_setup() -> BotSetup {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let entra = Arc::new(FakeEntra::start(vec![FakeApp::with_secret(APP_ID, BOTFRAMEWORK_TENANT, SECRET).also_in(TENANT)]).await);
    let fake = FakeConnector::start(vec![]).await;
    let e = Arc::clone(&entra);
    fake.accept_identities(Arc::new(move |t: &str| e.check_bearer(t).map(|i| Identity::Bot(i.client_id))));
    let mut opts = Options::new(&oidc.metadata_url);
    opts.credential = true;
    opts.token_authority = entra.authority();
    opts.connector_endpoints = vec![fake.service_url.clone()];
    opts.extra = "\n[outbound]\npoll_interval_ms = 20\n".into();
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    BotSetup { _oidc: oidc, entra, fake, app }
}

/// A signed Bot Framework activity from the fake Connector's conversation (the token's `serviceurl` is
/// the activity's).
pub async fn inbound(app: &TestApp, fake: &FakeConnector, conversation: &str, conversation_type: &str) {
    let mut m = message(&unique_id("in"));
    m["serviceUrl"] = json!(fake.service_url);
    m["conversation"]["id"] = json!(conversation);
    m["conversation"]["conversationType"] = json!(conversation_type);
    let mut claims = good_claims();
    claims["serviceurl"] = json!(fake.service_url);
    let token = TestKey::teams("kid", 0).mint(&claims);
    assert_eq!(app.status(Some(&token), &m).await, 202, "{}", app.stderr());
}

fn cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).args(args).arg("--config").arg(&app.config).env("AGENTGATE_TEST_SECRET", SECRET).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn outbox_id(out: &str) -> i64 {
    out.split("outbox #").nth(1).and_then(|r| r.split(';').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no id in {out}"))
}

/// `agentgate send --stream …` with the reply on standard input.
pub fn send_stream(config: &std::path::Path, conversation: &str, interval_ms: u64, text: &str) -> i64 {
    use std::io::Write as _;
    let mut child = Command::new(bin())
        .args(["send", "--conversation", conversation, "--stream", "--stream-interval-ms", &interval_ms.to_string(), "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    outbox_id(&text)
}

/// Wait (up to `within`) until the outbox entry reaches a final state.
pub async fn settled(config: &std::path::Path, id: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let out = Command::new(bin()).args(["outbox", "--id", &id.to_string(), "--config"]).arg(config).output().unwrap();
        let item: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("null")).unwrap();
        if ["delivered", "uncertain", "dead"].contains(&item["state"].as_str().unwrap_or("")) {
            return item;
        }
        assert!(Instant::now() < deadline, "outbox #{id} never settled: {item}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stream_posts(fake: &FakeConnector, conversation: &str) -> Vec<crate::fake_connector::Landed> {
    fake.landed().into_iter().filter(|l| l.conversation.as_deref() == Some(conversation)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_endpoint_gets_the_real_bot_token_and_from_matches_it() {
    let t = bot_setup().await;
    inbound(&t.app, &t.fake, "a:conv-1", "personal").await;
    inbound(&t.app, &t.fake, "19:group@thread.v2", "groupChat").await;
    let (ok, out) = cli(&t.app, &["send", "--conversation", "a:conv-1", "--text", "hello"]);
    assert!(ok, "{out}");
    assert_eq!(settled(&t.app.config, outbox_id(&out), Duration::from_secs(15)).await["state"], "delivered");
    // Members with the real token too, without --dev.
    let (ok, out) = cli(&t.app, &["members", "--conversation", "19:group@thread.v2"]);
    assert!(ok, "{out}");
    assert!(t.fake.refused().is_empty(), "{:?}", t.fake.refused());
    let landed = t.fake.landed();
    assert_eq!(landed[0].body["from"]["id"], format!("28:{APP_ID}"));
    let seen = t.fake.seen_tokens();
    assert!(seen.len() >= 2 && seen.iter().all(|s| t.entra.check_bearer(s).is_some()), "not the bot's real token: {seen:?}");
    assert!(!seen.iter().any(|s| s == DEV_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_final_waits_a_second_after_its_previous_request() {
    let t = bot_setup().await;
    inbound(&t.app, &t.fake, "a:conv-1", "personal").await;
    // One chunk: the start, then at once the final.
    let id = send_stream(&t.app.config, "a:conv-1", 50, "short answer");
    let item = settled(&t.app.config, id, Duration::from_secs(20)).await;
    assert_eq!(item["state"], "delivered", "{item}\nrefused: {:?}", t.fake.refused());
    assert!(t.fake.refused().is_empty(), "{:?}", t.fake.refused());
    let posts = stream_posts(&t.fake, "a:conv-1");
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert_eq!(posts[1].body["entities"][0]["streamType"], "final");
    assert_eq!(posts[1].body["text"], "short answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_stream_post_is_posted_again_after_retry_after() {
    let t = bot_setup().await;
    inbound(&t.app, &t.fake, "a:conv-1", "personal").await;
    // The start passes; the final is throttled twice, then lands.
    t.fake.push_faults([Fault::Pass, Fault::TooMany("1".into()), Fault::TooMany("1".into())]);
    let id = send_stream(&t.app.config, "a:conv-1", 50, "short answer");
    let item = settled(&t.app.config, id, Duration::from_secs(20)).await;
    assert_eq!(item["state"], "delivered", "{item}");
    let posts = stream_posts(&t.fake, "a:conv-1");
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert_eq!(posts[1].body["entities"][0]["streamType"], "final");
    assert!(t.fake.refused().is_empty(), "{:?}", t.fake.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_user_stopped_ends_cancelled_without_a_final() {
    let t = bot_setup().await;
    inbound(&t.app, &t.fake, "a:conv-1", "personal").await;
    let reply = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen";
    let id = send_stream(&t.app.config, "a:conv-1", 400, reply);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream_posts(&t.fake, "a:conv-1").is_empty() {
        assert!(Instant::now() < deadline, "the stream never started: {:?}", t.fake.refused());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.fake.stop_streams();
    let item = settled(&t.app.config, id, Duration::from_secs(20)).await;
    assert_eq!((item["state"].as_str(), item["last_error"].as_str()), (Some("dead"), Some("cancelled: ContentStreamNotAllowed")), "{item}");
    assert_eq!(t.fake.cancelled(), 1, "one refused post, then nothing more");
    let posts = stream_posts(&t.fake, "a:conv-1");
    assert!(posts.iter().all(|p| p.body["type"] == "typing"), "a final was posted: {posts:#?}");
    let (_, audit) = cli(&t.app, &["audit", "--limit", "50"]);
    assert!(audit.lines().any(|l| l.contains("\"action\":\"stream\"") && l.contains("\"outcome\":\"cancelled\"")), "{audit}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(t.fake.cancelled(), 1, "posted again after the cancellation");
}
