//! `agentgate agent-id provision | status | teardown`: the Entra Agent ID objects behind a bot's Agent User,
//! created in one command.
//!
//! The steps ([`Step`]) run in order and form a state machine persisted in the store (one JSON row per
//! bot and tenant): not started → in progress → ready, or failed at step N with Graph's error and its fix.
//! Each step first finds its object again (by the id saved in the state, then by a natural key: the
//! Blueprint's `uniqueName`, the Blueprint appId, the Agent Identity's name under that Blueprint, the UPN,
//! the grant's client and principal) and creates it only when it is absent, so a re-run resumes after a
//! failure, or a crash between a create and the save, and never creates a second object. Calls that
//! refer to objects created moments before wait out the directory's propagation (404 / "does not exist")
//! with bounded backoff ([`api::Backoff`]), saying so on stderr.
//!
//! The Blueprint's key is generated here (RSA-2048, a self-signed certificate); the private key is written
//! only to a 0600 file named by a `file:` secret reference, and only the certificate (public) is uploaded.
//! No password credential is ever added: Agent IDs refuse them (`PropertyNotCompatibleWithAgentIdentity`).

pub(crate) mod api;
mod config_file;
mod run;
pub(crate) mod signin;

use serde::{Deserialize, Serialize};

pub(crate) use run::{Plan, Provisioner};

/// Microsoft Graph's application id (its service principal is the grant's resource).
pub(crate) const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// The delegated scopes the Agent User needs for what agentgate does as it: find people, create chats,
/// add members, read and send chat messages.
pub(crate) const AGENT_USER_SCOPES: &[&str] = &["User.Read", "User.ReadBasic.All", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"];

/// The delegated scopes of the files area (`agent_user.files = true`): the Agent User's OneDrive (read,
/// write, share its own files), files shared with it (links in its chats), the SharePoint sites it can
/// reach (read), the messages of the channels it is a member of (their files and pasted images).
pub(crate) const FILES_SCOPES: &[&str] = &["Files.ReadWrite", "Files.Read.All", "Sites.Read.All", "ChannelMessage.Read.All"];

/// The scopes provisioning grants: what every Agent User needs, and those of the areas the bot's
/// `[bots.agent_user]` enables (none for areas that are off). Enabling an area later and running
/// `provision` again adds its scopes to the grant.
pub(crate) fn granted_scopes(agent_user: Option<&crate::config::agent_user::AgentUserConfig>) -> Vec<String> {
    let mut scopes: Vec<String> = AGENT_USER_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    if agent_user.is_some_and(|a| a.files) {
        scopes.extend(FILES_SCOPES.iter().map(|s| (*s).to_owned()));
    }
    if agent_user.is_some_and(|a| a.calendar) {
        scopes.extend(CALENDAR_SCOPES.iter().map(|s| (*s).to_owned()));
    }
    scopes
}

/// The further delegated scopes of the calendar area (`agent_user.calendar = true`): read the calendar,
/// find times (`findMeetingTimes`, `getSchedule`), create events and Teams meetings (`isOnlineMeeting`
/// needs no OnlineMeetings permission), answer invitations.
pub(crate) const CALENDAR_SCOPES: &[&str] = &["Calendars.ReadWrite"];

/// The delegated scopes of the Agent User's mailbox (`agent_user.mail`): read the Inbox and its changes, save
/// drafts (`Mail.ReadWrite`), reply, forward and send (`Mail.Send`). Asked for only when mail is on.
pub(crate) const MAIL_SCOPES: &[&str] = &["Mail.ReadWrite", "Mail.Send"];

/// The provisioning steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Step {
    Blueprint,
    BlueprintPrincipal,
    Certificate,
    AgentIdentity,
    AgentUser,
    PermissionGrant,
    Licence,
    Config,
}

impl Step {
    pub(crate) const ALL: [Step; 8] = [
        Step::Blueprint,
        Step::BlueprintPrincipal,
        Step::Certificate,
        Step::AgentIdentity,
        Step::AgentUser,
        Step::PermissionGrant,
        Step::Licence,
        Step::Config,
    ];

    /// 1-based.
    pub(crate) fn number(self) -> usize {
        Self::ALL.iter().position(|s| *s == self).map_or(0, |i| i + 1)
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Step::Blueprint => "Agent Identity Blueprint",
            Step::BlueprintPrincipal => "Blueprint principal",
            Step::Certificate => "Blueprint certificate",
            Step::AgentIdentity => "Agent Identity",
            Step::AgentUser => "Agent User",
            Step::PermissionGrant => "delegated permission grant",
            Step::Licence => "licence",
            Step::Config => "[bots.agent_user] in the config file",
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    #[default]
    NotStarted,
    InProgress,
    Ready,
    Failed,
    TearingDown,
}

/// The persisted state of one bot's provisioning in one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct State {
    pub(crate) status: Status,
    /// The step that failed, or the next one to run.
    pub(crate) step: Option<Step>,
    pub(crate) error: Option<String>,
    pub(crate) fix: Option<String>,
    pub(crate) tenant: String,
    pub(crate) sponsor_id: Option<String>,
    pub(crate) blueprint_app_id: Option<String>,
    pub(crate) blueprint_object_id: Option<String>,
    pub(crate) blueprint_principal_id: Option<String>,
    /// The SHA-1 thumbprint of the certificate uploaded to the Blueprint.
    pub(crate) certificate_thumbprint: Option<String>,
    pub(crate) certificate_ref: Option<String>,
    pub(crate) key_ref: Option<String>,
    /// Whether this run generated the key files (teardown removes only those).
    pub(crate) key_generated: bool,
    pub(crate) agent_identity_app_id: Option<String>,
    pub(crate) agent_identity_object_id: Option<String>,
    pub(crate) agent_user_id: Option<String>,
    pub(crate) agent_user_upn: Option<String>,
    pub(crate) graph_principal_id: Option<String>,
    pub(crate) grant_id: Option<String>,
    pub(crate) grant_scope: Option<String>,
    pub(crate) licence_sku: Option<String>,
    pub(crate) config_written: Option<String>,
}

/// The store key of a bot's provisioning in a tenant.
pub(crate) fn state_key(bot_app_id: &str, tenant: &str) -> String {
    format!("{}/{}", bot_app_id.to_ascii_lowercase(), tenant.to_ascii_lowercase())
}

/// What to do about a failed step: Graph's error read for its known causes.
pub(crate) fn fix_for(step: Step, e: &api::GraphFailure) -> String {
    let m = format!("{} {}", e.code, e.message).to_ascii_lowercase();
    if m.contains("directory.accessasuser.all") {
        return "the token carries Directory.AccessAsUser.All (an Azure CLI token, or `.default` over a broad client): sign in with \
                --client-id of a dedicated public client consented for explicit scopes, or --provisioner-app"
            .into();
    }
    if m.contains("propertynotcompatiblewithagentidentity") {
        return "Agent IDs accept certificate credentials only: remove any password (client secret) from the Blueprint and re-run".into();
    }
    if m.contains("verified domain") {
        return "pass --domain with one of the tenant's verified domains (Entra admin center > Domain names), or let provision pick one"
            .into();
    }
    if m.contains("quotaexceeded") || m.contains("limitexceeded") {
        return "the tenant's Agent ID quota is full; soft-deleted Agent IDs count too: purge deleted ones (Entra admin center > \
                Deleted items) and re-run"
            .into();
    }
    match e.status {
        401 => "the sign-in expired or is not for this tenant: re-run (you will sign in again)".into(),
        403 => format!(
            "the signed-in account lacks a permission or role for this call: it needs the Agent ID Administrator role (or Agent ID \
             Developer for Blueprints) and consent for {}; then re-run",
            match step {
                Step::Blueprint | Step::Certificate => "AgentIdentityBlueprint.Create / .AddRemoveCreds.All",
                Step::BlueprintPrincipal => "AgentIdentityBlueprintPrincipal.Create",
                Step::AgentIdentity => "AgentIdentity.Create.All",
                Step::AgentUser => "AgentIdUser.ReadWrite.IdentityParentedBy",
                Step::PermissionGrant => "DelegatedPermissionGrant.ReadWrite.All",
                Step::Licence => "LicenseAssignment.ReadWrite.All",
                Step::Config => "nothing (a local step)",
            }
        ),
        404 => "the directory still does not see an object created moments ago (propagation can take 2 minutes): re-run; it resumes here"
            .into(),
        409 => "a conflicting object exists: re-run (provision finds and reuses its own objects), or remove the other one".into(),
        429 => "Graph is throttling: wait a minute and re-run".into(),
        s if s >= 500 => "a Graph outage: re-run later; the run resumes at this step".into(),
        0 => "see the message; re-run once it is fixed (the run resumes at this step)".into(),
        _ => "fix the cause above and re-run: the run resumes at this step and reuses what exists".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::api::GraphFailure;
    use super::*;

    fn failure(status: u16, code: &str, message: &str) -> GraphFailure {
        GraphFailure { status, code: code.into(), message: message.into() }
    }

    /// Only the areas the bot enables add scopes: the files area adds the file scopes, nothing else does.
    #[test]
    fn scopes_follow_the_enabled_areas() {
        let au = |files: bool| -> crate::config::agent_user::AgentUserConfig {
            toml::from_str(&format!(
                "tenant_id = \"t\"\nblueprint_app_id = \"b\"\nagent_identity_id = \"i\"\nagent_user_id = \"u\"\ncertificate = \"file:/c\"\nkey = \"file:/k\"\nfiles = {files}"
            ))
            .unwrap()
        };
        assert_eq!(granted_scopes(None), AGENT_USER_SCOPES);
        assert_eq!(granted_scopes(Some(&au(false))), AGENT_USER_SCOPES);
        let with_files = granted_scopes(Some(&au(true)));
        assert_eq!(&with_files[..AGENT_USER_SCOPES.len()], AGENT_USER_SCOPES);
        assert_eq!(&with_files[AGENT_USER_SCOPES.len()..], FILES_SCOPES);
        assert!(!with_files.iter().any(|s| s.ends_with(".ReadWrite.All")), "no tenant-wide write: {with_files:?}");
    }

    #[test]
    fn known_graph_errors_get_their_fix() {
        let pw =
            failure(400, "PropertyNotCompatibleWithAgentIdentity", "Property passwordCredentials is not compatible with agent identity.");
        assert!(fix_for(Step::Certificate, &pw).contains("certificate credentials only"));
        let az = failure(
            403,
            "Authorization_RequestDenied",
            "Agent APIs do not support calls that include the Directory.AccessAsUser.All permission.",
        );
        assert!(fix_for(Step::Blueprint, &az).contains("--client-id"));
        let domain = failure(
            400,
            "Request_BadRequest",
            "The root domain of the specified UPN does not belong to a verified domain of the organization.",
        );
        assert!(fix_for(Step::AgentUser, &domain).contains("--domain"));
        assert!(
            fix_for(Step::PermissionGrant, &failure(403, "Authorization_RequestDenied", "x"))
                .contains("DelegatedPermissionGrant.ReadWrite.All")
        );
        assert!(failure(404, "Request_ResourceNotFound", "gone").is_propagation());
        assert!(failure(400, "Request_BadRequest", "Principal was not found: clientId 'x' does not exist.").is_propagation());
        assert!(!domain.is_propagation() && !pw.is_propagation());
    }

    #[test]
    fn the_state_round_trips_and_tolerates_missing_fields() {
        let st = State { status: Status::Failed, step: Some(Step::AgentUser), agent_user_id: Some("u".into()), ..State::default() };
        let text = serde_json::to_string(&st).unwrap();
        assert!(text.contains("\"step\":\"agent_user\"") && text.contains("\"status\":\"failed\""), "{text}");
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), st);
        assert_eq!(serde_json::from_str::<State>("{}").unwrap(), State::default());
        assert_eq!(Step::ALL.map(Step::number), [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
