//! `[bots.agent_user]`: the Entra Agent ID objects behind a bot (the token chain itself is `entra::agent`).

use serde::Deserialize;

use super::ConfigError;
use crate::ids::graph_url::GraphEndpoint;
use crate::secrets::SecretRef;

/// The default resource of Graph calls as the Agent User.
pub const DEFAULT_GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// The default scope of the Agent User's Bot Connector token (the Messaging Bot API).
pub const DEFAULT_AGENTIC_SCOPE: &str = "5a807f24-c9de-44ee-a3a7-329e88a00ffc/.default";

/// When the bot's own identity is not enough, whether to act as the Agent User.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// Only the bot identity acts; the Agent User's tokens are used by explicit Graph tools only.
    #[default]
    BotOnly,
    /// When the bot cannot act (no conversation reference, bot not installed), fall back to Graph as
    /// the Agent User.
    Fallback,
}

/// `[bots.agent_user]`: the Entra Agent ID objects behind a bot and the Blueprint's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentUserConfig {
    /// The tenant the Agent Identity and Agent User live in (a GUID or a domain).
    pub tenant_id: String,
    /// The Agent Blueprint's application (client) id; it holds the only credential.
    pub blueprint_app_id: String,
    /// The Agent Identity's app (client) id (sent as `fmi_path` in hop 1 and as `client_id` after).
    pub agent_identity_id: String,
    /// The Agent User's object id (`user_id` in hop 3). Set this or `agent_user_upn`.
    #[serde(default)]
    pub agent_user_id: Option<String>,
    /// The Agent User's UPN (`username` in hop 3), instead of `agent_user_id`.
    #[serde(default)]
    pub agent_user_upn: Option<String>,
    /// The Blueprint's certificate (PEM).
    pub certificate: SecretRef,
    /// The certificate's private key (PEM; a file must be mode 0600).
    pub key: SecretRef,
    /// Send the certificate chain (`x5c`) in the hop-1 assertion.
    #[serde(default)]
    pub send_x5c: bool,
    /// The resource of Graph calls.
    #[serde(default = "default_graph_scope")]
    pub graph_scope: String,
    /// The resource of the Agent User's Bot Connector token.
    #[serde(default = "default_agentic_scope")]
    pub agentic_scope: String,
    /// `bot_only` (default) or `fallback`.
    #[serde(default)]
    pub mode: AgentMode,
    /// The Graph API base; default `https://graph.microsoft.com/v1.0`. Another national Graph host, or
    /// a loopback `http://127.0.0.1:PORT/v1.0` for a local fake.
    #[serde(default)]
    pub graph_base_url: Option<String>,
    /// Deliver what people write to the Agent User (its 1:1, group and meeting chats) to the host,
    /// through Graph change notifications (needs `server.public_url`; off by default).
    #[serde(default)]
    pub inbound: bool,
    /// How long each Graph subscription is asked for, in minutes (renewed when half of it is left).
    #[serde(default = "default_subscription_minutes")]
    pub subscription_minutes: u32,
    /// The files area: the `graph_*_file(s)` tools (the Agent User's OneDrive and the SharePoint sites it
    /// can reach), files to group chats and channels, channel files (off by default: the tools are not
    /// offered, and provisioning asks for no file permissions).
    #[serde(default)]
    pub files: bool,
    /// Let `graph_share_file` create anonymous ("anyone with the link") links (off by default; each share
    /// needs an owner's approval either way).
    #[serde(default)]
    pub files_anonymous_links: bool,
    /// The Agent User's mailbox: new mail in its Inbox reaches the host as `mail` events, and the `mail_*`
    /// tools reply, forward, send and draft as it (off by default).
    #[serde(default)]
    pub mail: bool,
    /// Senders whose mail reaches the host: addresses (`ann@contoso.com`) or domains (`contoso.com`).
    /// Empty (the default): the Agent User's sponsors and the people in `policy.contacts_allow`.
    #[serde(default)]
    pub mail_senders_allow: Vec<String>,
    /// Recipients (addresses or domains) the `mail_*` tools may write to without an owner's approval, besides
    /// the allowed senders and `policy.contacts_allow`.
    #[serde(default)]
    pub mail_recipients_allow: Vec<String>,
    /// Without a public URL (no change notifications), how often the Inbox is read for new mail, in seconds.
    #[serde(default = "default_mail_poll_secs")]
    pub mail_poll_secs: u64,
    /// The calendar area: the `calendar_*` tools (read events, find times, create events and Teams
    /// meetings, answer invitations) as the Agent User; needs `Calendars.ReadWrite` (off by default).
    #[serde(default)]
    pub calendar: bool,
    /// Meeting attendees the Agent User may invite without an owner's approval, besides
    /// `policy.contacts_allow`: addresses (`ann@contoso.com`) or whole domains (`contoso.com`, `@contoso.com`).
    #[serde(default)]
    pub calendar_attendees_allow: Vec<String>,
}

/// The bounds of [`AgentUserConfig::mail_poll_secs`].
pub const MAIL_POLL_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;

fn default_mail_poll_secs() -> u64 {
    60
}

/// Whether `entry` is a mail address (`ann@contoso.com`) or a domain (`contoso.com`, `@contoso.com`), as the
/// mail allow-lists take them: `Some(problem)` when it is neither.
pub fn mail_pattern_problem(entry: &str) -> Option<String> {
    let e = entry.trim();
    let domain_ok = |d: &str| {
        !d.is_empty()
            && d.contains('.')
            && !d.starts_with('.')
            && !d.ends_with('.')
            && !d.contains("..")
            && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    let ok = match e.rsplit_once('@') {
        Some((local, domain)) => {
            !local.contains('@')
                && !local.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
                && domain_ok(domain)
        }
        None => domain_ok(e),
    };
    (!ok).then(|| format!("`{entry}` is neither a mail address (ann@contoso.com) nor a domain (contoso.com)"))
}

fn default_subscription_minutes() -> u32 {
    // Within the chat-message maximum (about 3 days; over 1 hour needs lifecycleNotificationUrl, which
    // agentgate always sets).
    24 * 60
}

fn default_graph_scope() -> String {
    DEFAULT_GRAPH_SCOPE.to_owned()
}

fn default_agentic_scope() -> String {
    DEFAULT_AGENTIC_SCOPE.to_owned()
}

impl AgentUserConfig {
    /// Check the section; `at` is its path (`bots[0].agent_user`), used in error fields.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let err = |field: &str, problem: String| ConfigError { field: format!("{at}.{field}"), problem };
        let guid = |field: &str, v: &str, what: &str| {
            if crate::ids::is_guid(v) { Ok(()) } else { Err(err(field, format!("`{v}` is not a GUID: set it to {what}"))) }
        };
        if self.tenant_id.trim().is_empty()
            || !self.tenant_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            || self.tenant_id.starts_with('.')
        {
            return Err(err(
                "tenant_id",
                "must be the Agent User's tenant id (a GUID, or a domain such as contoso.onmicrosoft.com)".into(),
            ));
        }
        guid("blueprint_app_id", &self.blueprint_app_id, "the Agent Blueprint's application (client) id")?;
        guid("agent_identity_id", &self.agent_identity_id, "the Agent Identity's app (client) id")?;
        if self.agent_identity_id.eq_ignore_ascii_case(&self.blueprint_app_id) {
            return Err(err(
                "agent_identity_id",
                "equals blueprint_app_id: set it to the Agent Identity created from the Blueprint (a different id)".into(),
            ));
        }
        match (&self.agent_user_id, &self.agent_user_upn) {
            (Some(_), Some(_)) => {
                return Err(err("agent_user_upn", "set either agent_user_id (the object id) or agent_user_upn, not both".into()));
            }
            (None, None) => {
                return Err(err(
                    "agent_user_id",
                    "is not set: set it to the Agent User's object id (or set agent_user_upn to its UPN)".into(),
                ));
            }
            (Some(id), None) => guid("agent_user_id", id, "the Agent User's object id")?,
            (None, Some(upn)) => {
                let ok = upn.split_once('@').is_some_and(|(u, d)| !u.is_empty() && d.contains('.')) && !upn.contains(char::is_whitespace);
                if !ok {
                    return Err(err("agent_user_upn", format!("`{upn}` is not a UPN such as agent@contoso.onmicrosoft.com")));
                }
            }
        }
        for (field, scope) in [("graph_scope", &self.graph_scope), ("agentic_scope", &self.agentic_scope)] {
            if !scope.ends_with("/.default") || scope.contains(char::is_whitespace) || scope.len() <= "/.default".len() {
                return Err(err(field, format!("`{scope}` must be one resource's `.default` scope, such as {DEFAULT_GRAPH_SCOPE}")));
            }
        }
        if let Some(base) = &self.graph_base_url {
            GraphEndpoint::parse(base).map_err(|e| err("graph_base_url", e.to_string()))?;
        }
        if self.files_anonymous_links && !self.files {
            return Err(err("files_anonymous_links", "needs files = true (the files area)".into()));
        }
        for (field, list) in [("mail_senders_allow", &self.mail_senders_allow), ("mail_recipients_allow", &self.mail_recipients_allow)] {
            if !list.is_empty() && !self.mail {
                return Err(err(field, "is set but mail is off: set mail = true to use the Agent User's mailbox".into()));
            }
            for (i, entry) in list.iter().enumerate() {
                if let Some(problem) = mail_pattern_problem(entry) {
                    return Err(err(&format!("{field}[{i}]"), problem));
                }
            }
        }
        if !MAIL_POLL_SECS_RANGE.contains(&self.mail_poll_secs) {
            return Err(err(
                "mail_poll_secs",
                format!("must be {} to {} seconds (default 60)", MAIL_POLL_SECS_RANGE.start(), MAIL_POLL_SECS_RANGE.end()),
            ));
        }
        if !(2..=4230).contains(&self.subscription_minutes) {
            return Err(err(
                "subscription_minutes",
                "must be 2..=4230 (Graph keeps chat-message subscriptions at most about 3 days)".into(),
            ));
        }
        for (i, entry) in self.calendar_attendees_allow.iter().enumerate() {
            let e = entry.trim();
            let ok = !e.is_empty()
                && !e.contains(|c: char| c.is_whitespace() || c.is_control())
                && e.matches('@').count() <= 1
                && e.rsplit('@').next().is_some_and(|d| d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
            if !ok {
                return Err(err(
                    &format!("calendar_attendees_allow[{i}]"),
                    format!("`{entry}` is not an address (ann@contoso.com) or a domain (contoso.com)"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `address` may be invited without asking: listed in `calendar_attendees_allow` as itself
    /// or by its domain (case-insensitive, exact domain: a subdomain is not included).
    pub fn calendar_allows(&self, address: &str) -> bool {
        let address = address.trim().to_ascii_lowercase();
        let Some((_, domain)) = address.rsplit_once('@') else { return false };
        self.calendar_attendees_allow
            .iter()
            .map(|e| e.trim().to_ascii_lowercase())
            .any(|e| if e.contains('@') && !e.starts_with('@') { e == address } else { e.trim_start_matches('@') == domain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str) -> AgentUserConfig {
        toml::from_str(&format!(
            "tenant_id = \"t.example\"\nblueprint_app_id = \"b1b1b1b1-0000-4000-8000-000000000001\"\n\
             agent_identity_id = \"a1a1a1a1-0000-4000-8000-000000000002\"\nagent_user_id = \"d1d1d1d1-0000-4000-8000-000000000003\"\n\
             certificate = \"file:/x.crt\"\nkey = \"file:/x.key\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_calendar_is_off_by_default_and_its_allow_list_takes_addresses_and_exact_domains() {
        let off = section("");
        assert!(!off.calendar && !off.calendar_allows("ann@contoso.com"));
        let on = section("calendar = true\ncalendar_attendees_allow = [\"contoso.com\", \"@Fabrikam.test\", \"Bo@Partner.test\"]");
        assert!(on.validate("bots[0].agent_user").is_ok());
        assert!(on.calendar);
        for yes in ["ann@contoso.com", "ANN@CONTOSO.COM", "x@fabrikam.test", "bo@partner.test"] {
            assert!(on.calendar_allows(yes), "{yes}");
        }
        for no in ["ann@sub.contoso.com", "ann@contoso.com.evil.test", "cy@partner.test", "contoso.com", "ann@evilcontoso.com"] {
            assert!(!on.calendar_allows(no), "{no}");
        }
        for bad in ["", "contoso", "a b.com", "a@b@c.com", "@.com"] {
            let e = section(&format!("calendar_attendees_allow = [\"ok.test\", \"{bad}\"]")).validate("bots[0].agent_user").unwrap_err();
            assert_eq!(e.field, "bots[0].agent_user.calendar_attendees_allow[1]", "{bad}");
        }
    }
}
