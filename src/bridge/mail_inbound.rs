//! The Agent User's Inbox: new mail becomes `mail` inbox entries ([`super::mail`]), read with Graph's delta
//! query over the Inbox, whose state token is durable.
//!
//! * **Reading.** A round starts at the newest `receivedDateTime` committed (at first: when mail was first
//!   read; older mail is not read), with `changeType=created`; each page's entries commit in one transaction
//!   with the link to read next (`@odata.nextLink`, then the round's `@odata.deltaLink`). A restart goes on
//!   from the stored link: nothing is lost, nothing read twice; and an entry is keyed by its
//!   `internetMessageId` (deduplicated for at least 31 days), so a mail moved out of the Inbox and back, or
//!   listed again by a new round after Graph dropped the link (410), is not repeated.
//! * **When.** With a public https URL (`server.public_url`), a Graph subscription to the Inbox
//!   (`/users/{oid}/mailFolders('Inbox')/messages`, `created`, with a `lifecycleNotificationUrl` and a random
//!   `clientState`) wakes a read for each notification, and a read every 15 minutes is the safety net
//!   (notifications are not guaranteed). Without one, the Inbox is read every `mail_poll_secs` (mail is not
//!   under Teams' once-a-day polling rule). A 429 is waited out (`Retry-After`) by the Graph client, and a
//!   longer one moves the next read to after it. Every start reads once.
//! * **Invitations.** With `agent_user.calendar` on as well, a meeting request
//!   (`#microsoft.graph.eventMessageRequest`) from an allowed sender is read again with its event
//!   (`$expand=microsoft.graph.eventMessage/event`, times in UTC) and becomes a `meeting_invitation` entry
//!   ([`super::calendar::meeting_invitation`]) under the same key, policy and envelope rules. The delta read
//!   does not expand it: a derived type's navigation in the delta's options would be folded into every link,
//!   and Graph documents no such expansion there. Cancellations and answers stay `mail`.
//! * **Who.** The sender policy ([`super::mail::MailPolicy`]) decides: an allowed sender's mail is pending
//!   for the hosts; anyone else's is kept from them (`filtered`) and an audit event `mail_dropped` says so.
//!   The Agent User's own mail (sent to itself) and drafts are skipped.
//! * **Replicas.** One replica at a time reads a bot's Inbox (the lease `mail-read:<bot>`) and sees to its
//!   subscription (`mail-subscription:<bot>`); a notification reaching another replica makes it read once
//!   the lease is free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::agent::AgentActor;
use super::calendar::{MEETING_INVITATION, meeting_invitation};
use super::gate::{Classified, InboundGate};
use super::graph_inbound::{Accepted, SubscriptionSpec, parse_rfc3339_ms, rfc3339_ms, subscribe};
use super::mail::{MAIL_CHANNEL, Mailbox, mail_activity, protection, thread_id};
use crate::activity::Activity;
use crate::graph::mail::{Attachment, MailMessage};
use crate::graph::{GraphError, GraphErrorKind};
use crate::ids::AuthKind;
use crate::store::{AuditEvent, CommitOutcome, ConversationRef, GraphCommit, GraphSubscription, InboundRecord, MailCursor, Store, now_ms};

/// How often the worker looks at its subscriptions when nothing wakes it.
const TICK: Duration = Duration::from_secs(30);
/// With change notifications, how long without one before the Inbox is read anyway.
const SAFETY_NET: Duration = Duration::from_secs(15 * 60);
/// After a failed read, the longest wait before the next one.
const FAILED_RETRY: Duration = Duration::from_secs(30);
/// While another replica reads (or sees to the subscription), how soon to look again.
const BUSY_RETRY: Duration = Duration::from_secs(2);
/// Pages one read takes at most (the rest waits for the next read, a second later).
const MAX_PAGES: usize = 20;
/// Mail entries are deduplicated for at least this long (a new round may list a mail again).
const MAIL_DEDUPE: Duration = Duration::from_secs(31 * 24 * 3600);
/// Graph keeps a mail subscription at most 10,080 minutes (7 days).
const MAX_SUBSCRIPTION_MINUTES: u64 = 10_080;

/// Whether a subscription's resource is the Agent User's Inbox (not its chats).
pub(crate) fn is_mail_resource(resource: &str) -> bool {
    resource.to_ascii_lowercase().contains("/mailfolders(")
}

/// What a bot's worker has to do.
#[derive(Debug)]
struct Due {
    /// Read the Inbox no later than this.
    read_at: Instant,
    /// Renew the subscription now (`reauthorizationRequired`).
    renew: bool,
    /// Subscriptions Graph removed (`subscriptionRemoved`): forget them and make a new one.
    removed: Vec<String>,
}

/// One bot's Agent User, as the mail worker uses it.
struct MailBot {
    app_id: String,
    actor: Arc<AgentActor>,
    lifetime: Duration,
    poll: Duration,
    /// The calendar is on too: meeting requests become `meeting_invitation` events.
    invitations: bool,
    /// The Agent User's object id (`/me` when only a UPN is configured).
    oid: tokio::sync::OnceCell<String>,
    due: Mutex<Due>,
}

/// The mail inbound of every bot with `agent_user.mail` on.
pub(crate) struct MailInbound {
    store: Arc<dyn Store>,
    gate: Arc<InboundGate>,
    bots: Vec<MailBot>,
    /// The notification and lifecycle URLs, when Graph can reach the gateway; `None`: a bounded poll.
    push: Option<(String, String)>,
    dedupe_ttl: Duration,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for MailInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailInbound")
            .field("bots", &self.bots.iter().map(|b| b.app_id.as_str()).collect::<Vec<_>>())
            .field("notifications", &self.push.is_some())
            .finish_non_exhaustive()
    }
}

impl MailInbound {
    /// The mail inbound of the bots whose `agent_user.mail` is on (`None` when no bot has it).
    pub(crate) fn new(
        cfg: &crate::config::Config,
        agents: &HashMap<String, Arc<AgentActor>>,
        store: Arc<dyn Store>,
        gate: Arc<InboundGate>,
    ) -> Option<Arc<Self>> {
        let now = Instant::now();
        let bots: Vec<MailBot> = cfg
            .bots
            .iter()
            .filter_map(|b| {
                let au = b.agent_user.as_ref().filter(|a| a.mail)?;
                let actor = agents.get(&b.app_id.to_ascii_lowercase()).filter(|a| a.mail.is_some())?;
                Some(MailBot {
                    app_id: b.app_id.to_string(),
                    actor: Arc::clone(actor),
                    lifetime: Duration::from_secs(u64::from(au.subscription_minutes).min(MAX_SUBSCRIPTION_MINUTES) * 60),
                    poll: Duration::from_secs(au.mail_poll_secs),
                    invitations: au.calendar,
                    oid: tokio::sync::OnceCell::new(),
                    due: Mutex::new(Due { read_at: now, renew: false, removed: Vec::new() }),
                })
            })
            .collect();
        if bots.is_empty() {
            return None;
        }
        let push = match cfg.inbound_url_problem() {
            None => {
                cfg.public_endpoint(super::graph_inbound::NOTIFICATIONS_PATH).zip(cfg.public_endpoint(super::graph_inbound::LIFECYCLE_PATH))
            }
            Some(why) => {
                tracing::info!(reason = %why, "the Agent User's Inbox is read by a bounded poll (no change notifications without a public https URL)");
                None
            }
        };
        Some(Arc::new(Self {
            store,
            gate,
            bots,
            push,
            dedupe_ttl: Duration::from_secs(cfg.store.dedupe_ttl_secs).max(MAIL_DEDUPE),
            wake: tokio::sync::Notify::new(),
        }))
    }

    fn bot(&self, app_id: &str) -> Option<&MailBot> {
        self.bots.iter().find(|b| b.app_id.eq_ignore_ascii_case(app_id))
    }

    /// Notifications of the mail subscriptions (checked by the intake): a created mail or a missed event makes
    /// a read due at once, `reauthorizationRequired` a renewal, `subscriptionRemoved` a new subscription and a
    /// read. Nothing is stored: the read's delta token is the durable state.
    pub(crate) fn notified(&self, accepted: &[Accepted]) {
        let mut any = false;
        for a in accepted.iter().filter(|a| a.mail) {
            let Some(bot) = self.bot(&a.bot_app_id) else { continue };
            let mut due = bot.due.lock().unwrap_or_else(PoisonError::into_inner);
            match a.event.as_str() {
                "reauthorizationRequired" => due.renew = true,
                "subscriptionRemoved" => {
                    due.removed.push(a.subscription_id.clone());
                    due.read_at = Instant::now();
                }
                _ => due.read_at = Instant::now(),
            }
            any = true;
        }
        if any {
            self.wake.notify_one();
        }
    }

    /// Run the worker: subscriptions seen to (with notifications), every Inbox read once, then reads when due.
    pub(crate) fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut renewed_at_start = false;
            loop {
                for bot in &this.bots {
                    if this.push.is_some() {
                        // A stored subscription may have lapsed at Graph while the gateway was down: renewing
                        // it once at start finds out (a 404 makes a new one and a read).
                        this.see_to_subscription(bot, !renewed_at_start).await;
                    }
                    let read_at = bot.due.lock().unwrap_or_else(PoisonError::into_inner).read_at;
                    if read_at <= Instant::now() {
                        let next = this.read(bot).await;
                        let mut due = bot.due.lock().unwrap_or_else(PoisonError::into_inner);
                        // A notification during the read asked for another one.
                        if due.read_at <= read_at {
                            due.read_at = Instant::now() + next;
                        }
                    }
                }
                renewed_at_start = true;
                let soonest = this.bots.iter().map(|b| b.due.lock().unwrap_or_else(PoisonError::into_inner).read_at).min();
                let wait = soonest.map_or(TICK, |at| at.saturating_duration_since(Instant::now()).min(TICK));
                tokio::select! {
                    () = this.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    async fn lease(&self, name: &str) -> bool {
        super::graph_inbound::take_lease(self.store.as_ref(), name).await
    }

    async fn release(&self, name: &str) {
        super::graph_inbound::release_lease(self.store.as_ref(), name).await;
    }

    /// The Agent User's object id.
    async fn oid(&self, bot: &MailBot) -> Result<String, String> {
        bot.oid
            .get_or_try_init(|| async {
                match bot.actor.tokens.user() {
                    crate::entra::AgentUser::ObjectId(id) if !id.is_empty() => Ok(id.clone()),
                    _ => bot.actor.graph.me().await.map(|u| u.id).map_err(|e| e.to_string()),
                }
            })
            .await
            .cloned()
    }

    // ------------------------------------------------------------ reading

    /// Read the Inbox from the stored link (under the bot's read lease) and commit what came, page by page;
    /// how long until the next read.
    async fn read(&self, bot: &MailBot) -> Duration {
        let normal = if self.push.is_some() { SAFETY_NET } else { bot.poll };
        let lease = format!("mail-read:{}", bot.app_id.to_ascii_lowercase());
        if !self.lease(&lease).await {
            tracing::debug!(bot = %bot.app_id, "another replica is reading the Agent User's Inbox");
            return BUSY_RETRY;
        }
        let result = self.read_pages(bot, &lease).await;
        self.release(&lease).await;
        match result {
            Ok((read, true)) => {
                tracing::info!(bot = %bot.app_id, messages = read, "the Agent User's Inbox was read");
                normal
            }
            Ok((read, false)) => {
                tracing::info!(bot = %bot.app_id, messages = read, "the Agent User's Inbox was read in part; the rest follows");
                Duration::from_secs(1)
            }
            Err(Failed::Throttled(wait)) => {
                tracing::warn!(bot = %bot.app_id, wait_secs = wait.as_secs(), "Graph throttles the Inbox reads; the next read waits");
                wait.max(Duration::from_secs(1))
            }
            Err(Failed::Other(e)) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "reading the Agent User's Inbox failed; tried again later");
                normal.min(FAILED_RETRY)
            }
        }
    }

    /// The pages of one read: how many mails, and whether the round ended (a delta link).
    async fn read_pages(&self, bot: &MailBot, lease: &str) -> Result<(usize, bool), Failed> {
        let oid = self.oid(bot).await.map_err(Failed::Other)?;
        let policy = bot.actor.mail.as_ref().ok_or_else(|| Failed::Other("mail is off".into()))?;
        let own = policy.own_addresses(&bot.actor).await;
        let mut cursor = match self.store.mail_cursor(&bot.app_id).await.map_err(|e| Failed::Other(e.to_string()))? {
            Some(c) => c,
            None => {
                // The first read: mail from now on (older mail in the Inbox is not the host's business).
                let first =
                    MailCursor { bot_app_id: bot.app_id.clone().into(), link: String::new(), since_ms: now_ms(), updated_at_ms: now_ms() };
                self.store
                    .commit_graph(GraphCommit { mail: Some(first.clone()), ..GraphCommit::default() })
                    .await
                    .map_err(|e| Failed::Other(e.to_string()))?;
                first
            }
        };
        let mut read = 0;
        let mut restarted = false;
        for _ in 0..MAX_PAGES {
            if !self.lease(lease).await {
                return Err(Failed::Other("the read lease was lost to another replica".into()));
            }
            let page = if cursor.link.is_empty() {
                // Graph's times have whole seconds: from the start of the second, so a mail of that second is kept.
                let since = rfc3339_ms(cursor.since_ms - cursor.since_ms.rem_euclid(1000));
                bot.actor.graph.mail_delta_start(&since).await
            } else {
                bot.actor.graph.mail_delta_next(&cursor.link).await
            };
            let page = match page {
                Ok(p) => p,
                // Graph dropped the round's state (410): a new round from the newest mail committed; what it lists
                // again is a duplicate.
                Err(e) if e.status() == Some(410) && !restarted => {
                    tracing::warn!(bot = %bot.app_id, "Graph no longer knows the Inbox's delta link; a new round starts at the newest mail read");
                    restarted = true;
                    cursor.link.clear();
                    continue;
                }
                Err(e) => return Err(Failed::from(e)),
            };
            let newest = page.messages.iter().filter_map(|m| m.received_date_time.as_deref().and_then(parse_rfc3339_ms)).max();
            let mut records = Vec::new();
            for m in &page.messages {
                if let Some(r) = self.record(bot, &oid, &own, m).await? {
                    records.push(r);
                }
            }
            read += records.len();
            let done = page.delta_link.is_some();
            cursor = MailCursor {
                bot_app_id: bot.app_id.clone().into(),
                link: page.next_link.or(page.delta_link).unwrap_or_default(),
                since_ms: newest.map_or(cursor.since_ms, |n| n.max(cursor.since_ms)),
                updated_at_ms: now_ms(),
            };
            self.commit(bot, records, cursor.clone()).await.map_err(Failed::Other)?;
            if done {
                return Ok((read, true));
            }
        }
        Ok((read, false))
    }

    /// The inbox record of one mail (none for a removal, a draft, or the Agent User's own mail), with what the
    /// sender policy made of it.
    async fn record(&self, bot: &MailBot, oid: &str, own: &[String], m: &MailMessage) -> Result<Option<(InboundRecord, Dropped)>, Failed> {
        if m.removed.is_some() || m.id.trim().is_empty() || m.is_draft == Some(true) {
            return Ok(None);
        }
        let from = m.from.as_ref().or(m.sender.as_ref()).and_then(crate::graph::Recipient::address).unwrap_or_default();
        if !from.is_empty() && own.contains(&from) {
            tracing::debug!(bot = %bot.app_id, "the Agent User's own mail is not for the host");
            return Ok(None);
        }
        let attachments: Vec<Attachment> = if m.has_attachments == Some(true) {
            match bot.actor.graph.mail_attachments(&m.id).await {
                Ok(a) => a,
                // Gone meanwhile (moved, deleted): its headers still tell the host it came.
                Err(e) if e.kind() == GraphErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Failed::from(e)),
            }
        } else {
            Vec::new()
        };
        let key = m.internet_message_id.as_deref().map(str::trim).filter(|k| !k.is_empty()).unwrap_or(m.id.as_str()).to_owned();
        let tenant = bot.actor.tokens.tenant().to_owned();
        let activity = mail_activity(m, &attachments, &Mailbox { agent_user: oid, tenant: &tenant }, &key);
        let policy = bot.actor.mail.as_ref().ok_or_else(|| Failed::Other("mail is off".into()))?;
        let allowed = policy.sender_allowed(&bot.actor, &from).await;
        if !allowed {
            tracing::info!(bot = %bot.app_id, "a mail from a sender outside the mail policy was kept from the host");
        }
        // With the calendar on, an allowed sender's meeting request is a typed invitation (read again with its
        // event, for the id `calendar_respond` takes); cancellations and answers stay mail.
        let invitation = if allowed && bot.invitations && m.is_meeting_request() && protection(&attachments).is_none() {
            match bot.actor.graph.event_message(&m.id).await {
                Ok(em) => meeting_invitation(&em),
                // Gone meanwhile: it arrives as the mail it was.
                Err(e) if e.kind() == GraphErrorKind::NotFound => None,
                Err(e) => return Err(Failed::from(e)),
            }
        } else {
            None
        };
        let (activity, activity_type) = match invitation {
            Some(inv) => (inv.activity(activity), MEETING_INVITATION),
            None => (activity, "mail"),
        };
        let thread = thread_id(m.conversation_id.as_deref());
        let now = now_ms();
        let record = InboundRecord {
            bot_app_id: bot.app_id.clone().into(),
            tenant_id: tenant.clone().into(),
            conversation_id: thread.clone().into(),
            activity_id: key.clone(),
            activity_type: activity_type.to_owned(),
            auth: AuthKind::Graph,
            body: activity.to_string(),
            received_at_ms: now,
            dedupe_expires_at_ms: now.saturating_add(i64::try_from(self.dedupe_ttl.as_millis()).unwrap_or(i64::MAX)),
            reference: ConversationRef {
                bot_app_id: bot.app_id.clone().into(),
                conversation_id: thread.into(),
                tenant_id: tenant.into(),
                service_url: bot.actor.graph.endpoint().to_string(),
                channel_id: MAIL_CHANNEL.to_owned(),
                conversation_type: Some("mail".to_owned()),
                user_id: None,
                user_aad_object_id: None,
                bot_id: Some(oid.to_owned()),
                usable: true,
                updated_at_ms: now,
                agentic: None,
                authenticated: true,
            },
            state: if allowed { crate::store::InboxState::Pending } else { crate::store::InboxState::Filtered },
        };
        // The record must read back as an event: it is what the hosts get.
        if serde_json::from_value::<Activity>(activity).is_err() {
            tracing::warn!(bot = %bot.app_id, "a mail could not be converted; skipped");
            return Ok(None);
        }
        Ok(Some((record, (!allowed).then(|| Kept { message_id: m.id.clone(), from }))))
    }

    /// Commit a page's records with the cursor, then wake the sessions and audit what was dropped.
    async fn commit(&self, bot: &MailBot, records: Vec<(InboundRecord, Dropped)>, cursor: MailCursor) -> Result<(), String> {
        let (records, dropped): (Vec<InboundRecord>, Vec<Dropped>) = records.into_iter().unzip();
        let keys: Vec<(String, String)> = records.iter().map(|r| (r.tenant_id.to_string(), r.conversation_id.to_string())).collect();
        let outcomes = self
            .store
            .commit_graph(GraphCommit { records, mail: Some(cursor), ..GraphCommit::default() })
            .await
            .map_err(|e| e.to_string())?;
        for ((outcome, dropped), (tenant, conversation)) in outcomes.into_iter().zip(dropped).zip(keys) {
            let CommitOutcome::Accepted { inbox_id } = outcome else { continue };
            match dropped {
                None => {
                    self.gate.committed(self.store.as_ref(), &Classified::Deliver, inbox_id, &bot.app_id, &tenant, &conversation).await;
                }
                Some(d) => {
                    let event = AuditEvent::new(
                        now_ms(),
                        "agentgate",
                        bot.actor.identity(),
                        "mail_dropped",
                        crate::store::Target::graph(&tenant, &bot.app_id, format!("mail:{}", d.message_id)),
                        "dropped",
                    )
                    .with_detail(format!("from {}: not an allowed sender (agent_user.mail_senders_allow); kept from the host", d.from));
                    if let Err(e) = self.store.record_audit(event).await {
                        tracing::error!(bot = %bot.app_id, error = %e, "could not audit a dropped mail (it stays kept from the host)");
                    }
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ the subscription

    /// Make sure the bot has a live subscription to its Inbox: create one when there is none or it lapsed (then
    /// read), renew it when half its life is gone, when Graph asks (`reauthorizationRequired`) or at start
    /// (`force`). One replica does it (the holder of the bot's subscription lease).
    async fn see_to_subscription(&self, bot: &MailBot, force: bool) {
        let (renew, removed) = {
            let mut due = bot.due.lock().unwrap_or_else(PoisonError::into_inner);
            (std::mem::take(&mut due.renew) || force, std::mem::take(&mut due.removed))
        };
        let subs = match self.subscriptions(bot).await {
            Some(s) => s,
            None => return self.later(bot, renew, removed),
        };
        let half = i64::try_from(bot.lifetime.as_millis() / 2).unwrap_or(i64::MAX);
        let now = now_ms();
        let healthy = subs.iter().any(|s| s.expires_at_ms - now > half && !removed.contains(&s.subscription_id));
        if healthy && !renew {
            return;
        }
        let lease = format!("mail-subscription:{}", bot.app_id.to_ascii_lowercase());
        if !self.lease(&lease).await {
            return self.later(bot, renew, removed);
        }
        for id in &removed {
            let _ = self.store.delete_graph_subscription(id).await;
        }
        let subs = self.subscriptions(bot).await.unwrap_or_default();
        let now = now_ms();
        match subs.iter().find(|s| s.expires_at_ms > now) {
            Some(live) if renew || live.expires_at_ms - now <= half => self.renew(bot, &live.subscription_id).await,
            Some(_) => {}
            None => {
                for s in &subs {
                    let _ = self.store.delete_graph_subscription(&s.subscription_id).await;
                }
                if self.create(bot).await && (!subs.is_empty() || !removed.is_empty()) {
                    tracing::info!(bot = %bot.app_id, "the Inbox subscription had lapsed or was removed: reading what came meanwhile");
                    bot.due.lock().unwrap_or_else(PoisonError::into_inner).read_at = Instant::now();
                }
            }
        }
        self.release(&lease).await;
    }

    /// Keep what could not be done now for the next tick.
    fn later(&self, bot: &MailBot, renew: bool, removed: Vec<String>) {
        let mut due = bot.due.lock().unwrap_or_else(PoisonError::into_inner);
        due.renew |= renew;
        due.removed.extend(removed);
    }

    /// The bot's mail subscriptions as stored.
    async fn subscriptions(&self, bot: &MailBot) -> Option<Vec<GraphSubscription>> {
        match self.store.graph_subscriptions(Some(&bot.app_id)).await {
            Ok(s) => Some(s.into_iter().filter(|s| is_mail_resource(&s.resource)).collect()),
            Err(e) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "cannot read the Graph subscriptions");
                None
            }
        }
    }

    async fn create(&self, bot: &MailBot) -> bool {
        let Some((notification_url, lifecycle_url)) = &self.push else { return false };
        let oid = match self.oid(bot).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "cannot resolve the Agent User's object id; no Inbox subscription");
                return false;
            }
        };
        let expires = now_ms() + i64::try_from(bot.lifetime.as_millis()).unwrap_or(i64::MAX / 2);
        let spec = SubscriptionSpec {
            resource: format!("/users/{oid}/mailFolders('Inbox')/messages"),
            change_type: "created",
            notification_url,
            lifecycle_url,
            expires_ms: expires,
            what: "the Agent User's Inbox",
        };
        subscribe(&bot.actor, self.store.as_ref(), &bot.app_id, spec).await.is_some()
    }

    /// Renew (and so reauthorize) the subscription with a fresh token; a 404 (gone at Graph) makes a new one
    /// and a read.
    async fn renew(&self, bot: &MailBot, subscription_id: &str) {
        let expires = now_ms() + i64::try_from(bot.lifetime.as_millis()).unwrap_or(i64::MAX / 2);
        match bot.actor.graph.renew_subscription(subscription_id, &rfc3339_ms(expires)).await {
            Ok(renewed) => {
                let expires = renewed.get("expirationDateTime").and_then(Value::as_str).and_then(parse_rfc3339_ms).unwrap_or(expires);
                if let Some(mut sub) = self.subscriptions(bot).await.into_iter().flatten().find(|s| s.subscription_id == subscription_id) {
                    sub.expires_at_ms = expires;
                    sub.updated_at_ms = now_ms();
                    if let Err(e) = self.store.put_graph_subscription(sub).await {
                        tracing::warn!(bot = %bot.app_id, error = %e, "a renewed Inbox subscription could not be stored");
                    }
                }
                tracing::info!(bot = %bot.app_id, subscription = subscription_id, "Graph subscription to the Inbox renewed");
            }
            Err(e) if e.status() == Some(404) => {
                tracing::warn!(bot = %bot.app_id, "the Inbox subscription is gone; creating a new one");
                let _ = self.store.delete_graph_subscription(subscription_id).await;
                if self.create(bot).await {
                    bot.due.lock().unwrap_or_else(PoisonError::into_inner).read_at = Instant::now();
                }
            }
            Err(e) => {
                tracing::warn!(bot = %bot.app_id, error = %e, "cannot renew the Inbox subscription; tried again later");
                bot.due.lock().unwrap_or_else(PoisonError::into_inner).renew = true;
            }
        }
    }
}

/// A mail kept from the host by the sender policy: audited once committed.
struct Kept {
    message_id: String,
    from: String,
}

type Dropped = Option<Kept>;

/// Why a read stopped.
#[derive(Debug)]
enum Failed {
    /// Graph throttles for longer than the client waits: the next read waits this long.
    Throttled(Duration),
    Other(String),
}

impl From<GraphError> for Failed {
    fn from(e: GraphError) -> Self {
        match e {
            GraphError::Throttled { retry_after } => Self::Throttled(retry_after.unwrap_or(FAILED_RETRY)),
            e => Self::Other(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mail_subscriptions_are_told_from_chat_ones() {
        assert!(super::is_mail_resource("/users/d1/mailFolders('Inbox')/messages"));
        assert!(!super::is_mail_resource("/users/d1/chats/getAllMessages"));
        assert!(!super::is_mail_resource("/me/chats/getAllMessages"));
    }
}
