//! The merger's series table: the global id of the series keys it has
//! seen lately, and the key of each such id (for `Query/Tail`). A cache of
//! the store's `series` table, bounded by `max_series_in_memory`: when it
//! holds more, the least recently used eighth is evicted, and an evicted
//! key is looked up in the store again when a stream declares it (an
//! evicted id is read back by id for Tail).
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
//! `SeriesKey` per series in between. Interned strings are counted and
//! freed with the last key that uses them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{IdMap, SeriesKey, SeriesMeta};
use crate::store::labels::{SeriesRow, labels_json};

/// Distinct strings, each stored once with the number of keys using it.
#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    /// By number: the string and its users; `None` is a free slot.
    values: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<u32>,
}

impl Interner {
    fn get(&self, value: &str) -> Option<u32> {
        self.ids.get(value).copied()
    }

    /// The number of `value`, with one more user (interned if new).
    fn acquire(&mut self, value: &str) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            if let Some(Some((_, users))) = self.values.get_mut(id as usize) {
                *users += 1;
            }
            return id;
        }
        let value: Arc<str> = Arc::from(value);
        let id = match self.free.pop() {
            Some(id) => {
                self.values[id as usize] = Some((value.clone(), 1));
                id
            }
            None => {
                // More than 2^32 distinct strings would need far more
                // memory than any collector has.
                let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
                self.values.push(Some((value.clone(), 1)));
                id
            }
        };
        self.ids.insert(value, id);
        id
    }

    /// One user less of `id`; the string goes with its last user.
    fn release(&mut self, id: u32) {
        let Some(slot) = self.values.get_mut(id as usize) else {
            return;
        };
        if let Some((value, users)) = slot {
            *users -= 1;
            if *users == 0 {
                self.ids.remove(&**value);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn value(&self, id: u32) -> Option<&str> {
        self.values.get(id as usize)?.as_ref().map(|(v, _)| &**v)
    }

    /// Distinct strings held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
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

impl Packed {
    fn parts(self) -> [u32; 5] {
        [self.agent, self.device, self.metric, self.unit, self.labels]
    }
}

/// A series held: its key and when it was last used.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Packed,
    used: u64,
}

/// Series keys and their global ids, both ways, for at most `capacity`
/// series.
pub(super) struct SeriesTable {
    /// Every part of every key, label sets as canonical JSON.
    strings: Interner,
    by_key: HashMap<Packed, i64>,
    by_id: IdMap<Entry>,
    /// Ticks at each use: what "least recently used" is measured in.
    clock: u64,
    capacity: usize,
}

impl SeriesTable {
    /// A table holding at most `capacity` series (at least 8), room made
    /// for `n` at once.
    pub(super) fn new(capacity: usize, n: usize) -> Self {
        let capacity = capacity.max(8);
        let n = n.min(capacity);
        SeriesTable {
            strings: Interner::default(),
            by_key: HashMap::with_capacity(n),
            by_id: IdMap::with_capacity_and_hasher(n, Default::default()),
            clock: 0,
            capacity,
        }
    }

    /// Number of series held.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the series `id` is held.
    pub(super) fn contains(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The id of `key`, if held (and it counts as used).
    pub(super) fn get(&mut self, key: &SeriesKey) -> Option<i64> {
        let s = &self.strings;
        let packed = Packed {
            agent: s.get(&key.agent)?,
            device: s.get(&key.device)?,
            metric: s.get(&key.metric)?,
            unit: s.get(&key.unit)?,
            labels: s.get(&labels_json(key))?,
        };
        let id = *self.by_key.get(&packed)?;
        self.touch(id);
        Some(id)
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
        let s = &mut self.strings;
        let packed = Packed {
            agent: s.acquire(agent),
            device: s.acquire(device),
            metric: s.acquire(metric),
            unit: s.acquire(unit),
            labels: s.acquire(labels),
        };
        // The same key or the same id held before: it goes first, so each
        // held series holds its strings once.
        if let Some(old) = self.by_key.get(&packed).copied() {
            self.remove(old);
        }
        self.remove(id);
        self.clock += 1;
        self.by_key.insert(packed, id);
        self.by_id.insert(
            id,
            Entry {
                key: packed,
                used: self.clock,
            },
        );
    }

    fn touch(&mut self, id: i64) {
        self.clock += 1;
        if let Some(e) = self.by_id.get_mut(&id) {
            e.used = self.clock;
        }
    }

    fn remove(&mut self, id: i64) {
        if let Some(e) = self.by_id.remove(&id) {
            if self.by_key.get(&e.key) == Some(&id) {
                self.by_key.remove(&e.key);
            }
            for part in e.key.parts() {
                self.strings.release(part);
            }
        }
    }

    /// Above the capacity, evicts the least recently used series until
    /// seven eighths of it are left (so eviction runs once per eighth of
    /// the capacity inserted, and its sort is paid for by those inserts).
    /// Returns how many it evicted.
    pub(super) fn evict(&mut self) -> usize {
        if self.by_id.len() <= self.capacity {
            return 0;
        }
        let n = self.by_id.len() - self.capacity / 8 * 7;
        let mut ages: Vec<(u64, i64)> = self.by_id.iter().map(|(id, e)| (e.used, *id)).collect();
        ages.select_nth_unstable(n - 1);
        for &(_, id) in &ages[..n] {
            self.remove(id);
        }
        n
    }

    /// The series with id `id`, as an owned key (built on demand: only
    /// `Query/Tail` asks, and only while someone tails). `None` when it is
    /// not held, or its stored labels are not a JSON object of strings.
    pub(super) fn meta(&mut self, id: i64) -> Option<SeriesMeta> {
        let p = self.by_id.get(&id)?.key;
        self.touch(id);
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
        let mut t = SeriesTable::new(1_000, 0);
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
        assert_eq!(t.strings.len(), 7 + 3);
    }

    #[test]
    fn a_new_id_for_a_key_replaces_the_old_one() {
        let mut t = SeriesTable::new(1_000, 0);
        let k = key("a", "d", "m", &[]);
        t.insert(&k, 1);
        t.insert(&k, 2);
        assert_eq!(t.get(&k), Some(2));
        assert_eq!(t.meta(1), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_least_recently_used_go_and_their_strings_with_them() {
        let mut t = SeriesTable::new(16, 0);
        let keys: Vec<_> = (0..16)
            .map(|i| key("a", "d", &format!("m{i}"), &[("i", &i.to_string())]))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            t.insert(k, i as i64 + 1);
        }
        assert_eq!(t.evict(), 0, "at the capacity, nothing goes");
        // Series 1 and 2 are used again; 3 and 4 are the oldest now.
        assert_eq!(t.get(&keys[0]), Some(1));
        assert!(t.meta(2).is_some());
        t.insert(&key("a", "d", "new", &[]), 17);
        assert_eq!(t.evict(), 17 - 14, "down to seven eighths");
        assert_eq!(t.len(), 14);
        for gone in [3, 4, 5] {
            assert_eq!(t.meta(gone), None);
            assert_eq!(t.get(&keys[gone as usize - 1]), None);
        }
        assert_eq!(t.get(&keys[0]), Some(1));
        assert_eq!(t.get(&keys[1]), Some(2));
        // "a", "d", "" (unit), "new", "{}" and the metric and labels of
        // each of the 13 others: the evicted ones' strings are freed.
        assert_eq!(t.strings.len(), 5 + 13 * 2);
        // A freed slot is reused.
        t.insert(&keys[2], 3);
        assert_eq!(t.get(&keys[2]), Some(3));
        assert_eq!(t.meta(3).map(|m| m.key), Some(keys[2].clone()));
    }
}
