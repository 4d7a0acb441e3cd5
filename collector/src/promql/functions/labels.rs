//! `label_replace`, `label_join` and `histogram_quantile` (classic
//! histograms: `_bucket` series with an `le` label).

use crate::promql::FastMap;
use std::sync::Arc;

use promql_parser::parser::{Call, Expr};

use super::super::eval::{Evaluator, check_unique, unparen};
use super::super::types::{Labels, QueryError, Sample, Value, drop_name, get, set};
use super::arg;

fn string_arg(c: &Call, i: usize) -> Result<&str, QueryError> {
    match unparen(arg(c, i)?) {
        Expr::StringLiteral(s) => Ok(&s.val),
        other => Err(QueryError::BadData(format!(
            "{}(): argument {} must be a string, got {other}",
            c.func.name,
            i + 1
        ))),
    }
}

/// Refuses a label name Prometheus would not accept there (`what`:
/// "destination" or "source"), with Prometheus's message and, as there,
/// as an execution error.
fn check_label_name(c: &Call, what: &str, name: &str) -> Result<(), QueryError> {
    let ok = name
        .chars()
        .enumerate()
        .all(|(i, ch)| ch == '_' || ch.is_ascii_alphabetic() || (i > 0 && ch.is_ascii_digit()));
    if ok && !name.is_empty() {
        Ok(())
    } else {
        Err(QueryError::Execution(format!(
            "invalid {what} label name in {}(): {name}",
            c.func.name
        )))
    }
}

/// `label_replace(v, dst, replacement, src, regex)`: where the (anchored)
/// regex matches `src`'s value, `dst` becomes the expanded replacement
/// (removed when that is empty).
pub fn label_replace(ev: &Evaluator<'_>, c: &Call, ts: i64) -> Result<Value, QueryError> {
    let dst = string_arg(c, 1)?;
    let replacement = string_arg(c, 2)?;
    let src = string_arg(c, 3)?;
    let pattern = string_arg(c, 4)?;
    // Prometheus's message, which names the expression only.
    let re = ev.memo.anchored_regex(pattern).map_err(|_| {
        QueryError::Execution(format!(
            "invalid regular expression in label_replace(): {pattern}"
        ))
    })?;
    check_label_name(c, "destination", dst)?;
    let v = ev.vector(arg(c, 0)?, ts, "label_replace()")?;
    let mut out = Vec::with_capacity(v.len());
    for s in v {
        let value = get(&s.labels, src);
        let Some(caps) = re.captures(value) else {
            out.push(s);
            continue;
        };
        let mut expanded = String::new();
        caps.expand(replacement, &mut expanded);
        let mut labels = (*s.labels).clone();
        set(&mut labels, dst, &expanded);
        out.push(Sample {
            labels: Arc::new(labels),
            value: s.value,
        });
    }
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// `label_join(v, dst, separator, src...)`.
pub fn label_join(ev: &Evaluator<'_>, c: &Call, ts: i64) -> Result<Value, QueryError> {
    let dst = string_arg(c, 1)?;
    let sep = string_arg(c, 2)?;
    let srcs: Vec<&str> = (3..c.args.args.len())
        .map(|i| string_arg(c, i))
        .collect::<Result<_, _>>()?;
    for src in &srcs {
        check_label_name(c, "source", src)?;
    }
    check_label_name(c, "destination", dst)?;
    let v = ev.vector(arg(c, 0)?, ts, "label_join()")?;
    let mut out = Vec::with_capacity(v.len());
    for s in v {
        let joined = srcs
            .iter()
            .map(|n| get(&s.labels, n))
            .collect::<Vec<_>>()
            .join(sep);
        let mut labels = (*s.labels).clone();
        set(&mut labels, dst, &joined);
        out.push(Sample {
            labels: Arc::new(labels),
            value: s.value,
        });
    }
    check_unique(&out)?;
    Ok(Value::Vector(out))
}

/// `histogram_quantile(φ, buckets)`: buckets grouped by their labels
/// without `le` and `__name__`; a sample without a parseable `le` is
/// skipped.
pub fn histogram_quantile(ev: &Evaluator<'_>, c: &Call, ts: i64) -> Result<Value, QueryError> {
    let q = ev.scalar(arg(c, 0)?, ts, "histogram_quantile()")?;
    let v = ev.vector(arg(c, 1)?, ts, "histogram_quantile()")?;
    let mut groups: FastMap<Labels, Vec<(f64, f64)>> = FastMap::default();
    let mut order = Vec::new();
    for s in &v {
        let Some(le) = parse_go_float(get(&s.labels, "le")) else {
            continue;
        };
        let key: Labels = drop_name(&s.labels)
            .into_iter()
            .filter(|(n, _)| n != "le")
            .collect();
        let entry = groups.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        entry.push((le, s.value));
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let Some(mut buckets) = groups.remove(&key) else {
            continue;
        };
        out.push(Sample {
            labels: Arc::new(key),
            value: bucket_quantile(q, &mut buckets),
        });
    }
    Ok(Value::Vector(out))
}

/// A float as Go's `strconv.ParseFloat` reads an `le` value.
fn parse_go_float(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// The quantile of `(upper bound, cumulative count)` buckets, linearly
/// interpolated within the bucket holding the rank, as Prometheus: NaN
/// without a `+Inf` bucket or observations; counts forced monotonic.
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    match buckets.last() {
        Some(&(ub, _)) if ub == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Buckets with the same bound are one bucket.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, count) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += count,
            _ => merged.push((ub, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 || observations.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = merged.len() - 1;
    let b = merged[..n].partition_point(|x| x.1 < rank);
    if b == n {
        return merged[n - 1].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::bucket_quantile;

    #[test]
    fn the_median_interpolates_within_its_bucket() {
        let mut b = vec![(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        // rank 10 → the end of the first bucket.
        assert_eq!(bucket_quantile(0.5, &mut b), 1.0);
        let mut b = vec![(1.0, 0.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(bucket_quantile(0.5, &mut b), 1.5);
        let mut b = vec![(1.0, 1.0), (2.0, 2.0)];
        assert!(bucket_quantile(0.5, &mut b).is_nan());
    }
}
