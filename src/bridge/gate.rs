//! The MCP side of intake: before an activity is committed, decide whether a host is to see it (the
//! bot's [policy](super::policy)) or whether it answers an approval request; after the commit, wake the
//! sessions or settle the request.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::approval::{self, Approvals, Behavior, Decision};
use super::policy::{BotPolicy, Verdict as PolicyVerdict};
use crate::activity::Activity;
use crate::activity::InvokeResponse;
use crate::store::{AuditEvent, InboxState, Store, now_ms};

/// What intake does with an activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// For the hosts.
    Deliver,
    /// Kept from the hosts by policy (reason for the log).
    Filter(&'static str),
    /// An answer to an approval request; a card answer names the message it was clicked on (`replyToId`).
    Answer { request_id: String, behavior: Behavior, sender: String, by_card: bool, reply_to: Option<String> },
}

impl Classified {
    pub fn inbox_state(&self) -> InboxState {
        match self {
            Self::Deliver => InboxState::Pending,
            Self::Filter(_) => InboxState::Filtered,
            Self::Answer { .. } => InboxState::Consumed,
        }
    }
}

/// Per-bot policies, the open approval requests and the sessions' wake-up signal.
#[derive(Debug)]
pub struct InboundGate {
    policies: HashMap<String, BotPolicy>,
    pub approvals: Arc<Approvals>,
    inbox: watch::Sender<i64>,
    /// The messages this process's sessions pushed to a host (see [`super::amend`]).
    pub(crate) delivered: Arc<super::amend::Delivered>,
}

impl InboundGate {
    /// `policies` by app id.
    pub fn new(policies: impl IntoIterator<Item = (String, BotPolicy)>, approvals: Arc<Approvals>) -> Self {
        let policies = policies.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        Self { policies, approvals, inbox: watch::channel(0).0, delivered: Arc::default() }
    }

    /// Wake the sessions for an entry committed outside intake (the outcome of a file upload).
    pub(crate) fn wake(&self, inbox_id: i64) {
        let newest = inbox_id.max(*self.inbox.borrow());
        self.inbox.send_replace(newest);
    }

    /// A receiver of the newest deliverable inbox id.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inbox.subscribe()
    }

    /// Also wake the sessions for entries committed elsewhere (other replicas, announced by the store's
    /// [`Store::subscribe_inbox`]). Sessions read the inbox after each wake-up, so an extra one is harmless.
    /// Ends when `announced` closes.
    pub fn follow(self: &Arc<Self>, mut announced: watch::Receiver<i64>) -> tokio::task::JoinHandle<()> {
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            while announced.changed().await.is_ok() {
                let id = *announced.borrow_and_update();
                let newest = id.max(*gate.inbox.borrow());
                gate.inbox.send_replace(newest);
            }
        })
    }

    /// Decide before the commit. `authenticated` is false for anonymous (`serve --dev`) activities: they
    /// never answer an approval request, whoever they claim to come from.
    pub fn classify(&self, bot_app_id: &str, activity: &Activity, authenticated: bool) -> Classified {
        let sender = activity.from.as_ref().and_then(|f| f.aad_object_id.clone()).unwrap_or_default();
        if !sender.is_empty()
            && let Some(answer) = self.answer(bot_app_id, activity, &sender)
        {
            if !authenticated {
                tracing::warn!(sender = %sender, "an unauthenticated (dev-mode) activity tried to answer an approval request; ignored");
                return Classified::Filter("unauthenticated_approval_answer");
            }
            return answer;
        }
        let default = BotPolicy::default();
        let policy = self.policies.get(&bot_app_id.to_ascii_lowercase()).unwrap_or(&default);
        match super::policy::evaluate(policy, bot_app_id, activity) {
            PolicyVerdict::Deliver => Classified::Deliver,
            PolicyVerdict::Drop(reason) => {
                tracing::info!(
                    sender = %sender,
                    reason = reason.label(),
                    hint = reason.hint(),
                    "message kept from the agent by the bot's policy"
                );
                Classified::Filter(reason.label())
            }
        }
    }

    /// Whether the bot's approvers are the Agent User's sponsors (no `policy.approvers`): then an answer
    /// counts only from the sender's own 1:1 chat (channel binding).
    fn sponsors_answer(&self, bot_app_id: &str) -> bool {
        self.policies.get(&bot_app_id.to_ascii_lowercase()).is_none_or(|p| p.approvers.is_empty())
    }

    fn answer(&self, bot_app_id: &str, activity: &Activity, sender: &str) -> Option<Classified> {
        // Channel binding for sponsors: the conversation must be a 1:1 chat, whose only other member is the
        // sender (an authenticated object id: the bot's token, or the message Graph returned); never a group
        // chat, whatever the message says or quotes.
        if self.sponsors_answer(bot_app_id) && !is_personal(activity) {
            return None;
        }
        if activity.kind() == crate::activity::Kind::Invoke && activity.name.as_deref() == Some("adaptiveCard/action") {
            let action = crate::teams::execute_action(activity).ok()?;
            let (request_id, behavior) = approval::parse_card_verdict(action.verb.as_deref()?, &action.data)?;
            let reply_to = activity.reply_to_id.clone().filter(|r| !r.is_empty());
            return Some(Classified::Answer { request_id, behavior, sender: sender.to_owned(), by_card: true, reply_to });
        }
        if activity.kind() == crate::activity::Kind::Message {
            // Answers are short, and only answer an open request; skip the work otherwise.
            if activity.text.as_deref()?.len() > 200 || self.approvals.none_open() {
                return None;
            }
            let plain = text_without_mention(activity, bot_app_id)?;
            // A typed answer counts only from an approver of an open request (anything else is chat).
            let (behavior, request_id) = approval::parse_text_verdict(&plain)?;
            if self.approvals.is_open_for(bot_app_id, &request_id, sender) {
                return Some(Classified::Answer { request_id, behavior, sender: sender.to_owned(), by_card: false, reply_to: None });
            }
        }
        None
    }

    /// After the commit: wake the sessions, or settle an answer. Returns the invoke response for a card
    /// answer.
    pub async fn committed(
        &self,
        store: &dyn Store,
        classified: &Classified,
        inbox_id: i64,
        bot_app_id: &str,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Option<InvokeResponse> {
        match classified {
            Classified::Deliver => {
                self.inbox.send_replace(inbox_id);
                None
            }
            Classified::Filter(_) => None,
            Classified::Answer { request_id, behavior, sender, by_card, reply_to } => {
                // With replicas a request asked on another one is read afresh (its cards may be a moment old).
                if self.approvals.is_shared() && !self.approvals.is_local(request_id) {
                    self.approvals.sync().await;
                }
                // A click counts only on a delivered approval card of this request, in this conversation.
                let decision = if *by_card
                    && self.approvals.is_open(bot_app_id, request_id)
                    && !self.on_approval_card(store, bot_app_id, request_id, conversation_id, reply_to.as_deref()).await
                {
                    Decision::NotTheCard
                } else {
                    self.approvals.decide_anywhere(bot_app_id, request_id, sender, *behavior).await
                };
                let verdict_word = if *behavior == Behavior::Allow { "Allowed" } else { "Denied" };
                let (outcome, text) = match &decision {
                    Decision::Decided { .. } => (behavior.as_str(), format!("{verdict_word} by you.")),
                    Decision::NotApprover { .. } => {
                        ("refused_not_approver", "Only an approver can answer this request; nothing was decided.".to_owned())
                    }
                    Decision::NotTheCard => {
                        ("refused_not_the_card", "This is not the approval card of this request; nothing was decided.".to_owned())
                    }
                    Decision::Unknown => {
                        ("unknown_request", "This request is no longer open (answered, expired, or never issued).".to_owned())
                    }
                };
                let event = AuditEvent::new(
                    now_ms(),
                    format!("teams:{sender}"),
                    crate::store::Identity::bot(bot_app_id),
                    "permission_answer",
                    crate::store::Target::conversation(tenant_id, conversation_id),
                    outcome,
                )
                .with_detail(format!("request {request_id}"));
                if let Err(e) = store.record_audit(event).await {
                    tracing::error!(error = %e, "could not audit a permission answer");
                }
                tracing::info!(request_id, outcome, "permission answer from Teams");
                let response = match decision {
                    Decision::Decided { tool_name, cards, .. } => {
                        let card = approval::settled_card(request_id, &tool_name, &text);
                        self.approvals.push_settled(request_id.clone(), tool_name, cards, format!("{verdict_word} in Teams."));
                        crate::teams::card_response(card).unwrap_or_else(|_| crate::teams::message_response(&text))
                    }
                    _ => crate::teams::message_response(&text),
                };
                by_card.then_some(response)
            }
        }
    }
}

/// Write a user's feedback to the audit log: who (AAD object id), on which message, 👍 or 👎, and the
/// comment (cut to 200 characters; the host gets it whole as a `feedback` event).
pub(crate) async fn audit_feedback(
    store: &dyn Store,
    bot_app_id: &str,
    tenant_id: &str,
    conversation_id: &str,
    activity: &Activity,
    feedback: &crate::teams::ai::Feedback,
) {
    let sender = activity.from.as_ref().and_then(|f| f.aad_object_id.as_deref()).unwrap_or("unknown");
    let message = activity.reply_to_id.as_deref().unwrap_or_default();
    let mut detail = format!("message {}", super::envelope::meta_value(message));
    if let Some(c) = &feedback.comment {
        let cut: String = super::envelope::meta_value(c).chars().take(200).collect();
        detail.push_str(&format!("; comment: {cut}"));
    }
    let event = AuditEvent::new(
        now_ms(),
        format!("teams:{sender}"),
        crate::store::Identity::bot(bot_app_id),
        "feedback",
        crate::store::Target::conversation(tenant_id, conversation_id),
        feedback.reaction.as_str(),
    )
    .with_detail(detail);
    if let Err(e) = store.record_audit(event).await {
        tracing::error!(error = %e, "could not audit a user's feedback");
    }
}

impl InboundGate {
    /// Whether `reply_to` is the message id of a delivered approval card of `request_id`, sent through
    /// `bot_app_id` to `conversation_id`.
    async fn on_approval_card(
        &self,
        store: &dyn Store,
        bot_app_id: &str,
        request_id: &str,
        conversation_id: &str,
        reply_to: Option<&str>,
    ) -> bool {
        let Some(reply_to) = reply_to else { return false };
        for card in self.approvals.cards_of(bot_app_id, request_id) {
            if card.conversation_id != conversation_id {
                continue;
            }
            match store.outbox(Some(card.outbox_id), 1).await {
                Ok(items) => {
                    let delivered = items.into_iter().find(|i| i.id == card.outbox_id).and_then(|i| i.result_id);
                    if delivered.is_some_and(|id| !id.is_empty() && id == reply_to) {
                        return true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the outbox failed; the card answer is not accepted"),
            }
        }
        false
    }
}

/// Whether the activity is in a 1:1 chat (`personal`).
fn is_personal(activity: &Activity) -> bool {
    activity.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()).is_some_and(|t| t.eq_ignore_ascii_case("personal"))
}

/// The text of a message without the bot's own mention ("@Bot yes abcde" in a group chat); `bot` is the
/// authenticated bot's app id.
fn text_without_mention(activity: &Activity, bot: &str) -> Option<String> {
    let text = activity.text.as_deref()?;
    if !text.contains("<at") {
        return Some(super::envelope::html_to_text(text));
    }
    let mut a = activity.clone();
    crate::teams::strip_bot_mention(&mut a, bot);
    Some(super::envelope::html_to_text(a.text.as_deref().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Ids announced by the store (other replicas) wake the sessions like a local commit; the signal never
    /// goes back to an older id.
    #[tokio::test]
    async fn announced_entries_wake_the_sessions() {
        let gate = Arc::new(InboundGate::new(Vec::new(), Arc::new(Approvals::default())));
        let mut sessions = gate.subscribe();
        let (announce, announced) = watch::channel(0);
        let follower = gate.follow(announced);
        announce.send_replace(7);
        tokio::time::timeout(Duration::from_secs(1), sessions.changed()).await.expect("woken").unwrap();
        assert_eq!(*sessions.borrow_and_update(), 7);
        gate.inbox.send_replace(9);
        sessions.borrow_and_update();
        announce.send_replace(8);
        tokio::time::timeout(Duration::from_secs(1), sessions.changed()).await.expect("woken again").unwrap();
        assert_eq!(*sessions.borrow_and_update(), 9, "an older announcement wakes, but does not move the id back");
        drop(announce);
        tokio::time::timeout(Duration::from_secs(1), follower).await.expect("ends with the announcements").unwrap();
    }
}
