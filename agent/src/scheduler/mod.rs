//! The scheduler: polls every device on its own interval.
//!
//! Each device gets one task that owns its driver, its series cache and its
//! health, so a slow or dead device only ever delays itself. Two kinds of
//! semaphore bound the polls in flight: one for the whole agent, and one per
//! shared endpoint (a Modbus gateway serving many devices), taken first and
//! held for the endpoint's pause after each poll. Scheduling uses the
//! monotonic clock (tokio's `Instant`); the wall clock only stamps readings.
//!
//! Every scheduled poll has an outcome: ok, timeout, error (each yields
//! readings), or skipped (the previous poll of the device overran its
//! interval), which is counted. Device health is data: every poll adds an
//! `up` reading (1 when the device answered, 0 when it failed or timed out),
//! and a change of state is logged once (down with the cause, up again with
//! how long it was down), not on every failed poll. A device that keeps
//! failing backs off: after `n` failures in a row the next poll waits
//! `interval * 2^(n-1)`, capped at the device's `backoff_max`; the first
//! success returns it to its interval, without a restart.
//!
//! A device brings at most `max_series_per_device` distinct series while
//! the agent runs (`series_limit.rs`); readings of further new series are
//! dropped, counted in [`PollStats::series_dropped`] and in the device's
//! own `series_dropped_total` series, and logged once per device.
//!
//! Lateness (how long after its scheduled time a poll starts, permits
//! included) is recorded in [`PollStats`]; the agent logs it at shutdown.
//! With metrics on, each device task also updates its own handles of
//! [`crate::metrics`] (outcomes, duration, lateness, health, backoff).
//!
//! Owns: the device tasks (`device.rs`: one per device, owning its driver,
//! its series cache and its health), the set of running tasks a reload is
//! applied to by difference (`fleet.rs`), the permits of shared endpoints
//! (`endpoint.rs`), when polls start and how failing devices back off
//! (`timing.rs`), and the outcome counters (`stats.rs`, `histogram.rs`).
//! May touch: drivers through `crate::drivers::Driver` only, readings
//! through `crate::reading`; it hands every poll's readings to the uplink
//! over a bounded channel (`intake.rs`, whose room a reload grows) and
//! knows nothing of the spool or the wire.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DeviceConfig;
use crate::drivers::Driver;
use crate::metrics::SchedulerMetrics;

mod device;
mod endpoint;
mod fleet;
mod histogram;
mod intake;
mod series_limit;
mod stats;
mod timing;

#[cfg(test)]
mod tests;

pub use fleet::{Fleet, FleetDiff, StartError};
pub use histogram::Histogram;
pub use intake::{MAX_ROOM, MIN_ROOM, ReadingsTx, Room, Slot, intake, room_for};
pub use stats::{PollStats, PollSummary};

use self::device::DeviceTask;
use self::endpoint::endpoints;

/// The metric of the health series every device has.
pub const UP_METRIC: &str = "up";

/// The metric of the series a device gets once it has reached
/// `max_series_per_device`: readings dropped because their series was
/// beyond the limit, since the agent started.
pub const SERIES_DROPPED_METRIC: &str = "series_dropped_total";

/// Where the device tasks report their polls: the agent-wide counters
/// (always) and the metric families (when metrics are on).
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub stats: Arc<PollStats>,
    pub metrics: Option<&'a SchedulerMetrics>,
}

/// Starts one task per device on `tracker`, each letting at most
/// `max_series_per_device` distinct series through, and each with its own
/// metric handles when `metrics` is given. Tasks stop at the next
/// scheduled poll after `shutdown` is cancelled; a poll in flight finishes.
pub fn spawn_all(
    devices: Vec<(DeviceConfig, Driver)>,
    max_concurrency: usize,
    max_series_per_device: usize,
    out: impl Into<ReadingsTx>,
    report: Report<'_>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let Report { stats, metrics } = report;
    let out = out.into();
    let permits = Arc::new(Semaphore::new(max_concurrency.max(1)));
    let endpoints = endpoints(devices.iter().map(|(c, _)| c));
    // Every schedule is laid out from this one instant, so devices that
    // draw the same slot share their wake-ups (see [`timing::start_offset`]).
    let start = Instant::now();
    for (config, driver) in devices {
        let endpoint = config
            .driver
            .endpoint()
            .and_then(|l| endpoints.get(&l.key).cloned());
        let device_metrics = metrics.map(|m| m.device(&config.name, config.driver.name()));
        let task = DeviceTask::new(
            config,
            driver,
            max_series_per_device,
            permits.clone(),
            endpoint,
            out.clone(),
            stats.clone(),
        )
        .with_metrics(device_metrics);
        tracker.spawn(task.run(start, false, shutdown.clone()));
    }
}
