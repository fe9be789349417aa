//! Quoted replies (teams-sdk blog "Quoted Replies and Threaded Replies", 2026-05-28; teams.py
//! `quoted_reply_entity.py`): the text starts with the placeholder `<quoted messageId="{id}"/>` and the
//! activity carries the entity `{"type": "quotedReply", "quotedReply": {"messageId": "{id}"}}`. The service
//! stamps the quoted snippet (sender, preview, time) itself, so the sender names only the message id; the
//! old client-built `<blockquote>` (spoofable) is not used. Several quotes are matched by id, not order.

use serde_json::{Value, json};

/// Longest message id accepted.
const MAX_ID_CHARS: usize = 128;

/// The id of a message to quote: letters, digits and `: . _ - @` (Teams message ids are numeric; other
/// ids the Connector answers look like `1:…`), nothing that could break out of the placeholder's attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuoteId(String);

/// Why a quote id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quote must be a message id (an event's message_id, or one the bot sent): letters, digits and : . _ - @ only, at most 128")]
pub(crate) struct BadQuoteId;

impl QuoteId {
    pub(crate) fn parse(id: &str) -> Result<Self, BadQuoteId> {
        let ok = !id.is_empty()
            && id.chars().count() <= MAX_ID_CHARS
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-' | '@'));
        if ok { Ok(Self(id.to_owned())) } else { Err(BadQuoteId) }
    }

    /// The placeholder the text starts with.
    pub(crate) fn placeholder(&self) -> String {
        format!("<quoted messageId=\"{}\"/>", self.0)
    }

    /// `text` quoting this message: the placeholder, then the reply.
    pub(crate) fn prefix(&self, text: &str) -> String {
        format!("{}{text}", self.placeholder())
    }

    /// The `quotedReply` entity.
    pub(crate) fn entity(&self) -> Value {
        json!({"type": "quotedReply", "quotedReply": {"messageId": self.0}})
    }
}

/// Add the quote's entity to a message activity (its text must already start with the placeholder).
pub(crate) fn add_entity(activity: &mut Value, quote: &QuoteId) {
    match activity.get_mut("entities").and_then(Value::as_array_mut) {
        Some(list) => list.push(quote.entity()),
        None => activity["entities"] = Value::Array(vec![quote.entity()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_shape_is_a_placeholder_and_an_entity() {
        let q = QuoteId::parse("1795320446875").unwrap();
        assert_eq!(q.prefix("Done."), "<quoted messageId=\"1795320446875\"/>Done.");
        let mut a = json!({"type": "message", "text": q.prefix("Done."), "entities": [{"type": "mention"}]});
        add_entity(&mut a, &q);
        assert_eq!(a["entities"][1], json!({"type": "quotedReply", "quotedReply": {"messageId": "1795320446875"}}));
        let mut bare = json!({"type": "message"});
        add_entity(&mut bare, &q);
        assert_eq!(bare["entities"].as_array().map(Vec::len), Some(1));
        assert!(QuoteId::parse("1:42").is_ok() && QuoteId::parse("f:abc-1_2.3@x").is_ok());
    }

    #[test]
    fn ids_that_could_break_the_placeholder_are_refused() {
        for bad in ["", "1\"/><script>", "1 2", "a>b", "x&y", "1\n2", "ü", &"1".repeat(129)] {
            assert_eq!(QuoteId::parse(bad), Err(BadQuoteId), "{bad:?}");
        }
        assert!(QuoteId::parse(&"1".repeat(128)).is_ok());
    }
}
