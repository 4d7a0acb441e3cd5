//! When the uplink rolls the spool's epoch to compact the series
//! dictionary, and what the rollover does on the uplink's side.
//!
//! The dictionary (`SERIES`) keeps one key per series of the epoch and
//! counts toward `[spool] max_bytes`; only a new epoch empties it (see
//! `spool/epoch.rs`). A rollover is tried after each ack, and happens when
//!
//! - every record is acked (nothing of the old epoch is ever sent again),
//! - the dictionary's *floor* is known: what it gained in `series_settle`
//!   (2 × the longest device interval + timeout) after the epoch started in
//!   this process, i.e. the series in use plus a little churn, and
//! - the dictionary is over a quarter of `max_bytes` and over twice its
//!   floor, or over three quarters of `max_bytes` whatever its floor.
//!
//! After a restart the dictionary comes from the spool, and the floor
//! counts only what it gained since: the series in use may already be in
//! it, so the floor can be too low and cost one rollover more, after which
//! it is measured on an empty dictionary.
//!
//! The floor makes a rollover wait until the dictionary has at least
//! doubled since the series in use were declared, so declaring them again
//! (what a rollover costs, as an agent restart does) is paid for by at
//! least as much churn, and a large set of series in use does not roll the
//! epoch again and again. Past three quarters of `max_bytes` a rollover
//! beats dropping batches for lack of room. The rollover then forgets the
//! uplink's ids (memory shrinks with the dictionary) and drops the stream:
//! the next one says Hello with the new epoch. Drops of the old epoch that
//! no acked batch reported yet are carried into the new epoch's count
//! (drops are reported per epoch), never waited for: when the dictionary
//! has filled the spool no batch fits, and waiting would last for ever.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::Uplink;
use super::connection::Link;
use super::seal::off_the_workers;
use super::series_ids::SeriesIds;

/// The dictionary's floor, measured once per epoch and process.
#[derive(Debug)]
pub(super) struct Compaction {
    /// How long after the epoch's start the floor is measured.
    settle: Duration,
    /// When the epoch started in this process, and the dictionary's bytes
    /// then.
    started: Instant,
    base: u64,
    /// What the dictionary gained in `settle` after `started`.
    floor: Option<u64>,
    /// The floor alone was over half of `max_bytes` (logged once).
    warned: bool,
}

impl Compaction {
    pub(super) fn new(settle: Duration, series_bytes: u64) -> Self {
        Compaction {
            settle,
            started: Instant::now(),
            base: series_bytes,
            floor: None,
            warned: false,
        }
    }

    /// A reload changed the devices: the series in use may have changed,
    /// so the floor is measured again, `settle` (the new fleet's) from now.
    pub(super) fn resettle(&mut self, settle: Duration) {
        self.settle = settle;
        self.started = Instant::now();
        self.floor = None;
    }

    /// The epoch started again (empty dictionary).
    fn restart(&mut self) {
        self.started = Instant::now();
        self.base = 0;
        self.floor = None;
    }

    /// Measures the floor once `settle` has passed (called on the flush
    /// tick and after each seal, so it is taken on time even while nothing
    /// is acked).
    pub(super) fn tick(&mut self, series_bytes: u64, max_bytes: u64) {
        if self.floor.is_some() || self.started.elapsed() < self.settle {
            return;
        }
        let floor = series_bytes.saturating_sub(self.base);
        self.floor = Some(floor);
        if floor > max_bytes / 2 && !self.warned {
            self.warned = true;
            warn!(
                series_bytes = floor,
                max_bytes,
                "the series in use take more than half of the spool; raise [spool] max_bytes"
            );
        }
    }
}

/// Whether a dictionary of `series_bytes` with this `floor` should be
/// compacted in a spool of `max_bytes` (the spool being all acked).
pub(super) fn should_roll(series_bytes: u64, floor: Option<u64>, max_bytes: u64) -> bool {
    let Some(floor) = floor else {
        return false;
    };
    (series_bytes > max_bytes / 4 && series_bytes > floor.saturating_mul(2))
        || series_bytes > max_bytes / 4 * 3
}

impl Uplink {
    /// Rolls the spool's epoch if it is time (see the module's comment).
    /// Cheap when it is not: a few comparisons after an ack.
    pub(super) fn maybe_roll(&mut self, link: &mut Link) {
        let max_bytes = self.spool.max_bytes();
        // Not while shutting down (the scheduler is gone): a new stream
        // would only delay the stop; the next start can roll.
        if !should_roll(self.spool.series_bytes(), self.compaction.floor, max_bytes)
            || self.intake.is_closed()
            || self.spool.first_unacked().is_some()
        {
            return;
        }
        let floor = self.compaction.floor.unwrap_or(0);
        // Drops no committed batch has reported yet (none could be stored
        // since, e.g. while the dictionary filled the spool) are carried
        // into the new epoch rather than waited for: waiting could last
        // for ever when no batch fits any more.
        let carry = self.spool.dropped().saturating_sub(self.dropped_acked);
        let result = if self.spool.syncs() {
            off_the_workers(|| self.spool.roll_epoch_carrying(carry))
        } else {
            self.spool.roll_epoch_carrying(carry)
        };
        // Whatever step it reached: ids the dictionary lost go, and a
        // stream of the old ids (or the old epoch) must not carry on.
        if self.spool.series_count() < self.ids.len() {
            self.ids = SeriesIds::default();
            link.restart();
        }
        self.compaction.restart();
        match result {
            Ok(r) => {
                info!(
                    old_epoch = format!("{:016x}", r.old_epoch),
                    new_epoch = format!("{:016x}", r.new_epoch),
                    series = r.series,
                    series_bytes = r.series_bytes,
                    floor_bytes = floor,
                    max_bytes,
                    "spool epoch rolled over to compact the series dictionary"
                );
                self.stats.epoch_rollovers += 1;
                self.dropped_before_epoch += r.dropped - r.carried;
                self.dropped_acked = 0;
                self.dropped_sent = (0, 0);
                link.restart();
            }
            Err(e) => error!(error = %e, "spool epoch rollover failed; trying again later"),
        }
        self.note_spool();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tributary_proto::v1 as pb;

    use super::super::connection::Link;
    use super::super::{Collectors, Uplink, UplinkConfig};
    use super::should_roll;
    use crate::reading::{Labels, Reading, SeriesKey, Value};
    use crate::spool::{FullPolicy, Spool, SpoolOptions};

    const MAX: u64 = 1 << 20;

    #[test]
    fn a_rollover_waits_for_the_floor_then_for_the_dictionary_to_double() {
        // Before the floor is known: never (the series in use may still be
        // coming in after the last rollover).
        assert!(!should_roll(MAX, None, MAX));
        // A quarter of the spool is the least worth compacting.
        assert!(!should_roll(MAX / 4, Some(0), MAX));
        assert!(should_roll(MAX / 4 + 1, Some(0), MAX));
        // With many series in use, only once the dictionary has doubled.
        assert!(!should_roll(MAX / 2, Some(MAX / 4), MAX));
        assert!(should_roll(MAX / 2 + 1, Some(MAX / 4), MAX));
        // Nearly full: a rollover beats dropping batches, floor or not.
        assert!(!should_roll(MAX / 4 * 3, Some(MAX / 2), MAX));
        assert!(should_roll(MAX / 4 * 3 + 1, Some(MAX / 2), MAX));
    }

    /// One reading each of `n` series of device `d`.
    fn readings(n: usize) -> Vec<Reading> {
        (0..n)
            .map(|i| Reading {
                series: Arc::new(SeriesKey {
                    device: "d".into(),
                    metric: format!("metric_{i}").into(),
                    labels: Labels::default(),
                    unit: "V".into(),
                }),
                ts_ns: 1,
                value: Value::I64(i as i64),
            })
            .collect()
    }

    /// Batch 2 was committed on an old stream with 2 drops, its ack lost;
    /// resent on the new stream with 5 before the Welcome came, which says
    /// 2 is committed: the 3 later drops are still unreported, so a
    /// rollover carries them.
    #[test]
    fn a_welcome_acks_the_drop_count_the_store_holds() {
        let dir = std::env::temp_dir().join(format!(
            "tributary-uplink-welcome-drops-{}-{}",
            std::process::id(),
            crate::reading::now_ns()
        ));
        let (spool, _) = Spool::open(SpoolOptions {
            dir: dir.clone(),
            max_bytes: 1 << 20,
            policy: FullPolicy::DropOldest,
            sync: false,
        })
        .expect("spool");
        let config = UplinkConfig::new(
            "a".into(),
            Collectors::new(vec!["http://x".into()]).unwrap(),
        );
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let (mut u, _) = Uplink::new(config, rx, spool);
        u.spool.count_lost(2).unwrap();
        for _ in 0..2 {
            u.push(readings(1));
            u.seal();
        }
        u.dropped_sent = (1, 2);
        u.acked(1);
        assert_eq!(u.dropped_acked, 2);
        u.spool.count_lost(3).unwrap();
        u.dropped_sent = (2, 5);
        u.welcomed(2, &[], Some(2));
        assert_eq!(u.dropped_acked, 2, "the resent count is not committed");
        assert_eq!(u.spool.first_unacked(), None);
        // An older collector says nothing of drops: the newest batch's count.
        u.welcomed(2, &[], None);
        assert_eq!(u.dropped_acked, 5);
        // Never above what the spool counted.
        u.welcomed(2, &[], Some(9));
        assert_eq!(u.dropped_acked, 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rollover_forgets_the_ids_and_says_hello_with_the_new_epoch() {
        let dir = std::env::temp_dir().join(format!(
            "tributary-uplink-rollover-{}-{}",
            std::process::id(),
            crate::reading::now_ns()
        ));
        let max_bytes = 64 * 1024;
        let (spool, _) = Spool::open(SpoolOptions {
            dir: dir.clone(),
            max_bytes,
            policy: FullPolicy::DropOldest,
            sync: false,
        })
        .expect("spool");
        let mut config = UplinkConfig::new(
            "a".into(),
            Collectors::new(vec!["http://x".into()]).unwrap(),
        );
        config.series_settle = Duration::ZERO;
        // The intake stays open: no rollover happens at shutdown.
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let (mut u, _) = Uplink::new(config, rx, spool);
        let mut link = Link::new(u.config.clone());
        // The floor: nothing in use yet.
        u.compaction.tick(u.spool.series_bytes(), max_bytes);
        u.push(readings(600));
        u.seal();
        let old = u.spool.epoch();
        assert!(u.spool.series_bytes() > max_bytes / 4);
        assert_eq!(u.ids.len(), 600);
        u.maybe_roll(&mut link);
        assert_eq!(u.spool.epoch(), old, "not while batch 1 is unacked");
        u.acked(1);
        u.maybe_roll(&mut link);
        let new = u.spool.epoch();
        assert_ne!(new, old);
        assert_eq!((u.ids.len(), u.spool.series_count()), (0, 0));
        assert_eq!(u.ids.by_key.len(), 0, "the map is gone too");
        assert_eq!(
            (u.stats.epoch_rollovers, u.stats.series_dictionary_bytes),
            (1, 0)
        );
        match u.hello().frame {
            Some(pb::agent_frame::Frame::Hello(h)) => assert_eq!((h.epoch, h.dropped), (new, 0)),
            other => panic!("not a hello: {other:?}"),
        }
        // The series come back with ids from 1, numbering goes on.
        u.push(readings(2));
        u.seal();
        assert_eq!((u.ids.len(), u.spool.last_seq()), (2, 2));
        // Not again until the dictionary has grown past its floor.
        u.acked(2);
        u.maybe_roll(&mut link);
        assert_eq!(u.spool.epoch(), new);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
