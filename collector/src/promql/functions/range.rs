//! Functions over a range vector (a matrix selector or a subquery),
//! one output sample per series: `rate` and friends with Prometheus's
//! extrapolation and counter-reset rules, `deriv`/`predict_linear` by
//! least squares, and the `*_over_time` family; and the running values of
//! the aggregations that reduce a group to one number.
//!
//! Pure arithmetic over `(ms, value)` slices; the facts (formulas, edge
//! cases, which sums are Kahan-Babuška and which plain) are Prometheus
//! 2.42's `promql/functions.go` and `engine.go`: the `*_over_time`
//! functions and the regressions compensate their sums, the `sum`, `avg`,
//! `stddev` and `stdvar` aggregations add plainly. The same inputs give
//! the same bits only in the same order, so both add in Prometheus's
//! order (a window's samples by time, a group's members as they come).

/// `rate`, `increase` (`is_counter`) and `delta`, as Prometheus's
/// `extrapolatedRate`: the difference between the first and last sample
/// in the window (plus every counter reset), extrapolated to the window's
/// edges when they are near (within 1.1 average intervals, else half an
/// interval), and for counters never below zero. `None` with fewer than
/// two samples.
pub fn extrapolated_rate(
    points: &[(i64, f64)],
    window_start: i64,
    window_end: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let first = points[0];
    let last = points[points.len() - 1];
    let mut result = last.1 - first.1;
    if is_counter {
        let mut prev = 0.0;
        for &(_, v) in points {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    Some(extrapolate(
        first,
        last,
        points.len(),
        result,
        (window_start, window_end),
        is_counter,
        is_rate,
    ))
}

/// The rest of [`extrapolated_rate`], from what it needs of the window:
/// its first and last sample, how many it holds (at least two), and
/// `result`, the last value less the first plus, for a counter, the value
/// before every reset (added in time order).
pub fn extrapolate(
    (first_t, first_v): (i64, f64),
    (last_t, _): (i64, f64),
    n: usize,
    mut result: f64,
    (window_start, window_end): (i64, i64),
    is_counter: bool,
    is_rate: bool,
) -> f64 {
    let mut to_start = (first_t - window_start) as f64 / 1000.0;
    let to_end = (window_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let average = sampled / (n - 1) as f64;
    if is_counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    result *= interval / sampled;
    if is_rate {
        result /= (window_end - window_start) as f64 / 1000.0;
    }
    result
}

/// `irate` (`is_rate`) and `idelta`: from the last two samples.
pub fn instant_value(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (prev_t, prev_v) = points[points.len() - 2];
    let (last_t, last_v) = points[points.len() - 1];
    let mut result = if is_rate && last_v < prev_v {
        // A counter reset: the counter counted up from zero.
        last_v
    } else {
        last_v - prev_v
    };
    let interval = last_t - prev_t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Kahan-Babuška summation step: `(sum, compensation)` after adding `inc`.
pub fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Least-squares slope and intercept (at `intercept_t`) of the samples,
/// x in seconds. A constant series has slope 0 (NaN for an infinite one).
pub fn linear_regression(points: &[(i64, f64)], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = points.first().map_or(0.0, |p| p.1);
    let mut const_y = true;
    for (i, &(t, v)) in points.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1000.0;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov_xy = sxy - sx * sy / n;
    let var_x = sx2 - sx * sx / n;
    let slope = cov_xy / var_x;
    let intercept = sy / n - slope * sx / n;
    (slope, intercept)
}

/// The φ-quantile of `values` (sorted here), interpolating between the
/// two nearest ranks; φ outside [0, 1] gives ∓Inf, NaN gives NaN.
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// An `*_over_time` function of the window's samples (never empty).
pub fn over_time(name: &str, points: &[(i64, f64)], q: f64) -> Option<f64> {
    let values = points.iter().map(|p| p.1);
    Some(match name {
        "count_over_time" => points.len() as f64,
        "present_over_time" => 1.0,
        "last_over_time" => points.last()?.1,
        "sum_over_time" => sum(values),
        "avg_over_time" => mean(values),
        "min_over_time" => values.fold(f64::NAN, |m, v| if v < m || m.is_nan() { v } else { m }),
        "max_over_time" => values.fold(f64::NAN, |m, v| if v > m || m.is_nan() { v } else { m }),
        "stddev_over_time" => variance(values).sqrt(),
        "stdvar_over_time" => variance(values),
        "quantile_over_time" => quantile(q, &mut values.collect::<Vec<_>>()),
        "changes" => {
            let mut n = 0.0;
            for w in points.windows(2) {
                let (a, b) = (w[0].1, w[1].1);
                if a != b && !(a.is_nan() && b.is_nan()) {
                    n += 1.0;
                }
            }
            n
        }
        "resets" => points.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64,
        _ => return None,
    })
}

/// A Kahan-Babuška sum kept as values arrive (`sum_over_time`).
#[derive(Debug, Clone, Copy, Default)]
pub struct KahanSum {
    sum: f64,
    c: f64,
}

impl KahanSum {
    pub fn add(&mut self, v: f64) {
        (self.sum, self.c) = kahan_inc(v, self.sum, self.c);
    }

    /// The sum; an infinite one as it is (its compensation is NaN once
    /// an infinity was added), as Prometheus's `sum_over_time`.
    pub fn value(&self) -> f64 {
        if self.sum.is_infinite() {
            self.sum
        } else {
            self.sum + self.c
        }
    }
}

/// The mean as Prometheus's `avg_over_time` computes it, kept as values
/// arrive: incrementally, so that large values do not overflow, each step
/// compensated (Kahan-Babuška), infinities kept as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean {
    mean: f64,
    count: f64,
    c: f64,
}

impl Mean {
    pub fn add(&mut self, v: f64) {
        self.count += 1.0;
        if self.mean.is_infinite() {
            if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                return;
            }
            if !v.is_infinite() && !v.is_nan() {
                return;
            }
        }
        (self.mean, self.c) = kahan_inc(v / self.count - self.mean / self.count, self.mean, self.c);
    }

    pub fn value(&self) -> f64 {
        if self.mean.is_infinite() {
            self.mean
        } else {
            self.mean + self.c
        }
    }
}

/// The population variance of a group as Prometheus 2.42's `stddev` and
/// `stdvar` aggregations keep it: Welford's method in plain float
/// arithmetic, the first member starting the group (mean `v`, no spread),
/// so that a group of one NaN or infinite value has variance 0, not NaN.
#[derive(Debug, Clone, Copy, Default)]
pub struct Variance {
    count: f64,
    mean: f64,
    aux: f64,
}

impl Variance {
    pub fn add(&mut self, v: f64) {
        if self.count == 0.0 {
            *self = Variance {
                count: 1.0,
                mean: v,
                aux: 0.0,
            };
            return;
        }
        self.count += 1.0;
        let delta = v - self.mean;
        self.mean += delta / self.count;
        self.aux += delta * (v - self.mean);
    }

    pub fn value(&self) -> f64 {
        self.aux / self.count
    }
}

/// The population variance of `values` as `stddev_over_time` and
/// `stdvar_over_time` compute it: Welford's method from zero, its mean and
/// its sum of squares each a Kahan-Babuška sum.
pub fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// A sum as Prometheus 2.42's `sum` aggregation adds: plainly, in input
/// order, from the first member (so one `-0` stays `-0`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainSum(Option<f64>);

impl PlainSum {
    pub fn add(&mut self, v: f64) {
        self.0 = Some(self.0.map_or(v, |s| s + v));
    }

    pub fn value(&self) -> f64 {
        self.0.unwrap_or(0.0)
    }
}

/// A mean as Prometheus 2.42's `avg` aggregation keeps it: incremental,
/// in plain float arithmetic, from the first member; infinities stay.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainMean {
    mean: f64,
    count: f64,
}

impl PlainMean {
    pub fn add(&mut self, v: f64) {
        self.count += 1.0;
        if self.count == 1.0 {
            self.mean = v;
            return;
        }
        if self.mean.is_infinite() {
            if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                return;
            }
            if !v.is_infinite() && !v.is_nan() {
                return;
            }
        }
        self.mean += v / self.count - self.mean / self.count;
    }

    pub fn value(&self) -> f64 {
        self.mean
    }
}

/// The sum of `values` ([`KahanSum`]).
pub fn sum(values: impl Iterator<Item = f64>) -> f64 {
    let mut s = KahanSum::default();
    values.for_each(|v| s.add(v));
    s.value()
}

/// The mean of `values` ([`Mean`]).
pub fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let mut m = Mean::default();
    values.for_each(|v| m.add(v));
    m.value()
}
