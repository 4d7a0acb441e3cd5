//! A device's series limit (`max_series_per_device`): which series of the
//! device are let through, and how many readings of the others were
//! dropped. Owned by the device task; nothing else sees it.
//!
//! Every series a device brings is kept for the life of the agent (the
//! uplink's series ids and the spool's dictionary hold it for the epoch),
//! so a device whose labels churn (a request id in a label) would grow the
//! agent without bound. The limit stops that where series are made: the
//! first `max` distinct series of a device pass, readings of any further
//! new one are dropped, counted, and the first drop is logged.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::warn;

use crate::reading::{Reading, SeriesKey};

/// The device's own series that always pass and count toward the limit:
/// `up` and `series_dropped_total`.
pub(super) const OWN_SERIES: usize = 2;

/// The series of one device let through so far.
#[derive(Debug)]
pub(super) struct SeriesLimit {
    /// Most series of the driver (the limit less [`OWN_SERIES`]).
    max: usize,
    /// The series let through, by content.
    known: HashSet<Arc<SeriesKey>>,
    /// Addresses of the series of the last poll, in order. A poll brings
    /// its series in the same order in the same `Arc`s, so a pointer
    /// comparison settles most readings without hashing the key. An address
    /// here belongs to an `Arc` held in `known`, so it is never reused for
    /// another series while it is here.
    order: Vec<usize>,
    /// Readings dropped because their series was beyond the limit.
    dropped: u64,
    logged: bool,
}

impl SeriesLimit {
    /// The limit of a device allowed `max_series` series, its own included.
    pub(super) fn new(max_series: usize) -> Self {
        SeriesLimit {
            max: max_series.saturating_sub(OWN_SERIES),
            known: HashSet::new(),
            order: Vec::new(),
            dropped: 0,
            logged: false,
        }
    }

    /// Readings dropped so far.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Most series of the driver let through.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// Counts readings dropped before they became readings (a series the
    /// device task did not even build because the limit was reached).
    pub(super) fn count_dropped(&mut self, device: &str, n: u64) {
        if n > 0 {
            self.dropped += n;
            self.log_once(device);
        }
    }

    /// Removes the readings of series beyond the limit from `readings`;
    /// returns how many it removed.
    pub(super) fn admit(&mut self, device: &str, readings: &mut Vec<Reading>) -> u64 {
        let SeriesLimit {
            max, known, order, ..
        } = self;
        let before = readings.len();
        let mut matched = 0;
        // This poll's order, once it stops following the last one.
        let mut diverged: Option<Vec<usize>> = None;
        readings.retain(|r| {
            let addr = Arc::as_ptr(&r.series) as usize;
            if diverged.is_none() && order.get(matched) == Some(&addr) {
                matched += 1;
                return true;
            }
            let keep = match known.get(&r.series) {
                Some(k) => {
                    if !Arc::ptr_eq(k, &r.series) {
                        // Keep the `Arc` in use, so its address stays valid.
                        known.replace(r.series.clone());
                    }
                    true
                }
                None if known.len() < *max => {
                    known.insert(r.series.clone());
                    true
                }
                None => false,
            };
            if keep {
                diverged
                    .get_or_insert_with(|| order[..matched].to_vec())
                    .push(addr);
            }
            keep
        });
        match diverged {
            Some(new) => *order = new,
            None => order.truncate(matched),
        }
        let removed = (before - readings.len()) as u64;
        self.count_dropped(device, removed);
        removed
    }

    fn log_once(&mut self, device: &str) {
        if !self.logged {
            self.logged = true;
            warn!(
                device = %device,
                max_series_per_device = self.max + OWN_SERIES,
                "device reached max_series_per_device: readings of its further new series are dropped (counted in its series_dropped_total; logged once)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Value, series};

    fn reading(key: &Arc<SeriesKey>) -> Reading {
        Reading {
            series: key.clone(),
            ts_ns: 1,
            value: Value::I64(1),
        }
    }

    #[test]
    fn the_first_series_pass_and_later_new_ones_are_dropped_and_counted() {
        let keys: Vec<_> = (0..6).map(|i| series("d", &format!("m{i}"), "")).collect();
        // Room for 3 driver series.
        let mut limit = SeriesLimit::new(3 + OWN_SERIES);
        let mut poll: Vec<_> = keys[..2].iter().map(reading).collect();
        assert_eq!(limit.admit("d", &mut poll), 0);
        // The same series again (pointer path), then in another order and
        // in new `Arc`s (content path), then with new ones past the limit.
        let mut poll: Vec<_> = keys[..2].iter().map(reading).collect();
        assert_eq!(limit.admit("d", &mut poll), 0);
        let copies: Vec<_> = keys[..2]
            .iter()
            .rev()
            .map(|k| Arc::new((**k).clone()))
            .collect();
        let mut poll: Vec<_> = copies.iter().map(reading).collect();
        assert_eq!(limit.admit("d", &mut poll), 0);
        let mut poll: Vec<_> = keys.iter().map(reading).collect();
        assert_eq!(limit.admit("d", &mut poll), 3);
        let kept: Vec<&str> = poll.iter().map(|r| &*r.series.metric).collect();
        assert_eq!(kept, ["m0", "m1", "m2"]);
        assert_eq!(limit.known.len(), limit.max());
        // Known series keep passing; the refused ones stay refused.
        let mut poll: Vec<_> = keys.iter().rev().map(reading).collect();
        assert_eq!(limit.admit("d", &mut poll), 3);
        assert_eq!(poll.len(), 3);
        assert_eq!(limit.dropped(), 6);
    }
}
