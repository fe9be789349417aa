//! `/mcp` over Streamable HTTP: bearer tokens from secret files, per-token scopes (a host never sees or
//! acts in a tenant outside its scope), the Host check, and `agentgate mcp --connect`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use crate::fake_connector::FakeConnector;
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const TOKEN_A: &str = "token-for-tenant-a-0123456789abcdef0123456789";
const TOKEN_B: &str = "token-for-other-bot-0123456789abcdef012345678";
const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
const WAIT: Duration = Duration::from_secs(10);

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("file:{}", p.display())
}

/// A dev-mode `serve` with `/mcp` on and two scoped tokens; returns the app and the `/mcp` URL.
async fn setup(oidc: &FakeOidc) -> (TestApp, String) {
    setup_with(oidc, "").await
}

/// [`setup`], with `bot_lines` added to the first bot's table.
async fn setup_with(oidc: &FakeOidc, bot_lines: &str) -> (TestApp, String) {
    setup_full(oidc, bot_lines, "").await
}

/// [`setup_with`], with `mcp_lines` added to the `[mcp]` table.
async fn setup_full(oidc: &FakeOidc, bot_lines: &str, mcp_lines: &str) -> (TestApp, String) {
    let dir = tempfile::tempdir().unwrap().keep();
    let (a, b) = (secret_file(&dir, "a.token", TOKEN_A), secret_file(&dir, "b.token", TOKEN_B));
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = format!(
        r#"
[outbound]
poll_interval_ms = 20

[mcp]
bind = "127.0.0.1:0"
{mcp_lines}

[[mcp.tokens]]
name = "tenant-a"
token = "{a}"
tenants = ["{TENANT}"]

[[mcp.tokens]]
name = "other-bot"
token = "{b}"
bots = ["{OTHER_APP_ID}"]
"#
    );
    let patch = |t: String| t.replacen("policy.dm = \"open\"", &format!("policy.dm = \"open\"\n{bot_lines}"), 1);
    let app = TestApp::spawn_in_with(&dir, &opts, patch).await.unwrap_or_else(|e| panic!("did not start:\n{e}"));
    let mut addr = None;
    for _ in 0..200 {
        let log = app.stderr();
        if let Some(rest) = log.split("MCP Streamable HTTP listening at /mcp").nth(1) {
            addr = rest.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = addr.unwrap_or_else(|| panic!("no /mcp listener:\n{}", app.stderr()));
    (app, format!("http://{addr}/mcp"))
}

async fn http_host(url: &str, token: &str, name: &str) -> Host {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    Host::over(StreamableHttpClientTransport::from_config(config), name).await
}

/// An activity for the other bot, in the other tenant.
fn other_tenant_message(service_url: &str, conversation: &str, text: &str) -> Value {
    let mut m = inbound(service_url, conversation, "personal", ALEX, text);
    m["recipient"]["id"] = json!(format!("28:{OTHER_APP_ID}"));
    m["conversation"]["tenantId"] = json!(OTHER_TENANT);
    m["channelData"]["tenant"]["id"] = json!(OTHER_TENANT);
    m
}

fn events_of(v: &Value) -> Vec<String> {
    v["events"].as_array().unwrap().iter().map(|e| e["chat_id"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_scope_what_a_host_sees_and_does() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let (app, url) = setup(&oidc).await;
    let mine = inbound(&fake.service_url, "a:conv-a", "personal", ALEX, "for tenant A");
    assert_eq!(app.status(None, &mine).await, 202);
    let theirs = other_tenant_message(&fake.service_url, "a:conv-b", "for the other client");
    assert_eq!(app.status(None, &theirs).await, 202, "{}", app.stderr());

    let a = http_host(&url, TOKEN_A, "host-a").await;
    let b = http_host(&url, TOKEN_B, "host-b").await;
    assert_eq!(events_of(&a.ok("read_messages", json!({})).await), vec!["a:conv-a"]);
    assert_eq!(events_of(&b.ok("read_messages", json!({})).await), vec!["a:conv-b"]);
    let convs = a.ok("list_conversations", json!({})).await;
    let ids: Vec<&str> = convs["conversations"].as_array().unwrap().iter().filter_map(|c| c["chat_id"].as_str()).collect();
    assert_eq!(ids, vec!["a:conv-a"], "{convs}");
    let status = a.ok("status", json!({})).await;
    let tenants: Vec<Value> = status["bots"].as_array().unwrap().iter().flat_map(|b| b["tenants"].as_array().unwrap().clone()).collect();
    assert_eq!(tenants, vec![json!(TENANT)], "{status}");

    // Acting outside the scope is refused and sends nothing.
    let (err, v) = a.call("reply", json!({"chat_id": "a:conv-b", "text": "leak"})).await;
    assert!(err && v.to_string().contains("unknown chat_id"), "{v}");
    let (err, v) = a.call("send_to_user", json!({"user_id": ALEX, "tenant": OTHER_TENANT, "text": "leak"})).await;
    assert!(err, "{v}");
    let other_inbox: Vec<i64> =
        b.ok("read_messages", json!({})).await["events"].as_array().unwrap().iter().filter_map(|e| e["inbox_id"].as_i64()).collect();
    let (err, v) = a.call("ack_messages", json!({"ids": other_inbox})).await;
    assert!(err && v.to_string().contains("outside"), "{v}");
    assert!(fake.texts().is_empty(), "{:?}", fake.texts());

    // Within scope it works; the audit trail shows only the host's own tenant.
    let r = a.ok("reply", json!({"chat_id": "a:conv-a", "text": "hello A"})).await;
    assert_eq!(r["status"], "delivered", "{r}");
    assert_eq!(fake.texts(), vec!["hello A"]);
    let r = b.ok("reply", json!({"chat_id": "a:conv-b", "text": "hello B"})).await;
    assert_eq!(r["status"], "delivered", "{r}");
    let audit_a = a.ok("recent_audit", json!({"limit": 100})).await.to_string();
    assert!(audit_a.contains("a:conv-a") && !audit_a.contains("a:conv-b"), "{audit_a}");
    assert!(audit_a.contains("mcp:tenant-a:host-a"), "{audit_a}");

    // Long poll: a new message in scope wakes the waiter; the other tenant's does not.
    let waiter = tokio::spawn(async move {
        let v = a.ok("wait_for_messages", json!({"timeout_secs": 20})).await;
        (a, v)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.status(None, &other_tenant_message(&fake.service_url, "a:conv-b", "not for A")).await, 202);
    let late = inbound(&fake.service_url, "a:conv-a", "personal", ALEX, "wake up");
    assert_eq!(app.status(None, &late).await, 202);
    let (mut a, v) = tokio::time::timeout(Duration::from_secs(15), waiter).await.unwrap().unwrap();
    assert_eq!(v["timed_out"], false, "{v}");
    let got: Vec<&str> = v["events"].as_array().unwrap().iter().filter_map(|e| e["message_id"].as_str()).collect();
    assert_eq!(got, vec![late["id"].as_str().unwrap()], "only the new message in scope: {v}");
    // The HTTP session also receives channel pushes (through the GET stream), in scope only.
    let mut pushed = Vec::new();
    while let Some(n) = a.next("notifications/claude/channel", Duration::from_secs(2)).await {
        pushed.push(n["meta"]["chat_id"].as_str().unwrap_or_default().to_owned());
    }
    assert!(!pushed.is_empty() && pushed.iter().all(|c| c == "a:conv-a"), "{pushed:?}");
    let timed = a.ok("wait_for_messages", json!({"timeout_secs": 1})).await;
    assert_eq!(timed["timed_out"], true, "{timed}");
    assert!(!app.stderr().contains(TOKEN_A) && !app.stderr().contains(TOKEN_B), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_refuses_missing_and_wrong_tokens_and_foreign_hosts() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let (_app, url) = setup(&oidc).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}});
    let http = reqwest::Client::new();
    let post = |token: Option<&str>, host: Option<&str>| {
        let mut r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(init.to_string());
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.send()
    };
    assert_eq!(post(None, None).await.unwrap().status(), 401);
    let wrong = post(Some("not-a-token-0123456789abcdef0123456789"), None).await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let foreign = post(Some(TOKEN_A), Some("evil.example")).await.unwrap();
    assert!(foreign.status().is_client_error(), "a foreign Host header was served: {}", foreign.status());
    // A browser page on another origin (DNS rebinding) is refused; a loopback origin, or none, is fine.
    let with_origin = |origin: &'static str| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {TOKEN_A}"))
            .header("origin", origin)
            .body(init.to_string())
            .send()
    };
    for evil in ["http://evil.example", "https://attacker.test:8443", "null", "http://localhost.evil.example"] {
        let r = with_origin(evil).await.unwrap();
        assert_eq!(r.status(), 403, "Origin {evil} was served");
        assert!(r.headers().get("mcp-session-id").is_none());
    }
    for fine in ["http://localhost:5173", "http://127.0.0.1", "http://[::1]:8080"] {
        assert_eq!(with_origin(fine).await.unwrap().status(), 200, "Origin {fine} was refused");
    }
    let good = post(Some(TOKEN_A), None).await.unwrap();
    assert_eq!(good.status(), 200);
    let session = good.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned()).expect("a session id");

    // The session belongs to token A: token B cannot use it.
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "status", "arguments": {}}});
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    for (token, body) in [(TOKEN_A, &initialized), (TOKEN_B, &call)] {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .header("authorization", format!("Bearer {token}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        if token == TOKEN_B {
            assert!(text.contains("another token") || !status.is_success(), "{status} {text}");
            assert!(!text.contains("\"bots\""), "token B saw token A's session: {text}");
        }
    }
}

/// `agentgate mcp --connect URL --token REF`, its stdio piped.
fn connect(url: &str, token_ref: &str) -> tokio::process::Child {
    tokio::process::Command::new(bin())
        .args(["mcp", "--connect", url, "--token", token_ref])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_bridges_stdio_to_a_running_gateway() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let (app, url) = setup(&oidc).await;
    let m = inbound(&fake.service_url, "a:conv-a", "personal", ALEX, "through the bridge");
    assert_eq!(app.status(None, &m).await, 202);
    let token_ref = secret_file(&app.dir, "connect.token", TOKEN_A);
    let mut child = connect(&url, &token_ref);
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut host = Host::over((stdout, stdin), "claude-code").await;
    let info = host.server_info();
    assert!(info.capabilities.experimental.clone().unwrap_or_default().contains_key("claude/channel"));
    assert_eq!(host.client.list_all_tools().await.unwrap().len(), 23, "the tools of `agentgate mcp`, the claim and file tools included");
    let n = host.next("notifications/claude/channel", WAIT).await.expect("a push through the bridge");
    assert_eq!(n["meta"]["message_id"], m["id"]);
    let r = host.ok("reply", json!({"chat_id": "a:conv-a", "text": "via connect"})).await;
    assert_eq!(r["status"], "delivered", "{r}");
    assert_eq!(fake.texts(), vec!["via connect"]);

    // A wrong token: the handshake fails and the bridge exits with a clear message instead of hanging.
    let bad_ref = secret_file(&app.dir, "bad.token", "wrong-token-0123456789abcdef0123456789ab");
    let mut bad = connect(&url, &bad_ref);
    let (stdin, stdout) = (bad.stdin.take().unwrap(), bad.stdout.take().unwrap());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let attempt = tokio::time::timeout(Duration::from_secs(20), rmcp::ServiceExt::serve(Recorder::new(tx, "bad"), (stdout, stdin))).await;
    assert!(matches!(attempt, Ok(Err(_))), "the handshake with a wrong token did not fail");
    let out = tokio::time::timeout(Duration::from_secs(20), bad.wait_with_output()).await.unwrap().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") || err.contains("nauthorized") || err.contains("token"), "{err}");
    assert!(!err.contains("wrong-token"), "the token reached stderr");
    // Plain http to a non-loopback address is refused before any request.
    let refused =
        std::process::Command::new(bin()).args(["mcp", "--connect", "http://192.0.2.1/mcp", "--token", &token_ref]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("clear text"), "{}", String::from_utf8_lossy(&refused.stderr));
}

/// A raw request on `/mcp` with `token`, on `session` when given.
async fn raw(url: &str, method: reqwest::Method, token: &str, session: Option<&str>, body: Option<&Value>) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .request(method, url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("authorization", format!("Bearer {token}"));
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_string());
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_holds_at_most_its_share_of_sessions() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let (app, url) = setup_full(&oidc, "", "max_sessions_per_token = 2").await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}});
    let open = |token: &'static str| {
        let (url, init) = (url.clone(), init.clone());
        async move {
            let r = raw(&url, reqwest::Method::POST, token, None, Some(&init)).await;
            let status = r.status();
            let session = r.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
            let body = r.text().await.unwrap();
            (status, session, body)
        }
    };
    let (s1, first, _) = open(TOKEN_A).await;
    let (s2, _, _) = open(TOKEN_A).await;
    assert_eq!((s1, s2), (reqwest::StatusCode::OK, reqwest::StatusCode::OK));
    // The third is refused with a reason and no session; another token is not affected.
    let (s3, none, body) = open(TOKEN_A).await;
    assert_eq!(s3, 429, "{body}");
    assert!(none.is_none() && body.contains("max_sessions_per_token"), "{body}");
    let (sb, _, _) = open(TOKEN_B).await;
    assert_eq!(sb, 200, "another token's sessions are counted apart");
    // Ending one frees its place.
    assert!(raw(&url, reqwest::Method::DELETE, TOKEN_A, first.as_deref(), None).await.status().is_success());
    let (s4, again, _) = open(TOKEN_A).await;
    assert_eq!(s4, 200);
    assert!(again.is_some());
    assert!(app.stderr().contains("too many open sessions"), "the refusal is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_refuses_every_request_with_another_token() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let (app, url) = setup(&oidc).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}});
    let opened = raw(&url, reqwest::Method::POST, TOKEN_A, None, Some(&init)).await;
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(opened);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert!(raw(&url, reqwest::Method::POST, TOKEN_A, Some(&session), Some(&initialized)).await.status().is_success());
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "status", "arguments": {}}});
    let stream = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "stream_append", "arguments": {"stream_id": "x", "text": "y"}}});

    // Token B is valid, but not this session's: every method is refused at the transport.
    for (method, body) in [
        (reqwest::Method::POST, Some(&call)),
        (reqwest::Method::POST, Some(&stream)),
        (reqwest::Method::GET, None),
        (reqwest::Method::DELETE, None),
    ] {
        let r = tokio::time::timeout(Duration::from_secs(5), raw(&url, method.clone(), TOKEN_B, Some(&session), body))
            .await
            .unwrap_or_else(|_| panic!("{method} with another token was not answered at once (a stream was opened)"));
        let status = r.status();
        let text = tokio::time::timeout(Duration::from_secs(5), r.text()).await.unwrap().unwrap();
        assert!(status == 404 || status == 403, "{method} with another token: {status} {text}");
        assert!(!text.contains("bots") && !text.contains(&session), "{text}");
    }
    // An unknown session id is refused the same way.
    assert_eq!(raw(&url, reqwest::Method::POST, TOKEN_A, Some("not-a-session"), Some(&call)).await.status(), 404);

    // The session is intact for its own token, which can end it.
    let r = raw(&url, reqwest::Method::POST, TOKEN_A, Some(&session), Some(&call)).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("bots"));
    assert!(raw(&url, reqwest::Method::DELETE, TOKEN_A, Some(&session), None).await.status().is_success());
    assert_eq!(raw(&url, reqwest::Method::POST, TOKEN_A, Some(&session), Some(&call)).await.status(), 404);
    assert!(!app.stderr().contains(TOKEN_B));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_permission_request_id_is_refused_and_the_answer_reaches_only_the_asker() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let (app, url) = setup_with(&oidc, &format!("policy.approvers = [\"{ALEX}\"]\npolicy.approval_timeout_secs = 30")).await;
    let token = bf_token(&fake.service_url);
    let hi = inbound(&fake.service_url, "a:conv-a", "personal", ALEX, "hi");
    assert_eq!(app.status(Some(&token), &hi).await, 202, "{}", app.stderr());
    let mut first = http_host(&url, TOKEN_A, "claude-code").await;
    let mut second = http_host(&url, TOKEN_A, "claude-code").await;
    let ask = json!({"request_id": "abcde", "tool_name": "Bash", "description": "d", "input_preview": "{}"});
    first.notify("notifications/claude/channel/permission_request", ask.clone()).await;
    let deadline = std::time::Instant::now() + WAIT;
    while fake.landed().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no approval card: {}", app.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.notify("notifications/claude/channel/permission_request", ask).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cards = fake.landed();
    assert_eq!(cards.len(), 1, "the duplicate request id was registered again: {cards:?}");
    let card_id = cards[0].answered.clone().unwrap();

    let mut click = inbound(&fake.service_url, "a:conv-a", "personal", ALEX, "");
    click["type"] = json!("invoke");
    click["name"] = json!("adaptiveCard/action");
    click["replyToId"] = json!(card_id);
    click.as_object_mut().unwrap().remove("text");
    click["value"] = json!({"action": {"type": "Action.Execute", "verb": "agentgate.permission",
                                       "data": {"request_id": "abcde", "behavior": "allow"}}, "trigger": "manual"});
    assert_eq!(app.status(Some(&token), &click).await, 200);
    let verdict = first.next("notifications/claude/channel/permission", WAIT).await.expect("the asker got no verdict");
    assert_eq!(verdict, json!({"request_id": "abcde", "behavior": "allow"}));
    assert!(
        second.next("notifications/claude/channel/permission", Duration::from_secs(1)).await.is_none(),
        "the verdict reached another session"
    );
}
