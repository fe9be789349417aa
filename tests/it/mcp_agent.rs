//! The Agent User behind a bot, through MCP: fallback to Graph when the bot cannot deliver (and a clear
//! refusal for a `bot_only` bot), Graph tools, and the owner approval for reaching someone new. Tokens
//! come from the strict fake Entra three-hop chain; Graph is the strict fake Graph.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_connector::{FakeConnector, Fault};
use crate::fake_entra::test_cert;
use crate::fake_entra_agent::*;
use crate::fake_graph::FakeGraph;
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
const EVE: &str = "e0e0e0e0-0000-4000-8000-0000000000ee";
const SAM: &str = "5a5a5a5a-0000-4000-8000-000000000055";
const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    fake: FakeConnector,
    entra: FakeEntraAgent,
    graph: FakeGraph,
    gw: StdioGateway,
    host: Host,
    _oidc: FakeOidc,
}

/// A dev-mode `agentgate mcp` whose first bot serves the Agent User's tenant and has an Agent User.
async fn rig(mode: &str, policy: &str) -> Rig {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let entra = FakeEntraAgent::start(test_cert(1)).await;
    let graph = FakeGraph::start(entra.graph_checker(), AGENT_USER_OID, AGENT_USER_UPN).await;
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.token_authority = entra.authority();
    opts.extra = "\n[outbound]\npoll_interval_ms = 20\nmax_attempts = 1\n".into();
    let section = agent_user_toml(&dir, &format!("mode = \"{mode}\"\ngraph_base_url = \"{}\"", graph.base_url()));
    let agent = format!("{policy}\n\n{section}\n");
    let toml = opts
        .toml(&dir.join("data"))
        .replacen(&format!("allowed_tenants = [\"{TENANT}\"]"), &format!("allowed_tenants = [\"{TENANT}\", \"{AGENT_TENANT}\"]"), 1)
        .replacen(&format!("[[bots]]\napp_id = \"{OTHER_APP_ID}\""), &format!("{agent}[[bots]]\napp_id = \"{OTHER_APP_ID}\""), 1);
    std::fs::write(dir.join("agentgate.toml"), toml).unwrap();
    let (gw, host) = StdioGateway::start(&dir, true, &[], "claude-code").await;
    Rig { fake, entra, graph, gw, host, _oidc: oidc }
}

/// A message in the Agent User's tenant (so the bot knows that tenant's service URL).
fn in_agent_tenant(service_url: &str, conversation: &str, aad: &str, text: &str) -> Value {
    let mut m = inbound(service_url, conversation, "personal", aad, text);
    m["conversation"]["tenantId"] = json!(AGENT_TENANT);
    m["channelData"]["tenant"]["id"] = json!(AGENT_TENANT);
    m
}

fn blocked() -> Fault {
    Fault::Status(403, json!({"error": {"code": "Forbidden", "subCode": "MessageWritesBlocked", "message": "Bot is not installed"}}))
}

fn audit(config: &std::path::Path) -> String {
    let out = std::process::Command::new(bin()).args(["audit", "--limit", "200", "--config"]).arg(config).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_bot_send_falls_back_to_graph_as_the_agent_user() {
    let mut r = rig("fallback", &format!("policy.contacts_allow = [\"{EVE}\"]")).await;
    assert_eq!(r.gw.post(&in_agent_tenant(&r.fake.service_url, "a:alex", ALEX, "hi")).await.status(), 202);
    assert!(r.host.next("notifications/claude/channel", WAIT).await.is_some());

    // The bot is not installed for Eve: the Connector refuses the proactive chat.
    r.fake.push_faults([blocked()]);
    let v = r.host.ok("send_to_user", json!({"user_id": EVE, "tenant": AGENT_TENANT, "text": "Hello <Eve> & co"})).await;
    assert_eq!(v["identity"], format!("agent_user:{AGENT_USER_OID}"), "{v}");
    assert_eq!(v["via"], "graph", "{v}");
    let chat_id = v["chat_id"].as_str().unwrap().to_owned();
    let messages = r.graph.messages(&chat_id);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let html = messages[0]["body"]["content"].as_str().unwrap().to_owned();
    assert!(html.contains("Hello &lt;Eve&gt; &amp; co"), "escaped: {html}");
    // Graph saw only Agent User (T3) tokens for Graph; the chat is a 1:1 with Eve.
    let seen = r.graph.seen();
    assert!(seen.iter().all(|s| r.entra.check_user_token(&s.bearer, GRAPH_SCOPE).is_some()), "a request without a Graph T3");
    let create = seen.iter().find(|s| s.method == "POST" && s.path == "chats").expect("a chat was created");
    assert_eq!(create.body.as_ref().unwrap()["chatType"], "oneOnOne");
    assert!(create.body.as_ref().unwrap().to_string().contains(EVE));
    assert_eq!(r.entra.hop_requests(), [1, 1, 1], "one chain");

    // The audit trail says the Agent User acted, after the bot's refused attempt.
    let trail = audit(&r.gw.config);
    assert!(
        trail.contains(&format!("\"identity\":\"agent_user:{AGENT_USER_OID}\"")) && trail.contains("\"action\":\"graph_send\""),
        "{trail}"
    );
    assert!(trail.contains("\"outcome\":\"delivered\""), "{trail}");
    assert!(trail.contains("\"action\":\"create_personal\""), "the bot's attempt is on record: {trail}");

    // A group chat the bot was removed from: a reply there goes out through Graph as the Agent User.
    let group = r.graph.seed_chat(0);
    let mut m = in_agent_tenant(&r.fake.service_url, &group, ALEX, "<at>Bot</at> status?");
    m["conversation"]["conversationType"] = json!("groupChat");
    m["entities"] = json!([{"type": "mention", "text": "<at>Bot</at>", "mentioned": {"id": format!("28:{APP_ID}"), "name": "Bot"}}]);
    assert_eq!(r.gw.post(&m).await.status(), 202);
    assert!(r.host.next("notifications/claude/channel", WAIT).await.is_some());
    let mut removed = in_agent_tenant(&r.fake.service_url, &group, ALEX, "");
    removed["type"] = json!("installationUpdate");
    removed["conversation"]["conversationType"] = json!("groupChat");
    removed["action"] = json!("remove");
    removed.as_object_mut().unwrap().remove("text");
    assert_eq!(r.gw.post(&removed).await.status(), 202);
    let v = r.host.ok("reply", json!({"chat_id": group, "text": "All green."})).await;
    assert_eq!(v["identity"], format!("agent_user:{AGENT_USER_OID}"), "{v}");
    let messages = r.graph.messages(&group);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0]["body"]["content"].as_str().unwrap().contains("All green."));

    // A channel is not a Graph chat: there the removed bot's reply is refused, not rerouted.
    let channel = "19:general@thread.tacv2";
    for kind in ["message", "installationUpdate"] {
        let mut a = in_agent_tenant(&r.fake.service_url, channel, ALEX, "<at>Bot</at> hi");
        a["type"] = json!(kind);
        a["conversation"]["conversationType"] = json!("channel");
        a["entities"] = json!([{"type": "mention", "text": "<at>Bot</at>", "mentioned": {"id": format!("28:{APP_ID}"), "name": "Bot"}}]);
        if kind == "installationUpdate" {
            a["action"] = json!("remove");
        }
        assert_eq!(r.gw.post(&a).await.status(), 202);
    }
    let before = r.graph.seen().len();
    let (err, v) = r.host.call("reply", json!({"chat_id": channel, "text": "x"})).await;
    assert!(err && v.to_string().contains("removed"), "{v}");
    assert_eq!(r.graph.seen().len(), before, "a channel reply went to Graph");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bot_only_bot_says_so_instead_of_switching_identity() {
    let mut r = rig("bot_only", &format!("policy.contacts_allow = [\"{EVE}\"]")).await;
    assert_eq!(r.gw.post(&in_agent_tenant(&r.fake.service_url, "a:alex", ALEX, "hi")).await.status(), 202);
    assert!(r.host.next("notifications/claude/channel", WAIT).await.is_some());
    r.fake.push_faults([blocked()]);
    let (err, v) = r.host.call("send_to_user", json!({"user_id": EVE, "tenant": AGENT_TENANT, "text": "hello"})).await;
    assert!(err, "{v}");
    let text = v.to_string();
    assert!(text.contains("bot_only") && text.contains("fallback"), "{text}");
    assert!(r.graph.seen().is_empty(), "Graph was used by a bot_only bot");
    // With an Agent User, the Graph tools are offered; explicit Graph tools still act as the Agent User.
    let names: Vec<String> = r.host.client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    for t in ["graph_find_user", "graph_list_chats", "graph_read_chat", "graph_create_chat", "graph_send_message", "graph_add_member"] {
        assert!(names.iter().any(|n| n == t), "{t} missing: {names:?}");
    }
    // Its files area is off: no Graph file tools (the bot's own get_file and send_file are there).
    for t in ["graph_list_files", "graph_search_files", "graph_find_sites", "graph_read_file", "graph_upload_file", "graph_share_file"] {
        assert!(!names.iter().any(|n| n == t), "{t} offered with the files area off: {names:?}");
    }
    assert!(names.iter().any(|n| n == "get_file") && names.iter().any(|n| n == "send_file"), "{names:?}");
    // Mail is off for this Agent User: no mail tool is offered.
    assert!(!names.iter().any(|n| n.starts_with("mail_")), "{names:?}");
    let chats = r.host.ok("graph_list_chats", json!({})).await;
    assert_eq!(chats["identity"], format!("agent_user:{AGENT_USER_OID}"), "{chats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reaching_someone_new_needs_an_owner_in_teams() {
    let mut r = rig("fallback", &format!("policy.approvers = [\"{ALEX}\"]\npolicy.approval_timeout_secs = 30")).await;
    assert_eq!(r.gw.post(&in_agent_tenant(&r.fake.service_url, "a:alex", ALEX, "hi")).await.status(), 202);
    assert!(r.host.next("notifications/claude/channel", WAIT).await.is_some());
    let chat = r.graph.seed_chat(0);

    // Sam is not in contacts_allow: the call waits for Alex's answer on a card.
    let answer = |nth: usize, behavior: &'static str| {
        let (fake, gw) = (&r.fake, &r.gw);
        async move {
            let card = loop {
                let cards: Vec<_> = fake.landed().into_iter().filter(|l| l.body.to_string().contains("agentgate.permission")).collect();
                if cards.len() > nth {
                    break cards[nth].clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let request_id = card.body["attachments"][0]["content"]["actions"][0]["data"]["request_id"].as_str().unwrap().to_owned();
            let mut click = in_agent_tenant(&fake.service_url, "a:alex", ALEX, "");
            click["type"] = json!("invoke");
            click["name"] = json!("adaptiveCard/action");
            click.as_object_mut().unwrap().remove("text");
            click["value"] = json!({"action": {"type": "Action.Execute", "verb": "agentgate.permission", "data": {"request_id": request_id, "behavior": behavior}}});
            // An answer counts only when authenticated and on the approval card itself.
            click["replyToId"] = json!(card.answered.clone().expect("the card's message id"));
            assert_eq!(gw.post_as(&bf_token(&fake.service_url), &click).await.status(), 200);
            card
        }
    };
    let call = r.host.call("graph_add_member", json!({"chat_id": chat, "member": {"user": SAM}}));
    let ((err, v), card) = tokio::join!(call, answer(0, "allow"));
    assert!(card.body.to_string().contains(SAM), "the card names who: {}", card.body);
    assert!(!err, "{v}");
    assert_eq!(v["status"], "added", "{v}");
    assert_eq!(r.graph.members(&chat).len(), 1);

    // A denial leaves things as they were.
    let call = r.host.call("graph_add_member", json!({"chat_id": chat, "member": {"user": "lee@contoso.onmicrosoft.test"}}));
    let ((err, v), _) = tokio::join!(call, answer(1, "deny"));
    assert!(err && v.to_string().contains("denied"), "{v}");
    assert_eq!(r.graph.members(&chat).len(), 1, "a denied member was added");
    // Sam, once approved, needs no second approval.
    let other = r.graph.seed_chat(0);
    let v = r.host.ok("graph_add_member", json!({"chat_id": other, "member": {"user": SAM}})).await;
    assert_eq!(v["status"], "added", "{v}");
    let trail = audit(&r.gw.config);
    assert!(trail.contains("\"action\":\"graph_add_member\"") && trail.contains("\"outcome\":\"added\""), "{trail}");
    assert!(trail.contains("\"outcome\":\"allow\"") && trail.contains("\"outcome\":\"deny\""), "{trail}");
}
