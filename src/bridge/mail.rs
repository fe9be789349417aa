//! The Agent User's mail, as the bridge sees it: who may reach the host by mail (the sender policy), what a
//! mail becomes in the inbox (a typed `mail` entry), and writing mail as the Agent User (reply, reply-all,
//! forward, send, drafts) with the owner's approval for recipients nobody allowed, audited before it happens.
//!
//! * **Senders.** `agent_user.mail_senders_allow` (addresses or domains); when it is empty, the Agent User's
//!   sponsors and `policy.contacts_allow`, by the addresses the directory gives them (object ids are looked
//!   up: `mail` and `userPrincipalName`). Matched on the `from` address as Exchange reports it.
//! * **Recipients.** No approval for `mail_recipients_allow`, the allowed senders, `policy.contacts_allow`,
//!   the sponsors, and people an owner approved during this run; anyone else waits for an owner's Allow on
//!   the approval card (the `graph_*` tools' flow). Replies are checked like new mail: their recipients are
//!   the original's `replyTo` (else `from`), and for reply-all its `to` and `cc` as well.
//! * **Inbound.** A mail becomes an activity-shaped record (`type` `mail`, `channelId` `mail`) whose
//!   `channelData.mail` holds the headers, the attachment list (never bytes) and whether it is protected;
//!   its text is the body as plain text (HTML converted), bounded. A protected mail (S/MIME encrypted, or
//!   rights-managed) is reported as such and not opened: no body, no attachment list beyond the envelope.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::agent::AgentActor;
use super::envelope::{bound, html_to_text};
use super::{Caller, Error, Hub, Result, Scope};
use crate::config::BotConfig;
use crate::graph::mail::{Attachment, MailMessage, OutgoingMail};
use crate::graph::{GraphError, GraphErrorKind};
use crate::store::{ConversationRef, Identity};

/// The `channelId` of mail records and of the conversation references of mail threads: answered with the
/// `mail_*` tools, never by the bot or as a Teams chat.
pub(crate) const MAIL_CHANNEL: &str = "mail";

/// The most characters of a mail's body kept in its inbox entry (the MCP layer may cut further).
pub(crate) const MAIL_BODY_MAX_CHARS: usize = 32_000;
/// The most attachments listed for one mail.
const MAX_ATTACHMENTS_LISTED: usize = 50;
/// How long the addresses of the sponsors and contacts count before they are read again.
const PEOPLE_TTL: Duration = Duration::from_secs(600);
/// After a failed read, how long the addresses read so far count before the directory is asked again.
const PEOPLE_RETRY: Duration = Duration::from_secs(30);

/// Whether a conversation is one of the Agent User's mail threads.
pub(crate) fn lives_in_mail(r: &ConversationRef) -> bool {
    r.channel_id == MAIL_CHANNEL
}

/// The conversation id of a mail thread: `mail:` and Graph's `conversationId` (`mail:` alone without one).
pub(crate) fn thread_id(conversation_id: Option<&str>) -> String {
    format!("mail:{}", conversation_id.map(str::trim).unwrap_or_default())
}

/// Whether `address` matches an allow-list entry: the same address, or an address at that domain
/// (`contoso.com` and `@contoso.com` alike; not its subdomains). ASCII case is ignored.
pub(crate) fn matches_pattern(pattern: &str, address: &str) -> bool {
    let (p, a) = (pattern.trim().to_ascii_lowercase(), address.trim().to_ascii_lowercase());
    if p.is_empty() || a.is_empty() {
        return false;
    }
    match p.strip_prefix('@') {
        Some(domain) => a.rsplit_once('@').is_some_and(|(_, d)| d == domain),
        None if p.contains('@') => p == a,
        None => a.rsplit_once('@').is_some_and(|(_, d)| d == p),
    }
}

/// How a mail is protected, when it is: then it is not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protection {
    /// S/MIME encrypted (an `application/pkcs7-mime` attachment, `smime.p7m`).
    Smime,
    /// Rights-managed (Microsoft Purview Information Protection: a `message.rpmsg` attachment).
    RightsManaged,
}

impl Protection {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Smime => "S/MIME encrypted",
            Self::RightsManaged => "rights-managed",
        }
    }
}

/// Whether a mail is protected, told by its attachments: an encrypted S/MIME message carries its whole
/// content as `smime.p7m` (`application/pkcs7-mime`); a rights-managed one as `message.rpmsg`
/// (`application/x-microsoft-rpmsg-message`). A signed-only S/MIME message (`smime.p7s`) is readable.
pub(crate) fn protection(attachments: &[Attachment]) -> Option<Protection> {
    attachments.iter().find_map(|a| {
        let kind = a.content_type.as_deref().unwrap_or_default().trim().to_ascii_lowercase();
        let name = a.name.as_deref().unwrap_or_default().trim().to_ascii_lowercase();
        if kind == "application/pkcs7-mime" || kind == "application/x-pkcs7-mime" || name.ends_with(".p7m") {
            Some(Protection::Smime)
        } else if kind == "application/x-microsoft-rpmsg-message" || name.ends_with(".rpmsg") {
            Some(Protection::RightsManaged)
        } else {
            None
        }
    })
}

fn person_json(r: Option<&crate::graph::Recipient>) -> Value {
    match r {
        Some(r) => json!({"name": r.name().unwrap_or_default(), "address": r.address().unwrap_or_default()}),
        None => json!({"name": "", "address": ""}),
    }
}

fn people_json(list: Option<&Vec<crate::graph::Recipient>>) -> Value {
    Value::Array(
        list.map(|l| l.iter().take(crate::graph::mail::MAX_RECIPIENTS).map(|r| person_json(Some(r))).collect()).unwrap_or_default(),
    )
}

/// The mailbox the mail reached, as the conversion needs it.
pub(crate) struct Mailbox<'a> {
    /// The Agent User's object id (the recipient).
    pub agent_user: &'a str,
    pub tenant: &'a str,
}

/// A mail as the activity-shaped record the bridge understands (`type` `mail`, `channelId` `mail`; the
/// thread as the conversation; `key`, its `internetMessageId`, as the id). The body becomes plain text
/// (HTML converted), cut to [`MAIL_BODY_MAX_CHARS`]; a protected mail gets no text at all.
pub(crate) fn mail_activity(m: &MailMessage, attachments: &[Attachment], mailbox: &Mailbox<'_>, key: &str) -> Value {
    let protected = protection(attachments);
    let text = match (&m.body, protected) {
        (Some(body), None) => {
            let plain = if body.content_type.eq_ignore_ascii_case("html") { html_to_text(&body.content) } else { body.content.clone() };
            Some(bound(plain.trim(), MAIL_BODY_MAX_CHARS).0)
        }
        _ => None,
    };
    let listed: Vec<Value> = if protected.is_some() {
        Vec::new()
    } else {
        attachments
            .iter()
            .take(MAX_ATTACHMENTS_LISTED)
            .map(|a| json!({"name": a.name, "contentType": a.content_type, "size": a.size, "inline": a.is_inline}))
            .collect()
    };
    let from = m.from.as_ref().or(m.sender.as_ref());
    let thread = thread_id(m.conversation_id.as_deref());
    json!({
        "type": "mail",
        "id": key,
        "channelId": MAIL_CHANNEL,
        "serviceUrl": "https://graph.microsoft.com",
        "timestamp": m.received_date_time,
        "text": text,
        "textFormat": "plain",
        "from": {"id": from.and_then(crate::graph::Recipient::address).unwrap_or_default(), "name": from.and_then(|f| f.name())},
        "recipient": {"id": mailbox.agent_user, "aadObjectId": mailbox.agent_user},
        "conversation": {"id": thread, "conversationType": "mail", "tenantId": mailbox.tenant},
        "channelData": {
            "tenant": {"id": mailbox.tenant},
            "mail": {
                "messageId": m.id,
                "internetMessageId": m.internet_message_id,
                "conversationId": m.conversation_id,
                "subject": m.subject.as_deref().unwrap_or_default(),
                "from": person_json(from),
                "to": people_json(m.to_recipients.as_ref()),
                "cc": people_json(m.cc_recipients.as_ref()),
                "receivedAt": m.received_date_time,
                "attachments": listed,
                "protected": protected.map(Protection::label),
            },
        },
    })
}

/// Who may write to the Agent User (senders) and whom it may write to without asking (recipients), by the
/// configuration and the directory.
pub struct MailPolicy {
    senders_allow: Vec<String>,
    recipients_allow: Vec<String>,
    contacts_allow: Vec<String>,
    /// The sponsors' and contacts' addresses as last read, and until when they count.
    people: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
    /// The Agent User's own addresses (its `mail` and UPN), read once.
    own: tokio::sync::OnceCell<Vec<String>>,
}

impl std::fmt::Debug for MailPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailPolicy").field("senders_allow", &self.senders_allow).field("recipients_allow", &self.recipients_allow).finish()
    }
}

impl MailPolicy {
    /// The policy of a bot with mail on.
    pub fn new(au: &crate::config::agent_user::AgentUserConfig, policy: &crate::config::policy::BotPolicy) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect();
        Self {
            senders_allow: lower(&au.mail_senders_allow),
            recipients_allow: lower(&au.mail_recipients_allow),
            contacts_allow: lower(&policy.contacts_allow),
            people: tokio::sync::Mutex::new(None),
            own: tokio::sync::OnceCell::new(),
        }
    }

    /// The Agent User's own addresses (`GET /me`: its `mail` and UPN); none when Graph cannot say.
    pub(crate) async fn own_addresses(&self, actor: &AgentActor) -> Vec<String> {
        let read = self
            .own
            .get_or_try_init(|| async {
                let me = actor.graph.me().await?;
                let mut out: Vec<String> =
                    [me.mail, me.user_principal_name].into_iter().flatten().map(|a| a.trim().to_ascii_lowercase()).collect();
                out.retain(|a| !a.is_empty());
                out.dedup();
                Ok::<_, GraphError>(out)
            })
            .await;
        match read {
            Ok(v) => v.clone(),
            Err(e) => {
                tracing::warn!(bot = %actor.bot_app_id, error = %e, "cannot read the Agent User's own mail address");
                Vec::new()
            }
        }
    }

    /// The addresses of the sponsors and of `policy.contacts_allow` (addresses as they are; object ids looked
    /// up in the directory), kept [`PEOPLE_TTL`]. Someone whose lookup fails is left out (fail closed), and
    /// the directory is asked again after [`PEOPLE_RETRY`].
    pub(crate) async fn people(&self, actor: &AgentActor) -> Vec<String> {
        let mut cached = self.people.lock().await;
        if let Some((until, list)) = cached.as_ref()
            && Instant::now() < *until
        {
            return list.clone();
        }
        let mut out: Vec<String> = self.contacts_allow.iter().filter(|c| c.contains('@')).cloned().collect();
        let mut ids: Vec<String> = self.contacts_allow.iter().filter(|c| crate::ids::is_guid(c)).cloned().collect();
        ids.extend(actor.sponsors().await.iter().map(|s| s.as_str().to_ascii_lowercase()));
        ids.sort();
        ids.dedup();
        let mut failed = false;
        for id in ids {
            match actor.graph.get_user(&id).await {
                Ok(u) => out.extend([u.mail, u.user_principal_name].into_iter().flatten().map(|a| a.trim().to_ascii_lowercase())),
                Err(e) => {
                    failed = true;
                    tracing::warn!(bot = %actor.bot_app_id, error = %e, "cannot read a sponsor's or contact's mail address; their mail is not let through");
                }
            }
        }
        out.retain(|a| !a.is_empty());
        out.sort();
        out.dedup();
        *cached = Some((Instant::now() + if failed { PEOPLE_RETRY } else { PEOPLE_TTL }, out.clone()));
        out
    }

    /// Whether mail from `address` reaches the host: `mail_senders_allow` when set, else the sponsors and
    /// contacts.
    pub(crate) async fn sender_allowed(&self, actor: &AgentActor, address: &str) -> bool {
        if address.trim().is_empty() {
            return false;
        }
        if !self.senders_allow.is_empty() {
            return self.senders_allow.iter().any(|p| matches_pattern(p, address));
        }
        self.people(actor).await.iter().any(|p| p.eq_ignore_ascii_case(address.trim()))
    }

    /// Whether the Agent User may write to `address` without an owner's approval.
    pub(crate) async fn recipient_allowed(&self, actor: &AgentActor, address: &str) -> bool {
        self.recipients_allow.iter().chain(&self.senders_allow).any(|p| matches_pattern(p, address))
            || actor.may_reach(&self.contacts_allow, address)
            || self.people(actor).await.iter().any(|p| p.eq_ignore_ascii_case(address.trim()))
    }
}

/// A reply to a mail of the Agent User's.
#[derive(Debug, Clone)]
pub struct MailReply {
    /// Graph's id of the mail answered (an event's `message_id`).
    pub message_id: String,
    pub text: String,
    /// To everyone on the mail, not only its sender.
    pub all: bool,
}

/// A mail of the Agent User's, forwarded.
#[derive(Debug, Clone)]
pub struct MailForward {
    pub message_id: String,
    pub to: Vec<String>,
    pub text: Option<String>,
}

/// A draft: a reply to a mail (`reply_to`, and whether to all), or a new message.
#[derive(Debug, Clone)]
pub struct MailDraft {
    pub reply_to: Option<String>,
    pub all: bool,
    pub mail: OutgoingMail,
}

/// What a mail tool did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailDone {
    /// The Agent User: who acted.
    pub identity: Identity,
    /// Who it went to (for a draft, who it is addressed to).
    pub recipients: Vec<String>,
    /// The mail thread it belongs to (`mail:<conversationId>`), when known.
    pub thread: Option<String>,
    /// A draft's id.
    pub draft_id: Option<String>,
}

/// A Graph failure of a mail tool as a bridge error.
fn mail_error(what: &str, e: &GraphError) -> Error {
    let message = format!("{what}: {e}");
    match e.kind() {
        GraphErrorKind::Throttled | GraphErrorKind::Transient | GraphErrorKind::Token => Error::unavailable(message),
        GraphErrorKind::NotFound => Error::not_found(format!("{what}: no such message in the Agent User's mailbox ({e})")),
        GraphErrorKind::Refused => Error::invalid(e.to_string()),
        _ => Error::refused(message),
    }
}

impl Hub {
    /// The Agent User whose mail the tools use: the named bot's, or the only one in scope with mail on.
    pub fn mail_user(&self, scope: &Scope, bot: Option<&str>) -> Result<(BotConfig, Arc<AgentActor>, &MailPolicy)> {
        let mut found: Vec<(BotConfig, Arc<AgentActor>)> = self
            .bots_in(scope, bot)
            .filter_map(|b| self.agents.get(&b.app_id.to_ascii_lowercase()).map(|a| (b.clone(), Arc::clone(a))))
            .filter(|(_, a)| a.mail.is_some() && scope.allows_tenant(a.tokens.tenant()))
            .collect();
        let (b, a) = match found.len() {
            1 => found.remove(0),
            0 => {
                return Err(Error::not_found(match bot {
                    Some(b) => format!("bot {b} has no Agent User with mail in this session's scope (set [bots.agent_user] mail = true)"),
                    None => "no bot in this session's scope has an Agent User with mail: set [bots.agent_user] mail = true".to_owned(),
                }));
            }
            _ => return Err(Error::invalid("several bots have an Agent User with mail: say which with `bot`")),
        };
        // The policy lives as long as the hub's actor (`self.agents` holds it).
        let policy =
            self.agents.get(&b.app_id.to_ascii_lowercase()).and_then(|x| x.mail.as_ref()).ok_or_else(|| Error::not_found("no mail"))?;
        Ok((b, a, policy))
    }

    /// Recipients nobody allowed wait for an owner's Allow (the call waits; nothing is sent on a denial or
    /// without an answer).
    async fn approve_recipients(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        actor: &AgentActor,
        policy: &MailPolicy,
        action: &str,
        recipients: &[String],
    ) -> Result<()> {
        let mut new = Vec::new();
        for r in recipients {
            if !policy.recipient_allowed(actor, r).await && !new.contains(r) {
                new.push(r.clone());
            }
        }
        self.ask_owner_for(caller, bot, actor, action, new, None).await
    }

    /// The people a reply to `original` goes to: its `replyTo` (else its sender), and with `all` its `to` and
    /// `cc`, without the Agent User itself.
    async fn reply_recipients(&self, actor: &AgentActor, policy: &MailPolicy, original: &MailMessage, all: bool) -> Vec<String> {
        let own = policy.own_addresses(actor).await;
        let mut out: Vec<String> = Vec::new();
        let reply_to: Vec<String> = original.reply_to.iter().flatten().filter_map(crate::graph::Recipient::address).collect();
        if reply_to.is_empty() {
            out.extend(original.from.as_ref().and_then(crate::graph::Recipient::address));
        } else {
            out.extend(reply_to);
        }
        if all {
            for r in original.to_recipients.iter().flatten().chain(original.cc_recipients.iter().flatten()) {
                out.extend(r.address());
            }
        }
        out.retain(|a| !own.contains(a));
        out.sort();
        out.dedup();
        out
    }

    /// Reply (or reply to all) to a mail of the Agent User's, through Graph's reply action on that message (so
    /// that Graph threads it): recipients checked, audited first.
    pub async fn mail_reply(&self, caller: Caller<'_>, bot: Option<&str>, req: MailReply) -> Result<MailDone> {
        let (bot, actor, policy) = self.mail_user(caller.scope, bot)?;
        crate::graph::mail::check_text(&req.text).map_err(|e| Error::invalid(e.to_string()))?;
        let original = actor.graph.mail_message(&req.message_id).await.map_err(|e| mail_error("reading the mail to answer", &e))?;
        let recipients = self.reply_recipients(&actor, policy, &original, req.all).await;
        if recipients.is_empty() {
            return Err(Error::invalid("the mail has no one to answer (no sender or reply-to address)"));
        }
        let action = if req.all { "mail_reply_all" } else { "mail_reply" };
        self.approve_recipients(caller, &bot, &actor, policy, "reply by mail to", &recipients).await?;
        let target = format!("mail:{}", req.message_id.trim());
        let detail = format!("to {}", recipients.join(", "));
        self.audit_agent(caller, &actor, action, &target, "attempt", detail.clone()).await?;
        match actor.graph.mail_reply(&req.message_id, &req.text, req.all).await {
            Ok(()) => {
                self.audit_agent(caller, &actor, action, &target, "sent", detail).await?;
                Ok(MailDone {
                    identity: actor.identity(),
                    recipients,
                    thread: Some(thread_id(original.conversation_id.as_deref())),
                    draft_id: None,
                })
            }
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, action, &target, "failed", e.to_string()).await;
                Err(mail_error("Graph refused the reply", &e))
            }
        }
    }

    /// Forward a mail of the Agent User's to `to`: recipients checked, audited first.
    pub async fn mail_forward(&self, caller: Caller<'_>, bot: Option<&str>, req: MailForward) -> Result<MailDone> {
        let (bot, actor, policy) = self.mail_user(caller.scope, bot)?;
        let to = checked_addresses("to", &req.to)?;
        if to.is_empty() {
            return Err(Error::invalid("to is empty: name at least one address to forward to"));
        }
        if let Some(t) = req.text.as_deref().filter(|t| !t.trim().is_empty()) {
            crate::graph::mail::check_text(t).map_err(|e| Error::invalid(e.to_string()))?;
        }
        self.approve_recipients(caller, &bot, &actor, policy, "forward a mail to", &to).await?;
        let target = format!("mail:{}", req.message_id.trim());
        let detail = format!("to {}", to.join(", "));
        self.audit_agent(caller, &actor, "mail_forward", &target, "attempt", detail.clone()).await?;
        match actor.graph.mail_forward(&req.message_id, &to, req.text.as_deref()).await {
            Ok(()) => {
                self.audit_agent(caller, &actor, "mail_forward", &target, "sent", detail).await?;
                Ok(MailDone { identity: actor.identity(), recipients: to, thread: None, draft_id: None })
            }
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, "mail_forward", &target, "failed", e.to_string()).await;
                Err(mail_error("Graph refused the forward", &e))
            }
        }
    }

    /// Send a new mail as the Agent User: checked (addresses, subject, size), recipients nobody allowed
    /// approved by an owner first, audited first.
    pub async fn mail_send(&self, caller: Caller<'_>, bot: Option<&str>, mut mail: OutgoingMail) -> Result<MailDone> {
        let (bot, actor, policy) = self.mail_user(caller.scope, bot)?;
        mail.to = checked_addresses("to", &mail.to)?;
        mail.cc = checked_addresses("cc", &mail.cc)?;
        crate::graph::mail::check_outgoing(&mail, true).map_err(|e| Error::invalid(e.to_string()))?;
        let recipients: Vec<String> = mail.to.iter().chain(&mail.cc).cloned().collect();
        self.approve_recipients(caller, &bot, &actor, policy, "send a mail to", &recipients).await?;
        let target = format!("mail:to:{}", recipients.join(","));
        self.audit_agent(caller, &actor, "mail_send", &target, "attempt", String::new()).await?;
        match actor.graph.mail_send(&mail).await {
            Ok(()) => {
                self.audit_agent(caller, &actor, "mail_send", &target, "sent", String::new()).await?;
                Ok(MailDone { identity: actor.identity(), recipients, thread: None, draft_id: None })
            }
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, "mail_send", &target, "failed", e.to_string()).await;
                Err(mail_error("Graph refused the mail", &e))
            }
        }
    }

    /// Save a draft in the Agent User's Drafts (a reply draft through Graph's `createReply`/`createReplyAll`,
    /// or a new message); nothing is sent, so no approval is asked; audited.
    pub async fn mail_draft(&self, caller: Caller<'_>, bot: Option<&str>, mut req: MailDraft) -> Result<MailDone> {
        let (_, actor, _) = self.mail_user(caller.scope, bot)?;
        let (target, created) = match req.reply_to.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            Some(id) => {
                crate::graph::mail::check_text(&req.mail.text).map_err(|e| Error::invalid(e.to_string()))?;
                let target = format!("mail:{id}");
                self.audit_agent(caller, &actor, "mail_draft", &target, "attempt", String::new()).await?;
                (target, actor.graph.mail_create_reply(id, &req.mail.text, req.all).await)
            }
            None => {
                req.mail.to = checked_addresses("to", &req.mail.to)?;
                req.mail.cc = checked_addresses("cc", &req.mail.cc)?;
                crate::graph::mail::check_outgoing(&req.mail, false).map_err(|e| Error::invalid(e.to_string()))?;
                let target = format!("mail:to:{}", req.mail.to.iter().chain(&req.mail.cc).cloned().collect::<Vec<_>>().join(","));
                self.audit_agent(caller, &actor, "mail_draft", &target, "attempt", String::new()).await?;
                (target, actor.graph.mail_create_draft(&req.mail).await)
            }
        };
        match created {
            Ok(draft) => {
                self.audit_agent(caller, &actor, "mail_draft", &target, "created", format!("draft {}", draft.id)).await?;
                let recipients =
                    draft.to_recipients.iter().flatten().chain(draft.cc_recipients.iter().flatten()).filter_map(|r| r.address()).collect();
                Ok(MailDone {
                    identity: actor.identity(),
                    recipients,
                    thread: draft.conversation_id.as_deref().map(|c| thread_id(Some(c))),
                    draft_id: Some(draft.id),
                })
            }
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, "mail_draft", &target, "failed", e.to_string()).await;
                Err(mail_error("Graph refused the draft", &e))
            }
        }
    }
}

/// Addresses as given, trimmed and lower-cased, each a plain mail address (the error names the parameter).
fn checked_addresses(what: &str, list: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for a in list {
        crate::graph::mail::check_address(a).map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        let a = a.trim().to_ascii_lowercase();
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ItemBody, Recipient};

    fn att(name: &str, kind: &str) -> Attachment {
        Attachment { id: "a".into(), name: Some(name.into()), content_type: Some(kind.into()), size: Some(10), is_inline: Some(false) }
    }

    #[test]
    fn allow_list_entries_match_addresses_and_domains() {
        assert!(matches_pattern("ann@contoso.com", "Ann@Contoso.com"));
        assert!(!matches_pattern("ann@contoso.com", "ann2@contoso.com"));
        assert!(matches_pattern("contoso.com", "bob@CONTOSO.com"));
        assert!(matches_pattern("@contoso.com", "bob@contoso.com"));
        assert!(!matches_pattern("contoso.com", "bob@evil-contoso.com"), "not a suffix match");
        assert!(!matches_pattern("contoso.com", "bob@mail.contoso.com"), "not subdomains");
        assert!(!matches_pattern("contoso.com", "contoso.com"), "a domain is not an address");
        assert!(!matches_pattern("contoso.com", "bob@contoso.com.evil.io"));
        assert!(!matches_pattern("", "bob@contoso.com"));
    }

    #[test]
    fn protected_mail_is_told_by_its_attachments() {
        assert_eq!(protection(&[att("smime.p7m", "application/pkcs7-mime")]), Some(Protection::Smime));
        assert_eq!(protection(&[att("SMIME.P7M", "application/octet-stream")]), Some(Protection::Smime));
        assert_eq!(protection(&[att("message.rpmsg", "application/x-microsoft-rpmsg-message")]), Some(Protection::RightsManaged));
        assert_eq!(protection(&[att("smime.p7s", "application/pkcs7-signature")]), None, "signed only: readable");
        assert_eq!(protection(&[att("report.pdf", "application/pdf")]), None);
    }

    fn mail() -> MailMessage {
        let who = |name: &str, address: &str| Recipient {
            email_address: Some(crate::graph::mail::EmailAddress { name: Some(name.into()), address: Some(address.into()) }),
        };
        MailMessage {
            id: "AAMkAD=".into(),
            internet_message_id: Some("<m1@contoso.com>".into()),
            conversation_id: Some("AAQkAD=".into()),
            subject: Some("Quarterly <numbers>".into()),
            from: Some(who("Ann", "Ann@Contoso.com")),
            to_recipients: Some(vec![who("Agent", "agent@contoso.com")]),
            cc_recipients: Some(vec![who("Bob", "bob@contoso.com")]),
            received_date_time: Some("2026-12-05T08:00:00Z".into()),
            body: Some(ItemBody {
                content_type: "html".into(),
                content: "<html><head><style>p{color:red}</style></head><body><p>Numbers &amp; notes</p><script>x()</script></body></html>"
                    .into(),
            }),
            has_attachments: Some(true),
            ..MailMessage::default()
        }
    }

    #[test]
    fn a_mail_becomes_a_typed_event_with_its_headers_inside_the_envelope() {
        let mailbox = Mailbox { agent_user: "d1", tenant: "t1" };
        let v = mail_activity(&mail(), &[att("report.pdf", "application/pdf")], &mailbox, "<m1@contoso.com>");
        assert_eq!(v["type"], "mail");
        assert_eq!(v["conversation"]["id"], "mail:AAQkAD=");
        assert_eq!(v["text"], "Numbers & notes", "HTML to text, style and script dropped");
        let item = crate::store::InboxItem {
            id: 3,
            bot_app_id: "bot".into(),
            tenant_id: "t1".into(),
            conversation_id: "mail:AAQkAD=".into(),
            activity_id: "<m1@contoso.com>".into(),
            activity_type: "mail".into(),
            auth: crate::ids::AuthKind::Graph,
            state: crate::store::InboxState::Pending,
            received_at_ms: 0,
            body: v.to_string(),
        };
        let ev = crate::bridge::events::event_from_item(&item).unwrap();
        assert_eq!(ev.kind, crate::bridge::events::EventKind::Mail);
        assert_eq!(ev.message_id, "AAMkAD=", "Graph's id: what mail_reply takes");
        assert_eq!(ev.sender_name.as_deref(), Some("Ann"));
        let body = ev.untrusted_body();
        assert_eq!(
            body,
            "Mail from: Ann <ann@contoso.com>\nTo: Agent <agent@contoso.com>\nCc: Bob <bob@contoso.com>\nSubject: Quarterly <numbers>\n\
             Received: 2026-12-05T08:00:00Z\nAttachments (not opened): report.pdf (application/pdf, 10 bytes)\n\nNumbers & notes"
        );
        // A protected mail: no text, no attachment list, a note.
        let mut secret = mail();
        secret.body = Some(ItemBody { content_type: "text".into(), content: "TOP SECRET".into() });
        let v = mail_activity(&secret, &[att("smime.p7m", "application/pkcs7-mime")], &mailbox, "k");
        assert!(v["text"].is_null());
        let ev = crate::bridge::events::event_from_item(&crate::store::InboxItem { body: v.to_string(), ..item }).unwrap();
        let body = ev.untrusted_body();
        assert!(body.contains("protected (S/MIME encrypted)") && !body.contains("TOP SECRET") && !body.contains("smime.p7m"), "{body}");
    }

    #[test]
    fn long_bodies_are_cut() {
        let mut m = mail();
        m.body = Some(ItemBody { content_type: "text".into(), content: "x".repeat(MAIL_BODY_MAX_CHARS + 10) });
        let v = mail_activity(&m, &[], &Mailbox { agent_user: "d1", tenant: "t" }, "k");
        let text = v["text"].as_str().unwrap();
        assert!(text.ends_with("[truncated: 10 more characters]"), "{}", &text[text.len() - 60..]);
    }
}
