//! Checks of the deployment recipes in `deploy/`: the provisioning script's `--dry-run` output and input
//! validation, the systemd unit's hardening, the Kubernetes manifests' required keys, the Dockerfile and
//! Caddyfile essentials. Needs only `bash`; no az, docker, caddy or shellcheck.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const ENDPOINT: &str = "https://bot.example.com/api/messages";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// bash by absolute path: the child's PATH is emptied, so no az or openssl can be found.
fn bash() -> PathBuf {
    std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|dir| dir.join("bash")).find(|p| p.is_file()).expect("bash on PATH")
}

fn provision(args: &[&str]) -> Output {
    Command::new(bash()).arg(repo("deploy/azure/provision.sh")).args(args).env("PATH", "/nonexistent").output().expect("bash runs")
}

fn base_args() -> Vec<&'static str> {
    vec![
        "--dry-run",
        "--name",
        "my-agent",
        "--resource-group",
        "rg-agent",
        "--location",
        "westeurope",
        "--endpoint",
        ENDPOINT,
        "--tenant-id",
        TENANT,
    ]
}

/// The `+ `-prefixed command lines of a dry run.
fn commands(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("+ ")).map(str::to_owned).collect()
}

fn find<'a>(cmds: &'a [String], prefix: &str) -> &'a str {
    cmds.iter().find(|c| c.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` command in {cmds:#?}"))
}

#[test]
fn dry_run_prints_every_provisioning_command_and_runs_none() {
    let out = provision(&base_args());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dry run failed without az installed: {stderr}");
    let cmds = commands(&out);

    let app = find(&cmds, "az ad app create ");
    assert!(app.contains("--sign-in-audience AzureADMyOrg"), "not single-tenant: {app}");
    assert!(app.contains("--display-name my-agent"), "{app}");
    find(&cmds, "az ad sp create --id APP_ID");

    // Without --cert a self-signed certificate is made with openssl, then uploaded.
    let openssl = find(&cmds, "openssl req -x509 ");
    assert!(openssl.contains("-keyout my-agent-key.pem") && openssl.contains("-out my-agent-cert.pem"), "{openssl}");
    let cred = find(&cmds, "az ad app credential reset ");
    assert!(cred.contains("--id APP_ID") && cred.contains("--cert @my-agent-cert.pem") && cred.contains("--append"), "{cred}");

    let bot = find(&cmds, "az bot create ");
    for part in [
        "--app-type SingleTenant",
        "--appid APP_ID",
        &format!("--tenant-id {TENANT}"),
        &format!("--endpoint {ENDPOINT}"),
        "--resource-group rg-agent",
        "--name my-agent",
    ] {
        assert!(bot.contains(part), "`{part}` missing from {bot}");
    }
    let teams = find(&cmds, "az bot msteams create ");
    assert!(teams.contains("--name my-agent") && teams.contains("--resource-group rg-agent"), "{teams}");
    let update = find(&cmds, "az bot update ");
    assert!(update.contains(&format!("--endpoint {ENDPOINT}")), "{update}");

    // Order: the app exists before its credential and the bot; the channel comes last.
    let pos = |p: &str| cmds.iter().position(|c| c.starts_with(p)).unwrap();
    assert!(pos("az ad app create ") < pos("az ad app credential reset "));
    assert!(pos("az ad app credential reset ") < pos("az bot create "));
    assert!(pos("az bot create ") < pos("az bot msteams create "));

    // The [[bots]] snippet to paste into agentgate.toml.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let snippet = &stdout[stdout.find("[[bots]]").expect("no [[bots]] snippet")..];
    for line in [
        "app_id = \"APP_ID\"",
        &format!("allowed_tenants = [\"{TENANT}\"]"),
        &format!("tenant_id = \"{TENANT}\""),
        "certificate = \"file:",
        "credential = \"file:",
    ] {
        assert!(snippet.contains(line), "`{line}` missing from snippet:\n{snippet}");
    }
}

#[test]
fn dry_run_with_cert_uploads_that_certificate_and_makes_none() {
    let mut args = base_args();
    args.extend(["--cert", "/etc/agentgate/existing-cert.pem"]);
    let out = provision(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cmds = commands(&out);
    assert!(!cmds.iter().any(|c| c.starts_with("openssl")), "openssl run although --cert was given: {cmds:#?}");
    let cred = find(&cmds, "az ad app credential reset ");
    assert!(cred.contains("--cert @/etc/agentgate/existing-cert.pem"), "{cred}");
}

fn assert_refused(args: &[&str], message: &str) {
    let out = provision(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains(message), "stderr for {args:?} lacks `{message}`: {stderr}");
    assert!(commands(&out).is_empty(), "commands printed before validation failed: {:?}", commands(&out));
}

fn with(replace: &str, value: &'static str) -> Vec<&'static str> {
    let mut args = base_args();
    let i = args.iter().position(|a| *a == replace).unwrap();
    args[i + 1] = value;
    args
}

#[test]
fn invalid_input_is_refused_with_a_clear_message() {
    assert_refused(&with("--endpoint", "http://bot.example.com/api/messages"), "must start with https://");
    assert_refused(&with("--endpoint", "https://bot.example.com/messages"), "must end with /api/messages");
    assert_refused(&with("--tenant-id", "contoso"), "is not a GUID");
    assert_refused(&with("--name", "a b"), "--name 'a b'");

    let mut no_tenant = base_args();
    let i = no_tenant.iter().position(|a| *a == "--tenant-id").unwrap();
    no_tenant.drain(i..i + 2);
    assert_refused(&no_tenant, "--tenant-id is required");

    let mut unknown = base_args();
    unknown.push("--bogus");
    assert_refused(&unknown, "unknown argument '--bogus'");
}

#[test]
fn without_dry_run_a_missing_az_is_reported() {
    let args: Vec<&str> = base_args().into_iter().filter(|a| *a != "--dry-run").collect();
    assert_refused(&args, "'az' is not on PATH");
}

#[test]
fn help_describes_every_flag() {
    let out = provision(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--name", "--resource-group", "--location", "--endpoint", "--tenant-id", "--cert", "--dry-run"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// `Key=value` lines of a unit file, comments skipped.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn systemd_unit_is_hardened_and_loads_the_credential() {
    let unit = read("deploy/systemd/agentgate.service");
    let d = directives(&unit);
    let get = |key: &str| d.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    let has = |key: &str, value: &str| {
        assert!(get(key).contains(&value), "{key}={value} missing; {key} is {:?}", get(key));
    };
    has("LoadCredential", "bot-secret:/etc/agentgate/bot-secret");
    has("ExecStart", "/usr/local/bin/agentgate serve --config /etc/agentgate/agentgate.toml");
    has("StateDirectory", "agentgate");
    has("NoNewPrivileges", "yes");
    has("ProtectSystem", "strict");
    has("ProtectHome", "yes");
    has("PrivateTmp", "yes");
    has("PrivateDevices", "yes");
    has("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX");
    has("SystemCallFilter", "@system-service");
    has("CapabilityBoundingSet", "");
    has("Restart", "on-failure");
    assert!(!get("MemoryMax").is_empty(), "MemoryMax missing");
    assert!(get("AmbientCapabilities").iter().all(|v| v.is_empty()), "ambient capabilities granted");
    assert!(get("User").iter().all(|u| *u != "root"), "runs as root");

    // TimeoutStopSec must exceed the default server.shutdown_grace_secs (20 s in src/starter.toml).
    let grace: u64 = read("src/starter.toml")
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_grace_secs")?.split('=').nth(1)?.split('#').next()?.trim().parse().ok())
        .expect("shutdown_grace_secs in starter.toml");
    let stop: u64 = get("TimeoutStopSec").first().expect("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > grace, "TimeoutStopSec={stop} is not above shutdown_grace_secs={grace}");
}

/// The YAML documents of a file (split on `---` lines), each as its lines.
fn documents(path: &str) -> Vec<String> {
    read(path).split("\n---\n").map(str::to_owned).filter(|d| d.contains("kind:")).collect()
}

fn top_level(doc: &str, key: &str) -> Option<String> {
    doc.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

/// The value of the first `key:` line (any indentation) after the line containing `anchor`.
fn value_after(doc: &str, anchor: &str, key: &str) -> Option<String> {
    let start = doc.find(anchor)?;
    doc[start..].lines().skip(1).find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

#[test]
fn kubernetes_manifests_have_the_required_keys() {
    let dir = "deploy/kubernetes";
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(repo(dir)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        for doc in documents(&format!("{dir}/{name}")) {
            assert!(!doc.contains('\t'), "{name}: tab in YAML");
            let api = top_level(&doc, "apiVersion").unwrap_or_else(|| panic!("{name}: no apiVersion"));
            let kind = top_level(&doc, "kind").unwrap_or_else(|| panic!("{name}: no kind"));
            assert!(doc.contains("metadata:\n  name: "), "{name}: {kind} has no metadata.name");
            assert!(!doc.lines().any(|l| l.starts_with("  namespace:")), "{name}: hard-coded namespace");
            kinds.push((kind, api));
        }
    }
    for (kind, api) in
        [("Deployment", "apps/v1"), ("Service", "v1"), ("PodDisruptionBudget", "policy/v1"), ("ConfigMap", "v1"), ("Secret", "v1")]
    {
        assert!(kinds.contains(&(kind.to_owned(), api.to_owned())), "no {kind} ({api}) in {kinds:?}");
    }

    let deployment = read("deploy/kubernetes/deployment.yaml");
    assert_eq!(value_after(&deployment, "readinessProbe:", "path").as_deref(), Some("/readyz"));
    assert_eq!(value_after(&deployment, "livenessProbe:", "path").as_deref(), Some("/healthz"));
    assert_eq!(value_after(&deployment, "spec:", "replicas").as_deref(), Some("2"));
    assert_eq!(value_after(&deployment, "securityContext:", "runAsNonRoot").as_deref(), Some("true"));
    assert_eq!(value_after(&deployment, "allowPrivilegeEscalation", "readOnlyRootFilesystem").as_deref(), Some("true"));
    assert!(value_after(&deployment, "resources:", "memory").is_some(), "no resources");
    // Secrets as files, read as credential:NAME from $CREDENTIALS_DIRECTORY.
    assert_eq!(value_after(&deployment, "name: CREDENTIALS_DIRECTORY", "value").as_deref(), Some("/run/agentgate/credentials"));
    assert_eq!(value_after(&deployment, "- name: credentials", "mountPath").as_deref(), Some("/run/agentgate/credentials"));
    assert_eq!(value_after(&deployment, "secret:", "secretName").as_deref(), Some("agentgate-credentials"));
    assert!(read("deploy/kubernetes/configmap.yaml").contains("credential = \"credential:bot-secret\""));
    assert!(read("deploy/kubernetes/secret.example.yaml").contains("  bot-secret: "));

    let pdb = read("deploy/kubernetes/pdb.yaml");
    assert!(value_after(&pdb, "spec:", "minAvailable").is_some() || value_after(&pdb, "spec:", "maxUnavailable").is_some());

    let readme = read("deploy/kubernetes/README.md");
    assert!(readme.contains("SQLite") && readme.contains("Postgres"), "the per-pod store note is missing");
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_health_check() {
    let df = read("deploy/Dockerfile");
    let instr: Vec<&str> = df.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert!(instr.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "not multi-stage");
    assert!(instr.iter().any(|l| l.starts_with("COPY --from=")), "nothing copied from the build stage");
    let user = instr.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("no USER");
    assert!(!user.starts_with("root") && !user.starts_with('0'), "runs as {user}");
    assert!(instr.contains(&"EXPOSE 3978"));
    assert!(instr.iter().any(|l| l.starts_with("HEALTHCHECK ")), "no HEALTHCHECK");
    assert!(df.contains("/healthz"));
    assert!(instr.contains(&r#"CMD ["serve", "--config", "/etc/agentgate/agentgate.toml"]"#));
}

#[test]
fn caddyfile_proxies_the_public_routes_only() {
    let caddy = read("deploy/Caddyfile");
    let matcher = caddy.lines().map(str::trim).find(|l| l.starts_with("@public path ")).expect("no @public matcher");
    let paths: Vec<&str> = matcher.split_whitespace().skip(2).collect();
    assert_eq!(paths, ["/api/messages", "/healthz", "/readyz"]);
    assert!(caddy.contains("reverse_proxy 127.0.0.1:3978"));
    assert!(caddy.lines().all(|l| l.trim_start().starts_with('#') || !l.contains("/metrics")), "/metrics is proxied");
}

/// The block under the mapping key `path` (e.g. `["services", "caddy", "depends_on"]`) of a block-style YAML
/// file: the lines after `key:` that are indented deeper than it, up to the next line at its depth or
/// shallower. Comments and blank lines are dropped. None when a key on the path is missing.
fn yaml_block(text: &str, path: &[&str]) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let (mut from, mut to, mut depth) = (0, lines.len(), None::<usize>);
    for key in path {
        let found = (from..to).find(|&i| {
            let l = lines[i];
            depth.is_none_or(|d| indent(l) > d)
                && (from..i).all(|j| depth.is_none_or(|d| indent(lines[j]) > d) && indent(lines[j]) >= indent(l))
                && l.trim_start().strip_prefix(key).is_some_and(|r| r.starts_with(':'))
        })?;
        let d = indent(lines[found]);
        let end = (found + 1..to).find(|&i| indent(lines[i]) <= d).unwrap_or(to);
        (from, to, depth) = (found + 1, end, Some(d));
    }
    Some(lines[from..to].join("\n"))
}

/// The value of the first `key:` line of `block` (any indentation).
fn value_in(block: &str, key: &str) -> Option<String> {
    block.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

/// The keys directly under `path` (one indentation level deeper).
fn yaml_keys(text: &str, path: &[&str]) -> Vec<String> {
    let block = yaml_block(text, path).unwrap_or_else(|| panic!("no {path:?}"));
    let depth = block.lines().map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    block
        .lines()
        .filter(|l| l.len() - l.trim_start().len() == depth && !l.trim_start().starts_with('-'))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.to_owned()))
        .collect()
}

/// `agentgate check --config FILE` with nothing from the caller's environment.
fn agentgate_check(file: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentgate")).args(["check", "--config"]).arg(file).env_clear().output().expect("agentgate runs")
}

#[test]
fn yaml_block_follows_indentation() {
    let y = "a:\n  b:\n    c: 1\n  d:\n    c: 2\n    e:\n      - x\ntop: 3\n";
    assert_eq!(yaml_block(y, &["a", "d", "c"]).as_deref(), Some(""));
    assert_eq!(yaml_keys(y, &["a"]), ["b", "d"]);
    assert_eq!(yaml_keys(y, &["a", "d"]), ["c", "e"]);
    assert_eq!(yaml_block(y, &["a", "d", "e"]).as_deref(), Some("      - x"));
    assert!(yaml_block(y, &["a", "c"]).is_none(), "c is not directly under a");
    assert!(yaml_block(y, &["top", "a"]).is_none());
}

#[test]
fn compose_runs_two_replicas_on_postgres_behind_caddy() {
    let file = "deploy/compose/docker-compose.yml";
    let compose = read(file);
    assert!(!compose.contains('\t'), "{file}: tab in YAML");
    let mut services = yaml_keys(&compose, &["services"]);
    services.sort();
    assert_eq!(services, ["agentgate-1", "agentgate-2", "caddy", "migrate", "postgres"]);
    let service = |name: &str| yaml_block(&compose, &["services", name]).unwrap();
    let get = |path: &[&str]| yaml_block(&compose, path).unwrap_or_else(|| panic!("{file}: no {path:?}"));
    let after = |path: &[&str], key: &str| value_in(&get(path), key);

    // Postgres first, healthy when pg_isready answers; the password comes from a secret file.
    assert!(get(&["services", "postgres", "healthcheck"]).contains("pg_isready"));
    assert!(service("postgres").contains("POSTGRES_PASSWORD_FILE: /run/secrets/pgpassword"));
    // The one-shot migration runs once Postgres is healthy.
    assert!(service("migrate").contains(r#"command: ["migrate", "--config", "/etc/agentgate/agentgate.toml"]"#));
    assert_eq!(after(&["services", "migrate"], "restart").as_deref(), Some(r#""no""#));
    assert_eq!(after(&["services", "migrate", "depends_on", "postgres"], "condition").as_deref(), Some("service_healthy"));
    // Both replicas serve on the shared configuration, only after the migration succeeded, healthy on /readyz.
    let anchor = get(&["x-agentgate"]);
    for name in ["agentgate-1", "agentgate-2"] {
        let s = service(name);
        assert!(s.contains("<<: *agentgate"), "{name} does not use the shared settings");
        assert!(s.contains(r#"command: ["serve", "--config", "/etc/agentgate/agentgate.toml"]"#), "{name}: {s}");
        assert_eq!(
            after(&["services", name, "depends_on", "migrate"], "condition").as_deref(),
            Some("service_completed_successfully"),
            "{name}"
        );
        assert!(get(&["services", name]).contains("healthcheck:"), "{name} has no health check");
    }
    assert!(get(&["services", "agentgate-1", "healthcheck"]).contains("GET /readyz "), "the health check is not /readyz");
    assert!(service("agentgate-2").contains("healthcheck: *ready"));
    for needle in
        ["./agentgate.toml:/etc/agentgate/agentgate.toml:ro", "CREDENTIALS_DIRECTORY: /run/secrets", "- bot-secret", "- pgpassword"]
    {
        assert!(anchor.contains(needle), "x-agentgate lacks `{needle}`");
    }
    assert_eq!(value_in(&anchor, "read_only").as_deref(), Some("true"));
    assert_eq!(value_in(&anchor, "user").as_deref(), Some(r#""10001:10001""#));
    // Caddy waits for two healthy replicas.
    for name in ["agentgate-1", "agentgate-2"] {
        assert_eq!(after(&["services", "caddy", "depends_on", name], "condition").as_deref(), Some("service_healthy"), "{name}");
    }
    assert!(service("caddy").contains("./Caddyfile:/etc/caddy/Caddyfile:ro"));
    let mut secrets = yaml_keys(&compose, &["secrets"]);
    secrets.sort();
    assert_eq!(secrets, ["bot-secret", "pgpassword"]);
    assert_eq!(after(&["secrets", "pgpassword"], "file").as_deref(), Some("./secrets/pgpassword"));
    assert_eq!(read("deploy/compose/.gitignore").trim(), "secrets/", "the secret files must stay out of git");

    // Caddy balances over both replicas and checks their /readyz.
    let caddy = read("deploy/compose/Caddyfile");
    assert!(caddy.contains("reverse_proxy agentgate-1:3978 agentgate-2:3978 {"), "{caddy}");
    assert!(caddy.lines().any(|l| l.trim() == "health_uri /readyz"), "no active /readyz health check");
    let matcher = caddy.lines().map(str::trim).find(|l| l.starts_with("@public path ")).expect("no @public matcher");
    assert_eq!(matcher.split_whitespace().skip(2).collect::<Vec<_>>(), ["/api/messages", "/healthz", "/readyz"]);

    // The replicas' configuration: Postgres with the password from the secret, and `agentgate check` accepts it.
    let toml = read("deploy/compose/agentgate.toml");
    assert!(toml.contains(r#"url = "postgres://agentgate@postgres:5432/agentgate""#));
    assert!(toml.contains(r#"password = "credential:pgpassword""#));
    assert!(toml.contains(r#"credential = "credential:bot-secret""#));
    let out = agentgate_check(&repo("deploy/compose/agentgate.toml"));
    assert!(out.status.success(), "agentgate check refused deploy/compose/agentgate.toml: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kubernetes_replicas_share_postgres() {
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let toml = yaml_block(&configmap, &["data", "agentgate.toml"]).expect("no data.agentgate.toml");
    let toml: String = toml.lines().map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l))).collect();
    assert!(toml.contains("url = \"postgres://"), "store.url is not set:\n{toml}");
    assert!(toml.contains(r#"password = "credential:pgpassword""#), "the password is not read from the Secret:\n{toml}");
    assert!(read("deploy/kubernetes/secret.example.yaml").contains("  pgpassword: "));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agentgate.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = agentgate_check(&file);
    assert!(out.status.success(), "agentgate check refused the ConfigMap's agentgate.toml: {}", String::from_utf8_lossy(&out.stderr));

    let deployment = read("deploy/kubernetes/deployment.yaml");
    let spec = yaml_block(&deployment, &["spec"]).unwrap();
    let replicas: u32 = value_in(&spec, "replicas").unwrap().parse().unwrap();
    assert!(replicas >= 2, "replicas: {replicas}");
    assert_eq!(yaml_block(&deployment, &["spec", "strategy"]).and_then(|s| value_in(&s, "type")).as_deref(), Some("RollingUpdate"));
    assert_eq!(value_after(&deployment, "rollingUpdate:", "maxUnavailable").as_deref(), Some("0"));
    assert_eq!(value_after(&deployment, "readinessProbe:", "path").as_deref(), Some("/readyz"));
    let pdb = read("deploy/kubernetes/pdb.yaml");
    assert_eq!(value_after(&pdb, "spec:", "minAvailable").as_deref(), Some("1"));
    assert!(read("deploy/kubernetes/kustomization.yaml").contains("  - pdb.yaml"));
}
