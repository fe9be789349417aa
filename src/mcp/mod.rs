//! The MCP bridge: the local LLM host sees Teams and acts in it.
//!
//! | module | what |
//! |---|---|
//! | [`session`] | one MCP session: the tools, channel push, the permission relay's host side |
//! | [`http`] | Streamable HTTP at `/mcp`: bearer tokens, scopes, allowed hosts |
//! | [`connect`] | `agentgate mcp --connect URL`: stdio to a running gateway's `/mcp` |
//! | [`graph_tools`] | the `graph_*` tools of the bot's Entra Agent User (the work is in [`crate::bridge::graph`]) |
//! | [`file_tools`] | `get_file`, `send_file`, and the Agent User's `graph_*` file tools (the work is in [`crate::bridge::files`]) |
//! | [`mail_tools`] | the `mail_*` tools: the Agent User's mail (the work is in [`crate::bridge::mail`]) |
//! | [`calendar_tools`] | the `calendar_*` tools: the Agent User's calendar (the work is in [`crate::bridge::calendar`]) |
//! | [`prompts`] | the body prompt compiled into the binary |
//!
//! A thin adapter: parameter structs, handlers that call the transport-free core in [`crate::bridge`]
//! (routing, policy, approvals, delivery) and turn its results and errors into tool results.

/// What a tool returns: its result, or a tool error the model can act on (rmcp sends an `Err` as a
/// result with `isError: true`).
type ToolResult = Result<rmcp::model::CallToolResult, ToolError>;

/// A tool error: the message the model sees. Every bridge error converts into one, so handlers use `?`.
#[derive(Debug)]
pub(crate) struct ToolError(String);

impl rmcp::model::IntoContents for ToolError {
    fn into_contents(self) -> Vec<rmcp::model::ContentBlock> {
        vec![rmcp::model::ContentBlock::text(self.0)]
    }
}

impl From<crate::bridge::Error> for ToolError {
    fn from(e: crate::bridge::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<String> for ToolError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for ToolError {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// A tool error the model can act on.
fn fail(message: impl Into<String>) -> ToolResult {
    Err(ToolError(message.into()))
}

/// A tool result: JSON, as structured content and as text.
fn ok(value: serde_json::Value) -> ToolResult {
    Ok(rmcp::model::CallToolResult::structured(value))
}

pub mod calendar_tools;
pub mod connect;
pub mod file_tools;
pub mod graph_tools;
pub mod http;
pub mod mail_tools;
pub mod prompts;
pub mod session;

pub use crate::bridge::{Approvals, Hub, Scope};
pub use session::Bridge;
