//! The SQLite store's read side: what the Query service asks of the database.
//!
//! Every call takes a read-only connection of its own from a small pool
//! (at most [`IDLE_CONNECTIONS`] kept between calls; the merger owns the
//! only write connection; in WAL mode readers never block it). A kept
//! connection keeps its parsed schema and prepared statements, which
//! opening one per call paid for again each time. It is handed out again
//! only while the path still names the file it was opened on (same device
//! and inode, checked with one `stat` per call): a database file moved
//! away or replaced makes the call open afresh, which fails as before (an
//! outage still answers 503). The functions are blocking:
//! [`crate::store::read::Reader`] calls them on the blocking pool.
//!
//! Points live in head rows and per-series chunks, and compaction moves
//! them while queries run; `scan.rs` reads them so that each point is
//! seen exactly once. `SqliteReader::range` takes one short read snapshot
//! per group of series and fetches full (immutable) chunks afterwards, one
//! at a time, so no read snapshot is held while the caller waits for a slow
//! client (a held snapshot would keep the WAL from being checkpointed). The
//! price: a range is not one snapshot; readings committed while it streams
//! may or may not appear, and none appears twice.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::layout::LayoutError;
use super::scan::{self, Decoded, Merge, Received};
use crate::model::{Point, SeriesMeta};
use crate::store::labels::{SERIES_COLUMNS, SeriesRow};
use crate::store::read::{
    MAX_CHUNK_POINTS, ReadError, Selector, SeriesCensus, SeriesPage, SpanSeries, StoredAgent,
    TimeSpan, count_ranges, counter,
};

/// How long a read waits for a lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of the database file a read connection maps.
const MMAP_BYTES: i64 = 1 << 30;

/// Series whose head points and small chunks one range snapshot reads.
const RANGE_GROUP: usize = 64;

/// The same for PromQL's load (`range_series_lent`), which keeps every
/// point it reads anyway: each snapshot decodes every head row overlapping
/// its group's ids, so fewer, larger groups decode each row fewer times.
const LENT_RANGE_GROUP: usize = 512;

/// Read connections kept open between calls, per reader (the clones of
/// one reader share them). More calls at once open more, closed when done.
pub const IDLE_CONNECTIONS: usize = 4;

/// Prepared statements a kept connection caches (rusqlite's default is 16;
/// the scans and listings use about 15 distinct ones).
const STATEMENT_CACHE: usize = 32;

/// Reads the database at `path` through read-only connections, kept
/// between calls. Cheap to clone (clones share the kept connections).
#[derive(Debug, Clone)]
pub struct SqliteReader {
    path: PathBuf,
    /// Read connections between calls: taken and given back by readers
    /// (Query, PromQL, the fleet page) only; the merger writes through its
    /// own connection and never touches this lock.
    idle: Arc<Mutex<Vec<Kept>>>,
}

/// A connection kept between calls, with the file it was opened on.
#[derive(Debug)]
struct Kept {
    conn: Connection,
    file: FileId,
}

/// Which file a path names: device and inode (`None` where the platform
/// says nothing, and then no connection is kept).
type FileId = Option<(u64, u64)>;

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Some((meta.dev(), meta.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Ok(None)
    }
}

/// A connection lent to one call; back to the pool when dropped, unless a
/// transaction is still open on it or the pool is full.
pub(super) struct Lent<'r> {
    kept: Option<Kept>,
    idle: &'r Mutex<Vec<Kept>>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Always `Some` until dropped.
        match &self.kept {
            Some(k) => &k.conn,
            None => unreachable!("a lent connection is held until dropped"),
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(kept) = self.kept.take() else {
            return;
        };
        if kept.file.is_none() || !kept.conn.is_autocommit() {
            return;
        }
        // A std Mutex: held for a push, never across a blocking call. A
        // poisoned pool only means a call panicked meanwhile; the list
        // itself is intact.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(kept);
        }
    }
}

impl SqliteReader {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteReader {
            path: path.into(),
            idle: Arc::default(),
        }
    }

    /// The database file this reader opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A read connection: a kept one still on the file the path names, or
    /// a new one.
    pub(super) fn open(&self) -> Result<Lent<'_>, ReadError> {
        let current = file_id(&self.path).ok().flatten();
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if current.is_none() {
                // Gone or unknowable: nothing kept may be used again.
                idle.clear();
                None
            } else {
                idle.retain(|k| k.file == current);
                idle.pop()
            }
        };
        let kept = match reused {
            Some(kept) => kept,
            None => Kept {
                conn: self.connect()?,
                file: current,
            },
        };
        Ok(Lent {
            kept: Some(kept),
            idle: &self.idle,
        })
    }

    fn connect(&self) -> Result<Connection, ReadError> {
        let open_err = |cause| ReadError::Open {
            path: self.path.clone(),
            cause,
        };
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Chunks are read whole: map the file rather than copy every page
        // through read(2) into a cache that dies with this connection.
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)
            .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    fn query_err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> ReadError + '_ {
        move |cause| ReadError::Query {
            what,
            path: self.path.clone(),
            cause,
        }
    }

    fn scan_err(&self, what: &'static str) -> impl Fn(LayoutError) -> ReadError + '_ {
        move |e| match e {
            LayoutError::Sqlite(cause) => ReadError::Query {
                what,
                path: self.path.clone(),
                cause,
            },
            LayoutError::Blob { table, id, cause } => ReadError::Blob {
                what,
                path: self.path.clone(),
                table,
                id,
                cause: Box::new(cause),
            },
        }
    }

    /// Every agent ever seen, by id.
    pub fn agents(&self) -> Result<Vec<StoredAgent>, ReadError> {
        let conn = self.open()?;
        let err = self.query_err("list agents");
        let mut stmt = conn
            .prepare(
                "SELECT a.id, a.epoch, a.peer, a.last_seen_ns, COALESCE(e.committed_seq, 0), \
                        a.readings_stored, a.batches_deduplicated, \
                        (SELECT COALESCE(SUM(d.dropped), 0) FROM epochs d WHERE d.agent = a.id), \
                        a.batches_resent, \
                        MAX(COALESCE(e.last_seq, 0) - COALESCE(e.committed_seq, 0), 0), \
                        a.collector, e.committed_ranges \
                 FROM agents a LEFT JOIN epochs e ON e.agent = a.id AND e.epoch = a.epoch \
                 ORDER BY a.id",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |row| {
                let agent = StoredAgent {
                    id: row.get(0)?,
                    // The epoch is stored as the u64's bits in an i64.
                    epoch: row.get::<_, i64>(1)? as u64,
                    peer: row.get(2)?,
                    last_seen_ns: row.get(3)?,
                    committed_seq: counter(row.get(4)?),
                    readings_stored: counter(row.get(5)?),
                    batches_deduplicated: counter(row.get(6)?),
                    dropped_at_agent: counter(row.get(7)?),
                    batches_resent: counter(row.get(8)?),
                    lag: counter(row.get(9)?),
                    collector: row.get(10)?,
                    committed_ranges: 0,
                    error: String::new(),
                };
                Ok((agent, row.get::<_, Option<Vec<u8>>>(11)?))
            })
            .map_err(&err)?;
        let store = format!("sqlite {}", self.path.display());
        let mut out = Vec::new();
        for row in rows {
            let (mut agent, ranges) = row.map_err(&err)?;
            // A row that does not decode is the agent's error, not the
            // list's: the others are listed as usual.
            match count_ranges(
                &store,
                &agent.id,
                agent.epoch,
                agent.committed_seq,
                ranges.as_deref(),
            ) {
                Ok(n) => agent.committed_ranges = n,
                Err(e) => agent.error = e.to_string(),
            }
            out.push(agent);
        }
        Ok(out)
    }

    /// Stored series passing `sel`, by id.
    pub fn series(&self, sel: &Selector) -> Result<Vec<SeriesMeta>, ReadError> {
        let conn = self.open()?;
        self.series_on(&conn, sel, None)
    }

    /// One page of the series passing `sel`, by id.
    pub fn series_page(
        &self,
        sel: &Selector,
        page: SeriesPage,
    ) -> Result<Vec<SeriesMeta>, ReadError> {
        let conn = self.open()?;
        self.series_on(&conn, sel, Some(page))
    }

    fn series_on(
        &self,
        conn: &Connection,
        sel: &Selector,
        page: Option<SeriesPage>,
    ) -> Result<Vec<SeriesMeta>, ReadError> {
        let err = self.query_err("list series");
        // Only the fields given, so an agent filter uses the unique index
        // (agent, device, ...) instead of scanning every series.
        let mut clauses = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        for (column, value) in [
            ("agent", &sel.agent),
            ("device", &sel.device),
            ("metric", &sel.metric),
        ] {
            if !value.is_empty() {
                values.push(value.clone().into());
                clauses.push(format!("{column} = ?{}", values.len()));
            }
        }
        let mut limit = String::new();
        if let Some(page) = page {
            values.push(page.after_id.into());
            clauses.push(format!("id > ?{}", values.len()));
            values.push(i64::try_from(page.limit).unwrap_or(i64::MAX).into());
            limit = format!("LIMIT ?{}", values.len());
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        // Cached: a handful of shapes (which fields, paged or not).
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {SERIES_COLUMNS} FROM series {filter} ORDER BY id {limit}"
            ))
            .map_err(&err)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), series_row)
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let meta = row
                .map_err(&err)?
                .into_meta()
                .map_err(|labels| ReadError::Labels {
                    store: self.path.display().to_string(),
                    labels,
                })?;
            out.push(meta);
        }
        Ok(out)
    }

    /// How many series are stored, and the largest id.
    pub fn series_census(&self) -> Result<SeriesCensus, ReadError> {
        let conn = self.open()?;
        let err = self.query_err("count series");
        conn.prepare_cached(
            "SELECT (SELECT count(*) FROM series), (SELECT COALESCE(max(id), 0) FROM series)",
        )
        .map_err(&err)?
        .query_row([], |r| {
            Ok(SeriesCensus {
                count: counter(r.get(0)?),
                max_id: r.get(1)?,
            })
        })
        .map_err(&err)
    }

    /// The series that may have readings within `span`: those with a
    /// chunk overlapping it, and the id range of every head row
    /// overlapping it (both found in covering indexes, no blob read).
    pub fn series_in_span(&self, span: TimeSpan) -> Result<SpanSeries, ReadError> {
        let mut out = SpanSeries::default();
        let Some((lo, hi)) = span.closed() else {
            return Ok(out);
        };
        let conn = self.open()?;
        let err = self.query_err("list series in a span");
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT series_id FROM chunks WHERE max_ts >= ?1 AND min_ts <= ?2",
            )
            .map_err(&err)?;
        let ids = stmt
            .query_map([lo, hi], |r| r.get::<_, i64>(0))
            .map_err(&err)?;
        for id in ids {
            out.ids.insert(id.map_err(&err)?);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT min_series, max_series FROM head WHERE max_ts >= ?1 AND min_ts <= ?2",
            )
            .map_err(&err)?;
        let ranges = stmt
            .query_map([lo, hi], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        out.add_ranges(ranges);
        Ok(out)
    }

    /// The newest point (by device time) of every series passing `sel`.
    /// Series without readings are left out.
    pub fn latest(&self, sel: &Selector) -> Result<Vec<(SeriesMeta, Point)>, ReadError> {
        let conn = self.open()?;
        let series = self.series_on(&conn, sel, None)?;
        let ids: Vec<i64> = series.iter().map(|m| m.id).collect();
        let newest = scan::latest(&conn, &ids).map_err(self.scan_err("read latest point"))?;
        Ok(series
            .into_iter()
            .zip(newest)
            .filter_map(|(meta, p)| Some((meta, p?)))
            .collect())
    }

    /// Points of every series passing `sel` within `span`, series by series
    /// (by id), each in device-time order, in chunks of at most `max_chunk`
    /// points (clamped to `1..=MAX_CHUNK_POINTS`). `sink` gets every chunk
    /// and may stop the walk with `ControlFlow::Break`.
    pub fn range(
        &self,
        sel: &Selector,
        span: TimeSpan,
        max_chunk: usize,
        sink: impl FnMut(Arc<SeriesMeta>, Vec<Point>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        if span.closed().is_none() {
            return Ok(());
        }
        let conn = self.open()?;
        let series = self.series_on(&conn, sel, None)?;
        let ids: Vec<i64> = series.iter().map(|m| m.id).collect();
        self.range_on(
            &conn,
            &ids,
            span,
            max_chunk,
            (RANGE_GROUP, Received::Decode),
            handing_over(&series, max_chunk, sink),
        )
    }

    /// [`range`](Self::range) over the given series (by id, as listed),
    /// on one connection.
    pub fn range_series(
        &self,
        series: &[SeriesMeta],
        span: TimeSpan,
        max_chunk: usize,
        sink: impl FnMut(Arc<SeriesMeta>, Vec<Point>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        if span.closed().is_none() || series.is_empty() {
            return Ok(());
        }
        let conn = self.open()?;
        let ids: Vec<i64> = series.iter().map(|m| m.id).collect();
        self.range_on(
            &conn,
            &ids,
            span,
            max_chunk,
            (RANGE_GROUP, Received::Decode),
            handing_over(series, max_chunk, sink),
        )
    }

    /// [`range_series`](Self::range_series) over the series `ids`, with
    /// every chunk lent to `sink` (with the series' index in `ids`)
    /// instead of handed over: one buffer for the whole walk, for a caller
    /// that converts the points as they come (PromQL's load). The chunks'
    /// receive times are not decoded: a [`Point`] from a chunk carries 0
    /// as its receive time (PromQL never reads it). With `E` =
    /// [`Sample`](crate::store::read::Sample) the blobs are decoded
    /// straight into samples, and readings that are not samples are left
    /// out (PromQL's load).
    pub fn range_series_lent<E: Decoded>(
        &self,
        ids: &[i64],
        span: TimeSpan,
        max_chunk: usize,
        mut sink: impl FnMut(usize, &[E]) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        if span.closed().is_none() || ids.is_empty() {
            return Ok(());
        }
        let conn = self.open()?;
        self.range_on(
            &conn,
            ids,
            span,
            max_chunk,
            (LENT_RANGE_GROUP, Received::Skip),
            |i, points| {
                let flow = sink(i, points);
                points.clear();
                flow
            },
        )
    }

    fn range_on<E: Decoded>(
        &self,
        conn: &Connection,
        ids: &[i64],
        span: TimeSpan,
        max_chunk: usize,
        (group_size, received): (usize, Received),
        mut sink: impl FnMut(usize, &mut Vec<E>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        let Some((lo, hi)) = span.closed() else {
            return Ok(());
        };
        let limit = max_chunk.clamp(1, MAX_CHUNK_POINTS);
        let err = self.scan_err("read range");
        let mut points = Vec::new();
        for (g, group) in ids.chunks(group_size).enumerate() {
            let scans = scan::snapshot(conn, group, lo, hi, received).map_err(&err)?;
            for (j, (&id, scan)) in group.iter().zip(scans).enumerate() {
                let index = g * group_size + j;
                let mut merge = Merge::new(conn, id, (lo, hi), scan, received);
                loop {
                    // The sink takes the points or leaves the buffer empty.
                    points.clear();
                    if !merge.next_points(&mut points, limit).map_err(&err)? {
                        break;
                    }
                    if sink(index, &mut points).is_break() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Every stored point of every series passing `sel`, series by series
    /// (by id), each in device-time order: what a full `range` streams, in
    /// one vector. For tests and tools that check what was stored (the
    /// layout has no table a plain `SELECT` could count).
    pub fn points(&self, sel: &Selector) -> Result<Vec<(SeriesMeta, Vec<Point>)>, ReadError> {
        let mut out: Vec<(SeriesMeta, Vec<Point>)> = Vec::new();
        self.range(
            sel,
            TimeSpan::default(),
            MAX_CHUNK_POINTS,
            |meta, points| {
                match out.last_mut() {
                    Some((m, all)) if m.id == meta.id => all.extend(points),
                    _ => out.push((SeriesMeta::clone(&meta), points)),
                }
                ControlFlow::Continue(())
            },
        )?;
        Ok(out)
    }
}

/// A sink of whole chunks of `series` (`range`, `range_series`) as one of
/// lent chunks by index (`range_on`): each chunk's points taken from the
/// buffer, with the series' `Arc` made once per series.
fn handing_over<'s>(
    series: &'s [SeriesMeta],
    max_chunk: usize,
    mut sink: impl FnMut(Arc<SeriesMeta>, Vec<Point>) -> ControlFlow<()> + 's,
) -> impl FnMut(usize, &mut Vec<Point>) -> ControlFlow<()> + 's {
    let capacity = max_chunk.clamp(1, MAX_CHUNK_POINTS);
    let mut current: Option<(usize, Arc<SeriesMeta>)> = None;
    move |i, points| {
        let meta = match &current {
            Some((at, meta)) if *at == i => Arc::clone(meta),
            _ => {
                let Some(listed) = series.get(i) else {
                    return ControlFlow::Break(());
                };
                let meta = Arc::new(listed.clone());
                current = Some((i, Arc::clone(&meta)));
                meta
            }
        };
        sink(
            meta,
            std::mem::replace(points, Vec::with_capacity(capacity)),
        )
    }
}

/// A `series` row, columns as [`SERIES_COLUMNS`] lists them (the write
/// side's `load` reads them the same way).
pub(super) fn series_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SeriesRow> {
    Ok(SeriesRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        device: r.get(2)?,
        metric: r.get(3)?,
        labels: r.get(4)?,
        unit: r.get(5)?,
    })
}

#[cfg(test)]
mod tests;
