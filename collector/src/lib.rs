//! Tributary collector: accepts agent streams, merges them in one task and
//! persists readings; serves queries over gRPC.
//!
//! Data path: `server` accepts connections → `session` (one task per agent
//! stream) validates frames → `merger` (one owner of the store's write side)
//! commits groups and acks → `store`. `query` reads through its own
//! connections.

pub mod cli;
pub mod config;
pub mod listener;
pub mod merger;
pub mod model;
pub mod query;
pub mod roles;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
