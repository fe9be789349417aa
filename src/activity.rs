//! Bot Framework activities as Teams sends them. Wire types only: no HTTP, no storage.
//!
//! Every struct keeps the fields it does not name in `extra`, so nothing Teams sends is lost when an
//! activity is read, stored or forwarded.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An inbound or outbound activity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ChannelAccount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<ChannelAccount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationAccount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_data: Option<TeamsChannelData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelAccount {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad_object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationAccount {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_group: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamsChannelData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantInfo {
    #[serde(default)]
    pub id: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why an activity's tenant could not be determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("the activity names no tenant")]
    Missing,
    #[error("channelData.tenant.id and conversation.tenantId disagree")]
    Disagree,
}

/// The kinds of activity the gateway treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Invoke,
    ConversationUpdate,
    InstallationUpdate,
    Other,
}

impl Activity {
    pub fn kind(&self) -> Kind {
        match self.kind.as_str() {
            "message" => Kind::Message,
            "invoke" => Kind::Invoke,
            "conversationUpdate" => Kind::ConversationUpdate,
            "installationUpdate" => Kind::InstallationUpdate,
            _ => Kind::Other,
        }
    }

    /// The tenant, from `channelData.tenant.id` and `conversation.tenantId`, which must agree when
    /// both are present.
    pub fn tenant_id(&self) -> Result<&str, TenantError> {
        let from_channel_data = self.channel_data.as_ref().and_then(|c| c.tenant.as_ref()).map(|t| t.id.as_str()).filter(|s| !s.is_empty());
        let from_conversation = self.conversation.as_ref().and_then(|c| c.tenant_id.as_deref()).filter(|s| !s.is_empty());
        match (from_channel_data, from_conversation) {
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => Ok(a),
            (Some(_), Some(_)) => Err(TenantError::Disagree),
            (Some(a), None) | (None, Some(a)) => Ok(a),
            (None, None) => Err(TenantError::Missing),
        }
    }

    /// The conversation id, if present and non-empty.
    pub fn conversation_id(&self) -> Option<&str> {
        self.conversation.as_ref().map(|c| c.id.as_str()).filter(|s| !s.is_empty())
    }
}

/// The synchronous HTTP answer to an `invoke` activity: the status and JSON body Teams receives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvokeResponse {
    #[serde(skip)]
    pub status: u16,
    #[serde(flatten)]
    pub body: Value,
}

impl InvokeResponse {
    /// The default answer while the agent does not answer invokes itself: for Universal Actions
    /// (`adaptiveCard/action`) a message response Teams shows as a toast; for any other invoke an empty
    /// 200 (the request was received).
    pub fn acknowledge(activity: &Activity, text: &str) -> Self {
        let body = match activity.name.as_deref() {
            Some("adaptiveCard/action") => serde_json::json!({
                "statusCode": 200,
                "type": "application/vnd.microsoft.activity.message",
                "value": text,
            }),
            _ => Value::Object(Map::new()),
        };
        Self { status: 200, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Activity {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn keeps_unknown_fields_on_a_round_trip() {
        let raw = serde_json::json!({
            "type": "message", "id": "1", "channelId": "msteams", "locale": "en-US",
            "from": {"id": "29:x", "aadObjectId": "oid", "userRole": "user"},
            "conversation": {"id": "a:1", "conversationType": "personal", "tenantId": "t"},
            "channelData": {"tenant": {"id": "t"}, "team": {"id": "19:t"}},
            "entities": [{"type": "clientInfo"}]
        });
        let a = parse(raw.clone());
        assert_eq!(a.kind(), Kind::Message);
        assert_eq!(serde_json::to_value(&a).unwrap(), raw);
    }

    #[test]
    fn tenant_sources_must_agree() {
        let both = |a: &str, b: &str| {
            parse(serde_json::json!({"type":"message","conversation":{"id":"c","tenantId":b},"channelData":{"tenant":{"id":a}}}))
        };
        assert_eq!(both("t1", "t1").tenant_id(), Ok("t1"));
        assert_eq!(both("t1", "T1").tenant_id(), Ok("t1"));
        assert_eq!(both("t1", "t2").tenant_id(), Err(TenantError::Disagree));
        let only_conv = parse(serde_json::json!({"type":"message","conversation":{"id":"c","tenantId":"t3"}}));
        assert_eq!(only_conv.tenant_id(), Ok("t3"));
        let none = parse(serde_json::json!({"type":"message","conversation":{"id":"c"}}));
        assert_eq!(none.tenant_id(), Err(TenantError::Missing));
    }

    #[test]
    fn universal_action_invokes_get_a_message_response() {
        let a = parse(serde_json::json!({"type":"invoke","name":"adaptiveCard/action"}));
        let r = InvokeResponse::acknowledge(&a, "ok");
        assert_eq!(r.status, 200);
        assert_eq!(r.body["type"], "application/vnd.microsoft.activity.message");
        assert_eq!(r.body["value"], "ok");
        let other = parse(serde_json::json!({"type":"invoke","name":"task/fetch"}));
        assert_eq!(InvokeResponse::acknowledge(&other, "ok").body, serde_json::json!({}));
    }
}

/// An Agent 365 recipient: the agentic user (or app instance) an activity was addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgenticRecipient {
    /// The account id (the agentic user's UPN).
    pub id: String,
    /// `agenticUser` or `agenticAppInstance`.
    pub role: String,
    /// The Agent Identity's app id (the instance).
    #[serde(default)]
    pub agentic_app_id: Option<String>,
    /// The Agent User's object id.
    #[serde(default)]
    pub agentic_user_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

impl AgenticRecipient {
    /// Whether replies act as the Agent User (T3) rather than the instance alone.
    pub fn is_user(&self) -> bool {
        self.role.eq_ignore_ascii_case("agenticUser")
    }
}

/// The recipient of an agentic activity (role `agenticUser` / `agenticAppInstance`, any case; the
/// spec's older `agenticInstance` too) as stored JSON; `None` for a classic bot activity.
pub(crate) fn agentic_recipient(activity: &Activity) -> Option<AgenticRecipient> {
    let r = activity.recipient.as_ref()?;
    let role = r.role.as_deref()?;
    if !["agenticuser", "agenticappinstance", "agenticinstance"].contains(&role.to_ascii_lowercase().as_str()) {
        return None;
    }
    let field = |k: &str| r.extra.get(k).and_then(Value::as_str).map(str::to_owned);
    let recipient = AgenticRecipient {
        id: r.id.clone(),
        role: role.to_owned(),
        agentic_app_id: field("agenticAppId"),
        agentic_user_id: field("agenticUserId"),
        tenant_id: field("tenantId"),
    };
    Some(recipient)
}

#[cfg(test)]
mod agentic_tests {
    use super::*;

    #[test]
    fn agentic_roles_are_recognised_in_any_case() {
        for role in ["agenticUser", "AGENTICUSER", "agenticAppInstance", "agenticInstance"] {
            let a: Activity = serde_json::from_value(serde_json::json!({"type": "message", "recipient": {
                "id": "agent@contoso.com", "role": role, "agenticAppId": "app-1", "agenticUserId": "user-1", "tenantId": "t-1"}}))
            .unwrap();
            let r = agentic_recipient(&a).unwrap();
            assert_eq!(
                (r.agentic_app_id.as_deref(), r.agentic_user_id.as_deref(), r.tenant_id.as_deref()),
                (Some("app-1"), Some("user-1"), Some("t-1"))
            );
            assert_eq!(r.is_user(), role.eq_ignore_ascii_case("agenticUser"));
        }
        let classic: Activity =
            serde_json::from_value(serde_json::json!({"type": "message", "recipient": {"id": "28:bot", "role": "bot"}})).unwrap();
        assert!(agentic_recipient(&classic).is_none());
    }
}
