//! Outbound bot credentials against the strict fake Entra token endpoint: client secrets and
//! certificate assertions, AADSTS errors with hints, retries, and the single-flight token cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use agentgate::config::BotConfig;
use agentgate::entra::{
    AccessToken, Authority, BotTokenProvider, CertificateCredential, ClientCredential, Clock, RetryPolicy, TokenClient,
    TokenClientSettings, TokenError, TokenRequest,
};
use agentgate::secrets::{ExposeSecret, SecretString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::fake_entra::{ASSERTION_TYPE, BOT_SCOPE, BOTFRAMEWORK_TENANT, FakeApp, FakeEntra, Injected, TestCert, test_cert};
use crate::helpers::{APP_ID, OTHER_APP_ID, OTHER_TENANT, TENANT, now};

const SECRET: &str = "Zx8Q~s3cr3t-value-that-must-never-be-logged";

// ---------------------------------------------------------------- fixtures

/// Small, fast retries for tests.
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

fn client() -> Arc<TokenClient> {
    Arc::new(TokenClient::new(settings()).unwrap())
}

/// A file with mode 0600 holding `content`.
fn private_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A bot table as in the config file, plus `extra` lines.
fn bot(extra: &str) -> BotConfig {
    toml::from_str(&format!("app_id = \"{APP_ID}\"\nallowed_tenants = [\"{TENANT}\"]\n{extra}")).unwrap()
}

struct Setup {
    fake: FakeEntra,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(apps: Vec<FakeApp>) -> Self {
        Self { fake: FakeEntra::start(apps).await, dir: tempfile::tempdir().unwrap() }
    }

    fn authority(&self) -> Authority {
        Authority::parse(&self.fake.authority()).unwrap()
    }

    /// A single-tenant secret bot (tenant `TENANT`) whose secret file holds `secret`.
    async fn secret_bot(&self, secret: &str, client: Arc<TokenClient>) -> BotTokenProvider {
        let path = private_file(self.dir.path(), "secret", &format!("{secret}\n"));
        let cfg = bot(&format!("tenant_id = \"{TENANT}\"\ncredential = \"file:{}\"", path.display()));
        BotTokenProvider::from_config(&cfg, Some(&self.authority()), client).await.unwrap()
    }

    /// A single-tenant certificate bot using `cert`'s key and certificate files.
    async fn cert_bot(&self, cert: &TestCert, send_x5c: bool, client: Arc<TokenClient>) -> BotTokenProvider {
        let key = private_file(self.dir.path(), "bot.key", &cert.key_pem);
        let crt = self.dir.path().join("bot.crt");
        std::fs::write(&crt, &cert.cert_pem).unwrap(); // a certificate is public: 0644 is fine
        let cfg = bot(&format!(
            "tenant_id = \"{TENANT}\"\ncredential = \"file:{}\"\ncertificate = \"file:{}\"\nsend_x5c = {send_x5c}",
            key.display(),
            crt.display()
        ));
        BotTokenProvider::from_config(&cfg, Some(&self.authority()), client).await.unwrap()
    }
}

/// A clock the test moves by hand.
struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(SystemTime::now())))
    }
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

/// Call `bot_token` from `n` tasks at once.
async fn concurrently(provider: &Arc<BotTokenProvider>, n: usize) -> Vec<Result<AccessToken, TokenError>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let p = Arc::clone(provider);
        set.spawn(async move { p.bot_token().await });
    }
    set.join_all().await
}

/// Nothing secret in `text`.
fn assert_clean(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "a secret leaked into: {text}");
    }
}

// ---------------------------------------------------------------- success paths

#[tokio::test]
async fn client_secret_gets_a_token_the_fake_issued() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    let token = provider.bot_token().await.unwrap();
    let issued = t.fake.check_bearer(token.value.expose_secret()).expect("a token the fake issued");
    assert_eq!((issued.client_id.as_str(), issued.tenant.as_str(), issued.scope.as_str()), (APP_ID, TENANT, BOT_SCOPE));
    assert_eq!(issued.credential, "secret");
    let left = token.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3599), "{left:?}");
    // Cached: no second request.
    provider.bot_token().await.unwrap();
    assert_eq!(t.fake.requests(), 1);
}

#[tokio::test]
async fn certificate_assertion_gets_a_token() {
    let cert = test_cert(0);
    let t = Setup::new(vec![FakeApp::with_certificate(APP_ID, TENANT, cert)]).await;
    let provider = t.cert_bot(cert, false, client()).await;
    let token = provider.bot_token().await.unwrap();
    let issued = t.fake.check_bearer(token.value.expose_secret()).unwrap();
    assert_eq!(issued.credential, "certificate");
    assert!(t.fake.refusals().is_empty());
}

#[tokio::test]
async fn certificate_assertion_with_x5c_gets_a_token() {
    let cert = test_cert(1);
    let t = Setup::new(vec![FakeApp::with_certificate(APP_ID, TENANT, cert)]).await;
    let provider = t.cert_bot(cert, true, client()).await;
    provider.bot_token().await.unwrap();
    assert_eq!(t.fake.issued(), 1);
}

#[tokio::test]
async fn legacy_multi_tenant_bot_asks_botframework_com() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET).also_in(BOTFRAMEWORK_TENANT)]).await;
    let path = private_file(t.dir.path(), "secret", SECRET);
    let cfg = bot(&format!("credential = \"file:{}\"", path.display()));
    let provider = BotTokenProvider::from_config(&cfg, Some(&t.authority()), client()).await.unwrap();
    assert_eq!(provider.request().endpoint.as_str(), t.fake.token_url(BOTFRAMEWORK_TENANT));
    provider.bot_token().await.unwrap();
    assert_eq!(t.fake.issued_tokens()[0].tenant, BOTFRAMEWORK_TENANT);
}

#[tokio::test]
async fn default_endpoint_and_scope_follow_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let path = private_file(dir.path(), "secret", SECRET);
    let cfg = bot(&format!("credential = \"file:{}\"\ncloud = \"usgov\"", path.display()));
    let provider = BotTokenProvider::from_config(&cfg, None, client()).await.unwrap();
    let req = provider.request();
    assert_eq!(req.endpoint.as_str(), "https://login.microsoftonline.us/MicrosoftServices.onmicrosoft.us/oauth2/v2.0/token");
    assert_eq!(req.scope, "https://api.botframework.us/.default");
    // A plain-http authority that is not loopback is refused before any credential could be sent.
    assert!(Authority::parse("http://login.example.test").is_err());
}

// ---------------------------------------------------------------- refusals, surfaced with hints

#[tokio::test]
async fn wrong_secret_is_refused_once_with_a_hint_and_never_shown() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let wrong = "Zx8Q~wrong-secret-value-also-never-logged";
    let provider = t.secret_bot(wrong, client()).await;
    let e = provider.bot_token().await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.aadsts_codes(), [7000215]);
    assert!(msg.contains("invalid_client") && msg.contains("AADSTS7000215") && msg.contains("hint: invalid client secret"), "{msg}");
    assert!(msg.contains("trace id"), "{msg}");
    assert_eq!(t.fake.requests(), 1, "invalid_client must not be retried");
    assert_clean(&msg, &[wrong, SECRET]);
    assert_clean(&format!("{e:?}"), &[wrong, SECRET]);
    assert_clean(&format!("{provider:?}"), &[wrong, SECRET]);
}

#[tokio::test]
async fn wrong_tenant_gives_700016_with_the_tenant_hint() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET), FakeApp::with_secret(OTHER_APP_ID, OTHER_TENANT, "x")]).await;
    let path = private_file(t.dir.path(), "secret", SECRET);
    let cfg = bot(&format!("tenant_id = \"{OTHER_TENANT}\"\ncredential = \"file:{}\"", path.display()));
    let provider = BotTokenProvider::from_config(&cfg, Some(&t.authority()), client()).await.unwrap();
    let e = provider.bot_token().await.unwrap_err();
    assert_eq!(e.aadsts_codes(), [700016]);
    assert!(e.to_string().contains("tenant_id"), "{e}");
    assert_eq!(t.fake.requests(), 1);

    // An unknown tenant altogether.
    let cfg = bot(&format!("tenant_id = \"cccccccc-0000-0000-0000-000000000003\"\ncredential = \"file:{}\"", path.display()));
    let provider = BotTokenProvider::from_config(&cfg, Some(&t.authority()), client()).await.unwrap();
    let e = provider.bot_token().await.unwrap_err();
    assert_eq!(e.aadsts_codes(), [90002]);
    assert!(e.to_string().contains("hint: the tenant"), "{e}");
}

#[tokio::test]
async fn unregistered_certificate_is_refused_with_700027() {
    let t = Setup::new(vec![FakeApp::with_certificate(APP_ID, TENANT, test_cert(0))]).await;
    // A valid key/certificate pair, but not the one registered on the app.
    let provider = t.cert_bot(test_cert(2), false, client()).await;
    let e = provider.bot_token().await.unwrap_err();
    assert_eq!(e.aadsts_codes(), [700027]);
    assert!(e.to_string().contains("upload this certificate"), "{e}");
    assert_eq!(t.fake.requests(), 1);
    assert_clean(&format!("{e} {e:?} {provider:?}"), &["PRIVATE KEY", &test_cert(2).key_pem[40..80]]);
}

#[tokio::test]
async fn aadsts_error_with_http_200_is_an_error() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    t.fake.inject([Injected::aadsts(200, 7000222)]);
    let e = provider.bot_token().await.unwrap_err();
    let detail = e.entra().expect("an Entra refusal");
    assert_eq!((detail.status, detail.error.as_str()), (200, "invalid_client"));
    assert!(e.to_string().contains("AADSTS7000222") && e.to_string().contains("has expired"), "{e}");
    assert_eq!(t.fake.requests(), 1);
}

#[tokio::test]
async fn aadsts_error_with_http_400_is_surfaced() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    for (code, hint) in [(7000112, "disabled"), (50049, "authority")] {
        t.fake.inject([Injected::aadsts(400, code)]);
        let e = provider.bot_token().await.unwrap_err();
        assert_eq!(e.aadsts_codes(), [code]);
        assert!(e.to_string().contains(hint), "{e}");
    }
    assert_eq!(t.fake.requests(), 2);
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn throttling_with_retry_after_seconds_is_honoured() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    t.fake.inject([Injected::TooManyRequests(Some("1".into()))]);
    let started = Instant::now();
    provider.bot_token().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(t.fake.requests(), 2);
}

#[tokio::test]
async fn throttling_with_retry_after_http_date_is_honoured() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    t.fake.inject([Injected::TooManyRequests(Some(when))]);
    let started = Instant::now();
    provider.bot_token().await.unwrap();
    // HTTP dates have one-second resolution: at least one second is waited.
    assert!(started.elapsed() >= Duration::from_millis(1000), "{:?}", started.elapsed());
    assert_eq!(t.fake.requests(), 2);
}

#[tokio::test]
async fn retry_after_beyond_the_budget_fails_at_once() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    t.fake.inject([Injected::TooManyRequests(Some("3600".into()))]);
    let started = Instant::now();
    let e = provider.bot_token().await.unwrap_err();
    assert!(matches!(e, TokenError::Status { status: 429, .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(t.fake.requests(), 1);
}

#[tokio::test]
async fn server_errors_and_temporarily_unavailable_are_retried() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    t.fake.inject([Injected::Status(500), Injected::temporarily_unavailable()]);
    provider.bot_token().await.unwrap();
    assert_eq!(t.fake.requests(), 3);
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    t.fake.inject([Injected::Status(502), Injected::Status(503), Injected::Status(504), Injected::Status(500)]);
    let e = provider.bot_token().await.unwrap_err();
    assert!(matches!(e, TokenError::Status { status: 504, .. }), "{e}");
    assert_eq!(t.fake.requests(), 3);
}

#[tokio::test]
async fn invalid_client_is_never_retried_even_with_a_5xx_status() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    t.fake.inject([Injected::Error {
        status: 500,
        error: "invalid_client".into(),
        code: 7000215,
        description: "AADSTS7000215: Invalid client secret provided.".into(),
    }]);
    assert!(provider.bot_token().await.is_err());
    assert_eq!(t.fake.requests(), 1);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_reported() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client();
    let endpoint = Authority::parse(&format!("http://127.0.0.1:{port}")).unwrap().token_endpoint(TENANT).unwrap();
    let req = TokenRequest::new(APP_ID, endpoint, BOT_SCOPE, Arc::new(ClientCredential::Secret(SecretString::from(SECRET))));
    let e = c.token(&req).await.unwrap_err();
    assert!(matches!(e, TokenError::Unreachable { .. }), "{e}");
    assert_eq!(c.requests_sent(), 3);
    assert_clean(&format!("{e} {e:?} {req:?}"), &[SECRET]);
}

// ---------------------------------------------------------------- the cache

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_callers_on_a_cold_cache_make_one_request_and_a_warm_cache_none() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = Arc::new(t.secret_bot(SECRET, client()).await);
    t.fake.set_delay(Duration::from_millis(200));
    let results = concurrently(&provider, 50).await;
    let first = results[0].as_ref().unwrap().value.expose_secret().to_owned();
    assert!(results.iter().all(|r| r.as_ref().unwrap().value.expose_secret() == first));
    assert_eq!(t.fake.requests(), 1, "cold cache");
    concurrently(&provider, 50).await.into_iter().for_each(|r| assert!(r.is_ok()));
    assert_eq!(t.fake.requests(), 1, "warm cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_callers_share_one_failure() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = Arc::new(t.secret_bot(SECRET, client()).await);
    t.fake.set_delay(Duration::from_millis(500));
    t.fake.inject([Injected::aadsts(401, 7000215)]);
    let results = concurrently(&provider, 50).await;
    assert!(results.iter().all(|r| r.as_ref().is_err_and(|e| e.aadsts_codes() == [7000215])));
    assert_eq!(t.fake.requests(), 1);
    // The failure is not cached: the next call asks again (and now succeeds).
    provider.bot_token().await.unwrap();
    assert_eq!(t.fake.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_within_five_minutes_of_expiry_is_refreshed_exactly_once() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let clock = ManualClock::new();
    let c = Arc::new(TokenClient::new(settings()).unwrap().with_clock(clock.clone()));
    let provider = Arc::new(t.secret_bot(SECRET, c).await);
    t.fake.set_expires_in(3600);
    let old = provider.bot_token().await.unwrap();

    clock.advance(Duration::from_secs(3600 - 301)); // 5 min 1 s left: still served from the cache
    provider.bot_token().await.unwrap();
    assert_eq!(t.fake.requests(), 1);

    clock.advance(Duration::from_secs(2)); // 4 min 59 s left: refresh, once
    t.fake.set_delay(Duration::from_millis(200));
    let results = concurrently(&provider, 50).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(t.fake.requests(), 2);
    let new = provider.bot_token().await.unwrap();
    assert_ne!(new.value.expose_secret(), old.value.expose_secret());
    assert!(t.fake.check_bearer(new.value.expose_secret()).is_some());
    assert_eq!(t.fake.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_makes_every_caller_wait_for_one_refresh() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let clock = ManualClock::new();
    let c = Arc::new(TokenClient::new(settings()).unwrap().with_clock(clock.clone()));
    let provider = Arc::new(t.secret_bot(SECRET, c).await);
    let old = provider.bot_token().await.unwrap();
    clock.advance(Duration::from_secs(3600));
    t.fake.set_delay(Duration::from_millis(200));
    let results = concurrently(&provider, 50).await;
    assert_eq!(t.fake.requests(), 2);
    for r in results {
        assert_ne!(r.unwrap().value.expose_secret(), old.value.expose_secret(), "an expired token was served");
    }
}

#[tokio::test]
async fn a_failed_refresh_serves_the_still_valid_token() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let clock = ManualClock::new();
    let c = Arc::new(TokenClient::new(settings()).unwrap().with_clock(clock.clone()));
    let provider = t.secret_bot(SECRET, c).await;
    let old = provider.bot_token().await.unwrap();
    clock.advance(Duration::from_secs(3400)); // in the refresh window, still valid for ~200 s
    t.fake.inject([Injected::Status(503), Injected::Status(503), Injected::Status(503)]);
    let served = provider.bot_token().await.unwrap();
    assert_eq!(served.value.expose_secret(), old.value.expose_secret());
    assert_eq!(t.fake.requests(), 4);
    // Not hammered: the next call within a few seconds does not try again.
    provider.bot_token().await.unwrap();
    assert_eq!(t.fake.requests(), 4);
}

#[tokio::test]
async fn invalidate_forces_a_new_token() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    let a = provider.bot_token().await.unwrap();
    provider.invalidate();
    let b = provider.bot_token().await.unwrap();
    assert_ne!(a.value.expose_secret(), b.value.expose_secret());
    assert_eq!(t.fake.requests(), 2);
}

#[tokio::test]
async fn tokens_are_cached_per_app_and_tenant() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET).also_in(OTHER_TENANT)]).await;
    let c = client();
    let credential = Arc::new(ClientCredential::Secret(SecretString::from(SECRET)));
    let req = |tenant: &str| TokenRequest::new(APP_ID, t.authority().token_endpoint(tenant).unwrap(), BOT_SCOPE, Arc::clone(&credential));
    c.token(&req(TENANT)).await.unwrap();
    c.token(&req(OTHER_TENANT)).await.unwrap();
    c.token(&req(TENANT)).await.unwrap();
    c.token(&req(OTHER_TENANT)).await.unwrap();
    assert_eq!(t.fake.requests(), 2);
}

// ---------------------------------------------------------------- redaction

#[tokio::test]
async fn secrets_tokens_and_keys_never_show_in_debug_or_errors() {
    let cert = test_cert(0);
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let provider = t.secret_bot(SECRET, client()).await;
    let token = provider.bot_token().await.unwrap();
    let value = token.value.expose_secret().to_owned();
    let key_body = &cert.key_pem[40..100];
    let cred = CertificateCredential::from_pem(cert.key_pem.as_bytes(), cert.cert_pem.as_bytes(), true).unwrap();
    let shown = format!("{token:?} {provider:?} {:?} {:?}", ClientCredential::Certificate(cred.clone()), provider.request());
    assert_clean(&shown, &[SECRET, &value, key_body]);
    let assertion = cred.client_assertion(APP_ID, &t.fake.token_url(TENANT)).unwrap();
    assert_clean(&format!("{assertion:?}"), &[assertion.expose_secret()]);
}

// ---------------------------------------------------------------- configuration errors name the field

#[tokio::test]
async fn credential_problems_name_the_config_field() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let cfg = bot("");
    let e = BotTokenProvider::from_config(&cfg, None, Arc::clone(&c)).await.unwrap_err();
    assert_eq!(e.field(), Some("credential"));
    assert!(e.to_string().contains(APP_ID), "{e}");

    let missing = dir.path().join("missing.pem");
    let cfg = bot(&format!("credential = \"file:{}\"", missing.display()));
    let e = BotTokenProvider::from_config(&cfg, None, Arc::clone(&c)).await.unwrap_err();
    assert_eq!(e.field(), Some("credential"));
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let key = private_file(dir.path(), "key.pem", &test_cert(0).key_pem);
    let crt = dir.path().join("other.crt");
    std::fs::write(&crt, &test_cert(1).cert_pem).unwrap();
    let cfg = bot(&format!("credential = \"file:{}\"\ncertificate = \"file:{}\"", key.display(), crt.display()));
    let e = BotTokenProvider::from_config(&cfg, None, Arc::clone(&c)).await.unwrap_err();
    assert_eq!(e.field(), Some("credential"));
    assert!(e.to_string().contains("does not belong to the certificate"), "{e}");

    let cfg = bot(&format!("credential = \"file:{}\"\ncertificate = \"file:{}\"", key.display(), dir.path().join("nope.crt").display()));
    let e = BotTokenProvider::from_config(&cfg, None, Arc::clone(&c)).await.unwrap_err();
    assert_eq!(e.field(), Some("certificate"));

    // A PEM key given without `certificate` is a mistake, not a client secret.
    let cfg = bot(&format!("credential = \"file:{}\"", key.display()));
    let e = BotTokenProvider::from_config(&cfg, None, c).await.unwrap_err();
    assert!(e.to_string().contains("set `certificate`"), "{e}");
    assert_clean(&format!("{e} {e:?}"), &[&test_cert(0).key_pem[40..100]]);
}

// ---------------------------------------------------------------- the fake is strict

/// An assertion for the fake, signed with `cert`'s key; `edit` changes the header and claims first.
fn assertion(cert: &TestCert, aud: &str, edit: impl FnOnce(&mut Header, &mut Value)) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.x5t_s256 = Some(cert.x5t_s256());
    h.x5t = Some(cert.x5t());
    let mut claims = json!({"aud": aud, "iss": APP_ID, "sub": APP_ID, "jti": format!("{:032x}", fastrand::u128(..)), "nbf": now(), "iat": now(), "exp": now() + 600});
    edit(&mut h, &mut claims);
    let key = EncodingKey::from_rsa_pem(cert.key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

async fn post_form(url: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    let r = reqwest::Client::new().post(url).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_assertion(url: &str, a: &str) -> (u16, Value) {
    post_form(
        url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", APP_ID),
            ("scope", BOT_SCOPE),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", a),
        ],
    )
    .await
}

#[tokio::test]
async fn the_fake_checks_every_assertion_field() {
    let cert = test_cert(0);
    let t = Setup::new(vec![FakeApp::with_certificate(APP_ID, TENANT, cert)]).await;
    let url = t.fake.token_url(TENANT);
    let good = assertion(cert, &url, |_, _| {});
    assert_eq!(post_assertion(&url, &good).await.0, 200, "the baseline assertion must pass");
    let (status, body) = post_assertion(&url, &good).await;
    assert_eq!(status, 401, "a replayed jti must be refused");
    assert!(body["error_description"].as_str().unwrap().contains("replay"), "{body}");

    let other = test_cert(1);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "signed by another key",
            {
                assertion(other, &url, |h, _| {
                    h.x5t_s256 = Some(cert.x5t_s256());
                    h.x5t = Some(cert.x5t());
                })
            },
            "signature validation",
        ),
        ("another certificate's x5t#S256", assertion(cert, &url, |h, _| h.x5t_s256 = Some(other.x5t_s256())), "not registered"),
        ("no x5t#S256", assertion(cert, &url, |h, _| h.x5t_s256 = None), "not registered"),
        ("SHA-256 in x5t", assertion(cert, &url, |h, _| h.x5t = Some(cert.x5t_s256())), "x5t header"),
        (
            "x5c of another certificate",
            assertion(cert, &url, |h, _| h.x5c = Some(vec![base64::engine::general_purpose::STANDARD.encode(&other.der)])),
            "x5c chain",
        ),
        ("aud of another tenant", assertion(cert, &t.fake.token_url(OTHER_TENANT), |_, _| {}), "audience"),
        ("aud = the authority", assertion(cert, &t.fake.authority(), |_, _| {}), "audience"),
        ("iss not the client", assertion(cert, &url, |_, c| c["iss"] = json!(OTHER_APP_ID)), "(iss)"),
        ("sub not the client", assertion(cert, &url, |_, c| c["sub"] = json!(OTHER_APP_ID)), "(sub)"),
        ("no exp", assertion(cert, &url, |_, c| drop(c.as_object_mut().unwrap().remove("exp"))), "no expiry"),
        ("exp too far", assertion(cert, &url, |_, c| c["exp"] = json!(now() + 3600)), "valid time range"),
        ("expired", assertion(cert, &url, |_, c| c["exp"] = json!(now() - 10)), "valid time range"),
        ("nbf in the future", assertion(cert, &url, |_, c| c["nbf"] = json!(now() + 120)), "valid time range"),
        ("no nbf", assertion(cert, &url, |_, c| drop(c.as_object_mut().unwrap().remove("nbf"))), "no nbf"),
        ("no jti", assertion(cert, &url, |_, c| drop(c.as_object_mut().unwrap().remove("jti"))), "no jti"),
        (
            "HS256",
            {
                let mut h = Header::new(Algorithm::HS256);
                h.x5t_s256 = Some(cert.x5t_s256());
                let claims = json!({"aud": url, "iss": APP_ID, "sub": APP_ID, "jti": "x1", "nbf": now(), "exp": now() + 600});
                jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(cert.cert_pem.as_bytes())).unwrap()
            },
            "RS256 is expected",
        ),
        (
            "tampered payload",
            {
                let a = assertion(cert, &url, |_, _| {});
                let parts: Vec<&str> = a.split('.').collect();
                let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
                claims["sub"] = json!("tampered");
                format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2])
            },
            "signature validation",
        ),
        ("not a JWT", "not-a-jwt".to_owned(), "malformed"),
    ];
    for (name, a, why) in cases {
        let (status, body) = post_assertion(&url, &a).await;
        assert!(status == 400 || status == 401, "{name}: accepted ({status})");
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.starts_with("AADSTS") && body["error_codes"].is_array(), "{name}: {body}");
        assert!(description.lines().next().unwrap().contains(why), "{name}: refused for another reason: {description}");
    }
    assert_eq!(t.fake.issued(), 1);
}

/// A form the fake must refuse: name, fields, expected AADSTS code.
type FormCase = (&'static str, Vec<(&'static str, &'static str)>, u64);

#[tokio::test]
async fn the_fake_checks_method_path_encoding_and_every_form_field() {
    let t = Setup::new(vec![FakeApp::with_secret(APP_ID, TENANT, SECRET)]).await;
    let url = t.fake.token_url(TENANT);
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 405);
    assert_eq!(http.post(format!("{}/{TENANT}/oauth2/token", t.fake.authority())).send().await.unwrap().status(), 404);
    assert_eq!(http.post(format!("{url}/")).send().await.unwrap().status(), 404);
    let json_body = json!({"grant_type": "client_credentials", "client_id": APP_ID, "client_secret": SECRET, "scope": BOT_SCOPE});
    assert_eq!(http.post(&url).json(&json_body).send().await.unwrap().status(), 400);

    let base = [("grant_type", "client_credentials"), ("client_id", APP_ID), ("scope", BOT_SCOPE), ("client_secret", SECRET)];
    assert_eq!(post_form(&url, &base).await.0, 200, "the baseline form must pass");
    let with = |k: &'static str, v: &'static str| -> Vec<(&'static str, &'static str)> {
        base.iter().map(|&(bk, bv)| if bk == k { (bk, v) } else { (bk, bv) }).collect()
    };
    let without = |k: &str| -> Vec<(&'static str, &'static str)> { base.iter().copied().filter(|(bk, _)| *bk != k).collect() };
    let cases: Vec<FormCase> = vec![
        ("grant_type", with("grant_type", "password"), 70003),
        ("no grant_type", without("grant_type"), 900144),
        ("unknown client", with("client_id", OTHER_APP_ID), 700016),
        ("no client_id", without("client_id"), 900144),
        ("scope", with("scope", "https://graph.microsoft.com/.default"), 70011),
        ("no scope", without("scope"), 900144),
        ("wrong secret", with("client_secret", "nope"), 7000215),
        ("no credential", without("client_secret"), 7000218),
        (
            "secret and assertion",
            [base.to_vec(), vec![("client_assertion_type", ASSERTION_TYPE), ("client_assertion", "x")]].concat(),
            90014,
        ),
        ("unknown field", [base.to_vec(), vec![("resource", "https://api.botframework.com")]].concat(), 90014),
        ("duplicate field", [base.to_vec(), vec![("scope", BOT_SCOPE)]].concat(), 9000411),
    ];
    for (name, form, code) in cases {
        let (status, body) = post_form(&url, &form).await;
        assert!(status == 400 || status == 401, "{name}: {status}");
        assert_eq!(body["error_codes"], json!([code]), "{name}: {body}");
    }
    let (status, body) = post_form(&t.fake.token_url("dddddddd-0000-0000-0000-000000000004"), &base).await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([90002])));
    assert_eq!(t.fake.issued(), 1);
}
