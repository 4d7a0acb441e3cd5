//! A new epoch while the spool runs, which compacts the series dictionary
//! (`SERIES` grows by one key per new series of the epoch and only a new
//! epoch empties it), and the epoch-tagged drop count (`DROPPED`).
//!
//! A rollover needs every record acked: then nothing of the old epoch will
//! ever be sent again, so no batch can be stored under both epochs. Its
//! steps on disk, each durable before the next:
//!
//! 1. every segment is deleted (all acked) and the directory synced;
//! 2. `SERIES` is cut to zero bytes and synced;
//! 3. `EPOCH` is replaced atomically (temp file, fsync, rename, directory
//!    fsync): the commit point;
//! 4. `DROPPED` is written as `0 <new epoch>`.
//!
//! A crash before 3 leaves the old epoch without records, with the old
//! dictionary or an empty one: no record uses it, so either is consistent
//! (a later stream declares what it uses again). A crash after 3 leaves the
//! new epoch: `DROPPED` still names the old one and therefore reads as 0,
//! so the old epoch's drops (already reported under it) are not reported
//! twice. `SEQ` is kept: numbering goes on above the old epoch's, so a
//! sequence is never reused in the directory at all.
//!
//! If writing `EPOCH` fails, the file may hold either epoch (the rename may
//! have happened before the directory's fsync failed). The spool goes on in
//! the new epoch, which has no record, and writes `EPOCH` again before its
//! first record is appended ([`Spool::sync_epoch`]): until that succeeds no
//! record is stored, so none is ever sent under an epoch a restart reads
//! differently.

use std::fs;
use std::io;
use std::path::Path;

use tracing::warn;

use super::durable::{sync_dir, write_atomic};
use super::{Spool, SpoolError, io_err};

/// What a rollover changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollover {
    pub old_epoch: u64,
    pub new_epoch: u64,
    /// Entries and bytes of the dictionary emptied.
    pub series: u32,
    pub series_bytes: u64,
    /// Readings the old epoch dropped.
    pub dropped: u64,
    /// Of those, the ones the collector had not been told of: the new
    /// epoch starts with them as its own drop count, so they are reported
    /// once, under it.
    pub carried: u64,
}

/// How far a rollover goes; tests stop it after a step to play a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Step {
    SegmentsDeleted,
    SeriesEmptied,
    EpochWritten,
    Done,
}

impl Spool {
    /// Starts a new epoch: deletes the (all acked) segments, empties the
    /// dictionary and writes a new `EPOCH`, in the crash-safe order of this
    /// module's comment. Refused while a record is unacked. On an error the
    /// spool is left at the last step done, which is consistent: the
    /// caller compares [`Spool::epoch`] and [`Spool::series_count`] with
    /// what it had.
    pub fn roll_epoch(&mut self) -> Result<Rollover, SpoolError> {
        self.roll_epoch_carrying(0)
    }

    /// [`Spool::roll_epoch`], the new epoch starting with `carry` dropped
    /// readings (at most the old epoch's): drops of the old epoch no
    /// committed batch reported yet, so that they are reported under the
    /// new one instead of never.
    pub fn roll_epoch_carrying(&mut self, carry: u64) -> Result<Rollover, SpoolError> {
        self.roll_epoch_until(Step::Done, carry)
    }

    pub(super) fn roll_epoch_until(
        &mut self,
        last: Step,
        carry: u64,
    ) -> Result<Rollover, SpoolError> {
        if let Some(seq) = self.first_unacked() {
            return Err(SpoolError::Invalid {
                path: self.opts.dir.clone(),
                message: format!("a new epoch cannot start while record {seq} is unacked"),
            });
        }
        let rollover = Rollover {
            old_epoch: self.epoch,
            new_epoch: new_epoch_id(Some(self.epoch)),
            series: self.series_count,
            series_bytes: self.series_bytes,
            dropped: self.dropped,
            carried: carry.min(self.dropped),
        };
        // 1. The segments (every record in them is acked).
        self.tail = None;
        while let Some(seg) = self.segments.front() {
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&seg.path)(e)),
            }
            self.total_bytes -= seg.size;
            self.segments.pop_front();
        }
        sync_dir(&self.opts.dir)?;
        if last == Step::SegmentsDeleted {
            return Ok(rollover);
        }
        // 2. The dictionary.
        let series_path = self.opts.dir.join("SERIES");
        self.series_file
            .set_len(0)
            .and_then(|()| self.series_file.sync_all())
            .map_err(io_err(&series_path))?;
        self.series_bytes = 0;
        self.series_count = 0;
        self.loaded_series = Vec::new();
        if last == Step::SeriesEmptied {
            return Ok(rollover);
        }
        // 3. The commit point. A failed write (even after its rename, when
        // only the directory's fsync failed) leaves the file on disk
        // unknown: the spool goes on in the new epoch, which holds no
        // record yet, and writes `EPOCH` again before its first record.
        self.epoch = rollover.new_epoch;
        // Everything of the old epoch is acked or gone; the new one's set
        // starts above it (numbering goes on).
        self.acked.reset_to(self.last_seq());
        self.acked_dirty = true;
        self.in_flight.clear();
        self.dropped = rollover.carried;
        if let Err(e) = write_epoch(&self.opts.dir, rollover.new_epoch) {
            warn!(error = %e, "spool: the new epoch could not be written; it is written again before the next record");
            self.epoch_unsynced = true;
        }
        if last == Step::EpochWritten {
            return Ok(rollover);
        }
        // 4. The new epoch's drop count: the carried drops (a crash before
        // this step loses them: `DROPPED` of another epoch reads as 0).
        if let Err(e) = write_dropped(&self.opts.dir, self.dropped, self.epoch) {
            warn!(error = %e, carried = self.dropped, "spool: the drop count of the new epoch could not be written (after a restart it reads as 0)");
        }
        Ok(rollover)
    }
}

/// A random epoch id, other than `old`.
pub(super) fn new_epoch_id(old: Option<u64>) -> u64 {
    loop {
        let e: u64 = rand::random();
        if Some(e) != old {
            return e;
        }
    }
}

/// Writes `EPOCH` atomically.
pub(super) fn write_epoch(dir: &Path, epoch: u64) -> Result<(), SpoolError> {
    write_atomic(dir, "EPOCH", format!("{epoch:016x}\n"))
}

impl Spool {
    /// Writes `EPOCH` again if a rollover's write of it failed: called
    /// before a record is appended, so that no record exists in an epoch a
    /// restart could read differently.
    pub(super) fn sync_epoch(&mut self) -> Result<(), SpoolError> {
        if self.epoch_unsynced {
            write_epoch(&self.opts.dir, self.epoch)?;
            self.epoch_unsynced = false;
        }
        Ok(())
    }
}

/// Writes `DROPPED` atomically: `dropped` readings of `epoch`.
pub(super) fn write_dropped(dir: &Path, dropped: u64, epoch: u64) -> Result<(), SpoolError> {
    write_atomic(dir, "DROPPED", format!("{dropped} {epoch:016x}\n"))
}

/// The readings of `epoch` dropped, from `DROPPED`: 0 when there is none,
/// it names another epoch, or it does not parse (logged); a count without
/// an epoch (an older agent's) is this epoch's.
pub(super) fn read_dropped(dir: &Path, epoch: u64) -> Result<u64, SpoolError> {
    let path = dir.join("DROPPED");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut words = text.split_whitespace();
    let count = words.next().and_then(|w| w.parse::<u64>().ok());
    let of = words.next().map(|w| u64::from_str_radix(w, 16).ok());
    match (count, of) {
        (Some(n), None) => Ok(n),
        (Some(n), Some(Some(e))) if e == epoch => Ok(n),
        (Some(_), Some(Some(_))) => Ok(0),
        _ => {
            warn!(path = %path.display(), "unreadable spool drop count ignored");
            Ok(0)
        }
    }
}
