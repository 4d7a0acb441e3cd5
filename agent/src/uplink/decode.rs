//! Reading a spooled record back into readings: what a test or tool needs
//! to look into a spool (the uplink itself sends records as they are).

use std::sync::Arc;

use prost::Message;

use tributary_proto::v1 as pb;

use crate::reading::{FailureKind, Reading, SeriesKey, Value};
use crate::spool::Record;

/// Why a spooled record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a `tributary.v1.Batch` (the protobuf error is
    /// named in the message, so it is not a `source()`).
    #[error("spooled batch {seq}: {message}")]
    Protobuf { seq: u64, message: String },
    #[error("spooled batch {seq}: unknown series {id}")]
    UnknownSeries { seq: u64, id: u32 },
    #[error("spooled batch {seq}: a row without a value")]
    NoValue { seq: u64 },
}

/// The readings of a spooled record, with their series from the spool's
/// dictionary (`series[n - 1]` is series `n`, see
/// [`crate::spool::Spool::take_series`]):
/// what a test or tool needs to look into a spool.
pub fn spooled_readings(
    record: &Record,
    series: &[Arc<SeriesKey>],
) -> Result<Vec<Reading>, DecodeError> {
    let seq = record.seq;
    let batch = pb::Batch::decode(record.batch.as_slice()).map_err(|e| DecodeError::Protobuf {
        seq,
        message: e.to_string(),
    })?;
    let key = |id: u32| {
        (id as usize)
            .checked_sub(1)
            .and_then(|i| series.get(i))
            .cloned()
            .ok_or(DecodeError::UnknownSeries { seq, id })
    };
    let mut out = Vec::with_capacity(record.readings as usize);
    for r in &batch.readings {
        let value = match &r.value {
            Some(pb::reading::Value::Str(s)) => Value::Str(s.clone()),
            Some(pb::reading::Value::Failure(f)) => Value::Failed {
                kind: if f.status == pb::PollStatus::Timeout as i32 {
                    FailureKind::Timeout
                } else {
                    FailureKind::Error
                },
                message: f.message.clone(),
            },
            Some(pb::reading::Value::F64(v)) => Value::F64(*v),
            Some(pb::reading::Value::I64(v)) => Value::I64(*v),
            Some(pb::reading::Value::U64(v)) => Value::U64(*v),
            Some(pb::reading::Value::Bool(v)) => Value::Bool(*v),
            None => return Err(DecodeError::NoValue { seq }),
        };
        out.push(Reading {
            series: key(r.series)?,
            ts_ns: r.ts_ns,
            value,
        });
    }
    let c = batch.columns.unwrap_or_default();
    let mut group = |deltas: &[i64], base: i64, ts_delta: &[i64], values: Vec<Value>| {
        let (mut id, mut ts) = (0i64, base);
        for ((ds, dt), value) in deltas.iter().zip(ts_delta).zip(values) {
            id = id.wrapping_add(*ds);
            ts = ts.wrapping_add(*dt);
            out.push(Reading {
                series: key(id as u32)?,
                ts_ns: ts,
                value,
            });
        }
        Ok::<(), DecodeError>(())
    };
    if let Some(g) = &c.f64 {
        let values = g.values.iter().map(|v| Value::F64(*v)).collect();
        group(&g.series_delta, g.base_ts_ns, &g.ts_delta, values)?;
    }
    if let Some(g) = &c.i64 {
        let values = g.values.iter().map(|v| Value::I64(*v)).collect();
        group(&g.series_delta, g.base_ts_ns, &g.ts_delta, values)?;
    }
    if let Some(g) = &c.bool {
        let values = g.values.iter().map(|v| Value::Bool(*v)).collect();
        group(&g.series_delta, g.base_ts_ns, &g.ts_delta, values)?;
    }
    if let Some(g) = &c.u64 {
        let values = g.values.iter().map(|v| Value::U64(*v)).collect();
        group(&g.series_delta, g.base_ts_ns, &g.ts_delta, values)?;
    }
    Ok(out)
}
