//! Writing the bot's `[bots.agent_user]` table into the configuration file, in place: the rest of the file
//! (comments, order, other tables) is kept as it is; the file is replaced atomically.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use toml_edit::{DocumentMut, Item, Table, value};

/// The values provisioning sets in `[bots.agent_user]`; the section's other keys (mode, scopes, base URL)
/// are left as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentUserValues {
    pub(crate) tenant_id: String,
    pub(crate) blueprint_app_id: String,
    pub(crate) agent_identity_id: String,
    pub(crate) agent_user_id: String,
    pub(crate) certificate: String,
    pub(crate) key: String,
    /// Set `mail = true` (provisioned with the mail scopes); false leaves `mail` as it is.
    pub(crate) mail: bool,
}

/// The `[[bots]]` entry whose `app_id` is `bot` (case-insensitive).
fn bot_table<'a>(doc: &'a mut DocumentMut, bot: &str) -> anyhow::Result<&'a mut Table> {
    let bots = doc.get_mut("bots").and_then(Item::as_array_of_tables_mut).ok_or_else(|| anyhow!("the file has no [[bots]] table"))?;
    bots.iter_mut()
        .find(|t| t.get("app_id").and_then(Item::as_str).is_some_and(|a| a.eq_ignore_ascii_case(bot)))
        .ok_or_else(|| anyhow!("no [[bots]] entry has app_id = \"{bot}\""))
}

/// Set the values in the text of a configuration file; returns the new text.
pub(crate) fn set_agent_user(text: &str, bot: &str, v: &AgentUserValues) -> anyhow::Result<String> {
    let mut doc: DocumentMut = text.parse().context("parsing the configuration file")?;
    let table = bot_table(&mut doc, bot)?;
    if !table.contains_key("agent_user") {
        table.insert("agent_user", Item::Table(Table::new()));
    }
    let au = table.get_mut("agent_user").and_then(Item::as_table_mut).ok_or_else(|| anyhow!("bots.agent_user is not a table"))?;
    au.insert("tenant_id", value(&v.tenant_id));
    au.insert("blueprint_app_id", value(&v.blueprint_app_id));
    au.insert("agent_identity_id", value(&v.agent_identity_id));
    au.remove("agent_user_upn");
    au.insert("agent_user_id", value(&v.agent_user_id));
    au.insert("certificate", value(&v.certificate));
    au.insert("key", value(&v.key));
    if v.mail {
        au.insert("mail", value(true));
    }
    Ok(doc.to_string())
}

/// Remove the bot's `[bots.agent_user]` table when it names `agent_identity_id` (a teardown of what
/// provisioning wrote); returns the new text, or `None` when nothing changed.
pub(crate) fn remove_agent_user(text: &str, bot: &str, agent_identity_id: &str) -> anyhow::Result<Option<String>> {
    let mut doc: DocumentMut = text.parse().context("parsing the configuration file")?;
    let table = bot_table(&mut doc, bot)?;
    let ours = table
        .get("agent_user")
        .and_then(|t| t.get("agent_identity_id"))
        .and_then(Item::as_str)
        .is_some_and(|id| id.eq_ignore_ascii_case(agent_identity_id));
    if !ours {
        return Ok(None);
    }
    table.remove("agent_user");
    Ok(Some(doc.to_string()))
}

/// Replace the file's content atomically (a temporary file in the same directory, renamed over it), keeping
/// its permissions.
pub(crate) fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let perms = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.permissions();
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing in {}", dir.display()))?;
    tmp.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(tmp.path(), perms).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# my gateway
data_dir = "/var/lib/agentgate"

[[bots]]
app_id = "11111111-1111-1111-1111-111111111111"
display_name = "first" # keep me

[[bots]]
app_id = "22222222-2222-2222-2222-222222222222"
display_name = "second"

[bots.agent_user]
mode = "fallback"
agent_user_upn = "old@contoso.com"
"#;

    fn values() -> AgentUserValues {
        AgentUserValues {
            tenant_id: "t".into(),
            blueprint_app_id: "bp".into(),
            agent_identity_id: "ai".into(),
            agent_user_id: "au".into(),
            certificate: "file:/etc/agentgate/c.pem".into(),
            key: "file:/etc/agentgate/k.pem".into(),
            mail: false,
        }
    }

    #[test]
    fn the_section_is_written_and_the_rest_of_the_file_kept() {
        let out = set_agent_user(FILE, "22222222-2222-2222-2222-222222222222", &values()).unwrap();
        assert!(out.starts_with("# my gateway\n"), "{out}");
        assert!(out.contains(r#"display_name = "first" # keep me"#));
        let parsed: toml::Value = toml::from_str(&out).unwrap();
        let au = &parsed["bots"][1]["agent_user"];
        assert_eq!(au["mode"].as_str(), Some("fallback"), "other keys are kept");
        assert_eq!(au["agent_identity_id"].as_str(), Some("ai"));
        assert!(au.get("agent_user_upn").is_none(), "one way to name the user");
        assert!(parsed["bots"][0].get("agent_user").is_none(), "the other bot is untouched");
        // Idempotent.
        assert_eq!(set_agent_user(&out, "22222222-2222-2222-2222-222222222222", &values()).unwrap(), out);
        // Removed only when it names the Agent Identity provisioning created.
        assert_eq!(remove_agent_user(&out, "22222222-2222-2222-2222-222222222222", "other").unwrap(), None);
        let removed = remove_agent_user(&out, "22222222-2222-2222-2222-222222222222", "ai").unwrap().unwrap();
        assert!(!removed.contains("agent_user") && removed.contains("# keep me"));
        assert!(set_agent_user(FILE, "33333333-3333-3333-3333-333333333333", &values()).is_err());
        assert!(!out.contains("mail"), "mail is not turned on unless asked");
        let with_mail = set_agent_user(&out, "22222222-2222-2222-2222-222222222222", &AgentUserValues { mail: true, ..values() }).unwrap();
        let parsed: toml::Value = toml::from_str(&with_mail).unwrap();
        assert_eq!(parsed["bots"][1]["agent_user"]["mail"].as_bool(), Some(true));
    }
}
