//! `agentgate agent-id provision | status | teardown`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};

use super::ConfigArgs;
use crate::agent_id::api::{Api, Backoff};
use crate::agent_id::signin::{ADMIN_SCOPES, SignIn, loopback_redirect};
use crate::agent_id::{Plan, Provisioner};
use crate::config::Config;
use crate::entra::{Authority, CertificateCredential};
use crate::ids::graph_url::GraphEndpoint;
use crate::secrets::SecretRef;

/// `agentgate agent-id …`
#[derive(Debug, Subcommand)]
pub enum AgentIdCommand {
    /// Create the Agent ID objects behind the bot's Agent User (Blueprint, its principal, certificate,
    /// Agent Identity, Agent User, permission grant, optional licence) and write `[bots.agent_user]`.
    /// Idempotent and resumable: a re-run reuses what exists and continues where a failure stopped.
    Provision(Box<ProvisionArgs>),
    /// Show each object, its id, and any drift (deleted or changed in the tenant).
    Status(Box<CommonArgs>),
    /// Remove what `provision` created, in reverse order.
    Teardown(Box<CommonArgs>),
}

/// Options every `agent-id` command takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The bot (app id); needed only when several bots are configured.
    #[arg(long)]
    pub bot: Option<String>,
    /// The tenant the objects live in (a GUID or a domain). Default: the bot's `agent_user.tenant_id`,
    /// `tenant_id`, or only allowed tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print every request (method, path, body without secrets) and make none.
    #[arg(long)]
    pub dry_run: bool,
    /// The public client app (its id) the administrator signs in through: authorization code with PKCE
    /// on a loopback redirect. Register it as "Mobile and desktop" with redirect http://localhost, and
    /// consent only the explicit Agent ID scopes (never Directory.AccessAsUser.All).
    #[arg(long, value_name = "APP_ID", required_unless_present_any = ["provisioner_app", "dry_run"])]
    pub client_id: Option<String>,
    /// Sign in with a device code instead of the browser (for machines without one; phishable, so only
    /// on request).
    #[arg(long, requires = "client_id")]
    pub device_code: bool,
    /// The loopback redirect (http://127.0.0.1:PORT/; port 0 = a random free port).
    #[arg(long, default_value = "http://127.0.0.1:0/", value_name = "URL")]
    pub redirect_uri: String,
    /// Sign in as a dedicated provisioner app (client credentials with a certificate) instead of an
    /// administrator.
    #[arg(long, value_name = "APP_ID", conflicts_with_all = ["client_id", "device_code"], requires_all = ["provisioner_cert", "provisioner_key"])]
    pub provisioner_app: Option<String>,
    /// The provisioner app's certificate (PEM), as a secret reference (file:/path, env:VAR…).
    #[arg(long, value_name = "SECRET_REF")]
    pub provisioner_cert: Option<String>,
    /// The provisioner app's private key (PEM), as a secret reference.
    #[arg(long, value_name = "SECRET_REF")]
    pub provisioner_key: Option<String>,
    /// The sign-in authority. Default: the bot cloud's `token_authority`, or its public authority.
    #[arg(long, value_name = "URL")]
    pub authority: Option<String>,
    /// The Graph API base. Default: the bot's `agent_user.graph_base_url`, or https://graph.microsoft.com/v1.0.
    #[arg(long, value_name = "URL")]
    pub graph_base_url: Option<String>,
    /// The first wait for the directory's propagation, in milliseconds (doubled up to 30 s, 180 s in all).
    #[arg(long, default_value_t = 5000, hide = true)]
    pub propagation_wait_ms: u64,
}

/// `agentgate agent-id provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The verified domain of the Agent User's UPN. Default: the tenant's default verified domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// The Agent User's mail nickname (the UPN's part before @). Default: agentgate-<first 8 of the bot id>.
    #[arg(long)]
    pub user_name: Option<String>,
    /// The Agent User's display name. Default: the bot's display_name.
    #[arg(long)]
    pub display_name: Option<String>,
    /// The sponsor (a user's object id) of the Blueprint and Agent Identity. Default: the signed-in administrator.
    #[arg(long, value_name = "OBJECT_ID")]
    pub sponsor: Option<String>,
    /// A further delegated Graph scope for the Agent User (repeat the flag), besides those agentgate needs.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Assign this licence (its skuId, from GET /subscribedSkus) to the Agent User; Teams needs one.
    #[arg(long, value_name = "SKU_ID")]
    pub licence_sku: Option<String>,
    /// The Agent User's usage location, set before the licence.
    #[arg(long, default_value = "US", requires = "licence_sku")]
    pub usage_location: String,
    /// Where the Blueprint's generated private key goes (a file: reference; written mode 0600). Default:
    /// file:<config dir>/agent-user-<bot>.key.pem.
    #[arg(long, value_name = "SECRET_REF")]
    pub key: Option<String>,
    /// Where the Blueprint's certificate goes (a file: reference). Default: next to the key, .cert.pem.
    #[arg(long, value_name = "SECRET_REF")]
    pub certificate: Option<String>,
}

/// Run an `agent-id` command.
pub(super) fn run(cmd: AgentIdCommand) -> anyhow::Result<ExitCode> {
    let (action, common, extra) = match cmd {
        AgentIdCommand::Provision(a) => {
            let a = *a;
            let extra = Extra {
                domain: a.domain,
                user_name: a.user_name,
                display_name: a.display_name,
                sponsor: a.sponsor,
                scopes: a.scopes,
                licence: a.licence_sku.map(|s| (s, a.usage_location)),
                key: a.key,
                certificate: a.certificate,
            };
            (Action::Provision, a.common, extra)
        }
        AgentIdCommand::Status(a) => (Action::Status, *a, Extra::default()),
        AgentIdCommand::Teardown(a) => (Action::Teardown, *a, Extra::default()),
    };
    let cfg_path = common.config.path();
    let cfg = common.config.load(false)?;
    let (index, bot) = super::one_bot(&cfg, common.bot.as_deref())?;
    let tenant = common
        .tenant
        .clone()
        .or_else(|| bot.agent_user.as_ref().map(|a| a.tenant_id.clone()))
        .or_else(|| bot.tenant_id.clone())
        .or_else(|| (bot.allowed_tenants.len() == 1).then(|| bot.allowed_tenants[0].to_string()))
        .ok_or_else(|| anyhow!("which tenant? pass --tenant (bots[{index}] serves several)"))?;
    let graph_base = common.graph_base_url.clone().or_else(|| bot.agent_user.as_ref().and_then(|a| a.graph_base_url.clone()));
    let endpoint = match &graph_base {
        Some(b) => GraphEndpoint::parse(b).map_err(|e| anyhow!("the Graph base URL: {e}"))?,
        None => GraphEndpoint::global(),
    };
    let app = bot.app_id.to_string();
    let short: String = app.chars().take(8).collect();
    let dir = cfg_path
        .as_ref()
        .and_then(|p| p.parent().map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() }))
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let key: SecretRef = match &extra.key {
        Some(k) => k.parse().map_err(|e| anyhow!("--key: {e}"))?,
        None => SecretRef::File(dir.join(format!("agent-user-{short}.key.pem"))),
    };
    let certificate: SecretRef = match (&extra.certificate, &key) {
        (Some(c), _) => c.parse().map_err(|e| anyhow!("--certificate: {e}"))?,
        (None, SecretRef::File(k)) => {
            SecretRef::File(PathBuf::from(k.display().to_string().trim_end_matches(".key.pem").to_owned() + ".cert.pem"))
        }
        (None, _) => bail!("--certificate is needed when --key is not a file: reference"),
    };
    let mut scopes = crate::agent_id::scopes_for(bot.agent_user.as_ref());
    for s in &extra.scopes {
        if !scopes.iter().any(|h| h.eq_ignore_ascii_case(s)) {
            scopes.push(s.clone());
        }
    }
    let plan = Plan {
        bot_app_id: app.clone(),
        tenant: tenant.clone(),
        blueprint_name: format!("agentgate {} Blueprint", bot.display_name),
        unique_name: format!("agentgate-{}", app.to_ascii_lowercase()),
        identity_name: format!("agentgate {} Agent Identity", bot.display_name),
        user_display_name: extra.display_name.clone().unwrap_or_else(|| bot.display_name.clone()),
        mail_nickname: extra.user_name.clone().unwrap_or_else(|| format!("agentgate-{short}")),
        domain: extra.domain.clone(),
        sponsor: extra.sponsor.clone(),
        scopes,
        licence: extra.licence.clone(),
        certificate,
        key,
        config_path: cfg_path.clone(),
    };
    let authority = match common.authority.as_deref().or(cfg.clouds.get(bot.cloud).token_authority.as_deref()) {
        Some(a) => Authority::parse(a).map_err(|e| anyhow!("the authority: {e}"))?,
        None => Authority::for_cloud(bot.cloud),
    };
    let resource = {
        let u = url::Url::parse(endpoint.base()).context("the Graph base URL")?;
        u.origin().ascii_serialization()
    };
    let resource = if resource.starts_with("http://") { "https://graph.microsoft.com".to_owned() } else { resource };
    super::runtime()?.block_on(async move {
        let store = open_store(&cfg, common.dry_run).await?;
        let api = if common.dry_run {
            Api::dry_run(endpoint)
        } else {
            let sign_in = SignIn {
                authority,
                tenant: tenant.clone(),
                client_id: common.client_id.clone().or_else(|| common.provisioner_app.clone()).unwrap_or_default(),
                scopes: ADMIN_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                resource,
            };
            let token = if let Some(_app) = &common.provisioner_app {
                let cert: SecretRef =
                    common.provisioner_cert.as_deref().unwrap_or("").parse().map_err(|e| anyhow!("--provisioner-cert: {e}"))?;
                let key: SecretRef =
                    common.provisioner_key.as_deref().unwrap_or("").parse().map_err(|e| anyhow!("--provisioner-key: {e}"))?;
                let cert_pem = cert.load_public().await?;
                let key_pem = key.load().await?;
                use secrecy::ExposeSecret as _;
                let cred = CertificateCredential::from_pem(key_pem.expose_secret().as_bytes(), cert_pem.expose_secret().as_bytes(), false)?;
                sign_in.provisioner_app(cred).await?
            } else if common.device_code {
                sign_in.device_code().await?
            } else {
                let redirect = loopback_redirect(&common.redirect_uri)?;
                sign_in
                    .auth_code(&redirect, |url| {
                        eprintln!("Sign in as a tenant administrator: open this URL in a browser on this machine:\n{url}");
                    })
                    .await?
            };
            eprintln!("signed in (the token is held in memory only)");
            let backoff = Backoff { first: Duration::from_millis(common.propagation_wait_ms), ..Backoff::default() };
            Api::live(endpoint, token, backoff)?
        };
        let p = Provisioner { api, store: store.as_deref(), plan };
        let ok = match action {
            Action::Provision => p.provision().await,
            Action::Status => p.status().await,
            Action::Teardown => p.teardown().await,
        };
        if let Some(s) = &store {
            s.close().await;
        }
        Ok(if ok? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Provision,
    Status,
    Teardown,
}

/// The `provision`-only options.
#[derive(Debug, Clone, Default)]
struct Extra {
    domain: Option<String>,
    user_name: Option<String>,
    display_name: Option<String>,
    sponsor: Option<String>,
    scopes: Vec<String>,
    licence: Option<(String, String)>,
    key: Option<String>,
    certificate: Option<String>,
}

/// The store (created when missing), or none in a dry run when no SQLite store exists yet.
async fn open_store(cfg: &Config, dry_run: bool) -> anyhow::Result<Option<std::sync::Arc<dyn crate::store::Store>>> {
    if dry_run && cfg.store.url.is_none() && !cfg.sqlite_path().exists() {
        return Ok(None);
    }
    if cfg.store.url.is_none()
        && let Some(parent) = cfg.sqlite_path().parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(Some(crate::store::open(cfg, Default::default(), 1).await?))
}
