//! The acked set persisted in `ACKED`: after a restart, before any
//! Welcome, a full spool counts only the unacked readings of a partly
//! acked segment as dropped; a missing, torn or corrupt file only makes
//! the count conservative (never lower), and loses no record.

use super::*;
use crate::spool::acked_file::{self, MAX_FILE_BYTES, MAX_PERSISTED_RANGES, Persisted};

/// 64 KiB: segments of 16 KiB (five records of 4000 bytes), room for 16.
const MAX: u64 = 64 * 1024;

/// A spool of 16 records of 10 readings each (segments 1-5, 6-10, 11-15,
/// 16), of which the collector acked 2, 3 and 7.
fn partly_acked(name: &str) -> (Spool, PathBuf) {
    let dir = tmp(name);
    let (mut s, _) = Spool::open(opts(&dir, MAX, FullPolicy::DropOldest)).unwrap();
    append_many(&mut s, 16, 10);
    s.ack_set(0, &[(2, 3), (7, 7)]).unwrap();
    (s, dir)
}

/// Reopens after a crash and fills the spool before any Welcome: two
/// appends of 10 readings, each dropping the oldest segment. Returns what
/// open found and the drop count.
fn restart_and_fill(dir: &Path) -> (Recovery, u64, Spool) {
    let (mut s, r) = Spool::open(opts(dir, MAX, FullPolicy::DropOldest)).unwrap();
    assert_eq!(s.dropped(), 0);
    // Every record is still there, whatever `ACKED` held.
    assert_eq!(s.records().count(), 16);
    append_many(&mut s, 1, 10);
    let after_one = s.dropped();
    append_many(&mut s, 5, 10);
    assert!(s.dropped() > after_one, "the second segment went too");
    (r, s.dropped(), s)
}

#[test]
fn after_a_restart_a_full_spool_counts_exactly_what_was_not_acked() {
    let (mut s, dir) = partly_acked("acked-restart");
    assert!(s.persist_acked().unwrap(), "the set changed: written");
    assert!(!s.persist_acked().unwrap(), "unchanged: not written again");
    // A crash right after the periodic write.
    std::mem::forget(s);
    let (r, dropped, s) = restart_and_fill(&dir);
    assert!(r.acked_loaded && !r.acked_unreadable, "{r:?}");
    // Segment 1-5 less 2 and 3, segment 6-10 less 7: 3 + 4 records.
    assert_eq!(dropped, 70);
    assert_eq!(s.first_unacked(), Some(11));
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn without_the_file_the_count_errs_high_never_low() {
    // Acks after the last write (a crash within the second) are unknown
    // after the restart: their records count as dropped, an overcount.
    let (mut s, dir) = partly_acked("acked-late");
    s.persist_acked().unwrap();
    s.ack_set(0, &[(4, 4)]).unwrap();
    std::mem::forget(s);
    let (_, dropped, s) = restart_and_fill(&dir);
    assert_eq!(dropped, 70, "4 was acked after the write: counted");
    drop(s);
    let _ = fs::remove_dir_all(&dir);

    // No file at all: as before it existed, every record of the two
    // segments counts.
    let (s, dir) = partly_acked("acked-none");
    std::mem::forget(s);
    let (r, dropped, s) = restart_and_fill(&dir);
    assert!(!r.acked_loaded && !r.acked_unreadable, "{r:?}");
    assert_eq!(dropped, 100);
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_or_corrupt_file_is_ignored_and_loses_no_record() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 5] = [
        ("torn", |b| b.truncate(b.len() - 9)),
        // Longer than any file written: not read into memory.
        ("long", |b| b.resize(MAX_FILE_BYTES as usize + 1, 0)),
        ("flipped", |b| b[30] ^= 0x40),
        ("empty", |b| b.clear()),
        ("foreign", |b| *b = b"12 34\n".to_vec()),
    ];
    for (name, damage) in damages {
        let (mut s, dir) = partly_acked(&format!("acked-{name}"));
        s.persist_acked().unwrap();
        std::mem::forget(s);
        let path = dir.join("ACKED");
        let mut bytes = fs::read(&path).unwrap();
        damage(&mut bytes);
        fs::write(&path, &bytes).unwrap();
        let (r, dropped, s) = restart_and_fill(&dir);
        assert!(r.acked_unreadable && !r.acked_loaded, "{name}: {r:?}");
        // Unknown: the conservative count, and the unacked records of
        // the rest all kept.
        assert_eq!(dropped, 100, "{name}");
        assert_eq!(s.first_unacked(), Some(11), "{name}");
        drop(s);
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_clean_close_writes_the_set_and_a_new_epoch_leaves_it_behind() {
    let (s, dir) = partly_acked("acked-close");
    drop(s);
    let (s, r) = Spool::open(opts(&dir, MAX, FullPolicy::DropOldest)).unwrap();
    assert!(r.acked_loaded, "{r:?}");
    assert_eq!(
        (s.acked().mark(), s.acked().ranges()),
        (0, &[(2, 3), (7, 7)][..])
    );
    assert_eq!(s.next_unacked_from(2), Some(4));
    drop(s);

    // A rollover: the old epoch's set does not apply to the new one.
    let (mut s, _) = Spool::open(opts(&dir, MAX, FullPolicy::DropOldest)).unwrap();
    s.ack(16).unwrap();
    let old = s.epoch();
    s.roll_epoch().unwrap();
    s.persist_acked().unwrap();
    let (new, last) = (s.epoch(), s.last_seq());
    std::mem::forget(s);
    let bytes = fs::read(dir.join("ACKED")).unwrap();
    assert_eq!(acked_file::decode(&bytes, old), Persisted::Nothing);
    // Everything numbered so far, none of it a record of the new epoch.
    assert_eq!(
        acked_file::decode(&bytes, new),
        Persisted::Set(last, vec![])
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_file_is_bounded_and_keeps_the_lowest_ranges_that_still_matter() {
    let mut set = AckedSet::default();
    // Ranges 10-11, 13-14, ...: far more than are written.
    let ranges: Vec<SeqRange> = (0..3 * MAX_PERSISTED_RANGES as u64)
        .map(|i| (10 + 3 * i, 11 + 3 * i))
        .collect();
    set.add(5, &ranges, u64::MAX);
    // The oldest record kept is 100: ranges ending below it cannot matter.
    let bytes = acked_file::encode(7, &set, 100);
    assert!(bytes.len() < 70 * 1024, "{}", bytes.len());
    let Persisted::Set(mark, kept) = acked_file::decode(&bytes, 7) else {
        panic!("does not read back");
    };
    assert_eq!(mark, 5);
    assert_eq!(kept.len(), MAX_PERSISTED_RANGES);
    assert_eq!(
        kept[0],
        (100, 101),
        "the first range that ends at 100 or above"
    );
    assert!(kept.iter().all(|r| ranges.contains(r)), "only ranges heard");

    // A count that does not match the bytes, even under a good checksum,
    // is unreadable, not a read past the end.
    let mut lying = bytes[..bytes.len() - 4].to_vec();
    lying[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crate::spool::segment::CRC.checksum(&lying);
    lying.extend_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        acked_file::decode(&lying, 7),
        Persisted::Unreadable(m) if m.contains("ranges of 16 bytes")
    ));
}

#[test]
fn a_file_longer_than_any_written_is_unreadable_unread() {
    let dir = tmp("acked-long");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ACKED");
    fs::write(&path, vec![0u8; MAX_FILE_BYTES as usize + 1]).unwrap();
    assert!(matches!(
        acked_file::read(&dir, 7).unwrap(),
        Persisted::Unreadable(m) if m.contains("longer than")
    ));
    // The longest file written still reads.
    let mut set = AckedSet::default();
    let ranges: Vec<SeqRange> = (0..MAX_PERSISTED_RANGES as u64)
        .map(|i| (10 + 3 * i, 11 + 3 * i))
        .collect();
    set.add(5, &ranges, u64::MAX);
    let bytes = acked_file::encode(7, &set, 0);
    assert_eq!(bytes.len() as u64, MAX_FILE_BYTES);
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        acked_file::read(&dir, 7).unwrap(),
        Persisted::Set(5, r) if r == ranges
    ));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_periodic_write_skips_changes_that_do_not_matter() {
    // Segments 1-5, 6-10, 11-15 sealed; 16 in the one being appended to.
    let (mut s, dir) = partly_acked("acked-matters");
    assert!(
        s.persist_acked().unwrap(),
        "acks in sealed segments: written"
    );
    // Only the segment being appended to (the steady state's acked tail).
    s.ack_set(0, &[(16, 16)]).unwrap();
    assert!(
        !s.persist_acked().unwrap(),
        "an ack of the tail only: not written"
    );
    // A sealed segment fully acked is deleted: nothing on disk changed.
    s.ack_set(0, &[(11, 15)]).unwrap();
    assert_eq!(s.segments(), 3, "11-15 deleted");
    assert!(
        !s.persist_acked().unwrap(),
        "acks of deleted records only: not written"
    );
    // A sealed segment left partly acked: written.
    s.ack_set(0, &[(1, 1)]).unwrap();
    assert!(s.persist_acked().unwrap(), "1 acked, 4 and 5 not: written");
    // The file holds no ack that was not given, and a crash now loses
    // only the skipped ones (16; 11-15 are gone).
    let bytes = fs::read(dir.join("ACKED")).unwrap();
    let Persisted::Set(mark, ranges) = acked_file::decode(&bytes, s.epoch()) else {
        panic!("does not read back");
    };
    assert_eq!((mark, ranges), (3, vec![(7, 7), (11, 16)]));
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_clean_close_writes_what_the_periodic_write_skipped() {
    let (mut s, dir) = partly_acked("acked-close-tail");
    s.persist_acked().unwrap();
    s.ack_set(0, &[(16, 16)]).unwrap();
    assert!(!s.persist_acked().unwrap());
    drop(s);
    let bytes = fs::read(dir.join("ACKED")).unwrap();
    let (s, r) = Spool::open(opts(&dir, MAX, FullPolicy::DropOldest)).unwrap();
    assert!(r.acked_loaded, "{r:?}");
    assert!(s.acked().contains(16), "{bytes:?}");
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn open_deletes_the_segments_the_file_shows_fully_acked() {
    let (mut s, dir) = partly_acked("acked-open-delete");
    // The tail (16) fully acked and kept on disk, written with an ack
    // in a sealed segment; then a crash.
    s.ack_set(0, &[(1, 1), (16, 16)]).unwrap();
    assert_eq!(s.segments(), 4, "the acked tail is kept while running");
    assert!(s.persist_acked().unwrap());
    let bytes_before = s.bytes();
    std::mem::forget(s);
    let (s, r) = Spool::open(opts(&dir, MAX, FullPolicy::DropOldest)).unwrap();
    assert!(r.acked_loaded, "{r:?}");
    assert_eq!(s.segments(), 3, "16's segment deleted at open");
    assert_eq!(s.records().count(), 15);
    assert!(s.bytes() < bytes_before, "and gone from the gauges");
    assert!(s.acked().contains(16));
    drop(s);
    let _ = fs::remove_dir_all(&dir);
}

/// Log lines written while `f` runs on this thread, as the fmt layer
/// writes them (level included, no colours).
fn logged(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    keep_interest();
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = lines.0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Keeps every callsite's cached interest from being `never` in this test
/// binary: `tracing` caches a callsite's interest process-wide, and a test
/// thread without a subscriber that hits the callsite first (or a rebuild
/// racing a scoped dispatcher's registration) can cache `never`, after
/// which [`logged`]'s thread-local subscriber would see nothing (a known
/// flake of parallel `cargo test`). A global subscriber that is interested
/// in everything and records nothing keeps the macros asking the current
/// thread's subscriber.
fn keep_interest() {
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Metadata};
    struct Keeper;
    impl tracing::Subscriber for Keeper {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::always()
        }
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            false
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if a global default is set already, which then does
        // the same job or not; the assertion below says which.
        let _ = tracing::subscriber::set_global_default(Keeper);
    });
}

/// Without `[spool] sync` the file is never fsynced, so an empty or torn
/// one after a power loss is expected: a warning. With it, an error.
#[test]
fn an_unreadable_file_is_an_error_only_with_sync_on() {
    for sync in [false, true] {
        let (mut s, dir) = partly_acked(&format!("acked-level-{sync}"));
        s.persist_acked().unwrap();
        std::mem::forget(s);
        fs::write(dir.join("ACKED"), b"").unwrap();
        let log = logged(|| {
            let mut o = opts(&dir, MAX, FullPolicy::DropOldest);
            o.sync = sync;
            let (s, r) = Spool::open(o).unwrap();
            assert!(r.acked_unreadable, "{r:?}");
            std::mem::forget(s);
        });
        let line = log
            .lines()
            .find(|l| l.contains("spool acked set does not read"))
            .unwrap_or_else(|| panic!("not logged: {log}"));
        let (want, not) = if sync {
            ("ERROR", "WARN")
        } else {
            ("WARN", "ERROR")
        };
        assert!(
            line.contains(want) && !line.contains(not),
            "sync {sync}: {line}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
