//! Aggregation operators with `by`/`without`: `sum avg min max count
//! group stddev stdvar topk bottomk quantile count_values`, as Prometheus
//! computes them (incremental mean, Welford's variance, NaN handling of
//! `min`/`max`, `topk` keeping whole samples).

use std::hash::BuildHasher;

use crate::promql::FastMap;
use std::sync::Arc;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::eval::{Evaluator, unparen};
use super::functions::range::{PlainMean, PlainSum, Variance, quantile};
use super::numbers::{format_float, write_exponent, write_float};
use super::types::{Labels, NAME, QueryError, Sample, Value, set};

/// Whether label `name` is one a sample is grouped by.
fn grouped_by(name: &str, modifier: &Option<LabelModifier>) -> bool {
    match modifier {
        None => false,
        Some(LabelModifier::Include(by)) => by.labels.iter().any(|b| b == name),
        Some(LabelModifier::Exclude(without)) => {
            name != NAME && !without.labels.iter().any(|w| w == name)
        }
    }
}

/// The labels a sample is grouped by.
fn group_labels(labels: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    labels
        .iter()
        .filter(|(n, _)| grouped_by(n, modifier))
        .cloned()
        .collect()
}

/// A hash of the labels a sample is grouped by, made without copying them
/// (seeded by `state`, one per grouping).
fn group_hash(
    state: &foldhash::fast::RandomState,
    labels: &Labels,
    modifier: &Option<LabelModifier>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = state.build_hasher();
    for (n, v) in labels.iter().filter(|(n, _)| grouped_by(n, modifier)) {
        n.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

/// Whether `labels` belong to the group `key`.
fn in_group(labels: &Labels, modifier: &Option<LabelModifier>, key: &Labels) -> bool {
    labels
        .iter()
        .filter(|(n, _)| grouped_by(n, modifier))
        .eq(key.iter())
}

/// Evaluates the aggregation `a` at `ts`.
pub fn eval(ev: &Evaluator<'_>, a: &AggregateExpr, ts: i64) -> Result<Value, QueryError> {
    let op = a.op.to_string();
    let param = |what: &str| -> Result<&Expr, QueryError> {
        a.param
            .as_deref()
            .ok_or_else(|| QueryError::BadData(format!("{what}: missing parameter")))
    };
    let mut input = ev.vector(&a.expr, ts, &op)?;
    if op == "count_values" {
        let Expr::StringLiteral(label) = unparen(param("count_values")?) else {
            return Err(QueryError::BadData(
                "count_values: the parameter must be a string".into(),
            ));
        };
        let valid =
            !label.val.is_empty()
                && label.val.chars().enumerate().all(|(i, c)| {
                    c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                });
        if !valid {
            // An execution error, as in Prometheus, found when evaluated.
            return Err(QueryError::Execution(format!(
                "invalid label name {:?}",
                label.val
            )));
        }
        for s in &mut input {
            let mut labels = (*s.labels).clone();
            set(&mut labels, &label.val, &format_float(s.value));
            s.labels = Arc::new(labels);
        }
        // `by` groups by the value label too.
        let modifier = match &a.modifier {
            Some(LabelModifier::Include(by)) => {
                Some(LabelModifier::Include(by.clone().append(label.val.clone())))
            }
            None => Some(LabelModifier::Include(promql_parser::label::Labels::new(
                vec![label.val.as_str()],
            ))),
            other => other.clone(),
        };
        return Ok(Value::Vector(simple(&input, &modifier, Acc::Count(0.0))));
    }
    match op.as_str() {
        "topk" | "bottomk" => {
            let k = ev.scalar(param(&op)?, ts, &op)?;
            // Prometheus 2.42 refuses a k that is no int64 (NaN included);
            // its message writes k as Go's `%v`, which for NaN, infinities
            // and magnitudes beyond int64 is NaN, ±Inf or an exponent.
            // The bounds: the largest f64 below 2^63, and -2^63 (Go's
            // `math.MinInt64`, exact in an f64).
            const INT64: f64 = 9_223_372_036_854_774_784.0;
            const MIN_INT64: f64 = -9_223_372_036_854_775_808.0;
            if !(MIN_INT64..=INT64).contains(&k) {
                let mut shown = String::new();
                if k.is_finite() {
                    write_exponent(&mut shown, k);
                } else {
                    write_float(&mut shown, k);
                }
                return Err(QueryError::Execution(format!(
                    "Scalar value {shown} overflows int64"
                )));
            }
            Ok(Value::Vector(top(&input, &a.modifier, k, op == "topk")))
        }
        "quantile" => {
            let q = ev.scalar(param(&op)?, ts, &op)?;
            let groups = grouped(&input, &a.modifier);
            Ok(Value::Vector(
                groups
                    .into_iter()
                    .map(|(labels, members)| Sample {
                        labels: Arc::new(labels),
                        value: quantile(
                            q,
                            &mut members.iter().map(|s| s.value).collect::<Vec<_>>(),
                        ),
                    })
                    .collect(),
            ))
        }
        _ => match Acc::new(&op) {
            Some(empty) => Ok(Value::Vector(simple(&input, &a.modifier, empty))),
            None => Err(QueryError::Unsupported(format!("aggregation {op}"))),
        },
    }
}

/// The group of each label set in `inputs` (an index into the returned
/// groups' labels), groups in order of first appearance.
pub fn group_of<'a>(
    inputs: impl Iterator<Item = &'a Labels>,
    modifier: &Option<LabelModifier>,
) -> (Vec<Labels>, Vec<usize>) {
    // By hash of the group's labels, so an input's group is found without
    // copying its labels; only a new group's are copied.
    let mut index: FastMap<u64, Vec<usize>> = FastMap::default();
    let seed = foldhash::fast::RandomState::default();
    let mut groups: Vec<Labels> = Vec::new();
    let mut of = Vec::new();
    for labels in inputs {
        let slots = index
            .entry(group_hash(&seed, labels, modifier))
            .or_default();
        let g = match slots
            .iter()
            .copied()
            .find(|&i| groups.get(i).is_some_and(|g| in_group(labels, modifier, g)))
        {
            Some(i) => i,
            None => {
                slots.push(groups.len());
                groups.push(group_labels(labels, modifier));
                groups.len() - 1
            }
        };
        of.push(g);
    }
    (groups, of)
}

/// Samples by group, groups in order of first appearance.
fn grouped<'a>(
    input: &'a [Sample],
    modifier: &Option<LabelModifier>,
) -> Vec<(Labels, Vec<&'a Sample>)> {
    let (groups, of) = group_of(input.iter().map(|s| &*s.labels), modifier);
    let mut out: Vec<(Labels, Vec<&Sample>)> =
        groups.into_iter().map(|l| (l, Vec::new())).collect();
    for (s, g) in input.iter().zip(of) {
        if let Some((_, members)) = out.get_mut(g) {
            members.push(s);
        }
    }
    out
}

/// The running value of one group under an aggregation that reduces a
/// group to one value, members added in input order.
#[derive(Debug, Clone, Copy)]
pub enum Acc {
    Sum(PlainSum),
    Avg(PlainMean),
    Count(f64),
    Group,
    Min(f64),
    Max(f64),
    Stddev(Variance),
    Stdvar(Variance),
}

impl Acc {
    /// An empty group of `op`; `None` for an operator that does not reduce
    /// a group to one value (`topk`, `quantile`, ...).
    pub fn new(op: &str) -> Option<Acc> {
        Some(match op {
            "sum" => Acc::Sum(PlainSum::default()),
            "avg" => Acc::Avg(PlainMean::default()),
            "count" => Acc::Count(0.0),
            "group" => Acc::Group,
            "min" => Acc::Min(f64::NAN),
            "max" => Acc::Max(f64::NAN),
            "stddev" => Acc::Stddev(Variance::default()),
            "stdvar" => Acc::Stdvar(Variance::default()),
            _ => return None,
        })
    }

    pub fn add(&mut self, v: f64) {
        match self {
            Acc::Sum(s) => s.add(v),
            Acc::Avg(m) => m.add(v),
            Acc::Count(n) => *n += 1.0,
            Acc::Group => {}
            Acc::Min(m) => {
                if *m > v || m.is_nan() {
                    *m = v;
                }
            }
            Acc::Max(m) => {
                if *m < v || m.is_nan() {
                    *m = v;
                }
            }
            Acc::Stddev(var) | Acc::Stdvar(var) => var.add(v),
        }
    }

    pub fn value(&self) -> f64 {
        match self {
            Acc::Sum(s) => s.value(),
            Acc::Avg(m) => m.value(),
            Acc::Count(n) => *n,
            Acc::Group => 1.0,
            Acc::Min(m) | Acc::Max(m) => *m,
            Acc::Stddev(var) => var.value().sqrt(),
            Acc::Stdvar(var) => var.value(),
        }
    }
}

/// The aggregations that reduce a group to one value, from `empty`.
fn simple(input: &[Sample], modifier: &Option<LabelModifier>, empty: Acc) -> Vec<Sample> {
    grouped(input, modifier)
        .into_iter()
        .map(|(labels, members)| {
            let mut acc = empty;
            members.iter().for_each(|s| acc.add(s.value));
            Sample {
                labels: Arc::new(labels),
                value: acc.value(),
            }
        })
        .collect()
}

/// `topk`/`bottomk`: the k largest (smallest) samples of each group,
/// whole, NaN ranking last; largest first for topk, smallest first for
/// bottomk.
fn top(input: &[Sample], modifier: &Option<LabelModifier>, k: f64, largest: bool) -> Vec<Sample> {
    if k.is_nan() || k < 1.0 {
        return Vec::new();
    }
    let k = if k >= usize::MAX as f64 {
        usize::MAX
    } else {
        k as usize
    };
    let mut out = Vec::new();
    for (_, mut members) in grouped(input, modifier) {
        members.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ if largest => b.value.total_cmp(&a.value),
            _ => a.value.total_cmp(&b.value),
        });
        out.extend(members.into_iter().take(k).cloned());
    }
    out
}
