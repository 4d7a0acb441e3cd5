//! Tributary collector: accepts agent streams, merges them in one task and
//! persists readings; serves queries over gRPC.
//!
//! Data path: `listener` accepts connections under a cap → `server` serves
//! them → `session` (one task per agent stream) validates frames → `merger`
//! (one owner of the store's write side) commits groups and acks → `store`.
//! `query` reads through its own connections.
//!
//! Each module's own doc says what it owns. What each may import:
//!
//! - `model`: the collector's own data types; imports no other module.
//! - `store`: `model` (and `tributary-process` for error text); nothing of
//!   the merger, the network or the wire.
//! - `merger`: `model` and `store` (the write side, which it owns).
//! - `session`: `merger` (through `MergerHandle`), `model` and
//!   `tributary-proto`; it holds no store handle.
//! - `query`: `model`, `store` (the read side) and `tributary-proto`.
//! - `listener` and `tls`: no other module.
//! - `http`: the HTTP listener and its router; `roles`, `tls`, `model` and
//!   the store's read side (never the merger's write side).
//! - `metrics`: `/metrics`; the handles its owners update (atomics) and
//!   the collectors that read `listener`'s counters, the merger's queue
//!   and live agents at scrape time; `model`, `http`'s context type.
//! - `server`: wires `listener`, `tls`, `store`, `merger`, `session`,
//!   `query` and `http` together.
//! - `config`: `tributary-config` (the TOML engine) and the settings types of
//!   `server`, `store` and `tls`.
//! - `export`: `config::exports`, the store's commit log
//!   (`store::export`), `prom_labels`, `metrics`' export handles, `model`;
//!   never the merger.
//! - `cli`: a Query client of its own (`query`'s conversions, `model`,
//!   `tributary-proto`); it shares no state with the server side.
//!
//! Only `session`, `query`, `cli` and `server` touch generated protobuf
//! types.

pub mod cli;
pub mod config;
pub mod export;
pub mod http;
pub mod listener;
pub mod merger;
pub mod metrics;
pub mod model;
pub mod nice;
pub mod prom_labels;
pub mod promql;
pub mod query;
pub mod roles;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
