//! Aggregation operators with `by`/`without`: `sum avg min max count
//! group stddev stdvar topk bottomk quantile count_values`, as Prometheus
//! computes them (incremental mean, Welford's variance, NaN handling of
//! `min`/`max`, `topk` keeping whole samples).

use std::collections::HashMap;
use std::sync::Arc;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::eval::Evaluator;
use super::functions::range::{kahan_inc, mean, quantile, variance};
use super::types::{Labels, NAME, QueryError, Sample, Value, format_float, set};

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

/// A hash of the labels a sample is grouped by, made without copying them.
fn group_hash(labels: &Labels, modifier: &Option<LabelModifier>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
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
        let mut e = param("count_values")?;
        while let Expr::Paren(p) = e {
            e = &p.expr;
        }
        let Expr::StringLiteral(label) = e else {
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
            return Err(QueryError::BadData(format!(
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
        return Ok(Value::Vector(simple(&input, &modifier, "count")));
    }
    match op.as_str() {
        "topk" | "bottomk" => {
            let k = ev.scalar(param(&op)?, ts, &op)?;
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
        _ => Ok(Value::Vector(simple(&input, &a.modifier, &op))),
    }
}

/// Samples by group, groups in order of first appearance.
fn grouped<'a>(
    input: &'a [Sample],
    modifier: &Option<LabelModifier>,
) -> Vec<(Labels, Vec<&'a Sample>)> {
    // By hash of the group's labels, so a sample's group is found without
    // copying its labels; only a new group's are copied.
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut out: Vec<(Labels, Vec<&Sample>)> = Vec::new();
    for s in input {
        let slots = index.entry(group_hash(&s.labels, modifier)).or_default();
        match slots
            .iter()
            .copied()
            .find(|&i| in_group(&s.labels, modifier, &out[i].0))
        {
            Some(i) => out[i].1.push(s),
            None => {
                slots.push(out.len());
                out.push((group_labels(&s.labels, modifier), vec![s]));
            }
        }
    }
    out
}

/// The aggregations that reduce a group to one value.
fn simple(input: &[Sample], modifier: &Option<LabelModifier>, op: &str) -> Vec<Sample> {
    grouped(input, modifier)
        .into_iter()
        .map(|(labels, members)| {
            let values = members.iter().map(|s| s.value);
            let value = match op {
                "sum" => {
                    let (s, c) = values.fold((0.0, 0.0), |(s, c), v| kahan_inc(v, s, c));
                    s + c
                }
                "avg" => mean(values),
                "count" => members.len() as f64,
                "group" => 1.0,
                "min" => values.fold(f64::NAN, |m, v| if m > v || m.is_nan() { v } else { m }),
                "max" => values.fold(f64::NAN, |m, v| if m < v || m.is_nan() { v } else { m }),
                "stddev" => variance(values).sqrt(),
                // "stdvar": the plan admits no other operator.
                _ => variance(values),
            };
            Sample {
                labels: Arc::new(labels),
                value,
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
