//! The command line: init, check, and refusals at start-up with named fields and fixes.

use std::process::Command;

use crate::helpers::*;

fn run(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).current_dir(dir).env_remove("AGENTGATE_CONFIG").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn init_writes_a_starter_that_check_accepts_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = run(&["init"], dir.path());
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(dir.path().join("agentgate.toml")).unwrap();
    assert!(text.contains("[[bots]]") && text.contains("# "), "the starter is commented");
    let (ok, out, err) = run(&["check"], dir.path());
    assert!(ok, "{out}{err}");
    assert!(out.contains("configuration OK"));
    // The starter's policy keeps 1:1 chats from the agent until ids are listed, and says so.
    assert!(out.contains("DMs allowlist (0 ids)") && out.contains("dm_allow is empty"), "{out}");
    assert!(out.contains("/mcp is off"), "{out}");
    let (ok, _, err) = run(&["init"], dir.path());
    assert!(!ok);
    assert!(err.contains("--force"), "{err}");
    assert!(run(&["init", "--force"], dir.path()).0);
}

#[test]
fn bad_configuration_is_refused_with_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let bot = format!("[[bots]]\napp_id = \"{APP_ID}\"\nallowed_tenants = [\"{TENANT}\"]\n");
    let cases = [
        ("", "`bots`", "agentgate init"),
        ("[[bots]]\napp_id = \"x\"\n", "`bots[0].allowed_tenants`", "list the tenant ids"),
        (&*format!("[server]\nbind = \"0.0.0.0:443\"\n{bot}"), "`server.tls`", "behind_proxy"),
        (&*format!("[server]\nbnid = \"x\"\n{bot}"), "`server.bnid`", "unknown field"),
        (&*format!("{bot}cloud = \"mars\"\n"), "`bots[0].cloud`", "public"),
        (&*format!("{bot}credential = \"my-plain-secret\"\n"), "`bots[0].credential`", "env:VAR_NAME"),
    ];
    for (text, field, fix) in cases {
        let path = write(text);
        for cmd in [&["check", "--config", &path][..], &["serve", "--config", &path][..]] {
            let (ok, _, err) = run(cmd, dir.path());
            assert!(!ok, "{cmd:?} accepted:\n{text}");
            assert!(err.contains(field) && err.contains(fix), "{cmd:?} on\n{text}\nsaid: {err}");
            assert!(!err.contains("my-plain-secret"), "a misplaced secret was echoed: {err}");
        }
    }
}

#[test]
fn environment_overrides_the_file_and_dev_refuses_non_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, format!("[[bots]]\napp_id = \"{APP_ID}\"\nallowed_tenants = [\"{TENANT}\"]\n")).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config", p.to_str().unwrap()])
        .env("AGENTGATE__SERVER__BIND", "127.0.0.1:4555")
        .env("AGENTGATE__BOTS__0__ALLOWED_TENANTS", "t1,t2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("127.0.0.1:4555") && stdout.contains("tenants t1,t2"), "{stdout}");

    let out = Command::new(bin()).args(["serve", "--dev", "--bind", "0.0.0.0:0"]).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.bind") && err.contains("loopback"), "{err}");
}

#[test]
fn init_never_writes_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    // A dangling link where the config would go: init must not create its target.
    let target = dir.path().join("elsewhere.txt");
    std::os::unix::fs::symlink(&target, dir.path().join("agentgate.toml")).unwrap();
    let (ok, out, err) = run(&["init"], dir.path());
    assert!(!ok, "init wrote through a dangling symlink: {out}");
    assert!(!target.exists(), "the symlink's target was created");
    assert!(err.contains("--force") || err.contains("exists"), "{err}");
    // With --force the link itself is replaced; what it pointed at is left alone.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let link = dir.path().join("linked.toml");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let (ok, out, err) = run(&["init", "--force", "--output", "linked.toml"], dir.path());
    assert!(ok, "{out}{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me", "init --force wrote through a symlink");
    assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(&link).unwrap().contains("[[bots]]"));
}
