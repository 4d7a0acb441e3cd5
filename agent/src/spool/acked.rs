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
    /// grew. Linear in the ranges held and heard (after sorting those heard
    /// when they are not ascending): a frame of many ranges, in any order,
    /// costs no more than one merge.
    pub fn add(&mut self, mark: u64, ranges: &[SeqRange], limit: u64) -> bool {
        let before = self.clone();
        self.mark = self.mark.max(mark.min(limit));
        let mut heard: Vec<SeqRange> = ranges
            .iter()
            .filter(|&&(first, last)| first <= last && first <= limit)
            .map(|&(first, last)| (first, last.min(limit)))
            .collect();
        if !heard.is_sorted() {
            heard.sort_unstable();
        }
        if !heard.is_empty() {
            self.merge(&heard);
        }
        self.absorb();
        *self != before
    }

    /// Merges `heard` (ascending by `first`, each `first <= last`) into the
    /// ranges in one pass, joining what overlaps or touches.
    fn merge(&mut self, heard: &[SeqRange]) {
        let held = std::mem::take(&mut self.ranges);
        let mut merged: Vec<SeqRange> = Vec::with_capacity(held.len() + heard.len());
        let (mut a, mut b) = (held.iter().peekable(), heard.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x <= y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            let Some(&(first, last)) = next else { break };
            if last <= self.mark {
                continue;
            }
            let first = first.max(self.mark.saturating_add(1));
            match merged.last_mut() {
                Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        self.ranges = merged;
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

    #[test]
    fn hostile_ranges_neither_overflow_nor_take_quadratic_time() {
        let mut s = AckedSet::default();
        // A range ending at the top of the sequence space, a mark there.
        assert!(s.add(0, &[(5, u64::MAX), (u64::MAX, u64::MAX)], u64::MAX));
        assert_eq!((s.ranges(), s.highest()), (&[(5, u64::MAX)][..], u64::MAX));
        assert!(s.add(u64::MAX, &[(1, u64::MAX)], u64::MAX));
        assert_eq!((s.mark(), s.ranges()), (u64::MAX, &[][..]));
        assert!(!s.add(u64::MAX, &[(u64::MAX, u64::MAX), (3, 2)], u64::MAX));
        // Many ranges in descending order end as they would ascending.
        let n = 200_000u64;
        let down: Vec<SeqRange> = (0..n).rev().map(|i| (10 + 3 * i, 11 + 3 * i)).collect();
        let mut up = down.clone();
        up.reverse();
        let (mut a, mut b) = (AckedSet::default(), AckedSet::default());
        assert!(a.add(0, &down, u64::MAX));
        assert!(b.add(0, &up, u64::MAX));
        assert_eq!(a, b);
        assert_eq!(
            (a.ranges().len() as u64, a.highest()),
            (n, 11 + 3 * (n - 1))
        );
        // Gaps filled later merge with both neighbours.
        let fill: Vec<SeqRange> = (0..n - 1).map(|i| (12 + 3 * i, 12 + 3 * i)).collect();
        assert!(a.add(0, &fill, u64::MAX));
        assert_eq!(a.ranges(), &[(10, 11 + 3 * (n - 1))]);
    }
}
