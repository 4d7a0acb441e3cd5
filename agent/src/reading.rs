//! The agent's own reading types: what a driver returns from one poll and
//! what the scheduler hands to the uplink. Independent of the wire format;
//! only `uplink` converts them to `tributary.v1` messages.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// Metric of the failed reading that stands in for a reading whose series
/// the collector would refuse to declare (an empty device, metric or label
/// name): the device's `invalid_series` series, no labels, the cause in the
/// failure message. One series per device, whatever the bad names were, so
/// a publisher making up names cannot make up series this way. The MQTT
/// driver uses it for a topic template that renders an empty name, the
/// uplink for any other reading before it is spooled.
pub const INVALID_SERIES_METRIC: &str = "invalid_series";

/// Identity of a series within one agent: which device, which metric, which
/// labels. Shared through `Arc` so a reading costs one pointer, not strings.
///
/// The agent holds one key per series for as long as it runs (a scrape of
/// 2,000 targets is 200,000 of them), so the key is kept small: its strings
/// are [`intern`]ed `Arc<str>` (a device's series share the device name, and
/// metric and label names and values repeat across devices), and the labels
/// are one sorted slice rather than a `BTreeMap` (whose smallest node is
/// about 540 bytes). Equality, order and hash are by content, as before.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub labels: Labels,
    pub unit: Arc<str>,
}

/// The labels of a series: pairs sorted by name, names unique (the same
/// set, order and comparison a `BTreeMap<String, String>` gives).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// Labels from a map (names and values interned).
    pub fn from_map(map: &BTreeMap<String, String>) -> Labels {
        Labels(map.iter().map(|(k, v)| (intern(k), intern(v))).collect())
    }

    /// Labels from pairs in any order; a name given twice keeps its last
    /// value (as inserting into a map would).
    pub fn from_pairs(pairs: Vec<(Arc<str>, Arc<str>)>) -> Labels {
        let mut pairs = pairs;
        // Stable: of equal names, the last one given ends up last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Arc<str>, Arc<str>)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Labels(out.into_boxed_slice())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i: usize| &*self.0[i].1)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The labels as a map (allocates; for `check` and tests).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// Strings in use by series keys, so that equal names share one
/// allocation. Only building a new series takes the lock (never a poll of a
/// known one), and nothing awaits while holding it, hence a std `Mutex`.
/// It is not data-path state: readings, batches and the spool keep their
/// single owners (device tasks, the uplink); this cache decides nothing,
/// and losing it would only cost memory.
static INTERNED: Mutex<Interned> = Mutex::new(Interned {
    set: None,
    swept_at: 0,
});

struct Interned {
    set: Option<HashSet<Arc<str>>>,
    /// Size of the set after the last sweep.
    swept_at: usize,
}

/// The shared copy of `s`. Strings no series uses any more are forgotten
/// when the set has doubled since the last sweep, so the set stays within
/// about twice the strings in use (a sweep costs one pass, amortised over
/// as many new strings).
pub fn intern(s: &str) -> Arc<str> {
    let mut guard = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    let interned = &mut *guard;
    let set = interned.set.get_or_insert_with(HashSet::new);
    if let Some(shared) = set.get(s) {
        return shared.clone();
    }
    if set.len() >= 2 * interned.swept_at.max(1024) {
        set.retain(|k| Arc::strong_count(k) > 1);
        interned.swept_at = set.len();
    }
    let shared: Arc<str> = Arc::from(s);
    set.insert(shared.clone());
    shared
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
    /// Unsigned 64-bit (SNMP Counter64), every bit kept.
    U64(u64),
    Bool(bool),
    Str(String),
    Failed {
        kind: FailureKind,
        message: String,
    },
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

impl Sample {
    /// The sample a reading of one of the polled device's own series
    /// stands for (for callers that want names, such as `check`).
    pub fn of_reading(reading: Reading) -> Sample {
        let key = &reading.series;
        Sample {
            device: None,
            metric: key.metric.to_string(),
            labels: key.labels.to_map(),
            unit: key.unit.to_string(),
            value: reading.value,
        }
    }
}

/// What one poll produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Polled {
    /// Values on series of the polled device that the driver resolved
    /// itself (built once, shared by every poll): readings whose `ts_ns`
    /// the scheduler fills in where the driver left it 0. The `Vec` has room for one more reading
    /// (the scheduler's `up`).
    Readings(Vec<Reading>),
    /// Samples named by strings; the scheduler interns them.
    Samples(Vec<Sample>),
}

impl Polled {
    /// How many values the poll produced.
    pub fn len(&self) -> usize {
        match self {
            Polled::Readings(r) => r.len(),
            Polled::Samples(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The poll as samples (allocates names; for `check` and tests).
    pub fn into_samples(self) -> Vec<Sample> {
        match self {
            Polled::Readings(r) => r.into_iter().map(Sample::of_reading).collect(),
            Polled::Samples(s) => s,
        }
    }
}

/// Series of one device, built once when its driver is built.
pub fn series(device: &str, metric: &str, unit: &str) -> Arc<SeriesKey> {
    series_with(device, metric, &BTreeMap::new(), unit)
}

/// [`series`] with labels.
pub fn series_with(
    device: &str,
    metric: &str,
    labels: &BTreeMap<String, String>,
    unit: &str,
) -> Arc<SeriesKey> {
    Arc::new(SeriesKey {
        device: intern(device),
        metric: intern(metric),
        labels: Labels::from_map(labels),
        unit: intern(unit),
    })
}

/// A stamped reading on its way to the collector.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub series: Arc<SeriesKey>,
    /// Agent wall clock at the poll, ns since the Unix epoch.
    pub ts_ns: i64,
    pub value: Value,
}

impl Reading {
    /// A reading of `series` not stamped yet (the scheduler stamps it).
    pub fn unstamped(series: &Arc<SeriesKey>, value: Value) -> Reading {
        Reading {
            series: series.clone(),
            ts_ns: 0,
            value,
        }
    }
}

/// Wall clock now, ns since the Unix epoch: what readings are stamped with.
pub use tributary_process::now_ns;

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    #[test]
    fn labels_behave_like_the_map_they_replace() {
        let given = [("zone", "b"), ("a", "1"), ("zone", "c"), ("m", "")];
        let pairs = given.iter().map(|(k, v)| (intern(k), intern(v))).collect();
        let labels = Labels::from_pairs(pairs);
        let expected = map(&given);
        // Same set (last value of a repeated name wins), same order.
        assert_eq!(labels.to_map(), expected);
        assert_eq!(labels, Labels::from_map(&expected));
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            vec![("a", "1"), ("m", ""), ("zone", "c")]
        );
        assert_eq!(
            (labels.get("zone"), labels.get("m"), labels.get("b")),
            (Some("c"), Some(""), None)
        );
        assert_eq!(labels.len(), 3);
        assert!(Labels::default().is_empty());
    }

    #[test]
    fn series_keys_order_as_with_maps() {
        // (device, metric, labels as a map, unit): the order keys had.
        type Spec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let specs: [Spec; 6] = [
            ("d", "m", &[], ""),
            ("d", "m", &[("a", "1")], ""),
            ("d", "m", &[("a", "1"), ("b", "0")], ""),
            ("d", "m", &[("a", "2")], ""),
            ("d", "m", &[("b", "0")], "V"),
            ("e", "a", &[], ""),
        ];
        let old: Vec<_> = specs
            .iter()
            .map(|(d, m, l, u)| (d.to_string(), m.to_string(), map(l), u.to_string()))
            .collect();
        let new: Vec<_> = specs
            .iter()
            .map(|(d, m, l, u)| series_with(d, m, &map(l), u))
            .collect();
        for i in 0..specs.len() {
            for j in 0..specs.len() {
                assert_eq!(
                    new[i].cmp(&new[j]),
                    old[i].cmp(&old[j]),
                    "{:?} vs {:?}",
                    specs[i],
                    specs[j]
                );
            }
        }
    }

    #[test]
    fn interned_strings_are_shared_and_forgotten_when_unused() {
        let a = series("intern-test-device", "m", "");
        let b = series("intern-test-device", "n", "");
        assert!(Arc::ptr_eq(&a.device, &b.device), "one device name");
        // Strings nobody holds do not pile up: 20,000 of them leave at most
        // about twice the strings in use.
        for i in 0..20_000 {
            drop(intern(&format!("intern-test-unused-{i}")));
        }
        let held = INTERNED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .as_ref()
            .map_or(0, |s| s.len());
        assert!(held < 10_000, "{held} strings kept");
        assert!(Arc::ptr_eq(&a.device, &intern("intern-test-device")));
    }
}
