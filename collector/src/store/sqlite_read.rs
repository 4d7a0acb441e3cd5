//! The SQLite store's read side: what the Query service asks of the database.
//!
//! Every call opens its own read-only connection (the merger owns the only
//! write connection; in WAL mode readers never block it). The functions are
//! blocking: [`super::read::Reader`] calls them on the blocking pool.
//!
//! `SqliteReader::range` pages through each series by `(ts_ns, rowid)` with
//! one short statement per chunk, so no read snapshot is held while the
//! caller waits for a slow client (a held snapshot would keep the WAL from
//! being checkpointed). The price: a range is not one snapshot; readings
//! committed while it streams may or may not appear, and none appears twice.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};

use super::read::{MAX_CHUNK_POINTS, ReadError, Selector, StoredAgent, TimeSpan};
use crate::model::{Point, SeriesKey, SeriesMeta, StoredValue};

/// How long a read waits for a lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a read-only connection per call to the database at `path`.
#[derive(Debug, Clone)]
pub struct SqliteReader {
    path: PathBuf,
}

impl SqliteReader {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteReader { path: path.into() }
    }

    /// The database file this reader opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<Connection, ReadError> {
        let open_err = |source| ReadError::Open {
            path: self.path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        Ok(conn)
    }

    fn query_err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> ReadError + '_ {
        move |source| ReadError::Query {
            what,
            path: self.path.clone(),
            source,
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
                        MAX(COALESCE(e.last_seq, 0) - COALESCE(e.committed_seq, 0), 0) \
                 FROM agents a LEFT JOIN epochs e ON e.agent = a.id AND e.epoch = a.epoch \
                 ORDER BY a.id",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(StoredAgent {
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
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Stored series passing `sel`, by id.
    pub fn series(&self, sel: &Selector) -> Result<Vec<SeriesMeta>, ReadError> {
        let conn = self.open()?;
        self.series_on(&conn, sel)
    }

    fn series_on(&self, conn: &Connection, sel: &Selector) -> Result<Vec<SeriesMeta>, ReadError> {
        let err = self.query_err("list series");
        let mut stmt = conn
            .prepare(
                "SELECT id, agent, device, metric, labels, unit FROM series \
                 WHERE (?1 = '' OR agent = ?1) AND (?2 = '' OR device = ?2) \
                   AND (?3 = '' OR metric = ?3) \
                 ORDER BY id",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![sel.agent, sel.device, sel.metric], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, agent, device, metric, labels, unit) = row.map_err(&err)?;
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&labels).map_err(|source| ReadError::Labels {
                    series: id,
                    store: self.path.display().to_string(),
                    source,
                })?;
            out.push(SeriesMeta {
                id,
                key: SeriesKey {
                    agent,
                    device,
                    metric,
                    labels,
                    unit,
                },
            });
        }
        Ok(out)
    }

    /// The newest point (by device time) of every series passing `sel`.
    /// Series without readings are left out.
    pub fn latest(&self, sel: &Selector) -> Result<Vec<(SeriesMeta, Point)>, ReadError> {
        let conn = self.open()?;
        let series = self.series_on(&conn, sel)?;
        let err = self.query_err("read latest point");
        let mut stmt = conn
            .prepare(
                "SELECT ts_ns, received_ns, kind, value FROM readings \
                 WHERE series_id = ?1 ORDER BY ts_ns DESC, rowid DESC LIMIT 1",
            )
            .map_err(&err)?;
        let mut out = Vec::with_capacity(series.len());
        for meta in series {
            let mut rows = stmt.query([meta.id]).map_err(&err)?;
            if let Some(row) = rows.next().map_err(&err)? {
                let point = self.point(meta.id, row).map_err(|e| e.into_read(&err))?;
                out.push((meta, point));
            }
        }
        Ok(out)
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
        mut sink: impl FnMut(Arc<SeriesMeta>, Vec<Point>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        let Some((lo, hi)) = span.closed() else {
            return Ok(());
        };
        let limit = max_chunk.clamp(1, MAX_CHUNK_POINTS);
        let conn = self.open()?;
        let series = self.series_on(&conn, sel)?;
        let err = self.query_err("read range");
        // First page, then keyset pages after the last (ts_ns, rowid) seen.
        // `ts_ns >= ?2` keeps the (series_id, ts_ns) index usable for both.
        let mut first = conn
            .prepare(
                "SELECT ts_ns, received_ns, kind, value, rowid FROM readings \
                 WHERE series_id = ?1 AND ts_ns >= ?2 AND ts_ns <= ?3 \
                 ORDER BY ts_ns, rowid LIMIT ?4",
            )
            .map_err(&err)?;
        let mut next = conn
            .prepare(
                "SELECT ts_ns, received_ns, kind, value, rowid FROM readings \
                 WHERE series_id = ?1 AND ts_ns >= ?2 AND ts_ns <= ?3 \
                   AND (ts_ns > ?2 OR rowid > ?4) \
                 ORDER BY ts_ns, rowid LIMIT ?5",
            )
            .map_err(&err)?;
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        for meta in series {
            let meta = Arc::new(meta);
            let mut cursor: Option<(i64, i64)> = None;
            loop {
                let mut rows = match cursor {
                    None => first.query(params![meta.id, lo, hi, limit_sql]),
                    Some((ts, rowid)) => next.query(params![meta.id, ts, hi, rowid, limit_sql]),
                }
                .map_err(&err)?;
                let mut points = Vec::with_capacity(limit.min(256));
                while let Some(row) = rows.next().map_err(&err)? {
                    let point = self.point(meta.id, row).map_err(|e| e.into_read(&err))?;
                    cursor = Some((point.ts_ns, row.get(4).map_err(&err)?));
                    points.push(point);
                }
                // End the statement (and its read snapshot) before handing over.
                drop(rows);
                let full = points.len() == limit;
                if !points.is_empty() && sink(Arc::clone(&meta), points).is_break() {
                    return Ok(());
                }
                if !full {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Decodes `ts_ns, received_ns, kind, value` at the start of a row.
    fn point(&self, series: i64, row: &rusqlite::Row<'_>) -> Result<Point, RowError> {
        let ts_ns: i64 = row.get(0)?;
        let received_ns: i64 = row.get(1)?;
        let kind: i64 = row.get(2)?;
        let bad = |reason: String| {
            RowError::Bad(ReadError::Reading {
                series,
                ts_ns,
                store: self.path.display().to_string(),
                reason,
            })
        };
        let value = row.get_ref(3)?;
        let text = |v: ValueRef<'_>| -> Result<String, RowError> {
            match v {
                ValueRef::Text(t) => Ok(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Null => Ok(String::new()),
                other => Err(bad(format!(
                    "kind {kind} wants text, found {:?}",
                    other.data_type()
                ))),
            }
        };
        let value = match (kind, value) {
            (0, ValueRef::Real(v)) => StoredValue::F64(v),
            (0, ValueRef::Integer(v)) => StoredValue::F64(v as f64),
            // SQLite stores a NaN as NULL.
            (0, ValueRef::Null) => StoredValue::F64(f64::NAN),
            (1, ValueRef::Integer(v)) => StoredValue::I64(v),
            (2, ValueRef::Integer(v)) => StoredValue::Bool(v != 0),
            (3, v) => StoredValue::Str(text(v)?),
            (4, v) => StoredValue::Timeout(text(v)?),
            (5, v) => StoredValue::Error(text(v)?),
            (0..=2, other) => {
                return Err(bad(format!(
                    "kind {kind} with a value of type {:?}",
                    other.data_type()
                )));
            }
            (other, _) => return Err(bad(format!("unknown kind {other}"))),
        };
        Ok(Point {
            ts_ns,
            received_ns,
            value,
        })
    }
}

/// A row that could not be read (SQLite) or decoded (bad data).
enum RowError {
    Sqlite(rusqlite::Error),
    Bad(ReadError),
}

impl From<rusqlite::Error> for RowError {
    fn from(e: rusqlite::Error) -> Self {
        RowError::Sqlite(e)
    }
}

impl RowError {
    fn into_read(self, err: impl Fn(rusqlite::Error) -> ReadError) -> ReadError {
        match self {
            RowError::Sqlite(e) => err(e),
            RowError::Bad(e) => e,
        }
    }
}

/// A stored counter as u64; a negative value (never written) reads as 0.
fn counter(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A database file with the real schema in WAL mode, deleted on drop.
    /// The writer connection stays open, as the merger's does.
    struct TempDb {
        path: PathBuf,
        conn: Connection,
    }

    impl TempDb {
        fn new(name: &str) -> TempDb {
            let path = std::env::temp_dir().join(format!(
                "tributary-read-{name}-{}-{}.db",
                std::process::id(),
                crate::model::now_ns()
            ));
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
            conn.execute_batch(include_str!("schema.sql")).unwrap();
            TempDb { path, conn }
        }

        fn series(&self, id: i64, agent: &str, device: &str, metric: &str, labels: &str) {
            self.conn
                .execute(
                    "INSERT INTO series (id, agent, device, metric, labels, unit) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'V')",
                    params![id, agent, device, metric, labels],
                )
                .unwrap();
        }

        fn reading(&self, series: i64, ts: i64, kind: i64, value: rusqlite::types::Value) {
            self.conn
                .execute(
                    "INSERT INTO readings (series_id, ts_ns, received_ns, kind, value) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![series, ts, ts + 1, kind, value],
                )
                .unwrap();
        }

        fn reader(&self) -> SqliteReader {
            SqliteReader::new(&self.path)
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    use rusqlite::types::Value as V;

    fn sel(agent: &str, device: &str, metric: &str) -> Selector {
        Selector {
            agent: agent.into(),
            device: device.into(),
            metric: metric.into(),
        }
    }

    #[test]
    fn agents_join_the_committed_seq_of_their_current_epoch() {
        let db = TempDb::new("agents");
        let big_epoch = u64::MAX - 5;
        db.conn
            .execute_batch(&format!(
                "INSERT INTO agents VALUES ('b', {}, '10.0.0.2:5000', 77, 10, 2, 3, 4);
                 INSERT INTO agents VALUES ('a', 7, '', 0, 0, 0, 0, 0);
                 INSERT INTO epochs VALUES ('b', 1, 999, 0, 999);
                 INSERT INTO epochs VALUES ('b', {}, 42, 3, 50);",
                big_epoch as i64, big_epoch as i64
            ))
            .unwrap();
        let agents = db.reader().agents().unwrap();
        assert_eq!(
            agents,
            vec![
                StoredAgent {
                    id: "a".into(),
                    epoch: 7,
                    ..StoredAgent::default()
                },
                StoredAgent {
                    id: "b".into(),
                    epoch: big_epoch,
                    peer: "10.0.0.2:5000".into(),
                    last_seen_ns: 77,
                    committed_seq: 42,
                    readings_stored: 10,
                    batches_deduplicated: 2,
                    dropped_at_agent: 3,
                    batches_resent: 4,
                    lag: 8,
                },
            ]
        );
    }

    #[test]
    fn series_filter_by_agent_device_metric() {
        let db = TempDb::new("series");
        db.series(1, "a1", "pump", "temp", r#"{"room":"1","zone":"x"}"#);
        db.series(2, "a1", "pump", "rpm", "{}");
        db.series(3, "a2", "pump", "temp", "{}");
        db.series(4, "a2", "fan", "temp", "{}");
        let r = db.reader();
        let ids =
            |s: Selector| -> Vec<i64> { r.series(&s).unwrap().iter().map(|m| m.id).collect() };
        assert_eq!(ids(sel("", "", "")), [1, 2, 3, 4]);
        assert_eq!(ids(sel("a1", "", "")), [1, 2]);
        assert_eq!(ids(sel("", "pump", "temp")), [1, 3]);
        assert_eq!(ids(sel("a2", "fan", "temp")), [4]);
        assert!(ids(sel("nope", "", "")).is_empty());
        let first = &r.series(&sel("", "", "")).unwrap()[0];
        assert_eq!(
            first.key.labels,
            BTreeMap::from([("room".into(), "1".into()), ("zone".into(), "x".into())])
        );
        assert_eq!(first.key.unit, "V");
    }

    #[test]
    fn every_kind_decodes() {
        let db = TempDb::new("kinds");
        db.series(1, "a", "d", "m", "{}");
        db.reading(1, 10, 0, V::Real(1.5));
        db.reading(1, 20, 1, V::Integer(-7));
        db.reading(1, 30, 2, V::Integer(1));
        db.reading(1, 40, 3, V::Text("on, \"really\"".into()));
        db.reading(1, 50, 4, V::Text("no answer in 1s".into()));
        db.reading(1, 60, 5, V::Text("connection refused".into()));
        db.reading(1, 70, 0, V::Null);
        let mut got = Vec::new();
        db.reader()
            .range(&Selector::default(), TimeSpan::default(), 100, |_, p| {
                got.extend(p);
                ControlFlow::Continue(())
            })
            .unwrap();
        let values: Vec<_> = got.iter().map(|p| p.value.clone()).collect();
        assert_eq!(
            values[..6],
            [
                StoredValue::F64(1.5),
                StoredValue::I64(-7),
                StoredValue::Bool(true),
                StoredValue::Str("on, \"really\"".into()),
                StoredValue::Timeout("no answer in 1s".into()),
                StoredValue::Error("connection refused".into()),
            ]
        );
        assert!(matches!(values[6], StoredValue::F64(v) if v.is_nan()));
        assert_eq!(got[0].received_ns, 11);
    }

    #[test]
    fn unknown_kind_is_an_error_naming_the_series() {
        let db = TempDb::new("badkind");
        db.series(9, "a", "d", "m", "{}");
        db.reading(9, 10, 17, V::Null);
        let err = db.reader().latest(&Selector::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("series 9") && msg.contains("unknown kind 17"),
            "{msg}"
        );
        assert!(!err.is_unavailable());
    }

    #[test]
    fn latest_is_the_newest_by_device_time_and_skips_empty_series() {
        let db = TempDb::new("latest");
        db.series(1, "a", "d", "m1", "{}");
        db.series(2, "a", "d", "m2", "{}");
        db.series(3, "a", "d", "m3", "{}");
        db.reading(1, 300, 1, V::Integer(3));
        db.reading(1, 100, 1, V::Integer(1)); // arrived late, older
        db.reading(2, 50, 5, V::Text("boom".into()));
        let latest = db.reader().latest(&Selector::default()).unwrap();
        let got: Vec<_> = latest
            .iter()
            .map(|(m, p)| (m.id, p.ts_ns, p.value.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 300, StoredValue::I64(3)),
                (2, 50, StoredValue::Error("boom".into()))
            ]
        );
    }

    #[test]
    fn range_is_half_open_ordered_and_chunked() {
        let db = TempDb::new("range");
        db.series(1, "a", "d", "m", "{}");
        db.series(2, "a", "d", "n", "{}");
        db.series(3, "b", "d", "m", "{}");
        // Inserted out of order, with a duplicate timestamp.
        for ts in [5, 3, 9, 1, 7, 3, 10, 0] {
            db.reading(1, ts, 1, V::Integer(ts));
        }
        db.reading(2, 4, 1, V::Integer(400));
        let span = TimeSpan {
            since_ns: Some(1),
            until_ns: Some(10),
        };
        let mut chunks = Vec::new();
        db.reader()
            .range(&sel("a", "", ""), span, 2, |m, p| {
                chunks.push((m.id, p.iter().map(|p| p.ts_ns).collect::<Vec<_>>()));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(
            chunks,
            [
                (1, vec![1, 3]),
                (1, vec![3, 5]),
                (1, vec![7, 9]),
                (2, vec![4]),
            ]
        );
    }

    #[test]
    fn range_stops_when_the_sink_breaks_and_handles_empty_spans() {
        let db = TempDb::new("rangebreak");
        db.series(1, "a", "d", "m", "{}");
        for ts in 0..10 {
            db.reading(1, ts, 1, V::Integer(ts));
        }
        let r = db.reader();
        let mut calls = 0;
        r.range(&Selector::default(), TimeSpan::default(), 3, |_, _| {
            calls += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(calls, 1);
        for span in [
            TimeSpan {
                since_ns: Some(5),
                until_ns: Some(5),
            },
            TimeSpan {
                since_ns: None,
                until_ns: Some(i64::MIN),
            },
        ] {
            r.range(&Selector::default(), span, 3, |_, _| {
                panic!("no chunk expected")
            })
            .unwrap();
        }
        let mut n = 0;
        r.range(&Selector::default(), TimeSpan::default(), 5, |_, p| {
            n += p.len();
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(n, 10);
    }

    #[test]
    fn a_missing_database_is_unavailable() {
        let path =
            std::env::temp_dir().join(format!("tributary-missing-{}.db", std::process::id()));
        let err = SqliteReader::new(&path).agents().unwrap_err();
        assert!(err.is_unavailable());
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn selector_matches_like_the_sql() {
        let key = SeriesKey {
            agent: "a".into(),
            device: "d".into(),
            metric: "m".into(),
            labels: BTreeMap::new(),
            unit: String::new(),
        };
        assert!(sel("", "", "").matches(&key));
        assert!(sel("a", "d", "m").matches(&key));
        assert!(!sel("", "x", "").matches(&key));
    }
}
