//! Private approval cards in shared chats: where the session works in a group chat or channel, the
//! approver is asked there with a targeted message only they see (teams-surface §3), and the card is
//! updated in place; when Teams refuses it, the approver is not a member, the bot turned it off, or the
//! session works in a 1:1 chat, the approver's 1:1 chat is used (as before). Through `agentgate mcp`
//! over stdio and the strict fake Connector.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_connector::{FakeConnector, Landed};
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
const EVE: &str = "00000000-0000-0000-0000-0000000000ee";
const GROUP: &str = "19:group-1@thread.v2";
const WAIT: Duration = Duration::from_secs(10);

fn config_dir(oidc: &FakeOidc, extra_bot_lines: &str) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = "\n[outbound]\npoll_interval_ms = 20\n".into();
    let lines = format!("policy.groups = \"all\"\npolicy.approvers = [\"{ALEX}\"]\npolicy.approval_timeout_secs = 30\n{extra_bot_lines}");
    let toml = opts.toml(&dir.join("data")).replacen("policy.dm = \"open\"", &format!("policy.dm = \"open\"\n{lines}"), 1);
    std::fs::write(dir.join("agentgate.toml"), toml).unwrap();
    dir
}

/// Alex and Eve in the group chat, as the Connector lists them.
fn roster(with_alex: bool) -> Vec<Value> {
    let mut members = vec![json!({"id": "29:eve", "aadObjectId": EVE, "name": "Eve"})];
    if with_alex {
        members.push(json!({"id": "29:alex", "aadObjectId": ALEX, "name": "Alex"}));
    }
    members
}

/// An `Action.Execute` on an approval card (the message `reply_to`) in `conversation`, from `aad`.
fn click(service_url: &str, conversation: &str, kind: &str, aad: &str, request_id: &str, behavior: &str, reply_to: &str) -> Value {
    let mut m = inbound(service_url, conversation, kind, aad, "");
    m["replyToId"] = json!(reply_to);
    m["type"] = json!("invoke");
    m["name"] = json!("adaptiveCard/action");
    m.as_object_mut().unwrap().remove("text");
    m["value"] = json!({"action": {"type": "Action.Execute", "verb": "agentgate.permission",
                                   "data": {"request_id": request_id, "behavior": behavior}}, "trigger": "manual"});
    m
}

/// The first landed request that matches, within [`WAIT`].
async fn landed_where(fake: &FakeConnector, gw: &StdioGateway, what: &str, f: impl Fn(&Landed) -> bool) -> Landed {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = fake.landed().into_iter().find(|l| f(l)) {
            return l;
        }
        assert!(Instant::now() < deadline, "{what} never landed: {:?}\nrefused: {:?}\n{}", fake.landed(), fake.refused(), gw.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_card_post(l: &Landed, request_id: &str) -> bool {
    l.method == "POST" && l.body["attachments"][0]["content"].to_string().contains(request_id)
}

fn audit(config: &std::path::Path) -> Vec<Value> {
    let out = std::process::Command::new(bin()).args(["audit", "--limit", "200", "--config"]).arg(config).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn asked(config: &std::path::Path) -> Vec<Value> {
    audit(config).into_iter().filter(|e| e["action"] == "permission_ask").collect()
}

/// Alex DMs the bot (a 1:1 chat exists), then Eve writes in the group chat: the session works there.
async fn alex_dms_then_eve_writes_in_the_group(gw: &StdioGateway, host: &mut Host, fake: &FakeConnector) {
    assert_eq!(gw.post(&inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hi")).await.status(), 202);
    assert!(host.next("notifications/claude/channel", WAIT).await.is_some());
    assert_eq!(gw.post(&inbound(&fake.service_url, GROUP, "groupChat", EVE, "please deploy")).await.status(), 202);
    let pushed = host.next("notifications/claude/channel", WAIT).await.expect("Eve's message");
    assert_eq!(pushed["meta"]["chat_id"], GROUP);
}

async fn ask(host: &Host, request_id: &str) {
    host.notify(
        "notifications/claude/channel/permission_request",
        json!({"request_id": request_id, "tool_name": "Bash", "description": "Deploy", "input_preview": "{\"command\":\"make deploy\"}"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_group_chat_the_approver_is_asked_privately_and_the_card_is_updated_in_place() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    fake.set_roster(GROUP, roster(true));
    let dir = config_dir(&oidc, "");
    let (gw, mut host) = StdioGateway::start(&dir, true, &[], "claude-code").await;
    let token = bf_token(&fake.service_url);
    alex_dms_then_eve_writes_in_the_group(&gw, &mut host, &fake).await;

    ask(&host, "abcde").await;
    let card = landed_where(&fake, &gw, "the targeted card", |l| is_card_post(l, "abcde")).await;
    // Targeted at Alex only, in the group chat: the query flag and the recipient Teams' SDK sends.
    assert_eq!(card.conversation.as_deref(), Some(GROUP), "{:?}\n{:?}", asked(&gw.config), fake.refused());
    assert_eq!(card.query.as_deref(), Some("isTargetedActivity=true"));
    assert_eq!(card.body["recipient"], json!({"id": "29:alex", "isTargeted": true}));
    assert_eq!(card.body["from"]["id"], format!("28:{APP_ID}"));
    // Alex was looked up in the group chat by AAD object id; nothing went to the 1:1 chat.
    let landed = fake.landed();
    assert!(landed.iter().any(|l| l.method == "GET" && l.conversation.as_deref() == Some(GROUP) && l.activity.as_deref() == Some(ALEX)));
    assert!(!landed.iter().any(|l| l.conversation.as_deref() == Some("a:conv-1")), "{landed:?}");
    let card_id = card.answered.clone().expect("the card's id");

    // Alex allows on the card, in the group chat: the verdict reaches the host.
    let r = gw.post_as(&token, &click(&fake.service_url, GROUP, "groupChat", ALEX, "abcde", "allow", &card_id)).await;
    assert_eq!(r.status(), 200);
    let verdict = host.next("notifications/claude/channel/permission", WAIT).await.expect("a verdict");
    assert_eq!(verdict, json!({"request_id": "abcde", "behavior": "allow"}));
    // The card is replaced where it is: a targeted update, naming no recipient.
    let update = landed_where(&fake, &gw, "the targeted card update", |l| l.method == "PUT").await;
    assert_eq!((update.conversation.as_deref(), update.activity.as_deref()), (Some(GROUP), Some(card_id.as_str())));
    assert_eq!(update.query.as_deref(), Some("isTargetedActivity=true"));
    assert!(update.body.get("recipient").is_none(), "{}", update.body);
    assert!(update.body.to_string().contains("Allowed in Teams"), "{}", update.body);
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());

    let paths = asked(&gw.config);
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(paths[0]["outcome"], "targeted");
    assert!(paths[0]["target"].to_string().contains(GROUP), "{}", paths[0]);
    let trail = audit(&gw.config);
    assert!(trail.iter().any(|e| e["action"] == "send_targeted" && e["outcome"] == "delivered"), "{trail:?}");
    assert!(trail.iter().any(|e| e["action"] == "update_targeted" && e["outcome"] == "delivered"), "{trail:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_targeted_card_falls_back_to_the_approvers_1_1_chat() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    fake.set_roster(GROUP, roster(true));
    fake.refuse_targeted(Some((400, json!({"error": {"code": "BadArgument", "message": "Targeted messages are not enabled"}}))));
    let dir = config_dir(&oidc, "");
    let (gw, mut host) = StdioGateway::start(&dir, true, &[], "claude-code").await;
    let token = bf_token(&fake.service_url);
    alex_dms_then_eve_writes_in_the_group(&gw, &mut host, &fake).await;

    ask(&host, "fghij").await;
    let card = landed_where(&fake, &gw, "the 1:1 card", |l| is_card_post(l, "fghij")).await;
    assert_eq!(card.conversation.as_deref(), Some("a:conv-1"));
    assert_eq!(card.query, None);
    assert!(card.body.get("recipient").is_none_or(|r| r.get("isTargeted").is_none()), "{}", card.body);
    // Teams said no once (a definite refusal is not retried).
    let refusals: Vec<String> = fake.refused().into_iter().filter(|r| r.starts_with("targeted refused")).collect();
    assert_eq!(refusals.len(), 1, "{:?}", fake.refused());
    let paths = asked(&gw.config);
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(paths[0]["outcome"], "personal");
    assert!(paths[0]["detail"].as_str().unwrap_or("").contains("Teams refused the targeted message"), "{}", paths[0]);

    // Answered on the 1:1 card: a plain update there.
    let card_id = card.answered.clone().unwrap();
    let r = gw.post_as(&token, &click(&fake.service_url, "a:conv-1", "personal", ALEX, "fghij", "deny", &card_id)).await;
    assert_eq!(r.status(), 200);
    let verdict = host.next("notifications/claude/channel/permission", WAIT).await.expect("a verdict");
    assert_eq!(verdict, json!({"request_id": "fghij", "behavior": "deny"}));
    let update = landed_where(&fake, &gw, "the card update", |l| l.method == "PUT").await;
    assert_eq!((update.conversation.as_deref(), update.activity.as_deref()), (Some("a:conv-1"), Some(card_id.as_str())));
    assert_eq!(update.query, None);
    assert!(update.body.to_string().contains("Denied in Teams"), "{}", update.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_shared_chats_or_the_roster_the_1_1_chat_is_used() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    fake.set_roster(GROUP, roster(false));
    let dir = config_dir(&oidc, "");
    let (gw, mut host) = StdioGateway::start(&dir, true, &[], "claude-code").await;

    // The session works in the 1:1 chat: nothing is looked up, the card goes there as before.
    assert_eq!(gw.post(&inbound(&fake.service_url, "a:conv-1", "personal", ALEX, "hi")).await.status(), 202);
    assert!(host.next("notifications/claude/channel", WAIT).await.is_some());
    ask(&host, "kmnop").await;
    let card = landed_where(&fake, &gw, "the 1:1 card", |l| is_card_post(l, "kmnop")).await;
    assert_eq!((card.conversation.as_deref(), card.query.as_deref()), (Some("a:conv-1"), None));
    assert!(!fake.landed().iter().any(|l| l.method == "GET"), "a member was looked up for a 1:1 chat: {:?}", fake.landed());

    // The session works in a group chat Alex is not in: asked in the 1:1 chat, and the audit says why.
    assert_eq!(gw.post(&inbound(&fake.service_url, GROUP, "groupChat", EVE, "please deploy")).await.status(), 202);
    assert!(host.next("notifications/claude/channel", WAIT).await.is_some());
    ask(&host, "qrstu").await;
    let card = landed_where(&fake, &gw, "the 1:1 card", |l| is_card_post(l, "qrstu")).await;
    assert_eq!((card.conversation.as_deref(), card.query.as_deref()), (Some("a:conv-1"), None));
    assert!(fake.landed().iter().any(|l| l.method == "GET" && l.activity.as_deref() == Some(ALEX)));
    assert!(fake.landed().iter().all(|l| l.query.is_none()), "{:?}", fake.landed());
    let paths = asked(&gw.config);
    assert_eq!(paths.iter().map(|p| p["outcome"].as_str().unwrap()).collect::<Vec<_>>(), vec!["personal", "personal"]);
    let details: Vec<&str> = paths.iter().map(|p| p["detail"].as_str().unwrap_or("")).collect();
    assert!(details.iter().any(|d| d.contains("qrstu") && d.contains("not a member")), "{details:?}");
    assert!(details.iter().any(|d| d.contains("kmnop") && !d.contains("not targeted")), "{details:?}");
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bot_can_turn_targeted_approvals_off() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    fake.set_roster(GROUP, roster(true));
    let dir = config_dir(&oidc, "policy.targeted_approvals = false");
    let (gw, mut host) = StdioGateway::start(&dir, true, &[], "claude-code").await;
    alex_dms_then_eve_writes_in_the_group(&gw, &mut host, &fake).await;

    ask(&host, "vwxyz").await;
    let card = landed_where(&fake, &gw, "the 1:1 card", |l| is_card_post(l, "vwxyz")).await;
    assert_eq!((card.conversation.as_deref(), card.query.as_deref()), (Some("a:conv-1"), None));
    assert!(!fake.landed().iter().any(|l| l.method == "GET"), "{:?}", fake.landed());
    let paths = asked(&gw.config);
    assert!(paths[0]["detail"].as_str().unwrap_or("").contains("policy.targeted_approvals is off"), "{paths:?}");
}
