//! Tests of the contract: store URLs, the commit plan, retention timing.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::NewReading;

fn batch(agent: &str, epoch: u64, seq: u64, n: usize) -> BatchWrite {
    BatchWrite {
        agent: Arc::from(agent),
        epoch,
        seq,
        high_water: false,
        floor: 0,
        received_ns: 1,
        readings: (0..n)
            .map(|i| NewReading {
                series_id: 1,
                ts_ns: i as i64,
                value: crate::model::StoredValue::I64(0),
            })
            .collect(),
    }
}

#[test]
fn urls_parse_and_hide_passwords() {
    assert_eq!(
        "sqlite:/tmp/x.db".parse::<StoreUrl>().unwrap(),
        StoreUrl::Sqlite("/tmp/x.db".into())
    );
    assert_eq!(
        "sqlite://rel.db".parse::<StoreUrl>().unwrap(),
        StoreUrl::Sqlite("rel.db".into())
    );
    let pg: StoreUrl = "postgres://u:secret@127.0.0.1:5432/test".parse().unwrap();
    assert_eq!(pg.to_string(), "postgres://u:***@127.0.0.1:5432/test");
    assert_eq!(format!("{pg:?}"), "postgres://u:***@127.0.0.1:5432/test");
    assert!(
        "postgresql://root@127.0.0.1/test"
            .parse::<StoreUrl>()
            .is_ok()
    );
    let err = "mysql://u:pw@h/db".parse::<StoreUrl>().unwrap_err();
    assert!(err.contains("unsupported") && !err.contains("pw"), "{err}");
    assert!("sqlite:".parse::<StoreUrl>().is_err());
}

#[test]
fn plan_skips_what_is_stored_and_advances_the_rest() {
    let a: Arc<str> = Arc::from("a");
    let set = WriteSet {
        batches: vec![
            batch("a", 1, 5, 3),
            batch("a", 1, 6, 2),
            batch("a", 1, 7, 4),
            batch("b", 9, 1, 1),
        ],
        epochs: vec![(
            a.clone(),
            1,
            EpochRow {
                committed: CommittedSet::up_to(7),
                dropped: 2,
                last_seq: 8,
            },
        )],
        agents: vec![(a.clone(), AgentWrite::default())],
    };
    // Another collector committed up to 6 and saw 4 dropped.
    let stored = HashMap::from([(
        (a.clone(), 1),
        EpochRow {
            committed: CommittedSet::up_to(6),
            dropped: 4,
            last_seq: 6,
        },
    )]);
    let plan = Plan::new(&set, &stored);
    assert_eq!(plan.write, [false, false, true, true]);
    assert_eq!(plan.report.skipped, [0, 1]);
    assert_eq!(
        plan.report.epochs,
        [
            (
                a.clone(),
                1,
                EpochRow {
                    committed: CommittedSet::up_to(7),
                    dropped: 4,
                    last_seq: 8
                }
            ),
            (
                Arc::from("b"),
                9,
                EpochRow {
                    committed: CommittedSet::up_to(1),
                    ..EpochRow::default()
                }
            ),
        ]
    );
    let agents = plan.agents(&set);
    assert_eq!(
        agents.len(),
        2,
        "b is added although the merger left it out"
    );
    assert_eq!((agents[0].1.batches_deduplicated, agents[0].2), (2, 4));
    assert_eq!((agents[1].0.as_ref(), agents[1].2), ("b", 1));
}

#[test]
fn plan_takes_sequences_in_any_order_and_skips_those_in_a_range() {
    let a: Arc<str> = Arc::from("a");
    // Stored: 1..=2 and 5..=6 (another collector took 5 and 6 first).
    let mut committed = CommittedSet::up_to(2);
    committed.insert(5);
    committed.insert(6);
    let stored = HashMap::from([(
        (a.clone(), 1),
        EpochRow {
            committed,
            ..EpochRow::default()
        },
    )]);
    let set = WriteSet {
        batches: vec![
            batch("a", 1, 9, 1),
            batch("a", 1, 6, 1),
            batch("a", 1, 4, 1),
            batch("a", 1, 9, 1),
            batch("a", 1, 3, 1),
        ],
        epochs: Vec::new(),
        agents: vec![(a.clone(), AgentWrite::default())],
    };
    let plan = Plan::new(&set, &stored);
    assert_eq!(plan.write, [true, false, true, false, true]);
    assert_eq!(plan.report.skipped, [1, 3]);
    let mut expected = CommittedSet::up_to(6);
    expected.insert(9);
    assert_eq!(plan.report.epochs[0].2.committed, expected);
}

#[test]
fn a_floor_closes_holes_even_when_its_batch_is_skipped() {
    let a: Arc<str> = Arc::from("a");
    let mut committed = CommittedSet::default();
    committed.insert(8);
    let stored = HashMap::from([(
        (a.clone(), 1),
        EpochRow {
            committed,
            ..EpochRow::default()
        },
    )]);
    let mut b = batch("a", 1, 8, 1);
    b.floor = 8;
    let set = WriteSet {
        batches: vec![b],
        epochs: Vec::new(),
        agents: vec![(a.clone(), AgentWrite::default())],
    };
    let plan = Plan::new(&set, &stored);
    assert_eq!(plan.write, [false]);
    assert_eq!(plan.report.epochs[0].2.committed, CommittedSet::up_to(8));
}

#[test]
fn retention_checks_a_tenth_of_the_period_within_bounds() {
    let r = Retention::new(Duration::from_secs(30 * 86400));
    assert_eq!(r.check_every, Duration::from_secs(3600));
    let r = Retention::new(Duration::from_secs(5));
    assert_eq!(r.check_every, Duration::from_secs(1));
}
