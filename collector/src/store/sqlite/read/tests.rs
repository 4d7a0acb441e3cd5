//! Tests of the SQLite read side, each run on the head and again once
//! everything is compacted into chunks.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::*;

use super::super::codec::{RawPoint, RawValue};
use super::super::layout::encode;
use super::super::tests::{TempDb, Truth, check, check_windows};
use crate::model::{SeriesKey, StoredValue};

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
            "INSERT INTO agents VALUES ('b', {}, '10.0.0.2:5000', 77, 10, 2, 3, 4, 'col-a');
             INSERT INTO agents VALUES ('a', 7, '', 0, 0, 0, 0, 0, '');
             INSERT INTO epochs VALUES ('b', 1, 999, 0, 999, NULL);
             INSERT INTO epochs VALUES ('b', {}, 42, 3, 50, x'0100000102');",
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
                collector: "col-a".into(),
                // 44 and 47-49 above the mark 42.
                committed_ranges: 2,
                error: String::new(),
            },
        ]
    );
}

/// An `epochs` row whose ranges do not decode is its agent's error,
/// naming the row; the list itself, and the other agents, read as usual.
#[test]
fn an_undecodable_epochs_row_marks_its_agent_not_the_list() {
    let db = TempDb::new("agents-bad-row");
    db.conn
        .execute_batch(
            "INSERT INTO agents VALUES ('bad', 9, '', 0, 5, 0, 0, 0, 'col-a');
             INSERT INTO agents VALUES ('good', 3, '', 0, 7, 0, 0, 0, 'col-a');
             INSERT INTO epochs VALUES ('bad', 9, 4, 2, 6, x'07deadbeef');
             INSERT INTO epochs VALUES ('good', 3, 10, 0, 12, x'0100000102');",
        )
        .unwrap();
    let agents = db.reader().agents().unwrap();
    assert_eq!(agents.len(), 2, "{agents:?}");
    let (bad, good) = (&agents[0], &agents[1]);
    assert_eq!((bad.id.as_str(), good.id.as_str()), ("bad", "good"));
    assert!(
        bad.error.contains("\"bad\", epoch 9") && bad.error.contains("format 7"),
        "{}",
        bad.error
    );
    // What does read of it is there.
    assert_eq!(
        (
            bad.committed_seq,
            bad.readings_stored,
            bad.dropped_at_agent,
            bad.committed_ranges
        ),
        (4, 5, 2, 0)
    );
    assert_eq!(good.error, "");
    assert_eq!((good.committed_seq, good.committed_ranges), (10, 2));
}

#[test]
fn series_filter_by_agent_device_metric() {
    let db = TempDb::new("series");
    db.series(1, "a1", "pump", "temp", r#"{"room":"1","zone":"x"}"#);
    db.series(2, "a1", "pump", "rpm", "{}");
    db.series(3, "a2", "pump", "temp", "{}");
    db.series(4, "a2", "fan", "temp", "{}");
    let r = db.reader();
    let ids = |s: Selector| -> Vec<i64> { r.series(&s).unwrap().iter().map(|m| m.id).collect() };
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
            "INSERT INTO head (id, received_ns, min_series, max_series, min_ts, max_ts, count, data) \
             VALUES (1, 11, 9, 9, 10, 10, 1, ?1)",
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
    let path = std::env::temp_dir().join(format!("tributary-missing-{}.db", std::process::id()));
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

/// Kept connections follow the file the path names: a file moved away is
/// an outage (unavailable, as a fresh open), a file moved back is read
/// again, and a different file at the path is read, not the one a kept
/// connection was opened on.
#[test]
fn kept_connections_are_used_only_on_the_same_file() {
    let db = TempDb::new("kept");
    db.series(1, "a", "d", "m", "{}");
    let r = db.reader();
    let names = |r: &SqliteReader| -> Vec<i64> {
        r.series(&Selector::default())
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect()
    };
    assert_eq!(names(&r), [1]);
    let away = db.path.with_extension("away");
    std::fs::rename(&db.path, &away).unwrap();
    let err = r.series(&Selector::default()).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    std::fs::rename(&away, &db.path).unwrap();
    assert_eq!(names(&r), [1]);
    assert_eq!(r.series_census().unwrap().count, 1);

    drop(db);

    // Another database file takes the path (plain files, no WAL).
    let dir = std::env::temp_dir();
    let stem = format!(
        "tributary-kept-{}-{}",
        std::process::id(),
        crate::model::now_ns()
    );
    let (x, y) = (
        dir.join(format!("{stem}-x.db")),
        dir.join(format!("{stem}-y.db")),
    );
    let make = |path: &std::path::Path, ids: &[i64]| {
        let c = rusqlite::Connection::open(path).unwrap();
        c.execute_batch(
            "CREATE TABLE series (id INTEGER PRIMARY KEY, agent TEXT, device TEXT, \
             metric TEXT, labels TEXT, unit TEXT)",
        )
        .unwrap();
        for id in ids {
            c.execute(
                "INSERT INTO series VALUES (?1, 'a', 'd', 'm', '{}', '')",
                [id],
            )
            .unwrap();
        }
    };
    make(&x, &[1]);
    let r = SqliteReader::new(&x);
    assert_eq!(names(&r), [1]);
    make(&y, &[7, 9]);
    std::fs::rename(&y, &x).unwrap();
    assert_eq!(names(&r), [7, 9]);
    let census = r.series_census().unwrap();
    assert_eq!((census.count, census.max_id), (2, 9));
    let _ = std::fs::remove_file(&x);
}

/// Commits `points` ((series, ts) each, in that order) as one batch, with
/// values counting up, into `truth` as well.
fn commit(
    db: &mut TempDb,
    truth: &mut Truth,
    value: &mut i64,
    received: i64,
    points: &[(i64, i64)],
) {
    let batch = points
        .iter()
        .map(|&(s, ts)| {
            *value += 1;
            truth.entry(s).or_default().push((ts, *value));
            (s, ts, StoredValue::I64(*value))
        })
        .collect();
    db.batch(received, batch);
}

/// A series with full chunks cut from points that arrived out of order,
/// small chunks of late points inside a full chunk's span, and head points
/// among them; a quiet series beside it. Every window whose edge is a
/// chunk's first or last point, or next to one, returns exactly the points
/// within it: fails if a chunk that holds one is skipped, or decoding one
/// starts after or stops before a point it needs.
#[test]
fn windows_at_chunk_edges_find_every_point() {
    let mut db = TempDb::new("windows");
    db.series(1, "a", "d", "m", "{}");
    db.series(2, "a", "d", "n", "{}");
    let (mut truth, mut value) = (Truth::new(), 0);
    // 9,000 points of series 1, each batch of 100 newest first.
    for b in 0..90 {
        let points: Vec<(i64, i64)> = (0..100).rev().map(|k| (1, b * 100 + k)).collect();
        commit(&mut db, &mut truth, &mut value, b, &points);
    }
    let quiet: Vec<(i64, i64)> = (0..180).map(|k| (2, k * 50)).collect();
    commit(&mut db, &mut truth, &mut value, 90, &quiet);
    db.store.compact_all().unwrap();
    // Late: again at times the full chunks hold, and between the quiet
    // series' points.
    let late: Vec<(i64, i64)> = (100..200)
        .map(|ts| (1, ts))
        .chain((4090..4100).map(|ts| (1, ts)))
        .chain((0..180).map(|k| (2, k * 50 + 25)))
        .collect();
    commit(&mut db, &mut truth, &mut value, 91, &late);
    db.store.compact_all().unwrap();
    commit(
        &mut db,
        &mut truth,
        &mut value,
        92,
        &[(1, 5000), (1, 9500), (2, 0)],
    );
    assert!(
        db.conn
            .query_row(
                "SELECT count(*) FROM chunks WHERE series_id = 1 AND count = 4096",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap()
            >= 2,
        "series 1 has full chunks"
    );
    check(&db, &truth, "chunks and head");
    for v in truth.values_mut() {
        v.sort_unstable();
    }
    check_windows(&db, &truth, "every chunk edge", usize::MAX);
}

/// No writer leaves a chunk out of order (`check_chunks`); one that is,
/// where its disorder is read, is an error naming it rather than an answer
/// short of points.
#[test]
fn a_chunk_out_of_order_is_an_error_naming_it() {
    let db = TempDb::new("unsorted");
    db.series(1, "a", "d", "m", "{}");
    let points: Vec<RawPoint<'_>> = [10, 30, 20]
        .iter()
        .map(|&ts_ns| RawPoint {
            series: 0,
            ts_ns,
            received_ns: 0,
            value: RawValue::I64(ts_ns),
        })
        .collect();
    db.conn
        .execute(
            "INSERT INTO chunks (id, series_id, min_ts, max_ts, count, data) \
             VALUES (7, 1, 10, 30, 3, ?1)",
            [encode(&points)],
        )
        .unwrap();
    let span = TimeSpan {
        since_ns: Some(0),
        until_ns: Some(40),
    };
    let err = db
        .reader()
        .range(&Selector::default(), span, 10, |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("chunks row 7") && msg.contains("not in device-time order"),
        "{msg}"
    );
}

/// A chunk row whose `max_ts` is not its newest point's: `latest` (which
/// reads only the points at `max_ts`) says so instead of answering with
/// another point or none (review of the window-only decode).
#[test]
fn latest_of_a_chunk_whose_row_disagrees_is_an_error_naming_it() {
    for row_max in [25, 40] {
        let db = TempDb::new("max-ts");
        db.series(1, "a", "d", "m", "{}");
        let points: Vec<RawPoint<'_>> = [10, 20, 30]
            .iter()
            .map(|&ts_ns| RawPoint {
                series: 0,
                ts_ns,
                received_ns: 0,
                value: RawValue::I64(ts_ns),
            })
            .collect();
        db.conn
            .execute(
                "INSERT INTO chunks (id, series_id, min_ts, max_ts, count, data) \
                 VALUES (9, 1, 10, ?1, 3, ?2)",
                rusqlite::params![row_max, encode(&points)],
            )
            .unwrap();
        let err = db.reader().latest(&Selector::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("chunks row 9") && msg.contains("max_ts"),
            "row max_ts {row_max}: {msg}"
        );
    }
}
