//! The read side, as the Query service sees it: [`Reader`] picks SQLite or
//! PostgreSQL by the store URL, and the types both answer in.
//!
//! Every method is async. SQLite calls run on tokio's blocking pool (each
//! on a read-only connection of its own, kept between calls while the
//! file is the same: `sqlite/read.rs`); PostgreSQL calls use a small pool
//! of read-only connections (`postgres/read.rs`), never the merger's.
//! `range` hands chunks over a bounded channel, so a slow client stops the
//! walk.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::error::{error_chain, sqlite_cause};
use super::labels::BadLabels;
use super::postgres::PgReader;
use super::sqlite::SqliteReader;
use super::url::StoreUrl;
use crate::model::{Point, SeriesKey, SeriesMeta};

/// Most points `Reader::range` hands over in one chunk.
pub const MAX_CHUNK_POINTS: usize = 4096;

/// Chunks `Reader::range` may have read ahead of its consumer.
const RANGE_AHEAD: usize = 2;

/// A reading as PromQL keeps it: its device time and its value as a
/// double (`prom_labels::sample_value`). SQLite's reads can decode their
/// blobs straight into these (`SqliteReader::range_series_lent`), skipping
/// the readings that are not samples (strings, failures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts_ns: i64,
    pub value: f64,
}

/// Errors of the read side, each naming what failed and where. As on the
/// write side (see `error.rs`), the message holds the cause and `source()`
/// is `None`, so a cause is printed once.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database file could not be opened (missing, unreadable, not SQLite).
    #[error("open {path} read-only: {}", sqlite_cause(cause, path))]
    Open {
        path: std::path::PathBuf,
        cause: rusqlite::Error,
    },
    /// An SQLite query failed.
    #[error("{what} in {path}: {cause}")]
    Query {
        what: &'static str,
        path: std::path::PathBuf,
        cause: rusqlite::Error,
    },
    /// A PostgreSQL query failed.
    #[error("{what} in {store}: {}", error_chain(cause))]
    Postgres {
        what: &'static str,
        store: String,
        cause: tokio_postgres::Error,
    },
    /// No PostgreSQL connection could be had from the pool.
    #[error("{what} in {store}: no connection: {}", error_chain(cause))]
    Pool {
        what: &'static str,
        store: String,
        cause: deadpool_postgres::PoolError,
    },
    /// The reader could not be set up (bad URL, pool settings).
    #[error("{store}: {message}")]
    Setup { store: String, message: String },
    /// A `series.labels` cell is not a JSON object of strings.
    #[error("{store}: {labels}")]
    Labels { store: String, labels: BadLabels },
    /// A `readings` row does not match its `kind` (PostgreSQL).
    #[error("bad reading of series {series} at ts_ns {ts_ns} in {store}: {reason}")]
    Reading {
        series: i64,
        ts_ns: i64,
        store: String,
        reason: String,
    },
    /// A stored blob (an SQLite head row or chunk) does not decode; `cause`
    /// is the backend's decoding error.
    #[error("{what} in {path}: bad {table} row {id}: {cause}")]
    Blob {
        what: &'static str,
        path: std::path::PathBuf,
        table: &'static str,
        id: i64,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An export's cursor row is gone: a collector sharing the store was
    /// started or reloaded without that export. Saving on would let the
    /// trim delete rows the export has not sent.
    #[error(
        "export cursor {name:?} was removed (a collector sharing the store no longer configures it)"
    )]
    CursorRemoved { name: String },
    /// An `epochs` row's committed ranges do not decode; the message names
    /// the row (agent, epoch).
    #[error("{store}: reading committed ranges: {message}")]
    Ranges { store: String, message: String },
    /// The blocking task running an SQLite read failed (panicked).
    #[error("{what}: read task failed: {message}")]
    Task { what: &'static str, message: String },
}

impl ReadError {
    /// True when retrying later may succeed: the database could not be
    /// opened or reached, stayed locked past the busy timeout, or refused
    /// connections for now.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ReadError::Open { .. } | ReadError::Pool { .. } => true,
            ReadError::Query { cause, .. } => matches!(
                cause.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            ReadError::Postgres { cause, .. } => match cause.code() {
                // No server answer at all: the connection broke.
                None => true,
                // Connection exceptions, insufficient resources (too many
                // connections), operator intervention (shutting down).
                Some(code) => ["08", "53", "57P"]
                    .iter()
                    .any(|class| code.code().starts_with(class)),
            },
            ReadError::Setup { .. }
            | ReadError::Labels { .. }
            | ReadError::Reading { .. }
            | ReadError::Blob { .. }
            | ReadError::Ranges { .. }
            | ReadError::CursorRemoved { .. }
            | ReadError::Task { .. } => false,
        }
    }
}

/// Which series a request is about. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub agent: String,
    pub device: String,
    pub metric: String,
}

impl Selector {
    /// Whether a series passes the filter (the same rule the SQL applies).
    pub fn matches(&self, key: &SeriesKey) -> bool {
        (self.agent.is_empty() || self.agent == key.agent)
            && (self.device.is_empty() || self.device == key.device)
            && (self.metric.is_empty() || self.metric == key.metric)
    }
}

/// A slice of the series list in id order: at most `limit` series whose
/// id is above `after_id`. What `ListSeries` pages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesPage {
    pub after_id: i64,
    pub limit: usize,
}

/// A half-open time span `[since_ns, until_ns)`; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeSpan {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
}

impl TimeSpan {
    /// The span as a closed interval `[lo, hi]`, or `None` when it is empty.
    pub(crate) fn closed(&self) -> Option<(i64, i64)> {
        let lo = self.since_ns.unwrap_or(i64::MIN);
        let hi = match self.until_ns {
            Some(until) => until.checked_sub(1)?,
            None => i64::MAX,
        };
        (lo <= hi).then_some((lo, hi))
    }
}

/// An agent as stored, with the committed sequence of its newest epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredAgent {
    pub id: String,
    /// Newest spool epoch.
    pub epoch: u64,
    /// Peer address of the last stream.
    pub peer: String,
    /// Name of the collector that accepted its newest stream ('' before
    /// any collector recorded one).
    pub collector: String,
    pub last_seen_ns: i64,
    /// Last committed sequence of `epoch`; 0 when none.
    pub committed_seq: u64,
    pub readings_stored: u64,
    pub batches_deduplicated: u64,
    pub dropped_at_agent: u64,
    pub batches_resent: u64,
    /// Newest sequence the agent reported spooling in `epoch` minus the
    /// committed one.
    pub lag: u64,
    /// Ranges of sequences of `epoch` committed above `committed_seq` (a
    /// backlog draining beside live batches, or sequences the agent's
    /// spool skipped).
    pub committed_ranges: u64,
    /// What could not be read of the agent (an `epochs` row of `epoch`
    /// whose ranges do not decode, named); empty when all of it reads.
    pub error: String,
}

/// How many ranges the stored `committed_ranges` of (agent, epoch) hold
/// above its `committed_seq` (`mark`); an encoding that does not decode is
/// an error naming the row.
pub(crate) fn count_ranges(
    store: &str,
    agent: &str,
    epoch: u64,
    mark: u64,
    encoded: Option<&[u8]>,
) -> Result<u64, ReadError> {
    super::CommittedSet::decode(mark, encoded)
        .map(|set| set.ranges().len() as u64)
        .map_err(|e| ReadError::Ranges {
            store: store.to_owned(),
            message: format!("epochs row of agent {agent:?}, epoch {epoch}: {e}"),
        })
}

/// The series that may have readings in a span (`Reader::series_in_span`):
/// ids, and id ranges `[lo, hi]` (sorted, disjoint) of which any may.
/// Like Prometheus's block-granular answer, it may hold a series without
/// a reading in the span (SQLite's head rows hold several series), never
/// leave one out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanSeries {
    pub ids: std::collections::HashSet<i64>,
    pub ranges: Vec<(i64, i64)>,
}

impl SpanSeries {
    /// Whether series `id` may have readings in the span.
    pub fn contains(&self, id: i64) -> bool {
        if self.ids.contains(&id) {
            return true;
        }
        let i = self.ranges.partition_point(|&(_, hi)| hi < id);
        self.ranges.get(i).is_some_and(|&(lo, _)| lo <= id)
    }

    /// Adds the id range `[lo, hi]` (kept sorted and merged).
    pub fn add_ranges(&mut self, mut ranges: Vec<(i64, i64)>) {
        ranges.append(&mut self.ranges);
        ranges.sort_unstable();
        for (lo, hi) in ranges {
            match self.ranges.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => self.ranges.push((lo, hi)),
            }
        }
    }
}

/// How many series are stored and the largest id: what a cache of the
/// series list compares with. Series rows are never deleted or changed
/// and ids are never reused, so a list of `count` series whose largest id
/// is `max_id` is the whole list. (Ids alone would not do on PostgreSQL,
/// where collectors sharing the database may commit ids out of order.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesCensus {
    pub count: u64,
    pub max_id: i64,
}

/// A stored counter as u64; a negative value (never written) reads as 0.
pub(crate) fn counter(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// One chunk of a range: points of one series, in device-time order.
pub type RangeChunk = (Arc<SeriesMeta>, Vec<Point>);

/// The read side of the configured store. Cheap to clone.
#[derive(Clone)]
pub enum Reader {
    Sqlite(SqliteReader),
    Postgres(PgReader),
}

impl Reader {
    /// A reader for `url`. Connects lazily: a database that is down now
    /// makes calls fail with an unavailable error, not this.
    pub fn open(url: &StoreUrl) -> Result<Reader, ReadError> {
        match url {
            StoreUrl::Sqlite(path) => Ok(Reader::Sqlite(SqliteReader::new(path))),
            StoreUrl::Postgres(url) => Ok(Reader::Postgres(PgReader::new(url)?)),
        }
    }

    /// [`Reader::open`] for PromQL's own reader
    /// (`HttpContext::query_reader`): on PostgreSQL its connections show
    /// as `tributary-collector promql` in `pg_stat_activity`.
    pub fn open_promql(url: &StoreUrl) -> Result<Reader, ReadError> {
        match url {
            StoreUrl::Postgres(url) => Ok(Reader::Postgres(PgReader::named(
                url,
                "tributary-collector promql",
            )?)),
            StoreUrl::Sqlite(_) => Reader::open(url),
        }
    }

    /// Every agent ever seen, by id.
    pub async fn agents(&self) -> Result<Vec<StoredAgent>, ReadError> {
        match self {
            Reader::Sqlite(r) => blocking(r, "list agents", |r| r.agents()).await,
            Reader::Postgres(r) => r.agents().await,
        }
    }

    /// One page of the stored series passing `sel`, by id.
    pub async fn series_page(
        &self,
        sel: Selector,
        page: SeriesPage,
    ) -> Result<Vec<SeriesMeta>, ReadError> {
        match self {
            Reader::Sqlite(r) => {
                blocking(r, "list series", move |r| r.series_page(&sel, page)).await
            }
            Reader::Postgres(r) => r.series_page(&sel, page).await,
        }
    }

    /// The newest point (by device time) of every series passing `sel`.
    /// Series without readings are left out.
    pub async fn latest(&self, sel: Selector) -> Result<Vec<(SeriesMeta, Point)>, ReadError> {
        match self {
            Reader::Sqlite(r) => blocking(r, "latest", move |r| r.latest(&sel)).await,
            Reader::Postgres(r) => r.latest(&sel).await,
        }
    }

    /// How many series are stored, and the largest id.
    pub async fn series_census(&self) -> Result<SeriesCensus, ReadError> {
        match self {
            Reader::Sqlite(r) => blocking(r, "count series", |r| r.series_census()).await,
            Reader::Postgres(r) => r.series_census().await,
        }
    }

    /// The series that may have readings within `span` (see [`SpanSeries`]).
    pub async fn series_in_span(&self, span: TimeSpan) -> Result<SpanSeries, ReadError> {
        match self {
            Reader::Sqlite(r) => {
                blocking(r, "list series in a span", move |r| r.series_in_span(span)).await
            }
            Reader::Postgres(r) => r.series_in_span(span).await,
        }
    }

    /// Starts walking the points of every series passing `sel` within
    /// `span`, series by series (by id), each in device-time order, in
    /// chunks of at most `max_chunk` points. The walk stops at the first
    /// error (sent as the last item) or when the receiver is dropped.
    /// Must be called within a tokio runtime.
    pub fn range(
        &self,
        sel: Selector,
        span: TimeSpan,
        max_chunk: usize,
    ) -> mpsc::Receiver<Result<RangeChunk, ReadError>> {
        let (tx, rx) = mpsc::channel(RANGE_AHEAD);
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                // Detached: ends when the walk is done or the receiver is gone.
                tokio::task::spawn_blocking(move || {
                    let result = r.range(&sel, span, max_chunk, |meta, points| {
                        match tx.blocking_send(Ok((meta, points))) {
                            Ok(()) => std::ops::ControlFlow::Continue(()),
                            Err(_) => std::ops::ControlFlow::Break(()),
                        }
                    });
                    if let Err(e) = result {
                        let _ = tx.blocking_send(Err(e));
                    }
                });
            }
            Reader::Postgres(r) => {
                let r = r.clone();
                tokio::spawn(async move {
                    if let Err(e) = r.range(&sel, span, max_chunk, &tx).await {
                        let _ = tx.send(Err(e)).await;
                    }
                });
            }
        }
        rx
    }

    /// [`range`](Self::range) over exactly `series` (as listed by
    /// `series_page`), in their order, in one read: one SQLite
    /// connection, or one PostgreSQL page query per series.
    pub fn range_series(
        &self,
        series: Vec<SeriesMeta>,
        span: TimeSpan,
        max_chunk: usize,
    ) -> mpsc::Receiver<Result<RangeChunk, ReadError>> {
        let (tx, rx) = mpsc::channel(RANGE_AHEAD);
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                tokio::task::spawn_blocking(move || {
                    let result = r.range_series(&series, span, max_chunk, |meta, points| match tx
                        .blocking_send(Ok((meta, points)))
                    {
                        Ok(()) => std::ops::ControlFlow::Continue(()),
                        Err(_) => std::ops::ControlFlow::Break(()),
                    });
                    if let Err(e) = result {
                        let _ = tx.blocking_send(Err(e));
                    }
                });
            }
            Reader::Postgres(r) => {
                let r = r.clone();
                tokio::spawn(async move {
                    if let Err(e) = r.range_series(series, span, max_chunk, &tx).await {
                        let _ = tx.send(Err(e)).await;
                    }
                });
            }
        }
        rx
    }
}

/// Runs a blocking SQLite read on tokio's blocking pool.
async fn blocking<T, F>(r: &SqliteReader, what: &'static str, f: F) -> Result<T, ReadError>
where
    T: Send + 'static,
    F: FnOnce(&SqliteReader) -> Result<T, ReadError> + Send + 'static,
{
    let r = r.clone();
    tokio::task::spawn_blocking(move || f(&r))
        .await
        .map_err(|e| ReadError::Task {
            what,
            message: e.to_string(),
        })?
}
