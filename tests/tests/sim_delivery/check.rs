//! The delivery contract checked against ground truth, whatever the ack
//! model: only what the devices produced, what the spool reported taken,
//! what the store holds and the drop count it keeps are compared, never the
//! uplink's or the merger's internals.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};

use tributary_agent::reading::{Reading, Value};
use tributary_collector::model::StoredValue;
use tributary_collector::store::read::Selector;
use tributary_collector::store::sqlite::SqliteReader;

use super::procs::AGENT;

/// A reading's identity in the simulation: (device, counter value).
pub type Id = (String, i64);

/// What the store holds of the agent.
#[derive(Debug, Default)]
pub struct Stored {
    /// How many times each reading is stored.
    pub counts: HashMap<Id, u32>,
    /// `agents.dropped_at_agent`: readings the agent counted as dropped.
    pub dropped: u64,
    /// `agents.batches_deduplicated`: replays acked and not stored.
    pub deduplicated: u64,
    /// `agents.batches_resent`.
    pub resent: u64,
}

/// Reads what the store at `db` holds of the simulated agent.
pub fn read_store(db: &Path) -> Result<Stored> {
    let mut stored = Stored::default();
    let series = SqliteReader::new(db)
        .points(&Selector {
            agent: AGENT.into(),
            device: String::new(),
            metric: String::new(),
        })
        .context("reading the store")?;
    for (meta, points) in series {
        for p in points {
            let StoredValue::I64(k) = p.value else {
                anyhow::bail!(
                    "{}: a stored value of another kind: {:?}",
                    meta.key.device,
                    p.value
                );
            };
            *stored
                .counts
                .entry((meta.key.device.to_string(), k))
                .or_default() += 1;
        }
    }
    let conn = rusqlite::Connection::open(db).context("opening the store")?;
    let row = conn.query_row(
        "SELECT dropped_at_agent, batches_deduplicated, batches_resent FROM agents WHERE id = ?1",
        [AGENT],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    );
    match row {
        Ok((d, dd, r)) => {
            stored.dropped = u64::try_from(d).unwrap_or(0);
            stored.deduplicated = u64::try_from(dd).unwrap_or(0);
            stored.resent = u64::try_from(r).unwrap_or(0);
        }
        Err(rusqlite::Error::QueryReturnedNoRows) => {}
        Err(e) => return Err(e).context("reading the agent's counters"),
    }
    Ok(stored)
}

/// The identity of a reading the harness made.
pub fn id_of(r: &Reading) -> Option<Id> {
    match r.value {
        Value::I64(k) => Some((r.series.device.to_string(), k)),
        _ => None,
    }
}

/// What the agent's spool reported giving up (`Failpoint::Dropped` and
/// `Failpoint::NotSpooled`).
#[derive(Debug, Default)]
pub struct Drops {
    /// Ids of the taken readings in records the spool dropped.
    pub ids: HashSet<Id>,
    /// Readings the spool counted as dropped, by its reports.
    pub count: u64,
    /// Dropped records that were never reported taken.
    pub unknown: u64,
}

/// Checks the contract; each violation is one line.
///
/// - nothing stored twice;
/// - nothing stored that no device produced;
/// - every reading the spool took (durable, so possibly acked) is stored,
///   or is in a record the spool reported dropping (by identity, not by
///   count: a reading dropped after its commit, or counted dropped without
///   being taken, cannot cover for a lost one);
/// - the store's drop count (`dropped_at_agent`) is what the spool
///   reported dropping, reading for reading.
pub fn contract(
    produced: &HashMap<String, i64>,
    taken: &[Reading],
    drops: &Drops,
    stored: &Stored,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut twice: Vec<_> = stored.counts.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    for ((device, k), n) in twice.iter().take(5) {
        problems.push(format!("stored {n} times: {device} #{k}"));
    }
    if twice.len() > 5 {
        problems.push(format!(
            "... {} readings stored more than once",
            twice.len()
        ));
    }
    let mut unknown: Vec<_> = stored
        .counts
        .keys()
        .filter(|(d, k)| produced.get(d).is_none_or(|last| *k < 1 || k > last))
        .collect();
    unknown.sort();
    for (device, k) in unknown.iter().take(5) {
        problems.push(format!("stored, never produced: {device} #{k}"));
    }
    let mut missing: Vec<Id> = taken
        .iter()
        .filter_map(id_of)
        .filter(|id| !stored.counts.contains_key(id) && !drops.ids.contains(id))
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let first: Vec<String> = missing
            .iter()
            .take(5)
            .map(|(d, k)| format!("{d} #{k}"))
            .collect();
        problems.push(format!(
            "{} spooled readings neither stored nor in a record the spool dropped: {}",
            missing.len(),
            first.join(", ")
        ));
    }
    if drops.count != stored.dropped {
        problems.push(format!(
            "the spool reported {} readings dropped ({} records of them never reported taken), the store counts {}",
            drops.count, drops.unknown, stored.dropped
        ));
    }
    problems
}
