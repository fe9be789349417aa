//! Token errors, and the AADSTS codes worth a hint.

use std::fmt;
use std::time::Duration;

use crate::secrets::SecretError;

/// Longest Entra error description kept (its first line only).
const MAX_DESCRIPTION: usize = 400;

/// Why no token could be had. Holds no secret, assertion or token; cheap to clone (it is shared with
/// every caller that waited for the same refresh).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Entra (or a proxy in front of it) answered with an OAuth error.
    #[error("token request to {endpoint} refused: {detail}")]
    Refused {
        /// The token endpoint URL.
        endpoint: String,
        /// The OAuth error and its AADSTS codes.
        detail: Box<EntraError>,
    },
    /// An HTTP error status without an OAuth error body (throttling, a gateway error).
    #[error("token request to {endpoint} failed with HTTP {status}{}", retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    Status {
        /// The token endpoint URL.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The endpoint could not be reached (DNS, connection, TLS, timeout).
    #[error("token endpoint {endpoint} unreachable: {reason}")]
    Unreachable {
        /// The token endpoint URL.
        endpoint: String,
        /// The transport error.
        reason: String,
    },
    /// A success status with an unusable body (no token, not JSON, wrong token type…).
    #[error("token endpoint {endpoint} sent an unusable answer: {reason}")]
    BadResponse {
        /// The token endpoint URL.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The credential could not be used (signing the client assertion failed).
    #[error("client credential: {0}")]
    Credential(String),
    /// The client or the request is misconfigured (refused before anything was sent).
    #[error("token client: {0}")]
    Setup(String),
}

impl TokenError {
    /// The OAuth error Entra answered with, if that is what this is.
    pub fn entra(&self) -> Option<&EntraError> {
        match self {
            Self::Refused { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (throttling, 5xx, `temporarily_unavailable`, network
    /// trouble). The client has already retried within its budget; this is for callers with their own
    /// queue (the outbox): credential, tenant and request errors are never transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Unreachable { .. } => true,
            Self::Refused { detail, .. } => detail.is_transient(),
            Self::BadResponse { .. } | Self::Credential(_) | Self::Setup(_) => false,
        }
    }

    /// Remove `sensitive` (a token or assertion that was sent) from any text this error carries.
    pub(crate) fn scrub(&mut self, sensitive: &str) {
        if sensitive.is_empty() {
            return;
        }
        let clean = |s: &mut String| {
            if s.contains(sensitive) {
                *s = s.replace(sensitive, "<redacted>");
            }
        };
        match self {
            Self::Refused { detail, .. } => clean(&mut detail.description),
            Self::BadResponse { reason, .. } | Self::Unreachable { reason, .. } => clean(reason),
            Self::Credential(s) | Self::Setup(s) => clean(s),
            Self::Status { .. } => {}
        }
    }

    /// The AADSTS codes of an Entra refusal (empty otherwise).
    pub fn aadsts_codes(&self) -> &[u64] {
        self.entra().map_or(&[], |e| &e.codes)
    }
}

/// An OAuth error response from Entra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    /// The HTTP status it came with (sometimes 200 behind proxies).
    pub status: u16,
    /// The OAuth `error`, such as `invalid_client`.
    pub error: String,
    /// AADSTS codes, from `error_codes` or else from the description.
    pub codes: Vec<u64>,
    /// The first line of `error_description`, shortened, with anything we sent scrubbed out.
    pub description: String,
    /// Entra's trace id, for a support ticket.
    pub trace_id: Option<String>,
    /// Entra's correlation id, for a support ticket.
    pub correlation_id: Option<String>,
}

impl EntraError {
    /// Build from a response's fields. `sensitive` (the secret or assertion just sent) is removed from
    /// the description in case a proxy echoes the request.
    pub(crate) fn new(
        status: u16,
        error: &str,
        error_codes: &[serde_json::Value],
        description: &str,
        trace_id: Option<String>,
        correlation_id: Option<String>,
        sensitive: &str,
    ) -> Self {
        let mut codes: Vec<u64> =
            error_codes.iter().filter_map(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok()))).collect();
        if codes.is_empty() {
            codes = codes_in(description);
        }
        let mut first = description.lines().next().unwrap_or_default().trim();
        // "AADSTS7000215: Invalid client secret…": the code is shown with the error already.
        if let Some((head, rest)) = first.split_once(": ")
            && head.strip_prefix("AADSTS").is_some_and(|n| n.parse::<u64>().is_ok_and(|n| codes.contains(&n)))
        {
            first = rest;
        }
        let mut first = first.to_owned();
        if !sensitive.is_empty() {
            first = first.replace(sensitive, "<redacted>");
        }
        if first.len() > MAX_DESCRIPTION {
            let mut cut = MAX_DESCRIPTION;
            while !first.is_char_boundary(cut) {
                cut -= 1;
            }
            first.truncate(cut);
            first.push('…');
        }
        let clean = |s: Option<String>| s.filter(|v| v.len() <= 64 && v.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        Self {
            status,
            error: error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect(),
            codes,
            description: first,
            trace_id: clean(trace_id),
            correlation_id: clean(correlation_id),
        }
    }

    /// Whether this refusal may go away by itself: throttling, a server error or
    /// `temporarily_unavailable`, and never an error about the request or the credential.
    pub fn is_transient(&self) -> bool {
        let transient_status = self.status == 429 || (500..=599).contains(&self.status);
        !permanent(&self.error) && (transient_status || matches!(self.error.as_str(), "temporarily_unavailable" | "server_error"))
    }

    /// Whether the refusal carries `code` (AADSTS number without the prefix).
    pub fn has_code(&self, code: u64) -> bool {
        self.codes.contains(&code)
    }

    /// A hint for the first AADSTS code we know something about.
    pub fn hint(&self) -> Option<&'static str> {
        self.codes.iter().find_map(|c| hint(*c))
    }
}

impl fmt::Display for EntraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}", self.error, self.status)?;
        for c in &self.codes {
            write!(f, ", AADSTS{c}")?;
        }
        f.write_str(")")?;
        if !self.description.is_empty() {
            write!(f, ": {}", self.description)?;
        }
        if let Some(h) = self.hint() {
            write!(f, " — hint: {h}")?;
        }
        if let Some(t) = &self.trace_id {
            write!(f, " [trace id {t}")?;
            if let Some(c) = &self.correlation_id {
                write!(f, ", correlation id {c}")?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// OAuth errors that are never worth retrying: the request or the credential is wrong.
pub(crate) fn permanent(error: &str) -> bool {
    matches!(
        error,
        "invalid_client"
            | "unauthorized_client"
            | "invalid_request"
            | "invalid_grant"
            | "invalid_scope"
            | "unsupported_grant_type"
            | "access_denied"
            | "invalid_resource"
            | "invalid_instance"
    )
}

/// `AADSTSnnnn` numbers in a description.
fn codes_in(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("AADSTS") {
        rest = &rest[i + "AADSTS".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse()
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

/// What to do about the AADSTS codes people hit with bot credentials.
pub fn hint(code: u64) -> Option<&'static str> {
    Some(match code {
        700016 => {
            "the app id was not found in the token endpoint's tenant: a single-tenant bot needs `tenant_id` set to its home tenant, a legacy multi-tenant bot leaves it unset (botframework.com); also check `app_id`"
        }
        7000215 => "invalid client secret: use the secret's Value (not its Secret ID) from the app registration's Certificates & secrets",
        7000222 => "the client secret has expired: create a new one under Certificates & secrets and update the bot's `credential`",
        700027 => {
            "the client assertion was rejected: upload this certificate (public part) to the app registration's Certificates & secrets, check that `certificate` and its key match it, and that the clock is right"
        }
        700024 => "the client assertion is outside its valid time range: check the system clock (NTP)",
        700021 | 700023 => "the client assertion's issuer/subject must be the app id: check `app_id`",
        7000218 => "no client secret or assertion was accepted: check the bot's `credential` (and `certificate`)",
        90002 | 90023 | 900023 => {
            "the tenant in the token endpoint is not valid: check `tenant_id` (the bot's home tenant id) and the bot's `cloud`"
        }
        50049 => "unknown or invalid authority: check the bot's `cloud` and any login authority override",
        7000112 => {
            "the application is disabled in the tenant: re-enable it (Enterprise applications → Properties → Enabled for users to sign in)"
        }
        70011 => "the scope is not valid for this app: check the bot's `cloud` (the scope is the cloud's Bot Framework API)",
        50059 => "no tenant could be determined: set `tenant_id` for a single-tenant bot",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_come_from_error_codes_or_the_description() {
        let e = EntraError::new(
            400,
            "unauthorized_client",
            &[serde_json::json!(700016)],
            "AADSTS700016: Application with identifier 'x' was not found in the directory 'Bot Framework'.\r\nTrace ID: 1",
            None,
            None,
            "",
        );
        assert_eq!(e.codes, vec![700016]);
        assert!(e.hint().unwrap().contains("tenant_id"));
        assert!(!e.description.contains("Trace ID"));
        let e = EntraError::new(401, "invalid_client", &[], "AADSTS7000222: The provided client secret keys are expired.", None, None, "");
        assert_eq!(e.codes, vec![7000222]);
        assert!(e.to_string().contains("AADSTS7000222") && e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn every_listed_code_has_a_hint() {
        for c in [700016, 7000215, 7000222, 700027, 90002, 90023, 50049, 7000112] {
            assert!(hint(c).is_some(), "{c}");
        }
        assert!(hint(1).is_none());
    }

    #[test]
    fn long_descriptions_are_cut_on_a_char_boundary() {
        let long = "é".repeat(500);
        let e = EntraError::new(400, "invalid_request", &[], &long, Some("not a trace id!".into()), None, "");
        assert!(e.description.len() <= MAX_DESCRIPTION + '…'.len_utf8());
        assert!(e.trace_id.is_none());
    }
}

/// Why something of the Entra layer could not be set up from the configuration: a credential, an
/// authority, a tenant, the Agent User chain. Each message names the bot or the config field and says
/// what to fix. Never holds key material or secrets.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The bot has no `credential` configured.
    #[error(
        "bot {app_id}: `credential` is not set, so the bot cannot get tokens to reply; set it to the client secret's reference (env:VAR, file:/path, credential:NAME, keyring:service/user), or to the certificate's private key with `certificate`"
    )]
    NotConfigured { app_id: String },
    /// A secret reference (`credential` or `certificate`) could not be loaded.
    #[error("bot {app_id}: `{field}`: {source}")]
    Load {
        app_id: String,
        /// The config field: `credential` or `certificate`.
        field: &'static str,
        #[source]
        source: SecretError,
    },
    /// The private key is unusable.
    #[error("{field}: {problem}")]
    Key { field: String, problem: String },
    /// The certificate is unusable.
    #[error("{field}: {problem}")]
    Certificate { field: String, problem: String },
    /// Signing a client assertion failed.
    #[error("signing the client assertion failed: {0}")]
    Signing(String),
    /// Not a usable token authority (https, or plain http on loopback; scheme and host only).
    #[error("token authority {0}")]
    Authority(String),
    /// A tenant that is not a GUID or a domain name.
    #[error("`{0}` is not a tenant id (a GUID or a domain such as contoso.onmicrosoft.com)")]
    Tenant(String),
    /// A bot's `tenant_id` does not make a token endpoint.
    #[error("bot {app_id}: `tenant_id`: {source}")]
    BotTenant {
        app_id: String,
        #[source]
        source: Box<SetupError>,
    },
    /// A config field of the Agent User chain, such as `bots[0].agent_user.key`.
    #[error("`{field}`: {problem}")]
    Field { field: String, problem: String },
}

impl SetupError {
    /// The config field at fault (`credential` or `certificate`), when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::NotConfigured { .. } => Some("credential"),
            Self::Load { field, .. } => Some(field),
            Self::Key { .. } => Some("credential"),
            Self::Certificate { .. } => Some("certificate"),
            Self::Signing(_) | Self::Authority(_) | Self::Tenant(_) => None,
            Self::BotTenant { .. } => Some("tenant_id"),
            Self::Field { field, .. } => Some(field),
        }
    }

    /// `app_id` is empty when no bot is in context ([`CertificateCredential::from_pem`]).
    pub(super) fn key(app_id: &str, problem: impl Into<String>) -> Self {
        let field = if app_id.is_empty() {
            "private key".to_owned()
        } else {
            format!("bot {app_id}: `credential` (the certificate's private key)")
        };
        Self::Key { field, problem: problem.into() }
    }

    /// A config field of the Agent User chain and what is wrong with it.
    pub(crate) fn at_field(field: String, problem: String) -> Self {
        Self::Field { field, problem }
    }

    pub(super) fn cert(app_id: &str, problem: impl Into<String>) -> Self {
        let field = if app_id.is_empty() { "certificate".to_owned() } else { format!("bot {app_id}: `certificate`") };
        Self::Certificate { field, problem: problem.into() }
    }
}
