//! The spool: the agent's durable queue of sealed batches.
//!
//! Owns the spool directory and everything in it; touches nothing else. Its
//! one owner is the uplink task, which calls it directly (blocking file I/O,
//! see below). Files: `open.rs` (open and repair), `queue.rs` (append within
//! the byte bound, read in order, truncate on ack), `segment.rs` (the record
//! format of a segment and its scan), `dictionary.rs` (`SERIES`),
//! `epoch.rs` (a new epoch while running, which compacts `SERIES`),
//! `durable.rs` (atomic small files, directory syncs), `acked.rs` (the
//! collector's committed set: a mark plus ranges), `acked_file.rs`
//! (`ACKED`, that set persisted).
//!
//! A reading is *taken* once the batch holding it is appended here; the
//! batch's sequence number is assigned at append. The spool survives
//! `kill -9` and reboots, is bounded in bytes (segments and dictionary
//! together), and frees each segment once the collector has acked every
//! record in it, wherever the segment is (the collector acks out of order
//! when the agent sends live batches ahead of a backlog).
//!
//! Layout of the directory:
//!
//! - `EPOCH`: the spool's random id (16 hex digits). A new spool (or a
//!   wiped one) gets a new epoch, so its sequence numbers never collide with
//!   an old spool's; a running spool whose records are all acked may start
//!   a new one to compact its dictionary (`epoch.rs`).
//! - `SEQ`: a reservation of sequence numbers. Before a sequence beyond the
//!   reservation is handed out, a new reservation is written (atomically, by
//!   rename). After a restart numbering resumes *above* the reservation, so a
//!   sequence that may have reached the collector is never reused, even when
//!   the tail of the spool was lost.
//! - `DROPPED`: how many readings of the epoch were dropped because the
//!   spool was full, and the epoch they belong to (`<count> <epoch>`; a
//!   count of another epoch reads as 0, one without an epoch, as an older
//!   agent wrote it, as this epoch's).
//! - `ACKED`: the acked set of the epoch as last persisted (at most once a
//!   second, and at a clean close), read at open so that drop accounting
//!   is exact before the first Welcome; format and failure modes in
//!   `acked_file.rs`. Missing or unreadable, the set starts empty.
//! - `FORMAT`: the layout version (`2`). A directory with an epoch but no
//!   `FORMAT` was written by an older agent (version 1: series names in
//!   every record) and is refused with an error saying what to do.
//! - `SERIES`: the series dictionary of the epoch. Entry `n` (from 1) is the
//!   key of agent-wide series id `n`:
//!   `[len: u32 le][crc32c: u32 le][key]`, the key being device, metric,
//!   unit (each `[u32 le length][UTF-8]`) and the labels (`[u32 le count]`,
//!   then name and value of each). An entry is appended and made durable
//!   before the first record that uses its id, so a torn tail only loses
//!   ids no record uses; it is cut at open like a segment's. Its bytes count
//!   toward `max_bytes`.
//! - `<first-seq>.seg`: segments of records
//!   `[len: u32 le][crc32c: u32 le][seq: u64 le][readings: u32 le][series: u32 le][batch]`,
//!   where the CRC covers everything after it, `series` is the highest
//!   series id the record uses, and `batch` is the record's readings as the
//!   uplink encodes them (ids from `SERIES`, no names). A record whose
//!   `series` is beyond the dictionary (which lost entries) cannot be sent:
//!   at open it ends its segment like a bad CRC, and its readings and those
//!   of the valid records after it are counted as dropped.
//!
//! Why not SQLite or redb: the spool only ever appends, reads forward and
//! deletes whole segments. A segment log does exactly that with one `write`
//! and one `fdatasync` per batch and no page rewrites, and its failure mode is
//! simple to state: the first record whose length or CRC does not check ends
//! its segment; the rest of that segment is cut off at open, with a logged
//! count, and the agent carries on.
//!
//! The spool does blocking file I/O; its owner (the uplink) calls it from its
//! task: one small write and fsync per sealed batch, and one more for the
//! dictionary when the batch brings new series.

mod acked;
mod acked_file;
mod dictionary;
mod durable;
mod epoch;
mod open;
mod queue;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::reading::SeriesKey;

pub use acked::{AckedSet, SeqRange};
pub use epoch::Rollover;
pub use open::Recovery;
use segment::{RecordMeta, Segment};

/// Sequence numbers reserved per `SEQ` write.
const SEQ_BLOCK: u64 = 4096;

/// What to do when an append would exceed `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Delete the oldest segment (its unacked readings are counted as
    /// dropped) to make room.
    #[default]
    DropOldest,
    /// Refuse the append; the caller stops taking readings until acks make
    /// room.
    Block,
}

/// Settings of a spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub policy: FullPolicy,
    /// fsync every append (a batch is durable before it is sent).
    pub sync: bool,
}

/// Spool errors, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The cause is in the message, so there is no `source()`.
    #[error("spool {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("spool {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |cause| SpoolError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this sequence number.
    Stored(u64),
    /// Not stored, and counted as dropped: the spool was full and nothing
    /// older could make room (or the batch alone is larger than the spool).
    Dropped,
    /// The spool is full and the policy is `Block`; nothing was stored.
    Full,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub readings: u32,
    /// The encoded batch.
    pub batch: Vec<u8>,
    /// The highest series id the batch uses.
    pub series: u32,
}

/// The delivery simulation's failpoint between a record's write and its
/// `fdatasync` (`tests/tests/sim_delivery/`): called with the segment's path,
/// the record's offset and its length once its bytes are written and before
/// they are synced. The simulation's hook may unwind there, which stops the
/// uplink at that line as a `kill -9` would (the on-disk effect of losing
/// the unsynced bytes is the simulation's to apply). Unset (`None`) in the
/// agent: one branch per append.
#[derive(Clone)]
pub struct AfterWrite(pub Arc<WriteHook>);

/// The hook of [`AfterWrite`]: segment path, record offset, record length.
pub type WriteHook = dyn Fn(&Path, u64, u64) + Send + Sync;

impl std::fmt::Debug for AfterWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterWrite")
    }
}

/// The delivery simulation's view of what the spool gives up
/// (`tests/tests/sim_delivery/`): called with the epoch, the sequence and
/// the readings of each unacked record dropped to make room or given up
/// after refusals, once its readings are counted as dropped. Unset
/// (`None`) in the agent: one branch per drop.
#[derive(Clone)]
pub struct OnDrop(pub Arc<DropHook>);

/// The hook of [`OnDrop`]: epoch, sequence, readings.
pub type DropHook = dyn Fn(u64, u64, u32) + Send + Sync;

impl std::fmt::Debug for OnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnDrop")
    }
}

/// The spool. Exactly one owner (the uplink).
#[derive(Debug)]
pub struct Spool {
    opts: SpoolOptions,
    epoch: u64,
    segments: VecDeque<Segment>,
    /// Append handle of the newest segment.
    tail: Option<File>,
    total_bytes: u64,
    segment_bytes: u64,
    next_seq: u64,
    reserved_to: u64,
    /// What the collector has acked of this epoch (and what was given up
    /// on after refusals): never sent again, freed with its segment.
    acked: AckedSet,
    /// `acked` changed since `ACKED` was last written.
    acked_dirty: bool,
    /// What `ACKED` holds (its epoch and set, as written or loaded), to
    /// tell whether a change matters enough to write it; `None` when not
    /// known (nothing written or loaded yet).
    acked_written: Option<(u64, AckedSet)>,
    /// Sequences sent on the current stream; those not acked are in
    /// flight and never dropped.
    in_flight: BTreeSet<u64>,
    dropped: u64,
    /// Append handle of `SERIES` and its length.
    series_file: File,
    series_bytes: u64,
    /// Entries in `SERIES`: ids `1..=series_count` are taken.
    series_count: u32,
    /// The dictionary read at open, until the owner takes it.
    loaded_series: Vec<Arc<SeriesKey>>,
    /// A rollover's `EPOCH` write failed, possibly after its rename: the
    /// file on disk may hold the old epoch or `epoch`. It is written again
    /// before any record is appended, so no record is ever sent under an
    /// epoch that a restart would not read back.
    epoch_unsynced: bool,
    /// The simulation's failpoint ([`AfterWrite`]); `None` otherwise.
    after_write: Option<AfterWrite>,
    /// The simulation's view of drops ([`OnDrop`]); `None` otherwise.
    on_drop: Option<OnDrop>,
}

impl Spool {
    /// Sets the simulation's failpoint between a record's write and its
    /// sync ([`AfterWrite`]).
    pub fn set_after_write(&mut self, hook: Option<AfterWrite>) {
        self.after_write = hook;
    }

    /// Sets the simulation's view of dropped records ([`OnDrop`]).
    pub fn set_on_drop(&mut self, hook: Option<OnDrop>) {
        self.on_drop = hook;
    }

    /// Whether appends are made durable (`fsync`) before they return.
    pub fn syncs(&self) -> bool {
        self.opts.sync
    }

    /// The spool's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The series dictionary read at open: entry `i` is the key of series id
    /// `i + 1`. Given once (to the owner, which keeps it from then on);
    /// later calls return an empty list.
    pub fn take_series(&mut self) -> Vec<Arc<SeriesKey>> {
        std::mem::take(&mut self.loaded_series)
    }

    /// Series ids taken in this epoch: `1..=series_count()`.
    pub fn series_count(&self) -> u32 {
        self.series_count
    }

    /// Readings of this epoch dropped because the spool was full (what
    /// Hello and Batch report for the epoch).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The newest sequence handed out (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Continues numbering above `seq` (the collector has committed `seq` for
    /// this epoch, which this spool no longer remembers handing out).
    pub fn advance_past(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Bytes of all segments and of the dictionary: what `max_bytes`
    /// bounds.
    pub fn bytes(&self) -> u64 {
        self.total_bytes + self.series_bytes
    }

    /// Bytes of the dictionary (`SERIES`).
    pub fn series_bytes(&self) -> u64 {
        self.series_bytes
    }

    /// The bound on [`Spool::bytes`].
    pub fn max_bytes(&self) -> u64 {
        self.opts.max_bytes
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Unacknowledged records.
    pub fn pending(&self) -> usize {
        self.records()
            .filter(|r| !self.acked.contains(r.seq))
            .count()
    }

    /// Unacknowledged records with sequence below `to` not in flight on
    /// the current stream, and their bytes: the backlog still waiting when
    /// `to` is where the stream's live batches begin.
    pub fn waiting_below(&self, to: u64) -> (u64, u64) {
        self.records()
            .take_while(|r| r.seq < to)
            .filter(|r| !self.acked.contains(r.seq) && !self.in_flight.contains(&r.seq))
            .fold((0, 0), |(n, bytes), r| (n + 1, bytes + u64::from(r.len)))
    }

    /// Unacknowledged records with sequence at most `seq`.
    pub fn unacked_through(&self, seq: u64) -> u64 {
        self.records()
            .take_while(|r| r.seq <= seq)
            .filter(|r| !self.acked.contains(r.seq))
            .count() as u64
    }

    /// The first unacknowledged sequence, if any.
    pub fn first_unacked(&self) -> Option<u64> {
        self.next_unacked_from(self.acked.mark() + 1)
    }

    /// The first unacknowledged sequence at or above `from`, if any.
    pub fn next_unacked_from(&self, from: u64) -> Option<u64> {
        self.next_unacked_record(from).map(|(_, r)| r.seq)
    }

    /// The first unacknowledged record at or above `from`, and its segment.
    /// Acked runs are jumped over a range at a time.
    fn next_unacked_record(&self, mut from: u64) -> Option<(&Segment, &RecordMeta)> {
        loop {
            let (seg, r) = self.first_record_from(from)?;
            match self.acked.run_end(r.seq) {
                None => return Some((seg, r)),
                Some(end) => from = end.checked_add(1)?,
            }
        }
    }

    /// What the collector has acked of this epoch, as far as it is known.
    pub fn acked(&self) -> &AckedSet {
        &self.acked
    }

    /// Whether `seq` is acked.
    pub fn is_acked(&self, seq: u64) -> bool {
        self.acked.contains(seq)
    }

    /// The first record with sequence at least `seq`, and its segment.
    /// Sequences grow along the segments and within each (a kept tail may
    /// hold many acked records before it), so a binary search finds it.
    fn first_record_from(&self, seq: u64) -> Option<(&Segment, &RecordMeta)> {
        let s = self
            .segments
            .partition_point(|seg| seg.records.back().is_some_and(|r| r.seq < seq));
        self.segments.range(s..).find_map(|seg| {
            let i = seg.records.partition_point(|r| r.seq < seq);
            seg.records.get(i).map(|r| (seg, r))
        })
    }

    fn records(&self) -> impl Iterator<Item = &RecordMeta> {
        self.segments.iter().flat_map(|s| s.records.iter())
    }

    /// Notes that `seq` was sent on the current stream: until acked, it
    /// is in flight and is not dropped to make room.
    pub fn sent(&mut self, seq: u64) {
        self.in_flight.insert(seq);
    }

    /// A new stream (or none): nothing is in flight.
    pub fn clear_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// The records in flight on the current stream (sent, not acked),
    /// ascending.
    pub fn in_flight_unacked(&self) -> Vec<u64> {
        self.in_flight
            .iter()
            .copied()
            .filter(|&s| !self.acked.contains(s))
            .collect()
    }

    /// Whether `seq` is unacked and still in the spool (not dropped).
    pub fn is_unacked(&self, seq: u64) -> bool {
        self.next_unacked_from(seq) == Some(seq)
    }

    /// Whether `seq` is in flight on the current stream (sent, not acked).
    fn is_in_flight(&self, seq: u64) -> bool {
        self.in_flight.contains(&seq) && !self.acked.contains(seq)
    }

    /// Counts readings lost outside the spool (it could not be written) as
    /// dropped, so the collector's count stays exact.
    pub fn count_lost(&mut self, readings: u64) -> Result<(), SpoolError> {
        self.add_dropped(readings)
    }

    fn add_dropped(&mut self, n: u64) -> Result<(), SpoolError> {
        self.dropped += n;
        epoch::write_dropped(&self.opts.dir, self.dropped, self.epoch)
    }

    /// Makes sure `seq` is covered by the durable reservation in `SEQ`.
    fn reserve(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.reserved_to {
            return Ok(());
        }
        let to = seq + SEQ_BLOCK;
        durable::write_atomic(&self.opts.dir, "SEQ", format!("{to}\n"))?;
        self.reserved_to = to;
        Ok(())
    }
}

/// A clean stop (the uplink ends, or a test drops the spool) deletes the
/// fully acked segments the running spool kept ([`queue::ACKED_TAIL_KEEP`]), so a
/// restart sends nothing the collector already has, and writes `ACKED`
/// (for the partly acked segments); only a crash leaves the acked records
/// of the last second unknown, to be sent again.
impl Drop for Spool {
    fn drop(&mut self) {
        loop {
            match self.delete_acked_segment(0) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    warn!(error = %e, "spool: an acked segment could not be deleted at close");
                    break;
                }
            }
        }
        if let Err(e) = self.write_acked_if_changed() {
            warn!(error = %e, "spool: the acked set could not be written at close");
        }
    }
}
