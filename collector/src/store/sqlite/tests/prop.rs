//! Property test: random commits, compaction steps, rounds and reopens
//! read back as exactly what was committed.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A batch: (series 1..=6, ts) per reading.
    Commit(Vec<(i64, i64)>),
    Step,
    StartRound,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((1i64..=6, -50i64..400), 0..40).prop_map(Op::Commit),
        3 => Just(Op::Step),
        2 => Just(Op::StartRound),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_stores_every_point_once(
        ops in proptest::collection::vec(op(), 1..30),
        budget in (1u64..50, 1u64..6),
    ) {
        let mut db = TempDb::new("prop");
        make_series(&db, 6);
        db.store.set_step_budget(budget.0, budget.1);
        let mut truth = Truth::new();
        let mut value = 0;
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Commit(readings) => {
                    let batch = readings
                        .iter()
                        .map(|&(s, ts)| {
                            value += 1;
                            truth.entry(s).or_default().push((ts, value));
                            (s, ts, StoredValue::I64(value))
                        })
                        .collect();
                    db.batch(i as i64, batch);
                }
                Op::Step => {
                    db.store.compact().unwrap();
                }
                Op::StartRound => db.store.start_round(),
                Op::Reopen => {
                    db.reopen();
                    db.store.set_step_budget(budget.0, budget.1);
                }
            }
            check(&db, &truth, &format!("after op {i} {op:?}"));
        }
        db.store.compact_all().unwrap();
        check(&db, &truth, "all compacted");
    }
}
