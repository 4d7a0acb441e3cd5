//! The commit contract both write sides keep, as data: what the merger
//! hands the store ([`WriteSet`] and its parts), what it gets back
//! ([`CommitReport`], [`Loaded`], [`RetainStep`], [`CompactStep`]), and the
//! settings that shape a store ([`Durability`], [`Retention`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::committed::CommittedSet;
use crate::model::NewReading;

/// How hard a commit is pushed to disk before it is acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// SQLite `synchronous=FULL`: the WAL is fsynced at every commit.
    /// PostgreSQL: the server's `synchronous_commit` (on by default). An
    /// acked reading survives power loss. The default.
    #[default]
    Full,
    /// SQLite `synchronous=NORMAL`: the WAL is fsynced at checkpoints only.
    /// PostgreSQL: `synchronous_commit = off` for the merger's connection.
    /// An acked reading survives a collector crash, not a crash of the
    /// database host.
    Normal,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!(
                "unknown durability {other:?} (expected full or normal)"
            )),
        }
    }
}

/// How long readings are kept and how often old ones are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Readings whose device time is older than this are deleted.
    pub keep: Duration,
    /// Time between two passes (the first runs at start).
    pub check_every: Duration,
}

impl Retention {
    /// Keeps `keep`, checking every tenth of it (at least every second, at
    /// most every hour).
    pub fn new(keep: Duration) -> Self {
        Retention {
            keep,
            check_every: (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        }
    }
}

/// Per-(agent, epoch) delivery state as persisted in the `epochs` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochRow {
    /// The committed sequences: `committed_seq` (the mark) and
    /// `committed_ranges` above it.
    pub committed: CommittedSet,
    /// Readings the agent reported dropping in this epoch.
    pub dropped: u64,
    /// Newest sequence the agent reported spooling in this epoch.
    pub last_seq: u64,
}

impl EpochRow {
    /// Takes in `other`, field by field: the union of the committed sets,
    /// the maximum of the counters (every field only grows).
    pub fn merge(&mut self, other: &EpochRow) {
        self.committed.union(&other.committed);
        self.dropped = self.dropped.max(other.dropped);
        self.last_seq = self.last_seq.max(other.last_seq);
    }
}

/// An `epochs` row as the database returns it, before its committed
/// ranges are decoded (which may fail: [`StoredEpoch::decode`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredEpoch {
    pub committed_seq: u64,
    /// `committed_ranges` as stored; `None` (NULL) for none, which is what
    /// a row written before ranges existed holds.
    pub ranges: Option<Vec<u8>>,
    pub dropped: u64,
    pub last_seq: u64,
}

impl StoredEpoch {
    /// What a store error from [`StoredEpoch::decode`] says it was doing.
    pub const DECODING: &'static str = "reading committed ranges";

    /// The row's delivery state; ranges that do not decode are an error
    /// naming the row (agent, epoch) and what is wrong (the store wraps it
    /// with its name and [`StoredEpoch::DECODING`]).
    pub fn decode(self, agent: &str, epoch: u64) -> Result<EpochRow, String> {
        let committed = CommittedSet::decode(self.committed_seq, self.ranges.as_deref())
            .map_err(|e| format!("epochs row of agent {agent:?}, epoch {epoch}: {e}"))?;
        Ok(EpochRow {
            committed,
            dropped: self.dropped,
            last_seq: self.last_seq,
        })
    }
}

/// What the merger needs to resume after a restart.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Series stored per agent (for `max_series_per_agent`).
    pub series_per_agent: HashMap<Arc<str>, u64>,
    pub epochs: HashMap<(Arc<str>, u64), EpochRow>,
    /// `epochs` rows left out of `epochs` because their committed ranges
    /// do not decode, each as [`StoredEpoch::decode`] names it: the merger
    /// starts without them, and a commit touching one fails only that
    /// (agent, epoch)'s batches, as when it is found at write time.
    pub unreadable_epochs: Vec<String>,
}

/// One batch: its identity and its readings, all received at one moment.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub agent: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
    /// The batch stands for every sequence up to `seq`, not only its own
    /// (a stream of an agent that sends in sequence order and reads no
    /// ranges: a sequence it skipped is one its spool never holds).
    pub high_water: bool,
    /// Every sequence below this one will never be sent (the agent's
    /// `Batch.oldest_spooled`, at most `seq`; 0 says nothing): added to the
    /// set whether the batch is written or skipped.
    pub floor: u64,
    pub received_ns: i64,
    pub readings: Vec<NewReading>,
}

/// What the merger tells the store about an agent. Counters are deltas
/// (several collectors may add to one agent's row); `readings_stored` is
/// counted by the store itself from what it actually writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentWrite {
    /// Newest spool epoch.
    pub epoch: u64,
    /// Peer of the newest stream; empty leaves the stored one.
    pub peer: String,
    /// Name of the collector the agent streams to; empty leaves the
    /// stored one.
    pub collector: String,
    /// Only ever moves forward.
    pub last_seen_ns: i64,
    /// Replays the merger recognised without asking the store.
    pub batches_deduplicated: u64,
    pub batches_resent: u64,
}

/// One transaction's worth of changes.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// In arrival order; per (agent, epoch) each sequence at most once, in
    /// any order.
    pub batches: Vec<BatchWrite>,
    /// Delivery state per (agent, epoch) as the merger sees it after this
    /// set: the store keeps the maximum of the reported counters with what
    /// it holds; the committed set it takes from its own row and the
    /// batches it writes, never from here.
    pub epochs: Vec<(Arc<str>, u64, EpochRow)>,
    /// Agents seen in this set. Every agent of `batches` is listed.
    pub agents: Vec<(Arc<str>, AgentWrite)>,
}

impl WriteSet {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.epochs.is_empty() && self.agents.is_empty()
    }
}

/// What a commit did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Indexes into `WriteSet::batches` of the batches not written because
    /// the stored committed set already held them (another
    /// collector, or an earlier attempt of this commit, stored them).
    pub skipped: Vec<usize>,
    /// The delivery state of every (agent, epoch) of the set, as committed.
    pub epochs: Vec<(Arc<str>, u64, EpochRow)>,
}

/// One retention step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainStep {
    /// Readings (or, for TimescaleDB, chunks) removed by this step.
    pub removed: u64,
    /// Nothing older than the cutoff is left.
    pub done: bool,
}

/// One step of background compaction (SQLite: head rows into per-series
/// chunks; PostgreSQL has nothing to compact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStep {
    /// Points moved from the head into chunks.
    pub points: u64,
    /// Points rewritten by merging small chunks.
    pub merged_points: u64,
    pub chunks_written: u64,
    /// Small chunks merged into larger ones (and deleted).
    pub chunks_merged: u64,
    pub head_rows_deleted: u64,
    /// This step finished a round: its head rows are gone.
    pub round_done: bool,
}
