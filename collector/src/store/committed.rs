//! What an (agent, epoch) has committed, as a set of sequences
//! ([`CommittedSet`]): a high-water mark (every sequence from 1 up to it)
//! plus disjoint ascending ranges above it, none touching another or the
//! mark. The mark rises through a range as soon as the two touch, so an
//! agent that sends in order never leaves a range behind.
//!
//! The store keeps the mark in `epochs.committed_seq` and the ranges in
//! `epochs.committed_ranges`, encoded by [`CommittedSet::encode_ranges`]
//! (NULL when there are none, which is also how rows written before ranges
//! existed read). The encoding carries the mark it was written against, so
//! a row whose `committed_seq` a collector without ranges moved still reads
//! as the union of both. The merger, the session (Welcome and Ack frames) and the
//! stores all speak this one type.

use std::fmt;

/// The committed sequences of one (agent, epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedSet {
    mark: u64,
    /// `(first, last)`, both included; ascending, `first <= last`,
    /// `first > previous last + 1` (the first range's "previous last" is
    /// the mark).
    ranges: Vec<(u64, u64)>,
}

/// Why stored ranges could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRanges {
    #[error("unknown committed ranges format {0}")]
    Format(u8),
    #[error("committed ranges end inside a number (byte {0})")]
    Truncated(usize),
    #[error("committed ranges go past the largest sequence (byte {0})")]
    Overflow(usize),
}

/// First byte of an encoding: its format. Version 1 (ranges relative to
/// whatever `committed_seq` the row holds when read) is only read; it
/// misreads a row whose mark a collector without ranges moved.
const FORMAT_V1: u8 = 1;
/// Version 2: the base mark, then the ranges relative to it.
const FORMAT_V2: u8 = 2;

impl CommittedSet {
    /// Every sequence from 1 up to `mark`, nothing above.
    pub fn up_to(mark: u64) -> CommittedSet {
        CommittedSet {
            mark,
            ranges: Vec::new(),
        }
    }

    /// Every sequence up to and including this one is committed.
    pub fn mark(&self) -> u64 {
        self.mark
    }

    /// The ranges above the mark, ascending, `(first, last)` both included.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The lowest `n` ranges (what a Welcome or an Ack lists).
    pub fn lowest_ranges(&self, n: usize) -> &[(u64, u64)] {
        &self.ranges[..self.ranges.len().min(n)]
    }

    /// Whether `seq` is committed.
    pub fn contains(&self, seq: u64) -> bool {
        if seq <= self.mark {
            return true;
        }
        // The first range whose last is at or above `seq`.
        let i = self.ranges.partition_point(|&(_, last)| last < seq);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= seq)
    }

    /// Adds `seq` (sequence 0 is always "committed": sequences start at 1).
    /// `false` when it was in the set already.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.insert_range(seq, seq);
        true
    }

    /// Adds a committed batch's sequence `seq` (with `high_water`, every
    /// sequence up to it: see `BatchWrite::high_water`). `false` when `seq`
    /// was in the set already (a replay: nothing is added).
    pub fn add_batch(&mut self, seq: u64, high_water: bool) -> bool {
        if self.contains(seq) {
            return false;
        }
        if high_water {
            self.raise_mark(seq);
        } else {
            self.insert_range(seq, seq);
        }
        true
    }

    /// Adds every sequence below `floor`: ones the agent says it will never
    /// send (acked, dropped, or never handed out: `Batch.oldest_spooled`).
    pub fn close_below(&mut self, floor: u64) {
        let below = floor.saturating_sub(1);
        if below > self.mark {
            self.raise_mark(below);
        }
    }

    /// Adds every sequence of `other`.
    pub fn union(&mut self, other: &CommittedSet) {
        if other.mark > self.mark {
            self.raise_mark(other.mark);
        }
        for &(first, last) in &other.ranges {
            self.insert_range(first, last);
        }
    }

    /// Whether every sequence of `other` is in `self`.
    pub fn covers(&self, other: &CommittedSet) -> bool {
        if other.mark > self.mark && !self.covers_range(self.mark + 1, other.mark) {
            return false;
        }
        other
            .ranges
            .iter()
            .all(|&(first, last)| self.covers_range(first, last))
    }

    fn covers_range(&self, first: u64, last: u64) -> bool {
        if last <= self.mark {
            return true;
        }
        let i = self.ranges.partition_point(|&(_, l)| l < last);
        let first = first.max(self.mark + 1);
        self.ranges
            .get(i)
            .is_some_and(|&(f, l)| f <= first && last <= l)
    }

    /// Raises the mark to `mark` (everything up to it committed), dropping
    /// the ranges it swallows and rising through one it touches.
    fn raise_mark(&mut self, mark: u64) {
        self.mark = mark;
        let gone = self.ranges.partition_point(|&(_, last)| last <= mark);
        self.ranges.drain(..gone);
        self.settle();
    }

    /// Adds `first..=last`, merging with the ranges (and the mark) it
    /// overlaps or touches.
    fn insert_range(&mut self, first: u64, last: u64) {
        if last <= self.mark {
            return;
        }
        let first = first.max(1);
        // Ranges entirely below `first - 1` stay; so do those entirely
        // above `last + 1`; the ones between merge with the new range.
        let lo = self
            .ranges
            .partition_point(|&(_, l)| l.saturating_add(1) < first);
        let hi = self
            .ranges
            .partition_point(|&(f, _)| f <= last.saturating_add(1));
        let (mut f, mut l) = (first, last);
        if lo < hi {
            f = f.min(self.ranges[lo].0);
            l = l.max(self.ranges[hi - 1].1);
        }
        self.ranges.splice(lo..hi, [(f, l)]);
        self.settle();
    }

    /// Raises the mark through the lowest range while they touch (or
    /// overlap).
    fn settle(&mut self) {
        while let Some(&(first, last)) = self.ranges.first() {
            if first > self.mark.saturating_add(1) {
                break;
            }
            self.mark = self.mark.max(last);
            self.ranges.remove(0);
        }
    }

    /// The ranges, encoded for the store: `None` when there are none.
    ///
    /// A format byte ([`FORMAT_V2`]), the mark as it is now (the *base*,
    /// a LEB128 number), then per range two LEB128 numbers: the gap below
    /// it (sequences not committed since the previous range, or the base)
    /// less one, and its length less one. Each range costs a few bytes
    /// however high the sequences are.
    ///
    /// The encoding carries its own base, so it means the same whatever
    /// `committed_seq` the row holds when it is read: a collector from
    /// before ranges existed moves `committed_seq` and leaves the ranges
    /// alone, and [`Self::decode`] then takes the union of the two.
    pub fn encode_ranges(&self) -> Option<Vec<u8>> {
        if self.ranges.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(11 + self.ranges.len() * 4);
        out.push(FORMAT_V2);
        put_varint(&mut out, self.mark);
        let mut prev = self.mark;
        for &(first, last) in &self.ranges {
            put_varint(&mut out, first - prev - 2);
            put_varint(&mut out, last - first);
            prev = last;
        }
        Some(out)
    }

    /// The set a stored row holds: every sequence up to `mark` (its
    /// `committed_seq`) and every sequence of `encoded` (its
    /// `committed_ranges` as [`Self::encode_ranges`] wrote them, with the
    /// base they carry; `None` or empty: none). Ranges at or below a mark
    /// raised since they were written are absorbed into it.
    pub fn decode(mark: u64, encoded: Option<&[u8]>) -> Result<CommittedSet, BadRanges> {
        let Some(bytes) = encoded.filter(|b| !b.is_empty()) else {
            return Ok(CommittedSet::up_to(mark));
        };
        let mut at = 1;
        let base = match bytes[0] {
            FORMAT_V2 => get_varint(bytes, &mut at)?,
            // Written only by builds from before the base was stored
            // (never released): relative to the row's mark as it is.
            FORMAT_V1 => mark,
            other => return Err(BadRanges::Format(other)),
        };
        let mut set = CommittedSet::up_to(base);
        let mut prev = base;
        while at < bytes.len() {
            let start = at;
            let gap = get_varint(bytes, &mut at)?;
            let len = get_varint(bytes, &mut at)?;
            let first = prev
                .checked_add(gap)
                .and_then(|x| x.checked_add(2))
                .ok_or(BadRanges::Overflow(start))?;
            let last = first.checked_add(len).ok_or(BadRanges::Overflow(start))?;
            set.ranges.push((first, last));
            prev = last;
        }
        if mark > set.mark {
            set.raise_mark(mark);
        }
        Ok(set)
    }
}

impl fmt::Display for CommittedSet {
    /// `12` or `12 +[15-17, 20]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mark)?;
        if self.ranges.is_empty() {
            return Ok(());
        }
        write!(f, " +[")?;
        for (i, &(first, last)) in self.ranges.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        write!(f, "]")
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64, BadRanges> {
    let start = *at;
    let mut v: u64 = 0;
    let mut shift = 0u32;
    loop {
        let &b = bytes.get(*at).ok_or(BadRanges::Truncated(start))?;
        *at += 1;
        if shift == 63 && b > 1 || shift > 63 {
            return Err(BadRanges::Overflow(start));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests;
