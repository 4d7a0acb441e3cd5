//! The write side as the merger sees it: [`Store`] picks SQLite or
//! PostgreSQL by the store URL and forwards every call (enum dispatch; the
//! only place above the backends that names them).

use super::contract::{
    CommitReport, CompactStep, Durability, EpochRow, Loaded, RetainStep, WriteSet,
};
use super::error::StoreError;
use super::labels::SeriesRow;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::url::StoreUrl;
use crate::model::SeriesKey;

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

    /// What the merger keeps in memory besides the series.
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        match self {
            Store::Sqlite(s) => s.load(),
            Store::Postgres(s) => s.load(),
        }
    }

    /// Calls `each` with every stored series, as its row (labels as the
    /// stored JSON), so the merger fills its table without an owned key
    /// per series in between.
    pub(crate) fn load_series(
        &mut self,
        each: &mut dyn FnMut(SeriesRow),
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.load_series(each),
            Store::Postgres(s) => s.load_series(each),
        }
    }

    /// The stored delivery state of (agent, epoch), if any.
    pub fn epoch(&mut self, agent: &str, epoch: u64) -> Result<Option<EpochRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.epoch(agent, epoch),
            Store::Postgres(s) => s.epoch(agent, epoch),
        }
    }

    /// Series stored for `agent` (by this collector or any other sharing
    /// the database).
    pub fn series_count(&mut self, agent: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.series_count(agent),
            Store::Postgres(s) => s.series_count(agent),
        }
    }

    /// Global ids of the `keys` that are stored, in order; creates nothing.
    pub fn lookup_series(&mut self, keys: &[SeriesKey]) -> Result<Vec<Option<i64>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.lookup_series(keys),
            Store::Postgres(s) => s.lookup_series(keys),
        }
    }

    /// The stored rows of the series `ids` (those that exist), for a merger
    /// whose table no longer holds them.
    pub(crate) fn series_by_ids(&mut self, ids: &[i64]) -> Result<Vec<SeriesRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.series_by_ids(ids),
            Store::Postgres(s) => s.series_by_ids(ids),
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

    /// Committed points not yet moved into chunks (waiting for a round or
    /// not yet moved by the round under way): what grows while compaction
    /// falls behind. 0 without compaction.
    pub fn compaction_backlog(&self) -> u64 {
        match self {
            Store::Sqlite(s) => s.compaction_backlog(),
            Store::Postgres(_) => 0,
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
