//! Activity intake: status codes, tenant gate, Connector allow-list, dedupe, invokes, dev mode.

use serde_json::{Value, json};

use crate::helpers::*;

async fn app_with_keys() -> (FakeOidc, TestApp, TestKey) {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let app = TestApp::spawn(&Options::new(&oidc.metadata_url)).await;
    app.wait_ready().await;
    (oidc, app, key)
}

fn with(mut v: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut v);
    v
}

#[tokio::test]
async fn body_and_tenant_rules() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let id = || unique_id("intake");
    let cases: Vec<(&str, Value, u16)> = vec![
        ("valid", message(&id()), 202),
        (
            "tenant not allowed",
            with(message(&id()), |m| {
                m["conversation"]["tenantId"] = json!(OTHER_TENANT);
                m["channelData"]["tenant"]["id"] = json!(OTHER_TENANT);
            }),
            403,
        ),
        ("tenant fields disagree", with(message(&id()), |m| m["conversation"]["tenantId"] = json!(OTHER_TENANT)), 403),
        (
            "no tenant at all",
            with(message(&id()), |m| {
                m["conversation"].as_object_mut().unwrap().remove("tenantId");
                m.as_object_mut().unwrap().remove("channelData");
            }),
            403,
        ),
        (
            "tenant only in conversation",
            with(message(&id()), |m| {
                m.as_object_mut().unwrap().remove("channelData");
            }),
            202,
        ),
        (
            "no type",
            with(message(&id()), |m| {
                m.as_object_mut().unwrap().remove("type");
            }),
            400,
        ),
        ("no conversation id", with(message(&id()), |m| m["conversation"]["id"] = json!("")), 400),
        (
            "no serviceUrl",
            with(message(&id()), |m| {
                m.as_object_mut().unwrap().remove("serviceUrl");
            }),
            400,
        ),
        ("conversation is not an object", with(message(&id()), |m| m["conversation"] = json!("x")), 400),
    ];
    let mut failures = Vec::new();
    for (name, body, want) in &cases {
        let got = app.status(Some(&token), body).await;
        if got != *want {
            failures.push(format!("{name}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", app.stderr());
    let resp = app.post(Some(&token), &cases[1].1).await;
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"forbidden"}"#);
    assert_eq!(app.inbox().len(), 2);
}

#[tokio::test]
async fn service_url_must_be_an_allow_listed_https_connector() {
    let (_oidc, app, key) = app_with_keys().await;
    for url in [
        "https://evil.example.com/amer/",
        "http://smba.trafficmanager.net/amer/",
        "https://127.0.0.1/amer/",
        "http://localhost:56150/_connector",
    ] {
        // The token is bound to the same URL, so only the allow-list can refuse it.
        let token = key.mint(&with(good_claims(), |c| c["serviceurl"] = json!(url)));
        let body = with(message(&unique_id("su")), |m| m["serviceUrl"] = json!(url));
        assert_eq!(app.status(Some(&token), &body).await, 400, "{url}");
    }
    let token = key.mint(&with(good_claims(), |c| c["serviceurl"] = json!("https://europe.smba.botframework.com/x/")));
    let body = with(message(&unique_id("su")), |m| m["serviceUrl"] = json!("https://europe.smba.botframework.com/x/"));
    assert_eq!(app.status(Some(&token), &body).await, 202);
    assert_eq!(app.inbox().len(), 1);
}

#[tokio::test]
async fn transport_level_refusals() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let url = format!("{}/api/messages", app.url);
    let c = app.client();

    let not_json = c
        .post(&url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .body(message("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    let no_type = c.post(&url).header("authorization", format!("Bearer {token}")).body(message("x").to_string()).send().await.unwrap();
    assert_eq!(no_type.status(), 415);
    let charset = c
        .post(&url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json; charset=utf-8")
        .body(message(&unique_id("ct")).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(charset.status(), 202);

    let mut big = message(&unique_id("big"));
    big["text"] = json!("x".repeat(70 * 1024));
    assert_eq!(app.status(Some(&token), &big).await, 413);

    let bad_json = c
        .post(&url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);

    let get = c.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(c.put(&url).send().await.unwrap().status(), 405);

    let metrics = app.metrics().await;
    for series in [
        "agentgate_requests_total{outcome=\"unsupported_media_type\"} 2",
        "agentgate_requests_total{outcome=\"payload_too_large\"} 1",
        "agentgate_requests_total{outcome=\"method_not_allowed\"} 2",
        "agentgate_requests_total{outcome=\"bad_request\"} 1",
        "agentgate_requests_total{outcome=\"accepted\"} 1",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
    assert!(metrics.contains("agentgate_store_commit_seconds_count"));
    assert!(metrics.contains("agentgate_key_refreshes_total{cloud=\"public\",result=\"ok\"} 1"));
    assert_eq!(c.get(format!("{}/healthz", app.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn duplicate_delivery_is_acknowledged_once_and_stored_once() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let id = unique_id("dup");
    let body = message(&id);
    assert_eq!(app.status(Some(&token), &body).await, 202);
    assert_eq!(app.status(Some(&token), &body).await, 202);
    // Concurrent redeliveries too.
    let statuses = app.post_concurrently(Some(&token), vec![body.clone(); 10]).await;
    assert_eq!(statuses, vec![202; 10]);
    // The same activity id in another conversation is another activity.
    let other_conv = with(message(&id), |m| m["conversation"]["id"] = json!("a:conv-2"));
    assert_eq!(app.status(Some(&token), &other_conv).await, 202);
    let items = app.inbox();
    assert_eq!(count_activity(&items, &id), 2, "{items:#?}");
    assert_eq!(app.metric("agentgate_requests_total{outcome=\"duplicate\"}").await, 11);
}

/// A redelivery of an activity committed moments ago is answered without a second commit, but only after
/// the same checks as a first delivery: token, tenant, Connector allow-list. An invoke gets its invoke
/// response again, not a bare 202.
#[tokio::test]
async fn a_redelivery_is_checked_like_a_first_delivery() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let id = unique_id("redeliver");
    let body = message(&id);
    assert_eq!(app.status(Some(&token), &body).await, 202);
    assert_eq!(app.status(None, &body).await, 401, "no token");
    let wrong_aud = key.mint(&with(good_claims(), |c| c["aud"] = json!("another-app")));
    assert_eq!(app.status(Some(&wrong_aud), &body).await, 401, "a token for another bot");
    let foreign = with(body.clone(), |m| {
        m["conversation"]["tenantId"] = json!(OTHER_TENANT);
        m["channelData"]["tenant"]["id"] = json!(OTHER_TENANT);
    });
    assert_eq!(app.status(Some(&token), &foreign).await, 403, "a tenant off the allow-list");
    assert_eq!(app.status(Some(&token), &body).await, 202);
    assert_eq!(count_activity(&app.inbox(), &id), 1);
    assert_eq!(app.metric("agentgate_requests_total{outcome=\"duplicate\"}").await, 1);

    let mut invoke = message(&unique_id("redeliver-inv"));
    invoke["type"] = json!("invoke");
    invoke["name"] = json!("adaptiveCard/action");
    invoke["value"] = json!({"action": {"type": "Action.Execute", "verb": "approve", "data": {}}, "trigger": "manual"});
    for round in 0..2 {
        let resp = app.post(Some(&token), &invoke).await;
        assert_eq!(resp.status(), 200, "round {round}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["type"], "application/vnd.microsoft.activity.message", "round {round}: {answer}");
    }
    assert_eq!(count_activity(&app.inbox(), invoke["id"].as_str().unwrap()), 1);
}

/// The log lines of a request name its bot, tenant and activity (the request's span), never its token.
#[tokio::test]
async fn log_lines_name_the_bot_tenant_and_activity_but_never_the_token() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let id = unique_id("span");
    let refused = with(message(&id), |m| {
        m["conversation"]["tenantId"] = json!(OTHER_TENANT);
        m["channelData"]["tenant"]["id"] = json!(OTHER_TENANT);
    });
    assert_eq!(app.status(Some(&token), &refused).await, 403);
    let mut log = String::new();
    for _ in 0..50 {
        log = app.stderr();
        if log.contains("refused: 403") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = log.lines().find(|l| l.contains("refused: 403")).unwrap_or_else(|| panic!("no 403 line in\n{log}"));
    for field in [APP_ID, OTHER_TENANT, id.as_str()] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the token reached the log");
}

#[tokio::test]
async fn invokes_get_a_synchronous_invoke_response() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let mut invoke = message(&unique_id("inv"));
    invoke["type"] = json!("invoke");
    invoke["name"] = json!("adaptiveCard/action");
    invoke["value"] = json!({"action": {"type": "Action.Execute", "verb": "approve", "data": {"x": 1}}, "trigger": "manual"});
    let resp = app.post(Some(&token), &invoke).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["statusCode"], 200);
    assert_eq!(body["type"], "application/vnd.microsoft.activity.message");
    assert!(body["value"].as_str().unwrap().contains("Received"));
    let items = app.inbox();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["activity_type"], "invoke");
    // The stored body is the activity as received, unknown fields included.
    let stored: Value = serde_json::from_str(items[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(stored, invoke);
}

#[tokio::test]
async fn dev_mode_accepts_the_playground_but_still_checks_tokens() {
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    let playground = |id: &str| {
        with(message(id), |m| {
            m["serviceUrl"] = json!("http://localhost:56150/_connector");
            m["recipient"]["id"] = json!(APP_ID);
        })
    };
    assert_eq!(app.status(None, &playground(&unique_id("dev"))).await, 202);
    // Unauthenticated requests must come from the Playground's loopback connector ...
    assert_eq!(app.status(None, &message(&unique_id("dev"))).await, 401);
    // ... and name a configured bot.
    let stranger = with(playground(&unique_id("dev")), |m| m["recipient"]["id"] = json!("28:someone-else"));
    assert_eq!(app.status(None, &stranger).await, 401);
    // A token, when present, is fully checked.
    let wrong_aud = key.mint(&with(good_claims(), |c| {
        c["aud"] = json!("nope");
        c["serviceurl"] = json!("http://localhost:56150/_connector");
    }));
    assert_eq!(app.status(Some(&wrong_aud), &playground(&unique_id("dev"))).await, 401);
    let good = key.mint(&with(good_claims(), |c| c["serviceurl"] = json!("http://localhost:56150/_connector")));
    assert_eq!(app.status(Some(&good), &playground(&unique_id("dev"))).await, 202);
    // The tenant gate applies in dev mode too.
    let foreign = with(playground(&unique_id("dev")), |m| {
        m["conversation"]["tenantId"] = json!(OTHER_TENANT);
        m["channelData"]["tenant"]["id"] = json!(OTHER_TENANT);
    });
    assert_eq!(app.status(None, &foreign).await, 403);
    let auths: Vec<String> = app.inbox().iter().map(|i| i["auth"].as_str().unwrap().to_owned()).collect();
    assert_eq!(auths, vec!["dev-anonymous", "botframework"]);
}

#[tokio::test]
async fn without_dev_mode_the_playground_is_refused() {
    let (_oidc, app, _key) = app_with_keys().await;
    let body = with(message(&unique_id("nodev")), |m| m["serviceUrl"] = json!("http://localhost:56150/_connector"));
    assert_eq!(app.status(None, &body).await, 401);
    assert!(app.inbox().is_empty());
}

#[tokio::test]
async fn malformed_universal_actions_get_an_error_invoke_response() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let mut invoke = message(&unique_id("inv"));
    invoke["type"] = json!("invoke");
    invoke["name"] = json!("adaptiveCard/action");
    invoke["value"] = json!({"action": {"type": "Action.Submit", "data": {}}});
    let resp = app.post(Some(&token), &invoke).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "application/vnd.microsoft.error");
    assert_eq!(body["value"]["code"], "NotSupported");
    invoke["id"] = json!(unique_id("inv"));
    invoke.as_object_mut().unwrap().remove("value");
    let resp = app.post(Some(&token), &invoke).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["value"]["code"], "BadRequest");
}

#[tokio::test]
async fn removing_the_bot_marks_the_conversation_unusable() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    assert_eq!(app.status(Some(&token), &message(&unique_id("m"))).await, 202);
    let mut removed = message(&unique_id("rm"));
    removed["type"] = json!("conversationUpdate");
    removed["membersRemoved"] = json!([{"id": format!("28:{APP_ID}")}]);
    assert_eq!(app.status(Some(&token), &removed).await, 202);
    let out = std::process::Command::new(bin())
        .args(["send", "--conversation", "a:conv-1", "--text", "anyone?", "--config"])
        .arg(&app.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("removed from conversation"), "{err}");
    // Installing again makes it usable.
    let mut added = message(&unique_id("add"));
    added["type"] = json!("installationUpdate");
    added["action"] = json!("add");
    assert_eq!(app.status(Some(&token), &added).await, 202);
    let out = std::process::Command::new(bin())
        .args(["send", "--conversation", "a:conv-1", "--text", "back", "--config"])
        .arg(&app.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_request_that_takes_too_long_gets_408_and_is_counted() {
    use std::io::{Read as _, Write as _};
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.extra = "\n".into();
    let app = TestApp::spawn_in_with(&tempfile::tempdir().unwrap().keep(), &opts, |t| {
        t.replace("shutdown_grace_secs = 10", "shutdown_grace_secs = 10\nrequest_timeout_secs = 1")
    })
    .await
    .unwrap();
    let addr = app.url.trim_start_matches("http://").to_owned();
    let status = tokio::task::spawn_blocking(move || {
        // Headers and half the body, then silence: the body never completes.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /api/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":")
            .unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert_eq!(app.metric("agentgate_requests_total{outcome=\"timed_out\"}").await, 1);
}

/// Teams' shapes (teams.ts `message-update.ts` / `message-delete.ts`): an edit is the whole revised message
/// under the edited message's id, a deletion carries only the id and the conversation.
fn edit_of(id: &str, text: &str) -> Value {
    with(message(id), |m| {
        m["type"] = json!("messageUpdate");
        m["text"] = json!(text);
        m["channelData"]["eventType"] = json!("editMessage");
    })
}

fn deletion_of(id: &str) -> Value {
    with(message(id), |m| {
        m["type"] = json!("messageDelete");
        m["channelData"]["eventType"] = json!("softDeleteMessage");
        let o = m.as_object_mut().unwrap();
        for k in ["text", "from", "entities"] {
            o.remove(k);
        }
    })
}

/// With no host connected, nothing has been delivered: an edit patches the waiting entry (one entry, the new
/// text), a deletion withdraws it (the deleted text never reaches a host), redeliveries change nothing, and
/// a second edit of one message is not mistaken for a redelivery of the first.
#[tokio::test]
async fn edits_and_deletions_amend_entries_no_host_has_seen() {
    let (_oidc, app, key) = app_with_keys().await;
    let token = key.mint(&good_claims());
    let (kept, gone) = (unique_id("edited"), unique_id("deleted"));
    for id in [&kept, &gone] {
        assert_eq!(app.status(Some(&token), &message(id)).await, 202);
    }
    for body in [edit_of(&kept, "first edit"), edit_of(&kept, "second edit"), edit_of(&kept, "second edit"), deletion_of(&gone)] {
        assert_eq!(app.status(Some(&token), &body).await, 202, "{}", app.stderr());
    }
    assert_eq!(app.status(Some(&token), &deletion_of(&gone)).await, 202, "a redelivered deletion");
    let items = app.inbox();
    assert_eq!(items.len(), 1, "only the edited message waits: {items:#?}");
    assert_eq!(items[0]["activity_id"], json!(kept));
    let body: Value = serde_json::from_str(items[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!((body["type"].as_str(), body["text"].as_str()), (Some("message"), Some("second edit")), "{body}");
    assert!(!app.inbox().iter().any(|i| i["body"].as_str().unwrap().contains("hello") && i["activity_id"] == json!(gone)));
    assert_eq!(app.metric("agentgate_requests_total{outcome=\"duplicate\"}").await, 2, "the repeated edit and deletion");

    // An edit of a message the gateway never received is an event of its own.
    let stranger = unique_id("unknown");
    assert_eq!(app.status(Some(&token), &edit_of(&stranger, "edited elsewhere")).await, 202);
    let items = app.inbox();
    assert_eq!(items.len(), 2, "{items:#?}");
    assert_eq!(items[1]["activity_type"], "messageUpdate");
    assert!(items[1]["activity_id"].as_str().unwrap().starts_with(&format!("{stranger}@editMessage:")), "{items:#?}");
}
