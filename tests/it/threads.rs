//! Quoted and threaded replies (teams-surface §4): `reply` / `send_message` with `quote` and `thread`
//! over MCP, and `agentgate send --quote --thread`, against the strict fake Connector (which checks the
//! quote placeholder against the `quotedReply` entities and that a thread root is numeric).

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_connector::{FakeConnector, Landed};
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const EVE: &str = "00000000-0000-0000-0000-0000000000ee";
const CHANNEL: &str = "19:team-1@thread.tacv2";
const WAIT: Duration = Duration::from_secs(10);

fn config_dir(oidc: &FakeOidc) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = "\n[outbound]\npoll_interval_ms = 20\n".into();
    let toml = opts.toml(&dir.join("data")).replacen("policy.dm = \"open\"", "policy.dm = \"open\"\npolicy.groups = \"all\"", 1);
    std::fs::write(dir.join("agentgate.toml"), toml).unwrap();
    dir
}

fn thread(root: &str) -> String {
    format!("{CHANNEL};messageid={root}")
}

/// A channel post from Eve that starts a thread (its id is the thread's root).
fn post(service_url: &str, root: &str, text: &str) -> Value {
    let mut m = inbound(service_url, &thread(root), "channel", EVE, text);
    m["id"] = json!(root);
    m["channelData"]["channel"] = json!({"id": CHANNEL});
    m
}

fn posts_to(fake: &FakeConnector, conversation: &str) -> Vec<Landed> {
    fake.landed().into_iter().filter(|l| l.method == "POST" && l.conversation.as_deref() == Some(conversation)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_quote_messages_and_land_in_channel_threads() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = config_dir(&oidc);
    let (gw, host) = StdioGateway::start(&dir, true, &[], "copilot-cli").await;
    // Two questions, each the first post of its own thread.
    for (root, text) in [("1700000000001", "Is the build green?"), ("1700000000002", "Who owns the release?")] {
        assert_eq!(gw.post(&post(&fake.service_url, root, text)).await.status(), 202);
    }
    let read = host.ok("read_messages", json!({})).await;
    let events = read["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2, "{read}");
    // The event's chat_id already names its thread: a plain reply stays in it.
    assert_eq!(events[0]["chat_id"], thread("1700000000001"));
    assert_eq!(events[0]["channel_id"], CHANNEL);

    // A quoted reply in the first thread.
    let r = host.ok("reply", json!({"chat_id": events[0]["chat_id"], "text": "Yes, green.", "quote": events[0]["message_id"]})).await;
    assert_eq!(r["status"], "delivered", "{r}");
    let sent = posts_to(&fake, &thread("1700000000001"));
    assert_eq!(sent.len(), 1, "{:?}", fake.landed());
    assert_eq!(sent[0].body["text"], "<quoted messageId=\"1700000000001\"/>Yes, green.");
    assert_eq!(sent[0].body["entities"], json!([{"type": "quotedReply", "quotedReply": {"messageId": "1700000000001"}}]));

    // A late answer to the second question, proactively into its thread: named by the channel and the root,
    // or by another thread's chat_id and the root.
    let r = host.ok("send_message", json!({"chat_id": CHANNEL, "thread": "1700000000002", "text": "Dana owns it."})).await;
    assert_eq!(r["status"], "delivered", "{r}");
    let r = host
        .ok(
            "send_message",
            json!({"chat_id": thread("1700000000001"), "thread": "1700000000002", "quote": "1700000000002", "text": "(Dana, since Monday.)"}),
        )
        .await;
    assert_eq!(r["status"], "delivered", "{r}");
    let late = posts_to(&fake, &thread("1700000000002"));
    assert_eq!(late.len(), 2, "{:?}", fake.landed());
    assert_eq!(late[0].body["text"], "Dana owns it.");
    assert_eq!(late[0].body["conversation"]["id"], thread("1700000000002"));
    assert_eq!(late[1].body["text"], "<quoted messageId=\"1700000000002\"/>(Dana, since Monday.)");
    assert!(posts_to(&fake, CHANNEL).is_empty(), "a late answer went to the top of the channel");

    // Refused with a clear error, nothing sent.
    let before = fake.landed().len();
    for (args, says) in [
        (json!({"chat_id": CHANNEL, "thread": "not-a-post", "text": "x"}), "digits"),
        (json!({"chat_id": CHANNEL, "thread": "0", "text": "x"}), "digits"),
        (json!({"chat_id": thread("1700000000001"), "quote": "1\"/><b>hi</b>", "text": "x"}), "quote must be a message id"),
        (json!({"chat_id": "19:elsewhere@thread.tacv2", "thread": "1700000000002", "text": "x"}), "unknown chat_id"),
    ] {
        let (err, v) = host.call("send_message", args.clone()).await;
        assert!(err && v.to_string().contains(says), "{args}: {v}");
    }
    assert_eq!(gw.post(&inbound(&fake.service_url, "19:group@thread.v2", "groupChat", EVE, "hi")).await.status(), 202);
    let (err, v) = host.call("reply", json!({"chat_id": "19:group@thread.v2", "thread": "1700000000002", "text": "x"})).await;
    assert!(err && v.to_string().contains("threads exist in Teams channels only"), "{v}");
    assert_eq!(fake.landed().len(), before, "a refused request reached the Connector");
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).args(args).arg("--config").arg(config).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_quotes_and_threads_too() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    let dir = config_dir(&oidc);
    let (gw, _host) = StdioGateway::start(&dir, true, &[], "copilot-cli").await;
    assert_eq!(gw.post(&post(&fake.service_url, "1700000000005", "Deploy done?")).await.status(), 202);
    assert_eq!(gw.post(&post(&fake.service_url, "1700000000006", "Release notes?")).await.status(), 202);
    assert_eq!(gw.post(&inbound(&fake.service_url, "a:conv-1", "personal", EVE, "hi")).await.status(), 202);

    let (ok, out) = cli(
        &gw.config,
        &[
            "send",
            "--conversation",
            &thread("1700000000006"),
            "--thread",
            "1700000000005",
            "--quote",
            "1700000000005",
            "--text",
            "Deployed at 14:02.",
        ],
    );
    assert!(ok, "{out}");
    let id: i64 = out.split("outbox #").nth(1).and_then(|r| r.split(';').next()).and_then(|n| n.parse().ok()).expect(&out);
    let item = crate::protocol::settled(&gw.config, id, WAIT).await;
    assert_eq!(item["state"], "delivered", "{item}\n{:?}", fake.refused());
    // Named by another thread of the channel: it lands in the thread asked for.
    let sent = posts_to(&fake, &thread("1700000000005"));
    assert_eq!(sent.len(), 1, "{:?}", fake.landed());
    assert_eq!(sent[0].body["text"], "<quoted messageId=\"1700000000005\"/>Deployed at 14:02.");
    assert_eq!(sent[0].body["entities"], json!([{"type": "quotedReply", "quotedReply": {"messageId": "1700000000005"}}]));

    // Clear refusals, nothing queued.
    for (args, says) in [
        (vec!["send", "--conversation", CHANNEL, "--thread", "abc", "--text", "x"], "digits"),
        (vec!["send", "--conversation", "a:conv-1", "--thread", "1700000000005", "--text", "x"], "channels only"),
        (vec!["send", "--conversation", "a:conv-1", "--quote", "a b", "--text", "x"], "quote must be a message id"),
        (vec!["send", "--conversation", "a:conv-1", "--quote", "1700000000005", "--typing"], "cannot be used with"),
    ] {
        let (ok, out) = cli(&gw.config, &args);
        assert!(!ok && out.contains(says), "{args:?}: {out}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.landed().len(), 1, "{:?}", fake.landed());
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}
