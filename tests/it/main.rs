//! Integration tests: each test spawns the real `agentgate` binary on 127.0.0.1:0 against strict
//! local fakes of Microsoft's services. One test binary, a module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_calendar;
mod fake_connector;
mod fake_entra;
mod fake_entra_agent;
mod fake_graph;
mod fake_graph_provision;
mod helpers;
mod mcp_host;

mod agent_id;
mod agent_tokens;
mod agentic;
mod auth;
mod calendar;
mod cli;
mod connector;
mod doctor;
mod durability;
mod entra;
mod files;
mod graph;
mod graph_inbound;
mod intake;
mod keys;
mod mail;
mod mcp;
mod mcp_agent;
mod mcp_claims;
mod mcp_http;
mod mcp_relay;
mod postgres;
mod protocol;
mod security;
mod streams;
mod targeted;
mod teams_app;
mod threads;
mod tls;
mod token_cli;
