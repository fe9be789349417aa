//! `agentgate token graph|agentic|bot` against the fake Entra chain: claims printed, the token only with
//! `--show-token`, and failures that name the hop and the fix.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::fake_entra::{FakeApp, FakeEntra, Injected, test_cert};
use crate::fake_entra_agent::*;
use crate::helpers::{APP_ID, TENANT, bin};

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A config with one bot whose Agent User uses the fake at `authority`; `extra` goes into the bot table.
fn config(dir: &Path, authority: &str, extra: &str) -> PathBuf {
    let cert = test_cert(1);
    let key = write(dir, "blueprint.key", &cert.key_pem, 0o600);
    let crt = write(dir, "blueprint.crt", &cert.cert_pem, 0o644);
    let text = format!(
        "[clouds.public]\nopenid_metadata_url = \"https://login.botframework.com/v1/.well-known/openidconfiguration\"\ntoken_authority = \"{authority}\"\n\n\
         [[bots]]\napp_id = \"{APP_ID}\"\nallowed_tenants = [\"{TENANT}\"]\n{extra}\n\n\
         [bots.agent_user]\ntenant_id = \"{AGENT_TENANT}\"\nblueprint_app_id = \"{BLUEPRINT_ID}\"\nagent_identity_id = \"{IDENTITY_ID}\"\nagent_user_id = \"{AGENT_USER_OID}\"\ncertificate = \"file:{}\"\nkey = \"file:{}\"\n",
        crt.display(),
        key.display()
    );
    write(dir, "agentgate.toml", &text, 0o644)
}

/// Run the real binary off the async runtime (the fakes keep serving meanwhile).
async fn run(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(bin()).args(&args).env_remove("AGENTGATE_CONFIG").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap()
}

fn args(kind: &str, cfg: &Path, more: &[&str]) -> Vec<String> {
    let mut v = vec!["token".to_owned(), kind.to_owned(), "--config".to_owned(), cfg.display().to_string()];
    v.extend(more.iter().map(|s| (*s).to_owned()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_graph_prints_claims_but_not_the_token_unless_asked() {
    let fake = FakeEntraAgent::start(test_cert(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.authority(), "");

    let (ok, out, err) = run(args("graph", &cfg, &[])).await;
    assert!(ok, "{out}{err}");
    assert_eq!(fake.hop_requests(), [1, 1, 1]);
    assert!(out.contains("aud (audience): https://graph.microsoft.com\n"), "{out}");
    assert!(out.contains(&format!("oid (object id): {AGENT_USER_OID}")), "{out}");
    assert!(out.contains(&format!("tid (tenant): {AGENT_TENANT}")), "{out}");
    assert!(out.contains("idtyp (identity type): user"), "{out}");
    assert!(out.contains("scp (delegated scopes): Chat.Create"), "{out}");
    assert!(out.contains("exp (expires): ") && out.contains(" GMT (in 59 min)"), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
    for t in fake.issued() {
        assert!(!out.contains(&t.token) && !err.contains(&t.token), "a token was printed");
    }

    let (ok, out, _) = run(args("graph", &cfg, &["--show-token", "--bot", APP_ID])).await;
    assert!(ok);
    let t3 = fake.issued().into_iter().rfind(|t| t.hop == FakeHop::Three).unwrap();
    assert!(out.contains(&format!("token: {}", t3.token)), "{out}");
    assert!(fake.issued().iter().filter(|t| t.hop != FakeHop::Three).all(|t| !out.contains(&t.token)), "T1/T2 never printed");

    let (ok, out, _) = run(args("agentic", &cfg, &[])).await;
    assert!(ok);
    assert!(out.contains("aud (audience): 5a807f24-c9de-44ee-a3a7-329e88a00ffc\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hop_is_named_with_its_fix_and_no_token() {
    let fake = FakeEntraAgent::start(test_cert(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.authority(), "");
    fake.inject(
        FakeHop::Two,
        [Injected::Error {
            status: 400,
            error: "invalid_request".into(),
            code: 700211,
            description: "AADSTS700211: No matching federated identity record found for presented assertion issuer.".into(),
        }],
    );
    let (ok, out, err) = run(args("graph", &cfg, &["--show-token"])).await;
    assert!(!ok, "{out}");
    assert!(err.contains("hop 2 (Agent Identity → T2) failed") && err.contains("AADSTS700211"), "{err}");
    assert!(err.contains("fix:") && err.contains("agent_identity_id"), "{err}");
    assert_eq!(err.matches("AADSTS700211").count(), 1, "said once: {err}");
    for t in fake.issued() {
        assert!(!out.contains(&t.token) && !err.contains(&t.token));
    }

    // A key file others can read is refused, naming the field.
    std::fs::set_permissions(dir.path().join("blueprint.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = run(args("graph", &cfg, &[])).await;
    assert!(!ok);
    assert!(err.contains("bots[0].agent_user.key") && err.contains("chmod 600"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bot_uses_the_bots_own_credential_and_missing_agent_user_is_explained() {
    let fake = FakeEntra::start(vec![FakeApp::with_secret(APP_ID, TENANT, "bot-secret-value-123")]).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "bot.secret", "bot-secret-value-123\n", 0o600);
    let text = format!(
        "[clouds.public]\nopenid_metadata_url = \"https://login.botframework.com/v1/.well-known/openidconfiguration\"\ntoken_authority = \"{}\"\n\n[[bots]]\napp_id = \"{APP_ID}\"\nallowed_tenants = [\"{TENANT}\"]\ntenant_id = \"{TENANT}\"\ncredential = \"file:{}\"\n",
        fake.authority(),
        secret.display()
    );
    let cfg = write(dir.path(), "bot.toml", &text, 0o644);
    let (ok, out, err) = run(args("bot", &cfg, &[])).await;
    assert!(ok, "{out}{err}");
    assert_eq!(fake.issued(), 1);
    assert!(out.contains("https://api.botframework.com/.default") && out.contains("not a JWT"), "{out}");
    assert!(!out.contains(&fake.issued_tokens()[0].token) && !out.contains("bot-secret-value-123"), "{out}");

    let (ok, _, err) = run(args("graph", &cfg, &[])).await;
    assert!(!ok);
    assert!(err.contains("`bots[0].agent_user` is not set"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_chain_and_names_the_failing_hop() {
    let fake = FakeEntraAgent::start(test_cert(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake.authority(), "");
    // Keep doctor's key check on loopback (it fails there; only the chain line matters here).
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("https://login.botframework.com/v1/.well-known/openidconfiguration", &format!("{}/meta", fake.authority()));
    std::fs::write(&cfg, text).unwrap();

    let (_, out, err) = run(vec!["doctor".into(), "--config".into(), cfg.display().to_string()]).await;
    let line = out.lines().find(|l| l.contains("three-hop Agent User chain")).unwrap_or_else(|| panic!("{out}{err}"));
    assert!(line.starts_with('✓') && line.contains(AGENT_USER_OID), "{line}");
    assert_eq!(fake.hop_requests(), [1, 1, 1]);

    fake.inject(FakeHop::One, [Injected::aadsts(400, 700016)]);
    let (ok, out, err) = run(vec!["doctor".into(), "--config".into(), cfg.display().to_string()]).await;
    assert!(!ok);
    let line = out.lines().find(|l| l.contains("three-hop Agent User chain")).unwrap_or_else(|| panic!("{out}{err}"));
    assert!(line.starts_with('✗') && line.contains("hop 1 (Blueprint → T1) failed") && line.contains("blueprint_app_id"), "{line}");
    for t in fake.issued() {
        assert!(!out.contains(&t.token) && !err.contains(&t.token));
    }
}
