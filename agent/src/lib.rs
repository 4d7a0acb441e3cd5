//! Tributary agent: polls devices on an edge host and streams readings to a
//! collector.
//!
//! Data path: `scheduler` (one task per device, each owning its `drivers`
//! instance) → bounded channel → `uplink` (owns the buffer of unacked batches
//! and the stream to the collector).

pub mod check;
pub mod config;
pub mod drivers;
pub mod reading;
pub mod scheduler;
pub mod spool;
pub mod tls;
pub mod uplink;
