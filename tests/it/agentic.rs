//! Agent 365 agentic activities: Entra-issued inbound tokens for the bot's Agent Blueprint (tenant bound
//! to the issuer, the tenant's own keys, the tenant allow-list) and replies sent with the Agent User's
//! T3 token as the agentic user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::{Value, json};

use crate::fake_connector::{FakeConnector, Identity};
use crate::fake_entra::test_cert;
use crate::fake_entra_agent::*;
use crate::helpers::*;

const DEV_TOKEN: &str = "agentgate-dev-mode-no-credential";

/// Entra's per-tenant OpenID metadata and keys, on loopback; counts fetches per tenant.
struct TenantKeys {
    base: String,
    fetches: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TenantKeys {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct TkState {
    base: String,
    key: Value,
    fetches: Arc<Mutex<HashMap<String, usize>>>,
}

async fn tk_metadata(State(s): State<TkState>, Path(tenant): Path<String>) -> axum::Json<Value> {
    *s.fetches.lock().unwrap().entry(tenant.clone()).or_default() += 1;
    axum::Json(json!({
        "issuer": format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        "jwks_uri": format!("{}/{tenant}/discovery/v2.0/keys", s.base),
    }))
}

async fn tk_keys(State(s): State<TkState>) -> axum::Json<Value> {
    axum::Json(json!({"keys": [s.key]}))
}

impl TenantKeys {
    async fn start(key: &TestKey) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fetches = Arc::new(Mutex::new(HashMap::new()));
        let state = TkState { base: base.clone(), key: key.jwk(), fetches: Arc::clone(&fetches) };
        let app = Router::new()
            .route("/{tenant}/v2.0/.well-known/openid-configuration", get(tk_metadata))
            .route("/{tenant}/discovery/v2.0/keys", get(tk_keys))
            .with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, fetches, task }
    }

    fn fetches(&self, tenant: &str) -> usize {
        self.fetches.lock().unwrap().get(tenant).copied().unwrap_or(0)
    }
}

const AGENT_UPN: &str = "agent@contoso.onmicrosoft.test";

fn claims(iss_tenant: &str, tid: &str, aud: &str) -> Value {
    json!({"iss": format!("https://login.microsoftonline.com/{iss_tenant}/v2.0"), "tid": tid, "aud": aud,
           "azp": "agent365-platform", "exp": now() + 3600, "nbf": now() - 5})
}

/// An agentic message addressed to the Agent User, in `tenant`.
fn agentic_message(service_url: &str, tenant: &str) -> Value {
    let mut m = message(&unique_id("agentic"));
    m["serviceUrl"] = json!(service_url);
    m["conversation"] = json!({"conversationType": "personal", "tenantId": tenant, "id": "a:agentic-1"});
    m["channelData"] = json!({"tenant": {"id": tenant}});
    m["recipient"] = json!({"id": AGENT_UPN, "name": "Agent", "role": "agenticUser", "agenticAppId": IDENTITY_ID,
                            "agenticUserId": AGENT_USER_OID, "tenantId": tenant});
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_tokens_for_the_blueprint_are_checked_and_answered_as_the_agent_user() {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let entra = Arc::new(FakeEntraAgent::start(test_cert(1)).await);
    let entra_key = TestKey::new("entra-kid", 2, None);
    let tenant_keys = TenantKeys::start(&entra_key).await;
    // The fake Connector is the Playground's loopback one: it accepts only the dev placeholder (the
    // gateway obtains the Agent User's T3, but never hands it to a loopback connector).
    let fake = FakeConnector::start(vec![DEV_TOKEN.to_owned()]).await;

    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.dev = true;
    opts.token_authority = entra.authority();
    opts.extra = "\n[outbound]\npoll_interval_ms = 20\n".into();
    let agent = format!(
        "\n{}\n[bots.agentic]\nenabled = true\nallowed_callers = [\"agent365-platform\"]\nopenid_metadata_url = \"{}/{{tenant}}/v2.0/.well-known/openid-configuration\"\n\n",
        agent_user_toml(&dir, ""),
        tenant_keys.base
    );
    let app = TestApp::spawn_in_with(&dir, &opts, |t| {
        t.replacen(&format!("allowed_tenants = [\"{TENANT}\"]"), &format!("allowed_tenants = [\"{TENANT}\", \"{AGENT_TENANT}\"]"), 1)
            .replacen(&format!("[[bots]]\napp_id = \"{OTHER_APP_ID}\""), &format!("{agent}[[bots]]\napp_id = \"{OTHER_APP_ID}\""), 1)
    })
    .await
    .unwrap_or_else(|e| panic!("did not start:\n{e}"));
    app.wait_ready().await;

    let good = entra_key.mint(&claims(AGENT_TENANT, AGENT_TENANT, BLUEPRINT_ID));
    let activity = agentic_message(&fake.service_url, AGENT_TENANT);

    // Refused: another tenant's token (not on the allow-list: its keys are never even fetched), a tid
    // that is not the issuer's, the bot's own app id or another audience, a forged signature, a caller
    // not on the list, and a valid token for another tenant's activity.
    let cases = [
        ("tenant not allowed", entra_key.mint(&claims(OTHER_TENANT, OTHER_TENANT, BLUEPRINT_ID)), activity.clone()),
        ("tid is not the issuer's", entra_key.mint(&claims(TENANT, AGENT_TENANT, BLUEPRINT_ID)), activity.clone()),
        ("audience is the bot app id", entra_key.mint(&claims(AGENT_TENANT, AGENT_TENANT, APP_ID)), activity.clone()),
        ("another audience", entra_key.mint(&claims(AGENT_TENANT, AGENT_TENANT, "00000000-0000-0000-0000-00000000abcd")), activity.clone()),
        ("forged", entra_key.mint_forged(&claims(AGENT_TENANT, AGENT_TENANT, BLUEPRINT_ID)), activity.clone()),
        (
            "unknown caller",
            {
                let mut c = claims(AGENT_TENANT, AGENT_TENANT, BLUEPRINT_ID);
                c["azp"] = json!("someone-else");
                entra_key.mint(&c)
            },
            activity.clone(),
        ),
        ("activity in another tenant", good.clone(), agentic_message(&fake.service_url, TENANT)),
        (
            "issuer as an array holding the tenant's issuer",
            {
                let mut c = claims(AGENT_TENANT, AGENT_TENANT, BLUEPRINT_ID);
                c["iss"] = json!([format!("https://login.microsoftonline.com/{AGENT_TENANT}/v2.0")]);
                entra_key.mint(&c)
            },
            activity.clone(),
        ),
        (
            "tid as an array",
            {
                let mut c = claims(AGENT_TENANT, AGENT_TENANT, BLUEPRINT_ID);
                c["tid"] = json!([AGENT_TENANT]);
                entra_key.mint(&c)
            },
            activity.clone(),
        ),
    ];
    for (what, token, body) in cases {
        assert_eq!(app.status(Some(&token), &body).await, 401, "{what}: {}", app.stderr());
    }
    assert_eq!(tenant_keys.fetches(OTHER_TENANT), 0, "keys were fetched for a tenant the bot does not serve");
    // A valid token, but the activity names another Agent Identity (or User): not this bot's to answer.
    for (field, value) in
        [("agenticAppId", "f0f0f0f0-0000-4000-8000-0000000000f0"), ("agenticUserId", "f1f1f1f1-0000-4000-8000-0000000000f1")]
    {
        let mut other = agentic_message(&fake.service_url, AGENT_TENANT);
        other["recipient"][field] = json!(value);
        assert_eq!(app.status(Some(&good), &other).await, 403, "{field}");
    }
    assert!(app.inbox().is_empty(), "a refused activity was stored");

    // Accepted: the v2 issuer, and the v1 (sts.windows.net) one.
    assert_eq!(app.status(Some(&good), &activity).await, 202, "{}", app.stderr());
    let mut v1 = claims(AGENT_TENANT, AGENT_TENANT, format!("api://{BLUEPRINT_ID}").as_str());
    v1["iss"] = json!(format!("https://sts.windows.net/{AGENT_TENANT}/"));
    assert_eq!(app.status(Some(&entra_key.mint(&v1)), &agentic_message(&fake.service_url, AGENT_TENANT)).await, 202);
    let inbox = app.inbox();
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0]["auth"], "entra-agentic");

    // The reply goes out with the Agent User's T3 (the fake refuses anything else), as the agentic user.
    let out = std::process::Command::new(bin())
        .args(["send", "--conversation", "a:agentic-1", "--text", "hello from the agent", "--config"])
        .arg(&app.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while fake.landed().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no reply landed; refused: {:?}\n{}", fake.refused(), app.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let landed = fake.landed();
    assert_eq!(landed[0].body["text"], "hello from the agent");
    assert_eq!(landed[0].body["from"]["role"], "agenticUser");
    assert_eq!(landed[0].body["from"]["id"], AGENT_UPN);
    assert_eq!(entra.hop_requests(), [1, 1, 1], "one three-hop chain for the reply");
    let issued = entra.issued();
    assert!(issued.iter().any(|t| t.scope == AGENTIC_SCOPE), "the T3 was for the agentic scope");
    assert!(fake.seen_tokens().iter().all(|t| t == DEV_TOKEN), "a real token reached the Playground connector");
    let audit = std::process::Command::new(bin()).args(["audit", "--config"]).arg(&app.config).output().unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains(&format!("\"identity\":\"agent_user:{AGENT_USER_OID}\"")) && audit.contains("\"outcome\":\"delivered\""),
        "{audit}"
    );
}

/// A production-mode gateway (`agentgate mcp`, stdio) whose bot acts as its Agent User in agentic
/// conversations; the strict fake Connector is a configured endpoint that knows the Agent User's T3s and
/// holds `from` to them.
struct AgenticSetup {
    _oidc: FakeOidc,
    entra: Arc<FakeEntraAgent>,
    entra_key: TestKey,
    _tenant_keys: TenantKeys,
    fake: FakeConnector,
    gw: crate::mcp_host::StdioGateway,
    host: crate::mcp_host::Host,
}

async fn agentic_setup() -> AgenticSetup {
    let oidc = FakeOidc::start(vec![TestKey::teams("kid", 0)]).await;
    let entra = Arc::new(FakeEntraAgent::start(test_cert(1)).await);
    let entra_key = TestKey::new("entra-kid", 2, None);
    let tenant_keys = TenantKeys::start(&entra_key).await;
    let fake = FakeConnector::start(vec![]).await;
    let e = Arc::clone(&entra);
    fake.accept_identities(Arc::new(move |t: &str| e.check_user_token(t, AGENTIC_SCOPE).map(|i| Identity::AgentUser(i.subject))));
    let dir = tempfile::tempdir().unwrap().keep();
    let mut opts = Options::new(&oidc.metadata_url);
    opts.token_authority = entra.authority();
    opts.connector_endpoints = vec![fake.service_url.clone()];
    opts.extra = "\n[outbound]\npoll_interval_ms = 20\n".into();
    let agent = format!(
        "\n{}\n[bots.agentic]\nenabled = true\nallowed_callers = [\"agent365-platform\"]\nopenid_metadata_url = \"{}/{{tenant}}/v2.0/.well-known/openid-configuration\"\n\n",
        agent_user_toml(&dir, ""),
        tenant_keys.base
    );
    let toml = opts
        .toml(&dir.join("data"))
        .replacen(&format!("allowed_tenants = [\"{TENANT}\"]"), &format!("allowed_tenants = [\"{TENANT}\", \"{AGENT_TENANT}\"]"), 1)
        .replacen(&format!("[[bots]]\napp_id = \"{OTHER_APP_ID}\""), &format!("{agent}[[bots]]\napp_id = \"{OTHER_APP_ID}\""), 1);
    std::fs::write(dir.join("agentgate.toml"), toml).unwrap();
    let (gw, host) = crate::mcp_host::StdioGateway::start(&dir, false, &[], "claude-code").await;
    AgenticSetup { _oidc: oidc, entra, entra_key, _tenant_keys: tenant_keys, fake, gw, host }
}

impl AgenticSetup {
    async fn inbound(&self, activity: &Value) {
        let token = self.entra_key.mint(&claims(AGENT_TENANT, AGENT_TENANT, BLUEPRINT_ID));
        let r = self.gw.post_as(&token, activity).await;
        assert_eq!(r.status(), 202, "{}", self.gw.stderr());
    }
}

// Multi-threaded: the fake Connector keeps serving while this thread waits for the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentic_streams_and_member_listings_act_as_the_agent_user() {
    let t = agentic_setup().await;
    t.inbound(&agentic_message(&t.fake.service_url, AGENT_TENANT)).await;

    // A live stream (MCP) in the agentic 1:1 chat: buffered, one message at the end, as the Agent User.
    let s = t.host.ok("stream_start", json!({"chat_id": "a:agentic-1", "informative": "Looking…"})).await;
    assert_eq!(s["streaming"], false, "{s}");
    let id = s["stream_id"].as_str().unwrap().to_owned();
    for part in ["The answer ", "is ", "forty-two."] {
        t.host.ok("stream_append", json!({"stream_id": id, "text": part})).await;
    }
    let done = t.host.ok("stream_finish", json!({"stream_id": id})).await;
    assert_eq!(done["status"], "delivered", "{done}\n{:?}", t.fake.refused());

    // A queued stream (`send --stream`): the same.
    let queued = crate::protocol::send_stream(&t.gw.config, "a:agentic-1", 50, "queued and buffered");
    let item = crate::protocol::settled(&t.gw.config, queued, Duration::from_secs(20)).await;
    assert_eq!(item["state"], "delivered", "{item}\n{:?}", t.fake.refused());

    // Member listings, by the MCP tool and the command line.
    let members = t.host.ok("list_members", json!({"chat_id": "a:agentic-1"})).await;
    assert_eq!(members["members"][0]["user_id"], "00000000-0000-0000-0000-0000000000aa", "{members}");
    let out = std::process::Command::new(bin())
        .args(["members", "--conversation", "a:agentic-1", "--config"])
        .arg(&t.gw.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    assert!(t.fake.refused().is_empty(), "{:?}", t.fake.refused());
    let landed = t.fake.landed();
    let texts: Vec<&str> = landed.iter().filter_map(|l| l.body["text"].as_str()).collect();
    assert_eq!(texts, ["The answer is forty-two.", "queued and buffered"], "{landed:#?}");
    for l in landed.iter().filter(|l| l.method == "POST") {
        assert_eq!(l.body["type"], "message");
        assert_eq!(l.body["from"]["role"], "agenticUser");
        assert_eq!(l.body["from"]["agenticUserId"], AGENT_USER_OID);
        assert!(!l.body.to_string().contains("streaminfo"), "an agentic stream was streamed: {}", l.body);
    }
    let seen = t.fake.seen_tokens();
    assert_eq!(landed.iter().filter(|l| l.method == "GET").count(), 2, "two member listings");
    assert_eq!(seen.len(), landed.len());
    assert!(seen.iter().all(|s| t.entra.check_user_token(s, AGENTIC_SCOPE).is_some()), "a call without the Agent User's token");
    let audit = std::process::Command::new(bin()).args(["audit", "--config"]).arg(&t.gw.config).output().unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit
            .lines()
            .filter(|l| l.contains("\"action\":\"stream\"") && !l.contains("\"outcome\":\"queued\""))
            .all(|l| l.contains(&format!("agent_user:{AGENT_USER_OID}"))),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_channel_replies_cut_and_sanitise_the_conversation_id_in_the_path() {
    let t = agentic_setup().await;
    // An Agent 365 notification: channel `agents`, a long conversation id with / \ # ?.
    let long = format!("19:notify/{}#x?y\\z", "n".repeat(170));
    let mut m = agentic_message(&t.fake.service_url, AGENT_TENANT);
    m["channelId"] = json!("agents");
    m["conversation"]["id"] = json!(long);
    t.inbound(&m).await;
    // And one on msteams with a long id, which is left alone.
    let teams_long = format!("a:{}", "m".repeat(170));
    let mut m = agentic_message(&t.fake.service_url, AGENT_TENANT);
    m["conversation"]["id"] = json!(teams_long);
    t.inbound(&m).await;

    let r = t.host.ok("reply", json!({"chat_id": long, "text": "noted"})).await;
    assert_eq!(r["status"], "delivered", "{r}\n{:?}", t.fake.refused());
    let r = t.host.ok("reply", json!({"chat_id": teams_long, "text": "also noted"})).await;
    assert_eq!(r["status"], "delivered", "{r}\n{:?}", t.fake.refused());

    let landed = t.fake.landed();
    let expected: String = long.chars().take(150).map(|c| if "/\\#?".contains(c) { '_' } else { c }).collect();
    assert_eq!(expected.len(), 150);
    assert_eq!(landed[0].conversation.as_deref(), Some(expected.as_str()), "the path's conversation id");
    assert_eq!(landed[0].body["conversation"]["id"], long.as_str(), "the body keeps the full id");
    assert_eq!(landed[1].conversation.as_deref(), Some(teams_long.as_str()));
    assert!(t.fake.refused().is_empty(), "{:?}", t.fake.refused());
}
