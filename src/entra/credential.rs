//! A bot's client credential: a client secret, or a certificate whose private key signs client
//! assertions (RFC 7523 `private_key_jwt`, the way Entra documents it).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::error::SetupError;
use crate::config::BotConfig;

/// Lifetime of a client assertion (Entra accepts at most 10 minutes).
pub const ASSERTION_LIFETIME_SECS: u64 = 600;

/// The `client_assertion_type` that goes with a client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How a bot proves its identity to Entra.
#[derive(Clone)]
pub enum ClientCredential {
    /// A client secret (the secret's *value* from the app registration).
    Secret(SecretString),
    /// A certificate registered on the app, with its private key.
    Certificate(CertificateCredential),
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("ClientCredential::Secret(<redacted>)"),
            Self::Certificate(c) => write!(f, "ClientCredential::Certificate({c:?})"),
        }
    }
}

/// A certificate credential: the RSA private key and the thumbprints of its certificate.
#[derive(Clone)]
pub struct CertificateCredential {
    key: EncodingKey,
    x5t_s256: String,
    x5t: String,
    sha1_hex: String,
    x5c: Option<Vec<String>>,
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("key", &"<redacted>")
            .field("x5t#S256", &self.x5t_s256)
            .field("x5t", &self.x5t)
            .field("send_x5c", &self.x5c.is_some())
            .finish()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl CertificateCredential {
    /// Build from the private key (PEM: PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`, unencrypted) and
    /// the certificate (PEM; the leaf first, then any chain). With `send_x5c`, assertions carry the chain
    /// (`x5c`) for subject name + issuer authentication. The key must belong to the certificate.
    pub fn from_pem(key_pem: &[u8], cert_pem: &[u8], send_x5c: bool) -> Result<Self, SetupError> {
        Self::from_pem_for("", key_pem, cert_pem, send_x5c)
    }

    fn from_pem_for(app_id: &str, key_pem: &[u8], cert_pem: &[u8], send_x5c: bool) -> Result<Self, SetupError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| SetupError::cert(app_id, format!("not a PEM certificate ({e})")))?;
        let Some(leaf) = certs.first() else {
            return Err(SetupError::cert(app_id, "no `BEGIN CERTIFICATE` block found; give the certificate in PEM form"));
        };

        let key = private_key(app_id, key_pem)?;
        // The certificate's public key, to check that the key belongs to it.
        let public = DecodingKey::from_rsa_pem(pem_block("CERTIFICATE", leaf.as_ref()).as_bytes())
            .map_err(|_| SetupError::cert(app_id, "the certificate's key is not RSA (client assertions here are signed with RS256)"))?;
        let probe = b"agentgate key/certificate match probe";
        let matches = jsonwebtoken::crypto::sign(probe, &key, Algorithm::RS256)
            .and_then(|sig| jsonwebtoken::crypto::verify(&sig, probe, &public, Algorithm::RS256))
            .unwrap_or(false);
        if !matches {
            return Err(SetupError::key(app_id, "the private key does not belong to the certificate (their public keys differ)"));
        }

        let sha256 = Sha256::digest(leaf.as_ref());
        let sha1 = Sha1::digest(leaf.as_ref());
        Ok(Self {
            key,
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256),
            x5t: URL_SAFE_NO_PAD.encode(sha1),
            sha1_hex: sha1.iter().map(|b| format!("{b:02X}")).collect(),
            x5c: send_x5c.then(|| certs.iter().map(|c| STANDARD.encode(c.as_ref())).collect()),
        })
    }

    /// `x5t#S256`: base64url of the SHA-256 of the certificate's DER.
    pub fn x5t_s256(&self) -> &str {
        &self.x5t_s256
    }

    /// `x5t`: base64url of the SHA-1 of the certificate's DER.
    pub fn x5t(&self) -> &str {
        &self.x5t
    }

    /// The SHA-1 thumbprint as the Azure portal shows it (upper-case hex).
    pub fn thumbprint_hex(&self) -> &str {
        &self.sha1_hex
    }

    /// A client assertion for `client_id` at `token_endpoint` (its exact URL is the `aud`), valid for
    /// 10 minutes from now.
    pub fn client_assertion(&self, client_id: &str, token_endpoint: &str) -> Result<SecretString, SetupError> {
        self.client_assertion_at(client_id, token_endpoint, SystemTime::now())
    }

    /// [`CertificateCredential::client_assertion`] as of `now`.
    pub fn client_assertion_at(&self, client_id: &str, token_endpoint: &str, now: SystemTime) -> Result<SecretString, SetupError> {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.x5t_s256 = Some(self.x5t_s256.clone());
        header.x5t = Some(self.x5t.clone());
        header.x5c.clone_from(&self.x5c);
        let claims = AssertionClaims {
            aud: token_endpoint,
            iss: client_id,
            sub: client_id,
            jti: format!("{:032x}", fastrand::u128(..)),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map(SecretString::from).map_err(|e| SetupError::Signing(e.to_string()))
    }
}

/// The first private key in `pem` (a file may hold the certificate too), as an RS256 signing key.
fn private_key(app_id: &str, pem: &[u8]) -> Result<EncodingKey, SetupError> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(SetupError::key(
            app_id,
            "the private key is encrypted; store it unencrypted with mode 0600 (`openssl pkey -in key.pem -out key-plain.pem`)",
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        SetupError::key(
            app_id,
            "no `BEGIN PRIVATE KEY` or `BEGIN RSA PRIVATE KEY` block found; give the certificate's private key in PEM form",
        )
    })?;
    let (label, bytes) = match &der {
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        PrivateKeyDer::Sec1(_) => {
            return Err(SetupError::key(app_id, "the key is an EC key; client assertions here are RS256, so use an RSA key"));
        }
        _ => return Err(SetupError::key(app_id, "unsupported private key type; use an RSA key")),
    };
    let pem = SecretString::from(pem_block(label, bytes));
    EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes())
        .map_err(|_| SetupError::key(app_id, "the private key is not an RSA key (client assertions here are RS256)"))
}

/// A DER blob as one PEM block.
fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl ClientCredential {
    /// Load a bot's credential from its configuration: `credential` alone is the client secret; with
    /// `certificate`, `credential` is the certificate's private key. Errors name the bot and the field.
    pub async fn from_bot_config(bot: &BotConfig) -> Result<Self, SetupError> {
        let app_id = bot.app_id.as_str();
        let Some(credential) = &bot.credential else {
            return Err(SetupError::NotConfigured { app_id: app_id.to_owned() });
        };
        let secret =
            credential.load().await.map_err(|source| SetupError::Load { app_id: app_id.to_owned(), field: "credential", source })?;
        let Some(certificate) = &bot.certificate else {
            if secret.expose_secret().contains("-----BEGIN") {
                return Err(SetupError::Key {
                    field: format!("bot {app_id}: `credential`"),
                    problem: "holds a PEM block, not a client secret: for a certificate credential also set `certificate` to the certificate's reference".into(),
                });
            }
            return Ok(Self::Secret(secret));
        };
        let cert_pem = certificate.load_public().await.map_err(|source| SetupError::Load {
            app_id: app_id.to_owned(),
            field: "certificate",
            source,
        })?;
        let cert = CertificateCredential::from_pem_for(
            app_id,
            secret.expose_secret().as_bytes(),
            cert_pem.expose_secret().as_bytes(),
            bot.send_x5c,
        )?;
        Ok(Self::Certificate(cert))
    }

    /// The kind, for logs: `secret` or `certificate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Secret(_) => "secret",
            Self::Certificate(_) => "certificate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed RSA certificate and its key, both PEM.
    fn test_cert() -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bot.example.test".to_owned()]).unwrap().self_signed(&kp).unwrap();
        (kp.serialize_pem(), cert.pem())
    }

    fn decode_part(token: &str, i: usize) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn assertion_has_thumbprints_and_claims() {
        let (key, cert) = test_cert();
        let c = CertificateCredential::from_pem(key.as_bytes(), cert.as_bytes(), false).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(c.x5t_s256(), URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref())));
        assert_eq!(c.x5t(), URL_SAFE_NO_PAD.encode(Sha1::digest(der.as_ref())));
        assert_eq!(c.thumbprint_hex().len(), 40);

        let aud = "https://login.microsoftonline.com/t1/oauth2/v2.0/token";
        let jwt = c.client_assertion("app-1", aud).unwrap();
        let jwt = jwt.expose_secret();
        let h = decode_part(jwt, 0);
        assert_eq!(h["alg"], "RS256");
        assert_eq!(h["typ"], "JWT");
        assert_eq!(h["x5t#S256"], c.x5t_s256());
        assert_eq!(h["x5t"], c.x5t());
        assert!(h.get("x5c").is_none());
        let claims = decode_part(jwt, 1);
        assert_eq!(claims["aud"], aud);
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 600);
        let again = c.client_assertion("app-1", aud).unwrap();
        assert_ne!(decode_part(again.expose_secret(), 1)["jti"], claims["jti"]);

        // The signature verifies with the certificate's public key.
        let public = DecodingKey::from_rsa_pem(cert.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
        v.set_audience(&[aud]);
        v.set_issuer(&["app-1"]);
        jsonwebtoken::decode::<serde_json::Value>(jwt, &public, &v).unwrap();
    }

    #[test]
    fn x5c_only_when_asked() {
        let (key, cert) = test_cert();
        let c = CertificateCredential::from_pem(key.as_bytes(), cert.as_bytes(), true).unwrap();
        let jwt = c.client_assertion("app-1", "https://login.microsoftonline.com/t/oauth2/v2.0/token").unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(decode_part(jwt.expose_secret(), 0)["x5c"], serde_json::json!([STANDARD.encode(der.as_ref())]));
    }

    #[test]
    fn one_pem_file_may_hold_both_certificate_and_key() {
        let (key, cert) = test_cert();
        let combined = format!("{cert}{key}");
        assert!(CertificateCredential::from_pem(combined.as_bytes(), combined.as_bytes(), false).is_ok());
    }

    #[test]
    fn mismatched_or_unusable_keys_are_refused_clearly() {
        let (key, cert) = test_cert();
        let (other_key, _) = test_cert();
        let e = CertificateCredential::from_pem(other_key.as_bytes(), cert.as_bytes(), false).unwrap_err();
        assert!(e.to_string().contains("does not belong to the certificate"), "{e}");
        let e = CertificateCredential::from_pem(key.as_bytes(), key.as_bytes(), false).unwrap_err();
        assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
        let e = CertificateCredential::from_pem(cert.as_bytes(), cert.as_bytes(), false).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = CertificateCredential::from_pem(enc.as_bytes(), cert.as_bytes(), false).unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let e = CertificateCredential::from_pem(ec.as_bytes(), cert.as_bytes(), false).unwrap_err();
        assert!(e.to_string().contains("RSA"), "{e}");
    }

    #[test]
    fn debug_output_is_redacted() {
        let (key, cert) = test_cert();
        let c = CertificateCredential::from_pem(key.as_bytes(), cert.as_bytes(), true).unwrap();
        let shown = format!("{:?}", ClientCredential::Certificate(c));
        assert!(shown.contains("<redacted>") && !shown.contains("PRIVATE"), "{shown}");
        let shown = format!("{:?}", ClientCredential::Secret(SecretString::from("hunter2-secret")));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
