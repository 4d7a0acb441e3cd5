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

/// The labels a sample is grouped by.
fn group_labels(labels: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    match modifier {
        None => Labels::new(),
        Some(LabelModifier::Include(by)) => labels
            .iter()
            .filter(|(n, _)| by.labels.iter().any(|b| b == n))
            .cloned()
            .collect(),
        Some(LabelModifier::Exclude(without)) => labels
            .iter()
            .filter(|(n, _)| n != NAME && !without.labels.iter().any(|w| w == n))
            .cloned()
            .collect(),
    }
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
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<(Labels, Vec<&Sample>)> = Vec::new();
    for s in input {
        let key = group_labels(&s.labels, modifier);
        match index.get(&key) {
            Some(&i) => out[i].1.push(s),
            None => {
                index.insert(key.clone(), out.len());
                out.push((key, vec![s]));
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
