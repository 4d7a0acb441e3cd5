//! The series catalogue: every stored series with its Prometheus labels
//! (`prom_labels::labels`), kept between queries so a query does not list
//! the series table and build every label set again.
//!
//! Series rows are never deleted or changed and ids are never reused, so
//! a catalogue holding `count` series whose largest id is `max_id` is the
//! whole list exactly when the store's [`SeriesCensus`] says the same.
//! Each query asks for the census (two sub-selects so that SQLite takes
//! its fast paths: a count from the table's b-tree without decoding rows
//! and the largest id from the primary key; on PostgreSQL the count is a
//! scan of the series table. It is also how a store outage still fails a
//! query that selects nothing); on a
//! difference the catalogue is extended by the series above its largest
//! id, and listed again whole when that does not account for the census
//! (PostgreSQL ids committed out of order by collectors sharing the
//! database).
//!
//! Owned by the `Engine` (shared by its clones); a query takes the current
//! snapshot (an `Arc`) and never holds that lock across a read. One query
//! at a time lists series for the catalogue (the `refresh` lock, held
//! across the listing on the query's blocking thread): others that found
//! the catalogue stale wait for it and take what it listed, instead of each
//! listing every series again. Memory is bounded: past
//! [`MAX_CACHED_SERIES`] series nothing is kept, and each query lists what
//! its selectors' pushdown allows, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use promql_parser::parser::VectorSelector;

use crate::store::read::SeriesCensus;

use super::load::{Listed, Reads, list_series};
use super::plan::required_value;
use super::types::{NAME, QueryError};

/// How often a query waiting for another's catalogue refresh looks again
/// (and at its deadline).
const REFRESH_POLL: Duration = Duration::from_millis(2);

/// Most series the catalogue holds (about 0.5 KiB each with labels):
/// beyond, queries list the series themselves.
pub const MAX_CACHED_SERIES: u64 = 1 << 18;

/// Every stored series at one census, by id, with an index by metric name.
#[derive(Debug, Default)]
pub struct Snapshot {
    series: Vec<Listed>,
    census: SeriesCensus,
    /// Positions in `series` by `__name__`.
    by_name: HashMap<String, Vec<usize>>,
}

impl Snapshot {
    fn new(mut series: Vec<Listed>) -> Snapshot {
        series.sort_unstable_by_key(|(meta, _)| meta.id);
        series.dedup_by_key(|(meta, _)| meta.id);
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (_, labels)) in series.iter().enumerate() {
            let name = super::types::get(labels, NAME);
            match by_name.get_mut(name) {
                Some(v) => v.push(i),
                None => {
                    by_name.insert(name.to_owned(), vec![i]);
                }
            }
        }
        let census = SeriesCensus {
            count: series.len() as u64,
            max_id: series.last().map_or(0, |(meta, _)| meta.id),
        };
        Snapshot {
            series,
            census,
            by_name,
        }
    }

    /// The series that may pass `vs` (all with its metric name when the
    /// selector pins one), by id; the caller applies the matchers.
    pub fn candidates<'a>(
        &'a self,
        vs: &VectorSelector,
    ) -> Box<dyn Iterator<Item = &'a Listed> + 'a> {
        match required_value(vs, NAME) {
            Some(name) => Box::new(
                self.by_name
                    .get(name)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|&i| &self.series[i]),
            ),
            None => Box::new(self.series.iter()),
        }
    }

    /// Every series, by id.
    pub fn all(&self) -> &[Listed] {
        &self.series
    }
}

/// The catalogue of one engine.
#[derive(Debug, Default)]
pub struct Catalogue {
    /// A std Mutex, not a tokio one: held only to take or replace the
    /// `Arc`, never across a read.
    current: Mutex<Option<Arc<Snapshot>>>,
    /// Held by the one query listing series for the catalogue, across its
    /// reads: a std Mutex, as those reads block the query's own thread
    /// (never a runtime worker).
    refresh: Mutex<()>,
}

impl Catalogue {
    /// The whole series list as stored now, or `None` when it is too large
    /// to keep (the caller lists what it needs). Blocks: called on the
    /// query's blocking thread.
    pub fn snapshot(&self, reads: &Reads<'_>) -> Result<Option<Arc<Snapshot>>, QueryError> {
        let census = reads.census()?;
        if census.count > MAX_CACHED_SERIES {
            self.replace(None);
            return Ok(None);
        }
        if let Some(held) = self.fresh(census) {
            return Ok(Some(held));
        }
        // Single flight: whoever held the lock may have listed what this
        // census counts meanwhile. Waited for within the query's deadline
        // (a refresher listing many series may take longer than a waiter
        // may wait).
        let _refresh = loop {
            match self.refresh.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    reads.check("waiting for the series catalogue")?;
                    std::thread::sleep(REFRESH_POLL);
                }
            }
        };
        if let Some(held) = self.fresh(census) {
            return Ok(Some(held));
        }
        let held = self.held();
        let mut next = None;
        if let Some(held) = held
            && census.max_id > held.census.max_id
        {
            // New series: those above the largest id held, as a rule.
            let newer = list_series(reads, &Default::default(), held.census.max_id)?;
            let mut series = Vec::with_capacity(held.series.len() + newer.len());
            series.extend(held.series.iter().cloned());
            series.extend(newer);
            let extended = Snapshot::new(series);
            if extended.census.count == census.count {
                next = Some(extended);
            }
        }
        let next = match next {
            Some(next) => next,
            None => Snapshot::new(list_series(reads, &Default::default(), i64::MIN)?),
        };
        if next.census.count > MAX_CACHED_SERIES {
            self.replace(None);
            return Ok(None);
        }
        let next = Arc::new(next);
        self.replace(Some(Arc::clone(&next)));
        Ok(Some(next))
    }

    fn held(&self) -> Option<Arc<Snapshot>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The snapshot held, when it holds everything `census` counts: the
    /// same census, or a later one (series are never deleted and ids
    /// never reused, so a list at least as long with ids at least as high,
    /// listed after `census` was taken, holds every series it counts).
    fn fresh(&self, census: SeriesCensus) -> Option<Arc<Snapshot>> {
        self.held().filter(|held| {
            held.census == census
                || (held.census.count >= census.count && held.census.max_id >= census.max_id)
        })
    }

    fn replace(&self, snapshot: Option<Arc<Snapshot>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::store::read::Reader;
    use crate::store::sqlite::tests::TempDb;

    fn ids(snapshot: &Snapshot) -> Vec<i64> {
        snapshot.all().iter().map(|(meta, _)| meta.id).collect()
    }

    /// The catalogue answers as a fresh listing would after every change,
    /// including ids that appear below the largest one held (PostgreSQL
    /// ids committed out of order), and is kept while nothing changes.
    #[test]
    fn the_catalogue_follows_the_series_table() {
        let db = TempDb::new("catalogue");
        let reader = Reader::Sqlite(db.reader());
        let abandoned = Arc::new(AtomicBool::new(false));
        let reads = Reads {
            reader: &reader,
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(3600),
            abandoned: &abandoned,
        };
        let catalogue = Catalogue::default();
        db.series(2, "a", "d", "m", "{}");
        db.series(5, "a", "d", "up", "{}");
        let first = catalogue.snapshot(&reads).unwrap().unwrap();
        assert_eq!(ids(&first), [2, 5]);
        let again = catalogue.snapshot(&reads).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "kept while nothing changed");

        // Above the largest id: extended.
        db.series(9, "b", "d", "m", r#"{"core":"1"}"#);
        let extended = catalogue.snapshot(&reads).unwrap().unwrap();
        assert_eq!(ids(&extended), [2, 5, 9]);
        // Below it: listed again.
        db.series(3, "b", "d", "m", "{}");
        let relisted = catalogue.snapshot(&reads).unwrap().unwrap();
        assert_eq!(ids(&relisted), [2, 3, 5, 9]);

        // The index by name gives what the matchers would.
        let vs = crate::promql::parse_selector(r#"m{agent="b"}"#).unwrap();
        let chosen: Vec<i64> = relisted
            .candidates(&vs)
            .filter(|(_, l)| crate::promql::selector_matches(&vs, l))
            .map(|(meta, _)| meta.id)
            .collect();
        assert_eq!(chosen, [3, 9]);

        // A store that is gone fails the query, whatever is held.
        let away = db.path.with_extension("away");
        std::fs::rename(&db.path, &away).unwrap();
        let err = catalogue.snapshot(&reads).unwrap_err();
        std::fs::rename(&away, &db.path).unwrap();
        assert!(matches!(err, QueryError::Unavailable(_)), "{err}");
    }

    /// A query waiting behind another's refresh stops at its deadline: it
    /// neither waits out the other's listing nor lists itself.
    #[test]
    fn a_refresh_wait_ends_at_the_deadline() {
        let db = TempDb::new("catalogue-wait");
        let reader = Reader::Sqlite(db.reader());
        let abandoned = Arc::new(AtomicBool::new(false));
        db.series(2, "a", "d", "m", "{}");
        let catalogue = Arc::new(Catalogue::default());
        // Another query is refreshing (holds the lock) for as long as this
        // test wants.
        let held = catalogue.refresh.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = Arc::clone(&catalogue);
        let thread = std::thread::spawn(move || {
            let reads = Reads {
                reader: &reader,
                deadline: std::time::Instant::now(),
                abandoned: &abandoned,
            };
            let _ = tx.send(waiter.snapshot(&reads).map(|s| s.is_some()));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(60));
        drop(held);
        thread.join().unwrap();
        assert!(
            matches!(answer, Ok(Err(QueryError::Timeout(_)))),
            "{answer:?}"
        );
    }

    /// Listing series stops between pages once the deadline has passed
    /// (or the query was abandoned), as reading points stops between chunks.
    #[test]
    fn listing_stops_at_the_deadline_and_when_abandoned() {
        let db = TempDb::new("catalogue-list");
        let reader = Reader::Sqlite(db.reader());
        db.series(2, "a", "d", "m", "{}");
        let abandoned = Arc::new(AtomicBool::new(false));
        let late = Reads {
            reader: &reader,
            deadline: std::time::Instant::now(),
            abandoned: &abandoned,
        };
        let err = list_series(&late, &Default::default(), i64::MIN).unwrap_err();
        assert!(matches!(err, QueryError::Timeout(_)), "{err}");
        let gone = Arc::new(AtomicBool::new(true));
        let abandoned_reads = Reads {
            reader: &reader,
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(3600),
            abandoned: &gone,
        };
        let err = list_series(&abandoned_reads, &Default::default(), i64::MIN).unwrap_err();
        assert!(matches!(err, QueryError::Timeout(_)), "{err}");
    }
}
