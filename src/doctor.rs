//! `agentgate doctor`: a ✓/✗ checklist of everything a deployment needs, each ✗ with how to fix it.
//!
//! Checks, in order: the configuration, the TLS files, per cloud in use the OpenID metadata and
//! signing keys (issuer pinned), and per bot its credential, a real bot token, the three-hop Agent
//! User chain, the Teams app package and each allowed tenant. Nothing here prints a secret or a token.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::KeyCache;
use crate::auth::keys::{KeyCacheSettings, KeyFetchError};
use crate::config::{BotConfig, Config, check_fetch_url};
use crate::entra::{Authority, BotTokenProvider, ClientCredential, SetupError, TokenClient, TokenClientSettings, TokenError};
use crate::ids::Cloud;
use crate::metrics::Metrics;
use crate::teams_app::{AppInfo, PackageError};

/// The website used to validate the Teams app package when no `--domain` is given (the real one is
/// set when packaging).
pub(crate) const PLACEHOLDER_WEBSITE: &str = "https://example.com/";

/// How one check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    Fail { problem: String, fix: String },
    Skip(String),
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub name: String,
    pub outcome: Outcome,
}

impl Check {
    pub(crate) fn pass(name: impl Into<String>) -> Self {
        Self { name: name.into(), outcome: Outcome::Pass }
    }

    pub(crate) fn fail(name: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), outcome: Outcome::Fail { problem: problem.into(), fix: fix.into() } }
    }

    pub(crate) fn skip(name: impl Into<String>, why: impl Into<String>) -> Self {
        Self { name: name.into(), outcome: Outcome::Skip(why.into()) }
    }

    pub(crate) fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass => write!(f, "✓ {}", self.name),
            Outcome::Fail { problem, fix } => write!(f, "✗ {}: {problem} — fix: {fix}", self.name),
            Outcome::Skip(why) => write!(f, "– {}: skipped ({why})", self.name),
        }
    }
}

/// The whole checklist.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed.
    pub(crate) fn ok(&self) -> bool {
        !self.checks.iter().any(Check::failed)
    }

    fn push(&mut self, c: Check) {
        self.checks.push(c);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{c}")?;
        }
        let count = |p: fn(&Outcome) -> bool| self.checks.iter().filter(|c| p(&c.outcome)).count();
        let passed = count(|o| matches!(o, Outcome::Pass));
        let failed = count(|o| matches!(o, Outcome::Fail { .. }));
        let skipped = count(|o| matches!(o, Outcome::Skip(_)));
        write!(f, "{passed} passed, {failed} failed, {skipped} skipped")
    }
}

/// What `agentgate doctor` was asked.
#[derive(Debug, Clone, Default)]
pub(crate) struct DoctorOptions {
    /// As `serve --dev`: a bot without credential uses the Playground placeholder.
    pub dev: bool,
    /// The public host of the messaging endpoint, for the Teams app package check.
    pub domain: Option<String>,
}

/// Run every check against `cfg`.
pub(crate) async fn run(cfg: &Config, opts: &DoctorOptions) -> Report {
    let mut r = Report::default();
    r.push(match cfg.validate(opts.dev) {
        Ok(()) => Check::pass("configuration valid"),
        Err(e) => {
            let fix = if e.field.is_empty() {
                "correct the configuration file, then run `agentgate check`".to_owned()
            } else {
                format!("correct `{}` in the configuration file (or its AGENTGATE__ variable), then run `agentgate check`", e.field)
            };
            Check::fail("configuration valid", e.to_string(), fix)
        }
    });
    r.push(tls(cfg).await);
    for cloud in Cloud::ALL {
        if cfg.bots.iter().any(|b| b.cloud == cloud) {
            r.push(keys(cfg, cloud).await);
        }
    }
    let client = match TokenClient::new(TokenClientSettings::default()) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            r.push(Check::fail("token client", e.to_string(), "report this: the HTTP client could not be built"));
            None
        }
    };
    for (i, bot) in cfg.bots.iter().enumerate() {
        bot_checks(&mut r, cfg, i, bot, client.as_ref(), opts).await;
    }
    r
}

async fn tls(cfg: &Config) -> Check {
    const NAME: &str = "TLS certificate and key";
    let t = &cfg.server.tls;
    match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let name = format!("{NAME} ({}, {})", cert.display(), key.display());
            match axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await {
                Ok(_) => Check::pass(name),
                Err(e) => Check::fail(
                    name,
                    format!("cannot be loaded: {e}"),
                    "make both files readable by agentgate and PEM-encoded (the certificate chain, then its private key); \
                     or set server.tls.cert_file and key_file to the right files",
                ),
            }
        }
        (None, None) if cfg.server.behind_proxy => Check::skip(NAME, "not configured: a TLS-terminating proxy is in front"),
        (None, None) => Check::skip(NAME, "not configured: plain HTTP"),
        _ => Check::fail(
            NAME,
            "only one of server.tls.cert_file and server.tls.key_file is set",
            "set both server.tls.cert_file and server.tls.key_file, or neither",
        ),
    }
}

async fn keys(cfg: &Config, cloud: Cloud) -> Check {
    let url = &cfg.clouds.get(cloud).openid_metadata_url;
    let name = format!("cloud {cloud}: OpenID metadata and signing keys ({url})");
    let field = format!("clouds.{cloud}.openid_metadata_url");
    let parsed = match check_fetch_url(url) {
        Ok(u) => u,
        Err(p) => return Check::fail(name, p, format!("set `{field}` to an https URL (default {})", cloud.default_metadata_url())),
    };
    let settings = KeyCacheSettings {
        refresh_every: Duration::from_secs(cfg.auth.key_refresh_secs.max(1)),
        unknown_kid_cooldown: Duration::from_secs(cfg.auth.unknown_kid_cooldown_secs),
        stale_grace: Duration::from_secs(cfg.auth.stale_keys_grace_secs),
        fetch_timeout: Duration::from_secs(cfg.auth.fetch_timeout_secs.max(1)),
    };
    let cache = match KeyCache::new(cloud, parsed, settings, Arc::new(Metrics::default())) {
        Ok(c) => c,
        Err(e) => return Check::fail(name, format!("building the HTTP client: {e}"), "report this: the HTTP client could not be built"),
    };
    match cache.refresh().await {
        Ok(()) => Check::pass(format!("{name}: reachable, issuer pinned to {}", cloud.issuer())),
        Err(e) => {
            let fix = match &e {
                KeyFetchError::Http { .. } => format!(
                    "let agentgate reach that host (DNS, firewall, outbound proxy), or correct `{field}` (default {})",
                    cloud.default_metadata_url()
                ),
                KeyFetchError::IssuerMismatch { .. } | KeyFetchError::BadJwksUri(_) => format!(
                    "`{field}` must be the {cloud} cloud's Bot Framework metadata ({}); remove the override",
                    cloud.default_metadata_url()
                ),
                KeyFetchError::NoUsableKeys => {
                    format!("`{field}` must point at the Bot Framework metadata, whose key set holds RS256 signing keys")
                }
            };
            Check::fail(name, e.to_string(), fix)
        }
    }
}

async fn bot_checks(r: &mut Report, cfg: &Config, i: usize, bot: &BotConfig, client: Option<&Arc<TokenClient>>, opts: &DoctorOptions) {
    let label = if bot.display_name.is_empty() {
        format!("bots[{i}] {}", bot.app_id)
    } else {
        format!("bots[{i}] {} ({})", bot.app_id, bot.display_name)
    };

    // The credential.
    let cred_name = format!("{label}: credential readable");
    let credential_ok = match &bot.credential {
        None if opts.dev => {
            r.push(Check::skip(&cred_name, "no credential: in --dev the bot presents the Agents Playground placeholder"));
            false
        }
        None => {
            r.push(Check::fail(
                &cred_name,
                format!("`bots[{i}].credential` is not set, so the bot receives but cannot reply"),
                format!(
                    "set `bots[{i}].credential` to the client secret's reference (env:VAR, file:/path, credential:NAME, keyring:service/user), \
                     or to the certificate's private key together with `bots[{i}].certificate`"
                ),
            ));
            false
        }
        Some(reference) => match ClientCredential::from_bot_config(bot).await {
            Ok(c) => {
                let what = match &bot.certificate {
                    Some(cert) => format!("{} (key {reference}, certificate {cert})", c.kind()),
                    None => format!("{} ({reference})", c.kind()),
                };
                r.push(Check::pass(format!("{cred_name}: {what}")));
                true
            }
            Err(e) => {
                r.push(credential_failure(&cred_name, i, &e));
                false
            }
        },
    };

    // A real token.
    let token_name = format!("{label}: bot token acquisition");
    if !credential_ok {
        let why = if bot.credential.is_none() { "no credential" } else { "the credential could not be loaded" };
        r.push(Check::skip(token_name, why));
    } else if let Some(client) = client {
        r.push(token(cfg, i, bot, Arc::clone(client), &token_name).await);
    }

    r.push(agent_user(cfg, i, &label, client).await);
    if let Some(check) = agent_user_inbound(cfg, bot, &label) {
        r.push(check);
    }
    r.push(package(i, bot, opts, &label));

    for tenant in &bot.allowed_tenants {
        let name = format!("{label}: tenant {tenant}: admin-consent link");
        r.push(match crate::teams_app::consent_url(bot.cloud, tenant.as_str(), &bot.app_id) {
            Ok(_) => Check::pass(format!("{name} (`agentgate teams-app consent-url --tenant {tenant} --bot {}`)", bot.app_id)),
            Err(e) => Check::fail(
                name,
                e.problem,
                format!("list the tenant's id (a GUID) or its domain in `bots[{i}].allowed_tenants`; the bot's app id must be a GUID"),
            ),
        });
    }
}

fn credential_failure(name: &str, i: usize, e: &SetupError) -> Check {
    let field = format!("bots[{i}].{}", e.field().unwrap_or("credential"));
    let fix = match e {
        SetupError::Load { .. } => {
            format!(
                "make the secret `{field}` refers to available to agentgate (as the message says), or point `{field}` at where it lives"
            )
        }
        SetupError::Key { .. } => {
            format!("`{field}` must be the certificate's private key (PEM, RSA), or the client secret's value when no certificate is set")
        }
        SetupError::Certificate { .. } => {
            format!("`{field}` must be the PEM certificate registered on the app (Certificates & secrets), matching the private key")
        }
        SetupError::NotConfigured { .. } => format!("set `{field}`"),
        SetupError::Signing(_) => format!("check the private key in `{field}` (an RSA key of at least 2048 bits)"),
        _ => format!("check `{field}`"),
    };
    let problem = match e {
        SetupError::Load { source, .. } => format!("`{field}`: {source}"),
        _ => e.to_string(),
    };
    Check::fail(name, problem, fix)
}

async fn token(cfg: &Config, i: usize, bot: &BotConfig, client: Arc<TokenClient>, name: &str) -> Check {
    let authority_field = format!("clouds.{}.token_authority", bot.cloud);
    let authority = match &cfg.clouds.get(bot.cloud).token_authority {
        Some(a) => match Authority::parse(a) {
            Ok(a) => Some(a),
            Err(e) => return Check::fail(name, format!("`{authority_field}`: {e}"), format!("correct or remove `{authority_field}`")),
        },
        None => None,
    };
    let provider = match BotTokenProvider::from_config(bot, authority.as_ref(), client).await {
        Ok(p) => p,
        Err(e) => {
            let field = format!("bots[{i}].{}", e.field().unwrap_or("credential"));
            return Check::fail(name, format!("`{field}`: {e}"), format!("correct `{field}`"));
        }
    };
    let endpoint = provider.request().endpoint.as_str().to_owned();
    match provider.bot_token().await {
        Ok(t) => {
            let mins = t.expires_at.duration_since(SystemTime::now()).unwrap_or_default().as_secs() / 60;
            Check::pass(format!("{name}: token from {endpoint}, valid for {mins} min"))
        }
        Err(e) => token_failure(name, i, bot, &authority_field, &e),
    }
}

fn token_failure(name: &str, i: usize, bot: &BotConfig, authority_field: &str, e: &TokenError) -> Check {
    match e {
        TokenError::Refused { endpoint, detail } => {
            let mut problem = format!("{endpoint} refused: {} (HTTP {}", detail.error, detail.status);
            for c in &detail.codes {
                problem.push_str(&format!(", AADSTS{c}"));
            }
            problem.push(')');
            if !detail.description.is_empty() {
                problem.push_str(&format!(": {}", detail.description));
            }
            if let Some(t) = &detail.trace_id {
                problem.push_str(&format!(" [trace id {t}]"));
            }
            let fix = match detail.hint() {
                Some(h) => format!("{h} (bots[{i}].credential)"),
                None => format!(
                    "check `bots[{i}].app_id`, `bots[{i}].tenant_id` and the credential against the app registration ({})",
                    bot.app_id
                ),
            };
            Check::fail(name, problem, fix)
        }
        TokenError::Unreachable { .. } => Check::fail(
            name,
            e.to_string(),
            format!("let agentgate reach the Entra login host (DNS, firewall, outbound proxy); if `{authority_field}` is set, correct it"),
        ),
        TokenError::Status { .. } => Check::fail(
            name,
            e.to_string(),
            "Entra (or a proxy in front of it) is throttling or failing: run `agentgate doctor` again later",
        ),
        TokenError::BadResponse { .. } => {
            Check::fail(name, e.to_string(), format!("`{authority_field}` (when set) must be the Entra login host, not another service"))
        }
        TokenError::Credential(_) | TokenError::Setup(_) => {
            Check::fail(name, e.to_string(), format!("check `bots[{i}].credential` and `bots[{i}].certificate`"))
        }
    }
}

fn package(i: usize, bot: &BotConfig, opts: &DoctorOptions, label: &str) -> Check {
    let info = AppInfo {
        domain: opts.domain.clone(),
        website: opts.domain.is_none().then(|| PLACEHOLDER_WEBSITE.to_owned()),
        ..AppInfo::default()
    };
    let name = match &opts.domain {
        Some(d) => format!("{label}: Teams app package valid (default values, domain {d})"),
        None => format!("{label}: Teams app package valid (default values; no --domain, so no validDomains)"),
    };
    match crate::teams_app::build(bot, i, &info) {
        Ok(_) => Check::pass(name),
        Err(PackageError { field, problem }) => {
            let fix = if field.starts_with("bots[") {
                format!("correct `{field}` in the configuration")
            } else if field.starts_with("--") {
                format!("pass a valid `{field}` to `agentgate teams-app package` (and to `agentgate doctor` for --domain)")
            } else {
                format!("correct `{field}` (manifests/bot.manifest.json or the generated icons)")
            };
            Check::fail(name, format!("`{field}` {problem}"), fix)
        }
    }
}

/// Whether Graph can deliver the Agent User's chats to this gateway (`agent_user.inbound`): it needs a
/// public HTTPS URL; there is no polling fallback.
fn agent_user_inbound(cfg: &Config, bot: &crate::config::BotConfig, label: &str) -> Option<Check> {
    let au = bot.agent_user.as_ref()?;
    let name = format!("{label}: Agent User inbound (Graph change notifications)");
    if !au.inbound {
        return Some(Check::skip(name, "agent_user.inbound is off: what people write to the Agent User does not reach the host"));
    }
    Some(match cfg.inbound_url_problem() {
        None => Check::pass(format!("{name}: Graph posts to {}", cfg.public_endpoint("/api/graph/notifications").unwrap_or_default())),
        Some(problem) => Check::fail(name, format!("{problem}: webhooks cannot reach this gateway"), crate::config::NO_PUBLIC_URL_HELP),
    })
}

/// The Agent User chain of `[bots.agent_user]`: its credential and a real Graph token (never printed).
async fn agent_user(cfg: &Config, i: usize, label: &str, client: Option<&Arc<TokenClient>>) -> Check {
    let name = format!("{label}: three-hop Agent User chain");
    let Some(client) = client else { return Check::skip(name, "no token client") };
    match crate::entra::AgentUserTokens::for_bot(cfg, i, Arc::clone(client)).await {
        Ok(None) => Check::skip(name, "no [bots.agent_user] table: the bot acts as itself only"),
        Err(e) => Check::fail(
            name,
            e.to_string(),
            format!("correct `{}` (docs/configuration.md, The Agent User)", e.field().unwrap_or("agent_user")),
        ),
        Ok(Some(tokens)) => match tokens.graph_token().await {
            Ok(_) => Check::pass(format!("{name}: a Graph token as {} (`agentgate token graph` shows its claims)", tokens.user().as_str())),
            Err(e) => Check::fail(
                name,
                e.to_string(),
                format!("fix {} as the message says; consent and permission changes take up to 2 minutes to apply", e.hop),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_summary() {
        let r = Report {
            checks: vec![Check::pass("a"), Check::fail("b", "is wrong", "do this"), Check::skip("c", "not configured; see issue 5")],
        };
        assert!(!r.ok());
        assert_eq!(
            r.to_string(),
            "✓ a\n✗ b: is wrong — fix: do this\n– c: skipped (not configured; see issue 5)\n1 passed, 1 failed, 1 skipped"
        );
        assert!(Report { checks: vec![Check::pass("a"), Check::skip("c", "x")] }.ok());
    }
}
