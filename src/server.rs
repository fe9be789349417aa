//! Wiring: build the state, the router and the listener; run until a shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use tokio::task::JoinHandle;
use tower_http::timeout::TimeoutLayer;

use crate::auth::{BotEntry, KeyCache, KeyCacheSettings, Verifier};
use crate::config::{Config, check_fetch_url};
use crate::connector::ConnectorClient;
use crate::connector::outbox::{Outbound, RetryPolicy};
use crate::connector::throttle::Throttle;
use crate::ids::Cloud;
use crate::inbound::{self, AppState};
use crate::metrics::Metrics;
use crate::service_url::ConnectorPolicy;
use crate::store::Store;

/// The HTTP routes over a built state. Tests may drive this without a socket.
pub fn router(state: Arc<AppState>, body_limit: usize, timeout: Duration) -> Router {
    Router::new()
        .route("/api/messages", post(inbound::api_messages).fallback(inbound::method_not_allowed))
        .route("/api/graph/notifications", post(inbound::graph::notifications))
        .route("/api/graph/lifecycle", post(inbound::graph::notifications))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(axum::middleware::map_response_with_state(Arc::clone(&state), count_timeouts))
        .with_state(state)
}

/// The timeout layer answers 408 without reaching a handler: count those here.
async fn count_timeouts(State(state): State<Arc<AppState>>, response: axum::response::Response) -> axum::response::Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        state.metrics.request(crate::metrics::Outcome::TimedOut);
        tracing::warn!("request timed out: 408");
    }
    response
}

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#)
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let store_ok = state.store.ping().await.is_ok();
    let keys_ok = state.verifier.key_caches().all(|c| c.has_keys());
    let body = serde_json::json!({"ready": store_ok && keys_ok, "store": store_ok, "signing_keys": keys_ok});
    let status = if store_ok && keys_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.store.audit_head().await {
        Ok(head) => state.metrics.audit_head(&head.to_string(), head.count, head.last_id, &head.hash),
        Err(e) => tracing::warn!(error = %e, "the audit head could not be read for /metrics"),
    }
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render())
}

/// How `serve` was asked to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    pub dev: bool,
}

/// A started gateway.
pub struct Gateway {
    local_addr: SocketAddr,
    tls: bool,
    handle: Handle<SocketAddr>,
    server: JoinHandle<std::io::Result<()>>,
    state: Arc<AppState>,
    background: Vec<JoinHandle<()>>,
    outbound: Arc<Outbound>,
    grace: Duration,
    hub: Arc<crate::mcp::Hub>,
    mcp_addr: Option<SocketAddr>,
    /// SQLite only: the lock that keeps a second `serve` off this store while this one runs.
    _serve_lock: Option<std::fs::File>,
}

/// Take the SQLite store's serve lock (`<store>.serve-lock`, an OS file lock released when the process ends,
/// also by SIGKILL). One `serve` per SQLite file: its outbox claims then belong to no one else, so the worker
/// recovers what a crashed predecessor left in flight at once instead of waiting for the leases to run out.
fn lock_sqlite_store(cfg: &Config) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let mut path = cfg.sqlite_path().into_os_string();
    path.push(".serve-lock");
    let path = std::path::PathBuf::from(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the serve lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
            anyhow::bail!(
                "another `agentgate serve`{holder} is using the SQLite store {}: one process per SQLite store. Stop it first, or \
                 run several replicas on Postgres (store.url; see docs/scale.md)",
                cfg.sqlite_path().display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("local_addr", &self.local_addr).field("tls", &self.tls).finish()
    }
}

impl Gateway {
    /// Validate the config, open the store, start key refresh, bind the listener and start serving.
    pub async fn start(cfg: Config, opts: ServeOptions) -> anyhow::Result<Self> {
        cfg.validate(opts.dev)?;
        let metrics = Arc::new(Metrics::default());
        let serve_lock = if cfg.store.url.is_none() { Some(lock_sqlite_store(&cfg)?) } else { None };
        let store: Arc<dyn Store> = crate::store::open(&cfg, Arc::clone(&metrics), cfg.store.max_batch).await?;
        tracing::info!(store = %crate::store::describe(&cfg), "store open");

        let settings = KeyCacheSettings {
            refresh_every: Duration::from_secs(cfg.auth.key_refresh_secs),
            unknown_kid_cooldown: Duration::from_secs(cfg.auth.unknown_kid_cooldown_secs),
            stale_grace: Duration::from_secs(cfg.auth.stale_keys_grace_secs),
            fetch_timeout: Duration::from_secs(cfg.auth.fetch_timeout_secs.max(1)),
        };
        let mut caches: [Option<Arc<KeyCache>>; 3] = [None, None, None];
        let mut background = Vec::new();
        for cloud in Cloud::ALL {
            if !cfg.bots.iter().any(|b| b.cloud == cloud) {
                continue;
            }
            let url = check_fetch_url(&cfg.clouds.get(cloud).openid_metadata_url).map_err(anyhow::Error::msg)?;
            let cache = Arc::new(KeyCache::new(cloud, url, settings, Arc::clone(&metrics)).context("building the HTTP client")?);
            background.push(Arc::clone(&cache).spawn_background());
            caches[cloud.index()] = Some(cache);
        }
        let bots = cfg
            .bots
            .iter()
            .map(|b| BotEntry {
                app_id: b.app_id.to_string(),
                cloud: b.cloud,
                require_endorsement: b.require_endorsement,
                allowed_tenants: b.allowed_tenants.iter().cloned().collect(),
                agentic: match (&b.agentic, &b.agent_user) {
                    (a, Some(au)) if a.enabled => Some(crate::auth::AgenticEntry {
                        blueprint_app_id: au.blueprint_app_id.clone(),
                        allowed_callers: a.allowed_callers.iter().map(|c| c.to_ascii_lowercase()).collect(),
                        metadata_template: a.openid_metadata_url.clone(),
                        agent_identity_id: au.agent_identity_id.clone(),
                        agent_user_id: au.agent_user_id.clone(),
                    }),
                    _ => None,
                },
            })
            .collect();
        let verifier = Verifier::new(bots, caches, cfg.auth.clock_skew_secs, cfg.auth.token_cache_entries, Arc::clone(&metrics))
            .with_key_settings(settings);
        // With replicas (Postgres) the requests are shared through the store (when some bot has approvers).
        // Without approvers, a bot's Agent User's sponsors answer.
        let approvals = Arc::new(if cfg.bots.iter().any(|b| !b.policy.approvers.is_empty() || b.agent_user.is_some()) {
            crate::mcp::Approvals::shared(Arc::clone(&store))
        } else {
            crate::mcp::Approvals::default()
        });
        if let Some(task) = approvals.spawn_sync() {
            background.push(task);
        }
        let gate = Arc::new(crate::bridge::gate::InboundGate::new(
            cfg.bots.iter().map(|b| (b.app_id.to_string(), b.policy.clone())),
            Arc::clone(&approvals),
        ));
        let agents = crate::bridge::agent::build(&cfg).await?;
        let mut graph_inbound = crate::bridge::graph_inbound::GraphInbound::new(&cfg, &agents, Arc::clone(&store), Arc::clone(&gate));
        // A test of a long idle period runs the Graph worker's clock faster: honoured in `--dev` only.
        if opts.dev
            && let Some(scale) = dev_graph_clock_scale()
            && let Some(g) = graph_inbound.take()
        {
            tracing::warn!(
                scale,
                "{DEV_GRAPH_CLOCK_SCALE} is set: the Graph inbound worker's clock runs {scale} times faster (tests only)"
            );
            graph_inbound = Some(g.with_clock_scale(scale));
        }
        if let Some(g) = &graph_inbound {
            tracing::info!(inbound = ?g, "the Agent User's chats reach the host through Graph change notifications");
        }
        let files = Arc::new(crate::bridge::files::Files::new(&cfg, Arc::clone(&store), Some(Arc::clone(&gate)))?);
        let mail_inbound = crate::bridge::mail_inbound::MailInbound::new(&cfg, &agents, Arc::clone(&store), Arc::clone(&gate));
        if let Some(m) = &mail_inbound {
            tracing::info!(inbound = ?m, "the Agent User's mail reaches the host");
        }
        let state = Arc::new(AppState {
            verifier,
            store: Arc::clone(&store),
            metrics,
            connectors: ConnectorPolicy::from_config(&cfg.clouds, opts.dev),
            dev: opts.dev,
            invoke_ack_text: cfg.invoke.ack_text.clone(),
            dedupe_ttl: Duration::from_secs(cfg.store.dedupe_ttl_secs),
            recent: crate::store::RecentCommits::default(),
            gate: Arc::clone(&gate),
            graph: graph_inbound.clone(),
            mail: mail_inbound.clone(),
            welcome: crate::bridge::welcome::activities(&cfg.bots)?,
            files: Some(Arc::clone(&files)),
        });
        // Offers nobody answered expire; uploads a restart cut off are reported.
        background.push(crate::bridge::files::consent::spawn_sweep(Arc::clone(&files), Duration::from_secs(600)));
        background.push(spawn_dedupe_purge(Arc::clone(&store)));
        background.push(spawn_audit_head_log(Arc::clone(&store)));
        let agentic = crate::bridge::agent::agentic_chains(&cfg, &agents);
        let outbound = Arc::new(
            build_outbound(&cfg, opts, Arc::clone(&store), Arc::clone(&state.metrics))
                .await?
                .with_agentic(agentic)
                .sole_worker(serve_lock.is_some()),
        );
        background.push(Arc::clone(&outbound).spawn(Duration::from_millis(cfg.outbound.poll_interval_ms)));
        if let Some(announced) = store.subscribe_inbox() {
            background.push(gate.follow(announced));
        }
        let hub = Arc::new(
            crate::mcp::Hub::new(
                Arc::new(cfg.clone()),
                Arc::clone(&store),
                Arc::clone(&outbound),
                gate.subscribe(),
                approvals,
                opts.dev,
                agents,
            )
            .with_delivered(Arc::clone(&gate.delivered))
            .with_files(files),
        );
        background.push(hub.spawn_approval_sweeper());
        let mcp_addr = match crate::mcp::http::serve(Arc::clone(&hub), &cfg.mcp).await? {
            Some((addr, task)) => {
                background.push(task);
                Some(addr)
            }
            None => None,
        };

        let app = router(Arc::clone(&state), cfg.server.body_limit_bytes, Duration::from_secs(cfg.server.request_timeout_secs));
        let bind: SocketAddr = cfg.server.bind.parse().context("server.bind")?;
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("cannot listen on {bind}: is another process using it? change server.bind or --bind"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let handle: Handle<SocketAddr> = Handle::new();
        let service = app.into_make_service();
        let (server, tls) = match (&cfg.server.tls.cert_file, &cfg.server.tls.key_file) {
            (Some(cert), Some(key)) => {
                let tls = RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| format!("loading TLS certificate {} and key {}", cert.display(), key.display()))?;
                background.push(spawn_tls_reload(
                    tls.clone(),
                    cert.clone(),
                    key.clone(),
                    Duration::from_secs(cfg.server.tls.reload_interval_secs.max(1)),
                ));
                let server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle.clone());
                (tokio::spawn(async move { server.serve(service).await }), true)
            }
            _ => {
                let server = axum_server::from_tcp(listener)?.handle(handle.clone());
                (tokio::spawn(async move { server.serve(service).await }), false)
            }
        };
        // After the listener serves: creating a subscription makes Graph call the validation URL at once.
        if let Some(g) = &graph_inbound {
            background.push(g.spawn());
        }
        if let Some(m) = &mail_inbound {
            background.push(m.spawn());
        }
        Ok(Self {
            local_addr,
            tls,
            handle,
            server,
            state,
            background,
            outbound,
            grace: Duration::from_secs(cfg.server.shutdown_grace_secs),
            hub,
            mcp_addr,
            _serve_lock: serve_lock,
        })
    }

    /// What MCP sessions share (stdio sessions run in-process over it).
    pub fn hub(&self) -> Arc<crate::mcp::Hub> {
        Arc::clone(&self.hub)
    }

    /// Where `/mcp` listens, when tokens are configured.
    pub fn mcp_addr(&self) -> Option<SocketAddr> {
        self.mcp_addr
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.local_addr)
    }

    /// Serve until `shutdown` resolves, then stop accepting, let in-flight requests finish (their
    /// commits included) within the grace period, and close the store.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Self { handle, mut server, state, background, outbound, grace, .. } = self;
        tokio::select! {
            res = &mut server => {
                state.store.close().await;
                return res.context("server task")?.context("server stopped");
            }
            () = shutdown => {}
        }
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: finishing in-flight requests");
        handle.graceful_shutdown(Some(grace));
        let res = server.await;
        // Sends under way record their outcome before the store closes (else they would look ambiguous).
        outbound.drain(grace).await;
        for task in background {
            task.abort();
        }
        log_audit_head(state.store.as_ref(), "at shutdown").await;
        state.store.close().await;
        tracing::info!("store closed; bye");
        res.context("server task")?.context("server stopped")
    }
}

/// The variable that runs the Graph inbound worker's clock faster in `--dev` (a simulated idle hour).
const DEV_GRAPH_CLOCK_SCALE: &str = "AGENTGATE_DEV_GRAPH_CLOCK_SCALE";

fn dev_graph_clock_scale() -> Option<u32> {
    std::env::var(DEV_GRAPH_CLOCK_SCALE).ok()?.trim().parse::<u32>().ok().filter(|s| (2..=10_000).contains(s))
}

/// The outbound worker: each bot's credential (a bot without one can send only in `--dev`, to the
/// Playground), the Connector client, throttles and retry policy.
async fn build_outbound(cfg: &Config, opts: ServeOptions, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> anyhow::Result<Outbound> {
    let tokens = bot_tokens(cfg, opts.dev).await?;
    let connector =
        ConnectorClient::new(ConnectorPolicy::from_config(&cfg.clouds, opts.dev), Duration::from_secs(cfg.outbound.request_timeout_secs))
            .context("building the Connector client")?;
    let clouds = cfg.bots.iter().map(|b| (b.app_id.clone(), b.cloud)).collect();
    let throttle = if cfg.outbound.throttle { Throttle::new() } else { Throttle::disabled() };
    let retry = RetryPolicy {
        max_attempts: cfg.outbound.max_attempts,
        max_age: Duration::from_secs(cfg.outbound.max_age_secs),
        ..RetryPolicy::default()
    };
    Ok(Outbound::new(store, connector, Arc::new(tokens), clouds, throttle, retry, metrics).with_stream_config(stream_config(cfg, opts.dev)))
}

/// The variable that runs streams' clock faster in `--dev` (a test of a long turn).
const DEV_STREAM_CLOCK_SCALE: &str = "AGENTGATE_DEV_STREAM_CLOCK_SCALE";

/// Streams' tunables from `[outbound]`; in `--dev`, with every duration divided by
/// `AGENTGATE_DEV_STREAM_CLOCK_SCALE` when it is set (2 to 1000).
fn stream_config(cfg: &Config, dev: bool) -> crate::teams::StreamConfig {
    let config = crate::teams::StreamConfig {
        edit_interval: Duration::from_millis(cfg.outbound.stream_update_ms),
        max_age: Duration::from_millis(cfg.outbound.stream_max_age_ms),
        ..crate::teams::StreamConfig::default()
    };
    let scale = std::env::var(DEV_STREAM_CLOCK_SCALE).ok().and_then(|v| v.trim().parse::<u32>().ok()).filter(|s| (2..=1000).contains(s));
    match scale {
        Some(scale) if dev => {
            tracing::warn!(scale, "{DEV_STREAM_CLOCK_SCALE} is set: streams' clock runs {scale} times faster (tests only)");
            config.scaled(scale)
        }
        _ => config,
    }
}

pub use crate::connector::tokens::bot_tokens;

fn spawn_dedupe_purge(store: Arc<dyn Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let now = crate::store::now_ms();
            match store.purge_dedupe(now).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "expired dedupe keys purged"),
                Err(e) => tracing::warn!(error = %e, "dedupe purge failed"),
            }
        }
    })
}

/// How often the audit head is logged (when it changed).
const AUDIT_HEAD_EVERY: Duration = Duration::from_secs(60);

async fn log_audit_head(store: &dyn Store, when: &'static str) -> Option<crate::store::AuditHead> {
    match store.audit_head().await {
        Ok(head) => {
            tracing::info!(head = %head, events = head.count, when, "audit head (keep it elsewhere; check with `agentgate audit --verify --expect-head`)");
            Some(head)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the audit head could not be read");
            None
        }
    }
}

/// Log the audit head at start and then every minute in which it changed, so that an operator's log
/// collector keeps a copy outside the database.
fn spawn_audit_head_log(store: Arc<dyn Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = log_audit_head(store.as_ref(), "at start").await;
        let mut tick = tokio::time::interval(AUDIT_HEAD_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            match store.audit_head().await {
                Ok(head) if last.as_ref() != Some(&head) => {
                    tracing::info!(head = %head, events = head.count, when = "periodic", "audit head");
                    last = Some(head);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the audit head could not be read"),
            }
        }
    })
}

fn file_stamp(p: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reload the certificate and key when either file changes (renewal); keep the old pair on error.
fn spawn_tls_reload(tls: RustlsConfig, cert: PathBuf, key: PathBuf, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = (file_stamp(&cert), file_stamp(&key));
        loop {
            tokio::time::sleep(every).await;
            let now = (file_stamp(&cert), file_stamp(&key));
            if now == seen {
                continue;
            }
            match tls.reload_from_pem_file(&cert, &key).await {
                Ok(()) => {
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                    seen = now;
                }
                Err(e) => tracing::warn!(error = %e, "TLS certificate changed but could not be loaded; still serving the previous one"),
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
