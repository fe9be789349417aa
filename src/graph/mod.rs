//! Microsoft Graph (v1.0) as the Entra Agent User: chats, chat messages, members, users, its mailbox
//! ([`mail`]), its files ([`drive`]) and its calendar ([`calendar`]).
//!
//! * [`GraphEndpoint`]: the API base and the host allow-list every URL passes before the bearer token
//!   is attached (`@odata.nextLink` included).
//! * [`GraphClient`]: the operations, with 429 (`Retry-After`) and 401 (one refresh) handling and
//!   classified errors ([`GraphError::kind`]).
//! * [`MessageBody`]: HTML bodies with escaping, `<at>` mentions and Adaptive Card attachments.
//! * [`model`]: the resources returned.
//! * [`mail`]: the mailbox: the Inbox's delta query, attachment lists, reply, forward, send, drafts.
//! * [`TenantResolver`]: a cross-tenant member's home tenant from their email domain.
//! * [`drive`]: the Agent User's files (OneDrive, SharePoint sites): items, listings, search, content,
//!   uploads, sharing links.
//! * [`FileTransfer`]: bytes to and from SharePoint without a token (pre-authenticated downloads,
//!   upload sessions), only to [`FileHosts`].

pub mod calendar;
pub mod client;

pub mod drive;
pub mod mail;
pub mod message;
pub mod model;
pub mod tenant;
pub mod transfer;

pub use crate::ids::file_url::{FILE_HOST_SUFFIXES, FileHosts, FileUrlError};
pub use crate::ids::graph_url::{DEFAULT_GRAPH_BASE, GRAPH_HOSTS, GraphEndpoint, GraphUrlError, odata_string};
pub use client::{AgentIdentityToken, GraphClient, GraphError, GraphErrorKind, GraphSettings, GraphToken, MessageAt};
pub use drive::{Conflict, Content, Drive, DriveItem, Item, Link, NewLink, Site, UploadSession};
pub use mail::{Attachment, DeltaPage, MailMessage, OutgoingMail, Recipient};
pub use message::{ADAPTIVE_CARD, MAX_MESSAGE_CHARS, Mention, MessageBody, escape_html, html_to_text, text_to_html};
pub use model::{Chat, ChatMember, ChatMessage, ConversationMember, IdentitySet, ItemBody, NewChat, Page, User};
pub use tenant::{TenantLookupError, TenantResolver};
pub use transfer::{Downloaded, FileTransfer, TransferError};
