//! The `epochs` table: an older table upgraded in place, and rows whose
//! committed ranges do not decode (named, left out at start, never a
//! panic).

use super::*;

/// An `epochs` table made before `committed_ranges` existed gains the
/// column when opened; its rows read as a mark with no ranges, and a
/// commit above a gap then keeps the range.
#[test]
fn an_older_epochs_table_reads_as_marks_without_ranges() {
    let path = std::env::temp_dir().join(format!(
        "tributary-store-ranges-upgrade-{}-{}.db",
        std::process::id(),
        crate::model::now_ns()
    ));
    let old = Connection::open(&path).unwrap();
    old.execute_batch(
        "CREATE TABLE epochs (agent TEXT NOT NULL, epoch INTEGER NOT NULL, \
         committed_seq INTEGER NOT NULL, dropped INTEGER NOT NULL DEFAULT 0, \
         last_seq INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (agent, epoch)) WITHOUT ROWID;
         INSERT INTO epochs VALUES ('old', 3, 40, 2, 45);",
    )
    .unwrap();
    drop(old);
    let mut store = SqliteStore::open(&path, Durability::Normal).unwrap();
    let row = store.epoch("old", 3).unwrap().unwrap();
    assert_eq!(row.committed, CommittedSet::up_to(40));
    assert_eq!((row.dropped, row.last_seq), (2, 45));
    let batch = |seq| BatchWrite {
        agent: Arc::from("old"),
        epoch: 3,
        seq,
        high_water: false,
        floor: 0,
        received_ns: 1,
        readings: Vec::new(),
    };
    let set = WriteSet {
        batches: vec![batch(44), batch(40)],
        ..WriteSet::default()
    };
    let report = store.commit(&set).unwrap();
    assert_eq!(report.skipped, [1]);
    drop(store);
    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    let loaded = store.load().unwrap();
    let mut expected = CommittedSet::up_to(40);
    expected.insert(44);
    assert_eq!(loaded.epochs[&(Arc::from("old"), 3)].committed, expected);
    assert_eq!(store.epoch("old", 3).unwrap().unwrap().committed, expected);
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Ranges that do not decode are a store error naming the file, the row
/// and what is wrong, from every read of them (never a panic); the load at
/// start leaves the row out, named, and loads the rest.
#[test]
fn garbled_ranges_are_an_error_naming_the_row() {
    let mut db = TempDb::new("garbled-ranges");
    db.conn
        .execute(
            "INSERT INTO epochs (agent, epoch, committed_seq, committed_ranges) \
             VALUES ('edge', 9, 3, x'0780')",
            [],
        )
        .unwrap();
    let e = db.store.epoch("edge", 9).unwrap_err().to_string();
    assert!(
        e.contains("\"edge\", epoch 9") && e.contains("format 7") && e.contains("sqlite"),
        "{e}"
    );
    db.conn
        .execute(
            "INSERT INTO epochs (agent, epoch, committed_seq) VALUES ('fine', 2, 5)",
            [],
        )
        .unwrap();
    let loaded = db.store.load().unwrap();
    assert_eq!(loaded.unreadable_epochs.len(), 1, "{loaded:?}");
    let e = &loaded.unreadable_epochs[0];
    assert!(
        e.contains("\"edge\", epoch 9") && e.contains("format 7"),
        "{e}"
    );
    assert_eq!(loaded.epochs.len(), 1, "{loaded:?}");
    assert_eq!(
        loaded
            .epochs
            .get(&(Arc::from("fine"), 2))
            .map(|r| r.committed.mark()),
        Some(5)
    );
    let set = WriteSet {
        batches: vec![BatchWrite {
            agent: Arc::from("edge"),
            epoch: 9,
            seq: 4,
            high_water: false,
            floor: 0,
            received_ns: 1,
            readings: Vec::new(),
        }],
        ..WriteSet::default()
    };
    let e = db.store.commit(&set).unwrap_err().to_string();
    assert!(e.contains("reading committed ranges"), "{e}");
}
