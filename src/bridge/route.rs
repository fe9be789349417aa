//! Where a request goes: which bot, which conversation, which tenant. Every decision is made within the
//! caller's [`Scope`] and on the stored conversation references.

use super::{Error, Hub, Result, Scope};
use crate::config::BotConfig;
use crate::store::ConversationRef;

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

impl Hub {
    /// The configured bots within `scope`, or only `wanted` (an app id, any case).
    pub fn bots_in<'a>(&'a self, scope: &'a Scope, wanted: Option<&'a str>) -> impl Iterator<Item = &'a BotConfig> + 'a {
        self.cfg.bots.iter().filter(move |b| scope.allows_bot(&b.app_id) && wanted.is_none_or(|w| w.eq_ignore_ascii_case(&b.app_id)))
    }

    /// The one bot in scope that knows the conversation, with its reference, if the bot can write there.
    pub async fn conversation(&self, scope: &Scope, chat_id: &str, bot: Option<&str>) -> Result<(BotConfig, ConversationRef)> {
        let (b, r) = self.conversation_any(scope, chat_id, bot).await?;
        if !r.usable {
            return Err(Error::refused(format!(
                "the bot was removed from (or blocked in) conversation {chat_id}; it can write there again once the app is added back"
            )));
        }
        Ok((b, r))
    }

    /// The one bot in scope that knows the conversation, usable or not.
    pub async fn conversation_any(&self, scope: &Scope, chat_id: &str, bot: Option<&str>) -> Result<(BotConfig, ConversationRef)> {
        if chat_id.trim().is_empty() {
            return Err(Error::invalid("chat_id is empty: pass the chat_id of an event or of list_conversations"));
        }
        if let Some(b) = bot
            && self.bots_in(scope, Some(b)).next().is_none()
        {
            return Err(Error::not_found(format!("bot {b} is not configured or not in this session's scope")));
        }
        let mut found = Vec::new();
        for b in self.bots_in(scope, bot) {
            match self.store.conversation_ref(&b.app_id, chat_id).await {
                Ok(Some(r)) if scope.allows_tenant(&r.tenant_id) => found.push((b.clone(), r)),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::not_found(format!(
                "unknown chat_id {chat_id}: no bot in this session's scope has seen it (a bot can only write where it was messaged or installed; list_conversations shows where)"
            ))),
            _ => Err(Error::invalid(format!("several bots have seen {chat_id}: say which with `bot`"))),
        }
    }

    /// Who can write text into a conversation the bot knows: the bot, its Agent User through Graph
    /// (only in group chats, only in `fallback` mode, only without mentions), or nobody.
    pub fn reach(&self, bot: &BotConfig, r: &ConversationRef, with_mentions: bool) -> Reach {
        if r.usable {
            return Reach::Bot;
        }
        let key = bot.app_id.to_ascii_lowercase();
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
        let mut bots: Vec<&BotConfig> = self.bots_in(scope, bot).collect();
        if let Some(t) = tenant {
            bots.retain(|b| b.allowed_tenants.iter().any(|s| s.eq_ignore_ascii_case(t)));
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
        let bot = match bots.as_slice() {
            [one] => *one,
            [] => return Err(Error::not_found("no bot in this session's scope serves that (check `bot` and `tenant`; status lists them)")),
            _ => return Err(Error::invalid("several bots could send this: say which with `bot` (status lists them)")),
        };
        let serving: Vec<&String> = bot.allowed_tenants.iter().filter(|t| scope.allows_tenant(t)).collect();
        let tenant = match (tenant, serving.as_slice()) {
            (Some(t), _) if serving.iter().any(|s| s.eq_ignore_ascii_case(t)) => t.to_owned(),
            (Some(t), _) => {
                return Err(Error::not_found(format!("tenant {t} is not served by bot {} within this session's scope", bot.app_id)));
            }
            (None, [one]) => (*one).clone(),
            (None, _) => return Err(Error::invalid("several tenants are in scope: say which with `tenant`")),
        };
        Ok(PersonTarget { bot, tenant })
    }
}
