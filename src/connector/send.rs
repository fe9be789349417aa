//! Message bodies and helpers shared by every way of sending (the command line, MCP tools): the
//! Connector's side only; which bot and conversation is [`crate::bridge::route`]'s decision.

use serde_json::{Value, json};

use crate::ids::Cloud;

/// Where proactive messages go when the bot has no reference in the tenant yet.
pub(crate) fn default_proactive_service_url(cloud: Cloud) -> Option<&'static str> {
    match cloud {
        Cloud::Public => Some("https://smba.trafficmanager.net/teams/"),
        Cloud::Usgov => Some("https://smba.infra.gov.teams.microsoft.us/teams"),
        Cloud::China => None,
    }
}

/// A message activity with text and/or an Adaptive Card.
pub(crate) fn message(text: Option<&str>, card: Option<Value>) -> Value {
    let mut a = json!({"type": "message"});
    if let Some(t) = text {
        a["text"] = json!(t);
    }
    if let Some(c) = card {
        a["attachments"] = json!([{"contentType": "application/vnd.microsoft.card.adaptive", "content": c}]);
    }
    a
}

/// The text cut into chunks of about three words, keeping every character (the chunks concatenate to
/// the input).
pub(crate) fn stream_chunks(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for (i, word) in text.split_inclusive(char::is_whitespace).enumerate() {
        current.push_str(word);
        if i % 3 == 2 {
            chunks.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_chunks_keep_every_character() {
        let text = "Hello there, this is a reply 🙂 with 漢字 and\nnew lines.  ";
        let chunks = stream_chunks(text);
        assert!(chunks.len() > 2);
        assert_eq!(chunks.concat(), text);
    }
}
