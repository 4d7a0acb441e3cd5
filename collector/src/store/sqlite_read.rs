//! The SQLite store's read side: what the Query service asks of the database.
//!
//! Every call opens its own read-only connection (the merger owns the only
//! write connection; in WAL mode readers never block it). The functions are
//! blocking: [`super::read::Reader`] calls them on the blocking pool.
//!
//! Points live in head rows and per-series chunks, and compaction moves
//! them while queries run; `sqlite_scan` reads them so that each point is
//! seen exactly once. `SqliteReader::range` takes one short read snapshot
//! per group of series and fetches full (immutable) chunks afterwards, one
//! at a time, so no read snapshot is held while the caller waits for a slow
//! client (a held snapshot would keep the WAL from being checkpointed). The
//! price: a range is not one snapshot; readings committed while it streams
//! may or may not appear, and none appears twice.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::read::{MAX_CHUNK_POINTS, ReadError, Selector, StoredAgent, TimeSpan};
use super::sqlite_scan::{self, Merge, ScanError};
use crate::model::{Point, SeriesKey, SeriesMeta};

/// How long a read waits for a lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of the database file a read connection maps.
const MMAP_BYTES: i64 = 1 << 30;

/// Series whose head points and small chunks one range snapshot reads.
const RANGE_GROUP: usize = 64;

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
        // Chunks are read whole: map the file rather than copy every page
        // through read(2) into a cache that dies with this connection.
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)
            .map_err(open_err)?;
        Ok(conn)
    }

    fn query_err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> ReadError + '_ {
        move |source| ReadError::Query {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn scan_err(&self, what: &'static str) -> impl Fn(ScanError) -> ReadError + '_ {
        move |e| match e {
            ScanError::Sqlite(source) => ReadError::Query {
                what,
                path: self.path.clone(),
                source,
            },
            ScanError::Blob { table, id, source } => ReadError::Blob {
                what,
                path: self.path.clone(),
                table,
                id,
                source,
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
        // Only the fields given, so an agent filter uses the unique index
        // (agent, device, ...) instead of scanning every series.
        let mut clauses = Vec::new();
        let mut values: Vec<&str> = Vec::new();
        for (column, value) in [
            ("agent", &sel.agent),
            ("device", &sel.device),
            ("metric", &sel.metric),
        ] {
            if !value.is_empty() {
                values.push(value);
                clauses.push(format!("{column} = ?{}", values.len()));
            }
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, agent, device, metric, labels, unit FROM series {filter} ORDER BY id"
            ))
            .map_err(&err)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), |row| {
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
        let ids: Vec<i64> = series.iter().map(|m| m.id).collect();
        let newest =
            sqlite_scan::latest(&conn, &ids).map_err(self.scan_err("read latest point"))?;
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
        mut sink: impl FnMut(Arc<SeriesMeta>, Vec<Point>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        let Some((lo, hi)) = span.closed() else {
            return Ok(());
        };
        let limit = max_chunk.clamp(1, MAX_CHUNK_POINTS);
        let conn = self.open()?;
        let series = self.series_on(&conn, sel)?;
        let err = self.scan_err("read range");
        for group in series.chunks(RANGE_GROUP) {
            let ids: Vec<i64> = group.iter().map(|m| m.id).collect();
            let scans = sqlite_scan::snapshot(&conn, &ids, lo, hi).map_err(&err)?;
            for (meta, scan) in group.iter().zip(scans) {
                let meta = Arc::new(meta.clone());
                let mut merge = Merge::new(&conn, meta.id, lo, hi, scan);
                loop {
                    let mut points = Vec::with_capacity(limit);
                    if !merge.next_points(&mut points, limit).map_err(&err)? {
                        break;
                    }
                    if sink(Arc::clone(&meta), points).is_break() {
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

/// A stored counter as u64; a negative value (never written) reads as 0.
fn counter(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use super::super::sqlite_tests::TempDb;
    use crate::model::StoredValue;

    /// Runs `check` on what is in the head, then again once all of it is
    /// compacted into chunks: both layouts answer the same.
    fn in_head_and_chunks(db: &mut TempDb, check: impl Fn(&SqliteReader)) {
        check(&db.reader());
        db.store.compact_all().unwrap();
        check(&db.reader());
    }

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
        let mut db = TempDb::new("kinds");
        db.series(1, "a", "d", "m", "{}");
        db.reading(1, 10, StoredValue::F64(1.5));
        db.reading(1, 20, StoredValue::I64(-7));
        db.reading(1, 30, StoredValue::Bool(true));
        db.reading(1, 40, StoredValue::Str("on, \"really\"".into()));
        db.reading(1, 50, StoredValue::Timeout("no answer in 1s".into()));
        db.reading(1, 60, StoredValue::Error("connection refused".into()));
        db.reading(1, 70, StoredValue::F64(f64::NAN));
        in_head_and_chunks(&mut db, |r| {
            let mut got = Vec::new();
            r.range(&Selector::default(), TimeSpan::default(), 100, |_, p| {
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
        });
    }

    #[test]
    fn unknown_kind_is_an_error_naming_the_series() {
        let db = TempDb::new("badkind");
        db.series(9, "a", "d", "m", "{}");
        let mut e = super::super::codec::Encoder::head();
        e.push(9, 10, 0, super::super::codec::RawValue::I64(0));
        let mut blob = e.finish();
        // flags, count, three column lengths, series 9, ts 10: then the kind.
        assert_eq!(blob[..8], [1, 1, 1, 1, 2, 18, 20, 1]);
        blob[7] = 17;
        db.conn
            .execute(
                "INSERT INTO head VALUES (1, 11, 9, 9, 10, 10, 1, ?1)",
                [blob],
            )
            .unwrap();
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
        let mut db = TempDb::new("latest");
        db.series(1, "a", "d", "m1", "{}");
        db.series(2, "a", "d", "m2", "{}");
        db.series(3, "a", "d", "m3", "{}");
        db.reading(1, 300, StoredValue::I64(3));
        db.reading(1, 100, StoredValue::I64(1)); // arrived late, older
        db.reading(2, 50, StoredValue::Error("boom".into()));
        let expect = [
            (1, 300, StoredValue::I64(3)),
            (2, 50, StoredValue::Error("boom".into())),
        ];
        let check = |r: &SqliteReader, expect: &[(i64, i64, StoredValue)]| {
            let latest = r.latest(&Selector::default()).unwrap();
            let got: Vec<_> = latest
                .iter()
                .map(|(m, p)| (m.id, p.ts_ns, p.value.clone()))
                .collect();
            assert_eq!(got, expect);
        };
        in_head_and_chunks(&mut db, |r| check(r, &expect));
        // Newer in the head than in the chunks, and older.
        db.reading(1, 400, StoredValue::I64(4));
        db.reading(2, 10, StoredValue::I64(0));
        let expect = [
            (1, 400, StoredValue::I64(4)),
            (2, 50, StoredValue::Error("boom".into())),
        ];
        in_head_and_chunks(&mut db, |r| check(r, &expect));
    }

    #[test]
    fn range_is_half_open_ordered_and_chunked() {
        let mut db = TempDb::new("range");
        db.series(1, "a", "d", "m", "{}");
        db.series(2, "a", "d", "n", "{}");
        db.series(3, "b", "d", "m", "{}");
        // Inserted out of order, with a duplicate timestamp.
        for ts in [5, 3, 9, 1, 7, 3, 10, 0] {
            db.reading(1, ts, StoredValue::I64(ts));
        }
        db.reading(2, 4, StoredValue::I64(400));
        let span = TimeSpan {
            since_ns: Some(1),
            until_ns: Some(10),
        };
        in_head_and_chunks(&mut db, |r| {
            let mut chunks = Vec::new();
            r.range(&sel("a", "", ""), span, 2, |m, p| {
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
        });
    }

    #[test]
    fn range_stops_when_the_sink_breaks_and_handles_empty_spans() {
        let mut db = TempDb::new("rangebreak");
        db.series(1, "a", "d", "m", "{}");
        for ts in 0..10 {
            db.reading(1, ts, StoredValue::I64(ts));
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
