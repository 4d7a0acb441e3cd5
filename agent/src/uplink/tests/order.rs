//! Tests of the delivery order (`order.rs`, `window.rs`): live batches
//! ahead of the backlog, the backlog's byte share, its window, the gaps
//! bound, nothing acked sent again; against a committer that acks what it
//! receives, as the collector's committed set would.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;

use tributary_proto::v1 as pb;

use super::super::Uplink;
use super::super::declared::Declared;
use super::super::order::{Lanes, MAX_GAPS};
use super::super::window::{DRAIN, MAX, MIN, Window};
use super::{key, uplink_with_batches};
use crate::reading::{Reading, Value};

/// A collector as the uplink sees it, for the delivery-order tests: it
/// commits every batch it receives at once and tells its committed set
/// (the lowest `MAX_ACK_RANGES` ranges, as the wire allows).
#[derive(Default)]
struct Committer {
    set: crate::spool::AckedSet,
    /// How many times each sequence arrived.
    received: BTreeMap<u64, u32>,
}

impl Committer {
    fn receive(&mut self, seq: u64) {
        *self.received.entry(seq).or_default() += 1;
        self.set.add(0, &[(seq, seq)], u64::MAX);
    }

    /// The mark and ranges a Welcome or an Ack carries.
    fn told(&self) -> (u64, Vec<(u64, u64)>) {
        let ranges = self.set.ranges();
        let n = ranges.len().min(tributary_proto::limits::MAX_ACK_RANGES);
        (self.set.mark(), ranges[..n].to_vec())
    }

    fn welcome(&self) -> pb::Welcome {
        let (mark, ranges) = self.told();
        pb::Welcome {
            committed_seq: mark,
            committed_dropped: Some(0),
            committed_ranges: ranges
                .iter()
                .map(|&(first, last)| pb::SeqRange { first, last })
                .collect(),
            out_of_order: true,
            ..Default::default()
        }
    }
}

/// Opens a stream and takes `c`'s Welcome.
fn stream_to(u: &mut Uplink, c: &Committer) -> (Lanes, Declared) {
    let mut lanes = u.open_lanes();
    u.welcome("http://x", &mut lanes, &c.welcome()).unwrap();
    (lanes, Declared::default())
}

/// Sends the next batch, if any: its sequence and encoded bytes (without
/// its series declarations).
fn send(u: &mut Uplink, lanes: &mut Lanes, declared: &mut Declared) -> Option<(u64, u64)> {
    let frame = u.encode_on(lanes, declared).expect("spool read")?;
    match frame.frame {
        Some(pb::agent_frame::Frame::Batch(mut b)) => {
            b.series.clear();
            Some((b.seq, b.encoded_len() as u64))
        }
        other => panic!("not a batch: {other:?}"),
    }
}

/// Seals `n` batches of `readings` readings each.
fn seal_batches(u: &mut Uplink, n: usize, readings: usize) {
    Arc::get_mut(&mut u.config)
        .expect("only the test holds the config")
        .batch_max_readings = readings;
    let k = key("d", "m");
    for _ in 0..n {
        u.push(
            (0..readings)
                .map(|i| Reading {
                    series: k.clone(),
                    ts_ns: 1 + i as i64,
                    value: Value::I64(i as i64),
                })
                .collect(),
        );
    }
}

#[test]
fn after_an_outage_a_live_batch_goes_ahead_of_the_backlog() {
    // 20 batches spooled while the collector was down.
    let (mut u, dir) = uplink_with_batches("live-first", 20);
    let mut c = Committer::default();
    // A collector that takes batches out of order said so before the
    // outage: the next stream waits for its Welcome before sending.
    u.expect_out_of_order = true;
    let mut lanes = u.open_lanes();
    let mut declared = Declared::default();
    assert_eq!(send(&mut u, &mut lanes, &mut declared), None);
    // A batch is sealed before the Welcome comes: it is live.
    seal_batches(&mut u, 1, 1);
    u.welcome("http://x", &mut lanes, &c.welcome()).unwrap();
    let first = send(&mut u, &mut lanes, &mut declared).expect("a batch");
    assert_eq!(first.0, 21, "the live batch goes first");
    c.receive(first.0);
    // The backlog follows, oldest first...
    let (a, b) = (
        send(&mut u, &mut lanes, &mut declared).unwrap().0,
        send(&mut u, &mut lanes, &mut declared).unwrap().0,
    );
    assert_eq!((a, b), (1, 2));
    // ...and a batch sealed while it drains goes out within the backlog's
    // share of the bytes (0.8: four backlog bytes for one live byte),
    // long before the backlog has drained.
    seal_batches(&mut u, 1, 1);
    let mut next = Vec::new();
    while next.last() != Some(&22) {
        next.push(send(&mut u, &mut lanes, &mut declared).unwrap().0);
    }
    assert!(next.len() <= 5, "{next:?}");
    let backlog_sent = next.len() as u64 - 1 + 2;
    assert_eq!(
        next[..next.len() - 1],
        (3..backlog_sent + 1).collect::<Vec<_>>()
    );
    // Acks of the live batches free nothing below: the backlog still goes.
    c.receive(22);
    let (mark, ranges) = c.told();
    u.acked_set(mark, &ranges);
    assert_eq!(u.spool.first_unacked(), Some(1));
    assert_eq!(
        send(&mut u, &mut lanes, &mut declared).unwrap().0,
        backlog_sent + 1
    );
    assert_eq!(
        (
            u.stats.live_batches_sent,
            u.stats.backlog_batches_sent,
            u.stats.live_batches_ahead
        ),
        (2, backlog_sent + 1, 2)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_older_collector_gets_every_batch_in_sequence_order() {
    let (mut u, dir) = uplink_with_batches("in-order", 5);
    // A Welcome without out_of_order: today's order, live batches wait.
    let mut lanes = u.open_lanes();
    let mut declared = Declared::default();
    // The first stream of a process resends at once, before the Welcome.
    assert_eq!(send(&mut u, &mut lanes, &mut declared).unwrap().0, 1);
    let welcome = pb::Welcome {
        committed_seq: 0,
        committed_dropped: Some(0),
        ..Default::default()
    };
    u.welcome("http://x", &mut lanes, &welcome).unwrap();
    seal_batches(&mut u, 2, 1);
    let order: Vec<u64> = std::iter::from_fn(|| send(&mut u, &mut lanes, &mut declared))
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(order, [2, 3, 4, 5, 6, 7]);
    assert!(!u.expect_out_of_order);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_backlog_gets_its_share_of_the_bytes_within_one_batch() {
    for share in [0.8, 0.5, 0.1, 1.0] {
        let (mut u, dir) = uplink_with_batches("share", 400);
        Arc::get_mut(&mut u.config).unwrap().backlog_share = share;
        let c = Committer::default();
        let (mut lanes, mut declared) = stream_to(&mut u, &c);
        let (mut backlog, mut live, mut largest) = (0u64, 0u64, 0u64);
        for i in 0..300 {
            // Live batches keep waiting, of another size than the backlog's.
            if u.spool
                .next_unacked_from(lanes.live_next.max(lanes.live_from))
                .is_none()
            {
                seal_batches(&mut u, 1, 3 + i % 5);
            }
            let (seq, bytes) = send(&mut u, &mut lanes, &mut declared).expect("a batch");
            largest = largest.max(bytes);
            if seq >= lanes.live_from {
                live += bytes;
            } else {
                backlog += bytes;
            }
            let total = (backlog + live) as f64;
            assert!(
                (backlog as f64 - share * total).abs() <= largest as f64,
                "share {share}, batch {i}: backlog {backlog} of {total} bytes"
            );
        }
        assert!(backlog > 0 && (share == 1.0 || live > 0), "share {share}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn nothing_acked_is_sent_again_and_gaps_stay_bounded_across_outages() {
    let (mut u, dir) = uplink_with_batches("gaps", 1);
    let mut c = Committer::default();
    let mut most_gaps = 0;
    for _ in 0..1500 {
        // An outage: one batch spooled meanwhile.
        seal_batches(&mut u, 1, 1);
        let (mut lanes, mut declared) = stream_to(&mut u, &c);
        // One live batch sealed on the stream; the first batch sent is
        // received, the second is lost with the stream.
        seal_batches(&mut u, 1, 1);
        if let Some((seq, _)) = send(&mut u, &mut lanes, &mut declared) {
            assert!(!c.set.contains(seq), "{seq} was acked and is sent again");
            c.receive(seq);
            let (mark, ranges) = c.told();
            u.acked_set(mark, &ranges);
        }
        let _lost = send(&mut u, &mut lanes, &mut declared);
        most_gaps = most_gaps.max(c.set.ranges().len());
        assert!(
            u.spool.acked() == &c.set,
            "the agent lost track of what is acked: {} ranges here, {} at the collector",
            u.spool.acked().ranges().len(),
            c.set.ranges().len()
        );
    }
    assert!(
        most_gaps <= MAX_GAPS + 1,
        "{most_gaps} gaps, more than {MAX_GAPS}"
    );
    assert!(
        most_gaps >= MAX_GAPS / 2,
        "the test made few gaps: {most_gaps}"
    );
    // The link holds at last: everything goes, each batch exactly once.
    let (mut lanes, mut declared) = stream_to(&mut u, &c);
    while let Some((seq, _)) = send(&mut u, &mut lanes, &mut declared) {
        assert!(!c.set.contains(seq), "{seq} was acked and is sent again");
        c.receive(seq);
        let (mark, ranges) = c.told();
        u.acked_set(mark, &ranges);
    }
    let last = u.spool.last_seq();
    assert_eq!((c.set.mark(), c.set.ranges()), (last, &[][..]));
    assert!(c.received.values().all(|&n| n == 1));
    assert_eq!(c.received.len() as u64, last);
    assert_eq!(u.spool.first_unacked(), None);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_window_full_of_backlog_never_holds_a_live_batch_back() {
    let (mut u, dir) = uplink_with_batches("window", 1);
    // A large backlog: batches of 2,000 readings.
    seal_batches(&mut u, 200, 2000);
    let mut c = Committer::default();
    let (mut lanes, mut declared) = stream_to(&mut u, &c);
    let limit = lanes.window.limit();
    let mut sent = Vec::new();
    while let Some((seq, bytes)) = send(&mut u, &mut lanes, &mut declared) {
        sent.push((seq, bytes));
    }
    // Nothing acked: the backlog stops at its window...
    let bytes: u64 = sent.iter().map(|s| s.1).sum();
    let largest = sent.iter().map(|s| s.1).max().unwrap_or(0);
    assert!(
        bytes >= limit && bytes < limit + largest,
        "{bytes} bytes of backlog in flight, window {limit}"
    );
    assert!(sent.len() < 150, "{} batches", sent.len());
    // ...and a live batch still goes.
    seal_batches(&mut u, 1, 5);
    let live = u.spool.last_seq();
    assert_eq!(
        send(&mut u, &mut lanes, &mut declared).map(|s| s.0),
        Some(live)
    );
    assert_eq!(send(&mut u, &mut lanes, &mut declared), None);
    // Acks make room again: the backlog goes on where it stopped.
    for &(seq, _) in &sent {
        c.receive(seq);
    }
    let (mark, ranges) = c.told();
    u.acked_set(mark, &ranges);
    let next = send(&mut u, &mut lanes, &mut declared).map(|s| s.0);
    assert_eq!(next, Some(sent.last().unwrap().0 + 1));
    let _ = std::fs::remove_dir_all(dir);
}

/// The window follows what the collector acks: on a fast link it opens to
/// `MAX`; on a thinner one what is in flight drains in about `DRAIN`.
#[test]
fn the_backlog_window_follows_the_rate_of_acks() {
    let mut now = tokio::time::Instant::now();
    let mut w = Window::default();
    let mut seq = 0;
    // A fast link acks whatever is in flight at once.
    for _ in 0..20 {
        while w.is_open() {
            seq += 1;
            w.sent(seq, 1024);
        }
        now += DRAIN / 10;
        w.answered(now, |_| false);
    }
    assert_eq!(w.limit(), MAX);
    // A link that acks 400 KiB/s: 200 KiB per DRAIN, between MIN and MAX,
    // so the window has to shrink to it (and could not pass by staying at
    // either bound).
    let bytes = 200 * 1024;
    assert!(MIN < bytes && bytes < MAX);
    let mut acked_to = seq;
    for _ in 0..20 {
        while w.is_open() {
            seq += 1;
            w.sent(seq, 1024);
        }
        now += DRAIN;
        acked_to = (acked_to + 200).min(seq);
        w.answered(now, |s| s > acked_to);
    }
    assert_eq!(w.limit(), bytes, "window {} bytes", w.limit());
}

#[test]
fn hostile_welcomes_and_acks_are_refused_naming_the_field() {
    use super::super::delivery::ranges_of;
    let (mut u, dir) = uplink_with_batches("hostile", 5);
    let range = |first, last| pb::SeqRange { first, last };
    let mut lanes = u.open_lanes();
    // An inverted range: refused, and nothing of the Welcome taken (it
    // used to move the numbering past 1000 though the set ignored it).
    let inverted = pb::Welcome {
        committed_seq: 2,
        committed_dropped: Some(0),
        committed_ranges: vec![range(4, 4), range(1000, 7)],
        out_of_order: true,
        ..Default::default()
    };
    let e = u.welcome("http://x", &mut lanes, &inverted).unwrap_err();
    assert!(
        e.starts_with("welcome.committed_ranges[1]: first 1000"),
        "{e}"
    );
    assert_eq!((u.spool.last_seq(), u.spool.first_unacked()), (5, Some(1)));
    // Too many ranges.
    let many: Vec<pb::SeqRange> = (0..=MAX_GAPS as u64 * 2)
        .map(|i| range(10 + 2 * i, 10 + 2 * i))
        .collect();
    let e = ranges_of("ack.ranges", &many).unwrap_err();
    assert!(e.starts_with("ack.ranges: 1025 ranges"), "{e}");
    assert_eq!(
        ranges_of("ack.ranges", &many[1..]).map(|r| r.len()),
        Ok(1024)
    );
    // A range ending at the top of the sequence space: no overflow.
    let top = pb::Welcome {
        committed_seq: 0,
        committed_dropped: Some(0),
        committed_ranges: vec![range(3, u64::MAX)],
        out_of_order: true,
        ..Default::default()
    };
    u.welcome("http://x", &mut lanes, &top).unwrap();
    assert_eq!(u.spool.first_unacked(), Some(1));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn only_batches_sent_on_an_earlier_stream_go_out_as_resent() {
    // A backlog of 1 to 3 (spooled by this process, never sent), then a
    // stream that sends live batch 4 ahead of it and ends.
    let (mut u, dir) = uplink_with_batches("resent", 3);
    let mut c = Committer::default();
    u.expect_out_of_order = true;
    let mut lanes = u.open_lanes();
    seal_batches(&mut u, 1, 1);
    u.welcome("http://x", &mut lanes, &c.welcome()).unwrap();
    let mut declared = Declared::default();
    assert_eq!(
        send(&mut u, &mut lanes, &mut declared).map(|s| s.0),
        Some(4)
    );
    // The next stream sends 1 to 4: only 4 went out before.
    let (mut lanes, mut declared) = stream_to(&mut u, &c);
    let mut resent = Vec::new();
    while let Some(frame) = u.encode_on(&mut lanes, &mut declared).expect("spool read") {
        let Some(pb::agent_frame::Frame::Batch(b)) = frame.frame else {
            panic!("not a batch");
        };
        c.receive(b.seq);
        resent.push((b.seq, b.resent));
    }
    resent.sort();
    assert_eq!(resent, [(1, false), (2, false), (3, false), (4, true)]);
    assert_eq!(u.stats.resent_batches, 1);
    let _ = std::fs::remove_dir_all(dir);
}
