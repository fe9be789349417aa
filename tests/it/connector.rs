//! Talking back: queued sends delivered through the strict fake Connector, retries, refusals, order.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_connector::{FakeConnector, Fault};
use crate::helpers::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";

/// A dev-mode gateway (the fake Connector lives on loopback, as the Playground's does) whose bot has
/// no credential, so it presents the dev placeholder token.
async fn setup() -> (FakeOidc, FakeConnector, TestApp) {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = "\n[outbound]\npoll_interval_ms = 50\n".into();
    let app = TestApp::spawn(&opts).await;
    (oidc, fake, app)
}

/// An inbound activity from the fake Connector's conversation, accepted (dev mode, anonymous).
async fn inbound(app: &TestApp, fake: &FakeConnector, conversation: &str, conversation_type: &str) {
    let mut m = message(&unique_id("in"));
    m["serviceUrl"] = json!(fake.service_url);
    m["conversation"]["id"] = json!(conversation);
    m["conversation"]["conversationType"] = json!(conversation_type);
    assert_eq!(app.status(None, &m).await, 202, "{}", app.stderr());
}

fn cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).args(args).arg("--config").arg(&app.config).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `agentgate send …`, returning the outbox id.
fn send(app: &TestApp, args: &[&str]) -> i64 {
    let mut full = vec!["send"];
    full.extend_from_slice(args);
    let (ok, out) = cli(app, &full);
    assert!(ok, "send failed: {out}");
    out.split("outbox #").nth(1).and_then(|r| r.split(';').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no id in {out}"))
}

fn outbox(app: &TestApp, id: i64) -> Value {
    let (ok, out) = cli(app, &["outbox", "--id", &id.to_string()]);
    assert!(ok, "{out}");
    serde_json::from_str(out.lines().next().unwrap_or("null")).unwrap()
}

/// Wait (up to 15 s) until the entry reaches a final state.
async fn settled(app: &TestApp, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let item = outbox(app, id);
        if ["delivered", "uncertain", "dead"].contains(&item["state"].as_str().unwrap_or("")) {
            return item;
        }
        assert!(Instant::now() < deadline, "outbox #{id} never settled: {item}\n{}", app.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn audit_ok(app: &TestApp) {
    let (ok, out) = cli(app, &["audit", "--verify"]);
    assert!(ok && out.contains("audit chain intact"), "{out}");
}

#[tokio::test]
async fn reply_send_update_delete_with_encoded_ids() {
    let (_oidc, fake, app) = setup().await;
    let channel = "19:abc@thread.tacv2;messageid=1700000000000";
    inbound(&app, &fake, channel, "channel").await;

    let reply = send(&app, &["--conversation", channel, "--reply-to", "1700000000000", "--text", "a reply"]);
    let item = settled(&app, reply).await;
    assert_eq!(item["state"], "delivered", "{item}");
    let result_id = item["result_id"].as_str().unwrap().to_owned();
    let update = send(&app, &["--conversation", channel, "--update", &result_id, "--text", "edited"]);
    assert_eq!(settled(&app, update).await["state"], "delivered");
    let delete = send(&app, &["--conversation", channel, "--delete", &result_id]);
    assert_eq!(settled(&app, delete).await["state"], "delivered");

    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
    let landed = fake.landed();
    assert_eq!(landed.len(), 3);
    assert_eq!(
        (landed[0].method.as_str(), landed[0].conversation.as_deref(), landed[0].activity.as_deref()),
        ("POST", Some(channel), Some("1700000000000"))
    );
    assert_eq!(landed[0].body["text"], "a reply");
    assert_eq!(landed[0].body["replyToId"], "1700000000000");
    assert_eq!(landed[0].body["from"]["id"], format!("28:{APP_ID}"));
    assert_eq!((landed[1].method.as_str(), landed[1].activity.as_deref()), ("PUT", Some(result_id.as_str())));
    assert_eq!(landed[1].body["text"], "edited");
    assert_eq!((landed[2].method.as_str(), landed[2].activity.as_deref()), ("DELETE", Some(result_id.as_str())));
    audit_ok(&app);
    let (_, events) = cli(&app, &["audit", "--limit", "100"]);
    assert_eq!(events.lines().filter(|l| l.contains("\"outcome\":\"delivered\"")).count(), 3, "{events}");
}

#[tokio::test]
async fn throttling_is_honoured_and_the_message_lands_once() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(1));
    fake.push_faults([Fault::TooMany("1".into()), Fault::TooMany(later)]);
    let started = Instant::now();
    let id = send(&app, &["--conversation", "a:conv-1", "--text", "patience"]);
    let item = settled(&app, id).await;
    assert_eq!(item["state"], "delivered", "{item}");
    assert_eq!(item["attempts"], 3);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
    assert_eq!(fake.texts(), vec!["patience"]);
}

#[tokio::test]
async fn an_ambiguous_create_is_never_reposted() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    fake.push_faults([Fault::LandThenFail(502)]);
    let id = send(&app, &["--conversation", "a:conv-1", "--text", "only once"]);
    let item = settled(&app, id).await;
    assert_eq!(item["state"], "uncertain", "{item}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.texts(), vec!["only once"], "the message must not be duplicated");
    assert_eq!(fake.state.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn definite_refusals_are_dead_lettered_without_retries() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    fake.push_faults([
        Fault::Status(413, json!({"error": {"code": "MessageSizeTooBig"}})),
        Fault::Status(403, json!({"error": {"code": "Forbidden", "subCode": "MessageWritesBlocked", "message": "Bot is blocked"}})),
    ]);
    let big = send(&app, &["--conversation", "a:conv-1", "--text", "too big"]);
    let item = settled(&app, big).await;
    assert_eq!((item["state"].as_str(), item["attempts"].as_i64()), (Some("dead"), Some(1)), "{item}");
    let blocked = send(&app, &["--conversation", "a:conv-1", "--text", "blocked"]);
    let item = settled(&app, blocked).await;
    assert_eq!((item["state"].as_str(), item["attempts"].as_i64()), (Some("dead"), Some(1)), "{item}");
    assert!(item["last_error"].as_str().unwrap().contains("MessageWritesBlocked"), "{item}");
    assert!(fake.texts().is_empty());
    assert_eq!(fake.state.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The bot was blocked there: nothing more is queued for that conversation.
    let (ok, out) = cli(&app, &["send", "--conversation", "a:conv-1", "--text", "again?"]);
    assert!(!ok && out.contains("removed from conversation"), "{out}");
}

#[tokio::test]
async fn idempotent_updates_are_retried_after_gateway_errors() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    let sent = settled(&app, send(&app, &["--conversation", "a:conv-1", "--text", "typo"])).await;
    let message_id = sent["result_id"].as_str().unwrap().to_owned();
    fake.push_faults([Fault::Status(502, json!({})), Fault::Status(504, json!({}))]);
    let id = send(&app, &["--conversation", "a:conv-1", "--update", &message_id, "--text", "fixed"]);
    let item = settled(&app, id).await;
    assert_eq!((item["state"].as_str(), item["attempts"].as_i64()), (Some("delivered"), Some(3)), "{item}");
    assert_eq!(fake.landed().len(), 2);
    // The fake only takes updates of messages it holds: an unknown one is answered 404 and not retried.
    let id = send(&app, &["--conversation", "a:conv-1", "--update", "1:99", "--text", "fixed"]);
    let item = settled(&app, id).await;
    assert_eq!((item["state"].as_str(), item["attempts"].as_i64()), (Some("dead"), Some(1)), "{item}");
}

#[tokio::test]
async fn sends_to_one_conversation_keep_their_order() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    fake.push_faults([Fault::TooMany("1".into())]);
    let ids: Vec<i64> = (0..5).map(|i| send(&app, &["--conversation", "a:conv-1", "--text", &format!("m{i}")])).collect();
    for id in ids {
        assert_eq!(settled(&app, id).await["state"], "delivered");
    }
    assert_eq!(fake.texts(), vec!["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn a_proactive_message_opens_a_personal_chat_first() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    let id = send(&app, &["--user", "29:user-7", "--tenant", TENANT, "--text", "hello from the agent"]);
    let item = settled(&app, id).await;
    assert_eq!(item["state"], "delivered", "{item}");
    let landed = fake.landed();
    assert_eq!(landed.len(), 2);
    let create = &landed[0].body;
    assert_eq!(create["bot"]["id"], format!("28:{APP_ID}"));
    assert_eq!(create["members"][0]["id"], "29:user-7");
    assert_eq!(create["isGroup"], false);
    assert_eq!(create["tenantId"], TENANT);
    assert_eq!(create["channelData"]["tenant"]["id"], TENANT);
    assert_eq!(landed[1].conversation.as_deref(), Some("a:created-1"));
    assert_eq!(landed[1].body["text"], "hello from the agent");
    assert_eq!(landed[1].body["from"]["id"], format!("28:{APP_ID}"));
    assert_eq!(landed[1].body["conversation"]["id"], "a:created-1");
    // The new chat is remembered: it can be written to by its id now.
    let next = send(&app, &["--conversation", "a:created-1", "--text", "and a follow-up"]);
    assert_eq!(settled(&app, next).await["state"], "delivered");
    // A tenant the bot does not serve is refused before anything is queued.
    let (ok, out) = cli(&app, &["send", "--bot", APP_ID, "--user", "29:x", "--tenant", OTHER_TENANT, "--text", "no"]);
    assert!(!ok && out.contains("allowed_tenants"), "{out}");
}

#[tokio::test]
async fn sending_where_the_bot_never_was_is_refused_with_a_reason() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    let (ok, out) = cli(&app, &["send", "--conversation", "a:somewhere-else", "--text", "x"]);
    assert!(!ok && out.contains("has seen conversation"), "{out}");
    let (ok, out) = cli(&app, &["send", "--conversation", "a:conv-1", "--card", "/nonexistent.json"]);
    assert!(!ok && out.contains("cannot read the card"), "{out}");
    let card = app.dir.join("bad-card.json");
    std::fs::write(&card, r#"{"type":"NotACard"}"#).unwrap();
    let (ok, out) = cli(&app, &["send", "--conversation", "a:conv-1", "--card", card.to_str().unwrap()]);
    assert!(!ok && out.contains("not a valid Adaptive Card"), "{out}");
    // The approval verb is reserved for the gateway's own approval cards.
    let forged = app.dir.join("forged-card.json");
    std::fs::write(
        &forged,
        r#"{"type":"AdaptiveCard","version":"1.5","body":[],"actions":[{"type":"Action.Execute","title":"Allow","verb":"agentgate.permission","data":{"request_id":"abcde","behavior":"allow"}}]}"#,
    )
    .unwrap();
    let (ok, out) = cli(&app, &["send", "--conversation", "a:conv-1", "--card", forged.to_str().unwrap()]);
    assert!(!ok && out.contains("reserved"), "{out}");
    assert_eq!(fake.state.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_timed_out_create_is_uncertain_but_a_timed_out_delete_is_retried() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = "\n[outbound]\npoll_interval_ms = 50\nrequest_timeout_secs = 1\n".into();
    let app = TestApp::spawn(&opts).await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    fake.push_faults([Fault::Hang(Duration::from_secs(3))]);
    let id = send(&app, &["--conversation", "a:conv-1", "--text", "lost in transit?"]);
    let item = settled(&app, id).await;
    assert_eq!((item["state"].as_str(), item["attempts"].as_i64()), (Some("uncertain"), Some(1)), "{item}");
    fake.push_faults([Fault::Hang(Duration::from_secs(3))]);
    let id = send(&app, &["--conversation", "a:conv-1", "--delete", "1:5"]);
    let item = settled(&app, id).await;
    assert_eq!((item["state"].as_str(), item["attempts"].as_i64()), (Some("delivered"), Some(2)), "{item}");
}

#[tokio::test]
async fn typing_indicators_are_rate_limited_and_never_sent_to_channels() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    inbound(&app, &fake, "19:chan@thread.tacv2", "channel").await;
    let first = send(&app, &["--conversation", "a:conv-1", "--typing"]);
    assert_eq!(settled(&app, first).await["state"], "delivered");
    let second = send(&app, &["--conversation", "a:conv-1", "--typing"]);
    let item = settled(&app, second).await;
    assert_eq!(item["state"], "dead", "{item}");
    assert!(item["last_error"].as_str().unwrap().contains("skipped"));
    let typing: Vec<_> = fake.landed().into_iter().filter(|l| l.body["type"] == "typing").collect();
    assert_eq!(typing.len(), 1);
    let (ok, out) = cli(&app, &["send", "--conversation", "19:chan@thread.tacv2", "--typing"]);
    assert!(!ok && out.contains("no typing indicator in channels"), "{out}");
}

/// A gateway whose bot holds a certificate credential issued by the strict fake Entra; the fake
/// Connector accepts only unexpired tokens that fake issued for the bot with the Bot Framework scope.
async fn setup_with_certificate() -> (FakeOidc, std::sync::Arc<crate::fake_entra::FakeEntra>, FakeConnector, TestApp) {
    use crate::fake_entra::{FakeApp, FakeEntra, test_cert};
    let cert = test_cert(0);
    let entra = std::sync::Arc::new(FakeEntra::start(vec![FakeApp::with_certificate(APP_ID, TENANT, cert)]).await);
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    // The fake is the Playground's loopback connector: it must only ever see the dev placeholder, never
    // the bot's real token (which the gateway still obtains from the credential).
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (key, crt) = (dir.join("bot-key.pem"), dir.join("bot-cert.pem"));
    std::fs::write(&key, &cert.key_pem).unwrap();
    std::fs::write(&crt, &cert.cert_pem).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.token_authority = entra.authority();
    opts.extra = format!(
        "\n[outbound]\npoll_interval_ms = 50\n\n[[bots]]\napp_id = \"cccccccc-0000-0000-0000-00000000000c\"\nallowed_tenants = [\"{TENANT}-c\"]\n"
    );
    // The first bot gets the certificate: patch its table.
    let toml_patch =
        format!("tenant_id = \"{TENANT}\"\ncredential = \"file:{}\"\ncertificate = \"file:{}\"\n", key.display(), crt.display());
    let app = TestApp::spawn_in_with(&dir, &opts, |t| t.replacen("require_endorsement", &format!("{toml_patch}require_endorsement"), 1))
        .await
        .unwrap();
    (oidc, entra, fake, app)
}

#[tokio::test]
async fn a_certificate_credential_gets_a_token_the_connector_accepts() {
    let (_oidc, entra, fake, app) = setup_with_certificate().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    let ids: Vec<i64> = (0..3).map(|i| send(&app, &["--conversation", "a:conv-1", "--text", &format!("signed {i}")])).collect();
    for id in ids {
        assert_eq!(settled(&app, id).await["state"], "delivered", "{}", app.stderr());
    }
    assert_eq!(fake.texts(), vec!["signed 0", "signed 1", "signed 2"]);
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
    assert_eq!(entra.issued(), 1, "one token serves every send");
    assert!(entra.refusals().is_empty(), "{:?}", entra.refusals());
    let real: Vec<String> = entra.issued_tokens().into_iter().map(|t| t.token).collect();
    assert!(fake.seen_tokens().iter().all(|t| t == DEV_TOKEN && !real.contains(t)), "a real bot token reached the Playground");
    // No token, assertion or key material reaches the log.
    let log = app.stderr();
    for t in entra.issued_tokens() {
        assert!(!log.contains(&t.token));
    }
    assert!(!log.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn queued_sends_survive_a_kill_and_are_delivered_exactly_once() {
    use crate::fake_entra::Injected;
    let (_oidc, entra, fake, mut app) = setup_with_certificate().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    // The token endpoint is down: nothing can be sent, everything stays queued.
    entra.inject((0..1000).map(|_| Injected::temporarily_unavailable()));
    let ids: Vec<i64> = (0..10).map(|i| send(&app, &["--conversation", "a:conv-1", "--text", &format!("q{i}")])).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(fake.landed().is_empty());
    app.kill();
    // Back up; the gateway restarts on the same store.
    let dir = app.dir.clone();
    let opts = {
        let mut o = Options::new(&_oidc.metadata_url);
        o.dev = true;
        o.token_authority = entra.authority();
        o
    };
    drop(app);
    entra.clear_injected();
    let config = std::fs::read_to_string(dir.join("agentgate.toml")).unwrap();
    let app = TestApp::spawn_in_with(&dir, &opts, |_| config.clone()).await.unwrap();
    for id in ids {
        assert_eq!(settled(&app, id).await["state"], "delivered", "{}", app.stderr());
    }
    let texts = fake.texts();
    assert_eq!(texts, (0..10).map(|i| format!("q{i}")).collect::<Vec<_>>(), "each exactly once, in order");
    audit_ok(&app);
}

fn send_stdin(app: &TestApp, args: &[&str], stdin: &str) -> i64 {
    use std::io::Write as _;
    let mut child = Command::new(bin())
        .arg("send")
        .args(args)
        .arg("--config")
        .arg(&app.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text.split("outbox #").nth(1).and_then(|r| r.split(';').next()).and_then(|n| n.parse().ok()).unwrap()
}

#[tokio::test]
async fn a_streamed_reply_in_a_personal_chat_and_a_buffered_one_in_a_group() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    inbound(&app, &fake, "19:group@thread.v2", "groupChat").await;
    let reply = "The quick brown fox jumps over the lazy dog, again and again, until the stream has shown a few updates.";
    let id = send_stdin(&app, &["--conversation", "a:conv-1", "--stream", "--stream-interval-ms", "250"], reply);
    let item = settled(&app, id).await;
    assert_eq!(item["state"], "delivered", "{item}");
    let landed: Vec<_> = fake.landed().into_iter().filter(|l| l.conversation.as_deref() == Some("a:conv-1")).collect();
    assert!(landed.len() >= 3, "a start, at least one update and the final: {landed:#?}");
    let first = &landed[0].body;
    assert_eq!(first["type"], "typing");
    assert_eq!(first["entities"][0]["type"], "streaminfo");
    assert_eq!(first["entities"][0]["streamType"], "streaming");
    let stream_id = landed[1].body["entities"][0]["streamId"].as_str().unwrap().to_owned();
    assert!(!stream_id.is_empty());
    let last = &landed.last().unwrap().body;
    assert_eq!(last["type"], "message");
    assert_eq!(last["text"], reply);
    assert_eq!(last["entities"][0]["streamType"], "final");
    assert_eq!(last["entities"][0]["streamId"], stream_id.as_str());
    // Every update is cumulative: each text starts with the previous one.
    for pair in landed.windows(2) {
        let (a, b) = (pair[0].body["text"].as_str().unwrap_or(""), pair[1].body["text"].as_str().unwrap_or(""));
        assert!(b.starts_with(a), "{a:?} then {b:?}");
    }
    // In a group chat Teams does not stream: one message, posted with the first words, then updated in
    // place to the whole text.
    let id = send_stdin(&app, &["--conversation", "19:group@thread.v2", "--stream", "--stream-interval-ms", "50"], reply);
    let item = settled(&app, id).await;
    assert_eq!(item["state"], "delivered");
    let group: Vec<_> = fake.landed().into_iter().filter(|l| l.conversation.as_deref() == Some("19:group@thread.v2")).collect();
    assert!(group.len() >= 2, "{group:#?}");
    assert_eq!((group[0].method.as_str(), group[0].body["type"].as_str()), ("POST", Some("message")));
    assert!(reply.starts_with(group[0].body["text"].as_str().unwrap()) && group[0].body["text"] != reply, "{:?}", group[0].body);
    let placeholder = group[0].answered.clone().unwrap();
    assert!(group[1..].iter().all(|l| l.method == "PUT" && l.activity.as_ref() == Some(&placeholder)), "{group:#?}");
    assert_eq!(group.last().unwrap().body["text"], reply);
    assert_eq!(item["result_id"], placeholder.as_str());
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test]
async fn long_text_is_split_by_utf16_size_without_losing_a_character() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    // ~100 K UTF-16 units of mixed scripts and emoji.
    let unit = "Teams 漢字 🙂👍🏽 ok. ";
    let text: String = std::iter::repeat_n(unit, 100_000 / unit.encode_utf16().count() + 1).collect();
    let file = app.dir.join("long.txt");
    std::fs::write(&file, &text).unwrap();
    let id = send(&app, &["--conversation", "a:conv-1", "--text-file", file.to_str().unwrap()]);
    assert_eq!(settled(&app, id).await["state"], "delivered");
    let deadline = Instant::now() + Duration::from_secs(15);
    while fake.texts().concat().len() < text.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let texts = fake.texts();
    assert!(texts.len() >= 3, "{} parts", texts.len());
    assert_eq!(texts.concat(), text);
    for t in &texts {
        assert!(t.encode_utf16().count() <= 38 * 1024);
    }
}

// Multi-threaded: the fake Connector must keep serving while this thread waits for the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_through_the_connector() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "19:group@thread.v2", "groupChat").await;
    let (ok, out) = cli(&app, &["members", "--dev", "--conversation", "19:group@thread.v2"]);
    assert!(ok, "{out}");
    let member: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(member["aadObjectId"], "00000000-0000-0000-0000-0000000000aa");
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test]
async fn a_stream_interrupted_after_it_began_is_never_posted_again() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    // The stream starts fine, then every later post is throttled.
    let reply = "one two three four five six seven eight nine ten";
    let mut child_faults = Vec::new();
    for _ in 0..20 {
        child_faults.push(Fault::TooMany("1".into()));
    }
    // Let the first post (the stream's start) through, then throttle.
    let fake_state = std::sync::Arc::clone(&fake.state);
    let id = send_stdin(&app, &["--conversation", "a:conv-1", "--stream", "--stream-interval-ms", "400"], reply);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake_state.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.push_faults(child_faults);
    // Each stream post is retried after a 429 (at most 5 times), so this takes a while.
    let item = crate::protocol::settled(&app.config, id, Duration::from_secs(40)).await;
    assert_eq!(item["state"], "uncertain", "{item}");
    let posted = fake.landed().len();
    assert!(posted >= 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fake.landed().len(), posted, "nothing was posted again");
}

/// The audit head: printed by `audit --verify`, logged at start and shutdown, on `/metrics`, checked with
/// `--expect-head`; events signed with `store.audit_key`; a removed newest event is reported.
#[tokio::test]
async fn audit_head_is_printed_logged_exposed_and_checked() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let key_file = dir.join("audit.key");
    std::fs::write(&key_file, "an-audit-key-of-reasonable-length\n").unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = format!("\n[outbound]\npoll_interval_ms = 50\n\n[store]\naudit_key = \"file:{}\"\n", key_file.display());
    let mut app = TestApp::spawn_in(&dir, &opts).await.unwrap();
    inbound(&app, &fake, "a:conv-1", "personal").await;
    let id = send(&app, &["--conversation", "a:conv-1", "--text", "hello"]);
    assert_eq!(settled(&app, id).await["state"], "delivered");

    let (ok, out) = cli(&app, &["audit", "--verify"]);
    assert!(ok && out.contains("audit chain intact: 2 events") && out.contains("signed with store.audit_key from event #1"), "{out}");
    let head = out.lines().find_map(|l| l.strip_prefix("audit head: ")).unwrap_or_else(|| panic!("no head in {out}")).to_owned();
    assert!(head.starts_with("2/2/hmac-sha256:"), "{head}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("agentgate_audit_events_total 2"), "{metrics}");
    assert!(metrics.contains(&format!("agentgate_audit_head_info{{head=\"{head}\"")), "{metrics}");
    let (ok, out) = cli(&app, &["audit", "--verify", "--expect-head", &head]);
    assert!(ok, "{out}");
    assert!(app.stderr().contains("audit head"), "logged at start: {}", app.stderr());
    assert!(app.terminate());
    assert!(app.stderr().lines().any(|l| l.contains(&head) && l.contains("at shutdown")), "{}", app.stderr());

    // Someone removes the newest event: the chain alone still links, the sequence and the head do not.
    let db = rusqlite::Connection::open(dir.join("data/agentgate.db")).unwrap();
    db.execute("DELETE FROM audit WHERE id = 2", []).unwrap();
    drop(db);
    let (ok, out) = cli(&app, &["audit", "--verify"]);
    assert!(!ok && out.contains("BROKEN") && out.contains("events after #1 were removed"), "{out}");
    let (ok, out) = cli(&app, &["audit", "--verify", "--expect-head", &head]);
    assert!(!ok && out.contains("BROKEN"), "{out}");
}

/// One `serve` per SQLite store: a second one is refused with a message that says why and what to do, and
/// a create in flight when the process was SIGKILLed is recovered as `uncertain` as soon as the next `serve`
/// starts (its lease, 60 s, is not waited for: no other process can hold a claim on this store). Fails when the
/// serve lock is missing (the second serve starts) or when recovery at start honours the dead process's lease
/// (the entry stays `sending` for a minute, beyond `settled`'s 15 s).
#[tokio::test]
async fn one_serve_per_sqlite_store_and_its_crash_is_recovered_at_once() {
    let (oidc, fake, mut app) = setup().await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    let config = std::fs::read_to_string(&app.config).unwrap();
    let second = TestApp::spawn_in_with(&app.dir.clone(), &opts, |_| config.clone()).await;
    let err = second.err().expect("a second serve on the same SQLite store started");
    assert!(err.contains("another `agentgate serve`") && err.contains("Postgres"), "{err}");
    assert!(err.contains(&format!("pid {}", app.pid())), "the message names the holder: {err}");

    inbound(&app, &fake, "a:conv-1", "personal").await;
    fake.push_faults([Fault::Hang(Duration::from_secs(30))]);
    let id = send(&app, &["--conversation", "a:conv-1", "--text", "on the wire when the process dies"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox(&app, id)["state"] != "sending" {
        assert!(Instant::now() < deadline, "never sent: {}", app.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.kill();
    let dir = app.dir.clone();
    drop(app);
    let app = TestApp::spawn_in_with(&dir, &opts, |_| config.clone()).await.unwrap();
    let item = settled(&app, id).await;
    assert_eq!(item["state"], "uncertain", "{item}");
    assert_eq!(item["error_class"], "interrupted", "{item}");
    assert_eq!(fake.landed().len(), 0, "the create was re-posted");
    audit_ok(&app);
}

/// `agentgate send --ai-generated --citation JSON`: one root message entity with the label and the citation, as
/// the strict fake checks it; a citation Teams would refuse stops the command before anything is queued.
#[tokio::test]
async fn send_with_the_ai_label_and_a_citation() {
    let (_oidc, fake, app) = setup().await;
    inbound(&app, &fake, "a:conv-1", "personal").await;
    let citation = r#"{"position": 1, "name": "Runbook", "abstract": "How to restart the gateway", "icon": "Text"}"#;
    let id = send(&app, &["--conversation", "a:conv-1", "--text", "Restart it [1]", "--ai-generated", "--citation", citation]);
    let item = settled(&app, id).await;
    assert_eq!(item["state"], "delivered", "{item}");
    let body = &fake.landed()[0].body;
    let root: Vec<&Value> = body["entities"].as_array().unwrap().iter().filter(|e| e["type"] == "https://schema.org/Message").collect();
    assert_eq!(root.len(), 1, "{body}");
    assert_eq!(root[0]["additionalType"], json!(["AIGeneratedContent"]));
    assert_eq!(root[0]["citation"][0]["appearance"]["name"], "Runbook");
    let (ok, out) = cli(&app, &["send", "--conversation", "a:conv-1", "--text", "no marker", "--citation", citation]);
    assert!(!ok && out.contains("[1]"), "{out}");
    assert_eq!(fake.landed().len(), 1);
    audit_ok(&app);
}
