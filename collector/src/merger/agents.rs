//! What the merger knows of each agent: who is connected on which stream,
//! its peer, when it was last seen, and the counters (batches deduplicated,
//! resent) that the next commit adds to the store; and the live view the
//! query side watches.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::commit::Group;
use super::{Hello, Merger};
use crate::model::{AgentLive, now_ns};
use crate::store::{AgentWrite, WriteSet};

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
}

impl Merger {
    /// A stream said Hello: the agent is connected through `hello.session`.
    /// Returns the committed sequence of its epoch, for the Welcome.
    pub(super) fn hello(&mut self, hello: Hello, group: &mut Group) -> u64 {
        let committed = self.durable_committed(&hello.agent, hello.epoch);
        self.refresh_series_count(&hello.agent);
        self.report(
            &hello.agent,
            hello.epoch,
            hello.dropped,
            hello.last_seq,
            group,
        );
        let state = self.agents.entry(hello.agent).or_default();
        state.epoch = hello.epoch;
        state.peer = hello.peer;
        state.last_seen_ns = now_ns();
        state.session = Some(hello.session);
        state.dirty = true;
        self.live_dirty = true;
        committed
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
    /// (`replay`, deduplicated).
    pub(super) fn saw_batch(
        &mut self,
        agent: &Arc<str>,
        received_ns: i64,
        resent: bool,
        replay: bool,
    ) {
        let state = self.agents.entry(agent.clone()).or_default();
        state.last_seen_ns = state.last_seen_ns.max(received_ns);
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
                    },
                )
            })
            .collect();
        self.live_tx.send_replace(Arc::new(live));
    }
}
