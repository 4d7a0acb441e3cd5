//! The evaluation across steps against the evaluation step by step (the
//! ground truth the differential test holds to Prometheus): the same
//! series, labels, times and values, bit for bit, over counters with
//! resets, gaps, NaN and infinities, every per-series range function and
//! reducing aggregation, `offset` and `@`.

use std::sync::Arc;

use std::cell::Cell;

use super::{dense_too_large, range};
use crate::promql::eval::Evaluator;
use crate::promql::functions::{CHECK_EVERY, RangeCall, WindowAt};
use crate::promql::load::from_memory;
use crate::promql::plan::{Bounds, plan};
use crate::promql::types::{Labels, QueryError, Series};
use crate::promql::{QueryResult, evaluate_steps, parse};

/// A deterministic generator (an LCG), so the data is the same each run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

fn labels(pairs: &[(&str, &str)]) -> Arc<Labels> {
    let mut l: Labels = pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    Arc::new(l)
}

/// Counters `m` (some reset, some with gaps, irregular times) on 3
/// devices × 4 agents, a gauge `g` with NaN and ±Inf, and a counter `n`
/// sharing its other labels with an `m` (so `{__name__=~"m|n"}` has
/// duplicates once the name is dropped).
fn data() -> Vec<Series> {
    let mut rng = Lcg(7);
    let mut out = Vec::new();
    for agent in 0..4 {
        for device in 0..3 {
            let (agent, device) = (format!("a{agent}"), format!("d{device}"));
            let mut points = Vec::new();
            let mut t = 1_000 * (rng.next() % 20) as i64;
            let mut v = (rng.next() % 50) as f64;
            while t < 3_600_000 {
                // A gap of a few minutes now and then.
                if rng.next().is_multiple_of(40) {
                    t += 200_000 + 1_000 * (rng.next() % 400) as i64;
                }
                points.push((t, v));
                v = if rng.next().is_multiple_of(25) {
                    (rng.next() % 5) as f64
                } else {
                    v + (rng.next() % 100) as f64 / 7.0
                };
                t += 10_000 + 1_000 * (rng.next() % 10) as i64;
            }
            out.push(Series {
                labels: labels(&[("__name__", "m"), ("agent", &agent), ("device", &device)]),
                points,
            });
        }
    }
    let mut g = Vec::new();
    for i in 0..300 {
        let v = match i % 37 {
            5 => f64::NAN,
            11 => f64::INFINITY,
            23 => f64::NEG_INFINITY,
            _ => (rng.next() % 1000) as f64 / 10.0 - 50.0,
        };
        g.push((i * 12_000, v));
    }
    out.push(Series {
        labels: labels(&[("__name__", "g"), ("agent", "a0"), ("device", "d0")]),
        points: g,
    });
    out.push(Series {
        labels: labels(&[("__name__", "n"), ("agent", "a0"), ("device", "d0")]),
        points: (0..200).map(|i| (i * 15_000, i as f64)).collect(),
    });
    out
}

/// `query` over `[start, end]` every `step` (ms), across steps and step by
/// step; `None` across steps when it does not apply.
fn both(
    query: &str,
    data: &[Series],
    start: i64,
    end: i64,
    step: i64,
) -> (Option<Vec<Series>>, Result<Vec<Series>, QueryError>) {
    let expr = parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let b = Bounds {
        start,
        end,
        lookback: 300_000,
        default_step: 60_000,
    };
    let needs = plan(&expr, &b).unwrap_or_else(|e| panic!("{query}: {e}"));
    let loaded = from_memory(&needs, data);
    let ev = Evaluator {
        data: &loaded,
        bounds: b,
        deadline: None,
        max_samples: 10_000_000,
        memo: Default::default(),
        abandoned: None,
    };
    let across =
        range(&ev, &expr, start, end, step).map(|r| r.unwrap_or_else(|e| panic!("{query}: {e}")));
    let stepped = match evaluate_steps(&ev, &expr, start, end, step) {
        Ok(QueryResult::Matrix(m)) => Ok(m),
        Err(e) => Err(e),
        other => panic!("{query}: {other:?}"),
    };
    (across, stepped)
}

/// Whether two results are the same series with bit-identical values.
fn same(a: &[Series], b: &Result<Vec<Series>, QueryError>) -> bool {
    let Ok(b) = b else {
        return false;
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.labels == y.labels
                && x.points.len() == y.points.len()
                && x.points
                    .iter()
                    .zip(&y.points)
                    .all(|(p, q)| p.0 == q.0 && p.1.to_bits() == q.1.to_bits())
        })
}

const FUNCTIONS: &[&str] = &[
    "rate(m[5m])",
    "increase(m[2m])",
    "rate(g[5m])",
    "increase(g[3m])",
    "delta(m[1m])",
    "delta(g[5m])",
    "irate(m[1m])",
    "idelta(g[1m])",
    "deriv(g[5m])",
    "predict_linear(m[5m], 600)",
    "quantile_over_time(0.3, g[10m])",
    "avg_over_time(g[5m])",
    "sum_over_time(g[5m])",
    "min_over_time(g[3m])",
    "max_over_time(g[3m])",
    "count_over_time(m[1m])",
    "present_over_time(m[30s])",
    "last_over_time(m[1m])",
    "stddev_over_time(g[5m])",
    "stdvar_over_time(m[5m])",
    "changes(g[5m])",
    "resets(m[10m])",
    "rate(m[5m] offset 3m)",
    "rate(m[5m] offset -2m)",
    "rate(m[5m] @ 1800)",
    "rate(m[5m] @ end())",
    "rate((m[5m]))",
];

const AGGREGATIONS: &[&str] = &[
    "sum by (device)",
    "sum without (agent)",
    "sum",
    "avg by (device)",
    "min by (agent)",
    "max by (agent)",
    "count without (device)",
    "group by (device)",
    "stddev by (device)",
    "stdvar by (nothing)",
];

#[test]
fn range_functions_across_steps_equal_the_step_by_step_answers() {
    let d = data();
    for f in FUNCTIONS {
        let mut compared = 0;
        for (start, end, step) in [
            (0, 3_600_000, 15_000),
            (-600_000, 4_000_000, 37_000),
            (1_234_567, 2_000_000, 1_000),
            (500_000, 500_000, 60_000),
            (0, 3_600_000, 700_000),
        ] {
            let (across, stepped) = both(f, &d, start, end, step);
            let across = across.unwrap_or_else(|| panic!("{f}: not evaluated across steps"));
            assert!(
                same(&across, &stepped),
                "{f} over {start}..{end} by {step}: {across:?} != {stepped:?}"
            );
            compared += across.iter().map(|s| s.points.len()).sum::<usize>();
            for agg in AGGREGATIONS {
                let q = format!("{agg} ({f})");
                let (across, stepped) = both(&q, &d, start, end, step);
                let across = across.unwrap_or_else(|| panic!("{q}: not evaluated across steps"));
                assert!(
                    same(&across, &stepped),
                    "{q} over {start}..{end} by {step}: {across:?} != {stepped:?}"
                );
            }
        }
        assert!(compared > 100, "{f}: only {compared} values compared");
    }
}

#[test]
fn other_shapes_and_colliding_labels_go_step_by_step() {
    let d = data();
    for q in [
        // `m` and `n` of a0/d0 are equal once the name is dropped.
        "rate({__name__=~\"m|n\"}[5m])",
        "sum by (device) (rate({__name__=~\"m|n\"}[5m]))",
        "topk(2, rate(m[5m]))",
        "quantile(0.5, rate(m[5m]))",
        "sum(rate(m[5m])) * 2",
        "sum(m)",
        "rate(m[5m:1m])",
        "absent_over_time(m[1m])",
        "quantile_over_time(time() / 4000, g[10m])",
    ] {
        let (across, stepped) = both(q, &d, 0, 3_600_000, 60_000);
        assert!(across.is_none(), "{q}: evaluated across steps");
        // What the range query answers instead.
        if q.contains("m|n") {
            assert!(matches!(stepped, Err(QueryError::Execution(_))), "{q}");
        } else {
            assert!(stepped.is_ok_and(|m| !m.is_empty()), "{q}");
        }
    }
    // Last over time keeps the name, so `m` and `n` do not collide.
    let (across, stepped) = both(
        "last_over_time({__name__=~\"m|n\"}[5m])",
        &d,
        0,
        3_600_000,
        60_000,
    );
    let across = across.unwrap_or_else(|| panic!("not evaluated across steps"));
    assert!(same(&across, &stepped), "{across:?} != {stepped:?}");
    assert!(
        across
            .iter()
            .any(|s| s.labels.iter().any(|(_, v)| v == "n"))
    );
}

#[test]
fn the_sample_limit_holds_across_steps() {
    let d = data();
    let expr = parse("rate(m[5m])").unwrap_or_else(|e| panic!("{e}"));
    let b = Bounds {
        start: 0,
        end: 3_600_000,
        lookback: 300_000,
        default_step: 60_000,
    };
    let needs = plan(&expr, &b).unwrap_or_else(|e| panic!("{e}"));
    let loaded = from_memory(&needs, &d);
    let ev = Evaluator {
        data: &loaded,
        bounds: b,
        deadline: None,
        max_samples: 100,
        memo: Default::default(),
        abandoned: None,
    };
    let across = range(&ev, &expr, 0, 3_600_000, 15_000);
    assert!(
        matches!(across, Some(Err(QueryError::Limit(_)))),
        "{across:?}"
    );
    assert!(matches!(
        evaluate_steps(&ev, &expr, 0, 3_600_000, 15_000),
        Err(QueryError::Limit(_))
    ));
}

#[test]
fn last_over_time_of_series_with_equal_labels_goes_step_by_step() {
    // Two stored series whose Prometheus labels are equal, name included
    // (`in.temp` and `in_temp` are both `in_temp` once sanitized).
    let d: Vec<Series> = (0..2)
        .map(|i| Series {
            labels: labels(&[("__name__", "in_temp"), ("device", "d0")]),
            points: (0..100).map(|k| (k * 15_000, (k + i) as f64)).collect(),
        })
        .collect();
    let (across, stepped) = both("last_over_time(in_temp[5m])", &d, 0, 1_500_000, 60_000);
    assert!(across.is_none(), "evaluated across steps: {across:?}");
    // Prometheus refuses such a vector; so does the step-by-step way.
    assert!(
        matches!(stepped, Err(QueryError::Execution(_))),
        "{stepped:?}"
    );
}

#[test]
fn one_long_series_checks_within_its_walk() {
    // One series of 1 s samples; quantile_over_time looks at every sample
    // of each 10 min window, so one walk is far more than CHECK_EVERY.
    let points: Vec<(i64, f64)> = (0..20_000).map(|i| (i * 1_000, (i % 97) as f64)).collect();
    let windows: Vec<WindowAt> = (0..1_000)
        .map(|k| {
            let ts = 600_000 + k * 15_000;
            WindowAt {
                ts,
                start: ts - 600_000,
                end: ts,
            }
        })
        .collect();
    let expr = parse("quantile_over_time(0.9, m[10m])").unwrap_or_else(|e| panic!("{e}"));
    let promql_parser::parser::Expr::Call(c) = &*expr else {
        panic!("{expr:?}");
    };
    let f = RangeCall::of(c).unwrap_or_else(|| panic!("not a range call"));
    // Abandoned once the first value is out: the walk stops at the next
    // check, long before its last step.
    let abandoned = Cell::new(false);
    let (checks, emitted) = (Cell::new(0usize), Cell::new(0usize));
    let walked = f.steps(
        &points,
        &windows,
        || {
            checks.set(checks.get() + 1);
            if abandoned.get() {
                Err("abandoned")
            } else {
                Ok(())
            }
        },
        |_, _| {
            emitted.set(emitted.get() + 1);
            abandoned.set(true);
        },
    );
    assert_eq!(walked, Err("abandoned"));
    assert_eq!(checks.get(), 1);
    // 600 samples a window: the first check comes within CHECK_EVERY / 600
    // steps.
    assert!(emitted.get() <= CHECK_EVERY / 600 + 1, "{}", emitted.get());
    // Never abandoned, it walks every step, checking on the way.
    let (checks, emitted) = (Cell::new(0usize), Cell::new(0usize));
    let walked = f.steps(
        &points,
        &windows,
        || {
            checks.set(checks.get() + 1);
            Ok::<(), ()>(())
        },
        |_, _| emitted.set(emitted.get() + 1),
    );
    assert_eq!(walked, Ok(()));
    assert_eq!(emitted.get(), windows.len());
    assert!(
        checks.get() >= 1_000 * 600 / CHECK_EVERY,
        "{}",
        checks.get()
    );
}

#[test]
fn an_abandoned_query_stops_across_steps() {
    let d = data();
    let expr = parse("sum by (device) (rate(m[5m]))").unwrap_or_else(|e| panic!("{e}"));
    let b = Bounds {
        start: 0,
        end: 3_600_000,
        lookback: 300_000,
        default_step: 60_000,
    };
    let needs = plan(&expr, &b).unwrap_or_else(|e| panic!("{e}"));
    let loaded = from_memory(&needs, &d);
    let abandoned = std::sync::atomic::AtomicBool::new(true);
    let ev = Evaluator {
        data: &loaded,
        bounds: b,
        deadline: None,
        max_samples: 10_000_000,
        abandoned: Some(&abandoned),
        memo: Default::default(),
    };
    let across = range(&ev, &expr, 0, 3_600_000, 15_000);
    assert!(
        matches!(across, Some(Err(QueryError::Timeout(_)))),
        "{across:?}"
    );
}

#[test]
fn running_values_are_bounded_by_bytes() {
    // 12 groups × 241 steps: 2,892 running values, fewer than the limit
    // of 4,000 samples, but each twice a sample's 16 bytes.
    assert!(std::mem::size_of::<Option<crate::promql::aggregate::Acc>>() >= 32);
    assert!(dense_too_large(12, 241, 4_000));
    assert!(!dense_too_large(12, 241, 6_000));
    // No overflow: a product past usize saturates and falls back.
    assert!(dense_too_large(usize::MAX, 2, 50_000_000));
    let d = data();
    let q = "sum by (agent, device) (rate(m[5m]))";
    let expr = parse(q).unwrap_or_else(|e| panic!("{e}"));
    let b = Bounds {
        start: 0,
        end: 3_600_000,
        lookback: 300_000,
        default_step: 60_000,
    };
    let needs = plan(&expr, &b).unwrap_or_else(|e| panic!("{e}"));
    let loaded = from_memory(&needs, &d);
    let ev = Evaluator {
        data: &loaded,
        bounds: b,
        deadline: None,
        max_samples: 4_000,
        abandoned: None,
        memo: Default::default(),
    };
    assert!(range(&ev, &expr, 0, 3_600_000, 15_000).is_none());
    // Step by step, the answer fits the limit.
    assert!(matches!(
        evaluate_steps(&ev, &expr, 0, 3_600_000, 15_000),
        Ok(QueryResult::Matrix(m)) if m.len() == 12
    ));
}
