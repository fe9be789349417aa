//! The Agent User's files (its files area, `agent_user.files = true`): read, list and search its OneDrive
//! and the SharePoint sites it can reach, upload (one `PUT` for a file that fits in one fragment, an
//! upload session with ranges for larger ones), and share: a sharing link for named people is created only
//! after an owner allowed it on an approval card in Teams (every time: a share is a new grant), and never
//! an anonymous link unless `agent_user.files_anonymous_links` allows it. Every write is audited under
//! `agent_user:<id>` before it happens. Files to group chats and channels go the same way: uploaded to
//! the Agent User's OneDrive, shared with the chat's members (a channel: the organisation), the link
//! posted in the conversation.

use std::sync::Arc;

use serde_json::json;

use super::{FileSent, Files, transfer_error};
use crate::bridge::agent::AgentActor;
use crate::bridge::graph::{OwnerAnswer, graph_error};
use crate::bridge::{Caller, Error, Hub, Result, Scope};
use crate::config::BotConfig;
use crate::graph::{Conflict, Content, Drive, DriveItem, Item, Link, NewLink, Site};
use crate::store::ConversationRef;

/// Where to read a file from.
#[derive(Debug, Clone)]
pub(crate) enum Source<'a> {
    /// An item of a drive.
    Item(&'a Drive, &'a Item),
    /// The item behind a SharePoint sharing URL.
    Shared(&'a str),
}

/// The bytes of a file as the Agent User: Graph's redirect (checked against the file hosts) fetched
/// without a token, or the bytes Graph sent; at most `limit`.
pub(crate) async fn fetch_content(files: &Files, actor: &AgentActor, source: Source<'_>, limit: u64) -> Result<(Vec<u8>, Option<String>)> {
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let content = match source {
        Source::Item(drive, item) => actor.graph.drive_content(drive, item, cap).await,
        Source::Shared(url) => actor.graph.shared_content(url, cap).await,
    }
    .map_err(|e| graph_error("Graph refused the file", &e))?;
    content_bytes(files, content, limit).await
}

/// The bytes of what Graph answered a content request with: the bytes it sent, or those behind its
/// redirect (checked against the file hosts, fetched without a token), at most `limit`.
pub(crate) async fn content_bytes(files: &Files, content: Content, limit: u64) -> Result<(Vec<u8>, Option<String>)> {
    match content {
        Content::Redirect(location) => {
            let d = files.transfer.download(&location, limit).await.map_err(|e| transfer_error("the file could not be fetched", &e))?;
            Ok((d.bytes, d.content_type))
        }
        Content::Bytes { bytes, content_type } => Ok((bytes, content_type)),
    }
}

/// A request to share a file.
#[derive(Debug, Clone)]
pub struct ShareRequest {
    pub drive: Drive,
    pub item: Item,
    /// Who may open it (emails or object ids), for scope `users`.
    pub recipients: Vec<String>,
    /// `view` or `edit`.
    pub kind: String,
    /// `users`, `organization` or `anonymous`.
    pub scope: String,
}

/// A file the Agent User uploads.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// Where in its OneDrive (`Reports/q3.txt`).
    pub path: String,
    pub bytes: super::FileBytes,
    pub conflict: Conflict,
}

/// A file read as the Agent User: its metadata, and its text when it has one.
#[derive(Debug, Clone)]
pub struct ReadFile {
    pub identity: crate::store::Identity,
    pub item: DriveItem,
    /// The checked bytes (`None` for a folder, or a file larger than the bound: metadata only).
    pub fetched: Option<super::Fetched>,
    /// Why there are no bytes, when there are none.
    pub note: Option<String>,
}

impl Hub {
    /// The Agent User of `bot` (any scope), when its files area is on.
    pub(crate) fn files_actor_of(&self, bot: &str) -> Result<Arc<AgentActor>> {
        let b = self.configured_bot(bot).ok_or_else(|| Error::not_found(format!("bot {bot} is not configured")))?;
        self.files_enabled(b)?;
        self.agents.get(&b.app_id.to_ascii_lowercase()).cloned().ok_or_else(|| Error::refused(no_files(b)))
    }

    fn files_enabled(&self, bot: &BotConfig) -> Result<()> {
        if bot.agent_user.as_ref().is_some_and(|a| a.files) { Ok(()) } else { Err(Error::refused(no_files(bot))) }
    }

    /// The Agent User to act as for a files tool (its files area on).
    pub(crate) fn files_agent(&self, scope: &Scope, bot: Option<&str>) -> Result<(BotConfig, Arc<AgentActor>)> {
        let (b, actor) = self.agent_user(scope, bot)?;
        self.files_enabled(&b)?;
        Ok((b, actor))
    }

    /// A folder's children (default: the drive's root).
    pub async fn graph_list_files(
        &self,
        scope: &Scope,
        bot: Option<&str>,
        drive: &Drive,
        folder: &Item,
        limit: usize,
    ) -> Result<(crate::store::Identity, Vec<DriveItem>)> {
        let (_, actor) = self.files_agent(scope, bot)?;
        let items = actor.graph.drive_children(drive, folder, limit).await.map_err(|e| graph_error("listing the folder failed", &e))?;
        Ok((actor.identity(), items))
    }

    /// Items of a drive that match `query`.
    pub async fn graph_search_files(
        &self,
        scope: &Scope,
        bot: Option<&str>,
        drive: &Drive,
        query: &str,
        limit: usize,
    ) -> Result<(crate::store::Identity, Vec<DriveItem>)> {
        let (_, actor) = self.files_agent(scope, bot)?;
        let items = actor.graph.drive_search(drive, query, limit).await.map_err(|e| graph_error("the search failed", &e))?;
        Ok((actor.identity(), items))
    }

    /// SharePoint sites the Agent User can reach whose name matches `query`.
    pub async fn graph_find_sites(
        &self,
        scope: &Scope,
        bot: Option<&str>,
        query: &str,
        limit: usize,
    ) -> Result<(crate::store::Identity, Vec<Site>)> {
        let (_, actor) = self.files_agent(scope, bot)?;
        let sites = actor.graph.find_sites(query, limit).await.map_err(|e| graph_error("the site search failed", &e))?;
        Ok((actor.identity(), sites))
    }

    /// A file's metadata and (within `max_bytes` and `files.max_download_bytes`) its checked bytes.
    pub async fn graph_read_file(
        &self,
        scope: &Scope,
        bot: Option<&str>,
        drive: &Drive,
        item: &Item,
        max_bytes: Option<u64>,
    ) -> Result<ReadFile> {
        let files = self.files()?;
        let (_, actor) = self.files_agent(scope, bot)?;
        let meta = actor.graph.drive_item(drive, item).await.map_err(|e| graph_error("the file could not be read", &e))?;
        let limit = max_bytes.map_or(files.cfg.max_download_bytes, |m| m.clamp(1, files.cfg.max_download_bytes));
        let identity = actor.identity();
        if meta.folder.is_some() || meta.file.is_none() {
            return Ok(ReadFile { identity, item: meta, fetched: None, note: Some("a folder: list it with graph_list_files".into()) });
        }
        if meta.size.is_some_and(|s| s > limit) {
            let note = format!("larger than {limit} bytes: metadata only");
            return Ok(ReadFile { identity, item: meta, fetched: None, note: Some(note) });
        }
        let declared = meta.file.as_ref().and_then(|f| f.mime_type.clone()).filter(|m| !m.trim().is_empty()).unwrap_or_else(|| {
            crate::teams::files::extension(&meta.name)
                .map_or("application/octet-stream", |e| crate::teams::files::mime_for_extension(&e))
                .to_owned()
        });
        let by_id = Item::Id(meta.id.clone());
        let (bytes, served) = fetch_content(files, &actor, Source::Item(drive, &by_id), limit).await?;
        let family = super::content::check_type(&declared, served.as_deref(), &bytes).map_err(Error::refused)?;
        let fetched = super::Fetched { name: Some(meta.name.clone()), declared_type: declared, served_type: served, bytes, family };
        Ok(ReadFile { identity, item: meta, fetched: Some(fetched), note: None })
    }

    /// Upload a file to the Agent User's OneDrive; audited before and after.
    pub async fn graph_upload_file(
        &self,
        caller: Caller<'_>,
        bot: Option<&str>,
        req: &UploadRequest,
    ) -> Result<(crate::store::Identity, DriveItem)> {
        let files = self.files()?;
        let (_, actor) = self.files_agent(caller.scope, bot)?;
        let name = req.path.trim().trim_matches('/').rsplit('/').next().unwrap_or_default().to_owned();
        crate::teams::files::check_file_name(&name).map_err(Error::invalid)?;
        let bytes = req.bytes.load(files.cfg.max_send_bytes, &files.cfg.send_dirs)?;
        let item = self.upload_as_agent(caller, files, &actor, &req.path, &bytes, req.conflict).await?;
        Ok((actor.identity(), item))
    }

    async fn upload_as_agent(
        &self,
        caller: Caller<'_>,
        files: &Files,
        actor: &AgentActor,
        path: &str,
        bytes: &[u8],
        conflict: Conflict,
    ) -> Result<DriveItem> {
        let target = format!("drive:me:{}", path.trim().trim_matches('/'));
        let detail = format!("{} bytes", bytes.len());
        self.audit_agent(caller, actor, "graph_upload_file", &target, "attempt", detail.clone()).await?;
        let single = usize::try_from(files.cfg.upload_chunk_bytes).unwrap_or(usize::MAX).min(crate::graph::drive::SMALL_UPLOAD_MAX);
        let uploaded = if bytes.len() <= single {
            actor.graph.upload_small(&Drive::Me, path, bytes, conflict).await.map_err(|e| graph_error("the upload failed", &e))
        } else {
            match actor.graph.create_upload_session(&Drive::Me, path, conflict).await {
                Ok(session) => match files.transfer.upload(&session.upload_url, bytes, files.cfg.upload_chunk_bytes).await {
                    Ok(v) => serde_json::from_value::<DriveItem>(v)
                        .ok()
                        .filter(|i| !i.id.is_empty())
                        .ok_or_else(|| Error::unavailable("the upload session finished without the file's metadata")),
                    Err(e) => Err(transfer_error("the upload failed", &e)),
                },
                Err(e) => Err(graph_error("the upload session could not be opened", &e)),
            }
        };
        match uploaded {
            Ok(item) => {
                self.audit_agent(caller, actor, "graph_upload_file", &target, "uploaded", format!("{detail}, item {}", item.id)).await?;
                Ok(item)
            }
            Err(e) => {
                let _ = self.audit_agent(caller, actor, "graph_upload_file", &target, "failed", e.to_string()).await;
                Err(e)
            }
        }
    }

    /// A sharing link for a file, created only after an owner allowed it in Teams; audited before and after.
    pub async fn graph_share_file(
        &self,
        caller: Caller<'_>,
        bot: Option<&str>,
        req: &ShareRequest,
    ) -> Result<(crate::store::Identity, DriveItem, Link)> {
        let (b, actor) = self.files_agent(caller.scope, bot)?;
        if !matches!(req.kind.as_str(), "view" | "edit") {
            return Err(Error::invalid("link must be view or edit"));
        }
        let recipients: Vec<String> = req.recipients.iter().map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect();
        match req.scope.as_str() {
            "users" if recipients.is_empty() => {
                return Err(Error::invalid("a link for named people needs recipients (emails or object ids)"));
            }
            "users" => {}
            "organization" | "anonymous" if !recipients.is_empty() => {
                return Err(Error::invalid("recipients are for scope users; an organization or anonymous link names nobody"));
            }
            "organization" => {}
            "anonymous" if !b.agent_user.as_ref().is_some_and(|a| a.files_anonymous_links) => {
                return Err(Error::refused(format!(
                    "anonymous links are off for bot {} (agent_user.files_anonymous_links); share with named people (scope users) or the organization",
                    b.app_id
                )));
            }
            "anonymous" => {}
            _ => return Err(Error::invalid("scope must be users, organization or anonymous")),
        }
        for r in &recipients {
            if !(r.contains('@') || crate::ids::is_guid(r)) || r.contains(char::is_whitespace) {
                return Err(Error::invalid(format!("`{r}` is not an email address or an object id")));
            }
        }
        let meta = actor.graph.drive_item(&req.drive, &req.item).await.map_err(|e| graph_error("the file could not be read", &e))?;
        // Gate: an owner allows this share, every time.
        let who = if recipients.is_empty() { format!("anyone in scope {}", req.scope) } else { recipients.join(", ") };
        let action = "share a file";
        let description = format!("The Agent User ({}) wants to share \"{}\" ({} link) with {who}", actor.identity(), meta.name, req.kind);
        let preview = json!({"file": meta.name, "item_id": meta.id, "link": req.kind, "scope": req.scope, "recipients": recipients});
        self.ask_owner(caller, &b, action, &description, &preview).await.map_err(|e| match e {
            OwnerAnswer::Denied => Error::refused(format!("an owner denied sharing \"{}\" with {who}; nothing was shared", meta.name)),
            OwnerAnswer::Failed(e) => e,
        })?;
        let target = format!("drive-item:{}", meta.id);
        let detail = format!("{} link, scope {}, {who}", req.kind, req.scope);
        self.audit_agent(caller, &actor, "graph_share_file", &target, "attempt", detail.clone()).await?;
        let new = NewLink { kind: req.kind.clone(), scope: req.scope.clone(), recipients };
        match actor.graph.create_link(&req.drive, &meta.id, &new).await {
            Ok(link) => {
                self.audit_agent(caller, &actor, "graph_share_file", &target, "shared", detail).await?;
                Ok((actor.identity(), meta, link))
            }
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, "graph_share_file", &target, "failed", e.to_string()).await;
                Err(graph_error("the link could not be created", &e))
            }
        }
    }

    /// A file to a group chat or channel (or the Agent User's own chat): uploaded to the Agent User's
    /// OneDrive under `agentgate/`, shared with the chat's members (a channel: the organisation), and the
    /// link posted there (by the bot through the Connector, or by the Agent User in its own chat).
    pub(crate) async fn share_into_conversation(
        &self,
        caller: Caller<'_>,
        bot: &BotConfig,
        r: &ConversationRef,
        name: &str,
        bytes: &[u8],
    ) -> Result<FileSent> {
        let files = self.files()?;
        let actor = self.files_actor_of(&bot.app_id).map_err(|_| {
            Error::refused(format!(
                "a file to a group chat or channel goes through the Agent User's OneDrive, and bot {} has no Agent User with files = true ([bots.agent_user], docs/agent-user.md); in a 1:1 chat the bot offers the file itself",
                bot.app_id
            ))
        })?;
        let graph_chat = super::super::route::lives_in_graph(r);
        let channel = r.conversation_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("channel"));
        // Who may open it: the chat's members (read before anything is written), or the organisation.
        let recipients: Vec<String> = if channel {
            Vec::new()
        } else if graph_chat {
            let members = actor
                .graph
                .list_chat_members(&r.conversation_id)
                .await
                .map_err(|e| graph_error("the chat's members could not be read", &e))?;
            let me = actor.tokens.user().as_str().to_ascii_lowercase();
            members.into_iter().filter_map(|m| m.user_id).filter(|u| !u.is_empty() && u.to_ascii_lowercase() != me).collect()
        } else {
            let members = self
                .outbound
                .list_members(r)
                .await
                .map_err(|e| Error::unavailable(format!("the chat's members could not be read: {e}")))?;
            members
                .iter()
                .filter_map(|m| m.get("aadObjectId").and_then(serde_json::Value::as_str))
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if !channel && recipients.is_empty() {
            return Err(Error::refused("nobody in this chat could be named for a sharing link; nothing was sent"));
        }
        let item = self.upload_as_agent(caller, files, &actor, &format!("agentgate/{name}"), bytes, Conflict::Rename).await?;
        let link = NewLink { kind: "view".into(), scope: if channel { "organization".into() } else { "users".into() }, recipients };
        let target = format!("drive-item:{}", item.id);
        let detail = format!("view link, scope {}, conversation {}", link.scope, r.conversation_id);
        self.audit_agent(caller, &actor, "graph_share_file", &target, "attempt", detail.clone()).await?;
        let link = match actor.graph.create_link(&Drive::Me, &item.id, &link).await {
            Ok(l) => l,
            Err(e) => {
                let _ = self.audit_agent(caller, &actor, "graph_share_file", &target, "failed", e.to_string()).await;
                return Err(graph_error("the file was uploaded, but its link could not be created", &e));
            }
        };
        self.audit_agent(caller, &actor, "graph_share_file", &target, "shared", detail).await?;
        let text = format!("📎 {name}: {}", link.web_url);
        let message = if graph_chat {
            super::super::deliver::Sent::Graph(
                self.graph_send_body(caller, &actor, &r.conversation_id, crate::graph::MessageBody::from_text(&text)).await?,
            )
        } else {
            let messages = super::super::deliver::text_messages(&text, &[])?;
            let outbox_id = self.enqueue_messages(caller.requester, bot, r, messages, None).await?;
            super::super::deliver::sent_as_bot(bot.app_id.to_string(), outbox_id, self.settle(outbox_id).await)?
        };
        Ok(FileSent::Shared { identity: actor.identity(), web_url: link.web_url, scope: link.scope, item_id: item.id, message })
    }
}

fn no_files(bot: &BotConfig) -> String {
    if bot.agent_user.is_some() {
        format!("the files area is off for bot {}: set agent_user.files = true (docs/agent-user.md#files)", bot.app_id)
    } else {
        format!(
            "bot {} has no Agent User: files through Graph need [bots.agent_user] with files = true (docs/agent-user.md#files)",
            bot.app_id
        )
    }
}
