//! Progress on long turns everywhere: the stream tools (`stream_start` / `stream_append` /
//! `stream_finish`) through `agentgate mcp` over stdio against the strict fake Connector — in a group
//! chat and a channel one placeholder updated in place, in a 1:1 chat Teams streaming that goes on in
//! place past Teams' two minutes, and the refusals (an update throttled, the message deleted).
//!
//! A long turn runs on a test clock: `AGENTGATE_DEV_STREAM_CLOCK_SCALE` (honoured with `--dev` only) makes
//! the gateway's stream timings [`SCALE`] times shorter, and the fake holds the limits tied to streams
//! (the 1 s gap, the 2 minutes, the update gap) on the same clock; Teams' per-conversation windows stay
//! real on both sides.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_connector::{FakeConnector, Fault, Landed};
use crate::helpers::*;
use crate::mcp_host::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";
const ALEX: &str = "00000000-0000-0000-0000-0000000000aa";
const WAIT: Duration = Duration::from_secs(10);
const GROUP: &str = "19:group-1@thread.v2";
const CHANNEL: &str = "19:general-1@thread.tacv2;messageid=1700000000000";
const DM: &str = "a:conv-1";

/// How much faster the stream clock runs: three minutes take 9 s.
const SCALE: u32 = 20;

/// `duration` of the test clock, in real time.
fn scaled(duration: Duration) -> Duration {
    duration / SCALE
}

struct Turn {
    fake: FakeConnector,
    gw: StdioGateway,
    host: Host,
    _oidc: FakeOidc,
}

/// A gateway (`mcp --dev`, stream clock scaled) and the fake, with a message from Alex in `conversation`.
async fn turn(conversation: &str, conversation_type: &str, outbound: &str) -> Turn {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;
    fake.set_clock_scale(SCALE);
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.extra = format!("\n[outbound]\npoll_interval_ms = 20\n{outbound}\n");
    std::fs::write(dir.join("agentgate.toml"), opts.toml(&dir.join("data"))).unwrap();
    let scale = SCALE.to_string();
    let env = [("AGENTGATE_DEV_STREAM_CLOCK_SCALE", scale.as_str())];
    let (gw, mut host) = StdioGateway::start_env(&dir, true, &[], "claude-code", Some("agentgate=debug,info"), &env).await;
    // Outside 1:1 chats the bot hears what @mentions it.
    let mut asked = inbound(&fake.service_url, conversation, conversation_type, ALEX, "<at>Bot</at> how do I deploy?");
    asked["entities"] = json!([{"type": "mention", "text": "<at>Bot</at>", "mentioned": {"id": format!("28:{APP_ID}"), "name": "Bot"}}]);
    assert_eq!(gw.post(&asked).await.status(), 202);
    host.next("notifications/claude/channel", WAIT).await.unwrap_or_else(|| panic!("no push:\n{}", gw.stderr()));
    assert!(gw.stderr().contains("AGENTGATE_DEV_STREAM_CLOCK_SCALE is set"), "the scaled clock is announced");
    Turn { fake, gw, host, _oidc: oidc }
}

/// What the fake holds for `conversation`, in order.
fn landed_in(fake: &FakeConnector, conversation: &str) -> Vec<Landed> {
    fake.landed().into_iter().filter(|l| l.conversation.as_deref() == Some(conversation)).collect()
}

fn text(l: &Landed) -> &str {
    l.body["text"].as_str().unwrap_or_default()
}

/// Writes a reply for `length` of the test clock: status lines for the first 20 s, then a sentence every 5 s
/// (in three appends).
/// Returns the whole text appended, and every `stream_append` result.
async fn write_for(t: &Turn, stream_id: &str, length: Duration) -> (String, Vec<Value>) {
    let started = Instant::now();
    let mut full = String::new();
    let mut results = Vec::new();
    let mut i = 0;
    while started.elapsed() < scaled(length) {
        tokio::time::sleep(scaled(Duration::from_secs(5))).await;
        i += 1;
        let status = match i {
            1 => Some("Reading 3 files…".to_owned()),
            2..=3 => Some(format!("Drafting, step {}…", i - 1)),
            _ => None,
        };
        if let Some(line) = status {
            results.push(t.host.ok("stream_append", json!({"stream_id": stream_id, "informative": line})).await);
            continue;
        }
        // A burst of three appends, back to back: they must be coalesced, not sent as three updates.
        for piece in [format!("Part {i}: "), "run ".to_owned(), format!("`deploy --stage {i}`. ")] {
            full.push_str(&piece);
            results.push(t.host.ok("stream_append", json!({"stream_id": stream_id, "text": piece})).await);
        }
    }
    (full, results)
}

/// A message updated in place: a `POST` of the placeholder, then only `PUT`s of it. Returns its id.
fn one_placeholder_updated_in_place(all: &[Landed], first_text: &str) -> String {
    let placeholder = &all[0];
    assert_eq!((placeholder.method.as_str(), placeholder.body["type"].as_str()), ("POST", Some("message")), "{placeholder:?}");
    assert_eq!(text(placeholder), first_text);
    assert!(!placeholder.body.to_string().contains("streaminfo"), "no streaming here: {:?}", placeholder.body);
    let id = placeholder.answered.clone().unwrap();
    for l in &all[1..] {
        assert_eq!((l.method.as_str(), l.activity.as_deref()), ("PUT", Some(id.as_str())), "only updates of the placeholder: {l:?}");
        assert_eq!(l.body["id"], id.as_str(), "the update names its message");
    }
    id
}

/// Once the answer began, every update shows all of it so far.
fn cumulative_once_text_flows(updates: &[Landed]) {
    let texts: Vec<&str> = updates.iter().map(text).filter(|t| t.starts_with("Part")).collect();
    for pair in texts.windows(2) {
        assert!(pair[1].starts_with(pair[0]), "text lost between updates: {:?} then {:?}", pair[0], pair[1]);
    }
}

/// The long-turn test: a group-chat answer that takes three minutes (test clock), shown as one
/// placeholder updated in place — status lines, then the answer — and finalised, with no text lost and no
/// limit exceeded (the fake refuses, with 429, updates of one message less than its update gap apart and
/// more than Teams' per-conversation counts; and updates of anything it did not create).
#[tokio::test(flavor = "multi_thread")]
async fn a_three_minute_group_chat_answer_is_one_placeholder_updated_in_place() {
    let t = turn(GROUP, "groupChat", "").await;
    let s = t.host.ok("stream_start", json!({"chat_id": GROUP, "informative": "Searching the docs…"})).await;
    assert_eq!((s["mode"].as_str(), s["streaming"].as_bool()), (Some("updating"), Some(false)), "{s}");
    let id = s["stream_id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (full, appended) = write_for(&t, &id, Duration::from_secs(180)).await;
    assert!(appended.iter().all(|r| r["status"] == "appended" && r["mode"] == "updating"), "{appended:?}");
    let done = t.host.ok("stream_finish", json!({"stream_id": id})).await;
    assert!(started.elapsed() >= scaled(Duration::from_secs(180)), "the turn took three minutes of the test clock");
    assert_eq!((done["status"].as_str(), done["mode"].as_str()), (Some("delivered"), Some("updating")), "{done}");

    let all = landed_in(&t.fake, GROUP);
    assert!(t.fake.refused().is_empty(), "a limit was exceeded: {:?}\n{}", t.fake.refused(), t.gw.stderr());
    assert!(t.fake.faulted().is_empty());
    let placeholder = one_placeholder_updated_in_place(&all, "Searching the docs…");
    assert_eq!(done["message_id"], placeholder.as_str(), "the result names the one message");
    let updates = &all[1..];
    let texts: Vec<&str> = updates.iter().map(text).collect();
    assert!(texts.contains(&"Reading 3 files…"), "status lines are shown: {texts:?}");
    let drafting = texts.iter().position(|t| t.starts_with("Drafting")).expect("the next status line is shown");
    assert!(texts.iter().position(|t| t.starts_with("Part")).is_some_and(|p| p > drafting), "then the answer: {texts:?}");
    cumulative_once_text_flows(updates);
    assert_eq!(*texts.last().unwrap(), full, "the final update is the whole answer");
    assert!(updates.len() >= 10, "progress all along: {} updates", updates.len());
    assert!(texts.windows(2).all(|p| p[0] != p[1]), "an update that changed nothing: {texts:?}");

    let audit = t.host.ok("recent_audit", json!({"limit": 10})).await;
    let outcomes: Vec<&str> =
        audit["events"].as_array().unwrap().iter().filter(|e| e["action"] == "stream").filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["delivered", "started"], "{audit}");
    let delivered = audit["events"].as_array().unwrap().iter().find(|e| e["action"] == "stream").unwrap().clone();
    assert_eq!(delivered["detail"], "mode updating", "{delivered}");
}

/// A 1:1 stream passes Teams' two minutes: it gets its final before them, then goes on by updating the
/// streamed message in place, and ends with all its text in that one message.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_to_one_stream_past_two_minutes_goes_on_in_place_with_all_its_text() {
    // Handed over at 60 s of the test clock: Teams' own limit (the fake's 120 s) is well away, whatever the
    // real-time throttle holds back.
    let t = turn(DM, "personal", "stream_max_age_ms = 60000").await;
    let s = t.host.ok("stream_start", json!({"chat_id": DM, "informative": "Searching the docs…"})).await;
    assert_eq!((s["mode"].as_str(), s["streaming"].as_bool()), (Some("streaming"), Some(true)), "{s}");
    let id = s["stream_id"].as_str().unwrap().to_owned();
    let (full, appended) = write_for(&t, &id, Duration::from_secs(180)).await;
    assert_eq!(appended.first().unwrap()["mode"], "streaming");
    assert_eq!(appended.last().unwrap()["mode"], "updating", "the host sees the stream go on in place");
    let done = t.host.ok("stream_finish", json!({"stream_id": id})).await;
    assert_eq!((done["status"].as_str(), done["mode"].as_str()), (Some("delivered"), Some("updating")), "{done}");

    assert!(t.fake.refused().is_empty(), "{:?}\n{}", t.fake.refused(), t.gw.stderr());
    assert_eq!(t.fake.cancelled(), 0, "nothing reached Teams' limit");
    let all = landed_in(&t.fake, DM);
    let start = &all[0];
    assert_eq!((start.body["type"].as_str(), start.body["entities"][0]["streamType"].as_str()), (Some("typing"), Some("informative")));
    let final_at = all.iter().position(|l| l.body["entities"][0]["streamType"] == "final").expect("the stream got its final");
    let stream_id = all[final_at].body["entities"][0]["streamId"].as_str().unwrap().to_owned();
    assert!(all[final_at].at - start.at < scaled(Duration::from_secs(120)), "the final beat Teams' 2 minutes");
    let after = &all[final_at + 1..];
    assert!(after.len() >= 5, "the reply went on in place: {after:?}");
    for l in after {
        assert_eq!((l.method.as_str(), l.activity.as_deref()), ("PUT", Some(stream_id.as_str())), "{l:?}");
    }
    assert!(after.last().unwrap().at - start.at > scaled(Duration::from_secs(120)), "the reply went on past Teams' 2 minutes");
    let streamed: Vec<Landed> = all.iter().filter(|l| text(l).starts_with("Part")).cloned().collect();
    cumulative_once_text_flows(&streamed);
    assert_eq!(text(after.last().unwrap()), full, "the last update is the whole reply: nothing lost");
    assert_eq!(done["message_id"], stream_id.as_str());
}

/// Teams ends the 1:1 stream before the gateway expected (its clock ahead of ours): the refusal
/// ("Content stream finished due to exceeded streaming time.") is no Stop — the stream goes on in place
/// with all its text.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_to_one_stream_teams_ends_early_goes_on_in_place() {
    let t = turn(DM, "personal", "stream_max_age_ms = 100000").await;
    t.fake.set_stream_max_age(scaled(Duration::from_secs(40)));
    let s = t.host.ok("stream_start", json!({"chat_id": DM})).await;
    let id = s["stream_id"].as_str().unwrap().to_owned();
    let (full, appended) = write_for(&t, &id, Duration::from_secs(90)).await;
    assert!(appended.iter().all(|r| r["status"] == "appended"), "not cancelled: {appended:?}");
    let done = t.host.ok("stream_finish", json!({"stream_id": id})).await;
    assert_eq!((done["status"].as_str(), done["mode"].as_str()), (Some("delivered"), Some("updating")), "{done}");
    assert!(t.fake.cancelled() >= 1, "Teams refused the stream for its age");
    assert!(t.fake.refused().is_empty(), "{:?}", t.fake.refused());
    let all = landed_in(&t.fake, DM);
    let stream_id = done["message_id"].as_str().unwrap();
    let last = all.last().unwrap();
    assert_eq!((last.method.as_str(), last.activity.as_deref()), ("PUT", Some(stream_id)));
    assert_eq!(text(last), full, "nothing lost");
    assert!(!all.iter().any(|l| l.method == "POST" && l.at > all[0].at + scaled(Duration::from_secs(40))), "nothing posted anew");
}

/// In a channel thread the same calls update one message in place (the thread's conversation id,
/// `;messageid=` included, percent-encoded in every update's path).
#[tokio::test(flavor = "multi_thread")]
async fn a_channel_stream_is_one_message_updated_in_place() {
    let t = turn(CHANNEL, "channel", "").await;
    let s = t.host.ok("stream_start", json!({"chat_id": CHANNEL})).await;
    assert_eq!(s["mode"], "updating", "{s}");
    let id = s["stream_id"].as_str().unwrap().to_owned();
    let (full, _) = write_for(&t, &id, Duration::from_secs(60)).await;
    let done = t.host.ok("stream_finish", json!({"stream_id": id, "text": "Done."})).await;
    assert_eq!(done["status"], "delivered", "{done}");
    assert!(t.fake.refused().is_empty(), "{:?}", t.fake.refused());
    let all = landed_in(&t.fake, CHANNEL);
    let placeholder = one_placeholder_updated_in_place(&all, "Reading 3 files…");
    assert_eq!(text(all.last().unwrap()), format!("{full}Done."));
    assert_eq!(done["message_id"], placeholder.as_str());
    assert!(all.iter().all(|l| l.body["type"] == "message"), "no typing or stream activity in a channel");
}

/// Refusals: an update answered 429 is not repeated as it was but sent after `Retry-After` with the text
/// written meanwhile; the user deleting the placeholder (updates answered 404) ends the stream with a
/// clear error to the host, and nothing more is posted.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_update_comes_back_coalesced_and_a_deleted_placeholder_ends_the_stream() {
    let t = turn(GROUP, "groupChat", "").await;
    let s = t.host.ok("stream_start", json!({"chat_id": GROUP, "informative": "Thinking…"})).await;
    let id = s["stream_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + WAIT;
    while landed_in(&t.fake, GROUP).is_empty() {
        assert!(Instant::now() < deadline, "no placeholder\n{}", t.gw.stderr());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let placeholder = landed_in(&t.fake, GROUP)[0].answered.clone().unwrap();

    // The next request (an update) is answered 429, Retry-After 1 s.
    t.fake.push_faults([Fault::TooMany("1".into())]);
    let mut full = String::new();
    let pieces = ["The answer ", "is ", "forty-two, ", "as ", "computed ", "earlier."];
    for piece in pieces {
        full.push_str(piece);
        t.host.ok("stream_append", json!({"stream_id": id, "text": piece})).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let throttled = t.fake.faulted();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert_eq!((throttled[0].method.as_str(), throttled[0].activity.as_deref()), ("PUT", Some(placeholder.as_str())));
    let after: Vec<Landed> = landed_in(&t.fake, GROUP).into_iter().filter(|l| l.at > throttled[0].at).collect();
    let retried = after.first().unwrap_or_else(|| panic!("the update was never sent again\n{}", t.gw.stderr()));
    assert!(retried.at - throttled[0].at >= Duration::from_millis(950), "Retry-After was honoured: {:?}", retried.at - throttled[0].at);
    assert!(
        text(retried).starts_with(text(&throttled[0])) && text(retried).len() > text(&throttled[0]).len(),
        "coalesced: {:?} then {:?}",
        text(&throttled[0]),
        text(retried)
    );
    let deadline = Instant::now() + WAIT;
    while text(landed_in(&t.fake, GROUP).last().unwrap()) != full {
        assert!(Instant::now() < deadline, "the text never caught up: {:?}", landed_in(&t.fake, GROUP));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The user deletes the placeholder: the next update is answered 404 and the stream ends.
    t.fake.user_deletes(&placeholder);
    let deadline = Instant::now() + WAIT;
    let error = loop {
        let (err, v) = t.host.call("stream_append", json!({"stream_id": id, "text": " More."})).await;
        if err {
            break v.to_string();
        }
        assert!(Instant::now() < deadline, "the stream never noticed the deletion\n{}", t.gw.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("deleted") && error.contains("404"), "{error}");
    assert_eq!(t.fake.refused().len(), 1, "one update refused as not found: {:?}", t.fake.refused());
    let (err, v) = t.host.call("stream_finish", json!({"stream_id": id})).await;
    assert!(err && v.to_string().contains("deleted"), "{v}");
    let posted = t.fake.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.fake.state.requests.load(std::sync::atomic::Ordering::SeqCst), posted, "nothing more after the 404");
    assert_eq!(landed_in(&t.fake, GROUP).iter().filter(|l| l.method == "POST").count(), 1, "the text was not posted anew");
    let audit = t.host.ok("recent_audit", json!({"limit": 10})).await;
    let end = audit["events"].as_array().unwrap().iter().find(|e| e["action"] == "stream").unwrap().clone();
    assert_eq!(end["outcome"], "failed", "{end}");
    assert!(end["detail"].as_str().unwrap().contains("deleted"), "{end}");
}
