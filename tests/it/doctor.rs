//! `agentgate doctor` against the local fakes: all ✓, then each failure mode gives its ✗ with a fix.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fake_entra::{FakeApp, FakeEntra, Injected};
use crate::helpers::*;

const SECRET: &str = "doctor-s3cr3t-value-never-printed";
const OTHER_SECRET: &str = "doctor-other-s3cr3t-never-printed";
const OTHER_VAR: &str = "AGENTGATE_TEST_SECRET_OTHER";

/// A config file for both test bots, each with a client secret; bots use the legacy tenant.
fn config(opts: &Options) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("agentgate.toml");
    let text = opts.toml(&dir.join("data")).replace(
        &format!("allowed_tenants = [\"{OTHER_TENANT}\"]\n"),
        &format!("allowed_tenants = [\"{OTHER_TENANT}\"]\ncredential = \"env:{OTHER_VAR}\"\n"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn line(&self, mark: &str, contains: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(mark) && l.contains(contains))
            .unwrap_or_else(|| panic!("no `{mark}` line with `{contains}` in:\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    fn assert_no_secrets(&self, entra: &FakeEntra) {
        let all = format!("{}{}", self.stdout, self.stderr);
        assert!(!all.contains(SECRET) && !all.contains(OTHER_SECRET), "a secret was printed:\n{all}");
        for t in entra.issued_tokens() {
            assert!(!all.contains(&t.token), "a token was printed:\n{all}");
        }
    }
}

/// Run `agentgate doctor` (off the runtime, so the fakes keep serving).
async fn doctor(config: &Path, secret: Option<&str>) -> Run {
    let (config, secret) = (config.to_owned(), secret.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(bin());
        cmd.arg("doctor").arg("--config").arg(&config).env_remove("AGENTGATE_CONFIG").env(OTHER_VAR, OTHER_SECRET);
        match secret {
            Some(s) => cmd.env("AGENTGATE_TEST_SECRET", s),
            None => cmd.env_remove("AGENTGATE_TEST_SECRET"),
        };
        let out = cmd.output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

async fn fakes() -> (FakeOidc, FakeEntra, Options) {
    let oidc = FakeOidc::start(vec![TestKey::teams("k1", 0)]).await;
    let entra = FakeEntra::start(vec![
        FakeApp::with_secret(APP_ID, crate::fake_entra::BOTFRAMEWORK_TENANT, SECRET),
        FakeApp::with_secret(OTHER_APP_ID, crate::fake_entra::BOTFRAMEWORK_TENANT, OTHER_SECRET),
    ])
    .await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.credential = true;
    opts.token_authority = entra.authority();
    (oidc, entra, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_checks_pass_against_the_fakes() {
    let (_oidc, entra, opts) = fakes().await;
    let run = doctor(&config(&opts), Some(SECRET)).await;
    assert_eq!(run.code, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(!run.stdout.lines().any(|l| l.starts_with('✗')), "{}", run.stdout);
    run.line("✓", "configuration valid");
    run.line("–", "TLS certificate and key: skipped");
    run.line("✓", "cloud public: OpenID metadata and signing keys");
    for app in [APP_ID, OTHER_APP_ID] {
        assert!(run.stdout.lines().any(|l| l.starts_with('✓') && l.contains(app) && l.contains("credential readable: secret (env:")));
        assert!(run.stdout.lines().any(|l| l.starts_with('✓') && l.contains(app) && l.contains("bot token acquisition")));
        assert!(run.stdout.lines().any(|l| l.starts_with('✓') && l.contains(app) && l.contains("Teams app package valid")));
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with('–') && l.contains(app) && l.contains("three-hop") && l.contains("no [bots.agent_user] table"))
        );
    }
    run.line("✓", &format!("tenant {TENANT}"));
    run.line("✓", &format!("tenant {OTHER_TENANT}"));
    assert_eq!(entra.issued(), 2, "one token per bot");
    run.assert_no_secrets(&entra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_fails_with_the_field_and_a_fix() {
    let (_oidc, entra, opts) = fakes().await;
    let run = doctor(&config(&opts), None).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("✗", "credential readable");
    assert!(line.contains(APP_ID) && line.contains("`bots[0].credential`"), "{line}");
    assert!(line.contains("AGENTGATE_TEST_SECRET") && line.contains("not set") && line.contains("— fix: "), "{line}");
    let skipped = run.line("–", "bot token acquisition");
    assert!(skipped.contains(APP_ID) && skipped.contains("could not be loaded"), "{skipped}");
    // The other bot is unaffected.
    assert!(run.stdout.lines().any(|l| l.starts_with('✓') && l.contains(OTHER_APP_ID) && l.contains("bot token acquisition")));
    run.assert_no_secrets(&entra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_metadata_fails_with_a_fix() {
    let (oidc, entra, opts) = fakes().await;
    oidc.set_down(true);
    let run = doctor(&config(&opts), Some(SECRET)).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("✗", "OpenID metadata and signing keys");
    assert!(line.contains("503") && line.contains("— fix: ") && line.contains("clouds.public.openid_metadata_url"), "{line}");

    // Nothing listening at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut o = opts.clone();
    o.metadata_url = format!("http://127.0.0.1:{port}/v1/.well-known/openidconfiguration");
    let run = doctor(&config(&o), Some(SECRET)).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("✗", "OpenID metadata and signing keys");
    assert!(line.contains(&format!("127.0.0.1:{port}")) && line.contains("— fix: "), "{line}");
    run.assert_no_secrets(&entra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_names_the_aadsts_code_and_hint() {
    let (_oidc, entra, opts) = fakes().await;
    entra.inject([Injected::aadsts(401, 7000215)]);
    let run = doctor(&config(&opts), Some(SECRET)).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let line = run.line("✗", "bot token acquisition");
    assert!(line.contains(APP_ID), "the first bot asks first: {line}");
    assert!(line.contains("AADSTS7000215") && line.contains("invalid_client"), "{line}");
    assert!(line.contains("— fix: invalid client secret") && line.contains("Secret ID"), "{line}");
    run.assert_no_secrets(&entra);
}
