//! `@`, `topk`'s k and the other edges where Prometheus 2.42 was checked
//! by hand (the differential corpus covers what it can compare).

use super::*;

/// `g` rising by 1 every 10 s from 0 to 100 s, then flat at 0.
fn ramp() -> Vec<Series> {
    let points: Vec<(i64, f64)> = (0..=20)
        .map(|i| (10 * i, if i <= 10 { i as f64 } else { 0.0 }))
        .collect();
    vec![series(&[("__name__", "g")], &points)]
}

/// `predict_linear` over a window fixed by `@`: every step of a range
/// query reads the same window (the samples up to 100 s) and predicts
/// from its own time, as Prometheus does since 2.50 (2.42 slid the window
/// from the `@` time and emptied it: prometheus/prometheus#11708). The
/// slope is 0.1 per second, so at step t the answer is t + 10.
#[test]
fn predict_linear_reads_the_window_at_the_at_time_at_every_step() {
    let g = ramp();
    let q = "predict_linear(g[50s] @ 100, 100)";
    let Ok(QueryResult::Matrix(m)) = range(q, &g, 100, 200, 20) else {
        panic!("not a matrix");
    };
    assert_eq!(m.len(), 1);
    let got: Vec<(i64, f64)> = m[0].points.clone();
    let want: Vec<(i64, f64)> = (0..=5)
        .map(|k| {
            let t = 100 + 20 * k;
            (t * 1000, (t as f64 + 100.0) / 10.0)
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((t, v), (wt, wv)) in got.iter().zip(&want) {
        assert_eq!(t, wt);
        assert!((v - wv).abs() < 1e-9, "at {t}: {v} != {wv}");
    }
    // Each step is the instant query at that time.
    for (t, v) in got {
        assert_eq!(vector(instant(q, &g, t / 1000))[0].1, v);
    }
}

/// Prometheus 2.42 refuses a `topk`/`bottomk` k that is not an int64,
/// NaN included (`scalar()` of nothing), as an execution error; the
/// messages are the ones it gave.
#[test]
fn topk_of_a_k_beyond_int64_is_refused() {
    let g = ramp();
    for (q, shown) in [
        ("topk(scalar(nothing), g)", "NaN"),
        ("bottomk(1e19, g)", "1e+19"),
        ("topk(9.3e18, g)", "9.3e+18"),
        ("topk(-Inf, g)", "-Inf"),
        ("topk(1e300, g)", "1e+300"),
    ] {
        let r = instant(q, &g, 50);
        let Err(QueryError::Execution(m)) = &r else {
            panic!("{q}: {r:?}")
        };
        assert_eq!(*m, format!("Scalar value {shown} overflows int64"), "{q}");
    }
    // The lower bound is -2^63 (Go's `math.MinInt64`) itself: the next
    // f64 below it is refused.
    let r = instant("bottomk(-9223372036854777856, g)", &g, 50);
    let Err(QueryError::Execution(m)) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(m, "Scalar value -9.223372036854778e+18 overflows int64");
    // Within int64, a k below 1 is an empty answer.
    assert!(vector(instant("topk(-9223372036854775808, g)", &g, 50)).is_empty());
    assert!(vector(instant("bottomk(-9.2e18, g)", &g, 50)).is_empty());
    assert!(vector(instant("topk(0.5, g)", &g, 50)).is_empty());
    assert_eq!(vector(instant("topk(1e18, g)", &g, 50)).len(), 1);
}

/// `timestamp(m @ T offset d)` answers the sample at T - d, as Prometheus
/// does since 2.43 (2.42 dropped the offset); see README, "Answers as
/// Prometheus 2.42 writes them".
#[test]
fn timestamp_of_an_at_selector_with_an_offset_reads_at_t_minus_d() {
    let g = ramp();
    // At any evaluation time, the sample at or before 100 - 30 = 70 s.
    for t in [0, 150, 250] {
        let got = vector(instant("timestamp(g @ 100 offset 30s)", &g, t));
        assert_eq!(got.len(), 1, "at {t}: {got:?}");
        assert_eq!(got[0].1, 70.0, "at {t}");
        // Without the offset: the sample at 100 s.
        let got = vector(instant("timestamp(g @ 100)", &g, t));
        assert_eq!(got[0].1, 100.0, "at {t}");
    }
    // Between samples (105 - 30 = 75 s): the one before, at 70 s.
    let got = vector(instant("timestamp(g @ 105 offset 30s)", &g, 150));
    assert_eq!(got[0].1, 70.0);
}
