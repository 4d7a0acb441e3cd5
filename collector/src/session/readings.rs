//! The readings of a checked batch, as the merger takes them: rows and
//! columns flattened, stream ids resolved to global ids, strings made
//! storable.

use tributary_proto::v1 as pb;

use super::series::StreamSeries;
use crate::model::{NewReading, StoredValue};

/// The readings of a batch that [`check_batch`](super::check_batch)
/// accepted, rows first, then the f64, i64, bool and u64 columns, with stream ids
/// resolved through `series` (a reading of an id missing there is left out).
pub fn batch_readings(batch: pb::Batch, series: &StreamSeries) -> Vec<NewReading> {
    let columns = batch.columns.unwrap_or_default();
    let in_columns = columns.f64.as_ref().map_or(0, |g| g.values.len())
        + columns.i64.as_ref().map_or(0, |g| g.values.len())
        + columns.bool.as_ref().map_or(0, |g| g.values.len())
        + columns.u64.as_ref().map_or(0, |g| g.values.len());
    let mut out = Vec::with_capacity(batch.readings.len() + in_columns);
    out.extend(batch.readings.into_iter().filter_map(|r| {
        Some(NewReading {
            series_id: *series.get(&r.series)?,
            ts_ns: r.ts_ns,
            value: convert_value(r.value?),
        })
    }));
    if let Some(g) = &columns.f64 {
        extend_group(
            &mut out,
            series,
            (&g.series_delta, g.base_ts_ns, &g.ts_delta),
            &g.values,
            StoredValue::F64,
        );
    }
    if let Some(g) = &columns.i64 {
        extend_group(
            &mut out,
            series,
            (&g.series_delta, g.base_ts_ns, &g.ts_delta),
            &g.values,
            StoredValue::I64,
        );
    }
    if let Some(g) = &columns.bool {
        extend_group(
            &mut out,
            series,
            (&g.series_delta, g.base_ts_ns, &g.ts_delta),
            &g.values,
            StoredValue::Bool,
        );
    }
    if let Some(g) = &columns.u64 {
        extend_group(
            &mut out,
            series,
            (&g.series_delta, g.base_ts_ns, &g.ts_delta),
            &g.values,
            StoredValue::U64,
        );
    }
    out
}

/// Appends the readings of one value group that
/// [`check_batch`](super::check_batch) accepted (so no sum overflows, every
/// id fits and is in `series`); `keys` are its `(series_delta, base_ts_ns,
/// ts_delta)` columns.
fn extend_group<V: Copy>(
    out: &mut Vec<NewReading>,
    series: &StreamSeries,
    keys: (&[i64], i64, &[i64]),
    values: &[V],
    wrap: impl Fn(V) -> StoredValue,
) {
    let (series_delta, mut ts, ts_delta) = keys;
    let mut id = 0i64;
    for ((&ds, &dt), &v) in series_delta.iter().zip(ts_delta).zip(values) {
        id = id.wrapping_add(ds);
        ts = ts.wrapping_add(dt);
        if let Some(&series_id) = series.get(&(id as u32)) {
            out.push(NewReading {
                series_id,
                ts_ns: ts,
                value: wrap(v),
            });
        }
    }
}

fn convert_value(value: pb::reading::Value) -> StoredValue {
    use pb::reading::Value as V;
    match value {
        V::F64(v) => StoredValue::F64(v),
        V::I64(v) => StoredValue::I64(v),
        V::U64(v) => StoredValue::U64(v),
        V::Bool(v) => StoredValue::Bool(v),
        V::Str(v) => StoredValue::Str(no_nul(v)),
        V::Failure(f) => match pb::PollStatus::try_from(f.status) {
            Ok(pb::PollStatus::Timeout) => StoredValue::Timeout(no_nul(f.message)),
            _ => StoredValue::Error(no_nul(f.message)),
        },
    }
}

/// `s` with every NUL replaced by U+FFFD. PostgreSQL cannot store NUL in
/// text, and a commit that can never succeed would stop the merger for
/// everyone; valid protobuf strings may contain it, so it is replaced here.
pub(super) fn no_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}
