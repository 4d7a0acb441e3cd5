//! Opening the merger: the store opened and its state loaded (delivery
//! state per (agent, epoch), series counts, the newest series), on the
//! thread that will run it; `epochs` rows that do not decode are named.

use std::collections::{HashMap, HashSet};

use tokio::sync::{broadcast, mpsc, watch};
use tracing::error;

use super::series::SeriesTable;
use super::{Command, Merger, MergerOptions, SpawnError};
use crate::model::{Committed, LiveAgents};
use crate::store::{Store, StoreUrl};

impl Merger {
    /// Opens the store at `url` and loads the merger's state from it (on
    /// the thread that will run it).
    pub(super) fn open(
        url: &StoreUrl,
        options: MergerOptions,
        rx: mpsc::Receiver<Command>,
        live_tx: watch::Sender<LiveAgents>,
        tail: broadcast::Sender<Committed>,
    ) -> Result<Merger, SpawnError> {
        let mut store = Store::open(url, options.durability).map_err(SpawnError::Open)?;
        let loaded = store.load().map_err(SpawnError::Load)?;
        log_unreadable_epochs(&loaded.unreadable_epochs);
        let count = loaded.series_per_agent.values().sum::<u64>();
        let mut series = SeriesTable::new(
            options.max_series_in_memory,
            usize::try_from(count).unwrap_or(usize::MAX),
        );
        // In id order: what stays is the newest series.
        store
            .load_series(&mut |row| {
                series.insert_row(&row);
                series.evict();
            })
            .map_err(SpawnError::Load)?;
        Ok(Merger {
            store,
            rx,
            series,
            series_per_agent: loaded.series_per_agent,
            max_series_per_agent: options.max_series_per_agent,
            series_limit_logged: HashSet::new(),
            epochs: loaded.epochs,
            agents: HashMap::new(),
            name: options.name,
            live_tx,
            live_dirty: false,
            tail,
            retention: options.retention,
            last_retention: None,
            retaining: None,
            metrics: options.metrics,
            after_commit: None,
        })
    }
}

/// Logs each `epochs` row the load left out because it does not decode
/// (an operator must repair it: its epoch's batches are refused until then).
fn log_unreadable_epochs(rows: &[String]) {
    for row in rows {
        error!(
            row = %row,
            "epochs row does not decode: left out at start; its epoch's batches are \
             refused until it is repaired"
        );
    }
}
