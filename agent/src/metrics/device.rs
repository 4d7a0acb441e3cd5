//! The scheduler's metrics: polls by device and outcome, device health and
//! backoff, readings produced and dropped at the series limit, and poll
//! duration and lateness by driver.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};
use tributary_process::metrics::Histogram;

/// One label.
type Label1 = [(&'static str, String); 1];
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
///
/// The per-device families (polls, up, backoff, readings) are not
/// `prometheus-client` `Family`s but one [`Collector`] over each device's
/// [`DeviceCells`]: a device's label sets are escaped and joined once, when
/// its handles are made, and a scrape writes them as they are (a `Family`
/// encodes every label of every sample at every scrape, which cost ~9,400
/// instructions per device per scrape, more than the device's polls between
/// two scrapes at a 10 s interval).
#[derive(Debug)]
pub struct SchedulerMetrics {
    devices: Arc<DeviceFamilies>,
    series_dropped: Counter,
    duration: HistogramFamily,
    lateness: HistogramFamily,
}

impl SchedulerMetrics {
    pub(super) fn register(registry: &mut Registry) -> SchedulerMetrics {
        let m = SchedulerMetrics {
            devices: Arc::default(),
            series_dropped: Counter::default(),
            duration: Family::new_with_constructor(Histogram::durations),
            lateness: Family::new_with_constructor(Histogram::durations),
        };
        registry.register_collector(Box::new(m.devices.clone()));
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

    /// The handles of one device (call once, when its task starts; a second
    /// call for the same device returns handles to the same counts).
    pub fn device(&self, device: &str, driver: &str) -> DeviceMetrics {
        let cells = {
            let mut devices = self
                .devices
                .devices
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            devices
                .entry(device.to_owned())
                .or_insert_with(|| Arc::new(DeviceCells::new(device)))
                .clone()
        };
        let drv = [("driver", driver.to_owned())];
        DeviceMetrics {
            cells,
            series_dropped: self.series_dropped.clone(),
            duration: self.duration.get_or_create_owned(&drv),
            lateness: self.lateness.get_or_create_owned(&drv),
        }
    }
}

/// The counts of one device and its label sets, encoded once.
#[derive(Debug)]
struct DeviceCells {
    /// Indexed by `Outcome as usize`.
    polls: [AtomicU64; 4],
    up: AtomicI64,
    /// The backoff in seconds, as `f64` bits.
    backoff: AtomicU64,
    readings: AtomicU64,
    /// `device="…"`, the value escaped.
    label: Box<str>,
    /// `device="…",outcome="…"`, by `Outcome as usize`.
    poll_labels: [Box<str>; 4],
}

impl DeviceCells {
    fn new(device: &str) -> DeviceCells {
        let mut label = String::with_capacity(device.len() + 10);
        label.push_str("device=\"");
        for c in device.chars() {
            match c {
                '\\' => label.push_str("\\\\"),
                '"' => label.push_str("\\\""),
                '\n' => label.push_str("\\n"),
                c => label.push(c),
            }
        }
        label.push('"');
        let poll_labels = Outcome::ALL.map(|o| {
            let mut l = label.clone();
            let _ = write!(l, ",outcome=\"{}\"", o.label());
            l.into_boxed_str()
        });
        DeviceCells {
            polls: Default::default(),
            up: AtomicI64::new(0),
            backoff: AtomicU64::new(0f64.to_bits()),
            readings: AtomicU64::new(0),
            label: label.into_boxed_str(),
            poll_labels,
        }
    }
}

/// A label set already in the text formats' syntax (`k="v",k2="v2"`,
/// values escaped): written as one label key, with no value, which the
/// text encoders copy as it is between the braces.
struct Encoded<'a>(&'a str);

impl EncodeLabelSet for Encoded<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let mut label = encoder.encode_label();
        let mut key = label.encode_label_key()?;
        key.write_str(self.0)
    }
}

/// Every device's cells, by device name (sorted, so a scrape lists the
/// devices in order). The lock is taken when a device task starts and at
/// scrapes, never by a poll.
#[derive(Debug, Default)]
struct DeviceFamilies {
    devices: Mutex<BTreeMap<String, Arc<DeviceCells>>>,
}

impl Collector for DeviceFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let devices = self
            .devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let mut m = encoder.encode_descriptor(
                "polls",
                "Scheduled polls by device and outcome (ok, timeout, error, skipped)",
                None,
                MetricType::Counter,
            )?;
            for d in devices.values() {
                for (count, labels) in d.polls.iter().zip(&d.poll_labels) {
                    m.encode_family(&Encoded(labels))?
                        .encode_counter::<NoLabelSet, u64, u64>(
                            &count.load(Ordering::Relaxed),
                            None,
                        )?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "device_up",
                "Whether the device answered its last poll (1) or not (0; also before its first poll)",
                None,
                MetricType::Gauge,
            )?;
            for d in devices.values() {
                m.encode_family(&Encoded(&d.label))?
                    .encode_gauge(&d.up.load(Ordering::Relaxed))?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "device_backoff",
                "How much longer than its interval the device waits before its next poll, because its polls keep failing (0 when it is not backing off)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for d in devices.values() {
                m.encode_family(&Encoded(&d.label))?
                    .encode_gauge(&f64::from_bits(d.backoff.load(Ordering::Relaxed)))?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "readings",
            "Readings produced by the device's polls and handed to the uplink (its up reading included)",
            None,
            MetricType::Counter,
        )?;
        for d in devices.values() {
            m.encode_family(&Encoded(&d.label))?
                .encode_counter::<NoLabelSet, u64, u64>(
                    &d.readings.load(Ordering::Relaxed),
                    None,
                )?;
        }
        Ok(())
    }
}

/// One device's handles, owned by its task: every update is one relaxed
/// atomic operation (two for a histogram), on counts no other task writes.
#[derive(Debug, Clone)]
pub struct DeviceMetrics {
    cells: Arc<DeviceCells>,
    series_dropped: Counter,
    duration: Histogram,
    lateness: Histogram,
}

impl DeviceMetrics {
    /// A poll ended with `outcome` after `took`.
    pub fn polled(&self, outcome: Outcome, took: Duration) {
        self.cells.polls[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.duration.observe_duration(took);
        self.cells
            .up
            .store(i64::from(outcome == Outcome::Ok), Ordering::Relaxed);
    }

    /// `n` ticks were skipped (the previous poll overran).
    pub fn skipped(&self, n: u64) {
        self.cells.polls[Outcome::Skipped as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A poll started `late` after its scheduled time.
    pub fn late(&self, late: Duration) {
        self.lateness.observe_duration(late);
    }

    /// `readings` were handed to the uplink, of which `dropped` were left
    /// out at the series limit before.
    pub fn produced(&self, readings: usize, dropped: u64) {
        self.cells
            .readings
            .fetch_add(readings as u64, Ordering::Relaxed);
        if dropped > 0 {
            self.series_dropped.inc_by(dropped);
        }
    }

    /// The next poll waits `extra` beyond the interval (zero when the
    /// device is not backing off).
    pub fn backoff(&self, extra: Duration) {
        self.cells
            .backoff
            .store(extra.as_secs_f64().to_bits(), Ordering::Relaxed);
    }
}
