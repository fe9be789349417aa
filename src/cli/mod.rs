//! The command line: `serve`, `init`, `check`, `inbox`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEV_DEFAULT_TOML, STARTER_TOML};
use crate::server::{Gateway, ServeOptions, shutdown_signal};
use crate::store::Store;

mod agent_id;
mod send;

pub use agent_id::{AgentIdCommand, CommonArgs as AgentIdArgs, ProvisionArgs};

/// `println!` that ends the process quietly when stdout is closed (`agentgate check | head`) instead of
/// panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// agentgate: a Microsoft Teams seat for your LLM agent.
#[derive(Debug, Parser)]
#[command(name = "agentgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: POST /api/messages, /healthz, /readyz, /metrics.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Developer mode: loopback only; also accepts the unauthenticated requests of the Microsoft 365
        /// Agents Playground (serviceUrl http://localhost:PORT/_connector). Without a config file it
        /// serves the Playground's default bot and tenant.
        #[arg(long)]
        dev: bool,
        /// Listen here instead of `server.bind`.
        #[arg(long, value_name = "ADDR:PORT")]
        bind: Option<String>,
    },
    /// Speak MCP on stdio for a host that launches agentgate (Claude Code, Copilot CLI, VS Code): runs
    /// the gateway in-process; with --connect, bridges to a running gateway's /mcp instead. Logs go to
    /// stderr; stdout carries only the protocol.
    Mcp(Box<McpArgs>),
    /// Write a commented starter configuration.
    Init {
        /// Where to write it.
        #[arg(long, short, default_value = "agentgate.toml")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Load and validate the configuration, then print a summary (no secrets).
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Validate as `serve --dev` would.
        #[arg(long)]
        dev: bool,
    },
    /// Check the deployment: configuration, TLS files, OpenID metadata and keys, each bot's credential and
    /// token, its Teams app package and tenants. A ✓/✗ list; exit status 1 when any check fails.
    Doctor {
        #[command(flatten)]
        config: ConfigArgs,
        /// Check as `serve --dev` would (a bot without credential uses the Playground placeholder).
        #[arg(long)]
        dev: bool,
        /// The public host of the messaging endpoint, for the Teams app package check (as `teams-app package`).
        #[arg(long, value_name = "HOST")]
        domain: Option<String>,
    },
    /// Queue a message (or an update or delete) for delivery by the running gateway.
    Send(Box<SendArgs>),
    /// List a conversation's members (paged through the Connector), one JSON object per line.
    Members {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        conversation: String,
        /// The bot; needed only when several bots have seen the conversation.
        #[arg(long)]
        bot: Option<String>,
        /// As `serve --dev` (the Playground's connector; a bot without credential uses the placeholder).
        #[arg(long)]
        dev: bool,
    },
    /// List outbox entries (what was sent or is queued), one JSON object per line.
    Outbox {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this entry.
        #[arg(long)]
        id: Option<i64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show the newest audit events, or check the hash chain with `agentgate audit verify` (or `--verify`).
    Audit {
        /// `verify`: check the hash chain (same as --verify).
        #[arg(value_parser = ["verify"])]
        action: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
        /// Check every event's hash chain link; exit non-zero if one is broken. Prints the chain's head.
        #[arg(long)]
        verify: bool,
        /// With --verify: a head printed earlier (COUNT/LAST_ID/HASH) that must still be part of the chain.
        #[arg(long, value_name = "HEAD")]
        expect_head: Option<crate::store::AuditHead>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Create the store or bring its schema up to this release (SQLite file or `store.url` Postgres), then
    /// print the schema version. `serve` does the same at start; run this first to migrate before a rollout.
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List inbox entries not yet acknowledged, one JSON object per line.
    Inbox {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this bot's entries (app id).
        #[arg(long)]
        bot: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The Teams app: per-tenant app packages and admin-consent links.
    #[command(subcommand)]
    TeamsApp(TeamsAppCommand),
    /// The Entra Agent ID objects behind a bot's Agent User: `provision` creates them in one run
    /// (idempotent, resumable), `status` shows them and any drift, `teardown` removes them.
    #[command(subcommand)]
    AgentId(AgentIdCommand),
    /// Get a fresh token and print its claims: `graph` / `agentic` as the bot's Agent User (three hops),
    /// `bot` as the bot. The token itself is printed only with --show-token.
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(value_enum)]
        kind: crate::entra::inspect::TokenKind,
        /// The bot (app id); needed only when several bots are configured.
        #[arg(long)]
        bot: Option<String>,
        /// Also print the token (a credential: keep it out of logs and tickets).
        #[arg(long)]
        show_token: bool,
    },
}

/// `agentgate teams-app …`
#[derive(Debug, Subcommand)]
pub enum TeamsAppCommand {
    /// Render the manifest for a configured bot, add the icons and write `<out-dir>/<tenant>.zip`.
    Package(Box<PackageArgs>),
    /// Print the admin-consent link a tenant's administrator opens to grant the bot's app access.
    ConsentUrl {
        #[command(flatten)]
        config: ConfigArgs,
        /// The customer tenant: its id (a GUID) or domain (contoso.onmicrosoft.com).
        #[arg(long)]
        tenant: String,
        /// The bot (app id); default: every configured bot, one link per line.
        #[arg(long)]
        bot: Option<String>,
    },
}

/// What `agentgate teams-app package` does.
#[derive(Debug, Args)]
pub struct PackageArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The tenant this package is for (its id or a short name); the zip is named after it.
    #[arg(long)]
    pub tenant: String,
    /// The bot (app id); needed only when several bots are configured.
    #[arg(long)]
    pub bot: Option<String>,
    /// The public host of the messaging endpoint (e.g. bot.contoso.com), listed in validDomains.
    #[arg(long, value_name = "HOST")]
    pub domain: Option<String>,
    /// The app version (MAJOR.MINOR.PATCH); bump it for every re-upload.
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    /// The app's short name (at most 30 characters). Default: the bot's display_name.
    #[arg(long)]
    pub name: Option<String>,
    /// At most 80 characters.
    #[arg(long, default_value = crate::teams_app::DEFAULT_SHORT_DESCRIPTION)]
    pub short_description: String,
    /// At most 4000 characters.
    #[arg(long, default_value = crate::teams_app::DEFAULT_FULL_DESCRIPTION)]
    pub full_description: String,
    /// The publisher's name (at most 32 characters).
    #[arg(long, default_value = "agentgate")]
    pub developer: String,
    /// The publisher's https website. Default: https://<domain>/.
    #[arg(long)]
    pub website: Option<String>,
    /// Default: the website.
    #[arg(long)]
    pub privacy_url: Option<String>,
    /// Default: the website.
    #[arg(long)]
    pub terms_url: Option<String>,
    /// The icon background and accent color.
    #[arg(long, default_value = "#4F6BED")]
    pub accent_color: String,
    /// Where the zip goes.
    #[arg(long, default_value = "teams-app/build")]
    pub out_dir: PathBuf,
}

/// What `agentgate send` does.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The bot (app id); needed only when several bots are configured.
    #[arg(long)]
    pub bot: Option<String>,
    /// A conversation the bot has seen (its reference gives the service URL and tenant).
    #[arg(long, conflicts_with = "user", required_unless_present = "user")]
    pub conversation: Option<String>,
    /// Proactive: open (or reuse) a 1:1 chat with this user id (`29:…`) and send there.
    #[arg(long, requires = "tenant")]
    pub user: Option<String>,
    /// The user's tenant, with --user.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Reply to this activity (threads the reply in channels).
    #[arg(long, conflicts_with_all = ["update", "delete"])]
    pub reply_to: Option<String>,
    /// Quote this message above the text (a message id from an event or a send): Teams shows its author
    /// and text in a quote bubble.
    #[arg(long, value_name = "MESSAGE_ID", conflicts_with_all = ["update", "delete", "typing", "stream", "user"])]
    pub quote: Option<String>,
    /// Send into this channel thread: the message id of the thread's first post (digits), e.g. a late
    /// answer next to its question. Channels only.
    #[arg(long, value_name = "ROOT_MESSAGE_ID", conflicts_with_all = ["update", "delete", "typing", "user"])]
    pub thread: Option<String>,
    /// Replace the activity with this id instead of sending a new one.
    #[arg(long, conflicts_with = "delete")]
    pub update: Option<String>,
    /// Delete the activity with this id.
    #[arg(long)]
    pub delete: Option<String>,
    /// The message text.
    #[arg(long, required_unless_present_any = ["card", "delete", "typing", "stream", "text_file"])]
    pub text: Option<String>,
    /// The message text, from a file (for long text).
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    pub text_file: Option<PathBuf>,
    /// Stream the reply: read the text from standard input and post it as Teams streaming (1:1 chats;
    /// elsewhere one message at the end), a few words at a time.
    #[arg(long, conflicts_with_all = ["text", "card", "update", "delete", "reply_to", "user", "typing"])]
    pub stream: bool,
    /// With --stream: pause between chunks (simulates generation).
    #[arg(long, default_value_t = 200, requires = "stream")]
    pub stream_interval_ms: u64,
    /// Send a typing indicator (1:1 and group chats only; at most one per 3 s per conversation).
    #[arg(long, conflicts_with_all = ["text", "card", "update", "delete", "reply_to", "user"])]
    pub typing: bool,
    /// An Adaptive Card (a JSON file) to send as the message's attachment.
    #[arg(long, value_name = "FILE")]
    pub card: Option<PathBuf>,
    /// Show Teams' "AI generated" label on the message.
    #[arg(long, conflicts_with_all = ["update", "delete", "typing", "stream", "user"])]
    pub ai_generated: bool,
    /// A source the text cites as `[N]`: a JSON object `{"position":N,"name":…,"abstract":…,"url":…,
    /// "icon":…,"keywords":[…]}` (repeat the flag; at most 20; the text must fit in one Teams message).
    #[arg(long, value_name = "JSON", conflicts_with_all = ["update", "delete", "typing", "stream", "user", "card"])]
    pub citation: Vec<String>,
}

/// What `agentgate mcp` does.
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// As `serve --dev` (loopback only; the Playground's unauthenticated traffic is accepted).
    #[arg(long)]
    pub dev: bool,
    /// Listen for Teams here instead of `server.bind`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// Only these bots (app ids; repeat the flag). Default: every configured bot.
    #[arg(long = "bot", value_name = "APP_ID")]
    pub bots: Vec<String>,
    /// Only these tenants (repeat the flag). Default: every tenant the bots serve.
    #[arg(long = "tenant", value_name = "TENANT_ID")]
    pub tenants: Vec<String>,
    /// Only the tools that read: no sending, editing, reacting, acknowledging or claiming.
    #[arg(long)]
    pub read_only: bool,
    /// Only these tools (repeat the flag). Default: every tool.
    #[arg(long = "tool", value_name = "NAME")]
    pub tools: Vec<String>,
    /// Each call of this tool waits for an owner's approval in Teams (repeat the flag).
    #[arg(long = "approve", value_name = "NAME")]
    pub approve: Vec<String>,
    /// Bridge stdio to a running gateway's Streamable HTTP endpoint (e.g. http://127.0.0.1:3979/mcp)
    /// instead of running a gateway in this process (the token's settings then decide the tools).
    #[arg(long, value_name = "URL", conflicts_with_all = ["dev", "bind", "bots", "tenants", "read_only", "tools", "approve"])]
    pub connect: Option<String>,
    /// With --connect: where the bearer token lives (env:VAR, file:/path, credential:NAME, keyring:service/user).
    #[arg(long, value_name = "SECRET_REF", default_value = "env:AGENTGATE_MCP_TOKEN", requires = "connect")]
    pub token: String,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The TOML configuration file. Default: ./agentgate.toml when it exists.
    #[arg(long, short, env = "AGENTGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    fn path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| Path::new("agentgate.toml").exists().then(|| PathBuf::from("agentgate.toml")))
    }

    /// Load the configuration; with `dev` and no file, the built-in Playground bot.
    fn load(&self, dev: bool) -> Result<Config, crate::config::ConfigError> {
        match self.path() {
            Some(p) => Config::load(Some(&p)),
            None if dev => Config::from_sources(Some(DEV_DEFAULT_TOML), "the built-in dev configuration", std::env::vars()),
            None => Config::load(None),
        }
    }
}

/// A configuration enum as the word written in the file.
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn mcp(a: McpArgs) -> anyhow::Result<ExitCode> {
    if let Some(url) = a.connect {
        crate::telemetry::init(crate::config::LogFormat::Text, "info");
        let reference: crate::secrets::SecretRef = a.token.parse().map_err(|e| anyhow::anyhow!("--token: {e}"))?;
        runtime()?.block_on(async move {
            let token = reference.load().await.map_err(|e| anyhow::anyhow!("--token {reference}: {e}"))?;
            crate::mcp::connect::run(&url, token).await
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = a.config.load(a.dev)?;
    if let Some(b) = a.bind {
        cfg.server.bind = b;
    }
    for b in &a.bots {
        one_bot(&cfg, Some(b)).map_err(|e| anyhow::anyhow!("--bot {b}: {e}"))?;
    }
    for t in &a.tenants {
        if !cfg.bots.iter().any(|c| c.allowed_tenants.iter().any(|a| a.matches(t))) {
            anyhow::bail!("--tenant {t}: no configured bot serves that tenant (bots[].allowed_tenants)");
        }
    }
    let tools = crate::config::mcp_tools::ToolPolicy::new(a.read_only, &a.tools, &a.approve).map_err(|e| match e.field {
        crate::config::mcp_tools::PolicyField::Tools => anyhow::anyhow!("--tool: {}", e.problem),
        crate::config::mcp_tools::PolicyField::Approve => anyhow::anyhow!("--approve: {}", e.problem),
    })?;
    // Logs to stderr only: stdout is the protocol.
    crate::telemetry::init(cfg.log.format, &cfg.log.level);
    let scope =
        crate::mcp::Scope::new(if a.bots.is_empty() && a.tenants.is_empty() { "stdio" } else { "stdio-scoped" }, &a.bots, &a.tenants)
            .with_tools(tools);
    runtime()?.block_on(async move {
        let gw = Gateway::start(cfg, ServeOptions { dev: a.dev }).await?;
        // On stderr: stdout is the protocol.
        eprintln!("agentgate listening on {} (MCP on stdio)", gw.url());
        let bridge = crate::mcp::Bridge::stdio(gw.hub(), scope);
        let claims = bridge.claim_release();
        let service = rmcp::ServiceExt::serve(bridge, rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow::anyhow!("the MCP host did not complete the handshake: {e}"))?;
        // Until the host closes stdin (or a signal), then the gateway shuts down cleanly; the session's
        // claims are released before the store closes.
        gw.run_until(async move {
            tokio::select! {
                _ = service.waiting() => tracing::info!("the MCP host closed the session"),
                () = shutdown_signal() => {}
            }
            claims.release().await;
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Run `f` against the configured store (which must exist), closing it afterwards.
fn with_store<T>(config: &ConfigArgs, dev: bool, f: impl AsyncFnOnce(&Config, &dyn Store) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let cfg = config.load(dev)?;
    if cfg.store.url.is_none() {
        existing_store(&cfg)?;
    }
    runtime()?.block_on(async {
        let store = crate::store::open(&cfg, Default::default(), 1).await?;
        let result = f(&cfg, store.as_ref()).await;
        store.close().await;
        result
    })
}

/// Run `f` with a [`crate::bridge::Hub`] over the configured store (which must exist), closing it afterwards.
fn with_hub<T>(
    config: &ConfigArgs,
    dev: bool,
    acting: send::Acting,
    f: impl AsyncFnOnce(&crate::bridge::Hub) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let cfg = config.load(dev)?;
    if cfg.store.url.is_none() {
        existing_store(&cfg)?;
    }
    runtime()?.block_on(async {
        let store = crate::store::open(&cfg, Default::default(), 1).await?;
        let result = match send::command_hub(cfg, std::sync::Arc::clone(&store), acting).await {
            Ok(hub) => f(&hub).await,
            Err(e) => Err(e),
        };
        store.close().await;
        result
    })
}

/// One JSON object per line on stdout.
fn print_lines<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for item in items {
        writeln!(out, "{}", serde_json::to_string(&item)?)?;
    }
    Ok(())
}

/// The store file, which must exist (commands other than `serve` never create one).
fn existing_store(cfg: &Config) -> anyhow::Result<PathBuf> {
    let path = cfg.sqlite_path();
    if !path.exists() {
        anyhow::bail!("no store at {}: has `agentgate serve` run with this configuration (data_dir, store.sqlite_path)?", path.display());
    }
    Ok(path)
}

/// The configured bots `--bot` selects (all of them without it), with their index in `bots`.
fn select_bots<'a>(cfg: &'a Config, bot: Option<&str>) -> anyhow::Result<Vec<(usize, &'a crate::config::BotConfig)>> {
    let scope = crate::bridge::Scope::command_line();
    let picked: Vec<_> = crate::bridge::route::bots_in(&cfg.bots, &scope, bot).collect();
    if picked.is_empty() {
        // The resolver's own words for no bot, or an unknown one.
        crate::bridge::route::one_bot(&cfg.bots, &scope, bot)?;
    }
    Ok(picked)
}

/// The one bot `--bot` names, or the only one configured, with its index in `bots`.
fn one_bot<'a>(cfg: &'a Config, bot: Option<&str>) -> anyhow::Result<(usize, &'a crate::config::BotConfig)> {
    Ok(crate::bridge::route::one_bot(&cfg.bots, &crate::bridge::Scope::command_line(), bot)?)
}

fn teams_app(cmd: TeamsAppCommand) -> anyhow::Result<ExitCode> {
    use crate::teams_app::{AppInfo, consent_url, write_package};
    match cmd {
        TeamsAppCommand::Package(a) => {
            let cfg = a.config.load(false)?;
            cfg.validate(false)?;
            let (index, bot) = one_bot(&cfg, a.bot.as_deref())?;
            if crate::ids::is_guid(&a.tenant) && !bot.allowed_tenants.iter().any(|t| t.matches(&a.tenant)) {
                anyhow::bail!(
                    "`bots[{index}].allowed_tenants` does not list {}: the bot would refuse that tenant's traffic; add it to the config first",
                    a.tenant
                );
            }
            let info = AppInfo {
                name: a.name,
                short_description: a.short_description,
                full_description: a.full_description,
                developer: a.developer,
                website: a.website,
                privacy_url: a.privacy_url,
                terms_url: a.terms_url,
                version: a.version,
                domain: a.domain,
                accent_color: a.accent_color,
            };
            let (path, pkg) = write_package(bot, index, &info, &a.tenant, &a.out_dir)?;
            say!("wrote {}", path.display());
            for (name, data) in &pkg.files {
                say!("  {name} ({} bytes)", data.len());
            }
            say!("upload it in Teams: Apps > Manage your apps > Upload an app (or the Teams admin center for the whole tenant)");
            Ok(ExitCode::SUCCESS)
        }
        TeamsAppCommand::ConsentUrl { config, tenant, bot } => {
            let cfg = config.load(false)?;
            for (index, b) in select_bots(&cfg, bot.as_deref())? {
                let url = consent_url(b.cloud, &tenant, &b.app_id).map_err(|e| {
                    if e.field == "--bot" {
                        anyhow::anyhow!("configuration error in `bots[{index}].app_id`: {}", e.problem)
                    } else {
                        e.into()
                    }
                })?;
                say!("{url}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `init`: the starter at `output`. Without `force` the file is created new (`O_EXCL`: an existing file or
/// any symlink, even a dangling one, is refused); with `force` it replaces `output` by an atomic rename
/// (a symlink there is replaced, never written through).
fn write_starter(output: &Path, force: bool) -> anyhow::Result<()> {
    if !force {
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(output) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                anyhow::bail!("{} already exists; pass --force to overwrite it", output.display())
            }
            Err(e) => return Err(e).with_context(|| format!("writing {}", output.display())),
        };
        return file.write_all(STARTER_TOML.as_bytes()).with_context(|| format!("writing {}", output.display()));
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing in {}", dir.display()))?;
    tmp.write_all(STARTER_TOML.as_bytes()).with_context(|| format!("writing {}", output.display()))?;
    tmp.persist(output).map_err(|e| e.error).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, dev, bind } => {
            let mut cfg = config.load(dev)?;
            if let Some(b) = bind {
                cfg.server.bind = b;
            }
            crate::telemetry::init(cfg.log.format, &cfg.log.level);
            runtime()?.block_on(async move {
                let gw = Gateway::start(cfg, ServeOptions { dev }).await?;
                let mode = if dev { " (dev mode: Playground traffic accepted)" } else { "" };
                say!("agentgate listening on {}{mode}", gw.url());
                let _ = std::io::stdout().flush();
                tracing::info!(url = %gw.url(), dev, "listening");
                gw.run_until(shutdown_signal()).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mcp(a) => mcp(*a),
        Command::Init { output, force } => {
            write_starter(&output, force)?;
            say!("wrote {}: set your bot's app id and tenants, then run `agentgate check --config {}`", output.display(), output.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, dev } => {
            let cfg = config.load(dev)?;
            cfg.validate(dev)?;
            say!("configuration OK");
            say!("  listen: {}{}", cfg.server.bind, if cfg.server.tls.cert_file.is_some() { " (TLS)" } else { " (plain HTTP)" });
            say!("  store:  {}", crate::store::describe(&cfg));
            for b in &cfg.bots {
                let cred = b.credential.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string);
                say!(
                    "  bot {} ({}), cloud {}, tenants {}, credential {cred}",
                    b.app_id,
                    b.display_name,
                    b.cloud,
                    b.allowed_tenants.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                );
                let p = &b.policy;
                say!(
                    "    reaches the agent: DMs {}{}, groups and channels {}; approvers {}",
                    word(&p.dm),
                    if p.dm == crate::bridge::policy::DmPolicy::Allowlist { format!(" ({} ids)", p.dm_allow.len()) } else { String::new() },
                    word(&p.groups),
                    p.approvers.len()
                );
                if let Some(au) = &b.agent_user {
                    say!(
                        "    agent user: {} in tenant {} (blueprint {}, mode {}); agentic activities {}",
                        au.user().as_str(),
                        au.tenant_id,
                        au.blueprint_app_id,
                        if au.mode == crate::entra::AgentMode::Fallback { "fallback" } else { "bot_only" },
                        if b.agentic.enabled { "accepted" } else { "off" }
                    );
                    if au.mail {
                        let how = match cfg.inbound_url_problem() {
                            None => "change notifications".to_owned(),
                            Some(_) => format!("a read every {} s (no https server.public_url)", au.mail_poll_secs),
                        };
                        let senders = if au.mail_senders_allow.is_empty() {
                            "its sponsors and policy.contacts_allow".to_owned()
                        } else {
                            au.mail_senders_allow.join(", ")
                        };
                        say!("    mail: on, through {how}; senders reaching the agent: {senders}");
                    }
                }
                if p.dm == crate::bridge::policy::DmPolicy::Allowlist && p.dm_allow.is_empty() {
                    say!(
                        "    note: policy.dm_allow is empty, so no 1:1 chat reaches the agent; a refused sender's AAD object id is logged, add it there"
                    );
                }
            }
            match cfg.mcp.tokens.len() {
                0 => say!("  mcp:    stdio only (`agentgate mcp`); /mcp is off (no mcp.tokens)"),
                n => say!(
                    "  mcp:    /mcp on {} with {n} token(s): {}",
                    cfg.mcp.bind,
                    cfg.mcp.tokens.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => {
            let id = with_hub(&args.config, false, send::Acting::QueueOnly, async |hub| send::queue_from_cli(hub, &args).await)?;
            say!("queued as outbox #{id}; follow it with `agentgate outbox --id {id}`");
            Ok(ExitCode::SUCCESS)
        }
        Command::Members { config, conversation, bot, dev } => {
            let members =
                with_hub(&config, dev, send::Acting::Live { dev }, async |hub| send::members(hub, &conversation, bot.as_deref()).await)?;
            print_lines(members)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox { config, id, limit } => {
            print_lines(with_store(&config, false, async |_, store| Ok(store.outbox(id, limit).await?))?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { config, verify, action, expect_head, .. } if verify || action.is_some() || expect_head.is_some() => {
            match with_store(&config, false, async |_, store| Ok(store.verify_audit(expect_head.as_ref()).await?))? {
                Ok(v) => {
                    say!("audit chain intact: {} events", v.head.count);
                    if let Some(id) = v.legacy_through {
                        say!("  events up to #{id} use the first release's hash rule (before the migration)");
                    }
                    if let Some(id) = v.signed_from {
                        say!("  signed with store.audit_key from event #{id}");
                    }
                    if let Some(h) = &expect_head {
                        say!("  the expected head {h} is part of it");
                    }
                    say!("audit head: {}", v.head);
                    Ok(ExitCode::SUCCESS)
                }
                Err(broken) => {
                    say!("audit chain BROKEN: {broken}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Audit { config, limit, .. } => {
            print_lines(with_store(&config, false, async |_, store| Ok(store.audit_events(limit).await?))?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { config } => {
            let cfg = config.load(false)?;
            cfg.validate(false)?;
            let version = runtime()?.block_on(async {
                let store = crate::store::open(&cfg, Default::default(), 1).await?;
                let version = store.schema_version().await;
                store.close().await;
                anyhow::Ok(version?)
            })?;
            say!("store {} is at schema version {version}", crate::store::describe(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Command::Inbox { config, bot, limit } => {
            print_lines(with_store(&config, false, async |_, store| Ok(store.pending_inbox(bot.as_deref(), limit).await?))?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::TeamsApp(cmd) => teams_app(cmd),
        Command::AgentId(cmd) => agent_id::run(cmd),
        Command::Token { config, kind, bot, show_token } => {
            let cfg = config.load(false)?;
            cfg.validate(false)?;
            let (index, _) = one_bot(&cfg, bot.as_deref())?;
            print!("{}", runtime()?.block_on(crate::entra::inspect::token_report(&cfg, index, kind, show_token))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { config, dev, domain } => {
            let cfg = config.load(dev)?;
            let report = runtime()?.block_on(crate::doctor::run(&cfg, &crate::doctor::DoctorOptions { dev, domain }));
            say!("{report}");
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
