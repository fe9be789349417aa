//! Claude Code's permission relay answered from Teams, and the rest of the sending tools (cards,
//! typing, streaming, proactive 1:1), through `agentgate mcp` over stdio and the strict fake Connector.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_connector::FakeConnector;
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
const EVE: &str = "00000000-0000-0000-0000-0000000000ee";
const WAIT: Duration = Duration::from_secs(10);

fn config_dir(oidc: &FakeOidc, extra_bot_lines: &str) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = "\n[outbound]\npoll_interval_ms = 20\n".into();
    let toml = opts.toml(&dir.join("data")).replacen("policy.dm = \"open\"", &format!("policy.dm = \"open\"\n{extra_bot_lines}"), 1);
    std::fs::write(dir.join("agentgate.toml"), toml).unwrap();
    dir
}

/// An `Action.Execute` on an approval card (the message `reply_to`), from `aad`.
pub(crate) fn card_click(service_url: &str, aad: &str, request_id: &str, behavior: &str, reply_to: &str) -> Value {
    let mut m = inbound(service_url, "a:conv-1", "personal", aad, "");
    m["replyToId"] = json!(reply_to);
    m["type"] = json!("invoke");
    m["name"] = json!("adaptiveCard/action");
    m.as_object_mut().unwrap().remove("text");
    m["value"] = json!({"action": {"type": "Action.Execute", "verb": "agentgate.permission",
                                   "data": {"request_id": request_id, "behavior": behavior}}, "trigger": "manual"});
    m
}

/// Wait until the fake Connector has `n` landed requests.
async fn landed_at_least(fake: &FakeConnector, n: usize, gw: &StdioGateway) -> Vec<crate::fake_connector::Landed> {
    let deadline = Instant::now() + WAIT;
    loop {
        let landed = fake.landed();
        if landed.len() >= n {
            return landed;
        }
        assert!(Instant::now() < deadline, "only {} of {n} requests landed: {:?}\n{}", landed.len(), landed, gw.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn audit(config: &std::path::Path) -> String {
    let out = std::process::Command::new(bin()).args(["audit", "--limit", "200", "--config"]).arg(config).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn permission_requests_are_answered_by_approvers_in_teams() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = config_dir(&oidc, &format!("policy.approvers = [\"{ALEX}\"]\npolicy.approval_timeout_secs = 10"));
    let (gw, mut host) = StdioGateway::start(&dir, true, &[], "claude-code").await;
    // Answers count only from authenticated activities (never from anonymous dev-mode ones).
    let token = bf_token(&fake.service_url);
    let experimental = host.server_info().capabilities.experimental.clone().unwrap_or_default();
    assert!(experimental.contains_key("claude/channel/permission"), "approvers configured: the relay is declared");

    // The approver has a 1:1 chat with the bot.
    assert_eq!(gw.post(&inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hi")).await.status(), 202);
    assert!(host.next("notifications/claude/channel", WAIT).await.is_some());

    // Request 1: a card reaches the approver.
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "abcde", "tool_name": "Bash", "description": "List the files", "input_preview": "{\"command\":\"ls -la\"}"}),
    )
    .await;
    let landed = landed_at_least(&fake, 1, &gw).await;
    let card = &landed[0].body["attachments"][0]["content"];
    assert_eq!(landed[0].conversation.as_deref(), Some("a:conv-1"));
    assert_eq!(card["type"], "AdaptiveCard", "{card}");
    let verbs: Vec<&str> = card["actions"].as_array().unwrap().iter().filter_map(|a| a["verb"].as_str()).collect();
    assert_eq!(verbs, vec!["agentgate.permission", "agentgate.permission"]);
    assert!(card.to_string().contains("ls -la") && card.to_string().contains("abcde"));
    let card_id = landed[0].answered.clone().expect("the card's message id");

    // A click on another message (not the approval card of this request) decides nothing.
    let r = gw.post_as(&token, &card_click(&fake.service_url, ALEX, "abcde", "allow", "1:999")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(!body.to_string().contains("Allowed"), "{body}");
    assert!(
        host.next("notifications/claude/channel/permission", Duration::from_secs(1)).await.is_none(),
        "a click on another card decided"
    );
    // An anonymous (dev-mode) click or typed answer from the approver decides nothing either.
    let r = gw.post(&card_click(&fake.service_url, ALEX, "abcde", "allow", &card_id)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(gw.post(&inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "yes abcde")).await.status(), 202);
    assert!(host.next("notifications/claude/channel/permission", Duration::from_secs(1)).await.is_none(), "an anonymous answer decided");

    // Eve is not an approver: refused, audited, no verdict.
    let r = gw.post_as(&token, &card_click(&fake.service_url, EVE, "abcde", "allow", &card_id)).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("Only an approver"), "{body}");
    assert!(host.next("notifications/claude/channel/permission", Duration::from_secs(1)).await.is_none(), "a non-approver decided");

    // Alex allows: the verdict reaches the host with the same request id; the card shows the outcome.
    let r = gw.post_as(&token, &card_click(&fake.service_url, ALEX, "abcde", "allow", &card_id)).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "application/vnd.microsoft.card.adaptive", "{body}");
    assert!(body.to_string().contains("Allowed"), "{body}");
    let verdict = host.next("notifications/claude/channel/permission", WAIT).await.expect("a verdict");
    assert_eq!(verdict, json!({"request_id": "abcde", "behavior": "allow"}));
    // A second click changes nothing.
    let again: Value = gw.post_as(&token, &card_click(&fake.service_url, ALEX, "abcde", "deny", &card_id)).await.json().await.unwrap();
    assert!(again.to_string().contains("no longer open"), "{again}");
    assert!(host.next("notifications/claude/channel/permission", Duration::from_millis(500)).await.is_none());

    // Request 2: answered by typing `no fghij` in the 1:1 chat; the answer is not forwarded as chat.
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "fghij", "tool_name": "Write", "description": "d", "input_preview": "{}"}),
    )
    .await;
    landed_at_least(&fake, 2, &gw).await;
    assert_eq!(gw.post_as(&token, &inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "no FGHIJ")).await.status(), 202);
    let verdict = host.next("notifications/claude/channel/permission", WAIT).await.expect("a typed verdict");
    assert_eq!(verdict, json!({"request_id": "fghij", "behavior": "deny"}));
    // Eve typing an answer to an open request is chat, not a verdict.
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": "qwert", "tool_name": "Bash", "description": "d", "input_preview": "{}"}),
    )
    .await;
    landed_at_least(&fake, 3, &gw).await;
    assert_eq!(gw.post_as(&token, &inbound(&fake.service_url, "a:conv-eve", "personal", EVE, "yes qwert")).await.status(), 202);
    let chat = host.next("notifications/claude/channel", WAIT).await.expect("Eve's text arrives as chat");
    assert_eq!(chat["meta"]["user_id"], EVE);
    assert!(host.next("notifications/claude/channel/permission", Duration::from_millis(500)).await.is_none());
    let read = host.ok("read_messages", json!({})).await.to_string();
    assert!(!read.contains("FGHIJ") && !read.contains("fghij"), "the typed verdict was delivered as chat: {read}");

    // Request 3 (qwert) expires: its card is updated to say so.
    let card_id = {
        let landed = fake.landed();
        landed.iter().filter(|l| l.body.to_string().contains("qwert")).map(|l| l.body["id"].clone()).next()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let expired = loop {
        let puts: Vec<_> = fake.landed().into_iter().filter(|l| l.method == "PUT" && l.body.to_string().contains("Expired")).collect();
        if let Some(p) = puts.into_iter().find(|l| l.body.to_string().contains("qwert")) {
            break p;
        }
        assert!(Instant::now() < deadline, "the card never expired: {:?}\n{}", fake.landed(), gw.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(expired.activity.is_some(), "the update names the card's message: {card_id:?}");
    assert!(host.next("notifications/claude/channel/permission", Duration::from_millis(200)).await.is_none(), "expiry is not a verdict");

    let trail = audit(&gw.config);
    assert!(trail.contains("\"outcome\":\"refused_not_approver\""), "{trail}");
    assert!(trail.contains("\"outcome\":\"allow\"") && trail.contains("\"outcome\":\"deny\""), "{trail}");
    assert!(trail.contains("\"outcome\":\"expired\""), "{trail}");
    let verify = std::process::Command::new(bin()).args(["audit", "verify", "--config"]).arg(&gw.config).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && said.contains("audit chain intact"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_approvers_the_relay_is_not_declared() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let dir = config_dir(&oidc, "");
    let (_gw, host) = StdioGateway::start(&dir, true, &[], "claude-code").await;
    let experimental = host.server_info().capabilities.experimental.clone().unwrap_or_default();
    assert!(experimental.contains_key("claude/channel"));
    assert!(!experimental.contains_key("claude/channel/permission"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cards_typing_streams_and_proactive_messages() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = config_dir(&oidc, "");
    let (gw, mut host) = StdioGateway::start(&dir, true, &[], "copilot-cli").await;
    assert_eq!(gw.post(&inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hi")).await.status(), 202);
    assert!(host.next("notifications/claude/channel", WAIT).await.is_some());

    // A card, then its update.
    let card = json!({"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Build passed"}],
                      "actions": [{"type": "Action.Execute", "title": "Deploy", "verb": "deploy", "data": {"build": 7}}]});
    let sent = host.ok("send_card", json!({"chat_id": "a:conv-1", "card": card, "text": "build"})).await;
    let card_id = sent["message_id"].as_str().unwrap().to_owned();
    let mut updated = card.clone();
    updated["body"][0]["text"] = json!("Deployed");
    host.ok("update_card", json!({"chat_id": "a:conv-1", "message_id": card_id, "card": updated})).await;
    // The approval verb is reserved: an agent's card may not carry it (at any depth), sent or updated.
    let forged = json!({"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "ActionSet", "actions": [
        {"type": "Action.Execute", "title": "Allow", "verb": "agentgate.permission", "data": {"request_id": "abcde", "behavior": "allow"}}]}]});
    let (err, v) = host.call("send_card", json!({"chat_id": "a:conv-1", "card": forged})).await;
    assert!(err && v.to_string().contains("reserved"), "{v}");
    let (err, v) = host.call("update_card", json!({"chat_id": "a:conv-1", "message_id": card_id, "card": forged})).await;
    assert!(err && v.to_string().contains("reserved"), "{v}");

    // Typing.
    host.ok("send_typing", json!({"chat_id": "a:conv-1"})).await;

    // A streamed reply in the 1:1 chat: start (informative), appends, finish.
    let s = host.ok("stream_start", json!({"chat_id": "a:conv-1", "informative": "Looking it up…"})).await;
    assert_eq!(s["streaming"], true, "{s}");
    let id = s["stream_id"].as_str().unwrap().to_owned();
    for part in ["The answer ", "is ", "forty-two."] {
        host.ok("stream_append", json!({"stream_id": id, "text": part})).await;
    }
    let done = host.ok("stream_finish", json!({"stream_id": id})).await;
    assert_eq!(done["status"], "delivered", "{done}");
    let (err, _) = host.call("stream_append", json!({"stream_id": id, "text": "late"})).await;
    assert!(err, "a finished stream accepted text");

    // Proactive 1:1 to Alex (the existing chat is reused).
    let p = host.ok("send_to_user", json!({"user_id": ALEX, "text": "ping"})).await;
    assert_eq!(p["status"], "delivered", "{p}");

    let landed = fake.landed();
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());

    // Proactive 1:1 to someone the bot never talked to: the chat is created, then reused.
    let p = host.ok("send_to_user", json!({"user_id": EVE, "tenant": TENANT, "text": "hello Eve"})).await;
    assert_eq!(p["status"], "delivered", "{p}");
    let p = host.ok("send_to_user", json!({"user_id": EVE, "text": "again"})).await;
    assert_eq!(p["status"], "delivered", "{p}");
    let after = fake.landed();
    let creates = after.iter().filter(|l| l.conversation.is_none()).count();
    assert_eq!(creates, 1, "the second message opened another chat: {after:?}");
    assert_eq!(after.last().unwrap().body["text"], "again");
    let (err, v) = host.call("send_to_user", json!({"user_id": "Eve Smith", "text": "x"})).await;
    assert!(err && v.to_string().contains("AAD object id"), "{v}");

    let card_post = &landed[0];
    assert_eq!(card_post.body["attachments"][0]["content"]["body"][0]["text"], "Build passed");
    assert_eq!((landed[1].method.as_str(), landed[1].activity.as_deref()), ("PUT", Some(card_id.as_str())));
    assert_eq!(landed[1].body["attachments"][0]["content"]["body"][0]["text"], "Deployed");
    assert_eq!(landed[2].body["type"], "typing");
    // The stream: an informative start, then the final message with the whole text.
    let stream: Vec<&crate::fake_connector::Landed> = landed[3..].iter().filter(|l| l.body.to_string().contains("streaminfo")).collect();
    assert!(stream.len() >= 2, "{landed:?}");
    assert_eq!(stream[0].body["entities"][0]["streamType"], "informative");
    let last = stream.last().unwrap();
    assert_eq!(last.body["type"], "message");
    assert_eq!(last.body["text"], "The answer is forty-two.");
    assert_eq!(last.body["entities"][0]["streamType"], "final");
    assert_eq!(landed.last().unwrap().body["text"], "ping");
    assert_eq!(landed.last().unwrap().conversation.as_deref(), Some("a:conv-1"));

    // Card clicks come back as typed events, not as fake text.
    let mut submit = inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "");
    submit.as_object_mut().unwrap().remove("text");
    submit["value"] = json!({"choice": "yes"});
    assert_eq!(gw.post(&submit).await.status(), 202);
    let mut exec = inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "");
    exec["type"] = json!("invoke");
    exec["name"] = json!("adaptiveCard/action");
    exec.as_object_mut().unwrap().remove("text");
    exec["value"] = json!({"action": {"type": "Action.Execute", "verb": "deploy", "data": {"build": 7}}, "trigger": "manual"});
    assert_eq!(gw.post(&exec).await.status(), 200);
    let e1 = host.next("notifications/claude/channel", WAIT).await.unwrap();
    let e2 = host.next("notifications/claude/channel", WAIT).await.unwrap();
    assert_eq!((e1["meta"]["event"].as_str(), e2["meta"]["event"].as_str()), (Some("card_submit"), Some("card_action")));
    let read = host.ok("read_messages", json!({})).await;
    let action = read["events"].as_array().unwrap().iter().find(|e| e["event"] == "card_action").unwrap().clone();
    assert_eq!(action["verb"], "deploy", "{action}");
    // This host does not read channel pushes, so its sends did not acknowledge the pushed "hi".
    assert!(read["events"].as_array().unwrap().iter().any(|e| e["event"] == "message"), "{read}");
    assert!(action["content"].as_str().unwrap().contains("\"build\":7"), "{action}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_stream_the_user_stopped_reports_cancelled_and_posts_no_final() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = config_dir(&oidc, "");
    let (gw, mut host) = StdioGateway::start(&dir, true, &[], "claude-code").await;
    assert_eq!(gw.post(&inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hi")).await.status(), 202);
    assert!(host.next("notifications/claude/channel", WAIT).await.is_some());

    let s = host.ok("stream_start", json!({"chat_id": "a:conv-1", "informative": "Thinking…"})).await;
    let id = s["stream_id"].as_str().unwrap().to_owned();
    landed_at_least(&fake, 1, &gw).await;
    // The user presses Stop: the next update is refused with ContentStreamNotAllowed.
    fake.stop_streams();
    host.ok("stream_append", json!({"stream_id": id, "text": "The answer "})).await;
    let deadline = Instant::now() + WAIT;
    while fake.cancelled() == 0 {
        assert!(Instant::now() < deadline, "no update reached the stopped stream\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let more = host.ok("stream_append", json!({"stream_id": id, "text": "is forty-two."})).await;
    assert_eq!(more["status"], "cancelled", "{more}");
    let done = host.ok("stream_finish", json!({"stream_id": id})).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(fake.cancelled(), 1, "posted to the stream again after Stop");
    assert!(fake.landed().iter().all(|l| l.body["type"] != "message"), "a final was posted: {:?}", fake.landed());
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
    let audit = audit(&dir.join("agentgate.toml"));
    assert!(audit.lines().any(|l| l.contains("\"action\":\"stream\"") && l.contains("\"outcome\":\"cancelled\"")), "{audit}");
}
