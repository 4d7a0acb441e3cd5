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
//! - `<first-seq>.seg`: segments of records
//!   `[len: u32 le][crc32c: u32 le][seq: u64 le][readings: u32 le][batch]`,
//!   where the CRC covers everything after it and `batch` is an encoded
//!   `tributary.v1.Batch` with batch-local series ids.
//!
//! Why not SQLite or redb: the spool only ever appends, reads in order and
//! deletes from the front. A segment log does exactly that with one `write`
//! and one `fdatasync` per batch and no page rewrites, and its failure mode is
//! simple to state: the first record whose length or CRC does not check ends
//! its segment; the rest of that segment is cut off at open, with a logged
//! count, and the agent carries on.
//!
//! The spool does blocking file I/O; its owner (the uplink) calls it from its
//! task: one small write and fsync per sealed batch.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

/// Bytes before the payload: length and CRC.
const HEADER: usize = 8;
/// Bytes of the payload before the batch: sequence and reading count.
const META: usize = 12;
/// Sequence numbers reserved per `SEQ` write.
const SEQ_BLOCK: u64 = 4096;
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
                let e: u64 = rand::random();
                write_atomic(&dir, "EPOCH", &format!("{e:016x}\n"))?;
                recovery.new_epoch = true;
                info!(dir = %dir.display(), epoch = format!("{e:016x}"), "new spool");
                e
            }
        };
        let reserved = read_number(&dir.join("SEQ"))?.unwrap_or(0);
        let dropped = read_number(&dir.join("DROPPED"))?.unwrap_or(0);

        let mut segments = VecDeque::new();
        let mut last_seq = 0u64;
        let mut total = 0u64;
        for (_, path) in seg_paths {
            let (seg, cut) = scan_segment(&path, last_seq)?;
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

    /// The spool's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
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
        self.records().map(|r| r.seq).find(|s| *s > self.acked)
    }

    fn records(&self) -> impl Iterator<Item = &RecordMeta> {
        self.segments.iter().flat_map(|s| s.records.iter())
    }

    /// Marks sequences up to `seq` as being sent on the current stream
    /// (they will not be dropped to make room). Reset with 0 on reconnect.
    pub fn set_in_flight(&mut self, seq: u64) {
        self.in_flight_to = seq;
    }

    /// Appends one encoded batch of `readings` readings and returns its
    /// sequence number.
    pub fn append(&mut self, batch: &[u8], readings: u32) -> Result<Appended, SpoolError> {
        let record_len = (HEADER + META + batch.len()) as u64;
        while self.total_bytes + record_len > self.opts.max_bytes {
            match self.opts.policy {
                FullPolicy::Block => {
                    // Acked records still on disk can go first.
                    if self.delete_acked_front()? {
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
                    if self.delete_acked_front()? {
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
        for seg in &self.segments {
            let Some(meta) = seg.records.iter().find(|r| r.seq >= from) else {
                continue;
            };
            let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
            let mut buf = vec![0u8; meta.len as usize];
            file.read_exact_at(&mut buf, meta.offset)
                .map_err(io_err(&seg.path))?;
            return match decode_record(&buf) {
                Some((seq, readings, batch)) if seq == meta.seq => Ok(Some(Record {
                    seq,
                    readings,
                    batch: batch.to_vec(),
                })),
                _ => Err(SpoolError::Invalid {
                    path: seg.path.clone(),
                    message: format!(
                        "record {} at offset {} changed on disk since it was written",
                        meta.seq, meta.offset
                    ),
                }),
            };
        }
        Ok(None)
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
        while self.delete_acked_front()? {}
        Ok(())
    }

    /// Deletes the oldest segment if every record in it is acked and it is
    /// not the one being appended to. Returns whether it deleted one.
    fn delete_acked_front(&mut self) -> Result<bool, SpoolError> {
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
            && self
                .segments
                .front()
                .and_then(|s| s.records.back())
                .is_some_and(|r| r.seq <= self.acked);
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

/// Reads a segment's valid records. Cuts the file at the first record that
/// is torn, fails its CRC, or does not follow `prev_seq`. Returns the segment
/// and the number of bytes cut.
fn scan_segment(path: &Path, mut prev_seq: u64) -> Result<(Segment, u64), SpoolError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let mut records = VecDeque::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let Some((seq, readings, _)) = decode_record(rest) else {
            break;
        };
        if seq <= prev_seq {
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
    if cut > 0 {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(pos as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok((
        Segment {
            path: path.to_path_buf(),
            size: pos as u64,
            records,
        },
        cut,
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

/// Decodes and checks the record at the start of `buf`: (seq, readings, batch).
fn decode_record(buf: &[u8]) -> Option<(u64, u32, &[u8])> {
    let total = record_len(buf)?;
    let record = buf.get(..total)?;
    let crc = u32::from_le_bytes(record.get(4..8)?.try_into().ok()?);
    let payload = &record[HEADER..];
    if CRC.checksum(payload) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let readings = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
    Some((seq, readings, &payload[META..]))
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

    #[test]
    fn sequences_resume_above_everything_handed_out() {
        let dir = tmp("resume");
        let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert!(r.new_epoch);
        let epoch = s.epoch();
        assert_eq!(stored(s.append(b"one", 1).unwrap()), 1);
        assert_eq!(stored(s.append(b"two", 2).unwrap()), 2);
        s.ack(2).unwrap();
        drop(s);
        let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert!(!r.new_epoch);
        assert_eq!(s.epoch(), epoch);
        // Everything was acked and deleted, yet numbering does not restart.
        let seq = stored(s.append(b"three", 3).unwrap());
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
            .map(|i| stored(s.append(format!("batch {i}").as_bytes(), i).unwrap()))
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
            s.append(&[i as u8; 100], 1).unwrap();
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
        let seq = stored(s.append(b"new", 1).unwrap());
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
            if let Appended::Stored(_) = s.append(&[7u8; 500], 5).unwrap() {
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
        while let Appended::Stored(seq) = s.append(&[1u8; 1000], 1).unwrap() {
            last = seq;
        }
        assert_eq!(s.dropped(), 0);
        s.ack(last).unwrap();
        assert!(matches!(
            s.append(&[1u8; 1000], 1).unwrap(),
            Appended::Stored(_)
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_larger_than_the_spool_is_dropped_and_counted_not_blocked() {
        let dir = tmp("huge");
        let (mut s, _) = Spool::open(opts(&dir, 64 * 1024, FullPolicy::Block)).unwrap();
        assert_eq!(s.append(&[0u8; 100_000], 7).unwrap(), Appended::Dropped);
        assert_eq!(s.dropped(), 7);
        assert!(matches!(
            s.append(b"small", 1).unwrap(),
            Appended::Stored(_)
        ));
        // An ack beyond what was handed out cannot pre-ack later appends.
        s.ack(1_000_000).unwrap();
        let seq = stored(s.append(b"later", 1).unwrap());
        assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(seq));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refused_front_batch_can_be_given_up_and_counted() {
        let dir = tmp("refused");
        let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        let first = stored(s.append(b"poison", 4).unwrap());
        let second = stored(s.append(b"fine", 2).unwrap());
        assert_eq!(s.drop_front(second).unwrap(), 0, "only the oldest unacked");
        assert_eq!(s.drop_front(first).unwrap(), 4);
        assert_eq!(s.dropped(), 4);
        assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(second));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_flight_records_are_never_dropped() {
        let dir = tmp("inflight");
        let (mut s, _) = Spool::open(opts(&dir, 64 * 1024, FullPolicy::DropOldest)).unwrap();
        let first = stored(s.append(&[1u8; 1000], 1).unwrap());
        s.set_in_flight(first);
        for _ in 0..200 {
            s.append(&[1u8; 1000], 1).unwrap();
        }
        assert_eq!(s.read_from(0).unwrap().unwrap().seq, first);
        let _ = fs::remove_dir_all(&dir);
    }
}
