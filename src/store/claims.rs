//! Claims on conversations: which MCP session (host) owns a conversation, a bot's conversations in a tenant,
//! or all of a bot's conversations, until when ([`super::Store::claim_conversations`]).
//!
//! A claim is a row of `conversation_claims` keyed by what it covers: one session holds it until its lease
//! runs out, renewing it while it lives. The store only keeps the rows exclusive; which claim decides who
//! sees an inbox entry (the most specific one) is the bridge's business (`bridge::claims`).

use serde::Serialize;

use super::StoreError;

/// What a claim covers. Bot and tenant ids are kept in lower case (Microsoft compares them so); a
/// conversation id is compared exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClaimTarget {
    /// One conversation of one bot (in its tenant, kept so that a session sees only the claims of its
    /// tenants).
    Conversation { bot_app_id: String, tenant_id: String, conversation_id: String },
    /// Every conversation of one bot in one tenant.
    Tenant { bot_app_id: String, tenant_id: String },
    /// Every conversation of one bot.
    Bot { bot_app_id: String },
}

impl ClaimTarget {
    pub fn conversation(bot_app_id: &str, tenant_id: &str, conversation_id: &str) -> Self {
        Self::Conversation {
            bot_app_id: bot_app_id.trim().to_ascii_lowercase(),
            tenant_id: tenant_id.trim().to_ascii_lowercase(),
            conversation_id: conversation_id.to_owned(),
        }
    }

    pub fn tenant(bot_app_id: &str, tenant_id: &str) -> Self {
        Self::Tenant { bot_app_id: bot_app_id.trim().to_ascii_lowercase(), tenant_id: tenant_id.trim().to_ascii_lowercase() }
    }

    pub fn bot(bot_app_id: &str) -> Self {
        Self::Bot { bot_app_id: bot_app_id.trim().to_ascii_lowercase() }
    }

    /// The stored kind (`conversation_claims.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Conversation { .. } => "conversation",
            Self::Tenant { .. } => "tenant",
            Self::Bot { .. } => "bot",
        }
    }

    /// The bot the claim is about.
    pub fn bot_app_id(&self) -> &str {
        match self {
            Self::Conversation { bot_app_id, .. } | Self::Tenant { bot_app_id, .. } | Self::Bot { bot_app_id } => bot_app_id,
        }
    }

    /// The row's primary key: one row, so one holder, per target (a conversation is one per bot, whatever
    /// its tenant). App ids never contain `/`.
    pub fn key(&self) -> String {
        match self {
            Self::Conversation { bot_app_id, conversation_id, .. } => format!("conversation/{bot_app_id}/{conversation_id}"),
            Self::Tenant { bot_app_id, tenant_id } => format!("tenant/{bot_app_id}/{tenant_id}"),
            Self::Bot { bot_app_id } => format!("bot/{bot_app_id}"),
        }
    }

    /// The stored columns: (kind, bot, tenant, conversation).
    pub(crate) fn columns(&self) -> (&'static str, &str, Option<&str>, Option<&str>) {
        match self {
            Self::Conversation { bot_app_id, tenant_id, conversation_id } => {
                (self.kind(), bot_app_id, Some(tenant_id), Some(conversation_id))
            }
            Self::Tenant { bot_app_id, tenant_id } => (self.kind(), bot_app_id, Some(tenant_id), None),
            Self::Bot { bot_app_id } => (self.kind(), bot_app_id, None, None),
        }
    }

    /// The target a stored row names.
    pub(crate) fn from_columns(kind: &str, bot: String, tenant: Option<String>, conversation: Option<String>) -> Result<Self, StoreError> {
        match (kind, tenant, conversation) {
            ("conversation", Some(tenant_id), Some(conversation_id)) => {
                Ok(Self::Conversation { bot_app_id: bot, tenant_id, conversation_id })
            }
            ("tenant", Some(tenant_id), _) => Ok(Self::Tenant { bot_app_id: bot, tenant_id }),
            ("bot", _, _) => Ok(Self::Bot { bot_app_id: bot }),
            (kind, ..) => Err(StoreError::Corrupt(format!("a conversation claim of unknown kind `{kind}` (or without its id)"))),
        }
    }
}

/// Who takes claims: one MCP session, named by a random id, with what `status` shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHolder {
    /// The session's random id (never the MCP session id of the transport).
    pub session: String,
    /// The host's client name, as it introduced itself.
    pub client: String,
    /// The session's scope: `stdio`, or the `/mcp` token's name.
    pub scope: String,
}

/// A claim as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    pub target: ClaimTarget,
    /// The holding session's id.
    pub session: String,
    pub client: String,
    pub scope: String,
    /// When the lease runs out unless renewed (ms since the epoch).
    pub until_ms: i64,
}

/// What [`super::Store::claim_conversations`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Every target is the holder's now (taken, or its own extended).
    Taken(Vec<Claim>),
    /// Another session holds these (live) targets: nothing was taken.
    Held(Vec<Claim>),
}

/// Lapsed claims are deleted this long after they ran out (their rows only matter while live).
pub const CLAIM_ROWS_KEPT_MS: i64 = 3_600_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_through_their_columns() {
        for t in [
            ClaimTarget::conversation("BOT-A", "Tenant-1", "a:Case-Matters"),
            ClaimTarget::tenant("bot-a", " TENANT-1 "),
            ClaimTarget::bot("Bot-A"),
        ] {
            let (kind, bot, tenant, conv) = t.columns();
            let back = ClaimTarget::from_columns(kind, bot.to_owned(), tenant.map(str::to_owned), conv.map(str::to_owned)).unwrap();
            assert_eq!(back, t);
        }
        assert_eq!(ClaimTarget::conversation("BOT-A", "t", "a:Case-Matters").key(), "conversation/bot-a/a:Case-Matters");
        assert_eq!(ClaimTarget::tenant("bot-a", " TENANT-1 ").key(), "tenant/bot-a/tenant-1");
        assert!(ClaimTarget::from_columns("team", "b".into(), None, None).is_err());
        assert!(ClaimTarget::from_columns("conversation", "b".into(), None, Some("a:1".into())).is_err());
    }
}
