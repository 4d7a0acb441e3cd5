//! The set of sequences the collector has acked for the spool's epoch: a
//! high-water mark (every sequence up to it) plus disjoint ranges above it,
//! as the Welcome and every Ack tell it (see ARCHITECTURE.md, "Committed set
//! in the same transaction"). The spool's owner learns it from the
//! collector; the spool keeps it to know which records it may free and
//! which must still go out.
//!
//! The set only grows within an epoch: an ack tells what is durable, and a
//! newer ack (or another collector on the same store) never takes that back,
//! so whatever is heard is added, never replaced.

/// Sequences `first..=last`.
pub type SeqRange = (u64, u64);

/// A set of sequences as a mark plus ranges: ascending, disjoint, none
/// touching another or the mark (`first > mark + 1`), each `first <= last`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedSet {
    mark: u64,
    ranges: Vec<SeqRange>,
}

impl AckedSet {
    /// Every sequence up to and including this one is in the set.
    pub fn mark(&self) -> u64 {
        self.mark
    }

    /// The ranges above the mark.
    pub fn ranges(&self) -> &[SeqRange] {
        &self.ranges
    }

    /// The highest sequence in the set (the mark when there is no range).
    pub fn highest(&self) -> u64 {
        self.ranges.last().map_or(self.mark, |r| r.1)
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.run_end(seq).is_some()
    }

    /// The last sequence of the run of the set holding `seq`, or `None`
    /// when `seq` is not in the set.
    pub fn run_end(&self, seq: u64) -> Option<u64> {
        if seq <= self.mark {
            return Some(self.mark);
        }
        let i = self.ranges.partition_point(|r| r.1 < seq);
        self.ranges.get(i).filter(|r| r.0 <= seq).map(|r| r.1)
    }

    /// Adds everything up to `mark` and the sequences of `ranges` (in any
    /// order; a range with `first > last` is ignored), none above `limit`
    /// (what was never handed out cannot be acked). Returns whether the set
    /// grew.
    pub fn add(&mut self, mark: u64, ranges: &[SeqRange], limit: u64) -> bool {
        let before = self.clone();
        self.mark = self.mark.max(mark.min(limit));
        for &(first, last) in ranges {
            if first <= last && first <= limit {
                self.insert(first, last.min(limit));
            }
        }
        self.absorb();
        *self != before
    }

    /// Inserts `first..=last`, merging what it overlaps or touches.
    fn insert(&mut self, first: u64, last: u64) {
        if last <= self.mark {
            return;
        }
        let mut first = first.max(self.mark + 1);
        let mut last = last;
        // Ranges before `lo` end before `first - 1`; ranges from `hi` on
        // start after `last + 1`; those between merge with the new one.
        let lo = self
            .ranges
            .partition_point(|r| r.1.saturating_add(1) < first);
        let hi = self
            .ranges
            .partition_point(|r| r.0 <= last.saturating_add(1));
        if lo < hi {
            first = first.min(self.ranges[lo].0);
            last = last.max(self.ranges[hi - 1].1);
        }
        self.ranges.splice(lo..hi, [(first, last)]);
    }

    /// Raises the mark through the lowest ranges while they touch it.
    fn absorb(&mut self) {
        let mut n = 0;
        for &(first, last) in &self.ranges {
            if first > self.mark.saturating_add(1) {
                break;
            }
            self.mark = self.mark.max(last);
            n += 1;
        }
        self.ranges.drain(..n);
    }

    /// Everything up to `seq` (a new epoch starts above it).
    pub fn reset_to(&mut self, seq: u64) {
        self.mark = seq;
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_the_mark_rises_through_what_touches_it() {
        let mut s = AckedSet::default();
        assert!(s.add(0, &[(5, 6), (9, 9)], 100));
        assert_eq!((s.mark(), s.ranges()), (0, &[(5, 6), (9, 9)][..]));
        assert!(s.contains(6) && !s.contains(7) && !s.contains(1) && s.contains(0));
        assert_eq!(s.run_end(5), Some(6));
        // 7..8 joins both neighbours.
        assert!(s.add(0, &[(7, 8)], 100));
        assert_eq!(s.ranges(), &[(5, 9)]);
        // The mark reaching 4 takes the range with it.
        assert!(s.add(4, &[], 100));
        assert_eq!((s.mark(), s.ranges()), (9, &[][..]));
        // Nothing above the limit; an inverted range is ignored; what is
        // known already changes nothing.
        assert!(s.add(3, &[(20, 30), (12, 11)], 25));
        assert_eq!(
            (s.mark(), s.ranges(), s.highest()),
            (9, &[(20, 25)][..], 25)
        );
        assert!(!s.add(9, &[(21, 22)], 25));
        assert!(!s.add(0, &[(40, 50)], 25));
        // A mark above a range swallows it.
        assert!(s.add(27, &[], 100));
        assert_eq!((s.mark(), s.ranges()), (27, &[][..]));
        s.reset_to(30);
        assert!(s.contains(30) && !s.contains(31));
    }
}
