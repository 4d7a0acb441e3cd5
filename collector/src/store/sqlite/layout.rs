//! What the SQLite layout's writers (compaction, retention) and readers
//! (scans) share: the size of a full chunk, the compaction marks that say
//! where a point is, chunk encoding, and the one way they fail.

use rusqlite::Connection;

use super::codec::{CodecError, Encoder, RawPoint};
use crate::model::IdMap;

/// Points of a full chunk. Chunks with fewer are "small" and get merged.
pub const CHUNK_POINTS: usize = 4096;

/// Why reading or writing the SQLite layout failed: the database, or a
/// head row or chunk whose blob does not decode. Compaction (steps and the
/// replay at open), retention and scans fail the same two ways. Never
/// shown as it is: the store turns it into a `StoreError` or `ReadError`
/// naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{0}")]
    Sqlite(rusqlite::Error),
    #[error("bad {table} row {id}: {cause}")]
    Blob {
        table: &'static str,
        id: i64,
        cause: CodecError,
    },
}

impl From<rusqlite::Error> for LayoutError {
    fn from(e: rusqlite::Error) -> Self {
        LayoutError::Sqlite(e)
    }
}

/// Maps a decoding error of row `id` of `table` into a [`LayoutError`].
pub fn bad(table: &'static str, id: i64) -> impl Fn(CodecError) -> LayoutError {
    move |cause| LayoutError::Blob { table, id, cause }
}

/// The compaction marks: head rows up to a series' mark are in chunks for
/// that series (their points of it must not be read from the head). The
/// mark of a series is the largest of its `compacted` row (written by
/// earlier versions) and of the `compacted_span` rows covering its id.
#[derive(Debug, Default)]
pub struct Marks {
    per_series: IdMap<i64>,
    /// (head id, first series, last series).
    spans: Vec<(i64, i64, i64)>,
}

impl Marks {
    /// Every mark (the compactor's replay).
    pub fn load(conn: &Connection) -> rusqlite::Result<Marks> {
        let mut marks = Marks {
            spans: Marks::spans(conn)?,
            ..Marks::default()
        };
        let mut stmt = conn.prepare("SELECT series_id, head_id FROM compacted")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            marks.per_series.insert(r.get(0)?, r.get(1)?);
        }
        Ok(marks)
    }

    /// The span marks (a few rows; readers take them with the per-series
    /// marks of the series they read, in the same transaction).
    pub fn spans(conn: &Connection) -> rusqlite::Result<Vec<(i64, i64, i64)>> {
        conn.prepare_cached("SELECT head_id, series_lo, series_hi FROM compacted_span")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
    }

    /// The mark of `series` given its `compacted` row, if any.
    pub fn with_spans(spans: &[(i64, i64, i64)], series: i64, own: i64) -> i64 {
        spans
            .iter()
            .filter(|(_, lo, hi)| (*lo..=*hi).contains(&series))
            .fold(own, |m, (head, _, _)| m.max(*head))
    }

    /// The mark of `series` (0: none).
    pub fn of(&self, series: i64) -> i64 {
        let own = self.per_series.get(&series).copied().unwrap_or(0);
        Marks::with_spans(&self.spans, series, own)
    }
}

/// A chunk blob of `points` (of one series, in order).
pub fn encode(points: &[RawPoint<'_>]) -> Vec<u8> {
    let mut e = Encoder::chunk();
    for p in points {
        e.push(0, p.ts_ns, p.received_ns, p.value);
    }
    e.finish()
}
