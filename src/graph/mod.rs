//! Microsoft Graph as the Entra Agent User: chats, messages, members and users (v1.0).

pub mod endpoint;

pub use endpoint::{DEFAULT_GRAPH_BASE, GRAPH_HOSTS, GraphEndpoint, GraphUrlError, odata_string};
