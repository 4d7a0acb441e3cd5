//! The merger's series table: the global id of every series key it knows,
//! and the key of every id (for `Query/Tail`).
//!
//! Keys are held once, packed: each string of a key (agent, device, metric,
//! unit, and the label set as the canonical JSON the store keeps, see
//! `store::labels`) is interned, so a key is five `u32`s. An agent
//! scraping 2,000 targets of 105 series has 212,000 keys but only a few
//! thousand distinct strings (every device name repeats for its series,
//! every metric name and label set for its devices), so the table costs
//! tens of bytes per series instead of two owned `SeriesKey`s (four
//! `String`s and a `BTreeMap` node each). A label set is a string here, not
//! a `BTreeMap` (whose leaf node alone is ≈ 544 B): a series whose labels
//! are its own (a request id in a label) costs its JSON and a few words.
//! The table is filled at start straight from the store's rows, without a
//! `SeriesKey` per series in between. Interned values live as long as the
//! table: series are never deleted (retention keeps them).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use crate::model::{IdMap, SeriesKey, SeriesMeta};
use crate::store::labels::{SeriesRow, labels_json};

/// Distinct values, each stored once, numbered in order of first sight.
struct Interner<T: ?Sized> {
    ids: HashMap<Arc<T>, u32>,
    values: Vec<Arc<T>>,
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    fn new() -> Self {
        Interner {
            ids: HashMap::new(),
            values: Vec::new(),
        }
    }

    fn get(&self, value: &T) -> Option<u32> {
        self.ids.get(value).copied()
    }

    /// The number of `value`, interning it (a copy made by `own`) if new.
    fn intern(&mut self, value: &T, own: impl FnOnce(&T) -> Arc<T>) -> u32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        // More than 2^32 distinct strings would need far more memory than
        // any collector has; the numbers are indexes into `values`.
        let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        let value = own(value);
        self.values.push(value.clone());
        self.ids.insert(value, id);
        id
    }

    fn value(&self, id: u32) -> Option<&T> {
        self.values.get(id as usize).map(|v| &**v)
    }
}

/// A key as numbers of interned values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Packed {
    agent: u32,
    device: u32,
    metric: u32,
    unit: u32,
    labels: u32,
}

/// Series keys and their global ids, both ways.
pub(super) struct SeriesTable {
    /// Every part of every key, label sets as canonical JSON.
    strings: Interner<str>,
    by_key: HashMap<Packed, i64>,
    by_id: IdMap<Packed>,
}

impl SeriesTable {
    pub(super) fn with_capacity(n: usize) -> Self {
        SeriesTable {
            strings: Interner::new(),
            by_key: HashMap::with_capacity(n),
            by_id: IdMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Number of series.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The id of `key`, if known.
    pub(super) fn get(&self, key: &SeriesKey) -> Option<i64> {
        let packed = Packed {
            agent: self.strings.get(&key.agent)?,
            device: self.strings.get(&key.device)?,
            metric: self.strings.get(&key.metric)?,
            unit: self.strings.get(&key.unit)?,
            labels: self.strings.get(&labels_json(key))?,
        };
        self.by_key.get(&packed).copied()
    }

    /// Records that `key` has id `id` (the store assigned it).
    pub(super) fn insert(&mut self, key: &SeriesKey, id: i64) {
        self.insert_parts(
            [&key.agent, &key.device, &key.metric, &key.unit],
            &labels_json(key),
            id,
        );
    }

    /// Records a series as the store holds it (labels as stored JSON).
    pub(super) fn insert_row(&mut self, row: &SeriesRow) {
        self.insert_parts(
            [&row.agent, &row.device, &row.metric, &row.unit],
            &row.labels,
            row.id,
        );
    }

    fn insert_parts(&mut self, [agent, device, metric, unit]: [&str; 4], labels: &str, id: i64) {
        let mut s = |v: &str| self.strings.intern(v, |v: &str| Arc::from(v));
        let packed = Packed {
            agent: s(agent),
            device: s(device),
            metric: s(metric),
            unit: s(unit),
            labels: s(labels),
        };
        if let Some(old) = self.by_key.insert(packed, id)
            && old != id
        {
            self.by_id.remove(&old);
        }
        self.by_id.insert(id, packed);
    }

    /// The series with id `id`, as an owned key (built on demand: only
    /// `Query/Tail` asks, and only while someone tails). `None` also when
    /// its stored labels are not a JSON object of strings.
    pub(super) fn meta(&self, id: i64) -> Option<SeriesMeta> {
        let p = self.by_id.get(&id)?;
        let s = |n: u32| self.strings.value(n).map(str::to_owned);
        let row = SeriesRow {
            id,
            agent: s(p.agent)?,
            device: s(p.device)?,
            metric: s(p.metric)?,
            labels: s(p.labels)?,
            unit: s(p.unit)?,
        };
        row.into_meta().ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(agent: &str, device: &str, metric: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey {
            agent: agent.into(),
            device: device.into(),
            metric: metric.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            unit: String::new(),
        }
    }

    #[test]
    fn keys_round_trip_and_differ_by_every_part() {
        let mut t = SeriesTable::with_capacity(0);
        let keys = [
            key("a", "d1", "m", &[]),
            key("a", "d1", "m", &[("i", "0")]),
            key("a", "d1", "m", &[("i", "1")]),
            key("a", "d2", "m", &[("i", "0")]),
            key("b", "d1", "m", &[("i", "0")]),
            key("a", "d1", "n", &[("i", "0")]),
            // Strings that are equal across parts must not be confused.
            key("d1", "a", "m", &[]),
        ];
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.get(k), None);
            t.insert(k, 10 + i as i64);
        }
        let mut unit = keys[0].clone();
        unit.unit = "s".into();
        assert_eq!(t.get(&unit), None);
        assert_eq!(t.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            let id = 10 + i as i64;
            assert_eq!(t.get(k), Some(id));
            let meta = t.meta(id).unwrap();
            assert_eq!((meta.id, &meta.key), (id, k));
        }
        assert_eq!(t.meta(99), None);
        // Strings and label sets are stored once: a d1 m (empty unit) d2 b
        // n, and three label sets.
        assert_eq!(t.strings.values.len(), 7 + 3);
    }

    #[test]
    fn a_new_id_for_a_key_replaces_the_old_one() {
        let mut t = SeriesTable::with_capacity(0);
        let k = key("a", "d", "m", &[]);
        t.insert(&k, 1);
        t.insert(&k, 2);
        assert_eq!(t.get(&k), Some(2));
        assert_eq!(t.meta(1), None);
        assert_eq!(t.len(), 1);
    }
}
