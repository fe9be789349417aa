//! `agentgate agent-id provision | status | teardown` against the strict fake of Graph's Agent ID
//! endpoints and Entra's sign-in (`fake_graph_provision`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fake_graph_provision::{ADMIN_ID, AZURE_CLI, FakeProvisioning, Inject, PROVISIONER_APP, PUBLIC_CLIENT, TENANT};
use crate::helpers::bin;

const BOT: &str = "12345678-aaaa-4bbb-8ccc-123456789abc";

struct Setup {
    dir: tempfile::TempDir,
    fake: FakeProvisioning,
    config: PathBuf,
    original: String,
}

impl Setup {
    async fn new() -> Self {
        let fake = FakeProvisioning::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agentgate.toml");
        let original = format!(
            r#"# the operator's own comment, kept
data_dir = "{data}"

[[bots]]
app_id = "{BOT}"
display_name = "Helper" # named by the operator
allowed_tenants = ["{TENANT}"]
"#,
            data = dir.path().join("data").display(),
        );
        std::fs::write(&config, &original).unwrap();
        // The provisioner app's own certificate (client credentials).
        let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["provisioner".to_owned()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("prov.cert.pem"), cert.pem()).unwrap();
        write_private(&dir.path().join("prov.key.pem"), &key.serialize_pem());
        Self { dir, fake, config, original }
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("agent-user-12345678.key.pem")
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("agent-user-12345678.cert.pem")
    }

    /// `agent-id <cmd>` signed in as the provisioner app, plus `extra`.
    fn args(&self, cmd: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["agent-id".into(), cmd.into(), "--config".into(), self.config.display().to_string()];
        a.extend(
            [
                "--provisioner-app",
                PROVISIONER_APP,
                "--provisioner-cert",
                &format!("file:{}", self.dir.path().join("prov.cert.pem").display()),
                "--provisioner-key",
                &format!("file:{}", self.dir.path().join("prov.key.pem").display()),
            ]
            .map(str::to_owned),
        );
        a.extend(self.common());
        if cmd == "provision" {
            a.extend(["--sponsor".to_owned(), ADMIN_ID.to_owned()]);
        }
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    }

    fn common(&self) -> Vec<String> {
        vec![
            "--graph-base-url".into(),
            self.fake.graph_base(),
            "--authority".into(),
            self.fake.base.clone(),
            "--propagation-wait-ms".into(),
            "5".into(),
        ]
    }

    async fn run(&self, args: &[String]) -> (i32, String, String) {
        let out = tokio::process::Command::new(bin()).args(args).current_dir(self.dir.path()).output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn provision(&self, extra: &[&str]) -> (i32, String, String) {
        self.run(&self.args("provision", extra)).await
    }
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body = pem.split("-----BEGIN CERTIFICATE-----").nth(1).unwrap().split("-----END CERTIFICATE-----").next().unwrap();
    base64::engine::general_purpose::STANDARD.decode(body.chars().filter(|c| !c.is_whitespace()).collect::<String>()).unwrap()
}

fn posts(s: &[crate::fake_graph_provision::Seen]) -> usize {
    s.iter().filter(|r| r.method == "POST" || r.method == "PATCH").count()
}

#[tokio::test]
async fn provision_creates_each_object_once_waits_out_propagation_and_a_second_run_creates_nothing() {
    let t = Setup::new().await;
    t.fake.dir.lock().unwrap().propagation = 2;
    let (code, out, err) = t.provision(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(t.fake.count(), (1, 2, 1, 1), "one Blueprint, its principal, one Agent Identity, one Agent User, one grant");
    assert!(err.contains("does not see it yet"), "propagation waits are reported on stderr: {err}");
    assert!(out.contains("✓ 8/8") && out.contains("ready: Agent User agentgate-12345678@contoso.example"), "{out}");

    // Only the public certificate was uploaded; the key is on disk, 0600; no password anywhere.
    let seen = t.fake.seen();
    let patch = seen.iter().find(|r| r.method == "PATCH" && r.path.starts_with("applications/")).expect("the certificate upload");
    let uploaded = patch.body.as_ref().unwrap()["keyCredentials"][0]["key"].as_str().unwrap().to_owned();
    let cert = std::fs::read_to_string(t.cert_path()).unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(&uploaded).unwrap(), pem_der(&cert));
    let key_meta = std::fs::metadata(t.key_path()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_meta.permissions()) & 0o777, 0o600);
    assert!(std::fs::read_to_string(t.key_path()).unwrap().contains("PRIVATE KEY"));
    for r in &seen {
        let body = r.body.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(!body.contains("PRIVATE") && !body.contains("password") && !body.contains("secretText"), "{body}");
    }
    let grant = seen.iter().find(|r| r.method == "POST" && r.path == "oauth2PermissionGrants").unwrap().body.clone().unwrap();
    assert_eq!(grant["consentType"], "Principal");
    assert!(grant["startTime"].as_str().unwrap().ends_with('Z'));
    assert!(grant["scope"].as_str().unwrap().contains("ChatMessage.Send"));
    assert!(!grant["scope"].as_str().unwrap().contains("Mail."), "no mailbox permission without mail: {grant}");

    // The config now names the objects, the rest of the file as it was, and it validates.
    let text = std::fs::read_to_string(&t.config).unwrap();
    assert!(text.starts_with("# the operator's own comment, kept\n") && text.contains("# named by the operator"), "{text}");
    assert!(text.contains("[bots.agent_user]") && text.contains(&format!("key = \"file:{}\"", t.key_path().display())), "{text}");
    let check = tokio::process::Command::new(bin()).args(["check", "--config"]).arg(&t.config).output().await.unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("agent user:"));

    // A second run finds everything and creates or changes nothing.
    let before = t.fake.seen().len();
    let (code, out, err) = t.provision(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(t.fake.count(), (1, 2, 1, 1));
    assert_eq!(posts(&t.fake.seen()[before..]), 0, "no create or change on a re-run: {out}");
    assert_eq!(std::fs::read_to_string(&t.config).unwrap(), text);

    let (code, out, _) = t.run(&t.args("status", &[])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ready") && !out.contains("MISSING"), "{out}");
}

/// Least privilege: the mailbox's permissions (`Mail.ReadWrite`, `Mail.Send`) are granted only to an Agent User
/// with mail on (`--mail`, or `mail = true` in its `[bots.agent_user]`), and `--mail` turns mail on in the file.
#[tokio::test]
async fn the_mail_scopes_are_granted_only_when_mail_is_on() {
    let t = Setup::new().await;
    let (code, out, err) = t.provision(&["--mail"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let seen = t.fake.seen();
    let grant = seen.iter().find(|r| r.method == "POST" && r.path == "oauth2PermissionGrants").unwrap().body.clone().unwrap();
    let scopes: Vec<&str> = grant["scope"].as_str().unwrap().split(' ').collect();
    for s in ["Mail.ReadWrite", "Mail.Send", "ChatMessage.Send"] {
        assert!(scopes.contains(&s), "{s} missing: {scopes:?}");
    }
    let text = std::fs::read_to_string(&t.config).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(parsed["bots"][0]["agent_user"]["mail"].as_bool(), Some(true), "{text}");
    let check = tokio::process::Command::new(bin()).args(["check", "--config"]).arg(&t.config).output().await.unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("mail: on, through a read every 60 s") && said.contains("its sponsors and policy.contacts_allow"), "{said}");
    // A re-run reads mail = true from the file: the grant keeps the mail scopes (nothing to change).
    let before = t.fake.seen().len();
    let (code, out, _) = t.provision(&[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(posts(&t.fake.seen()[before..]), 0, "the mail scopes are still wanted: {out}");
}

#[tokio::test]
async fn a_failure_at_each_step_is_recorded_with_its_fix_and_the_next_run_resumes_without_duplicates() {
    let injections: [(&'static str, &str, u16, &'static str); 7] = [
        ("POST", "applications/microsoft.graph.agentIdentityBlueprint", 403, "Authorization_RequestDenied"),
        ("POST", "servicePrincipals/microsoft.graph.agentIdentityBlueprintPrincipal", 500, "InternalServerError"),
        ("PATCH", "applications/", 403, "Authorization_RequestDenied"),
        ("POST", "servicePrincipals/microsoft.graph.agentIdentity", 403, "Authorization_RequestDenied"),
        ("POST", "users/microsoft.graph.agentUser", 403, "Authorization_RequestDenied"),
        ("POST", "oauth2PermissionGrants", 403, "Authorization_RequestDenied"),
        ("PATCH", "users/", 403, "Authorization_RequestDenied"),
    ];
    let licence = ["--licence-sku", "c7df2760-2c81-4ef7-b578-5b5392b571df"];
    for step in 1..=8usize {
        let t = Setup::new().await;
        t.fake.dir.lock().unwrap().propagation = 1;
        if step <= 7 {
            let (method, prefix, status, code) = injections[step - 1];
            t.fake.inject(Inject { method, path_prefix: prefix.to_owned(), status, code, message: "injected failure" });
        } else {
            // Step 8 is local: the config file turns unreadable while the run is at its grant.
            let path = t.config.clone();
            let mut once = true;
            t.fake.hook("POST", "oauth2PermissionGrants", move || {
                if std::mem::take(&mut once) {
                    std::fs::write(&path, "[[bots]\nbroken").unwrap();
                }
            });
        }
        let (code, out, err) = t.provision(&licence).await;
        assert_eq!(code, 1, "step {step}: {out}\n{err}");
        assert!(out.contains(&format!("✗ {step}/8")) && out.contains("fix: "), "step {step}: {out}");
        if step == 8 {
            std::fs::write(&t.config, &t.original).unwrap();
        }
        let (code, status, _) = t.run(&t.args("status", &[])).await;
        assert_eq!(code, 1, "step {step}: {status}");
        assert!(status.contains(&format!("failed at step {step}")) && status.contains("fix: "), "step {step}: {status}");
        let (code, out, err) = t.provision(&licence).await;
        assert_eq!(code, 0, "step {step}, re-run: {out}\n{err}");
        assert!(out.contains("resuming: the last run failed at step"), "{out}");
        assert_eq!(t.fake.count(), (1, 2, 1, 1), "step {step}: no duplicate object");
        assert_eq!(t.fake.dir.lock().unwrap().licences.len(), 1, "step {step}");
        assert!(std::fs::read_to_string(&t.config).unwrap().contains("[bots.agent_user]"));
    }
}

#[tokio::test]
async fn a_run_killed_after_a_create_is_resumed_by_finding_the_object_again() {
    let t = Setup::new().await;
    t.fake.dir.lock().unwrap().slow = Some(("POST", "users/microsoft.graph.agentUser".into(), Duration::from_secs(30)));
    let mut child = tokio::process::Command::new(bin())
        .args(t.args("provision", &[]))
        .current_dir(t.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while t.fake.count().2 == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the Agent User was never created");
        assert!(child.try_wait().unwrap().is_none(), "provision ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Graph created the user, the answer never arrived: the process dies before saving its id.
    child.kill().await.unwrap();
    t.fake.dir.lock().unwrap().slow = None;
    let (_, status, _) = t.run(&t.args("status", &[])).await;
    assert!(status.contains("in progress (next: step 5)"), "{status}");
    let (code, out, err) = t.provision(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("✓ 5/8 Agent User: found"), "{out}");
    assert_eq!(t.fake.count(), (1, 2, 1, 1));
}

#[tokio::test]
async fn dry_run_prints_every_request_and_makes_none() {
    let t = Setup::new().await;
    let mut args: Vec<String> =
        vec!["agent-id".into(), "provision".into(), "--dry-run".into(), "--config".into(), t.config.display().to_string()];
    args.extend(t.common());
    let (code, out, err) = t.run(&args).await;
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "GET /v1.0/applications(uniqueName='agentgate-12345678-aaaa-4bbb-8ccc-123456789abc')",
        "POST /v1.0/applications/microsoft.graph.agentIdentityBlueprint",
        "POST /v1.0/servicePrincipals/microsoft.graph.agentIdentityBlueprintPrincipal",
        "PATCH /v1.0/applications/",
        "\"key\":\"<the certificate's public part, base64 DER>\"",
        "POST /v1.0/servicePrincipals/microsoft.graph.agentIdentity\n",
        "GET /v1.0/domains",
        "POST /v1.0/users/microsoft.graph.agentUser",
        "POST /v1.0/oauth2PermissionGrants",
        "\"consentType\":\"Principal\"",
        "# would write [bots.agent_user]",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    {
        let d = t.fake.dir.lock().unwrap();
        assert!(d.seen.is_empty() && d.token_requests.is_empty() && d.authorize_requests == 0, "a dry run sends nothing");
    }
    assert!(!t.key_path().exists() && !t.cert_path().exists(), "no key written");
    assert_eq!(std::fs::read_to_string(&t.config).unwrap(), t.original);
    assert!(!t.dir.path().join("data").exists(), "no store created");

    // After a real run, a teardown dry run lists the deletions and deletes nothing.
    let (code, ..) = t.provision(&[]).await;
    assert_eq!(code, 0);
    let before = t.fake.seen().len();
    let mut args: Vec<String> =
        vec!["agent-id".into(), "teardown".into(), "--dry-run".into(), "--config".into(), t.config.display().to_string()];
    args.extend(t.common());
    let (code, out, _) = t.run(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("DELETE /v1.0/users/") && out.contains("DELETE /v1.0/applications/"), "{out}");
    assert_eq!(t.fake.seen().len(), before);
    assert_eq!(t.fake.count(), (1, 2, 1, 1));
}

/// Start `provision` with the browser sign-in; returns the child and the authorize URL it printed.
async fn start_browser_sign_in(t: &Setup, client: &str) -> (tokio::process::Child, String, tokio::task::JoinHandle<String>) {
    let mut args: Vec<String> = vec!["agent-id".into(), "provision".into(), "--config".into(), t.config.display().to_string()];
    args.extend(["--client-id".to_owned(), client.to_owned()]);
    args.extend(t.common());
    let mut child = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(t.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("http://") && l.contains("/oauth2/v2.0/authorize?") {
                return l;
            }
        }
        panic!("no authorize URL printed");
    })
    .await
    .unwrap();
    let rest = tokio::spawn(async move {
        let mut s = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    (child, url, rest)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The browser: open the authorize URL, get the redirect to the loopback listener.
async fn authorize(url: &str) -> url::Url {
    let r = no_redirects().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302, "{}", r.text().await.unwrap());
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(to.host_str(), Some("127.0.0.1"));
    to
}

#[tokio::test]
async fn the_browser_sign_in_uses_pkce_on_a_loopback_redirect_end_to_end() {
    let t = Setup::new().await;
    let (child, url, rest) = start_browser_sign_in(&t, PUBLIC_CLIENT).await;
    let parsed = url::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["redirect_uri"].starts_with("http://127.0.0.1:") && !q["scope"].contains(".default"), "{url}");
    assert!(!q.contains_key("code_verifier"), "the verifier never goes to the browser");
    let back = authorize(&url).await;
    let r = no_redirects().get(back.as_str()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("Signed in"));
    let out = child.wait_with_output().await.unwrap();
    let err = rest.await.unwrap();
    assert!(out.status.success(), "{}\n{err}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("held in memory only"));
    let d = t.fake.dir.lock().unwrap();
    assert_eq!(
        d.token_requests,
        vec![("authorization_code".to_owned(), "issued".to_owned())],
        "the code was redeemed once, with the right verifier"
    );
    assert_eq!(d.count(), (1, 2, 1, 1));
    assert!(d.seen.iter().any(|s| s.path == "me"), "the signed-in administrator is the sponsor");
}

#[tokio::test]
async fn a_redirect_with_the_wrong_state_is_refused_and_no_code_is_redeemed() {
    let t = Setup::new().await;
    let (child, url, rest) = start_browser_sign_in(&t, PUBLIC_CLIENT).await;
    let back = authorize(&url).await;
    let mut forged = back.clone();
    let pairs: Vec<(String, String)> =
        back.query_pairs().into_owned().map(|(k, v)| if k == "state" { (k, format!("{v}x")) } else { (k, v) }).collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let r = no_redirects().get(forged.as_str()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let out = child.wait_with_output().await.unwrap();
    let err = rest.await.unwrap();
    assert!(!out.status.success());
    assert!(err.contains("`state` does not match"), "{err}");
    let d = t.fake.dir.lock().unwrap();
    assert!(d.token_requests.is_empty() && d.seen.is_empty(), "nothing redeemed, Graph never called");
}

#[tokio::test]
async fn a_redirect_that_is_not_loopback_is_refused_before_anything_is_sent() {
    let t = Setup::new().await;
    for bad in ["http://localhost:8400/", "http://192.0.2.10:8400/", "https://127.0.0.1:8400/"] {
        let mut args: Vec<String> = vec!["agent-id".into(), "provision".into(), "--config".into(), t.config.display().to_string()];
        args.extend(["--client-id".to_owned(), PUBLIC_CLIENT.to_owned(), "--redirect-uri".to_owned(), bad.to_owned()]);
        args.extend(t.common());
        let (code, _, err) = t.run(&args).await;
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("loopback"), "{err}");
    }
    assert_eq!(t.fake.dir.lock().unwrap().authorize_requests, 0);
}

#[tokio::test]
async fn a_token_carrying_directory_access_as_user_all_is_refused_with_the_reason() {
    let t = Setup::new().await;
    let (child, url, rest) = start_browser_sign_in(&t, AZURE_CLI).await;
    let back = authorize(&url).await;
    let _ = no_redirects().get(back.as_str()).send().await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let err = rest.await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("Directory.AccessAsUser.All") && err.contains("Azure CLI") && err.contains("reject"), "{err}");
    assert!(t.fake.seen().is_empty(), "Graph never saw the token");
}

#[tokio::test]
async fn status_shows_drift_provision_repairs_it_and_teardown_removes_everything() {
    let t = Setup::new().await;
    let (code, ..) = t.provision(&[]).await;
    assert_eq!(code, 0);
    let old_user = {
        let mut d = t.fake.dir.lock().unwrap();
        let id = d.users[0]["id"].as_str().unwrap().to_owned();
        d.users.clear();
        d.grants.clear();
        id
    };
    let (code, out, _) = t.run(&t.args("status", &[])).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&old_user) && out.contains("MISSING: deleted in the tenant") && out.contains("drift:"), "{out}");
    let (code, out, err) = t.provision(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("gone: looking it up again") && out.contains("✓ 5/8 Agent User: created"), "{out}");
    assert_eq!(t.fake.count(), (1, 2, 1, 1));

    let (code, out, err) = t.run(&t.args("teardown", &[])).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(t.fake.count(), (0, 0, 0, 0), "{out}");
    let text = std::fs::read_to_string(&t.config).unwrap();
    assert!(!text.contains("agent_user") && text.contains("# named by the operator"), "{text}");
    assert!(!t.key_path().exists() && !t.cert_path().exists());
    let (code, out, _) = t.run(&t.args("teardown", &[])).await;
    assert_eq!(code, 0);
    assert!(out.contains("nothing to tear down"), "{out}");
}

#[tokio::test]
async fn device_code_is_an_explicit_fallback_that_polls_until_signed_in() {
    let t = Setup::new().await;
    let mut args: Vec<String> = vec!["agent-id".into(), "provision".into(), "--config".into(), t.config.display().to_string()];
    args.extend(["--client-id".to_owned(), PUBLIC_CLIENT.to_owned(), "--device-code".to_owned()]);
    args.extend(t.common());
    let (code, out, err) = t.run(&args).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("enter the code ABCD-EFGH") && err.contains("can be phished"), "{err}");
    let d = t.fake.dir.lock().unwrap();
    let grant = "urn:ietf:params:oauth:grant-type:device_code".to_owned();
    assert_eq!(d.token_requests, vec![(grant.clone(), "pending".to_owned()), (grant, "issued".to_owned())]);
    assert_eq!(d.authorize_requests, 0, "no browser flow");
    assert_eq!(d.count(), (1, 2, 1, 1));
}

#[tokio::test]
async fn the_grant_asks_for_the_calendar_only_once_the_calendar_area_is_on() {
    let t = Setup::new().await;
    let (code, out, err) = t.provision(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let seen = t.fake.seen();
    let grant = seen.iter().find(|r| r.method == "POST" && r.path == "oauth2PermissionGrants").unwrap().body.clone().unwrap();
    assert!(!grant["scope"].as_str().unwrap().contains("Calendars"), "a disabled area's permission was asked for: {grant}");

    // The operator turns the calendar on and runs provision again: the grant gains its scope, nothing else.
    let text = std::fs::read_to_string(&t.config).unwrap();
    std::fs::write(&t.config, text.replacen("[bots.agent_user]\n", "[bots.agent_user]\ncalendar = true\n", 1)).unwrap();
    let before = t.fake.seen().len();
    let (code, out, err) = t.provision(&[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let seen = t.fake.seen();
    let patch =
        seen[before..].iter().find(|r| r.method == "PATCH" && r.path.starts_with("oauth2PermissionGrants/")).expect("the grant is widened");
    let scope = patch.body.as_ref().unwrap()["scope"].as_str().unwrap().to_owned();
    assert!(scope.split(' ').any(|s| s == "Calendars.ReadWrite") && scope.contains("ChatMessage.Send"), "{scope}");
    assert_eq!(posts(&seen[before..]), 1, "only the grant changes: {out}");
}
