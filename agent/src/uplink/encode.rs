//! The columnar encoding of a spooled batch (`tributary.v1.Batch` with
//! agent-wide series ids, no names), and the declaration of a series on a
//! stream. Strings are cut to the wire limits before they are spooled.

use prost::Message;

use tributary_proto::limits::{MAX_LABELS, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use tributary_proto::v1 as pb;

use crate::reading::{FailureKind, Reading, SeriesKey, Value};

use super::series_ids::SeriesIds;

/// Columns of one value kind being filled: series ids and timestamps as
/// deltas to the previous reading of the group.
#[derive(Debug, Default)]
struct KeyColumns {
    series_delta: Vec<i64>,
    base_ts_ns: i64,
    ts_delta: Vec<i64>,
    prev: (i64, i64),
}

impl KeyColumns {
    fn push(&mut self, id: u32, ts_ns: i64) {
        if self.series_delta.is_empty() {
            self.base_ts_ns = ts_ns;
            self.prev = (0, ts_ns);
        }
        self.series_delta.push(i64::from(id) - self.prev.0);
        // Timestamps of honest readings are after 1970, so the difference
        // of two fits; the collector refuses the others either way.
        self.ts_delta.push(ts_ns.wrapping_sub(self.prev.1));
        self.prev = (i64::from(id), ts_ns);
    }
}

/// Encodes readings as a spooled batch: agent-wide series ids, floats,
/// integers and booleans as columns, strings and failures as rows. Gives
/// the bytes, the number of readings and the highest series id used; new
/// series get their ids in `ids`.
pub(super) fn encode_batch(ids: &mut SeriesIds, readings: &[Reading]) -> (Vec<u8>, u32, u32) {
    let (mut f64_keys, mut f64_values) = (KeyColumns::default(), Vec::new());
    let (mut i64_keys, mut i64_values) = (KeyColumns::default(), Vec::new());
    let (mut bool_keys, mut bool_values) = (KeyColumns::default(), Vec::new());
    let mut rows = Vec::new();
    let (mut max_series, mut prev) = (0, 0);
    for r in readings {
        let id = ids.id_after(prev, &r.series);
        prev = id;
        max_series = max_series.max(id);
        match &r.value {
            Value::F64(v) => {
                f64_keys.push(id, r.ts_ns);
                f64_values.push(*v);
            }
            Value::I64(v) => {
                i64_keys.push(id, r.ts_ns);
                i64_values.push(*v);
            }
            Value::Bool(v) => {
                bool_keys.push(id, r.ts_ns);
                bool_values.push(*v);
            }
            other => rows.push(pb::Reading {
                series: id,
                ts_ns: r.ts_ns,
                value: Some(encode_value(other)),
            }),
        }
    }
    let columns = pb::Columns {
        f64: (!f64_values.is_empty()).then_some(pb::FloatColumns {
            series_delta: f64_keys.series_delta,
            base_ts_ns: f64_keys.base_ts_ns,
            ts_delta: f64_keys.ts_delta,
            values: f64_values,
        }),
        i64: (!i64_values.is_empty()).then_some(pb::IntColumns {
            series_delta: i64_keys.series_delta,
            base_ts_ns: i64_keys.base_ts_ns,
            ts_delta: i64_keys.ts_delta,
            values: i64_values,
        }),
        bool: (!bool_values.is_empty()).then_some(pb::BoolColumns {
            series_delta: bool_keys.series_delta,
            base_ts_ns: bool_keys.base_ts_ns,
            ts_delta: bool_keys.ts_delta,
            values: bool_values,
        }),
    };
    let batch = pb::Batch {
        readings: rows,
        columns: Some(columns),
        ..Default::default()
    };
    (batch.encode_to_vec(), readings.len() as u32, max_series)
}

/// Calls `f` with the series id of every reading of `batch`, rows and
/// columns, in order (ids repeat).
pub(super) fn for_each_series(batch: &pb::Batch, mut f: impl FnMut(u32)) {
    for r in &batch.readings {
        f(r.series);
    }
    let Some(c) = &batch.columns else {
        return;
    };
    let groups = [
        c.f64.as_ref().map(|g| &g.series_delta),
        c.i64.as_ref().map(|g| &g.series_delta),
        c.bool.as_ref().map(|g| &g.series_delta),
    ];
    for deltas in groups.into_iter().flatten() {
        let mut id = 0i64;
        for d in deltas {
            id = id.wrapping_add(*d);
            f(id as u32);
        }
    }
}

/// The declaration of series `id` on a stream.
pub(super) fn series_decl(id: u32, key: &SeriesKey) -> pb::SeriesDecl {
    pb::SeriesDecl {
        id,
        device: clip(&key.device, MAX_NAME_BYTES),
        metric: clip(&key.metric, MAX_NAME_BYTES),
        labels: key
            .labels
            .iter()
            .take(MAX_LABELS)
            .map(|(k, v)| (clip(k, MAX_NAME_BYTES), clip(v, MAX_NAME_BYTES)))
            .collect(),
        unit: clip(&key.unit, MAX_NAME_BYTES),
    }
}

fn encode_value(v: &Value) -> pb::reading::Value {
    use pb::reading::Value as V;
    match v {
        Value::F64(x) => V::F64(*x),
        Value::I64(x) => V::I64(*x),
        Value::Bool(x) => V::Bool(*x),
        Value::Str(x) => V::Str(clip(x, MAX_VALUE_BYTES)),
        Value::Failed { kind, message } => V::Failure(pb::Failure {
            status: match kind {
                FailureKind::Timeout => pb::PollStatus::Timeout as i32,
                FailureKind::Error => pb::PollStatus::Error as i32,
            },
            message: clip(message, MAX_VALUE_BYTES),
        }),
    }
}

/// `s`, cut at a character boundary to at most `max` bytes. The collector
/// rejects a batch with a longer string, and a batch it rejects would be
/// resent forever, so the agent cuts before it spools.
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
