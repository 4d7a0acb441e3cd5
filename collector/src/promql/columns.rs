//! Range queries of two common shapes evaluated a series at a time
//! across every step, instead of every series at every step: a range
//! function over a matrix selector (`rate(m[5m])`), and a reducing
//! aggregation of one (`sum by (device) (rate(m[5m]))`).
//!
//! Each series' samples are walked once with a window sliding over them
//! (`functions::RangeCall::steps`); an aggregation finds each series'
//! group once per query (`aggregate::group_of`) and keeps one running
//! value ([`Acc`]) per group and step, so a value reaches its group with
//! an index instead of a label hash. The answers are those of the
//! per-step evaluation (`eval.rs`) bit for bit: the same functions over
//! the same windows, each group's members added in the same (selection)
//! order. Any other shape, and these when their labels could collide (two
//! series equal but for `__name__`, or for `last_over_time`, which keeps
//! the name, two fully equal), go the per-step way. The deadline and
//! the abandon flag are checked within a series' walk too, every
//! `functions::CHECK_EVERY` steps or samples looked at.

use std::sync::Arc;

use promql_parser::parser::Expr;

use super::aggregate::{Acc, group_of};
use super::eval::{Evaluator, unparen};
use super::functions::{RangeCall, WindowAt};
use super::load::{Selection, too_many_samples};
use super::types::{Labels, QueryError, Series};

/// `expr` at every `step` from `start` to `end` (ms) when it has one of
/// the shapes above; `None` when it does not (or its running values would
/// take more memory than `max_samples` samples: [`dense_too_large`]), to
/// be evaluated step by step.
pub fn range(
    ev: &Evaluator<'_>,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
) -> Option<Result<Vec<Series>, QueryError>> {
    match unparen(expr) {
        Expr::Call(c) => {
            let f = RangeCall::of(c)?;
            let (selection, labels) = inputs(ev, &f)?;
            let windows = windows(ev, &f, start, end, step);
            Some(per_series(ev, &f, selection, labels, &windows))
        }
        Expr::Aggregate(a) if a.param.is_none() => {
            let empty = Acc::new(&a.op.to_string())?;
            let Expr::Call(c) = unparen(&a.expr) else {
                return None;
            };
            let f = RangeCall::of(c)?;
            let (selection, labels) = inputs(ev, &f)?;
            let windows = windows(ev, &f, start, end, step);
            let (groups, of) = group_of(labels.iter().map(|l| &**l), &a.modifier);
            if dense_too_large(groups.len(), windows.len(), ev.max_samples) {
                return None;
            }
            Some(aggregated(ev, &f, selection, groups, &of, empty, &windows))
        }
        _ => None,
    }
}

/// Whether `groups` × `steps` running values would take more memory than
/// `max_samples` result samples do (16 bytes each: a time and a value).
/// `max_samples` counts samples, not bytes, and a slot is twice a
/// sample's size, so counting slots would let a query hold twice the
/// memory the limit means; the per-step evaluation holds one step's
/// groups at a time instead.
pub fn dense_too_large(groups: usize, steps: usize, max_samples: usize) -> bool {
    let bytes = groups
        .saturating_mul(steps)
        .saturating_mul(std::mem::size_of::<Option<Acc>>());
    bytes / 16 > max_samples
}

/// The function's selection and the labels each series' values carry;
/// `None` when two of those could be equal (the per-step evaluation then
/// refuses the steps where both have a value, as Prometheus does).
fn inputs<'a>(
    ev: &'a Evaluator<'_>,
    f: &RangeCall<'_>,
) -> Option<(&'a Selection, Vec<Arc<Labels>>)> {
    let selection = ev.selection(&f.matrix.vs).ok()?;
    if f.keeps_name() {
        if !selection.named_unique() {
            return None;
        }
        let labels = selection.series.iter().map(|s| s.labels.clone()).collect();
        return Some((selection, labels));
    }
    let (unnamed, unique) = selection.unnamed();
    unique.then(|| (selection, unnamed.to_vec()))
}

/// Every evaluation time with the function's window there.
fn windows(
    ev: &Evaluator<'_>,
    f: &RangeCall<'_>,
    start: i64,
    end: i64,
    step: i64,
) -> Vec<WindowAt> {
    let ms = f.matrix;
    let mut out = Vec::new();
    let mut ts = start;
    while ts <= end {
        let (w_end, range) = ev.range_window(&ms.vs.at, &ms.vs.offset, ms.range, ts);
        out.push(WindowAt {
            ts,
            start: w_end - range,
            end: w_end,
        });
        ts += step;
    }
    out
}

/// A range function alone: one result series per selected series with a
/// value at any step.
fn per_series(
    ev: &Evaluator<'_>,
    f: &RangeCall<'_>,
    selection: &Selection,
    labels: Vec<Arc<Labels>>,
    windows: &[WindowAt],
) -> Result<Vec<Series>, QueryError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for (s, labels) in selection.series.iter().zip(labels) {
        ev.check_deadline()?;
        let mut points = Vec::new();
        f.steps(
            &s.points,
            windows,
            || ev.check_deadline(),
            |k, v| {
                if let Some(w) = windows.get(k) {
                    points.push((w.ts, v));
                }
            },
        )?;
        total += points.len();
        if total > ev.max_samples {
            return Err(too_many_samples(ev.max_samples));
        }
        if !points.is_empty() {
            out.push(Series { labels, points });
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// A reducing aggregation of a range function: a running value per group
/// and step, each series' values added to its group's in selection order.
fn aggregated(
    ev: &Evaluator<'_>,
    f: &RangeCall<'_>,
    selection: &Selection,
    groups: Vec<Labels>,
    of: &[usize],
    empty: Acc,
    windows: &[WindowAt],
) -> Result<Vec<Series>, QueryError> {
    let n = windows.len();
    // Group-major: `g * n + k` is group g at step k.
    let mut acc: Vec<Option<Acc>> = vec![None; groups.len() * n];
    for (s, &g) in selection.series.iter().zip(of) {
        ev.check_deadline()?;
        let Some(row) = acc.get_mut(g * n..(g + 1) * n) else {
            continue;
        };
        f.steps(
            &s.points,
            windows,
            || ev.check_deadline(),
            |k, v| {
                if let Some(slot) = row.get_mut(k) {
                    slot.get_or_insert(empty).add(v);
                }
            },
        )?;
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut total = 0usize;
    for (labels, row) in groups.into_iter().zip(acc.chunks(n.max(1))) {
        let points: Vec<(i64, f64)> = windows
            .iter()
            .zip(row)
            .filter_map(|(w, a)| a.as_ref().map(|a| (w.ts, a.value())))
            .collect();
        total += points.len();
        if total > ev.max_samples {
            return Err(too_many_samples(ev.max_samples));
        }
        if !points.is_empty() {
            out.push(Series {
                labels: Arc::new(labels),
                points,
            });
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

#[cfg(test)]
mod tests;
