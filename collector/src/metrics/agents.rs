//! Per-agent numbers: [`AgentStats`], a handful of relaxed atomics per
//! agent that the merger writes as it commits (per batch, never per
//! reading), and [`AgentsCollector`], which reads them at scrape time for
//! every agent in the merger's live snapshot. `Query/ListAgents` reads the
//! same atomics (the skew count), so the two cannot disagree.
//!
//! Only the merger's thread writes an `AgentStats`; everyone else loads.
//! The series are one per agent and metric: the label is the agent id,
//! never a device, series or reading, so cardinality is the number of
//! agents this collector has seen since it started.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::sync::watch;
use tributary_process::metrics::prometheus_client::collector::Collector;
use tributary_process::metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use tributary_process::metrics::prometheus_client::metrics::MetricType;
use tributary_process::metrics::prometheus_client::metrics::counter::ConstCounter;
use tributary_process::metrics::prometheus_client::metrics::gauge::ConstGauge;
use tributary_process::metrics::prometheus_client::registry::Unit;

use crate::model::{AgentLive, LiveAgents, now_ns};

/// What this collector counted of one agent since it started, and where
/// the agent's delivery stands. Written by the merger only (after the
/// commit that makes a number true), read by scrapes and `ListAgents`.
#[derive(Debug, Default)]
pub struct AgentStats {
    batches_committed: AtomicU64,
    readings_committed: AtomicU64,
    batches_deduplicated: AtomicU64,
    batches_resent: AtomicU64,
    skewed_readings: AtomicU64,
    /// Readings the agent reported dropping, summed over its epochs (the
    /// store's `dropped_at_agent`; each epoch's number only grows).
    dropped_at_agent: AtomicU64,
    /// Committed and newest spooled sequence of the agent's newest epoch.
    committed_seq: AtomicU64,
    last_seq: AtomicU64,
    /// Ranges committed above `committed_seq` in the newest epoch (a
    /// backlog draining beside live batches shows as ranges).
    committed_ranges: AtomicU64,
    /// When the committed sequence fell behind what the agent had spooled
    /// (ns since the Unix epoch); 0 while it is caught up.
    behind_since_ns: AtomicI64,
    last_seen_ns: AtomicI64,
}

/// Equal when every number is (the live snapshot derives `PartialEq`).
impl PartialEq for AgentStats {
    fn eq(&self, other: &Self) -> bool {
        self.counts() == other.counts()
    }
}

impl Eq for AgentStats {}

/// One reading of an [`AgentStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentCounts {
    pub batches_committed: u64,
    pub readings_committed: u64,
    pub batches_deduplicated: u64,
    pub batches_resent: u64,
    pub skewed_readings: u64,
    pub dropped_at_agent: u64,
    pub committed_seq: u64,
    pub last_seq: u64,
    pub committed_ranges: u64,
    pub behind_since_ns: i64,
    pub last_seen_ns: i64,
}

impl AgentCounts {
    /// Batches the agent has spooled beyond the committed sequence.
    pub fn lag_sequences(&self) -> u64 {
        self.last_seq.saturating_sub(self.committed_seq)
    }

    /// How long the committed sequence has been behind what the agent
    /// spooled, at `now_ns`; 0 when it is caught up.
    pub fn lag_seconds(&self, now_ns: i64) -> f64 {
        if self.lag_sequences() == 0 || self.behind_since_ns == 0 {
            return 0.0;
        }
        now_ns.saturating_sub(self.behind_since_ns).max(0) as f64 / 1e9
    }
}

impl AgentStats {
    /// Every number at once (each load is relaxed: they are independent
    /// totals, read a few nanoseconds apart).
    pub fn counts(&self) -> AgentCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentCounts {
            batches_committed: l(&self.batches_committed),
            readings_committed: l(&self.readings_committed),
            batches_deduplicated: l(&self.batches_deduplicated),
            batches_resent: l(&self.batches_resent),
            skewed_readings: l(&self.skewed_readings),
            dropped_at_agent: l(&self.dropped_at_agent),
            committed_seq: l(&self.committed_seq),
            last_seq: l(&self.last_seq),
            committed_ranges: l(&self.committed_ranges),
            behind_since_ns: self.behind_since_ns.load(Ordering::Relaxed),
            last_seen_ns: self.last_seen_ns.load(Ordering::Relaxed),
        }
    }

    /// Readings whose time stamps are not to be trusted (see
    /// `IncomingBatch::skewed_readings`), counted when their batch is
    /// taken for storage (never for a replay).
    pub fn skewed_readings(&self) -> u64 {
        self.skewed_readings.load(Ordering::Relaxed)
    }

    /// A batch of `readings` was committed.
    pub(crate) fn committed(&self, readings: u64) {
        self.batches_committed.fetch_add(1, Ordering::Relaxed);
        self.readings_committed
            .fetch_add(readings, Ordering::Relaxed);
    }

    /// A batch arrived that was resent and/or a replay of what is stored.
    pub(crate) fn saw(&self, resent: bool, replay: bool, seen_ns: i64) {
        if resent {
            self.batches_resent.fetch_add(1, Ordering::Relaxed);
        }
        if replay {
            self.batches_deduplicated.fetch_add(1, Ordering::Relaxed);
        }
        self.last_seen_ns.fetch_max(seen_ns, Ordering::Relaxed);
    }

    pub(crate) fn skewed(&self, readings: u64) {
        if readings > 0 {
            self.skewed_readings.fetch_add(readings, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self, more: u64) {
        if more > 0 {
            self.dropped_at_agent.fetch_add(more, Ordering::Relaxed);
        }
    }

    pub(crate) fn seen(&self, seen_ns: i64) {
        self.last_seen_ns.fetch_max(seen_ns, Ordering::Relaxed);
    }

    /// Where the agent's newest epoch stands, at `now_ns`: the lag clock
    /// starts when the committed sequence falls behind and stops (back to
    /// 0) when it catches up.
    pub(crate) fn delivery(&self, committed_seq: u64, last_seq: u64, now_ns: i64) {
        self.committed_seq.store(committed_seq, Ordering::Relaxed);
        self.last_seq.store(last_seq, Ordering::Relaxed);
        if last_seq > committed_seq {
            let _ = self.behind_since_ns.compare_exchange(
                0,
                now_ns.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.behind_since_ns.store(0, Ordering::Relaxed);
        }
    }
}

impl AgentStats {
    /// How many ranges the newest epoch's committed set holds above its
    /// committed sequence.
    pub(crate) fn ranges(&self, ranges: usize) {
        self.committed_ranges
            .store(ranges as u64, Ordering::Relaxed);
    }
}

/// Encodes the per-agent families from the merger's live snapshot at each
/// scrape (an `Arc` clone of the `watch`'s value, then a few loads per
/// agent).
#[derive(Debug)]
pub struct AgentsCollector {
    live: watch::Receiver<LiveAgents>,
}

impl AgentsCollector {
    pub fn new(live: watch::Receiver<LiveAgents>) -> Self {
        AgentsCollector { live }
    }
}

/// What one per-agent family shows of an agent.
type Value = fn(&AgentLive, &AgentCounts, i64) -> f64;

/// The per-agent families: name (before unit and `_total`), help, unit,
/// counter or gauge, and the value.
const FAMILIES: &[(&str, &str, Option<Unit>, MetricType, Value)] = &[
    (
        "tributary_collector_agent_connected",
        "1 while the agent has an Ingest stream open to this collector",
        None,
        MetricType::Gauge,
        |l, _, _| f64::from(u8::from(l.connected)),
    ),
    (
        "tributary_collector_agent_batches_committed",
        "Batches of the agent this collector committed to the store",
        None,
        MetricType::Counter,
        |_, c, _| c.batches_committed as f64,
    ),
    (
        "tributary_collector_agent_readings_committed",
        "Readings of the agent this collector committed to the store",
        None,
        MetricType::Counter,
        |_, c, _| c.readings_committed as f64,
    ),
    (
        "tributary_collector_agent_batches_deduplicated",
        "Batches of the agent received again after they were committed (acked, not stored)",
        None,
        MetricType::Counter,
        |_, c, _| c.batches_deduplicated as f64,
    ),
    (
        "tributary_collector_agent_batches_resent",
        "Batches the agent sent again after a reconnect",
        None,
        MetricType::Counter,
        |_, c, _| c.batches_resent as f64,
    ),
    (
        "tributary_collector_agent_skewed_readings",
        "Readings of the agent stored with a time stamp not to be trusted (too far ahead, or the agent's clock was off)",
        None,
        MetricType::Counter,
        |_, c, _| c.skewed_readings as f64,
    ),
    (
        "tributary_collector_agent_dropped_readings",
        "Readings the agent reported dropping before sending them (spool full), all epochs",
        None,
        MetricType::Counter,
        |_, c, _| c.dropped_at_agent as f64,
    ),
    (
        "tributary_collector_agent_lag_sequences",
        "Batches the agent has spooled beyond the committed sequence (newest epoch)",
        None,
        MetricType::Gauge,
        |_, c, _| c.lag_sequences() as f64,
    ),
    (
        "tributary_collector_agent_committed_ranges",
        "Ranges of sequences committed above the committed sequence (newest epoch): a backlog draining beside live batches",
        None,
        MetricType::Gauge,
        |_, c, _| c.committed_ranges as f64,
    ),
    (
        "tributary_collector_agent_lag",
        "How long the committed sequence has been behind what the agent spooled; 0 when caught up",
        Some(Unit::Seconds),
        MetricType::Gauge,
        |_, c, now| c.lag_seconds(now),
    ),
    (
        "tributary_collector_agent_last_seen_timestamp",
        "When this collector last heard from the agent (Hello or batch), Unix time",
        Some(Unit::Seconds),
        MetricType::Gauge,
        |_, c, _| c.last_seen_ns as f64 / 1e9,
    ),
];

impl Collector for AgentsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.live.borrow().clone();
        if live.is_empty() {
            return Ok(());
        }
        let now = now_ns();
        let agents: Vec<(&str, &AgentLive, AgentCounts)> = live
            .iter()
            .map(|(id, l)| (id.as_str(), l, l.stats.counts()))
            .collect();
        for (name, help, unit, kind, value) in FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), *kind)?;
            for (id, l, counts) in &agents {
                let labels = [("agent", *id)];
                let v = value(l, counts, now);
                let metric = family.encode_family(&labels)?;
                // Counters are whole numbers: encoded as integers.
                match kind {
                    MetricType::Counter => ConstCounter::new(v as u64).encode(metric)?,
                    _ => ConstGauge::new(v).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}
