//! agentgate: gives an LLM agent a real seat in Microsoft Teams.
//!
//! The crate is organised by concern (see `docs/architecture.md`):
//! [`activity`] holds the Bot Framework wire types, [`auth`] validates inbound tokens,
//! [`inbound`] is the `/api/messages` pipeline, [`store`] is the durable state,
//! [`server`] wires it all into a running HTTP(S) server and [`cli`] is the command line.
//!
//! Only what the binary, the integration tests and the examples use is public; everything else is
//! `pub(crate)` (the `unreachable_pub` lint keeps it so).

#![warn(unreachable_pub)]

pub(crate) mod activity;
pub(crate) mod auth;
pub(crate) mod bridge;
pub mod cli;
pub mod config;
pub(crate) mod connector;
pub(crate) mod doctor;
pub mod entra;
pub mod graph;
pub(crate) mod http_util;
pub mod ids;
pub(crate) mod inbound;
pub mod mcp;
pub mod metrics;
pub mod secrets;
pub mod server;
pub(crate) mod service_url;
pub mod store;
pub(crate) mod teams;
pub mod teams_app;
pub(crate) mod telemetry;
