//! Files as the Agent User (Graph v1.0 `driveItem`): its OneDrive (`/me/drive`) and the SharePoint sites it
//! can reach (`/sites/{id}/drive`): metadata, listings, search, content (a redirect to a pre-authenticated
//! download, checked and fetched by [`super::transfer`]), uploads (a small `PUT …/content`, or an upload
//! session for larger files), sharing links (`createLink`), and items behind a sharing URL (`/shares/{id}`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::{Answer, Body, GraphClient, GraphError, non_empty, parse};
use crate::http_util::path_segment as segment;

/// Files up to this size go up in one `PUT …/content`; larger ones through an upload session.
pub const SMALL_UPLOAD_MAX: usize = 4 * 1024 * 1024;

/// Which drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// The Agent User's OneDrive.
    Me,
    /// A SharePoint site's default document library (the site id as Graph gives it).
    Site(String),
}

/// Which item of a drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Root,
    /// By id.
    Id(String),
    /// By path from the drive's root (`Reports/q3.docx`).
    Path(String),
}

/// A driveItem (the fields agentgate uses).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriveItem {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default)]
    pub e_tag: Option<String>,
    #[serde(default)]
    pub last_modified_date_time: Option<String>,
    #[serde(default)]
    pub file: Option<FileFacet>,
    #[serde(default)]
    pub folder: Option<FolderFacet>,
    #[serde(default)]
    pub parent_reference: Option<ItemReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileFacet {
    #[serde(default)]
    pub mime_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FolderFacet {
    #[serde(default)]
    pub child_count: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemReference {
    #[serde(default)]
    pub drive_id: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

/// A SharePoint site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Graph redirected to a pre-authenticated download (not followed here: check it, then fetch it
    /// without a token).
    Redirect(String),
    /// Graph sent the bytes itself.
    Bytes { bytes: Vec<u8>, content_type: Option<String> },
}

/// A sharing link to create (`createLink`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLink {
    /// `view` or `edit`.
    pub kind: String,
    /// `users` (only the recipients), `organization` or `anonymous`.
    pub scope: String,
    /// The people, by email or object id (for scope `users`).
    pub recipients: Vec<String>,
}

/// A created sharing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub web_url: String,
    pub kind: String,
    pub scope: String,
}

/// An upload session (`createUploadSession`): its pre-authenticated `uploadUrl` is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadSession {
    pub upload_url: String,
    pub expiration: Option<String>,
}

impl std::fmt::Debug for UploadSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSession").field("expiration", &self.expiration).finish_non_exhaustive()
    }
}

/// What to do when the name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Conflict {
    /// Keep both: the new file gets another name.
    #[default]
    Rename,
    Replace,
    Fail,
}

impl Conflict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rename => "rename",
            Self::Replace => "replace",
            Self::Fail => "fail",
        }
    }
}

/// A drive path as URL path segments: each part percent-encoded, empty parts and `.`/`..` refused.
fn path_of(path: &str) -> Result<String, GraphError> {
    let parts: Vec<&str> = path.trim().trim_matches('/').split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(GraphError::Invalid(format!("`{path}` is not a drive path (parts separated by /, no empty, . or .. parts)")));
    }
    Ok(parts.iter().map(|p| segment(p)).collect::<Vec<_>>().join("/"))
}

fn drive_base(drive: &Drive) -> Result<String, GraphError> {
    Ok(match drive {
        Drive::Me => "/me/drive".to_owned(),
        Drive::Site(id) => format!("/sites/{}/drive", segment(non_empty("site id", id)?)),
    })
}

/// The item's URL path (`/me/drive/root`, `/me/drive/items/{id}`, `/me/drive/root:/a/b.txt:`), and
/// what to append for an action on it: `/` after an id or the root, nothing after a `…:` path (Graph
/// takes `root:/a/b.txt:/content`).
fn item_path(drive: &Drive, item: &Item) -> Result<String, GraphError> {
    let base = drive_base(drive)?;
    Ok(match item {
        Item::Root => format!("{base}/root"),
        Item::Id(id) => format!("{base}/items/{}", segment(non_empty("item id", id)?)),
        Item::Path(p) => format!("{base}/root:/{}:", path_of(p)?),
    })
}

/// A sharing URL as Graph's share id: `u!` and the URL in unpadded base64url.
pub fn share_id(url: &str) -> String {
    format!("u!{}", URL_SAFE_NO_PAD.encode(url.trim().as_bytes()))
}

const ITEM_SELECT: &str = "id,name,size,webUrl,eTag,lastModifiedDateTime,file,folder,parentReference";

impl GraphClient {
    /// An item's metadata.
    pub async fn drive_item(&self, drive: &Drive, item: &Item) -> Result<DriveItem, GraphError> {
        self.get(self.url(&item_path(drive, item)?, &[("$select", ITEM_SELECT)])?).await
    }

    /// A folder's children, at most `max`.
    pub async fn drive_children(&self, drive: &Drive, folder: &Item, max: usize) -> Result<Vec<DriveItem>, GraphError> {
        let top = max.clamp(1, 200).to_string();
        let url = self.url(&format!("{}/children", item_path(drive, folder)?), &[("$top", &top), ("$select", ITEM_SELECT)])?;
        self.collect(url, max).await
    }

    /// Items of a drive whose name, content or metadata match `query` (`…/root/search(q='…')`), at most `max`.
    pub async fn drive_search(&self, drive: &Drive, query: &str, max: usize) -> Result<Vec<DriveItem>, GraphError> {
        let q = non_empty("search text", query)?.replace('\'', "''");
        let top = max.clamp(1, 200).to_string();
        let path = format!("{}/root/search(q='{}')", drive_base(drive)?, segment(&q));
        self.collect(self.url(&path, &[("$top", &top), ("$select", ITEM_SELECT)])?, max).await
    }

    /// SharePoint sites whose name matches `query` (`GET /sites?search=`), at most `max`.
    pub async fn find_sites(&self, query: &str, max: usize) -> Result<Vec<Site>, GraphError> {
        let q = non_empty("search text", query)?;
        self.collect(self.url("/sites", &[("search", q), ("$select", "id,displayName,name,webUrl")])?, max).await
    }

    /// Where an item's bytes are: Graph answers `…/content` with a redirect to a pre-authenticated
    /// download (returned, not followed), or with the bytes (at most `limit`).
    pub async fn drive_content(&self, drive: &Drive, item: &Item, limit: usize) -> Result<Content, GraphError> {
        let url = self.url(&format!("{}/content", item_path(drive, item)?), &[])?;
        self.content_at(url, limit).await
    }

    /// The item a sharing URL points at (`GET /shares/{share id}/driveItem`).
    pub async fn shared_item(&self, sharing_url: &str) -> Result<DriveItem, GraphError> {
        let id = share_id(non_empty("sharing URL", sharing_url)?);
        self.get(self.url(&format!("/shares/{}/driveItem", segment(&id)), &[("$select", ITEM_SELECT)])?).await
    }

    /// Where the bytes of the item behind a sharing URL are (`/shares/{id}/driveItem/content`).
    pub async fn shared_content(&self, sharing_url: &str, limit: usize) -> Result<Content, GraphError> {
        let id = share_id(non_empty("sharing URL", sharing_url)?);
        self.content_at(self.url(&format!("/shares/{}/driveItem/content", segment(&id)), &[])?, limit).await
    }

    pub(super) async fn content_at(&self, url: url::Url, limit: usize) -> Result<Content, GraphError> {
        let reply = self.call_with(Method::GET, url, Body::None, true, Answer { redirect: true, limit, prefer: &[] }).await?;
        if (300..=399).contains(&reply.status) {
            return reply
                .location
                .map(Content::Redirect)
                .ok_or_else(|| GraphError::BadResponse(format!("HTTP {} without a Location", reply.status)));
        }
        Ok(Content::Bytes { bytes: reply.bytes, content_type: reply.content_type })
    }

    /// A small file into a folder of the drive (`PUT …/root:/{path}:/content`), at most [`SMALL_UPLOAD_MAX`]
    /// bytes. Replacing the same bytes twice is harmless, so a lost answer may be retried only when the
    /// conflict behaviour is `replace`.
    pub async fn upload_small(&self, drive: &Drive, path: &str, bytes: &[u8], conflict: Conflict) -> Result<DriveItem, GraphError> {
        if bytes.len() > SMALL_UPLOAD_MAX {
            return Err(GraphError::Invalid(format!("a single upload takes at most {SMALL_UPLOAD_MAX} bytes: use an upload session")));
        }
        let url = self.url(
            &format!("{}/root:/{}:/content", drive_base(drive)?, path_of(path)?),
            &[("@microsoft.graph.conflictBehavior", conflict.as_str())],
        )?;
        let limit = 1024 * 1024;
        let body = Body::Bytes(bytes, "application/octet-stream");
        let reply =
            self.call_with(Method::PUT, url, body, conflict == Conflict::Replace, Answer { redirect: false, limit, prefer: &[] }).await?;
        parse(&reply.bytes)
    }

    /// An upload session for a larger file at `path` (`POST …/root:/{path}:/createUploadSession`). Its
    /// `uploadUrl` takes the bytes without a token ([`super::transfer::FileTransfer::upload`]).
    pub async fn create_upload_session(&self, drive: &Drive, path: &str, conflict: Conflict) -> Result<UploadSession, GraphError> {
        let url = self.url(&format!("{}/root:/{}:/createUploadSession", drive_base(drive)?, path_of(path)?), &[])?;
        let body = json!({"item": {"@microsoft.graph.conflictBehavior": conflict.as_str()}});
        // A second session is harmless (an unused one expires), so a lost answer may be retried.
        let v: Value = self.send_json(Method::POST, url, Some(&body), true).await?;
        let upload_url = v.get("uploadUrl").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let upload_url = upload_url.ok_or_else(|| GraphError::BadResponse("the upload session has no uploadUrl".into()))?;
        Ok(UploadSession { upload_url, expiration: v.get("expirationDateTime").and_then(Value::as_str).map(str::to_owned) })
    }

    /// A sharing link for an item (`POST …/items/{id}/createLink`); with scope `users`, only the
    /// recipients (by email, or object id for a GUID) can use it. Never re-posted after it may have landed.
    pub async fn create_link(&self, drive: &Drive, item_id: &str, link: &NewLink) -> Result<Link, GraphError> {
        let url = self.url(&format!("{}/createLink", item_path(drive, &Item::Id(item_id.to_owned()))?), &[])?;
        let mut body = json!({"type": link.kind, "scope": link.scope});
        if !link.recipients.is_empty() {
            let recipients: Vec<Value> =
                link.recipients.iter().map(|r| if crate::ids::is_guid(r) { json!({"objectId": r}) } else { json!({"email": r}) }).collect();
            body["recipients"] = Value::Array(recipients);
        }
        let v: Value = self.send_json(Method::POST, url, Some(&body), false).await?;
        let web_url = v.pointer("/link/webUrl").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let web_url = web_url.ok_or_else(|| GraphError::BadResponse("the permission has no link.webUrl".into()))?;
        let field = |k: &str, default: &str| v.pointer(&format!("/link/{k}")).and_then(Value::as_str).unwrap_or(default).to_owned();
        Ok(Link { web_url, kind: field("type", &link.kind), scope: field("scope", &link.scope) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_paths() {
        assert_eq!(item_path(&Drive::Me, &Item::Root).unwrap(), "/me/drive/root");
        assert_eq!(item_path(&Drive::Me, &Item::Id("01AB".into())).unwrap(), "/me/drive/items/01AB");
        assert_eq!(item_path(&Drive::Me, &Item::Path("/Reports/Q3 #1?.txt".into())).unwrap(), "/me/drive/root:/Reports/Q3%20%231%3F.txt:");
        assert_eq!(
            item_path(&Drive::Site("contoso.sharepoint.com,1,2".into()), &Item::Root).unwrap(),
            "/sites/contoso.sharepoint.com%2C1%2C2/drive/root"
        );
        for bad in ["", "a//b", "../etc", "a/./b"] {
            assert!(item_path(&Drive::Me, &Item::Path(bad.into())).is_err(), "{bad}");
        }
    }

    #[test]
    fn share_ids_are_unpadded_base64url() {
        // learn.microsoft.com "Accessing shared items": base64url, no padding, `u!` prefix.
        assert_eq!(
            share_id("https://onedrive.live.com/redir?resid=1231244193912!12&authKey=1201919!12921!1"),
            "u!aHR0cHM6Ly9vbmVkcml2ZS5saXZlLmNvbS9yZWRpcj9yZXNpZD0xMjMxMjQ0MTkzOTEyITEyJmF1dGhLZXk9MTIwMTkxOSExMjkyMSEx"
        );
    }
}
