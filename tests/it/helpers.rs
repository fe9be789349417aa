//! Test harness: RSA test keys, a strict fake of the Bot Framework OpenID metadata + JWKS endpoints,
//! token minting, and a handle on a spawned `agentgate serve` process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const OTHER_APP_ID: &str = "99999999-8888-7777-6666-555555555555";
pub const TENANT: &str = "aaaaaaaa-0000-0000-0000-000000000001";
pub const OTHER_TENANT: &str = "bbbbbbbb-0000-0000-0000-000000000002";
pub const SERVICE_URL: &str = "https://smba.trafficmanager.net/amer/";
pub const ISSUER: &str = "https://api.botframework.com";

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A fresh id for an activity, unique within the test run.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------- RSA keys

struct RsaMaterial {
    private_pem: String,
    public_pem: String,
    n: String,
    e: String,
}

fn rsa_material(slot: usize) -> &'static RsaMaterial {
    static KEYS: OnceLock<Vec<RsaMaterial>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        (0..3)
            .map(|_| {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
                let private_pem = kp.serialize_pem();
                let ek = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
                let jwk = serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&ek, Algorithm::RS256).unwrap()).unwrap();
                RsaMaterial {
                    private_pem,
                    public_pem: kp.public_key_pem(),
                    n: jwk["n"].as_str().unwrap().to_owned(),
                    e: jwk["e"].as_str().unwrap().to_owned(),
                }
            })
            .collect()
    })[slot]
}

/// A signing key as the fake publishes it.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    slot: usize,
    pub endorsements: Option<Vec<String>>,
}

impl TestKey {
    /// `slot` picks one of three distinct RSA key pairs; `endorsements: None` publishes no such field.
    pub fn new(kid: &str, slot: usize, endorsements: Option<&[&str]>) -> Self {
        Self { kid: kid.to_owned(), slot, endorsements: endorsements.map(|e| e.iter().map(|s| (*s).to_owned()).collect()) }
    }

    /// The usual Teams key: endorsed for msteams.
    pub fn teams(kid: &str, slot: usize) -> Self {
        Self::new(kid, slot, Some(&["msteams", "webchat"]))
    }

    pub fn jwk(&self) -> Value {
        let m = rsa_material(self.slot);
        let mut v = json!({"kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid, "n": m.n, "e": m.e});
        if let Some(e) = &self.endorsements {
            v["endorsements"] = json!(e);
        }
        v
    }

    fn encoding(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(rsa_material(self.slot).private_pem.as_bytes()).unwrap()
    }

    pub fn public_pem(&self) -> &'static str {
        &rsa_material(self.slot).public_pem
    }

    /// An RS256 token with this key's kid.
    pub fn mint(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        h.typ = Some("JWT".into());
        jsonwebtoken::encode(&h, claims, &self.encoding()).unwrap()
    }

    /// An RS256 token that claims this key's kid but is signed with another key pair.
    pub fn mint_forged(&self, claims: &Value) -> String {
        let other = TestKey { kid: self.kid.clone(), slot: (self.slot + 1) % 3, endorsements: None };
        other.mint(claims)
    }
}

/// Claims of a valid Bot Framework channel token for `APP_ID`.
pub fn good_claims() -> Value {
    json!({"iss": ISSUER, "aud": APP_ID, "exp": now() + 3600, "nbf": now() - 5, "serviceurl": SERVICE_URL})
}

/// A token with an arbitrary header, unsigned (`alg: none` and friends).
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// An HS256 token whose HMAC secret is the RSA public key (the classic algorithm-confusion attack).
pub fn hs256_with_public_key(key: &TestKey, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(key.public_pem().as_bytes())).unwrap()
}

/// A Teams personal-chat message for `APP_ID` in `TENANT`.
pub fn message(id: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "timestamp": "2026-11-22T04:06:43.592Z",
        "serviceUrl": SERVICE_URL,
        "channelId": "msteams",
        "from": {"id": "29:user-1", "name": "Alex", "aadObjectId": "00000000-0000-0000-0000-0000000000aa"},
        "conversation": {"conversationType": "personal", "tenantId": TENANT, "id": "a:conv-1"},
        "recipient": {"id": format!("28:{APP_ID}"), "name": "Bot"},
        "text": "hello",
        "channelData": {"tenant": {"id": TENANT}},
        "entities": [{"type": "clientInfo", "locale": "en-US"}]
    })
}

// ---------------------------------------------------------------- fake OpenID metadata + JWKS

pub struct OidcState {
    base: String,
    pub issuer: Mutex<String>,
    pub keys: Mutex<Vec<Value>>,
    pub down: AtomicBool,
    pub metadata_hits: AtomicUsize,
    pub jwks_hits: AtomicUsize,
}

/// A strict fake of `login.botframework.com`: exact paths, GET only, counts every fetch, can go down.
pub struct FakeOidc {
    pub state: Arc<OidcState>,
    pub metadata_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOidc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn metadata(State(s): State<Arc<OidcState>>) -> Response {
    s.metadata_hits.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = s.issuer.lock().unwrap().clone();
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{}/v1/auth", s.base),
        "jwks_uri": format!("{}/v1/keys", s.base),
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"]
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<OidcState>>) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(json!({"keys": *s.keys.lock().unwrap()})).into_response()
}

impl FakeOidc {
    pub async fn start(keys: Vec<TestKey>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(OidcState {
            base: base.clone(),
            issuer: Mutex::new(ISSUER.to_owned()),
            keys: Mutex::new(keys.iter().map(TestKey::jwk).collect()),
            down: AtomicBool::new(false),
            metadata_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/.well-known/openidconfiguration", get(metadata))
            .route("/v1/keys", get(jwks))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, metadata_url: format!("{base}/v1/.well-known/openidconfiguration"), task }
    }

    pub fn set_keys(&self, keys: &[TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(TestKey::jwk).collect();
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn metadata_hits(&self) -> usize {
        self.state.metadata_hits.load(Ordering::SeqCst)
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- the app

/// Knobs for the generated configuration.
#[derive(Clone)]
pub struct Options {
    pub metadata_url: String,
    pub key_refresh_secs: u64,
    pub stale_keys_grace_secs: u64,
    pub unknown_kid_cooldown_secs: u64,
    pub require_endorsement: bool,
    pub body_limit_bytes: usize,
    /// Extra TOML appended verbatim (e.g. `[server.tls]`).
    pub extra: String,
    /// Give the first bot a client secret (from `AGENTGATE_TEST_SECRET`).
    pub credential: bool,
    /// Where outbound tokens come from: always loopback in tests (default: a closed port).
    pub token_authority: String,
    pub dev: bool,
    /// `clouds.public.connector_endpoints`: fake Connectors reached as configured endpoints (real tokens).
    pub connector_endpoints: Vec<String>,
}

impl Options {
    pub fn new(metadata_url: &str) -> Self {
        Self {
            metadata_url: metadata_url.to_owned(),
            key_refresh_secs: 86_400,
            stale_keys_grace_secs: 172_800,
            unknown_kid_cooldown_secs: 300,
            require_endorsement: true,
            body_limit_bytes: 64 * 1024,
            extra: String::new(),
            credential: false,
            token_authority: "http://127.0.0.1:9".to_owned(),
            dev: false,
            connector_endpoints: Vec::new(),
        }
    }

    pub fn toml(&self, data_dir: &Path) -> String {
        format!(
            r#"data_dir = "{data}"
{extra_top}
[server]
bind = "127.0.0.1:0"
body_limit_bytes = {limit}
shutdown_grace_secs = 10

[auth]
key_refresh_secs = {refresh}
stale_keys_grace_secs = {grace}
unknown_kid_cooldown_secs = {cooldown}

[clouds.public]
openid_metadata_url = "{meta}"
token_authority = "{authority}"
connector_endpoints = {endpoints}

[[bots]]
app_id = "{APP_ID}"
display_name = "Test bot"
allowed_tenants = ["{TENANT}"]
{credential}require_endorsement = {endorse}
policy.dm = "open"

[[bots]]
app_id = "{OTHER_APP_ID}"
display_name = "Other client's bot"
allowed_tenants = ["{OTHER_TENANT}"]
policy.dm = "open"
"#,
            data = data_dir.display(),
            extra_top = "",
            limit = self.body_limit_bytes,
            refresh = self.key_refresh_secs,
            grace = self.stale_keys_grace_secs,
            cooldown = self.unknown_kid_cooldown_secs,
            meta = self.metadata_url,
            endorse = self.require_endorsement,
            authority = self.token_authority,
            endpoints = serde_json::to_string(&self.connector_endpoints).unwrap(),
            credential = if self.credential { "credential = \"env:AGENTGATE_TEST_SECRET\"\n" } else { "" },
        ) + &self.extra
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentgate")
}

/// A running `agentgate serve`; killed on drop.
pub struct TestApp {
    pub url: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    stderr: PathBuf,
    http: reqwest::Client,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl TestApp {
    /// Spawn with a fresh data dir; panics (with the app's stderr) if it does not come up.
    pub async fn spawn(opts: &Options) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        Self::spawn_in(&dir, opts).await.unwrap_or_else(|e| panic!("agentgate did not start:\n{e}"))
    }

    /// Spawn on an existing data dir (restart after a crash). Err carries the app's stderr.
    pub async fn spawn_in(dir: &Path, opts: &Options) -> Result<Self, String> {
        Self::spawn_in_with(dir, opts, |t| t).await
    }

    /// Like [`TestApp::spawn_in`], with the generated configuration passed through `patch`.
    pub async fn spawn_in_with(dir: &Path, opts: &Options, patch: impl FnOnce(String) -> String) -> Result<Self, String> {
        let config = dir.join("agentgate.toml");
        std::fs::write(&config, patch(opts.toml(&dir.join("data")))).unwrap();
        let stderr = dir.join(format!("stderr-{}.log", unique_id("run")));
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg("--config").arg(&config);
        if opts.dev {
            cmd.arg("--dev");
        }
        cmd.env("RUST_LOG", "agentgate=debug,info")
            .env("AGENTGATE_TEST_SECRET", "s3cr3t-value-that-must-never-be-logged")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await.unwrap();
        let Ok(line) = line else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::fs::read_to_string(&stderr).unwrap_or_default());
        };
        let url = line
            .strip_prefix("agentgate listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
        let app = Self { url, dir: dir.to_owned(), config, child: Some(child), stderr, http };
        Ok(app)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Wait until `/readyz` says ready (keys loaded, store open).
    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agentgate never became ready:\n{}", self.stderr());
    }

    /// POST an activity with `Authorization: Bearer <token>` (or none).
    pub async fn post(&self, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut req =
            self.http.post(format!("{}/api/messages", self.url)).header("content-type", "application/json").body(body.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send().await.unwrap()
    }

    /// POST all bodies at once; statuses in the order given (0 when the request itself failed).
    pub async fn post_concurrently(&self, token: Option<&str>, bodies: Vec<Value>) -> Vec<u16> {
        let mut set = tokio::task::JoinSet::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let (c, url, token) = (self.http.clone(), format!("{}/api/messages", self.url), token.map(str::to_owned));
            set.spawn(async move {
                let mut req = c.post(url).header("content-type", "application/json").body(body.to_string());
                if let Some(t) = token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                (i, req.send().await.map_or(0, |r| r.status().as_u16()))
            });
        }
        let mut out = set.join_all().await;
        out.sort_unstable();
        out.into_iter().map(|(_, s)| s).collect()
    }

    pub async fn status(&self, token: Option<&str>, body: &Value) -> u16 {
        self.post(token, body).await.status().as_u16()
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap()
    }

    /// The value of one metric line (exact series text), 0 when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self.metrics().await;
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Pending inbox entries, read through `agentgate inbox` (a separate process).
    pub fn inbox(&self) -> Vec<Value> {
        inbox(&self.config)
    }

    /// SIGKILL: no chance to flush or clean up.
    /// The process id of the running gateway.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
        for _ in 0..300 {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

pub fn inbox(config: &Path) -> Vec<Value> {
    let out = Command::new(bin()).arg("inbox").arg("--config").arg(config).arg("--limit").arg("100000").output().unwrap();
    assert!(out.status.success(), "inbox failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Entries of `inbox` whose activity id is `id`.
pub fn count_activity(items: &[Value], id: &str) -> usize {
    items.iter().filter(|i| i["activity_id"] == id).count()
}
