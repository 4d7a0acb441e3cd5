//! The pure validation of a batch ([`check_batch`]): sequence, sizes,
//! declarations, timestamps and values, in both forms a batch may carry
//! readings in (rows and columns). Touches no state, so a bad batch leaves
//! nothing behind, and the fuzz targets and property tests call it
//! directly.

use std::collections::HashSet;

use tonic::Status;

use tributary_proto::v1 as pb;

use super::Limits;
use super::readings::no_nul;
use super::series::StreamSeries;
use crate::model::SeriesKey;

/// Checks a whole batch of `agent`'s stream, whose last sequence is
/// `last_seq` and whose declared series are `declared`, against `limits`.
/// A stream that may send out of order passes 0 as `last_seq`: any
/// sequence from 1 up is taken (the merger dedups by the committed set).
/// Pure (no state is touched), so a bad batch leaves nothing behind, and so
/// it can be fuzzed. Returns the series the batch declares, in order.
pub fn check_batch(
    batch: &pb::Batch,
    agent: &str,
    last_seq: u64,
    declared: &StreamSeries,
    limits: &Limits,
) -> Result<Vec<(u32, SeriesKey)>, Status> {
    if batch.seq <= last_seq {
        return Err(Status::invalid_argument(format!(
            "batch.seq: {} does not increase (previous {last_seq})",
            batch.seq
        )));
    }
    if batch.oldest_spooled > batch.seq {
        return Err(Status::invalid_argument(format!(
            "batch.oldest_spooled: {} is above the batch's own sequence {}",
            batch.oldest_spooled, batch.seq
        )));
    }
    if batch.seq > i64::MAX as u64 {
        return Err(Status::invalid_argument(format!(
            "batch.seq: {} is larger than 2^63-1",
            batch.seq
        )));
    }
    let groups = column_groups(batch.columns.as_ref());
    let mut in_columns = 0usize;
    for g in groups.iter().flatten() {
        let n = g.series_delta.len();
        if g.ts_delta.len() != n {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{}: {} timestamps for {n} series ids",
                g.name,
                g.ts_delta.len()
            )));
        }
        if g.values != n {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{}: {} values for {n} series ids",
                g.name, g.values
            )));
        }
        in_columns = in_columns.saturating_add(n);
    }
    let total = batch.readings.len().saturating_add(in_columns);
    if total > limits.max_readings_per_batch {
        return Err(Status::invalid_argument(format!(
            "batch.readings: {total} readings ({} rows, {in_columns} in columns), more than the limit of {}",
            batch.readings.len(),
            limits.max_readings_per_batch
        )));
    }
    if declared.len().saturating_add(batch.series.len()) > limits.max_series_per_stream {
        return Err(Status::invalid_argument(format!(
            "batch.series: more than {} series on one stream",
            limits.max_series_per_stream
        )));
    }
    // A set, not a scan: a batch may declare many series and carry many
    // readings, and a hostile one must not cost quadratic time.
    let mut new_ids = HashSet::with_capacity(batch.series.len());
    let mut new_series = Vec::with_capacity(batch.series.len());
    for (i, decl) in batch.series.iter().enumerate() {
        let key = check_decl(i, decl, agent, limits)?;
        if declared.contains_key(&decl.id) || !new_ids.insert(decl.id) {
            return Err(Status::invalid_argument(format!(
                "batch.series[{i}].id: {} declared twice on this stream",
                decl.id
            )));
        }
        new_series.push((decl.id, key));
    }
    for (i, r) in batch.readings.iter().enumerate() {
        if !declared.contains_key(&r.series) && (new_ids.is_empty() || !new_ids.contains(&r.series))
        {
            return Err(Status::invalid_argument(format!(
                "batch.readings[{i}].series: {} was never declared",
                r.series
            )));
        }
        if r.ts_ns <= 0 {
            return Err(Status::invalid_argument(format!(
                "batch.readings[{i}].ts_ns: {} is not a time after 1970",
                r.ts_ns
            )));
        }
        check_value(i, &r.value, limits.max_value_len)?;
    }
    let is_declared =
        |id: u32| declared.contains_key(&id) || (!new_ids.is_empty() && new_ids.contains(&id));
    for g in groups.iter().flatten() {
        check_group(g, is_declared)?;
    }
    Ok(new_series)
}

/// One value group of `Batch.columns`, seen through the shape all kinds
/// share (only the value column's type differs).
struct Group<'a> {
    /// Field name in errors: `f64`, `i64`, `bool` or `u64`.
    name: &'static str,
    series_delta: &'a [i64],
    base_ts_ns: i64,
    ts_delta: &'a [i64],
    /// Length of the value column.
    values: usize,
}

fn column_groups(columns: Option<&pb::Columns>) -> [Option<Group<'_>>; 4] {
    let Some(c) = columns else {
        return [None, None, None, None];
    };
    [
        c.f64.as_ref().map(|g| Group {
            name: "f64",
            series_delta: &g.series_delta,
            base_ts_ns: g.base_ts_ns,
            ts_delta: &g.ts_delta,
            values: g.values.len(),
        }),
        c.i64.as_ref().map(|g| Group {
            name: "i64",
            series_delta: &g.series_delta,
            base_ts_ns: g.base_ts_ns,
            ts_delta: &g.ts_delta,
            values: g.values.len(),
        }),
        c.bool.as_ref().map(|g| Group {
            name: "bool",
            series_delta: &g.series_delta,
            base_ts_ns: g.base_ts_ns,
            ts_delta: &g.ts_delta,
            values: g.values.len(),
        }),
        c.u64.as_ref().map(|g| Group {
            name: "u64",
            series_delta: &g.series_delta,
            base_ts_ns: g.base_ts_ns,
            ts_delta: &g.ts_delta,
            values: g.values.len(),
        }),
    ]
}

/// Checks that every series id of a group (with equal column lengths, see
/// [`check_batch`]) is declared and every timestamp is after 1970 and fits.
fn check_group(g: &Group<'_>, is_declared: impl Fn(u32) -> bool) -> Result<(), Status> {
    let name = g.name;
    let mut id = 0i64;
    let mut ts = g.base_ts_ns;
    for (i, (&ds, &dt)) in g.series_delta.iter().zip(g.ts_delta).enumerate() {
        let series = id
            .checked_add(ds)
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "batch.columns.{name}.series_delta[{i}]: {ds} after id {id} is not a series id"
                ))
            })?;
        if !is_declared(series) {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{name}.series_delta[{i}]: series {series} was never declared"
            )));
        }
        id = i64::from(series);
        ts = ts.checked_add(dt).ok_or_else(|| {
            Status::invalid_argument(format!(
                "batch.columns.{name}.ts_delta[{i}]: {dt} after {ts} overflows 64 bits"
            ))
        })?;
        if ts <= 0 {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{name}.ts_delta[{i}]: ts_ns {ts} is not a time after 1970"
            )));
        }
    }
    Ok(())
}

fn check_decl(
    i: usize,
    decl: &pb::SeriesDecl,
    agent: &str,
    limits: &Limits,
) -> Result<SeriesKey, Status> {
    let max = limits.max_name_len;
    check_name(&format!("batch.series[{i}].device"), &decl.device, max)?;
    check_name(&format!("batch.series[{i}].metric"), &decl.metric, max)?;
    if decl.unit.len() > max {
        return Err(too_long(&format!("batch.series[{i}].unit"), max));
    }
    if decl.labels.len() > limits.max_labels {
        return Err(Status::invalid_argument(format!(
            "batch.series[{i}].labels: {} labels, more than the limit of {}",
            decl.labels.len(),
            limits.max_labels
        )));
    }
    for (k, v) in &decl.labels {
        check_name(&format!("batch.series[{i}].labels key"), k, max)?;
        if v.len() > max {
            return Err(too_long(&format!("batch.series[{i}].labels[{k:?}]"), max));
        }
    }
    Ok(SeriesKey {
        agent: agent.to_string(),
        device: no_nul(decl.device.clone()),
        metric: no_nul(decl.metric.clone()),
        labels: decl
            .labels
            .iter()
            .map(|(k, v)| (no_nul(k.clone()), no_nul(v.clone())))
            .collect(),
        unit: no_nul(decl.unit.clone()),
    })
}

pub(super) fn too_long(field: &str, max: usize) -> Status {
    Status::invalid_argument(format!("{field}: longer than {max} bytes"))
}

pub(super) fn check_name(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: empty")));
    }
    if value.len() > max {
        return Err(too_long(field, max));
    }
    Ok(())
}

fn check_value(i: usize, value: &Option<pb::reading::Value>, max: usize) -> Result<(), Status> {
    use pb::reading::Value as V;
    match value {
        None => Err(Status::invalid_argument(format!(
            "batch.readings[{i}].value: missing"
        ))),
        Some(V::Str(s)) if s.len() > max => Err(too_long(&format!("batch.readings[{i}].str"), max)),
        Some(V::Failure(f)) if f.message.len() > max => Err(too_long(
            &format!("batch.readings[{i}].failure.message"),
            max,
        )),
        Some(V::Failure(f))
            if pb::PollStatus::try_from(f.status).unwrap_or(pb::PollStatus::Unspecified)
                == pb::PollStatus::Unspecified =>
        {
            Err(Status::invalid_argument(format!(
                "batch.readings[{i}].failure.status: {} is not timeout or error",
                f.status
            )))
        }
        Some(_) => Ok(()),
    }
}
