//! The agent's own reading types: what a driver returns from one poll and
//! what the scheduler hands to the uplink. Independent of the wire format;
//! only `uplink` converts them to `tributary.v1` messages.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Identity of a series within one agent: which device, which metric, which
/// labels. Shared through `Arc` so a reading costs one pointer, not strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub device: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub unit: String,
}

/// Why a poll (or one metric of it) produced no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The device did not answer within the poll timeout.
    Timeout,
    /// The device answered with an error or garbage, or was unreachable.
    Error,
}

/// A typed value, or the reason there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(String),
    Failed { kind: FailureKind, message: String },
}

/// One metric value read from a device, before the scheduler stamps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The device the sample belongs to when it is not the polled device
    /// itself (an MQTT subscription feeds devices named by topic); `None`
    /// for the polled device.
    pub device: Option<String>,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub unit: String,
    pub value: Value,
}

impl Sample {
    /// A sample without labels or unit.
    pub fn new(metric: impl Into<String>, value: Value) -> Self {
        Sample {
            device: None,
            metric: metric.into(),
            labels: BTreeMap::new(),
            unit: String::new(),
            value,
        }
    }
}

/// A stamped reading on its way to the collector.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub series: Arc<SeriesKey>,
    /// Agent wall clock at the poll, ns since the Unix epoch.
    pub ts_ns: i64,
    pub value: Value,
}

/// Wall clock now, ns since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
