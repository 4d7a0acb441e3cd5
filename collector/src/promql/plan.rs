//! What a query needs before it runs: every selector with the closed time
//! window its samples must cover (through offsets, `@`, ranges and
//! subqueries), and a check that every function and aggregation in it is
//! one the evaluator implements, so an unsupported query is refused before
//! anything is read.
//!
//! Imports `promql-parser`'s AST and `types` only.

use std::time::{Duration, SystemTime};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};

use super::functions::SUPPORTED_FUNCTIONS;
use super::types::{Labels, NAME, QueryError, get};

/// The query-wide times the evaluator and the plan share.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// First and last evaluation time (equal for an instant query); what
    /// `@ start()` and `@ end()` mean.
    pub start: i64,
    pub end: i64,
    /// How far back an instant selector looks for a sample (ms).
    pub lookback: i64,
    /// Step of a subquery that names none (ms), Prometheus's default
    /// evaluation interval.
    pub default_step: i64,
}

/// One selector of the query and the samples it may read: `[lo, hi]`, ms.
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    pub selector: &'a VectorSelector,
    pub lo: i64,
    pub hi: i64,
}

/// A selector's identity within its query (its address in the AST, which
/// lives as long as the query).
pub fn selector_key(vs: &VectorSelector) -> usize {
    std::ptr::from_ref(vs) as usize
}

/// Every selector of `expr` with its window, or the first unsupported
/// construct.
pub fn plan<'a>(expr: &'a Expr, bounds: &Bounds) -> Result<Vec<Need<'a>>, QueryError> {
    let mut out = Vec::new();
    walk(expr, bounds.start, bounds.end, bounds, &mut out)?;
    Ok(out)
}

fn walk<'a>(
    expr: &'a Expr,
    lo: i64,
    hi: i64,
    b: &Bounds,
    out: &mut Vec<Need<'a>>,
) -> Result<(), QueryError> {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => walk(&p.expr, lo, hi, b, out),
        Expr::Unary(u) => walk(&u.expr, lo, hi, b, out),
        Expr::Binary(e) => {
            walk(&e.lhs, lo, hi, b, out)?;
            walk(&e.rhs, lo, hi, b, out)
        }
        Expr::Aggregate(a) => {
            let name = a.op.to_string();
            if !matches!(
                name.as_str(),
                "sum"
                    | "avg"
                    | "min"
                    | "max"
                    | "count"
                    | "group"
                    | "stddev"
                    | "stdvar"
                    | "topk"
                    | "bottomk"
                    | "quantile"
                    | "count_values"
            ) {
                return Err(QueryError::Unsupported(format!("aggregation {name}")));
            }
            if let Some(p) = &a.param {
                walk(p, lo, hi, b, out)?;
            }
            walk(&a.expr, lo, hi, b, out)
        }
        Expr::Call(c) => {
            if !SUPPORTED_FUNCTIONS.contains(&c.func.name) {
                return Err(QueryError::Unsupported(format!(
                    "function {}()",
                    c.func.name
                )));
            }
            for arg in &c.args.args {
                walk(arg, lo, hi, b, out)?;
            }
            Ok(())
        }
        Expr::VectorSelector(vs) => {
            check_modifiers(&vs.at, &vs.offset, None)?;
            let (lo, hi) = at_times(&vs.at, lo, hi, b);
            let off = offset_ms(&vs.offset);
            out.push(Need {
                selector: vs,
                lo: lo.saturating_sub(off).saturating_sub(b.lookback),
                hi: hi.saturating_sub(off),
            });
            Ok(())
        }
        Expr::MatrixSelector(ms) => {
            check_modifiers(&ms.vs.at, &ms.vs.offset, Some(("range", ms.range)))?;
            let (lo, hi) = at_times(&ms.vs.at, lo, hi, b);
            let off = offset_ms(&ms.vs.offset);
            out.push(Need {
                selector: &ms.vs,
                lo: lo.saturating_sub(off).saturating_sub(duration_ms(ms.range)),
                hi: hi.saturating_sub(off),
            });
            Ok(())
        }
        Expr::Subquery(sq) => {
            check_modifiers(&sq.at, &sq.offset, Some(("subquery range", sq.range)))?;
            if let Some(step) = sq.step {
                check_modifiers(&None, &None, Some(("subquery step", step)))?;
            }
            let (lo, hi) = at_times(&sq.at, lo, hi, b);
            let off = offset_ms(&sq.offset);
            let inner_lo = lo.saturating_sub(off).saturating_sub(duration_ms(sq.range));
            walk(&sq.expr, inner_lo, hi.saturating_sub(off), b, out)
        }
        Expr::Extension(_) => Err(QueryError::Unsupported("extension expressions".into())),
    }
}

/// Longest offset, range or step, and farthest `@` time from 1970, that a
/// query may name: 10,000 years in ms. Every window and step computed
/// from them stays far inside i64, so nothing wraps.
pub const MAX_SPAN_MS: i64 = 10_000 * 366 * 86_400_000;

/// Refuses (422, naming it) an `@` time, offset or range beyond
/// [`MAX_SPAN_MS`].
fn check_modifiers(
    at: &Option<AtModifier>,
    offset: &Option<Offset>,
    range: Option<(&str, Duration)>,
) -> Result<(), QueryError> {
    let too_far = |what: String| {
        QueryError::Limit(format!(
            "{what} is out of range: at most 10000y (from 1970 for @)"
        ))
    };
    if let Some(AtModifier::At(t)) = at {
        let ms = system_time_ms(*t);
        if ms.unsigned_abs() > MAX_SPAN_MS as u64 {
            return Err(too_far(format!("@ {}", ms as f64 / 1000.0)));
        }
    }
    if let Some(Offset::Pos(d) | Offset::Neg(d)) = offset
        && duration_ms(*d) > MAX_SPAN_MS
    {
        return Err(too_far(format!("offset {}s", d.as_secs())));
    }
    if let Some((what, d)) = range
        && duration_ms(d) > MAX_SPAN_MS
    {
        return Err(too_far(format!("{what} {}s", d.as_secs())));
    }
    Ok(())
}

/// The evaluation times of a node with an `@` modifier (fixed), or those
/// it inherits.
fn at_times(at: &Option<AtModifier>, lo: i64, hi: i64, b: &Bounds) -> (i64, i64) {
    match at_ms(at, b) {
        Some(t) => (t, t),
        None => (lo, hi),
    }
}

/// The time an `@` modifier fixes, in ms.
pub fn at_ms(at: &Option<AtModifier>, b: &Bounds) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(b.start),
        Some(AtModifier::End) => Some(b.end),
        Some(AtModifier::At(t)) => Some(system_time_ms(*t)),
    }
}

fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => duration_ms(d),
        Err(e) => duration_ms(e.duration()).saturating_neg(),
    }
}

/// An offset in ms (negative for `offset -5m`).
pub fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => duration_ms(*d).saturating_neg(),
    }
}

/// A duration in whole ms, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a series' labels pass a selector: its name and every matcher
/// (or one of its `or` groups), a missing label reading as "".
pub fn selector_matches(vs: &VectorSelector, labels: &Labels) -> bool {
    if let Some(name) = &vs.name
        && get(labels, NAME) != name
    {
        return false;
    }
    let all = |ms: &[Matcher]| ms.iter().all(|m| m.is_match(get(labels, &m.name)));
    if vs.matchers.or_matchers.is_empty() {
        all(&vs.matchers.matchers)
    } else {
        all(&vs.matchers.matchers) && vs.matchers.or_matchers.iter().any(|g| all(g))
    }
}

/// The exact values a selector requires of `label`, if one matcher or the
/// name pins it (used to read fewer series from the store).
pub fn required_value<'a>(vs: &'a VectorSelector, label: &str) -> Option<&'a str> {
    if label == NAME
        && let Some(name) = &vs.name
    {
        return Some(name);
    }
    if !vs.matchers.or_matchers.is_empty() {
        return None;
    }
    vs.matchers
        .matchers
        .iter()
        .find(|m| m.name == label && matches!(m.op, MatchOp::Equal))
        .map(|m| m.value.as_str())
}
