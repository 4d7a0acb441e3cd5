//! `tributary.v1.ExportMessage` written straight into one buffer, for the
//! nats export's `format = "protobuf"`.
//!
//! Building prost's generated structs for every message cloned each
//! series' key (agent, device, metric, labels, unit) per message and
//! encoded varints a byte at a time: under callgrind that was most of the
//! export's instructions (BENCHMARKS "session 10"). Here a series' key is
//! encoded once (by prost, when the series is first looked up) and copied
//! as bytes, and points are written field by field. The result is the same
//! protobuf message; the tests decode it with prost and compare it with
//! the message built the generated way.

use crate::model::StoredValue;
use crate::store::export::LogBatch;

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

/// Bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    out.extend_from_slice(&buf[..=n]);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// A length-delimited field's bytes, tag included.
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A varint field's bytes (proto3: absent when 0).
fn varint_field(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + varint_len(v) }
}

fn put_varint_field(out: &mut Vec<u8>, field: u8, v: u64) {
    if v != 0 {
        out.push(tag(field, VARINT));
        put_varint(out, v);
    }
}

fn put_bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(tag(field, LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `Failure { status, message }`'s body length.
fn failure_len(status: u64, message: &str) -> usize {
    varint_field(status)
        + if message.is_empty() {
            0
        } else {
            len_field(message.len())
        }
}

/// One `Point`'s body length (without its tag and length).
fn point_len(ts_ns: i64, received_ns: i64, value: &StoredValue) -> usize {
    let value = match value {
        StoredValue::F64(_) => 1 + 8,
        StoredValue::I64(v) => 1 + varint_len(zigzag(*v)),
        StoredValue::U64(v) => 1 + varint_len(*v),
        StoredValue::Bool(_) => 2,
        StoredValue::Str(s) => len_field(s.len()),
        StoredValue::Timeout(m) => len_field(failure_len(1, m)),
        StoredValue::Error(m) => len_field(failure_len(2, m)),
    };
    varint_field(ts_ns as u64) + value + varint_field(received_ns as u64)
}

fn put_point(out: &mut Vec<u8>, ts_ns: i64, received_ns: i64, value: &StoredValue) {
    put_varint_field(out, 1, ts_ns as u64);
    let failure = |out: &mut Vec<u8>, status: u64, m: &str| {
        out.push(tag(6, LEN));
        put_varint(out, failure_len(status, m) as u64);
        put_varint_field(out, 1, status);
        if !m.is_empty() {
            put_bytes_field(out, 2, m.as_bytes());
        }
    };
    match value {
        StoredValue::F64(v) => {
            out.push(tag(2, FIXED64));
            out.extend_from_slice(&v.to_le_bytes());
        }
        StoredValue::I64(v) => {
            out.push(tag(3, VARINT));
            put_varint(out, zigzag(*v));
        }
        StoredValue::Bool(v) => {
            out.push(tag(4, VARINT));
            out.push(u8::from(*v));
        }
        StoredValue::Str(s) => put_bytes_field(out, 5, s.as_bytes()),
        StoredValue::Timeout(m) => failure(out, 1, m),
        StoredValue::Error(m) => failure(out, 2, m),
        StoredValue::U64(v) => {
            out.push(tag(8, VARINT));
            put_varint(out, *v);
        }
    }
    put_varint_field(out, 7, received_ns as u64);
}

/// The header fields of one message.
#[derive(Debug)]
pub struct Header<'a> {
    pub agent: &'a str,
    pub position: u64,
    pub part: u32,
    pub received_ns: i64,
    pub epoch: u64,
    pub seq: u64,
}

/// One `ExportMessage`: `series` are (the series' `SeriesInfo` encoded,
/// indexes of its readings in `batch`), in order. Every point's
/// `received_ns` is the batch's.
pub fn export_message(h: &Header, batch: &LogBatch, series: &[(&[u8], Vec<usize>)]) -> Vec<u8> {
    let point = |i: usize| {
        let r = &batch.readings[i];
        point_len(r.ts_ns, batch.received_ns, &r.value)
    };
    let chunk_len = |info: &[u8], points: &[usize]| {
        len_field(info.len()) + points.iter().map(|&i| len_field(point(i))).sum::<usize>()
    };
    let mut size = (if h.agent.is_empty() {
        0
    } else {
        len_field(h.agent.len())
    }) + varint_field(h.position)
        + varint_field(u64::from(h.part))
        + varint_field(h.received_ns as u64)
        + varint_field(h.epoch)
        + varint_field(h.seq);
    for (info, points) in series {
        size += len_field(chunk_len(info, points));
    }
    let mut out = Vec::with_capacity(size);
    if !h.agent.is_empty() {
        put_bytes_field(&mut out, 1, h.agent.as_bytes());
    }
    put_varint_field(&mut out, 2, h.position);
    put_varint_field(&mut out, 3, u64::from(h.part));
    put_varint_field(&mut out, 4, h.received_ns as u64);
    for (info, points) in series {
        out.push(tag(5, LEN));
        put_varint(&mut out, chunk_len(info, points) as u64);
        put_bytes_field(&mut out, 1, info);
        for &i in points {
            let r = &batch.readings[i];
            out.push(tag(2, LEN));
            put_varint(&mut out, point(i) as u64);
            put_point(&mut out, r.ts_ns, batch.received_ns, &r.value);
        }
    }
    put_varint_field(&mut out, 6, h.epoch);
    put_varint_field(&mut out, 7, h.seq);
    out
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use tributary_proto::v1 as pb;

    use super::{Header, export_message, put_varint, varint_len};
    use crate::model::{Point, SeriesKey, SeriesMeta, StoredValue};
    use crate::store::export::{LogBatch, LogReading};

    #[test]
    fn varints_have_the_length_they_are_written_with() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(
                prost::encoding::decode_varint(&mut out.as_slice()).ok(),
                Some(v)
            );
        }
    }

    #[test]
    fn messages_decode_to_what_prost_builds() {
        let meta = |id: i64, metric: &str, labels: &[(&str, &str)]| SeriesMeta {
            id,
            key: SeriesKey {
                agent: "edge-1".into(),
                device: "pump".into(),
                metric: metric.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                unit: if id == 1 { "V".into() } else { String::new() },
            },
        };
        let series = [
            meta(1, "volts", &[("site", "a"), ("x", "")]),
            meta(2, "state", &[]),
        ];
        let values = [
            StoredValue::F64(-0.0),
            StoredValue::F64(f64::NAN),
            StoredValue::I64(i64::MIN),
            StoredValue::I64(-1),
            StoredValue::I64(0),
            StoredValue::U64(u64::MAX),
            StoredValue::U64(0),
            StoredValue::Bool(false),
            StoredValue::Bool(true),
            StoredValue::Str(String::new()),
            StoredValue::Str("é\u{0}x".into()),
            StoredValue::Timeout(String::new()),
            StoredValue::Error("refused".into()),
        ];
        let readings: Vec<LogReading> = values
            .iter()
            .enumerate()
            .map(|(i, v)| LogReading {
                series_id: 1 + (i % 2) as i64,
                ts_ns: if i == 3 {
                    0
                } else {
                    1_765_000_000_000_000_000 + i as i64
                },
                value: v.clone(),
            })
            .collect();
        for (received_ns, agent, epoch, seq, part) in [
            (1_765_000_000_123_456_789, "edge-1", 7, 41, 3),
            (0, "", 0, 0, 0),
        ] {
            let batch = LogBatch {
                position: 99,
                received_ns,
                readings: readings.clone(),
                origin: None,
            };
            let groups: Vec<(usize, Vec<usize>)> = vec![
                (0, (0..values.len()).filter(|i| i % 2 == 0).collect()),
                (1, (0..values.len()).filter(|i| i % 2 == 1).collect()),
            ];
            let infos: Vec<Vec<u8>> = series
                .iter()
                .map(|m| crate::query::series_to_proto(m).encode_to_vec())
                .collect();
            let by_hand: Vec<(&[u8], Vec<usize>)> = groups
                .iter()
                .map(|(s, points)| (infos[*s].as_slice(), points.clone()))
                .collect();
            let h = Header {
                agent,
                position: 99,
                part,
                received_ns,
                epoch,
                seq,
            };
            let bytes = export_message(&h, &batch, &by_hand);
            let want = pb::ExportMessage {
                agent: agent.into(),
                position: 99,
                part,
                received_ns,
                series: groups
                    .iter()
                    .map(|(s, points)| pb::ReadingsChunk {
                        series: Some(crate::query::series_to_proto(&series[*s])),
                        points: points
                            .iter()
                            .map(|&i| {
                                crate::query::point_to_proto(Point {
                                    ts_ns: batch.readings[i].ts_ns,
                                    received_ns,
                                    value: batch.readings[i].value.clone(),
                                })
                            })
                            .collect(),
                    })
                    .collect(),
                epoch,
                seq,
            };
            let got = pb::ExportMessage::decode(bytes.as_slice()).expect("decodes");
            // prost writes what the message holds in as many bytes: no
            // default value written, no field twice.
            assert_eq!(got.encoded_len(), bytes.len());
            assert_eq!(
                (&got.agent, got.position, got.part, got.received_ns),
                (&want.agent, want.position, want.part, want.received_ns)
            );
            assert_eq!((got.epoch, got.seq), (want.epoch, want.seq));
            assert_eq!(got.series.len(), want.series.len());
            for (g, w) in got.series.iter().zip(&want.series) {
                // Labels are a map (no order): compared as values.
                assert_eq!(g.series, w.series);
                // NaN is not equal to itself: points compared as text.
                assert_eq!(format!("{:?}", g.points), format!("{:?}", w.points));
            }
        }
    }

    /// Without labels (a map, whose order prost does not fix) the message
    /// must be prost's, byte for byte: negative times (10-byte varints),
    /// a string past 127 bytes (a 2-byte length), every value kind.
    #[test]
    fn messages_without_labels_are_prosts_bytes() {
        let long = "w".repeat(300);
        let meta = SeriesMeta {
            id: 5,
            key: SeriesKey {
                agent: "edge-2".into(),
                device: "d".repeat(130),
                metric: "m".into(),
                labels: Default::default(),
                unit: String::new(),
            },
        };
        let values = [
            StoredValue::F64(1.5),
            StoredValue::I64(-7),
            StoredValue::U64(1 << 40),
            StoredValue::Bool(true),
            StoredValue::Str(long.clone()),
            StoredValue::Timeout(long.clone()),
            StoredValue::Error("e".into()),
        ];
        let received_ns = -1_000_000_007;
        let batch = LogBatch {
            position: 3,
            received_ns,
            readings: values
                .iter()
                .enumerate()
                .map(|(i, v)| LogReading {
                    series_id: 5,
                    ts_ns: -1 - i as i64 * 1_000_000_000_000,
                    value: v.clone(),
                })
                .collect(),
            origin: None,
        };
        let info = crate::query::series_to_proto(&meta).encode_to_vec();
        let points: Vec<usize> = (0..values.len()).collect();
        let h = Header {
            agent: &long,
            position: 3,
            part: 200,
            received_ns,
            epoch: u64::MAX,
            seq: 1 << 35,
        };
        let bytes = export_message(&h, &batch, &[(info.as_slice(), points.clone())]);
        let want = pb::ExportMessage {
            agent: long.clone(),
            position: 3,
            part: 200,
            received_ns,
            series: vec![pb::ReadingsChunk {
                series: Some(crate::query::series_to_proto(&meta)),
                points: points
                    .iter()
                    .map(|&i| {
                        crate::query::point_to_proto(Point {
                            ts_ns: batch.readings[i].ts_ns,
                            received_ns,
                            value: batch.readings[i].value.clone(),
                        })
                    })
                    .collect(),
            }],
            epoch: u64::MAX,
            seq: 1 << 35,
        };
        assert_eq!(bytes, want.encode_to_vec());
    }
}
