//! agentgate: gives an LLM agent a real seat in Microsoft Teams.
//!
//! The crate is organised by concern (see `docs/architecture.md`):
//! [`activity`] holds the Bot Framework wire types, [`auth`] validates inbound tokens,
//! [`inbound`] is the `/api/messages` pipeline, [`store`] is the durable state,
//! [`server`] wires it all into a running HTTP(S) server and [`cli`] is the command line.

pub mod activity;
pub mod auth;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod connector;
pub mod doctor;
pub mod entra;
pub mod graph;
pub mod http_util;
pub mod ids;
pub mod inbound;
pub mod mcp;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod service_url;
pub mod store;
pub mod teams;
pub mod teams_app;
pub mod telemetry;
