//! State two bridge features keep in the store, each in a table of its own: the welcome marker (`welcomes`:
//! a conversation was welcomed, [`super::Store::record_welcome`]) and the files offered with a consent card
//! (`file_offers`: [`FileOffer`], moved from state to state by [`super::Store::transition_file_offer`]).
//!
//! Both used to be rows of `agent_id_provisioning` keyed by a prefix (`welcome:{bot}:{conversation}`,
//! `file_consent:{consent id}`); the migration step that created these tables moved such rows here, read by
//! [`legacy_welcome`] and [`legacy_offer`] (SQLite; Postgres does the same in SQL).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{AppId, ConversationId, TenantId};

/// Where a file offer stands. `offered` → `uploading` (accepted) → `uploaded` or `failed`; `offered` →
/// `declined`, `expired` (nobody answered in time) or `failed` (its card was refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferState {
    Offered,
    Uploading,
    Uploaded,
    Declined,
    Failed,
    Expired,
}

impl OfferState {
    /// The stored name (`file_offers.state`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Uploading => "uploading",
            Self::Uploaded => "uploaded",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Offered, Self::Uploading, Self::Uploaded, Self::Declined, Self::Failed, Self::Expired]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// Whether an offer may go from this state to `to` (the consent flow's transitions; the others are
    /// final).
    pub fn can_become(self, to: Self) -> bool {
        matches!(
            (self, to),
            (Self::Offered, Self::Uploading | Self::Declined | Self::Expired | Self::Failed)
                | (Self::Uploading, Self::Uploaded | Self::Failed)
        )
    }
}

/// Refuse a transition the consent flow does not have (a bug in the caller), before anything is written.
pub(crate) fn check_transition(from: OfferState, to: OfferState) -> Result<(), super::StoreError> {
    if from.can_become(to) { Ok(()) } else { Err(super::StoreError::Database(format!("a file offer does not go from `{from}` to `{to}`"))) }
}

impl std::fmt::Display for OfferState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file offered in a 1:1 chat with a consent card, as stored (one row of `file_offers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOffer {
    /// The consent id (`fc` and 16 hex digits), also the name of the bytes in the spool.
    pub id: String,
    pub bot_app_id: AppId,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    /// The file's name, as offered.
    pub name: String,
    pub size: u64,
    /// The SHA-256 of the bytes (hex), checked again before the upload.
    pub sha256: String,
    /// Who asked (`mcp:<scope>:<client>`): named again by the file info card's audit event.
    pub requested_by: String,
    pub state: OfferState,
    /// Why it failed, or which outbox entry carried the file info card.
    pub detail: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// When an offer nobody answered is forgotten (`files.consent_ttl_secs` after it was made).
    pub expires_at_ms: i64,
}

/// How long offers moved from `agent_id_provisioning` wait for an answer: the default
/// `files.consent_ttl_secs` (the configured value is not known to a migration).
pub const LEGACY_OFFER_TTL_MS: i64 = 86_400_000;

/// The (bot, conversation) of a welcome marker kept as a provisioning record (`welcome:{bot}:{conversation}`,
/// the bot in lower case); `None` for any other key.
pub fn legacy_welcome(key: &str) -> Option<(String, String)> {
    let (bot, conversation) = key.strip_prefix("welcome:")?.split_once(':')?;
    (!bot.is_empty() && !conversation.is_empty()).then(|| (bot.to_ascii_lowercase(), conversation.to_owned()))
}

/// The offer a provisioning record `file_consent:{id}` held (its state the offer as JSON), last written at
/// `updated_at_ms`; `None` for any other key, or a record that does not read as an offer (the code that
/// wrote them ignored those too).
pub fn legacy_offer(key: &str, state: &str, updated_at_ms: i64) -> Option<FileOffer> {
    let id = key.strip_prefix("file_consent:").filter(|id| !id.is_empty())?;
    let v: Value = serde_json::from_str(state).ok()?;
    let text = |field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let created_at_ms = v.get("created_ms")?.as_i64()?;
    Some(FileOffer {
        id: id.to_owned(),
        bot_app_id: text("bot")?.into(),
        tenant_id: text("tenant")?.into(),
        conversation_id: text("conversation")?.into(),
        name: text("name")?,
        size: v.get("size")?.as_u64().filter(|s| i64::try_from(*s).is_ok())?,
        sha256: text("sha256")?,
        requested_by: text("requested_by")?,
        state: OfferState::parse(&text("state")?)?,
        detail: text("detail"),
        created_at_ms,
        updated_at_ms,
        expires_at_ms: created_at_ms.saturating_add(LEGACY_OFFER_TTL_MS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_states_round_trip_and_only_the_flow_s_transitions_are_allowed() {
        use OfferState::*;
        for s in [Offered, Uploading, Uploaded, Declined, Failed, Expired] {
            assert_eq!(OfferState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str(), "the name the old JSON records used");
        }
        assert_eq!(OfferState::parse("sent"), None);
        assert!(Offered.can_become(Uploading) && Offered.can_become(Declined) && Offered.can_become(Expired) && Offered.can_become(Failed));
        assert!(Uploading.can_become(Uploaded) && Uploading.can_become(Failed));
        assert!(!Uploading.can_become(Declined) && !Uploading.can_become(Expired) && !Offered.can_become(Uploaded));
        for done in [Uploaded, Declined, Failed, Expired] {
            assert!([Offered, Uploading, Uploaded, Declined, Failed, Expired].iter().all(|to| !done.can_become(*to)), "{done}");
        }
    }

    #[test]
    fn legacy_records_are_read_or_left_out() {
        assert_eq!(legacy_welcome("welcome:APP-1:19:c@thread.v2"), Some(("app-1".into(), "19:c@thread.v2".into())));
        assert_eq!(legacy_welcome("welcome:app-1:a:1x:y"), Some(("app-1".into(), "a:1x:y".into())));
        for other in ["welcome:app-1", "welcome::c", "welcome:app-1:", "app-1/tenant", "file_consent:fc00"] {
            assert_eq!(legacy_welcome(other), None, "{other}");
        }
        let state = r#"{"bot":"app-1","tenant":"t","conversation":"a:1","name":"x.txt","size":3,"sha256":"ab","requested_by":"mcp:stdio:c","created_ms":100,"state":"uploaded","detail":"file card: outbox #4"}"#;
        let offer = legacy_offer("file_consent:fc0123456789abcdef", state, 200).unwrap();
        assert_eq!((offer.id.as_str(), offer.bot_app_id.as_str(), offer.conversation_id.as_str()), ("fc0123456789abcdef", "app-1", "a:1"));
        assert_eq!((offer.size, offer.state, offer.detail.as_deref()), (3, OfferState::Uploaded, Some("file card: outbox #4")));
        assert_eq!((offer.created_at_ms, offer.updated_at_ms, offer.expires_at_ms), (100, 200, 100 + LEGACY_OFFER_TTL_MS));
        let without_detail = state.replace(r#","detail":"file card: outbox #4""#, "");
        assert_eq!(legacy_offer("file_consent:fc1", &without_detail, 1).unwrap().detail, None);
        assert_eq!(legacy_offer("welcome:fc1", state, 1), None, "another prefix");
        assert_eq!(legacy_offer("file_consent:fc1", "not json", 1), None);
        assert_eq!(legacy_offer("file_consent:fc1", &state.replace("uploaded", "lost"), 1), None, "an unknown state");
        assert_eq!(legacy_offer("file_consent:fc1", &state.replace(r#""size":3"#, r#""size":-3"#), 1), None);
    }
}
