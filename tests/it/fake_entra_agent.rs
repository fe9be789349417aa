//! A strict fake of the Entra token endpoint for the Agent User three-hop chain, on 127.0.0.1.
//!
//! One tenant with one Agent Blueprint (a registered certificate), one Agent Identity whose parent is
//! the Blueprint, and one Agent User (object id and UPN) of that identity. Each hop is told apart by
//! its form and checked field by field, with no unknown or duplicate fields:
//!
//! * hop 1: `client_credentials`, `client_id` = Blueprint, `scope` = `api://AzureADTokenExchange/.default`,
//!   `fmi_path` = the Agent Identity, a client assertion whose RS256 signature verifies with the registered
//!   certificate, `x5t#S256` of that certificate, `aud` = the URL posted to, `iss` = `sub` = Blueprint,
//!   `exp` ≤ now + 10 min, `nbf` ≤ now, single-use `jti`. No `client_secret`.
//! * hop 2: `client_credentials`, `client_id` = Agent Identity, the exchange scope, `client_assertion` = a live
//!   T1 issued for that identity (anything else: AADSTS700211).
//! * hop 3: `user_fic`, `client_id` = Agent Identity, `client_assertion` = a live **T1** (a T2 there is
//!   refused), `user_federated_identity_credential` = a live T2, exactly one of `user_id` (object id) and
//!   `username` (UPN), and a resource scope the user has consented to.
//!
//! Issued tokens are JWT-shaped (unsigned payloads the tests and the CLI can decode). Knobs: `expires_in`
//! per hop, a clock offset that moves with a test clock, failures injected per hop (429, 5xx, AADSTS
//! bodies at any status, 200 included), a response delay; counters per hop.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use crate::fake_entra::Injected;
use crate::fake_entra::{ASSERTION_TYPE, TestCert};

pub const EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
pub const AGENTIC_SCOPE: &str = "5a807f24-c9de-44ee-a3a7-329e88a00ffc/.default";

pub const AGENT_TENANT: &str = "cccccccc-0000-0000-0000-000000000003";
pub const BLUEPRINT_ID: &str = "b1b1b1b1-0000-4000-8000-000000000001";
pub const IDENTITY_ID: &str = "a1a1a1a1-0000-4000-8000-000000000002";
pub const AGENT_USER_OID: &str = "d1d1d1d1-0000-4000-8000-000000000003";
pub const AGENT_USER_UPN: &str = "agent@contoso.onmicrosoft.test";

const SKEW_SECS: u64 = 60;

/// Which hop a token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeHop {
    One = 0,
    Two = 1,
    Three = 2,
}

/// A token the fake issued.
#[derive(Clone, Debug)]
pub struct AgentIssued {
    pub hop: FakeHop,
    pub token: String,
    pub client_id: String,
    pub tenant: String,
    pub scope: String,
    /// hop 1: the `fmi_path`; hop 3: the user's object id.
    pub subject: String,
    pub expires_at: SystemTime,
}

/// What the last accepted request of each hop carried (for assertions on the wire format).
pub type Form = HashMap<String, String>;

struct AgentState {
    base: String,
    cert_der: Vec<u8>,
    cert_pem: String,
    expires_in: Mutex<[u64; 3]>,
    offset: Mutex<Duration>,
    delay: Mutex<Duration>,
    injected: Mutex<HashMap<FakeHop, VecDeque<Injected>>>,
    consented: Mutex<HashSet<String>>,
    used_jtis: Mutex<HashSet<String>>,
    issued: Mutex<Vec<AgentIssued>>,
    forms: Mutex<Vec<(FakeHop, Form)>>,
    refusals: Mutex<Vec<(Option<FakeHop>, u64, String)>>,
    per_hop: [AtomicUsize; 3],
    requests: AtomicUsize,
}

/// The fake; stops when dropped.
pub struct FakeEntraAgent {
    state: Arc<AgentState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEntraAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEntraAgent {
    /// Start with the Blueprint's certificate `cert`. Tokens live 3599 s; Graph and the agentic scope are consented.
    pub async fn start(cert: &TestCert) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(AgentState {
            base,
            cert_der: cert.der.clone(),
            cert_pem: cert.cert_pem.clone(),
            expires_in: Mutex::new([3599; 3]),
            offset: Mutex::new(Duration::ZERO),
            delay: Mutex::new(Duration::ZERO),
            injected: Mutex::new(HashMap::new()),
            consented: Mutex::new([GRAPH_SCOPE.to_owned(), AGENTIC_SCOPE.to_owned()].into()),
            used_jtis: Mutex::new(HashSet::new()),
            issued: Mutex::new(Vec::new()),
            forms: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            per_hop: Default::default(),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, task }
    }

    /// The authority to configure.
    pub fn authority(&self) -> String {
        self.state.base.clone()
    }

    /// The token URL of `tenant`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.state.base)
    }

    /// `expires_in` of tokens issued from now on, per hop.
    pub fn set_expires_in(&self, hop1: u64, hop2: u64, hop3: u64) {
        *self.state.expires_in.lock().unwrap() = [hop1, hop2, hop3];
    }

    /// The fake's clock runs this far ahead of the real one (keep it equal to the test clock's advance).
    pub fn advance(&self, by: Duration) {
        *self.state.offset.lock().unwrap() += by;
    }

    /// Wait this long before answering each request.
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Serve `failure` to the next request(s) of `hop`, in order.
    pub fn inject(&self, hop: FakeHop, failures: impl IntoIterator<Item = Injected>) {
        self.state.injected.lock().unwrap().entry(hop).or_default().extend(failures);
    }

    /// Withdraw the Agent User's consent to `scope` (hop 3 then answers AADSTS65001).
    pub fn revoke_consent(&self, scope: &str) {
        self.state.consented.lock().unwrap().remove(scope);
    }

    /// Requests received by hop (any outcome).
    pub fn hop_requests(&self) -> [usize; 3] {
        [0, 1, 2].map(|i| self.state.per_hop[i].load(Ordering::SeqCst))
    }

    /// All requests.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub fn issued(&self) -> Vec<AgentIssued> {
        self.state.issued.lock().unwrap().clone()
    }

    /// The forms of accepted requests, in order.
    pub fn forms(&self) -> Vec<(FakeHop, Form)> {
        self.state.forms.lock().unwrap().clone()
    }

    /// Refusals: (hop if known, AADSTS code, description).
    pub fn refusals(&self) -> Vec<(Option<FakeHop>, u64, String)> {
        self.state.refusals.lock().unwrap().clone()
    }

    /// A live T3 for `scope`, if `bearer` is one (for a fake Graph's bearer check).
    pub fn check_user_token(&self, bearer: &str, scope: &str) -> Option<AgentIssued> {
        let now = fake_now(&self.state);
        self.state
            .issued
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.token == bearer && t.hop == FakeHop::Three && t.scope == scope && t.expires_at > now)
            .cloned()
    }

    /// A checker of the Agent Identity's app-only Graph token (two hops): live ones only, never a T3.
    pub fn app_checker(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let state = Arc::clone(&self.state);
        Arc::new(move |bearer: &str| {
            let now = fake_now(&state);
            state
                .issued
                .lock()
                .unwrap()
                .iter()
                .any(|t| t.token == bearer && t.hop == FakeHop::Two && t.scope == GRAPH_SCOPE && t.expires_at > now)
        })
    }

    /// A checker for [`crate::fake_graph::FakeGraph`]: live Graph T3s only.
    pub fn graph_checker(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        let state = Arc::clone(&self.state);
        Arc::new(move |bearer: &str| {
            let now = fake_now(&state);
            state
                .issued
                .lock()
                .unwrap()
                .iter()
                .any(|t| t.token == bearer && t.hop == FakeHop::Three && t.scope == GRAPH_SCOPE && t.expires_at > now)
        })
    }
}

fn fake_now(s: &AgentState) -> SystemTime {
    SystemTime::now() + *s.offset.lock().unwrap()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn refuse(s: &AgentState, hop: Option<FakeHop>, status: u16, error: &str, code: u64, description: &str) -> Response {
    s.refusals.lock().unwrap().push((hop, code, description.to_owned()));
    let trace = format!("{:08x}-0000-4000-8000-{:012x}", fastrand::u32(..), fastrand::u64(..) & 0xffff_ffff_ffff);
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {trace}\r\nTimestamp: now"),
        "error_codes": [code],
        "trace_id": trace,
        "correlation_id": trace,
    });
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn injected(s: &AgentState, hop: FakeHop, failure: Injected) -> Response {
    match failure {
        Injected::TooManyRequests(after) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "<html>Too Many Requests</html>").into_response();
            if let Some(a) = after {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&a).unwrap());
            }
            r
        }
        Injected::Status(status) => (StatusCode::from_u16(status).unwrap(), "<html>Service Unavailable</html>").into_response(),
        Injected::Error { status, error, code, description } => {
            let description = description.strip_prefix(&format!("AADSTS{code}: ")).unwrap_or(&description).to_owned();
            refuse(s, Some(hop), status, &error, code, &description)
        }
    }
}

fn mint(claims: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "fake-entra-agent"});
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(format!("sig-{:032x}", fastrand::u128(..)))
    )
}

async fn handle(State(s): State<Arc<AgentState>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let segments: Vec<&str> = uri.path().split('/').collect();
    let tenant = match segments.as_slice() {
        ["", tenant, "oauth2", "v2.0", "token"] if !tenant.is_empty() => (*tenant).to_owned(),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    if method != Method::POST || uri.query().is_some() {
        return refuse(&s, None, 400, "invalid_request", 900144, "POST the parameters in a form body, with no query string.");
    }
    let form_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).map(str::trim);
    if form_type != Some("application/x-www-form-urlencoded") {
        return refuse(&s, None, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.");
    }
    let mut form: Form = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            return refuse(&s, None, 400, "invalid_request", 9000411, &format!("The parameter '{k}' is duplicated."));
        }
    }
    let get = |k: &str| form.get(k).map(String::as_str);
    let hop = match (get("grant_type"), get("client_id")) {
        (Some("user_fic"), _) => FakeHop::Three,
        (Some("client_credentials"), Some(BLUEPRINT_ID)) => FakeHop::One,
        (Some("client_credentials"), Some(IDENTITY_ID)) => FakeHop::Two,
        (Some("client_credentials"), Some(other)) => {
            return refuse(
                &s,
                None,
                400,
                "unauthorized_client",
                700016,
                &format!("Application with identifier '{other}' was not found in the directory '{tenant}'."),
            );
        }
        (Some(g), _) => {
            return refuse(&s, None, 400, "unsupported_grant_type", 70003, &format!("The app requested an unsupported grant type '{g}'."));
        }
        _ => {
            return refuse(
                &s,
                None,
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            );
        }
    };
    s.per_hop[hop as usize].fetch_add(1, Ordering::SeqCst);
    let delay = *s.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let failure = s.injected.lock().unwrap().get_mut(&hop).and_then(VecDeque::pop_front);
    if let Some(f) = failure {
        return injected(&s, hop, f);
    }
    if tenant != AGENT_TENANT {
        return refuse(&s, Some(hop), 400, "invalid_request", 90002, &format!("Tenant '{tenant}' not found."));
    }
    let token_url = format!("{}{}", s.base, uri.path());
    let result = match hop {
        FakeHop::One => hop1(&s, &form, &token_url),
        FakeHop::Two => hop2(&s, &form),
        FakeHop::Three => hop3(&s, &form),
    };
    let (scope, subject, claims) = match result {
        Ok(ok) => ok,
        Err((status, error, code, why)) => return refuse(&s, Some(hop), status, error, code, &why),
    };
    s.forms.lock().unwrap().push((hop, form.clone()));
    let expires_in = s.expires_in.lock().unwrap()[hop as usize];
    let now = fake_now(&s);
    let mut claims = claims;
    claims["iat"] = json!(secs(now));
    claims["nbf"] = json!(secs(now));
    claims["exp"] = json!(secs(now) + expires_in);
    claims["tid"] = json!(AGENT_TENANT);
    claims["iss"] = json!(format!("https://login.microsoftonline.com/{AGENT_TENANT}/v2.0"));
    claims["uti"] = json!(format!("{:016x}", fastrand::u64(..)));
    let token = mint(&claims);
    s.issued.lock().unwrap().push(AgentIssued {
        hop,
        token: token.clone(),
        client_id: form["client_id"].clone(),
        tenant,
        scope,
        subject,
        expires_at: now + Duration::from_secs(expires_in),
    });
    axum::Json(json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}))
        .into_response()
}

type Refusal = (u16, &'static str, u64, String);
type Accepted = (String, String, Value);

fn exact_fields(form: &Form, fields: &[&str]) -> Result<(), Refusal> {
    if let Some(k) = form.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err((400, "invalid_request", 90014, format!("The request contains an unexpected parameter '{k}'.")));
    }
    if let Some(k) = fields.iter().find(|k| !form.contains_key(**k)) {
        return Err((400, "invalid_request", 900144, format!("The request body must contain the following parameter: '{k}'.")));
    }
    Ok(())
}

fn expect(form: &Form, key: &str, want: &str, code: u64, error: &'static str) -> Result<(), Refusal> {
    if form[key] == want { Ok(()) } else { Err((400, error, code, format!("The value of '{key}' is not valid: {}", form[key]))) }
}

fn hop1(s: &AgentState, form: &Form, token_url: &str) -> Result<Accepted, Refusal> {
    exact_fields(form, &["grant_type", "client_id", "scope", "fmi_path", "client_assertion_type", "client_assertion"])?;
    expect(form, "scope", EXCHANGE_SCOPE, 70011, "invalid_scope")?;
    expect(form, "client_assertion_type", ASSERTION_TYPE, 70002, "invalid_request")?;
    if form["fmi_path"] != IDENTITY_ID {
        return Err((400, "invalid_request", 700211, format!("No agent identity '{}' under this blueprint (fmi_path).", form["fmi_path"])));
    }
    verify_assertion(s, &form["client_assertion"], token_url).map_err(|(code, why)| (401, "invalid_client", code, why))?;
    let claims = json!({"aud": "fb60f99c-7a34-4190-8149-302f77469936", "appid": BLUEPRINT_ID, "azp": BLUEPRINT_ID, "idtyp": "app", "sub": IDENTITY_ID, "fmi": IDENTITY_ID});
    Ok((EXCHANGE_SCOPE.to_owned(), IDENTITY_ID.to_owned(), claims))
}

fn live(s: &AgentState, token: &str) -> Option<AgentIssued> {
    let now = fake_now(s);
    s.issued.lock().unwrap().iter().find(|t| t.token == token && t.expires_at > now).cloned()
}

fn hop2(s: &AgentState, form: &Form) -> Result<Accepted, Refusal> {
    exact_fields(form, &["grant_type", "client_id", "scope", "client_assertion_type", "client_assertion"])?;
    // The exchange scope (the chain goes on to the Agent User), or Graph's: the Agent Identity's own app-only
    // token (two hops), as for its sponsors.
    let app_only = form["scope"] == GRAPH_SCOPE;
    if !app_only {
        expect(form, "scope", EXCHANGE_SCOPE, 70011, "invalid_scope")?;
    }
    expect(form, "client_assertion_type", ASSERTION_TYPE, 70002, "invalid_request")?;
    match live(s, &form["client_assertion"]) {
        Some(t) if t.hop == FakeHop::One && t.subject == form["client_id"] => {}
        _ => {
            return Err((
                400,
                "invalid_request",
                700211,
                "No matching federated identity record found for presented assertion issuer.".into(),
            ));
        }
    }
    if app_only {
        let claims = json!({"aud": "https://graph.microsoft.com", "appid": IDENTITY_ID, "azp": IDENTITY_ID, "idtyp": "app", "sub": IDENTITY_ID, "xms_par_app_azp": BLUEPRINT_ID});
        return Ok((GRAPH_SCOPE.to_owned(), IDENTITY_ID.to_owned(), claims));
    }
    let claims = json!({"aud": "fb60f99c-7a34-4190-8149-302f77469936", "appid": IDENTITY_ID, "azp": IDENTITY_ID, "idtyp": "app", "sub": IDENTITY_ID, "xms_par_app_azp": BLUEPRINT_ID});
    Ok((EXCHANGE_SCOPE.to_owned(), IDENTITY_ID.to_owned(), claims))
}

fn hop3(s: &AgentState, form: &Form) -> Result<Accepted, Refusal> {
    let user_field = match (form.contains_key("user_id"), form.contains_key("username")) {
        (true, false) => "user_id",
        (false, true) => "username",
        _ => return Err((400, "invalid_request", 900144, "Send exactly one of 'user_id' and 'username'.".into())),
    };
    exact_fields(
        form,
        &[
            "grant_type",
            "client_id",
            "scope",
            "client_assertion_type",
            "client_assertion",
            "user_federated_identity_credential",
            user_field,
        ],
    )?;
    expect(form, "client_assertion_type", ASSERTION_TYPE, 70002, "invalid_request")?;
    if form["client_id"] != IDENTITY_ID {
        return Err((400, "unauthorized_client", 700016, format!("Application with identifier '{}' was not found.", form["client_id"])));
    }
    match live(s, &form["client_assertion"]) {
        Some(t) if t.hop == FakeHop::One && t.subject == IDENTITY_ID => {}
        Some(t) if t.hop == FakeHop::Two => {
            return Err((
                400,
                "invalid_request",
                700211,
                "The client_assertion is the agent identity token (T2); user_fic takes the blueprint token (T1).".into(),
            ));
        }
        _ => {
            return Err((
                400,
                "invalid_request",
                700211,
                "No matching federated identity record found for presented assertion issuer.".into(),
            ));
        }
    }
    match live(s, &form["user_federated_identity_credential"]) {
        // Only an exchange-scoped T2: the Agent Identity's app-only Graph token is not one.
        Some(t) if t.hop == FakeHop::Two && t.client_id == IDENTITY_ID && t.scope == EXCHANGE_SCOPE => {}
        _ => {
            return Err((
                400,
                "invalid_grant",
                700212,
                "The user_federated_identity_credential is not a valid agent identity token (T2).".into(),
            ));
        }
    }
    let user_ok = match user_field {
        "user_id" => form["user_id"] == AGENT_USER_OID,
        _ => form["username"].eq_ignore_ascii_case(AGENT_USER_UPN),
    };
    if !user_ok {
        return Err((400, "invalid_grant", 50034, "The user account does not exist in the directory.".into()));
    }
    let scope = form["scope"].clone();
    if !scope.ends_with("/.default") {
        return Err((400, "invalid_scope", 70011, format!("The scope {scope} is not valid.")));
    }
    if !s.consented.lock().unwrap().contains(&scope) {
        return Err((400, "invalid_grant", 65001, "The user or administrator has not consented to use the application.".into()));
    }
    let aud = scope.trim_end_matches("/.default").to_owned();
    let claims = json!({
        "aud": aud, "appid": IDENTITY_ID, "azp": IDENTITY_ID, "idtyp": "user", "oid": AGENT_USER_OID, "upn": AGENT_USER_UPN,
        "name": "Agent User", "scp": "Chat.Create Chat.ReadWrite ChatMessage.Send User.ReadBasic.All",
    });
    Ok((scope, AGENT_USER_OID.to_owned(), claims))
}

fn verify_assertion(s: &AgentState, assertion: &str, token_url: &str) -> Result<(), (u64, String)> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| (50027, "JWT token is invalid or malformed.".to_owned()))?;
    if header.alg != Algorithm::RS256 {
        return Err((700027, "RS256 is expected.".into()));
    }
    if header.x5t_s256.as_deref() != Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&s.cert_der)).as_str()) {
        return Err((700027, "The certificate with identifier used to sign the client assertion is not registered on application.".into()));
    }
    let key = DecodingKey::from_rsa_pem(s.cert_pem.as_bytes()).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &v)
        .map_err(|_| (700027, "Client assertion failed signature validation.".to_owned()))?
        .claims;
    if claims["aud"] != token_url {
        return Err((700027, format!("Client assertion audience claim does not match. Expected {token_url}.")));
    }
    if claims["iss"] != BLUEPRINT_ID || claims["sub"] != BLUEPRINT_ID {
        return Err((700021, "Client assertion iss/sub doesn't match the blueprint's client_id.".into()));
    }
    let now = secs(fake_now(s));
    let (Some(exp), Some(nbf), Some(iat)) = (claims["exp"].as_u64(), claims["nbf"].as_u64(), claims["iat"].as_u64()) else {
        return Err((700024, "Client assertion lacks exp, nbf or iat.".into()));
    };
    if exp <= now || exp > now + 600 + SKEW_SECS || nbf > now + 5 || iat > now + 5 {
        return Err((700024, format!("Client assertion is not within its valid time range. Current time: {now}, valid to {exp}.")));
    }
    let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) else {
        return Err((700027, "Client assertion contains no jti.".into()));
    };
    if !s.used_jtis.lock().unwrap().insert(jti.to_owned()) {
        return Err((700027, "Client assertion jti was already used.".into()));
    }
    Ok(())
}

/// The Blueprint certificate and key (0600) of `test_cert(1)` written to `dir`, as a `[bots.agent_user]`
/// table for the fake chain (plus `extra` lines in it).
pub fn agent_user_toml(dir: &std::path::Path, extra: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let cert = crate::fake_entra::test_cert(1);
    let key = dir.join("blueprint.key");
    std::fs::write(&key, &cert.key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let crt = dir.join("blueprint.crt");
    std::fs::write(&crt, &cert.cert_pem).unwrap();
    format!(
        "[bots.agent_user]\ntenant_id = \"{AGENT_TENANT}\"\nblueprint_app_id = \"{BLUEPRINT_ID}\"\nagent_identity_id = \"{IDENTITY_ID}\"\n\
         agent_user_id = \"{AGENT_USER_OID}\"\ncertificate = \"file:{}\"\nkey = \"file:{}\"\n{extra}\n",
        crt.display(),
        key.display()
    )
}
