//! The dictionary counted in `max_bytes`, and the epoch rollover that
//! compacts it: what it changes, and what a crash after each of its steps
//! leaves (always one whole epoch).

use std::fs;
use std::path::Path;

use super::super::epoch::Step;
use super::*;

fn keys(prefix: &str, n: usize) -> Vec<SeriesKey> {
    (0..n).map(|i| key(prefix, &format!("m{i}"))).collect()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Segments plus `SERIES`, as found on disk.
fn disk_bytes(dir: &Path) -> u64 {
    let segments: u64 = segment_files(dir)
        .iter()
        .map(|n| file_len(&dir.join(n)))
        .sum();
    segments + file_len(&dir.join("SERIES"))
}

#[test]
fn the_dictionary_counts_toward_max_bytes() {
    let dir = tmp("dict-bytes");
    let max = 64 * 1024;
    let (mut s, _) = Spool::open(opts(&dir, max, FullPolicy::DropOldest)).unwrap();
    let first = keys("d", 2);
    let refs: Vec<&SeriesKey> = first.iter().collect();
    stored(s.append_with_series(&refs, b"uses 1 and 2", 2, 2).unwrap());
    let series = file_len(&dir.join("SERIES"));
    assert!(series > 0);
    assert_eq!(s.series_bytes(), series);
    assert_eq!(s.bytes(), disk_bytes(&dir), "segments and dictionary");
    // New series every batch, never acked: the dictionary pushes the
    // records out, and the whole spool stays within max_bytes.
    let (mut stored_batches, mut dropped) = (0u64, 0u64);
    for round in 0..400 {
        let new = keys(&format!("churn{round}"), 4);
        let refs: Vec<&SeriesKey> = new.iter().collect();
        let top = s.series_count() + 4;
        match s.append_with_series(&refs, &[7u8; 200], 3, top).unwrap() {
            Appended::Stored(_) => stored_batches += 1,
            Appended::Dropped => dropped += 3,
            Appended::Full => panic!("drop_oldest never blocks"),
        }
        assert!(s.bytes() <= max, "round {round}: {} > {max}", s.bytes());
        assert_eq!(s.bytes(), disk_bytes(&dir), "round {round}");
        assert_eq!(s.series_bytes(), file_len(&dir.join("SERIES")));
    }
    assert!(stored_batches > 0);
    assert!(
        s.series_bytes() > max / 2,
        "the dictionary took the room: {}",
        s.series_bytes()
    );
    assert!(s.dropped() >= dropped, "every drop counted");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_whose_series_do_not_fit_is_not_stored_and_its_ids_are_not_taken() {
    let dir = tmp("dict-full");
    let max = 64 * 1024;
    let (mut s, _) = Spool::open(opts(&dir, max, FullPolicy::Block)).unwrap();
    let many = keys("d", 2_000);
    let refs: Vec<&SeriesKey> = many.iter().collect();
    // Far more than the spool holds, with nothing to wait for: dropped.
    assert_eq!(
        s.append_with_series(&refs, b"x", 5, 2_000).unwrap(),
        Appended::Dropped
    );
    assert_eq!((s.series_count(), s.series_bytes(), s.dropped()), (0, 0, 5));
    // With an unacked record to wait for: full, nothing added.
    let seq = stored(s.append_with_series(&refs[..1], b"y", 1, 1).unwrap());
    assert_eq!(
        s.append_with_series(&refs[1..], b"z", 1, 2_000).unwrap(),
        Appended::Full
    );
    assert_eq!(s.series_count(), 1);
    assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(seq));
    let _ = fs::remove_dir_all(&dir);
}

/// A spool with a dictionary, drops and acked records (sequences 1..=3).
fn used_spool(dir: &Path) -> Spool {
    let (mut s, _) = Spool::open(opts(dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    let k = keys("d", 3);
    for (i, key) in k.iter().enumerate() {
        stored(
            s.append_with_series(&[key], b"batch", 2, i as u32 + 1)
                .unwrap(),
        );
    }
    s.count_lost(5).unwrap();
    s
}

#[test]
fn a_rollover_empties_the_dictionary_and_keeps_numbering() {
    let dir = tmp("rollover");
    let mut s = used_spool(&dir);
    let old = s.epoch();
    let err = s.roll_epoch().unwrap_err().to_string();
    assert!(err.contains("record 1 is unacked"), "{err}");
    assert_eq!(s.epoch(), old, "refused while a record is unacked");
    s.ack(3).unwrap();
    let r = s.roll_epoch().unwrap();
    assert_eq!((r.old_epoch, r.series, r.dropped), (old, 3, 5));
    assert_ne!(r.new_epoch, old);
    assert_eq!(s.epoch(), r.new_epoch);
    assert_eq!((s.series_count(), s.series_bytes(), s.dropped()), (0, 0, 0));
    assert_eq!(file_len(&dir.join("SERIES")), 0);
    assert!(segment_files(&dir).is_empty());
    assert_eq!(s.bytes(), 0);
    // Numbering goes on above the old epoch's; ids start again at 1.
    let k = key("d", "again");
    let seq = stored(s.append_with_series(&[&k], b"new", 1, 1).unwrap());
    assert!(seq > 3, "{seq}");
    drop(s);
    let (mut s, r) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    assert!(!r.new_epoch);
    assert_eq!(
        (s.epoch(), s.dropped(), r.series, r.records),
        (s.epoch(), 0, 1, 1)
    );
    assert_eq!(
        s.take_series()
            .iter()
            .map(|k| (**k).clone())
            .collect::<Vec<_>>(),
        vec![k]
    );
    assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(seq));
    let _ = fs::remove_dir_all(&dir);
}

/// A crash after each step of the rollover (the process gone without
/// running anything more, a temp file of the next `EPOCH` write left
/// behind): the reopened spool is the old epoch, whole, or the new one,
/// whole, never a mix; and it numbers above everything handed out.
#[test]
fn a_crash_at_any_step_of_a_rollover_leaves_one_whole_epoch() {
    for step in [
        Step::SegmentsDeleted,
        Step::SeriesEmptied,
        Step::EpochWritten,
        Step::Done,
    ] {
        let dir = tmp("rollover-crash");
        let mut s = used_spool(&dir);
        s.ack(3).unwrap();
        let old = s.epoch();
        let r = s.roll_epoch_until(step, 0).unwrap();
        // The crash: no destructor runs, and a half-done `EPOCH` write of
        // some other epoch is lying around.
        std::mem::forget(s);
        fs::write(dir.join(".EPOCH.tmp"), "00000000000000ee\n").unwrap();
        let (mut s, rec) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert!(!rec.new_epoch, "{step:?}");
        assert_eq!(rec.records, 0, "{step:?}: every record was acked");
        if step < Step::EpochWritten {
            assert_eq!(s.epoch(), old, "{step:?}");
            assert_eq!(s.dropped(), 5, "{step:?}: the old epoch's drops stay");
            let series = if step == Step::SegmentsDeleted { 3 } else { 0 };
            assert_eq!(rec.series, series, "{step:?}");
        } else {
            assert_eq!(s.epoch(), r.new_epoch, "{step:?}");
            assert_eq!(s.dropped(), 0, "{step:?}: no old drop reported twice");
            assert_eq!(rec.series, 0, "{step:?}");
        }
        // Whichever epoch it is, it goes on consistently.
        let k = key("d", "after");
        let id = s.series_count() + 1;
        let seq = stored(s.append_with_series(&[&k], b"after", 1, id).unwrap());
        assert!(seq > 3, "{step:?}: sequence {seq} reused");
        drop(s);
        let (mut s, rec) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
        assert_eq!((rec.records, rec.lost_readings), (1, 0), "{step:?}");
        assert_eq!(s.take_series().last().map(|k| (**k).clone()), Some(k));
        let _ = fs::remove_dir_all(&dir);
    }
}

/// `EPOCH` cannot be written (here a directory squats its temp file's
/// name): the spool goes on in the new epoch, but stores no record until
/// `EPOCH` says so on disk too.
#[test]
fn no_record_is_stored_until_the_new_epoch_is_on_disk() {
    let dir = tmp("rollover-epoch-unwritten");
    let mut s = used_spool(&dir);
    s.ack(3).unwrap();
    let old = s.epoch();
    let squat = dir.join(".EPOCH.tmp");
    fs::create_dir(&squat).unwrap();
    let r = s.roll_epoch().unwrap();
    assert_eq!(s.epoch(), r.new_epoch);
    assert_eq!(
        fs::read_to_string(dir.join("EPOCH")).unwrap(),
        format!("{old:016x}\n")
    );
    let k = key("d", "after");
    let last = s.last_seq();
    assert!(s.append_with_series(&[&k], b"after", 1, 1).is_err());
    assert_eq!((s.last_seq(), s.pending(), s.series_count()), (last, 0, 0));
    fs::remove_dir(&squat).unwrap();
    let seq = stored(s.append_with_series(&[&k], b"after", 1, 1).unwrap());
    assert_eq!(
        fs::read_to_string(dir.join("EPOCH")).unwrap(),
        format!("{:016x}\n", r.new_epoch)
    );
    drop(s);
    let (s, rec) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    assert_eq!((s.epoch(), rec.records), (r.new_epoch, 1));
    assert_eq!(s.read_from(0).unwrap().map(|r| r.seq), Some(seq));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_drop_count_names_its_epoch() {
    let dir = tmp("dropped-epoch");
    let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    let epoch = s.epoch();
    s.count_lost(4).unwrap();
    drop(s);
    let text = fs::read_to_string(dir.join("DROPPED")).unwrap();
    assert_eq!(text, format!("4 {epoch:016x}\n"));
    // As an older agent wrote it (no epoch): this epoch's.
    fs::write(dir.join("DROPPED"), "9\n").unwrap();
    let (s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    assert_eq!(s.dropped(), 9);
    drop(s);
    // Another epoch's: 0.
    fs::write(dir.join("DROPPED"), "9 00000000000000ab\n").unwrap();
    let (s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    assert_eq!(s.dropped(), 0);
    let _ = fs::remove_dir_all(&dir);
}

/// Drops no acked batch reported are carried into the new epoch (never
/// more than the old epoch had), durably: a restart reads them back.
#[test]
fn unreported_drops_are_carried_into_the_new_epoch() {
    let dir = tmp("dropped-carry");
    let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    s.count_lost(7).unwrap();
    let r = s.roll_epoch_carrying(3).unwrap();
    assert_eq!((r.dropped, r.carried), (7, 3));
    assert_eq!(
        s.dropped(),
        3,
        "the new epoch starts with the carried drops"
    );
    let epoch = s.epoch();
    drop(s);
    let (mut s, _) = Spool::open(opts(&dir, 1 << 20, FullPolicy::DropOldest)).unwrap();
    assert_eq!((s.epoch(), s.dropped()), (epoch, 3));
    // More than the epoch dropped is never carried.
    let r = s.roll_epoch_carrying(100).unwrap();
    assert_eq!((r.dropped, r.carried), (3, 3));
    let _ = fs::remove_dir_all(&dir);
}
