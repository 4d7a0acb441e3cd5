//! The merger's group commit against a SQLite store: batches of an
//! in-order (high-water) stream and an out-of-order stream of the same
//! (agent, epoch) in one group, each seeing what the other added.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};

use super::{Command, IncomingBatch, LiveAgents, Merger, MergerOptions, Refused, StreamAcks};
use crate::store::{CommittedSet, Durability, StoreUrl};

fn batch(seq: u64, high_water: bool, ack: &super::AckSender) -> Command {
    batch_of("mixed", 2, seq, high_water, ack)
}

fn batch_of(
    agent: &str,
    epoch: u64,
    seq: u64,
    high_water: bool,
    ack: &super::AckSender,
) -> Command {
    Command::Batch(IncomingBatch {
        agent: Arc::from(agent),
        epoch,
        seq,
        high_water,
        floor: 0,
        dropped: 0,
        last_seq: seq,
        resent: false,
        skewed_readings: 0,
        received_ns: 1,
        readings: Vec::new(),
        ack: ack.clone(),
    })
}

/// A merger on a new SQLite file, and the queue it takes commands from.
fn merger(name: &str) -> (Merger, mpsc::Sender<Command>, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "tributary-merger-{name}-{}-{}.db",
        std::process::id(),
        crate::model::now_ns()
    ));
    let (merger, tx) = Merger::try_open_at(&path).expect("merger opens");
    (merger, tx, path)
}

impl Merger {
    /// A merger on the SQLite file `path`, and the queue it takes
    /// commands from.
    fn try_open_at(
        path: &std::path::Path,
    ) -> Result<(Merger, mpsc::Sender<Command>), super::SpawnError> {
        let url = StoreUrl::Sqlite(path.to_path_buf());
        let options = MergerOptions {
            name: Arc::from("test"),
            durability: Durability::Normal,
            capacity: 64,
            retention: None,
            max_series_per_agent: 10,
            max_series_in_memory: 10,
            metrics: Arc::default(),
        };
        let (tx, rx) = mpsc::channel(options.capacity);
        let (live_tx, _live) = watch::channel(LiveAgents::default());
        let (tail, _) = broadcast::channel(4);
        let merger = Merger::open(&url, options, rx, live_tx, tail)?;
        Ok((merger, tx))
    }
}

fn remove(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
fn in_order_and_out_of_order_batches_of_one_epoch_share_a_group() {
    let (mut merger, tx, path) = merger("mixed");
    let (in_order, in_order_rx) = watch::channel(StreamAcks::default());
    let (out_of_order, out_of_order_rx) = watch::channel(StreamAcks::default());
    let (a, b) = (Arc::new(in_order), Arc::new(out_of_order));
    // (sequence, high_water, stream) in the order the merger takes them.
    let group = [
        (1, true, &a),
        (2, true, &a),
        (5, false, &b),
        (3, false, &b),
        // Stands for 3 and 4: the mark rises to 4, then through 5.
        (4, true, &a),
        // In the group's set already: a replay.
        (3, false, &b),
        // Stands for 6 and 7.
        (8, true, &a),
        (10, false, &b),
        (7, false, &b),
    ];
    let mut first = None;
    for (seq, high_water, ack) in group {
        let cmd = batch(seq, high_water, ack);
        if first.is_none() {
            first = Some(cmd);
        } else {
            tx.try_send(cmd).expect("room in the queue");
        }
    }
    assert!(merger.turn(first.expect("a batch")), "one group, committed");

    let mut expected = CommittedSet::up_to(8);
    expected.insert(10);
    let (acks_a, acks_b) = (
        in_order_rx.borrow().clone(),
        out_of_order_rx.borrow().clone(),
    );
    assert_eq!(*acks_a.committed, expected, "the in-order stream's ack");
    assert_eq!(*acks_b.committed, expected, "the out-of-order stream's ack");
    assert_eq!((acks_a.batches, acks_a.replays), (4, 0));
    assert_eq!((acks_b.batches, acks_b.replays), (5, 2), "3 again and 7");
    let row = merger
        .store
        .epoch("mixed", 2)
        .expect("store reads")
        .expect("a row");
    assert_eq!(row.committed, expected, "the store holds what the acks say");

    // The next group closes the hole from the out-of-order side.
    assert!(merger.turn(batch(9, false, &b)));
    assert_eq!(*out_of_order_rx.borrow().committed, CommittedSet::up_to(10));
    drop(merger);
    remove(&path);
}

/// An `epochs` row that does not decode fails only its epoch's batches
/// (each stream told so, naming the row); the rest of the group commits,
/// and the merger goes on (it used to retry that commit forever).
#[test]
fn an_undecodable_epochs_row_fails_only_its_epochs_batches() {
    let (mut merger, tx, path) = merger("bad-row");
    rusqlite::Connection::open(&path)
        .and_then(|c| {
            c.execute(
                "INSERT INTO epochs (agent, epoch, committed_seq, committed_ranges) \
                 VALUES ('broken', 9, 3, x'0780')",
                [],
            )
        })
        .expect("garble a row");
    let (bad, bad_rx) = watch::channel(StreamAcks::default());
    let (good, good_rx) = watch::channel(StreamAcks::default());
    let (bad, good) = (Arc::new(bad), Arc::new(good));
    for cmd in [
        batch_of("broken", 9, 5, false, &bad),
        batch(2, false, &good),
        batch_of("broken", 9, 6, false, &bad),
    ] {
        tx.try_send(cmd).expect("room in the queue");
    }
    assert!(merger.turn(batch(1, true, &good)));
    let good_acks = good_rx.borrow().clone();
    assert_eq!(*good_acks.committed, CommittedSet::up_to(2));
    assert_eq!((good_acks.batches, good_acks.refused), (2, None));
    let bad_acks = bad_rx.borrow().clone();
    assert_eq!(bad_acks.batches, 2, "both answered");
    match bad_acks.refused {
        Some(Refused::BadEpochRow(m)) => assert!(
            m.contains("\"broken\", epoch 9") && m.contains("format 7"),
            "{m}"
        ),
        other => panic!("not refused for the row: {other:?}"),
    }
    assert_eq!(
        *bad_acks.committed,
        CommittedSet::default(),
        "nothing acked"
    );
    let row = merger.store.epoch("mixed", 2).expect("store reads");
    assert_eq!(row.map(|r| r.committed), Some(CommittedSet::up_to(2)));
    drop(merger);
    remove(&path);
}

/// An `epochs` row that does not decode when the merger starts: it starts
/// (it used to fail to load), leaves the row out, and fails only that
/// (agent, epoch)'s batches, naming the row; the others' load and commit.
#[test]
fn an_undecodable_epochs_row_at_start_fails_only_its_epochs_batches() {
    let (mut merger, tx, path) = merger("bad-row-at-start");
    let (first, _first_rx) = watch::channel(StreamAcks::default());
    let first = Arc::new(first);
    assert!(merger.turn(batch(1, true, &first)));
    drop((merger, tx));
    rusqlite::Connection::open(&path)
        .and_then(|c| {
            c.execute(
                "INSERT INTO epochs (agent, epoch, committed_seq, committed_ranges) \
                 VALUES ('broken', 9, 3, x'07deadbeef')",
                [],
            )
        })
        .expect("garble a row");
    let (mut merger, tx) = Merger::try_open_at(&path).expect("the merger starts");
    let key = |agent: &str, epoch| (Arc::<str>::from(agent), epoch);
    assert!(!merger.epochs.contains_key(&key("broken", 9)), "left out");
    assert_eq!(
        merger
            .epochs
            .get(&key("mixed", 2))
            .map(|r| r.committed.clone()),
        Some(CommittedSet::up_to(1)),
        "the others are loaded"
    );
    let (bad, bad_rx) = watch::channel(StreamAcks::default());
    let (good, good_rx) = watch::channel(StreamAcks::default());
    let (bad, good) = (Arc::new(bad), Arc::new(good));
    for cmd in [
        batch_of("broken", 9, 4, false, &bad),
        batch(3, false, &good),
    ] {
        tx.try_send(cmd).expect("room in the queue");
    }
    assert!(merger.turn(batch(2, true, &good)));
    let good_acks = good_rx.borrow().clone();
    assert_eq!(*good_acks.committed, CommittedSet::up_to(3));
    assert_eq!((good_acks.batches, good_acks.refused), (2, None));
    let bad_acks = bad_rx.borrow().clone();
    match bad_acks.refused {
        Some(Refused::BadEpochRow(m)) => assert!(
            m.contains("\"broken\", epoch 9") && m.contains("format 7"),
            "{m}"
        ),
        other => panic!("not refused for the row: {other:?}"),
    }
    assert_eq!(
        *bad_acks.committed,
        CommittedSet::default(),
        "nothing acked"
    );
    drop(merger);
    remove(&path);
}
