//! The MCP bridge: the local LLM host sees Teams and acts in it.
//!
//! | module | what |
//! |---|---|
//! | [`bridge`] | one MCP session: the tools, channel push, the permission relay's host side |
//! | [`http`] | Streamable HTTP at `/mcp`: bearer tokens, scopes, allowed hosts |
//! | [`connect`] | `agentgate mcp --connect URL`: stdio to a running gateway's `/mcp` |
//! | [`gate`] | intake's side: policy before the commit, approval answers, waking sessions |
//! | [`agent`], [`graph_tools`] | the bot's Entra Agent User: Graph tools, owner approvals, fallback |
//! | [`approval`] | permission requests waiting for an approver in Teams |
//! | [`envelope`] | untrusted text for the model: HTML to text, the marked envelope, meta values |
//! | [`events`] | inbox entries as typed events |
//! | [`policy`] | who may reach the agent, per bot |
//! | [`live`] | streamed replies written while the model writes them |
//! | [`prompts`] | the body prompt compiled into the binary |
//!
//! Every session of every transport shares one [`Hub`]: the configuration, the store, the outbound
//! worker and the open approval requests. A session sees and acts only within its [`Scope`].

/// What a tool returns: its result, or a protocol error (bad arguments are tool errors, see [`fail`]).
type ToolResult = Result<rmcp::model::CallToolResult, rmcp::ErrorData>;

/// A tool error the model can act on.
fn fail(message: impl Into<String>) -> ToolResult {
    Ok(rmcp::model::CallToolResult::error(vec![rmcp::model::ContentBlock::text(message.into())]))
}

/// A tool result: JSON, as structured content and as text.
fn ok(value: serde_json::Value) -> ToolResult {
    Ok(rmcp::model::CallToolResult::structured(value))
}

/// The value, or return the error as a tool error.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return fail(e),
        }
    };
}

pub mod connect;
pub mod graph_tools;
pub mod http;
pub mod prompts;
pub mod session;

pub use crate::bridge::{Approvals, Hub, Scope};
pub use session::Bridge;

