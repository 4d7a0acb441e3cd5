//! PromQL functions: [`SUPPORTED_FUNCTIONS`] (the plan refuses every
//! other one before reading) and [`call`], which evaluates one at one
//! time. Range-vector arithmetic is in `range.rs`, label functions and
//! `histogram_quantile` in `labels.rs`.
//!
//! Output labels as Prometheus: every function drops `__name__` except
//! `last_over_time`, `sort*`, `label_*` and `vector`'s empty set.

mod labels;
pub mod range;

use std::sync::Arc;

use promql_parser::parser::{Call, Expr, MatrixSelector};

use super::eval::{Evaluator, check_unique, unparen};
use super::types::{Labels, NAME, QueryError, Sample, Series, Value, set, without_name};

/// Every function [`call`] implements.
pub const SUPPORTED_FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
];

fn arg(c: &Call, i: usize) -> Result<&Expr, QueryError> {
    c.args.args.get(i).map(|b| &**b).ok_or_else(|| {
        QueryError::BadData(format!("{}(): missing argument {}", c.func.name, i + 1))
    })
}

/// Go's `math.Max`/`math.Min`: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Evaluates the call `c` at `ts`.
pub fn call(ev: &Evaluator<'_>, c: &Call, ts: i64) -> Result<Value, QueryError> {
    let name = c.func.name;
    match name {
        "time" => Ok(Value::Scalar(ts as f64 / 1000.0)),
        "vector" => Ok(Value::Vector(vec![Sample {
            labels: Arc::new(Labels::new()),
            value: ev.scalar(arg(c, 0)?, ts, "vector()")?,
        }])),
        "scalar" => {
            let v = ev.vector(arg(c, 0)?, ts, "scalar()")?;
            Ok(Value::Scalar(if v.len() == 1 {
                v[0].value
            } else {
                f64::NAN
            }))
        }
        "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" => {
            let f: fn(f64) -> f64 = match name {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "exp" => f64::exp,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                "sqrt" => f64::sqrt,
                _ => |v: f64| {
                    if v > 0.0 {
                        1.0
                    } else if v < 0.0 {
                        -1.0
                    } else {
                        v
                    }
                },
            };
            map_values(ev.vector(arg(c, 0)?, ts, name)?, f)
        }
        "round" => {
            let to = match c.args.args.get(1) {
                Some(e) => ev.scalar(e, ts, "round()")?,
                None => 1.0,
            };
            let inv = 1.0 / to;
            map_values(ev.vector(arg(c, 0)?, ts, name)?, |v| {
                (v * inv + 0.5).floor() / inv
            })
        }
        "clamp" => {
            let v = ev.vector(arg(c, 0)?, ts, name)?;
            let lo = ev.scalar(arg(c, 1)?, ts, "clamp()")?;
            let hi = ev.scalar(arg(c, 2)?, ts, "clamp()")?;
            if hi < lo {
                return Ok(Value::Vector(Vec::new()));
            }
            map_values(v, |x| go_max(lo, go_min(hi, x)))
        }
        "clamp_min" => {
            let v = ev.vector(arg(c, 0)?, ts, name)?;
            let lo = ev.scalar(arg(c, 1)?, ts, "clamp_min()")?;
            map_values(v, |x| go_max(x, lo))
        }
        "clamp_max" => {
            let v = ev.vector(arg(c, 0)?, ts, name)?;
            let hi = ev.scalar(arg(c, 1)?, ts, "clamp_max()")?;
            map_values(v, |x| go_min(x, hi))
        }
        "timestamp" => timestamp(ev, arg(c, 0)?, ts),
        "sort" | "sort_desc" => {
            let mut v = ev.vector(arg(c, 0)?, ts, name)?;
            // NaN first in both orders, as Prometheus's heaps compare.
            let desc = name == "sort_desc";
            v.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
                _ if desc => b.value.total_cmp(&a.value),
                _ => a.value.total_cmp(&b.value),
            });
            Ok(Value::Vector(v))
        }
        "absent" => {
            let v = ev.vector(arg(c, 0)?, ts, name)?;
            if !v.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(Value::Vector(vec![Sample {
                labels: Arc::new(absent_labels(arg(c, 0)?)),
                value: 1.0,
            }]))
        }
        "label_replace" => labels::label_replace(ev, c, ts),
        "label_join" => labels::label_join(ev, c, ts),
        "histogram_quantile" => labels::histogram_quantile(ev, c, ts),
        _ => range_function(ev, c, ts),
    }
}

/// Applies `f` to every value, dropping the metric name.
fn map_values(v: Vec<Sample>, f: impl Fn(f64) -> f64) -> Result<Value, QueryError> {
    let out: Vec<Sample> = v
        .into_iter()
        .map(|s| Sample {
            labels: without_name(&s.labels),
            value: f(s.value),
        })
        .collect();
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// `timestamp(v)`: a selector's samples give their own times, anything
/// else the evaluation time.
fn timestamp(ev: &Evaluator<'_>, e: &Expr, ts: i64) -> Result<Value, QueryError> {
    let inner = unparen(e);
    let samples: Vec<(Arc<Labels>, i64)> = match inner {
        Expr::VectorSelector(vs) => ev
            .instant_selector(vs, ts)?
            .into_iter()
            .map(|(l, t, _)| (l, t))
            .collect(),
        _ => ev
            .vector(inner, ts, "timestamp()")?
            .into_iter()
            .map(|s| (s.labels, ts))
            .collect(),
    };
    let out: Vec<Sample> = samples
        .into_iter()
        .map(|(l, t)| Sample {
            labels: without_name(&l),
            value: t as f64 / 1000.0,
        })
        .collect();
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// The labels `absent()` answers with: those a selector pins with `=`
/// (once; a label pinned twice is left out), nothing for other expressions.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    let mut out = Labels::new();
    let mut repeated = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == NAME || !matches!(m.op, promql_parser::label::MatchOp::Equal) {
            continue;
        }
        if out.iter().any(|(n, _)| *n == m.name) {
            repeated.push(m.name.clone());
        }
        set(&mut out, &m.name, &m.value);
    }
    out.retain(|(n, _)| !repeated.contains(n));
    out
}

/// The range vector argument of a function: its series, and the window's
/// end and length (ms), which extrapolation needs.
fn matrix_arg(
    ev: &Evaluator<'_>,
    e: &Expr,
    ts: i64,
) -> Result<(Vec<Series>, i64, i64), QueryError> {
    let inner = unparen(e);
    let (end, range) = match inner {
        Expr::MatrixSelector(ms) => ev.range_window(&ms.vs.at, &ms.vs.offset, ms.range, ts),
        Expr::Subquery(sq) => ev.range_window(&sq.at, &sq.offset, sq.range, ts),
        other => {
            return Err(QueryError::BadData(format!(
                "expected a range vector, got {other}"
            )));
        }
    };
    match ev.eval(inner, ts)? {
        Value::Matrix(m) => Ok((m, end, range)),
        other => Err(QueryError::BadData(format!(
            "expected a range vector, got {}",
            other.type_name()
        ))),
    }
}

fn range_function(ev: &Evaluator<'_>, c: &Call, ts: i64) -> Result<Value, QueryError> {
    let name = c.func.name;
    let (matrix_index, q) = match name {
        "quantile_over_time" => (1, ev.scalar(arg(c, 0)?, ts, "quantile_over_time()")?),
        "predict_linear" => (0, ev.scalar(arg(c, 1)?, ts, "predict_linear()")?),
        _ => (0, f64::NAN),
    };
    if let Some(answer) = range_function_in_place(ev, name, arg(c, matrix_index)?, ts, q) {
        return answer;
    }
    let (matrix, end, range) = matrix_arg(ev, arg(c, matrix_index)?, ts)?;
    if name == "absent_over_time" {
        if matrix.iter().any(|s| !s.points.is_empty()) {
            return Ok(Value::Vector(Vec::new()));
        }
        return Ok(Value::Vector(vec![Sample {
            labels: Arc::new(absent_labels(arg(c, 0)?)),
            value: 1.0,
        }]));
    }
    let start = end - range;
    let mut out = Vec::with_capacity(matrix.len());
    for s in &matrix {
        let Some(value) = range_value(name, &s.points, start, end, ts, q) else {
            continue;
        };
        let labels = if name == "last_over_time" {
            s.labels.clone()
        } else {
            without_name(&s.labels)
        };
        out.push(Sample { labels, value });
    }
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// A range function over a matrix selector's samples where they are,
/// without copying them or making each series' labels again at every
/// step; `None` when the argument is not a plain matrix selector.
fn range_function_in_place(
    ev: &Evaluator<'_>,
    name: &str,
    e: &Expr,
    ts: i64,
    q: f64,
) -> Option<Result<Value, QueryError>> {
    let inner = unparen(e);
    let Expr::MatrixSelector(ms) = inner else {
        return None;
    };
    if name == "absent_over_time" {
        return None;
    }
    let (end, range) = ev.range_window(&ms.vs.at, &ms.vs.offset, ms.range, ts);
    let start = end - range;
    let (selection, windows) = match ev.range_windows(ms, ts) {
        Ok(w) => w,
        Err(e) => return Some(Err(e)),
    };
    let keep_name = name == "last_over_time";
    let (unnamed, unique) = if keep_name {
        (&[][..], false)
    } else {
        selection.unnamed()
    };
    let mut out = Vec::with_capacity(windows.len());
    for (i, points) in windows {
        let Some(value) = range_value(name, points, start, end, ts, q) else {
            continue;
        };
        let labels = match unnamed.get(i) {
            Some(l) => l.clone(),
            None => selection.series[i].labels.clone(),
        };
        out.push(Sample { labels, value });
    }
    // Labels that differ over the whole selection differ in any part of it.
    if !unique && let Err(e) = check_unique(&out) {
        return Some(Err(e));
    }
    Some(Ok(Value::Vector(out)))
}

/// The range functions whose value at a step depends on one series'
/// samples in its window only (`range_value`).
const PER_SERIES_RANGE_FUNCTIONS: &[&str] = &[
    "avg_over_time",
    "changes",
    "count_over_time",
    "delta",
    "deriv",
    "idelta",
    "increase",
    "irate",
    "last_over_time",
    "max_over_time",
    "min_over_time",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
];

/// A range function whose range argument is a plain matrix selector and
/// whose other argument, if any, a number literal: what `columns.rs`
/// evaluates a series at a time across every step of a range query
/// ([`RangeCall::steps`]) instead of every series at every step.
pub struct RangeCall<'a> {
    pub name: &'static str,
    pub matrix: &'a MatrixSelector,
    /// `quantile_over_time`'s φ, `predict_linear`'s seconds.
    q: f64,
}

impl<'a> RangeCall<'a> {
    /// `c` as a [`RangeCall`], or `None` when it is not one.
    pub fn of(c: &'a Call) -> Option<RangeCall<'a>> {
        let name = c.func.name;
        let (matrix_index, q_index) = match name {
            "quantile_over_time" => (1, Some(0)),
            "predict_linear" => (0, Some(1)),
            _ => (0, None),
        };
        if !PER_SERIES_RANGE_FUNCTIONS.contains(&name) {
            return None;
        }
        let Expr::MatrixSelector(matrix) = unparen(c.args.args.get(matrix_index)?) else {
            return None;
        };
        let q = match q_index {
            Some(i) => match unparen(c.args.args.get(i)?) {
                Expr::NumberLiteral(n) => n.val,
                _ => return None,
            },
            None => f64::NAN,
        };
        Some(RangeCall { name, matrix, q })
    }

    /// Whether the result keeps the metric name.
    pub fn keeps_name(&self) -> bool {
        self.name == "last_over_time"
    }

    /// The function over one series' samples (`points`, ascending) at
    /// every step `ts` of `steps` (with its window's `[start, end]`, ms,
    /// non-decreasing from step to step): `emit(step index, value)` where
    /// the window holds samples and the function a value. Each sample
    /// enters and leaves the window once; the values are those
    /// [`call`] gives at each step.
    ///
    /// `check` is called every [`CHECK_EVERY`] units of work (a step, or a
    /// sample a window's function looks at), so that one long series
    /// stops at the deadline too; its error ends the walk.
    pub fn steps<E>(
        &self,
        points: &[(i64, f64)],
        steps: &[WindowAt],
        mut check: impl FnMut() -> Result<(), E>,
        mut emit: impl FnMut(usize, f64),
    ) -> Result<(), E> {
        let extrapolated = matches!(self.name, "rate" | "increase" | "delta");
        let is_counter = matches!(self.name, "rate" | "increase");
        // Where a counter resets (a sample below the one before), so that
        // `rate` and `increase` need not look at every sample of every
        // window: the value before each reset is what the window adds.
        let resets: Vec<usize> = if is_counter {
            (1..points.len())
                .filter(|&i| points[i].1 < points[i - 1].1)
                .collect()
        } else {
            Vec::new()
        };
        let (mut lo, mut hi, mut r) = (0usize, 0usize, 0usize);
        let mut last_start = i64::MIN;
        let mut work = 0usize;
        for (k, w) in steps.iter().enumerate() {
            work += 1;
            if work >= CHECK_EVERY {
                work = 0;
                check()?;
            }
            if w.start < last_start {
                // Never with the windows a range query makes; stay right.
                (lo, hi, r) = (0, 0, 0);
            }
            last_start = w.start;
            while lo < points.len() && points[lo].0 < w.start {
                lo += 1;
            }
            hi = hi.max(lo);
            while hi < points.len() && points[hi].0 <= w.end {
                hi += 1;
            }
            if !extrapolated {
                // The function looks at every sample of the window.
                work += hi - lo;
                if let Some(window) = points.get(lo..hi)
                    && let Some(v) = range_value(self.name, window, w.start, w.end, w.ts, self.q)
                {
                    emit(k, v);
                }
                continue;
            }
            if hi < lo + 2 {
                continue;
            }
            // `range::extrapolated_rate` over `points[lo..hi]`, its float
            // operations in the same order.
            let (first, last) = (points[lo], points[hi - 1]);
            let mut result = last.1 - first.1;
            if is_counter {
                if first.1 < 0.0 {
                    // The first sample compared with 0, as there.
                    result += 0.0;
                }
                while resets.get(r).is_some_and(|&i| i <= lo) {
                    r += 1;
                }
                for &i in resets[r..].iter().take_while(|&&i| i < hi) {
                    result += points[i - 1].1;
                }
            }
            emit(
                k,
                range::extrapolate(
                    first,
                    last,
                    hi - lo,
                    result,
                    (w.start, w.end),
                    is_counter,
                    self.name == "rate",
                ),
            );
        }
        Ok(())
    }
}

/// Units of work (steps and samples looked at) between two calls of
/// [`RangeCall::steps`]'s `check`: a few hundred microseconds at most.
pub const CHECK_EVERY: usize = 1 << 16;

/// One evaluation time of a range query and its range selector's window
/// there (after `@` and `offset`), ms.
#[derive(Debug, Clone, Copy)]
pub struct WindowAt {
    pub ts: i64,
    pub start: i64,
    pub end: i64,
}

/// One range function over one series' samples in `[start, end]`.
fn range_value(name: &str, p: &[(i64, f64)], start: i64, end: i64, ts: i64, q: f64) -> Option<f64> {
    if p.is_empty() {
        return None;
    }
    match name {
        "rate" => range::extrapolated_rate(p, start, end, true, true),
        "increase" => range::extrapolated_rate(p, start, end, true, false),
        "delta" => range::extrapolated_rate(p, start, end, false, false),
        "irate" => range::instant_value(p, true),
        "idelta" => range::instant_value(p, false),
        "deriv" if p.len() >= 2 => Some(range::linear_regression(p, p[0].0).0),
        "predict_linear" if p.len() >= 2 => {
            let (slope, intercept) = range::linear_regression(p, ts);
            Some(slope * q + intercept)
        }
        "deriv" | "predict_linear" => None,
        _ => range::over_time(name, p, q),
    }
}
