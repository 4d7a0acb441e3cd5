//! The columnar encoding of a spooled batch (`tributary.v1.Batch` with
//! agent-wide series ids, no names), and the declaration of a series on a
//! stream. Nothing the collector's `check_batch` refuses is spooled:
//! strings are cut to the wire limits, labels beyond `MAX_LABELS` are left
//! out, and a reading whose series has an empty device, metric or label
//! name becomes a failed reading of the device's `invalid_series` series
//! (see [`wire_refusal`]).

use std::sync::Arc;

use prost::Message;

use tributary_proto::limits::{MAX_LABELS, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use tributary_proto::v1 as pb;

use crate::reading::{
    FailureKind, INVALID_SERIES_METRIC, Labels, Reading, SeriesKey, Value, intern,
};

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

/// A batch encoded for the spool.
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) bytes: Vec<u8>,
    pub(super) readings: u32,
    /// The highest series id used.
    pub(super) max_series: u32,
    /// Readings whose series the collector would refuse, spooled as failed
    /// readings of their device's `invalid_series` series instead.
    pub(super) invalid: u64,
    /// The failure message of the first of them (for the log).
    pub(super) first_invalid: Option<String>,
}

/// Encodes readings as a spooled batch: agent-wide series ids, floats,
/// signed and unsigned integers and booleans as columns, strings and failures as rows. New
/// series get their ids in `ids`; a new series the collector would refuse
/// does not: its reading is encoded as a failure of a valid one instead.
pub(super) fn encode_batch(ids: &mut SeriesIds, readings: &[Reading]) -> Encoded {
    let (mut f64_keys, mut f64_values) = (KeyColumns::default(), Vec::new());
    let (mut i64_keys, mut i64_values) = (KeyColumns::default(), Vec::new());
    let (mut u64_keys, mut u64_values) = (KeyColumns::default(), Vec::new());
    let (mut bool_keys, mut bool_values) = (KeyColumns::default(), Vec::new());
    let mut rows = Vec::new();
    let (mut max_series, mut prev) = (0, 0);
    let (mut invalid, mut first_invalid) = (0, None);
    for r in readings {
        let known = ids.len();
        let mut id = ids.id_after(prev, &r.series);
        let mut value = &r.value;
        let stand_in;
        // Only a series met for the first time is checked: one with an id
        // passed this check when it got it.
        if id > known
            && let Some(why) = wire_refusal(&r.series)
        {
            ids.truncate(known);
            stand_in = invalid_reading(&r.series, why, &r.value);
            id = ids.id(&stand_in.0);
            value = &stand_in.1;
            invalid += 1;
            if let (None, Value::Failed { message, .. }) = (&first_invalid, value) {
                first_invalid = Some(message.clone());
            }
        }
        prev = id;
        max_series = max_series.max(id);
        match value {
            Value::F64(v) => {
                f64_keys.push(id, r.ts_ns);
                f64_values.push(*v);
            }
            Value::I64(v) => {
                i64_keys.push(id, r.ts_ns);
                i64_values.push(*v);
            }
            Value::U64(v) => {
                u64_keys.push(id, r.ts_ns);
                u64_values.push(*v);
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
        u64: (!u64_values.is_empty()).then_some(pb::UintColumns {
            series_delta: u64_keys.series_delta,
            base_ts_ns: u64_keys.base_ts_ns,
            ts_delta: u64_keys.ts_delta,
            values: u64_values,
        }),
    };
    let batch = pb::Batch {
        readings: rows,
        columns: Some(columns),
        ..Default::default()
    };
    Encoded {
        bytes: batch.encode_to_vec(),
        readings: readings.len() as u32,
        max_series,
        invalid,
        first_invalid,
    }
}

/// Why the collector would refuse to declare `key`, if it would. Mirrors
/// what `check_batch` (collector/src/session/check.rs, `check_decl`)
/// refuses in a series declaration: an empty device, metric or label name.
/// The rest of what it checks there cannot fail for a key that went through
/// [`series_decl`]: names, label values and the unit longer than
/// `MAX_NAME_BYTES` are cut, labels beyond `MAX_LABELS` are left out, and a
/// NUL byte is stored as U+FFFD, not refused. A collector configured with
/// tighter `[limits]` than the wire's may still refuse a batch; delivery
/// handles that (see `delivery.rs`).
pub(super) fn wire_refusal(key: &SeriesKey) -> Option<&'static str> {
    if key.device.is_empty() {
        Some("the device name is empty")
    } else if key.metric.is_empty() {
        Some("the metric name is empty")
    } else if key.labels.iter().any(|(name, _)| name.is_empty()) {
        Some("a label name is empty")
    } else {
        None
    }
}

/// The failed reading that stands in for a reading of `key`, which the
/// collector would refuse because `why`: the device's (or, without a
/// device name, `invalid_series`') `invalid_series` series, naming the key
/// and the value that is not stored.
fn invalid_reading(key: &SeriesKey, why: &str, value: &Value) -> (Arc<SeriesKey>, Value) {
    let device = if key.device.is_empty() {
        intern(INVALID_SERIES_METRIC)
    } else {
        key.device.clone()
    };
    let series = Arc::new(SeriesKey {
        device,
        metric: intern(INVALID_SERIES_METRIC),
        labels: Labels::default(),
        unit: intern(""),
    });
    let labels: Vec<String> = key
        .labels
        .iter()
        .map(|(k, v)| format!("{k:?}={v:?}"))
        .collect();
    let value = match value {
        Value::Failed { message, .. } => format!("failure {message:?}"),
        Value::F64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::Bool(v) => v.to_string(),
        Value::Str(v) => format!("{v:?}"),
    };
    let message = format!(
        "series refused before spooling, {why}: device {:?}, metric {:?}, labels {{{}}}; its value {value} is not stored",
        key.device,
        key.metric,
        labels.join(", ")
    );
    (
        series,
        Value::Failed {
            kind: FailureKind::Error,
            message,
        },
    )
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
        c.u64.as_ref().map(|g| &g.series_delta),
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
        Value::U64(x) => V::U64(*x),
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
