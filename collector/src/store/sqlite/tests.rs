//! Tests of the SQLite layout as a whole: readings written through
//! `SqliteStore` (head rows, compaction steps, reopening), read back through
//! `SqliteReader`, compared with what was committed.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::{Connection, params};

use super::codec::Decoder;
use super::layout::CHUNK_POINTS;
use super::{SqliteReader, SqliteStore};
use crate::merger::Pace;
use crate::model::{NewReading, Point, StoredValue};
use crate::store::read::{Selector, TimeSpan};
use crate::store::{BatchWrite, CommittedSet, CompactStep, Durability, WriteSet};

mod epochs;
mod prop;
mod samples;
mod speed;

/// A database file with the real schema, written by a real `SqliteStore`
/// (WAL, as the merger's), plus a plain connection for direct SQL; deleted
/// on drop.
pub(crate) struct TempDb {
    pub path: PathBuf,
    pub conn: Connection,
    pub store: SqliteStore,
    durability: Durability,
    seq: u64,
}

impl TempDb {
    pub fn new(name: &str) -> TempDb {
        TempDb::with(name, Durability::Normal)
    }

    /// With `synchronous=FULL`, as the collector's default (an fsync per
    /// commit, compaction steps excepted).
    pub fn full(name: &str) -> TempDb {
        TempDb::with(name, Durability::Full)
    }

    fn with(name: &str, durability: Durability) -> TempDb {
        let path = std::env::temp_dir().join(format!(
            "tributary-store-{name}-{}-{}.db",
            std::process::id(),
            crate::model::now_ns()
        ));
        let store = SqliteStore::open(&path, durability).unwrap();
        let conn = Connection::open(&path).unwrap();
        TempDb {
            path,
            conn,
            store,
            durability,
            seq: 0,
        }
    }

    pub fn series(&self, id: i64, agent: &str, device: &str, metric: &str, labels: &str) {
        self.conn
            .execute(
                "INSERT INTO series (id, agent, device, metric, labels, unit) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'V')",
                params![id, agent, device, metric, labels],
            )
            .unwrap();
    }

    /// Commits one reading as its own batch, received at `ts + 1`.
    pub fn reading(&mut self, series: i64, ts: i64, value: StoredValue) {
        self.batch(ts + 1, vec![(series, ts, value)]);
    }

    /// Commits one batch.
    pub fn batch(&mut self, received_ns: i64, readings: Vec<(i64, i64, StoredValue)>) {
        self.seq += 1;
        let set = WriteSet {
            batches: vec![BatchWrite {
                agent: Arc::from("test"),
                epoch: 1,
                seq: self.seq,
                high_water: false,
                floor: 0,
                received_ns,
                readings: readings
                    .into_iter()
                    .map(|(series_id, ts_ns, value)| NewReading {
                        series_id,
                        ts_ns,
                        value,
                    })
                    .collect(),
            }],
            ..WriteSet::default()
        };
        let report = self.store.commit(&set).unwrap();
        assert!(report.skipped.is_empty());
    }

    /// Drops the store (as a crash would: no compaction on the way out)
    /// and opens it again.
    pub fn reopen(&mut self) {
        self.store = SqliteStore::open(&self.path, self.durability).unwrap();
    }

    pub fn reader(&self) -> SqliteReader {
        SqliteReader::new(&self.path)
    }

    fn count(&self, sql: &str) -> i64 {
        self.conn.query_row(sql, [], |r| r.get(0)).unwrap()
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

/// Ground truth: what was committed, per series, as (ts, value) sorted.
pub(crate) type Truth = BTreeMap<i64, Vec<(i64, i64)>>;

/// Everything the reader returns, checked to be in device-time order per
/// series, as (ts, value) sorted like the truth.
fn stored(r: &SqliteReader) -> Truth {
    let mut out = Truth::new();
    for (meta, points) in r.points(&Selector::default()).unwrap() {
        assert!(
            points.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
            "series {} out of order",
            meta.id
        );
        let mut v: Vec<(i64, i64)> = points.iter().map(|p| (p.ts_ns, int(p))).collect();
        v.sort_unstable();
        out.insert(meta.id, v);
    }
    out
}

fn int(p: &Point) -> i64 {
    match p.value {
        StoredValue::I64(v) => v,
        ref other => panic!("not an i64: {other:?}"),
    }
}

pub(crate) fn check(db: &TempDb, truth: &Truth, when: &str) {
    let r = db.reader();
    let got = stored(&r);
    let want: Truth = truth
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(s, v)| {
            let mut v = v.clone();
            v.sort_unstable();
            (*s, v)
        })
        .collect();
    assert_eq!(got, want, "{when}");
    // Latest agrees: the newest device time of each series.
    for (meta, p) in r.latest(&Selector::default()).unwrap() {
        let newest = want[&meta.id].iter().map(|(ts, _)| *ts).max();
        assert_eq!(Some(p.ts_ns), newest, "{when}: latest of {}", meta.id);
    }
    // A sub-span returns exactly the points within it.
    let span = TimeSpan {
        since_ns: Some(100),
        until_ns: Some(300),
    };
    let mut n = 0;
    r.range(&Selector::default(), span, 7, |_, p| {
        assert!(p.len() <= 7 && p.iter().all(|p| (100..300).contains(&p.ts_ns)));
        n += p.len();
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let expect = want
        .values()
        .flatten()
        .filter(|(ts, _)| (100..300).contains(ts))
        .count();
    assert_eq!(n, expect, "{when}: points in [100, 300)");
    check_chunks(db, when);
    check_windows(db, &want, when, 2);
}

/// Every chunk holds its points in device-time order, and its row's
/// `min_ts`, `max_ts` and `count` say what it holds: what readers rely on
/// to skip chunks (the index) and the points of one outside a window
/// (`scan.rs`).
pub(crate) fn check_chunks(db: &TempDb, when: &str) {
    let mut stmt = db
        .conn
        .prepare("SELECT id, series_id, min_ts, max_ts, count, data FROM chunks")
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let (id, series, min_ts, max_ts, count): (i64, i64, i64, i64, i64) = (
            r.get(0).unwrap(),
            r.get(1).unwrap(),
            r.get(2).unwrap(),
            r.get(3).unwrap(),
            r.get(4).unwrap(),
        );
        let blob: Vec<u8> = r.get(5).unwrap();
        let ts: Vec<i64> = Decoder::new(&blob, series, 0)
            .and_then(Decoder::collect_points)
            .unwrap()
            .iter()
            .map(|p| p.ts_ns)
            .collect();
        assert!(
            ts.windows(2).all(|w| w[0] <= w[1]),
            "{when}: chunk {id} out of order: {ts:?}"
        );
        assert_eq!(
            (ts.first().copied(), ts.last().copied(), ts.len() as i64),
            (Some(min_ts), Some(max_ts), count),
            "{when}: chunk {id}'s row"
        );
    }
}

/// Reads windows whose edges fall on stored points and on chunk bounds
/// (a chunk starting or ending exactly at a window's edge, or one point
/// past it) and checks each returns exactly the truth's points within it:
/// fails if a needed chunk is skipped, or decoding stops or starts at the
/// wrong point of one.
pub(crate) fn check_windows(db: &TempDb, want: &Truth, when: &str, most: usize) {
    let mut edges: Vec<i64> = db
        .conn
        .prepare("SELECT min_ts, max_ts FROM chunks ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok([r.get(0)?, r.get(1)?]))
        .unwrap()
        .flat_map(Result::unwrap)
        .collect();
    let mut stored: Vec<i64> = want.values().flatten().map(|(ts, _)| *ts).collect();
    stored.sort_unstable();
    stored.dedup();
    // A few stored times spread over the range, plus the chunk bounds.
    let step = (stored.len() / 4).max(1);
    edges.extend(stored.iter().step_by(step));
    edges.sort_unstable();
    edges.dedup();
    let step = (edges.len() / most).max(1);
    let r = db.reader();
    for &t in edges.iter().step_by(step) {
        for (lo, hi) in [
            (t, t),
            (t - 3, t),
            (t, t + 3),
            (t + 1, t + 9),
            (t - 9, t - 1),
        ] {
            let span = TimeSpan {
                since_ns: Some(lo),
                until_ns: Some(hi + 1),
            };
            let mut got = Truth::new();
            r.range(&Selector::default(), span, 5, |meta, p| {
                let v = got.entry(meta.id).or_default();
                v.extend(p.iter().map(|p| (p.ts_ns, int(p))));
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            for v in got.values_mut() {
                assert!(
                    v.windows(2).all(|w| w[0].0 <= w[1].0),
                    "{when}: [{lo}, {hi}] out of order"
                );
                v.sort_unstable();
            }
            let expect: Truth = want
                .iter()
                .map(|(s, v)| {
                    let inside: Vec<(i64, i64)> = v
                        .iter()
                        .copied()
                        .filter(|(ts, _)| (lo..=hi).contains(ts))
                        .collect();
                    (*s, inside)
                })
                .filter(|(_, v)| !v.is_empty())
                .collect();
            assert_eq!(got, expect, "{when}: points in [{lo}, {hi}]");
        }
    }
}

fn make_series(db: &TempDb, n: i64) {
    for id in 1..=n {
        db.series(id, "test", &format!("d{id}"), "m", "{}");
    }
}

#[test]
fn compaction_keeps_every_point_once_across_interleaved_commits_and_reads() {
    // FULL, so compaction steps switch `synchronous` back and forth
    // between the commits.
    let mut db = TempDb::full("interleaved");
    make_series(&db, 40);
    // Tiny steps: a round takes many transactions, and reads see it half done.
    db.store.set_step_budget(30, 4);
    let mut truth = Truth::new();
    let mut value = 0;
    let mut steps = 0;
    for round in 0..60 {
        // Wide, shallow batches (one point per series), plus one busy
        // series that fills full chunks, with late and repeated timestamps.
        for b in 0..5 {
            let ts = round * 5 + b;
            let mut readings = Vec::new();
            for s in 1..=40 {
                let ts = if (s + ts) % 7 == 0 { ts - 3 } else { ts };
                value += 1;
                readings.push((s, ts, StoredValue::I64(value)));
                truth.entry(s).or_default().push((ts, value));
            }
            for k in 0..300 {
                value += 1;
                let ts = ts * 10 + k % 12;
                readings.push((40, ts, StoredValue::I64(value)));
                truth.entry(40).or_default().push((ts, value));
            }
            db.batch(ts, readings);
            if round % 3 == 0 {
                db.store.start_round();
            }
            for _ in 0..2 {
                let step = db.store.compact().unwrap();
                steps += u64::from(step.chunks_written > 0);
            }
            // 2: FULL. Steps commit without an fsync; acked commits do not.
            assert_eq!(db.store.synchronous(), 2, "after compaction steps");
            check(&db, &truth, &format!("round {round} batch {b}"));
        }
        if round % 17 == 16 {
            // As after a crash mid-round: the head is replayed, marks kept.
            db.reopen();
            db.store.set_step_budget(30, 4);
            check(&db, &truth, &format!("reopened after round {round}"));
        }
    }
    db.store.compact_all().unwrap();
    check(&db, &truth, "all compacted");
    assert!(steps > 100, "only {steps} steps wrote chunks");
    assert_eq!(db.count("SELECT count(*) FROM head"), 0);
    // Quiet series were merged: a bounded number of small chunks each.
    let most_small = db.count(&format!(
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT count(*) AS n FROM chunks \
         WHERE count < {CHUNK_POINTS} GROUP BY series_id)"
    ));
    assert!(most_small <= 28, "{most_small} small chunks in one series");
    assert!(
        db.count(&format!(
            "SELECT count(*) FROM chunks WHERE count = {CHUNK_POINTS}"
        )) >= 15,
        "the busy series fills full chunks"
    );
    // Ids are never reused: new head rows after a reopen stay visible.
    db.reopen();
    value += 1;
    db.reading(1, 5, StoredValue::I64(value));
    truth.entry(1).or_default().push((5, value));
    check(&db, &truth, "after the last reopen");
}

#[test]
fn retention_removes_old_points_in_bounded_steps_and_keeps_the_rest_consistent() {
    let mut db = TempDb::new("retain");
    make_series(&db, 4);
    let mut truth = Truth::new();
    let mut value = 0;
    for round in 0..20 {
        for s in 1..=3 {
            for k in 0..10 {
                value += 1;
                let ts = round * 100 + k;
                db.reading(s, ts, StoredValue::I64(value));
                truth.entry(s).or_default().push((ts, value));
            }
        }
        db.store.compact_all().unwrap();
    }
    // Series 4 is still in the head: retention compacts it first.
    for ts in [500, 1500] {
        value += 1;
        db.reading(4, ts, StoredValue::I64(value));
        truth.entry(4).or_default().push((ts, value));
    }
    let mut removed = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        let step = db.store.retain(1000, 64).unwrap();
        // At most the budget, or one whole small chunk (below 512 here).
        assert!(step.removed < 512, "{step:?}");
        removed += step.removed;
        if step.done {
            break;
        }
        // Mid-pass: what is left is exactly the points not yet removed.
        let left = stored(&db.reader());
        let n: usize = left.values().map(Vec::len).sum();
        assert_eq!(n, truth_after(&truth, removed), "during retention");
        for (s, points) in &left {
            assert!(points.iter().all(|p| truth[s].contains(p)), "series {s}");
        }
    }
    assert_eq!(removed, 301, "every point before 1000 (in small chunks)");
    assert!(steps >= 4, "{steps} steps");
    for v in truth.values_mut() {
        v.retain(|(ts, _)| *ts >= 1000);
    }
    check(&db, &truth, "after retention");
    // The compactor knows what was trimmed and deleted: merging goes on.
    for round in 20..40 {
        for s in 1..=3 {
            value += 1;
            db.reading(s, round * 100, StoredValue::I64(value));
            truth.entry(s).or_default().push((round * 100, value));
        }
        db.store.compact_all().unwrap();
    }
    check(&db, &truth, "after more rounds");
}

/// Points of `truth` once `removed` are gone.
fn truth_after(truth: &Truth, removed: u64) -> usize {
    truth.values().map(Vec::len).sum::<usize>() - removed as usize
}

/// Runs compaction steps as the merger does after one group, while
/// compaction is due and `go_on` (the merger's rule) says so: the steps,
/// their work (points moved + points merged) and the points moved.
fn group_steps(db: &mut TempDb, mut go_on: impl FnMut(&CompactStep) -> bool) -> (u64, u64, u64) {
    let (mut steps, mut work, mut moved) = (0, 0, 0);
    while db.store.compaction_due() {
        let step = db.store.compact().unwrap();
        steps += 1;
        work += step.points + step.merged_points;
        moved += step.points;
        if !go_on(&step) {
            break;
        }
    }
    (steps, work, moved)
}

/// A store of 64 series, each with one point in each of 64 rounds, the
/// last round under way: in it every series merges 8 tier-0 chunks (1
/// point each) and then 8 tier-1 chunks (8 points each), 72 points
/// rewritten for each point moved.
fn in_a_merge_round(name: &str) -> TempDb {
    let mut db = TempDb::new(name);
    make_series(&db, 65);
    for round in 0..64 {
        db.batch(
            round + 1,
            (1..=64)
                .map(|s| (s, round, StoredValue::I64(round)))
                .collect(),
        );
        if round < 63 {
            db.store.compact_all().unwrap();
        }
    }
    db.store.start_round();
    // A step: one series' work (73 points) at most.
    db.store.set_step_budget(64, 1 << 20);
    db
}

#[test]
fn a_group_waits_for_bounded_work_during_a_round_of_tier_merges() {
    // A group of 4 readings (another series, pending for the next round)
    // committed while the merge round is under way.
    const READINGS: usize = 4;
    let group = |db: &mut TempDb| {
        db.batch(100, (0..4).map(|i| (65, i, StoredValue::I64(i))).collect());
    };
    // The rule before: steps until twice the group's readings moved. Each
    // step moves one point and merges 72, so the group waits for 8 steps,
    // 146 points of work per reading; with the real budget and a round of
    // a million points that was tens of seconds of stalled ingest.
    let mut before = in_a_merge_round("pace-before");
    group(&mut before);
    let mut moved_so_far = 0;
    let (steps, work, moved) = group_steps(&mut before, |step| {
        moved_so_far += step.points;
        *step != CompactStep::default() && moved_so_far < 2 * READINGS as u64
    });
    assert_eq!((steps, work, moved), (8, 8 * 73, 8), "the rule before");
    // The merger's rule: the work is bounded too (10 points a reading,
    // plus the step that crosses it).
    let mut db = in_a_merge_round("pace-after");
    group(&mut db);
    let mut pace = Pace::new(READINGS, db.store.compaction_backlog());
    let (steps, work, _) = group_steps(&mut db, |step| pace.go_on(step));
    assert!(
        work <= 10 * READINGS as u64 + 73,
        "{work} points of work in {steps} steps for a group of {READINGS} readings"
    );
    // The round still finishes, and every point is in one place.
    db.store.compact_all().unwrap();
    before.store.compact_all().unwrap();
    check(&db, &stored(&before.reader()), "merge round done");
}

#[test]
fn under_sustained_groups_the_paced_compaction_keeps_the_head_bounded() {
    // 1,000 groups of 64 readings (one per series), a round started
    // whenever none is under way, and after each group the merger's rule:
    // through the rounds whose steps are mostly tier merges (every 8th,
    // 64th and 512th), the head grows for a while and drains again. The
    // deepest is the 512th round's: 64 series × 584 points rewritten at
    // about 10 × 64 points of work a group, some 58 groups (46 measured).
    let mut db = TempDb::new("pace-sustained");
    make_series(&db, 64);
    db.store.set_step_budget(64, 1 << 20);
    let mut truth = Truth::new();
    let mut most_head = 0;
    for g in 0..1000 {
        let readings: Vec<_> = (1..=64)
            .map(|s| (s, g, StoredValue::I64(g * 100 + s)))
            .collect();
        for &(s, ts, _) in &readings {
            truth.entry(s).or_default().push((ts, g * 100 + s));
        }
        db.batch(g + 1, readings);
        if !db.store.compaction_due() {
            db.store.start_round();
        }
        let mut pace = Pace::new(64, db.store.compaction_backlog());
        group_steps(&mut db, |step| pace.go_on(step));
        most_head = most_head.max(db.count("SELECT count(*) FROM head"));
    }
    assert!(most_head <= 64, "the head grew to {most_head} rows");
    let head = db.count("SELECT count(*) FROM head");
    assert!(
        head <= 2,
        "the head did not drain: {head} rows after 1,000 groups"
    );
    check(&db, &truth, "after 1,000 groups");
    db.store.compact_all().unwrap();
    check(&db, &truth, "all compacted");
}

/// What `tributary-collector serve --store sqlite:/nonexistent/dir/x.db`
/// shows of the store, and what Query answers for such a file: the file,
/// the step and SQLite's cause, each once, as `main` prints an error
/// (`{:#}`, the cause chain).
#[test]
fn a_file_that_cannot_be_opened_is_named_once_with_its_cause() {
    let url = "sqlite:/nonexistent/dir/x.db".parse().unwrap();
    let Err(e) = crate::store::Store::open(&url, Durability::Full) else {
        panic!("/nonexistent/dir does not exist");
    };
    assert_eq!(
        format!("{:#}", anyhow::Error::from(e)),
        "sqlite /nonexistent/dir/x.db: unable to open database file"
    );
    let e = SqliteReader::new("/nonexistent/dir/x.db")
        .agents()
        .unwrap_err();
    assert_eq!(
        format!("{:#}", anyhow::Error::from(e)),
        "open /nonexistent/dir/x.db read-only: unable to open database file"
    );
}

/// A file made before `agents.collector` existed is upgraded when opened
/// (its rows kept, named by no collector); a commit then records the name
/// of the collector an agent streams to, and one with no name (`""`: the
/// agent streams elsewhere) leaves it, and so does one that saw the agent
/// before the stored row's collector did (a late commit of the collector
/// an agent left: collectors sharing PostgreSQL write the same way).
#[test]
fn an_older_file_gains_the_collector_column_and_commits_fill_it() {
    let path = std::env::temp_dir().join(format!(
        "tributary-store-upgrade-{}-{}.db",
        std::process::id(),
        crate::model::now_ns()
    ));
    let old = Connection::open(&path).unwrap();
    old.execute_batch(
        "CREATE TABLE agents (id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, \
         peer TEXT NOT NULL DEFAULT '', last_seen_ns INTEGER NOT NULL DEFAULT 0, \
         readings_stored INTEGER NOT NULL DEFAULT 0, \
         batches_deduplicated INTEGER NOT NULL DEFAULT 0, \
         dropped_at_agent INTEGER NOT NULL DEFAULT 0, \
         batches_resent INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
         INSERT INTO agents VALUES ('old', 3, '10.0.0.1:1', 5, 0, 0, 0, 0);",
    )
    .unwrap();
    drop(old);
    let mut store = SqliteStore::open(&path, Durability::Normal).unwrap();
    let reader = SqliteReader::new(&path);
    let names = |r: &SqliteReader| -> Vec<(String, String)> {
        r.agents()
            .unwrap()
            .into_iter()
            .map(|a| (a.id, a.collector))
            .collect()
    };
    assert_eq!(names(&reader), [("old".to_owned(), String::new())]);
    let write_seen = |store: &mut SqliteStore, agent: &str, collector: &str, seen: i64| {
        let set = WriteSet {
            agents: vec![(
                Arc::from(agent),
                crate::store::AgentWrite {
                    epoch: 3,
                    collector: collector.into(),
                    last_seen_ns: seen,
                    ..Default::default()
                },
            )],
            ..WriteSet::default()
        };
        store.commit(&set).unwrap();
    };
    let write = |store: &mut SqliteStore, agent: &str, collector: &str| {
        write_seen(store, agent, collector, 5)
    };
    write(&mut store, "old", "col-a");
    write(&mut store, "new", "col-b");
    write(&mut store, "old", "");
    assert_eq!(
        names(&reader),
        [
            ("new".to_owned(), "col-b".to_owned()),
            ("old".to_owned(), "col-a".to_owned())
        ]
    );
    // The agent moved to col-c (seen at 9); col-a's late commit (seen at 7)
    // does not take the name back.
    write_seen(&mut store, "old", "col-c", 9);
    write_seen(&mut store, "old", "col-a", 7);
    assert_eq!(names(&reader)[1], ("old".to_owned(), "col-c".to_owned()));
    // Opening it again changes nothing.
    drop(store);
    let _store = SqliteStore::open(&path, Durability::Normal).unwrap();
    assert_eq!(names(&reader).len(), 2);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// The compaction backlog the merger's pace reads counts the points of the
/// round under way not moved yet, not only those waiting for a round: a
/// round sealed with many points must not read as no backlog (review of
/// the work bound: the head could otherwise settle at several times the
/// bound).
#[test]
fn the_compaction_backlog_counts_the_round_under_way() {
    let mut db = in_a_merge_round("backlog-round");
    // 64 points in the round just started, none moved yet.
    assert_eq!(db.store.compaction_backlog(), 64);
    db.batch(100, (0..4).map(|i| (65, i, StoredValue::I64(i))).collect());
    assert_eq!(db.store.compaction_backlog(), 68);
    let mut moved = 0;
    while db.store.compaction_due() {
        let step = db.store.compact().unwrap();
        moved += step.points;
        if step.round_done {
            break;
        }
        assert_eq!(db.store.compaction_backlog(), 68 - moved);
    }
    assert_eq!(moved, 64);
    // The round is done: what is left waits for the next one.
    assert_eq!(db.store.compaction_backlog(), 4);
}
