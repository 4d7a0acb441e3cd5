//! `ACKED`: the acked set of the epoch as last persisted, so that after a
//! restart, before the first Welcome, the spool still knows which of its
//! records the collector has committed (a partly acked segment dropped to
//! make room then counts only its unacked readings; see ARCHITECTURE.md,
//! "Exact drop accounting").
//!
//! Format: `[magic "TAK1"][epoch: u64 le][mark: u64 le][n: u32 le]`, then
//! `n` ranges `[first: u64 le][last: u64 le]`, then a crc32c (u32 le) of
//! everything before it. Written atomically (temporary file, fsync,
//! rename, directory fsync; the fsyncs only when `[spool] sync` is on, as
//! for records) by [`Spool::persist_acked`], which the uplink calls once a
//! second (off the tokio workers, as a seal's fsync), and at a clean close:
//! never once per ack. Measured on this machine's ext4: about 11 ms per
//! write with the fsyncs (median of 50). The periodic call writes only
//! when the change matters: a newly acked record still on disk in a
//! sealed segment (one acked out of order, or partly acked when its
//! successor started). Acks of records already deleted, and acks in the
//! segment being appended to (the kept acked tail of the steady state),
//! wait for the close: under steady traffic the file is not rewritten
//! every second forever (flash wear), only when a segment is sealed
//! partly acked. A file that does not read, or a file longer than any
//! written ([`MAX_FILE_BYTES`]), is not trusted (below).
//!
//! It only ever holds what the in-memory set held, so it errs one way
//! only: acks that came after the last write (and, after a crash, those of
//! the kept tail, at most a segment) are not in it, and a restart may
//! send those records again (deduplicated) or count them as dropped if
//! they are dropped before a Welcome (an overcount); it never calls a
//! record acked that was not. At open, the segments the file shows fully
//! acked are deleted. The in-memory set holds the collector's acks and
//! the records given up on after refusals, whose readings `DROPPED`
//! counted (durably) before: after a restart those are neither sent nor
//! counted again.
//!
//! Bounded: only ranges that end at or above the oldest record kept are
//! written (the others cannot matter again), at most
//! [`MAX_PERSISTED_RANGES`] of them, the lowest (the oldest segments are
//! the ones dropped first); leaving ranges out only makes it conservative.
//! A file that does not read (torn, corrupt, of another format, too long)
//! is ignored with an error logged (a warning without `[spool] sync`,
//! where a power loss may leave it empty or torn) and
//! [`super::Recovery::acked_unreadable`] set: the set starts empty, as before this file existed, and no record
//! is lost, since an unknown set only means resends (deduplicated) or an
//! overcount. A file of another epoch is ignored quietly.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::durable::replace;
use super::segment::CRC;
use super::{AckedSet, SeqRange, Spool, SpoolError, io_err};

const MAGIC: &[u8; 4] = b"TAK1";
/// Magic, epoch, mark, count.
const HEAD: usize = 4 + 8 + 8 + 4;

/// The most ranges written (16 bytes each: the file stays under 65,600
/// bytes).
pub(super) const MAX_PERSISTED_RANGES: usize = 4096;

/// What `ACKED` held for an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Persisted {
    /// No file, or one of another epoch.
    Nothing,
    /// The mark and the ranges above it.
    Set(u64, Vec<SeqRange>),
    /// The file does not read; why.
    Unreadable(String),
}

/// The bytes of `ACKED` for `set` of `epoch`, leaving out ranges that end
/// below `from` (the oldest record kept).
pub(super) fn encode(epoch: u64, set: &AckedSet, from: u64) -> Vec<u8> {
    let ranges: Vec<SeqRange> = set
        .ranges()
        .iter()
        .copied()
        .filter(|r| r.1 >= from)
        .take(MAX_PERSISTED_RANGES)
        .collect();
    let mut out = Vec::with_capacity(HEAD + ranges.len() * 16 + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&set.mark().to_le_bytes());
    // At most MAX_PERSISTED_RANGES.
    out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (first, last) in ranges {
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&last.to_le_bytes());
    }
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads `bytes` as `ACKED` for `epoch`.
pub(super) fn decode(bytes: &[u8], epoch: u64) -> Persisted {
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return Persisted::Unreadable(format!("{} bytes: shorter than a checksum", bytes.len()));
    };
    let (body, crc) = bytes.split_at(body_len);
    if CRC.checksum(body).to_le_bytes() != crc {
        return Persisted::Unreadable("checksum does not match (torn or corrupt)".into());
    }
    if body.len() < HEAD || &body[..4] != MAGIC {
        return Persisted::Unreadable("not an acked-set file of this format".into());
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut n = [0u8; 4];
    n.copy_from_slice(&body[20..24]);
    let n = u32::from_le_bytes(n) as usize;
    let expected = n.checked_mul(16).and_then(|b| b.checked_add(HEAD));
    if expected != Some(body.len()) {
        return Persisted::Unreadable(format!(
            "{} bytes for {n} ranges of 16 bytes after a {HEAD}-byte head",
            body.len()
        ));
    }
    if u64_at(4) != epoch {
        return Persisted::Nothing;
    }
    let ranges = (0..n)
        .map(|i| (u64_at(HEAD + 16 * i), u64_at(HEAD + 16 * i + 8)))
        .collect();
    Persisted::Set(u64_at(12), ranges)
}

/// The longest valid `ACKED`: the head, [`MAX_PERSISTED_RANGES`] ranges
/// and the checksum.
pub(super) const MAX_FILE_BYTES: u64 = (HEAD + MAX_PERSISTED_RANGES * 16 + 4) as u64;

/// Reads `ACKED` in `dir` for `epoch`. A file longer than any this code
/// writes is not read into memory: it is [`Persisted::Unreadable`].
pub(super) fn read(dir: &Path, epoch: u64) -> Result<Persisted, SpoolError> {
    let path = dir.join("ACKED");
    let mut file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Persisted::Nothing),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let len = file.metadata().map_err(io_err(&path))?.len();
    if len > MAX_FILE_BYTES {
        return Ok(Persisted::Unreadable(format!(
            "{len} bytes: longer than the {MAX_FILE_BYTES} of the largest acked-set file"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte past the limit tells a file that grew since its length was
    // read.
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Ok(Persisted::Unreadable(format!(
            "longer than the {MAX_FILE_BYTES} bytes of the largest acked-set file"
        )));
    }
    Ok(decode(&bytes, epoch))
}

impl Spool {
    /// Writes the acked set to `ACKED` if it changed since it was last
    /// written in a way that matters (see [`Spool::acked_change_matters`]
    /// and this module's comment). Returns whether it wrote. On an error
    /// the set stays to be written, by the next call. The uplink calls it
    /// once a second.
    pub fn persist_acked(&mut self) -> Result<bool, SpoolError> {
        if !self.acked_dirty || !self.acked_change_matters() {
            return Ok(false);
        }
        self.write_acked_if_changed()
    }

    /// Writes the acked set to `ACKED` if it changed at all since it was
    /// last written (a clean close: once, so the kept tail's acks are in it
    /// too). Returns whether it wrote.
    pub(super) fn write_acked_if_changed(&mut self) -> Result<bool, SpoolError> {
        if !self.acked_dirty {
            return Ok(false);
        }
        let from = self
            .segments
            .front()
            .and_then(|s| s.records.front())
            .map_or(self.next_seq, |r| r.seq);
        let bytes = encode(self.epoch, &self.acked, from);
        // Durable only when appends are: a file lost or older only makes
        // the count conservative.
        replace(&self.opts.dir, "ACKED", &bytes, self.opts.sync)?;
        self.acked_dirty = false;
        self.acked_written = Some((self.epoch, self.acked.clone()));
        Ok(true)
    }

    /// Whether the set acks a record that `ACKED` does not and whose
    /// absence from it could make a drop count err high by more than the
    /// kept tail: a record on disk in a segment other than the one being
    /// appended to. Acks of records already deleted change nothing on a
    /// restart; acks in the newest segment are, in the steady state, the
    /// in-order acks of the kept acked tail, which would otherwise rewrite
    /// the file every second forever (flash wear): after a crash that
    /// tail is sent again (deduplicated) and, only if dropped before the
    /// first Welcome, counted (see this module's comment). Always true
    /// when `ACKED` holds another epoch's set or is not known.
    fn acked_change_matters(&self) -> bool {
        let Some((_, written)) = self
            .acked_written
            .as_ref()
            .filter(|(epoch, _)| *epoch == self.epoch)
        else {
            return true;
        };
        let sealed = self.segments.len().saturating_sub(1);
        self.segments
            .iter()
            .take(sealed)
            .flat_map(|seg| seg.records.iter())
            .any(|r| self.acked.contains(r.seq) && !written.contains(r.seq))
    }
}
