//! Sums to the last bit: the answers Prometheus 2.42 (the Debian binary)
//! gave over the same samples, as text, so that one differing bit shows.
//! `sum`, `avg`, `stddev` and `stdvar` add plainly, in label order; the
//! `*_over_time` functions compensate (Kahan-Babuška).

use super::*;
use crate::promql::format_sample_value;

/// `g{k}` at 0, 10 and 20 s: values that cancel, given out of label order
/// (the evaluator must add them in label order, as Prometheus does).
fn cancelling() -> Vec<Series> {
    vec![
        series(
            &[("__name__", "g"), ("k", "c")],
            &[(0, -1e100), (10, 1.0), (20, -1e16)],
        ),
        series(
            &[("__name__", "g"), ("k", "a")],
            &[(0, 1e100), (10, 0.1), (20, 3.0)],
        ),
        series(
            &[("__name__", "g"), ("k", "b")],
            &[(0, 1.5), (10, 1e16), (20, 0.7)],
        ),
    ]
}

/// `h{k="0".."9"}` every 10 s from 0 to 90 s: 0.1·(k+1) + 0.01·i.
fn tenths() -> Vec<Series> {
    (0..10)
        .map(|k| {
            let points: Vec<(i64, f64)> = (0..10)
                .map(|i| (10 * i, 0.1 * (k + 1) as f64 + 0.01 * i as f64))
                .collect();
            series(&[("__name__", "h"), ("k", &k.to_string())], &points)
        })
        .collect()
}

/// The values of `query` at `t` as Prometheus formats them, in label
/// order.
fn answer(query: &str, data: &[Series], t: i64) -> Vec<String> {
    vector(instant(query, data, t))
        .into_iter()
        .map(|(_, v)| format_sample_value(v))
        .collect()
}

#[test]
fn aggregations_add_plainly_in_label_order() {
    let g = cancelling();
    // Compensated, or added in the order given, these would be 1.5.
    assert_eq!(answer("sum(g)", &g, 0), ["0"]);
    assert_eq!(answer("avg(g)", &g, 0), ["0"]);
    assert_eq!(answer("stddev(g)", &g, 0), ["8.164965809277261e+99"]);
    assert_eq!(answer("stdvar(g)", &g, 0), ["6.666666666666667e+199"]);
    assert_eq!(answer("sum(g)", &g, 20), ["-9999999999999996"]);
    assert_eq!(answer("avg(g)", &g, 20), ["-3333333333333332"]);
    assert_eq!(answer("stddev(g)", &g, 20), ["4714045207910318"]);
    assert_eq!(answer("stdvar(g)", &g, 20), ["2.2222222222222233e+31"]);
    let h = tenths();
    for (t, sum, avg, stddev) in [
        (0, "5.500000000000001", "0.55", "0.2872281323269014"),
        (50, "6", "0.6000000000000002", "0.2872281323269015"),
        (90, "6.4", "0.6400000000000001", "0.2872281323269014"),
    ] {
        assert_eq!(answer("sum(h)", &h, t), [sum], "sum at {t}");
        assert_eq!(answer("avg(h)", &h, t), [avg], "avg at {t}");
        assert_eq!(answer("stddev(h)", &h, t), [stddev], "stddev at {t}");
    }
    assert_eq!(answer("stdvar(h)", &h, 90), ["0.08249999999999999"]);
}

#[test]
fn over_time_functions_compensate() {
    let g = cancelling();
    assert_eq!(
        answer("sum_over_time(g[1m])", &g, 20),
        ["1e+100", "10000000000000002", "-1e+100"]
    );
    assert_eq!(
        answer("avg_over_time(g[1m])", &g, 20),
        [
            "3.3333333333333337e+99",
            "3333333333333334",
            "-3.3333333333333337e+99"
        ]
    );
    assert_eq!(
        answer("stddev_over_time(g[1m])", &g, 20),
        [
            "4.714045207910317e+99",
            "4714045207910317",
            "4.714045207910317e+99"
        ]
    );
    assert_eq!(
        answer("stdvar_over_time(g[1m])", &g, 20),
        [
            "2.2222222222222222e+199",
            "2.222222222222222e+31",
            "2.2222222222222222e+199"
        ]
    );
    let h = tenths();
    assert_eq!(
        answer("stddev_over_time(h[2m])", &h, 90),
        [
            "0.02872281323269014",
            "0.02872281323269015",
            "0.028722813232690148",
            "0.028722813232690148",
            "0.028722813232690134",
            "0.028722813232690134",
            "0.028722813232690107",
            "0.028722813232690134",
            "0.028722813232690107",
            "0.02872281323269016",
        ]
    );
    assert_eq!(
        answer("stdvar_over_time(h[2m])", &h, 90),
        [
            "0.0008249999999999999",
            "0.0008250000000000004",
            "0.0008250000000000002",
            "0.0008250000000000002",
            "0.0008249999999999996",
            "0.0008249999999999996",
            "0.0008249999999999979",
            "0.0008249999999999996",
            "0.0008249999999999979",
            "0.0008250000000000009",
        ]
    );
    assert_eq!(
        answer("sum_over_time(h[2m])", &h, 90),
        [
            "1.4500000000000002",
            "2.45",
            "3.4500000000000006",
            "4.45",
            "5.45",
            "6.450000000000001",
            "7.450000000000001",
            "8.450000000000001",
            "9.45",
            "10.450000000000001",
        ]
    );
    assert_eq!(
        answer("avg_over_time(h[2m])", &h, 90),
        [
            "0.145",
            "0.245",
            "0.34500000000000003",
            "0.445",
            "0.545",
            "0.6450000000000001",
            "0.7450000000000001",
            "0.8450000000000001",
            "0.9450000000000001",
            "1.0450000000000002",
        ]
    );
}

/// A range query's aggregation of a range function (`columns.rs`, a
/// series at a time) adds in the same order as the step-by-step one.
#[test]
fn sums_across_steps_are_the_same_bits() {
    let g = cancelling();
    let Ok(QueryResult::Matrix(m)) = range("sum(last_over_time(g[5s]))", &g, 0, 20, 10) else {
        panic!("not a matrix");
    };
    let values: Vec<String> = m[0]
        .points
        .iter()
        .map(|p| format_sample_value(p.1))
        .collect();
    assert_eq!(values, ["0", "10000000000000000", "-9999999999999996"]);
}
