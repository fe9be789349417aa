//! Configuration loading. The first byte picks how the rest is used: as the whole file, as the value of a
//! secret field in the file, or as the value of a secret field's environment variable. Nothing panics,
//! and an error never shows a secret-looking value (a run of 12+ letters and digits with both in it)
//! that was set at a secret path.

use agentgate::config::Config;

const BASE: &str = r#"
[[bots]]
app_id = "11111111-1111-1111-1111-111111111111"
allowed_tenants = ["tenant-a"]
credential = "env:BOT_KEY"
[[mcp.tokens]]
name = "laptop"
token = "env:MCP_TOKEN"
"#;

/// Runs of 12 or more ASCII letters and digits holding both: what a secret looks like and no error text does.
fn secret_like(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() >= 12 && w.bytes().any(|b| b.is_ascii_digit()) && w.bytes().any(|b| b.is_ascii_alphabetic()))
        .collect()
}

fn assert_not_echoed(result: Result<Config, agentgate::config::ConfigError>, value: &str) {
    if let Err(e) = result {
        for shown in [e.to_string(), format!("{e:?}")] {
            for s in secret_like(value) {
                assert!(!shown.contains(s), "{s:?} echoed: {shown}");
            }
        }
    }
}

fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match mode % 4 {
        0 => {
            if let Ok(c) = Config::from_sources(Some(&text), "fuzz", Vec::new()) {
                let _ = c.validate(false);
                let _ = c.validate(true);
            }
        }
        // One line: the value stays on the secret's own line (more lines could set other, non-secret keys,
        // whose errors may rightly quote them).
        1 | 2 => {
            let value = text.lines().next().unwrap_or_default();
            let field = if mode % 4 == 1 { "\"env:BOT_KEY\"" } else { "\"env:MCP_TOKEN\"" };
            let file = BASE.replacen(field, value, 1);
            assert_not_echoed(Config::from_sources(Some(&file), "fuzz", Vec::new()), value);
        }
        _ => {
            let env = vec![("AGENTGATE__BOTS__0__CREDENTIAL".to_owned(), text.to_string())];
            assert_not_echoed(Config::from_sources(Some(BASE), "fuzz", env), &text);
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
