//! The open batch: readings taken from the scheduler are gathered here and
//! sealed into the spool when the batch is full or old enough; from then on
//! they are taken.

use tokio::time::Instant;
use tracing::{error, warn};

use crate::reading::{Reading, SeriesKey};
use crate::spool::Appended;

use super::Uplink;
use super::encode::{Encoded, encode_batch};
use super::seams::Failpoint;

impl Uplink {
    pub(super) fn push(&mut self, readings: Vec<Reading>) {
        if self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        self.open.extend(readings);
        if self.open.len() >= self.config.batch_max_readings {
            self.seal();
        }
    }

    /// Appends the open batch to the spool: from here on it is taken.
    ///
    /// A durable append waits for the disk (`fdatasync`, sometimes a
    /// directory sync), which can take hundreds of milliseconds on a busy
    /// disk. The uplink must wait for it (nothing is sent or acked before it
    /// is durable, and the dictionary goes before the records that use it),
    /// but the scheduler's tasks must not: on the agent's multi-threaded
    /// runtime the wait runs in [`tokio::task::block_in_place`], which hands
    /// this worker's other tasks to another thread first. Ordering stays as
    /// it was, since the uplink itself still does one thing at a time.
    pub(super) fn seal(&mut self) {
        if self.open.is_empty() {
            self.open_since = None;
            self.blocked = false;
            self.note_spool();
            return;
        }
        if self.spool.syncs() {
            off_the_workers(|| self.seal_now());
        } else {
            self.seal_now();
        }
    }

    /// Tells the simulation's failpoint that the first `n` open readings
    /// were counted as dropped without being spooled.
    fn not_spooled(&self, n: usize) {
        if let Some(f) = &self.failpoints {
            (f.on)(Failpoint::NotSpooled {
                readings: &self.open[..n],
            });
        }
    }

    fn seal_now(&mut self) {
        // A poll can bring more readings than a batch may hold (a large
        // scrape): seal them as several batches, so the collector never
        // sees a batch over its limit.
        while !self.open.is_empty() {
            let n = self.open.len().min(self.config.batch_max_readings.max(1));
            let known = self.ids.len();
            let encoded = encode_batch(&mut self.ids, &self.open[..n]);
            self.count_invalid(&encoded);
            let count = encoded.readings;
            // New series go to the dictionary first, durable before the
            // record that uses them; room is made for both together.
            let new: Vec<&SeriesKey> = self.ids.keys[known as usize..]
                .iter()
                .map(|k| &**k)
                .collect();
            let appended =
                self.spool
                    .append_with_series(&new, &encoded.bytes, count, encoded.max_series);
            // Ids whose keys did not reach the dictionary (the batch was
            // not stored) are handed out again.
            if self.spool.series_count() < self.ids.len() {
                self.ids.truncate(self.spool.series_count());
            }
            match appended {
                Ok(Appended::Stored(seq)) => {
                    self.stats.sealed_batches += 1;
                    if let Some(f) = &self.failpoints {
                        (f.on)(Failpoint::Spooled {
                            epoch: self.spool.epoch(),
                            seq,
                            readings: &self.open[..n],
                        });
                    }
                }
                // The spool counted them as dropped.
                Ok(Appended::Dropped) => self.not_spooled(n),
                // `block`: keep the readings and stop taking more until acks
                // make room; the scheduler's polls wait meanwhile.
                Ok(Appended::Full) => {
                    if !self.blocked {
                        warn!(
                            readings = self.open.len(),
                            "spool full: intake paused until the collector acks"
                        );
                    }
                    self.blocked = true;
                    self.note_spool();
                    return;
                }
                Err(e) => {
                    error!(error = %e, readings = count, "spool append failed; readings lost (counted as dropped)");
                    self.stats.spool_errors += u64::from(count);
                    if let Err(e) = self.spool.count_lost(u64::from(count)) {
                        error!(error = %e, "cannot record the loss in the spool either");
                    }
                    self.not_spooled(n);
                }
            }
            self.open.drain(..n);
        }
        self.open_since = None;
        self.blocked = false;
        self.note_spool();
        // The dictionary just grew: the floor is taken on time even when
        // the flush tick is late.
        self.compaction
            .tick(self.spool.series_bytes(), self.spool.max_bytes());
    }

    /// Copies what the spool counts into the stats: drops (this epoch's,
    /// plus those of the epochs this process rolled over) and the
    /// dictionary's size.
    pub(super) fn note_spool(&mut self) {
        self.stats.dropped_readings = self.dropped_before_epoch + self.spool.dropped();
        self.stats.series_dictionary_bytes = self.spool.series_bytes();
    }

    /// Counts the readings spooled as `invalid_series` failures; the first
    /// is logged (the failure message names the series and the cause, and
    /// every later one is stored with its own).
    fn count_invalid(&mut self, encoded: &Encoded) {
        if encoded.invalid == 0 {
            return;
        }
        if self.stats.invalid_series_readings == 0
            && let Some(message) = &encoded.first_invalid
        {
            warn!(
                readings = encoded.invalid,
                cause = %message,
                "readings of series the collector would refuse are spooled as failed readings of their device's invalid_series series (logged once, counted in invalid_series_readings)"
            );
        }
        self.stats.invalid_series_readings += encoded.invalid;
    }
}

/// Runs `f`, which blocks on the disk, without holding up the other tasks
/// of the current tokio worker: through [`tokio::task::block_in_place`] on a
/// multi-threaded runtime (the agent's), inline elsewhere (a current-thread
/// runtime, as in tests, has no other worker to hand its tasks to, and
/// `block_in_place` would panic there).
pub(super) fn off_the_workers<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
