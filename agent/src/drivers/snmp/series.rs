//! The series an SNMP device's readings go on, built once and reused poll
//! after poll: the driver hands the scheduler readings on these shared
//! series (`Polled::Readings`), which it then recognizes by address,
//! instead of samples whose names and labels it would hash for every
//! varbind.
//!
//! Owns: one device's cache. May touch: `crate::reading` only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::oid_string;
use crate::reading::{SeriesKey, series_with};

/// Named series kept at most; beyond this the cache starts again (the
/// scheduler's series limit bounds what is stored).
const MAX_NAMED: usize = 10_000;

/// Row series of a walk kept beyond the rows of its last poll (interfaces
/// come and go); past that the walk's cache starts again.
const SPARE_ROWS: usize = 1_024;

/// One device's series.
#[derive(Default)]
pub(super) struct SeriesCache {
    /// For each walk whose rows carry only their index (no lookups, no
    /// enumeration label): the series of each row, by index suffix.
    rows: Vec<HashMap<Vec<u32>, Arc<SeriesKey>>>,
    /// For each such walk, its rows in the order the last poll walked
    /// them: a table's rows come back in the same order poll after poll,
    /// so the row at the same position is compared (a few words) before
    /// the index is hashed.
    order: Vec<Vec<(Vec<u32>, Arc<SeriesKey>)>>,
    /// Every other series, by metric and labels.
    named: HashMap<(String, BTreeMap<String, String>), Arc<SeriesKey>>,
}

/// A walk whose rows carry only their index.
pub(super) struct PlainWalk<'a> {
    pub(super) index: usize,
    pub(super) device: &'a str,
    pub(super) metric: &'a str,
    pub(super) index_label: &'a str,
    pub(super) unit: &'a str,
}

impl SeriesCache {
    /// Makes room for a poll of `rows` rows of `walk`: forgets rows that
    /// have gone when too many have.
    pub(super) fn prepare(&mut self, walk: usize, rows: usize) {
        if self.rows.len() <= walk {
            self.rows.resize_with(walk + 1, HashMap::new);
            self.order.resize_with(walk + 1, Vec::new);
        }
        let cache = &mut self.rows[walk];
        if cache.len() > rows.saturating_add(SPARE_ROWS) {
            cache.clear();
        }
        self.order[walk].truncate(rows);
    }

    /// The series of the row `suffix` of `walk`, the `position`th row of
    /// this poll's walk (after [`Self::prepare`]).
    pub(super) fn row_at(
        &mut self,
        walk: &PlainWalk<'_>,
        position: usize,
        suffix: &[u32],
    ) -> Arc<SeriesKey> {
        if let Some((known, series)) = self
            .order
            .get(walk.index)
            .and_then(|order| order.get(position))
            && known == suffix
        {
            return series.clone();
        }
        let series = self.row(walk, suffix);
        if let Some(order) = self.order.get_mut(walk.index) {
            if let Some(slot) = order.get_mut(position) {
                *slot = (suffix.to_vec(), series.clone());
            } else if order.len() == position {
                order.push((suffix.to_vec(), series.clone()));
            }
        }
        series
    }

    /// The series of the row `suffix` of `walk` (after [`Self::prepare`]).
    pub(super) fn row(&mut self, walk: &PlainWalk<'_>, suffix: &[u32]) -> Arc<SeriesKey> {
        if self.rows.len() <= walk.index {
            self.prepare(walk.index, 0);
        }
        let cache = &mut self.rows[walk.index];
        if let Some(s) = cache.get(suffix) {
            return s.clone();
        }
        let labels = BTreeMap::from([(walk.index_label.to_owned(), oid_string(suffix))]);
        let s = series_with(walk.device, walk.metric, &labels, walk.unit);
        cache.insert(suffix.to_vec(), s.clone());
        s
    }

    /// The series of `metric` with `labels` on `device`.
    pub(super) fn named(
        &mut self,
        device: &str,
        metric: &str,
        labels: BTreeMap<String, String>,
        unit: &str,
    ) -> Arc<SeriesKey> {
        if self.named.len() >= MAX_NAMED {
            self.named.clear();
        }
        let key = (metric.to_owned(), labels);
        if let Some(s) = self.named.get(&key) {
            return s.clone();
        }
        let s = series_with(device, metric, &key.1, unit);
        self.named.insert(key, s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_built_once_and_forgotten_when_gone() {
        let mut cache = SeriesCache::default();
        let walk = PlainWalk {
            index: 1,
            device: "sw",
            metric: "ifHCInOctets",
            index_label: "ifIndex",
            unit: "By",
        };
        cache.prepare(1, 2);
        let a = cache.row(&walk, &[3]);
        assert!(Arc::ptr_eq(&a, &cache.row(&walk, &[3])));
        assert_eq!(&*a.device, "sw");
        assert_eq!(&*a.metric, "ifHCInOctets");
        assert_eq!(&*a.unit, "By");
        assert_eq!(
            a.labels.to_map(),
            BTreeMap::from([("ifIndex".to_owned(), "3".to_owned())])
        );
        let b = cache.row(&walk, &[1, 4]);
        assert_eq!(b.labels.to_map()["ifIndex"], "1.4");
        // Many rows gone: the cache starts again, the series stay equal.
        for i in 0..(SPARE_ROWS as u32 + 10) {
            cache.row(&walk, &[100 + i]);
        }
        cache.prepare(1, 2);
        assert_eq!(cache.rows[1].len(), 0);
        let again = cache.row(&walk, &[3]);
        assert!(!Arc::ptr_eq(&a, &again) && a == again);
    }

    #[test]
    fn rows_at_their_last_position_are_found_without_hashing_and_moved_rows_still_right() {
        let mut cache = SeriesCache::default();
        let walk = PlainWalk {
            index: 0,
            device: "sw",
            metric: "ifHCInOctets",
            index_label: "ifIndex",
            unit: "",
        };
        cache.prepare(0, 3);
        let first: Vec<_> = [[1], [2], [3]]
            .iter()
            .enumerate()
            .map(|(i, s)| cache.row_at(&walk, i, s))
            .collect();
        // The same rows in the same order: the same series.
        cache.prepare(0, 3);
        for (i, s) in [[1], [2], [3]].iter().enumerate() {
            assert!(Arc::ptr_eq(&first[i], &cache.row_at(&walk, i, s)));
        }
        // Row 2 gone: row 3 moves up a position and keeps its series.
        cache.prepare(0, 2);
        assert!(Arc::ptr_eq(&first[0], &cache.row_at(&walk, 0, &[1])));
        let moved = cache.row_at(&walk, 1, &[3]);
        assert!(Arc::ptr_eq(&first[2], &moved));
        assert_eq!(moved.labels.to_map()["ifIndex"], "3");
        // And back: each position answers for the row now there.
        cache.prepare(0, 3);
        for (i, s) in [[1], [2], [3]].iter().enumerate() {
            let series = cache.row_at(&walk, i, s);
            assert_eq!(series.labels.to_map()["ifIndex"], s[0].to_string());
        }
    }

    #[test]
    fn named_series_are_keyed_by_metric_and_labels() {
        let mut cache = SeriesCache::default();
        let up = BTreeMap::from([("ifOperStatus".to_owned(), "up".to_owned())]);
        let down = BTreeMap::from([("ifOperStatus".to_owned(), "down".to_owned())]);
        let a = cache.named("sw", "ifOperStatus", up.clone(), "");
        assert!(Arc::ptr_eq(&a, &cache.named("sw", "ifOperStatus", up, "")));
        let b = cache.named("sw", "ifOperStatus", down.clone(), "");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.labels.to_map(), down);
    }
}
