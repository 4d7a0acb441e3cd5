//! The evaluator: an expression at one evaluation time, over samples
//! already in memory ([`Data`]), as Prometheus 2.x evaluates it. Range
//! queries evaluate at every step. Selectors, subqueries and the
//! dispatch live here; functions, aggregations and binary operators in
//! their own files.
//!
//! Staleness as Prometheus without stale markers (none are stored): an
//! instant selector sees the newest sample at most the lookback delta old
//! (`[t - lookback, t]`, both ends included, as in 2.x); a range selector
//! sees `[t - range, t]`.
//!
//! Pure: imports the parser's AST and the promql module's own files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use promql_parser::parser::{Expr, MatrixSelector, SubqueryExpr, VectorSelector};

use super::load::{Data, Selection, too_many_samples};
use super::memo::Memo;
use super::plan::{Bounds, at_ms, duration_ms, offset_ms, selector_key};
use super::steps::Steps;
use super::types::{Labels, QueryError, Sample, Series, Value, without_name};

/// A selected series' samples within a range window: its index in the
/// selection and the samples.
pub type Window<'a> = (usize, &'a [(i64, f64)]);

/// Evaluates expressions of one query.
pub struct Evaluator<'a> {
    pub data: &'a Data,
    pub bounds: Bounds,
    /// When the query must have finished.
    pub deadline: Option<Instant>,
    /// Most samples a result may hold.
    pub max_samples: usize,
    /// What the query's steps share (`memo.rs`).
    pub memo: Memo,
    /// Set when whoever waits for the query is gone ([`Reads::abandoned`](super::load::Reads::abandoned)):
    /// the evaluation stops at its next check as at the deadline.
    pub abandoned: Option<&'a AtomicBool>,
}

impl Evaluator<'_> {
    /// `expr` at `ts` (ms).
    pub fn eval(&self, expr: &Expr, ts: i64) -> Result<Value, QueryError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ts),
            Expr::Unary(u) => match self.eval(&u.expr, ts)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(samples) => {
                    let out: Vec<Sample> = samples
                        .into_iter()
                        .map(|s| Sample {
                            labels: without_name(&s.labels),
                            value: -s.value,
                        })
                        .collect();
                    check_unique(&out)?;
                    Ok(Value::Vector(out))
                }
                other => Err(QueryError::BadData(format!(
                    "unary minus on {}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(
                self.instant_selector(vs, ts)?
                    .into_iter()
                    .map(|(labels, _, value)| Sample { labels, value })
                    .collect(),
            )),
            Expr::MatrixSelector(ms) => Ok(Value::Matrix(self.range_selector(ms, ts)?)),
            Expr::Subquery(sq) => Ok(Value::Matrix(self.subquery(sq, ts)?)),
            Expr::Call(c) => super::functions::call(self, c, ts),
            Expr::Aggregate(a) => super::aggregate::eval(self, a, ts),
            Expr::Binary(b) => super::binary::eval(self, b, ts),
            Expr::Extension(_) => Err(QueryError::Unsupported("extension expressions".into())),
        }
    }

    /// Evaluates an argument that must be a scalar.
    pub fn scalar(&self, expr: &Expr, ts: i64, what: &str) -> Result<f64, QueryError> {
        match self.eval(expr, ts)? {
            Value::Scalar(v) => Ok(v),
            other => Err(QueryError::BadData(format!(
                "{what}: expected scalar, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates an argument that must be an instant vector.
    pub fn vector(&self, expr: &Expr, ts: i64, what: &str) -> Result<Vec<Sample>, QueryError> {
        match self.eval(expr, ts)? {
            Value::Vector(v) => Ok(v),
            other => Err(QueryError::BadData(format!(
                "{what}: expected instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    /// Fails once the deadline has passed or the query was abandoned.
    pub fn check_deadline(&self) -> Result<(), QueryError> {
        if self.abandoned.is_some_and(|a| a.load(Ordering::Relaxed)) {
            return Err(QueryError::Timeout(
                "query evaluation (the query was abandoned)",
            ));
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(QueryError::Timeout("query evaluation")),
            _ => Ok(()),
        }
    }

    /// What a selector of the query chose, with its samples.
    pub fn selection(&self, vs: &VectorSelector) -> Result<&Selection, QueryError> {
        self.data
            .selections
            .get(&selector_key(vs))
            .ok_or_else(|| QueryError::Execution(format!("selector {vs} was not loaded")))
    }

    /// The newest sample of every selected series within the lookback
    /// delta of `ts` (after `@` and `offset`): `(labels, its time, value)`.
    pub fn instant_selector(
        &self,
        vs: &VectorSelector,
        ts: i64,
    ) -> Result<Vec<(Arc<Labels>, i64, f64)>, QueryError> {
        let t = at_ms(&vs.at, &self.bounds).unwrap_or(ts) - offset_ms(&vs.offset);
        let mut out = Vec::new();
        for s in &self.selection(vs)?.series {
            let i = s.points.partition_point(|(pt, _)| *pt <= t);
            if i == 0 {
                continue;
            }
            let (pt, v) = s.points[i - 1];
            if pt >= t - self.bounds.lookback {
                out.push((s.labels.clone(), pt, v));
            }
        }
        Ok(out)
    }

    /// The samples of every selected series in `[t - range, t]`; series
    /// without any are left out.
    fn range_selector(&self, ms: &MatrixSelector, ts: i64) -> Result<Vec<Series>, QueryError> {
        let (selection, windows) = self.range_windows(ms, ts)?;
        Ok(windows
            .into_iter()
            .map(|(i, points)| Series {
                labels: selection.series[i].labels.clone(),
                points: points.to_vec(),
            })
            .collect())
    }

    /// The samples of a matrix selector at `ts` without copying them: its
    /// selection, and the index and samples in `[t - range, t]` of every
    /// selected series with any (what a range function reads).
    pub fn range_windows(
        &self,
        ms: &MatrixSelector,
        ts: i64,
    ) -> Result<(&Selection, Vec<Window<'_>>), QueryError> {
        let (end, range) = self.range_window(&ms.vs.at, &ms.vs.offset, ms.range, ts);
        let start = end - range;
        let selection = self.selection(&ms.vs)?;
        let mut out = Vec::new();
        for (i, s) in selection.series.iter().enumerate() {
            let lo = s.points.partition_point(|(pt, _)| *pt < start);
            let hi = lo + s.points[lo..].partition_point(|(pt, _)| *pt <= end);
            if lo < hi {
                out.push((i, &s.points[lo..hi]));
            }
        }
        Ok((selection, out))
    }

    /// The end of a range's window at `ts` (after `@` and `offset`) and its
    /// length, in ms.
    pub fn range_window(
        &self,
        at: &Option<promql_parser::parser::AtModifier>,
        offset: &Option<promql_parser::parser::Offset>,
        range: std::time::Duration,
        ts: i64,
    ) -> (i64, i64) {
        let end = at_ms(at, &self.bounds).unwrap_or(ts) - offset_ms(offset);
        (end, duration_ms(range))
    }

    /// A subquery at `ts`: its expression evaluated at every multiple of
    /// its step within `[t - range, t]`.
    fn subquery(&self, sq: &SubqueryExpr, ts: i64) -> Result<Vec<Series>, QueryError> {
        let (end, range) = self.range_window(&sq.at, &sq.offset, sq.range, ts);
        let step = match sq.step {
            Some(d) => duration_ms(d),
            None => self.bounds.default_step,
        };
        if step <= 0 {
            return Err(QueryError::BadData("zero or negative subquery step".into()));
        }
        let start = end - range;
        // The first multiple of the step at or after the window's start
        // (Prometheus aligns subquery steps to absolute time).
        let mut t = start.div_euclid(step) * step;
        if t < start {
            t += step;
        }
        let mut series = Steps::default();
        let mut total = 0usize;
        // The inner evaluations of this node's previous window, at the
        // times this one shares with it, are reused (an evaluation
        // depends only on its time).
        let node = std::ptr::from_ref(sq) as usize;
        let mut previous = self.memo.take_window(node);
        let mut window = BTreeMap::new();
        while t <= end {
            self.check_deadline()?;
            let value = match previous.remove(&t) {
                Some(v) => v,
                None => self.eval(&sq.expr, t)?,
            };
            match &value {
                Value::Vector(samples) => {
                    total += samples.len();
                    series.push_vector(t, samples);
                }
                Value::Scalar(v) => {
                    total += 1;
                    series.push_scalar(t, *v);
                }
                other => {
                    return Err(QueryError::BadData(format!(
                        "subquery of a {}; expected instant vector or scalar",
                        other.type_name()
                    )));
                }
            }
            if total > self.max_samples {
                return Err(too_many_samples(self.max_samples));
            }
            if window.len() < super::memo::MAX_WINDOW_STEPS {
                window.insert(t, value);
            }
            t += step;
        }
        self.memo.keep_window(node, window);
        Ok(series.finish())
    }
}

/// `e` without the parentheses around it.
pub fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// Refuses a vector holding one label set twice, as Prometheus does after
/// a function dropped the metric name.
pub fn check_unique(samples: &[Sample]) -> Result<(), QueryError> {
    if samples.len() < 2 {
        return Ok(());
    }
    let mut seen =
        crate::promql::FastSet::with_capacity_and_hasher(samples.len(), Default::default());
    for s in samples {
        if !seen.insert(&*s.labels) {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}
