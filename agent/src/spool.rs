//! The spool: the agent's durable queue of sealed batches.
//!
//! A reading is *taken* once the batch holding it is appended here; the
//! batch's sequence number is assigned at append. The spool survives
//! `kill -9` and reboots, is bounded in bytes, and is truncated as the
//! collector acks.
//!
//! Layout of the directory:
//!
//! - `EPOCH`: the spool's random id (16 hex digits), written once. A new
//!   spool (or a wiped one) gets a new epoch, so its sequence numbers never
//!   collide with an old spool's.
//! - `SEQ`: a reservation of sequence numbers. Before a sequence beyond the
//!   reservation is handed out, a new reservation is written (atomically, by
//!   rename). After a restart numbering resumes *above* the reservation, so a
//!   sequence that may have reached the collector is never reused, even when
//!   the tail of the spool was lost.
//! - `DROPPED`: how many readings were dropped because the spool was full.
//! - `FORMAT`: the layout version (`2`). A directory with an epoch but no
//!   `FORMAT` was written by an older agent (version 1: series names in
//!   every record) and is refused with an error saying what to do.
//! - `SERIES`: the series dictionary of the epoch. Entry `n` (from 1) is the
//!   key of agent-wide series id `n`:
//!   `[len: u32 le][crc32c: u32 le][key]`, the key being device, metric,
//!   unit (each `[u32 le length][UTF-8]`) and the labels (`[u32 le count]`,
//!   then name and value of each). An entry is appended and made durable
//!   before the first record that uses its id, so a torn tail only loses
//!   ids no record uses; it is cut at open like a segment's.
//! - `<first-seq>.seg`: segments of records
//!   `[len: u32 le][crc32c: u32 le][seq: u64 le][readings: u32 le][series: u32 le][batch]`,
//!   where the CRC covers everything after it, `series` is the highest
//!   series id the record uses, and `batch` is the record's readings as the
//!   uplink encodes them (ids from `SERIES`, no names). A record whose
//!   `series` is beyond the dictionary (which lost entries) cannot be sent:
//!   at open it ends its segment like a bad CRC, and its readings and those
//!   of the valid records after it are counted as dropped.
//!
//! Why not SQLite or redb: the spool only ever appends, reads in order and
//! deletes from the front. A segment log does exactly that with one `write`
//! and one `fdatasync` per batch and no page rewrites, and its failure mode is
//! simple to state: the first record whose length or CRC does not check ends
//! its segment; the rest of that segment is cut off at open, with a logged
//! count, and the agent carries on.
//!
//! The spool does blocking file I/O; its owner (the uplink) calls it from its
//! task: one small write and fsync per sealed batch, and one more for the
//! dictionary when the batch brings new series.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::reading::{Labels, SeriesKey, intern};

/// Bytes before the payload: length and CRC.
const HEADER: usize = 8;
/// Bytes of the payload before the batch: sequence, reading count, highest
/// series id.
const META: usize = 16;
/// The layout version in `FORMAT`.
const FORMAT: u64 = 2;
/// Sequence numbers reserved per `SEQ` write.
const SEQ_BLOCK: u64 = 4096;
/// A sole segment whose records are all acked is deleted once it holds
/// this much, or when an append needs the room. Below that it takes the
/// next appends: when the collector keeps up, every batch is acked before
/// the next is sealed, and deleting the file at each ack made every append
/// start a new one (a create and a directory fsync per batch, on top of the
/// batch's own `fdatasync`). A clean stop deletes it; after a crash, at most
/// this much acked data is sent again, and the collector acks it without
/// storing it twice.
const ACKED_TAIL_KEEP: u64 = 1024 * 1024;
/// Largest record accepted when reading back (a larger length is corruption).
const MAX_RECORD: usize = 256 * 1024 * 1024;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

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
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The spool directory had no epoch: a new spool was started.
    pub new_epoch: bool,
    /// Records kept.
    pub records: usize,
    /// Readings in the records kept.
    pub readings: u64,
    /// Bytes cut off (torn or corrupt tails), over all segments.
    pub cut_bytes: u64,
    /// Segments that had a tail cut off.
    pub cut_segments: usize,
    /// Series in the dictionary.
    pub series: usize,
    /// Bytes cut off the dictionary's tail (torn or corrupt entries).
    pub cut_series_bytes: u64,
    /// Readings of valid records that used series the dictionary lost;
    /// they were cut and counted as dropped.
    pub lost_readings: u64,
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

#[derive(Debug, Clone, Copy)]
struct RecordMeta {
    seq: u64,
    offset: u64,
    len: u32,
    readings: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    size: u64,
    records: VecDeque<RecordMeta>,
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
    acked: u64,
    /// Highest sequence sent on the current stream; records at or below it
    /// and above `acked` are in flight and never dropped.
    in_flight_to: u64,
    dropped: u64,
    /// Append handle of `SERIES` and its length.
    series_file: File,
    series_bytes: u64,
    /// Entries in `SERIES`: ids `1..=series_count` are taken.
    series_count: u32,
    /// The dictionary read at open, until the owner takes it.
    loaded_series: Vec<Arc<SeriesKey>>,
}

impl Spool {
    /// Opens (or creates) the spool in `opts.dir`, cutting off any torn or
    /// corrupt tails. Never fails because of the contents of a segment; only
    /// because the directory cannot be read or written.
    pub fn open(opts: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut recovery = Recovery::default();
        let epoch_path = dir.join("EPOCH");
        let epoch = match fs::read_to_string(&epoch_path) {
            Ok(s) => match u64::from_str_radix(s.trim(), 16) {
                Ok(e) => Some(e),
                Err(_) => {
                    error!(path = %epoch_path.display(), "spool epoch file is corrupt; starting a new spool");
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&epoch_path)(e)),
        };
        let mut seg_paths: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                seg_paths.push((first, path));
            }
        }
        seg_paths.sort();
        let epoch = match epoch {
            Some(e) => e,
            None => {
                // No epoch: whatever segments exist cannot be attributed to
                // a sequence space any more.
                for (_, p) in &seg_paths {
                    warn!(path = %p.display(), "segment without an epoch removed");
                    fs::remove_file(p).map_err(io_err(p))?;
                }
                seg_paths.clear();
                let _ = fs::remove_file(dir.join("SEQ"));
                let _ = fs::remove_file(dir.join("DROPPED"));
                let _ = fs::remove_file(dir.join("SERIES"));
                write_atomic(&dir, "FORMAT", &format!("{FORMAT}\n"))?;
                let e: u64 = rand::random();
                write_atomic(&dir, "EPOCH", &format!("{e:016x}\n"))?;
                recovery.new_epoch = true;
                info!(dir = %dir.display(), epoch = format!("{e:016x}"), "new spool");
                e
            }
        };
        match read_number(&dir.join("FORMAT"))? {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(SpoolError::Invalid {
                    path: dir,
                    message: format!(
                        "layout version {other} is not the one this agent writes ({FORMAT}); \
                         run the agent version that wrote it, or remove the directory to start \
                         a new spool (its unacked readings are lost)"
                    ),
                });
            }
            // An older agent's spool. Without records there is nothing to
            // read, so it simply becomes a version 2 spool.
            None if seg_paths.is_empty() => {
                let _ = fs::remove_file(dir.join("SERIES"));
                write_atomic(&dir, "FORMAT", &format!("{FORMAT}\n"))?;
            }
            None => {
                return Err(SpoolError::Invalid {
                    path: dir,
                    message: "written by an older agent (layout version 1, series names in \
                              every record), which this agent cannot read: let the older agent \
                              deliver it, or remove the directory to start a new spool (its \
                              unacked readings are lost)"
                        .into(),
                });
            }
        }
        let reserved = read_number(&dir.join("SEQ"))?.unwrap_or(0);
        let mut dropped = read_number(&dir.join("DROPPED"))?.unwrap_or(0);
        let series_path = dir.join("SERIES");
        let (loaded_series, series_bytes, cut_series) = load_series(&series_path)?;
        if cut_series > 0 {
            warn!(
                path = %series_path.display(),
                cut_bytes = cut_series,
                kept = loaded_series.len(),
                "spool series dictionary had a torn or corrupt tail; cut it off"
            );
        }
        let series_count = u32::try_from(loaded_series.len()).unwrap_or(u32::MAX);
        recovery.series = loaded_series.len();
        recovery.cut_series_bytes = cut_series;
        let series_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&series_path)
            .map_err(io_err(&series_path))?;
        if opts.sync {
            // The file may be new: its directory entry must be durable
            // before a record relies on its entries.
            sync_dir(&dir)?;
        }

        let mut segments = VecDeque::new();
        let mut last_seq = 0u64;
        let mut total = 0u64;
        for (_, path) in seg_paths {
            let (seg, cut, lost) = scan_segment(&path, last_seq, series_count)?;
            if lost > 0 {
                error!(
                    path = %path.display(),
                    readings = lost,
                    "spool records use series the dictionary lost; cut them (counted as dropped)"
                );
                recovery.lost_readings += lost;
            }
            if cut > 0 {
                recovery.cut_bytes += cut;
                recovery.cut_segments += 1;
                warn!(
                    path = %path.display(),
                    cut_bytes = cut,
                    kept_records = seg.records.len(),
                    "spool segment had a torn or corrupt tail; cut it off"
                );
            }
            if let Some(r) = seg.records.back() {
                last_seq = r.seq;
            }
            recovery.records += seg.records.len();
            recovery.readings += seg
                .records
                .iter()
                .map(|r| u64::from(r.readings))
                .sum::<u64>();
            if seg.records.is_empty() {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            total += seg.size;
            segments.push_back(seg);
        }
        if recovery.lost_readings > 0 {
            dropped += recovery.lost_readings;
            write_atomic(&dir, "DROPPED", &format!("{dropped}\n"))?;
        }
        // Resume above everything that may have been handed out before.
        let next_seq = reserved.max(last_seq) + 1;
        let segment_bytes = (opts.max_bytes / 8).clamp(16 * 1024, 16 * 1024 * 1024);
        let mut spool = Spool {
            opts,
            epoch,
            segments,
            tail: None,
            total_bytes: total,
            segment_bytes,
            next_seq,
            reserved_to: next_seq - 1,
            acked: 0,
            in_flight_to: 0,
            dropped,
            series_file,
            series_bytes,
            series_count,
            loaded_series,
        };
        spool.reserve(next_seq)?;
        if recovery.cut_bytes > 0 {
            warn!(
                cut_bytes = recovery.cut_bytes,
                segments = recovery.cut_segments,
                kept_records = recovery.records,
                "spool recovered with data cut off"
            );
        }
        Ok((spool, recovery))
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

    /// Appends `keys` to the dictionary as ids `series_count() + 1 ..`, in
    /// one write, durable (with `sync`) before this returns, so a record
    /// appended afterwards may use them. On failure nothing was added.
    pub fn add_series(&mut self, keys: &[&SeriesKey]) -> Result<(), SpoolError> {
        if keys.is_empty() {
            return Ok(());
        }
        let path = self.opts.dir.join("SERIES");
        let count = u32::try_from(keys.len())
            .ok()
            .and_then(|n| self.series_count.checked_add(n))
            .ok_or_else(|| SpoolError::Invalid {
                path: path.clone(),
                message: format!("more than {} series in one epoch", u32::MAX),
            })?;
        let mut buf = Vec::with_capacity(keys.len() * 64);
        for key in keys {
            encode_series_entry(&mut buf, key);
        }
        let before = self.series_bytes;
        let sync = self.opts.sync;
        if let Err(e) = self.series_file.write_all(&buf).and_then(|()| {
            if sync {
                self.series_file.sync_data()
            } else {
                Ok(())
            }
        }) {
            // Cut a partial write so the next entry starts on a boundary.
            let _ = self.series_file.set_len(before);
            return Err(io_err(&path)(e));
        }
        self.series_bytes += buf.len() as u64;
        self.series_count = count;
        Ok(())
    }

    /// Readings dropped because the spool was full, over its lifetime.
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

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Unacknowledged records.
    pub fn pending(&self) -> usize {
        self.records().filter(|r| r.seq > self.acked).count()
    }

    /// Unacknowledged records with sequence at most `seq`.
    pub fn unacked_through(&self, seq: u64) -> u64 {
        self.records()
            .filter(|r| r.seq > self.acked && r.seq <= seq)
            .count() as u64
    }

    /// The first unacknowledged sequence, if any.
    pub fn first_unacked(&self) -> Option<u64> {
        self.first_record_from(self.acked + 1).map(|(_, r)| r.seq)
    }

    /// The first record with sequence at least `seq`, and its segment.
    /// Sequences grow along the segments and within each (a kept tail may
    /// hold many acked records before it), so a binary search finds it.
    fn first_record_from(&self, seq: u64) -> Option<(&Segment, &RecordMeta)> {
        self.segments.iter().find_map(|seg| {
            let i = seg.records.partition_point(|r| r.seq < seq);
            seg.records.get(i).map(|r| (seg, r))
        })
    }

    fn records(&self) -> impl Iterator<Item = &RecordMeta> {
        self.segments.iter().flat_map(|s| s.records.iter())
    }

    /// Marks sequences up to `seq` as being sent on the current stream
    /// (they will not be dropped to make room). Reset with 0 on reconnect.
    pub fn set_in_flight(&mut self, seq: u64) {
        self.in_flight_to = seq;
    }

    /// Appends one encoded batch of `readings` readings, whose highest
    /// series id is `series` (already in the dictionary, see
    /// [`Spool::add_series`]), and returns its sequence number.
    pub fn append(
        &mut self,
        batch: &[u8],
        readings: u32,
        series: u32,
    ) -> Result<Appended, SpoolError> {
        if series > self.series_count {
            return Err(SpoolError::Invalid {
                path: self.opts.dir.join("SERIES"),
                message: format!(
                    "a batch uses series {series}, beyond the {} in the dictionary",
                    self.series_count
                ),
            });
        }
        let record_len = (HEADER + META + batch.len()) as u64;
        while self.total_bytes + record_len > self.opts.max_bytes {
            match self.opts.policy {
                FullPolicy::Block => {
                    // Acked records still on disk can go first.
                    if self.delete_acked_front(0)? {
                        continue;
                    }
                    if self.first_unacked().is_none() {
                        // Nothing to wait for: this batch alone is larger
                        // than the spool and would block forever.
                        self.add_dropped(u64::from(readings))?;
                        warn!(
                            readings,
                            bytes = record_len,
                            "batch larger than the whole spool: dropped"
                        );
                        return Ok(Appended::Dropped);
                    }
                    return Ok(Appended::Full);
                }
                FullPolicy::DropOldest => {
                    if self.delete_acked_front(0)? {
                        continue;
                    }
                    if !self.drop_oldest_segment()? {
                        // Nothing can be dropped (the only data is in
                        // flight, or this batch alone is larger than the
                        // spool): drop the new batch itself.
                        self.add_dropped(u64::from(readings))?;
                        warn!(readings, "spool full: dropped a new batch");
                        return Ok(Appended::Dropped);
                    }
                }
            }
        }
        let seq = self.next_seq;
        self.reserve(seq)?;
        if self.tail.is_none()
            || self
                .segments
                .back()
                .is_none_or(|s| s.size >= self.segment_bytes)
        {
            self.start_segment(seq)?;
        }
        let mut buf = Vec::with_capacity(record_len as usize);
        buf.extend_from_slice(&((META + batch.len()) as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&readings.to_le_bytes());
        buf.extend_from_slice(&series.to_le_bytes());
        buf.extend_from_slice(batch);
        let crc = CRC.checksum(&buf[HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let Some(seg) = self.segments.back_mut() else {
            return Err(SpoolError::Invalid {
                path: self.opts.dir.clone(),
                message: "no segment to append to".into(),
            });
        };
        let Some(file) = self.tail.as_mut() else {
            return Err(SpoolError::Invalid {
                path: seg.path.clone(),
                message: "segment is not open for appending".into(),
            });
        };
        let offset = seg.size;
        if let Err(e) = file.write_all(&buf).and_then(|()| {
            if self.opts.sync {
                file.sync_data()
            } else {
                Ok(())
            }
        }) {
            // A partial write leaves a torn record; cut it now so the next
            // append starts on a record boundary. A segment that holds
            // nothing goes away, so no two entries ever share a file.
            let _ = file.set_len(offset);
            self.tail = None;
            let path = seg.path.clone();
            if seg.records.is_empty() {
                self.segments.pop_back();
                let _ = fs::remove_file(&path);
            }
            return Err(io_err(&path)(e));
        }
        seg.size += record_len;
        seg.records.push_back(RecordMeta {
            seq,
            offset,
            len: record_len as u32,
            readings,
        });
        self.total_bytes += record_len;
        self.next_seq += 1;
        Ok(Appended::Stored(seq))
    }

    /// The first unacknowledged record with sequence `>= from`.
    pub fn read_from(&self, from: u64) -> Result<Option<Record>, SpoolError> {
        let from = from.max(self.acked + 1);
        let Some((seg, meta)) = self.first_record_from(from) else {
            return Ok(None);
        };
        let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
        let mut buf = vec![0u8; meta.len as usize];
        file.read_exact_at(&mut buf, meta.offset)
            .map_err(io_err(&seg.path))?;
        match decode_record(&buf) {
            Some((seq, readings, series, batch)) if seq == meta.seq => Ok(Some(Record {
                seq,
                readings,
                batch: batch.to_vec(),
                series,
            })),
            _ => Err(SpoolError::Invalid {
                path: seg.path.clone(),
                message: format!(
                    "record {} at offset {} changed on disk since it was written",
                    meta.seq, meta.offset
                ),
            }),
        }
    }

    /// Everything up to `seq` is committed at the collector: forget it and
    /// delete segments that hold nothing else.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        // Nothing beyond what was handed out can be acked: a larger value
        // would make later appends look acked and never be sent.
        let seq = seq.min(self.last_seq());
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        while self.delete_acked_front(ACKED_TAIL_KEEP)? {}
        Ok(())
    }

    /// Deletes the oldest segment if every record in it is acked and it is
    /// not the one being appended to, or it is but holds at least
    /// `keep_tail` bytes. Returns whether it deleted one.
    fn delete_acked_front(&mut self, keep_tail: u64) -> Result<bool, SpoolError> {
        if self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.records.is_empty()) {
            if let Some(seg) = self.segments.pop_front() {
                let _ = fs::remove_file(&seg.path);
                self.total_bytes -= seg.size;
            }
            return Ok(true);
        }
        let deletable = self.segments.len() > 1
            && self
                .segments
                .front()
                .and_then(|s| s.records.back())
                .is_some_and(|r| r.seq <= self.acked);
        let all_acked_tail = self.segments.len() == 1
            && self.segments.front().is_some_and(|s| {
                s.size >= keep_tail && s.records.back().is_some_and(|r| r.seq <= self.acked)
            });
        if all_acked_tail {
            // The only segment is fully acked: remove it; the next append
            // starts a new one.
            self.tail = None;
        } else if !deletable {
            return Ok(false);
        }
        if let Some(seg) = self.segments.pop_front() {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            self.total_bytes -= seg.size;
        }
        Ok(true)
    }

    /// Drops the oldest segment, counting its unacked readings. Refuses when
    /// it holds records in flight. Returns whether it dropped one.
    fn drop_oldest_segment(&mut self) -> Result<bool, SpoolError> {
        let Some(front) = self.segments.front() else {
            return Ok(false);
        };
        if front
            .records
            .iter()
            .any(|r| r.seq > self.acked && r.seq <= self.in_flight_to)
        {
            return Ok(false);
        }
        if self.segments.len() == 1 {
            // Dropping the segment being appended to: close it first.
            self.tail = None;
        }
        let Some(seg) = self.segments.pop_front() else {
            return Ok(false);
        };
        let lost: u64 = seg
            .records
            .iter()
            .filter(|r| r.seq > self.acked)
            .map(|r| u64::from(r.readings))
            .sum();
        fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        self.total_bytes -= seg.size;
        self.add_dropped(lost)?;
        warn!(
            readings = lost,
            first_seq = seg.records.front().map(|r| r.seq),
            last_seq = seg.records.back().map(|r| r.seq),
            "spool full: dropped the oldest segment"
        );
        Ok(true)
    }

    /// Gives up on the oldest unacked record `seq` (the collector rejects it
    /// for good): its readings count as dropped and it is acked locally.
    /// Returns the readings dropped; 0 if `seq` is not the oldest unacked.
    pub fn drop_front(&mut self, seq: u64) -> Result<u64, SpoolError> {
        let Some(readings) = self
            .records()
            .find(|r| r.seq > self.acked)
            .filter(|r| r.seq == seq)
            .map(|r| u64::from(r.readings))
        else {
            return Ok(0);
        };
        self.add_dropped(readings)?;
        self.ack(seq)?;
        Ok(readings)
    }

    /// Counts readings lost outside the spool (it could not be written) as
    /// dropped, so the collector's count stays exact.
    pub fn count_lost(&mut self, readings: u64) -> Result<(), SpoolError> {
        self.add_dropped(readings)
    }

    fn add_dropped(&mut self, n: u64) -> Result<(), SpoolError> {
        self.dropped += n;
        write_atomic(&self.opts.dir, "DROPPED", &format!("{}\n", self.dropped))
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        let path = self.opts.dir.join(format!("{first_seq:020}.seg"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if self.opts.sync {
            sync_dir(&self.opts.dir)?;
        }
        self.tail = Some(file);
        self.segments.push_back(Segment {
            path,
            size: 0,
            records: VecDeque::new(),
        });
        Ok(())
    }

    /// Makes sure `seq` is covered by the durable reservation.
    fn reserve(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.reserved_to {
            return Ok(());
        }
        let to = seq + SEQ_BLOCK;
        write_atomic(&self.opts.dir, "SEQ", &format!("{to}\n"))?;
        self.reserved_to = to;
        Ok(())
    }
}

/// A clean stop (the uplink ends, or a test drops the spool) deletes the
/// fully acked segments the running spool kept ([`ACKED_TAIL_KEEP`]), so a
/// restart sends nothing the collector already has; only a crash leaves
/// them to be sent again.
impl Drop for Spool {
    fn drop(&mut self) {
        loop {
            match self.delete_acked_front(0) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    warn!(error = %e, "spool: an acked segment could not be deleted at close");
                    break;
                }
            }
        }
    }
}

/// Reads a segment's valid records. Cuts the file at the first record that
/// is torn, fails its CRC, does not follow `prev_seq`, or uses a series id
/// beyond `series_count`. Returns the segment, the number of bytes cut, and
/// the readings of valid records that were cut for their series.
fn scan_segment(
    path: &Path,
    mut prev_seq: u64,
    series_count: u32,
) -> Result<(Segment, u64, u64), SpoolError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let mut records = VecDeque::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let Some((seq, readings, series, _)) = decode_record(rest) else {
            break;
        };
        if seq <= prev_seq {
            break;
        }
        if series > series_count {
            break;
        }
        let len = record_len(rest).unwrap_or(0);
        records.push_back(RecordMeta {
            seq,
            offset: pos as u64,
            len: len as u32,
            readings,
        });
        prev_seq = seq;
        pos += len;
    }
    let cut = (data.len() - pos) as u64;
    // Valid records cut because the dictionary lost their series: their
    // readings are known, so they are counted as dropped, not just lost.
    let mut lost = 0u64;
    if data
        .get(pos..)
        .and_then(decode_record)
        .is_some_and(|(seq, _, series, _)| seq > prev_seq && series > series_count)
    {
        let (mut at, mut seq_at) = (pos, prev_seq);
        while let Some((seq, readings, _, _)) = data.get(at..).and_then(decode_record) {
            if seq <= seq_at {
                break;
            }
            lost += u64::from(readings);
            seq_at = seq;
            at += record_len(&data[at..]).unwrap_or(data.len());
        }
    }
    if cut > 0 {
        truncate(path, pos as u64)?;
    }
    Ok((
        Segment {
            path: path.to_path_buf(),
            size: pos as u64,
            records,
        },
        cut,
        lost,
    ))
}

/// Total length of the record at the start of `buf`, if its header is whole.
fn record_len(buf: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    if !(META..=MAX_RECORD).contains(&len) {
        return None;
    }
    Some(HEADER + len)
}

/// Decodes and checks the record at the start of `buf`: (seq, readings,
/// highest series id, batch).
fn decode_record(buf: &[u8]) -> Option<(u64, u32, u32, &[u8])> {
    let total = record_len(buf)?;
    let record = buf.get(..total)?;
    let crc = u32::from_le_bytes(record.get(4..8)?.try_into().ok()?);
    let payload = &record[HEADER..];
    if CRC.checksum(payload) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let readings = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
    let series = u32::from_le_bytes(payload.get(12..16)?.try_into().ok()?);
    Some((seq, readings, series, &payload[META..]))
}

/// Appends the dictionary entry of `key` to `buf`.
fn encode_series_entry(buf: &mut Vec<u8>, key: &SeriesKey) {
    fn put(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    put(buf, &key.device);
    put(buf, &key.metric);
    put(buf, &key.unit);
    buf.extend_from_slice(&(key.labels.len() as u32).to_le_bytes());
    for (k, v) in key.labels.iter() {
        put(buf, k);
        put(buf, v);
    }
    let len = (buf.len() - start - HEADER) as u32;
    let crc = CRC.checksum(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the dictionary entry at the start of `buf`: the key and the
/// entry's length. `None` if it is torn, fails its CRC or does not parse.
fn decode_series_entry(buf: &[u8]) -> Option<(SeriesKey, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    let payload = buf.get(HEADER..HEADER.checked_add(len)?)?;
    if CRC.checksum(payload) != crc {
        return None;
    }
    fn number(rest: &mut &[u8]) -> Option<u32> {
        let (n, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        Some(u32::from_le_bytes(*n))
    }
    fn string(rest: &mut &[u8]) -> Option<Arc<str>> {
        let n = number(rest)? as usize;
        let bytes = rest.get(..n)?;
        *rest = &rest[n..];
        std::str::from_utf8(bytes).ok().map(intern)
    }
    let mut rest = payload;
    let device = string(&mut rest)?;
    let metric = string(&mut rest)?;
    let unit = string(&mut rest)?;
    let mut labels = Vec::new();
    for _ in 0..number(&mut rest)? {
        let k = string(&mut rest)?;
        let v = string(&mut rest)?;
        labels.push((k, v));
    }
    let labels = Labels::from_pairs(labels);
    if !rest.is_empty() {
        return None;
    }
    Some((
        SeriesKey {
            device,
            metric,
            labels,
            unit,
        },
        HEADER + len,
    ))
}

/// Reads the dictionary at `path` (none: empty), cutting it at the first
/// entry that is torn, corrupt or does not parse. Returns the keys, the
/// bytes kept and the bytes cut.
fn load_series(path: &Path) -> Result<(Vec<Arc<SeriesKey>>, u64, u64), SpoolError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut keys = Vec::new();
    let mut pos = 0usize;
    while let Some((key, len)) = data.get(pos..).and_then(decode_series_entry) {
        keys.push(Arc::new(key));
        pos += len;
    }
    let cut = (data.len() - pos) as u64;
    if cut > 0 {
        truncate(path, pos as u64)?;
    }
    Ok((keys, pos as u64, cut))
}

fn read_number(path: &Path) -> Result<Option<u64>, SpoolError> {
    match fs::read_to_string(path) {
        Ok(s) => match s.trim().parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                warn!(path = %path.display(), "unreadable spool counter file ignored");
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `name` in `dir` atomically: a temporary file, fsync, rename, fsync
/// of the directory.
fn write_atomic(dir: &Path, name: &str, contents: &str) -> Result<(), SpoolError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Cuts `path` to `len` bytes, durably (a torn tail found at open).
fn truncate(path: &Path, len: u64) -> Result<(), SpoolError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, max_bytes: u64, policy: FullPolicy) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            max_bytes,
            policy,
            sync: false,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tributary-spool-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn stored(a: Appended) -> u64 {
        match a {
            Appended::Stored(s) => s,
            other => panic!("spool unexpectedly refused: {other:?}"),
        }
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_acked_tail_takes_the_next_appends_and_goes_at_close() {
        let dir = tmp("acked-tail");
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        let first = stored(s.append(b"one", 1, 0).unwrap());
        let files = segment_files(&dir);
        assert_eq!(files.len(), 1);
        s.ack(first).unwrap();
        // The collector keeps up: acked before the next append, which goes
        // to the same file (no new segment, no directory fsync).
        let second = stored(s.append(b"two", 2, 0).unwrap());
        assert_eq!(segment_files(&dir), files);
        assert_eq!(s.first_unacked(), Some(second));
        assert_eq!(s.read_from(0).unwrap().unwrap().seq, second);
        s.ack(second).unwrap();
        assert_eq!(s.first_unacked(), None);
        assert!(s.read_from(0).unwrap().is_none());
        // A crash keeps the acked records: sent again, deduplicated by the
        // collector.
        std::mem::forget(s);
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!(s.first_unacked(), Some(first));
        s.ack(second).unwrap();
        // A clean close deletes them.
        drop(s);
        assert_eq!(segment_files(&dir), Vec::<String>::new());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_acked_tail_is_deleted_when_the_room_is_needed() {
        let dir = tmp("acked-tail-full");
        // A 64 KiB spool: 10 KiB acked stay in the tail, and a 60 KiB batch
        // fits only once they are gone.
        for policy in [FullPolicy::Block, FullPolicy::DropOldest] {
            let (mut s, _) = Spool::open(opts(&dir, 64 * 1024, policy)).unwrap();
            let seq = stored(s.append(&[1u8; 10 * 1024], 1, 0).unwrap());
            s.ack(seq).unwrap();
            assert_eq!(segment_files(&dir).len(), 1, "{policy:?}");
            let big = s.append(&[2u8; 60 * 1024], 1, 0).unwrap();
            assert!(matches!(big, Appended::Stored(_)), "{policy:?}: {big:?}");
            assert_eq!(s.dropped(), 0, "{policy:?}");
            drop(s);
            let _ = fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn sequences_resume_above_everything_handed_out() {
        let dir = tmp("resume");
        let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert!(r.new_epoch);
        let epoch = s.epoch();
        assert_eq!(stored(s.append(b"one", 1, 0).unwrap()), 1);
        assert_eq!(stored(s.append(b"two", 2, 0).unwrap()), 2);
        s.ack(2).unwrap();
        drop(s);
        let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert!(!r.new_epoch);
        assert_eq!(s.epoch(), epoch);
        // Everything was acked and deleted, yet numbering does not restart.
        let seq = stored(s.append(b"three", 3, 0).unwrap());
        assert!(seq > 2, "seq {seq}");
        let rec = s.read_from(0).unwrap().unwrap();
        assert_eq!(
            (rec.seq, rec.readings, rec.batch.as_slice()),
            (seq, 3, &b"three"[..])
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unacked_records_survive_reopen_in_order() {
        let dir = tmp("reopen");
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        let seqs: Vec<u64> = (0..100)
            .map(|i| stored(s.append(format!("batch {i}").as_bytes(), i, 0).unwrap()))
            .collect();
        s.ack(seqs[49]).unwrap();
        drop(s);
        let (s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!(r.cut_bytes, 0);
        // Acks are not persisted: the collector's Welcome re-acks them.
        let mut next = 0;
        let mut got = Vec::new();
        while let Some(rec) = s.read_from(next).unwrap() {
            got.push(rec.seq);
            next = rec.seq + 1;
        }
        assert_eq!(got, seqs);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_and_the_rest_kept() {
        let dir = tmp("torn");
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        for i in 0..10u32 {
            s.append(&[i as u8; 100], 1, 0).unwrap();
        }
        let seg = s.segments.back().unwrap().path.clone();
        let last = *s.segments.back().unwrap().records.back().unwrap();
        drop(s);
        // Torn: cut the last record in the middle.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(last.offset + 30).unwrap();
        drop(f);
        let (s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!((r.records, r.cut_bytes), (9, 30));
        let eighth = s.segments.back().unwrap().records[7];
        drop(s);
        // Corrupt: flip a byte inside the 8th record's payload.
        let mut data = fs::read(&seg).unwrap();
        data[eighth.offset as usize + 40] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!(r.records, 7);
        assert!(r.cut_bytes > 0);
        // New appends never reuse a sequence that may have been sent.
        let seq = stored(s.append(b"new", 1, 0).unwrap());
        assert!(seq > 10, "seq {seq}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_exactly() {
        let dir = tmp("full");
        let max = 64 * 1024;
        let (mut s, _) = Spool::open(opts(&dir, max, FullPolicy::DropOldest)).unwrap();
        let mut appended = 0u64;
        for _ in 0..1000 {
            if let Appended::Stored(_) = s.append(&[7u8; 500], 5, 0).unwrap() {
                appended += 5;
            }
        }
        assert!(s.bytes() <= max);
        let mut kept = 0u64;
        let mut next = 0;
        while let Some(rec) = s.read_from(next).unwrap() {
            kept += u64::from(rec.readings);
            next = rec.seq + 1;
        }
        assert!(s.dropped() > 0);
        assert_eq!(kept + s.dropped(), appended);
        drop(s);
        let (s, _) = Spool::open(opts(&dir, max, FullPolicy::DropOldest)).unwrap();
        assert!(s.dropped() > 0, "the count survives a restart");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_with_block_refuses_until_acked() {
        let dir = tmp("block");
        let (mut s, _) = Spool::open(opts(&dir, 64 * 1024, FullPolicy::Block)).unwrap();
        let mut last = 0;
        while let Appended::Stored(seq) = s.append(&[1u8; 1000], 1, 0).unwrap() {
            last = seq;
        }
        assert_eq!(s.dropped(), 0);
        s.ack(last).unwrap();
        assert!(matches!(
            s.append(&[1u8; 1000], 1, 0).unwrap(),
            Appended::Stored(_)
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_larger_than_the_spool_is_dropped_and_counted_not_blocked() {
        let dir = tmp("huge");
        let (mut s, _) = Spool::open(opts(&dir, 64 * 1024, FullPolicy::Block)).unwrap();
        assert_eq!(s.append(&[0u8; 100_000], 7, 0).unwrap(), Appended::Dropped);
        assert_eq!(s.dropped(), 7);
        assert!(matches!(
            s.append(b"small", 1, 0).unwrap(),
            Appended::Stored(_)
        ));
        // An ack beyond what was handed out cannot pre-ack later appends.
        s.ack(1_000_000).unwrap();
        let seq = stored(s.append(b"later", 1, 0).unwrap());
        assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(seq));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refused_front_batch_can_be_given_up_and_counted() {
        let dir = tmp("refused");
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        let first = stored(s.append(b"poison", 4, 0).unwrap());
        let second = stored(s.append(b"fine", 2, 0).unwrap());
        assert_eq!(s.drop_front(second).unwrap(), 0, "only the oldest unacked");
        assert_eq!(s.drop_front(first).unwrap(), 4);
        assert_eq!(s.dropped(), 4);
        assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(second));
        let _ = fs::remove_dir_all(&dir);
    }

    fn key(device: &str, metric: &str) -> SeriesKey {
        SeriesKey {
            device: device.into(),
            metric: metric.into(),
            labels: Labels::from_map(&[("phase".to_owned(), "a".to_owned())].into()),
            unit: "V".into(),
        }
    }

    #[test]
    fn the_series_dictionary_survives_reopen_and_a_torn_tail() {
        let dir = tmp("series");
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        let (a, b, c) = (key("m", "volts"), key("m", "amps"), key("é", ""));
        s.add_series(&[&a, &b]).unwrap();
        assert_eq!(s.series_count(), 2);
        let first = stored(s.append(b"uses 1 and 2", 3, 2).unwrap());
        s.add_series(&[&c]).unwrap();
        drop(s);
        let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!((r.series, r.cut_series_bytes, r.lost_readings), (3, 0, 0));
        let keys: Vec<SeriesKey> = s.take_series().iter().map(|k| (**k).clone()).collect();
        assert_eq!(keys, vec![a.clone(), b.clone(), c.clone()]);
        assert!(s.take_series().is_empty(), "given once");
        // A record may not use an id the dictionary does not have.
        assert!(s.append(b"uses 4", 1, 4).is_err());
        drop(s);
        // Tear the last entry: it goes, the others and the record stay.
        let path = dir.join("SERIES");
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!(r.series, 2);
        assert!(r.cut_series_bytes > 0);
        assert_eq!(s.take_series().len(), 2);
        assert_eq!(
            s.read_from(0).unwrap().map(|r| (r.seq, r.series)),
            Some((first, 2))
        );
        // The id is handed out again: no record used it.
        s.add_series(&[&c]).unwrap();
        assert_eq!(s.series_count(), 3);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_using_series_the_dictionary_lost_are_cut_and_counted() {
        let dir = tmp("lost-series");
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        s.add_series(&[&key("d", "one")]).unwrap();
        let kept = stored(s.append(b"uses 1", 2, 1).unwrap());
        s.add_series(&[&key("d", "two")]).unwrap();
        s.append(b"uses 2", 3, 2).unwrap();
        s.append(b"uses 1 again", 4, 1).unwrap();
        drop(s);
        // Corrupt the second entry (not a torn tail: a bad disk).
        let path = dir.join("SERIES");
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let (s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!((r.series, r.records, r.lost_readings), (1, 1, 3 + 4));
        assert_eq!(s.dropped(), 7, "counted exactly, and persisted");
        assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(kept));
        assert_eq!(s.read_from(kept + 1).unwrap(), None);
        drop(s);
        let (s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!(s.dropped(), 7);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_agents_spool_is_refused_unless_it_is_empty() {
        let dir = tmp("format1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("EPOCH"), "00000000000000aa\n").unwrap();
        fs::write(dir.join("00000000000000000001.seg"), b"old records").unwrap();
        let err = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains("older agent"), "{message}");
        assert!(
            dir.join("00000000000000000001.seg").exists(),
            "left as it was"
        );
        // Without records it simply becomes a current spool, same epoch.
        fs::remove_file(dir.join("00000000000000000001.seg")).unwrap();
        let (s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert!(!r.new_epoch);
        assert_eq!(s.epoch(), 0xaa);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_flight_records_are_never_dropped() {
        let dir = tmp("inflight");
        let (mut s, _) = Spool::open(opts(&dir, 64 * 1024, FullPolicy::DropOldest)).unwrap();
        let first = stored(s.append(&[1u8; 1000], 1, 0).unwrap());
        s.set_in_flight(first);
        for _ in 0..200 {
            s.append(&[1u8; 1000], 1, 0).unwrap();
        }
        assert_eq!(s.read_from(0).unwrap().unwrap().seq, first);
        let _ = fs::remove_dir_all(&dir);
    }
}
