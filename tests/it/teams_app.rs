//! `agentgate teams-app`: per-tenant packages (zip entries, manifest, icons), named-field refusals,
//! admin-consent links, and the manifest against the official schema when `../shared/schemas/` is present.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::helpers::*;

fn run(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).current_dir(dir).env_remove("AGENTGATE_CONFIG").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn config(dir: &Path, app_id: &str, cloud: &str) -> String {
    let p = dir.join("agentgate.toml");
    std::fs::write(
        &p,
        format!("[[bots]]\napp_id = \"{app_id}\"\ndisplay_name = \"Ada Agent\"\ncloud = \"{cloud}\"\nallowed_tenants = [\"{TENANT}\"]\n"),
    )
    .unwrap();
    p.display().to_string()
}

fn entry(zip: &mut zip::ZipArchive<std::fs::File>, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    zip.by_name(name).unwrap().read_to_end(&mut out).unwrap();
    out
}

/// Width and height from a PNG's IHDR.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()))
}

/// Package for `TENANT` in a fresh directory; returns the directory, the zip path and stdout.
fn package(extra: &[&str]) -> (tempfile::TempDir, PathBuf, Value, zip::ZipArchive<std::fs::File>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), APP_ID, "public");
    let mut args = vec!["teams-app", "package", "--config", &cfg, "--tenant", TENANT];
    args.extend_from_slice(extra);
    let (ok, out, err) = run(&args, dir.path());
    assert!(ok, "{out}{err}");
    let path = dir.path().join("teams-app/build").join(format!("{TENANT}.zip"));
    assert!(out.contains(&format!("teams-app/build/{TENANT}.zip")), "prints the path: {out}");
    for name in ["manifest.json", "color.png", "outline.png"] {
        assert!(out.contains(name), "lists the contents: {out}");
    }
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let manifest: Value = serde_json::from_slice(&entry(&mut zip, "manifest.json")).unwrap();
    (dir, path, manifest, zip)
}

#[test]
fn package_writes_a_zip_with_the_manifest_and_both_icons() {
    let (_dir, _path, m, mut zip) = package(&["--domain", "bot.contoso.com", "--version", "2.3.4", "--developer", "Contoso"]);
    let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    assert_eq!(names, ["manifest.json", "color.png", "outline.png"]);

    assert_eq!(m["manifestVersion"], "1.29");
    assert_eq!(m["$schema"], "https://developer.microsoft.com/en-us/json-schemas/teams/v1.29/MicrosoftTeams.schema.json");
    assert_eq!(m["id"], APP_ID);
    assert_eq!(m["version"], "2.3.4");
    assert_eq!(m["name"]["short"], "Ada Agent");
    assert_eq!(m["developer"]["name"], "Contoso");
    assert_eq!(m["developer"]["websiteUrl"], "https://bot.contoso.com/");
    assert_eq!(m["bots"][0]["botId"], APP_ID);
    assert_eq!(m["bots"][0]["scopes"], serde_json::json!(["personal", "team", "groupChat"]));
    assert!(!m["bots"][0]["commandLists"][0]["commands"].as_array().unwrap().is_empty());
    assert_eq!(m["validDomains"], serde_json::json!(["bot.contoso.com"]));
    assert_eq!(m["webApplicationInfo"]["id"], APP_ID);
    assert_eq!(m["webApplicationInfo"]["resource"], format!("api://botid-{APP_ID}"));
    assert_eq!((m["icons"]["color"].as_str(), m["icons"]["outline"].as_str()), (Some("color.png"), Some("outline.png")));

    let color = entry(&mut zip, "color.png");
    let outline = entry(&mut zip, "outline.png");
    assert_eq!(png_size(&color), (192, 192));
    assert_eq!(png_size(&outline), (32, 32));
    let outline = agentgate::teams_app::decode_png(&outline).unwrap();
    assert_eq!(outline.pixel(0, 0)[3], 0, "outline background is transparent");
    assert!(outline.pixels.chunks(4).all(|p| p[3] == 0 || p[..3] == [255, 255, 255]), "outline is white");
}

#[test]
fn invalid_input_is_refused_naming_the_field_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "my-bot", "public");
    let (ok, _, err) = run(&["teams-app", "package", "--config", &cfg, "--tenant", "contoso", "--domain", "bot.contoso.com"], dir.path());
    assert!(!ok);
    assert!(err.contains("`bots[0].app_id`") && err.contains("GUID"), "{err}");
    assert!(!dir.path().join("teams-app/build").exists(), "nothing written");

    let cfg = config(dir.path(), APP_ID, "public");
    let cases: [(&[&str], &str); 4] = [
        (&["--domain", "https://bot.contoso.com/api"], "`--domain`"),
        (&["--domain", "bot.contoso.com", "--version", "1.0"], "`--version`"),
        (&["--domain", "bot.contoso.com", "--name", "An app name well over thirty chars"], "`--name`"),
        (&["--website", "http://contoso.com"], "`--website`"),
    ];
    for (extra, field) in cases {
        let mut args = vec!["teams-app", "package", "--config", &cfg, "--tenant", "contoso"];
        args.extend_from_slice(extra);
        let (ok, _, err) = run(&args, dir.path());
        assert!(!ok && err.contains(field), "{extra:?}: {err}");
    }
    let (ok, _, err) =
        run(&["teams-app", "package", "--config", &cfg, "--tenant", OTHER_TENANT, "--domain", "bot.contoso.com"], dir.path());
    assert!(!ok && err.contains("bots[0].allowed_tenants"), "{err}");
}

#[test]
fn consent_url_uses_the_bot_cloud_login_host() {
    let dir = tempfile::tempdir().unwrap();
    for (cloud, host) in
        [("public", "login.microsoftonline.com"), ("usgov", "login.microsoftonline.us"), ("china", "login.partner.microsoftonline.cn")]
    {
        let cfg = config(dir.path(), APP_ID, cloud);
        let (ok, out, err) = run(&["teams-app", "consent-url", "--config", &cfg, "--tenant", TENANT, "--bot", APP_ID], dir.path());
        assert!(ok, "{err}");
        assert_eq!(out.trim(), format!("https://{host}/{TENANT}/adminconsent?client_id={APP_ID}"));
    }
    let (ok, _, err) = run(&["teams-app", "consent-url", "--config", &config(dir.path(), APP_ID, "public"), "--tenant", "a/b"], dir.path());
    assert!(!ok && err.contains("--tenant"), "{err}");
}

// ---------------------------------------------------------------- official schema (oracle)

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/schemas/MicrosoftTeams.v1.29.schema.json")
}

/// A subset of JSON Schema draft 4 (no `pattern`: no regex crate here; `scripts/check-manifest-schema.sh`
/// runs the full validator): `$ref`, `type`, `required`, `properties`, `additionalProperties: false`,
/// `items`, `maxItems`, `minItems`, `maxLength`, `enum`, `const`.
fn violations(root: &Value, schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = root.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("unresolved $ref {r}"));
        return violations(root, target, v, path, out);
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            _ => true,
        };
        if !ok {
            out.push(format!("{path}: not a {t}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        out.push(format!("{path}: {v} not in {e:?}"));
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        out.push(format!("{path}: {v} is not {c}"));
    }
    if let (Some(max), Some(s)) = (schema.get("maxLength").and_then(Value::as_u64), v.as_str())
        && s.chars().count() as u64 > max
    {
        out.push(format!("{path}: longer than {max}"));
    }
    if let Some(a) = v.as_array() {
        if schema.get("maxItems").and_then(Value::as_u64).is_some_and(|m| a.len() as u64 > m) {
            out.push(format!("{path}: too many items"));
        }
        if schema.get("minItems").and_then(Value::as_u64).is_some_and(|m| (a.len() as u64) < m) {
            out.push(format!("{path}: too few items"));
        }
        if let Some(items) = schema.get("items") {
            for (i, x) in a.iter().enumerate() {
                violations(root, items, x, &format!("{path}[{i}]"), out);
            }
        }
    }
    if let Some(o) = v.as_object() {
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                out.push(format!("{path}: missing {r}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => violations(root, s, x, &format!("{path}.{k}"), out),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => out.push(format!("{path}: unexpected {k}")),
                None => {}
            }
        }
    }
}

#[test]
fn manifests_conform_to_the_official_schema_when_available() {
    let path = schema_path();
    if !path.exists() {
        eprintln!("skipped: {} not found", path.display());
        return;
    }
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let with_domain = package(&["--domain", "bot.contoso.com"]).2;
    let without = package(&["--website", "https://contoso.com/agent"]).2;
    for m in [with_domain, without] {
        let mut out = Vec::new();
        violations(&schema, &schema, &m, "manifest", &mut out);
        assert!(out.is_empty(), "{out:#?}");
    }
    // The checker itself catches what it claims to.
    let mut out = Vec::new();
    let bad = serde_json::json!({"manifestVersion": "1.28", "name": {"short": "x".repeat(31)}, "bogus": 1});
    violations(&schema, &schema, &bad, "manifest", &mut out);
    for needle in ["unexpected bogus", "missing \"id\"", "longer than 30", "is not \"1.29\""] {
        assert!(out.iter().any(|e| e.contains(needle)), "{needle}: {out:#?}");
    }
}

#[test]
fn package_does_not_write_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), APP_ID, "public");
    let build = dir.path().join("teams-app/build");
    std::fs::create_dir_all(&build).unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, build.join(format!(".{TENANT}.zip.tmp"))).unwrap();
    let dangling = dir.path().join("created-by-agentgate");
    std::os::unix::fs::symlink(&dangling, build.join(format!(".{TENANT}.zip.tmp.1"))).unwrap();
    let (ok, out, err) = run(&["teams-app", "package", "--config", &cfg, "--tenant", TENANT, "--domain", "bot.contoso.com"], dir.path());
    assert!(ok, "{out}{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me", "the package was written through the symlink");
    assert!(!dangling.exists());
    let zip = zip::ZipArchive::new(std::fs::File::open(build.join(format!("{TENANT}.zip"))).unwrap()).unwrap();
    assert!(zip.file_names().any(|n| n.as_ref().is_ok_and(|n| n == "manifest.json")));
}
