//! The per-bot policy as configured (`[bots.policy]`): who may reach the agent, who approves; checked
//! once at startup. How it is applied to an activity is `bridge::policy`.

use serde::{Deserialize, Serialize};

use crate::ids::AadObjectId;

/// The bounds of [`BotPolicy::approval_timeout_secs`].
pub const APPROVAL_TIMEOUT_SECS_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;

/// Who may reach the agent through one bot.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BotPolicy {
    /// Personal (1:1) chats: `open`, `allowlist` (default) or `disabled`.
    #[serde(default)]
    pub dm: DmPolicy,
    /// AAD object ids allowed to DM the agent when `dm = "allowlist"`.
    #[serde(default)]
    pub dm_allow: Vec<AadObjectId>,
    /// Group chats and channels: `mention` (default), `all` or `disabled`.
    #[serde(default)]
    pub groups: GroupPolicy,
    /// AAD object ids allowed to reach the agent in group chats and channels; empty: anyone there.
    #[serde(default)]
    pub group_allow: Vec<AadObjectId>,
    /// Teams (`channelData.team.id`) whose channels may reach the agent; empty: any.
    #[serde(default)]
    pub teams_allow: Vec<String>,
    /// Channels (`channelData.channel.id`) that may reach the agent; empty: any.
    #[serde(default)]
    pub channels_allow: Vec<String>,
    /// AAD object ids who may approve the agent's tool use (permission relay).
    #[serde(default)]
    pub approvers: Vec<AadObjectId>,
    /// How long an approval request stays open, in seconds (10 to 86400; default 600).
    #[serde(default = "default_approval_timeout_secs")]
    pub approval_timeout_secs: u64,
    /// Ask an approver privately where the agent is working (a targeted message in a group chat or
    /// channel the approver is a member of) instead of in their 1:1 chat with the bot (default true).
    #[serde(default = "default_targeted_approvals")]
    pub targeted_approvals: bool,
    /// People (object ids, UPNs or emails) the bot's Agent User may add to chats or message first
    /// without asking an approver.
    #[serde(default)]
    pub contacts_allow: Vec<String>,
}

fn default_approval_timeout_secs() -> u64 {
    600
}

fn default_targeted_approvals() -> bool {
    true
}

impl Default for BotPolicy {
    fn default() -> Self {
        Self {
            dm: DmPolicy::default(),
            dm_allow: Vec::new(),
            groups: GroupPolicy::default(),
            group_allow: Vec::new(),
            teams_allow: Vec::new(),
            channels_allow: Vec::new(),
            approvers: Vec::new(),
            approval_timeout_secs: default_approval_timeout_secs(),
            targeted_approvals: default_targeted_approvals(),
            contacts_allow: Vec::new(),
        }
    }
}

/// Personal chats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    /// Anyone in a tenant the bot accepts.
    Open,
    /// Only the ids in `dm_allow`.
    #[default]
    Allowlist,
    /// Nobody.
    Disabled,
}

/// Group chats and channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupPolicy {
    /// Messages that mention the bot, and clicks on the bot's cards.
    #[default]
    Mention,
    /// Every activity the bot receives there.
    All,
    /// Nothing.
    Disabled,
}

impl BotPolicy {
    /// Checks the policy once, at startup. The error names the field (`policy.dm_allow[2]`) and says what
    /// is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let lists: [(&str, Vec<&str>, bool); 5] = [
            ("dm_allow", self.dm_allow.iter().map(AadObjectId::as_str).collect(), true),
            ("group_allow", self.group_allow.iter().map(AadObjectId::as_str).collect(), true),
            ("teams_allow", self.teams_allow.iter().map(String::as_str).collect(), false),
            ("channels_allow", self.channels_allow.iter().map(String::as_str).collect(), false),
            ("approvers", self.approvers.iter().map(AadObjectId::as_str).collect(), true),
        ];
        for (name, ids, people) in lists {
            for (i, id) in ids.into_iter().enumerate() {
                let field = format!("policy.{name}[{i}]");
                let what = if people { "an AAD object id (from.aadObjectId)" } else { "a Teams id" };
                if id.trim().is_empty() {
                    return Err((field, format!("is empty: remove the entry or put {what} there")));
                }
                if id.contains(char::is_whitespace) {
                    return Err((field, format!("{id:?} contains whitespace: ids are single tokens; remove the spaces")));
                }
                if people && id.contains('@') {
                    return Err((
                        field,
                        format!(
                            "{id:?} looks like an email address or UPN: the policy matches AAD object ids (from.aadObjectId, a GUID), never names or addresses"
                        ),
                    ));
                }
                if people && (id.starts_with("29:") || id.starts_with("28:")) {
                    return Err((
                        field,
                        format!(
                            "{id:?} is a Teams channel account id (29:… or 28:…): use the person's AAD object id (from.aadObjectId, a GUID) instead"
                        ),
                    ));
                }
            }
        }
        if !APPROVAL_TIMEOUT_SECS_RANGE.contains(&self.approval_timeout_secs) {
            return Err((
                "policy.approval_timeout_secs".to_owned(),
                format!(
                    "is {}: approvals time out after {} to {} seconds; pick a value in that range (default 600)",
                    self.approval_timeout_secs,
                    APPROVAL_TIMEOUT_SECS_RANGE.start(),
                    APPROVAL_TIMEOUT_SECS_RANGE.end()
                ),
            ));
        }
        Ok(())
    }

    /// Whether the person with AAD object id `aad` may approve tool use.
    pub fn is_approver(&self, aad: &str) -> bool {
        let aad = aad.trim();
        !aad.is_empty() && self.approvers.iter().any(|a| a.matches(aad))
    }
}

/// Whether `id` is one of the AAD object ids in `list` (ASCII case ignored, as Entra does).
pub(crate) fn contains_person(list: &[AadObjectId], id: &str) -> bool {
    list.iter().any(|x| x.matches(id))
}

pub(crate) fn contains_id(list: &[String], id: &str) -> bool {
    list.iter().any(|x| x.trim().eq_ignore_ascii_case(id))
}
