//! Acting through Microsoft Graph as the bot's Entra Agent User: which Agent User acts, the owner's
//! approval for reaching someone new (an Adaptive Card to the bot's approvers in Teams, unless the person
//! is in `policy.contacts_allow`: the server enforces it, not the prompt), and audit-first Graph writes
//! under the Agent User's identity. The MCP `graph_*` tools and the fallback of the bot's sends call these.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::agent::{APPROVAL_WAIT, AgentActor};
use super::approval::{self, Behavior};
use super::{Caller, Error, Hub, Result, Scope};
use crate::config::BotConfig;
use crate::graph::{Chat, ChatMember, ChatMessage, GraphError, GraphErrorKind, MessageBody, NewChat, User};
use crate::store::{AuditEvent, now_ms};

/// A person the Agent User reaches: an object id or UPN in its tenant, or an email with a home tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Object id (GUID), UPN, or (for someone in another tenant) their email.
    pub user: String,
    /// Their home tenant, for someone outside the Agent User's tenant (then `user` is their email).
    pub tenant: Option<String>,
}

impl Person {
    /// The person as a Graph chat member.
    pub fn member(&self) -> ChatMember {
        match &self.tenant {
            Some(t) if !t.trim().is_empty() => ChatMember::External { email: self.user.trim().to_owned(), tenant_id: t.trim().to_owned() },
            _ => ChatMember::InTenant(self.user.trim().to_owned()),
        }
    }
}

/// A message written into a Graph chat as the Agent User.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSent {
    /// The Agent User: who acted.
    pub identity: crate::store::Identity,
    pub chat_id: String,
    pub message_id: String,
}

/// A new chat of the Agent User's, with its first message if one was asked for.
#[derive(Debug, Clone)]
pub enum ChatCreated {
    Created { identity: crate::store::Identity, chat: Chat },
    Sent(GraphSent),
}

/// A request to create a chat as the Agent User.
#[derive(Debug, Clone)]
pub struct CreateChat {
    /// The other people: one for a 1:1 chat, two or more for a group chat.
    pub members: Vec<Person>,
    /// A group chat's name.
    pub topic: Option<String>,
    /// A first message to send into the chat.
    pub text: Option<String>,
}

/// A message into one of the Agent User's chats.
#[derive(Debug, Clone)]
pub struct GraphMessage {
    pub chat_id: String,
    /// Plain text (escaped; line breaks kept).
    pub text: String,
    /// People to @mention, placed before the text (AAD object id, name shown).
    pub mentions: Vec<(String, String)>,
    /// An Adaptive Card to attach.
    pub card: Option<Value>,
}

/// How asking an owner ended, when not with an Allow.
#[derive(Debug)]
pub(crate) enum OwnerAnswer {
    /// An owner denied it.
    Denied,
    /// Nobody could be asked, nobody answered in time, or the card could not be sent.
    Failed(Error),
}

/// A Graph failure as a bridge error: try again later (throttled, transient, no token) or refused.
pub(crate) fn graph_error(what: impl std::fmt::Display, e: &GraphError) -> Error {
    let message = format!("{what}: {e}");
    match e.kind() {
        GraphErrorKind::Throttled | GraphErrorKind::Transient | GraphErrorKind::Token => Error::unavailable(message),
        _ => Error::refused(message),
    }
}

impl Hub {
    /// The Agent User to act as: the named bot's, or the only one in scope.
    pub fn agent_user(&self, scope: &Scope, bot: Option<&str>) -> Result<(BotConfig, Arc<AgentActor>)> {
        let mut found: Vec<(BotConfig, Arc<AgentActor>)> = self
            .bots_in(scope, bot)
            .filter_map(|b| self.agents.get(&b.app_id.to_ascii_lowercase()).map(|a| (b.clone(), Arc::clone(a))))
            .filter(|(_, a)| scope.allows_tenant(a.tokens.tenant()))
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::not_found(match bot {
                Some(b) => format!("bot {b} has no Agent User in this session's scope (configure [bots.agent_user])"),
                None => "no bot in this session's scope has an Agent User: configure [bots.agent_user] (docs/configuration.md)".into(),
            })),
            _ => Err(Error::invalid("several bots have an Agent User: say which with `bot`")),
        }
    }

    /// Record what the Agent User does (or tried): nothing is done without it.
    pub(crate) async fn audit_agent(
        &self,
        caller: Caller<'_>,
        actor: &AgentActor,
        action: &str,
        target: &str,
        outcome: &str,
        detail: String,
    ) -> Result<()> {
        let event = AuditEvent::new(
            now_ms(),
            caller.requester,
            actor.identity(),
            action,
            crate::store::Target::graph(actor.tokens.tenant(), &actor.bot_app_id, target),
            outcome,
        )
        .with_detail(detail);
        self.store.record_audit(event).await.map_err(|e| Error::unavailable(format!("not done: the audit log could not be written ({e})")))
    }

    /// Let the Agent User reach `people`: allowed by `policy.contacts_allow`, approved earlier, or
    /// approved now by an owner in Teams (waits up to [`APPROVAL_WAIT`]).
    pub async fn approve_people(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        actor: &AgentActor,
        action: &str,
        people: &[String],
    ) -> Result<()> {
        self.approve_people_for(caller, bot, actor, action, people, None).await
    }

    /// [`Self::approve_people`], showing the owner `details` (an object: what else the action does) on the card.
    pub(super) async fn approve_people_for(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        actor: &AgentActor,
        action: &str,
        people: &[String],
        details: Option<&Value>,
    ) -> Result<()> {
        let new: Vec<String> = people.iter().filter(|p| !actor.may_reach(&bot.policy.contacts_allow, p)).cloned().collect();
        self.ask_owner_for(caller, bot, actor, action, new, details).await
    }

    /// Ask an owner to let the Agent User reach `new` (nobody allowed them yet) and wait for the answer, at most
    /// [`APPROVAL_WAIT`]; an Allow is remembered for the rest of the run. Nothing to ask when `new` is empty.
    /// The card shows the people and `details` (an object: what else the action does).
    pub(super) async fn ask_owner_for(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        actor: &AgentActor,
        action: &str,
        new: Vec<String>,
        details: Option<&Value>,
    ) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        if !self.can_ask_owners(bot) {
            return Err(Error::refused(format!(
                "{action} with {} needs an owner's approval, and bot {} has no policy.approvers; list the person in policy.contacts_allow or configure approvers",
                new.join(", "),
                bot.app_id
            )));
        }
        let description = format!("The Agent User ({}) wants to {action}: {}", actor.identity(), new.join(", "));
        let mut preview = json!({"people": new});
        if let Some(Value::Object(more)) = details {
            for (k, v) in more {
                preview[k] = v.clone();
            }
        }
        self.ask_owner(caller, bot, action, &description, &preview).await.map_err(|e| match e {
            OwnerAnswer::Denied => Error::refused(format!("an owner denied it ({action} with {}); nothing was done", new.join(", "))),
            OwnerAnswer::Failed(e) => e,
        })?;
        actor.remember_approved(&new);
        Ok(())
    }

    /// Ask the bot's owners (its approvers, else the Agent User's sponsors) with an approval card in Teams and
    /// wait (up to [`APPROVAL_WAIT`]) for the answer: `Ok` only on Allow. `preview` is what the card shows
    /// as the request's input.
    pub(crate) async fn ask_owner(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        action: &str,
        description: &str,
        preview: &Value,
    ) -> std::result::Result<(), OwnerAnswer> {
        if !self.can_ask_owners(bot) {
            return Err(OwnerAnswer::Failed(Error::refused(format!(
                "{action} needs an owner's approval, and bot {} has no policy.approvers (nor an Agent User's sponsors); nothing was done",
                bot.app_id
            ))));
        }
        let request_id = approval::new_request_id();
        let timeout = Duration::from_secs(bot.policy.approval_timeout_secs).min(APPROVAL_WAIT);
        let card = approval::request_card(&request_id, action, description, &preview.to_string(), timeout.as_secs().div_ceil(60));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if self.ask_approvers(caller, bot, &request_id, action, &card, timeout, tx).await == 0 {
            return Err(OwnerAnswer::Failed(Error::refused(
                "no approver could be reached (each must have messaged the bot once; without policy.approvers, the Agent User's sponsors are asked); nothing was done",
            )));
        }
        tracing::info!(request_id, action, "waiting for an owner's approval in Teams");
        match tokio::time::timeout(timeout + Duration::from_secs(1), rx.recv()).await {
            Ok(Some(v)) if v.behavior == Behavior::Allow => Ok(()),
            Ok(Some(_)) => Err(OwnerAnswer::Denied),
            _ => Err(OwnerAnswer::Failed(Error::refused(format!("no owner answered within {} s; nothing was done", timeout.as_secs())))),
        }
    }

    /// Open (or find) the Agent User's 1:1 chat with `person` and send `body` there; audited.
    pub async fn graph_message_person(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        actor: &AgentActor,
        person: &Person,
        body: MessageBody,
    ) -> Result<GraphSent> {
        self.approve_people(caller, bot, actor, "message someone new", std::slice::from_ref(&person.user)).await?;
        let target = format!("person:{}", person.user);
        self.audit_agent(caller, actor, "graph_send", &target, "attempt", String::new()).await?;
        let chat = match actor.graph.create_chat(&NewChat::OneOnOne(person.member())).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.audit_agent(caller, actor, "graph_send", &target, "failed", e.to_string()).await;
                return Err(graph_error(format_args!("the Agent User could not open a chat with {}", person.user), &e));
            }
        };
        self.graph_send_body(caller, actor, &chat.id, body).await
    }

    /// Send `body` into a Graph chat as the Agent User; audited before and after.
    pub async fn graph_send_body(&self, caller: Caller<'_>, actor: &AgentActor, chat_id: &str, body: MessageBody) -> Result<GraphSent> {
        let target = format!("chat:{chat_id}");
        self.audit_agent(caller, actor, "graph_send", &target, "attempt", String::new()).await?;
        match actor.graph.send_chat_message(chat_id, &body).await {
            Ok(m) => {
                self.audit_agent(caller, actor, "graph_send", &target, "delivered", format!("message {}", m.id)).await?;
                Ok(GraphSent { identity: actor.identity(), chat_id: chat_id.to_owned(), message_id: m.id })
            }
            Err(e) => {
                let _ = self.audit_agent(caller, actor, "graph_send", &target, "failed", e.to_string()).await;
                Err(graph_error("Graph refused the message", &e))
            }
        }
    }

    /// React to a chat message as the Agent User (Graph `setReaction`/`unsetReaction`); audited before and
    /// after. `reaction` is a Teams reaction id (`like`, `1f440_eyes`…), sent as Graph takes it
    /// ([`graph_reaction_type`]).
    pub async fn graph_react(
        &self,
        caller: Caller<'_>,
        actor: &AgentActor,
        chat_id: &str,
        message_id: &str,
        reaction: &str,
        remove: bool,
    ) -> Result<GraphSent> {
        let target = format!("chat:{chat_id}");
        let action = if remove { "graph_unreact" } else { "graph_react" };
        let detail = format!("message {message_id}, reaction {reaction}");
        self.audit_agent(caller, actor, action, &target, "attempt", detail.clone()).await?;
        match actor.graph.set_chat_message_reaction(chat_id, message_id, &graph_reaction_type(reaction), remove).await {
            Ok(()) => {
                self.audit_agent(caller, actor, action, &target, "delivered", detail).await?;
                Ok(GraphSent { identity: actor.identity(), chat_id: chat_id.to_owned(), message_id: message_id.to_owned() })
            }
            Err(e) => {
                let _ = self.audit_agent(caller, actor, action, &target, "failed", e.to_string()).await;
                Err(graph_error("Graph refused the reaction", &e))
            }
        }
    }

    /// Look up a person in the directory as the Agent User.
    pub async fn graph_find_user(&self, scope: &Scope, bot: Option<&str>, user: &str) -> Result<User> {
        let (_, actor) = self.agent_user(scope, bot)?;
        if user.trim().is_empty() {
            return Err(Error::invalid("user is empty: pass an object id or a UPN"));
        }
        actor.graph.get_user(user.trim()).await.map_err(|e| graph_error("lookup failed", &e))
    }

    /// The Agent User's chats, most recent first, with its identity.
    pub async fn graph_list_chats(&self, scope: &Scope, bot: Option<&str>, limit: usize) -> Result<(crate::store::Identity, Vec<Chat>)> {
        let (_, actor) = self.agent_user(scope, bot)?;
        let chats = actor.graph.list_chats(limit).await.map_err(|e| graph_error("listing chats failed", &e))?;
        Ok((actor.identity(), chats))
    }

    /// Recent messages of one of the Agent User's chats, newest first, with its identity.
    pub async fn graph_read_chat(
        &self,
        scope: &Scope,
        bot: Option<&str>,
        chat_id: &str,
        limit: usize,
    ) -> Result<(crate::store::Identity, Vec<ChatMessage>)> {
        let (_, actor) = self.agent_user(scope, bot)?;
        let messages = actor.graph.list_chat_messages(chat_id, limit).await.map_err(|e| graph_error("reading the chat failed", &e))?;
        Ok((actor.identity(), messages))
    }

    /// Create a chat as the Agent User (after the owner's approval for people not allowed yet), then
    /// send its first message if one was asked for.
    pub async fn graph_create_chat(&self, caller: Caller<'_>, bot: Option<&str>, req: CreateChat) -> Result<ChatCreated> {
        let (bot, actor) = self.agent_user(caller.scope, bot)?;
        if req.members.is_empty() || req.members.iter().any(|m| m.user.trim().is_empty()) {
            return Err(Error::invalid("members is empty (or has an empty user): name one person for a 1:1 chat, several for a group"));
        }
        let people: Vec<String> = req.members.iter().map(|m| m.user.trim().to_owned()).collect();
        self.approve_people(caller, &bot, &actor, "create a chat", &people).await?;
        let new = match req.members.as_slice() {
            [one] => NewChat::OneOnOne(one.member()),
            _ => NewChat::Group { topic: req.topic.clone(), members: req.members.iter().map(Person::member).collect() },
        };
        let target = format!("people:{}", people.join(","));
        self.audit_agent(caller, &actor, "graph_create_chat", &target, "attempt", String::new()).await?;
        let chat = match actor.graph.create_chat(&new).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, "graph_create_chat", &target, "failed", e.to_string()).await;
                return Err(graph_error("creating the chat failed", &e));
            }
        };
        self.audit_agent(caller, &actor, "graph_create_chat", &format!("chat:{}", chat.id), "created", target).await?;
        match req.text.as_deref().filter(|t| !t.trim().is_empty()) {
            Some(text) => Ok(ChatCreated::Sent(self.graph_send_body(caller, &actor, &chat.id, MessageBody::from_text(text)).await?)),
            None => Ok(ChatCreated::Created { identity: actor.identity(), chat }),
        }
    }

    /// Send a message (mentions first, then text, then a card) into one of the Agent User's chats.
    pub async fn graph_send(&self, caller: Caller<'_>, bot: Option<&str>, req: GraphMessage) -> Result<GraphSent> {
        let (_, actor) = self.agent_user(caller.scope, bot)?;
        if req.text.trim().is_empty() && req.card.is_none() {
            return Err(Error::invalid("text is empty"));
        }
        let mut body = MessageBody::new();
        for (user_id, name) in &req.mentions {
            body = body.mention(user_id, name).text(" ");
        }
        body = body.text(&req.text);
        if let Some(card) = &req.card {
            crate::teams::validate_card(card).map_err(|e| Error::invalid(format!("card is not a valid Adaptive Card: {e}")))?;
            body = body.card(card);
        }
        self.graph_send_body(caller, &actor, &req.chat_id, body).await
    }

    /// Add a person to one of the Agent User's group chats (after the owner's approval unless allowed);
    /// returns the Agent User's identity and the new membership's id.
    pub async fn graph_add_member(
        &self,
        caller: Caller<'_>,
        bot: Option<&str>,
        chat_id: &str,
        member: &Person,
    ) -> Result<(crate::store::Identity, Option<String>)> {
        let (bot, actor) = self.agent_user(caller.scope, bot)?;
        if member.user.trim().is_empty() {
            return Err(Error::invalid("member.user is empty"));
        }
        self.approve_people(caller, &bot, &actor, "add a chat member", std::slice::from_ref(&member.user)).await?;
        let target = format!("chat:{chat_id} member:{}", member.user);
        self.audit_agent(caller, &actor, "graph_add_member", &target, "attempt", String::new()).await?;
        match actor.graph.add_chat_member(chat_id, &member.member()).await {
            Ok(m) => {
                self.audit_agent(caller, &actor, "graph_add_member", &target, "added", String::new()).await?;
                Ok((actor.identity(), m.map(|m| m.id)))
            }
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, "graph_add_member", &target, "failed", e.to_string()).await;
                Err(graph_error("adding the member failed", &e))
            }
        }
    }
}

/// A Teams reaction id as Graph's `reactionType`: `<hex code point>_<name>` (`1f440_eyes`, `2705_whiteheavycheckmark`,
/// `1f44b_wavinghand-tone2`) becomes its emoji (👀, ✅, 👋); anything else (`like`, `heart`…) is passed as is.
pub(crate) fn graph_reaction_type(reaction: &str) -> String {
    let Some((head, _)) = reaction.split_once('_') else { return reaction.to_owned() };
    if head.len() >= 4
        && head.chars().all(|c| c.is_ascii_hexdigit())
        && let Some(c) = u32::from_str_radix(head, 16).ok().and_then(char::from_u32)
    {
        return c.to_string();
    }
    reaction.to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn teams_reaction_ids_become_graph_reaction_types() {
        assert_eq!(super::graph_reaction_type("1f440_eyes"), "👀");
        assert_eq!(super::graph_reaction_type("2705_whiteheavycheckmark"), "✅");
        assert_eq!(super::graph_reaction_type("1f44b_wavinghand-tone2"), "👋");
        assert_eq!(super::graph_reaction_type("like"), "like");
        assert_eq!(super::graph_reaction_type("face"), "face", "a word of hex letters is not a code point");
        assert_eq!(super::graph_reaction_type("zz_custom"), "zz_custom");
    }
}
