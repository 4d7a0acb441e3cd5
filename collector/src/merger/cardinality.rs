//! The per-agent series limit (`[limits] max_series_per_agent`): how many
//! series each agent has in the store, and the refusal of a resolve that
//! would take an agent past the limit, across all its streams.
//!
//! Counts are loaded from the store at start, refreshed from it at each
//! Hello (another collector sharing a PostgreSQL database may have added
//! series of the agent meanwhile) and raised by each resolve that creates
//! series: only keys the store does not have count (the merger looks them
//! up first, so a series evicted from its table is not counted again).
//! With a shared database, series another collector creates for the agent
//! while it streams here too (two streams of one agent at once) are counted
//! at its next Hello.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use super::Merger;
use crate::model::SeriesKey;

/// A resolve refused because it would take an agent past
/// `max_series_per_agent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "agent {agent} has {stored} series stored and {new} new ones would pass max_series_per_agent ({limit})"
)]
pub struct SeriesLimitExceeded {
    pub agent: Arc<str>,
    pub stored: u64,
    pub new: u64,
    pub limit: u64,
}

impl Merger {
    /// Refuses new series (`missing`: keys the store does not have, without
    /// repeats) that would take an agent past the limit; nothing is
    /// created then. The refusal is logged once per agent.
    pub(super) fn check_series_limit(
        &mut self,
        missing: &[SeriesKey],
    ) -> Result<(), SeriesLimitExceeded> {
        for (agent, new) in per_agent(missing) {
            let stored = self.series_per_agent.get(agent).copied().unwrap_or(0);
            if stored.saturating_add(new) > self.max_series_per_agent {
                let refused = SeriesLimitExceeded {
                    agent: Arc::from(agent),
                    stored,
                    new,
                    limit: self.max_series_per_agent,
                };
                if self.series_limit_logged.insert(refused.agent.clone()) {
                    warn!(
                        agent = %refused.agent,
                        stored,
                        new,
                        max_series_per_agent = refused.limit,
                        "agent reached max_series_per_agent: batches declaring new series are refused with RESOURCE_EXHAUSTED (logged once per agent)"
                    );
                }
                return Err(refused);
            }
        }
        Ok(())
    }

    /// Counts series the store just created (`missing` as checked).
    pub(super) fn count_new_series(&mut self, missing: &[SeriesKey]) {
        for (agent, new) in per_agent(missing) {
            match self.series_per_agent.get_mut(agent) {
                Some(n) => *n += new,
                None => {
                    self.series_per_agent.insert(Arc::from(agent), new);
                }
            }
        }
    }

    /// Reads an agent's series count from the store again (at its Hello).
    pub(super) fn refresh_series_count(&mut self, agent: &Arc<str>) {
        match self.store.series_count(agent) {
            Ok(n) => {
                self.series_per_agent.insert(agent.clone(), n);
            }
            Err(e) => {
                warn!(agent = %agent, error = %e, "counting the agent's series failed; keeping the count this collector has");
            }
        }
    }
}

/// New series per agent.
fn per_agent(keys: &[SeriesKey]) -> HashMap<&str, u64> {
    let mut out: HashMap<&str, u64> = HashMap::new();
    for k in keys {
        *out.entry(k.agent.as_str()).or_default() += 1;
    }
    out
}
