//! The Entra Agent User token chain: three form POSTs to the tenant's token endpoint that turn the
//! Blueprint's certificate into a delegated token of the Agent User for a resource.
//!
//! | hop | `client_id` | grant | credential | scope | extra | result |
//! |---|---|---|---|---|---|---|
//! | 1 | Blueprint app id | `client_credentials` | certificate-signed assertion (RS256, `x5t#S256`) | `api://AzureADTokenExchange/.default` | `fmi_path` = Agent Identity id | T1 |
//! | 2 | Agent Identity id | `client_credentials` | `client_assertion` = T1 | `api://AzureADTokenExchange/.default` | — | T2 |
//! | 3 | Agent Identity id | `user_fic` | `client_assertion` = **T1** (not T2) | the resource's `.default` | `user_federated_identity_credential` = T2, `user_id` = Agent User object id (or `username` = UPN) | T3 |
//!
//! Hop 3 sends no `requested_token_use` (the reference system added `on_behalf_of` "for compatibility";
//! the Microsoft Agents SDKs' raw `user_fic` request does not) and no `client_info`.
//!
//! Every response is checked for `error` before `access_token` (by [`TokenClient`], with its retries);
//! a failure names its hop and carries the AADSTS codes with a hint about what to fix.
//!
//! Caching (`entra::cache`, as for the bot's tokens): T1 and T2 per (tenant, Agent Identity), T3 per
//! (tenant, Agent Identity, user, scope). Each is refreshed 5 minutes before it expires (half its
//! lifetime when it lives less than 10 minutes), one refresh at a time per token: 50 callers on a cold
//! cache cause exactly three requests. While a refresh runs, callers whose cached token is still valid
//! for more than a minute get it without waiting; when a refresh fails and the old token is still valid
//! for more than a minute, it is served (and no refresh is tried for a few seconds). The cache is never
//! keyed on a token value.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

use super::Clock;
use super::cache::{Cached, TokenCache};
use super::client::{AccessToken, TokenClient, TokenForm};
use super::credential::{ASSERTION_TYPE, CertificateCredential};
use super::endpoint::{Authority, TokenEndpoint};
use super::error::{EntraError, SetupError, TokenError};
use crate::config::Config;
pub use crate::config::agent_user::{AgentMode, AgentUserConfig, DEFAULT_AGENTIC_SCOPE, DEFAULT_GRAPH_SCOPE};

/// The scope of hops 1 and 2: a token for Entra's token exchange (federated credential) audience.
pub const TOKEN_EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";

// ---------------------------------------------------------------- configuration

impl AgentUserConfig {
    /// The Agent User this section names.
    pub fn user(&self) -> AgentUser {
        match (&self.agent_user_id, &self.agent_user_upn) {
            (Some(id), _) => AgentUser::ObjectId(id.clone()),
            (None, Some(upn)) => AgentUser::Upn(upn.clone()),
            (None, None) => AgentUser::ObjectId(String::new()),
        }
    }

    /// Load the Blueprint's key and certificate. Errors name the field (`at` is the section's path).
    pub async fn load_credential(&self, at: &str) -> Result<CertificateCredential, SetupError> {
        let key = self.key.load().await.map_err(|e| SetupError::at_field(format!("{at}.key"), e.to_string()))?;
        let cert = self.certificate.load_public().await.map_err(|e| SetupError::at_field(format!("{at}.certificate"), e.to_string()))?;
        CertificateCredential::from_pem(key.expose_secret().as_bytes(), cert.expose_secret().as_bytes(), self.send_x5c).map_err(|e| {
            let field = if e.field() == Some("certificate") { "certificate" } else { "key" };
            SetupError::at_field(format!("{at}.{field}"), e.to_string())
        })
    }
}

// ---------------------------------------------------------------- errors

/// One of the three hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hop {
    /// Blueprint → T1.
    Blueprint = 1,
    /// Agent Identity → T2.
    AgentIdentity = 2,
    /// Agent User → T3.
    AgentUser = 3,
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Blueprint => "hop 1 (Blueprint → T1)",
            Self::AgentIdentity => "hop 2 (Agent Identity → T2)",
            Self::AgentUser => "hop 3 (Agent User → T3)",
        })
    }
}

/// A hop of the chain failed. Holds no token or assertion; cheap to clone (waiters share it).
#[derive(Debug, Clone)]
pub struct AgentTokenError {
    /// The hop that failed.
    pub hop: Hop,
    /// What the token endpoint (or the client) said.
    pub source: TokenError,
}

/// The `Display` already includes the token error (with this hop's hint instead of the generic one), so
/// it is not repeated as a `source()`; it is the public `source` field.
impl std::error::Error for AgentTokenError {}

impl fmt::Display for AgentTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: ", self.hop)?;
        match &self.source {
            // Written out here so that the bot-oriented generic hint is replaced by this hop's.
            TokenError::Refused { endpoint, detail } => {
                write!(f, "token request to {endpoint} refused: {} (HTTP {}", detail.error, detail.status)?;
                for c in &detail.codes {
                    write!(f, ", AADSTS{c}")?;
                }
                f.write_str(")")?;
                if !detail.description.is_empty() {
                    write!(f, ": {}", detail.description)?;
                }
                if let Some(h) = hop_hint(self.hop, detail).or_else(|| detail.hint()) {
                    write!(f, " — fix: {h}")?;
                }
                if let Some(t) = &detail.trace_id {
                    write!(f, " [trace id {t}]")?;
                }
                Ok(())
            }
            other => write!(f, "{other}"),
        }
    }
}

impl AgentTokenError {
    /// The AADSTS codes Entra answered with (empty for other failures).
    pub fn aadsts_codes(&self) -> &[u64] {
        self.source.aadsts_codes()
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.source.is_transient()
    }
}

/// What to fix for the AADSTS codes people hit at each hop (field names of `[bots.agent_user]`).
fn hop_hint(hop: Hop, e: &EntraError) -> Option<&'static str> {
    e.codes.iter().find_map(|c| {
        Some(match (hop, c) {
            (_, 90002 | 90023 | 900023) => "the tenant is not valid: check `tenant_id` (the Agent User's tenant)",
            (_, 700024) => "the assertion is outside its valid time range: check the system clock (NTP)",
            (_, 7000112) => "the application is disabled in the tenant: re-enable it in Enterprise applications",
            (Hop::Blueprint, 700016) => {
                "`blueprint_app_id` was not found in `tenant_id`: check both ids, and that the Blueprint is installed (its BlueprintPrincipal exists) in the tenant"
            }
            (Hop::Blueprint, 700027 | 700023 | 7000218) => {
                "the Blueprint refused the certificate: upload `certificate` (public part) to the Blueprint's app registration and check that `key` belongs to it"
            }
            (Hop::Blueprint, 700021) => "the assertion's iss/sub must be `blueprint_app_id`",
            (Hop::Blueprint | Hop::AgentIdentity, 700211..=700213) => {
                "no federated identity record matched: `agent_identity_id` must be an Agent Identity created from `blueprint_app_id` (hop 1 sends it as fmi_path)"
            }
            (Hop::Blueprint, 70011) => "the token exchange scope was refused: the Blueprint must be an Agent Blueprint (agentIdentityBlueprint)",
            (Hop::AgentIdentity | Hop::AgentUser, 700016) => {
                "`agent_identity_id` was not found in `tenant_id`: use the Agent Identity's app (client) id, not its object id"
            }
            (Hop::AgentUser, 65001) => {
                "the Agent User has not consented to this resource: grant the Agent Identity delegated permissions for the Agent User (oauth2PermissionGrant, consentType Principal) or inheritable permissions on the Blueprint; changes take up to 2 minutes"
            }
            (Hop::AgentUser, 50034 | 1000031 | 50012) => {
                "the Agent User was not found: `agent_user_id` must be the Agent User's object id (or `agent_user_upn` its UPN) in `tenant_id`, and the user must belong to `agent_identity_id`"
            }
            (Hop::AgentUser, 500011 | 70011) => {
                "the resource of the scope is not available in the tenant: check `graph_scope` / `agentic_scope` (a resource's .default scope)"
            }
            _ => return None,
        })
    })
}

// ---------------------------------------------------------------- the Agent User

/// Who hop 3 acts as.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum AgentUser {
    /// The Agent User's object id (`user_id`).
    ObjectId(String),
    /// The Agent User's UPN (`username`).
    Upn(String),
}

impl AgentUser {
    fn form_field(&self) -> (&'static str, &str) {
        match self {
            Self::ObjectId(id) => ("user_id", id),
            Self::Upn(upn) => ("username", upn),
        }
    }

    /// The id or UPN, for logs and keys.
    pub fn as_str(&self) -> &str {
        self.form_field().1
    }
}

impl fmt::Debug for AgentUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ObjectId(id) => write!(f, "AgentUser::ObjectId({id})"),
            Self::Upn(upn) => write!(f, "AgentUser::Upn({upn})"),
        }
    }
}

// ---------------------------------------------------------------- the chain

type IdKey = (String, String);
type UserKey = (String, String, AgentUser, String);
type AppKey = (String, String, String);

/// The three-hop chain for one Blueprint: any tenant, Agent Identity, Agent User and scope, with the
/// caches. One per Blueprint per process; share it in an `Arc`.
pub struct AgentTokenChain {
    client: Arc<TokenClient>,
    clock: Arc<dyn Clock>,
    authority: Authority,
    blueprint_app_id: String,
    blueprint: Arc<CertificateCredential>,
    t1: TokenCache<IdKey, AgentTokenError>,
    t2: TokenCache<IdKey, AgentTokenError>,
    t3: TokenCache<UserKey, AgentTokenError>,
    /// The Agent Identity's app-only tokens (two hops), by tenant, identity and scope.
    app: TokenCache<AppKey, AgentTokenError>,
}

impl fmt::Debug for AgentTokenChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentTokenChain")
            .field("authority", &self.authority)
            .field("blueprint_app_id", &self.blueprint_app_id)
            .field("blueprint", &self.blueprint)
            .finish_non_exhaustive()
    }
}

fn key(tenant: &str, identity: &str) -> IdKey {
    (tenant.to_ascii_lowercase(), identity.to_ascii_lowercase())
}

impl AgentTokenChain {
    /// A chain for the Blueprint `blueprint_app_id` signing with `blueprint`, against token endpoints
    /// under `authority`, through `client` (its retries, checks and clock).
    pub fn new(
        client: Arc<TokenClient>,
        authority: Authority,
        blueprint_app_id: impl Into<String>,
        blueprint: CertificateCredential,
    ) -> Self {
        Self {
            clock: client.clock(),
            client,
            authority,
            blueprint_app_id: blueprint_app_id.into(),
            blueprint: Arc::new(blueprint),
            t1: TokenCache::new(),
            t2: TokenCache::new(),
            t3: TokenCache::new(),
            app: TokenCache::new(),
        }
    }

    /// The Blueprint's app id.
    pub fn blueprint_app_id(&self) -> &str {
        &self.blueprint_app_id
    }

    /// Requests sent to token endpoints so far (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.client.requests_sent()
    }

    fn endpoint(&self, hop: Hop, tenant: &str) -> Result<TokenEndpoint, AgentTokenError> {
        self.authority.token_endpoint(tenant).map_err(|e| AgentTokenError { hop, source: TokenError::Setup(e.to_string()) })
    }

    /// T1: the Blueprint's token-exchange token for the Agent Identity `identity` in `tenant` (cached).
    pub async fn blueprint_token(&self, tenant: &str, identity: &str) -> Result<AccessToken, AgentTokenError> {
        self.t1.get(self.clock.as_ref(), &key(tenant, identity), || self.fetch_t1(tenant, identity)).await
    }

    async fn fetch_t1(&self, tenant: &str, identity: &str) -> Result<Cached, AgentTokenError> {
        let hop = Hop::Blueprint;
        let endpoint = self.endpoint(hop, tenant)?;
        let (blueprint, cred, aud) = (self.blueprint_app_id.as_str(), Arc::clone(&self.blueprint), endpoint.as_str().to_owned());
        let build = move |now: SystemTime| {
            let assertion = cred.client_assertion_at(blueprint, &aud, now).map_err(|e| TokenError::Credential(e.to_string()))?;
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", blueprint),
                ("scope", TOKEN_EXCHANGE_SCOPE),
                ("fmi_path", identity),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.expose_secret()),
            ]);
            Ok(TokenForm { body, sensitive: vec![assertion] })
        };
        tracing::debug!(%hop, tenant, agent_identity = identity, "requesting T1");
        self.client.exchange(&endpoint, blueprint, "certificate", &build).await.map_err(|source| AgentTokenError { hop, source })
    }

    /// T2: the Agent Identity's token-exchange token (cached).
    pub async fn identity_token(&self, tenant: &str, identity: &str) -> Result<AccessToken, AgentTokenError> {
        self.t2.get(self.clock.as_ref(), &key(tenant, identity), || self.fetch_t2(tenant, identity)).await
    }

    async fn fetch_t2(&self, tenant: &str, identity: &str) -> Result<Cached, AgentTokenError> {
        let t1 = self.blueprint_token(tenant, identity).await?;
        let hop = Hop::AgentIdentity;
        let endpoint = self.endpoint(hop, tenant)?;
        let build = |_: SystemTime| {
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", identity),
                ("scope", TOKEN_EXCHANGE_SCOPE),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", t1.value.expose_secret()),
            ]);
            Ok(TokenForm { body, sensitive: vec![t1.value.clone()] })
        };
        tracing::debug!(%hop, tenant, agent_identity = identity, "requesting T2");
        self.client.exchange(&endpoint, identity, "agent-identity", &build).await.map_err(|source| AgentTokenError { hop, source })
    }

    /// The Agent Identity's own app-only token for `scope` (two hops: T1, then `client_credentials` as the
    /// Agent Identity for the resource, not the exchange scope), cached. Reads about the Agent Identity
    /// itself (its sponsors) need it; it never acts in chats.
    pub async fn identity_app_token(&self, tenant: &str, identity: &str, scope: &str) -> Result<AccessToken, AgentTokenError> {
        let (t, i) = key(tenant, identity);
        self.app.get(self.clock.as_ref(), &(t, i, scope.to_owned()), || self.fetch_app(tenant, identity, scope)).await
    }

    async fn fetch_app(&self, tenant: &str, identity: &str, scope: &str) -> Result<Cached, AgentTokenError> {
        let t1 = self.blueprint_token(tenant, identity).await?;
        let hop = Hop::AgentIdentity;
        let endpoint = self.endpoint(hop, tenant)?;
        let build = |_: SystemTime| {
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", identity),
                ("scope", scope),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", t1.value.expose_secret()),
            ]);
            Ok(TokenForm { body, sensitive: vec![t1.value.clone()] })
        };
        tracing::debug!(%hop, tenant, agent_identity = identity, "requesting the Agent Identity's app-only token");
        self.client.exchange(&endpoint, identity, "agent-identity", &build).await.map_err(|source| AgentTokenError { hop, source })
    }

    /// T3: the Agent User's delegated token for `scope` (a resource's `.default`), cached.
    pub async fn user_token(&self, tenant: &str, identity: &str, user: &AgentUser, scope: &str) -> Result<AccessToken, AgentTokenError> {
        let (t, i) = key(tenant, identity);
        self.t3.get(self.clock.as_ref(), &(t, i, user.clone(), scope.to_owned()), || self.fetch_t3(tenant, identity, user, scope)).await
    }

    async fn fetch_t3(&self, tenant: &str, identity: &str, user: &AgentUser, scope: &str) -> Result<Cached, AgentTokenError> {
        let t1 = self.blueprint_token(tenant, identity).await?;
        let t2 = self.identity_token(tenant, identity).await?;
        let hop = Hop::AgentUser;
        let endpoint = self.endpoint(hop, tenant)?;
        let (user_field, user_value) = user.form_field();
        let build = |_: SystemTime| {
            let body = form(&[
                ("grant_type", "user_fic"),
                ("client_id", identity),
                ("scope", scope),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", t1.value.expose_secret()),
                ("user_federated_identity_credential", t2.value.expose_secret()),
                (user_field, user_value),
            ]);
            Ok(TokenForm { body, sensitive: vec![t1.value.clone(), t2.value.clone()] })
        };
        tracing::debug!(%hop, tenant, agent_identity = identity, agent_user = user.as_str(), scope, "requesting T3");
        self.client.exchange(&endpoint, identity, "user-fic", &build).await.map_err(|source| AgentTokenError { hop, source })
    }

    /// Forget the cached T3 (after the resource refused it with 401), so that the next call fetches anew.
    pub fn invalidate_user_token(&self, tenant: &str, identity: &str, user: &AgentUser, scope: &str) {
        let (t, i) = key(tenant, identity);
        self.t3.invalidate(&(t, i, user.clone(), scope.to_owned()));
    }

    /// Forget every cached token of (tenant, identity): the next call runs the whole chain again.
    pub fn invalidate_all(&self, tenant: &str, identity: &str) {
        let id = key(tenant, identity);
        self.t1.invalidate(&id);
        self.t2.invalidate(&id);
        self.app.invalidate_where(|k| k.0 == id.0 && k.1 == id.1);
        self.t3.invalidate_where(|k| k.0 == id.0 && k.1 == id.1);
    }
}

fn form(pairs: &[(&str, &str)]) -> SecretString {
    let mut f = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    SecretString::from(f.finish())
}

/// A bot's configured Agent User: the chain plus its tenant, Agent Identity, Agent User and scopes.
/// What the Graph client and the Connector fallback call.
#[derive(Debug, Clone)]
pub struct AgentUserTokens {
    chain: Arc<AgentTokenChain>,
    tenant: String,
    identity: String,
    user: AgentUser,
    graph_scope: String,
    agentic_scope: String,
    mode: AgentMode,
    graph_base_url: Option<String>,
}

impl AgentUserTokens {
    /// Tokens of `user` (through the Agent Identity `identity` in `tenant`) from `chain`.
    pub fn new(chain: Arc<AgentTokenChain>, tenant: impl Into<String>, identity: impl Into<String>, user: AgentUser) -> Self {
        Self {
            chain,
            tenant: tenant.into(),
            identity: identity.into(),
            user,
            graph_scope: DEFAULT_GRAPH_SCOPE.to_owned(),
            agentic_scope: DEFAULT_AGENTIC_SCOPE.to_owned(),
            mode: AgentMode::BotOnly,
            graph_base_url: None,
        }
    }

    /// The Agent User of `cfg.bots[index]` (`None` without a `[bots.agent_user]` table), against the bot
    /// cloud's authority (or `clouds.<cloud>.token_authority`). Loads the Blueprint's key.
    pub async fn for_bot(cfg: &Config, index: usize, client: Arc<TokenClient>) -> Result<Option<Self>, SetupError> {
        let Some(bot) = cfg.bots.get(index) else {
            return Err(SetupError::at_field(format!("bots[{index}]"), "no such bot".into()));
        };
        let Some(agent) = &bot.agent_user else { return Ok(None) };
        let authority = match &cfg.clouds.get(bot.cloud).token_authority {
            Some(a) => {
                Authority::parse(a).map_err(|e| SetupError::at_field(format!("clouds.{}.token_authority", bot.cloud), e.to_string()))?
            }
            None => Authority::for_cloud(bot.cloud),
        };
        Self::from_config(agent, &format!("bots[{index}].agent_user"), authority, client).await.map(Some)
    }

    /// Load the Blueprint credential of a `[bots.agent_user]` section (at config path `at`) and build
    /// the chain against `authority`.
    pub async fn from_config(cfg: &AgentUserConfig, at: &str, authority: Authority, client: Arc<TokenClient>) -> Result<Self, SetupError> {
        cfg.validate(at).map_err(|e| SetupError::at_field(e.field, e.problem))?;
        let credential = cfg.load_credential(at).await?;
        tracing::info!(blueprint = %cfg.blueprint_app_id, agent_identity = %cfg.agent_identity_id, x5t_s256 = credential.x5t_s256(), "Agent User chain configured");
        let chain = Arc::new(AgentTokenChain::new(client, authority, cfg.blueprint_app_id.clone(), credential));
        Ok(Self {
            graph_scope: cfg.graph_scope.clone(),
            agentic_scope: cfg.agentic_scope.clone(),
            mode: cfg.mode,
            graph_base_url: cfg.graph_base_url.clone(),
            ..Self::new(chain, cfg.tenant_id.clone(), cfg.agent_identity_id.clone(), cfg.user())
        })
    }

    /// The Agent User's token for `scope` (cached; refreshed 5 minutes before expiry).
    pub async fn token(&self, scope: &str) -> Result<AccessToken, AgentTokenError> {
        self.chain.user_token(&self.tenant, &self.identity, &self.user, scope).await
    }

    /// The Agent User's Graph token (`graph_scope`).
    pub async fn graph_token(&self) -> Result<AccessToken, AgentTokenError> {
        self.token(&self.graph_scope).await
    }

    /// The Agent Identity's app-only Graph token (two hops, `graph_scope`): for its sponsors.
    pub async fn identity_graph_token(&self) -> Result<AccessToken, AgentTokenError> {
        self.chain.identity_app_token(&self.tenant, &self.identity, &self.graph_scope).await
    }

    /// The Agent User's Bot Connector token (`agentic_scope`).
    pub async fn agentic_token(&self) -> Result<AccessToken, AgentTokenError> {
        self.token(&self.agentic_scope).await
    }

    /// Drop the cached token for `scope` (the resource refused it with 401).
    pub fn invalidate(&self, scope: &str) {
        self.chain.invalidate_user_token(&self.tenant, &self.identity, &self.user, scope);
    }

    /// The chain (for other tenants or identities of the same Blueprint).
    pub fn chain(&self) -> &Arc<AgentTokenChain> {
        &self.chain
    }

    /// The Graph scope.
    pub fn graph_scope(&self) -> &str {
        &self.graph_scope
    }

    /// The Bot Connector scope.
    pub fn agentic_scope(&self) -> &str {
        &self.agentic_scope
    }

    /// `bot_only` or `fallback`.
    pub fn mode(&self) -> AgentMode {
        self.mode
    }

    /// The configured Graph API base (`None`: the global Graph).
    pub fn graph_base_url(&self) -> Option<&str> {
        self.graph_base_url.as_deref()
    }

    /// The Agent User's tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The Agent Identity's id.
    pub fn agent_identity_id(&self) -> &str {
        &self.identity
    }

    /// The Agent User.
    pub fn user(&self) -> &AgentUser {
        &self.user
    }

    /// Use other scopes than the defaults.
    pub fn with_scopes(mut self, graph_scope: impl Into<String>, agentic_scope: impl Into<String>) -> Self {
        self.graph_scope = graph_scope.into();
        self.agentic_scope = agentic_scope.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
tenant_id = "aaaaaaaa-0000-0000-0000-000000000001"
blueprint_app_id = "11111111-0000-0000-0000-000000000001"
agent_identity_id = "22222222-0000-0000-0000-000000000002"
agent_user_id = "33333333-0000-0000-0000-000000000003"
certificate = "file:/etc/agentgate/blueprint.crt"
key = "env:BLUEPRINT_KEY"
"#;

    fn parse(extra: &str) -> Result<AgentUserConfig, toml::de::Error> {
        toml::from_str(&format!("{GOOD}{extra}"))
    }

    #[test]
    fn defaults_and_validation() {
        let c = parse("").unwrap();
        assert_eq!(c.graph_scope, DEFAULT_GRAPH_SCOPE);
        assert_eq!(c.agentic_scope, DEFAULT_AGENTIC_SCOPE);
        assert_eq!(c.mode, AgentMode::BotOnly);
        c.validate("bots[0].agent_user").unwrap();
        assert_eq!(c.user(), AgentUser::ObjectId("33333333-0000-0000-0000-000000000003".into()));
        assert_eq!(parse("mode = \"fallback\"").unwrap().mode, AgentMode::Fallback);
        assert!(parse("mode = \"sometimes\"").is_err());
        assert!(parse("agent_usr_id = \"x\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            ("agent_user_upn = \"agent@contoso.test\"", "bots[0].agent_user.agent_user_upn"),
            ("graph_scope = \"https://graph.microsoft.com/User.Read\"", "bots[0].agent_user.graph_scope"),
            ("agentic_scope = \"\"", "bots[0].agent_user.agentic_scope"),
            ("graph_base_url = \"https://graph.example.com/v1.0\"", "bots[0].agent_user.graph_base_url"),
        ];
        for (extra, field) in cases {
            let e = parse(extra).unwrap().validate("bots[0].agent_user").unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
        let mut c = parse("").unwrap();
        c.agent_identity_id = c.blueprint_app_id.clone();
        assert_eq!(c.validate("a").unwrap_err().field, "a.agent_identity_id");
        c = parse("").unwrap();
        c.agent_user_id = None;
        assert_eq!(c.validate("a").unwrap_err().field, "a.agent_user_id");
        c.agent_user_upn = Some("agent@contoso.onmicrosoft.com".into());
        c.validate("a").unwrap();
        assert_eq!(c.user(), AgentUser::Upn("agent@contoso.onmicrosoft.com".into()));
        c.agent_user_upn = Some("not a upn".into());
        assert_eq!(c.validate("a").unwrap_err().field, "a.agent_user_upn");
        c = parse("").unwrap();
        c.tenant_id = "a/b".into();
        assert_eq!(c.validate("a").unwrap_err().field, "a.tenant_id");
        c = parse("").unwrap();
        c.blueprint_app_id = "blueprint".into();
        assert_eq!(c.validate("a").unwrap_err().field, "a.blueprint_app_id");
    }

    #[test]
    fn a_bot_table_takes_the_section_with_env_overrides_and_field_paths() {
        use crate::config::Config;
        let text = format!("[[bots]]\napp_id = \"app\"\nallowed_tenants = [\"t\"]\n[bots.agent_user]\n{GOOD}");
        let env = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let c = Config::from_sources(Some(&text), "t", env("AGENTGATE__BOTS__0__AGENT_USER__MODE", "fallback")).unwrap();
        assert_eq!(c.bots[0].agent_user.as_ref().unwrap().mode, AgentMode::Fallback);
        c.validate(false).unwrap();
        let e = Config::from_sources(Some(&format!("{text}agent_usr_id = \"x\"\n")), "t", vec![]).unwrap_err();
        assert_eq!(e.field, "bots[0].agent_user.agent_usr_id");
        let c = Config::from_sources(Some(&text), "t", env("AGENTGATE__BOTS__0__AGENT_USER__AGENT_IDENTITY_ID", "nope")).unwrap();
        assert_eq!(c.validate(false).unwrap_err().field, "bots[0].agent_user.agent_identity_id");
        let plain = Config::from_sources(Some("[[bots]]\napp_id = \"app\"\nallowed_tenants = [\"t\"]\n"), "t", vec![]).unwrap();
        assert!(plain.bots[0].agent_user.is_none());
    }

    #[test]
    fn errors_name_the_hop_and_the_fix() {
        let entra = EntraError::new(
            400,
            "invalid_request",
            &[serde_json::json!(700211)],
            "AADSTS700211: No matching federated identity record found for presented assertion issuer.",
            None,
            None,
            "",
        );
        let e = AgentTokenError {
            hop: Hop::AgentIdentity,
            source: TokenError::Refused { endpoint: "https://x/t/oauth2/v2.0/token".into(), detail: Box::new(entra) },
        };
        let shown = e.to_string();
        assert!(shown.starts_with("hop 2 (Agent Identity → T2) failed"), "{shown}");
        assert!(shown.contains("AADSTS700211") && shown.contains("agent_identity_id"), "{shown}");
        assert_eq!(e.aadsts_codes(), &[700211]);
        let e = AgentTokenError { hop: Hop::AgentUser, source: TokenError::Setup("x".into()) };
        assert!(e.to_string().starts_with("hop 3 (Agent User → T3) failed"));
    }
}
