//! The lock-check-skip decision of a commit, shared by both write sides:
//! given the locked delivery state of every (agent, epoch) a [`WriteSet`]
//! touches, which batches to write, which to skip, and what to store.

use std::collections::HashMap;
use std::sync::Arc;

use super::contract::{AgentWrite, CommitReport, EpochRow, WriteSet};

/// Which batches to write, decided under the lock from the stored state.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Parallel to `WriteSet::batches`.
    pub write: Vec<bool>,
    pub report: CommitReport,
    /// Per agent: readings written and batches skipped by this plan.
    pub per_agent: HashMap<Arc<str>, (u64, u64)>,
}

impl Plan {
    /// The (agent, epoch) pairs a set touches, sorted (the order locks are
    /// taken in, so two writers never wait on each other in a cycle).
    pub fn keys(set: &WriteSet) -> Vec<(Arc<str>, u64)> {
        let mut keys: Vec<(Arc<str>, u64)> = set
            .epochs
            .iter()
            .map(|(a, e, _)| (a.clone(), *e))
            .chain(set.batches.iter().map(|b| (b.agent.clone(), b.epoch)))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Compares each batch with `stored` (the locked rows; missing means
    /// nothing committed yet): a batch whose sequence the committed set
    /// holds is skipped, the others are added to it (in any order; a
    /// `high_water` batch with every sequence below it). Reported dropped and last spooled
    /// sequences only grow.
    pub fn new(set: &WriteSet, stored: &HashMap<(Arc<str>, u64), EpochRow>) -> Plan {
        let mut state: HashMap<(Arc<str>, u64), EpochRow> = Plan::keys(set)
            .into_iter()
            .map(|k| {
                let row = stored.get(&k).cloned().unwrap_or_default();
                (k, row)
            })
            .collect();
        let mut plan = Plan::default();
        for (i, b) in set.batches.iter().enumerate() {
            let row = state.entry((b.agent.clone(), b.epoch)).or_default();
            let counts = plan.per_agent.entry(b.agent.clone()).or_default();
            row.committed.close_below(b.floor);
            if row.committed.add_batch(b.seq, b.high_water) {
                plan.write.push(true);
                counts.0 += b.readings.len() as u64;
            } else {
                plan.write.push(false);
                plan.report.skipped.push(i);
                counts.1 += 1;
            }
        }
        for (agent, epoch, reported) in &set.epochs {
            let row = state.entry((agent.clone(), *epoch)).or_default();
            row.dropped = row.dropped.max(reported.dropped);
            row.last_seq = row.last_seq.max(reported.last_seq);
        }
        let mut epochs: Vec<_> = state.into_iter().map(|((a, e), r)| (a, e, r)).collect();
        epochs.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        plan.report.epochs = epochs;
        plan
    }

    /// The agents to upsert: the merger's view plus what this plan wrote.
    pub fn agents(&self, set: &WriteSet) -> Vec<(Arc<str>, AgentWrite, u64)> {
        let mut out: Vec<(Arc<str>, AgentWrite, u64)> = Vec::with_capacity(set.agents.len());
        let mut seen = HashMap::new();
        for (id, a) in &set.agents {
            let (stored, skipped) = self.per_agent.get(id).copied().unwrap_or_default();
            let mut a = a.clone();
            a.batches_deduplicated += skipped;
            seen.insert(id.clone(), ());
            out.push((id.clone(), a, stored));
        }
        // The contract says every agent of a batch is listed; if one is
        // not, its counts still land (an empty peer keeps the stored one).
        for b in &set.batches {
            if seen.insert(b.agent.clone(), ()).is_none() {
                let (stored, skipped) = self.per_agent.get(&b.agent).copied().unwrap_or_default();
                let a = AgentWrite {
                    epoch: b.epoch,
                    last_seen_ns: b.received_ns,
                    batches_deduplicated: skipped,
                    ..AgentWrite::default()
                };
                out.push((b.agent.clone(), a, stored));
            }
        }
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }
}
