//! Tributary agent: polls devices on an edge host and streams readings to a
//! collector.
//!
//! Data path: `scheduler` (one task per device, each owning its driver from
//! `drivers`) → bounded channel → `uplink` (one task owning the open batch,
//! the `spool` of sealed batches on disk and the stream to a collector).
//!
//! Each module's own doc says what it owns. What each may import:
//!
//! - `reading`: the agent's own data types; imports no other module.
//! - `config`: what the keys mean; `tributary-config` (the TOML engine), each
//!   driver's settings through the registry in `drivers`, and
//!   `tributary-proto`'s wire limits (nothing else of the wire).
//! - `drivers`: `config` (the engine's re-exports) and `reading`.
//! - `metrics`: the agent's metric names and handles; `tributary-process`'s
//!   metrics module and `prometheus-client`, no other module of the agent.
//! - `scheduler` and `check`: `config` (`DeviceConfig`), `drivers` (through
//!   `Driver`), `reading`, and (`scheduler`) `metrics`; neither knows of the
//!   spool or the wire.
//! - `spool`: `reading` only (the series keys of its dictionary).
//! - `tls`: `config` (`TlsConfig`).
//! - `uplink`: `config`, `reading`, `spool`, `tls`, `metrics` and `tributary-proto` (it
//!   is the agent's only gRPC edge), and `tributary-process` for error
//!   chains.
//!
//! The binary (`main.rs`) wires them together with `tributary-process`
//! (signals, logs).

pub mod check;
pub mod config;
pub mod drivers;
pub mod metrics;
pub mod reading;
pub mod scheduler;
pub mod spool;
pub mod tls;
pub mod uplink;
