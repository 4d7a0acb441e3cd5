//! How long the uplink waits before the next connect: exponential backoff
//! with full jitter between two bounds.
//!
//! The scheduler's `backoff_delay` (a failing device) is the same doubling
//! without the jitter and with the device's interval as the lower bound;
//! it lives with the scheduler, and [`Backoff::ceiling`] is the shape both
//! follow.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: attempt `n` waits a random time
/// between `min` and `min * 2^n` (at most `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    pub(super) min: Duration,
    pub(super) max: Duration,
}

impl Backoff {
    /// The longest wait of attempt `attempt`: `min * 2^attempt`, capped at
    /// `max` (the exponent stops at 16: `min` times 65,536 is past any
    /// sensible `max`).
    pub(super) fn ceiling(&self, attempt: u32) -> Duration {
        self.min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max)
    }

    /// The wait before attempt `attempt`: uniform between `min` and
    /// [`Backoff::ceiling`], so agents that lost the same collector at the
    /// same moment do not come back together.
    pub(super) fn delay(&self, attempt: u32) -> Duration {
        self.delay_from(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] drawn from `rng` (the simulation's seeded one,
    /// see `UplinkConfig::jitter_seed`).
    pub(super) fn delay_from(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let low = self.min.as_nanos();
        let high = self.ceiling(attempt).as_nanos().max(low);
        let jittered = rng.random_range(low..=high);
        Duration::from_nanos(u64::try_from(jittered).unwrap_or(u64::MAX))
    }
}
