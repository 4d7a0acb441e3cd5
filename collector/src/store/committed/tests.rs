//! [`CommittedSet`] against a `BTreeSet` of sequences as ground truth,
//! over random insert orders (duplicates included), unions, and the
//! encoding's round trip; garbage never decodes into a panic.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::{BadRanges, CommittedSet};

/// The set as `CommittedSet` should hold it: the mark (every sequence from
/// 1 up to it present) and the maximal runs above it.
fn expected(truth: &BTreeSet<u64>) -> (u64, Vec<(u64, u64)>) {
    let mut mark = 0;
    while truth.contains(&(mark + 1)) {
        mark += 1;
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &s in truth.range(mark + 1..) {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == s => *last = s,
            _ => ranges.push((s, s)),
        }
    }
    (mark, ranges)
}

fn check(set: &CommittedSet, truth: &BTreeSet<u64>, top: u64) {
    let (mark, ranges) = expected(truth);
    assert_eq!(set.mark(), mark, "mark of {set}");
    assert_eq!(set.ranges(), &ranges[..], "ranges of {set}");
    for s in 1..=top + 2 {
        assert_eq!(set.contains(s), truth.contains(&s), "contains {s} in {set}");
    }
    let encoded = set.encode_ranges();
    assert_eq!(encoded.is_none(), ranges.is_empty());
    let back = CommittedSet::decode(set.mark(), encoded.as_deref()).expect("own encoding decodes");
    assert_eq!(&back, set);
}

proptest! {
    #[test]
    fn inserts_in_any_order_match_a_btreeset(seqs in prop::collection::vec(1u64..120, 0..200)) {
        let mut set = CommittedSet::default();
        let mut truth = BTreeSet::new();
        for &s in &seqs {
            let new = set.insert(s);
            prop_assert_eq!(new, truth.insert(s), "insert {} into {}", s, set);
            check(&set, &truth, 120);
        }
    }

    #[test]
    fn union_matches_a_btreeset(
        a in prop::collection::vec(1u64..100, 0..80),
        b in prop::collection::vec(1u64..100, 0..80),
        mark_b in 0u64..40,
    ) {
        let mut x = CommittedSet::default();
        let mut y = CommittedSet::up_to(mark_b);
        let mut truth: BTreeSet<u64> = (1..=mark_b).collect();
        for &s in &a {
            x.insert(s);
            truth.insert(s);
        }
        for &s in &b {
            y.insert(s);
            truth.insert(s);
        }
        let before = x.clone();
        x.union(&y);
        check(&x, &truth, 100);
        prop_assert!(x.covers(&y) && x.covers(&before));
        let mut z = y.clone();
        z.union(&before);
        prop_assert_eq!(&z, &x, "union is symmetric");
    }

    #[test]
    fn covers_matches_subset(
        a in prop::collection::vec(1u64..60, 0..60),
        b in prop::collection::vec(1u64..60, 0..20),
    ) {
        let (mut x, mut y) = (CommittedSet::default(), CommittedSet::default());
        let (mut tx, mut ty) = (BTreeSet::new(), BTreeSet::new());
        for &s in &a {
            x.insert(s);
            tx.insert(s);
        }
        for &s in &b {
            y.insert(s);
            ty.insert(s);
        }
        prop_assert_eq!(x.covers(&y), ty.is_subset(&tx), "{} covers {}", x, y);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic(
        mark in any::<u64>(),
        format in prop::sample::select(vec![1u8, 2, 3]),
        bytes in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        // The format byte forced to a known one (mostly), so the varint,
        // truncation and overflow paths are reached.
        let forced: Vec<u8> = std::iter::once(format).chain(bytes.iter().copied()).collect();
        for input in [&bytes[..], &forced[..]] {
            if let Ok(set) = CommittedSet::decode(mark, Some(input)) {
                // Whatever decodes is a well-formed set holding the mark.
                prop_assert!(set.mark() >= mark);
                let mut prev = set.mark();
                for &(first, last) in set.ranges() {
                    prop_assert!(first > prev.saturating_add(1) && first <= last);
                    prev = last;
                }
            }
        }
    }

    /// A collector from before ranges existed moves `committed_seq` and
    /// leaves `committed_ranges` as it was: the row reads as the union of
    /// the set written and everything up to the new mark.
    #[test]
    fn a_mark_moved_without_the_ranges_reads_as_the_union(
        seqs in prop::collection::vec(1u64..120, 0..80),
        moved in 0u64..130,
    ) {
        let mut set = CommittedSet::default();
        let mut truth = BTreeSet::new();
        for &s in &seqs {
            set.insert(s);
            truth.insert(s);
        }
        let encoded = set.encode_ranges();
        truth.extend(1..=moved);
        let back = CommittedSet::decode(moved.max(set.mark()), encoded.as_deref())
            .expect("own encoding decodes");
        check(&back, &truth, 130);
        // A mark lower than the one written (never written by a collector,
        // but a union either way) loses nothing.
        let mut truth_low: BTreeSet<u64> = seqs.iter().copied().collect();
        truth_low.extend(1..=moved.min(set.mark()));
        let low = CommittedSet::decode(moved.min(set.mark()), encoded.as_deref())
            .expect("own encoding decodes");
        check(&low, &truth_low, 130);
    }
}

#[test]
fn commit_5_3_4_then_1_2_leaves_mark_5_and_no_ranges() {
    let mut set = CommittedSet::default();
    for s in [5, 3, 4] {
        assert!(set.insert(s));
    }
    assert_eq!((set.mark(), set.ranges()), (0, &[(3, 5)][..]));
    assert!(!set.insert(4), "a sequence inside a range is a duplicate");
    for s in [1, 2] {
        assert!(set.insert(s));
    }
    assert_eq!((set.mark(), set.ranges()), (5, &[][..]));
    assert_eq!(set.encode_ranges(), None);
}

#[test]
fn a_high_water_batch_stands_for_everything_below_it() {
    let mut set = CommittedSet::default();
    assert!(set.add_batch(7, false));
    assert!(set.add_batch(3, true), "3 is new; 1 and 2 come with it");
    assert_eq!((set.mark(), set.ranges()), (3, &[(7, 7)][..]));
    assert!(!set.add_batch(7, true), "a replay adds nothing");
    assert!(set.add_batch(4096, true));
    assert_eq!((set.mark(), set.ranges()), (4096, &[][..]));
}

#[test]
fn close_below_adds_what_will_never_be_sent() {
    let mut set = CommittedSet::default();
    set.insert(5);
    set.insert(9);
    set.close_below(0);
    set.close_below(1);
    assert_eq!(set.to_string(), "0 +[5, 9]", "0 and 1 say nothing");
    set.close_below(5);
    assert_eq!(
        set.to_string(),
        "5 +[9]",
        "1..=4 close, the mark rises through 5"
    );
    set.close_below(3);
    assert_eq!(set.to_string(), "5 +[9]", "a lower floor changes nothing");
    set.close_below(12);
    assert_eq!(set.to_string(), "11");
}

#[test]
fn high_sequences_encode_in_a_few_bytes() {
    let mut set = CommittedSet::up_to(1 << 40);
    set.insert((1 << 40) + 1000);
    set.insert((1 << 40) + 1001);
    set.insert((1 << 40) + 5000);
    let bytes = set.encode_ranges().expect("ranges");
    // Format, the base (6 bytes), two ranges of 3 bytes each.
    assert!(bytes.len() <= 13, "{bytes:?}");
    assert_eq!(CommittedSet::decode(1 << 40, Some(&bytes)), Ok(set));
}

#[test]
fn bad_encodings_say_what_is_wrong() {
    assert_eq!(
        CommittedSet::decode(0, Some(&[9, 0, 0])),
        Err(BadRanges::Format(9))
    );
    for format in [1, 2] {
        assert_eq!(
            CommittedSet::decode(0, Some(&[format, 0x80])),
            Err(BadRanges::Truncated(1))
        );
    }
    assert_eq!(
        CommittedSet::decode(0, Some(&[1, 3])),
        Err(BadRanges::Truncated(2))
    );
    assert_eq!(
        CommittedSet::decode(0, Some(&[2, 3, 0])),
        Err(BadRanges::Truncated(3))
    );
    let mut huge = vec![1];
    huge.extend([0xff; 9]);
    huge.push(0x01);
    huge.push(0);
    assert_eq!(
        CommittedSet::decode(5, Some(&huge)),
        Err(BadRanges::Overflow(1))
    );
    let mut huge_base = vec![2];
    huge_base.extend([0xff; 9]);
    huge_base.push(0x02);
    assert_eq!(
        CommittedSet::decode(5, Some(&huge_base)),
        Err(BadRanges::Overflow(1))
    );
    // Base u64::MAX - 1: the first range would start past u64::MAX.
    let mut top = vec![2];
    top.extend([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    top.extend([0, 0]);
    assert_eq!(
        CommittedSet::decode(5, Some(&top)),
        Err(BadRanges::Overflow(11))
    );
    assert_eq!(CommittedSet::decode(7, None), Ok(CommittedSet::up_to(7)));
    assert_eq!(
        CommittedSet::decode(7, Some(&[])),
        Ok(CommittedSet::up_to(7))
    );
    // Format 1 (never released) is relative to the row's mark.
    assert_eq!(
        CommittedSet::decode(3, Some(&[1, 0, 1])).map(|s| s.to_string()),
        Ok("3 +[5-6]".to_owned())
    );
}

/// The encoding carries the mark it was written against: a row whose
/// `committed_seq` moved after it (an older collector's mark-only write)
/// reads as the union, never as ranges shifted by the move.
#[test]
fn ranges_keep_their_base_when_the_mark_moves_under_them() {
    let mut set = CommittedSet::up_to(10);
    for s in [15, 16, 17, 20] {
        set.insert(s);
    }
    let bytes = set.encode_ranges().expect("ranges");
    assert_eq!(bytes[..2], [2, 10], "format 2, base 10");
    let read = |mark| CommittedSet::decode(mark, Some(&bytes)).map(|s| s.to_string());
    assert_eq!(read(10), Ok("10 +[15-17, 20]".to_owned()));
    assert_eq!(read(12), Ok("12 +[15-17, 20]".to_owned()));
    assert_eq!(read(16), Ok("17 +[20]".to_owned()), "15-17 joins the mark");
    assert_eq!(read(19), Ok("20".to_owned()), "19 touches 20");
    assert_eq!(read(40), Ok("40".to_owned()), "all absorbed");
    assert_eq!(read(4), Ok("10 +[15-17, 20]".to_owned()), "a union");
}
