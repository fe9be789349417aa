//! Who may reach the agent: a per-bot policy, decided on the server, on AAD object ids (never on display
//! names, which anyone can set).
//!
//! Lifecycle activities (`installationUpdate`, `conversationUpdate`) always pass: they carry no sender
//! text and keep the agent's view of its conversations right. Everything else needs a sender with an
//! AAD object id, then:
//!
//! - personal chats follow [`BotPolicy::dm`] (and [`BotPolicy::dm_allow`]);
//! - group chats and channels follow [`BotPolicy::groups`]: in `mention` mode a message needs to mention
//!   the bot, while card clicks (`Action.Submit` values, invokes) and reactions, which answer the bot's own
//!   messages, do not; [`BotPolicy::group_allow`] limits the senders, and in channels
//!   [`BotPolicy::teams_allow`] / [`BotPolicy::channels_allow`] limit where.
//!
//! Ids compare case-insensitively (GUIDs arrive in either case). Anything not understood is dropped.

use super::events::{channel_id, team_id};
use crate::activity::{Activity, Kind};
pub(crate) use crate::config::policy::{BotPolicy, DmPolicy, GroupPolicy};
use crate::config::policy::{contains_id, contains_person};
use crate::teams::{card_submit, is_bot_mentioned};

/// What to do with an inbound activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Give it to the agent.
    Deliver,
    /// Keep it from the agent (it is still stored (state `filtered`) and logged by the caller).
    Drop(DropReason),
}

#[cfg(test)]
impl Verdict {
    pub(crate) fn is_deliver(&self) -> bool {
        matches!(self, Self::Deliver)
    }
}

/// Why an activity was kept from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// `from.aadObjectId` is missing or empty (bots, connectors, system senders).
    NoSender,
    /// `conversation.conversationType` is missing or not `personal`, `groupChat` or `channel`.
    UnknownConversationType,
    /// A personal chat while `dm = "disabled"`.
    DmDisabled,
    /// A personal chat from a sender not in `dm_allow`.
    DmNotAllowed,
    /// A group chat or channel while `groups = "disabled"`.
    GroupsDisabled,
    /// A channel of a team not in `teams_allow`.
    TeamNotAllowed,
    /// A channel not in `channels_allow`.
    ChannelNotAllowed,
    /// A group chat or channel sender not in `group_allow`.
    GroupSenderNotAllowed,
    /// A group chat or channel message that does not mention the bot, while `groups = "mention"`.
    NotMentioned,
}

impl DropReason {
    /// A short stable name for logs and metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::NoSender => "no_sender",
            Self::UnknownConversationType => "unknown_conversation_type",
            Self::DmDisabled => "dm_disabled",
            Self::DmNotAllowed => "dm_not_allowed",
            Self::GroupsDisabled => "groups_disabled",
            Self::TeamNotAllowed => "team_not_allowed",
            Self::ChannelNotAllowed => "channel_not_allowed",
            Self::GroupSenderNotAllowed => "group_sender_not_allowed",
            Self::NotMentioned => "not_mentioned",
        }
    }

    /// What would let such an activity through: the policy field to change, or why none does.
    pub(crate) fn hint(&self) -> &'static str {
        match self {
            Self::NoSender => {
                "the sender has no AAD object id (from.aadObjectId), so no policy field can admit it; only people are delivered"
            }
            Self::UnknownConversationType => {
                "conversation.conversationType is not personal, groupChat or channel; no policy field admits unknown conversations"
            }
            Self::DmDisabled => "set policy.dm = \"allowlist\" (with policy.dm_allow) or \"open\" to receive personal chats",
            Self::DmNotAllowed => "add the sender's AAD object id to policy.dm_allow, or set policy.dm = \"open\"",
            Self::GroupsDisabled => "set policy.groups = \"mention\" or \"all\" to receive group chats and channels",
            Self::TeamNotAllowed => "add the team id (channelData.team.id) to policy.teams_allow, or empty the list to allow any team",
            Self::ChannelNotAllowed => {
                "add the channel id (channelData.channel.id) to policy.channels_allow, or empty the list to allow any channel"
            }
            Self::GroupSenderNotAllowed => "add the sender's AAD object id to policy.group_allow, or empty the list to allow anyone there",
            Self::NotMentioned => "@mention the bot in the message, or set policy.groups = \"all\"",
        }
    }
}

/// Whether `activity` may reach the agent under `policy`.
/// `bot_id` is the bot the activity was authenticated for (its app id): the mention check asks whether
/// *that* bot is mentioned, never whoever the body's `recipient` names.
pub(crate) fn evaluate(policy: &BotPolicy, bot_id: &str, activity: &Activity) -> Verdict {
    use self::DropReason::*;
    if matches!(activity.kind(), Kind::InstallationUpdate | Kind::ConversationUpdate) {
        return Verdict::Deliver;
    }
    let Some(sender) = activity.from.as_ref().and_then(|f| f.aad_object_id.as_deref()).map(str::trim).filter(|s| !s.is_empty()) else {
        return Verdict::Drop(NoSender);
    };
    let conversation_type = activity.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()).unwrap_or_default();
    let in_channel = if conversation_type.eq_ignore_ascii_case("personal") {
        return match policy.dm {
            DmPolicy::Open => Verdict::Deliver,
            DmPolicy::Allowlist if contains_person(&policy.dm_allow, sender) => Verdict::Deliver,
            DmPolicy::Allowlist => Verdict::Drop(DmNotAllowed),
            DmPolicy::Disabled => Verdict::Drop(DmDisabled),
        };
    } else if conversation_type.eq_ignore_ascii_case("channel") {
        true
    } else if conversation_type.eq_ignore_ascii_case("groupChat") {
        false
    } else {
        return Verdict::Drop(UnknownConversationType);
    };

    if policy.groups == GroupPolicy::Disabled {
        return Verdict::Drop(GroupsDisabled);
    }
    if in_channel {
        if !policy.teams_allow.is_empty() && !team_id(activity).is_some_and(|t| contains_id(&policy.teams_allow, t)) {
            return Verdict::Drop(TeamNotAllowed);
        }
        if !policy.channels_allow.is_empty() && !channel_id(activity).is_some_and(|c| contains_id(&policy.channels_allow, c)) {
            return Verdict::Drop(ChannelNotAllowed);
        }
    }
    if !policy.group_allow.is_empty() && !contains_person(&policy.group_allow, sender) {
        return Verdict::Drop(GroupSenderNotAllowed);
    }
    if policy.groups == GroupPolicy::Mention
        && needs_mention(activity)
        && !is_bot_mentioned(activity, bot_id)
        && !agent_user_mentioned(activity)
    {
        return Verdict::Drop(NotMentioned);
    }
    Verdict::Deliver
}

/// Whether the policy would let this sender reach the agent with a message here (ignoring the mention
/// rule). Lifecycle events pass the policy regardless; this says whether their sender would have.
pub(crate) fn sender_allowed(policy: &BotPolicy, bot_id: &str, activity: &Activity) -> bool {
    let mut as_message = activity.clone();
    as_message.kind = "message".to_owned();
    matches!(evaluate(policy, bot_id, &as_message), Verdict::Deliver | Verdict::Drop(DropReason::NotMentioned))
}

/// A Graph chat message of the Agent User's (`channelId` `graph`, converted by the gateway itself): whether
/// it @mentions the Agent User, matched on its object id (the recipient's `aadObjectId`), never a name.
fn agent_user_mentioned(activity: &Activity) -> bool {
    if activity.channel_id.as_deref() != Some(super::graph_inbound::GRAPH_CHANNEL) {
        return false;
    }
    let Some(me) = activity.recipient.as_ref().and_then(|r| r.aad_object_id.as_deref()).filter(|s| !s.trim().is_empty()) else {
        return false;
    };
    is_bot_mentioned(activity, me)
}

/// Whether `mention` mode needs the bot to be mentioned for this activity: not for clicks on the bot's
/// cards (a message with a value and no text, or an invoke) nor for reactions (Teams sends the bot only
/// reactions to its own messages).
fn needs_mention(activity: &Activity) -> bool {
    match activity.kind() {
        Kind::Invoke => false,
        Kind::Message => {
            let has_text = activity.text.as_deref().is_some_and(|t| !t.trim().is_empty());
            has_text || card_submit(activity).is_none()
        }
        _ => activity.kind != "messageReaction",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::DropReason::*;
    use super::*;
    use crate::teams::testdata;

    const ALEX: &str = "00000000-0000-0000-0000-0000000000020";
    const ALICE: &str = "aaaaaaaa-0000-0000-0000-000000000001";

    fn raw(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn activity(v: Value) -> Activity {
        serde_json::from_value(v).unwrap()
    }

    /// A payload mutated by `f`.
    fn mutated(s: &str, f: impl FnOnce(&mut Value)) -> Activity {
        let mut v = raw(s);
        f(&mut v);
        activity(v)
    }

    fn policy(f: impl FnOnce(&mut BotPolicy)) -> BotPolicy {
        let mut p = BotPolicy::default();
        f(&mut p);
        p
    }

    fn no_mention(v: &mut Value) {
        v["entities"] = json!([{"type": "clientInfo"}]);
    }

    fn as_card_submit(v: &mut Value) {
        no_mention(v);
        v.as_object_mut().unwrap().remove("text");
        v["value"] = json!({"decision": "approve"});
    }

    fn group_chat(v: &mut Value) {
        v["conversation"]["conversationType"] = json!("groupChat");
        v["conversation"]["id"] = json!("19:group@thread.v2");
        v["channelData"].as_object_mut().unwrap().retain(|k, _| k == "tenant");
    }

    #[test]
    fn rules_both_ways() {
        let personal = || testdata::activity(testdata::MESSAGE_PERSONAL);
        let channel = || testdata::activity(testdata::CHANNEL_MENTION);
        let allow_alex = |p: &mut BotPolicy| p.dm_allow = vec![ALEX.to_uppercase().into()];
        let cases: Vec<(&str, BotPolicy, Activity, Verdict)> = vec![
            // Lifecycle passes whatever the policy and sender.
            (
                "install, closed policy",
                policy(|p| (p.dm, p.groups) = (DmPolicy::Disabled, GroupPolicy::Disabled)),
                testdata::activity(testdata::INSTALLATION_UPDATE),
                Verdict::Deliver,
            ),
            (
                "conversation update, no sender",
                policy(|p| p.dm = DmPolicy::Disabled),
                mutated(testdata::CONVERSATION_UPDATE, |v| {
                    v.as_object_mut().unwrap().remove("from");
                }),
                Verdict::Deliver,
            ),
            (
                "channel member added, team not allowed",
                policy(|p| p.teams_allow = vec!["other".into()]),
                mutated(testdata::CHANNEL_MENTION, |v| v["type"] = json!("conversationUpdate")),
                Verdict::Deliver,
            ),
            // Sender.
            (
                "dm open, no aad id",
                policy(|p| p.dm = DmPolicy::Open),
                mutated(testdata::MESSAGE_PERSONAL, |v| {
                    v["from"].as_object_mut().unwrap().remove("aadObjectId");
                }),
                Verdict::Drop(NoSender),
            ),
            (
                "dm open, empty aad id",
                policy(|p| p.dm = DmPolicy::Open),
                mutated(testdata::MESSAGE_PERSONAL, |v| v["from"]["aadObjectId"] = json!(" ")),
                Verdict::Drop(NoSender),
            ),
            (
                "dm open, no from",
                policy(|p| p.dm = DmPolicy::Open),
                mutated(testdata::MESSAGE_PERSONAL, |v| {
                    v.as_object_mut().unwrap().remove("from");
                }),
                Verdict::Drop(NoSender),
            ),
            (
                "groups all, no aad id",
                policy(|p| p.groups = GroupPolicy::All),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    v["from"].as_object_mut().unwrap().remove("aadObjectId");
                }),
                Verdict::Drop(NoSender),
            ),
            // Personal chats.
            ("dm allowlist default, empty list", BotPolicy::default(), personal(), Verdict::Drop(DmNotAllowed)),
            ("dm allowlist, listed (other case)", policy(allow_alex), personal(), Verdict::Deliver),
            ("dm allowlist, someone else listed", policy(|p| p.dm_allow = vec![ALICE.into()]), personal(), Verdict::Drop(DmNotAllowed)),
            ("dm open", policy(|p| p.dm = DmPolicy::Open), personal(), Verdict::Deliver),
            (
                "dm disabled, even if listed",
                policy(|p| {
                    allow_alex(p);
                    p.dm = DmPolicy::Disabled;
                }),
                personal(),
                Verdict::Drop(DmDisabled),
            ),
            ("dm card submit, listed", policy(allow_alex), testdata::activity(testdata::CARD_SUBMIT), Verdict::Deliver),
            ("dm card submit, not listed", BotPolicy::default(), testdata::activity(testdata::CARD_SUBMIT), Verdict::Drop(DmNotAllowed)),
            ("dm invoke, listed", policy(allow_alex), testdata::activity(testdata::INVOKE_ADAPTIVE_CARD_ACTION), Verdict::Deliver),
            (
                "dm invoke, not listed",
                BotPolicy::default(),
                testdata::activity(testdata::INVOKE_ADAPTIVE_CARD_ACTION),
                Verdict::Drop(DmNotAllowed),
            ),
            (
                "dm ignores group_allow",
                policy(|p| {
                    p.dm = DmPolicy::Open;
                    p.group_allow = vec![ALICE.into()];
                }),
                personal(),
                Verdict::Deliver,
            ),
            (
                "dm ignores groups disabled",
                policy(|p| {
                    allow_alex(p);
                    p.groups = GroupPolicy::Disabled;
                }),
                personal(),
                Verdict::Deliver,
            ),
            // Conversation type.
            (
                "no conversation type",
                policy(|p| p.dm = DmPolicy::Open),
                mutated(testdata::MESSAGE_PERSONAL, |v| {
                    v["conversation"].as_object_mut().unwrap().remove("conversationType");
                }),
                Verdict::Drop(UnknownConversationType),
            ),
            (
                "odd conversation type",
                policy(|p| p.groups = GroupPolicy::All),
                mutated(testdata::MESSAGE_PERSONAL, |v| v["conversation"]["conversationType"] = json!("meeting")),
                Verdict::Drop(UnknownConversationType),
            ),
            (
                "no conversation",
                policy(|p| p.dm = DmPolicy::Open),
                mutated(testdata::MESSAGE_PERSONAL, |v| {
                    v.as_object_mut().unwrap().remove("conversation");
                }),
                Verdict::Drop(UnknownConversationType),
            ),
            // Groups: mention mode.
            ("channel mention", BotPolicy::default(), channel(), Verdict::Deliver),
            ("channel mention, 28: bot id", BotPolicy::default(), testdata::activity(testdata::CHANNEL_MENTION_PREFIXED), Verdict::Deliver),
            ("channel, no mention", BotPolicy::default(), mutated(testdata::CHANNEL_MENTION, no_mention), Verdict::Drop(NotMentioned)),
            (
                "channel, someone else mentioned",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| v["entities"][0]["mentioned"]["id"] = json!("29:bob")),
                Verdict::Drop(NotMentioned),
            ),
            (
                "channel, no recipient",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    v.as_object_mut().unwrap().remove("recipient");
                }),
                Verdict::Drop(NotMentioned),
            ),
            (
                "channel, no mention, groups all",
                policy(|p| p.groups = GroupPolicy::All),
                mutated(testdata::CHANNEL_MENTION, no_mention),
                Verdict::Deliver,
            ),
            ("channel mention, groups disabled", policy(|p| p.groups = GroupPolicy::Disabled), channel(), Verdict::Drop(GroupsDisabled)),
            (
                "channel card submit needs no mention",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, as_card_submit),
                Verdict::Deliver,
            ),
            (
                "channel text plus value needs a mention",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    no_mention(v);
                    v["value"] = json!({"k": 1});
                }),
                Verdict::Drop(NotMentioned),
            ),
            (
                "channel empty message needs a mention",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    no_mention(v);
                    v.as_object_mut().unwrap().remove("text");
                }),
                Verdict::Drop(NotMentioned),
            ),
            (
                "channel invoke needs no mention",
                BotPolicy::default(),
                mutated(testdata::INVOKE_ADAPTIVE_CARD_ACTION, |v| v["conversation"]["conversationType"] = json!("channel")),
                Verdict::Deliver,
            ),
            (
                "channel reaction needs no mention",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    no_mention(v);
                    v["type"] = json!("messageReaction");
                }),
                Verdict::Deliver,
            ),
            (
                "channel edit needs a mention",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    no_mention(v);
                    v["type"] = json!("messageUpdate");
                }),
                Verdict::Drop(NotMentioned),
            ),
            (
                "channel edit with mention",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| v["type"] = json!("messageUpdate")),
                Verdict::Deliver,
            ),
            ("group chat mention", BotPolicy::default(), mutated(testdata::CHANNEL_MENTION, group_chat), Verdict::Deliver),
            (
                "group chat, no mention",
                BotPolicy::default(),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    group_chat(v);
                    no_mention(v);
                }),
                Verdict::Drop(NotMentioned),
            ),
            (
                "group chat, groups disabled",
                policy(|p| p.groups = GroupPolicy::Disabled),
                mutated(testdata::CHANNEL_MENTION, group_chat),
                Verdict::Drop(GroupsDisabled),
            ),
            // Teams and channels.
            ("team allowed (other case)", policy(|p| p.teams_allow = vec!["TEAM-ID".into()]), channel(), Verdict::Deliver),
            ("team not allowed", policy(|p| p.teams_allow = vec!["other-team".into()]), channel(), Verdict::Drop(TeamNotAllowed)),
            (
                "team missing while a list is set",
                policy(|p| p.teams_allow = vec!["team-id".into()]),
                mutated(testdata::CHANNEL_MENTION, |v| {
                    v["channelData"].as_object_mut().unwrap().remove("team");
                }),
                Verdict::Drop(TeamNotAllowed),
            ),
            ("channel allowed", policy(|p| p.channels_allow = vec!["team-id".into()]), channel(), Verdict::Deliver),
            (
                "channel not allowed",
                policy(|p| p.channels_allow = vec!["19:other@thread.tacv2".into()]),
                channel(),
                Verdict::Drop(ChannelNotAllowed),
            ),
            (
                "channel id from the thread root",
                policy(|p| p.channels_allow = vec!["19:team-general@thread.tacv2".into()]),
                mutated(testdata::CHANNEL_MENTION_PREFIXED, |v| {
                    v["channelData"].as_object_mut().unwrap().remove("channel");
                }),
                Verdict::Deliver,
            ),
            (
                "team list ignored in group chats",
                policy(|p| (p.teams_allow, p.channels_allow) = (vec!["x".into()], vec!["y".into()])),
                mutated(testdata::CHANNEL_MENTION, group_chat),
                Verdict::Deliver,
            ),
            (
                "card submit in a channel not allowed",
                policy(|p| p.channels_allow = vec!["y".into()]),
                mutated(testdata::CHANNEL_MENTION, as_card_submit),
                Verdict::Drop(ChannelNotAllowed),
            ),
            // Senders in groups.
            ("group sender allowed", policy(|p| p.group_allow = vec![ALEX.into()]), channel(), Verdict::Deliver),
            ("group sender not allowed", policy(|p| p.group_allow = vec![ALICE.into()]), channel(), Verdict::Drop(GroupSenderNotAllowed)),
            (
                "group sender not allowed, card click",
                policy(|p| p.group_allow = vec![ALICE.into()]),
                mutated(testdata::CHANNEL_MENTION, as_card_submit),
                Verdict::Drop(GroupSenderNotAllowed),
            ),
            (
                "group sender allowed, group chat",
                policy(|p| p.group_allow = vec![ALEX.to_uppercase().into()]),
                mutated(testdata::CHANNEL_MENTION, group_chat),
                Verdict::Deliver,
            ),
            (
                "group sender by name never counts",
                policy(|p| p.group_allow = vec!["Alex Wilber".into()]),
                channel(),
                Verdict::Drop(GroupSenderNotAllowed),
            ),
            (
                "group sender by 29: id never counts",
                policy(|p| p.group_allow = vec!["user-id-0".into()]),
                channel(),
                Verdict::Drop(GroupSenderNotAllowed),
            ),
        ];
        for (name, p, a, want) in cases {
            let bot = a.recipient.as_ref().map(|r| r.id.clone()).unwrap_or_default();
            assert_eq!(evaluate(&p, &bot, &a), want, "{name}");
            // The body's recipient is never trusted for the mention: for another bot, a mention of this
            // recipient does not count.
            let personal = a.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()) == Some("personal");
            let lifecycle = personal || matches!(a.kind(), Kind::InstallationUpdate | Kind::ConversationUpdate);
            if want == Verdict::Deliver && p.groups == GroupPolicy::Mention && needs_mention(&a) && !lifecycle {
                assert_eq!(evaluate(&p, "28:another-bot", &a), Verdict::Drop(NotMentioned), "{name}: another bot");
            }
        }
    }

    #[test]
    fn drop_reasons_explain_themselves() {
        let all = [
            NoSender,
            UnknownConversationType,
            DmDisabled,
            DmNotAllowed,
            GroupsDisabled,
            TeamNotAllowed,
            ChannelNotAllowed,
            GroupSenderNotAllowed,
            NotMentioned,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(DropReason::label).collect();
        assert_eq!(labels.len(), all.len(), "labels are distinct");
        for (reason, field) in [
            (DmDisabled, "policy.dm "),
            (DmNotAllowed, "policy.dm_allow"),
            (GroupsDisabled, "policy.groups"),
            (TeamNotAllowed, "policy.teams_allow"),
            (ChannelNotAllowed, "policy.channels_allow"),
            (GroupSenderNotAllowed, "policy.group_allow"),
            (NotMentioned, "policy.groups"),
        ] {
            assert!(reason.hint().contains(field), "{reason:?}: {}", reason.hint());
        }
        assert!(NoSender.hint().contains("no policy field"));
        assert!(Verdict::Deliver.is_deliver() && !Verdict::Drop(NoSender).is_deliver());
    }

    #[test]
    fn deserialises_with_defaults_and_rejects_unknown_fields() {
        let p: BotPolicy = toml::from_str("").unwrap();
        assert_eq!(p, BotPolicy::default());
        assert_eq!((p.dm, p.groups, p.approval_timeout_secs), (DmPolicy::Allowlist, GroupPolicy::Mention, 600));
        assert!(p.targeted_approvals, "targeted approvals are on by default");
        assert!(!toml::from_str::<BotPolicy>("targeted_approvals = false").unwrap().targeted_approvals);
        let p: BotPolicy = toml::from_str(
            "dm = \"open\"\ngroups = \"all\"\ngroup_allow = [\"g\"]\nteams_allow = [\"t\"]\nchannels_allow = [\"c\"]\napprovers = [\"a\"]\napproval_timeout_secs = 30\n",
        )
        .unwrap();
        assert_eq!((p.dm, p.groups, p.approval_timeout_secs), (DmPolicy::Open, GroupPolicy::All, 30));
        assert_eq!(p.approvers, ["a"]);
        assert!(toml::from_str::<BotPolicy>("dm = \"disabled\"\ngroups = \"disabled\"").is_ok());
        assert!(toml::from_str::<BotPolicy>("dm_allowed = [\"x\"]").is_err(), "typo in a field name");
        assert!(toml::from_str::<BotPolicy>("dm = \"everyone\"").is_err());
        assert!(toml::from_str::<BotPolicy>("groups = \"Mention\"").is_err());
        let back: BotPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(BotPolicy::default().validate(), Ok(()));
        let ok = policy(|p| {
            p.dm_allow = vec![ALEX.into()];
            p.teams_allow = vec!["19:team@thread.tacv2".into()];
            p.approval_timeout_secs = 10;
        });
        assert_eq!(ok.validate(), Ok(()));
        let field = |p: BotPolicy| p.validate().unwrap_err().0;
        assert_eq!(field(policy(|p| p.dm_allow = vec![ALEX.into(), ALICE.into(), String::new().into()])), "policy.dm_allow[2]");
        assert_eq!(field(policy(|p| p.group_allow = vec!["a b".into()])), "policy.group_allow[0]");
        assert_eq!(field(policy(|p| p.teams_allow = vec![" ".into()])), "policy.teams_allow[0]");
        assert_eq!(field(policy(|p| p.channels_allow = vec!["x\t".into()])), "policy.channels_allow[0]");
        assert_eq!(field(policy(|p| p.approvers = vec!["ok".into(), "alex@contoso.com".into()])), "policy.approvers[1]");
        assert_eq!(field(policy(|p| p.dm_allow = vec!["29:abc".into()])), "policy.dm_allow[0]");
        for secs in [0, 9, 86_401] {
            assert_eq!(field(policy(|p| p.approval_timeout_secs = secs)), "policy.approval_timeout_secs");
        }
        assert_eq!(policy(|p| p.approval_timeout_secs = 86_400).validate(), Ok(()));
        let (_, problem) = policy(|p| p.approvers = vec!["alex@contoso.com".into()]).validate().unwrap_err();
        assert!(problem.contains("AAD object id"), "{problem}");
    }

    #[test]
    fn approvers_by_aad_id_only() {
        let p = policy(|p| p.approvers = vec![ALEX.into()]);
        assert!(p.is_approver(ALEX));
        assert!(p.is_approver(&ALEX.to_uppercase()));
        assert!(!p.is_approver(ALICE));
        assert!(!p.is_approver(""));
        assert!(!p.is_approver("Alex Wilber"));
        assert!(!BotPolicy::default().is_approver(ALEX));
    }
}
