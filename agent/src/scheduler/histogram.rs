//! A fixed log-bucket histogram of durations, shared by every device task:
//! one relaxed `AtomicU64` per bucket, so recording is a few instructions
//! and no lock, and the memory never grows.
//!
//! Buckets are in microseconds: exact below 8 µs, then 8 per power of two
//! (each at most 12.5 % wide), up to 2^40 µs (about 12 days); longer
//! durations land in the last bucket. A quantile is the upper bound of the
//! bucket that holds it; the maximum is kept exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: u32 = 8;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Powers of two covered above the exact range.
const OCTAVES: u32 = 40 - SUB_BITS;
const BUCKETS: usize = (SUB + OCTAVES * SUB) as usize;

/// See the module doc.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// Largest duration recorded, in ns.
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.buckets[bucket(ns / 1000)].fetch_add(1, Ordering::Relaxed);
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The largest duration recorded (zero when none).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), capped
    /// at the maximum; zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        // The rank of the quantile, 1-based (nearest-rank method).
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = Duration::from_micros(upper_us(i));
                return upper.min(self.max());
            }
        }
        self.max()
    }
}

/// The bucket of a duration in µs.
fn bucket(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let octave = msb - SUB_BITS;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = (us >> octave) & u64::from(SUB - 1);
    (SUB + octave * SUB) as usize + sub as usize
}

/// The largest µs value bucket `i` holds.
fn upper_us(i: usize) -> u64 {
    let i = i as u64;
    let sub = u64::from(SUB);
    if i < sub {
        return i;
    }
    let octave = (i - sub) / sub;
    let within = (i - sub) % sub;
    ((sub + within + 1) << octave) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_bounds_it() {
        let mut us = 0u64;
        while us < 1 << 40 {
            let b = bucket(us);
            assert!(
                us <= upper_us(b),
                "{us} in bucket {b} (upper {})",
                upper_us(b)
            );
            if b > 0 {
                assert!(us > upper_us(b - 1), "{us} also fits bucket {}", b - 1);
            }
            // Each bucket is at most 1/8 of its values wide.
            assert!(
                upper_us(b) - us <= us / 8 + 1,
                "{us}: upper {}",
                upper_us(b)
            );
            us = us * 17 / 16 + 1;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        // 1..=1000 ms, once each.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), Duration::from_millis(1000));
        for (q, exact_ms) in [(0.5, 500.0), (0.99, 990.0), (1.0, 1000.0)] {
            let got = h.quantile(q).as_secs_f64() * 1e3;
            assert!(
                got >= exact_ms && got <= exact_ms * 1.125 + 0.001,
                "q{q}: {got} ms, exact {exact_ms} ms"
            );
        }
        // The maximum caps the last bucket's upper bound.
        assert_eq!(h.quantile(1.0), Duration::from_millis(1000));
    }
}
