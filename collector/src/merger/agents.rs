//! What the merger knows of each agent: who is connected on which stream,
//! its peer, which collector (this one, by name, while it streams here), when it was last seen, and the counters (batches deduplicated,
//! resent) that the next commit adds to the store; and the live view the
//! query side watches, whose `AgentStats` (`/metrics`, the skew count of
//! `ListAgents`) the merger updates in place after each commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::commit::Group;
use super::{Hello, Merger, Welcomed};
use crate::metrics::AgentStats;
use crate::model::{AgentLive, now_ns};
use crate::store::{AgentWrite, EpochRow, WriteSet};

/// Per-agent in-memory state: what the next commit tells the store.
#[derive(Debug, Default)]
pub(super) struct AgentState {
    /// Newest epoch, peer and last-seen time (absolute).
    epoch: u64,
    peer: String,
    last_seen_ns: i64,
    /// Counter increments since the last commit.
    batches_deduplicated: u64,
    batches_resent: u64,
    /// The session that owns the agent's live stream, if any.
    session: Option<u64>,
    dirty: bool,
    /// What `/metrics` and `ListAgents` read (shared with the live view).
    pub(super) stats: Arc<AgentStats>,
}

impl Merger {
    /// A stream said Hello: the agent is connected through `hello.session`.
    /// Returns the committed sequence and drop count of its epoch, for the
    /// Welcome.
    pub(super) fn hello(&mut self, hello: Hello, group: &mut Group) -> Welcomed {
        self.known_agent(&hello.agent).epoch = hello.epoch;
        let durable = self.durable_committed(&hello.agent, hello.epoch);
        let welcomed = Welcomed {
            committed: Arc::new(durable.committed),
            committed_dropped: durable.dropped,
        };
        self.refresh_series_count(&hello.agent);
        self.report(
            &hello.agent,
            hello.epoch,
            hello.dropped,
            hello.last_seq,
            group,
        );
        let (committed, last_seq, ranges) = self
            .epochs
            .get(&(hello.agent.clone(), hello.epoch))
            .map(|row| {
                (
                    row.committed.mark(),
                    row.last_seq,
                    row.committed.ranges().len(),
                )
            })
            .unwrap_or_default();
        let state = self.known_agent(&hello.agent);
        state.peer = hello.peer;
        state.last_seen_ns = now_ns();
        state.session = Some(hello.session);
        state.dirty = true;
        state.stats.seen(state.last_seen_ns);
        state
            .stats
            .delivery(committed, last_seq, state.last_seen_ns);
        state.stats.ranges(ranges);
        self.live_dirty = true;
        welcomed
    }

    /// The agent's state, created on first sight: its stats then start
    /// with the drops of every epoch the merger knows of it (each later
    /// rise is added by `merge_epoch`), and the live view is republished
    /// so scrapes see it.
    fn known_agent(&mut self, agent: &Arc<str>) -> &mut AgentState {
        if !self.agents.contains_key(agent) {
            let state = AgentState::default();
            let dropped = self
                .epochs
                .iter()
                .filter(|((a, _), _)| a == agent)
                .map(|(_, row)| row.dropped)
                .fold(0u64, u64::saturating_add);
            state.stats.dropped(dropped);
            self.agents.insert(agent.clone(), state);
            self.live_dirty = true;
        }
        self.agents.entry(agent.clone()).or_default()
    }

    /// Takes `row` into the cached delivery state of (agent, epoch) (field
    /// by field maximum: it is never ahead of the store) and the agent's
    /// stats: drops that rose, and where its newest epoch stands.
    pub(super) fn merge_epoch(&mut self, agent: &Arc<str>, epoch: u64, row: &EpochRow) {
        let cached = self.epochs.entry((agent.clone(), epoch)).or_default();
        let dropped_before = cached.dropped;
        cached.merge(row);
        let (dropped, committed, last_seq) =
            (cached.dropped, cached.committed.mark(), cached.last_seq);
        let ranges = cached.committed.ranges().len();
        if let Some(state) = self.agents.get(agent) {
            state.stats.dropped(dropped.saturating_sub(dropped_before));
            if state.epoch == epoch {
                state.stats.delivery(committed, last_seq, now_ns());
                state.stats.ranges(ranges);
            }
        }
    }

    /// Counts the batches of `set` that were written (not `skipped`) in
    /// their agents' stats.
    pub(super) fn count_committed(&self, set: &WriteSet, skipped: &[usize]) {
        for (i, b) in set.batches.iter().enumerate() {
            if skipped.contains(&i) {
                continue;
            }
            if let Some(state) = self.agents.get(&b.agent) {
                state.stats.committed(b.readings.len() as u64);
            }
        }
    }

    /// A stream ended: the agent is disconnected, unless a newer stream of
    /// it took over already.
    pub(super) fn goodbye(&mut self, agent: &Arc<str>, session: u64) {
        if let Some(state) = self.agents.get_mut(agent)
            && state.session == Some(session)
        {
            state.session = None;
            self.live_dirty = true;
        }
    }

    /// Counts a batch of `agent` received at `received_ns`: sent before on
    /// an earlier stream (`resent`), and/or a replay of what is committed
    /// (`replay`, deduplicated), with `skewed` readings.
    pub(super) fn saw_batch(
        &mut self,
        agent: &Arc<str>,
        received_ns: i64,
        (resent, replay): (bool, bool),
        skewed: u64,
    ) {
        let state = self.known_agent(agent);
        state.last_seen_ns = state.last_seen_ns.max(received_ns);
        state.stats.saw(resent, replay, received_ns);
        state.stats.skewed(skewed);
        if resent {
            state.batches_resent += 1;
        }
        if replay {
            state.batches_deduplicated += 1;
        }
        state.dirty = true;
    }

    /// Moves what changed of each agent since the last commit into `set`.
    pub(super) fn agent_writes(&mut self, set: &mut WriteSet) {
        for (id, state) in self.agents.iter_mut() {
            if state.dirty {
                state.dirty = false;
                set.agents.push((
                    id.clone(),
                    AgentWrite {
                        epoch: state.epoch,
                        peer: state.peer.clone(),
                        // Written while the agent streams here, so the
                        // row names the collector of its newest stream.
                        collector: if state.session.is_some() {
                            self.name.to_string()
                        } else {
                            String::new()
                        },
                        last_seen_ns: state.last_seen_ns,
                        batches_deduplicated: std::mem::take(&mut state.batches_deduplicated),
                        batches_resent: std::mem::take(&mut state.batches_resent),
                    },
                ));
            }
        }
    }

    /// Publishes who is connected, if that changed since the last time.
    pub(super) fn publish_live(&mut self) {
        if !self.live_dirty {
            return;
        }
        self.live_dirty = false;
        let live: BTreeMap<String, AgentLive> = self
            .agents
            .iter()
            .map(|(id, s)| {
                (
                    id.to_string(),
                    AgentLive {
                        connected: s.session.is_some(),
                        peer: s.peer.clone(),
                        collector: self.name.clone(),
                        stats: s.stats.clone(),
                    },
                )
            })
            .collect();
        self.live_tx.send_replace(Arc::new(live));
    }
}
