//! A strict fake of the Microsoft Entra v2 token endpoint (`POST /{tenant}/oauth2/v2.0/token`,
//! client-credentials grant) on 127.0.0.1.
//!
//! It checks what the real service checks, and more: the method, the exact path, the form encoding,
//! every form field (no unknown or duplicate fields), the app's directory (tenant), the scope, and the
//! credential: a client secret is compared with the registered one; a client assertion's RS256
//! signature is verified with the public key of the **registered certificate**, its `x5t#S256` (and
//! `x5t`, `x5c` when present) must match that certificate, `aud` must be the URL it was posted to,
//! `iss` = `sub` = the client id, `exp` ≤ now + 10 min (+ skew) and in the future, `nbf` ≤ now, and a
//! `jti` may be used once. Every refusal is an Entra-shaped error body with an AADSTS code.
//!
//! Knobs inject 429 (with either `Retry-After` form), bare 5xx, OAuth errors at any status (200 too),
//! a response delay, and the `expires_in` of issued tokens. Issued tokens are recorded so that a fake
//! Connector can check the bearer tokens it receives ([`FakeEntra::check_bearer`]).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The Bot Framework scope of the public cloud.
pub const BOT_SCOPE: &str = "https://api.botframework.com/.default";
/// The only `client_assertion_type` Entra accepts.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The legacy multi-tenant bot tenant; always known to the fake.
pub const BOTFRAMEWORK_TENANT: &str = "botframework.com";
/// Clock skew allowed on assertion times.
const SKEW_SECS: u64 = 60;

// ---------------------------------------------------------------- test certificates

/// A self-signed RSA certificate and its private key.
pub struct TestCert {
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl TestCert {
    /// base64url(SHA-256(DER)), the `x5t#S256` Entra matches.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(&self.der))
    }

    /// base64url(SHA-1(DER)), the `x5t`.
    pub fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha1::digest(&self.der))
    }
}

/// One of three distinct test certificates (generated once per test run).
pub fn test_cert(slot: usize) -> &'static TestCert {
    static CERTS: OnceLock<Vec<TestCert>> = OnceLock::new();
    &CERTS.get_or_init(|| {
        (0..3)
            .map(|i| {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
                let mut params = rcgen::CertificateParams::new(vec![format!("bot{i}.agentgate.test")]).unwrap();
                params.distinguished_name.push(rcgen::DnType::CommonName, format!("agentgate test bot {i}"));
                let cert = params.self_signed(&kp).unwrap();
                TestCert { key_pem: kp.serialize_pem(), cert_pem: cert.pem(), der: cert.der().to_vec() }
            })
            .collect()
    })[slot]
}

// ---------------------------------------------------------------- registrations and knobs

/// An app registration: its client id, the directories (tenants) it exists in, and its credentials.
#[derive(Clone)]
pub struct FakeApp {
    pub client_id: String,
    pub tenants: Vec<String>,
    pub secret: Option<String>,
    pub certificate_der: Option<Vec<u8>>,
    certificate_pem: Option<String>,
}

impl FakeApp {
    /// An app in `tenant` with a client secret.
    pub fn with_secret(client_id: &str, tenant: &str, secret: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            tenants: vec![tenant.to_owned()],
            secret: Some(secret.to_owned()),
            certificate_der: None,
            certificate_pem: None,
        }
    }

    /// An app in `tenant` with a registered certificate.
    pub fn with_certificate(client_id: &str, tenant: &str, cert: &TestCert) -> Self {
        Self {
            client_id: client_id.to_owned(),
            tenants: vec![tenant.to_owned()],
            secret: None,
            certificate_der: Some(cert.der.clone()),
            certificate_pem: Some(cert.cert_pem.clone()),
        }
    }

    /// Also register a certificate on an app that has a secret (or the other way round).
    pub fn and_certificate(mut self, cert: &TestCert) -> Self {
        self.certificate_der = Some(cert.der.clone());
        self.certificate_pem = Some(cert.cert_pem.clone());
        self
    }

    /// The app also exists in `tenant` (e.g. [`BOTFRAMEWORK_TENANT`] for a legacy multi-tenant bot).
    pub fn also_in(mut self, tenant: &str) -> Self {
        self.tenants.push(tenant.to_owned());
        self
    }
}

/// A failure served instead of processing one request (injected failures are used in order).
#[derive(Clone, Debug)]
pub enum Injected {
    /// 429, with this `Retry-After` value (seconds or an HTTP date) if any.
    TooManyRequests(Option<String>),
    /// A bare status with an HTML body (a gateway error, no OAuth body).
    Status(u16),
    /// An Entra OAuth error body at `status` (200 too, as some proxies do).
    Error { status: u16, error: String, code: u64, description: String },
}

impl Injected {
    /// An Entra error with a realistic description for the common AADSTS codes.
    pub fn aadsts(status: u16, code: u64) -> Self {
        let (error, description) = match code {
            7000215 => (
                "invalid_client",
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            ),
            7000222 => (
                "invalid_client",
                "The provided client secret keys for app are expired. Visit the Azure portal to create new keys for your app.",
            ),
            700016 => ("unauthorized_client", "Application with identifier was not found in the directory 'Bot Framework'."),
            700027 => ("invalid_client", "Client assertion failed signature validation."),
            90002 => (
                "invalid_request",
                "Tenant not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.",
            ),
            50049 => ("invalid_instance", "Unknown or invalid instance."),
            7000112 => ("unauthorized_client", "Application is disabled."),
            _ => ("temporarily_unavailable", "The server is temporarily too busy to handle the request."),
        };
        Self::Error { status, error: error.to_owned(), code, description: format!("AADSTS{code}: {description}") }
    }

    /// `temporarily_unavailable` (503), which must be retried.
    pub fn temporarily_unavailable() -> Self {
        Self::Error {
            status: 503,
            error: "temporarily_unavailable".into(),
            code: 90033,
            description: "AADSTS90033: A transient error has occurred. Please try again.".into(),
        }
    }
}

/// A token the fake issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: String,
    pub client_id: String,
    pub tenant: String,
    pub scope: String,
    pub expires_at: SystemTime,
    /// `secret` or `certificate`.
    pub credential: &'static str,
}

/// A refused request, as the fake answered it.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub status: u16,
    pub error: String,
    pub code: u64,
    pub description: String,
}

struct EntraState {
    base: String,
    apps: Mutex<Vec<FakeApp>>,
    scope: Mutex<String>,
    expires_in: Mutex<u64>,
    delay: Mutex<Duration>,
    injected: Mutex<VecDeque<Injected>>,
    used_jtis: Mutex<HashSet<String>>,
    issued: Mutex<Vec<IssuedToken>>,
    refusals: Mutex<Vec<Refusal>>,
    requests: AtomicUsize,
    seq: AtomicUsize,
}

/// The fake token endpoint; stops when dropped.
pub struct FakeEntra {
    state: Arc<EntraState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEntra {
    /// Start with these app registrations. Scope [`BOT_SCOPE`], tokens valid for 3599 s, no delay.
    pub async fn start(apps: Vec<FakeApp>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(EntraState {
            base,
            apps: Mutex::new(apps),
            scope: Mutex::new(BOT_SCOPE.to_owned()),
            expires_in: Mutex::new(3599),
            delay: Mutex::new(Duration::ZERO),
            injected: Mutex::new(VecDeque::new()),
            used_jtis: Mutex::new(HashSet::new()),
            issued: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            seq: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, task }
    }

    /// The authority to configure instead of `https://login.microsoftonline.com`.
    pub fn authority(&self) -> String {
        self.state.base.clone()
    }

    /// The token URL of `tenant`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.state.base)
    }

    /// Register another app.
    pub fn register(&self, app: FakeApp) {
        self.state.apps.lock().unwrap().push(app);
    }

    /// The scope every request must ask for.
    pub fn set_scope(&self, scope: &str) {
        *self.state.scope.lock().unwrap() = scope.to_owned();
    }

    /// `expires_in` of tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        *self.state.expires_in.lock().unwrap() = secs;
    }

    /// Wait this long before answering each request (to overlap concurrent callers).
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Serve these failures to the next requests, one each, in order.
    pub fn inject(&self, failures: impl IntoIterator<Item = Injected>) {
        self.state.injected.lock().unwrap().extend(failures);
    }

    /// Drop the failures not used yet.
    pub fn clear_injected(&self) {
        self.state.injected.lock().unwrap().clear();
    }

    /// Requests received, any method or path.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Tokens issued so far.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.state.issued.lock().unwrap().clone()
    }

    /// The number of tokens issued.
    pub fn issued(&self) -> usize {
        self.state.issued.lock().unwrap().len()
    }

    /// Every refusal so far.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.state.refusals.lock().unwrap().clone()
    }

    /// The last refusal.
    pub fn last_refusal(&self) -> Option<Refusal> {
        self.state.refusals.lock().unwrap().last().cloned()
    }

    /// The issued, unexpired token `bearer` is, if it is one (for a fake Connector's `Authorization` check).
    pub fn check_bearer(&self, bearer: &str) -> Option<IssuedToken> {
        let now = SystemTime::now();
        self.state.issued.lock().unwrap().iter().find(|t| t.token == bearer && t.expires_at > now).cloned()
    }
}

// ---------------------------------------------------------------- the endpoint

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn guid(n: usize) -> String {
    format!("{:08x}-{:04x}-4000-8000-{:012x}", fastrand::u32(..), n & 0xffff, fastrand::u64(..) & 0xffff_ffff_ffff)
}

/// An Entra-shaped error body.
fn refuse(s: &EntraState, status: u16, error: &str, code: u64, description: &str) -> Response {
    s.refusals.lock().unwrap().push(Refusal { status, error: error.to_owned(), code, description: description.to_owned() });
    let n = s.seq.fetch_add(1, Ordering::SeqCst);
    let (trace, corr) = (guid(n), guid(n + 1));
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {}", httpdate::fmt_http_date(SystemTime::now())),
        "error_codes": [code],
        "timestamp": httpdate::fmt_http_date(SystemTime::now()),
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn injected(s: &EntraState, failure: Injected) -> Response {
    match failure {
        Injected::TooManyRequests(after) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "<html><body>Too Many Requests</body></html>").into_response();
            if let Some(a) = after {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&a).unwrap());
            }
            r
        }
        Injected::Status(status) => {
            (StatusCode::from_u16(status).unwrap(), "<html><body>Service Unavailable</body></html>").into_response()
        }
        Injected::Error { status, error, code, description } => {
            let description = description.strip_prefix(&format!("AADSTS{code}: ")).unwrap_or(&description).to_owned();
            refuse(s, status, &error, code, &description)
        }
    }
}

async fn handle(State(s): State<Arc<EntraState>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let segments: Vec<&str> = uri.path().split('/').collect();
    let tenant = match segments.as_slice() {
        ["", tenant, "oauth2", "v2.0", "token"] if !tenant.is_empty() => (*tenant).to_owned(),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")], "").into_response();
    }
    let delay = *s.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let failure = s.injected.lock().unwrap().pop_front();
    if let Some(f) = failure {
        return injected(&s, f);
    }
    if uri.query().is_some() {
        return refuse(
            &s,
            400,
            "invalid_request",
            900144,
            "The request must not carry a query string; send the parameters in the form body.",
        );
    }
    let form_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).map(str::trim);
    if form_type != Some("application/x-www-form-urlencoded") {
        return refuse(&s, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.");
    }
    let mut form: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        if form.insert(k.to_string(), v.to_string()).is_some() {
            return refuse(
                &s,
                400,
                "invalid_request",
                9000411,
                &format!("The request is not properly formatted. The parameter '{k}' is duplicated."),
            );
        }
    }
    const ALLOWED: [&str; 6] = ["grant_type", "client_id", "scope", "client_secret", "client_assertion_type", "client_assertion"];
    if let Some(k) = form.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return refuse(&s, 400, "invalid_request", 90014, &format!("The request contains an unexpected parameter '{k}'."));
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        None => return refuse(&s, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."),
        Some(other) => {
            return refuse(&s, 400, "unsupported_grant_type", 70003, &format!("The app requested an unsupported grant type '{other}'."));
        }
    }
    let Some(client_id) = form.get("client_id").filter(|c| !c.is_empty()).cloned() else {
        return refuse(&s, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.");
    };
    let app = {
        let apps = s.apps.lock().unwrap();
        let known_tenant = tenant == BOTFRAMEWORK_TENANT || apps.iter().any(|a| a.tenants.contains(&tenant));
        if !known_tenant {
            drop(apps);
            return refuse(
                &s,
                400,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            );
        }
        apps.iter().find(|a| a.client_id == client_id && a.tenants.contains(&tenant)).cloned()
    };
    let Some(app) = app else {
        let directory = if tenant == BOTFRAMEWORK_TENANT { "Bot Framework".to_owned() } else { tenant.clone() };
        return refuse(
            &s,
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{directory}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        );
    };
    let expected_scope = s.scope.lock().unwrap().clone();
    match form.get("scope") {
        Some(scope) if *scope == expected_scope => {}
        Some(scope) => {
            return refuse(
                &s,
                400,
                "invalid_scope",
                70011,
                &format!("The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."),
            );
        }
        None => return refuse(&s, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."),
    }
    let token_url = format!("{}{}", s.base, uri.path());
    let credential = match (form.get("client_secret"), form.get("client_assertion_type"), form.get("client_assertion")) {
        (Some(secret), None, None) => {
            // Length-independent comparison; test-grade.
            let ok = app.secret.as_deref().is_some_and(|registered| {
                registered.len() == secret.len() && registered.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            });
            if !ok {
                return refuse(
                    &s,
                    401,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                );
            }
            "secret"
        }
        (None, Some(kind), Some(assertion)) => {
            if kind != ASSERTION_TYPE {
                return refuse(
                    &s,
                    400,
                    "invalid_request",
                    70002,
                    &format!("Error validating credentials. The client_assertion_type '{kind}' is not supported."),
                );
            }
            if let Err((code, why)) = verify_assertion(&s, &app, assertion, &client_id, &token_url) {
                return refuse(&s, 401, "invalid_client", code, &why);
            }
            "certificate"
        }
        (None, None, None) => {
            return refuse(
                &s,
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
        _ => {
            return refuse(
                &s,
                400,
                "invalid_request",
                90014,
                "Send either client_secret, or client_assertion_type with client_assertion; not both, not half.",
            );
        }
    };
    let expires_in = *s.expires_in.lock().unwrap();
    let token = format!("fake-entra-at-{:032x}", fastrand::u128(..));
    s.issued.lock().unwrap().push(IssuedToken {
        token: token.clone(),
        client_id,
        tenant,
        scope: expected_scope,
        expires_at: SystemTime::now() + Duration::from_secs(expires_in),
        credential,
    });
    axum::Json(json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}))
        .into_response()
}

/// Every check Entra makes on a client assertion, strictly. Err is (AADSTS code, description).
fn verify_assertion(s: &EntraState, app: &FakeApp, assertion: &str, client_id: &str, token_url: &str) -> Result<(), (u64, String)> {
    let (Some(der), Some(pem)) = (&app.certificate_der, &app.certificate_pem) else {
        return Err((700027, "The certificate with identifier used to sign the client assertion is not registered on application.".into()));
    };
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| (50027, "JWT token is invalid or malformed.".to_owned()))?;
    if header.alg != Algorithm::RS256 {
        return Err((700027, format!("Client assertion uses algorithm {:?}; RS256 is expected.", header.alg)));
    }
    let registered_s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(der));
    if header.x5t_s256.as_deref() != Some(registered_s256.as_str()) {
        return Err((
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}']",
                header.x5t_s256.as_deref().unwrap_or("none")
            ),
        ));
    }
    if let Some(x5t) = &header.x5t
        && *x5t != URL_SAFE_NO_PAD.encode(Sha1::digest(der))
    {
        return Err((700027, "The x5t header is not the SHA-1 thumbprint of the registered certificate.".into()));
    }
    if let Some(chain) = &header.x5c
        && chain.first().map(|c| STANDARD.decode(c).ok()) != Some(Some(der.clone()))
    {
        return Err((700027, "The x5c chain does not start with the registered certificate.".into()));
    }
    // The signature, with the registered certificate's public key.
    let key = DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let claims: Value = jsonwebtoken::decode::<Value>(assertion, &key, &v)
        .map_err(|_| (700027, "Client assertion failed signature validation.".to_owned()))?
        .claims;

    if claims["aud"] != token_url {
        return Err((700027, format!("Client assertion audience claim does not match Realm issuer. Expected {token_url}.")));
    }
    if claims["iss"] != client_id {
        return Err((700021, "Client assertion application identifier doesn't match 'client_id' parameter (iss).".into()));
    }
    if claims["sub"] != client_id {
        return Err((700021, "Client assertion application identifier doesn't match 'client_id' parameter (sub).".into()));
    }
    let now = now_secs();
    let Some(exp) = claims["exp"].as_u64() else {
        return Err((700024, "Client assertion contains no expiry (exp).".into()));
    };
    if exp <= now || exp > now + 600 + SKEW_SECS {
        return Err((
            700024,
            format!("Client assertion is not within its valid time range. Current time: {now}, assertion valid to: {exp}."),
        ));
    }
    let Some(nbf) = claims["nbf"].as_u64() else {
        return Err((700024, "Client assertion contains no nbf.".into()));
    };
    if nbf > now + 5 {
        return Err((
            700024,
            format!("Client assertion is not within its valid time range. Current time: {now}, assertion valid from: {nbf}."),
        ));
    }
    let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) else {
        return Err((700027, "Client assertion contains no jti.".into()));
    };
    if !s.used_jtis.lock().unwrap().insert(jti.to_owned()) {
        return Err((700027, format!("Client assertion with jti '{jti}' was already used (replay).")));
    }
    Ok(())
}
