//! What the scheduler counts: poll outcomes for the whole agent and how
//! late polls start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Histogram;

/// Poll outcome counters for the whole agent. Written by device tasks with
/// relaxed atomics: they are statistics, not state anyone decides on.
#[derive(Debug, Default)]
pub struct PollStats {
    pub ok: AtomicU64,
    pub timeout: AtomicU64,
    pub error: AtomicU64,
    pub skipped: AtomicU64,
    /// Ticks not polled because the device was backing off after failures.
    pub backed_off: AtomicU64,
    /// Readings dropped because their series was beyond its device's
    /// `max_series_per_device`.
    pub series_dropped: AtomicU64,
    /// How late polls started: from the scheduled time to holding every
    /// permit, just before the driver is called. Every poll but a device's
    /// first.
    pub lateness: Histogram,
    /// The same for the first poll of each device, kept apart: at startup
    /// every device connects at once, and those polls say how the agent
    /// starts, not how it keeps time.
    pub first_lateness: Histogram,
}

impl PollStats {
    /// One line's worth: counts and lateness quantiles (for the shutdown
    /// log).
    pub fn summary(&self) -> PollSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PollSummary {
            ok: get(&self.ok),
            timeout: get(&self.timeout),
            error: get(&self.error),
            skipped: get(&self.skipped),
            backed_off: get(&self.backed_off),
            series_dropped: get(&self.series_dropped),
            lateness_p50: self.lateness.quantile(0.50),
            lateness_p99: self.lateness.quantile(0.99),
            lateness_max: self.lateness.max(),
            first_lateness_p99: self.first_lateness.quantile(0.99),
            first_lateness_max: self.first_lateness.max(),
        }
    }
}

/// A snapshot of [`PollStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSummary {
    pub ok: u64,
    pub timeout: u64,
    pub error: u64,
    pub skipped: u64,
    pub backed_off: u64,
    pub series_dropped: u64,
    /// Upper bound of the bucket holding the median lateness.
    pub lateness_p50: Duration,
    pub lateness_p99: Duration,
    /// Exact.
    pub lateness_max: Duration,
    /// Of first polls only.
    pub first_lateness_p99: Duration,
    pub first_lateness_max: Duration,
}
