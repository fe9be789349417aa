//! Chat message bodies for Graph: HTML escaping, `<at>` mentions and Adaptive Card attachments, built
//! so that the body, the `mentions` array and the `attachments` array always agree.

use serde_json::{Value, json};

/// The most characters of a chat message (its HTML plus card JSON) Graph accepts; checked before sending.
pub const MAX_MESSAGE_CHARS: usize = 28_000;

/// The content type of an Adaptive Card attachment.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";

/// Text escaped for HTML element content and attribute values (`&`, `<`, `>`, `"`, `'`).
#[must_use]
pub fn escape_html(s: &str) -> String {
    html_escape::encode_quoted_attribute(s).into_owned()
}

/// Plain text as HTML: escaped, with line breaks as `<br>`.
#[must_use]
pub fn text_to_html(s: &str) -> String {
    escape_html(&s.replace("\r\n", "\n")).replace('\n', "<br>")
}

/// A Teams HTML message body as plain text (for an LLM host: raw Teams HTML must not reach it): tags
/// dropped (their text kept; `<br>`, `</p>`, `</div>`, `</li>` become line breaks; a card attachment
/// becomes `[card]`), entities decoded, runs of blank lines collapsed. The result is still untrusted text.
#[must_use]
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..i]));
        let Some(end) = rest[i..].find('>') else {
            out.push_str(&decode_entities(&rest[i..]));
            rest = "";
            break;
        };
        let tag = rest[i + 1..i + end].trim().to_ascii_lowercase();
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        match (tag.starts_with('/'), name.as_str()) {
            (_, "br") | (true, "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3") => out.push('\n'),
            (false, "attachment") => out.push_str("[card]"),
            _ => {}
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(&decode_entities(rest));
    let mut text = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.lines().map(str::trim_end) {
        blank = if line.trim().is_empty() { blank + 1 } else { 0 };
        if blank <= 1 {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.trim().to_owned()
}

/// HTML entities decoded (the HTML5 table; `&nbsp;` as a plain space); anything unknown is kept.
fn decode_entities(s: &str) -> String {
    html_escape::decode_html_entities(s).replace('\u{a0}', " ")
}

/// A mention of a user in a message: `<at id="N">text</at>` in the body and an entry in `mentions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    /// The `id` linking the `<at>` tag and the entry.
    pub id: u32,
    /// The text shown (usually the display name).
    pub text: String,
    /// The user's AAD object id.
    pub user_id: String,
}

/// A chat message: HTML body, mentions and card attachments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageBody {
    html: String,
    mentions: Vec<Mention>,
    cards: Vec<(String, String)>,
}

impl MessageBody {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// A message of plain text (escaped).
    pub fn from_text(text: &str) -> Self {
        Self::new().text(text)
    }

    /// Append plain text (escaped; line breaks become `<br>`).
    #[must_use]
    pub fn text(mut self, text: &str) -> Self {
        self.html.push_str(&text_to_html(text));
        self
    }

    /// Append HTML as it is: only for markup the caller built or sanitised itself.
    #[must_use]
    pub fn raw_html(mut self, html: &str) -> Self {
        self.html.push_str(html);
        self
    }

    /// Append a mention of the user `user_id` (AAD object id) shown as `text`.
    #[must_use]
    pub fn mention(mut self, user_id: &str, text: &str) -> Self {
        let id = u32::try_from(self.mentions.len()).unwrap_or(u32::MAX);
        self.html.push_str(&format!("<at id=\"{id}\">{}</at>", escape_html(text)));
        self.mentions.push(Mention { id, text: text.to_owned(), user_id: user_id.to_owned() });
        self
    }

    /// Append an Adaptive Card (Graph renders `Action.OpenUrl` only; submit actions do nothing here).
    #[must_use]
    pub fn card(mut self, card: &Value) -> Self {
        let id = format!("{:032x}", fastrand::u128(..));
        self.html.push_str(&format!("<attachment id=\"{id}\"></attachment>"));
        self.cards.push((id, card.to_string()));
        self
    }

    /// The HTML body.
    pub fn html(&self) -> &str {
        &self.html
    }

    /// The mentions.
    pub fn mentions(&self) -> &[Mention] {
        &self.mentions
    }

    /// Characters counted against [`MAX_MESSAGE_CHARS`]: the HTML and every card's JSON.
    pub fn len_chars(&self) -> usize {
        self.html.chars().count() + self.cards.iter().map(|(_, c)| c.chars().count()).sum::<usize>()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.html.trim().is_empty() && self.cards.is_empty()
    }

    /// The Graph `chatMessage` JSON (`body`, and `mentions` / `attachments` when there are any).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"body": {"contentType": "html", "content": self.html}});
        if !self.mentions.is_empty() {
            v["mentions"] = self
                .mentions
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id,
                        "mentionText": m.text,
                        "mentioned": {"user": {"id": m.user_id, "displayName": m.text, "userIdentityType": "aadUser"}},
                    })
                })
                .collect();
        }
        if !self.cards.is_empty() {
            v["attachments"] =
                self.cards.iter().map(|(id, content)| json!({"id": id, "contentType": ADAPTIVE_CARD, "content": content})).collect();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_mentions_agree_with_the_body() {
        let m = MessageBody::from_text("a < b & \"c\" 'd'\nnext").mention("oid-1", "Ann <Admin>").text("!");
        assert_eq!(m.html(), "a &lt; b &amp; &quot;c&quot; &#x27;d&#x27;<br>next<at id=\"0\">Ann &lt;Admin&gt;</at>!");
        let v = m.to_json();
        assert_eq!(v["body"]["contentType"], "html");
        assert_eq!(v["mentions"][0]["id"], 0);
        assert_eq!(v["mentions"][0]["mentionText"], "Ann <Admin>");
        assert_eq!(v["mentions"][0]["mentioned"]["user"]["id"], "oid-1");
        assert!(v.get("attachments").is_none());
        let two = MessageBody::new().mention("a", "A").mention("b", "B");
        assert_eq!(two.mentions()[1].id, 1);
        assert!(two.html().contains("<at id=\"1\">B</at>"));
    }

    #[test]
    fn a_card_is_an_attachment_referenced_from_the_body() {
        let card = json!({"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "hi"}]});
        let m = MessageBody::new().text("see").card(&card);
        let v = m.to_json();
        let id = v["attachments"][0]["id"].as_str().unwrap();
        assert!(m.html().contains(&format!("<attachment id=\"{id}\"></attachment>")));
        assert_eq!(v["attachments"][0]["contentType"], ADAPTIVE_CARD);
        let content: Value = serde_json::from_str(v["attachments"][0]["content"].as_str().unwrap()).unwrap();
        assert_eq!(content, card);
        assert_eq!(m.len_chars(), m.html().chars().count() + card.to_string().len());
    }

    #[test]
    fn html_becomes_plain_text() {
        let html = "<p>Hi <at id=\"0\">Ann &lt;Ops&gt;</at>,</p><p>line&nbsp;two<br>x &amp; y &#39;q&#39; &#x1F600; &bogus; a&b</p><div></div><div></div><p>end</p><attachment id=\"c1\"></attachment>";
        assert_eq!(html_to_text(html), "Hi Ann <Ops>,\nline two\nx & y 'q' 😀 &bogus; a&b\n\nend\n[card]");
        assert_eq!(html_to_text("a < b"), "a < b");
        assert_eq!(html_to_text("<script>alert(1)</script>ok"), "alert(1)ok");
        // Round trip of what this module escapes.
        let m = MessageBody::from_text("x <y> & \"z\" 'w'\nnext");
        assert_eq!(html_to_text(m.html()), "x <y> & \"z\" 'w'\nnext");
    }

    #[test]
    fn empty_and_length() {
        assert!(MessageBody::new().is_empty());
        assert!(MessageBody::from_text("  ").is_empty());
        assert_eq!(MessageBody::from_text("é").len_chars(), 1);
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of the Graph-side [`html_to_text`] and [`text_to_html`]: no input panics, every
    //! well-formed tag is dropped, plain text is a fixed point, and text survives the trip through HTML.

    use proptest::prelude::*;

    use super::*;

    fn tag_soup() -> impl Strategy<Value = String> {
        let tags = vec![
            "<p>",
            "</p>",
            "<div>",
            "</div>",
            "<br>",
            "<br/>",
            "<b>",
            "</b>",
            "<at id=\"0\">",
            "</at>",
            "<a href=\"https://x.test\">",
            "</a>",
            "<attachment id=\"1\">",
            "</attachment>",
            "<li>",
            "</li>",
            "<h1>",
            "</h1>",
            "<!-- c -->",
            "<img src=\"x\">",
            "< p >",
        ];
        let text = "[a-zA-Z0-9 \\n\\t>\"'=/;:.,é日😀]{0,8}";
        proptest::collection::vec(prop_oneof![proptest::sample::select(tags).prop_map(str::to_owned), text], 0..30).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn html_to_text_never_panics(html in any::<String>()) {
            let _ = html_to_text(&html);
        }

        #[test]
        fn html_to_text_drops_every_well_formed_tag(html in tag_soup()) {
            let text = html_to_text(&html);
            prop_assert!(!text.contains('<'), "{:?} -> {:?}", html, text);
        }

        #[test]
        fn html_to_text_is_idempotent_on_plain_text(text in "[a-zA-Z0-9 \\n\\r\\t>\"'=/;:.,!?\u{a0}é日😀]{0,60}|.{0,40}") {
            let text = text.replace(['<', '&'], "");
            let once = html_to_text(&text);
            prop_assert_eq!(html_to_text(&once), once);
        }

        #[test]
        fn text_survives_the_trip_through_html(text in "[a-zA-Z0-9 <>&\"'\\n.,é日😀]{0,60}") {
            // The way back normalises whitespace: compare line by line, trimmed, blank lines dropped.
            let lines = |s: &str| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect::<Vec<_>>();
            prop_assert_eq!(lines(&html_to_text(&text_to_html(&text))), lines(&text));
        }
    }
}
