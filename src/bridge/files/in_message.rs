//! Files and images of channel and group-chat messages, read through Graph as the bot's Agent User.
//!
//! Teams gives a bot only the HTML of such a message: an `<attachment id>` tag per file, an `<img>` on a
//! host bots cannot read per pasted image. The bytes are in Graph: the message (`/teams/{group id}/channels/
//! {channel}/messages/{id}` or `…/replies/{id}`, `/chats/{chat}/messages/{id}`) lists its files as
//! attachments with the same ids (SharePoint links, read like any shared file) and its images as hosted
//! contents (`…/hostedContents/{id}/$value`). The Agent User reads them as a member of the team or chat;
//! a message of one of its own Graph chats names its hosted contents directly.

use serde_json::Value;

use super::{Files, drive};
use crate::activity::Activity;
use crate::bridge::agent::AgentActor;
use crate::bridge::graph::graph_error;
use crate::bridge::{Error, Result};
use crate::graph::{GraphError, GraphErrorKind, MessageAt};
use crate::teams::files::{AttachedFile, GRAPH_CHANNEL, Locator, declared_from, file_name};

/// A file read out of a message: its bytes, the type the host served, and the name and type Graph gave.
pub(crate) struct InMessage {
    pub(crate) bytes: Vec<u8>,
    pub(crate) served: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) declared_type: String,
}

/// The team (its `19:…` thread id) of a channel message that does not carry the team's group id: Graph
/// names teams by group id, so it has to be asked of the Connector (`GET v3/teams/{id}`).
pub(crate) fn team_without_group(activity: &Activity) -> Option<&str> {
    let kind = activity.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()).unwrap_or_default();
    if activity.channel_id.as_deref() == Some(GRAPH_CHANNEL) || !kind.eq_ignore_ascii_case("channel") {
        return None;
    }
    let team = activity.channel_data.as_ref()?.extra.get("team")?;
    let has_group = team.get("aadGroupId").and_then(Value::as_str).is_some_and(|g| !g.trim().is_empty());
    (!has_group).then(|| team.get("id").and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty())).flatten()
}

/// Where the message of `activity` is in Graph, or why it cannot be found there. `group`: the team's group
/// id when the activity does not carry it (from the Connector's team details).
pub(crate) fn message_at(activity: &Activity, group: Option<&str>) -> std::result::Result<MessageAt, String> {
    let conversation = activity.conversation.as_ref().map(|c| c.id.trim()).filter(|c| !c.is_empty());
    let conversation = conversation.ok_or("the message names no conversation")?;
    let kind = activity.conversation.as_ref().and_then(|c| c.conversation_type.as_deref()).unwrap_or_default();
    let channel_data = activity.channel_data.as_ref().map(|d| &d.extra);
    let nested =
        |key: &str, field: &str| channel_data?.get(key)?.get(field)?.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    if activity.channel_id.as_deref() == Some(GRAPH_CHANNEL) {
        let message = nested("graph", "messageId").ok_or("the message has no Graph message id")?;
        return Ok(MessageAt::Chat { chat: conversation.to_owned(), message });
    }
    let id = activity.id.as_deref().map(str::trim).filter(|s| !s.is_empty()).ok_or("the message has no id")?.to_owned();
    if kind.eq_ignore_ascii_case("groupChat") {
        return Ok(MessageAt::Chat { chat: crate::teams::thread::thread_root(conversation).to_owned(), message: id });
    }
    if !kind.eq_ignore_ascii_case("channel") {
        return Err("only channel and group-chat messages are read through Graph".into());
    }
    let team = nested("team", "aadGroupId").or_else(|| group.map(str::to_owned)).ok_or(
        "Teams did not send the team's group id (channelData.team.aadGroupId), which Graph needs to find a channel message, \
         and the Connector's team details name none",
    )?;
    let channel = nested("channel", "id").unwrap_or_else(|| crate::teams::thread::thread_root(conversation).to_owned());
    let root = crate::teams::thread::thread_message_id(conversation)
        .map(str::to_owned)
        .or_else(|| activity.reply_to_id.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned));
    Ok(match root {
        Some(root) if root != id => MessageAt::Channel { team, channel, root, reply: Some(id) },
        _ => MessageAt::Channel { team, channel, root: id, reply: None },
    })
}

/// Graph's refusal to read a message, said so that the operator knows what to change.
fn read_error(e: &GraphError) -> Error {
    match e.kind() {
        GraphErrorKind::Forbidden => Error::refused(format!(
            "the Agent User may not read this message: it reads channel and group-chat files as a member of the team or chat, \
             with the delegated scopes ChannelMessage.Read.All (channels) and Chat.ReadWrite (chats); add it to the team or chat, \
             or grant the scopes (files = true in [bots.agent_user], then agentgate agent-id provision) ({e})"
        )),
        GraphErrorKind::NotFound => Error::not_found(format!(
            "Graph has no such message for the Agent User: the message was deleted, or the Agent User is not in the team or chat ({e})"
        )),
        _ => graph_error("the message could not be read through Graph", e),
    }
}

/// The bytes of a hosted content of the message at `at`, at most `limit`.
async fn hosted(files: &Files, actor: &AgentActor, at: &MessageAt, id: &str, limit: u64) -> Result<(Vec<u8>, Option<String>)> {
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let content = actor.graph.hosted_content(at, id, cap).await.map_err(|e| read_error(&e))?;
    drive::content_bytes(files, content, limit).await
}

/// The hosted content that is the `nth` pasted image of the message, preferring the one whose id names
/// the image's AMS object (Graph's ids encode `id=x_{object},type=1,url=…/objects/{object}/views/imgo`).
fn pick_image(ids: &[String], nth: usize, object_id: Option<&str>) -> Option<String> {
    use base64::Engine as _;
    let names = |id: &str, object: &str| {
        let unpadded = id.trim_end_matches('=');
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(unpadded)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(unpadded));
        decoded.is_ok_and(|d| String::from_utf8_lossy(&d).contains(&format!("/objects/{object}/")))
    };
    object_id.and_then(|o| ids.iter().find(|id| names(id, o)).cloned()).or_else(|| ids.get(nth).cloned())
}

/// Read the file `file` of `activity`'s message through Graph as `actor`, at most `limit` bytes.
pub(crate) async fn fetch(
    files: &Files,
    actor: &AgentActor,
    activity: &Activity,
    group: Option<&str>,
    file: &AttachedFile,
    limit: u64,
) -> Result<InMessage> {
    let locator = file.locator.as_ref().ok_or_else(|| Error::refused("the file names nothing Graph can find"))?;
    let at = message_at(activity, group).map_err(|why| Error::refused(format!("this file cannot be read through Graph: {why}")))?;
    let image = |(bytes, served)| InMessage { bytes, served, name: file.name.clone(), declared_type: "image/*".into() };
    match locator {
        Locator::Hosted(id) => hosted(files, actor, &at, id, limit).await.map(image),
        Locator::InlineImage { nth, object_id } => {
            let message = actor.graph.message_json(&at).await.map_err(|e| read_error(&e))?;
            let body = message.pointer("/body/content").and_then(Value::as_str).unwrap_or_default();
            let ids = crate::bridge::graph_inbound::hosted_content_ids(body);
            let id = pick_image(&ids, *nth, object_id.as_deref())
                .ok_or_else(|| Error::not_found("the message no longer holds this image (it was edited or deleted)"))?;
            hosted(files, actor, &at, &id, limit).await.map(image)
        }
        Locator::Attachment(id) => {
            let message = actor.graph.message_json(&at).await.map_err(|e| read_error(&e))?;
            let attachment = message
                .get("attachments")
                .and_then(Value::as_array)
                .and_then(|list| list.iter().find(|a| a.get("id").and_then(Value::as_str) == Some(id.as_str())))
                .ok_or_else(|| Error::not_found("the message no longer holds this file (it was edited or deleted)"))?;
            let kind = attachment.get("contentType").and_then(Value::as_str).unwrap_or_default();
            let url = attachment.get("contentUrl").and_then(Value::as_str).map(str::trim).filter(|u| !u.is_empty());
            let (true, Some(url)) = (kind.eq_ignore_ascii_case("reference"), url) else {
                return Err(Error::refused(format!("this attachment is not a file (Graph calls it {kind:?}); nothing was fetched")));
            };
            let name = attachment.get("name").and_then(Value::as_str).and_then(file_name);
            let declared_type = declared_from(None, name.as_deref());
            let (bytes, served) = drive::fetch_content(files, actor, drive::Source::Shared(url), limit).await?;
            Ok(InMessage { bytes, served, name, declared_type })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn activity(v: Value) -> Activity {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn where_messages_are_in_graph() {
        let group = "cccccccc-0000-0000-0000-000000000003";
        let post = activity(
            json!({"type": "message", "id": "1700", "conversation": {"id": "19:gen@thread.tacv2;messageid=1700", "conversationType": "channel"},
            "channelData": {"team": {"id": "19:team@thread.tacv2", "aadGroupId": group}, "channel": {"id": "19:gen@thread.tacv2"}}}),
        );
        assert_eq!(
            message_at(&post, None).unwrap(),
            MessageAt::Channel { team: group.into(), channel: "19:gen@thread.tacv2".into(), root: "1700".into(), reply: None }
        );
        let reply = activity(
            json!({"type": "message", "id": "1705", "conversation": {"id": "19:gen@thread.tacv2;messageid=1700", "conversationType": "channel"},
            "channelData": {"team": {"id": "19:team@thread.tacv2", "aadGroupId": group}}}),
        );
        assert_eq!(
            message_at(&reply, None).unwrap(),
            MessageAt::Channel {
                team: group.into(),
                channel: "19:gen@thread.tacv2".into(),
                root: "1700".into(),
                reply: Some("1705".into())
            }
        );
        // The team's thread id is not what Graph takes: without the group id, a clear refusal.
        let no_group =
            activity(json!({"type": "message", "id": "1", "conversation": {"id": "19:gen@thread.tacv2", "conversationType": "channel"},
            "channelData": {"team": {"id": "19:team@thread.tacv2"}}}));
        assert!(message_at(&no_group, None).unwrap_err().contains("aadGroupId"));
        assert_eq!(team_without_group(&no_group), Some("19:team@thread.tacv2"));
        assert_eq!(team_without_group(&post), None, "the activity names its group");
        assert!(matches!(message_at(&no_group, Some(group)), Ok(MessageAt::Channel { team, .. }) if team == group));
        let chat =
            activity(json!({"type": "message", "id": "42", "conversation": {"id": "19:g@thread.v2", "conversationType": "groupChat"}}));
        assert_eq!(message_at(&chat, None).unwrap(), MessageAt::Chat { chat: "19:g@thread.v2".into(), message: "42".into() });
        let graph = activity(
            json!({"type": "message", "id": "42@edit:x", "channelId": "graph", "conversation": {"id": "19:me@unq.gbl.spaces", "conversationType": "personal"},
            "channelData": {"graph": {"chatId": "19:me@unq.gbl.spaces", "messageId": "42"}}}),
        );
        assert_eq!(message_at(&graph, None).unwrap(), MessageAt::Chat { chat: "19:me@unq.gbl.spaces".into(), message: "42".into() });
        let personal = activity(json!({"type": "message", "id": "1", "conversation": {"id": "a:1", "conversationType": "personal"}}));
        assert!(message_at(&personal, None).is_err());
    }

    #[test]
    fn an_image_is_matched_on_its_object_then_its_place() {
        use base64::Engine as _;
        let enc = |o: &str| {
            base64::engine::general_purpose::STANDARD
                .encode(format!("id=x_{o},type=1,url=https://us-api.asm.skype.com/v1/objects/{o}/views/imgo"))
        };
        let ids = vec![enc("0-a"), enc("0-b")];
        assert_eq!(pick_image(&ids, 0, Some("0-b")), Some(ids[1].clone()), "the object decides");
        assert_eq!(pick_image(&ids, 1, None), Some(ids[1].clone()));
        assert_eq!(pick_image(&ids, 0, Some("0-zzz")), Some(ids[0].clone()), "unknown object: by place");
        assert_eq!(pick_image(&ids, 2, None), None);
    }
}
