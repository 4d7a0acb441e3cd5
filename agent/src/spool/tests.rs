//! Tests of the spool: appends, acks, the byte bound, reopen and repair of
//! torn or corrupt segments and dictionaries; `tests/epoch.rs`: the
//! dictionary in the byte bound and the epoch rollover; `tests/acked.rs`:
//! the acked set persisted (`ACKED`) and exact drops after a restart.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::*;
use crate::reading::{Labels, SeriesKey};

mod acked;
mod epoch;

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
fn the_checksum_is_crc32c_whatever_its_table() {
    // Files written a byte a step read the same: the standard check value,
    // and the one-byte table's result on an odd length with every byte value.
    assert_eq!(segment::CRC.checksum(b"123456789"), 0xE306_9283);
    let bytes: Vec<u8> = (0..4099u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let bytewise = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    for len in [0, 1, 15, 16, 17, 4099] {
        assert_eq!(
            segment::CRC.checksum(&bytes[..len]),
            bytewise.checksum(&bytes[..len])
        );
    }
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
    assert_eq!((r.cut_bytes, r.records), (0, 100));
    // Every record is kept (one segment, partly acked); the acked set
    // written at close (`ACKED`) says which need not go out again.
    assert!(r.acked_loaded);
    let mut next = 0;
    let mut got = Vec::new();
    while let Some(rec) = s.read_from(next).unwrap() {
        got.push(rec.seq);
        next = rec.seq + 1;
    }
    assert_eq!(got, seqs[50..]);
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
    s.sent(first);
    for _ in 0..200 {
        s.append(&[1u8; 1000], 1, 0).unwrap();
    }
    assert_eq!(s.read_from(0).unwrap().unwrap().seq, first);
    let _ = fs::remove_dir_all(&dir);
}

/// `n` records of 4000 bytes and `readings` readings each.
fn append_many(s: &mut Spool, n: usize, readings: u32) -> Vec<u64> {
    (0..n)
        .map(|_| stored(s.append(&[7u8; 4000], readings, 0).unwrap()))
        .collect()
}

#[test]
fn a_segment_goes_once_all_of_it_is_acked_wherever_it_is() {
    let dir = tmp("acked-anywhere");
    // Segments of 16 KiB: five records each.
    let (mut s, _) = Spool::open(opts(&dir, 128 * 1024, FullPolicy::DropOldest)).unwrap();
    append_many(&mut s, 15, 1);
    let files = segment_files(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    // The middle segment's records are acked out of order: it goes while
    // the oldest still waits.
    s.ack_set(0, &[(6, 10)]).unwrap();
    assert_eq!(segment_files(&dir), [files[0].clone(), files[2].clone()]);
    assert_eq!(s.first_unacked(), Some(1));
    assert_eq!(s.read_from(5).unwrap().unwrap().seq, 5);
    assert_eq!(s.read_from(6).unwrap().unwrap().seq, 11, "acked: skipped");
    assert_eq!(s.next_unacked_from(6), Some(11));
    assert_eq!(s.pending(), 10);
    // The open segment, all acked, stays while it is appended to...
    s.ack_set(0, &[(6, 15)]).unwrap();
    assert_eq!(segment_files(&dir), [files[0].clone(), files[2].clone()]);
    assert_eq!(s.next_unacked_from(6), None);
    // ...and goes once sealed (the next append starts a new one).
    let next = append_many(&mut s, 1, 1)[0];
    assert_eq!(next, 16);
    let now = segment_files(&dir);
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(now[0], files[0]);
    assert!(!now.contains(&files[2]), "{now:?}");
    // The mark rises through the ranges: everything up to 15 is acked.
    s.ack(5).unwrap();
    assert_eq!((s.acked().mark(), s.acked().ranges()), (15, &[][..]));
    assert_eq!(segment_files(&dir).len(), 1);
    assert_eq!(s.first_unacked(), Some(16));
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn drop_oldest_spares_what_is_in_flight_and_counts_only_unacked_readings() {
    let dir = tmp("drop-oldest-ranges");
    // 64 KiB: segments of 16 KiB (five records), room for 16 records.
    let (mut s, _) = Spool::open(opts(&dir, 64 * 1024, FullPolicy::DropOldest)).unwrap();
    let dropped: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let seen = dropped.clone();
    s.set_on_drop(Some(OnDrop(Arc::new(move |_, seq, _| {
        seen.lock().unwrap().push(seq)
    }))));
    append_many(&mut s, 16, 10);
    // The oldest segment (1-5) has 1 in flight; the next (6-10) has 7
    // acked out of order.
    s.sent(1);
    s.ack_set(0, &[(7, 7), (12, 12)]).unwrap();
    // The next append needs room: the oldest segment not in flight goes,
    // and its acked record is no drop.
    append_many(&mut s, 1, 10);
    assert_eq!(*dropped.lock().unwrap(), [6, 8, 9, 10]);
    assert_eq!(s.dropped(), 40);
    assert_eq!(s.first_unacked(), Some(1));
    assert_eq!(s.next_unacked_from(2), Some(2));
    assert_eq!(s.next_unacked_from(6), Some(11));
    // A record in flight and acked is no longer held: its segment may go.
    s.ack_set(1, &[]).unwrap();
    append_many(&mut s, 5, 10);
    assert_eq!(dropped.lock().unwrap()[..8], [6, 8, 9, 10, 2, 3, 4, 5]);
    assert_eq!(s.dropped(), 80);
    assert_eq!(s.first_unacked(), Some(11));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_new_epoch_waits_for_every_record_even_with_later_ones_acked() {
    let dir = tmp("epoch-ranges");
    let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    append_many(&mut s, 3, 1);
    s.ack_set(0, &[(2, 3)]).unwrap();
    let err = s.roll_epoch().unwrap_err().to_string();
    assert!(err.contains("record 1 is unacked"), "{err}");
    s.ack(1).unwrap();
    let old = s.epoch();
    let r = s.roll_epoch().unwrap();
    assert_eq!(r.old_epoch, old);
    // Numbering goes on; the new epoch's set starts above the old one.
    let next = append_many(&mut s, 1, 1)[0];
    assert_eq!(next, 4);
    assert_eq!(s.first_unacked(), Some(4));
    let _ = fs::remove_dir_all(&dir);
}
