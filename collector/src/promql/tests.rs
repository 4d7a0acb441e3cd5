//! The evaluator against hand-computed answers, over series in memory
//! (the store's part is covered by the differential test).

use std::sync::Arc;

use super::eval::Evaluator;
use super::load::from_memory;
use super::plan::{Bounds, plan};
use super::types::{Labels, QueryError, Sample, Series, Value};
use super::{QueryResult, evaluate_instant, evaluate_range, parse};

fn labels(pairs: &[(&str, &str)]) -> Arc<Labels> {
    let mut l: Labels = pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    Arc::new(l)
}

fn series(pairs: &[(&str, &str)], points: &[(i64, f64)]) -> Series {
    Series {
        labels: labels(pairs),
        points: points.iter().map(|(t, v)| (t * 1000, *v)).collect(),
    }
}

fn bounds(start: i64, end: i64) -> Bounds {
    Bounds {
        start,
        end,
        lookback: 300_000,
        default_step: 60_000,
    }
}

/// `query` at `t` seconds over `data`.
fn instant(query: &str, data: &[Series], t: i64) -> Result<QueryResult, QueryError> {
    let expr = parse(query)?;
    let b = bounds(t * 1000, t * 1000);
    let needs = plan(&expr, &b)?;
    let loaded = from_memory(&needs, data);
    let ev = Evaluator {
        data: &loaded,
        bounds: b,
        deadline: None,
        max_samples: 1_000_000,
        memo: Default::default(),
        abandoned: None,
    };
    evaluate_instant(&ev, &expr, t * 1000)
}

fn range(
    query: &str,
    data: &[Series],
    start: i64,
    end: i64,
    step: i64,
) -> Result<QueryResult, QueryError> {
    let expr = parse(query)?;
    let b = bounds(start * 1000, end * 1000);
    let needs = plan(&expr, &b)?;
    let loaded = from_memory(&needs, data);
    let ev = Evaluator {
        data: &loaded,
        bounds: b,
        deadline: None,
        max_samples: 1_000_000,
        memo: Default::default(),
        abandoned: None,
    };
    evaluate_range(&ev, &expr, start * 1000, end * 1000, step * 1000)
}

/// The vector's `(labels as text, value)`, sorted by labels.
fn vector(r: Result<QueryResult, QueryError>) -> Vec<(String, f64)> {
    let Ok(QueryResult::Vector { samples, .. }) = r else {
        panic!("not a vector: {r:?}");
    };
    let mut out: Vec<(String, f64)> = samples
        .into_iter()
        .map(|s: Sample| (label_text(&s.labels), s.value))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `n=v,...` in the labels' order.
fn label_text(labels: &Labels) -> String {
    let l: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v}")).collect();
    l.join(",")
}

fn scalar(r: Result<QueryResult, QueryError>) -> f64 {
    match r {
        Ok(QueryResult::Scalar { v, .. }) => v,
        other => panic!("not a scalar: {other:?}"),
    }
}

fn data() -> Vec<Series> {
    vec![
        // A counter every 10 s, reset at 60 s.
        series(
            &[("__name__", "reqs"), ("device", "a"), ("agent", "e")],
            &[
                (0, 0.0),
                (10, 10.0),
                (20, 20.0),
                (30, 30.0),
                (40, 40.0),
                (50, 50.0),
                (60, 5.0),
                (70, 15.0),
            ],
        ),
        series(
            &[("__name__", "reqs"), ("device", "b"), ("agent", "e")],
            &[
                (0, 100.0),
                (10, 110.0),
                (20, 120.0),
                (30, 130.0),
                (40, 140.0),
                (50, 150.0),
                (60, 160.0),
                (70, 170.0),
            ],
        ),
        series(
            &[("__name__", "temp"), ("device", "a"), ("agent", "e")],
            &[(0, 20.5), (400, 21.5)],
        ),
    ]
}

#[test]
fn instant_selectors_see_a_sample_for_the_lookback_delta_only() {
    let d = data();
    assert_eq!(
        vector(instant("temp", &d, 300)),
        [("__name__=temp,agent=e,device=a".into(), 20.5)]
    );
    assert!(vector(instant("temp", &d, 301)).is_empty());
    assert_eq!(vector(instant("temp", &d, 401))[0].1, 21.5);
    assert_eq!(vector(instant("temp offset 101s", &d, 401))[0].1, 20.5);
    assert_eq!(vector(instant("temp @ 10", &d, 401))[0].1, 20.5);
    assert_eq!(vector(instant("reqs{device=~\"a|c\"}", &d, 65)).len(), 1);
    assert_eq!(vector(instant("reqs{device!~\"a\"}", &d, 65)).len(), 1);
    assert_eq!(vector(instant("reqs{device=~\"\"}", &d, 65)).len(), 0);
    assert_eq!(
        vector(instant("{__name__=~\"re.*\",device!=\"a\"}", &d, 65)).len(),
        1
    );
}

#[test]
fn rate_counts_resets_and_extrapolates_as_prometheus() {
    let d = data();
    // Window [10, 70]: samples at 10..70 (7), increase 40 + 50 (reset) -
    // ... = 15 - 10 + 50 = 55 over 60 s sampled, edges on samples.
    let v = vector(instant("increase(reqs{device=\"a\"}[60s])", &d, 70));
    assert_eq!(v, [("agent=e,device=a".into(), 55.0)]);
    let v = vector(instant("rate(reqs{device=\"b\"}[60s])", &d, 70));
    assert!((v[0].1 - 1.0).abs() < 1e-12, "{v:?}");
    // Window [5, 75]: 5 s to each edge is below 1.1 × 10 s: extrapolated
    // to 70 s; the counter at 100 is far from zero.
    let v = vector(instant("increase(reqs{device=\"b\"}[70s])", &d, 75));
    assert!((v[0].1 - 70.0).abs() < 1e-12, "{v:?}");
    assert_eq!(vector(instant("resets(reqs[80s])", &d, 75))[0].1, 1.0);
    assert_eq!(
        vector(instant("irate(reqs{device=\"a\"}[80s])", &d, 75))[0].1,
        1.0
    );
    assert_eq!(
        vector(instant("idelta(reqs{device=\"a\"}[80s])", &d, 65))[0].1,
        -45.0
    );
    assert_eq!(
        vector(instant("changes(reqs{device=\"a\"}[80s])", &d, 75))[0].1,
        7.0
    );
    let v = vector(instant("deriv(reqs{device=\"b\"}[80s])", &d, 75));
    assert!((v[0].1 - 1.0).abs() < 1e-12);
}

#[test]
fn over_time_functions() {
    let d = data();
    let q = |f: &str| vector(instant(&format!("{f}(reqs{{device=\"b\"}}[35s])"), &d, 70))[0].1;
    // Window [35, 70]: 140 150 160 170.
    assert_eq!(q("avg_over_time"), 155.0);
    assert_eq!(q("min_over_time"), 140.0);
    assert_eq!(q("max_over_time"), 170.0);
    assert_eq!(q("sum_over_time"), 620.0);
    assert_eq!(q("count_over_time"), 4.0);
    assert_eq!(q("last_over_time"), 170.0);
    assert_eq!(q("stdvar_over_time"), 125.0);
    let v = vector(instant(
        "quantile_over_time(0.5, reqs{device=\"b\"}[35s])",
        &d,
        70,
    ));
    assert_eq!(v[0].1, 155.0);
    // last_over_time keeps the name.
    let v = vector(instant("last_over_time(reqs{device=\"b\"}[35s])", &d, 70));
    assert!(v[0].0.starts_with("__name__=reqs"));
}

#[test]
fn aggregations_group_by_and_without() {
    let d = data();
    assert_eq!(vector(instant("sum(reqs)", &d, 50)), [("".into(), 200.0)]);
    assert_eq!(
        vector(instant("sum by (device) (reqs)", &d, 50)),
        [("device=a".into(), 50.0), ("device=b".into(), 150.0)]
    );
    assert_eq!(
        vector(instant("count without (device) (reqs)", &d, 50)),
        [("agent=e".into(), 2.0)]
    );
    assert_eq!(vector(instant("avg(reqs)", &d, 50))[0].1, 100.0);
    assert_eq!(vector(instant("stddev(reqs)", &d, 50))[0].1, 50.0);
    assert_eq!(vector(instant("topk(1, reqs)", &d, 50))[0].1, 150.0);
    assert_eq!(vector(instant("bottomk(1, reqs)", &d, 50))[0].1, 50.0);
    assert_eq!(vector(instant("quantile(0.5, reqs)", &d, 50))[0].1, 100.0);
    assert_eq!(
        vector(instant("count_values(\"v\", reqs)", &d, 50)),
        [("v=150".into(), 1.0), ("v=50".into(), 1.0)]
    );
}

#[test]
fn binary_operators_match_as_prometheus() {
    let d = data();
    assert_eq!(scalar(instant("1 + 2 * 3", &d, 50)), 7.0);
    assert_eq!(
        vector(instant("reqs > 100", &d, 50)),
        [("__name__=reqs,agent=e,device=b".into(), 150.0)]
    );
    assert_eq!(vector(instant("reqs > bool 100", &d, 50)).len(), 2);
    assert_eq!(vector(instant("200 > reqs", &d, 50)).len(), 2);
    assert_eq!(vector(instant("reqs - reqs", &d, 50)).len(), 2);
    assert_eq!(
        vector(instant("reqs / on(device) group_left temp", &d, 50)),
        [("__name__=reqs,agent=e,device=a".into(), 50.0 / 20.5)]
            .map(|(l, v): (String, f64)| (l.replace("__name__=reqs,", ""), v))
    );
    assert_eq!(vector(instant("reqs and on(device) temp", &d, 50)).len(), 1);
    assert_eq!(
        vector(instant("reqs unless on(device) temp", &d, 50)).len(),
        1
    );
    assert_eq!(vector(instant("temp or on(device) reqs", &d, 50)).len(), 2);
    let err = instant("reqs + on() group_left sum(reqs)", &d, 50);
    assert!(err.is_ok(), "{err:?}");
    let err = instant("reqs + on(agent) reqs", &d, 50).unwrap_err();
    assert!(matches!(err, QueryError::Execution(_)), "{err:?}");
}

#[test]
fn functions_on_vectors() {
    let d = data();
    assert_eq!(vector(instant("abs(-reqs)", &d, 50))[0].1, 50.0);
    assert_eq!(
        vector(instant("clamp(reqs, 60, 100)", &d, 50))
            .iter()
            .map(|v| v.1)
            .collect::<Vec<_>>(),
        [60.0, 100.0]
    );
    assert_eq!(vector(instant("round(temp, 5)", &d, 50))[0].1, 20.0);
    assert_eq!(scalar(instant("time()", &d, 50)), 50.0);
    assert_eq!(vector(instant("timestamp(temp)", &d, 50))[0].1, 0.0);
    assert_eq!(
        vector(instant("absent(nope{device=\"x\"})", &d, 50)),
        [("device=x".into(), 1.0)]
    );
    assert!(vector(instant("absent(temp)", &d, 50)).is_empty());
    assert!(scalar(instant("scalar(reqs)", &d, 50)).is_nan());
    assert_eq!(
        vector(instant(
            "label_replace(temp, \"dev\", \"x-$1\", \"device\", \"(.*)\")",
            &d,
            50
        ))[0]
            .0,
        "__name__=temp,agent=e,dev=x-a,device=a"
    );
    assert_eq!(
        vector(instant(
            "label_join(temp, \"j\", \"/\", \"agent\", \"device\")",
            &d,
            50
        ))[0]
            .0,
        "__name__=temp,agent=e,device=a,j=e/a"
    );
    let Ok(QueryResult::Vector { samples, .. }) = instant("sort_desc(reqs)", &d, 50) else {
        panic!()
    };
    assert_eq!(samples[0].value, 150.0);
}

#[test]
fn range_queries_and_subqueries_step_through_time() {
    let d = data();
    let Ok(QueryResult::Matrix(m)) = range("reqs{device=\"a\"}", &d, 0, 70, 35) else {
        panic!()
    };
    assert_eq!(m[0].points, [(0, 0.0), (35_000, 30.0), (70_000, 15.0)]);
    let v = vector(instant(
        "max_over_time(reqs{device=\"b\"}[60s:20s])",
        &d,
        70,
    ));
    assert_eq!(v[0].1, 160.0);
    let Ok(QueryResult::Matrix(m)) = range("1", &d, 0, 20, 10) else {
        panic!()
    };
    assert_eq!(m[0].points.len(), 3);
}

#[test]
fn unsupported_and_bad_queries_are_refused_by_name() {
    let d = data();
    let e = instant("days_in_month(temp)", &d, 50).unwrap_err();
    assert_eq!(
        e,
        QueryError::Unsupported("function days_in_month()".into())
    );
    let e = instant("limitk(1, reqs)", &d, 50).unwrap_err();
    assert_eq!(e, QueryError::Unsupported("aggregation limitk".into()));
    assert!(matches!(
        instant("sum(", &d, 50),
        Err(QueryError::BadData(_))
    ));
    let e = instant("abs({__name__=~\"reqs|temp\", device=\"a\"})", &d, 50).unwrap_err();
    assert!(matches!(e, QueryError::Execution(_)));
}

#[test]
fn strings_and_matrices_answer_instant_queries() {
    let d = data();
    assert_eq!(
        instant("\"hi\"", &d, 5).unwrap(),
        QueryResult::String {
            t: 5000,
            s: "hi".into()
        }
    );
    let Ok(QueryResult::Matrix(m)) = instant("reqs[15s]", &d, 20) else {
        panic!()
    };
    assert_eq!(m[0].points.len(), 2);
    let _ = Value::Scalar(0.0).type_name();
}

/// A range query's steps share the query's memo (compiled regexes, a
/// subquery's previous window); each instant query starts without one:
/// both must give the same values at every step.
#[test]
fn range_steps_reusing_work_agree_with_instant_queries() {
    let d = data();
    for q in [
        "max_over_time(reqs[60s:10s])",
        "sum_over_time(max_over_time(reqs[30s:10s])[40s:20s])",
        "rate(reqs[40s:10s]) * on(device) count_over_time(reqs[20s:10s] @ 50)",
        "label_replace(reqs, \"d\", \"x-$1\", \"device\", \"(a|b)\")",
    ] {
        let Ok(QueryResult::Matrix(m)) = range(q, &d, 0, 90, 10) else {
            panic!("{q}: not a matrix")
        };
        let mut from_range: Vec<(String, i64, f64)> = m
            .iter()
            .flat_map(|s| s.points.iter().map(|&(t, v)| (label_text(&s.labels), t, v)))
            .collect();
        let mut from_instants = Vec::new();
        for t in (0..=90).step_by(10) {
            for (l, v) in vector(instant(q, &d, t)) {
                from_instants.push((l, t * 1000, v));
            }
        }
        from_range.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        from_instants.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        assert!(!from_range.is_empty(), "{q}");
        assert_eq!(from_range, from_instants, "{q}");
    }
}

#[test]
fn an_invalid_label_replace_regex_is_refused_in_range_queries_too() {
    let d = data();
    let q = "label_replace(reqs, \"d\", \"$1\", \"device\", \"(a\")";
    for r in [instant(q, &d, 50), range(q, &d, 0, 90, 10)] {
        // An execution error (422), as in Prometheus.
        let Err(QueryError::Execution(m)) = r else {
            panic!("{r:?}")
        };
        assert!(
            m.starts_with("invalid regular expression in label_replace(): (a"),
            "{m}"
        );
    }
}

/// Values as text, so that NaN compares equal to NaN.
fn texts(r: Result<QueryResult, QueryError>) -> Vec<String> {
    vector(r).into_iter().map(|(_, v)| v.to_string()).collect()
}

#[test]
fn sums_with_infinities_are_infinite_as_in_prometheus() {
    // Prometheus 2.42: `sum_over_time` answers an infinite Kahan sum as
    // it is, `sum`/`avg` add plainly: Inf stays Inf, Inf + -Inf is NaN.
    let d = vec![
        series(
            &[("__name__", "g"), ("k", "a")],
            &[(0, 1.0), (10, f64::INFINITY)],
        ),
        series(
            &[("__name__", "g"), ("k", "b")],
            &[(0, f64::INFINITY), (10, 1.0)],
        ),
        series(
            &[("__name__", "g"), ("k", "c")],
            &[(0, f64::NEG_INFINITY), (10, f64::INFINITY)],
        ),
        series(&[("__name__", "h"), ("k", "a")], &[(10, f64::NEG_INFINITY)]),
        series(&[("__name__", "h"), ("k", "b")], &[(10, 2.0)]),
    ];
    assert_eq!(
        texts(instant("sum_over_time(g[1m])", &d, 10)),
        ["inf", "inf", "NaN"]
    );
    assert_eq!(
        texts(instant("avg_over_time(g[1m])", &d, 10)),
        ["inf", "inf", "NaN"]
    );
    assert_eq!(texts(instant("sum(h)", &d, 10)), ["-inf"]);
    assert_eq!(texts(instant("sum(g)", &d, 10)), ["inf"]);
    assert_eq!(
        texts(instant("sum by (k) (g or h)", &d, 10)),
        ["inf", "1", "inf"]
    );
    assert_eq!(texts(instant("avg(h)", &d, 10)), ["-inf"]);
    // Across steps (`columns.rs`) as at one step.
    let Ok(QueryResult::Matrix(m)) = range("sum(sum_over_time(g[1m]))", &d, 10, 20, 10) else {
        panic!("not a matrix");
    };
    assert_eq!(m.len(), 1);
    assert!(m[0].points.iter().all(|p| p.1.is_nan()), "{m:?}");
    let Ok(QueryResult::Matrix(m)) = range("sum(sum_over_time(h[1m]))", &d, 10, 20, 10) else {
        panic!("not a matrix");
    };
    assert!(
        m[0].points.iter().all(|p| p.1 == f64::NEG_INFINITY),
        "{m:?}"
    );
}

#[test]
fn a_group_of_one_has_no_deviation_even_when_not_finite() {
    // Prometheus 2.42 starts a stddev/stdvar group at its first member's
    // value with no spread: 0 for one NaN or infinite member.
    let d = vec![
        series(&[("__name__", "g"), ("k", "a")], &[(0, f64::NAN)]),
        series(&[("__name__", "g"), ("k", "b")], &[(0, f64::INFINITY)]),
        series(&[("__name__", "g"), ("k", "c")], &[(0, 3.0)]),
        series(&[("__name__", "g"), ("k", "d")], &[(0, f64::NEG_INFINITY)]),
    ];
    assert_eq!(
        texts(instant("stddev by (k) (g)", &d, 0)),
        ["0", "0", "0", "0"]
    );
    assert_eq!(
        texts(instant("stdvar by (k) (g)", &d, 0)),
        ["0", "0", "0", "0"]
    );
    // Two members: NaN as before.
    assert_eq!(texts(instant("stdvar(g)", &d, 0)), ["NaN"]);
    // stddev_over_time starts from zero, as Prometheus's does.
    assert_eq!(
        texts(instant("stddev_over_time(g[1m])", &d, 0)),
        ["NaN", "NaN", "0", "NaN"]
    );
    let Ok(QueryResult::Matrix(m)) = range("stddev by (k) (last_over_time(g[1m]))", &d, 0, 30, 10)
    else {
        panic!("not a matrix");
    };
    assert_eq!(m.len(), 4);
    assert!(
        m.iter().all(|s| s.points.iter().all(|p| p.1 == 0.0)),
        "{m:?}"
    );
}

/// A subquery of many cheap inner steps (no data) keeps at most
/// `MAX_WINDOW_STEPS` of them for the next step, whatever its length.
#[test]
fn the_subquery_memo_is_bounded() {
    let d = data();
    let q = "count_over_time(nothing[30000s:1s])";
    let expr = parse(q).unwrap();
    let b = bounds(40_000_000, 40_000_000);
    let needs = plan(&expr, &b).unwrap();
    let loaded = from_memory(&needs, &d);
    let ev = Evaluator {
        data: &loaded,
        bounds: b,
        deadline: None,
        max_samples: 1_000_000,
        memo: Default::default(),
        abandoned: None,
    };
    let answer = evaluate_instant(&ev, &expr, 40_000_000);
    assert!(answer.is_ok(), "{answer:?}");
    let kept = ev.memo.kept_steps();
    assert!(
        kept > 0 && kept <= crate::promql::memo::MAX_WINDOW_STEPS,
        "{kept} inner evaluations kept"
    );
}

mod edges;
mod sums;
