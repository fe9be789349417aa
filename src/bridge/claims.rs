//! Several hosts on one bot: which session owns a conversation.
//!
//! A session claims conversations, a bot's conversations in a tenant, or all of a bot's, with a lease it
//! renews while it lives ([`crate::store::Store::claim_conversations`]; the claims are rows in the store,
//! so they hold across replicas). An inbox entry belongs to the holder of the most specific live claim
//! covering it: the conversation's, else its bot's in its tenant, else its bot's. Other sessions do not
//! get it (reads, waits and pushes pass it by) unless they ask for claimed entries; without any claim
//! every session sees everything, as before. A lapsed lease (its host went away without ending its
//! session) is nobody's: the entries go to everyone again, and another session may claim them.

use std::collections::HashMap;
use std::time::Duration;

use super::{Error, Hub, Result, Scope};
use crate::store::{Claim, ClaimHolder, ClaimOutcome, ClaimTarget, InboxItem, now_ms};

/// At most this many targets in one claim or release.
pub(crate) const MAX_CLAIM_TARGETS: usize = 100;

/// The live claims at one moment, indexed for "who owns this entry".
#[derive(Debug, Default, Clone)]
pub struct ClaimMap {
    conversations: HashMap<(String, String), Claim>,
    tenants: HashMap<(String, String), Claim>,
    bots: HashMap<String, Claim>,
}

impl ClaimMap {
    pub fn new(claims: Vec<Claim>) -> Self {
        let mut map = Self::default();
        for c in claims {
            match &c.target {
                ClaimTarget::Conversation { bot_app_id, conversation_id, .. } => {
                    map.conversations.insert((bot_app_id.clone(), conversation_id.clone()), c);
                }
                ClaimTarget::Tenant { bot_app_id, tenant_id } => {
                    map.tenants.insert((bot_app_id.clone(), tenant_id.clone()), c);
                }
                ClaimTarget::Bot { bot_app_id } => {
                    map.bots.insert(bot_app_id.clone(), c);
                }
            }
        }
        map
    }

    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty() && self.tenants.is_empty() && self.bots.is_empty()
    }

    /// The claim that owns a conversation: the most specific live one (conversation, then the bot's in the
    /// tenant, then the bot's).
    pub fn owner(&self, bot_app_id: &str, tenant_id: &str, conversation_id: &str) -> Option<&Claim> {
        if self.is_empty() {
            return None;
        }
        let bot = bot_app_id.to_ascii_lowercase();
        self.conversations
            .get(&(bot.clone(), conversation_id.to_owned()))
            .or_else(|| self.tenants.get(&(bot.clone(), tenant_id.to_ascii_lowercase())))
            .or_else(|| self.bots.get(&bot))
    }

    /// The claim of another session that keeps `item` from `session`, if there is one.
    pub fn held_from(&self, item: &InboxItem, session: &str) -> Option<&Claim> {
        self.owner(&item.bot_app_id, &item.tenant_id, &item.conversation_id).filter(|c| c.session != session)
    }

    /// The claims on what `scope` may see, in a stable order.
    pub fn within<'a>(&'a self, scope: &'a Scope) -> impl Iterator<Item = &'a Claim> + 'a {
        let mut all: Vec<&Claim> = self.conversations.values().chain(self.tenants.values()).chain(self.bots.values()).collect();
        all.sort_by_key(|c| c.target.key());
        // A whole bot's claim shows to the sessions of that bot: it covers their conversations too.
        all.into_iter().filter(move |c| match &c.target {
            ClaimTarget::Conversation { bot_app_id, tenant_id, .. } | ClaimTarget::Tenant { bot_app_id, tenant_id } => {
                scope.allows(bot_app_id, tenant_id)
            }
            ClaimTarget::Bot { bot_app_id } => scope.allows_bot(bot_app_id),
        })
    }
}

/// What a session asks to claim or release: conversations (by `chat_id`, of `bot` when several bots have
/// seen one), whole bots, whole tenants.
#[derive(Debug, Clone, Default)]
pub struct ClaimRequest {
    pub chat_ids: Vec<String>,
    pub bot: Option<String>,
    pub bots: Vec<String>,
    pub tenants: Vec<String>,
}

impl ClaimRequest {
    pub fn is_empty(&self) -> bool {
        self.chat_ids.is_empty() && self.bots.is_empty() && self.tenants.is_empty()
    }
}

/// Who holds a claim, in words for an error: the other host's client and token, and for how long.
pub(crate) fn describe_holder(c: &Claim, now_ms: i64) -> String {
    let secs = ((c.until_ms - now_ms).max(0) + 999) / 1000;
    format!(
        "{} is claimed by another session (client {}, token {}) for {secs} s more unless renewed",
        describe_target(&c.target),
        super::envelope::meta_value(&c.client),
        super::envelope::meta_value(&c.scope)
    )
}

/// A target in words.
pub(crate) fn describe_target(t: &ClaimTarget) -> String {
    match t {
        ClaimTarget::Conversation { conversation_id, .. } => format!("conversation {conversation_id}"),
        ClaimTarget::Tenant { bot_app_id, tenant_id } => format!("bot {bot_app_id} in tenant {tenant_id}"),
        ClaimTarget::Bot { bot_app_id } => format!("bot {bot_app_id}"),
    }
}

impl Hub {
    /// How long a claim lasts unless renewed (`mcp.claim_lease_secs`).
    pub fn claim_lease(&self) -> Duration {
        Duration::from_secs(self.cfg.mcp.claim_lease_secs.max(1))
    }

    /// The claims live now, cluster-wide.
    pub async fn claims(&self) -> Result<ClaimMap> {
        Ok(ClaimMap::new(self.store.live_claims(now_ms()).await?))
    }

    /// The targets a request names, within `scope`. A whole bot is claimed per tenant when the scope is
    /// limited to tenants (never beyond what the session may see); a tenant, for each bot in scope that
    /// serves it.
    pub async fn claim_targets(&self, scope: &Scope, req: &ClaimRequest) -> Result<Vec<ClaimTarget>> {
        if req.is_empty() {
            return Err(Error::invalid("name what to claim: chat_ids, bots or tenants"));
        }
        let mut out = Vec::new();
        for chat in &req.chat_ids {
            let (bot, r) = self.conversation_any(scope, chat, req.bot.as_deref()).await?;
            out.push(ClaimTarget::conversation(&bot.app_id, &r.tenant_id, &r.conversation_id));
        }
        for wanted in &req.bots {
            let Some(bot) = self.bots_in(scope, Some(wanted)).next() else {
                return Err(Error::not_found(format!("bot {wanted} is not configured or not in this session's scope")));
            };
            if scope.tenants().is_empty() {
                out.push(ClaimTarget::bot(&bot.app_id));
                continue;
            }
            let before = out.len();
            for t in scope.tenants() {
                if bot.allowed_tenants.iter().any(|a| a.matches(t)) {
                    out.push(ClaimTarget::tenant(&bot.app_id, t));
                }
            }
            if out.len() == before {
                return Err(Error::not_found(format!("bot {wanted} serves none of this session's tenants")));
            }
        }
        for tenant in &req.tenants {
            let serving: Vec<ClaimTarget> = self
                .bots_in(scope, None)
                .filter(|b| scope.allows_tenant(tenant) && b.allowed_tenants.iter().any(|a| a.matches(tenant)))
                .map(|b| ClaimTarget::tenant(&b.app_id, tenant))
                .collect();
            if serving.is_empty() {
                return Err(Error::not_found(format!("no bot in this session's scope serves tenant {tenant}")));
            }
            out.extend(serving);
        }
        out.sort();
        out.dedup();
        if out.len() > MAX_CLAIM_TARGETS {
            return Err(Error::invalid(format!("at most {MAX_CLAIM_TARGETS} claims at a time")));
        }
        Ok(out)
    }

    /// Claim what `req` names for `holder`, all or nothing; a target another session holds is refused
    /// with who holds it and for how long.
    pub async fn claim(&self, scope: &Scope, holder: &ClaimHolder, req: &ClaimRequest) -> Result<Vec<Claim>> {
        let targets = self.claim_targets(scope, req).await?;
        let now = now_ms();
        let ttl = i64::try_from(self.claim_lease().as_millis()).unwrap_or(i64::MAX);
        match self.store.claim_conversations(&targets, holder, now, ttl).await? {
            ClaimOutcome::Taken(claims) => {
                tracing::info!(scope = %scope.name, claims = claims.len(), "conversations claimed");
                Ok(claims)
            }
            ClaimOutcome::Held(held) => {
                let why: Vec<String> = held.iter().map(|c| describe_holder(c, now)).collect();
                Err(Error::refused(format!(
                    "nothing was claimed: {}; ask that host to release it, or claim it once its lease lapsed",
                    why.join("; ")
                )))
            }
        }
    }

    /// Release what `req` names (or every claim of the session, `None`); only the session's own.
    pub async fn release(&self, scope: &Scope, session: &str, req: Option<&ClaimRequest>) -> Result<u64> {
        let targets = match req {
            Some(r) => Some(self.claim_targets(scope, r).await?),
            None => None,
        };
        Ok(self.store.release_claims(session, targets.as_deref()).await?)
    }
}

/// Whether `session` may act in a conversation, given the live `claims`: yes when nobody else claimed
/// it, or when the session was shown an entry from it (it answers what it was given); otherwise
/// refused, naming the holder.
pub(crate) fn may_act_in(claims: &ClaimMap, session: &str, bot: &str, tenant: &str, conversation: &str, shown: bool) -> Result<()> {
    match claims.owner(bot, tenant, conversation).filter(|c| c.session != session) {
        Some(c) if !shown => Err(Error::refused(format!(
            "nothing was sent: {}. A session acts in a conversation another one claimed only to answer what it was shown \
             from there (read_messages with include_claimed: true shows it)",
            describe_holder(c, now_ms()),
        ))),
        _ => Ok(()),
    }
}
