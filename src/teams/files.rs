//! Files in Teams activities (learn.microsoft.com "Send and receive files", bots-filesv4; the Teams SDKs'
//! `FileConsentCard`, `FileInfoCard`, `FileDownloadInfo`): what a message carries, the consent card the
//! bot offers a file with in a 1:1 chat, the user's answer (`fileConsent/invoke`) and the file info card
//! that follows an upload. Wire shapes only: fetching and uploading are elsewhere.
//!
//! What a message can carry:
//! * 1:1 chat, a file: `application/vnd.microsoft.teams.file.download.info` with `content.downloadUrl`, a
//!   short-lived pre-authenticated SharePoint/OneDrive link, and `content.fileType` (the extension);
//! * 1:1 chat, a pasted image: `image/*` (often literally that) with a `contentUrl` on the Connector
//!   (`…/v3/attachments/{id}/views/original`), fetched with the bot token;
//! * a `reference` attachment (a SharePoint link; the Agent User's chats through Graph);
//! * channels and group chats: only the message's HTML (a `text/html` attachment) with an
//!   `<attachment id="…">` tag per file and an `<img itemtype="http://schema.skype.com/AMSImage">` per
//!   pasted image on a host bots cannot read. The bytes are in Graph: the message's attachment with that
//!   id (a SharePoint link) and its hosted contents, read as the Agent User ([`Locator`]);
//! * the Agent User's Graph chats: an inline image is the message's hosted content (its id in the
//!   `<img src="…/hostedContents/{id}/$value">` of the body, kept as a [`HOSTED_CONTENT`] attachment).

use serde::Serialize;
use serde_json::{Value, json};

use crate::activity::Activity;

/// A file in a 1:1 chat, with its pre-authenticated download link.
pub(crate) const DOWNLOAD_INFO: &str = "application/vnd.microsoft.teams.file.download.info";
/// The card that asks a person to accept a file from the bot.
pub(crate) const CONSENT_CARD: &str = "application/vnd.microsoft.teams.card.file.consent";
/// The card that shows an uploaded file.
pub(crate) const INFO_CARD: &str = "application/vnd.microsoft.teams.card.file.info";
/// The invoke that carries the person's answer to a consent card.
pub(crate) const CONSENT_INVOKE: &str = "fileConsent/invoke";
/// The key in `acceptContext`/`declineContext` that names agentgate's pending consent.
pub(crate) const CONTEXT_KEY: &str = "agentgate_consent";
/// An inline image of one of the Agent User's Graph chats (agentgate's own attachment type, on the
/// activities it makes of Graph messages; honoured only on those): `content.hostedContentId`.
pub(crate) const HOSTED_CONTENT: &str = "application/vnd.agentgate.graph.hostedcontent";
/// The `channelId` of the activities agentgate makes of the Agent User's Graph chat messages.
pub(crate) const GRAPH_CHANNEL: &str = "graph";
/// At most this many files are read from one message.
pub(crate) const MAX_FILES: usize = 10;
/// Longest file name kept from an attachment, in characters.
const MAX_NAME_CHARS: usize = 255;

/// Where a file's bytes are, and so how they can be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FileSource {
    /// 1:1 chat: a pre-authenticated SharePoint/OneDrive download link (no token).
    TeamsFile,
    /// 1:1 chat: an inline image on the Connector, fetched with the bot token.
    Image,
    /// A SharePoint/OneDrive link: fetched through Graph as the Agent User.
    Reference,
    /// A file of a channel or group-chat message (an `<attachment id>` tag): through Graph as the Agent
    /// User, the message's attachment with that id.
    MessageFile,
    /// An inline image of a channel or group-chat message, or of a Graph chat message: through Graph as
    /// the Agent User, the message's hosted content.
    HostedImage,
    /// Mentioned in the message without a way to fetch it (a 1:1 chat's HTML, a tag without an id).
    Stub,
}

impl FileSource {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::TeamsFile => "teams_file",
            Self::Image => "image",
            Self::Reference => "reference",
            Self::MessageFile => "message_file",
            Self::HostedImage => "hosted_image",
            Self::Stub => "stub",
        }
    }
}

/// A file a message carries.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AttachedFile {
    pub(crate) source: FileSource,
    /// The file name as sent (untrusted), cut to 255 characters.
    pub(crate) name: Option<String>,
    /// The content type the message declares (from the attachment, or from the file's extension).
    pub(crate) declared_type: String,
    /// The extension Teams names (`fileType`), lower case.
    pub(crate) file_type: Option<String>,
    pub(crate) size: Option<u64>,
    /// Where the bytes are. Never shown to the model or logged: a pre-authenticated link is a credential.
    pub(crate) url: Option<String>,
    /// For [`FileSource::MessageFile`] and [`FileSource::HostedImage`]: what to look for in the Graph
    /// message.
    pub(crate) locator: Option<Locator>,
}

/// What to look for in a message read through Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Locator {
    /// The message's attachment with this id (the `<attachment id>` of the HTML Teams sent the bot).
    Attachment(String),
    /// The message's `nth` inline image (0-based, in document order), with its AMS object id when the
    /// tag names one (`itemid`, or the `/objects/{id}/` of its `src`).
    InlineImage { nth: usize, object_id: Option<String> },
    /// The message's hosted content with this id.
    Hosted(String),
}

impl std::fmt::Debug for AttachedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedFile")
            .field("source", &self.source)
            .field("name", &self.name)
            .field("declared_type", &self.declared_type)
            .field("size", &self.size)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("locator", &self.locator)
            .finish_non_exhaustive()
    }
}

/// A file name as sent (untrusted): trimmed, cut to 255 characters; `None` when empty.
pub(crate) fn file_name(s: &str) -> Option<String> {
    Some(s.trim()).filter(|n| !n.is_empty()).map(|n| cut(n, MAX_NAME_CHARS))
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The extension of a file name, lower case (`report.PDF` → `pdf`).
pub(crate) fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty() && ext.len() <= 10 && ext.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| ext.to_ascii_lowercase())
}

/// The content type of a file extension (`application/octet-stream` for unknown ones).
pub(crate) fn mime_for_extension(ext: &str) -> &'static str {
    match ext.to_ascii_lowercase().as_str() {
        "txt" | "log" | "text" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "yaml" | "yml" => "text/yaml",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// The declared type of a file named `name` with Teams' `fileType`.
pub(crate) fn declared_from(file_type: Option<&str>, name: Option<&str>) -> String {
    let ext = file_type.map(str::to_ascii_lowercase).or_else(|| name.and_then(extension));
    ext.map_or("application/octet-stream", |e| mime_for_extension(&e)).to_owned()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The files an activity carries, in the order of its attachments (at most [`MAX_FILES`]). Cards and the
/// message's own HTML are not files; an HTML stub's `<attachment id>` tags are.
pub(crate) fn attached_files(activity: &Activity) -> Vec<AttachedFile> {
    let Some(list) = activity.extra.get("attachments").and_then(Value::as_array) else { return Vec::new() };
    let from_graph = activity.channel_id.as_deref() == Some(GRAPH_CHANNEL);
    // Channel and group-chat messages are in Graph; a 1:1 chat's (`a:…`) are not readable there.
    let in_graph = !from_graph
        && activity
            .conversation
            .as_ref()
            .and_then(|c| c.conversation_type.as_deref())
            .is_some_and(|t| t.eq_ignore_ascii_case("channel") || t.eq_ignore_ascii_case("groupChat"));
    // The HTML repeats what other attachments carry (a 1:1 chat's files and images).
    let types: Vec<String> = list.iter().map(|a| str_of(a, "contentType").unwrap_or_default().to_ascii_lowercase()).collect();
    let has_files = types.iter().any(|t| t == DOWNLOAD_INFO || t == "reference");
    let has_images = types.iter().any(|t| t.starts_with("image/"));
    let mut html_once = true;
    let mut out = Vec::new();
    for a in list {
        let content_type = str_of(a, "contentType").unwrap_or_default();
        let name = str_of(a, "name").map(|n| cut(n, MAX_NAME_CHARS));
        let content = a.get("content").unwrap_or(&Value::Null);
        if content_type.eq_ignore_ascii_case(DOWNLOAD_INFO) {
            let file_type = str_of(content, "fileType").map(str::to_ascii_lowercase);
            out.push(AttachedFile {
                source: FileSource::TeamsFile,
                declared_type: declared_from(file_type.as_deref(), name.as_deref()),
                name,
                file_type,
                size: content.get("fileSize").or_else(|| content.get("size")).and_then(Value::as_u64),
                url: str_of(content, "downloadUrl").map(str::to_owned),
                locator: None,
            });
        } else if content_type.len() > 6 && content_type[..6].eq_ignore_ascii_case("image/") {
            let Some(url) = str_of(a, "contentUrl") else { continue };
            out.push(AttachedFile {
                source: FileSource::Image,
                declared_type: content_type.to_ascii_lowercase(),
                file_type: name.as_deref().and_then(extension),
                name,
                size: None,
                url: Some(url.to_owned()),
                locator: None,
            });
        } else if content_type.eq_ignore_ascii_case("reference") {
            let Some(url) = str_of(a, "contentUrl") else { continue };
            let file_type = name.as_deref().and_then(extension);
            out.push(AttachedFile {
                source: FileSource::Reference,
                declared_type: declared_from(file_type.as_deref(), name.as_deref()),
                name,
                file_type,
                size: None,
                url: Some(url.to_owned()),
                locator: None,
            });
        } else if content_type.eq_ignore_ascii_case(HOSTED_CONTENT) && from_graph {
            let Some(id) = str_of(content, "hostedContentId") else { continue };
            out.push(AttachedFile {
                source: FileSource::HostedImage,
                declared_type: "image/*".into(),
                file_type: None,
                name,
                size: None,
                url: None,
                locator: Some(Locator::Hosted(id.to_owned())),
            });
        } else if content_type.eq_ignore_ascii_case("text/html")
            && let Some(html) = content.as_str()
            && html_once
        {
            html_once = false;
            for tag in html_files(html) {
                let (source, declared_type, locator) = match tag {
                    HtmlFile::Attachment(_) if has_files => continue,
                    HtmlFile::Image { .. } if has_images => continue,
                    HtmlFile::Attachment(Some(id)) if in_graph => {
                        (FileSource::MessageFile, "application/octet-stream", Some(Locator::Attachment(id)))
                    }
                    HtmlFile::Image { nth, object_id } if in_graph => {
                        (FileSource::HostedImage, "image/*", Some(Locator::InlineImage { nth, object_id }))
                    }
                    HtmlFile::Image { .. } => continue,
                    HtmlFile::Attachment(_) => (FileSource::Stub, "application/octet-stream", None),
                };
                out.push(AttachedFile {
                    source,
                    name: None,
                    declared_type: declared_type.into(),
                    file_type: None,
                    size: None,
                    url: None,
                    locator,
                });
            }
        }
        if out.len() >= MAX_FILES {
            out.truncate(MAX_FILES);
            break;
        }
    }
    out
}

/// A file or image tag of a message's HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HtmlFile {
    /// `<attachment id="…">` (the id, when it has one).
    Attachment(Option<String>),
    /// `<img itemtype="http://schema.skype.com/AMSImage">`: the `nth` such image, its AMS object id.
    Image { nth: usize, object_id: Option<String> },
}

/// The file and pasted-image tags of a Teams message's HTML, in document order (emoji, stickers and
/// other images are not files).
fn html_files(html: &str) -> Vec<HtmlFile> {
    let mut out = Vec::new();
    let mut images = 0;
    for token in html5gum::Tokenizer::new(html).flatten() {
        let html5gum::Token::StartTag(tag) = token else { continue };
        let attr = |name: &str| {
            tag.attributes.get(name.as_bytes()).map(|v| String::from_utf8_lossy(&v.value).trim().to_owned()).filter(|v| !v.is_empty())
        };
        match tag.name.as_slice() {
            b"attachment" => out.push(HtmlFile::Attachment(attr("id").filter(|id| id.len() <= 200))),
            b"img" if attr("itemtype").is_some_and(|t| t.to_ascii_lowercase().ends_with("/amsimage")) => {
                let from_src = attr("src").and_then(|src| {
                    let (_, rest) = src.split_once("/objects/")?;
                    rest.split('/').next().filter(|id| !id.is_empty()).map(str::to_owned)
                });
                let object_id = attr("itemid").or(from_src).filter(|id| id.len() <= 200);
                out.push(HtmlFile::Image { nth: images, object_id });
                images += 1;
            }
            _ => {}
        }
        if out.len() >= MAX_FILES {
            break;
        }
    }
    out
}

/// The consent card that offers `name` (`size` bytes) to the person in a 1:1 chat; both contexts name
/// `consent_id`. Teams answers with a [`CONSENT_INVOKE`].
pub(crate) fn consent_card(name: &str, description: &str, size: u64, consent_id: &str) -> Value {
    let context = json!({ CONTEXT_KEY: consent_id });
    json!({
        "type": "message",
        "attachments": [{
            "contentType": CONSENT_CARD,
            "name": name,
            "content": {
                "description": description,
                "sizeInBytes": size,
                "acceptContext": context,
                "declineContext": context,
            },
        }],
    })
}

/// Where Teams wants the accepted file (`value.uploadInfo` of an accept).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct UploadInfo {
    /// Where the file will be (shown in the file info card).
    pub(crate) content_url: String,
    pub(crate) name: String,
    /// A OneDrive upload session: pre-authenticated, so a credential (never logged).
    pub(crate) upload_url: String,
    pub(crate) unique_id: String,
    pub(crate) file_type: String,
}

impl std::fmt::Debug for UploadInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadInfo").field("name", &self.name).field("unique_id", &self.unique_id).finish_non_exhaustive()
    }
}

/// The person's answer to a consent card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsentAnswer {
    pub(crate) accepted: bool,
    /// agentgate's consent id, from the context (absent when the card was not ours).
    pub(crate) consent_id: Option<String>,
    /// For an accept: where to upload.
    pub(crate) upload: Option<UploadInfo>,
}

/// The answer a `fileConsent/invoke` carries: `value` `{type: "fileUpload", action: "accept" | "decline",
/// context, uploadInfo}` (a decline has no `uploadInfo`). `None` for any other activity, and for an
/// accept without a complete `uploadInfo`.
pub(crate) fn consent_answer(activity: &Activity) -> Option<ConsentAnswer> {
    if activity.kind() != crate::activity::Kind::Invoke || activity.name.as_deref() != Some(CONSENT_INVOKE) {
        return None;
    }
    let value = activity.value.as_ref()?;
    if value.get("type").and_then(Value::as_str).is_some_and(|t| t != "fileUpload") {
        return None;
    }
    let accepted = match value.get("action").and_then(Value::as_str)? {
        "accept" => true,
        "decline" => false,
        _ => return None,
    };
    let consent_id = value.get("context").and_then(|c| str_of(c, CONTEXT_KEY)).map(str::to_owned);
    let upload = if accepted {
        let info = value.get("uploadInfo")?;
        let need = |k: &str| str_of(info, k).map(str::to_owned);
        Some(UploadInfo {
            content_url: need("contentUrl")?,
            name: need("name")?,
            upload_url: need("uploadUrl")?,
            unique_id: need("uniqueId").unwrap_or_default(),
            file_type: need("fileType").unwrap_or_default(),
        })
    } else {
        None
    };
    Some(ConsentAnswer { accepted, consent_id, upload })
}

/// The file info card that shows an uploaded file (its `uploadInfo`).
pub(crate) fn info_card(upload: &UploadInfo) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": INFO_CARD,
            "contentUrl": upload.content_url,
            "name": upload.name,
            "content": {"uniqueId": upload.unique_id, "fileType": upload.file_type},
        }],
    })
}

/// Whether `name` can be a file name in OneDrive and Teams: 1 to 255 characters, no path, no control
/// characters, none of `" * : < > ? / \ |`, not `.` or `..`, not ending in a dot or space.
pub(crate) fn check_file_name(name: &str) -> Result<(), String> {
    let bad = ['"', '*', ':', '<', '>', '?', '/', '\\', '|'];
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err("the file name must be 1 to 255 characters".into());
    }
    if name.chars().any(|c| c.is_control() || bad.contains(&c)) {
        return Err("the file name may not hold control characters or any of \" * : < > ? / \\ |".into());
    }
    if name == "." || name == ".." || name.ends_with('.') || name.ends_with(' ') || name.starts_with(' ') {
        return Err("the file name may not be . or .., nor start with a space or end with a dot or space".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(v: Value) -> Activity {
        serde_json::from_value(v).unwrap()
    }

    /// bots-filesv4: a file in a 1:1 chat, a pasted image (and its HTML sibling), a channel stub.
    #[test]
    fn attachments_become_typed_files() {
        let a = activity(json!({
            "type": "message", "id": "1",
            "attachments": [
                {"contentType": DOWNLOAD_INFO, "contentUrl": "https://contoso-my.sharepoint.com/personal/a/Documents/f.txt", "name": "notes.TXT",
                 "content": {"downloadUrl": "https://contoso-my.sharepoint.com/personal/a/download.aspx?tempauth=SECRET", "uniqueId": "1150D938", "fileType": "txt", "etag": "1"}},
                {"contentType": "image/*", "contentUrl": "https://smba.trafficmanager.net/amer/v3/attachments/0-x/views/original"},
                {"contentType": "text/html", "content": "<div><img src=\"https://asm.skype.com/v1/objects/0-x/views/imgo\"></div>"},
                {"contentType": "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard"}},
                {"contentType": "reference", "contentUrl": "https://contoso.sharepoint.com/sites/t/Shared Documents/r.docx", "name": "r.docx"},
                {"contentType": "image/png"},
            ]
        }));
        let files = attached_files(&a);
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0].source, FileSource::TeamsFile);
        assert_eq!(files[0].name.as_deref(), Some("notes.TXT"));
        assert_eq!(files[0].declared_type, "text/plain");
        assert!(files[0].url.as_deref().unwrap().contains("tempauth"));
        assert!(!format!("{:?}", files[0]).contains("SECRET"), "the link is a credential");
        assert_eq!((files[1].source, files[1].declared_type.as_str()), (FileSource::Image, "image/*"));
        assert_eq!(files[2].source, FileSource::Reference);
        assert_eq!(files[2].declared_type, mime_for_extension("docx"));

        let stub = activity(json!({"type": "message", "attachments": [
            {"contentType": "text/html", "content": "<div>see <attachment id=\"a1\"></attachment> and <attachment id=\"a2\"></attachment></div>"}]}));
        let files = attached_files(&stub);
        assert_eq!(files.iter().map(|f| f.source).collect::<Vec<_>>(), [FileSource::Stub, FileSource::Stub]);
        assert!(attached_files(&activity(json!({"type": "message", "text": "hi"}))).is_empty());
        let many = activity(
            json!({"type": "message", "attachments": vec![json!({"contentType": "reference", "contentUrl": "https://x.sharepoint.com/a"}); 30]}),
        );
        assert_eq!(attached_files(&many).len(), MAX_FILES);
    }

    /// A channel or group-chat message's HTML: each `<attachment id>` is a file and each pasted (AMS) image
    /// an image, both found in Graph; emoji and other pictures are not files; a 1:1 chat's HTML repeats its
    /// real attachments and is not read for tags; the agentgate hosted-content type counts only on
    /// agentgate's own Graph activities.
    #[test]
    fn channel_html_names_files_and_images_graph_finds() {
        let html = concat!(
            "<div>plan <attachment id=\"9f1c\"></attachment> and ",
            "<img alt=\"smile\" src=\"https://statics.teams.cdn.office.net/emoji/smile.png\" itemtype=\"http://schema.skype.com/Emoji\">",
            "<img src=\"https://us-api.asm.skype.com/v1/objects/0-wus-d1-abc/views/imgo\" itemtype=\"http://schema.skype.com/AMSImage\">",
            "<img src=\"https://us-api.asm.skype.com/v1/objects/0-x/views/imgo\" itemid=\"0-wus-d2-def\" itemtype=\"http://schema.skype.com/AMSImage\">",
            "<attachment></attachment></div>"
        );
        let in_kind = |kind: &str| {
            activity(json!({"type": "message", "conversation": {"id": "19:c@thread.tacv2", "conversationType": kind},
                "attachments": [{"contentType": "text/html", "content": html}]}))
        };
        let files = attached_files(&in_kind("channel"));
        let shape: Vec<_> = files.iter().map(|f| (f.source, f.locator.clone())).collect();
        assert_eq!(
            shape,
            [
                (FileSource::MessageFile, Some(Locator::Attachment("9f1c".into()))),
                (FileSource::HostedImage, Some(Locator::InlineImage { nth: 0, object_id: Some("0-wus-d1-abc".into()) })),
                (FileSource::HostedImage, Some(Locator::InlineImage { nth: 1, object_id: Some("0-wus-d2-def".into()) })),
                (FileSource::Stub, None),
            ]
        );
        assert_eq!(attached_files(&in_kind("groupChat")).len(), 4);
        // A 1:1 chat: its HTML is not in Graph (and images come as their own attachments).
        let personal = attached_files(&in_kind("personal"));
        assert_eq!(personal.iter().map(|f| f.source).collect::<Vec<_>>(), [FileSource::Stub, FileSource::Stub]);
        let with_image = activity(json!({"type": "message", "conversation": {"id": "19:c@thread.v2", "conversationType": "groupChat"},
            "attachments": [{"contentType": "image/*", "contentUrl": "https://smba.trafficmanager.net/amer/v3/attachments/0-x/views/original"},
                            {"contentType": "text/html", "content": html}]}));
        assert_eq!(
            attached_files(&with_image).iter().map(|f| f.source).collect::<Vec<_>>(),
            [FileSource::Image, FileSource::MessageFile, FileSource::Stub],
            "the images are the attachment's; the file tags are still files"
        );

        let hosted = json!({"contentType": HOSTED_CONTENT, "content": {"hostedContentId": "aWQ9eA=="}});
        let ours = activity(json!({"type": "message", "channelId": "graph", "attachments": [hosted]}));
        let files = attached_files(&ours);
        assert_eq!((files[0].source, files[0].locator.clone()), (FileSource::HostedImage, Some(Locator::Hosted("aWQ9eA==".into()))));
        let forged = activity(json!({"type": "message", "channelId": "msteams", "attachments": [hosted]}));
        assert!(attached_files(&forged).is_empty(), "only agentgate's own Graph activities carry hosted contents");
    }

    #[test]
    fn consent_answers_are_read_from_the_invoke() {
        let accept = activity(json!({"type": "invoke", "name": CONSENT_INVOKE, "value": {
            "type": "fileUpload", "action": "accept", "context": {CONTEXT_KEY: "fc1"},
            "uploadInfo": {"contentUrl": "https://c-my.sharepoint.com/p/f.txt", "name": "f.txt", "uploadUrl": "https://c-my.sharepoint.com/up?guid=1",
                           "uniqueId": "U1", "fileType": "txt", "etag": "e"}}}));
        let a = consent_answer(&accept).unwrap();
        assert!(a.accepted);
        assert_eq!(a.consent_id.as_deref(), Some("fc1"));
        let up = a.upload.unwrap();
        assert_eq!((up.name.as_str(), up.unique_id.as_str()), ("f.txt", "U1"));
        assert!(!format!("{up:?}").contains("guid"), "the upload URL is a credential");
        let card = info_card(&up);
        assert_eq!(card["attachments"][0]["contentType"], INFO_CARD);
        assert_eq!(card["attachments"][0]["content"], json!({"uniqueId": "U1", "fileType": "txt"}));

        let decline = activity(
            json!({"type": "invoke", "name": CONSENT_INVOKE, "value": {"type": "fileUpload", "action": "decline", "context": {CONTEXT_KEY: "fc1"}}}),
        );
        assert_eq!(consent_answer(&decline), Some(ConsentAnswer { accepted: false, consent_id: Some("fc1".into()), upload: None }));
        // An accept without where to upload, another invoke, another action: not an answer.
        let mut broken = accept.clone();
        broken.value.as_mut().unwrap().as_object_mut().unwrap().remove("uploadInfo");
        assert_eq!(consent_answer(&broken), None);
        assert_eq!(consent_answer(&activity(json!({"type": "invoke", "name": "task/fetch", "value": {}}))), None);
        assert_eq!(consent_answer(&activity(json!({"type": "invoke", "name": CONSENT_INVOKE, "value": {"action": "maybe"}}))), None);
    }

    #[test]
    fn the_consent_card_names_the_consent_in_both_contexts() {
        let c = consent_card("r.pdf", "The report", 1234, "fc9");
        let att = &c["attachments"][0];
        assert_eq!(att["contentType"], CONSENT_CARD);
        assert_eq!(att["content"]["sizeInBytes"], 1234);
        assert_eq!(att["content"]["acceptContext"], json!({CONTEXT_KEY: "fc9"}));
        assert_eq!(att["content"]["declineContext"], att["content"]["acceptContext"]);
    }

    #[test]
    fn file_names() {
        for ok in ["report.pdf", "Q3 numbers (final).xlsx", "日本語.txt", ".env.example"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b.txt", "..", "x:y", "a\u{0}b", "trailing.", " lead", &"x".repeat(256)] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(extension("a.TaR.GZ").as_deref(), Some("gz"));
        assert_eq!(extension(".bashrc"), None);
        assert_eq!(extension("noext"), None);
    }
}
