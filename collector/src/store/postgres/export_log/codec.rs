//! How the readings of one commit are encoded in an `export_log` row's
//! `data`: a format byte, then per reading its kind
//! (`StoredValue::kind_code`), series and time (little-endian i64), then
//! the value: f64, i64 or u64 (8 bytes), bool (1), text (u32 length,
//! UTF-8).

use crate::model::StoredValue;
use crate::store::export::LogReading;

/// First byte of an encoded row: the format's version.
pub(super) const FORMAT: u8 = 1;

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
        StoredValue::Str(t) | StoredValue::Timeout(t) | StoredValue::Error(t) => {
            // Readings are bounded far below 4 GiB by the wire's limits.
            let len = u32::try_from(t.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&t.as_bytes()[..len as usize]);
        }
    }
}

/// The readings of one encoded row, or what is wrong with it.
pub(super) fn decode(data: &[u8]) -> Result<Vec<LogReading>, String> {
    let Some((&FORMAT, mut rest)) = data.split_first() else {
        return Err(format!(
            "unknown format {:?} (this collector reads {FORMAT})",
            data.first()
        ));
    };
    let mut out = Vec::new();
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err(format!("cut short: {n} bytes wanted, {} left", rest.len()));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn i64_of(b: &[u8]) -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        i64::from_le_bytes(a)
    }
    while !rest.is_empty() {
        let kind = take(&mut rest, 1)?[0];
        let series_id = i64_of(take(&mut rest, 8)?);
        let ts_ns = i64_of(take(&mut rest, 8)?);
        let text = |rest: &mut &[u8]| -> Result<String, String> {
            let mut len = [0u8; 4];
            len.copy_from_slice(take(rest, 4)?);
            let bytes = take(rest, u32::from_le_bytes(len) as usize)?;
            String::from_utf8(bytes.to_vec()).map_err(|e| format!("text: {e}"))
        };
        let value = match kind {
            0 => StoredValue::F64(f64::from_bits(i64_of(take(&mut rest, 8)?) as u64)),
            1 => StoredValue::I64(i64_of(take(&mut rest, 8)?)),
            2 => StoredValue::Bool(take(&mut rest, 1)?[0] != 0),
            3 => StoredValue::Str(text(&mut rest)?),
            4 => StoredValue::Timeout(text(&mut rest)?),
            5 => StoredValue::Error(text(&mut rest)?),
            6 => StoredValue::U64(i64_of(take(&mut rest, 8)?) as u64),
            k => return Err(format!("unknown reading kind {k}")),
        };
        out.push(LogReading {
            series_id,
            ts_ns,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{FORMAT, decode, encode};
    use crate::model::StoredValue;

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
        let mut data = vec![FORMAT];
        for (i, v) in values.iter().enumerate() {
            encode(&mut data, i as i64 + 1, -(i as i64), v);
        }
        let got = decode(&data).map_err(|e| e.to_string());
        let want: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| super::LogReading {
                series_id: i as i64 + 1,
                ts_ns: -(i as i64),
                value: v.clone(),
            })
            .collect();
        assert_eq!(got, Ok(want));
        assert!(decode(&data[..data.len() - 1]).is_err());
        assert!(decode(&[9]).is_err());
        assert!(decode(&[]).is_err());
    }
}
