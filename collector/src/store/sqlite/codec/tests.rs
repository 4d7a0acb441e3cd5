//! Tests of the blob codec: round trips of every kind, sizes, damaged
//! blobs, resumed decoders.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::StoredValue;

/// Series, device time, receive time, value.
type Owned = (i64, i64, i64, StoredValue);

fn owned(p: RawPoint<'_>) -> Owned {
    (p.series, p.ts_ns, p.received_ns, p.value.to_stored())
}

/// Bitwise equality, so NaN payloads and -0.0 count.
fn same(a: &StoredValue, b: &StoredValue) -> bool {
    match (a, b) {
        (StoredValue::F64(x), StoredValue::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn every_kind() -> Vec<StoredValue> {
    vec![
        StoredValue::F64(1.5),
        StoredValue::F64(f64::NAN),
        StoredValue::F64(f64::from_bits(0x7ff8_dead_beef_0001)),
        StoredValue::F64(f64::INFINITY),
        StoredValue::F64(f64::NEG_INFINITY),
        StoredValue::F64(-0.0),
        StoredValue::I64(i64::MIN),
        StoredValue::I64(i64::MAX),
        StoredValue::I64(-7),
        StoredValue::U64(u64::MAX),
        StoredValue::U64((1 << 63) + 1),
        StoredValue::U64(0),
        StoredValue::Bool(true),
        StoredValue::Bool(false),
        StoredValue::Str(String::new()),
        StoredValue::Str("on, \"really\" ✓".into()),
        StoredValue::Timeout("no answer in 1s".into()),
        StoredValue::Error(String::new()),
        StoredValue::Error("connection refused".into()),
    ]
}

/// A head blob of every kind (three points per series, times falling) and
/// its points as one decoder reads them.
fn head_of_every_kind() -> (Vec<u8>, Vec<Owned>) {
    let mut head = Encoder::head();
    for (i, v) in every_kind().iter().enumerate() {
        head.push(i as i64 / 3, 1000 - i as i64 * 7, 0, RawValue::of(v));
    }
    let blob = head.finish();
    let all = Decoder::new(&blob, 0, 5)
        .unwrap()
        .collect_points()
        .unwrap()
        .into_iter()
        .map(owned)
        .collect();
    (blob, all)
}

#[test]
fn a_decoder_resumed_from_its_position_reads_on_where_it_stood() {
    let (blob, all) = head_of_every_kind();
    // Read one point per fresh decoder, resuming each time.
    let mut pos = Decoder::new(&blob, 0, 5).unwrap().position(&blob);
    let mut got = Vec::new();
    loop {
        let mut d = Decoder::resume(&blob, &pos).unwrap();
        let peeked = d.peek_series();
        let Some(p) = d.next_point().unwrap() else {
            assert_eq!(peeked, None);
            break;
        };
        assert_eq!(peeked, Some(p.series));
        got.push(owned(p));
        pos = d.position(&blob);
    }
    assert_eq!(got.len(), all.len());
    for (a, b) in got.iter().zip(&all) {
        assert_eq!((a.0, a.1, a.2), (b.0, b.1, b.2));
        assert!(same(&a.3, &b.3));
    }
    // A position that does not fit the blob is an error, not a panic.
    let start = Decoder::new(&blob, 0, 5).unwrap().position(&blob);
    assert!(Decoder::resume(&blob[..blob.len() / 2], &start).is_err());
}

#[test]
fn the_unread_rest_of_a_blob_reads_on_as_the_whole_blob_would() {
    let (blob, all) = head_of_every_kind();
    // After every point read, keep only the unread rest and go on in it.
    let mut kept = blob.clone();
    let mut pos = Decoder::new(&kept, 0, 5).unwrap().position(&kept);
    let mut got = Vec::new();
    loop {
        let before = pos.unread_bytes();
        let rest = pos.keep_unread(&kept).unwrap();
        assert_eq!(rest.len(), before);
        assert!(rest.len() < blob.len());
        kept = rest;
        let mut d = Decoder::resume(&kept, &pos).unwrap();
        let Some(p) = d.next_point().unwrap() else {
            break;
        };
        got.push(owned(p));
        pos = d.position(&kept);
    }
    assert_eq!(kept.len(), 0);
    assert_eq!(got.len(), all.len());
    for (a, b) in got.iter().zip(&all) {
        assert_eq!((a.0, a.1, a.2), (b.0, b.1, b.2));
        assert!(same(&a.3, &b.3));
    }
    // A position that does not fit the blob is an error and is left as it was.
    let mut start = Decoder::new(&blob, 0, 5).unwrap().position(&blob);
    let was = start;
    assert!(start.keep_unread(&blob[..blob.len() / 2]).is_err());
    assert_eq!(start, was);
}

#[test]
fn every_kind_round_trips_in_a_head_and_a_chunk() {
    let values = every_kind();
    // Timestamps jumping both ways, across the whole i64 range.
    let ts = [
        0,
        -5,
        i64::MIN,
        i64::MAX,
        1,
        1,
        -1_000_000_000,
        3,
        i64::MAX - 1,
        i64::MIN + 1,
        0,
        7,
        7,
        -7,
        100,
        99,
        5,
        6,
        i64::MIN,
    ];
    let series = [
        3,
        1,
        i64::MAX,
        1,
        i64::MIN,
        2,
        2,
        2,
        9,
        0,
        -4,
        5,
        5,
        5,
        6,
        1,
        8,
        i64::MAX,
        8,
    ];
    let mut head = Encoder::head();
    let mut chunk = Encoder::chunk();
    for (i, v) in values.iter().enumerate() {
        head.push(series[i], ts[i], 0, RawValue::of(v));
        chunk.push(0, ts[i], ts[i].wrapping_mul(3), RawValue::of(v));
    }
    assert!(!chunk.is_sorted());
    assert_eq!(head.series_range(), (i64::MIN, i64::MAX));
    assert_eq!(chunk.ts_range(), (i64::MIN, i64::MAX));
    let head_blob = head.finish();
    let chunk_blob = chunk.finish();
    let got = Decoder::new(&head_blob, 0, 42)
        .unwrap()
        .collect_points()
        .unwrap();
    assert_eq!(got.len(), values.len());
    for (i, p) in got.into_iter().map(owned).enumerate() {
        assert_eq!((p.0, p.1, p.2), (series[i], ts[i], 42), "head point {i}");
        assert!(same(&p.3, &values[i]), "head point {i}: {:?}", p.3);
    }
    let got = Decoder::new(&chunk_blob, 77, 0)
        .unwrap()
        .collect_points()
        .unwrap();
    for (i, p) in got.into_iter().map(owned).enumerate() {
        assert_eq!(
            (p.0, p.1, p.2),
            (77, ts[i], ts[i].wrapping_mul(3)),
            "chunk point {i}"
        );
        assert!(same(&p.3, &values[i]), "chunk point {i}: {:?}", p.3);
    }
}

#[test]
fn empty_blobs_and_reuse() {
    let mut e = Encoder::chunk();
    let blob = e.finish();
    assert!(
        Decoder::new(&blob, 1, 1)
            .unwrap()
            .next_point()
            .unwrap()
            .is_none()
    );
    e.push(0, 5, 6, RawValue::I64(1));
    e.clear();
    assert!(e.is_empty() && e.is_sorted());
    e.push(0, 9, 10, RawValue::Bool(true));
    let blob = e.finish();
    let p = Decoder::new(&blob, 1, 0).unwrap().collect_points().unwrap();
    assert_eq!(
        p,
        [RawPoint {
            series: 1,
            ts_ns: 9,
            received_ns: 10,
            value: RawValue::Bool(true)
        }]
    );
}

#[test]
fn regular_float_series_take_about_ten_bytes_a_point() {
    let mut e = Encoder::chunk();
    for i in 0..4096i64 {
        e.push(
            0,
            1_700_000_000_000_000_000 + i * 1_000_000_000,
            0,
            RawValue::F64(i as f64 * 0.5),
        );
    }
    let blob = e.finish();
    assert!(blob.len() < 4096 * 10 + 64, "{} bytes", blob.len());
}

#[test]
fn damaged_blobs_are_errors() {
    let mut e = Encoder::head();
    e.push(9, 10, 0, RawValue::Str("hello"));
    e.push(9, 20, 0, RawValue::F64(2.0));
    let blob = e.finish();
    fn decode(b: &[u8]) -> Result<Vec<RawPoint<'_>>, CodecError> {
        Decoder::new(b, 0, 0)?.collect_points()
    }
    assert!(decode(&blob).is_ok());
    for cut in 0..blob.len() {
        assert!(decode(&blob[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert!(matches!(
        decode(&longer),
        Err(CodecError::Trailing {
            column: "values",
            ..
        })
    ));
    // Flip the kind of the first run to 17.
    let kinds_at = blob.len() - (1 + 5 + 8) - 4;
    let mut bad = blob.clone();
    assert_eq!(bad[kinds_at], KIND_STR);
    bad[kinds_at] = 17;
    let err = decode(&bad).unwrap_err();
    assert_eq!(
        err,
        CodecError::Kind {
            kind: 17,
            series: 9
        }
    );
    assert!(err.to_string().contains("unknown kind 17 (series 9)"));
    assert!(decode(&[0xff]).is_err());
    assert!(decode(&[]).is_err());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = StoredValue> {
        prop_oneof![
            any::<u64>().prop_map(|b| StoredValue::F64(f64::from_bits(b))),
            any::<f64>().prop_map(StoredValue::F64),
            any::<i64>().prop_map(StoredValue::I64),
            any::<u64>().prop_map(StoredValue::U64),
            any::<bool>().prop_map(StoredValue::Bool),
            ".{0,12}".prop_map(StoredValue::Str),
            ".{0,12}".prop_map(StoredValue::Timeout),
            ".{0,12}".prop_map(StoredValue::Error),
        ]
    }

    proptest! {
        #[test]
        fn any_points_round_trip(
            points in proptest::collection::vec((any::<i64>(), any::<i64>(), any::<i64>(), value()), 0..64),
            head in any::<bool>(),
        ) {
            let mut e = if head { Encoder::head() } else { Encoder::chunk() };
            for (s, ts, rx, v) in &points {
                e.push(*s, *ts, *rx, RawValue::of(v));
            }
            let blob = e.finish();
            let got = Decoder::new(&blob, -1, -2).unwrap().collect_points().unwrap();
            prop_assert_eq!(got.len(), points.len());
            for (p, (s, ts, rx, v)) in got.iter().zip(&points) {
                prop_assert_eq!(p.series, if head { *s } else { -1 });
                prop_assert_eq!(p.received_ns, if head { -2 } else { *rx });
                prop_assert_eq!(p.ts_ns, *ts);
                prop_assert!(same(&p.value.to_stored(), v));
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(d) = Decoder::new(&bytes, 0, 0) {
                let _ = d.collect_points();
            }
        }
    }
}

/// A head blob as a collector from before the u64 kind wrote it (kinds
/// 0 to 5 only).
const HEAD_BEFORE_U64: &[u8] = &[
    0x01, 0x06, 0x06, 0x22, 0x0a, 0x06, 0x02, 0x00, 0x02, 0x02, 0x00, 0x80, 0x80, 0xd0, 0xe2, 0xc6,
    0xbf, 0xce, 0x97, 0x2f, 0xff, 0xff, 0xcf, 0xe2, 0xc6, 0xbf, 0xce, 0x97, 0x2f, 0x80, 0xa8, 0xd6,
    0xb9, 0x07, 0xff, 0xa7, 0xd6, 0xb9, 0x07, 0x80, 0xa8, 0xd6, 0xb9, 0x07, 0x00, 0x00, 0x01, 0x01,
    0x02, 0x02, 0x01, 0x03, 0x01, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x35, 0x40, 0x0d,
    0x90, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x01, 0x04, 0x69, 0x64, 0x6c, 0x65, 0x07, 0x72,
    0x65, 0x66, 0x75, 0x73, 0x65, 0x64,
];

/// Blobs written before u64 read as they did; a u64 after an i64 shares
/// its delta column and both come back with every bit.
#[test]
fn a_blob_from_before_u64_reads_as_before_and_u64_shares_the_integer_column() {
    let t = 1_700_000_000_000_000_000;
    let want = vec![
        (3, t, 9, StoredValue::F64(21.5)),
        (4, t, 9, StoredValue::I64(-7)),
        (
            4,
            t + 1_000_000_000,
            9,
            StoredValue::I64(9_007_199_254_740_993),
        ),
        (5, t + 1_000_000_000, 9, StoredValue::Bool(true)),
        (6, t + 2_000_000_000, 9, StoredValue::Str("idle".into())),
        (
            6,
            t + 3_000_000_000,
            9,
            StoredValue::Error("refused".into()),
        ),
    ];
    let got: Vec<_> = Decoder::new(HEAD_BEFORE_U64, 0, 9)
        .unwrap()
        .collect_points()
        .unwrap()
        .into_iter()
        .map(owned)
        .collect();
    assert_eq!(got, want);

    let mixed = [
        StoredValue::I64(-7),
        StoredValue::U64(u64::MAX),
        StoredValue::U64(u64::MAX - 1),
        StoredValue::I64(i64::MAX),
        StoredValue::U64((1 << 63) + 1),
    ];
    let mut head = Encoder::head();
    for (i, v) in mixed.iter().enumerate() {
        head.push(1, t + i as i64, 0, RawValue::of(v));
    }
    let blob = head.finish();
    let back: Vec<StoredValue> = Decoder::new(&blob, 0, 0)
        .unwrap()
        .collect_points()
        .unwrap()
        .into_iter()
        .map(|p| owned(p).3)
        .collect();
    assert_eq!(back, mixed);
}

/// Without receive times, a chunk reads the same points (skipped or not)
/// with the stand-in receive time.
#[test]
fn without_receive_times_the_rest_reads_the_same() {
    let values = every_kind();
    let mut chunk = Encoder::chunk();
    for (i, v) in values.iter().enumerate() {
        let t = 100 + i as i64 * 10;
        chunk.push(0, t, t * 3 + 1, RawValue::of(v));
    }
    let blob = chunk.finish();
    let all: Vec<_> = Decoder::new(&blob, 4, 0)
        .unwrap()
        .collect_points()
        .unwrap()
        .into_iter()
        .map(owned)
        .collect();
    // The chunk has the column: read, it gives the receive times written.
    assert!(all.iter().all(|p| p.2 == p.1 * 3 + 1), "{all:?}");
    for lo in [i64::MIN, 105, 130] {
        let mut d = Decoder::new(&blob, 4, 7).unwrap();
        d.without_received();
        d.skip_before(lo).unwrap();
        let rest: Vec<_> = d.collect_points().unwrap().into_iter().map(owned).collect();
        let expect: Vec<_> = all.iter().filter(|p| p.1 >= lo).collect();
        assert_eq!(rest.len(), expect.len(), "lo {lo}");
        assert!(!rest.is_empty());
        for (g, e) in rest.iter().zip(expect) {
            assert!(
                (g.0, g.1, g.2) == (e.0, e.1, 7) && same(&g.3, &e.3),
                "lo {lo}: {g:?} != {e:?}"
            );
        }
    }
}

/// `skip_before` leaves a chunk's decoder where reading and dropping the
/// points before `lo` would: at the first point at or after it, every
/// column (and the integer delta) in step, whatever the kinds skipped.
#[test]
fn skipping_before_a_time_reads_on_as_reading_would() {
    let values = every_kind();
    let ts: Vec<i64> = (0..values.len() as i64).map(|i| 100 + i / 2 * 10).collect();
    let mut chunk = Encoder::chunk();
    for (v, &t) in values.iter().zip(&ts) {
        chunk.push(0, t, t * 3 + 1, RawValue::of(v));
    }
    let blob = chunk.finish();
    let all: Vec<_> = Decoder::new(&blob, 4, 0)
        .unwrap()
        .collect_points()
        .unwrap()
        .into_iter()
        .map(owned)
        .collect();
    let last = ts[ts.len() - 1];
    for lo in [
        i64::MIN,
        0,
        100,
        101,
        110,
        115,
        130,
        last,
        last + 1,
        i64::MAX,
    ] {
        let mut d = Decoder::new(&blob, 4, 0).unwrap();
        let skipped = d.skip_before(lo).unwrap();
        let rest: Vec<_> = d.collect_points().unwrap().into_iter().map(owned).collect();
        let expect: Vec<_> = all.iter().filter(|p| p.1 >= lo).cloned().collect();
        assert_eq!(skipped, all.len() - expect.len(), "lo {lo}");
        assert_eq!(rest.len(), expect.len(), "lo {lo}");
        for (g, e) in rest.iter().zip(&expect) {
            assert!(
                (g.0, g.1, g.2) == (e.0, e.1, e.2) && same(&g.3, &e.3),
                "lo {lo}: {g:?} != {e:?}"
            );
        }
    }
}
