//! The PostgreSQL store's contract, against the PostgreSQL of this machine:
//! two writers on one database never store a batch twice, series ids never
//! collide, retention removes old readings in steps (SQLite too), readings
//! stored before the chunk layout (migration 7) read back with the new
//! ones, and two
//! in-process collectors sharing the database ack replays without storing
//! them again, whichever collector sees them.

mod postgres_support;

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use tributary_collector::model::{NewReading, StoredValue};
use tributary_collector::store::{CommittedSet, Durability, Store, StoreUrl};
use tributary_tests::process::TestDir;

use postgres_support::raw::{RawStream, blocking, key, set};
use postgres_support::{InProcess, TestSchema};

/// Migration 5 (the `tributary_readings` view over `readings` alone), to
/// put a database back to schema version 6.
const MIGRATION_5: &str =
    include_str!("../../collector/src/store/postgres/migrations/0005_u64.sql");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_never_store_a_batch_twice() -> Result<()> {
    let schema = TestSchema::new("two_stores").await?;
    let url = schema.store();
    let (ids_a, ids_b, skipped) = blocking(move || {
        let mut a = Store::open(&url, Durability::Full)?;
        let mut b = Store::open(&url, Durability::Full)?;
        // The same keys, in another order, from each store: the same ids.
        let ids_a = a.resolve_series(&[key("edge", "d1"), key("edge", "d2")])?;
        let ids_b = b.resolve_series(&[key("edge", "d2"), key("edge", "d1")])?;
        let first = a.commit(&set("edge", 7, ids_a[0], 1..=3))?;
        assert!(first.skipped.is_empty());
        // b's merger has never seen this epoch: the store knows better.
        let second = b.commit(&set("edge", 7, ids_a[0], 2..=4))?;
        assert_eq!(b.epoch("edge", 7)?.map(|e| e.committed.mark()), Some(4));
        Ok((ids_a, ids_b, second.skipped))
    })
    .await?;
    assert_eq!(ids_a, [ids_b[1], ids_b[0]]);
    assert_ne!(ids_a[0], ids_a[1]);
    assert_eq!(
        skipped,
        [0, 1],
        "sequences 2 and 3 were stored by the other store"
    );

    // Both stores commit the same sequences 5..=60 at the same time, one
    // batch per transaction: each is stored by exactly one of them.
    let mut writers = Vec::new();
    for _ in 0..2 {
        let url = schema.store();
        let series = ids_a[0];
        writers.push(tokio::task::spawn_blocking(move || -> Result<usize> {
            let mut store = Store::open(&url, Durability::Full)?;
            let mut skipped = 0;
            for seq in 5..=60 {
                skipped += store.commit(&set("edge", 7, series, [seq]))?.skipped.len();
            }
            Ok(skipped)
        }));
    }
    let mut skipped = 0;
    for w in writers {
        skipped += w.await??;
    }
    assert_eq!(
        skipped, 56,
        "every one of the 56 batches was skipped by one writer"
    );
    let values = schema.counters("edge").await?;
    assert_eq!(values["d1"], (1..=60).collect::<Vec<i64>>());
    let (stored, dedup) = (
        schema
            .number("SELECT readings_stored FROM agents WHERE id = 'edge'")
            .await?,
        schema
            .number("SELECT batches_deduplicated FROM agents WHERE id = 'edge'")
            .await?,
    );
    assert_eq!((stored, dedup), (60, 2 + 56));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_readings_in_steps() -> Result<()> {
    let schema = TestSchema::new("retention").await?;
    let dir = TestDir::new("retention")?;
    for url in [StoreUrl::Sqlite(dir.join("retention.db")), schema.store()] {
        let what = url.to_string();
        let (steps, removed, left) = blocking(move || {
            let postgres = matches!(url, StoreUrl::Postgres(_));
            let mut store = Store::open(&url, Durability::Normal)?;
            let ids = store.resolve_series(&[key("edge", "d1")])?;
            if postgres {
                // A chunk row per series and commit: 1..=30 two per row,
                // 31..=50 one row across the cutoff, 51..=100 one per row.
                for seq in (1..=30).step_by(2) {
                    store.commit(&set("edge", 1, ids[0], [seq, seq + 1]))?;
                }
                store.commit(&set("edge", 1, ids[0], 31..=50))?;
                for seq in 51..=100 {
                    store.commit(&set("edge", 1, ids[0], [seq]))?;
                }
            } else {
                store.commit(&set("edge", 1, ids[0], 1..=100))?;
            }
            // Timestamps are 1..=100 ns: everything below 41 goes (on
            // PostgreSQL the 15 rows wholly below it, 30 readings), in
            // steps of at most 15 rows.
            let (mut steps, mut removed) = (0, 0);
            loop {
                steps += 1;
                let step = store.retain(41, 15)?;
                removed += step.removed;
                if step.done {
                    break;
                }
                if steps > 10 {
                    bail!("retention does not finish");
                }
            }
            let left = store.commit(&set("edge", 1, ids[0], [101]))?;
            Ok((steps, removed, left.skipped.len()))
        })
        .await
        .with_context(|| what.clone())?;
        let postgres = what.starts_with("postgres");
        let (want_steps, want_removed) = if postgres { (2, 30) } else { (3, 40) };
        assert_eq!(
            steps, want_steps,
            "{what}: 40 rows (PostgreSQL: 15) in steps of 15"
        );
        assert_eq!(removed, want_removed, "{what}: readings removed");
        assert_eq!(left, 0, "{what}: delivery state is kept");
    }
    // The row of 31..=50 straddles the cutoff: it stays until its newest
    // point is older.
    let values = schema.counters("edge").await?;
    assert_eq!(values["d1"], (31..=101).collect::<Vec<i64>>());
    Ok(())
}

/// The committed set on both stores: sequences committed out of order (5,
/// then 3 and 4, then 1 and 2) leave mark 5 and no ranges; a sequence
/// inside a range is a duplicate (skipped and counted, not stored); the
/// ranges survive a reopen (read by `epoch`, which a Welcome uses, and by
/// `load`, which fills the merger's cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_keep_a_committed_set_on_both_stores() -> Result<()> {
    let schema = TestSchema::new("ooo_set").await?;
    let dir = TestDir::new("ooo_set")?;
    for url in [StoreUrl::Sqlite(dir.join("ooo.db")), schema.store()] {
        let what = url.to_string();
        let u = url.clone();
        let seen = blocking(move || {
            let committed = |store: &mut Store| -> Result<CommittedSet> {
                Ok(store.epoch("edge", 7)?.context("no epochs row")?.committed)
            };
            let mut store = Store::open(&u, Durability::Full)?;
            let s = store.resolve_series(&[key("edge", "d1")])?[0];
            let mut skipped = Vec::new();
            skipped.push(store.commit(&set("edge", 7, s, [5]))?.skipped);
            skipped.push(store.commit(&set("edge", 7, s, [3, 4]))?.skipped);
            let gap = committed(&mut store)?;
            skipped.push(store.commit(&set("edge", 7, s, [4]))?.skipped);
            drop(store);
            let mut store = Store::open(&u, Durability::Full)?;
            let reopened = committed(&mut store)?;
            let loaded = store.load()?.epochs[&(Arc::from("edge"), 7)]
                .committed
                .clone();
            skipped.push(store.commit(&set("edge", 7, s, [3, 1, 5, 2]))?.skipped);
            let closed = committed(&mut store)?;
            // Another agent, left with two ranges (2 and 5) above mark 0.
            let g = store.resolve_series(&[key("gappy", "d1")])?[0];
            store.commit(&set("gappy", 3, g, [2, 5]))?;
            Ok((skipped, gap, reopened, loaded, closed))
        })
        .await
        .with_context(|| what.clone())?;
        let (skipped, gap, reopened, loaded, closed) = seen;
        let mut three_to_five = CommittedSet::default();
        for s in 3..=5 {
            three_to_five.insert(s);
        }
        assert_eq!(gap.to_string(), "0 +[3-5]", "{what}");
        assert_eq!(gap, three_to_five, "{what}");
        assert_eq!(reopened, gap, "{what}: ranges survive a reopen");
        assert_eq!(loaded, gap, "{what}: and load reads them");
        assert_eq!(closed, CommittedSet::up_to(5), "{what}: mark 5, no ranges");
        let no: Vec<usize> = Vec::new();
        assert_eq!(
            skipped,
            [no.clone(), no, vec![0], vec![0, 2]],
            "{what}: 4, then 3 and 5 were in the range"
        );
        let agents = tributary_collector::store::read::Reader::open(&url)?
            .agents()
            .await?;
        let edge = agents
            .iter()
            .find(|a| a.id == "edge")
            .context("agent row")?;
        assert_eq!(
            (edge.readings_stored, edge.batches_deduplicated),
            (5, 3),
            "{what}: five readings stored once each, three duplicates counted"
        );
        let ranges = |id: &str| {
            agents
                .iter()
                .find(|a| a.id == id)
                .map(|a| a.committed_ranges)
        };
        assert_eq!(
            (ranges("edge"), ranges("gappy")),
            (Some(0), Some(2)),
            "{what}: ListAgents counts the ranges of each agent's epoch"
        );
    }
    assert_eq!(schema.counters("edge").await?["d1"], [1, 2, 3, 4, 5]);
    Ok(())
}

/// A collector from before ranges existed (rolling upgrade on a shared
/// PostgreSQL, or an SQLite file opened by an older binary) moves
/// `committed_seq` and leaves `committed_ranges` as it was: the row then
/// reads as the union of both, on both stores (never ranges shifted by the
/// move), and a commit after it skips exactly the committed sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_moved_by_an_older_collector_keeps_the_ranges_in_place() -> Result<()> {
    let schema = TestSchema::new("ooo_old_mark").await?;
    let dir = TestDir::new("ooo_old_mark")?;
    let sqlite = dir.join("old_mark.db");
    for url in [StoreUrl::Sqlite(sqlite.clone()), schema.store()] {
        let what = url.to_string();
        let u = url.clone();
        let s = blocking(move || {
            let mut store = Store::open(&u, Durability::Full)?;
            let s = store.resolve_series(&[key("old", "d1")])?[0];
            store.commit(&set("old", 4, s, [3, 6, 7]))?;
            Ok(s)
        })
        .await
        .with_context(|| what.clone())?;
        // What an older collector writes after committing 1, 2 and 4: the
        // mark alone.
        let mark_only = "UPDATE epochs SET committed_seq = 4 WHERE agent = 'old' AND epoch = 4";
        match &url {
            StoreUrl::Sqlite(path) => {
                rusqlite::Connection::open(path)?.execute(mark_only, [])?;
            }
            _ => {
                postgres_support::psql(&schema.url(), mark_only).await?;
            }
        }
        let u = url.clone();
        let (read, loaded, skipped, after) = blocking(move || {
            let mut store = Store::open(&u, Durability::Full)?;
            let read = store.epoch("old", 4)?.context("no epochs row")?.committed;
            let loaded = store.load()?.epochs[&(Arc::from("old"), 4)]
                .committed
                .clone();
            let skipped = store.commit(&set("old", 4, s, [6, 5, 8, 7]))?.skipped;
            let after = store.epoch("old", 4)?.context("no epochs row")?.committed;
            Ok((read, loaded, skipped, after))
        })
        .await
        .with_context(|| what.clone())?;
        assert_eq!(read.to_string(), "4 +[6-7]", "{what}: 3 absorbed, 6-7 kept");
        assert_eq!(loaded, read, "{what}: load reads the same");
        assert_eq!(
            skipped,
            [0, 3],
            "{what}: 6 and 7 were committed, 5 and 8 not"
        );
        assert_eq!(after, CommittedSet::up_to(8), "{what}");
        let agents = tributary_collector::store::read::Reader::open(&url)?
            .agents()
            .await?;
        let old = agents.iter().find(|a| a.id == "old").context("agent row")?;
        assert_eq!(
            (old.committed_seq, old.committed_ranges),
            (8, 0),
            "{what}: ListAgents"
        );
    }
    Ok(())
}

/// Two stores on one PostgreSQL database commit the same sequences, each
/// in its own random order (so ranges open and close on both sides), one
/// or a few batches per transaction: every sequence is stored by exactly
/// one of them, including those that fall inside a range the other wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_never_both_store_a_sequence_inside_a_range() -> Result<()> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let schema = TestSchema::new("ooo_two").await?;
    let url = schema.store();
    let series = blocking(move || {
        let mut store = Store::open(&url, Durability::Full)?;
        Ok(store.resolve_series(&[key("edge", "d1")])?[0])
    })
    .await?;
    const N: u64 = 120;
    let mut writers = Vec::new();
    for seed in [1u64, 2] {
        let url = schema.store();
        writers.push(tokio::task::spawn_blocking(
            move || -> Result<(usize, usize)> {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut seqs: Vec<u64> = (1..=N).collect();
                seqs.shuffle(&mut rng);
                let mut store = Store::open(&url, Durability::Full)?;
                let (mut written, mut skipped) = (0, 0);
                let mut rest = &seqs[..];
                while !rest.is_empty() {
                    let n = rng.random_range(1..=3).min(rest.len());
                    let report =
                        store.commit(&set("edge", 7, series, rest[..n].iter().copied()))?;
                    skipped += report.skipped.len();
                    written += n - report.skipped.len();
                    rest = &rest[n..];
                }
                Ok((written, skipped))
            },
        ));
    }
    let mut written = 0;
    for w in writers {
        let (wr, sk) = w.await??;
        assert_eq!(wr + sk, N as usize);
        written += wr;
    }
    assert_eq!(written, N as usize, "each sequence written by one store");
    assert_eq!(
        schema.counters("edge").await?["d1"],
        (1..=N as i64).collect::<Vec<i64>>(),
        "every sequence stored exactly once"
    );
    let url = schema.store();
    let row = blocking(move || Ok(Store::open(&url, Durability::Full)?.epoch("edge", 7)?)).await?;
    assert_eq!(row.map(|r| r.committed), Some(CommittedSet::up_to(N)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_collectors_ack_a_resent_batch_and_it_is_stored_once() -> Result<()> {
    let schema = TestSchema::new("resent").await?;
    let a = InProcess::start(schema.store()).await?;
    let b = InProcess::start(schema.store()).await?;

    let mut old = RawStream::open(&a.url(), "edge", 7).await?;
    assert_eq!(old.welcome, 0);
    old.send(1).await?;
    old.send(2).await?;
    old.acked(2).await?;

    // The agent fails over to b, which started before anything was
    // committed: its Welcome comes from the database.
    let mut new = RawStream::open(&b.url(), "edge", 7).await?;
    assert_eq!(new.welcome, 2);
    for seq in 1..=3 {
        new.send(seq).await?;
    }
    new.acked(3).await?;

    // The old stream was only slow: it still delivers 3 (stored through b
    // meanwhile) and 4, and b then gets 4 again and 5. Each collector's
    // own memory lets the repeat through; the row lock stops it.
    old.send(3).await?;
    old.send(4).await?;
    assert_eq!(old.acked(4).await?, 4);
    new.send(4).await?;
    new.send(5).await?;
    assert_eq!(new.acked(5).await?, 5);
    drop((old, new));

    assert_eq!(
        schema.counters("edge").await?["dev"],
        (1..=50).collect::<Vec<i64>>()
    );
    let dedup = schema
        .number("SELECT batches_deduplicated FROM agents WHERE id = 'edge'")
        .await?;
    assert!(dedup >= 4, "replays counted: {dedup}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// The `tributary_readings` view (README "Grafana over PostgreSQL") shows
/// every numeric reading, and only those, with its time, series and value
/// as stored: what Grafana's PostgreSQL data source charts with plain SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_view_shows_numeric_readings_as_stored() -> Result<()> {
    let schema = TestSchema::new("grafana_view").await?;
    let url = schema.store();
    // Device times in ns, with sub-microsecond digits the view's `time`
    // truncates and its `ts_ns` keeps.
    let base: i64 = 1_764_892_800_123_456_789;
    let values = [
        StoredValue::F64(1.5),
        StoredValue::I64(-7),
        StoredValue::Bool(true),
        StoredValue::Bool(false),
        StoredValue::Str("on".into()),
        StoredValue::Timeout("no answer in 2s".into()),
        StoredValue::Error("connection refused".into()),
        StoredValue::F64(-0.25),
    ];
    blocking(move || {
        let mut store = Store::open(&url, Durability::Full)?;
        let series = store.resolve_series(&[key("edge", "d1")])?[0];
        let mut write = set("edge", 1, series, [1]);
        write.batches[0].readings = values
            .iter()
            .enumerate()
            .map(|(i, value)| NewReading {
                series_id: series,
                ts_ns: base + i as i64 * 1_000_000_000,
                value: value.clone(),
            })
            .collect();
        store.commit(&write)?;
        Ok(())
    })
    .await?;

    let rows = postgres_support::psql(
        &schema.url(),
        "SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), ts_ns, agent, \
         device, metric, labels->>'site', unit, value FROM tributary_readings ORDER BY ts_ns",
    )
    .await?;
    let expected = [(0, "1.5"), (1, "-7"), (2, "1"), (3, "0"), (7, "-0.25")]
        .iter()
        .map(|(i, v)| {
            format!(
                "2025-12-05 00:00:{:02}.123456|{}|edge|d1|counter|a||{v}",
                i,
                base + i * 1_000_000_000
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(rows.lines().collect::<Vec<_>>(), expected);
    Ok(())
}

/// u64 readings (SNMP Counter64) keep every bit in PostgreSQL: stored as
/// kind 6 with their bits in `v_i64`, read back exact through the
/// collector's reader, and shown by the `tributary_readings` view with
/// `value_exact` the exact integer and `value` its nearest double.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u64_readings_keep_every_bit() -> Result<()> {
    use tributary_collector::store::read::{Reader, Selector, TimeSpan};
    let schema = TestSchema::new("u64").await?;
    let url = schema.store();
    let base: i64 = 1_764_892_800_000_000_000;
    // Above 2^63 (negative as a bigint), 0, and one a double cannot hold.
    let values = [u64::MAX, (1 << 63) + 1, 0, (1 << 53) + 1];
    let write_url = url.clone();
    blocking(move || {
        let mut store = Store::open(&write_url, Durability::Full)?;
        let series = store.resolve_series(&[key("edge", "d1")])?[0];
        let mut write = set("edge", 1, series, [1]);
        write.batches[0].readings = values
            .iter()
            .enumerate()
            .map(|(i, v)| NewReading {
                series_id: series,
                ts_ns: base + i as i64,
                value: StoredValue::U64(*v),
            })
            .collect();
        store.commit(&write)?;
        Ok(())
    })
    .await?;

    let reader = Reader::open(&url)?;
    let sel = Selector {
        agent: "edge".into(),
        device: "d1".into(),
        metric: "counter".into(),
    };
    let span = TimeSpan {
        since_ns: None,
        until_ns: None,
    };
    let mut chunks = reader.range(sel, span, 100);
    let mut got = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        got.extend(chunk?.1.into_iter().map(|p| p.value));
    }
    assert_eq!(got, values.map(StoredValue::U64).to_vec());

    let rows = postgres_support::psql(
        &schema.url(),
        "SELECT value_exact, value FROM tributary_readings ORDER BY ts_ns",
    )
    .await?;
    let rows: Vec<(&str, &str)> = rows.lines().filter_map(|l| l.split_once('|')).collect();
    assert_eq!(rows.len(), values.len(), "{rows:?}");
    for ((exact, value), want) in rows.iter().zip(values) {
        assert_eq!(*exact, want.to_string());
        assert_eq!(value.parse::<f64>()?, want as f64, "{value}");
    }
    Ok(())
}

/// A database from before migration 7 keeps its `readings` rows: after the
/// migration, readings go to `readings_chunks`, and Query (range, latest,
/// series in a span) and the `tributary_readings` view read both, with
/// every value exact (u64 above 2^63, NaN, strings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_from_before_the_chunk_layout_read_back_with_new_ones() -> Result<()> {
    use tributary_collector::store::read::{Reader, Selector, TimeSpan};
    let schema = TestSchema::new("chunk_layout").await?;
    let url = schema.store();
    let base: i64 = 1_764_892_800_000_000_000;
    let write_url = url.clone();
    let series = blocking(move || {
        let mut store = Store::open(&write_url, Durability::Full)?;
        Ok(store.resolve_series(&[key("edge", "d1")])?[0])
    })
    .await?;
    // Back to schema version 6: no chunk table, the view as migration 5
    // left it.
    postgres_support::psql(
        &schema.url(),
        &format!(
            "DROP VIEW tributary_readings; DROP FUNCTION tributary_readings_between; \
             DROP TABLE readings_chunks; \
             DELETE FROM tributary_migrations WHERE version = 7; {MIGRATION_5}"
        ),
    )
    .await?;
    // Rows as the collector wrote them before: u64 bits in v_i64 (kind 6),
    // a NaN double, a string.
    postgres_support::psql(
        &schema.url(),
        &format!(
            "INSERT INTO readings (series_id, ts_ns, received_ns, kind, v_f64, v_i64, v_text) \
             VALUES ({series}, {t0}, 10, 6, NULL, -1, NULL), \
                    ({series}, {t1}, 11, 0, 'NaN', NULL, NULL), \
                    ({series}, {t2}, 12, 3, NULL, NULL, 'on')",
            t0 = base,
            t1 = base + 1,
            t2 = base + 2,
        ),
    )
    .await?;
    let old = [
        StoredValue::U64(u64::MAX),
        StoredValue::F64(f64::NAN),
        StoredValue::Str("on".into()),
    ];
    let new = [
        StoredValue::I64(-7),
        StoredValue::U64((1 << 63) + 1),
        StoredValue::F64(f64::NAN),
        StoredValue::Error("timeout".into()),
        StoredValue::F64(2.5),
    ];
    let write_url = url.clone();
    let written = new.clone();
    blocking(move || {
        // Opening migrates to 7; the new readings (device times 3, 5, .., 11
        // after `base`, given newest first) are one chunk row sorted by
        // time.
        let mut store = Store::open(&write_url, Durability::Full)?;
        let mut write = set("edge", 1, series, [1]);
        write.batches[0].readings = written
            .iter()
            .enumerate()
            .rev()
            .map(|(i, value)| NewReading {
                series_id: series,
                ts_ns: base + 3 + 2 * i as i64,
                value: value.clone(),
            })
            .collect();
        store.commit(&write)?;
        // A second commit, its row between the first one's points.
        let mut write = set("edge", 1, series, [2]);
        write.batches[0].received_ns = 2;
        write.batches[0].readings = vec![
            NewReading {
                series_id: series,
                ts_ns: base + 6,
                value: StoredValue::Bool(true),
            },
            NewReading {
                series_id: series,
                ts_ns: base + 4,
                value: StoredValue::I64(4),
            },
        ];
        store.commit(&write)?;
        Ok(())
    })
    .await?;
    let rows = schema
        .number("SELECT count(*) FROM readings_chunks")
        .await?;
    assert_eq!(rows, 2, "a chunk row per commit of the one series");

    let reader = Reader::open(&url)?;
    let sel = || Selector {
        agent: "edge".into(),
        device: "d1".into(),
        metric: "counter".into(),
    };
    // NaN != NaN: compare the values' debug forms.
    let shown = |values: &[StoredValue]| -> Vec<String> {
        values.iter().map(|v| format!("{v:?}")).collect()
    };
    let all: Vec<StoredValue> = old
        .iter()
        .chain([
            &new[0],
            &StoredValue::I64(4),
            &new[1],
            &StoredValue::Bool(true),
        ])
        .chain(&new[2..])
        .cloned()
        .collect();
    // The closed interval [first, last].
    let span = |first: i64, last: i64| TimeSpan {
        since_ns: Some(first),
        until_ns: Some(last + 1),
    };
    // Pages of 2 points, across both tables.
    let mut chunks = reader.range(sel(), span(base, base + 11), 2);
    let mut got = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        got.extend(chunk?.1);
    }
    let times: Vec<i64> = got.iter().map(|p| p.ts_ns - base).collect();
    assert_eq!(times, [0, 1, 2, 3, 4, 5, 6, 7, 9, 11]);
    let received: Vec<i64> = got.iter().map(|p| p.received_ns).collect();
    assert_eq!(received, [10, 11, 12, 1, 2, 1, 2, 1, 1, 1]);
    let values: Vec<StoredValue> = got.into_iter().map(|p| p.value).collect();
    assert_eq!(shown(&values), shown(&all));
    // A window inside the chunk rows: only their points within.
    let mut chunks = reader.range(sel(), span(base + 4, base + 8), 100);
    let mut got = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        got.extend(chunk?.1.into_iter().map(|p| p.value));
    }
    assert_eq!(shown(&got), shown(&all[4..8]));
    // Latest: the chunk row's newest point.
    let latest = reader.latest(sel()).await?;
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].1.ts_ns, base + 11);
    assert_eq!(latest[0].1.value, StoredValue::F64(2.5));
    // Series in a span: an old row alone, a chunk point alone; not a span
    // inside the chunk row's time range with none of its points.
    let in_span = async |since, until| -> Result<bool> {
        Ok(reader
            .series_in_span(span(since, until))
            .await?
            .contains(series))
    };
    assert!(in_span(base + 1, base + 1).await?);
    assert!(in_span(base + 9, base + 9).await?);
    assert!(!in_span(base + 8, base + 8).await?);
    assert!(!in_span(base + 12, base + 100).await?);

    // The view: numeric readings of both tables, exact.
    let rows = postgres_support::psql(
        &schema.url(),
        &format!(
            "SELECT ts_ns - {base}, value_exact, value FROM tributary_readings ORDER BY ts_ns"
        ),
    )
    .await?;
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            "0|18446744073709551615|1.8446744073709552e+19",
            "1||NaN",
            "3|-7|-7",
            "4|4|4",
            "5|9223372036854775809|9.223372036854776e+18",
            "6|1|1",
            "7||NaN",
            "11||2.5",
        ]
    );
    // Over a time range (what Grafana panels use): the same rows, only
    // those inside, from both tables.
    let rows = postgres_support::psql(
        &schema.url(),
        &format!(
            "SELECT ts_ns - {base}, value_exact, value FROM tributary_readings_between({}, {}) \
             ORDER BY ts_ns",
            base + 1,
            base + 5
        ),
    )
    .await?;
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            "1||NaN",
            "3|-7|-7",
            "4|4|4",
            "5|9223372036854775809|9.223372036854776e+18",
        ]
    );
    Ok(())
}

/// Range pages, `series_in_span` and the time-bounded view over chunk rows
/// that overlap in time (commits out of device-time order), cross minute
/// boundaries (where rows are cut) and repeat device times, with old-layout
/// rows among them: for random windows and page sizes 1 to 5, every point
/// in the window comes back once, in time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pages_over_overlapping_chunk_rows_match_a_plain_filter() -> Result<()> {
    use rand::{Rng, SeedableRng};
    use tributary_collector::store::read::{Reader, Selector, TimeSpan};
    let schema = TestSchema::new("chunk_pages").await?;
    let url = schema.store();
    let write_url = url.clone();
    // Device times on a grid of 7 s over about 4 minutes from a minute
    // boundary, so many coincide and rows span boundaries; each reading's
    // value is its own number.
    let base: i64 = 1_764_892_800_000_000_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut commits: Vec<Vec<(i64, i64)>> = Vec::new();
    let mut next = 0i64;
    for _ in 0..40 {
        let n = rng.random_range(1..=8);
        let start = rng.random_range(0..30i64);
        let commit = (0..n)
            .map(|_| {
                next += 1;
                (
                    base + (start + rng.random_range(0..6i64)) * 7_000_000_000,
                    next,
                )
            })
            .collect();
        commits.push(commit);
    }
    // A few old-layout rows too (written directly, before the commits).
    let old: Vec<(i64, i64)> = (0..6)
        .map(|i| (base + rng.random_range(0..36i64) * 7_000_000_000, 1000 + i))
        .collect();
    let all: Vec<(i64, i64)> = commits.iter().flatten().chain(&old).copied().collect();
    let to_write = commits.clone();
    let series = blocking(move || {
        let mut store = Store::open(&write_url, Durability::Full)?;
        let series = store.resolve_series(&[key("edge", "d1")])?[0];
        for (seq, commit) in to_write.iter().enumerate() {
            let mut write = set("edge", 1, series, [seq as u64 + 1]);
            write.batches[0].readings = commit
                .iter()
                .map(|&(ts_ns, v)| NewReading {
                    series_id: series,
                    ts_ns,
                    value: StoredValue::I64(v),
                })
                .collect();
            store.commit(&write)?;
        }
        Ok(series)
    })
    .await?;
    let values = old
        .iter()
        .map(|(t, v)| format!("({series}, {t}, 0, 1, NULL, {v}, NULL)"))
        .collect::<Vec<_>>()
        .join(", ");
    postgres_support::psql(
        &schema.url(),
        &format!(
            "INSERT INTO readings (series_id, ts_ns, received_ns, kind, v_f64, v_i64, v_text) \
             VALUES {values}"
        ),
    )
    .await?;
    let rows = schema
        .number("SELECT count(*) FROM readings_chunks WHERE ts_max - ts_min >= 60000000000")
        .await?;
    assert_eq!(rows, 0, "every chunk row within one minute");

    let reader = Reader::open(&url)?;
    let sel = || Selector {
        agent: "edge".into(),
        device: "d1".into(),
        metric: "counter".into(),
    };
    let grid = |k: i64| base + k * 7_000_000_000;
    for round in 0..30 {
        let a = rng.random_range(-2..40i64);
        let b = rng.random_range(a..42i64);
        let (lo, hi) = (
            grid(a) + rng.random_range(-1..=1),
            grid(b) + rng.random_range(-1..=1),
        );
        let mut expected: Vec<(i64, i64)> = all
            .iter()
            .copied()
            .filter(|&(t, _)| t >= lo && t <= hi)
            .collect();
        expected.sort();
        let page = 1 + round % 5;
        let mut chunks = reader.range(
            sel(),
            TimeSpan {
                since_ns: Some(lo),
                until_ns: Some(hi + 1),
            },
            page,
        );
        let mut got = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            for p in chunk?.1 {
                let StoredValue::I64(v) = p.value else {
                    bail!("not an integer: {:?}", p.value);
                };
                got.push((p.ts_ns, v));
            }
        }
        assert!(
            got.windows(2).all(|w| w[0].0 <= w[1].0),
            "round {round}: not in time order: {got:?}"
        );
        got.sort();
        assert_eq!(
            got, expected,
            "round {round}: [{lo}, {hi}] in pages of {page}"
        );

        let in_span = reader
            .series_in_span(TimeSpan {
                since_ns: Some(lo),
                until_ns: Some(hi + 1),
            })
            .await?
            .contains(series);
        assert_eq!(
            in_span,
            !expected.is_empty(),
            "round {round}: series in span"
        );

        let view = postgres_support::psql(
            &schema.url(),
            &format!(
                "SELECT ts_ns, value_exact FROM tributary_readings_between({lo}, {hi}) \
                 ORDER BY ts_ns, value_exact"
            ),
        )
        .await?;
        let shown: Vec<String> = expected.iter().map(|(t, v)| format!("{t}|{v}")).collect();
        assert_eq!(
            view.lines().collect::<Vec<_>>(),
            shown,
            "round {round}: the view"
        );
    }
    Ok(())
}
