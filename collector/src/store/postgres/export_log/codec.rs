//! How the readings of one commit are encoded in an `export_log` row's
//! `data`: a format byte, then (format 2) per agent batch a header (agent
//! as u32 length and UTF-8, epoch and seq as little-endian u64,
//! received_ns as i64, the reading count as u32) and its readings; format
//! 1 (rows from before batch identities were kept) is the readings alone.
//! Each reading is its kind (`StoredValue::kind_code`), series and time
//! (little-endian i64), then the value: f64, i64 or u64 (8 bytes), bool
//! (1), text (u32 length, UTF-8).

use crate::model::StoredValue;
use crate::store::export::{LogReading, Origin};

/// First byte of an encoded row: the format's version.
pub(super) const FORMAT: u8 = 2;
/// The format of rows written before batch identities: readings only.
const FORMAT_READINGS: u8 = 1;

/// One agent batch of a decoded row; `origin` and `received_ns` are
/// `None` in a format 1 row.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    pub origin: Option<Origin>,
    pub received_ns: Option<i64>,
    pub readings: Vec<LogReading>,
}

/// Appends the header of one agent batch of `count` readings (its
/// readings follow, through [`encode`]).
pub(super) fn encode_batch(out: &mut Vec<u8>, origin: &Origin, received_ns: i64, count: u32) {
    put_text(out, &origin.agent);
    out.extend_from_slice(&origin.epoch.to_le_bytes());
    out.extend_from_slice(&origin.seq.to_le_bytes());
    out.extend_from_slice(&received_ns.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, t: &str) {
    // Readings and agent ids are bounded far below 4 GiB by the wire's
    // limits.
    let len = u32::try_from(t.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&t.as_bytes()[..len as usize]);
}

/// Appends one reading: kind (`StoredValue::kind_code`), series, time
/// (little-endian i64), then the value: f64, i64 or u64 (8 bytes), bool
/// (1), text (u32 length, UTF-8).
pub(super) fn encode(out: &mut Vec<u8>, series: i64, ts_ns: i64, value: &StoredValue) {
    out.push(value.kind_code() as u8);
    out.extend_from_slice(&series.to_le_bytes());
    out.extend_from_slice(&ts_ns.to_le_bytes());
    match value {
        StoredValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        StoredValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        StoredValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        StoredValue::Bool(v) => out.push(u8::from(*v)),
        StoredValue::Str(t) | StoredValue::Timeout(t) | StoredValue::Error(t) => put_text(out, t),
    }
}

/// The agent batches of one encoded row, or what is wrong with it.
pub(super) fn decode(data: &[u8]) -> Result<Vec<Group>, String> {
    let (format, mut rest) = match data.split_first() {
        Some((&f, rest)) if f == FORMAT || f == FORMAT_READINGS => (f, rest),
        _ => {
            return Err(format!(
                "unknown format {:?} (this collector reads {FORMAT_READINGS} and {FORMAT})",
                data.first()
            ));
        }
    };
    if format == FORMAT_READINGS {
        let mut readings = Vec::new();
        while !rest.is_empty() {
            readings.push(reading(&mut rest)?);
        }
        return Ok(vec![Group {
            origin: None,
            received_ns: None,
            readings,
        }]);
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let agent = text(&mut rest).map_err(|e| format!("agent: {e}"))?;
        let epoch = u64_of(take(&mut rest, 8)?);
        let seq = u64_of(take(&mut rest, 8)?);
        let received_ns = u64_of(take(&mut rest, 8)?) as i64;
        let count = u32_of(take(&mut rest, 4)?);
        let mut readings = Vec::with_capacity((count as usize).min(rest.len() / 17));
        for _ in 0..count {
            readings.push(reading(&mut rest)?);
        }
        out.push(Group {
            origin: Some(Origin { agent, epoch, seq }),
            received_ns: Some(received_ns),
            readings,
        });
    }
    Ok(out)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if rest.len() < n {
        return Err(format!("cut short: {n} bytes wanted, {} left", rest.len()));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

fn u32_of(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn text(rest: &mut &[u8]) -> Result<String, String> {
    let len = u32_of(take(rest, 4)?);
    let bytes = take(rest, len as usize)?;
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("text: {e}"))
}

/// One reading from the front of `rest`.
fn reading(rest: &mut &[u8]) -> Result<LogReading, String> {
    let kind = take(rest, 1)?[0];
    let series_id = u64_of(take(rest, 8)?) as i64;
    let ts_ns = u64_of(take(rest, 8)?) as i64;
    let value = match kind {
        0 => StoredValue::F64(f64::from_bits(u64_of(take(rest, 8)?))),
        1 => StoredValue::I64(u64_of(take(rest, 8)?) as i64),
        2 => StoredValue::Bool(take(rest, 1)?[0] != 0),
        3 => StoredValue::Str(text(rest)?),
        4 => StoredValue::Timeout(text(rest)?),
        5 => StoredValue::Error(text(rest)?),
        6 => StoredValue::U64(u64_of(take(rest, 8)?)),
        k => return Err(format!("unknown reading kind {k}")),
    };
    Ok(LogReading {
        series_id,
        ts_ns,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::{FORMAT, FORMAT_READINGS, Group, decode, encode, encode_batch};
    use crate::model::StoredValue;
    use crate::store::export::{LogReading, Origin};

    #[test]
    fn readings_survive_the_log_encoding_and_bad_rows_are_named() {
        let values = [
            StoredValue::F64(-0.5),
            StoredValue::I64(i64::MIN),
            StoredValue::Bool(true),
            StoredValue::Str("é".into()),
            StoredValue::Timeout(String::new()),
            StoredValue::Error("refused".into()),
            StoredValue::U64(u64::MAX),
            StoredValue::U64((1 << 63) + 1),
        ];
        let want: Vec<LogReading> = values
            .iter()
            .enumerate()
            .map(|(i, v)| LogReading {
                series_id: i as i64 + 1,
                ts_ns: -(i as i64),
                value: v.clone(),
            })
            .collect();
        // Two agent batches in one commit: 4 readings, then 2.
        let origins = [
            Origin {
                agent: "edge-é".into(),
                epoch: u64::MAX,
                seq: 7,
            },
            Origin {
                agent: "b".into(),
                epoch: 1,
                seq: 0,
            },
        ];
        let mut data = vec![FORMAT];
        for (origin, (received, readings)) in
            origins.iter().zip([(-5i64, &want[..4]), (9, &want[4..])])
        {
            encode_batch(&mut data, origin, received, readings.len() as u32);
            for r in readings {
                encode(&mut data, r.series_id, r.ts_ns, &r.value);
            }
        }
        let got = decode(&data);
        assert_eq!(
            got,
            Ok(vec![
                Group {
                    origin: Some(origins[0].clone()),
                    received_ns: Some(-5),
                    readings: want[..4].to_vec(),
                },
                Group {
                    origin: Some(origins[1].clone()),
                    received_ns: Some(9),
                    readings: want[4..].to_vec(),
                },
            ])
        );
        assert!(decode(&data[..data.len() - 1]).is_err());
        assert!(decode(&[9]).is_err());
        assert!(decode(&[]).is_err());
        // A row from before batch identities: readings alone.
        let mut old = vec![FORMAT_READINGS];
        for r in &want {
            encode(&mut old, r.series_id, r.ts_ns, &r.value);
        }
        assert_eq!(
            decode(&old),
            Ok(vec![Group {
                origin: None,
                received_ns: None,
                readings: want.clone(),
            }])
        );
    }
}
