//! The queue operations of the spool: append a batch and its new
//! dictionary entries within the byte bound, which counts the dictionary
//! (drop-oldest or block), read the next unacked record, free every fully
//! acked segment on ack, and give up on a refused batch.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use tracing::warn;

use crate::reading::SeriesKey;

use super::dictionary::encode_series_entries;
use super::durable::sync_dir;
use super::segment::{self, RecordMeta, Segment};
use super::{Appended, FullPolicy, Record, SeqRange, Spool, SpoolError, io_err};

/// A sole segment whose records are all acked is deleted once it holds
/// this much, or when an append needs the room. Below that it takes the
/// next appends: when the collector keeps up, every batch is acked before
/// the next is sealed, and deleting the file at each ack made every append
/// start a new one (a create and a directory fsync per batch, on top of the
/// batch's own `fdatasync`). A clean stop deletes it; after a crash, at most
/// this much acked data is sent again, and the collector acks it without
/// storing it twice.
pub(super) const ACKED_TAIL_KEEP: u64 = 1024 * 1024;

impl Spool {
    /// Appends one encoded batch of `readings` readings, whose highest
    /// series id is `series` (already in the dictionary), and returns its
    /// sequence number.
    pub fn append(
        &mut self,
        batch: &[u8],
        readings: u32,
        series: u32,
    ) -> Result<Appended, SpoolError> {
        self.append_with_series(&[], batch, readings, series)
    }

    /// Appends one encoded batch of `readings` readings whose highest series
    /// id is `series`, after adding `new_series` to the dictionary as ids
    /// `series_count() + 1 ..`. Room is made for both together (the
    /// dictionary counts toward `max_bytes`); the entries are durable before
    /// the record. When the batch is not stored (`Dropped`, `Full`, an
    /// error), its new entries were not added either, unless the record's
    /// own write failed after them: [`Spool::series_count`] says which ids
    /// exist.
    pub fn append_with_series(
        &mut self,
        new_series: &[&SeriesKey],
        batch: &[u8],
        readings: u32,
        series: u32,
    ) -> Result<Appended, SpoolError> {
        let known = u64::from(self.series_count) + new_series.len() as u64;
        if u64::from(series) > known {
            return Err(SpoolError::Invalid {
                path: self.opts.dir.join("SERIES"),
                message: format!(
                    "a batch uses series {series}, beyond the {known} in the dictionary"
                ),
            });
        }
        self.sync_epoch()?;
        let (entries, n) = encode_series_entries(new_series);
        let record_len = (segment::HEADER + segment::META + batch.len()) as u64;
        if let Some(refused) = self.make_room(record_len + entries.len() as u64, readings)? {
            return Ok(refused);
        }
        self.write_series(&entries, n)?;
        let seq = self.next_seq;
        self.reserve(seq)?;
        if self.tail.is_none()
            || self
                .segments
                .back()
                .is_none_or(|s| s.size >= self.segment_bytes)
        {
            self.start_segment(seq)?;
            // The segment before it is sealed now: if every record in it
            // is acked already (acked out of order while it was open), it
            // goes.
            while self.delete_acked_segment(ACKED_TAIL_KEEP)? {}
        }
        let buf = segment::encode_record(seq, readings, series, batch);
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
        let after_write = &self.after_write;
        if let Err(e) = file.write_all(&buf).and_then(|()| {
            if let Some(hook) = after_write {
                (hook.0)(&seg.path, offset, record_len);
            }
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

    /// Makes room for `needed` more bytes (segments and dictionary
    /// together within `max_bytes`): acked segments go first, then, by the
    /// policy, the oldest unacked segment (`DropOldest`) or nothing
    /// (`Block`). `None` when there is room; otherwise what the append of a
    /// batch of `readings` readings comes to (`Dropped` is counted).
    fn make_room(&mut self, needed: u64, readings: u32) -> Result<Option<Appended>, SpoolError> {
        while self.bytes() + needed > self.opts.max_bytes {
            if self.delete_acked_segment(0)? {
                continue;
            }
            match self.opts.policy {
                FullPolicy::Block => {
                    if self.first_unacked().is_none() {
                        // Nothing to wait for: this batch (with its new
                        // dictionary entries, beside the dictionary) is
                        // larger than the spool and would block forever.
                        self.add_dropped(u64::from(readings))?;
                        warn!(
                            readings,
                            bytes = needed,
                            series_bytes = self.series_bytes,
                            "batch does not fit in the spool beside the series dictionary: dropped"
                        );
                        return Ok(Some(Appended::Dropped));
                    }
                    return Ok(Some(Appended::Full));
                }
                FullPolicy::DropOldest => {
                    if !self.drop_oldest_segment()? {
                        // Nothing can be dropped (the only data is in
                        // flight, or this batch alone is larger than the
                        // spool): drop the new batch itself.
                        self.add_dropped(u64::from(readings))?;
                        warn!(
                            readings,
                            series_bytes = self.series_bytes,
                            "spool full: dropped a new batch"
                        );
                        return Ok(Some(Appended::Dropped));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The first unacknowledged record with sequence `>= from`.
    pub fn read_from(&self, from: u64) -> Result<Option<Record>, SpoolError> {
        let Some((seg, meta)) = self.next_unacked_record(from) else {
            return Ok(None);
        };
        let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
        let mut buf = vec![0u8; meta.len as usize];
        file.read_exact_at(&mut buf, meta.offset)
            .map_err(io_err(&seg.path))?;
        match segment::decode_record(&buf) {
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

    /// Everything up to `seq` is committed at the collector (an older
    /// collector's ack): see [`Spool::ack_set`].
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.ack_set(seq, &[])
    }

    /// The collector has committed everything up to `mark` and the
    /// sequences of `ranges` (a Welcome's or an Ack's whole state): forget
    /// them, and delete every segment that holds nothing else, wherever it
    /// is. Nothing beyond what was handed out can be acked: a larger value
    /// would make later appends look acked and never be sent.
    pub fn ack_set(&mut self, mark: u64, ranges: &[SeqRange]) -> Result<(), SpoolError> {
        if !self.acked.add(mark, ranges, self.last_seq()) {
            return Ok(());
        }
        self.acked_dirty = true;
        let acked = &self.acked;
        self.in_flight.retain(|&s| !acked.contains(s));
        while self.delete_acked_segment(ACKED_TAIL_KEEP)? {}
        Ok(())
    }

    /// Deletes the oldest segment whose records are all acked (or that
    /// holds none), wherever it is: any but the one being appended to, and
    /// that one too once it holds at least `keep_tail` bytes (the next
    /// append starts a new one). Returns whether it deleted one.
    pub(super) fn delete_acked_segment(&mut self, keep_tail: u64) -> Result<bool, SpoolError> {
        let last = self.segments.len().saturating_sub(1);
        let all_acked = |seg: &Segment| seg.records.iter().all(|r| self.acked.contains(r.seq));
        let found = self.segments.iter().enumerate().position(|(i, seg)| {
            if i < last {
                all_acked(seg)
            } else {
                // The segment being appended to: an empty one is where the
                // next record goes; a full acked one may go (its size
                // first: in the steady state it is all acked and small).
                !seg.records.is_empty() && seg.size >= keep_tail && all_acked(seg)
            }
        });
        let Some(i) = found else {
            return Ok(false);
        };
        if i == last {
            self.tail = None;
        }
        if let Some(seg) = self.segments.remove(i) {
            match fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if seg.records.is_empty() && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let path = seg.path.clone();
                    self.segments.insert(i, seg);
                    return Err(io_err(&path)(e));
                }
            }
            self.total_bytes -= seg.size;
        }
        Ok(true)
    }

    /// Drops the oldest segment that holds no record in flight on the
    /// current stream, counting its unacked readings (an acked record is
    /// not a drop). Returns whether it dropped one.
    fn drop_oldest_segment(&mut self) -> Result<bool, SpoolError> {
        let Some(i) = self
            .segments
            .iter()
            .position(|seg| !seg.records.iter().any(|r| self.is_in_flight(r.seq)))
        else {
            return Ok(false);
        };
        if i + 1 == self.segments.len() {
            // Dropping the segment being appended to: close it first.
            self.tail = None;
        }
        let Some(seg) = self.segments.remove(i) else {
            return Ok(false);
        };
        let unacked: Vec<(u64, u32)> = seg
            .records
            .iter()
            .filter(|r| !self.acked.contains(r.seq))
            .map(|r| (r.seq, r.readings))
            .collect();
        let lost: u64 = unacked.iter().map(|&(_, n)| u64::from(n)).sum();
        fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        self.total_bytes -= seg.size;
        self.add_dropped(lost)?;
        if let Some(hook) = &self.on_drop {
            for &(seq, readings) in &unacked {
                (hook.0)(self.epoch, seq, readings);
            }
        }
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
        match self.next_unacked_record(self.acked.mark() + 1) {
            Some((_, r)) if r.seq == seq => self.drop_unacked(seq),
            _ => Ok(0),
        }
    }

    /// Like [`Spool::drop_front`] for any unacked record `seq`, not only the
    /// oldest (a refused batch pinned down among those in flight): counts
    /// its readings as dropped and acks it alone. Returns its readings (0
    /// when `seq` is not an unacked record).
    pub fn drop_unacked(&mut self, seq: u64) -> Result<u64, SpoolError> {
        let Some(readings) = self
            .next_unacked_record(seq)
            .filter(|(_, r)| r.seq == seq)
            .map(|(_, r)| u64::from(r.readings))
        else {
            return Ok(0);
        };
        self.add_dropped(readings)?;
        if let Some(hook) = &self.on_drop {
            // `readings` came from a `u32`.
            (hook.0)(self.epoch, seq, u32::try_from(readings).unwrap_or(u32::MAX));
        }
        self.ack_set(0, &[(seq, seq)])?;
        Ok(readings)
    }

    /// Starts the segment file whose first record will be `first_seq`, and
    /// appends to it from now on.
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
}
