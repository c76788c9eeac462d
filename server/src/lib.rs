//! MAOSIC cloud server: GraphQL API, storage, agent gateway. The binary in `main.rs` is a thin
//! command-line shell over these modules.

pub mod admin;
pub mod app;
pub mod auth;
pub mod campaign;
pub mod commands;
pub mod config;
pub mod demo;
pub mod events;
pub mod export;
pub mod forwarded;
pub mod gateway;
pub mod graphql;
pub mod mail;
pub mod metrics;
pub mod operator;
pub mod portal;
pub mod readings;
pub mod session_cookie;
pub mod ssh;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tls;
