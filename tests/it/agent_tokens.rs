//! The Agent User three-hop chain against the strict fake: the wire format of each hop, single-flight
//! caching under concurrency, refresh on expiry, errors that name the hop, retries, and redaction.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentgate::entra::{
    AccessToken, AgentTokenChain, AgentTokenError, AgentUser, AgentUserConfig, AgentUserTokens, Authority, CertificateCredential, Clock,
    Hop, RetryPolicy, TokenClient, TokenClientSettings,
};
use agentgate::graph::{GraphClient, GraphSettings};
use agentgate::secrets::ExposeSecret;

use crate::fake_entra::{Injected, test_cert};
use crate::fake_entra_agent::*;

/// A clock the test moves by hand.
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(SystemTime::now())))
    }
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

fn settings() -> TokenClientSettings {
    TokenClientSettings {
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(5),
        },
        refresh_before_expiry: Duration::from_secs(300),
    }
}

pub struct Chain {
    pub fake: FakeEntraAgent,
    pub clock: Arc<ManualClock>,
    pub tokens: Arc<AgentUserTokens>,
}

impl Chain {
    pub async fn start(user: AgentUser) -> Self {
        let cert = test_cert(1);
        let fake = FakeEntraAgent::start(cert).await;
        let clock = ManualClock::new();
        let client = Arc::new(TokenClient::new(settings()).unwrap().with_clock(clock.clone()));
        let credential = CertificateCredential::from_pem(cert.key_pem.as_bytes(), cert.cert_pem.as_bytes(), false).unwrap();
        let chain = Arc::new(AgentTokenChain::new(client, Authority::parse(&fake.authority()).unwrap(), BLUEPRINT_ID, credential));
        let tokens = Arc::new(AgentUserTokens::new(chain, AGENT_TENANT, IDENTITY_ID, user));
        Self { fake, clock, tokens }
    }

    /// Move both the client's clock and the fake's.
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.fake.advance(by);
    }
}

async fn concurrently(tokens: &Arc<AgentUserTokens>, n: usize) -> Vec<Result<AccessToken, AgentTokenError>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let t = Arc::clone(tokens);
        set.spawn(async move { t.graph_token().await });
    }
    set.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_callers_on_a_cold_cache_cause_exactly_three_requests_and_a_warm_cache_none() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.set_delay(Duration::from_millis(100));

    let results = concurrently(&c.tokens, 50).await;
    let tokens: Vec<String> = results.into_iter().map(|r| r.unwrap().value.expose_secret().to_owned()).collect();
    assert_eq!(c.fake.hop_requests(), [1, 1, 1], "refusals: {:?}", c.fake.refusals());
    assert!(tokens.iter().all(|t| *t == tokens[0]), "every caller shares the one T3");
    assert!(c.fake.check_user_token(&tokens[0], GRAPH_SCOPE).is_some());

    let _ = concurrently(&c.tokens, 50).await;
    assert_eq!(c.fake.requests(), 3, "a warm cache sends nothing");
    assert_eq!(c.tokens.chain().requests_sent(), 3);
}

#[tokio::test]
async fn each_hop_sends_exactly_the_documented_fields() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    let t3 = c.tokens.graph_token().await.unwrap();
    let issued = c.fake.issued();
    let (t1, t2) = (&issued[0], &issued[1]);
    assert_eq!((t1.hop, t2.hop, issued[2].hop), (FakeHop::One, FakeHop::Two, FakeHop::Three));
    assert_eq!(issued[2].token, t3.value.expose_secret());

    let forms = c.fake.forms();
    let hop1 = &forms[0].1;
    assert_eq!(hop1["grant_type"], "client_credentials");
    assert_eq!(hop1["client_id"], BLUEPRINT_ID);
    assert_eq!(hop1["scope"], EXCHANGE_SCOPE);
    assert_eq!(hop1["fmi_path"], IDENTITY_ID);
    assert!(!hop1.contains_key("client_secret"));
    let hop2 = &forms[1].1;
    assert_eq!(hop2["client_id"], IDENTITY_ID);
    assert_eq!(hop2["client_assertion"], t1.token);
    assert!(!hop2.contains_key("fmi_path"));
    let hop3 = &forms[2].1;
    assert_eq!(hop3["grant_type"], "user_fic");
    assert_eq!(hop3["client_id"], IDENTITY_ID);
    assert_eq!(hop3["client_assertion"], t1.token, "hop 3 presents T1, not T2");
    assert_eq!(hop3["user_federated_identity_credential"], t2.token);
    assert_eq!(hop3["user_id"], AGENT_USER_OID);
    assert_eq!(hop3["scope"], GRAPH_SCOPE);

    // Another resource reuses T1 and T2: one more request, hop 3 only.
    c.tokens.agentic_token().await.unwrap();
    assert_eq!(c.fake.hop_requests(), [1, 1, 2]);
    assert_eq!(c.fake.forms()[3].1["scope"], AGENTIC_SCOPE);
}

#[tokio::test]
async fn a_upn_is_sent_as_username() {
    let c = Chain::start(AgentUser::Upn(AGENT_USER_UPN.into())).await;
    c.tokens.graph_token().await.unwrap();
    let hop3 = &c.fake.forms()[2].1;
    assert_eq!(hop3["username"], AGENT_USER_UPN);
    assert!(!hop3.contains_key("user_id"));

    let wrong = Chain::start(AgentUser::Upn("someone@else.test".into())).await;
    let e = wrong.tokens.graph_token().await.unwrap_err();
    assert_eq!(e.hop, Hop::AgentUser);
    assert_eq!(e.aadsts_codes(), &[50034]);
    assert!(e.to_string().contains("agent_user_upn"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_causes_exactly_one_refresh_chain() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.set_expires_in(3600, 3600, 3600);
    let old = c.tokens.graph_token().await.unwrap();
    assert_eq!(c.fake.requests(), 3);

    c.advance(Duration::from_secs(3600 - 301)); // 5 min 1 s left: cached
    c.tokens.graph_token().await.unwrap();
    assert_eq!(c.fake.requests(), 3);

    c.advance(Duration::from_secs(2)); // inside the 5-minute window: one chain for 50 callers
    c.fake.set_delay(Duration::from_millis(100));
    let results = concurrently(&c.tokens, 50).await;
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(c.fake.hop_requests(), [2, 2, 2]);
    let new = c.tokens.graph_token().await.unwrap();
    assert_ne!(new.value.expose_secret(), old.value.expose_secret());
    assert_eq!(c.fake.requests(), 6);
}

#[tokio::test]
async fn a_short_lived_t3_is_refreshed_alone() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.set_expires_in(3600, 3600, 600);
    c.tokens.graph_token().await.unwrap();
    c.advance(Duration::from_secs(301)); // T3 (600 s) refreshes after 300 s; T1 and T2 stay cached
    c.tokens.graph_token().await.unwrap();
    assert_eq!(c.fake.hop_requests(), [1, 1, 2]);
    let hop3 = &c.fake.forms()[3].1;
    assert_eq!(hop3["client_assertion"], c.fake.issued()[0].token, "the cached T1 is reused");
}

#[tokio::test]
async fn failures_name_the_hop_and_the_fix_even_with_http_200() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.inject(
        FakeHop::Two,
        [Injected::Error {
            status: 200,
            error: "invalid_request".into(),
            code: 700211,
            description: "AADSTS700211: No matching federated identity record found for presented assertion issuer.".into(),
        }],
    );
    let e = c.tokens.graph_token().await.unwrap_err();
    assert_eq!(e.hop, Hop::AgentIdentity);
    let shown = e.to_string();
    assert!(shown.starts_with("hop 2 (Agent Identity → T2) failed"), "{shown}");
    assert!(shown.contains("AADSTS700211") && shown.contains("agent_identity_id"), "{shown}");
    assert_eq!(c.fake.hop_requests(), [1, 1, 0], "a permanent error is not retried");

    // The cached T1 survives; the next call retries from hop 2.
    c.tokens.graph_token().await.unwrap();
    assert_eq!(c.fake.hop_requests(), [1, 2, 1]);

    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.inject(FakeHop::One, [Injected::aadsts(401, 700027)]);
    let e = c.tokens.graph_token().await.unwrap_err();
    assert_eq!(e.hop, Hop::Blueprint);
    assert!(e.to_string().contains("hop 1 (Blueprint → T1)") && e.to_string().contains("`certificate`"), "{e}");

    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.revoke_consent(GRAPH_SCOPE);
    let e = c.tokens.graph_token().await.unwrap_err();
    assert_eq!(e.hop, Hop::AgentUser);
    assert_eq!(e.aadsts_codes(), &[65001]);
    assert!(e.to_string().contains("consent"), "{e}");
    // No token or assertion in the error.
    for t in c.fake.issued() {
        assert!(!e.to_string().contains(&t.token) && !format!("{e:?}").contains(&t.token));
    }
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_within_the_budget() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.inject(FakeHop::One, [Injected::TooManyRequests(Some("0".into()))]);
    c.fake.inject(FakeHop::Three, [Injected::Status(503), Injected::temporarily_unavailable()]);
    c.tokens.graph_token().await.unwrap();
    assert_eq!(c.fake.hop_requests(), [2, 1, 3]);

    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.inject(FakeHop::Three, [Injected::Status(502), Injected::Status(502), Injected::Status(502)]);
    let e = c.tokens.graph_token().await.unwrap_err();
    assert_eq!(e.hop, Hop::AgentUser);
    assert!(e.is_transient());
    assert!(e.to_string().contains("HTTP 502"), "{e}");
}

#[tokio::test]
async fn invalidate_drops_only_the_user_token() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    let a = c.tokens.graph_token().await.unwrap();
    c.tokens.invalidate(GRAPH_SCOPE);
    let b = c.tokens.graph_token().await.unwrap();
    assert_ne!(a.value.expose_secret(), b.value.expose_secret());
    assert_eq!(c.fake.hop_requests(), [1, 1, 2]);

    c.tokens.agentic_token().await.unwrap();
    assert_eq!(c.fake.hop_requests(), [1, 1, 3]);
    c.tokens.chain().invalidate_all(AGENT_TENANT, IDENTITY_ID);
    c.tokens.graph_token().await.unwrap();
    c.tokens.agentic_token().await.unwrap();
    assert_eq!(c.fake.hop_requests(), [2, 2, 5], "the whole chain again, once for both scopes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_with_a_valid_token_do_not_wait_for_a_refresh() {
    let c = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    c.fake.set_expires_in(3600, 3600, 3600);
    let old = c.tokens.graph_token().await.unwrap();
    c.advance(Duration::from_secs(3400)); // refresh due, token valid ~200 s more
    c.fake.set_delay(Duration::from_millis(500));
    let refresher = {
        let t = Arc::clone(&c.tokens);
        tokio::spawn(async move { t.graph_token().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = std::time::Instant::now();
    let meanwhile = c.tokens.graph_token().await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(300), "{:?}", start.elapsed());
    assert_eq!(meanwhile.value.expose_secret(), old.value.expose_secret());
    let fresh = refresher.await.unwrap().unwrap();
    assert_ne!(fresh.value.expose_secret(), old.value.expose_secret());
    assert_eq!(c.fake.hop_requests(), [2, 2, 2]);
}

#[tokio::test]
async fn config_loads_the_key_from_a_0600_file_and_nothing_secret_is_printed() {
    use std::os::unix::fs::PermissionsExt as _;
    let cert = test_cert(1);
    let fake = FakeEntraAgent::start(cert).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("blueprint.key");
    let crt = dir.path().join("blueprint.crt");
    std::fs::write(&key, &cert.key_pem).unwrap();
    std::fs::write(&crt, &cert.cert_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg: AgentUserConfig = toml::from_str(&format!(
        "tenant_id = \"{AGENT_TENANT}\"\nblueprint_app_id = \"{BLUEPRINT_ID}\"\nagent_identity_id = \"{IDENTITY_ID}\"\nagent_user_id = \"{AGENT_USER_OID}\"\ncertificate = \"file:{}\"\nkey = \"file:{}\"\n",
        crt.display(),
        key.display()
    ))
    .unwrap();
    let client = Arc::new(TokenClient::new(settings()).unwrap());
    let authority = Authority::parse(&fake.authority()).unwrap();
    let e = AgentUserTokens::from_config(&cfg, "bots[0].agent_user", authority.clone(), Arc::clone(&client)).await.unwrap_err();
    assert_eq!(e.field(), Some("bots[0].agent_user.key"));
    assert!(e.to_string().contains("chmod 600"), "{e}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tokens = AgentUserTokens::from_config(&cfg, "bots[0].agent_user", authority.clone(), Arc::clone(&client)).await.unwrap();
    let t = tokens.graph_token().await.unwrap();
    let graph = GraphClient::for_agent_user(Arc::new(tokens.clone()), GraphSettings::default()).unwrap();
    assert_eq!(graph.endpoint().base(), "https://graph.microsoft.com/v1.0");
    let mut us = cfg.clone();
    us.graph_base_url = Some("https://graph.microsoft.us/v1.0".into());
    let us = AgentUserTokens::from_config(&us, "bots[0].agent_user", authority, client).await.unwrap();
    assert_eq!(
        GraphClient::for_agent_user(Arc::new(us), GraphSettings::default()).unwrap().endpoint().base(),
        "https://graph.microsoft.us/v1.0"
    );
    let shown = format!("{tokens:?} {t:?}");
    assert!(!shown.contains("PRIVATE KEY") && !shown.contains(t.value.expose_secret()), "{shown}");
    for issued in fake.issued() {
        assert!(!shown.contains(&issued.token));
    }
}
