//! The real binary on the Postgres store (`store.url`): intake, read-back through the CLI, dedupe, readiness
//! and recovery when the database goes away and comes back. Runs when `AGENTGATE_TEST_POSTGRES_URL` names a
//! server (each test in a fresh database); otherwise each test says it was skipped and passes.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::helpers::*;

const TEST_URL_VAR: &str = "AGENTGATE_TEST_POSTGRES_URL";
/// The value behind `store.password = "env:AGENTGATE_TEST_SECRET"` (the harness sets it for the app).
const PASSWORD: &str = "s3cr3t-value-that-must-never-be-logged";

/// A fresh database on the test server, dropped at the end.
struct Database {
    admin: tokio_postgres::Config,
    name: String,
    /// host:port of the server.
    addr: String,
    user: String,
}

impl Database {
    async fn create() -> Option<Self> {
        let Ok(url) = std::env::var(TEST_URL_VAR) else {
            eprintln!("skipped: set {TEST_URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres to run the Postgres integration tests");
            return None;
        };
        let admin: tokio_postgres::Config = url.parse().unwrap();
        let host = match admin.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => panic!("{TEST_URL_VAR} must name a TCP host"),
        };
        let addr = format!("{host}:{}", admin.get_ports().first().copied().unwrap_or(5432));
        let user = admin.get_user().unwrap_or("postgres").to_owned();
        let name = unique_id("agentgate_it").to_ascii_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        run(&admin, &format!("CREATE DATABASE {name}")).await;
        Some(Self { admin, name, addr, user })
    }

    /// The configuration that points `agentgate` at this database through `addr` (the server or a proxy).
    fn store_toml(&self, addr: &str) -> String {
        format!(
            "\n[store]\nurl = \"postgres://{user}@{addr}/{db}?sslmode=disable\"\npassword = \"env:AGENTGATE_TEST_SECRET\"\npool_size = 4\n",
            user = self.user,
            db = self.name
        )
    }

    async fn drop_it(self) {
        run(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

async fn run(config: &tokio_postgres::Config, sql: &str) {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    drop(client);
    let _ = driver.await;
}

/// An `agentgate` command against the app's configuration (with the password's variable set).
fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).arg("--config").arg(&app.config).env("AGENTGATE_TEST_SECRET", PASSWORD).output().unwrap()
}

fn inbox_ids(app: &TestApp) -> Vec<String> {
    let out = cli(app, &["inbox", "--limit", "1000"]);
    assert!(out.status.success(), "inbox failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["activity_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A TCP proxy in front of the database that can be cut (every connection dropped, new ones refused) and
/// restored: the database going away and coming back, as seen from the gateway.
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (up, cut) = (Arc::new(AtomicBool::new(true)), Arc::new(Notify::new()));
        let (up2, cut2) = (Arc::clone(&up), Arc::clone(&cut));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let (target, cut) = (target.clone(), Arc::clone(&cut2));
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.notify_waiters();
        }
    }
}

#[tokio::test]
async fn the_gateway_on_postgres_commits_reads_back_and_deduplicates() {
    let Some(db) = Database::create().await else { return };
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.extra = db.store_toml(&db.addr);
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;

    // `migrate` finds the schema `serve` created.
    let out = cli(&app, &["migrate"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && said.contains(&format!("schema version {}", agentgate::store::postgres::SCHEMA_VERSION))
            && said.contains("postgres"),
        "{said}"
    );

    let id = unique_id("pg");
    let token = key.mint(&good_claims());
    assert_eq!(app.status(Some(&token), &message(&id)).await, 202);
    assert_eq!(inbox_ids(&app), vec![id.clone()], "committed to Postgres, read back by another process");
    // Teams redelivers: acknowledged, stored once.
    assert_eq!(app.status(Some(&token), &message(&id)).await, 202);
    assert_eq!(inbox_ids(&app).len(), 1);
    assert_eq!(app.metric("agentgate_requests_total{outcome=\"duplicate\"}").await, 1);
    // Nothing wrote the store's password (or the data dir's SQLite file: Postgres was used).
    assert!(!app.stderr().contains(PASSWORD));
    assert!(!app.dir.join("data/agentgate.db").exists());
    drop(app);
    db.drop_it().await;
}

// Multi-threaded: the proxy runs on this runtime, and the CLI read-back blocks one thread meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_readyz_fails_and_intake_answers_503_then_both_recover() {
    let Some(db) = Database::create().await else { return };
    let proxy = Proxy::start(db.addr.clone()).await;
    let key = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![key.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.extra = db.store_toml(&proxy.addr);
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    let token = key.mint(&good_claims());
    let readyz = async || app.client().get(format!("{}/readyz", app.url)).send().await.unwrap().status().as_u16();

    proxy.set_up(false);
    assert_eq!(readyz().await, 503);
    let lost = unique_id("down");
    assert_eq!(app.status(Some(&token), &message(&lost)).await, 503, "not acknowledged: Teams will redeliver");

    proxy.set_up(true);
    let mut ready = false;
    for _ in 0..100 {
        if readyz().await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readyz recovers by itself:\n{}", app.stderr());
    let back = unique_id("back");
    assert_eq!(app.status(Some(&token), &message(&back)).await, 202);
    assert_eq!(app.status(Some(&token), &message(&lost)).await, 202, "the redelivery is accepted now");
    let ids = inbox_ids(&app);
    assert!(ids.contains(&back) && ids.contains(&lost) && ids.len() == 2, "{ids:?}");
    drop(app);
    db.drop_it().await;
}
