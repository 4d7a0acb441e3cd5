//! Agent-wide series ids of the spool's epoch: id `n` is the `n`-th series
//! the uplink met (or found in the spool's dictionary at start).

use std::collections::HashMap;
use std::sync::Arc;

use crate::reading::SeriesKey;

/// The agent-wide series ids of the spool's epoch: id `n` is `keys[n - 1]`,
/// and the spool's dictionary holds the same keys in the same order.
///
/// Looking up a reading's series must be cheap (it happens per reading): a
/// poll brings its series in the same order every time, so
/// [`SeriesIds::id_after`] first tries the id after the previous reading's
/// (a pointer comparison); only the first reading of a poll, or a series
/// that moved, is looked up by content in `by_key`. A series arriving in
/// another `Arc` (after a restart, the keys come from the dictionary) is
/// found by content, and its new `Arc` replaces the old one, so the next
/// poll takes the pointer path again. One map per id keeps memory at a few
/// words per series (there used to be a second map by address).
#[derive(Debug, Default)]
pub(super) struct SeriesIds {
    pub(super) keys: Vec<Arc<SeriesKey>>,
    pub(super) by_key: HashMap<Arc<SeriesKey>, u32>,
}

impl SeriesIds {
    pub(super) fn new(keys: Vec<Arc<SeriesKey>>) -> Self {
        let mut ids = SeriesIds::default();
        ids.by_key.reserve(keys.len());
        for (i, key) in keys.iter().enumerate() {
            ids.by_key.entry(key.clone()).or_insert(i as u32 + 1);
        }
        ids.keys = keys;
        ids
    }

    /// Ids handed out: `1..=len()`.
    pub(super) fn len(&self) -> u32 {
        self.keys.len() as u32
    }

    /// The key of `id`.
    pub(super) fn key(&self, id: u32) -> Option<&Arc<SeriesKey>> {
        self.keys.get((id as usize).checked_sub(1)?)
    }

    /// The id of `key`, handing out the next one if it is new (the caller
    /// adds new keys to the spool's dictionary, or [`SeriesIds::truncate`]s).
    pub(super) fn id(&mut self, key: &Arc<SeriesKey>) -> u32 {
        if let Some(&id) = self.by_key.get(key) {
            let slot = &mut self.keys[id as usize - 1];
            if !Arc::ptr_eq(slot, key) {
                // The same series in a new `Arc`: keep the one in use, so
                // the pointer path finds it (and the old one can be freed).
                *slot = key.clone();
                self.by_key.remove(key);
                self.by_key.insert(key.clone(), id);
            }
            return id;
        }
        self.keys.push(key.clone());
        let id = self.len();
        self.by_key.insert(key.clone(), id);
        id
    }

    /// The id of `key` when the previous reading was of series `prev`: a
    /// poll brings its series in the same order every time, and ids were
    /// handed out in that order, so the next id is the likely answer. That
    /// guess costs a pointer comparison in a sequential array; the map
    /// lookup it saves is a cache miss or two once there are more series
    /// than fit in the cache (measured: about 9 % of the agent's CPU with
    /// 212,000 series).
    pub(super) fn id_after(&mut self, prev: u32, key: &Arc<SeriesKey>) -> u32 {
        match self.keys.get(prev as usize) {
            Some(next) if Arc::ptr_eq(next, key) => prev + 1,
            _ => self.id(key),
        }
    }

    /// Forgets the ids above `len` (their keys could not be made durable).
    pub(super) fn truncate(&mut self, len: u32) {
        for (i, key) in self.keys.drain(len as usize..).enumerate() {
            let id = len + 1 + i as u32;
            if self.by_key.get(&key) == Some(&id) {
                self.by_key.remove(&key);
            }
        }
    }
}
