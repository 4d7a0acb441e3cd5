//! Binary operators: arithmetic, comparison (filtering, or 0/1 with
//! `bool`) and set operators (`and or unless`), between scalars and
//! vectors, with `on`/`ignoring` and `group_left`/`group_right` matching,
//! the errors Prometheus gives for ambiguous matches, and its result
//! labels (arithmetic and `bool` drop `__name__`; one-to-one matching
//! `on` keeps only the listed labels).

use crate::promql::{FastMap, FastSet};
use std::sync::Arc;

use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::eval::Evaluator;
use super::types::{Labels, NAME, QueryError, Sample, Value, drop_name, get, set, without_name};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Arithmetic,
    Comparison,
    Set,
}

fn kind(op: &str) -> Kind {
    match op {
        "==" | "!=" | ">" | "<" | ">=" | "<=" => Kind::Comparison,
        "and" | "or" | "unless" => Kind::Set,
        _ => Kind::Arithmetic,
    }
}

/// `lhs op rhs` for two numbers: the value, and whether a comparison holds.
fn apply(op: &str, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return Err(QueryError::Unsupported(format!("operator {other}"))),
    })
}

/// Evaluates `b` at `ts`.
pub fn eval(ev: &Evaluator<'_>, b: &BinaryExpr, ts: i64) -> Result<Value, QueryError> {
    let op = b.op.to_string();
    let k = kind(&op);
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&b.lhs, ts)?;
    let rhs = ev.eval(&b.rhs, ts)?;
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => {
            let (v, keep) = apply(&op, l, r)?;
            Ok(Value::Scalar(if k == Kind::Comparison {
                if keep { 1.0 } else { 0.0 }
            } else {
                v
            }))
        }
        (Value::Vector(l), Value::Scalar(r)) => vector_scalar(&op, k, l, r, false, return_bool),
        (Value::Scalar(l), Value::Vector(r)) => vector_scalar(&op, k, r, l, true, return_bool),
        (Value::Vector(l), Value::Vector(r)) => {
            if k == Kind::Set {
                Ok(Value::Vector(set_op(&op, b, l, r)))
            } else {
                vector_vector(&op, k, b, l, r, return_bool).map(Value::Vector)
            }
        }
        (l, r) => Err(QueryError::BadData(format!(
            "binary operator {op} between {} and {}",
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn vector_scalar(
    op: &str,
    k: Kind,
    v: Vec<Sample>,
    scalar: f64,
    swap: bool,
    return_bool: bool,
) -> Result<Value, QueryError> {
    let mut out = Vec::with_capacity(v.len());
    for s in v {
        let (l, r) = if swap {
            (scalar, s.value)
        } else {
            (s.value, scalar)
        };
        let (mut value, mut keep) = apply(op, l, r)?;
        // The vector's value is the result of a comparison, whichever side.
        if k == Kind::Comparison && swap {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if !keep {
            continue;
        }
        let labels = if k == Kind::Arithmetic || return_bool {
            without_name(&s.labels)
        } else {
            s.labels
        };
        out.push(Sample { labels, value });
    }
    Ok(Value::Vector(out))
}

/// The labels two samples are matched on.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => labels
            .iter()
            .filter(|(n, _)| on.labels.iter().any(|o| o == n))
            .cloned()
            .collect(),
        Some(LabelModifier::Exclude(ignoring)) => labels
            .iter()
            .filter(|(n, _)| n != NAME && !ignoring.labels.iter().any(|i| i == n))
            .cloned()
            .collect(),
        None => drop_name(labels),
    }
}

fn set_op(op: &str, b: &BinaryExpr, l: Vec<Sample>, r: Vec<Sample>) -> Vec<Sample> {
    let matching = b.modifier.as_ref().and_then(|m| m.matching.as_ref());
    match op {
        "and" => {
            let right: FastSet<Labels> = r.iter().map(|s| signature(&s.labels, matching)).collect();
            l.into_iter()
                .filter(|s| right.contains(&signature(&s.labels, matching)))
                .collect()
        }
        "unless" => {
            let right: FastSet<Labels> = r.iter().map(|s| signature(&s.labels, matching)).collect();
            l.into_iter()
                .filter(|s| !right.contains(&signature(&s.labels, matching)))
                .collect()
        }
        _ => {
            let left: FastSet<Labels> = l.iter().map(|s| signature(&s.labels, matching)).collect();
            let mut out = l;
            out.extend(
                r.into_iter()
                    .filter(|s| !left.contains(&signature(&s.labels, matching))),
            );
            out
        }
    }
}

fn format_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn vector_vector(
    op: &str,
    k: Kind,
    b: &BinaryExpr,
    l: Vec<Sample>,
    r: Vec<Sample>,
    return_bool: bool,
) -> Result<Vec<Sample>, QueryError> {
    let modifier = b.modifier.as_ref();
    let matching = modifier.and_then(|m| m.matching.as_ref());
    let card = modifier.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
    // The "many" side is matched against the "one" side.
    let (many, one, swapped, include) = match card {
        VectorMatchCardinality::OneToMany(inc) => (r, l, true, inc.labels.clone()),
        VectorMatchCardinality::ManyToOne(inc) => (l, r, false, inc.labels.clone()),
        _ => (l, r, false, Vec::new()),
    };
    let one_to_one = include.is_empty()
        && !matches!(
            card,
            VectorMatchCardinality::OneToMany(_) | VectorMatchCardinality::ManyToOne(_)
        );
    let mut one_side: FastMap<Labels, &Sample> =
        FastMap::with_capacity_and_hasher(one.len(), Default::default());
    for s in &one {
        match one_side.entry(signature(&s.labels, matching)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(s);
            }
            std::collections::hash_map::Entry::Occupied(e) => {
                let side = if swapped { "left" } else { "right" };
                return Err(QueryError::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of \
                     the operation; many-to-many matching not allowed: matching labels must be \
                     unique on one side",
                    format_labels(e.key())
                )));
            }
        }
    }
    let mut matched_sigs: FastSet<Labels> = FastSet::default();
    let mut result_labels: FastSet<Arc<Labels>> = FastSet::default();
    let mut out = Vec::new();
    for s in &many {
        let sig = signature(&s.labels, matching);
        let Some(o) = one_side.get(&sig) else {
            continue;
        };
        let (lv, rv) = if swapped {
            (o.value, s.value)
        } else {
            (s.value, o.value)
        };
        let (mut value, mut keep) = apply(op, lv, rv)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if !keep {
            continue;
        }
        if one_to_one && !matched_sigs.insert(sig) {
            return Err(QueryError::Execution(
                "multiple matches for labels: many-to-one matching must be explicit \
                 (group_left/group_right)"
                    .into(),
            ));
        }
        let mut labels = if k == Kind::Arithmetic || return_bool {
            drop_name(&s.labels)
        } else {
            (*s.labels).clone()
        };
        if one_to_one {
            match matching {
                Some(LabelModifier::Include(on)) => {
                    labels.retain(|(n, _)| on.labels.iter().any(|o| o == n));
                }
                Some(LabelModifier::Exclude(ignoring)) => {
                    labels.retain(|(n, _)| !ignoring.labels.iter().any(|i| i == n));
                }
                None => {}
            }
        }
        for name in &include {
            let v = get(&o.labels, name).to_owned();
            set(&mut labels, name, &v);
        }
        let labels = Arc::new(labels);
        if !one_to_one && !result_labels.insert(labels.clone()) {
            return Err(QueryError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        out.push(Sample { labels, value });
    }
    Ok(out)
}
