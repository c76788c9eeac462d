//! MAOSIC cloud server. The binary in `main.rs` is a thin command-line shell over these modules,
//! grouped by concern (see ARCHITECTURE.md for the map):
//!
//! - [`api`]: what users and operators call — GraphQL, exports, the portal, the operator API;
//! - [`agents`]: the labs' side — the agent gateway, SSH tunnels, command dispatch, live readings;
//! - [`engine`]: the closed loop — campaigns' asks, dispatch and tells;
//! - [`auth`]: accounts' proofs — passwords, tokens, sessions, throttles, account mail;
//! - [`storage`]: the storage ports and their SQL implementation.
//!
//! The rest is the process around them: configuration, shared state, events, metrics, TLS.

pub mod admin;
pub mod agents;
pub mod api;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod engine;
pub mod events;
pub mod metrics;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod time;
pub mod tls;
