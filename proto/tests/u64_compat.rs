//! Backward compatibility of the u64 value kind (`Reading.u64 = 8`,
//! `Columns.u64 = 4`, `Point.u64 = 8`), checked against the messages as
//! they were before it (written out here with prost's derive, field
//! numbers as in the `.proto` of that time): old bytes read the same in
//! the new messages, and what an old peer makes of new bytes is what the
//! `.proto`'s header comment says.

use prost::Message;
use tributary_proto::v1 as pb;

/// `tributary.v1.Columns` before u64.
#[derive(Clone, PartialEq, Message)]
struct OldColumns {
    #[prost(message, optional, tag = "1")]
    f64: Option<pb::FloatColumns>,
    #[prost(message, optional, tag = "2")]
    i64: Option<pb::IntColumns>,
    #[prost(message, optional, tag = "3")]
    bool: Option<pb::BoolColumns>,
}

/// `tributary.v1.Reading`'s value before u64.
#[derive(Clone, PartialEq, prost::Oneof)]
enum OldValue {
    #[prost(double, tag = "3")]
    F64(f64),
    #[prost(sint64, tag = "4")]
    I64(i64),
    #[prost(bool, tag = "5")]
    Bool(bool),
    #[prost(string, tag = "6")]
    Str(String),
    #[prost(message, tag = "7")]
    Failure(pb::Failure),
}

/// `tributary.v1.Reading` before u64.
#[derive(Clone, PartialEq, Message)]
struct OldReading {
    #[prost(uint32, tag = "1")]
    series: u32,
    #[prost(int64, tag = "2")]
    ts_ns: i64,
    #[prost(oneof = "OldValue", tags = "3, 4, 5, 6, 7")]
    value: Option<OldValue>,
}

/// `tributary.v1.Batch` before u64 (the fields that carry readings).
#[derive(Clone, PartialEq, Message)]
struct OldBatch {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(message, repeated, tag = "3")]
    readings: Vec<OldReading>,
    #[prost(message, optional, tag = "7")]
    columns: Option<OldColumns>,
}

/// `tributary.v1.Point` before u64.
#[derive(Clone, PartialEq, Message)]
struct OldPoint {
    #[prost(int64, tag = "1")]
    ts_ns: i64,
    #[prost(oneof = "OldPointValue", tags = "2, 3, 4, 5, 6")]
    value: Option<OldPointValue>,
    #[prost(int64, tag = "7")]
    received_ns: i64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum OldPointValue {
    #[prost(double, tag = "2")]
    F64(f64),
    #[prost(sint64, tag = "3")]
    I64(i64),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(string, tag = "5")]
    Str(String),
    #[prost(message, tag = "6")]
    Failure(pb::Failure),
}

fn floats() -> pb::FloatColumns {
    pb::FloatColumns {
        series_delta: vec![1, 1],
        base_ts_ns: 1_700_000_000_000_000_000,
        ts_delta: vec![0, 0],
        values: vec![21.5, -0.125],
    }
}

fn ints() -> pb::IntColumns {
    pb::IntColumns {
        series_delta: vec![3],
        base_ts_ns: 1_700_000_000_000_000_000,
        ts_delta: vec![5],
        values: vec![i64::MIN],
    }
}

#[test]
fn an_old_batch_reads_the_same_and_carries_no_u64() {
    let old = OldBatch {
        seq: 7,
        readings: vec![OldReading {
            series: 4,
            ts_ns: 9,
            value: Some(OldValue::I64(-3)),
        }],
        columns: Some(OldColumns {
            f64: Some(floats()),
            i64: Some(ints()),
            bool: None,
        }),
    };
    let new = pb::Batch::decode(old.encode_to_vec().as_slice()).unwrap();
    assert_eq!(new.seq, 7);
    assert_eq!(new.readings[0].value, Some(pb::reading::Value::I64(-3)));
    let columns = new.columns.unwrap();
    assert_eq!(columns.f64, Some(floats()));
    assert_eq!(columns.i64, Some(ints()));
    assert_eq!(columns.u64, None);
}

/// What a collector from before u64 decodes: the batch's other readings
/// whole, the u64 column group gone (not read as another kind), and a u64
/// row as a reading without a value (which its `check_batch` refuses).
#[test]
fn an_old_peer_skips_u64_columns_and_sees_a_u64_row_without_value() {
    let new = pb::Batch {
        seq: 8,
        readings: vec![pb::Reading {
            series: 2,
            ts_ns: 11,
            value: Some(pb::reading::Value::U64(u64::MAX)),
        }],
        columns: Some(pb::Columns {
            f64: Some(floats()),
            i64: Some(ints()),
            u64: Some(pb::UintColumns {
                series_delta: vec![2, 0],
                base_ts_ns: 1_700_000_000_000_000_000,
                ts_delta: vec![0, 1_000_000_000],
                values: vec![u64::MAX, (1 << 63) + 1],
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = new.encode_to_vec();
    let old = OldBatch::decode(bytes.as_slice()).unwrap();
    assert_eq!(old.seq, 8);
    assert_eq!(old.readings.len(), 1);
    assert_eq!(old.readings[0].value, None);
    let columns = old.columns.unwrap();
    assert_eq!(columns.f64, Some(floats()));
    assert_eq!(columns.i64, Some(ints()));
    assert_eq!(columns.bool, None);
    // The new side reads every bit back.
    assert_eq!(pb::Batch::decode(bytes.as_slice()).unwrap(), new);
}

/// A Query client from before u64 gets a u64 point without a value (the
/// collector's own CLI reports such a point as an error naming its time).
#[test]
fn an_old_client_sees_a_u64_point_without_value() {
    let new = pb::Point {
        ts_ns: 5,
        value: Some(pb::point::Value::U64((1 << 63) + 1)),
        received_ns: 6,
    };
    let old = OldPoint::decode(new.encode_to_vec().as_slice()).unwrap();
    assert_eq!((old.ts_ns, old.received_ns, old.value), (5, 6, None));
    let back = pb::Point::decode(new.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, new);
}
