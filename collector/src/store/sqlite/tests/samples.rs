//! PromQL's read path (`range_series_lent` into [`Sample`]s, decoded
//! straight from the blobs) against the whole-point path it replaced
//! (`range_series_lent` into [`Point`]s, then `prom_labels::sample_value`):
//! the same samples in the same order, on series mixing every kind of
//! value across full chunks, small chunks and head rows.

use std::ops::ControlFlow;

use super::*;
use crate::prom_labels::sample_value;
use crate::store::read::{MAX_CHUNK_POINTS, Sample};

/// Series index, device time and the value's bits (NaN payloads and -0.0
/// compared exactly).
type Got = Vec<(usize, i64, u64)>;

/// The `k`-th value of a cycle over every kind, special doubles and
/// integer extremes included.
fn value(k: i64) -> StoredValue {
    match k % 13 {
        0 => StoredValue::F64(k as f64 / 3.0),
        1 => StoredValue::F64(f64::NAN),
        2 => StoredValue::F64(f64::INFINITY),
        3 => StoredValue::F64(f64::NEG_INFINITY),
        4 => StoredValue::F64(-0.0),
        5 => StoredValue::I64(i64::MIN + k),
        6 => StoredValue::I64(k - 500),
        7 => StoredValue::U64(u64::MAX - k as u64),
        8 => StoredValue::Bool(k % 2 == 0),
        9 => StoredValue::Str(format!("s{k}")),
        10 => StoredValue::Timeout(format!("t{k}")),
        11 => StoredValue::Error(format!("e{k}")),
        _ => StoredValue::U64(k as u64),
    }
}

fn via_points(r: &SqliteReader, ids: &[i64], span: TimeSpan, max_chunk: usize) -> (Got, usize) {
    let (mut got, mut dropped) = (Got::new(), 0);
    r.range_series_lent(ids, span, max_chunk, |i, points: &[Point]| {
        for p in points {
            match sample_value(&p.value) {
                Some(v) => got.push((i, p.ts_ns, v.to_bits())),
                None => dropped += 1,
            }
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    (got, dropped)
}

fn via_samples(r: &SqliteReader, ids: &[i64], span: TimeSpan, max_chunk: usize) -> Got {
    let mut got = Got::new();
    r.range_series_lent(ids, span, max_chunk, |i, samples: &[Sample]| {
        got.extend(samples.iter().map(|s| (i, s.ts_ns, s.value.to_bits())));
        ControlFlow::Continue(())
    })
    .unwrap();
    got
}

#[test]
fn samples_decoded_from_blobs_equal_the_points_converted() {
    let mut db = TempDb::new("samples");
    make_series(&db, 4);
    // Series 1: two full chunks and a small one of every kind, two points
    // per ms, some device times repeated. Series 2: only strings and
    // failures in its chunk. Series 3: one small chunk. Series 4: nothing.
    let mut k = 0i64;
    let mut ts = 0i64;
    while k < (2 * CHUNK_POINTS + 700) as i64 {
        let mut readings = Vec::new();
        for _ in 0..100 {
            if k % 11 != 0 {
                ts += 500_000;
            }
            readings.push((1, ts, value(k)));
            if k % 3 == 0 {
                readings.push((2, ts, value(9 + k % 3)));
            }
            if k % 40 == 0 {
                readings.push((3, ts, value(k / 40)));
            }
            k += 1;
        }
        db.batch(ts + 1, readings);
    }
    db.store.compact_all().unwrap();
    // Head rows after compaction: late points at device times the chunks
    // hold (ties across sources), of every kind.
    for j in 0..60i64 {
        let at = j * 150 * 500_000;
        db.batch(
            ts + 2 + j,
            vec![
                (1, at, value(j)),
                (2, at, value(j)),
                (3, at + 1, value(j + 4)),
            ],
        );
    }
    assert!(db.count("SELECT COUNT(*) FROM chunks WHERE series_id = 1 AND count >= 4096") >= 2);
    assert!(db.count("SELECT COUNT(*) FROM head") > 0);

    let r = db.reader();
    let ids = [1, 2, 3, 4];
    let mut spans = vec![TimeSpan::default()];
    for (lo, hi) in [
        (0, ts),
        (1, 3_000_000),
        (1_000_000_000, 2_100_000_000),
        (ts / 2, ts / 2),
        (ts - 40_000_000, ts + 1),
    ] {
        spans.push(TimeSpan {
            since_ns: Some(lo),
            until_ns: Some(hi + 1),
        });
    }
    let mut all_dropped = 0;
    for span in spans {
        for max_chunk in [MAX_CHUNK_POINTS, 7] {
            let (want, dropped) = via_points(&r, &ids, span, max_chunk);
            let got = via_samples(&r, &ids, span, max_chunk);
            assert_eq!(got, want, "{span:?}, chunks of {max_chunk}");
            all_dropped += dropped;
        }
    }
    // The mix was there: non-samples dropped, NaN and repeated times kept.
    let (all, _) = via_points(&r, &ids, TimeSpan::default(), MAX_CHUNK_POINTS);
    assert!(all_dropped > 1000);
    assert!(
        all.iter()
            .any(|&(_, _, bits)| f64::from_bits(bits).is_nan())
    );
    assert!(all.windows(2).any(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1));
}
