//! The scheduler's metrics: polls by device and outcome, device health and
//! backoff, readings produced and dropped at the series limit, and poll
//! duration and lateness by driver.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tributary_process::metrics::Histogram;

/// One label.
type Label1 = [(&'static str, String); 1];
/// Two labels.
type Label2 = [(&'static str, String); 2];
/// A histogram family (the constructor picks the duration buckets).
type HistogramFamily = Family<Label1, Histogram, fn() -> Histogram>;

/// What became of a scheduled poll (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device answered.
    Ok,
    /// The device did not answer within its timeout.
    Timeout,
    /// The poll failed (refused, bad answer, ...).
    Error,
    /// Not polled: the previous poll of the device overran its interval.
    Skipped,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Timeout,
        Outcome::Error,
        Outcome::Skipped,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// The scheduler's metric families (shared by the device tasks, which each
/// take their handles once through [`SchedulerMetrics::device`]).
#[derive(Debug)]
pub struct SchedulerMetrics {
    polls: Family<Label2, Counter>,
    up: Family<Label1, Gauge>,
    backoff: Family<Label1, Gauge<f64, AtomicU64>>,
    readings: Family<Label1, Counter>,
    series_dropped: Counter,
    duration: HistogramFamily,
    lateness: HistogramFamily,
}

impl SchedulerMetrics {
    pub(super) fn register(registry: &mut Registry) -> SchedulerMetrics {
        let m = SchedulerMetrics {
            polls: Family::default(),
            up: Family::default(),
            backoff: Family::default(),
            readings: Family::default(),
            series_dropped: Counter::default(),
            duration: Family::new_with_constructor(Histogram::durations),
            lateness: Family::new_with_constructor(Histogram::durations),
        };
        registry.register(
            "polls",
            "Scheduled polls by device and outcome (ok, timeout, error, skipped)",
            m.polls.clone(),
        );
        registry.register(
            "device_up",
            "Whether the device answered its last poll (1) or not (0; also before its first poll)",
            m.up.clone(),
        );
        registry.register_with_unit(
            "device_backoff",
            "How much longer than its interval the device waits before its next poll, because its polls keep failing (0 when it is not backing off)",
            Unit::Seconds,
            m.backoff.clone(),
        );
        registry.register(
            "readings",
            "Readings produced by the device's polls and handed to the uplink (its up reading included)",
            m.readings.clone(),
        );
        registry.register(
            "series_limit_dropped_readings",
            "Readings dropped because their series was beyond max_series_per_device",
            m.series_dropped.clone(),
        );
        registry.register_with_unit(
            "poll_duration",
            "How long polls took, from calling the driver to its answer or the timeout, by driver",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register_with_unit(
            "poll_lateness",
            "How late polls started after their scheduled time (permits included), by driver",
            Unit::Seconds,
            m.lateness.clone(),
        );
        m
    }

    /// The handles of one device (call once, when its task starts).
    pub fn device(&self, device: &str, driver: &str) -> DeviceMetrics {
        let polls = Outcome::ALL.map(|o| {
            self.polls.get_or_create_owned(&[
                ("device", device.to_owned()),
                ("outcome", o.label().to_owned()),
            ])
        });
        let dev = [("device", device.to_owned())];
        let drv = [("driver", driver.to_owned())];
        DeviceMetrics {
            polls,
            up: self.up.get_or_create_owned(&dev),
            backoff: self.backoff.get_or_create_owned(&dev),
            readings: self.readings.get_or_create_owned(&dev),
            series_dropped: self.series_dropped.clone(),
            duration: self.duration.get_or_create_owned(&drv),
            lateness: self.lateness.get_or_create_owned(&drv),
        }
    }
}

/// One device's handles, owned by its task: every update is one relaxed
/// atomic operation (two for a histogram).
#[derive(Debug, Clone)]
pub struct DeviceMetrics {
    /// Indexed by `Outcome as usize`.
    polls: [Counter; 4],
    up: Gauge,
    backoff: Gauge<f64, AtomicU64>,
    readings: Counter,
    series_dropped: Counter,
    duration: Histogram,
    lateness: Histogram,
}

impl DeviceMetrics {
    /// A poll ended with `outcome` after `took`.
    pub fn polled(&self, outcome: Outcome, took: Duration) {
        self.polls[outcome as usize].inc();
        self.duration.observe_duration(took);
        self.up.set(i64::from(outcome == Outcome::Ok));
    }

    /// `n` ticks were skipped (the previous poll overran).
    pub fn skipped(&self, n: u64) {
        self.polls[Outcome::Skipped as usize].inc_by(n);
    }

    /// A poll started `late` after its scheduled time.
    pub fn late(&self, late: Duration) {
        self.lateness.observe_duration(late);
    }

    /// `readings` were handed to the uplink, of which `dropped` were left
    /// out at the series limit before.
    pub fn produced(&self, readings: usize, dropped: u64) {
        self.readings.inc_by(readings as u64);
        if dropped > 0 {
            self.series_dropped.inc_by(dropped);
        }
    }

    /// The next poll waits `extra` beyond the interval (zero when the
    /// device is not backing off).
    pub fn backoff(&self, extra: Duration) {
        self.backoff.set(extra.as_secs_f64());
    }
}
