//! Test support for Tributary: device simulators that tests (and the demo)
//! poll, and helpers to run the real `tributary-collector` and
//! `tributary-agent` binaries as child processes.
//!
//! Every simulator follows one pattern: a builder takes an already bound
//! listener (tests bind `127.0.0.1:0`), spawns the server on the current tokio
//! runtime and returns a `Listening` handle with the bound address, request
//! counters and a `stop()` that shuts the server down and re-raises a panic of
//! its task. What a simulator serves is a pure function of the request number
//! (HTTP) or a fixed register map (Modbus), so a test can compare what was
//! stored against what was served.
//!
//! - [`http_sim`]: a small HTTP/1.1 server with keep-alive: `/meter` (JSON),
//!   `/metrics` (Prometheus text), `/error` (500), `/garbage` (invalid JSON).
//! - [`modbus_sim`]: a Modbus TCP server with known holding and input
//!   registers, and exceptions for everything else.
//! - [`peers`]: real device peers not written here (snmpd, node exporter,
//!   pymodbus, Mosquitto), found or installed by `cargo xtask test`.
//! - [`browser`]: a headless Chromium driven through playwright-core, for
//!   the fleet page.
//! - [`process`]: locate the built binaries, spawn and stop them, wait for a
//!   port, allocate free ports and per-test temporary directories.

pub mod browser;
pub mod cluster;
pub mod http_sim;
pub mod modbus_sim;
pub mod peers;
pub mod process;
pub mod promql_data;
pub mod proxy;

pub use http_sim::{HttpListening, HttpSim};
pub use modbus_sim::{ModbusListening, ModbusSim};
pub use process::{Proc, TestDir};
