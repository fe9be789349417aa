//! Outbound benchmark helper (`scripts/bench-outbound.sh`): a fast fake Bot Connector with a fake Entra token
//! endpoint, and a bulk enqueuer that queues sends exactly as `agentgate send` does.
//!
//! ```text
//! cargo run --release --example bench_connector -- serve --port 18090
//! cargo run --release --example bench_connector -- enqueue --config agentgate.toml --count 2000 --conversations 100
//! curl -s http://127.0.0.1:18090/stats
//! ```
//!
//! `serve` listens on 127.0.0.1 only and answers:
//!
//! * `POST /{tenant}/oauth2/v2.0/token`: a client-credentials grant (`grant_type`, `client_id`, `client_secret`,
//!   `scope` are required) gets `{"token_type":"Bearer","expires_in":…,"access_token":"bench-token-N"}`;
//! * `POST /_connector/v3/conversations/{conversation}/activities[/{reply_to}]`: `201 {"id":"N"}` when the bearer
//!   token is one the token endpoint issued (else `401`), and the body is a JSON activity with a `type`
//!   (else `400`); every accepted activity is recorded with its arrival time;
//! * `GET /arrivals`: one `conversation_index arrival_µs` line per accepted activity;
//! * `GET /stats`: what arrived: activities, token requests, refusals, first/last arrival (Unix ms) and the most
//!   activities seen in any sliding 1 s window, over all conversations and in one conversation (the Connector's
//!   view of Teams' 50/s per tenant and 7/s per conversation limits).
//!
//! `enqueue` opens the gateway's SQLite store (the running gateway's, from `--config`) and queues `--count` sends
//! round-robin over the conversations `{prefix}0 … {prefix}K-1` through the crate's own
//! `Store::enqueue_outbound` — the very call `agentgate send` makes, with the same outbox row and `queued`
//! audit event — so the benchmark needs no copy of the schema and leaves a valid audit chain. Each conversation
//! must have a stored reference (post an inbound activity first); its service URL and tenant are used, as
//! `agentgate send --conversation` does. Up to `--concurrency` enqueues are in flight, so they share group
//! commits the way concurrent producers would. Prints one JSON line: `{"enqueued","start_ms","end_ms"}`.
//!
//! Test scaffolding only: the tokens it issues are worthless strings.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agentgate::config::Config;
use agentgate::metrics::Metrics;
use agentgate::store::{NewOutbound, OutboundOp, SqliteStore, Store};
use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Fake Bot Connector + token endpoint on loopback, and a bulk outbox enqueuer, for the outbound benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the fake Connector and token endpoint on 127.0.0.1:PORT.
    Serve {
        #[arg(long)]
        port: u16,
        /// `expires_in` of issued tokens.
        #[arg(long, default_value_t = 3600)]
        token_ttl_secs: u64,
    },
    /// Queue COUNT sends into the outbox of the store named by the configuration.
    Enqueue {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        conversations: usize,
        #[arg(long, default_value = "bench-conv-")]
        prefix: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Serve { port, token_ttl_secs } => serve(port, token_ttl_secs),
        Cmd::Enqueue { config, count, conversations, prefix, concurrency } => enqueue(&config, count, conversations, &prefix, concurrency),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------- serve

#[derive(Default)]
struct Seen {
    /// Conversation index and arrival time (µs since start) of every accepted activity.
    arrivals: Vec<(u32, u64)>,
    conversations: HashMap<String, u32>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

struct Fake {
    start: Instant,
    ttl: u64,
    issued: Mutex<HashSet<String>>,
    seen: Mutex<Seen>,
    tokens: AtomicU64,
    ids: AtomicU64,
    unauthorized: AtomicU64,
    bad_requests: AtomicU64,
}

fn serve(port: u16, ttl: u64) -> anyhow::Result<()> {
    let fake = Arc::new(Fake {
        start: Instant::now(),
        ttl,
        issued: Mutex::new(HashSet::new()),
        seen: Mutex::new(Seen::default()),
        tokens: AtomicU64::new(0),
        ids: AtomicU64::new(1_000_000),
        unauthorized: AtomicU64::new(0),
        bad_requests: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/_connector/v3/conversations/{conversation}/activities", post(activity))
        .route("/_connector/v3/conversations/{conversation}/activities/{reply_to}", post(reply))
        .route("/stats", get(stats))
        .route("/arrivals", get(arrivals))
        .with_state(fake);
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        eprintln!("bench_connector: fake Connector on http://127.0.0.1:{port}/_connector, token endpoint http://127.0.0.1:{port}/TENANT/oauth2/v2.0/token");
        axum::serve(listener, app).await.context("serving")
    })
}

async fn token(State(fake): State<Arc<Fake>>, Path(_tenant): Path<String>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let missing = ["grant_type", "client_id", "client_secret", "scope"].into_iter().find(|k| form.get(*k).is_none_or(String::is_empty));
    if let Some(field) = missing {
        fake.bad_requests.fetch_add(1, Relaxed);
        let body =
            json!({"error": "invalid_request", "error_description": format!("AADSTS900144: missing {field}"), "error_codes": [900_144]});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        fake.bad_requests.fetch_add(1, Relaxed);
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "unsupported_grant_type"}))).into_response();
    }
    let n = fake.tokens.fetch_add(1, Relaxed) + 1;
    let access = format!("bench-token-{n}");
    fake.issued.lock().unwrap_or_else(PoisonError::into_inner).insert(access.clone());
    axum::Json(json!({"token_type": "Bearer", "expires_in": fake.ttl, "ext_expires_in": fake.ttl, "access_token": access})).into_response()
}

async fn reply(
    State(fake): State<Arc<Fake>>,
    Path((conversation, _reply_to)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    accept(&fake, conversation, &headers, &body)
}

async fn activity(State(fake): State<Arc<Fake>>, Path(conversation): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    accept(&fake, conversation, &headers, &body)
}

fn accept(fake: &Fake, conversation: String, headers: &HeaderMap, body: &[u8]) -> Response {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let known = bearer.is_some_and(|t| fake.issued.lock().unwrap_or_else(PoisonError::into_inner).contains(t));
    if !known {
        fake.unauthorized.fetch_add(1, Relaxed);
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"code": "Unauthorized", "message": "unknown token"}})))
            .into_response();
    }
    let typed = serde_json::from_slice::<Value>(body).ok().is_some_and(|v| v["type"].as_str().is_some_and(|t| !t.is_empty()));
    if !typed {
        fake.bad_requests.fetch_add(1, Relaxed);
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"code": "BadArgument", "message": "not an activity"}})))
            .into_response();
    }
    let at = u64::try_from(fake.start.elapsed().as_micros()).unwrap_or(u64::MAX);
    {
        let mut seen = fake.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let next = u32::try_from(seen.conversations.len()).unwrap_or(u32::MAX);
        let idx = *seen.conversations.entry(conversation).or_insert(next);
        seen.arrivals.push((idx, at));
        let now = now_ms();
        seen.first_ms.get_or_insert(now);
        seen.last_ms = Some(now);
    }
    let id = fake.ids.fetch_add(1, Relaxed);
    (StatusCode::CREATED, axum::Json(json!({"id": id.to_string()}))).into_response()
}

/// The most entries of sorted `times` (µs) inside any window of `window` µs.
fn max_in_window(times: &[u64], window: u64) -> usize {
    let (mut best, mut lo) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

async fn stats(State(fake): State<Arc<Fake>>) -> axum::Json<Value> {
    let seen = fake.seen.lock().unwrap_or_else(PoisonError::into_inner);
    let mut all: Vec<u64> = seen.arrivals.iter().map(|a| a.1).collect();
    all.sort_unstable();
    let mut by_conv: HashMap<u32, Vec<u64>> = HashMap::new();
    for (c, t) in &seen.arrivals {
        by_conv.entry(*c).or_default().push(*t);
    }
    let per_conv = by_conv
        .values_mut()
        .map(|v| {
            v.sort_unstable();
            max_in_window(v, 1_000_000)
        })
        .max()
        .unwrap_or(0);
    axum::Json(json!({
        "activities": seen.arrivals.len(),
        "conversations": seen.conversations.len(),
        "token_requests": fake.tokens.load(Relaxed),
        "unauthorized": fake.unauthorized.load(Relaxed),
        "bad_requests": fake.bad_requests.load(Relaxed),
        "first_ms": seen.first_ms,
        "last_ms": seen.last_ms,
        "max_per_1s_total": max_in_window(&all, 1_000_000),
        "max_per_1s_conversation": per_conv,
    }))
}

/// Every accepted activity as `conversation_index arrival_µs` lines, in arrival order (for plots and checks).
async fn arrivals(State(fake): State<Arc<Fake>>) -> String {
    let seen = fake.seen.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = String::with_capacity(seen.arrivals.len() * 16);
    for (c, t) in &seen.arrivals {
        out.push_str(&format!("{c} {t}\n"));
    }
    out
}

// ---------------------------------------------------------------- enqueue

fn enqueue(config: &std::path::Path, count: usize, conversations: usize, prefix: &str, concurrency: usize) -> anyhow::Result<()> {
    if conversations == 0 || concurrency == 0 {
        bail!("--conversations and --concurrency must be at least 1");
    }
    let cfg = Config::load(Some(config))?;
    let Some(bot) = cfg.bots.first() else { bail!("the configuration has no bot") };
    let bot_app_id = bot.app_id.clone();
    let path = cfg.sqlite_path();
    if !path.exists() {
        bail!("no store at {}: start `agentgate serve` with this configuration first", path.display());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let store = Arc::new(SqliteStore::open(&path, cfg.store.synchronous, cfg.store.max_batch, Arc::new(Metrics::default()))?);
        // Where each conversation is, from its stored reference (as `agentgate send --conversation` looks it up).
        let mut targets = Vec::with_capacity(conversations);
        for i in 0..conversations {
            let conv = format!("{prefix}{i}");
            let Some(r) = store.conversation_ref(&bot_app_id, &conv).await? else {
                bail!("bot {bot_app_id} has never seen conversation {conv}: post an inbound activity there first")
            };
            targets.push((conv, r.tenant_id, r.service_url));
        }
        let targets = Arc::new(targets);
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        let start_ms = now_ms();
        for i in 0..count {
            let permit = Arc::clone(&permits).acquire_owned().await?;
            let (store, targets, bot) = (Arc::clone(&store), Arc::clone(&targets), bot_app_id.to_string());
            tasks.spawn(async move {
                let (conv, tenant, service_url) = &targets[i % targets.len()];
                let op = OutboundOp::Send { activity: json!({"type": "message", "text": format!("bench send {i}")}) };
                let r = store
                    .enqueue_outbound(NewOutbound {
                        bot_app_id: bot.into(),
                        tenant_id: tenant.clone(),
                        conversation_id: conv.clone().into(),
                        service_url: service_url.clone(),
                        op,
                        requested_by: "bench".into(),
                        now_ms: now_ms(),
                    })
                    .await;
                drop(permit);
                r
            });
        }
        let mut enqueued = 0usize;
        while let Some(done) = tasks.join_next().await {
            done??;
            enqueued += 1;
        }
        let end_ms = now_ms();
        store.close().await;
        println!("{}", json!({"enqueued": enqueued, "start_ms": start_ms, "end_ms": end_ms}));
        anyhow::Ok(())
    })
}
