//! The Agent User's mailbox through Graph (v1.0): the Inbox's delta query (new mail and its state tokens), one
//! message's recipients, its attachment list (names and sizes, never the bytes), and writing as the Agent
//! User: reply, reply-all, forward, a new message (`sendMail`) and drafts (`createReply`, `createReplyAll`, a
//! new draft).
//!
//! Bodies are HTML made from plain text ([`text_to_html`]: escaped, line breaks kept), sent as the message's
//! `body` (never as a `comment`, whose HTML handling Graph does not document). Addresses, subject, recipient
//! count and body size are checked before anything is sent; the refusal says what is too large. Sends are
//! creates: never re-posted once they may have landed.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{GraphClient, GraphError};
use super::message::text_to_html;
use super::model::ItemBody;
use crate::http_util::path_segment as segment;

/// The most characters of a mail body's HTML (after escaping) agentgate sends; Graph takes requests up to
/// 4 MB, and a mail this long is not one an agent should write.
pub const MAX_MAIL_HTML_CHARS: usize = 100_000;
/// The longest subject (Outlook's limit).
pub const MAX_SUBJECT_CHARS: usize = 255;
/// The most recipients (to and cc together) of one message.
pub const MAX_RECIPIENTS: usize = 100;

/// The message fields a delta round asks for: what a `mail` event shows, and what tells a protected message.
const DELTA_SELECT: &str =
    "id,internetMessageId,conversationId,subject,from,sender,toRecipients,ccRecipients,receivedDateTime,body,hasAttachments,isDraft";
/// The fields of a message whose recipients a reply goes to.
const ADDRESSING_SELECT: &str = "id,internetMessageId,conversationId,subject,from,replyTo,toRecipients,ccRecipients";
/// An attachment's description, without `contentBytes`.
const ATTACHMENT_SELECT: &str = "id,name,contentType,size,isInline";

/// A name and an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EmailAddress {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

/// A sender or recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Recipient {
    #[serde(rename = "emailAddress", default)]
    pub email_address: Option<EmailAddress>,
}

impl Recipient {
    /// The address, trimmed and lower-cased (`None` when there is none).
    pub fn address(&self) -> Option<String> {
        let a = self.email_address.as_ref()?.address.as_deref()?.trim();
        (!a.is_empty()).then(|| a.to_ascii_lowercase())
    }

    /// The display name, if any.
    pub fn name(&self) -> Option<&str> {
        self.email_address.as_ref()?.name.as_deref().filter(|n| !n.trim().is_empty())
    }
}

/// A mail message as Graph returns it (the fields agentgate asks for). Every text in it is untrusted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MailMessage {
    #[serde(default)]
    pub id: String,
    /// `#microsoft.graph.message`, or a subtype: `#microsoft.graph.eventMessageRequest` for a meeting request.
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
    #[serde(default)]
    pub internet_message_id: Option<String>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub from: Option<Recipient>,
    #[serde(default)]
    pub sender: Option<Recipient>,
    #[serde(default)]
    pub reply_to: Option<Vec<Recipient>>,
    #[serde(default)]
    pub to_recipients: Option<Vec<Recipient>>,
    #[serde(default)]
    pub cc_recipients: Option<Vec<Recipient>>,
    #[serde(default)]
    pub received_date_time: Option<String>,
    #[serde(default)]
    pub body: Option<ItemBody>,
    #[serde(default)]
    pub has_attachments: Option<bool>,
    #[serde(default)]
    pub is_draft: Option<bool>,
    /// Set on a delta entry for a message that left the folder (deleted or moved).
    #[serde(rename = "@removed", default)]
    pub removed: Option<Value>,
}

impl MailMessage {
    /// Whether it is a meeting request (`#microsoft.graph.eventMessageRequest`): not a cancellation
    /// (`eventMessage`) nor an answer (`eventMessageResponse`).
    pub fn is_meeting_request(&self) -> bool {
        self.odata_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("#microsoft.graph.eventMessageRequest"))
    }
}

/// An attachment's description (never its bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub is_inline: Option<bool>,
}

/// One page of a delta round: the messages, and either the link to the next page or, on the last page, the
/// link that starts the next round.
#[derive(Debug, Clone, Default)]
pub struct DeltaPage {
    pub messages: Vec<MailMessage>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

#[derive(Deserialize)]
struct DeltaResponse {
    #[serde(default)]
    value: Vec<MailMessage>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
struct AttachmentPage {
    #[serde(default)]
    value: Vec<Attachment>,
}

/// A new message (sent at once, or saved as a draft).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMail {
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    /// Plain text; sent as escaped HTML.
    pub text: String,
}

/// Whether `address` is a plain mail address (`local@domain.tld`): `Err` says why not.
pub fn check_address(address: &str) -> Result<(), GraphError> {
    let a = address.trim();
    let ok = a.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !local.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    }) && !a.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"' | '(' | ')'));
    if ok { Ok(()) } else { Err(GraphError::Invalid(format!("`{a}` is not a mail address such as ann@contoso.com"))) }
}

/// The HTML body made from `text`, within [`MAX_MAIL_HTML_CHARS`].
fn body_json(text: &str) -> Result<Value, GraphError> {
    let html = text_to_html(text);
    let n = html.chars().count();
    if n > MAX_MAIL_HTML_CHARS {
        return Err(GraphError::Invalid(format!(
            "the mail body is {n} characters of HTML once escaped; at most {MAX_MAIL_HTML_CHARS} are sent: shorten it"
        )));
    }
    Ok(json!({"contentType": "html", "content": html}))
}

/// Recipients as Graph takes them, each address checked.
fn recipients_json(addresses: &[String]) -> Result<Vec<Value>, GraphError> {
    addresses
        .iter()
        .map(|a| {
            check_address(a)?;
            Ok(json!({"emailAddress": {"address": a.trim()}}))
        })
        .collect()
}

/// Whether `text` can be a mail body: not empty, within [`MAX_MAIL_HTML_CHARS`] once escaped.
pub fn check_text(text: &str) -> Result<(), GraphError> {
    non_empty_text(text)?;
    body_json(text).map(drop)
}

/// Whether a new message can be sent (`require_to`) or saved as a draft: addresses, subject, body.
pub fn check_outgoing(m: &OutgoingMail, require_to: bool) -> Result<(), GraphError> {
    if require_to {
        non_empty_text(&m.text)?;
    }
    new_message_json(m, require_to).map(drop)
}

/// A new message's JSON (subject, HTML body, to, cc), every part checked; a draft may have no recipient yet.
fn new_message_json(m: &OutgoingMail, require_to: bool) -> Result<Value, GraphError> {
    if require_to && m.to.is_empty() {
        return Err(GraphError::Invalid("the message has no recipient: name at least one in `to`".into()));
    }
    let count = m.to.len() + m.cc.len();
    if count > MAX_RECIPIENTS {
        return Err(GraphError::Invalid(format!("the message has {count} recipients; at most {MAX_RECIPIENTS} are sent")));
    }
    let subject = m.subject.trim();
    if subject.is_empty() {
        return Err(GraphError::Invalid("the subject is empty".into()));
    }
    let n = subject.chars().count();
    if n > MAX_SUBJECT_CHARS || subject.chars().any(|c| c.is_control()) {
        return Err(GraphError::Invalid(format!("the subject must be one line of at most {MAX_SUBJECT_CHARS} characters (it is {n})")));
    }
    let mut message = json!({"subject": subject, "body": body_json(&m.text)?});
    if !m.to.is_empty() {
        message["toRecipients"] = json!(recipients_json(&m.to)?);
    }
    if !m.cc.is_empty() {
        message["ccRecipients"] = json!(recipients_json(&m.cc)?);
    }
    Ok(message)
}

fn non_empty_text(text: &str) -> Result<(), GraphError> {
    if text.trim().is_empty() { Err(GraphError::Invalid("the text is empty".into())) } else { Ok(()) }
}

pub(super) fn message_id(id: &str) -> Result<&str, GraphError> {
    if id.trim().is_empty() { Err(GraphError::Invalid("the message id is empty".into())) } else { Ok(id.trim()) }
}

impl GraphClient {
    pub(super) fn mailbox(&self) -> String {
        format!("/users/{}", segment(&self.agent_user_key()))
    }

    /// Start a delta round over the Inbox: the messages created there and received at or after `since` (an ISO
    /// 8601 UTC time), `changeType=created`, the fields of [`DELTA_SELECT`]. Graph folds these options into the
    /// links it returns.
    pub async fn mail_delta_start(&self, since: &str) -> Result<DeltaPage, GraphError> {
        let filter = format!("receivedDateTime ge {since}");
        let url = self.url(
            &format!("{}/mailFolders/inbox/messages/delta", self.mailbox()),
            &[("changeType", "created"), ("$select", DELTA_SELECT), ("$filter", &filter)],
        )?;
        self.delta_page(url).await
    }

    /// Continue a round (an `@odata.nextLink`) or start the next one (an `@odata.deltaLink`). The link is
    /// checked against the Graph host allow-list before the token goes with it. A link Graph no longer knows
    /// answers 410.
    pub async fn mail_delta_next(&self, link: &str) -> Result<DeltaPage, GraphError> {
        let url = self.endpoint().next_link(link)?;
        self.delta_page(url).await
    }

    async fn delta_page(&self, url: url::Url) -> Result<DeltaPage, GraphError> {
        let r: DeltaResponse = self.get(url).await?;
        if r.next_link.is_none() && r.delta_link.is_none() {
            return Err(GraphError::BadResponse("a delta page without @odata.nextLink or @odata.deltaLink".into()));
        }
        Ok(DeltaPage { messages: r.value, next_link: r.next_link, delta_link: r.delta_link })
    }

    /// Who a message came from and went to (`GET /users/{me}/messages/{id}?$select=…`): what a reply's
    /// recipients are made of.
    pub async fn mail_message(&self, id: &str) -> Result<MailMessage, GraphError> {
        let url = self.url(&format!("{}/messages/{}", self.mailbox(), segment(message_id(id)?)), &[("$select", ADDRESSING_SELECT)])?;
        self.get(url).await
    }

    /// A message's attachments, described (`GET …/messages/{id}/attachments?$select=id,name,contentType,size,isInline`):
    /// never their bytes.
    pub async fn mail_attachments(&self, id: &str) -> Result<Vec<Attachment>, GraphError> {
        let url =
            self.url(&format!("{}/messages/{}/attachments", self.mailbox(), segment(message_id(id)?)), &[("$select", ATTACHMENT_SELECT)])?;
        let page: AttachmentPage = self.get(url).await?;
        Ok(page.value)
    }

    /// Reply to the sender (`POST …/messages/{id}/reply`), or with `all` to everyone on the message
    /// (`…/replyAll`); Graph threads it (`In-Reply-To`, `References`) and keeps it in Sent Items.
    pub async fn mail_reply(&self, id: &str, text: &str, all: bool) -> Result<(), GraphError> {
        non_empty_text(text)?;
        let action = if all { "replyAll" } else { "reply" };
        let url = self.url(&format!("{}/messages/{}/{action}", self.mailbox(), segment(message_id(id)?)), &[])?;
        let body = json!({"message": {"body": body_json(text)?}});
        self.call(Method::POST, url, Some(&body), false).await.map(drop)
    }

    /// Forward a message to `to` (`POST …/messages/{id}/forward`), with `text` above it.
    pub async fn mail_forward(&self, id: &str, to: &[String], text: Option<&str>) -> Result<(), GraphError> {
        if to.is_empty() {
            return Err(GraphError::Invalid("forward to whom? name at least one address in `to`".into()));
        }
        if to.len() > MAX_RECIPIENTS {
            return Err(GraphError::Invalid(format!("{} recipients; at most {MAX_RECIPIENTS} are sent", to.len())));
        }
        let mut message = json!({"toRecipients": recipients_json(to)?});
        if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
            message["body"] = body_json(t)?;
        }
        let url = self.url(&format!("{}/messages/{}/forward", self.mailbox(), segment(message_id(id)?)), &[])?;
        self.call(Method::POST, url, Some(&json!({"message": message})), false).await.map(drop)
    }

    /// Send a new message (`POST /users/{me}/sendMail`), kept in Sent Items.
    pub async fn mail_send(&self, m: &OutgoingMail) -> Result<(), GraphError> {
        non_empty_text(&m.text)?;
        let body = json!({"message": new_message_json(m, true)?, "saveToSentItems": true});
        let url = self.url(&format!("{}/sendMail", self.mailbox()), &[])?;
        self.call(Method::POST, url, Some(&body), false).await.map(drop)
    }

    /// A draft reply (`POST …/messages/{id}/createReply`, or `createReplyAll`) with `text` as its body: saved in
    /// Drafts, not sent. The draft.
    pub async fn mail_create_reply(&self, id: &str, text: &str, all: bool) -> Result<MailMessage, GraphError> {
        non_empty_text(text)?;
        let action = if all { "createReplyAll" } else { "createReply" };
        let url = self.url(&format!("{}/messages/{}/{action}", self.mailbox(), segment(message_id(id)?)), &[])?;
        self.send_json(Method::POST, url, Some(&json!({"message": {"body": body_json(text)?}})), false).await
    }

    /// A new draft (`POST /users/{me}/messages`): saved in Drafts, not sent. The draft.
    pub async fn mail_create_draft(&self, m: &OutgoingMail) -> Result<MailMessage, GraphError> {
        let url = self.url(&format!("{}/messages", self.mailbox()), &[])?;
        self.send_json(Method::POST, url, Some(&new_message_json(m, false)?), false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_plain_addresses() {
        for ok in ["ann@contoso.com", "first.last+tag@mail.fabrikam.co.uk", " bob@x.io "] {
            assert!(check_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ann",
            "ann@",
            "@contoso.com",
            "ann@localhost",
            "Ann <ann@contoso.com>",
            "a@b.com, c@d.com",
            "a b@c.com",
            "a@b..",
            "a@b.com\nBcc: x@y.com",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_are_escaped_html_within_the_limit() {
        let b = body_json("<script>alert(1)</script>\nline 2 & \"quotes\"").unwrap();
        assert_eq!(b["contentType"], "html");
        assert_eq!(b["content"], "&lt;script&gt;alert(1)&lt;/script&gt;<br>line 2 &amp; &quot;quotes&quot;");
        assert!(body_json(&"x".repeat(MAX_MAIL_HTML_CHARS)).is_ok());
        // Escaping counts: 25,001 `<` are 100,004 characters of HTML.
        let e = body_json(&"<".repeat(25_001)).unwrap_err();
        assert!(e.to_string().contains("100004 characters") && e.to_string().contains("shorten it"), "{e}");
    }

    fn new_message_json_sent(m: &OutgoingMail) -> Result<Value, GraphError> {
        new_message_json(m, true)
    }

    #[test]
    fn new_messages_are_checked_before_sending() {
        let m = |to: &[&str], subject: &str| OutgoingMail {
            to: to.iter().map(|s| (*s).to_owned()).collect(),
            cc: vec!["cc@contoso.com".into()],
            subject: subject.into(),
            text: "hi".into(),
        };
        let v = new_message_json_sent(&m(&["ann@contoso.com"], " Report ")).unwrap();
        assert_eq!(v["subject"], "Report");
        assert_eq!(v["toRecipients"], json!([{"emailAddress": {"address": "ann@contoso.com"}}]));
        assert_eq!(v["ccRecipients"][0]["emailAddress"]["address"], "cc@contoso.com");
        assert!(new_message_json_sent(&m(&[], "s")).is_err(), "no recipient");
        assert!(new_message_json(&m(&[], "s"), false).is_ok(), "a draft may have none yet");
        assert!(new_message_json_sent(&m(&["not an address"], "s")).is_err());
        assert!(new_message_json_sent(&m(&["a@b.com"], "")).is_err(), "no subject");
        assert!(new_message_json_sent(&m(&["a@b.com"], "two\nlines")).is_err());
        let long = "s".repeat(MAX_SUBJECT_CHARS + 1);
        assert!(new_message_json_sent(&m(&["a@b.com"], &long)).unwrap_err().to_string().contains("255"));
        let many: Vec<String> = (0..MAX_RECIPIENTS).map(|i| format!("p{i}@contoso.com")).collect();
        let e = new_message_json_sent(&OutgoingMail { to: many, cc: vec!["x@contoso.com".into()], subject: "s".into(), text: "t".into() })
            .unwrap_err();
        assert!(e.to_string().contains("101 recipients"), "{e}");
    }

    #[test]
    fn delta_and_messages_parse_as_graph_sends_them() {
        let page: DeltaResponse = serde_json::from_value(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(message)",
            "@odata.nextLink": "https://graph.microsoft.com/v1.0/users/x/mailFolders/inbox/messages/delta?$skiptoken=abc",
            "value": [
                {"@odata.type": "#microsoft.graph.message", "@odata.etag": "W/\"x\"", "id": "AAMk1", "internetMessageId": "<m1@contoso.com>",
                 "conversationId": "AAQk1", "subject": "Hello", "receivedDateTime": "2026-12-05T08:00:00Z", "hasAttachments": false,
                 "isDraft": false, "body": {"contentType": "html", "content": "<p>hi</p>"},
                 "from": {"emailAddress": {"name": "Ann", "address": "Ann@Contoso.com"}},
                 "toRecipients": [{"emailAddress": {"name": "Agent", "address": "agent@contoso.com"}}], "ccRecipients": []},
                {"id": "AAMk2", "@removed": {"reason": "deleted"}}
            ]
        }))
        .unwrap();
        assert_eq!(page.value.len(), 2);
        let m = &page.value[0];
        assert_eq!(m.from.as_ref().unwrap().address().as_deref(), Some("ann@contoso.com"), "lower-cased");
        assert_eq!(m.from.as_ref().unwrap().name(), Some("Ann"));
        assert_eq!(m.body.as_ref().unwrap().content, "<p>hi</p>");
        assert!(page.value[1].removed.is_some());
        assert!(page.next_link.is_some() && page.delta_link.is_none());
    }
}
