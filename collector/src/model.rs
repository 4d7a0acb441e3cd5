//! The collector's own data types, shared by the session, the merger, the
//! store and the query service. Generated protobuf types stop at the gRPC
//! edge (`session`, `query`); everything behind it speaks these.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Identity of a stored series: the agent that declared it plus what the
/// agent declared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub agent: String,
    pub device: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub unit: String,
}

/// A stored series: its global id (assigned by the merger) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesMeta {
    pub id: i64,
    pub key: SeriesKey,
}

/// A stored value, or why a poll produced none.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    F64(f64),
    I64(i64),
    /// Unsigned 64-bit (SNMP Counter64), every bit kept.
    U64(u64),
    Bool(bool),
    Str(String),
    Timeout(String),
    Error(String),
}

impl StoredValue {
    /// The `kind` column of the `readings` table.
    pub fn kind_code(&self) -> i64 {
        match self {
            StoredValue::F64(_) => 0,
            StoredValue::I64(_) => 1,
            StoredValue::Bool(_) => 2,
            StoredValue::Str(_) => 3,
            StoredValue::Timeout(_) => 4,
            StoredValue::Error(_) => 5,
            StoredValue::U64(_) => 6,
        }
    }
}

/// A validated reading bound to a global series id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReading {
    pub series_id: i64,
    /// Device timestamp, ns since the Unix epoch.
    pub ts_ns: i64,
    pub value: StoredValue,
}

/// A reading as stored: device time and collector receive time.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub ts_ns: i64,
    pub received_ns: i64,
    pub value: StoredValue,
}

/// Readings of one series that were just committed, for `Query/Tail`.
#[derive(Debug, Clone)]
pub struct CommittedChunk {
    pub series: Arc<SeriesMeta>,
    pub points: Vec<Point>,
}

/// What the merger broadcasts after every commit (only when someone tails).
pub type Committed = Arc<Vec<CommittedChunk>>;

/// Live (not persisted) state of an agent's stream, published by the merger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentLive {
    pub connected: bool,
    pub peer: String,
    /// This collector's name (the agent streams here when `connected`).
    pub collector: Arc<str>,
    /// What this collector counted of the agent since it started, updated
    /// by the merger in place (atomics): read it, the snapshot is not
    /// republished for it.
    pub stats: Arc<crate::metrics::AgentStats>,
}

/// Snapshot of which agents are connected, keyed by agent id.
pub type LiveAgents = Arc<BTreeMap<String, AgentLive>>;

/// Wall clock now, ns since the Unix epoch: what receipt is stamped with.
pub use tributary_process::now_ns;

/// Hasher for series ids (small dense integers): one multiply, no SipHash
/// on the per-reading path. Not for keys a client chooses freely.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the input's low bits, and the
        // table picks buckets by the low bits: fold the high half in, or ids
        // at a power-of-two stride would share buckets.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i64(&mut self, v: i64) {
        self.0 = (self.0 ^ v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by series id.
pub type IdMap<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;
