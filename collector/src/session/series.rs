//! A stream's interning table: the stream-local series id an agent
//! declares → the global id the merger gave that series. Owned by one
//! session; nothing else sees it.

use std::collections::HashMap;

/// A stream's series: stream-local id → global id. Agents number their
/// series from 1 upwards, so ids up to a bound proportional to the number
/// declared live in a table indexed by id (one load per reading, which the
/// ingest profile showed matters: two SipHash lookups per reading were 16 %
/// of the collector's CPU); any other id, which the protocol allows, goes to
/// a map, so a hostile id costs no memory beyond its entry.
#[derive(Debug, Default, Clone)]
pub struct StreamSeries {
    dense: Vec<Option<i64>>,
    sparse: HashMap<u32, i64>,
    len: usize,
}

impl StreamSeries {
    /// Ids below this always go to the table.
    const DENSE_MIN: usize = 1024;

    /// The global id of stream-local `id`.
    pub fn get(&self, id: &u32) -> Option<&i64> {
        match self.dense.get(*id as usize) {
            Some(slot) => slot.as_ref(),
            None => self.sparse.get(id),
        }
    }

    /// Whether stream-local `id` is declared.
    pub fn contains_key(&self, id: &u32) -> bool {
        self.get(id).is_some()
    }

    /// Series declared so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no series is declared.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Declares `id` as `global` (a redeclaration replaces it; `check_batch`
    /// refuses those before this is called).
    pub fn insert(&mut self, id: u32, global: i64) {
        let index = id as usize;
        let bound = Self::DENSE_MIN.max(self.len.saturating_add(1).saturating_mul(4));
        if index >= self.dense.len() && index < bound {
            // Grow geometrically, so ids declared one by one move the map's
            // entries over only O(log n) times.
            let new_len = (index + 1)
                .max(self.dense.len().saturating_mul(2))
                .min(bound);
            self.dense.resize(new_len, None);
            // Ids the table now covers move over from the map.
            let moved: Vec<u32> = self
                .sparse
                .keys()
                .copied()
                .filter(|&k| (k as usize) < self.dense.len())
                .collect();
            for k in moved {
                if let Some(g) = self.sparse.remove(&k) {
                    self.dense[k as usize] = Some(g);
                }
            }
        }
        let previous = match self.dense.get_mut(index) {
            Some(slot) => slot.replace(global),
            None => self.sparse.insert(id, global),
        };
        if previous.is_none() {
            self.len += 1;
        }
    }
}

impl Extend<(u32, i64)> for StreamSeries {
    fn extend<I: IntoIterator<Item = (u32, i64)>>(&mut self, iter: I) {
        for (id, global) in iter {
            self.insert(id, global);
        }
    }
}

impl FromIterator<(u32, i64)> for StreamSeries {
    fn from_iter<I: IntoIterator<Item = (u32, i64)>>(iter: I) -> Self {
        let mut s = StreamSeries::default();
        s.extend(iter);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::StreamSeries;
    #[test]
    fn stream_series_maps_dense_and_sparse_ids() {
        let mut s = StreamSeries::default();
        s.insert(u32::MAX, 7);
        s.insert(5_000, 8);
        for id in 1..=3_000u32 {
            s.insert(id, i64::from(id) + 100);
        }
        assert_eq!(s.len(), 3_002);
        assert_eq!(s.get(&u32::MAX), Some(&7));
        // 5,000 moved from the map into the table as the table grew.
        assert_eq!(s.get(&5_000), Some(&8));
        assert_eq!(s.get(&1), Some(&101));
        assert_eq!(s.get(&3_000), Some(&3_100));
        assert!(!s.contains_key(&0));
        assert!(!s.contains_key(&3_001));
        assert!(!s.contains_key(&(u32::MAX - 1)));
        s.insert(1, 55);
        assert_eq!((s.len(), s.get(&1)), (3_002, Some(&55)));
        let collected: StreamSeries = [(2u32, 3i64), (40_000_000, 4)].into_iter().collect();
        assert_eq!(
            (
                collected.get(&2),
                collected.get(&40_000_000),
                collected.len()
            ),
            (Some(&3), Some(&4), 2)
        );
    }
}
