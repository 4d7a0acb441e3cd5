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
            let mut state = self
                .devices
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state
                .devices
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

impl SchedulerMetrics {
    /// Drops `device`'s series from the families (a reload removed it):
    /// the next scrape no longer shows them. Handles its task still holds
    /// keep counting into cells no scrape reads; a device of that name
    /// added later starts from zero.
    pub fn remove_device(&self, device: &str) {
        self.devices
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .devices
            .remove(device);
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
/// devices in order), and the scrape's scratch text. The lock is taken when
/// a device task starts and at scrapes, never by a poll.
#[derive(Debug, Default)]
struct DeviceFamilies {
    state: Mutex<FamiliesState>,
}

#[derive(Debug, Default)]
struct FamiliesState {
    devices: BTreeMap<String, Arc<DeviceCells>>,
    /// Reused by every scrape (no allocation once it has grown).
    scratch: String,
}

/// A sample's value.
#[derive(Clone, Copy)]
enum Value {
    Counter(u64),
    Int(i64),
    Float(f64),
}

impl Value {
    /// Appends the value as `Display` writes it, integers (and integral
    /// floats below 2^53, as the backoff mostly is: 0) without
    /// `core::fmt`, which costs ~10 times more per number and is most of a
    /// scrape's cost per device.
    fn write(self, out: &mut String) -> std::fmt::Result {
        match self {
            Value::Counter(v) => push_u64(out, v),
            Value::Int(v) => {
                if v < 0 {
                    out.push('-');
                }
                push_u64(out, v.unsigned_abs());
            }
            Value::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e15 && !v.is_sign_negative() => {
                push_u64(out, v as u64)
            }
            Value::Float(v) => write!(out, "{v}")?,
        }
        Ok(())
    }
}

/// "00", "01", ... "99": two digits per step.
const PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// Appends `v` in decimal.
fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + v as u8;
    }
    // Only ASCII digits: valid UTF-8, never the fallback.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or("0"));
}

/// Writes one family: its `# HELP`/`# TYPE` lines and first sample name
/// through `prometheus-client` (so both text formats get theirs), every
/// sample but the last as plain text (`labels} value` and `line_start`, the
/// next line's start `\nNAME{`, e.g. `\ntributary_agent_polls_total{`), handed over
/// as the label set of the last sample, whose value the encoder writes.
/// So a scrape costs a copy of each pre-encoded label set and one number
/// per sample, not `prometheus-client`'s per-sample calls (~580
/// instructions a line).
#[allow(clippy::too_many_arguments)]
fn write_family<'a>(
    encoder: &mut DescriptorEncoder,
    scratch: &mut String,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    line_start: &str,
    samples: impl Iterator<Item = (&'a str, Value)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, unit, metric_type)?;
    scratch.clear();
    let mut last: Option<Value> = None;
    for (labels, value) in samples {
        if let Some(prev) = last {
            scratch.push_str("} ");
            prev.write(scratch)?;
            scratch.push_str(line_start);
        }
        scratch.push_str(labels);
        last = Some(value);
    }
    let Some(value) = last else {
        return Ok(());
    };
    let labels = Encoded(scratch);
    let mut s = m.encode_family(&labels)?;
    match value {
        Value::Counter(v) => s.encode_counter::<NoLabelSet, u64, u64>(&v, None),
        Value::Int(v) => s.encode_gauge(&v),
        Value::Float(v) => s.encode_gauge(&v),
    }
}

impl Collector for DeviceFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let FamiliesState { devices, scratch } = &mut *state;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        write_family(
            &mut encoder,
            scratch,
            "polls",
            "Scheduled polls by device and outcome (ok, timeout, error, skipped)",
            None,
            MetricType::Counter,
            "\ntributary_agent_polls_total{",
            devices.values().flat_map(|d| {
                d.poll_labels
                    .iter()
                    .zip(&d.polls)
                    .map(|(l, c)| (&**l, Value::Counter(load(c))))
            }),
        )?;
        write_family(
            &mut encoder,
            scratch,
            "device_up",
            "Whether the device answered its last poll (1) or not (0; also before its first poll)",
            None,
            MetricType::Gauge,
            "\ntributary_agent_device_up{",
            devices
                .values()
                .map(|d| (&*d.label, Value::Int(d.up.load(Ordering::Relaxed)))),
        )?;
        write_family(
            &mut encoder,
            scratch,
            "device_backoff",
            "How much longer than its interval the device waits before its next poll, because its polls keep failing (0 when it is not backing off)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            "\ntributary_agent_device_backoff_seconds{",
            devices
                .values()
                .map(|d| (&*d.label, Value::Float(f64::from_bits(load(&d.backoff))))),
        )?;
        write_family(
            &mut encoder,
            scratch,
            "readings",
            "Readings produced by the device's polls and handed to the uplink (its up reading included)",
            None,
            MetricType::Counter,
            "\ntributary_agent_readings_total{",
            devices
                .values()
                .map(|d| (&*d.label, Value::Counter(load(&d.readings)))),
        )
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

#[cfg(test)]
mod tests {
    use super::Value;

    /// The numbers a scrape writes are what `Display` writes.
    #[test]
    fn values_are_written_as_display_writes_them() {
        let ints = [0u64, 1, 9, 10, 99, 100, 12_345, u64::MAX];
        let floats = [0.0, -0.0, 1.0, 2.5, 30.0, 0.001, 1e15, 1e16, 1e300, -3.0];
        let mut out = String::new();
        for v in ints {
            out.clear();
            Value::Counter(v).write(&mut out).unwrap();
            assert_eq!(out, v.to_string());
        }
        for v in [0i64, 1, -1, -120, i64::MIN, i64::MAX] {
            out.clear();
            Value::Int(v).write(&mut out).unwrap();
            assert_eq!(out, v.to_string());
        }
        for v in floats {
            out.clear();
            Value::Float(v).write(&mut out).unwrap();
            assert_eq!(out, v.to_string(), "{v:?}");
        }
    }
}
