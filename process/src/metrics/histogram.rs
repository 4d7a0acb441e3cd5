//! A histogram for hot paths: fixed bucket bounds chosen at creation, one
//! relaxed `AtomicU64` per bucket and one for the sum, so an observation
//! is a binary search over the bounds and two atomic adds: no lock, no
//! allocation. (`prometheus-client`'s own `Histogram` takes a mutex per
//! observation.) Encodes as a Prometheus histogram through
//! `prometheus-client`, so it can live in a registry or a `Family`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bucket bounds in seconds for durations from 100 µs to a minute (polls,
/// lateness, acks, commits).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// See the module doc. Clones share the same counts (a clone is the
/// handle an owner keeps while the registry keeps another).
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending, finite; `+Inf` is implicit.
    bounds: Box<[f64]>,
    /// The same bounds in nanounits (rounded), for [`Histogram::observe_duration`]:
    /// a duration's bucket is found without converting it to a float.
    bounds_nano: Box<[u64]>,
    /// Per bucket (not cumulative); one more than `bounds`, for `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations in nanounits (ns for durations), so it can
    /// be added to atomically without a compare-and-swap loop.
    sum_nano: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (sorted here; non-finite bounds
    /// are left out, `+Inf` is always there).
    pub fn new(bounds: &[f64]) -> Histogram {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        // `as` saturates: negative bounds become 0, huge ones u64::MAX.
        let bounds_nano = bounds.iter().map(|b| (b * 1e9).round() as u64).collect();
        Histogram {
            inner: Arc::new(Inner {
                bounds: bounds.into_boxed_slice(),
                bounds_nano,
                counts,
                sum_nano: AtomicU64::new(0),
            }),
        }
    }

    /// A histogram over [`DURATION_BUCKETS`].
    pub fn durations() -> Histogram {
        Histogram::new(DURATION_BUCKETS)
    }

    /// Records `d` (in seconds, as the bounds are).
    pub fn observe_duration(&self, d: Duration) {
        let ns = d
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()));
        let i = self.inner.bounds_nano.partition_point(|b| *b < ns);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nano.fetch_add(ns, Ordering::Relaxed);
    }

    /// Records `v` (negative and NaN values count as 0 in the sum; they
    /// land in the first bucket).
    pub fn observe(&self, v: f64) {
        let nano = if v > 0.0 { (v * 1e9) as u64 } else { 0 };
        self.record(v, nano);
    }

    fn record(&self, v: f64, nano: u64) {
        let i = self.inner.bounds.partition_point(|b| *b < v);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nano.fetch_add(nano, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observations.
    pub fn sum(&self) -> f64 {
        self.inner.sum_nano.load(Ordering::Relaxed) as f64 / 1e9
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count from the same loads as the buckets, so `_count` always
        // equals the `+Inf` bucket.
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
