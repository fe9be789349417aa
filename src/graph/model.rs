//! Graph resources as the client returns them (only the fields agentgate uses; unknown fields ignored).

use serde::{Deserialize, Serialize};

/// A chat (`GET /chats/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub id: String,
    /// `oneOnOne`, `group` or `meeting`.
    #[serde(default)]
    pub chat_type: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub created_date_time: Option<String>,
    #[serde(default)]
    pub last_updated_date_time: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
}

/// Who sent a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub user_identity_type: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// The sender of a message: a user or an application (bot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySet {
    #[serde(default)]
    pub user: Option<Identity>,
    #[serde(default)]
    pub application: Option<Identity>,
}

/// A message body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    /// `html` or `text`.
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub content: String,
}

/// A chat message (`GET /chats/{id}/messages/{id}`). The body is untrusted text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: String,
    #[serde(default)]
    pub chat_id: Option<String>,
    /// `message`, `systemEventMessage`…
    #[serde(default)]
    pub message_type: Option<String>,
    #[serde(default)]
    pub created_date_time: Option<String>,
    #[serde(default)]
    pub last_modified_date_time: Option<String>,
    #[serde(default)]
    pub deleted_date_time: Option<String>,
    #[serde(default)]
    pub from: Option<IdentitySet>,
    #[serde(default)]
    pub body: ItemBody,
    #[serde(default)]
    pub mentions: Vec<serde_json::Value>,
    #[serde(default)]
    pub attachments: Vec<serde_json::Value>,
}

/// A chat member (`GET /chats/{id}/members`). `email` is empty for federated users.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationMember {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The AAD object id.
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// A user (`GET /users/{id | upn}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    /// `Member` or `Guest` (may be null; guests' UPNs contain `#EXT#`).
    #[serde(default)]
    pub user_type: Option<String>,
}

impl User {
    /// A B2B guest of the Agent User's tenant (`userType` Guest, or, when that is null, an `#EXT#` UPN):
    /// chats with them bind their email with their home tenant, not this object id.
    pub fn is_guest(&self) -> bool {
        match self.user_type.as_deref() {
            Some(t) => t.eq_ignore_ascii_case("guest"),
            None => self.user_principal_name.as_deref().is_some_and(|u| u.to_ascii_uppercase().contains("#EXT#")),
        }
    }
}

/// One page of a collection; `next_link` has passed the host allow-list when it is followed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

/// Someone to put in a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatMember {
    /// A user of the Agent User's tenant, by object id or UPN.
    InTenant(String),
    /// A user of another tenant (B2B guest or federated): bound by email with their **home** tenant
    /// (binding a guest object id instead makes a chat that never shows).
    External {
        /// The user's email (their UPN in their home tenant).
        email: String,
        /// The home tenant id.
        tenant_id: String,
    },
}

/// A chat to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewChat {
    /// A 1:1 chat of the Agent User with someone (Graph returns the existing one if there is one).
    OneOnOne(ChatMember),
    /// A group chat of the Agent User with at least two others. Not idempotent.
    Group {
        /// The chat's name.
        topic: Option<String>,
        /// The others.
        members: Vec<ChatMember>,
    },
}
