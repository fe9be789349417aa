//! MCP push-latency benchmark (`scripts/bench-mcp.sh`; issue 4): the time from the `202` answer to a
//! `POST /api/messages` until that message's `notifications/claude/channel` reaches an MCP host on stdio.
//!
//! ```text
//! cargo build --release --bin agentgate --example bench_mcp
//! target/release/examples/bench_mcp [--bin target/release/agentgate] [-n 2000] [-w 100] [-c 1,8] [--gateway-cpu 1] [--out DIR]
//! ```
//!
//! Per value of `-c` (one fresh gateway and store each), the example:
//!
//! 1. writes a dev-mode configuration in a temporary directory: one bot, `policy.dm = "open"`, the default store
//!    (`synchronous = full`) and log level; its OpenID metadata + JWKS (which `--dev` still loads) are served by
//!    this process on 127.0.0.1 (a throw-away RSA key, as `examples/bench_fixture.rs` does);
//! 2. spawns `BIN mcp --dev --config FILE` (under `taskset -c CPU` with `--gateway-cpu`), reads the
//!    `agentgate listening on` line from its stderr, and connects rmcp's client over the child's stdin/stdout —
//!    the host. The host runs on a thread of its own with its own current-thread runtime (a real host is its own
//!    process; the posters' tasks must not delay it); its notification handler takes the time first thing, then
//!    files it under `meta.message_id`;
//! 3. warm-up: `-w` messages, one at a time, each waiting for its notification (not measured);
//! 4. measured: `-n` messages, each with a unique activity id, posted without an Authorization header (dev mode)
//!    with the dev Connector's `serviceUrl` (`http://127.0.0.1:PORT/_connector`; nothing is ever sent there):
//!    * `-c 1`: closed loop — post, note when the `202` arrives, wait for the notification, then the next message.
//!      This is the latency of an idle push path;
//!    * `-c K > 1`: K posters, each posting its next message as soon as its `202` arrives, never waiting for
//!      notifications (one conversation per poster). This is the push path's throughput while intake runs flat
//!      out; the latency then includes any backlog.
//!
//!    Per message: `sent` (just before the request), `answered` (the `202`'s headers are in), `notified` (the
//!    handler ran). Reported: `notified − answered` (the figure issue 4 asks for; negative when the notification
//!    beats the `202` to the host: the gateway wakes the push loop right after the commit, before it writes the
//!    answer) and `notified − sent` (the whole path); nearest-rank p50/p90/p99 and max; messages/s = N /
//!    (last notification − first measured `sent`); the gateway's CPU time over that window, from `/proc`;
//! 5. checks — and fails with exit status 1 otherwise — that every POST was answered `202` and that every message
//!    (warm-up included) was notified exactly once, with no notification for any other id, 300 ms after the last
//!    expected one arrived;
//! 6. closes the session (the gateway exits when its stdin closes) and waits for the child.
//!
//! Nothing is acknowledged: the inbox grows to `w + n` pending entries, which is fine — the push loop reads the
//! inbox by id after a cursor (`state = 'pending' AND id > ?`), so the pending backlog behind the cursor does not
//! cost it anything per message.
//!
//! Output on stdout: a Markdown table (a header and one row per `-c` value); with `--out DIR`, also the same
//! figures in `results.tsv` and one `latency-cK.tsv` per run (`message_id  sent_us  answered_us  notified_us`, µs
//! since the first measured send).
//! Everything is on loopback.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use axum::Router;
use axum::routing::get;
use clap::Parser;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use rmcp::model::{ClientCapabilities, ClientConfig, CustomNotification, Implementation, ProtocolVersion};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::json;
use tokio::sync::Notify;

const APP_ID: &str = "b0000000-0000-4000-8000-0000000000b1";
const TENANT: &str = "70000000-0000-4000-8000-000000000071";
const USER: &str = "00000000-0000-4000-8000-0000000000a1";
const KID: &str = "bench-mcp-kid";
const CHANNEL: &str = "notifications/claude/channel";
/// How long the last expected notification may take, and how long to keep listening for duplicates after it.
const NOTIFY_LIMIT: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, Parser)]
#[command(about = "Latency from the 202 of POST /api/messages to the MCP channel notification on a stdio host")]
struct Cli {
    /// The agentgate binary.
    #[arg(long, default_value = "target/release/agentgate")]
    bin: PathBuf,
    /// Measured messages per run.
    #[arg(short = 'n', long, default_value_t = 2000)]
    messages: usize,
    /// Warm-up messages per run (closed loop, not measured).
    #[arg(short = 'w', long, default_value_t = 100)]
    warmup: usize,
    /// Posters, one run (fresh gateway and store) per value: 1 = closed loop, K > 1 = K posters that never wait.
    #[arg(short = 'c', long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Run the gateway under `taskset -c CPU`.
    #[arg(long, value_name = "CPU")]
    gateway_cpu: Option<usize>,
    /// Write the per-message times here (`latency-cK.tsv`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

// ---------------------------------------------------------------- the host

/// Notification arrival times by message id.
#[derive(Default)]
struct Seen {
    by_id: Mutex<HashMap<String, Vec<Instant>>>,
    /// Channel notifications without a `meta.message_id`.
    anonymous: AtomicUsize,
    wake: Notify,
}

impl Seen {
    fn count(&self, id: &str) -> usize {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner).get(id).map_or(0, Vec::len)
    }

    /// Until `id` has been notified, or `deadline`.
    async fn wait_for(&self, id: &str, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.count(id) > 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                bail!("no notification for message {id} within {NOTIFY_LIMIT:?}");
            }
        }
    }
}

struct Host {
    seen: Arc<Seen>,
}

impl ClientHandler for Host {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("bench-mcp", "1.0"))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_custom_notification(&self, n: CustomNotification, _ctx: NotificationContext<RoleClient>) {
        let at = Instant::now();
        if n.method != CHANNEL {
            return;
        }
        match n.params.as_ref().and_then(|p| p["meta"]["message_id"].as_str()) {
            Some(id) => self.seen.by_id.lock().unwrap_or_else(PoisonError::into_inner).entry(id.to_owned()).or_default().push(at),
            None => {
                self.seen.anonymous.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.seen.wake.notify_waiters();
    }
}

// ---------------------------------------------------------------- OpenID metadata + JWKS on loopback

/// Serves `/v1/.well-known/openidconfiguration` and `/v1/keys` on 127.0.0.1; returns the metadata URL and port.
async fn serve_openid(key: &EncodingKey) -> anyhow::Result<(String, u16)> {
    let public = serde_json::to_value(Jwk::from_encoding_key(key, Algorithm::RS256)?)?;
    let (Some(n), Some(e)) = (public["n"].as_str(), public["e"].as_str()) else { bail!("the JWK has no RSA modulus/exponent") };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.context("binding the OpenID fixture")?;
    let port = listener.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let metadata = json!({
        "issuer": "https://api.botframework.com",
        "authorization_endpoint": format!("{base}/v1/auth"),
        "jwks_uri": format!("{base}/v1/keys"),
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    });
    let jwks =
        json!({"keys": [{"kty": "RSA", "use": "sig", "kid": KID, "x5t": KID, "n": n, "e": e, "endorsements": ["msteams", "webchat"]}]});
    let app = Router::new()
        .route("/v1/.well-known/openidconfiguration", get(move || std::future::ready(axum::Json(metadata.clone()))))
        .route("/v1/keys", get(move || std::future::ready(axum::Json(jwks.clone()))));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("bench_mcp: the OpenID fixture stopped: {e}");
        }
    });
    Ok((format!("{base}/v1/.well-known/openidconfiguration"), port))
}

// ---------------------------------------------------------------- the gateway

/// The gateway child and the host connected to it, on a thread of their own with its own (current-thread)
/// runtime: a real host is a process of its own, and the posters' tasks must not delay the moment the host's
/// handler takes a notification's time.
struct Gateway {
    url: String,
    pid: Option<u32>,
    stderr: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The gateway's CPU time so far (user + system), from `/proc` (`taskset` execs it: same pid). Assumes the
    /// usual 100 clock ticks per second.
    fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10))
    }

    /// Spawn the gateway and connect the host (on the host thread); returns once the handshake is done.
    async fn start(cli: &Cli, dir: &Path, config: &Path, seen: &Arc<Seen>) -> anyhow::Result<Self> {
        let (bin, cpu, stderr, config, seen) =
            (cli.bin.clone(), cli.gateway_cpu, dir.join("gateway.stderr"), config.to_owned(), Arc::clone(seen));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<anyhow::Result<(String, Option<u32>)>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let log = stderr.clone();
        let thread = std::thread::Builder::new().name("mcp-host".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let (mut child, url, host) = match spawn_and_connect(&bin, cpu, &config, &log, seen).await {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok((url, child.id())));
                let _ = stop_rx.await;
                // Close the session: the gateway shuts down when its stdin closes.
                host.cancel().await.context("closing the MCP session")?;
                match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                    Ok(status) => ensure!(status?.success(), "the gateway exited badly"),
                    Err(_) => {
                        child.start_kill()?;
                        bail!("the gateway did not exit within 20 s of the session closing");
                    }
                }
                Ok(())
            })
        })?;
        let (url, pid) = ready_rx.await.context("the host thread ended")??;
        Ok(Self { url, pid, stderr, stop, thread })
    }

    /// Close the session and wait for the gateway to exit.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let thread = self.thread;
        let stderr = self.stderr;
        match tokio::task::spawn_blocking(move || thread.join()).await? {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                bail!("{e:#}\n--- gateway stderr (tail) ---\n{}", tail(&std::fs::read_to_string(&stderr).unwrap_or_default(), 40))
            }
            Err(_) => bail!("the host thread panicked"),
        }
    }
}

fn write_config(dir: &Path, metadata_url: &str) -> anyhow::Result<PathBuf> {
    let config = dir.join("agentgate.toml");
    let toml = format!(
        r#"data_dir = "{data}"

[server]
bind = "127.0.0.1:0"

[clouds.public]
openid_metadata_url = "{metadata_url}"
token_authority = "http://127.0.0.1:9"

[[bots]]
app_id = "{APP_ID}"
display_name = "MCP bench bot"
allowed_tenants = ["{TENANT}"]
policy.dm = "open"
"#,
        data = dir.join("data").display(),
    );
    std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
    Ok(config)
}

/// Spawn `agentgate mcp --dev --config FILE` and connect the host over its stdio.
async fn spawn_and_connect(
    bin: &Path,
    gateway_cpu: Option<usize>,
    config: &Path,
    stderr: &Path,
    seen: Arc<Seen>,
) -> anyhow::Result<(tokio::process::Child, String, RunningService<RoleClient, Host>)> {
    let mut cmd = match gateway_cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    };
    cmd.arg("mcp").arg("--dev").arg("--config").arg(config);
    // The caller's configuration overrides must not reach the measured gateway.
    for (k, _) in std::env::vars() {
        if k == "RUST_LOG" || k == "AGENTGATE_CONFIG" || k.starts_with("AGENTGATE__") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).with_context(|| format!("creating {}", stderr.display()))?)
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else { bail!("no stdio pipes to the child") };
    let mut url = None;
    for _ in 0..600 {
        let log = std::fs::read_to_string(stderr).unwrap_or_default();
        if let Some(rest) = log.split("agentgate listening on ").nth(1) {
            url = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("agentgate mcp exited with {status}:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(url) = url else { bail!("agentgate mcp never listened:\n{}", std::fs::read_to_string(stderr).unwrap_or_default()) };
    let host = Host { seen }.serve((stdout, stdin)).await.context("the MCP handshake")?;
    Ok((child, url, host))
}

// ---------------------------------------------------------------- traffic

fn activity(id: &str, conversation: &str, service_url: &str, text: &str) -> String {
    json!({
        "type": "message",
        "id": id,
        "channelId": "msteams",
        "serviceUrl": service_url,
        "from": {"id": "29:bench-user", "name": "Bench", "aadObjectId": USER},
        "recipient": {"id": format!("28:{APP_ID}"), "name": "Bot"},
        "conversation": {"conversationType": "personal", "tenantId": TENANT, "id": conversation},
        "channelData": {"tenant": {"id": TENANT}},
        "text": text,
    })
    .to_string()
}

/// One measured message: when the request was started, when its 202 arrived.
struct Posted {
    id: String,
    sent: Instant,
    answered: Instant,
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> anyhow::Result<Instant> {
    let r = http.post(url).header("content-type", "application/json").body(body).send().await.context("POST /api/messages")?;
    let answered = Instant::now();
    let status = r.status();
    ensure!(status == reqwest::StatusCode::ACCEPTED, "POST /api/messages answered {status}: {}", r.text().await.unwrap_or_default());
    Ok(answered)
}

struct Traffic {
    http: reqwest::Client,
    url: String,
    service_url: String,
    seen: Arc<Seen>,
}

impl Traffic {
    /// Post and wait for the notification, `count` times.
    async fn closed_loop(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<Posted>> {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let id = format!("{prefix}-{i}");
            let body = activity(&id, "a:bench-conv-0", &self.service_url, &format!("bench message {i}"));
            let sent = Instant::now();
            let answered = post(&self.http, &self.url, body).await?;
            self.seen.wait_for(&id, tokio::time::Instant::now() + NOTIFY_LIMIT).await?;
            out.push(Posted { id, sent, answered });
        }
        Ok(out)
    }

    /// `posters` tasks post `count` messages between them, never waiting for notifications.
    async fn open_loop(self: &Arc<Self>, prefix: &str, count: usize, posters: usize) -> anyhow::Result<Vec<Posted>> {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..posters {
            let (me, next, prefix) = (Arc::clone(self), Arc::clone(&next), prefix.to_owned());
            tasks.spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(out);
                    }
                    let id = format!("{prefix}-{i}");
                    let body = activity(&id, &format!("a:bench-conv-{p}"), &me.service_url, &format!("bench message {i}"));
                    let sent = Instant::now();
                    let answered = post(&me.http, &me.url, body).await?;
                    out.push(Posted { id, sent, answered });
                }
            });
        }
        let mut all = Vec::with_capacity(count);
        while let Some(r) = tasks.join_next().await {
            all.extend(r.context("a poster panicked")??);
        }
        Ok(all)
    }
}

// ---------------------------------------------------------------- one run

struct RunResult {
    posters: usize,
    /// notified − answered, µs (signed).
    after_202: Vec<i64>,
    /// notified − sent, µs.
    after_send: Vec<i64>,
    per_s: f64,
    /// The gateway's CPU time over the measured window's wall time (1.0 = one core busy).
    gateway_cpu: Option<f64>,
}

fn micros(later: Instant, earlier: Instant) -> i64 {
    match later.checked_duration_since(earlier) {
        Some(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        None => -i64::try_from(earlier.duration_since(later).as_micros()).unwrap_or(i64::MAX),
    }
}

async fn run(cli: &Cli, key: &EncodingKey, posters: usize) -> anyhow::Result<RunResult> {
    let dir = tempfile::Builder::new().prefix("agentgate-bench-mcp.").tempdir().context("creating a temporary directory")?;
    let (metadata_url, fixture_port) = serve_openid(key).await?;
    let config = write_config(dir.path(), &metadata_url)?;
    let seen = Arc::new(Seen::default());
    let gw = Gateway::start(cli, dir.path(), &config, &seen).await?;
    let traffic = Arc::new(Traffic {
        http: reqwest::Client::builder().no_proxy().build()?,
        url: format!("{}/api/messages", gw.url),
        // The dev Connector form; the benchmark never replies, so nothing is sent there.
        service_url: format!("http://127.0.0.1:{fixture_port}/_connector"),
        seen: Arc::clone(&seen),
    });
    let tag = format!("c{posters}");

    let measured = async {
        let warm = traffic.closed_loop(&format!("warm-{tag}"), cli.warmup).await?;
        let cpu0 = (gw.cpu(), Instant::now());
        let posted = if posters <= 1 {
            traffic.closed_loop(&format!("bench-{tag}"), cli.messages).await?
        } else {
            traffic.open_loop(&format!("bench-{tag}"), cli.messages, posters).await?
        };
        // Every notification in, then a grace period for duplicates.
        let deadline = tokio::time::Instant::now() + NOTIFY_LIMIT;
        for p in &posted {
            seen.wait_for(&p.id, deadline).await?;
        }
        let cpu = match (cpu0, gw.cpu()) {
            ((Some(a), t0), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / t0.elapsed().as_secs_f64()),
            _ => None,
        };
        tokio::time::sleep(GRACE).await;
        anyhow::Ok((warm, posted, cpu))
    }
    .await;
    let (warm, posted, gateway_cpu) = match measured {
        Ok(v) => v,
        Err(e) => bail!("{e:#}\n--- gateway stderr (tail) ---\n{}", tail(&gw.log(), 40)),
    };

    // The books: each expected id exactly once, nothing else.
    let by_id = std::mem::take(&mut *seen.by_id.lock().unwrap_or_else(PoisonError::into_inner));
    let mut problems = Vec::new();
    for p in warm.iter().chain(&posted) {
        let n = by_id.get(&p.id).map_or(0, Vec::len);
        if n != 1 {
            problems.push(format!("{} notified {n} times", p.id));
        }
    }
    let expected = warm.len() + posted.len();
    if by_id.len() != expected {
        let unknown: Vec<&String> = by_id.keys().filter(|k| !warm.iter().chain(&posted).any(|p| &p.id == *k)).take(5).collect();
        problems.push(format!("{} distinct ids notified, {expected} posted; unexpected: {unknown:?}", by_id.len()));
    }
    let anonymous = seen.anonymous.load(Ordering::Relaxed);
    if anonymous > 0 {
        problems.push(format!("{anonymous} channel notifications without meta.message_id"));
    }
    if !problems.is_empty() {
        bail!(
            "{tag}: delivery check failed ({} problems):\n  {}",
            problems.len(),
            problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
        );
    }

    let notified = |p: &Posted| by_id.get(&p.id).and_then(|v| v.first().copied()).unwrap_or(p.answered);
    let start = posted.iter().map(|p| p.sent).min().context("no messages")?;
    let end = posted.iter().map(notified).max().context("no messages")?;
    let per_s = posted.len() as f64 / end.duration_since(start).as_secs_f64().max(1e-9);
    if let Some(out) = &cli.out {
        let mut tsv = String::from("message_id\tsent_us\tanswered_us\tnotified_us\n");
        for p in &posted {
            tsv.push_str(&format!("{}\t{}\t{}\t{}\n", p.id, micros(p.sent, start), micros(p.answered, start), micros(notified(p), start)));
        }
        std::fs::write(out.join(format!("latency-{tag}.tsv")), tsv)?;
    }
    let result = RunResult {
        posters,
        after_202: posted.iter().map(|p| micros(notified(p), p.answered)).collect(),
        after_send: posted.iter().map(|p| micros(notified(p), p.sent)).collect(),
        per_s,
        gateway_cpu,
    };

    gw.stop().await?;
    Ok(result)
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[i64], p: f64) -> i64 {
    let n = sorted.len();
    let r = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted[r - 1]
}

fn us(v: i64) -> String {
    format!("{v} µs")
}

/// The Markdown row and the same figures tab-separated (`posters messages p50 p90 p99 max send_p50 send_p99
/// send_max early_pct per_s`, µs).
fn row(r: &mut RunResult) -> (String, String) {
    r.after_202.sort_unstable();
    r.after_send.sort_unstable();
    let a = &r.after_202;
    let s = &r.after_send;
    let early = a.iter().filter(|v| **v < 0).count();
    let cpu = r.gateway_cpu.map_or_else(|| "?".to_owned(), |c| format!("{:.0}%", 100.0 * c));
    let tsv = format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{:.0}\t{}",
        r.posters,
        a.len(),
        rank(a, 0.50),
        rank(a, 0.90),
        rank(a, 0.99),
        rank(a, 1.0),
        rank(s, 0.50),
        rank(s, 0.99),
        rank(s, 1.0),
        100.0 * early as f64 / a.len() as f64,
        r.per_s,
        cpu.trim_end_matches('%'),
    );
    let mode = if r.posters <= 1 { "1 poster, closed loop".to_owned() } else { format!("{} posters, open loop", r.posters) };
    let md = format!(
        "| {mode} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}% | {:.0} | {cpu} |",
        a.len(),
        us(rank(a, 0.50)),
        us(rank(a, 0.90)),
        us(rank(a, 0.99)),
        us(rank(a, 1.0)),
        us(rank(s, 0.50)),
        us(rank(s, 0.99)),
        us(rank(s, 1.0)),
        100.0 * early as f64 / a.len() as f64,
        r.per_s,
    );
    (md, tsv)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(cli.messages >= 1, "-n must be at least 1");
    ensure!(!cli.concurrency.is_empty() && cli.concurrency.iter().all(|c| *c >= 1), "-c takes whole numbers >= 1");
    ensure!(cli.bin.exists(), "{} does not exist (cargo build --release --bin agentgate)", cli.bin.display());
    if let Some(out) = &cli.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).context("generating an RSA key")?;
    let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    let mut tsv = String::from(
        "posters\tmessages\tp50_us\tp90_us\tp99_us\tmax_us\tsend_p50_us\tsend_p99_us\tsend_max_us\tearly_pct\tper_s\tgateway_cpu_pct\n",
    );
    for &posters in &cli.concurrency {
        eprintln!("bench_mcp: {} messages after {} warm-up, {posters} poster(s)", cli.messages, cli.warmup);
        let mut r = rt.block_on(run(&cli, &key, posters))?;
        let (md, line) = row(&mut r);
        eprintln!("{md}");
        rows.push(md);
        tsv.push_str(&line);
        tsv.push('\n');
    }
    if let Some(out) = &cli.out {
        std::fs::write(out.join("results.tsv"), tsv)?;
    }
    println!(
        "| posters | messages | 202 → notification p50 | p90 | p99 | max | POST sent → notification p50 | p99 | max | notified before the 202 | messages/s | gateway CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
