//! The "AI generated" label, citations and the feedback loop, in Teams' wire format (teams.ts
//! `activity.ts` `addAiGenerated`/`addCitation`/`addFeedback`, `citation-entity.ts`; teams.py
//! `_ensure_single_root_level_message_entity`; the limits Teams documents).
//!
//! * One root message entity per activity (`type` `https://schema.org/Message`, `@type` `Message`): the
//!   AI label is its `additionalType: ["AIGeneratedContent"]`, citations its `citation` list of `Claim`s.
//!   Two root entities get `400 Multiple root message entities found`.
//! * Citations: at most 20, `position` unique and cited as `[n]` in the text, `name` 1–80 characters,
//!   `abstract` 1–160, at most 3 `keywords` of at most 28 characters, the icon from Teams' fixed list.
//! * Feedback buttons: `channelData.feedbackLoopEnabled: true` (teams.ts `addFeedback`); the user's 👍/👎
//!   comes back as the `message/submitAction` invoke, `value.actionName` `feedback`,
//!   `value.actionValue {reaction: like|dislike, feedback: "<JSON string>"}`, `replyToId` the rated
//!   message; it is answered 200 with an empty body.

use serde_json::{Value, json};

use crate::activity::{Activity, Kind};

/// Most citations on one message.
pub(crate) const MAX_CITATIONS: usize = 20;
/// Longest citation name, in characters.
pub(crate) const MAX_CITATION_NAME: usize = 80;
/// Longest citation abstract, in characters.
pub(crate) const MAX_CITATION_ABSTRACT: usize = 160;
/// Most keywords of a citation ...
pub(crate) const MAX_KEYWORDS: usize = 3;
/// ... each at most this many characters.
pub(crate) const MAX_KEYWORD: usize = 28;
/// Longest feedback comment passed on, in characters.
pub(crate) const MAX_FEEDBACK_COMMENT: usize = 2000;

/// The icons Teams shows on a citation (`image.name`), teams.ts `CitationIconName`.
pub(crate) const CITATION_ICONS: &[&str] = &[
    "Microsoft Word",
    "Microsoft Excel",
    "Microsoft PowerPoint",
    "Microsoft OneNote",
    "Microsoft SharePoint",
    "Microsoft Visio",
    "Microsoft Loop",
    "Microsoft Whiteboard",
    "Adobe Illustrator",
    "Adobe Photoshop",
    "Adobe InDesign",
    "Adobe Flash",
    "Sketch",
    "Source Code",
    "Image",
    "GIF",
    "Video",
    "Sound",
    "ZIP",
    "Text",
    "PDF",
];

/// One citation, cited as `[position]` in the message text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Citation {
    pub(crate) position: u32,
    /// The title shown (required).
    pub(crate) name: String,
    /// The summary shown in the citation pop-up (required).
    pub(crate) abstract_text: String,
    /// Where the source is (https).
    pub(crate) url: Option<String>,
    /// One of [`CITATION_ICONS`].
    pub(crate) icon: Option<String>,
    pub(crate) keywords: Vec<String>,
}

/// The AI marks of an outgoing message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AiMarks {
    /// Show the "AI generated" label.
    pub(crate) ai_generated: bool,
    pub(crate) citations: Vec<Citation>,
}

impl AiMarks {
    pub(crate) fn is_empty(&self) -> bool {
        !self.ai_generated && self.citations.is_empty()
    }
}

/// The root message entity for `marks` on a message with `text`, after checking Teams' limits; `None`
/// without marks.
pub(crate) fn message_entity(text: &str, marks: &AiMarks) -> Result<Option<Value>, String> {
    if marks.is_empty() {
        return Ok(None);
    }
    if marks.citations.len() > MAX_CITATIONS {
        return Err(format!("at most {MAX_CITATIONS} citations on one message ({} given)", marks.citations.len()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut claims = Vec::with_capacity(marks.citations.len());
    for c in &marks.citations {
        let p = c.position;
        if p == 0 || !seen.insert(p) {
            return Err(format!("citation positions must be unique numbers from 1 ({p} is not)"));
        }
        if !text.contains(&format!("[{p}]")) {
            return Err(format!("citation {p} is not cited: the text must contain [{p}]"));
        }
        let name_len = c.name.trim().chars().count();
        if name_len == 0 || name_len > MAX_CITATION_NAME {
            return Err(format!("citation {p}: name must be 1 to {MAX_CITATION_NAME} characters ({name_len} given)"));
        }
        let abstract_len = c.abstract_text.trim().chars().count();
        if abstract_len == 0 || abstract_len > MAX_CITATION_ABSTRACT {
            return Err(format!("citation {p}: abstract must be 1 to {MAX_CITATION_ABSTRACT} characters ({abstract_len} given)"));
        }
        if c.keywords.len() > MAX_KEYWORDS || c.keywords.iter().any(|k| k.trim().is_empty() || k.chars().count() > MAX_KEYWORD) {
            return Err(format!("citation {p}: at most {MAX_KEYWORDS} keywords, each 1 to {MAX_KEYWORD} characters"));
        }
        if let Some(url) = &c.url
            && !url.starts_with("https://")
        {
            return Err(format!("citation {p}: url must be an https URL"));
        }
        let mut appearance = json!({"@type": "DigitalDocument", "name": c.name.trim(), "abstract": c.abstract_text.trim()});
        if let Some(url) = &c.url {
            appearance["url"] = json!(url);
        }
        if let Some(icon) = &c.icon {
            if !CITATION_ICONS.contains(&icon.as_str()) {
                return Err(format!("citation {p}: icon must be one of {}", CITATION_ICONS.join(", ")));
            }
            appearance["image"] = json!({"@type": "ImageObject", "name": icon});
        }
        if !c.keywords.is_empty() {
            appearance["keywords"] = json!(c.keywords);
        }
        claims.push(json!({"@type": "Claim", "position": p, "appearance": appearance}));
    }
    let mut entity = json!({"type": "https://schema.org/Message", "@type": "Message", "@context": "https://schema.org", "@id": ""});
    if marks.ai_generated {
        entity["additionalType"] = json!(["AIGeneratedContent"]);
    }
    if !claims.is_empty() {
        entity["citation"] = Value::Array(claims);
    }
    Ok(Some(entity))
}

/// Turn on the feedback buttons of an outgoing message activity.
pub(crate) fn enable_feedback(activity: &mut Value) {
    if !activity["channelData"].is_object() {
        activity["channelData"] = json!({});
    }
    activity["channelData"]["feedbackLoopEnabled"] = json!(true);
}

/// A user's 👍/👎 on one of the bot's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Feedback {
    /// `like` or `dislike`.
    pub(crate) reaction: String,
    /// What the user wrote (`feedbackText`), cut to [`MAX_FEEDBACK_COMMENT`] characters.
    pub(crate) comment: Option<String>,
}

/// The feedback an activity carries: a `message/submitAction` invoke with `actionName` `feedback` and a
/// `like`/`dislike` reaction. The comment is the `feedbackText` of the `feedback` JSON string (or the
/// string itself when it is not JSON).
pub(crate) fn feedback(activity: &Activity) -> Option<Feedback> {
    if activity.kind() != Kind::Invoke || activity.name.as_deref() != Some("message/submitAction") {
        return None;
    }
    let value = activity.value.as_ref()?;
    if value.get("actionName").and_then(Value::as_str) != Some("feedback") {
        return None;
    }
    let action = value.get("actionValue")?;
    let reaction = action.get("reaction").and_then(Value::as_str).filter(|r| matches!(*r, "like" | "dislike"))?.to_owned();
    let comment = match action.get("feedback") {
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v) => v.get("feedbackText").and_then(Value::as_str).map(str::to_owned),
            Err(_) => Some(s.clone()),
        },
        Some(v) => v.get("feedbackText").and_then(Value::as_str).map(str::to_owned),
        None => None,
    };
    let comment = comment.map(|c| c.trim().chars().take(MAX_FEEDBACK_COMMENT).collect::<String>()).filter(|c| !c.is_empty());
    Some(Feedback { reaction, comment })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cite(p: u32) -> Citation {
        Citation {
            position: p,
            name: "Design doc".into(),
            abstract_text: "What the gateway does".into(),
            url: Some("https://contoso.sharepoint.com/d".into()),
            icon: Some("Microsoft Word".into()),
            keywords: vec!["gateway".into()],
        }
    }

    #[test]
    fn one_root_entity_with_the_label_and_the_citations() {
        let marks = AiMarks { ai_generated: true, citations: vec![cite(1), cite(2)] };
        let e = message_entity("see [1] and [2]", &marks).unwrap().unwrap();
        assert_eq!(e["type"], "https://schema.org/Message");
        assert_eq!(e["@type"], "Message");
        assert_eq!(e["additionalType"], json!(["AIGeneratedContent"]));
        assert_eq!(e["citation"][1]["position"], 2);
        assert_eq!(e["citation"][0]["appearance"]["image"], json!({"@type": "ImageObject", "name": "Microsoft Word"}));
        assert_eq!(message_entity("x", &AiMarks::default()).unwrap(), None);
        let label_only = message_entity("x", &AiMarks { ai_generated: true, citations: vec![] }).unwrap().unwrap();
        assert!(label_only.get("citation").is_none());
    }

    #[test]
    fn teams_limits_are_refused_before_sending() {
        let check = |text: &str, cs: Vec<Citation>| message_entity(text, &AiMarks { ai_generated: false, citations: cs });
        assert!(check("[1]", vec![cite(1), cite(1)]).unwrap_err().contains("unique"));
        assert!(check("no marker", vec![cite(1)]).unwrap_err().contains("[1]"));
        let many: Vec<Citation> = (1..=21).map(cite).collect();
        let text: String = (1..=21).map(|i| format!("[{i}]")).collect();
        assert!(check(&text, many).unwrap_err().contains("at most 20"));
        assert!(check(&text, (1..=20).map(cite).collect()).is_ok());
        let mut long = cite(1);
        long.name = "n".repeat(81);
        assert!(check("[1]", vec![long]).unwrap_err().contains("name"));
        let mut long = cite(1);
        long.abstract_text = "a".repeat(161);
        assert!(check("[1]", vec![long]).unwrap_err().contains("abstract"));
        let mut kw = cite(1);
        kw.keywords = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        assert!(check("[1]", vec![kw]).unwrap_err().contains("keywords"));
        let mut icon = cite(1);
        icon.icon = Some("Notepad".into());
        assert!(check("[1]", vec![icon]).unwrap_err().contains("icon"));
        let mut url = cite(1);
        url.url = Some("http://x".into());
        assert!(check("[1]", vec![url]).unwrap_err().contains("https"));
    }

    fn invoke(value: Value) -> Activity {
        serde_json::from_value(json!({"type": "invoke", "name": "message/submitAction", "replyToId": "m1", "value": value})).unwrap()
    }

    #[test]
    fn feedback_is_read_from_the_submit_action_invoke() {
        let a = invoke(
            json!({"actionName": "feedback", "actionValue": {"reaction": "dislike", "feedback": "{\"feedbackText\":\"wrong date\"}"}}),
        );
        assert_eq!(feedback(&a), Some(Feedback { reaction: "dislike".into(), comment: Some("wrong date".into()) }));
        let a = invoke(json!({"actionName": "feedback", "actionValue": {"reaction": "like", "feedback": "{\"feedbackText\":\"\"}"}}));
        assert_eq!(feedback(&a), Some(Feedback { reaction: "like".into(), comment: None }));
        assert_eq!(feedback(&invoke(json!({"actionName": "feedback", "actionValue": {"reaction": "meh"}}))), None);
        assert_eq!(feedback(&invoke(json!({"actionName": "other", "actionValue": {"reaction": "like"}}))), None);
    }

    #[test]
    fn feedback_buttons_are_a_channel_data_flag() {
        let mut a = json!({"type": "message", "text": "x"});
        enable_feedback(&mut a);
        assert_eq!(a["channelData"], json!({"feedbackLoopEnabled": true}));
    }
}
