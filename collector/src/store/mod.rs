//! Persistence, behind two enums chosen by the store URL: [`Store`] is the
//! write side (owned by the merger, blocking calls on the merger's thread)
//! and [`read::Reader`] the read side (used by the Query service).
//!
//! | URL | write side | read side |
//! | --- | --- | --- |
//! | `sqlite:PATH` | [`sqlite::SqliteStore`] (+ [`sqlite_compact`], [`codec`]) | [`sqlite_read::SqliteReader`] |
//! | `postgres://...` | [`postgres::PgStore`] | [`postgres_read::PgReader`] |
//!
//! Both write sides keep one contract, so the merger does not know which one
//! it talks to: the store, not the merger, is the authority on committed
//! sequences. [`Store::commit`] takes a [`WriteSet`], locks the delivery
//! state of every (agent, epoch) it touches, skips (and reports) each batch
//! at or below the stored committed sequence, writes the rest with the new
//! sequences, and commits. With one collector the merger's in-memory map is
//! exact and nothing is skipped; with several collectors on one PostgreSQL
//! database it is only a cache, and the lock is what keeps a batch from
//! being stored twice.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{NewReading, SeriesKey, SeriesMeta};

pub mod codec;
pub mod postgres;
pub mod postgres_read;
pub mod read;
pub mod sqlite;
pub mod sqlite_compact;
pub mod sqlite_read;
pub mod sqlite_scan;
#[cfg(test)]
mod sqlite_tests;

use postgres::PgStore;
use sqlite::SqliteStore;

/// Where readings are stored, as given by `--store`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:PATH`: an SQLite file (created if missing).
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`: a libpq-style URL, passed to
    /// tokio-postgres as it is (`?options=-c%20search_path%3Dname` picks a
    /// schema).
    Postgres(String),
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!("{s:?}: sqlite: needs a file path"));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<tokio_postgres::Config>()
                .map_err(|e| format!("{}: {e}", redact(s)))?;
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        Err(format!(
            "{:?}: unsupported store URL (expected sqlite:PATH or postgres://USER@HOST/DB)",
            redact(s)
        ))
    }
}

impl From<PathBuf> for StoreUrl {
    fn from(path: PathBuf) -> Self {
        StoreUrl::Sqlite(path)
    }
}

/// Shown without a password, so it can go into logs.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `url` with the password of its user info (if any) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

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

/// Errors of the write side, with the store for context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{store}: bad stored labels for series {id}: {source}")]
    Labels {
        store: String,
        id: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("{store}: {what}: {source}")]
    Postgres {
        store: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{store}: {what}: no answer within {after:?}")]
    Timeout {
        store: String,
        what: &'static str,
        after: Duration,
    },
    #[error("{store}: {what}: {message}")]
    Invalid {
        store: String,
        what: &'static str,
        message: String,
    },
    #[error("{store}: starting the database client runtime: {source}")]
    Runtime {
        store: String,
        #[source]
        source: std::io::Error,
    },
}

/// Per-(agent, epoch) delivery state as persisted in the `epochs` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochRow {
    pub committed_seq: u64,
    /// Readings the agent reported dropping in this epoch.
    pub dropped: u64,
    /// Newest sequence the agent reported spooling in this epoch.
    pub last_seq: u64,
}

impl EpochRow {
    /// Field-wise maximum: every field only grows.
    pub fn max(self, other: EpochRow) -> EpochRow {
        EpochRow {
            committed_seq: self.committed_seq.max(other.committed_seq),
            dropped: self.dropped.max(other.dropped),
            last_seq: self.last_seq.max(other.last_seq),
        }
    }
}

/// What the merger needs to resume after a restart.
#[derive(Debug, Default)]
pub struct Loaded {
    pub series: Vec<Arc<SeriesMeta>>,
    pub epochs: HashMap<(Arc<str>, u64), EpochRow>,
}

/// One batch: its identity and its readings, all received at one moment.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub agent: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
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
    /// Only ever moves forward.
    pub last_seen_ns: i64,
    /// Replays the merger recognised without asking the store.
    pub batches_deduplicated: u64,
    pub batches_resent: u64,
}

/// One transaction's worth of changes.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// In arrival order; per (agent, epoch) the sequences strictly increase.
    pub batches: Vec<BatchWrite>,
    /// Delivery state per (agent, epoch) as the merger sees it after this
    /// set (the store keeps the field-wise maximum with what it holds).
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
    /// the stored committed sequence already covered them (another
    /// collector, or an earlier attempt of this commit, stored them).
    pub skipped: Vec<usize>,
    /// The delivery state of every (agent, epoch) of the set, as committed.
    pub epochs: Vec<(Arc<str>, u64, EpochRow)>,
}

/// Which batches to write, decided under the lock from the stored state.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Parallel to `WriteSet::batches`.
    pub write: Vec<bool>,
    pub report: CommitReport,
    /// Per agent: readings written and batches skipped by this plan.
    pub per_agent: HashMap<Arc<str>, (u64, u64)>,
}

impl Plan {
    /// The (agent, epoch) pairs a set touches, sorted (the order locks are
    /// taken in, so two writers never wait on each other in a cycle).
    pub fn keys(set: &WriteSet) -> Vec<(Arc<str>, u64)> {
        let mut keys: Vec<(Arc<str>, u64)> = set
            .epochs
            .iter()
            .map(|(a, e, _)| (a.clone(), *e))
            .chain(set.batches.iter().map(|b| (b.agent.clone(), b.epoch)))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Compares each batch with `stored` (the locked rows; missing means
    /// nothing committed yet): a batch at or below the committed sequence
    /// is skipped, the others advance it. Reported dropped and last spooled
    /// sequences only grow.
    pub fn new(set: &WriteSet, stored: &HashMap<(Arc<str>, u64), EpochRow>) -> Plan {
        let mut state: HashMap<(Arc<str>, u64), EpochRow> = Plan::keys(set)
            .into_iter()
            .map(|k| {
                let row = stored.get(&k).copied().unwrap_or_default();
                (k, row)
            })
            .collect();
        let mut plan = Plan::default();
        for (i, b) in set.batches.iter().enumerate() {
            let row = state.entry((b.agent.clone(), b.epoch)).or_default();
            let counts = plan.per_agent.entry(b.agent.clone()).or_default();
            if b.seq <= row.committed_seq {
                plan.write.push(false);
                plan.report.skipped.push(i);
                counts.1 += 1;
            } else {
                row.committed_seq = b.seq;
                plan.write.push(true);
                counts.0 += b.readings.len() as u64;
            }
        }
        for (agent, epoch, reported) in &set.epochs {
            let row = state.entry((agent.clone(), *epoch)).or_default();
            row.dropped = row.dropped.max(reported.dropped);
            row.last_seq = row.last_seq.max(reported.last_seq);
        }
        let mut epochs: Vec<_> = state.into_iter().map(|((a, e), r)| (a, e, r)).collect();
        epochs.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        plan.report.epochs = epochs;
        plan
    }

    /// The agents to upsert: the merger's view plus what this plan wrote.
    pub fn agents(&self, set: &WriteSet) -> Vec<(Arc<str>, AgentWrite, u64)> {
        let mut out: Vec<(Arc<str>, AgentWrite, u64)> = Vec::with_capacity(set.agents.len());
        let mut seen = HashMap::new();
        for (id, a) in &set.agents {
            let (stored, skipped) = self.per_agent.get(id).copied().unwrap_or_default();
            let mut a = a.clone();
            a.batches_deduplicated += skipped;
            seen.insert(id.clone(), ());
            out.push((id.clone(), a, stored));
        }
        // The contract says every agent of a batch is listed; if one is
        // not, its counts still land (an empty peer keeps the stored one).
        for b in &set.batches {
            if seen.insert(b.agent.clone(), ()).is_none() {
                let (stored, skipped) = self.per_agent.get(&b.agent).copied().unwrap_or_default();
                let a = AgentWrite {
                    epoch: b.epoch,
                    last_seen_ns: b.received_ns,
                    batches_deduplicated: skipped,
                    ..AgentWrite::default()
                };
                out.push((b.agent.clone(), a, stored));
            }
        }
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }
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

/// The write side: one connection, owned by the merger. Every call blocks.
pub enum Store {
    /// Boxed: it carries its compaction state.
    Sqlite(Box<SqliteStore>),
    /// Boxed: it carries its runtime.
    Postgres(Box<PgStore>),
}

impl Store {
    /// Opens the store at `url`, creating or migrating its schema. Blocks;
    /// must not be called on an async runtime thread (PostgreSQL drives its
    /// own small runtime).
    pub fn open(url: &StoreUrl, durability: Durability) -> Result<Store, StoreError> {
        match url {
            StoreUrl::Sqlite(path) => Ok(Store::Sqlite(Box::new(SqliteStore::open(
                path, durability,
            )?))),
            StoreUrl::Postgres(url) => {
                Ok(Store::Postgres(Box::new(PgStore::open(url, durability)?)))
            }
        }
    }

    /// The store for logs (no password).
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(s) => format!("sqlite:{}", s.path().display()),
            Store::Postgres(s) => s.describe().to_owned(),
        }
    }

    /// Everything the merger keeps in memory.
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        match self {
            Store::Sqlite(s) => s.load(),
            Store::Postgres(s) => s.load(),
        }
    }

    /// The stored delivery state of (agent, epoch), if any.
    pub fn epoch(&mut self, agent: &str, epoch: u64) -> Result<Option<EpochRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.epoch(agent, epoch),
            Store::Postgres(s) => s.epoch(agent, epoch),
        }
    }

    /// Global ids of `keys`, in order, creating the series that do not
    /// exist yet (committed before this returns, so before any reading
    /// that uses them).
    pub fn resolve_series(&mut self, keys: &[SeriesKey]) -> Result<Vec<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.resolve_series(keys),
            Store::Postgres(s) => s.resolve_series(keys),
        }
    }

    /// Writes `set` in one transaction (see the module docs). On error
    /// nothing of it is stored and the caller may retry with the same set;
    /// a retry after an ambiguous failure (the commit went through but its
    /// answer was lost) skips the batches it already stored.
    pub fn commit(&mut self, set: &WriteSet) -> Result<CommitReport, StoreError> {
        match self {
            Store::Sqlite(s) => s.commit(set),
            Store::Postgres(s) => s.commit(set),
        }
    }

    /// Whether the store has compaction work to do now (a round under way
    /// or due). Cheap: the merger asks after every group.
    pub fn compaction_due(&self) -> bool {
        match self {
            Store::Sqlite(s) => s.compaction_due(),
            Store::Postgres(_) => false,
        }
    }

    /// One bounded step of compaction, in its own transaction; a no-op
    /// when nothing is due. After a failure the store waits a moment
    /// before it reports work again.
    pub fn compact(&mut self) -> Result<CompactStep, StoreError> {
        match self {
            Store::Sqlite(s) => s.compact(),
            Store::Postgres(_) => Ok(CompactStep::default()),
        }
    }

    /// Removes readings older than `cutoff_ns` (device time), at most about
    /// `max_rows` per call so the merger is not held up for long.
    pub fn retain(&mut self, cutoff_ns: i64, max_rows: u64) -> Result<RetainStep, StoreError> {
        match self {
            Store::Sqlite(s) => s.retain(cutoff_ns, max_rows),
            Store::Postgres(s) => s.retain(cutoff_ns, max_rows),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(agent: &str, epoch: u64, seq: u64, n: usize) -> BatchWrite {
        BatchWrite {
            agent: Arc::from(agent),
            epoch,
            seq,
            received_ns: 1,
            readings: (0..n)
                .map(|i| NewReading {
                    series_id: 1,
                    ts_ns: i as i64,
                    value: crate::model::StoredValue::I64(0),
                })
                .collect(),
        }
    }

    #[test]
    fn urls_parse_and_hide_passwords() {
        assert_eq!(
            "sqlite:/tmp/x.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            "sqlite://rel.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Sqlite("rel.db".into())
        );
        let pg: StoreUrl = "postgres://u:secret@127.0.0.1:5432/test".parse().unwrap();
        assert_eq!(pg.to_string(), "postgres://u:***@127.0.0.1:5432/test");
        assert_eq!(format!("{pg:?}"), "postgres://u:***@127.0.0.1:5432/test");
        assert!(
            "postgresql://root@127.0.0.1/test"
                .parse::<StoreUrl>()
                .is_ok()
        );
        let err = "mysql://u:pw@h/db".parse::<StoreUrl>().unwrap_err();
        assert!(err.contains("unsupported") && !err.contains("pw"), "{err}");
        assert!("sqlite:".parse::<StoreUrl>().is_err());
    }

    #[test]
    fn plan_skips_what_is_stored_and_advances_the_rest() {
        let a: Arc<str> = Arc::from("a");
        let set = WriteSet {
            batches: vec![
                batch("a", 1, 5, 3),
                batch("a", 1, 6, 2),
                batch("a", 1, 7, 4),
                batch("b", 9, 1, 1),
            ],
            epochs: vec![(
                a.clone(),
                1,
                EpochRow {
                    committed_seq: 7,
                    dropped: 2,
                    last_seq: 8,
                },
            )],
            agents: vec![(a.clone(), AgentWrite::default())],
        };
        // Another collector committed up to 6 and saw 4 dropped.
        let stored = HashMap::from([(
            (a.clone(), 1),
            EpochRow {
                committed_seq: 6,
                dropped: 4,
                last_seq: 6,
            },
        )]);
        let plan = Plan::new(&set, &stored);
        assert_eq!(plan.write, [false, false, true, true]);
        assert_eq!(plan.report.skipped, [0, 1]);
        assert_eq!(
            plan.report.epochs,
            [
                (
                    a.clone(),
                    1,
                    EpochRow {
                        committed_seq: 7,
                        dropped: 4,
                        last_seq: 8
                    }
                ),
                (
                    Arc::from("b"),
                    9,
                    EpochRow {
                        committed_seq: 1,
                        ..EpochRow::default()
                    }
                ),
            ]
        );
        let agents = plan.agents(&set);
        assert_eq!(
            agents.len(),
            2,
            "b is added although the merger left it out"
        );
        assert_eq!((agents[0].1.batches_deduplicated, agents[0].2), (2, 4));
        assert_eq!((agents[1].0.as_ref(), agents[1].2), ("b", 1));
    }

    #[test]
    fn retention_checks_a_tenth_of_the_period_within_bounds() {
        let r = Retention::new(Duration::from_secs(30 * 86400));
        assert_eq!(r.check_every, Duration::from_secs(3600));
        let r = Retention::new(Duration::from_secs(5));
        assert_eq!(r.check_every, Duration::from_secs(1));
    }
}
