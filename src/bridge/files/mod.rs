//! Files: what people send the agent, and what the agent sends.
//!
//! Inbound, a message's files become typed items on its event ([`FileItem`]: a reference, the name, the
//! declared type, the size when known), never content: the host fetches one with `get_file`
//! ([`Hub::get_file`]), which downloads it within a bound, only from an allowed host (SharePoint and
//! OneDrive for a file's pre-authenticated link, the conversation's own Connector for an inline image, with
//! the bot token; Graph as the Agent User for a SharePoint link, and for the files and images of channel
//! and group-chat messages, [`in_message`]), checks its type ([`content::check_type`])
//! and gives text for text-like files, inside the untrusted envelope.
//!
//! Outbound ([`Hub::send_file`]): in a 1:1 chat the bot offers the file with a consent card and uploads
//! it when the person accepts ([`consent`]); in group chats and channels the Agent User uploads it to its
//! OneDrive and shares a link ([`drive`]), or the request is refused saying how to enable it.

pub(crate) mod consent;
pub(crate) mod content;
pub(crate) mod drive;
pub(crate) mod in_message;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use sha2::Digest as _;

use super::{Error, Hub, Result, Scope};
use crate::activity::Activity;
use crate::config::FilesConfig;
use crate::graph::{FileHosts, FileTransfer, TransferError};
use crate::store::Store;
use crate::teams::files::{AttachedFile, FileSource, attached_files};

/// What intake and the sessions share for files: the limits, the transfer client, where offered files
/// wait for an answer.
pub(crate) struct Files {
    pub(crate) cfg: FilesConfig,
    pub(crate) transfer: FileTransfer,
    /// Where files offered with a consent card wait for the answer (`<data_dir>/files/outgoing`).
    pub(crate) spool: PathBuf,
    pub(crate) store: Arc<dyn Store>,
    /// Wakes the sessions for the outcome of an upload (intake's gate; none in one-shot commands).
    pub(crate) gate: Option<Arc<super::gate::InboundGate>>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files").field("spool", &self.spool).field("hosts", self.transfer.hosts()).finish_non_exhaustive()
    }
}

impl Files {
    /// Built from the configuration; offered files wait under `data_dir/files/outgoing`.
    pub(crate) fn new(
        cfg: &crate::config::Config,
        store: Arc<dyn Store>,
        gate: Option<Arc<super::gate::InboundGate>>,
    ) -> anyhow::Result<Self> {
        let transfer = FileTransfer::new(FileHosts::new(&cfg.files.endpoints), Duration::from_secs(120))
            .map_err(|e| anyhow::anyhow!("building the file transfer client: {e}"))?;
        Ok(Self { cfg: cfg.files.clone(), transfer, spool: cfg.data_dir.join("files").join("outgoing"), store, gate })
    }
}

/// A file on an inbound event, as the host sees it (never the link to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileItem {
    /// What `get_file` takes: `f<inbox id>.<n>`.
    pub file_ref: String,
    /// `teams_file`, `image`, `reference`, `message_file`, `hosted_image` or `stub`.
    pub source: &'static str,
    /// The name as sent (cleaned for metadata), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The declared content type.
    pub content_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Whether `get_file` can try to fetch it (a stub cannot; `message_file` and `hosted_image` need the
    /// bot's Agent User, with its files area on).
    pub fetchable: bool,
}

/// The files of an inbox entry's activity, as items.
pub(crate) fn file_items(inbox_id: i64, activity: &Activity) -> Vec<FileItem> {
    attached_files(activity)
        .into_iter()
        .enumerate()
        .map(|(i, f)| FileItem {
            file_ref: format!("f{inbox_id}.{i}"),
            source: f.source.label(),
            name: f.name.as_deref().map(super::envelope::meta_value).filter(|n| !n.is_empty()),
            content_type: super::envelope::meta_value(&f.declared_type),
            size: f.size,
            fetchable: f.source != FileSource::Stub,
        })
        .collect()
}

/// `f<inbox id>.<n>` → (inbox id, n).
fn parse_ref(file_ref: &str) -> Option<(i64, usize)> {
    let (id, n) = file_ref.trim().strip_prefix('f')?.split_once('.')?;
    Some((id.parse().ok().filter(|i| *i > 0)?, n.parse().ok()?))
}

/// A file fetched for the agent, checked.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub name: Option<String>,
    /// The type the message (or Graph) declared.
    pub declared_type: String,
    /// The `Content-Type` the host served.
    pub served_type: Option<String>,
    pub bytes: Vec<u8>,
    pub(crate) family: content::Family,
}

impl Fetched {
    pub fn sha256(&self) -> String {
        hex(&sha2::Sha256::digest(&self.bytes))
    }

    /// The text of a text-like file (cut to `max_chars`), or `None`.
    pub fn text(&self, max_chars: usize) -> Option<(String, bool)> {
        content::extract_text(self.family, &self.declared_type, &self.bytes, max_chars)
    }

    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    pub fn kind(&self) -> &'static str {
        self.family.label()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A transfer failure as a bridge error: refusals for what will not change (a host not allowed, too
/// large, a 4xx), unavailable for what may pass (throttled, 5xx, no answer).
pub(crate) fn transfer_error(what: &str, e: &TransferError) -> Error {
    match e {
        TransferError::NotAllowed(_) | TransferError::TooLarge { .. } => Error::refused(format!("refused: {what}: {e}")),
        TransferError::Http { status, .. } if *status < 500 => Error::refused(format!("{what}: {e}")),
        _ => Error::unavailable(format!("{what}: {e}")),
    }
}

/// The bytes of a file the agent sends.
#[derive(Debug, Clone)]
pub enum FileBytes {
    /// UTF-8 text.
    Text(String),
    /// Base64 (standard alphabet, padding optional).
    Base64(String),
    /// A file under one of `files.send_dirs`.
    Path(PathBuf),
}

impl FileBytes {
    /// The bytes, within `max` and (for a path) under one of `dirs`.
    pub(crate) fn load(&self, max: u64, dirs: &[PathBuf]) -> Result<Vec<u8>> {
        let too_large = |n: u64| Error::invalid(format!("the file is {n} bytes; at most {max} bytes are sent (files.max_send_bytes)"));
        let bytes = match self {
            Self::Text(t) => t.clone().into_bytes(),
            Self::Base64(b) => {
                if (b.len() as u64).saturating_mul(3) / 4 > max + 3 {
                    return Err(too_large((b.len() as u64).saturating_mul(3) / 4));
                }
                let cleaned: String = b.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(cleaned.trim_end_matches('='))
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.trim_end_matches('=')))
                    .map_err(|_| Error::invalid("content_base64 is not base64 (standard alphabet)"))?
            }
            Self::Path(p) => read_allowed(p, max, dirs)?,
        };
        if bytes.is_empty() {
            return Err(Error::invalid("the file is empty: nothing to send"));
        }
        if bytes.len() as u64 > max {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(bytes)
    }
}

/// Read `path` if it is a regular file under one of `dirs` (after resolving links), at most `max` bytes.
fn read_allowed(path: &Path, max: u64, dirs: &[PathBuf]) -> Result<Vec<u8>> {
    if dirs.is_empty() {
        return Err(Error::refused("sending a file by path is off: configure files.send_dirs, or pass text or content_base64"));
    }
    let real = std::fs::canonicalize(path).map_err(|_| Error::invalid(format!("{} cannot be read", path.display())))?;
    let allowed = dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).any(|d| real.starts_with(&d));
    if !allowed {
        return Err(Error::refused(format!("{} is not under files.send_dirs; nothing was sent", path.display())));
    }
    let meta = std::fs::metadata(&real).map_err(|_| Error::invalid(format!("{} cannot be read", path.display())))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!("{} is not a regular file", path.display())));
    }
    if meta.len() > max {
        return Err(Error::invalid(format!("the file is {} bytes; at most {max} bytes are sent (files.max_send_bytes)", meta.len())));
    }
    std::fs::read(&real).map_err(|_| Error::invalid(format!("{} cannot be read", path.display())))
}

/// A file the agent sends into a conversation (`send_file`).
#[derive(Debug, Clone)]
pub struct OutgoingFile {
    pub chat_id: String,
    pub bot: Option<String>,
    /// The file name people see.
    pub name: String,
    /// What the consent card says about it.
    pub description: Option<String>,
    pub bytes: FileBytes,
}

/// What became of `send_file`.
#[derive(Debug, Clone)]
pub enum FileSent {
    /// 1:1: the consent card was queued; the upload follows the person's answer.
    Offered { consent_id: String, outbox_id: i64, progress: super::deliver::Progress, size: u64, sha256: String },
    /// Group chat or channel (or the Agent User's own chat): uploaded by the Agent User, shared with a
    /// link, and the link posted.
    Shared { identity: crate::store::Identity, web_url: String, scope: String, item_id: String, message: super::deliver::Sent },
}

impl Hub {
    /// The files-area state (limits, transfer client), or why files are unavailable here.
    pub(crate) fn files(&self) -> Result<&Arc<Files>> {
        self.files.as_ref().ok_or_else(|| Error::unavailable("files are not available in this mode (run the gateway: serve or mcp)"))
    }

    /// Send a file into a conversation: in a 1:1 chat the bot offers it with a consent card (the upload
    /// follows the person's answer); in a group chat, a channel or the Agent User's own chat, the Agent
    /// User uploads it to its OneDrive and posts a sharing link (its files area must be on).
    pub async fn send_file(&self, caller: super::Caller<'_>, req: &OutgoingFile) -> Result<FileSent> {
        let files = self.files()?;
        crate::teams::files::check_file_name(req.name.trim()).map_err(Error::invalid)?;
        let name = req.name.trim();
        let description = req.description.as_deref().map(str::trim).filter(|d| !d.is_empty()).unwrap_or(name);
        if description.chars().count() > 1000 {
            return Err(Error::invalid("description is longer than 1000 characters"));
        }
        let (bot, r) = self.conversation_any(caller.scope, &req.chat_id, req.bot.as_deref()).await?;
        if !r.usable {
            return Err(Error::refused(format!("the bot was removed from (or blocked in) conversation {}; nothing was sent", req.chat_id)));
        }
        let bytes = req.bytes.load(files.cfg.max_send_bytes, &files.cfg.send_dirs)?;
        let personal = r.conversation_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("personal"));
        if personal && !super::route::lives_in_graph(&r) {
            return self.offer_file(caller, &bot, &r, name, description, &bytes).await;
        }
        self.share_into_conversation(caller, &bot, &r, name, &bytes).await
    }

    /// Fetch a file of an inbound event (within scope, and one a host may see: pending or acknowledged), at most `max_bytes` (and `files.max_download_bytes`),
    /// checked against its declared type.
    pub async fn get_file(&self, scope: &Scope, file_ref: &str, max_bytes: Option<u64>) -> Result<Fetched> {
        let files = self.files()?;
        let (inbox_id, n) = parse_ref(file_ref)
            .ok_or_else(|| Error::invalid(format!("`{file_ref}` is not a file_ref: pass one from an event's files (f<inbox id>.<n>)")))?;
        let missing = || Error::not_found(format!("no file {file_ref} in this session's scope"));
        let item = self.store.inbox_by_ids(&[inbox_id]).await.map_err(|e| Error::unavailable(e.to_string()))?.into_iter().next();
        // Only what a host may be given: never an entry the policy kept from the agent, nor a withdrawn one.
        let deliverable =
            |i: &crate::store::InboxItem| matches!(i.state, crate::store::InboxState::Pending | crate::store::InboxState::Acked);
        let item = item.filter(|i| scope.allows(&i.bot_app_id, &i.tenant_id) && deliverable(i)).ok_or_else(missing)?;
        let activity: Activity = serde_json::from_str(&item.body).map_err(|_| missing())?;
        let file = attached_files(&activity).into_iter().nth(n).ok_or_else(missing)?;
        let limit = max_bytes.map_or(files.cfg.max_download_bytes, |m| m.clamp(1, files.cfg.max_download_bytes));
        let (mut name, mut declared_type) = (file.name.clone(), file.declared_type.clone());
        let (bytes, served) = match file.source {
            FileSource::TeamsFile => {
                let url = file.url.as_deref().ok_or_else(|| Error::refused("the attachment has no download link"))?;
                let d = files.transfer.download(url, limit).await.map_err(|e| transfer_error("the file could not be fetched", &e))?;
                (d.bytes, d.content_type)
            }
            FileSource::Image => self.fetch_image(&item.bot_app_id, &item.conversation_id, &file, limit).await?,
            FileSource::Reference => self.fetch_shared(&item.bot_app_id, &file, limit).await?,
            FileSource::MessageFile | FileSource::HostedImage => {
                let actor = self.files_actor_of(&item.bot_app_id).map_err(|_| {
                    Error::refused(format!(
                        "Teams gives bots only a placeholder for a file or image in a channel or group chat; agentgate reads it through Graph \
                         as the bot's Agent User, and bot {} has none with its files area on: configure [bots.agent_user] with files = true \
                         and add the Agent User to the team or chat (docs/agent-user.md), or ask the person to send it in a 1:1 chat with the bot",
                        item.bot_app_id
                    ))
                })?;
                let agent_tenant = actor.tokens.tenant();
                if !agent_tenant.eq_ignore_ascii_case(&item.tenant_id) {
                    return Err(Error::refused(format!(
                        "this file is in tenant {}, and bot {}'s Agent User is in tenant {agent_tenant}: it reads only its own tenant's \
                         messages; nothing was fetched",
                        item.tenant_id, item.bot_app_id
                    )));
                }
                let group = match in_message::team_without_group(&activity) {
                    Some(team) => self.team_group_id(&item.bot_app_id, &item.conversation_id, team).await?,
                    None => None,
                };
                let got = in_message::fetch(files, &actor, &activity, group.as_deref(), &file, limit).await?;
                name = got.name;
                declared_type = got.declared_type;
                (got.bytes, got.served)
            }
            FileSource::Stub => {
                return Err(Error::refused(
                    "Teams sent only a placeholder for this file, with nothing Graph can find it by. Ask the person to send it in a 1:1 chat with the bot, or to share a link",
                ));
            }
        };
        let family = content::check_type(&declared_type, served.as_deref(), &bytes).map_err(Error::refused)?;
        tracing::info!(
            file_ref,
            source = file.source.label(),
            bytes = bytes.len(),
            kind = family.label(),
            "a file was fetched for the agent"
        );
        Ok(Fetched { name, declared_type, served_type: served, bytes, family })
    }

    /// An inline image: on the conversation's own Connector (same origin as its service URL, and an
    /// allow-listed Connector host), with the token of whoever acts there.
    async fn fetch_image(&self, bot: &str, conversation: &str, file: &AttachedFile, limit: u64) -> Result<(Vec<u8>, Option<String>)> {
        let url = file.url.as_deref().ok_or_else(|| Error::refused("the image has no link"))?;
        let r = self.known_conversation(bot, conversation).await?;
        if !same_origin(url, &r.service_url) {
            return Err(Error::refused(
                "refused: the image is not on this conversation's Connector; the bot token goes nowhere else and nothing was fetched",
            ));
        }
        self.outbound.fetch_attachment(&r, url, limit).await.map_err(|e| match e {
            crate::connector::ConnectorError::HostNotAllowed => {
                Error::refused("refused: the image is not on an allow-listed Connector host; nothing was fetched")
            }
            e @ crate::connector::ConnectorError::TooLarge { .. } => Error::refused(format!("refused: {e}")),
            e if e.idempotent_may_retry() => Error::unavailable(format!("the image could not be fetched: {e}")),
            e => Error::refused(format!("the image could not be fetched: {e}")),
        })
    }

    /// The stored reference of the conversation a file came from.
    async fn known_conversation(&self, bot: &str, conversation: &str) -> Result<crate::store::ConversationRef> {
        self.store
            .conversation_ref(bot, conversation)
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?
            .ok_or_else(|| Error::not_found("the conversation of this file is not known"))
    }

    /// The group id of a team (by its `19:…` thread id) from the Connector's team details, as the bot in
    /// the conversation's tenant.
    async fn team_group_id(&self, bot: &str, conversation: &str, team: &str) -> Result<Option<String>> {
        let r = self.known_conversation(bot, conversation).await?;
        self.outbound
            .team_group_id(&r, team)
            .await
            .map_err(|e| Error::unavailable(format!("the team's group id could not be read from the Connector: {e}")))
    }

    /// A SharePoint link: through Graph as the bot's Agent User (its files area on), the bytes from the
    /// pre-authenticated download Graph redirects to.
    async fn fetch_shared(&self, bot: &str, file: &AttachedFile, limit: u64) -> Result<(Vec<u8>, Option<String>)> {
        let url = file.url.as_deref().ok_or_else(|| Error::refused("the link is missing"))?;
        let actor = self.files_actor_of(bot)?;
        drive::fetch_content(self.files()?, &actor, drive::Source::Shared(url), limit).await
    }
}

/// Whether `url` has the same scheme, host and port as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (url::Url::parse(url.trim()), url::Url::parse(base.trim())) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
                && a.port_or_known_default() == b.port_or_known_default()
                && a.username().is_empty()
                && a.password().is_none()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_refs() {
        assert_eq!(parse_ref("f42.0"), Some((42, 0)));
        assert_eq!(parse_ref(" f7.3 "), Some((7, 3)));
        for bad in ["42.0", "f.0", "f42", "f0.1", "f-1.0", "fx.y", "f42.-1"] {
            assert_eq!(parse_ref(bad), None, "{bad}");
        }
    }

    #[test]
    fn origins() {
        assert!(same_origin(
            "https://smba.trafficmanager.net/amer/v3/attachments/x/views/original",
            "https://smba.trafficmanager.net/amer/"
        ));
        assert!(!same_origin("https://smba.trafficmanager.net.evil.test/v3/attachments/x", "https://smba.trafficmanager.net/amer/"));
        assert!(!same_origin("http://smba.trafficmanager.net/amer/v3/x", "https://smba.trafficmanager.net/amer/"));
        assert!(!same_origin("https://u@smba.trafficmanager.net/amer/v3/x", "https://smba.trafficmanager.net/amer/"));
        assert!(same_origin("http://127.0.0.1:4100/_connector/v3/attachments/a", "http://127.0.0.1:4100/_connector"));
        assert!(!same_origin("http://127.0.0.1:4101/_connector/v3/attachments/a", "http://127.0.0.1:4100/_connector"));
    }

    #[test]
    fn outgoing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("out");
        std::fs::create_dir(&inside).unwrap();
        std::fs::write(inside.join("r.txt"), b"report").unwrap();
        std::fs::write(dir.path().join("secret.pem"), b"KEY").unwrap();
        let dirs = vec![inside.clone()];
        assert_eq!(FileBytes::Path(inside.join("r.txt")).load(100, &dirs).unwrap(), b"report");
        // Outside the directory, also through `..` or a link: refused.
        for p in [dir.path().join("secret.pem"), inside.join("../secret.pem")] {
            assert!(FileBytes::Path(p).load(100, &dirs).unwrap_err().to_string().contains("not under files.send_dirs"));
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.pem"), inside.join("link.pem")).unwrap();
            assert!(FileBytes::Path(inside.join("link.pem")).load(100, &dirs).is_err());
        }
        assert!(FileBytes::Path(inside.join("r.txt")).load(100, &[]).unwrap_err().to_string().contains("files.send_dirs"));
        assert!(FileBytes::Path(inside.join("r.txt")).load(3, &dirs).is_err(), "over the limit");
        assert_eq!(FileBytes::Base64("aGVsbG8=".into()).load(100, &[]).unwrap(), b"hello");
        assert_eq!(FileBytes::Base64("aGVsbG8".into()).load(100, &[]).unwrap(), b"hello");
        assert!(FileBytes::Base64("!!".into()).load(100, &[]).is_err());
        assert!(FileBytes::Text(String::new()).load(100, &[]).is_err(), "empty");
        assert!(FileBytes::Text("x".repeat(101)).load(100, &[]).is_err());
    }
}
