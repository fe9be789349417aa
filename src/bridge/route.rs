//! Where a request goes: which bot, which conversation, which tenant. Every decision is made within the
//! caller's [`Scope`] and on the stored conversation references.
//!
//! This is the crate's one bot resolver: the MCP tools, `agentgate send`, `members`, `teams-app` and
//! `token` choose a bot here ([`bots_in`], [`one_bot`], [`Hub::conversation`], [`Hub::person_target`]), and
//! its errors say how to choose in the caller's [`Dialect`].

use super::{Dialect, Error, Hub, Result, Scope};
use crate::config::BotConfig;
use crate::ids::TenantId;
use crate::store::{ConversationRef, now_ms};

/// Whether a conversation reference is usable by the bot, and what to do when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The bot can write there through the Connector.
    Bot,
    /// The bot was removed or blocked there; a group chat (`19:…`) is also a Graph chat, so the bot's Agent
    /// User (in `fallback` mode) may answer through Graph instead.
    AgentUser,
    /// Nobody can write there: the message says why.
    Nobody(String),
}

/// To whom a proactive 1:1 message goes: the bot that sends it and the person's tenant.
#[derive(Debug, Clone)]
pub struct PersonTarget<'a> {
    pub bot: &'a BotConfig,
    pub tenant: String,
}

/// How a proactive 1:1 message reaches the person.
#[derive(Debug, Clone)]
pub enum Personal {
    /// The bot's existing 1:1 chat with them: a plain send.
    Chat(ConversationRef),
    /// A new 1:1 chat, created on the Connector at this service URL (`conversation_id` is `user:<id>`).
    Create(ConversationRef),
    /// The bot knows no service URL for the tenant (nobody there has messaged it, and the cloud has no
    /// default): why.
    Unknown(String),
}

/// Whether a conversation lives in Microsoft Graph (the Agent User's own chat, reached through Graph
/// change notifications): answers go out through Graph as the Agent User.
pub(crate) fn lives_in_graph(r: &ConversationRef) -> bool {
    r.channel_id == super::graph_inbound::GRAPH_CHANNEL
}

/// The configured bots `scope` allows, or only the one `wanted` names (an app id, any case), with their
/// index in `bots` (for errors that name `bots[i]`).
pub(crate) fn bots_in<'a, 's>(
    bots: &'a [BotConfig],
    scope: &'s Scope,
    wanted: Option<&'s str>,
) -> impl Iterator<Item = (usize, &'a BotConfig)> + 's
where
    'a: 's,
{
    bots.iter().enumerate().filter(move |(_, b)| scope.allows_bot(&b.app_id) && wanted.is_none_or(|w| w.eq_ignore_ascii_case(&b.app_id)))
}

/// The one bot a request means: the one `wanted` names, or the only one in scope.
pub(crate) fn one_bot<'a>(bots: &'a [BotConfig], scope: &Scope, wanted: Option<&str>) -> Result<(usize, &'a BotConfig)> {
    let found: Vec<(usize, &BotConfig)> = bots_in(bots, scope, wanted).collect();
    match (found.as_slice(), wanted) {
        ([one], _) => Ok(*one),
        ([], Some(w)) => Err(unknown_bot(scope, w)),
        ([], None) => Err(Error::not_found(match scope.dialect {
            Dialect::Mcp => "no bot is in this session's scope",
            Dialect::Cli => {
                "no bot is configured: add a [[bots]] table (`agentgate init` writes a starter file), or pass the gateway's configuration with --config FILE"
            }
        })),
        (several, _) => Err(Error::invalid(match scope.dialect {
            Dialect::Mcp => "several bots are in this session's scope: say which with `bot` (status lists them)".to_owned(),
            Dialect::Cli => format!("{} bots are configured: pass --bot APP_ID to choose one", several.len()),
        })),
    }
}

/// The bot the caller named is not configured (or not in its scope).
fn unknown_bot(scope: &Scope, wanted: &str) -> Error {
    Error::not_found(match scope.dialect {
        Dialect::Mcp => format!("bot {wanted} is not configured or not in this session's scope"),
        Dialect::Cli => {
            format!("no configured bot has app id {wanted}: --bot takes a bots[].app_id from the configuration (see `agentgate check`)")
        }
    })
}

/// The refusal for a Teams tool used on one of the Agent User's mail threads.
fn mail_thread(chat_id: &str) -> String {
    format!(
        "conversation {chat_id} is a mail thread of the Agent User, not a Teams chat: answer with mail_reply (the event's message_id), \
         or mail_forward"
    )
}

/// The refusal for a conversation the bot was removed from (or blocked in).
fn removed(scope: &Scope, bot: &BotConfig, chat_id: &str) -> String {
    match scope.dialect {
        Dialect::Mcp => {
            format!("the bot was removed from (or blocked in) conversation {chat_id}; it can write there again once the app is added back")
        }
        Dialect::Cli => format!("bot {} was removed from conversation {chat_id}; reinstall the app there first", bot.app_id),
    }
}

impl Hub {
    /// The configured bots within `scope`, or only `wanted` (an app id, any case).
    pub fn bots_in<'a>(&'a self, scope: &'a Scope, wanted: Option<&'a str>) -> impl Iterator<Item = &'a BotConfig> + 'a {
        bots_in(&self.cfg.bots, scope, wanted).map(|(_, b)| b)
    }

    /// The configured bot with this app id (any case), whatever the scope.
    pub fn configured_bot(&self, app_id: &str) -> Option<&BotConfig> {
        let all = Scope::all("lookup");
        bots_in(&self.cfg.bots, &all, Some(app_id)).map(|(_, b)| b).next()
    }

    /// The one bot in scope that knows the conversation, with its reference, if the bot can write there.
    pub async fn conversation(&self, scope: &Scope, chat_id: &str, bot: Option<&str>) -> Result<(BotConfig, ConversationRef)> {
        let (b, r) = self.conversation_any(scope, chat_id, bot).await?;
        if super::mail::lives_in_mail(&r) {
            return Err(Error::refused(mail_thread(chat_id)));
        }
        if !r.usable {
            return Err(Error::refused(removed(scope, &b, chat_id)));
        }
        // Never a silent identity switch: the bot cannot act in the Agent User's own chats.
        if lives_in_graph(&r) {
            return Err(Error::refused(format!(
                "conversation {chat_id} is the Agent User's chat in Microsoft Graph, not the bot's: only reply, send_message and send_card \
                 answer there (through Graph, as the Agent User)"
            )));
        }
        Ok((b, r))
    }

    /// The one bot in scope that knows the conversation, usable or not.
    pub async fn conversation_any(&self, scope: &Scope, chat_id: &str, bot: Option<&str>) -> Result<(BotConfig, ConversationRef)> {
        if chat_id.trim().is_empty() {
            return Err(Error::invalid(match scope.dialect {
                Dialect::Mcp => "chat_id is empty: pass the chat_id of an event or of list_conversations",
                Dialect::Cli => "--conversation is empty: pass the id of a conversation the bot was messaged or installed in",
            }));
        }
        if let Some(b) = bot
            && self.bots_in(scope, Some(b)).next().is_none()
        {
            return Err(unknown_bot(scope, b));
        }
        let mut found = Vec::new();
        for b in self.bots_in(scope, bot) {
            match self.store.conversation_ref(&b.app_id, chat_id).await {
                Ok(Some(r)) if scope.allows_tenant(&r.tenant_id) => found.push((b.clone(), r)),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match (found.len(), scope.dialect, bot) {
            (1, _, _) => Ok(found.remove(0)),
            (0, Dialect::Mcp, _) => Err(Error::not_found(format!(
                "unknown chat_id {chat_id}: no bot in this session's scope has seen it (a bot can only write where it was messaged or installed; list_conversations shows where)"
            ))),
            (0, Dialect::Cli, Some(b)) => Err(Error::not_found(format!(
                "bot {b} has never seen conversation {chat_id}: it can only write where it was messaged or installed"
            ))),
            (0, Dialect::Cli, None) => Err(Error::not_found(format!(
                "no configured bot has seen conversation {chat_id}: a bot can only write where it was messaged or installed"
            ))),
            (_, Dialect::Mcp, _) => Err(Error::invalid(format!("several bots have seen {chat_id}: say which with `bot`"))),
            (_, Dialect::Cli, _) => {
                Err(Error::invalid(format!("several bots have seen conversation {chat_id}: say which with --bot APP_ID")))
            }
        }
    }

    /// The one bot in scope that knows the channel of `chat_id` (a channel or one of its threads), with a
    /// reference whose conversation is the channel thread rooted at `root` (`19:…;messageid=<root>`), so
    /// that what is sent there lands in that thread (a late answer next to its question). The reference is
    /// the one of `chat_id`, else of the thread itself, else of the channel. Threads exist in channels only.
    pub async fn thread_conversation(
        &self,
        scope: &Scope,
        chat_id: &str,
        bot: Option<&str>,
        root: &str,
    ) -> Result<(BotConfig, ConversationRef)> {
        let thread = crate::teams::reply_in_thread(chat_id, root.trim()).map_err(|e| {
            Error::invalid(format!("thread {root:?}: {e}; pass the message_id of the thread's first post (the root message)"))
        })?;
        let channel = crate::teams::thread_root(chat_id);
        let (b, mut r) = match self.conversation_any(scope, chat_id, bot).await {
            Ok(found) => found,
            Err(Error::NotFound(first)) => {
                let mut found = None;
                for other in [thread.as_str(), channel] {
                    match self.conversation_any(scope, other, bot).await {
                        Ok(f) => {
                            found = Some(f);
                            break;
                        }
                        Err(Error::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                found.ok_or(Error::NotFound(first))?
            }
            Err(e) => return Err(e),
        };
        if r.conversation_type.as_deref() != Some("channel") || lives_in_graph(&r) {
            let kind = match r.conversation_type.as_deref() {
                _ if lives_in_graph(&r) => "chat of the Agent User in Microsoft Graph",
                Some("personal") => "1:1 chat",
                Some("groupChat") => "group chat",
                _ => "conversation of unknown type",
            };
            return Err(Error::invalid(format!(
                "thread: {chat_id} is a {kind}, and threads exist in Teams channels only; leave thread out (reply_to answers a message there)"
            )));
        }
        r.conversation_id = thread.into();
        Ok((b, r))
    }

    /// Who can write text into a conversation the bot knows: the bot, its Agent User through Graph
    /// (only in group chats, only in `fallback` mode, only without mentions), or nobody.
    pub fn reach(&self, bot: &BotConfig, r: &ConversationRef, with_mentions: bool) -> Reach {
        let key = bot.app_id.to_ascii_lowercase();
        if super::mail::lives_in_mail(r) {
            return Reach::Nobody(mail_thread(r.conversation_id.as_str()));
        }
        // The Agent User's own chat (it came in through Graph): answered through Graph as the Agent User,
        // whatever the mode, never by the bot.
        if lives_in_graph(r) {
            return if self.agents.contains_key(&key) {
                Reach::AgentUser
            } else {
                Reach::Nobody(format!(
                    "conversation {} is the Agent User's chat in Microsoft Graph, and bot {} has no Agent User configured to answer there",
                    r.conversation_id, bot.app_id
                ))
            };
        }
        if r.usable {
            return Reach::Bot;
        }
        let falls_back = self.agents.get(&key).is_some_and(|a| a.falls_back());
        // Group chats only: a channel id is not a Graph chat.
        let graph_chat = r.conversation_id.starts_with("19:") && r.conversation_type.as_deref() == Some("groupChat");
        if falls_back && graph_chat && !with_mentions {
            return Reach::AgentUser;
        }
        Reach::Nobody(format!(
            "the bot was removed from (or blocked in) conversation {}; it can write there again once the app is added back{}",
            r.conversation_id,
            if self.agents.contains_key(&key) { "" } else { " (no Agent User is configured to answer instead)" }
        ))
    }

    /// The bot and tenant of a proactive 1:1 message to the person with AAD object id `user_id`: the bot
    /// named, or the one in scope serving the tenant, or the one already in a 1:1 chat with them.
    pub async fn person_target<'a>(
        &'a self,
        scope: &'a Scope,
        user_id: &str,
        bot: Option<&'a str>,
        tenant: Option<&str>,
    ) -> Result<PersonTarget<'a>> {
        let cli = scope.dialect == Dialect::Cli;
        let mut bots: Vec<&BotConfig> = self.bots_in(scope, bot).collect();
        if let (true, Some(b), []) = (cli, bot, bots.as_slice()) {
            return Err(unknown_bot(scope, b));
        }
        if let Some(t) = tenant {
            bots.retain(|b| b.allowed_tenants.iter().any(|s| s.matches(t)));
        }
        if bots.len() > 1 {
            let mut chatting = Vec::new();
            for b in &bots {
                if let Ok(Some(r)) = self.store.personal_conversation(&b.app_id, user_id).await
                    && scope.allows_tenant(&r.tenant_id)
                {
                    chatting.push(*b);
                }
            }
            if chatting.len() == 1 {
                bots = chatting;
            }
        }
        let bot = match (bots.as_slice(), cli, tenant, bot) {
            ([one], _, _, _) => *one,
            ([], false, _, _) => {
                return Err(Error::not_found("no bot in this session's scope serves that (check `bot` and `tenant`; status lists them)"));
            }
            ([], true, Some(t), Some(b)) => {
                return Err(Error::not_found(format!(
                    "tenant {t} is not in bot {b}'s allowed_tenants: add it there first, or choose another bot with --bot APP_ID"
                )));
            }
            ([], true, Some(t), None) => return Err(Error::not_found(format!("tenant {t} is not in any bot's allowed_tenants"))),
            ([], true, None, _) => return Err(one_bot(&self.cfg.bots, scope, bot).err().unwrap_or_else(|| Error::not_found("no bot"))),
            (_, false, _, _) => return Err(Error::invalid("several bots could send this: say which with `bot` (status lists them)")),
            (_, true, Some(t), _) => return Err(Error::invalid(format!("several bots serve tenant {t}: say which with --bot APP_ID"))),
            (several, true, None, _) => {
                return Err(Error::invalid(format!("{} bots are configured: pass --bot APP_ID to choose one", several.len())));
            }
        };
        let serving: Vec<&str> = bot.allowed_tenants.iter().map(TenantId::as_str).filter(|t| scope.allows_tenant(t)).collect();
        let tenant = match (tenant, serving.as_slice()) {
            (Some(t), _) if serving.iter().any(|s| s.eq_ignore_ascii_case(t)) => t.to_owned(),
            (Some(t), _) => {
                return Err(Error::not_found(format!("tenant {t} is not served by bot {} within this session's scope", bot.app_id)));
            }
            (None, [one]) => (*one).to_owned(),
            (None, _) => {
                return Err(Error::invalid(match scope.dialect {
                    Dialect::Mcp => "several tenants are in scope: say which with `tenant`".to_owned(),
                    Dialect::Cli => format!("bot {} serves several tenants: say which with --tenant ID", bot.app_id),
                }));
            }
        };
        Ok(PersonTarget { bot, tenant })
    }

    /// How a proactive 1:1 message from `target.bot` reaches the person `user_id`: their existing 1:1 chat
    /// with the bot in the tenant, or a new one through the tenant's known service URL (or the cloud's
    /// default), or nothing known.
    pub async fn personal(&self, target: &PersonTarget<'_>, user_id: &str) -> Result<Personal> {
        let (bot, tenant) = (target.bot, target.tenant.as_str());
        if let Some(r) = self.store.personal_conversation(&bot.app_id, user_id).await?.filter(|r| r.tenant_id.eq_ignore_ascii_case(tenant))
        {
            return Ok(Personal::Chat(r));
        }
        let service_url = match self.store.tenant_service_url(&bot.app_id, tenant).await? {
            Some(u) => u,
            None => match crate::connector::send::default_proactive_service_url(bot.cloud) {
                Some(u) => u.to_owned(),
                None => {
                    return Ok(Personal::Unknown(format!(
                        "no known service URL for tenant {tenant} in cloud {} (nobody there has messaged the bot)",
                        bot.cloud
                    )));
                }
            },
        };
        Ok(Personal::Create(ConversationRef {
            bot_app_id: bot.app_id.clone(),
            conversation_id: format!("user:{user_id}").into(),
            tenant_id: tenant.to_owned().into(),
            service_url,
            channel_id: "msteams".into(),
            conversation_type: Some("personal".into()),
            user_id: None,
            user_aad_object_id: Some(user_id.to_owned().into()),
            bot_id: None,
            usable: true,
            updated_at_ms: now_ms(),
            agentic: None,
            authenticated: true,
        }))
    }
}
