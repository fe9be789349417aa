//! The administrator's sign-in for provisioning, held in memory only:
//!
//! * default: the authorization-code flow with PKCE (S256) on a loopback redirect (RFC 8252): a listener
//!   on `127.0.0.1` and a random port, one `state` compared in constant time, the code verifier sent only
//!   to the token endpoint;
//! * `--device-code`: the device authorization grant, an explicit fallback for machines without a browser
//!   (phishable: the code is not bound to this machine);
//! * a dedicated provisioner app with a certificate (client credentials).
//!
//! Every token is checked before use: one that carries `Directory.AccessAsUser.All` (every Azure CLI
//! token does) is refused, because the Agent ID APIs reject it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

use crate::entra::{Authority, CertificateCredential, ClientCredential, TokenClient, TokenClientSettings, TokenRequest};

/// The permission the Agent ID APIs refuse.
pub(crate) const REFUSED_SCOPE: &str = "Directory.AccessAsUser.All";

/// The delegated Graph permissions the administrator's sign-in asks for, explicitly (never `.default`,
/// which over a broad client can bundle `Directory.AccessAsUser.All`).
pub(crate) const ADMIN_SCOPES: &[&str] = &[
    "AgentIdentityBlueprint.Create",
    "AgentIdentityBlueprint.ReadWrite.All",
    "AgentIdentityBlueprint.AddRemoveCreds.All",
    "AgentIdentityBlueprintPrincipal.Create",
    "AgentIdentity.Create.All",
    "AgentIdentity.ReadWrite.All",
    "AgentIdUser.ReadWrite.IdentityParentedBy",
    "DelegatedPermissionGrant.ReadWrite.All",
    "Application.Read.All",
    "Domain.Read.All",
    "LicenseAssignment.ReadWrite.All",
    "User.Read",
];

/// How long the browser step may take.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest request read on the loopback listener.
const MAX_REDIRECT_REQUEST: usize = 16 * 1024;

/// The loopback redirect URI: `http` to a loopback IP literal (127.0.0.1, or [::1]); port 0 = a random
/// free port. `localhost` is refused (RFC 8252 §8.3: a name can resolve elsewhere), and so is anything else.
pub(crate) fn loopback_redirect(uri: &str) -> anyhow::Result<Url> {
    let url = Url::parse(uri).map_err(|_| anyhow!("--redirect-uri `{uri}` is not a URL"))?;
    let loopback_ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    if url.scheme() != "http" || !loopback_ip || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        bail!(
            "refusing the redirect URI `{uri}`: the sign-in redirect must be a loopback address on this machine \
             (http://127.0.0.1:PORT/, RFC 8252), so that the authorization code never leaves it"
        );
    }
    Ok(url)
}

/// Random bytes from the OS, base64url.
fn random_b64(n: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| anyhow!("the OS random generator failed: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// A PKCE pair and the `state`.
pub(crate) struct Pkce {
    pub(crate) verifier: SecretString,
    pub(crate) challenge: String,
    pub(crate) state: SecretString,
}

impl Pkce {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let verifier = random_b64(32)?;
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Ok(Self { verifier: SecretString::from(verifier), challenge, state: SecretString::from(random_b64(24)?) })
    }
}

/// Where the administrator signs in.
#[derive(Debug, Clone)]
pub(crate) struct SignIn {
    pub(crate) authority: Authority,
    pub(crate) tenant: String,
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
    /// The Graph resource the scopes belong to (`https://graph.microsoft.com`).
    pub(crate) resource: String,
}

impl SignIn {
    fn endpoint(&self, last: &str) -> anyhow::Result<Url> {
        let token = self.authority.token_endpoint(&self.tenant)?;
        let s = token.as_str().trim_end_matches("/token");
        Url::parse(&format!("{s}/{last}")).context("building the sign-in URL")
    }

    fn scope_param(&self) -> String {
        self.scopes.iter().map(|s| format!("{}/{s}", self.resource)).collect::<Vec<_>>().join(" ")
    }

    /// The authorize URL for this PKCE pair and redirect.
    pub(crate) fn authorize_url(&self, redirect: &Url, pkce: &Pkce) -> anyhow::Result<Url> {
        let mut url = self.endpoint("authorize")?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect.as_str())
            .append_pair("response_mode", "query")
            .append_pair("scope", &self.scope_param())
            .append_pair("state", pkce.state.expose_secret())
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("prompt", "select_account");
        Ok(url)
    }

    /// The authorization-code flow with PKCE on a loopback redirect. `redirect` is the loopback URI (port 0
    /// = random); `show` receives the authorize URL to open in a browser.
    pub(crate) async fn auth_code(&self, redirect: &Url, show: impl FnOnce(&Url)) -> anyhow::Result<SecretString> {
        let redirect = loopback_redirect(redirect.as_str())?;
        let ip: IpAddr = match redirect.host() {
            Some(url::Host::Ipv4(ip)) => ip.into(),
            Some(url::Host::Ipv6(ip)) => ip.into(),
            _ => unreachable!("checked by loopback_redirect"),
        };
        let listener = TcpListener::bind(SocketAddr::new(ip, redirect.port().unwrap_or(0)))
            .await
            .with_context(|| format!("listening on {ip} for the sign-in redirect"))?;
        let port = listener.local_addr()?.port();
        let mut redirect = redirect;
        redirect.set_port(Some(port)).map_err(|()| anyhow!("setting the redirect port"))?;
        let pkce = Pkce::new()?;
        show(&self.authorize_url(&redirect, &pkce)?);
        let code = tokio::time::timeout(SIGN_IN_TIMEOUT, wait_for_code(&listener, redirect.path(), &pkce.state))
            .await
            .map_err(|_| anyhow!("no sign-in within {} s", SIGN_IN_TIMEOUT.as_secs()))??;
        let form = [
            ("client_id", self.client_id.as_str()),
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", redirect.as_str()),
            ("code_verifier", pkce.verifier.expose_secret()),
            ("scope", &self.scope_param()),
        ];
        self.token_post(&form).await
    }

    /// The device authorization grant: prints the code and the page, then polls.
    pub(crate) async fn device_code(&self) -> anyhow::Result<SecretString> {
        let http = http()?;
        let scope = self.scope_param();
        let r = http
            .post(self.endpoint("devicecode")?)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form_body(&[("client_id", self.client_id.as_str()), ("scope", scope.as_str())]))
            .send()
            .await
            .map_err(|e| anyhow!("the device-code endpoint did not answer: {}", crate::http_util::error_chain(&e.without_url())))?;
        let body: Value = r.json().await.context("reading the device-code answer")?;
        if let Some(e) = body.get("error").and_then(Value::as_str) {
            bail!("device code refused: {e}: {}", body.get("error_description").and_then(Value::as_str).unwrap_or(""));
        }
        let device_code =
            body.get("device_code").and_then(Value::as_str).ok_or_else(|| anyhow!("no device_code in the answer"))?.to_owned();
        let message = body.get("message").and_then(Value::as_str).unwrap_or("open the verification page and enter the code");
        eprintln!("{message}");
        eprintln!("(device code is a fallback: it can be phished; prefer the browser sign-in on a machine that has one)");
        let mut interval = body.get("interval").and_then(Value::as_u64).unwrap_or(5).max(1);
        let expires = body.get("expires_in").and_then(Value::as_u64).unwrap_or(900);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(expires);
        let form = [
            ("client_id", self.client_id.as_str()),
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.as_str()),
        ];
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if tokio::time::Instant::now() > deadline {
                bail!("the device code expired before sign-in finished");
            }
            match self.token_post(&form).await {
                Ok(t) => return Ok(t),
                Err(e) if e.to_string().contains("authorization_pending") => {}
                Err(e) if e.to_string().contains("slow_down") => interval += 5,
                Err(e) => return Err(e),
            }
        }
    }

    /// A dedicated provisioner app's token (client credentials with its certificate): Graph `.default`.
    pub(crate) async fn provisioner_app(&self, credential: CertificateCredential) -> anyhow::Result<SecretString> {
        let client = TokenClient::new(TokenClientSettings::default())?;
        let endpoint = self.authority.token_endpoint(&self.tenant)?;
        let req = TokenRequest::new(
            self.client_id.clone(),
            endpoint,
            format!("{}/.default", self.resource),
            Arc::new(ClientCredential::Certificate(credential)),
        );
        let token = client.token(&req).await.map_err(|e| anyhow!("the provisioner app could not sign in: {e}"))?;
        let value = token.secret().clone();
        check_admin_token(&value)?;
        Ok(value)
    }

    async fn token_post(&self, form: &[(&str, &str)]) -> anyhow::Result<SecretString> {
        let r = http()?
            .post(self.endpoint("token")?)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form_body(form))
            .send()
            .await
            .map_err(|e| anyhow!("the token endpoint did not answer: {}", crate::http_util::error_chain(&e.without_url())))?;
        let body: Value = r.json().await.context("reading the token answer")?;
        if let Some(e) = body.get("error").and_then(Value::as_str) {
            let desc = body.get("error_description").and_then(Value::as_str).unwrap_or("");
            bail!("{e}: {}", desc.lines().next().unwrap_or(""));
        }
        let token = body.get("access_token").and_then(Value::as_str).ok_or_else(|| anyhow!("the token answer has no access_token"))?;
        let token = SecretString::from(token.to_owned());
        check_admin_token(&token)?;
        Ok(token)
    }
}

/// An `application/x-www-form-urlencoded` body.
fn form_body(form: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish()
}

fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// Refuse a token the Agent ID APIs would refuse: one whose `scp` holds `Directory.AccessAsUser.All`. The
/// token is only read (its signature is Graph's to check), never printed.
pub(crate) fn check_admin_token(token: &SecretString) -> anyhow::Result<()> {
    let claims = token
        .expose_secret()
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(claims) = claims else { return Ok(()) };
    let scp = claims.get("scp").and_then(Value::as_str).unwrap_or("");
    if scp.split(' ').any(|s| s.eq_ignore_ascii_case(REFUSED_SCOPE)) {
        bail!(
            "refusing this token: it carries {REFUSED_SCOPE} (every Azure CLI token does, and so does `.default` over a broadly \
             consented client), and the Agent ID APIs reject any call made with it. Sign in through a dedicated public client \
             app (--client-id) consented only for the explicit scopes agentgate asks for, or use a provisioner app with a \
             certificate (--provisioner-app)"
        );
    }
    Ok(())
}

/// Serve the loopback redirect until the browser brings the code. Other paths are answered 404 and
/// waited past; a `state` that does not match, or an error from the authorization server, ends the sign-in.
async fn wait_for_code(listener: &TcpListener, path: &str, state: &SecretString) -> anyhow::Result<SecretString> {
    loop {
        let (mut sock, peer) = listener.accept().await.context("accepting the sign-in redirect")?;
        if !peer.ip().is_loopback() {
            continue;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REDIRECT_REQUEST {
            match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head.lines().next().and_then(|l| l.strip_prefix("GET ")).and_then(|l| l.split(' ').next()).unwrap_or("");
        let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else {
            respond(&mut sock, 400, "Bad request.").await;
            continue;
        };
        if url.path() != path {
            respond(&mut sock, 404, "Not found.").await;
            continue;
        }
        let q = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
        let same_state = q("state").is_some_and(|s| bool::from(s.as_bytes().ct_eq(state.expose_secret().as_bytes())));
        if !same_state {
            respond(&mut sock, 400, "Sign-in refused: the state does not match this sign-in. Close this window and start again.").await;
            bail!("sign-in refused: the redirect's `state` does not match the one this sign-in sent (a forged or stale redirect)");
        }
        if let Some(e) = q("error") {
            respond(&mut sock, 400, "Sign-in failed; see the terminal.").await;
            bail!("sign-in failed: {e}: {}", q("error_description").unwrap_or_default().lines().next().unwrap_or(""));
        }
        let Some(code) = q("code") else {
            respond(&mut sock, 400, "No authorization code.").await;
            bail!("the sign-in redirect carried no authorization code");
        };
        respond(&mut sock, 200, "Signed in. You can close this window and return to the terminal.").await;
        return Ok(SecretString::from(code));
    }
}

async fn respond(sock: &mut tokio::net::TcpStream, status: u16, text: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(msg.as_bytes()).await;
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_ip_redirects_are_accepted() {
        assert!(loopback_redirect("http://127.0.0.1:0/").is_ok());
        assert!(loopback_redirect("http://127.0.0.1:8400/cb").is_ok());
        assert!(loopback_redirect("http://[::1]:8400/").is_ok());
        for bad in [
            "http://localhost:8400/",
            "https://127.0.0.1/",
            "http://10.0.0.1:8400/",
            "http://evil.example/",
            "http://127.0.0.1.evil.example/",
        ] {
            assert!(loopback_redirect(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_challenge_is_the_s256_of_the_verifier() {
        let p = Pkce::new().unwrap();
        assert_eq!(p.challenge, URL_SAFE_NO_PAD.encode(Sha256::digest(p.verifier.expose_secret().as_bytes())));
        assert!(p.verifier.expose_secret().len() >= 43);
        assert_ne!(p.state.expose_secret(), Pkce::new().unwrap().state.expose_secret());
    }

    #[test]
    fn a_token_with_directory_access_as_user_is_refused() {
        let tok = |scp: &str| {
            let claims = URL_SAFE_NO_PAD.encode(serde_json::json!({"scp": scp}).to_string());
            SecretString::from(format!("e30.{claims}.sig"))
        };
        assert!(check_admin_token(&tok("AgentIdentity.Create.All User.Read")).is_ok());
        let err = check_admin_token(&tok("User.Read Directory.AccessAsUser.All")).unwrap_err().to_string();
        assert!(err.contains("Azure CLI") && err.contains("Directory.AccessAsUser.All"), "{err}");
    }
}
