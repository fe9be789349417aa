//! Typed configuration: built-in defaults < TOML file < `AGENTGATE__…` environment variables.
//!
//! The layering is the `config` crate's: the TOML file is a [`::config::File`] source, the environment an
//! [`EnvOverrides`] source, merged in that order; the defaults are the types' own (`#[serde(default)]`).
//! Environment variables address keys by path, with `__` between the parts and a number for an
//! array element: `AGENTGATE__SERVER__BIND=127.0.0.1:8080`, `AGENTGATE__BOTS__0__APP_ID=…`.
//! Values are read as TOML scalars when they look like one (`true`, `42`, `["a","b"]`), else as strings.
//! Every key is checked: an unknown key, a wrong type or an invalid value is reported with the
//! field's path and how to fix it, and never with the value when the field holds a secret reference.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::secrets::SecretRef;

pub mod agent_user;
pub mod mcp_tools;
pub mod policy;

/// The environment variable prefix for configuration overrides.
pub const ENV_PREFIX: &str = "AGENTGATE__";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the embedded store and other state live.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub clouds: CloudsConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub invoke: InvokeConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub mcp: McpConfig,
    #[serde(default)]
    pub files: FilesConfig,
    /// The bots this process serves. None configured means no traffic is accepted.
    #[serde(default)]
    pub bots: Vec<BotConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "defaults::bind")]
    pub bind: String,
    /// A TLS-terminating reverse proxy sits in front: plain HTTP is then allowed on any address.
    #[serde(default)]
    pub behind_proxy: bool,
    #[serde(default = "defaults::body_limit")]
    pub body_limit_bytes: usize,
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace_secs: u64,
    #[serde(default)]
    pub tls: TlsConfig,
    /// The gateway's public HTTPS base URL (`https://gateway.example.com`), where Microsoft Graph can reach
    /// `/api/graph/notifications` and `/api/graph/lifecycle`. Needed for the Agent User's inbound
    /// (`bots.agent_user.inbound`).
    #[serde(default)]
    pub public_url: Option<String>,
}

/// Why Graph webhooks cannot reach this gateway, and the supported set-ups.
pub const NO_PUBLIC_URL_HELP: &str = "Graph delivers change notifications only to a public HTTPS URL, so webhooks cannot reach this \
     gateway: set server.public_url to the https:// address where Graph reaches /api/graph/notifications. On a laptop without one, \
     run the gateway where it has an HTTPS URL and connect the local host with `agentgate mcp --connect`, or expose it through a \
     tunnel you control (docs/agent-user.md). agentgate never falls back to polling: Teams allows polling a chat once a day";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    #[serde(default = "defaults::tls_reload")]
    pub reload_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default = "defaults::skew")]
    pub clock_skew_secs: u64,
    /// Routine background refresh of the signing keys.
    #[serde(default = "defaults::key_refresh")]
    pub key_refresh_secs: u64,
    /// At most one on-demand key refresh (for an unknown `kid`) per this many seconds, per cloud.
    #[serde(default = "defaults::kid_cooldown")]
    pub unknown_kid_cooldown_secs: u64,
    /// How long after their routine refresh was due the last good keys are still served while the
    /// metadata endpoint fails.
    #[serde(default = "defaults::stale_grace")]
    pub stale_keys_grace_secs: u64,
    /// Verified tokens remembered (by SHA-256 of the token) until they expire.
    #[serde(default = "defaults::token_cache")]
    pub token_cache_entries: usize,
    /// Timeout for one metadata or key fetch.
    #[serde(default = "defaults::fetch_timeout")]
    pub fetch_timeout_secs: u64,
}

pub use crate::ids::Cloud;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudsConfig {
    #[serde(default = "defaults::public")]
    pub public: CloudConfig,
    #[serde(default = "defaults::usgov")]
    pub usgov: CloudConfig,
    #[serde(default = "defaults::china")]
    pub china: CloudConfig,
}

impl CloudsConfig {
    pub fn get(&self, cloud: Cloud) -> &CloudConfig {
        match cloud {
            Cloud::Public => &self.public,
            Cloud::Usgov => &self.usgov,
            Cloud::China => &self.china,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// OpenID metadata of the Bot Framework channel; its `issuer` must be the cloud's pinned issuer.
    pub openid_metadata_url: String,
    /// The Entra authority outbound tokens come from (default: the cloud's login host, e.g.
    /// `https://login.microsoftonline.com`). Change only for tests or special set-ups.
    #[serde(default)]
    pub token_authority: Option<String>,
    /// Extra Bot Connector endpoints the bots of this cloud may talk to, besides Microsoft's hosts: a
    /// service URL equal to one of them or under it is accepted (in any mode) and receives real tokens.
    /// Plain http only for loopback hosts. Change only for tests or special set-ups.
    #[serde(default)]
    pub connector_endpoints: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit (group commit keeps this cheap): survives power loss.
    Full,
    /// fsync at checkpoints only: survives a process crash, not a power loss.
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file; relative paths are under `data_dir`.
    #[serde(default = "defaults::sqlite_path")]
    pub sqlite_path: PathBuf,
    #[serde(default = "defaults::synchronous")]
    pub synchronous: Synchronous,
    /// Most activities written in one transaction (group commit).
    #[serde(default = "defaults::max_batch")]
    pub max_batch: usize,
    /// How long a (bot, conversation, activity id) is remembered for deduplication.
    #[serde(default = "defaults::dedupe_ttl")]
    pub dedupe_ttl_secs: u64,
    /// HMAC key of the audit chain (a secret reference); without it the chain is plain SHA-256.
    #[serde(default)]
    pub audit_key: Option<SecretRef>,
    /// A Postgres database (`postgres://user@host:5432/db?sslmode=require`) shared by every replica; absent,
    /// the embedded SQLite file under `data_dir` is used.
    #[serde(default)]
    pub url: Option<StoreUrl>,
    /// The Postgres password, as a secret reference (`env:PGPASSWORD`, `file:/path`, `credential:NAME`).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Postgres connections each process keeps at most.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
}

/// `store.url`: where the Postgres store lives. It may carry a password (`postgres://u:pw@host/db`), so it is
/// only ever shown redacted ([`StoreUrl::redacted`]); prefer `store.password` with a secret reference.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(String);

impl StoreUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, password included: for connecting only, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password (if any) replaced by `***`: safe to print.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                // Query parameters could hold `password=…` too.
                if u.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case("password")) {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if k.eq_ignore_ascii_case("password") { "***".to_owned() } else { v.into_owned() };
                            (k.into_owned(), v)
                        })
                        .collect();
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                u.to_string()
            }
            Err(_) => "<store.url, not shown>".to_owned(),
        }
    }

    /// Parse into a connection configuration, `password` (loaded from `store.password`) added. Errors name
    /// what is wrong, never the URL's text.
    pub fn connection(&self, password: Option<&str>) -> Result<tokio_postgres::Config, ConfigError> {
        let field = "store.url";
        if !(self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")) {
            return Err(ConfigError::new(field, "must be a postgres:// URL such as postgres://agentgate@db.internal:5432/agentgate"));
        }
        let mut config: tokio_postgres::Config = self.0.parse().map_err(|e: tokio_postgres::Error| {
            ConfigError::new(field, format!("is not a Postgres connection URL ({e}); see docs/configuration.md"))
        })?;
        if let Some(pw) = password {
            if config.get_password().is_some() {
                return Err(ConfigError::new(
                    "store.password",
                    "store.url already carries a password: keep only store.password (a secret reference)",
                ));
            }
            config.password(pw);
        }
        if config.get_hosts().is_empty() {
            return Err(ConfigError::new(field, "names no host: postgres://USER@HOST:5432/DATABASE"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("agentgate");
        }
        Ok(config)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeConfig {
    /// Text of the message-type invoke response sent until the agent answers invokes itself.
    #[serde(default = "defaults::invoke_text")]
    pub ack_text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Apply Teams' rate limits before each request (turn off only against a local fake).
    #[serde(default = "defaults::yes")]
    pub throttle: bool,
    /// Attempts before a queued send is dead-lettered.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: i64,
    /// Queued sends older than this are dead-lettered instead of retried.
    #[serde(default = "defaults::max_age")]
    pub max_age_secs: u64,
    /// How often the worker looks for sends queued by another process (`agentgate send`).
    #[serde(default = "defaults::poll_ms")]
    pub poll_interval_ms: u64,
    /// Timeout of one Connector request.
    #[serde(default = "defaults::connector_timeout")]
    pub request_timeout_secs: u64,
    /// The least time between two edits of a streamed reply updated in place (group chats, channels, a
    /// 1:1 stream past Teams' 2 minutes); text written in between is coalesced into the next edit.
    #[serde(default = "defaults::stream_update_ms")]
    pub stream_update_ms: u64,
    /// Age at which a native (1:1) stream is finalised and goes on as edits in place, before Teams ends
    /// streams at 2 minutes.
    #[serde(default = "defaults::stream_max_age_ms")]
    pub stream_max_age_ms: u64,
}

/// Bounds of `outbound.stream_update_ms`: Teams takes about one update a second per message.
pub const STREAM_UPDATE_MS: std::ops::RangeInclusive<u64> = 1_000..=60_000;
/// Bounds of `outbound.stream_max_age_ms`: ending 5 s before Teams' 2 minutes at the latest.
pub const STREAM_MAX_AGE_MS: std::ops::RangeInclusive<u64> = 10_000..=115_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "defaults::log_format")]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `agentgate=debug,info`; `RUST_LOG` wins when set.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

/// The MCP bridge's Streamable HTTP endpoint (`/mcp`). Stdio hosts (`agentgate mcp`) need none of this.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Where `/mcp` listens. It is served only when at least one token is configured.
    #[serde(default = "defaults::mcp_bind")]
    pub bind: String,
    /// `Host` header values `/mcp` accepts (DNS-rebinding protection); loopback names by default. Add
    /// the name hosts use when `/mcp` is reached through a proxy.
    #[serde(default = "defaults::mcp_allowed_hosts", deserialize_with = "list_or_csv")]
    pub allowed_hosts: Vec<String>,
    /// Allow `bind` to be a non-loopback address (put TLS in front of it).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Bearer tokens for `/mcp`, each optionally scoped to bots and tenants.
    #[serde(default)]
    pub tokens: Vec<McpToken>,
    /// The longest message text pushed in one channel notification, in characters (the rest is cut and
    /// marked; `read_messages` returns up to four times as much).
    #[serde(default = "defaults::mcp_max_content")]
    pub max_content_chars: usize,
    /// How long a session's claim on conversations (`claim_conversations`) lasts unless renewed; a live
    /// session renews it every third of this, so a claim lapses this long after its host went away
    /// without ending its session (a crashed replica, a lost connection).
    #[serde(default = "defaults::mcp_claim_lease")]
    pub claim_lease_secs: u64,
    /// How many `/mcp` sessions one token may have open at once; an `initialize` beyond it is refused
    /// (429) until one ends (DELETE) or idles out. Bounds what one leaked or hostile token can hold.
    #[serde(default = "defaults::mcp_max_sessions_per_token")]
    pub max_sessions_per_token: usize,
}

/// `[files]`: files people send the bot (`get_file`) and files the agent sends (`send_file`, the Agent
/// User's uploads).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// The largest file downloaded for the agent, in bytes (default 25 MiB); a tool may ask for less.
    #[serde(default = "defaults::files_max_download")]
    pub max_download_bytes: u64,
    /// The largest file the agent may send or upload, in bytes (default 25 MiB).
    #[serde(default = "defaults::files_max_send")]
    pub max_send_bytes: u64,
    /// Bytes per upload request: a multiple of 320 KiB (327,680 bytes) below 60 MiB, as OneDrive upload
    /// sessions require (default 10 MiB).
    #[serde(default = "defaults::files_chunk")]
    pub upload_chunk_bytes: u64,
    /// How long a file offered in a 1:1 chat (the consent card) waits for the person's answer, in seconds
    /// (default 24 h); then it is forgotten and its bytes deleted.
    #[serde(default = "defaults::files_consent_ttl")]
    pub consent_ttl_secs: u64,
    /// Directories whose files `send_file` and `graph_upload_file` may read by `path` (none by default:
    /// the agent passes the content itself).
    #[serde(default)]
    pub send_dirs: Vec<PathBuf>,
    /// Extra places files may be downloaded from and uploaded to besides SharePoint and OneDrive (base
    /// URLs; plain http only on loopback). Change only for tests or special set-ups.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The longest text a file read returns, in characters (default 100,000; the rest is cut and marked).
    #[serde(default = "defaults::files_max_text")]
    pub max_text_chars: usize,
}

/// OneDrive upload sessions take fragments in multiples of this many bytes (320 KiB).
pub const UPLOAD_FRAGMENT_UNIT: u64 = 320 * 1024;

/// One `/mcp` bearer token and what it may see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToken {
    /// A name for logs and the audit trail (the token itself never appears anywhere).
    pub name: String,
    /// Where the token lives (env:…, file:…, credential:…, keyring:…).
    pub token: SecretRef,
    /// Bots (app ids) this token may see and act as; empty means every configured bot.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub bots: Vec<String>,
    /// Tenants this token may see and act in; empty means every tenant its bots serve.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub tenants: Vec<String>,
    /// Only the tools that read (no sending, editing, reacting, acknowledging or claiming).
    #[serde(default)]
    pub read_only: bool,
    /// Only these tools (names as in tools/list); empty means every tool.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub tools: Vec<String>,
    /// Tools that act in Teams whose every call waits for an owner's approval (the bot's approvers, as
    /// for the permission relay).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub approve: Vec<String>,
}

impl McpToken {
    /// The token's tool policy (checked by [`Config::validate`]).
    pub fn tool_policy(&self) -> Result<mcp_tools::ToolPolicy, mcp_tools::PolicyError> {
        mcp_tools::ToolPolicy::new(self.read_only, &self.tools, &self.approve)
    }
}

/// One bot (one Azure Bot / Entra app registration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// The Entra application (client) id; inbound tokens carry it as `aud`.
    pub app_id: crate::ids::AppId,
    /// The bot's name as people see it in Teams.
    #[serde(default)]
    pub display_name: String,
    /// Tenants whose activities this bot accepts; anything else gets 403.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub allowed_tenants: Vec<crate::ids::TenantId>,
    #[serde(default = "defaults::cloud")]
    pub cloud: Cloud,
    /// Where the bot's outbound credential lives (a reference, never the secret itself): the client
    /// secret, or, when `certificate` is set, the certificate's private key (PEM).
    #[serde(default)]
    pub credential: Option<SecretRef>,
    /// The bot's certificate (PEM) for certificate credentials; `credential` is then its private key.
    #[serde(default)]
    pub certificate: Option<SecretRef>,
    /// Send the certificate chain (`x5c`) in client assertions (subject name + issuer authentication).
    #[serde(default)]
    pub send_x5c: bool,
    /// The bot's home tenant: outbound tokens come from this tenant (single-tenant bots, the default
    /// for new Azure Bots). Unset means a legacy multi-tenant bot (tokens from `botframework.com`).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Require the signing key to be endorsed for the activity's `channelId`.
    #[serde(default = "defaults::yes")]
    pub require_endorsement: bool,
    /// Who may reach the agent through this bot, and who approves its tool use.
    #[serde(default)]
    pub policy: policy::BotPolicy,
    /// The Entra Agent User behind this bot (three-hop tokens for Graph); see docs/configuration.md.
    #[serde(default)]
    pub agent_user: Option<agent_user::AgentUserConfig>,
    /// Agent 365 agentic activities: Entra-issued inbound tokens whose audience is the Agent
    /// Blueprint (needs `agent_user` for the Blueprint id and the reply tokens).
    #[serde(default)]
    pub agentic: AgenticConfig,
    /// Show the 👍/👎 feedback buttons on the bot's text messages (`reply`, `send_message`):
    /// `channelData.feedbackLoopEnabled`. A user's feedback reaches the host as a `feedback` event.
    #[serde(default)]
    pub feedback: bool,
    /// Sent once per conversation when the app is installed there (1:1, team, group chat).
    #[serde(default)]
    pub welcome_text: Option<String>,
    /// An Adaptive Card (a JSON file) sent as the welcome, with `welcome_text` as its text if given.
    #[serde(default)]
    pub welcome_card: Option<std::path::PathBuf>,
    /// The bot's commands in the generated Teams app manifest (`commandLists`, at most 12): shown when a user
    /// @mentions the bot or opens its chat; one with a `prompt` is a prompt starter (`type` `prompt`). Empty:
    /// the template's `help` and `status`.
    #[serde(default)]
    pub commands: Vec<BotCommand>,
}

/// One entry of a bot's command list in the Teams app manifest (schema v1.29).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BotCommand {
    /// What the user picks (1 to 128 characters).
    pub title: String,
    /// What it does (at most 4000 characters).
    #[serde(default)]
    pub description: String,
    /// A prompt starter: the text Teams puts in the compose box when the user picks it (at most 4000).
    #[serde(default)]
    pub prompt: Option<String>,
}

/// `[bots.agentic]`: accept Agent 365 activities signed by Entra for the bot's Agent Blueprint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgenticConfig {
    /// Off by default: only Bot Framework tokens are accepted.
    #[serde(default)]
    pub enabled: bool,
    /// Callers (`azp`, or `appid` when absent) whose tokens are accepted; empty means any caller that
    /// Entra signed a token for, for the Blueprint.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub allowed_callers: Vec<String>,
    /// Each tenant's OpenID metadata; `{tenant}` is replaced by the token's `tid`.
    #[serde(default = "defaults::entra_metadata")]
    pub openid_metadata_url: String,
}

mod defaults {
    use super::*;
    pub(super) fn data_dir() -> PathBuf {
        "agentgate-data".into()
    }
    pub(super) fn bind() -> String {
        "127.0.0.1:3978".into()
    }
    pub(super) fn body_limit() -> usize {
        512 * 1024
    }
    pub(super) fn request_timeout() -> u64 {
        10
    }
    pub(super) fn shutdown_grace() -> u64 {
        20
    }
    pub(super) fn tls_reload() -> u64 {
        30
    }
    pub(super) fn skew() -> u64 {
        300
    }
    pub(super) fn key_refresh() -> u64 {
        24 * 3600
    }
    pub(super) fn kid_cooldown() -> u64 {
        300
    }
    pub(super) fn stale_grace() -> u64 {
        48 * 3600
    }
    pub(super) fn token_cache() -> usize {
        10_000
    }
    pub(super) fn fetch_timeout() -> u64 {
        10
    }
    fn cloud_cfg(c: Cloud) -> CloudConfig {
        CloudConfig { openid_metadata_url: c.default_metadata_url().into(), token_authority: None, connector_endpoints: Vec::new() }
    }
    pub(super) fn public() -> CloudConfig {
        cloud_cfg(Cloud::Public)
    }
    pub(super) fn usgov() -> CloudConfig {
        cloud_cfg(Cloud::Usgov)
    }
    pub(super) fn china() -> CloudConfig {
        cloud_cfg(Cloud::China)
    }
    pub(super) fn sqlite_path() -> PathBuf {
        "agentgate.db".into()
    }
    pub(super) fn synchronous() -> Synchronous {
        Synchronous::Full
    }
    pub(super) fn max_batch() -> usize {
        512
    }
    pub(super) fn pool_size() -> usize {
        16
    }
    pub(super) fn dedupe_ttl() -> u64 {
        24 * 3600
    }
    pub(super) fn invoke_text() -> String {
        "Received. The agent will follow up shortly.".into()
    }
    pub(super) fn max_attempts() -> i64 {
        6
    }
    pub(super) fn max_age() -> u64 {
        600
    }
    pub(super) fn poll_ms() -> u64 {
        250
    }
    pub(super) fn connector_timeout() -> u64 {
        15
    }
    pub(super) fn stream_update_ms() -> u64 {
        2_000
    }
    pub(super) fn stream_max_age_ms() -> u64 {
        110_000
    }
    pub(super) fn log_format() -> LogFormat {
        LogFormat::Text
    }
    pub(super) fn log_level() -> String {
        "info".into()
    }
    pub(super) fn cloud() -> Cloud {
        Cloud::Public
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn entra_metadata() -> String {
        "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration".into()
    }
    pub(super) fn mcp_bind() -> String {
        "127.0.0.1:3979".into()
    }
    pub(super) fn mcp_allowed_hosts() -> Vec<String> {
        ["localhost", "127.0.0.1", "::1", "[::1]"].map(String::from).to_vec()
    }
    pub(super) fn mcp_max_content() -> usize {
        4000
    }
    pub(super) fn mcp_claim_lease() -> u64 {
        60
    }
    pub(super) fn mcp_max_sessions_per_token() -> usize {
        16
    }
    pub(super) fn files_max_download() -> u64 {
        25 * 1024 * 1024
    }
    pub(super) fn files_max_send() -> u64 {
        25 * 1024 * 1024
    }
    pub(super) fn files_chunk() -> u64 {
        32 * super::UPLOAD_FRAGMENT_UNIT
    }
    pub(super) fn files_consent_ttl() -> u64 {
        24 * 3600
    }
    pub(super) fn files_max_text() -> usize {
        100_000
    }
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                empty_table().try_into().unwrap_or_else(|e| unreachable!("defaults of {} deserialize: {e}", stringify!($t)))
            }
        }
    )*};
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

default_from_serde!(
    ServerConfig,
    AuthConfig,
    CloudsConfig,
    StoreConfig,
    InvokeConfig,
    OutboundConfig,
    LogConfig,
    McpConfig,
    AgenticConfig,
    FilesConfig
);

fn list_or_csv<'de, D: Deserializer<'de>, T: From<String>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(v) => v.into_iter().map(T::from).collect(),
        ListOrCsv::Csv(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| T::from(s.to_owned())).collect(),
    })
}

/// A configuration problem, with the path of the field and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "configuration error: {}", self.problem)
        } else {
            write!(f, "configuration error in `{}`: {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The configuration served with `--dev` when no file is given: one bot with the Microsoft 365 Agents
/// Playground's default app id and tenant, so that the Playground works with no set-up at all.
pub const DEV_DEFAULT_TOML: &str = r#"
[[bots]]
app_id = "00000000-0000-0000-0000-00000000000011"
display_name = "agentgate (dev)"
allowed_tenants = ["00000000-0000-0000-0000-0000000000001"]
# Dev mode: anyone in the Playground's tenant may reach the agent in a 1:1 chat.
policy.dm = "open"
"#;

impl Config {
    /// Load from an optional TOML text plus environment overrides, then validate field types.
    /// Semantic checks that depend on how the gateway runs are in [`Config::validate`].
    pub fn from_sources(
        toml_text: Option<&str>,
        source_name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = EnvOverrides::from_vars(env)?;
        let mut layers = ::config::Config::builder();
        if let Some(text) = toml_text {
            layers = layers.add_source(::config::File::from_str(text, ::config::FileFormat::Toml));
        }
        let merged = layers.add_source(env.clone()).build().map_err(|e| match e {
            // Only the parser's message (or the first line of another error): the snippet of the offending
            // line that follows could show a secret.
            ::config::ConfigError::FileParse { cause, .. } => {
                let why = cause
                    .downcast_ref::<toml::de::Error>()
                    .map_or_else(|| cause.to_string().lines().next().unwrap_or_default().to_owned(), |e| e.message().trim().to_owned());
                ConfigError::new("", format!("{source_name} is not valid TOML: {why}"))
            }
            _ => ConfigError::new("", "cannot merge the configuration sources"),
        })?;
        let tree = ::config::Source::collect(&merged).map_err(|_| ConfigError::new("", "cannot merge the configuration sources"))?;
        let tree = to_toml(::config::Value::new(None, tree), "", &env)?;
        serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            // The toml error may add its own (less precise) location on a second line; keep the first.
            let inner = e.into_inner().to_string();
            let first = inner.lines().next().unwrap_or_default().to_owned();
            let problem = if is_secret_path(&path) { secret_problem(&first) } else { explain_serde(&first) };
            ConfigError::new(path, problem)
        })
    }

    /// Load from a file (or none) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                ConfigError::new(
                    "",
                    format!("cannot read {}: {e}; pass --config with an existing file or run `agentgate init`", p.display()),
                )
            })?),
            None => None,
        };
        let name = path.map_or_else(|| "the built-in defaults".to_owned(), |p| p.display().to_string());
        Self::from_sources(text.as_deref(), &name, std::env::vars())
    }

    /// The SQLite file, resolved against `data_dir`.
    pub fn sqlite_path(&self) -> PathBuf {
        if self.store.sqlite_path.is_absolute() { self.store.sqlite_path.clone() } else { self.data_dir.join(&self.store.sqlite_path) }
    }

    /// Why `server.public_url` cannot receive Graph webhooks (unset, not a URL, not https), if it cannot.
    pub fn inbound_url_problem(&self) -> Option<String> {
        let Some(raw) = self.server.public_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Some("server.public_url is not set".to_owned());
        };
        match url::Url::parse(raw) {
            Err(_) => Some(format!("server.public_url `{raw}` is not a URL")),
            Ok(u) if u.scheme() != "https" => Some(format!("server.public_url `{raw}` is not https")),
            Ok(u) if u.host_str().is_none() || u.query().is_some() || u.fragment().is_some() => {
                Some(format!("server.public_url `{raw}` must be a base URL such as https://gateway.example.com"))
            }
            Ok(_) => None,
        }
    }

    /// The URL Graph posts notifications (`path` = `/api/graph/notifications` or `/api/graph/lifecycle`) to.
    pub fn public_endpoint(&self, path: &str) -> Option<String> {
        let base = self.server.public_url.as_deref()?.trim().trim_end_matches('/');
        Some(format!("{base}{path}"))
    }

    /// Check everything that does not need the network. `dev` is `serve --dev`.
    pub fn validate(&self, dev: bool) -> Result<(), ConfigError> {
        let bind: SocketAddr = self.server.bind.parse().map_err(|_| {
            ConfigError::new("server.bind", format!("`{}` is not an address:port such as 127.0.0.1:3978", self.server.bind))
        })?;
        let tls = (&self.server.tls.cert_file, &self.server.tls.key_file);
        match tls {
            (Some(_), None) => {
                return Err(ConfigError::new("server.tls.key_file", "a certificate is set but no key: set both cert_file and key_file"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("server.tls.cert_file", "a key is set but no certificate: set both cert_file and key_file"));
            }
            _ => {}
        }
        if dev && !bind.ip().is_loopback() {
            return Err(ConfigError::new(
                "server.bind",
                format!(
                    "--dev accepts unauthenticated Playground traffic and only binds loopback; `{bind}` is not loopback: use 127.0.0.1:PORT"
                ),
            ));
        }
        if tls.0.is_none() && !bind.ip().is_loopback() && !self.server.behind_proxy {
            return Err(ConfigError::new(
                "server.tls",
                format!(
                    "`{bind}` is not loopback, so plain HTTP is refused: set server.tls.cert_file and server.tls.key_file, or server.behind_proxy = true when a TLS-terminating proxy is in front"
                ),
            ));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(ConfigError::new("server.body_limit_bytes", "must be at least 1024 bytes (Teams activities are often several KB)"));
        }
        if self.server.request_timeout_secs == 0 || self.server.request_timeout_secs > 14 {
            return Err(ConfigError::new("server.request_timeout_secs", "must be 1..=14: Teams gives up after 15 s"));
        }
        for (i, bot) in self.bots.iter().enumerate() {
            if bot.certificate.is_some() && bot.credential.is_none() {
                return Err(ConfigError::new(
                    format!("bots[{i}].credential"),
                    "a certificate is set but no private key: set credential to the key's reference (file:/path/key.pem)",
                ));
            }
            if bot.tenant_id.as_deref().is_some_and(|t| t.trim().is_empty() || t.contains('/')) {
                return Err(ConfigError::new(format!("bots[{i}].tenant_id"), "must be the bot's home tenant id (a GUID)"));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!(
                    "`{}` is not a log filter; use a level such as info or debug, or directives such as agentgate=debug,info",
                    self.log.level
                ),
            ));
        }
        if self.outbound.max_attempts < 1 {
            return Err(ConfigError::new("outbound.max_attempts", "must be at least 1"));
        }
        if self.outbound.request_timeout_secs == 0 || self.outbound.poll_interval_ms == 0 {
            return Err(ConfigError::new("outbound", "request_timeout_secs and poll_interval_ms must be at least 1"));
        }
        if !STREAM_UPDATE_MS.contains(&self.outbound.stream_update_ms) {
            return Err(ConfigError::new("outbound.stream_update_ms", "must be 1000..=60000 (Teams takes about one update a second)"));
        }
        if !STREAM_MAX_AGE_MS.contains(&self.outbound.stream_max_age_ms) {
            return Err(ConfigError::new(
                "outbound.stream_max_age_ms",
                "must be 10000..=115000: Teams ends a stream at 2 minutes, and the final must land before",
            ));
        }
        if self.store.max_batch == 0 {
            return Err(ConfigError::new("store.max_batch", "must be at least 1"));
        }
        if let Some(url) = &self.store.url {
            if self.store.pool_size == 0 {
                return Err(ConfigError::new("store.pool_size", "must be at least 1"));
            }
            // A placeholder password: only the shape is checked here (the secret is loaded when opening).
            url.connection(self.store.password.as_ref().map(|_| "-"))?;
        } else if self.store.password.is_some() {
            return Err(ConfigError::new("store.password", "is for Postgres: set store.url too, or remove it (SQLite needs none)"));
        }
        if self.auth.clock_skew_secs > 600 {
            return Err(ConfigError::new("auth.clock_skew_secs", "more than 600 s of skew weakens expiry checks; keep the default 300"));
        }
        if self.auth.key_refresh_secs == 0 {
            return Err(ConfigError::new("auth.key_refresh_secs", "must be at least 1 (the default, 86400, is right for production)"));
        }
        for cloud in Cloud::ALL {
            let field = format!("clouds.{cloud}.openid_metadata_url");
            check_fetch_url(&self.clouds.get(cloud).openid_metadata_url).map_err(|p| ConfigError::new(field, p))?;
            if let Some(a) = &self.clouds.get(cloud).token_authority {
                check_fetch_url(a).map_err(|p| ConfigError::new(format!("clouds.{cloud}.token_authority"), p))?;
            }
            for (i, e) in self.clouds.get(cloud).connector_endpoints.iter().enumerate() {
                let field = || format!("clouds.{cloud}.connector_endpoints[{i}]");
                let u = check_fetch_url(e).map_err(|p| ConfigError::new(field(), p))?;
                if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
                    return Err(ConfigError::new(field(), format!("`{e}` must be a plain base URL (no user info, query or fragment)")));
                }
            }
        }
        self.validate_files()?;
        if self.bots.is_empty() {
            return Err(ConfigError::new(
                "bots",
                "no bot is configured, so no traffic would be accepted: add a [[bots]] table (run `agentgate init` for a starter file)",
            ));
        }
        let mut seen = HashSet::new();
        for (i, bot) in self.bots.iter().enumerate() {
            let field = |name: &str| format!("bots[{i}].{name}");
            let app_id = bot.app_id.as_str();
            if app_id.is_empty() || app_id.contains(char::is_whitespace) {
                return Err(ConfigError::new(field("app_id"), "must be the bot's Entra application (client) id, without spaces"));
            }
            if app_id.starts_with("https://") || app_id.starts_with("http://") {
                return Err(ConfigError::new(
                    field("app_id"),
                    "a URL is not an app id (https://api.botframework.com is the Connector's audience, never a bot's)",
                ));
            }
            if !seen.insert(app_id.to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    field("app_id"),
                    format!("`{app_id}` is configured twice; each [[bots]] entry needs its own app id"),
                ));
            }
            if let Some(a) = &bot.agent_user {
                a.validate(&field("agent_user"))?;
                if a.inbound
                    && let Some(problem) = self.inbound_url_problem()
                {
                    return Err(ConfigError::new(field("agent_user.inbound"), format!("{problem}. {NO_PUBLIC_URL_HELP}")));
                }
            }
            if bot.allowed_tenants.is_empty() {
                return Err(ConfigError::new(
                    field("allowed_tenants"),
                    "is empty, so every activity would be refused: list the tenant ids this bot serves",
                ));
            }
            for t in &bot.allowed_tenants {
                let t = t.as_str();
                if t.is_empty() || t.contains('*') || t.contains(char::is_whitespace) {
                    return Err(ConfigError::new(
                        field("allowed_tenants"),
                        format!("`{t}` is not a tenant id (wildcards are not allowed)"),
                    ));
                }
            }
            bot.policy.validate().map_err(|(f, problem)| ConfigError::new(field(&f), problem))?;
            if bot.agentic.enabled {
                if bot.cloud != Cloud::Public {
                    return Err(ConfigError::new(
                        field("agentic.enabled"),
                        "agentic activities are supported in the public cloud only (Entra issuers login.microsoftonline.com / sts.windows.net)",
                    ));
                }
                if bot.agent_user.is_none() {
                    return Err(ConfigError::new(
                        field("agentic.enabled"),
                        "agentic activities need the Agent Blueprint and its Agent User: add a [bots.agent_user] section",
                    ));
                }
                let url = &bot.agentic.openid_metadata_url;
                if !url.contains("{tenant}") {
                    return Err(ConfigError::new(
                        field("agentic.openid_metadata_url"),
                        "must contain {tenant} (each tenant has its own keys)",
                    ));
                }
                check_fetch_url(&url.replace("{tenant}", "t")).map_err(|p| ConfigError::new(field("agentic.openid_metadata_url"), p))?;
            }
        }
        self.validate_mcp()
    }

    fn validate_files(&self) -> Result<(), ConfigError> {
        let f = &self.files;
        const MAX_FILE: u64 = 250 * 1024 * 1024;
        for (field, v) in [("files.max_download_bytes", f.max_download_bytes), ("files.max_send_bytes", f.max_send_bytes)] {
            if v == 0 || v > MAX_FILE {
                return Err(ConfigError::new(field, format!("must be 1..={MAX_FILE} bytes (250 MiB)")));
            }
        }
        let chunk = f.upload_chunk_bytes;
        if chunk == 0 || !chunk.is_multiple_of(UPLOAD_FRAGMENT_UNIT) || chunk >= 60 * 1024 * 1024 {
            return Err(ConfigError::new(
                "files.upload_chunk_bytes",
                format!("must be a multiple of {UPLOAD_FRAGMENT_UNIT} (320 KiB) below 60 MiB, as OneDrive upload sessions require"),
            ));
        }
        if f.consent_ttl_secs < 60 {
            return Err(ConfigError::new("files.consent_ttl_secs", "must be at least 60 seconds"));
        }
        if f.max_text_chars < 100 {
            return Err(ConfigError::new("files.max_text_chars", "must be at least 100"));
        }
        for (i, d) in f.send_dirs.iter().enumerate() {
            if !d.is_absolute() {
                return Err(ConfigError::new(format!("files.send_dirs[{i}]"), format!("`{}` must be an absolute path", d.display())));
            }
        }
        for (i, e) in f.endpoints.iter().enumerate() {
            let field = || format!("files.endpoints[{i}]");
            let u = check_fetch_url(e).map_err(|p| ConfigError::new(field(), p))?;
            if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
                return Err(ConfigError::new(field(), format!("`{e}` must be a plain base URL (no user info, query or fragment)")));
            }
        }
        Ok(())
    }

    fn validate_mcp(&self) -> Result<(), ConfigError> {
        let mcp = &self.mcp;
        let bind: SocketAddr = mcp
            .bind
            .parse()
            .map_err(|_| ConfigError::new("mcp.bind", format!("`{}` is not an address:port such as 127.0.0.1:3979", mcp.bind)))?;
        if !bind.ip().is_loopback() && !mcp.allow_non_loopback {
            return Err(ConfigError::new(
                "mcp.bind",
                format!(
                    "`{bind}` is not loopback: /mcp gives tools that act in Teams; keep it on 127.0.0.1, or set mcp.allow_non_loopback = true with TLS in front"
                ),
            ));
        }
        if mcp.allowed_hosts.is_empty() {
            return Err(ConfigError::new(
                "mcp.allowed_hosts",
                "is empty, so every request would be refused: list the host names clients use",
            ));
        }
        if mcp.max_content_chars < 200 {
            return Err(ConfigError::new("mcp.max_content_chars", "must be at least 200"));
        }
        if !(1..=3600).contains(&mcp.claim_lease_secs) {
            return Err(ConfigError::new("mcp.claim_lease_secs", "must be between 1 and 3600 seconds"));
        }
        if !(1..=1000).contains(&mcp.max_sessions_per_token) {
            return Err(ConfigError::new("mcp.max_sessions_per_token", "must be between 1 and 1000"));
        }
        let mut names = HashSet::new();
        for (i, t) in mcp.tokens.iter().enumerate() {
            let field = |name: &str| format!("mcp.tokens[{i}].{name}");
            if t.name.trim().is_empty() || !names.insert(t.name.as_str()) {
                return Err(ConfigError::new(
                    field("name"),
                    "each token needs its own non-empty name (it appears in logs and the audit trail)",
                ));
            }
            for b in &t.bots {
                if !self.bots.iter().any(|c| c.app_id.eq_ignore_ascii_case(b)) {
                    return Err(ConfigError::new(field("bots"), format!("`{b}` is not the app id of a configured bot")));
                }
            }
            for tenant in &t.tenants {
                if !self.bots.iter().any(|c| c.allowed_tenants.iter().any(|a| a.matches(tenant))) {
                    return Err(ConfigError::new(field("tenants"), format!("`{tenant}` is in no bot's allowed_tenants")));
                }
            }
            if let Err(e) = t.tool_policy() {
                let name = match e.field {
                    mcp_tools::PolicyField::Tools => "tools",
                    mcp_tools::PolicyField::Approve => "approve",
                };
                return Err(ConfigError::new(field(name), e.problem));
            }
        }
        Ok(())
    }
}

/// A URL the gateway fetches keys from: https, or plain http on a loopback host (local fakes).
pub fn check_fetch_url(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| format!("`{s}` is not a URL ({e})"))?;
    match (u.scheme(), u.host()) {
        ("https", Some(_)) => Ok(u),
        ("http", Some(url::Host::Ipv4(ip))) if ip.is_loopback() => Ok(u),
        ("http", Some(url::Host::Ipv6(ip))) if ip.is_loopback() => Ok(u),
        ("http", Some(url::Host::Domain("localhost"))) => Ok(u),
        _ => Err(format!("`{s}` must be an https URL (plain http is allowed for loopback hosts only)")),
    }
}

fn explain_serde(msg: &str) -> String {
    if msg.starts_with("unknown field") { format!("{msg}; check the spelling against docs/configuration.md") } else { msg.to_owned() }
}

/// Whether a key path holds a secret reference (or a secret): `bots[0].credential`, `mcp.tokens[1].token`,
/// `bots[0].agent_user.key`, `store.audit_key`… Judged by the key names, so that a new secret field is
/// covered when it is named like one.
fn is_secret_path(path: &str) -> bool {
    path.split(['.', '[']).any(|key| {
        matches!(key, "credential" | "certificate" | "key" | "token" | "secret" | "password")
            || ["_credential", "_certificate", "_key", "_token", "_secret", "_password"].iter().any(|suffix| key.ends_with(suffix))
    })
}

/// The problem with the value at a secret path, which is never shown (it may be the secret itself): the
/// deserializer's message is kept only when it cannot hold the value.
fn secret_problem(msg: &str) -> String {
    let bad_ref = crate::secrets::BadSecretRef.to_string();
    if msg == bad_ref || msg.starts_with("unknown field") || msg.starts_with("missing field") {
        return explain_serde(msg);
    }
    let found =
        [("integer", "an integer"), ("floating point", "a number"), ("boolean", "a boolean"), ("sequence", "a list"), ("map", "a table")]
            .into_iter()
            .find(|(kind, _)| msg.strip_prefix("invalid type: ").is_some_and(|rest| rest.starts_with(kind)));
    match found {
        Some((_, what)) => format!("is {what}, {bad_ref}"),
        None => bad_ref,
    }
}

/// The highest array index an environment variable may address. Higher is refused before merging: the
/// `config` crate fills the elements up to an index (with nil, which [`to_toml`] reports as a gap).
const MAX_ENV_INDEX: usize = 999;

/// One `AGENTGATE__…` variable: its name, the key path it sets (`bots[0].app_id`) and its value.
#[derive(Clone)]
struct EnvVar {
    name: String,
    path: String,
    value: toml::Value,
}

/// The `AGENTGATE__…` environment variables, as a `config` source.
///
/// Hand-written because `config::Environment` cannot express two things that work here:
/// an array element (`AGENTGATE__BOTS__0__APP_ID` would become a table key `"0"`, not `bots[0]`; bots are
/// an array of tables), and a TOML array value (`["a","b"]`; it can only split on one separator for keys
/// named in advance, and the indexed keys cannot be named in advance). So this source turns each variable
/// into a path in the crate's own syntax (`bots[0].app_id`), and the crate merges it over the file.
#[derive(Clone)]
struct EnvOverrides(Vec<EnvVar>);

impl fmt::Debug for EnvOverrides {
    // Names only: a value may be a secret pasted where its reference belongs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|v| &v.name)).finish()
    }
}

impl EnvOverrides {
    /// Read the `AGENTGATE__…` variables (others are ignored), checking that each names a key path once.
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut out: Vec<EnvVar> = Vec::new();
        for (name, value) in vars.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)) {
            let path = env_key_path(&name)?;
            // The crate merges a source's keys in no particular order, so two variables for the same key
            // (in another case), or for a key and a key inside it, would make the result depend on chance.
            if let Some(other) = out.iter().find(|o| overlaps(&o.path, &path)) {
                return Err(ConfigError::new(
                    name,
                    format!("sets the same key as {} (`{path}` and `{}`); set only one of them", other.name, other.path),
                ));
            }
            out.push(EnvVar { name, path, value: parse_env_value(&value) });
        }
        Ok(Self(out))
    }
}

impl ::config::Source for EnvOverrides {
    fn clone_into_box(&self) -> Box<dyn ::config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<::config::Map<String, ::config::Value>, ::config::ConfigError> {
        Ok(self.0.iter().map(|v| (v.path.clone(), to_config_value(&v.value, &v.name))).collect())
    }
}

/// `AGENTGATE__BOTS__0__APP_ID` → `bots[0].app_id` (the `config` crate's path syntax).
fn env_key_path(name: &str) -> Result<String, ConfigError> {
    let mut path = String::new();
    for (i, part) in name[ENV_PREFIX.len()..].split("__").enumerate() {
        let part = part.to_ascii_lowercase();
        if part.is_empty() {
            return Err(ConfigError::new(name, "empty path segment; separate keys with a double underscore: AGENTGATE__SERVER__BIND"));
        }
        match part.parse::<usize>() {
            Ok(index) if i > 0 && index > MAX_ENV_INDEX => {
                return Err(ConfigError::new(
                    name,
                    format!("array index {index} is too large (at most {MAX_ENV_INDEX}); number entries from 0 without gaps"),
                ));
            }
            Ok(index) if i > 0 => path.push_str(&format!("[{index}]")),
            _ if part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
                if i > 0 {
                    path.push('.');
                }
                path.push_str(&part);
            }
            _ => {
                return Err(ConfigError::new(
                    name,
                    "names no key: key names are letters, digits and _, separated by a double underscore: AGENTGATE__SERVER__BIND",
                ));
            }
        }
    }
    Ok(path)
}

/// Whether two key paths are the same, or one is inside the other.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with(['.', '[']));
    a == b || inside(a, b) || inside(b, a)
}

fn to_config_value(v: &toml::Value, origin: &String) -> ::config::Value {
    let kind: ::config::ValueKind = match v {
        toml::Value::String(s) => s.as_str().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => (*f).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => a.iter().map(|x| to_config_value(x, origin)).collect::<Vec<_>>().into(),
        toml::Value::Table(t) => t.iter().map(|(k, x)| (k.clone(), to_config_value(x, origin))).collect::<::config::Map<_, _>>().into(),
    };
    ::config::Value::new(Some(origin), kind)
}

/// The merged tree, back as TOML values for the typed deserialization.
///
/// Hand-written because the `config` crate's own deserializer converts between scalar types (an integer
/// where a string is expected becomes that string, `"yes"` or `1` a `true`), where the strict TOML one
/// refuses a wrong type and names the allowed values of an enum. It also reports the elements the crate
/// filled in below an index that skipped some (nil, which neither TOML nor [`parse_env_value`] produces).
fn to_toml(v: ::config::Value, path: &str, env: &EnvOverrides) -> Result<toml::Value, ConfigError> {
    use ::config::ValueKind as K;
    let out_of_range = || ConfigError::new(path, "is a number out of range");
    Ok(match v.kind {
        K::Nil => return Err(gap_error(path, env)),
        K::Boolean(b) => toml::Value::Boolean(b),
        K::I64(i) => toml::Value::Integer(i),
        K::I128(i) => toml::Value::Integer(i64::try_from(i).map_err(|_| out_of_range())?),
        K::U64(i) => toml::Value::Integer(i64::try_from(i).map_err(|_| out_of_range())?),
        K::U128(i) => toml::Value::Integer(i64::try_from(i).map_err(|_| out_of_range())?),
        K::Float(f) => toml::Value::Float(f),
        K::String(s) => toml::Value::String(s),
        K::Array(a) => {
            toml::Value::Array(a.into_iter().enumerate().map(|(i, x)| to_toml(x, &format!("{path}[{i}]"), env)).collect::<Result<_, _>>()?)
        }
        K::Table(t) => {
            let mut table = toml::Table::new();
            for (k, x) in t {
                let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                table.insert(k, to_toml(x, &at, env)?);
            }
            toml::Value::Table(table)
        }
    })
}

/// `path` (`bots[1]`) was set by no source: name the variable whose index skipped it.
fn gap_error(path: &str, env: &EnvOverrides) -> ConfigError {
    let (array, index) = path.rsplit_once('[').unwrap_or((path, ""));
    let missing: usize = index.trim_end_matches(']').parse().unwrap_or(0);
    let culprit = env
        .0
        .iter()
        .filter_map(|v| {
            let rest = v.path.strip_prefix(array)?.strip_prefix('[')?;
            let (n, _) = rest.split_once(']')?;
            n.parse::<usize>().ok().filter(|n| *n > missing).map(|n| (n, v))
        })
        .min_by_key(|(n, _)| *n);
    match culprit {
        Some((n, v)) => ConfigError::new(v.name.clone(), format!("array index {n} skips elements; number entries from 0 without gaps")),
        None => ConfigError::new(path, "is missing: number array entries from 0 without gaps"),
    }
}

fn parse_env_value(value: &str) -> toml::Value {
    let v = value.trim();
    let scalar = v == "true" || v == "false" || v.starts_with('[') || v.parse::<i64>().is_ok();
    if scalar
        && let Ok(t) = format!("v = {v}").parse::<toml::Table>()
        && let Some(x) = t.get("v")
    {
        return x.clone();
    }
    toml::Value::String(value.to_owned())
}

/// The commented starter configuration written by `agentgate init`.
pub const STARTER_TOML: &str = include_str!("../starter.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const ONE_BOT: &str = r#"
[[bots]]
app_id = "11111111-1111-1111-1111-111111111111"
allowed_tenants = ["tenant-a"]
"#;

    #[test]
    fn defaults_then_file_then_env() {
        let c = Config::from_sources(
            Some(ONE_BOT),
            "t",
            env(&[
                ("AGENTGATE__SERVER__BIND", "127.0.0.1:9999"),
                ("AGENTGATE__BOTS__0__ALLOWED_TENANTS", "tenant-a, tenant-b"),
                ("AGENTGATE__AUTH__CLOCK_SKEW_SECS", "120"),
                ("OTHER_VAR", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:9999");
        assert_eq!(c.auth.clock_skew_secs, 120);
        assert_eq!(c.auth.key_refresh_secs, 86_400);
        assert_eq!(c.bots[0].allowed_tenants, vec!["tenant-a", "tenant-b"]);
        assert_eq!(c.bots[0].cloud, Cloud::Public);
        assert!(c.bots[0].require_endorsement);
        c.validate(false).unwrap();
    }

    #[test]
    fn agent_user_inbound_needs_an_https_public_url() {
        let load = |public: &str, inbound: bool| {
            let text = format!(
                "[server]\n{public}\n[[bots]]\napp_id = \"app\"\nallowed_tenants = [\"t\"]\n[bots.agent_user]\ntenant_id = \"t\"\n\
                 blueprint_app_id = \"b1b1b1b1-0000-4000-8000-000000000001\"\nagent_identity_id = \"a1a1a1a1-0000-4000-8000-000000000002\"\n\
                 agent_user_id = \"d1d1d1d1-0000-4000-8000-000000000003\"\ncertificate = \"file:/x.crt\"\nkey = \"file:/x.key\"\ninbound = {inbound}\n"
            );
            Config::from_sources(Some(&text), "t", env(&[])).unwrap()
        };
        load("", false).validate(false).unwrap();
        let c = load("public_url = \"https://gateway.example.com/\"", true);
        c.validate(false).unwrap();
        assert_eq!(c.public_endpoint("/api/graph/notifications").unwrap(), "https://gateway.example.com/api/graph/notifications");
        for public in [
            "",
            "public_url = \"http://gateway.example.com\"",
            "public_url = \"gateway.example.com\"",
            "public_url = \"https://g.example?x=1\"",
        ] {
            let e = load(public, true).validate(false).unwrap_err();
            assert_eq!(e.field, "bots[0].agent_user.inbound", "{public}");
            let said = e.to_string();
            assert!(said.contains("webhooks cannot reach this gateway") && said.contains("agentgate mcp --connect"), "{said}");
            assert!(said.contains("never falls back to polling"), "{said}");
        }
    }

    #[test]
    fn files_limits_and_endpoints_are_checked() {
        let load = |files: &str, agent: &str| {
            let text = format!(
                "[files]\n{files}\n[[bots]]\napp_id = \"app\"\nallowed_tenants = [\"t\"]\n[bots.agent_user]\ntenant_id = \"t\"\n\
                 blueprint_app_id = \"b1b1b1b1-0000-4000-8000-000000000001\"\nagent_identity_id = \"a1a1a1a1-0000-4000-8000-000000000002\"\n\
                 agent_user_id = \"d1d1d1d1-0000-4000-8000-000000000003\"\ncertificate = \"file:/x.crt\"\nkey = \"file:/x.key\"\n{agent}\n"
            );
            Config::from_sources(Some(&text), "t", env(&[])).unwrap()
        };
        let c = load("", "");
        c.validate(false).unwrap();
        assert_eq!((c.files.max_download_bytes, c.files.upload_chunk_bytes), (25 * 1024 * 1024, 10 * 1024 * 1024));
        assert!(c.files.send_dirs.is_empty() && c.files.endpoints.is_empty());
        assert!(!c.bots[0].agent_user.as_ref().unwrap().files, "the files area is off by default");
        load("endpoints = [\"http://127.0.0.1:4100/sp\"]\nupload_chunk_bytes = 655360\nsend_dirs = [\"/srv/out\"]", "files = true")
            .validate(false)
            .unwrap();
        for (files, agent, field) in [
            ("upload_chunk_bytes = 1000", "", "files.upload_chunk_bytes"),
            ("upload_chunk_bytes = 62914560", "", "files.upload_chunk_bytes"),
            ("max_download_bytes = 0", "", "files.max_download_bytes"),
            ("max_send_bytes = 300000000", "", "files.max_send_bytes"),
            ("endpoints = [\"http://files.example.com\"]", "", "files.endpoints[0]"),
            ("endpoints = [\"https://x.example.com/a?tempauth=1\"]", "", "files.endpoints[0]"),
            ("send_dirs = [\"relative/dir\"]", "", "files.send_dirs[0]"),
            ("consent_ttl_secs = 5", "", "files.consent_ttl_secs"),
            ("", "files_anonymous_links = true", "bots[0].agent_user.files_anonymous_links"),
        ] {
            let e = load(files, agent).validate(false).unwrap_err();
            assert_eq!(e.field, field, "{files} {agent}: {e}");
        }
    }

    #[test]
    fn agent_user_mail_keys_are_checked_and_need_no_public_url() {
        let load = |mail: &str| {
            let text = format!(
                "[[bots]]\napp_id = \"app\"\nallowed_tenants = [\"t\"]\n[bots.agent_user]\ntenant_id = \"t\"\n\
                 blueprint_app_id = \"b1b1b1b1-0000-4000-8000-000000000001\"\nagent_identity_id = \"a1a1a1a1-0000-4000-8000-000000000002\"\n\
                 agent_user_id = \"d1d1d1d1-0000-4000-8000-000000000003\"\ncertificate = \"file:/x.crt\"\nkey = \"file:/x.key\"\n{mail}\n"
            );
            Config::from_sources(Some(&text), "t", env(&[])).unwrap().validate(false)
        };
        // Mail needs no public URL: without one the Inbox is read every mail_poll_secs.
        load("mail = true").unwrap();
        load("mail = true\nmail_senders_allow = [\"ann@contoso.com\", \"fabrikam.com\", \"@Contoso.COM\"]\nmail_poll_secs = 5").unwrap();
        let cases = [
            ("mail_senders_allow = [\"ann@contoso.com\"]", "bots[0].agent_user.mail_senders_allow", "mail = true"),
            ("mail = true\nmail_senders_allow = [\"ann@\"]", "bots[0].agent_user.mail_senders_allow[0]", "neither"),
            (
                "mail = true\nmail_recipients_allow = [\"x.com\", \"not a domain\"]",
                "bots[0].agent_user.mail_recipients_allow[1]",
                "neither",
            ),
            ("mail = true\nmail_recipients_allow = [\"Ann <ann@contoso.com>\"]", "bots[0].agent_user.mail_recipients_allow[0]", "neither"),
            ("mail = true\nmail_poll_secs = 0", "bots[0].agent_user.mail_poll_secs", "1 to 3600"),
        ];
        for (mail, field, says) in cases {
            let e = load(mail).unwrap_err();
            assert_eq!(e.field, field, "{mail}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn a_postgres_store_url_is_checked_and_its_password_never_shown() {
        let load = |store: &str| {
            let text = format!("[[bots]]\napp_id = \"app\"\nallowed_tenants = [\"t\"]\n[store]\n{store}\n");
            Config::from_sources(Some(&text), "t", env(&[])).unwrap()
        };
        let c = load("url = \"postgres://agentgate:Hunter2Secret@db.internal:5433/gate?sslmode=require\"");
        c.validate(false).unwrap();
        let url = c.store.url.as_ref().unwrap();
        let shown = format!("{:?} {} {:?}", c.store, url.redacted(), url.connection(None).unwrap());
        assert!(!shown.contains("Hunter2Secret"), "{shown}");
        assert!(shown.contains("postgres://agentgate:***@db.internal:5433/gate?sslmode=require"), "{shown}");
        // The password through a secret reference instead; both at once is ambiguous.
        let c = load("url = \"postgres://agentgate@db.internal/gate\"\npassword = \"env:PGPASSWORD\"");
        c.validate(false).unwrap();
        assert_eq!(c.store.url.as_ref().unwrap().connection(Some("pw")).unwrap().get_password(), Some(&b"pw"[..]));
        let c = load("url = \"postgres://agentgate:inline@db.internal/gate\"\npassword = \"env:PGPASSWORD\"");
        assert_eq!(c.validate(false).unwrap_err().field, "store.password");
        // Not a Postgres URL, an unknown option (its value not echoed), a password without a URL.
        for (store, field) in [
            ("url = \"mysql://u@h/db\"", "store.url"),
            ("url = \"postgres://u@h/db?sslmode=Hunter2Secret\"", "store.url"),
            ("password = \"env:PGPASSWORD\"", "store.password"),
            ("url = \"postgres://u@h/db\"\npool_size = 0", "store.pool_size"),
        ] {
            let e = load(store).validate(false).unwrap_err();
            assert_eq!(e.field, field, "{store}: {e}");
            assert!(!format!("{e} {e:?}").contains("Hunter2Secret"), "{e}");
        }
    }

    #[test]
    fn stream_timings_default_and_are_bounded() {
        let load = |outbound: &str| {
            let text = format!("[[bots]]\napp_id = \"app\"\nallowed_tenants = [\"t\"]\n[outbound]\n{outbound}\n");
            Config::from_sources(Some(&text), "t", env(&[])).unwrap()
        };
        let c = load("");
        assert_eq!((c.outbound.stream_update_ms, c.outbound.stream_max_age_ms), (2_000, 110_000));
        c.validate(false).unwrap();
        load("stream_update_ms = 1000\nstream_max_age_ms = 115000").validate(false).unwrap();
        for (outbound, field) in [
            ("stream_update_ms = 999", "outbound.stream_update_ms"),
            ("stream_update_ms = 60001", "outbound.stream_update_ms"),
            ("stream_max_age_ms = 9999", "outbound.stream_max_age_ms"),
            ("stream_max_age_ms = 120000", "outbound.stream_max_age_ms"),
        ] {
            assert_eq!(load(outbound).validate(false).unwrap_err().field, field, "{outbound}");
        }
    }

    #[test]
    fn env_array_indexes_sort_as_numbers() {
        let mut vars = Vec::new();
        for i in 0..12 {
            vars.push((format!("AGENTGATE__BOTS__{i}__APP_ID"), format!("app-{i}")));
            vars.push((format!("AGENTGATE__BOTS__{i}__ALLOWED_TENANTS"), "t".to_owned()));
        }
        let c = Config::from_sources(None, "t", vars).unwrap();
        assert_eq!(c.bots.len(), 12);
        assert_eq!(c.bots[10].app_id, "app-10");
        c.validate(false).unwrap();
    }

    #[test]
    fn env_can_add_a_bot() {
        let c = Config::from_sources(
            None,
            "t",
            env(&[
                ("AGENTGATE__BOTS__0__APP_ID", "abc"),
                ("AGENTGATE__BOTS__0__ALLOWED_TENANTS", "[\"t1\",\"t2\"]"),
                ("AGENTGATE__BOTS__0__CLOUD", "usgov"),
            ]),
        )
        .unwrap();
        assert_eq!(c.bots[0].app_id, "abc");
        assert_eq!(c.bots[0].allowed_tenants, vec!["t1", "t2"]);
        assert_eq!(c.bots[0].cloud, Cloud::Usgov);
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_field() {
        let e = Config::from_sources(Some("[server]\nbnid = \"x\"\n"), "t", env(&[])).unwrap_err();
        assert_eq!(e.field, "server.bnid");
        assert!(e.problem.contains("unknown field"), "{e}");
        let e = Config::from_sources(Some(ONE_BOT), "t", env(&[("AGENTGATE__BOTS__0__CLOUD", "mars")])).unwrap_err();
        assert_eq!(e.field, "bots[0].cloud");
        let e = Config::from_sources(Some(ONE_BOT), "t", env(&[("AGENTGATE__BOTS__0__CREDENTIAL", "hunter2")])).unwrap_err();
        assert_eq!(e.field, "bots[0].credential");
        // A secret pasted where its reference belongs must not be echoed back.
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.problem.contains("not a secret reference"), "{e}");
        let e = Config::from_sources(Some(ONE_BOT), "t", env(&[("AGENTGATE__BOTS__2__APP_ID", "x")])).unwrap_err();
        assert!(e.problem.contains("skips"), "{e}");
        assert_eq!(e.field, "AGENTGATE__BOTS__2__APP_ID");
        let e = Config::from_sources(Some(ONE_BOT), "t", env(&[("AGENTGATE__BOTS__0__CLOUD", "mars")])).unwrap_err();
        assert!(e.problem.contains("`public`, `usgov`, `china`"), "an enum error lists the accepted values: {e}");
        let e = Config::from_sources(Some(ONE_BOT), "t", env(&[("AGENTGATE__CLOUDS__PUBLIC__TOKEN_AUTHORITY", "https://x.example")]))
            .unwrap_err();
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("clouds.public", "missing field `openid_metadata_url`"));
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("", &[], "bots"),
            (ONE_BOT, &[("AGENTGATE__BOTS__0__ALLOWED_TENANTS", "[]")], "bots[0].allowed_tenants"),
            (ONE_BOT, &[("AGENTGATE__BOTS__0__APP_ID", "https://api.botframework.com")], "bots[0].app_id"),
            (ONE_BOT, &[("AGENTGATE__SERVER__BIND", "0.0.0.0:443")], "server.tls"),
            (ONE_BOT, &[("AGENTGATE__SERVER__BIND", "nonsense")], "server.bind"),
            (ONE_BOT, &[("AGENTGATE__SERVER__TLS__CERT_FILE", "/c.pem")], "server.tls.key_file"),
            (
                ONE_BOT,
                &[("AGENTGATE__CLOUDS__PUBLIC__OPENID_METADATA_URL", "http://example.com/meta")],
                "clouds.public.openid_metadata_url",
            ),
            (
                ONE_BOT,
                &[
                    ("AGENTGATE__CLOUDS__PUBLIC__OPENID_METADATA_URL", "https://login.botframework.com/v1/.well-known/openidconfiguration"),
                    (
                        "AGENTGATE__CLOUDS__PUBLIC__CONNECTOR_ENDPOINTS",
                        "[\"http://127.0.0.1:4100/_connector\", \"http://example.com/_connector\"]",
                    ),
                ],
                "clouds.public.connector_endpoints[1]",
            ),
            (
                ONE_BOT,
                &[
                    (
                        "AGENTGATE__CLOUDS__USGOV__OPENID_METADATA_URL",
                        "https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
                    ),
                    ("AGENTGATE__CLOUDS__USGOV__CONNECTOR_ENDPOINTS", "[\"https://c.test/x\", \"https://c.test/y?q=1\"]"),
                ],
                "clouds.usgov.connector_endpoints[1]",
            ),
            (ONE_BOT, &[("AGENTGATE__BOTS__0__ALLOWED_TENANTS", "*")], "bots[0].allowed_tenants"),
            (ONE_BOT, &[("AGENTGATE__LOG__LEVEL", "agentgate=loud")], "log.level"),
        ];
        for (text, vars, field) in cases {
            let c = Config::from_sources(Some(text), "t", env(vars)).unwrap();
            let e = c.validate(false).unwrap_err();
            assert_eq!(&e.field, field, "{e}");
        }
    }

    #[test]
    fn behind_proxy_allows_plain_http_on_any_address_but_dev_never_does() {
        let c = Config::from_sources(
            Some(ONE_BOT),
            "t",
            env(&[("AGENTGATE__SERVER__BIND", "0.0.0.0:8080"), ("AGENTGATE__SERVER__BEHIND_PROXY", "true")]),
        )
        .unwrap();
        c.validate(false).unwrap();
        assert_eq!(c.validate(true).unwrap_err().field, "server.bind");
    }

    #[test]
    fn duplicate_bots_are_refused() {
        let text = format!("{ONE_BOT}{ONE_BOT}");
        let e = Config::from_sources(Some(&text), "t", env(&[])).unwrap().validate(false).unwrap_err();
        assert_eq!(e.field, "bots[1].app_id");
    }

    #[test]
    fn the_starter_and_dev_configs_are_valid() {
        Config::from_sources(Some(STARTER_TOML), "starter", env(&[])).unwrap().validate(false).unwrap();
        Config::from_sources(Some(DEV_DEFAULT_TOML), "dev", env(&[])).unwrap().validate(true).unwrap();
    }

    /// Every secret-reference field: (its path, its environment variable, its line in `SECRETS_BASE`).
    const SECRET_FIELDS: &[(&str, &str, &str)] = &[
        ("bots[0].credential", "AGENTGATE__BOTS__0__CREDENTIAL", "credential = \"env:BOT_KEY\""),
        ("bots[0].certificate", "AGENTGATE__BOTS__0__CERTIFICATE", "certificate = \"file:/etc/agentgate/bot.crt\""),
        ("bots[0].agent_user.certificate", "AGENTGATE__BOTS__0__AGENT_USER__CERTIFICATE", "certificate = \"file:/etc/agentgate/bp.crt\""),
        ("bots[0].agent_user.key", "AGENTGATE__BOTS__0__AGENT_USER__KEY", "key = \"file:/etc/agentgate/bp.key\""),
        ("mcp.tokens[0].token", "AGENTGATE__MCP__TOKENS__0__TOKEN", "token = \"env:MCP_TOKEN\""),
    ];

    const SECRETS_BASE: &str = r#"
[[bots]]
app_id = "11111111-1111-1111-1111-111111111111"
allowed_tenants = ["tenant-a"]
credential = "env:BOT_KEY"
certificate = "file:/etc/agentgate/bot.crt"
[bots.agent_user]
tenant_id = "tenant-a"
blueprint_app_id = "b1b1b1b1-0000-4000-8000-000000000001"
agent_identity_id = "a1a1a1a1-0000-4000-8000-000000000002"
agent_user_id = "d1d1d1d1-0000-4000-8000-000000000003"
certificate = "file:/etc/agentgate/bp.crt"
key = "file:/etc/agentgate/bp.key"
[[mcp.tokens]]
name = "laptop"
token = "env:MCP_TOKEN"
"#;

    fn assert_secret_not_echoed(e: &ConfigError, field: &str, secret: &str, how: &str) {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(secret), "{how}: the value of a secret field is echoed: {text}");
        }
        assert_eq!(e.field, field, "{how}: {e}");
        assert!(e.problem.contains("secret reference") && e.problem.contains("env:VAR_NAME"), "{how}: says what is expected: {e}");
    }

    #[test]
    fn errors_never_echo_a_value_at_a_secret_path() {
        // The base is valid, so any error below comes from the one bad value.
        Config::from_sources(Some(SECRETS_BASE), "t", env(&[])).unwrap().validate(false).unwrap();
        // (value as set in the environment, the part of it that must not appear in the error)
        let from_env: &[(&str, &str)] = &[
            ("8473625190473512", "8473625190473512"),
            ("-8473625190473512", "8473625190473512"),
            ("true", "`true`"),
            ("[\"S3cr3tInAList\"]", "S3cr3tInAList"),
            ("[84736251904735]", "84736251904735"),
            ("S3cr3tPlain", "S3cr3tPlain"),
        ];
        // (TOML literal, the part of it that must not appear in the error)
        let from_toml: &[(&str, &str)] = &[
            ("8473625190473512", "8473625190473512"),
            ("8473.625190473", "8473.625190473"),
            ("false", "`false`"),
            ("1979-05-27T07:32:00Z", "1979-05-27"),
            ("[\"S3cr3tInAList\"]", "S3cr3tInAList"),
            ("{ v = \"S3cr3tInATable\" }", "S3cr3tInATable"),
            ("\"S3cr3tPlain\"", "S3cr3tPlain"),
        ];
        for (field, var, line) in SECRET_FIELDS {
            for (value, secret) in from_env {
                let e = Config::from_sources(Some(SECRETS_BASE), "t", env(&[(var, value)])).unwrap_err();
                assert_secret_not_echoed(&e, field, secret, &format!("{var}={value}"));
            }
            for (literal, secret) in from_toml {
                let (key, _) = line.split_once(" = ").unwrap();
                let text = SECRETS_BASE.replacen(line, &format!("{key} = {literal}"), 1);
                assert_ne!(text, SECRETS_BASE);
                let e = Config::from_sources(Some(&text), "t", env(&[])).unwrap_err();
                assert_secret_not_echoed(&e, field, secret, &format!("{field} = {literal} in TOML"));
            }
        }
    }

    #[test]
    fn env_values_are_typed_as_before() {
        let c = Config::from_sources(
            Some(ONE_BOT),
            "t",
            env(&[
                ("AGENTGATE__SERVER__BEHIND_PROXY", "true"),
                ("AGENTGATE__OUTBOUND__MAX_ATTEMPTS", "-3"),
                ("AGENTGATE__BOTS__0__DISPLAY_NAME", "1.5"),
                ("AGENTGATE__BOTS__0__POLICY__DM_ALLOW", r#"["id-1", "id-2"]"#),
                ("AGENTGATE__MCP__ALLOWED_HOSTS", "a.example, b.example"),
            ]),
        )
        .unwrap();
        assert!(c.server.behind_proxy);
        assert_eq!(c.outbound.max_attempts, -3);
        assert_eq!(c.bots[0].display_name, "1.5", "only integers, booleans and [arrays] are read as TOML");
        assert_eq!(c.bots[0].policy.dm_allow, vec!["id-1", "id-2"]);
        assert_eq!(c.mcp.allowed_hosts, vec!["a.example", "b.example"]);
        assert_eq!(c.bots[0].app_id, "11111111-1111-1111-1111-111111111111", "the rest of the file's entry is kept");
        // No conversion between types: a wrong type is refused, naming the field.
        for (var, value, field) in [
            ("AGENTGATE__SERVER__BEHIND_PROXY", "yes", "server.behind_proxy"),
            ("AGENTGATE__SERVER__BEHIND_PROXY", "1", "server.behind_proxy"),
            ("AGENTGATE__AUTH__CLOCK_SKEW_SECS", "two", "auth.clock_skew_secs"),
            ("AGENTGATE__BOTS__0__APP_ID", "12345", "bots[0].app_id"),
        ] {
            let e = Config::from_sources(Some(ONE_BOT), "t", env(&[(var, value)])).unwrap_err();
            assert_eq!(e.field, field, "{var}={value}: {e}");
            assert!(e.problem.starts_with("invalid type"), "{var}={value}: {e}");
        }
        let e = Config::from_sources(Some("[server]\nbind = 3978\n"), "t", env(&[])).unwrap_err();
        assert_eq!(e.field, "server.bind", "{e}");
    }

    #[test]
    fn env_keys_that_collide_or_skip_far_are_refused() {
        let e = Config::from_sources(
            Some(ONE_BOT),
            "t",
            env(&[("AGENTGATE__SERVER__BIND", "127.0.0.1:1"), ("AGENTGATE__server__Bind", "127.0.0.1:2")]),
        )
        .unwrap_err();
        assert!(e.field.starts_with("AGENTGATE__") && e.problem.contains("set only one"), "{e}");
        let e = Config::from_sources(
            Some(ONE_BOT),
            "t",
            env(&[("AGENTGATE__MCP__ALLOWED_HOSTS", "a"), ("AGENTGATE__MCP__ALLOWED_HOSTS__0", "b")]),
        )
        .unwrap_err();
        assert!(e.problem.contains("`mcp.allowed_hosts`") && e.problem.contains("`mcp.allowed_hosts[0]`"), "{e}");
        let e = Config::from_sources(Some(ONE_BOT), "t", env(&[("AGENTGATE__BOTS__4000000000__APP_ID", "x")])).unwrap_err();
        assert_eq!(e.field, "AGENTGATE__BOTS__4000000000__APP_ID");
        assert!(e.problem.contains("without gaps"), "{e}");
        for bad in ["AGENTGATE__SERVER__", "AGENTGATE__SERVER.BIND", "AGENTGATE__BOTS[0]__APP_ID"] {
            let e = Config::from_sources(Some(ONE_BOT), "t", env(&[(bad, "x")])).unwrap_err();
            assert_eq!(e.field, bad, "{e}");
            assert!(e.problem.contains("AGENTGATE__SERVER__BIND"), "says how keys are written: {e}");
        }
    }

    #[test]
    fn token_tool_lists_are_checked_and_name_the_valid_tools() {
        let token = |lines: &str| format!("{SECRETS_BASE}{lines}\n");
        let c = Config::from_sources(Some(&token("read_only = true")), "t", env(&[])).unwrap();
        c.validate(false).unwrap();
        let p = c.mcp.tokens[0].tool_policy().unwrap();
        assert!(p.is_read_only() && p.allows("read_messages") && !p.allows("reply"));
        let c = Config::from_sources(Some(&token("tools = [\"status\", \"reply\"]\napprove = \"reply\"")), "t", env(&[])).unwrap();
        c.validate(false).unwrap();
        assert!(c.mcp.tokens[0].tool_policy().unwrap().needs_approval("reply"));
        for (lines, field, says) in [
            ("tools = [\"status\", \"sendmessage\"]", "mcp.tokens[0].tools", "`sendmessage` is not a tool; the tools are: status, "),
            ("approve = [\"drop_table\"]", "mcp.tokens[0].approve", "`drop_table` is not a tool"),
            ("approve = [\"read_messages\"]", "mcp.tokens[0].approve", "approval applies to: reply"),
            ("read_only = true\ntools = [\"delete_message\"]", "mcp.tokens[0].tools", "read_only"),
            ("tools = [\"status\"]\napprove = [\"reply\"]", "mcp.tokens[0].approve", "not among the tools"),
        ] {
            let e = Config::from_sources(Some(&token(lines)), "t", env(&[])).unwrap().validate(false).unwrap_err();
            assert_eq!(e.field, field, "{lines}: {e}");
            assert!(e.problem.contains(says), "{lines}: {e}");
        }
        let e = Config::from_sources(Some(&format!("{SECRETS_BASE}[mcp]\nclaim_lease_secs = 0\n")), "t", env(&[]))
            .unwrap()
            .validate(false)
            .unwrap_err();
        assert_eq!(e.field, "mcp.claim_lease_secs", "{e}");
    }

    #[test]
    fn a_toml_syntax_error_names_the_source_but_not_the_line() {
        let e = Config::from_sources(Some("[[bots]]\ncredential = S3cr3tUnquoted\n"), "bot.toml", env(&[])).unwrap_err();
        assert!(e.problem.starts_with("bot.toml is not valid TOML: "), "{e}");
        assert!(!format!("{e} {e:?}").contains("S3cr3tUnquoted"), "{e}");
    }

    #[test]
    fn secret_paths_are_recognised_by_their_key_names() {
        for path in [
            "bots[0].credential",
            "bots[3].certificate",
            "bots[0].agent_user.key",
            "bots[0].agent_user.certificate",
            "mcp.tokens[2].token",
            "mcp.tokens[2].token[0]",
            "store.audit_key",
            "store.postgres_password",
        ] {
            assert!(is_secret_path(path), "{path}");
        }
        for path in [
            "server.tls.key_file",
            "auth.key_refresh_secs",
            "auth.token_cache_entries",
            "clouds.public.token_authority",
            "bots[0].app_id",
            "",
        ] {
            assert!(!is_secret_path(path), "{path}");
        }
    }

    #[test]
    fn a_secret_path_error_of_any_kind_hides_the_value() {
        // `store.audit_key` is covered by its name: an error there keeps its field and hides the value.
        let e = Config::from_sources(Some("[store]\naudit_key = 8473625190473512\n"), "t", env(&[])).unwrap_err();
        assert_eq!(e.field, "store.audit_key");
        assert!(e.problem.contains("not a secret reference"), "{e}");
        assert!(!format!("{e} {e:?}").contains("8473625190473512"), "{e}");
        assert_eq!(
            secret_problem("invalid type: integer `8473625190473512`, expected a string"),
            format!("is an integer, {}", crate::secrets::BadSecretRef)
        );
        for msg in [
            "invalid value: string \"S3cr3t\", expected a reference",
            "some future message quoting `S3cr3t`",
            "invalid type: string \"S3cr3t\", expected x",
        ] {
            let p = secret_problem(msg);
            assert!(!p.contains("S3cr3t") && p.contains("env:VAR_NAME"), "{p}");
        }
    }

    mod proptests {
        //! Properties of configuration loading: no input panics [`Config::from_sources`] (or
        //! [`Config::validate`] after it), and no error, whatever its cause, shows a value found at a secret
        //! path: the generalisation of `errors_never_echo_a_value_at_a_secret_path`.

        use proptest::prelude::*;

        use super::*;

        const SECTIONS: &[&str] = &[
            "[server]",
            "[server.tls]",
            "[auth]",
            "[[bots]]",
            "[bots.policy]",
            "[bots.agent_user]",
            "[mcp]",
            "[[mcp.tokens]]",
            "[store]",
            "[outbound]",
            "[invoke]",
            "[log]",
            "[clouds.public]",
            "[clouds.usgov]",
            "[bots]",
            "[x]",
            "[[server]]",
        ];
        const KEYS: &[&str] = &[
            "app_id",
            "allowed_tenants",
            "credential",
            "certificate",
            "key",
            "token",
            "name",
            "bind",
            "behind_proxy",
            "cloud",
            "require_endorsement",
            "clock_skew_secs",
            "key_refresh_secs",
            "data_dir",
            "sqlite_path",
            "audit_key",
            "dm",
            "dm_allow",
            "allowed_hosts",
            "max_attempts",
            "connector_endpoints",
            "openid_metadata_url",
            "tenant_id",
            "blueprint_app_id",
            "level",
            "format",
            "mode",
            "body_limit_bytes",
            "policy.dm",
            "agent_user.key",
            "unknown_field",
            "bots",
        ];

        fn toml_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|i| i.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                any::<bool>().prop_map(|b| b.to_string()),
                "[a-zA-Z0-9:/._\\- ]{0,16}".prop_map(|s| format!("{s:?}")),
                Just("\"env:BOT_KEY\"".to_owned()),
                Just("\"https://login.botframework.com/v1/.well-known/openidconfiguration\"".to_owned()),
                Just("[\"tenant-a\", \"tenant-b\"]".to_owned()),
                Just("[1, \"two\", [3]]".to_owned()),
                Just("{ v = 1, w = \"x\" }".to_owned()),
                Just("1979-05-27T07:32:00Z".to_owned()),
                Just("inf".to_owned()),
                ".{0,10}",
            ]
        }

        /// TOML-ish text: section headers, `key = value` lines from the real keys and values of every type,
        /// and junk lines.
        fn toml_ish() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                proptest::sample::select(SECTIONS).prop_map(str::to_owned),
                (proptest::sample::select(KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
                ".{0,24}",
            ];
            proptest::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
        }

        fn env_vars() -> impl Strategy<Value = Vec<(String, String)>> {
            let name = prop_oneof![
                proptest::sample::select(vec![
                    "AGENTGATE__SERVER__BIND",
                    "AGENTGATE__BOTS__0__APP_ID",
                    "AGENTGATE__BOTS__0__CREDENTIAL",
                    "AGENTGATE__BOTS__1__CLOUD",
                    "AGENTGATE__MCP__TOKENS__0__TOKEN",
                    "AGENTGATE__AUTH__CLOCK_SKEW_SECS",
                    "AGENTGATE__BOTS__0__ALLOWED_TENANTS",
                    "AGENTGATE__BOTS__0__POLICY__DM",
                    "AGENTGATE__BOTS__12__APP_ID",
                    "AGENTGATE__",
                    "OTHER",
                ])
                .prop_map(str::to_owned),
                "AGENTGATE__[A-Z0-9_]{0,24}",
            ];
            let value = prop_oneof!["[a-zA-Z0-9:,\\-\\[\\]\" ]{0,16}", Just("true".to_owned()), Just("[\"a\", 1]".to_owned()), ".{0,8}"];
            proptest::collection::vec((name, value), 0..4)
        }

        /// A secret-looking value: long enough that it cannot turn up in an error message by chance.
        fn secret() -> impl Strategy<Value = String> {
            "[A-Za-z][A-Za-z0-9]{11,15}"
        }

        fn digits() -> impl Strategy<Value = String> {
            "[1-9][0-9]{11,15}"
        }

        /// (value as set in the environment, the part of it that must not appear in an error).
        fn bad_env_value() -> impl Strategy<Value = (String, String)> {
            prop_oneof![
                secret().prop_map(|s| (s.clone(), s)),
                digits().prop_map(|d| (d.clone(), d)),
                digits().prop_map(|d| (format!("-{d}"), d)),
                secret().prop_map(|s| (format!("[\"{s}\"]"), s)),
                digits().prop_map(|d| (format!("[{d}]"), d)),
                secret().prop_map(|s| (format!("keyring:{s}"), s)),
                secret().prop_map(|s| (format!("env:{s}-x"), s)),
                secret().prop_map(|s| (format!("file:{s}"), s)),
                secret().prop_map(|s| (format!("{s}:"), s)),
                secret().prop_map(|s| (format!("[\"env:A\", \"{s}\"]"), s)),
                proptest::sample::select(vec!["true", "false"]).prop_map(|b| (b.to_owned(), format!("`{b}`"))),
            ]
        }

        /// (TOML literal, the part of it that must not appear in an error).
        fn bad_toml_literal() -> impl Strategy<Value = (String, String)> {
            prop_oneof![
                secret().prop_map(|s| (format!("\"{s}\""), s)),
                secret().prop_map(|s| (format!("'{s}'"), s)),
                secret().prop_map(|s| (format!("\"\"\"{s}\"\"\""), s)),
                digits().prop_map(|d| (d.clone(), d)),
                (digits(), "[0-9]{1,6}").prop_map(|(d, f)| (format!("{d}.{f}"), d)),
                secret().prop_map(|s| (format!("[\"{s}\"]"), s)),
                secret().prop_map(|s| (format!("[[\"{s}\"]]"), s)),
                secret().prop_map(|s| (format!("{{ v = \"{s}\" }}"), s)),
                secret().prop_map(|s| (format!("{{ {s} = 1 }}"), s)),
                secret().prop_map(|s| (format!("\"keyring:{s}\""), s)),
                secret().prop_map(|s| (format!("\"file:{s}\""), s)),
                "[0-9]{4}".prop_map(|y| (format!("{y}-05-27T07:32:00Z"), format!("{y}-05-27"))),
                proptest::sample::select(vec!["true", "false"]).prop_map(|b| (b.to_owned(), format!("`{b}`"))),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn no_toml_ish_text_or_environment_panics_the_loader(text in toml_ish(), vars in env_vars()) {
                if let Ok(c) = Config::from_sources(Some(&text), "t", vars) {
                    let _ = c.validate(false);
                    let _ = c.validate(true);
                }
            }

            #[test]
            fn any_bytes_as_the_file_never_panic_the_loader(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = Config::from_sources(Some(&String::from_utf8_lossy(&bytes)), "t", env(&[]));
            }

            #[test]
            fn no_error_echoes_a_value_set_at_a_secret_path_in_the_environment(
                field in proptest::sample::select(SECRET_FIELDS),
                (value, secret) in bad_env_value(),
            ) {
                let (path, var, _) = field;
                let e = Config::from_sources(Some(SECRETS_BASE), "t", env(&[(var, &value)])).unwrap_err();
                assert_secret_not_echoed(&e, path, &secret, &format!("{var}={value}"));
            }

            #[test]
            fn no_error_echoes_a_value_written_at_a_secret_path_in_the_file(
                field in proptest::sample::select(SECRET_FIELDS),
                (literal, secret) in bad_toml_literal(),
            ) {
                let (path, _, line) = field;
                let (key, _) = line.split_once(" = ").unwrap();
                let text = SECRETS_BASE.replacen(line, &format!("{key} = {literal}"), 1);
                prop_assert_ne!(&text, SECRETS_BASE);
                let e = Config::from_sources(Some(&text), "t", env(&[])).unwrap_err();
                assert_secret_not_echoed(&e, path, &secret, &format!("{path} = {literal} in TOML"));
            }

            #[test]
            fn a_broken_file_never_echoes_a_secret_on_a_secret_line(
                field in proptest::sample::select(SECRET_FIELDS),
                secret in secret(),
                junk in proptest::sample::select(vec!["", "\"", "\"\"\"", "'", "[", "{", "= 1", "\\", "#", "\n="]),
            ) {
                // Unquoted or badly quoted: a TOML syntax error on the secret's own line.
                let (_, _, line) = field;
                let (key, _) = line.split_once(" = ").unwrap();
                let text = SECRETS_BASE.replacen(line, &format!("{key} = {junk}{secret} x"), 1);
                let e = Config::from_sources(Some(&text), "t", env(&[])).unwrap_err();
                for shown in [e.to_string(), format!("{e:?}")] {
                    prop_assert!(!shown.contains(&secret), "{}", shown);
                }
            }
        }
    }
}
