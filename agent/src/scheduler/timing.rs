//! When a device polls: the slot of its first poll within the interval, and
//! how long it waits after failed polls (exponential backoff, capped).

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// How long to wait before the next poll after `failures` failed polls in a
/// row: the interval, doubled per failure after the first, capped.
pub(super) fn backoff_delay(interval: Duration, failures: u32, max: Duration) -> Duration {
    if failures <= 1 {
        return interval;
    }
    let factor = 1u32 << (failures - 1).min(20);
    interval.saturating_mul(factor).min(max.max(interval))
}

/// Slots a device's polls may start in, per interval.
const SLOTS: u32 = 100;

/// Shortest slot.
const MIN_SLOT: Duration = Duration::from_millis(1);

/// When, after the scheduler's start, a device with `interval` polls first
/// (and then every interval): one of [`SLOTS`] evenly spaced slots of the
/// interval, drawn at random, so devices are spread over the interval
/// rather than all polling at once, while those of one slot wake together.
/// Spread to the nanosecond instead, 10,000 devices at 1 s woke the
/// runtime's workers for nearly every poll and every answer on its own:
/// thousands of parks and wake-ups a second, the largest part of the
/// agent's CPU per poll after the loopback TCP itself (`cargo xtask bench
/// poll`). A slot of 1 s / 100 = 10 ms is far below the lateness anyone
/// would notice, and the polls of a slot still run concurrently.
pub(super) fn start_offset(interval: Duration) -> Duration {
    let slot = (interval / SLOTS).max(MIN_SLOT);
    let slots = (interval.as_nanos() / slot.as_nanos()).clamp(1, u128::from(SLOTS)) as u32;
    slot * rand::rng().random_range(0..slots)
}

/// The first slot at or after `now` of a schedule laid out from `first`
/// every `interval`: where a device started by a reload begins, so the
/// time the agent ran before it is neither lateness nor skipped polls.
pub(super) fn first_slot_from(first: Instant, interval: Duration, now: Instant) -> Instant {
    if first >= now {
        return first;
    }
    let step = interval.as_nanos().max(1);
    let behind = now.duration_since(first).as_nanos();
    let ticks = behind.div_ceil(step);
    let ahead = u64::try_from(ticks.saturating_mul(step)).unwrap_or(u64::MAX);
    first + Duration::from_nanos(ahead)
}
