//! Adaptive Cards: validating and sending them, and reading what users do with them.
//!
//! * `Action.Submit` arrives as a `message` whose `value` holds the card's data (usually with no text) and
//!   whose `replyToId` is the card message: [`card_submit`].
//! * `Action.Execute` (Universal Actions) arrives as an `invoke` named `adaptiveCard/action`, answered
//!   synchronously with an invoke response: [`execute_action`], then [`card_response`] (replace the card),
//!   [`message_response`] (a toast) or [`error_response`] / [`InvokeError::response`].
//!
//! Reference: bot-framework-protocol.md §4 "Adaptive Card actions" (botbuilder `getAdaptiveCardInvokeValue`
//! and Agents-for-net `AdaptiveCardInvokeResponseFactory`).

use serde_json::{Value, json};

use super::split::{LOCAL_MAX_ACTIVITY_UTF16, activity_size_utf16};
use crate::activity::{Activity, InvokeResponse, Kind};

/// `contentType` of an Adaptive Card attachment, and `type` of an invoke response carrying a card.
pub(crate) const ADAPTIVE_CARD_CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";

/// `type` of an invoke response whose `value` is a message Teams shows as a toast.
pub(crate) const INVOKE_MESSAGE_TYPE: &str = "application/vnd.microsoft.activity.message";

/// `type` of an invoke response whose `value` is an error `{code, message}`.
pub(crate) const INVOKE_ERROR_TYPE: &str = "application/vnd.microsoft.error";

/// The invoke name of Universal Actions (`Action.Execute`).
pub(crate) const ADAPTIVE_CARD_ACTION_INVOKE: &str = "adaptiveCard/action";

/// The action types a card may use (Teams' supported set).
pub(crate) const SUPPORTED_ACTIONS: [&str; 5] =
    ["Action.Submit", "Action.Execute", "Action.OpenUrl", "Action.ShowCard", "Action.ToggleVisibility"];

/// Largest card accepted, serialized, in UTF-16 units: the local activity ceiling less 4 KB for the rest of
/// the message.
pub(crate) const MAX_CARD_UTF16: usize = LOCAL_MAX_ACTIVITY_UTF16 - 4 * 1024;

/// Deepest nesting of containers, actions and show-cards accepted.
pub(crate) const MAX_CARD_DEPTH: usize = 32;

/// Why a value is not a card we will send. `path` names the offending place (`body[1].actions[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CardError {
    #[error("the card is not a JSON object")]
    NotAnObject,
    #[error("`{path}` is not an object with \"type\": \"AdaptiveCard\"")]
    NotAnAdaptiveCard { path: String },
    #[error("the card has no `version` string")]
    MissingVersion,
    #[error("`{path}` is not an array")]
    NotAnArray { path: String },
    #[error("`{path}` is not an object")]
    NotAnObjectAt { path: String },
    #[error("`{path}` has the unsupported action type {kind:?}")]
    UnsupportedAction { path: String, kind: String },
    #[error("the card nests deeper than {MAX_CARD_DEPTH} levels")]
    TooDeep,
    #[error("the card is {size} UTF-16 units, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

/// Checks that `card` is an Adaptive Card we can send: an object with `"type": "AdaptiveCard"` and a
/// `version` string; `body` (if present) an array of objects; every action — in `actions`, in `ActionSet`s,
/// `selectAction`s and `inlineAction`s, at any depth of containers, columns and table cells, and in
/// `Action.ShowCard` cards — of a [`SUPPORTED_ACTIONS`] type; nested at most [`MAX_CARD_DEPTH`] deep; and at
/// most [`MAX_CARD_UTF16`] serialized. Element types themselves are not checked (Teams ignores unknown ones
/// or shows their `fallback`).
pub(crate) fn validate_card(card: &Value) -> Result<(), CardError> {
    if !card.is_object() {
        return Err(CardError::NotAnObject);
    }
    check_card(card, "", true, 0)?;
    let size = activity_size_utf16(card);
    if size > MAX_CARD_UTF16 {
        return Err(CardError::TooLarge { size, limit: MAX_CARD_UTF16 });
    }
    Ok(())
}

#[cfg(test)]
/// A `message` activity carrying `card` as its one attachment, after [`validate_card`]. The sender adds the
/// addressing (`conversation`, `from`, `recipient`, `replyToId`).
pub(crate) fn card_message(card: Value) -> Result<Value, CardError> {
    validate_card(&card)?;
    Ok(json!({
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "content": card}],
    }))
}

/// The data of an `Action.Submit`: the `value` of a `message` activity (`None` for other activities or when
/// `value` is absent or null). Teams usually sends no `text` with it; `replyToId` is the card's message.
pub(crate) fn card_submit(activity: &Activity) -> Option<&Value> {
    (activity.kind() == Kind::Message).then_some(activity.value.as_ref()).flatten().filter(|v| !v.is_null())
}

/// How an `Action.Execute` was triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Trigger {
    /// The user pressed the button.
    #[default]
    Manual,
    /// The client asks for a refreshed card (the card's `refresh` action).
    Automatic,
}

/// A Universal Action (`Action.Execute`) read from an `adaptiveCard/action` invoke.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecuteAction {
    /// The action's `verb`.
    pub verb: Option<String>,
    /// The action's `data` merged by the client with the card's inputs (`Value::Null` when absent).
    pub data: Value,
    /// The action's `id`.
    pub id: Option<String>,
    /// The action's `title`.
    pub title: Option<String>,
    /// `value.trigger`.
    pub trigger: Trigger,
    /// `value.state` (the magic code of a sign-in flow), if any.
    pub state: Option<String>,
    /// `replyToId`: the message holding the card.
    pub card_message_id: Option<String>,
}

/// Why an invoke is not a usable `Action.Execute`. [`InvokeError::response`] gives the invoke response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvokeError {
    /// Not an `invoke` named `adaptiveCard/action`.
    #[error("not an adaptiveCard/action invoke")]
    NotAnActionInvoke,
    /// No `value` (botbuilder: 400 `BadRequest` "Missing value property").
    #[error("Missing value property")]
    MissingValue,
    /// `value.action` missing or not an object.
    #[error("Missing action property")]
    MissingAction,
    /// The action is not `Action.Execute` (botbuilder: 400 `NotSupported`).
    #[error("The action '{0}' is not supported.")]
    NotSupported(String),
}

impl InvokeError {
    /// The error `code` sent to Teams.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NotAnActionInvoke => "NotImplemented",
            Self::MissingValue | Self::MissingAction => "BadRequest",
            Self::NotSupported(_) => "NotSupported",
        }
    }

    /// The HTTP status: 400, or 501 for an invoke that is not `adaptiveCard/action` (as botbuilder answers
    /// an invoke nobody handles).
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::NotAnActionInvoke => 501,
            _ => 400,
        }
    }

    /// The invoke response: `{statusCode, type: "application/vnd.microsoft.error", value: {code, message}}`.
    pub(crate) fn response(&self) -> InvokeResponse {
        error_response(self.status(), self.code(), &self.to_string())
    }
}

/// Reads an `Action.Execute` from an `invoke` activity named `adaptiveCard/action`, with botbuilder's checks:
/// `value` must be present and its `action.type` must be `Action.Execute`.
pub(crate) fn execute_action(activity: &Activity) -> Result<ExecuteAction, InvokeError> {
    if activity.kind() != Kind::Invoke || activity.name.as_deref() != Some(ADAPTIVE_CARD_ACTION_INVOKE) {
        return Err(InvokeError::NotAnActionInvoke);
    }
    let value = activity.value.as_ref().filter(|v| !v.is_null()).ok_or(InvokeError::MissingValue)?;
    let action = value.get("action").filter(|a| a.is_object()).ok_or(InvokeError::MissingAction)?;
    let kind = action.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "Action.Execute" {
        return Err(InvokeError::NotSupported(kind.to_owned()));
    }
    let string = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(ExecuteAction {
        verb: string(action, "verb"),
        data: action.get("data").cloned().unwrap_or(Value::Null),
        id: string(action, "id"),
        title: string(action, "title"),
        trigger: match value.get("trigger").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("automatic") => Trigger::Automatic,
            _ => Trigger::Manual,
        },
        state: string(value, "state"),
        card_message_id: activity.reply_to_id.clone(),
    })
}

/// Invoke response replacing the card with `card` (200, `application/vnd.microsoft.card.adaptive`), after
/// [`validate_card`].
pub(crate) fn card_response(card: Value) -> Result<InvokeResponse, CardError> {
    validate_card(&card)?;
    Ok(invoke_response(200, ADAPTIVE_CARD_CONTENT_TYPE, card))
}

/// Invoke response showing `text` as a toast (200, `application/vnd.microsoft.activity.message`).
pub(crate) fn message_response(text: &str) -> InvokeResponse {
    invoke_response(200, INVOKE_MESSAGE_TYPE, Value::String(text.to_owned()))
}

/// Error invoke response (`application/vnd.microsoft.error`, `value: {code, message}`); the HTTP status is
/// `status` as well.
pub(crate) fn error_response(status: u16, code: &str, message: &str) -> InvokeResponse {
    invoke_response(status, INVOKE_ERROR_TYPE, json!({"code": code, "message": message}))
}

fn invoke_response(status: u16, kind: &str, value: Value) -> InvokeResponse {
    InvokeResponse { status, body: json!({"statusCode": status, "type": kind, "value": value}) }
}

fn check_card(card: &Value, path: &str, top: bool, depth: usize) -> Result<(), CardError> {
    if depth > MAX_CARD_DEPTH {
        return Err(CardError::TooDeep);
    }
    let Some(obj) = card.as_object().filter(|o| o.get("type").and_then(Value::as_str) == Some("AdaptiveCard")) else {
        return Err(CardError::NotAnAdaptiveCard { path: display_path(path) });
    };
    if top && obj.get("version").and_then(Value::as_str).is_none_or(|v| v.trim().is_empty()) {
        return Err(CardError::MissingVersion);
    }
    if let Some(body) = obj.get("body") {
        for (i, element) in array(body, &join(path, "body"))?.iter().enumerate() {
            check_element(element, &format!("{}[{i}]", join(path, "body")), depth + 1)?;
        }
    }
    check_actions(obj, path, depth)
}

fn check_element(element: &Value, path: &str, depth: usize) -> Result<(), CardError> {
    if depth > MAX_CARD_DEPTH {
        return Err(CardError::TooDeep);
    }
    let obj = element.as_object().ok_or_else(|| CardError::NotAnObjectAt { path: path.to_owned() })?;
    for key in ["items", "columns", "rows", "cells"] {
        if let Some(children) = obj.get(key) {
            let at = join(path, key);
            for (i, child) in array(children, &at)?.iter().enumerate() {
                check_element(child, &format!("{at}[{i}]"), depth + 1)?;
            }
        }
    }
    check_actions(obj, path, depth)
}

/// `actions`, `selectAction` and `inlineAction` of a card or element.
fn check_actions(obj: &serde_json::Map<String, Value>, path: &str, depth: usize) -> Result<(), CardError> {
    if let Some(actions) = obj.get("actions") {
        let at = join(path, "actions");
        for (i, action) in array(actions, &at)?.iter().enumerate() {
            check_action(action, &format!("{at}[{i}]"), depth + 1)?;
        }
    }
    for key in ["selectAction", "inlineAction"] {
        if let Some(action) = obj.get(key) {
            check_action(action, &join(path, key), depth + 1)?;
        }
    }
    Ok(())
}

fn check_action(action: &Value, path: &str, depth: usize) -> Result<(), CardError> {
    if depth > MAX_CARD_DEPTH {
        return Err(CardError::TooDeep);
    }
    let obj = action.as_object().ok_or_else(|| CardError::NotAnObjectAt { path: path.to_owned() })?;
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    if !SUPPORTED_ACTIONS.contains(&kind) {
        return Err(CardError::UnsupportedAction { path: path.to_owned(), kind: kind.to_owned() });
    }
    if kind == "Action.ShowCard"
        && let Some(card) = obj.get("card")
    {
        check_card(card, &join(path, "card"), false, depth + 1)?;
    }
    Ok(())
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, CardError> {
    v.as_array().ok_or_else(|| CardError::NotAnArray { path: path.to_owned() })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn display_path(path: &str) -> String {
    if path.is_empty() { "card".to_owned() } else { path.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teams::testdata;

    fn playground_card() -> Value {
        let out: Value = serde_json::from_str(testdata::OUT_REPLY_CARD).unwrap();
        out["attachments"][0]["content"].clone()
    }

    fn card(body: Value, actions: Value) -> Value {
        json!({"type": "AdaptiveCard", "version": "1.5", "body": body, "actions": actions})
    }

    #[test]
    fn the_playground_card_is_valid_and_its_message_matches_the_recorded_reply() {
        let c = playground_card();
        assert_eq!(validate_card(&c), Ok(()));
        let expected: Value = serde_json::from_str(testdata::OUT_REPLY_CARD).unwrap();
        assert_eq!(card_message(c).unwrap(), expected);
    }

    #[test]
    fn refuses_what_is_not_a_card() {
        assert_eq!(validate_card(&json!([1])), Err(CardError::NotAnObject));
        assert_eq!(validate_card(&json!("{\"type\":\"AdaptiveCard\"}")), Err(CardError::NotAnObject));
        assert_eq!(
            validate_card(&json!({"type": "HeroCard", "version": "1.4"})),
            Err(CardError::NotAnAdaptiveCard { path: "card".into() })
        );
        assert_eq!(validate_card(&json!({"type": "AdaptiveCard"})), Err(CardError::MissingVersion));
        assert_eq!(validate_card(&json!({"type": "AdaptiveCard", "version": 1.4})), Err(CardError::MissingVersion));
        assert_eq!(
            validate_card(&json!({"type": "AdaptiveCard", "version": "1.4", "body": {"type": "TextBlock"}})),
            Err(CardError::NotAnArray { path: "body".into() })
        );
        assert_eq!(validate_card(&card(json!(["text"]), json!([]))), Err(CardError::NotAnObjectAt { path: "body[0]".into() }));
        assert!(card_message(json!({"type": "AdaptiveCard"})).is_err());
        // A minimal card without body is fine.
        assert_eq!(validate_card(&json!({"type": "AdaptiveCard", "version": "1.0"})), Ok(()));
    }

    #[test]
    fn checks_actions_at_every_depth() {
        let bad = |path: &str, kind: &str| Err(CardError::UnsupportedAction { path: path.into(), kind: kind.into() });
        assert_eq!(validate_card(&card(json!([]), json!([{"type": "Action.Http", "url": "https://x"}]))), bad("actions[0]", "Action.Http"));
        assert_eq!(validate_card(&card(json!([]), json!([{"title": "no type"}]))), bad("actions[0]", ""));
        let action_set = json!([{"type": "Container", "items": [{"type": "ActionSet", "actions": [
            {"type": "Action.OpenUrl", "url": "https://example.com"},
            {"type": "Action.Unknown"}
        ]}]}]);
        assert_eq!(validate_card(&card(action_set, json!([]))), bad("body[0].items[0].actions[1]", "Action.Unknown"));
        let select = json!([{"type": "ColumnSet", "columns": [{"type": "Column", "items": [], "selectAction": {"type": "Action.Foo"}}]}]);
        assert_eq!(validate_card(&card(select, json!([]))), bad("body[0].columns[0].selectAction", "Action.Foo"));
        let show_card = json!([{"type": "Action.ShowCard", "title": "More", "card": {"type": "AdaptiveCard", "body": [],
            "actions": [{"type": "Action.ToggleVisibility", "targetElements": ["x"]}, {"type": "Action.Http"}]}}]);
        assert_eq!(validate_card(&card(json!([]), show_card)), bad("actions[0].card.actions[1]", "Action.Http"));
        let show_not_card = json!([{"type": "Action.ShowCard", "card": {"type": "TextBlock"}}]);
        assert_eq!(validate_card(&card(json!([]), show_not_card)), Err(CardError::NotAnAdaptiveCard { path: "actions[0].card".into() }));
        assert_eq!(
            validate_card(&card(json!([]), json!({"type": "Action.Submit"}))),
            Err(CardError::NotAnArray { path: "actions".into() })
        );
        // Data may hold anything, including objects that look like actions.
        let data = json!([{"type": "Action.Submit", "data": {"type": "Action.Whatever", "actions": 3}}]);
        assert_eq!(validate_card(&card(json!([]), data)), Ok(()));
    }

    #[test]
    fn refuses_deep_and_oversize_cards() {
        let mut element = json!({"type": "TextBlock", "text": "deep"});
        for _ in 0..40 {
            element = json!({"type": "Container", "items": [element]});
        }
        assert_eq!(validate_card(&card(json!([element]), json!([]))), Err(CardError::TooDeep));
        let big = card(json!([{"type": "TextBlock", "text": "x".repeat(MAX_CARD_UTF16)}]), json!([]));
        assert!(matches!(validate_card(&big), Err(CardError::TooLarge { limit: MAX_CARD_UTF16, .. })));
        // CJK and emoji count in UTF-16 units, not bytes: 30 000 × "日" is 90 KB of UTF-8 but fits.
        let cjk = card(json!([{"type": "TextBlock", "text": "日".repeat(30_000)}]), json!([]));
        assert_eq!(validate_card(&cjk), Ok(()));
    }

    #[test]
    fn reads_the_playground_card_submit() {
        let a = testdata::activity(testdata::CARD_SUBMIT);
        assert_eq!(card_submit(&a), Some(&json!({"decision": "approve", "requestId": "req-42"})));
        assert_eq!(a.text, None);
        assert_eq!(a.reply_to_id.as_deref(), Some("1795320403656"));
        assert_eq!(card_submit(&testdata::activity(testdata::MESSAGE_PERSONAL)), None);
        assert_eq!(card_submit(&testdata::activity(testdata::INVOKE_ADAPTIVE_CARD_ACTION)), None, "an invoke is not a submit");
        let mut null_value = testdata::activity(testdata::CARD_SUBMIT);
        null_value.value = Some(Value::Null);
        assert_eq!(card_submit(&null_value), None);
    }

    #[test]
    fn reads_the_playground_execute_action() {
        let a = testdata::activity(testdata::INVOKE_ADAPTIVE_CARD_ACTION);
        let action = execute_action(&a).unwrap();
        assert_eq!(
            action,
            ExecuteAction {
                verb: Some("deny".into()),
                data: json!({"requestId": "req-42"}),
                id: None,
                title: None,
                trigger: Trigger::Manual,
                state: None,
                card_message_id: Some("1795320403656".into()),
            }
        );
        let mut auto = a.clone();
        auto.value = Some(json!({"action": {"type": "Action.Execute", "verb": "refresh", "id": "r1"}, "trigger": "automatic"}));
        let refresh = execute_action(&auto).unwrap();
        assert_eq!((refresh.trigger, refresh.id.as_deref(), refresh.data), (Trigger::Automatic, Some("r1"), Value::Null));
    }

    #[test]
    fn bad_execute_invokes_get_botbuilder_error_responses() {
        let base = testdata::activity(testdata::INVOKE_ADAPTIVE_CARD_ACTION);

        let mut missing = base.clone();
        missing.value = None;
        let err = execute_action(&missing).unwrap_err();
        assert_eq!(err, InvokeError::MissingValue);
        let r = err.response();
        assert_eq!(r.status, 400);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"statusCode": 400, "type": "application/vnd.microsoft.error", "value": {"code": "BadRequest", "message": "Missing value property"}})
        );

        let mut submit = base.clone();
        submit.value = Some(json!({"action": {"type": "Action.Submit", "data": {}}}));
        let err = execute_action(&submit).unwrap_err();
        assert_eq!(err, InvokeError::NotSupported("Action.Submit".into()));
        assert_eq!(err.response().status, 400);
        assert_eq!(
            err.response().body["value"],
            json!({"code": "NotSupported", "message": "The action 'Action.Submit' is not supported."})
        );

        let mut no_action = base.clone();
        no_action.value = Some(json!({"trigger": "manual"}));
        assert_eq!(execute_action(&no_action).unwrap_err().response().body["value"]["code"], "BadRequest");

        let mut other = base;
        other.name = Some("task/fetch".into());
        let err = execute_action(&other).unwrap_err();
        assert_eq!(err, InvokeError::NotAnActionInvoke);
        assert_eq!(err.response().status, 501);
        assert_eq!(execute_action(&testdata::activity(testdata::CARD_SUBMIT)), Err(InvokeError::NotAnActionInvoke));
    }

    #[test]
    fn builds_invoke_responses() {
        let refreshed = card(json!([{"type": "TextBlock", "text": "Denied by Alice"}]), json!([]));
        let r = card_response(refreshed.clone()).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"statusCode": 200, "type": "application/vnd.microsoft.card.adaptive", "value": refreshed})
        );
        assert!(card_response(json!({"type": "AdaptiveCard"})).is_err());

        let toast = message_response("Request denied");
        assert_eq!((toast.status, &toast.body["type"], &toast.body["value"]), (200, &json!(INVOKE_MESSAGE_TYPE), &json!("Request denied")));
        // The same shape as the default acknowledgement in `activity.rs`.
        let ack = InvokeResponse::acknowledge(&testdata::activity(testdata::INVOKE_ADAPTIVE_CARD_ACTION), "Request denied");
        assert_eq!(toast, ack);

        let e = error_response(500, "InternalError", "the agent failed");
        assert_eq!(e.status, 500);
        assert_eq!(e.body["statusCode"], 500);
        assert_eq!(e.body["value"]["message"], "the agent failed");
    }
}
