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
            // Feedback (`message/submitAction`): 200 with an empty body; Teams lists a body as an error.
            // The answer to a file consent card (`fileConsent/invoke`): 200, empty (botbuilder's
            // `handleTeamsFileConsent`).
            Some("message/submitAction" | "fileConsent/invoke") => Value::Null,
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
        // Feedback: an empty body (intake sends no body at all for `Null`).
        let feedback = parse(serde_json::json!({"type":"invoke","name":"message/submitAction"}));
        assert_eq!(InvokeResponse::acknowledge(&feedback, "ok").body, Value::Null);
        let consent = parse(serde_json::json!({"type":"invoke","name":"fileConsent/invoke"}));
        assert_eq!(InvokeResponse::acknowledge(&consent, "ok").body, Value::Null);
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

#[cfg(test)]
mod proptests {
    //! Properties of the wire types: any JSON parses or is refused without a panic, nothing unknown is lost on
    //! a round trip, and [`Activity::tenant_id`] follows its two fields.

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Keys the parser gives a meaning to somewhere, so that generated objects hit the typed fields too.
    const KNOWN_KEYS: &[&str] = &[
        "type",
        "id",
        "channelId",
        "serviceUrl",
        "from",
        "recipient",
        "conversation",
        "channelData",
        "name",
        "text",
        "value",
        "replyToId",
        "action",
        "tenant",
        "tenantId",
        "eventType",
        "aadObjectId",
        "role",
        "conversationType",
        "isGroup",
    ];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![proptest::sample::select(KNOWN_KEYS).prop_map(str::to_owned), "[a-zA-Z_]{1,8}"]
    }

    /// Any JSON value, biased towards the activity's own keys.
    pub(super) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Keys no struct names, for the `extra` maps.
    fn unknown_key() -> impl Strategy<Value = String> {
        "x[a-zA-Z0-9_]{0,8}"
    }

    fn extras() -> impl Strategy<Value = Map<String, Value>> {
        proptest::collection::btree_map(unknown_key(), json_value(), 0..4).prop_map(|m| m.into_iter().collect())
    }

    /// A tenant id, or its absence, from a tiny alphabet so that equal (or case-equal) pairs are common.
    fn tenant() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[tT][12]?|")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_json_parses_or_is_refused_and_a_parse_is_stable(v in json_value()) {
            if let Ok(a) = serde_json::from_value::<Activity>(v) {
                let again: Activity = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
                prop_assert_eq!(again, a);
            }
        }

        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<Activity>(&bytes);
        }

        #[test]
        fn unknown_fields_survive_a_round_trip(
            top in extras(), from in extras(), conversation in extras(), channel_data in extras(), tenant in extras(),
        ) {
            let mut raw = json!({
                "type": "message",
                "from": {"id": "29:x"},
                "conversation": {"id": "a:1"},
                "channelData": {"tenant": {"id": "t"}},
            });
            let merge = |target: &mut Value, extra: &Map<String, Value>| {
                for (k, v) in extra {
                    target[k] = v.clone();
                }
            };
            merge(&mut raw, &top);
            merge(&mut raw["from"], &from);
            merge(&mut raw["conversation"], &conversation);
            merge(&mut raw["channelData"], &channel_data);
            merge(&mut raw["channelData"]["tenant"], &tenant);
            let a: Activity = serde_json::from_value(raw.clone()).unwrap();
            prop_assert_eq!(serde_json::to_value(&a).unwrap(), raw);
        }

        #[test]
        fn tenant_id_agrees_with_the_fields(from_channel_data in tenant(), from_conversation in tenant()) {
            let mut raw = json!({"type": "message", "conversation": {"id": "c"}});
            if let Some(t) = &from_channel_data {
                raw["channelData"] = json!({"tenant": {"id": t}});
            }
            if let Some(t) = &from_conversation {
                raw["conversation"]["tenantId"] = json!(t);
            }
            let a: Activity = serde_json::from_value(raw).unwrap();
            let a_id = from_channel_data.as_deref().filter(|s| !s.is_empty());
            let b_id = from_conversation.as_deref().filter(|s| !s.is_empty());
            match a.tenant_id() {
                Ok(t) => {
                    prop_assert!(a_id == Some(t) || (a_id.is_none() && b_id == Some(t)), "{t} comes from a field, channelData first");
                    if let (Some(x), Some(y)) = (a_id, b_id) {
                        prop_assert!(x.eq_ignore_ascii_case(y));
                    }
                }
                Err(TenantError::Missing) => prop_assert!(a_id.is_none() && b_id.is_none()),
                Err(TenantError::Disagree) => {
                    prop_assert!(a_id.zip(b_id).is_some_and(|(x, y)| !x.eq_ignore_ascii_case(y)));
                }
            }
        }
    }
}
