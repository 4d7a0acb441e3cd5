//! Rough measurements of the SQLite store (ignored: run them by hand, as
//! each one's doc says). They print numbers and check nothing.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use super::*;
use crate::store::CompactStep;
use crate::store::read::{MAX_CHUNK_POINTS, Sample};

/// The process's peak resident memory, as `/proc/self/status` says it.
fn peak_memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("")
        .to_owned()
}

/// Rough numbers for the write path alone: `cargo test -p
/// tributary-collector --release --lib -- --ignored --nocapture store_speed`.
/// Batches like the bench's load agents (1,000 readings over 100 series of
/// one agent, 100 agents), durable commits of 100 batches, compaction steps
/// between commits as the merger runs them; then a range read of one series.
#[test]
#[ignore = "a measurement, not a test"]
fn store_speed() {
    let mut db = TempDb::new("speed");
    db.store = SqliteStore::open(&db.path, Durability::Full).unwrap();
    let (agents, per_agent) = (100i64, 100i64);
    db.conn.execute_batch("BEGIN").unwrap();
    make_series(&db, agents * per_agent);
    db.conn.execute_batch("COMMIT").unwrap();
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut seq = 0;
    let mut compact = std::time::Duration::ZERO;
    let mut ts = 1_700_000_000_000_000_000i64;
    while t0.elapsed().as_secs() < 10 {
        let mut set = WriteSet::default();
        for a in 0..agents {
            seq += 1;
            let readings = (0..1000)
                .map(|i| NewReading {
                    series_id: a * per_agent + 1 + i % per_agent,
                    ts_ns: ts + (i / per_agent) * 10_000_000,
                    value: StoredValue::F64(i as f64),
                })
                .collect();
            set.batches.push(BatchWrite {
                agent: Arc::from("test"),
                epoch: 1,
                seq,
                high_water: false,
                floor: 0,
                received_ns: ts,
                readings,
            });
        }
        ts += 100_000_000;
        db.store.commit(&set).unwrap();
        n += 100_000;
        // As the merger does: keep pace with the commit.
        let c = Instant::now();
        let mut moved = 0;
        while db.store.compaction_due() && moved < 200_000 {
            let step = db.store.compact().unwrap();
            moved += step.points;
            if step == CompactStep::default() {
                break;
            }
        }
        compact += c.elapsed();
    }
    let secs = t0.elapsed().as_secs_f64();
    let hwm = peak_memory();
    println!(
        "{n} readings in {secs:.1} s: {:.0} readings/s, {:.1} s in compaction, {hwm}, head {} points",
        n as f64 / secs,
        compact.as_secs_f64(),
        db.count("SELECT COALESCE(SUM(count), 0) FROM head")
    );
    let head = db.count("SELECT COALESCE(SUM(count), 0) FROM head");
    let c = Instant::now();
    let mut steps = 0;
    db.store.start_round();
    while db.store.compaction_due() {
        db.store.compact().unwrap();
        steps += 1;
    }
    println!(
        "compacting a round of {head} points: {:?} in {steps} steps",
        c.elapsed()
    );
    let r = db.reader();
    let sel = Selector {
        device: "d5".into(),
        ..Selector::default()
    };
    for _ in 0..3 {
        let t = Instant::now();
        let points: usize = r.points(&sel).unwrap().iter().map(|(_, p)| p.len()).sum();
        println!("range of one series: {points} points in {:?}", t.elapsed());
    }
}

/// Times reads of an existing database: `TRIBUTARY_DB=path AGENT=id cargo
/// test -p tributary-collector --release --lib -- --ignored --nocapture read_speed`.
#[test]
#[ignore = "a measurement, not a test"]
fn read_speed() {
    let Ok(path) = std::env::var("TRIBUTARY_DB") else {
        return;
    };
    let r = SqliteReader::new(&path);
    let sel = Selector {
        agent: std::env::var("AGENT").unwrap_or_default(),
        ..Selector::default()
    };
    for _ in 0..5 {
        let t = Instant::now();
        let series = r.series(&sel).unwrap();
        let t1 = t.elapsed();
        let mut n = 0;
        r.range(&sel, TimeSpan::default(), 4096, |_, p| {
            n += p.len();
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        println!(
            "{} series, {n} points: series {t1:?}, all {:?}",
            series.len(),
            t.elapsed()
        );
    }
}

/// The write path with many series of one point each per scrape, as in
/// `cargo xtask bench vs-prometheus` (2,000 targets × 106 series scraped
/// every second, batches every 100 ms): `WIDE_SERIES` (212,000) series,
/// `WIDE_SECONDS` (60) seconds of data written as fast as the store takes
/// it, compaction keeping pace as the merger runs it. Prints CPU seconds
/// per million readings and the peak RSS of the test process:
/// `cargo test -p tributary-collector --release --lib -- --ignored
/// --nocapture store_speed_wide`.
#[test]
#[ignore = "a measurement, not a test"]
fn store_speed_wide() {
    let env = |name: &str, default: i64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let series = env("WIDE_SERIES", 212_000);
    let seconds = env("WIDE_SECONDS", 60);
    let per_device = 106;
    let mut db = TempDb::new("wide");
    db.store = SqliteStore::open(&db.path, Durability::Full).unwrap();
    db.conn.execute_batch("BEGIN").unwrap();
    make_series(&db, series);
    db.conn.execute_batch("COMMIT").unwrap();
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        // utime + stime (fields 14, 15), in clock ticks of 10 ms.
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (tick(11) + tick(12)) as f64 / 100.0
    };
    let (t0, c0) = (Instant::now(), cpu());
    let mut n = 0u64;
    let mut seq = 0;
    let mut ts = 1_700_000_000_000_000_000i64;
    let devices = series / per_device;
    for s in 0..seconds {
        // Ten batches a second, each with the polls of a tenth of the
        // devices (device by device, as the agent's uplink sees them).
        for b in 0..10 {
            let mut readings = Vec::new();
            for d in (b..devices).step_by(10) {
                let poll_ts = ts + s * 1_000_000_000 + d * 3_000;
                for i in 0..per_device {
                    readings.push(NewReading {
                        series_id: d * per_device + 1 + i,
                        ts_ns: poll_ts,
                        value: StoredValue::F64((s + i) as f64 / 2.0),
                    });
                }
            }
            n += readings.len() as u64;
            seq += 1;
            let set = WriteSet {
                batches: vec![BatchWrite {
                    agent: Arc::from("test"),
                    epoch: 1,
                    seq,
                    high_water: false,
                    floor: 0,
                    received_ns: ts + s * 1_000_000_000 + b * 100_000_000,
                    readings,
                }],
                ..WriteSet::default()
            };
            let len = set.batches[0].readings.len() as u64;
            db.store.commit(&set).unwrap();
            let mut moved = 0;
            while db.store.compaction_due() {
                let step = db.store.compact().unwrap();
                moved += step.points;
                if moved >= 2 * len || step == CompactStep::default() {
                    break;
                }
            }
        }
    }
    let _ = &mut ts;
    let (secs, cpu_s) = (t0.elapsed().as_secs_f64(), cpu() - c0);
    let hwm = peak_memory();
    println!(
        "{series} series, {n} readings in {secs:.1} s: {:.3} CPU-s per million, {hwm}, head {} points, {} chunks",
        cpu_s / n as f64 * 1e6,
        db.count("SELECT COALESCE(SUM(count), 0) FROM head"),
        db.count("SELECT COUNT(*) FROM chunks"),
    );
}

/// The reads of the PromQL corpus's evaluations (`tributary-bench promql`,
/// `tests/src/bench/promql.rs::evaluations`) over data shaped like its
/// data set: `CORPUS_SERIES` (360) series of 2 h at 15 s, compacted into
/// chunks, read through `range_series_lent` as PromQL's load does, over
/// each evaluation's window (the instants' 5 m lookback, the ranges from
/// 5 m before their start), `CORPUS_REPS` (20) times. Prints the time;
/// for a count that does not depend on the machine's load, run it under
/// callgrind with `--toggle-collect='*corpus_reads*'`: `cargo test -p
/// tributary-collector --release --lib --no-run`, then `valgrind
/// --tool=callgrind --toggle-collect='*corpus_reads*' <test binary>
/// --ignored --exact store::sqlite::tests::speed::corpus_read_speed`.
#[test]
#[ignore = "a measurement, not a test"]
fn corpus_read_speed() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (series, reps) = (env("CORPUS_SERIES", 360), env("CORPUS_REPS", 20));
    const T0: i64 = 1_700_000_000;
    let mut db = TempDb::new("corpus");
    db.conn.execute_batch("BEGIN").unwrap();
    make_series(&db, series as i64);
    db.conn.execute_batch("COMMIT").unwrap();
    // One batch per scrape, every series in it, as the bench ingests.
    for k in 0..480i64 {
        let ts = (T0 + k * 15) * 1_000_000_000;
        let readings = (1..=series as i64)
            .map(|s| {
                let phase = s * 7919 % 15_000 * 1_000_000;
                (s, ts + phase, StoredValue::F64((k * s) as f64 / 3.0))
            })
            .collect();
        db.batch(ts, readings);
    }
    db.store.compact_all().unwrap();
    let ids: Vec<i64> = (1..=series as i64).collect();
    let windows: Vec<(i64, i64)> = [1800, 3607, 7000, 7400]
        .iter()
        .map(|&t| (t - 300, t))
        .chain([(600, 7500), (0, 7200), (1000, 4000)].map(|(a, b)| (a - 300, b)))
        .map(|(a, b)| ((T0 + a) * 1_000_000_000, (T0 + b) * 1_000_000_000))
        .collect();
    let r = db.reader();
    let t = Instant::now();
    let samples = corpus_reads(&r, &ids, &windows, reps);
    println!(
        "{series} series × {} windows × {reps}: {samples} samples in {:?}",
        windows.len(),
        t.elapsed()
    );
}

/// The measured part of [`corpus_read_speed`]: every window's read, its
/// points turned into samples as PromQL's load does.
#[inline(never)]
fn corpus_reads(r: &SqliteReader, ids: &[i64], windows: &[(i64, i64)], reps: usize) -> usize {
    let mut samples: Vec<(i64, f64)> = Vec::new();
    let mut n = 0;
    for _ in 0..reps {
        for &(lo, hi) in windows {
            let span = TimeSpan {
                since_ns: Some(lo),
                until_ns: Some(hi + 1),
            };
            r.range_series_lent(ids, span, MAX_CHUNK_POINTS, |_, points: &[Sample]| {
                samples.clear();
                samples.extend(points.iter().map(|p| (p.ts_ns / 1_000_000, p.value)));
                n += samples.len();
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        }
    }
    n
}
