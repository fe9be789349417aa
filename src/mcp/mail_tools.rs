//! The tools that write mail as the bot's Entra Agent User: reply (or reply to all), forward, send, drafts.
//! Offered only when a bot has `agent_user.mail = true`. Parameters and result shapes only: the recipient
//! checks, the owner's approval and the audit-first writes are in [`crate::bridge::mail`].

use rmcp::handler::server::wrapper::Parameters;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, schemars, tool, tool_router};
use serde::Deserialize;
use serde_json::json;

use super::session::Bridge;
use super::{ToolResult, ok};
use crate::bridge::mail::{MailDone, MailDraft, MailForward, MailReply};
use crate::graph::OutgoingMail;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct MailReplyArgs {
    /// The mail to answer: the `message_id` of its `mail` event.
    pub message_id: String,
    /// Plain text (sent as escaped HTML; line breaks kept).
    pub text: String,
    /// Answer everyone on the mail (its to and cc), not only its sender.
    #[serde(default)]
    pub reply_all: bool,
    /// The bot whose Agent User answers (app id), when several have mail.
    #[serde(default)]
    pub bot: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct MailForwardArgs {
    /// The mail to forward: the `message_id` of its `mail` event.
    pub message_id: String,
    /// Addresses to forward it to.
    pub to: Vec<String>,
    /// Plain text above the forwarded mail.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub bot: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct MailSendArgs {
    /// Addresses (ann@contoso.com).
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    /// One line, at most 255 characters.
    pub subject: String,
    /// Plain text (sent as escaped HTML; line breaks kept).
    pub text: String,
    #[serde(default)]
    pub bot: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct MailDraftArgs {
    /// Draft a reply to this mail (the `message_id` of its `mail` event); without it, a new message.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// With `reply_to`: a draft answering everyone on the mail.
    #[serde(default)]
    pub reply_all: bool,
    /// A new message's recipients.
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    /// A new message's subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Plain text.
    pub text: String,
    #[serde(default)]
    pub bot: Option<String>,
}

/// The result of a mail tool.
fn mail_done(status: &str, done: MailDone) -> serde_json::Value {
    let mut v = json!({"status": status, "identity": done.identity, "via": "mail", "recipients": done.recipients});
    if let Some(id) = done.draft_id {
        v["draft_id"] = json!(id);
    }
    if let Some(thread) = done.thread {
        v["chat_id"] = json!(thread);
    }
    v
}

#[tool_router(router = mail_router, vis = "pub(super)")]
impl Bridge {
    #[tool(
        description = "Reply by mail, as the Agent User, to a mail it received (Graph's reply on that message, so the reply is threaded). reply_all answers everyone on it. Recipients nobody allowed need an owner's approval in Teams first (the call waits)."
    )]
    async fn mail_reply(&self, ctx: RequestContext<RoleServer>, Parameters(a): Parameters<MailReplyArgs>) -> ToolResult {
        let scope = self.scope_of(&ctx.extensions)?;
        let requester = self.requester(&scope);
        let req = MailReply { message_id: a.message_id, text: a.text, all: a.reply_all };
        let done = self.hub().mail_reply(self.caller(&scope, &requester), a.bot.as_deref(), req).await?;
        // Answering a thread acknowledges what this session was shown from it.
        if let Some(thread) = &done.thread {
            self.ack_chat(thread).await;
        }
        ok(mail_done("sent", done))
    }

    #[tool(
        description = "Forward a mail the Agent User received to other addresses, as the Agent User. Recipients nobody allowed need an owner's approval in Teams first (the call waits)."
    )]
    async fn mail_forward(&self, ctx: RequestContext<RoleServer>, Parameters(a): Parameters<MailForwardArgs>) -> ToolResult {
        let scope = self.scope_of(&ctx.extensions)?;
        let requester = self.requester(&scope);
        let req = MailForward { message_id: a.message_id, to: a.to, text: a.text };
        ok(mail_done("sent", self.hub().mail_forward(self.caller(&scope, &requester), a.bot.as_deref(), req).await?))
    }

    #[tool(
        description = "Send a new mail as the Agent User (plain text, escaped). Recipients not allow-listed need an owner's approval in Teams first (the call waits; nothing is sent on a denial)."
    )]
    async fn mail_send(&self, ctx: RequestContext<RoleServer>, Parameters(a): Parameters<MailSendArgs>) -> ToolResult {
        let scope = self.scope_of(&ctx.extensions)?;
        let requester = self.requester(&scope);
        let mail = OutgoingMail { to: a.to, cc: a.cc, subject: a.subject, text: a.text };
        ok(mail_done("sent", self.hub().mail_send(self.caller(&scope, &requester), a.bot.as_deref(), mail).await?))
    }

    #[tool(
        description = "Save a draft in the Agent User's mailbox, not sent: a reply to a mail (reply_to, Graph's createReply) or a new message. Returns the draft_id."
    )]
    async fn mail_draft(&self, ctx: RequestContext<RoleServer>, Parameters(a): Parameters<MailDraftArgs>) -> ToolResult {
        let scope = self.scope_of(&ctx.extensions)?;
        let requester = self.requester(&scope);
        let mail = OutgoingMail { to: a.to, cc: a.cc, subject: a.subject.unwrap_or_default(), text: a.text };
        let req = MailDraft { reply_to: a.reply_to, all: a.reply_all, mail };
        ok(mail_done("drafted", self.hub().mail_draft(self.caller(&scope, &requester), a.bot.as_deref(), req).await?))
    }
}
