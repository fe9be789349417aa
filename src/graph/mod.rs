//! Microsoft Graph (v1.0) as the Entra Agent User: chats, chat messages, members and users; the calendar
//! ([`calendar`]).
//!
//! * [`GraphEndpoint`]: the API base and the host allow-list every URL passes before the bearer token
//!   is attached (`@odata.nextLink` included).
//! * [`GraphClient`]: the operations, with 429 (`Retry-After`) and 401 (one refresh) handling and
//!   classified errors ([`GraphError::kind`]).
//! * [`MessageBody`]: HTML bodies with escaping, `<at>` mentions and Adaptive Card attachments.
//! * [`model`]: the resources returned.
//! * [`TenantResolver`]: a cross-tenant member's home tenant from their email domain.

pub mod calendar;
pub mod client;

pub mod message;
pub mod model;
pub mod tenant;

pub use crate::ids::graph_url::{DEFAULT_GRAPH_BASE, GRAPH_HOSTS, GraphEndpoint, GraphUrlError, odata_string};
pub use client::{AgentIdentityToken, GraphClient, GraphError, GraphErrorKind, GraphSettings, GraphToken};
pub use message::{ADAPTIVE_CARD, MAX_MESSAGE_CHARS, Mention, MessageBody, escape_html, html_to_text, text_to_html};
pub use model::{Chat, ChatMember, ChatMessage, ConversationMember, IdentitySet, ItemBody, NewChat, Page, User};
pub use tenant::{TenantLookupError, TenantResolver};
