//! Reads what a planned query needs, once, before it is evaluated: the
//! series each selector chooses (from the engine's series catalogue,
//! `catalogue.rs`, matchers applied to the cached Prometheus labels; or,
//! when the catalogue is too large to keep, listed through
//! `series_page` with exact `agent`, `device` and reversible `__name__`
//! equality pushed down into the `Selector`), then those series' points in
//! the selector's window (one read over exactly those series, by id, on
//! one SQLite connection however many there are), converted to samples as
//! they are read (`prom_labels::sample_value`; strings and failures are
//! not samples) at ms resolution. SQLite decodes its blobs straight into
//! samples (`store::read::Sample`), with no `Point` per reading;
//! PostgreSQL's points are converted here.
//!
//! Every read here is made by [`Reads`], on the query's own blocking
//! thread (`runtime.rs`): SQLite's calls directly, PostgreSQL's async ones
//! by blocking that thread on them, bounded by the query's deadline. So a
//! query's census, listings, reads and evaluation take no hand-off between
//! threads.
//!
//! Imports `store::read`, `prom_labels`, `model` and the plan.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::promql::{FastMap, FastSet};

use crate::model::{Point, SeriesMeta};
use crate::prom_labels;
use crate::store::read::{
    MAX_CHUNK_POINTS, ReadError, Reader, Sample, Selector, SeriesCensus, SeriesPage, SpanSeries,
    TimeSpan,
};

use super::catalogue::Snapshot;
use super::plan::{Need, required_value, selector_key, selector_matches};
use super::types::{Labels, NAME, QueryError, Series, drop_name};

/// The samples of every selector of a query, by [`selector_key`]; each
/// series' points cover the selector's window (and may hold more).
#[derive(Debug, Default)]
pub struct Data {
    pub selections: FastMap<usize, Selection>,
}

/// The series one selector chose, with their samples.
#[derive(Debug, Default)]
pub struct Selection {
    /// In label order.
    pub series: Vec<Series>,
    /// Each series' labels without `__name__`, and whether those are all
    /// different: made once per query, on first use, instead of at every
    /// step of a range query.
    unnamed: OnceLock<(Vec<Arc<Labels>>, bool)>,
    /// Whether no two series have equal labels, `__name__` included: two
    /// stored series can (`prom_labels::sanitize` maps `in.temp` and
    /// `in_temp` alike). Made once per query, on first use.
    named_unique: OnceLock<bool>,
}

impl Selection {
    /// The selection of `series`, put in label order: the order
    /// Prometheus's storage gives a selector's series, in which
    /// aggregations add them up (a plain sum's last bits depend on it).
    /// Series with equal labels keep their order.
    pub fn new(mut series: Vec<Series>) -> Selection {
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        Selection {
            series,
            unnamed: OnceLock::new(),
            named_unique: OnceLock::new(),
        }
    }

    /// Each series' labels without `__name__` (same order as `series`), and
    /// whether no two are equal (then no subset holds a duplicate).
    pub fn unnamed(&self) -> (&[Arc<Labels>], bool) {
        let (labels, unique) = self.unnamed.get_or_init(|| {
            let labels: Vec<Arc<Labels>> = self
                .series
                .iter()
                .map(|s| Arc::new(drop_name(&s.labels)))
                .collect();
            let mut seen = FastSet::with_capacity_and_hasher(labels.len(), Default::default());
            let unique = labels.iter().all(|l| seen.insert(&**l));
            (labels, unique)
        });
        (labels, *unique)
    }

    /// Whether no two series have equal labels (`__name__` included).
    pub fn named_unique(&self) -> bool {
        *self.named_unique.get_or_init(|| {
            let mut seen = FastSet::with_capacity_and_hasher(self.series.len(), Default::default());
            self.series.iter().all(|s| seen.insert(&*s.labels))
        })
    }
}

/// A stored series and its Prometheus labels.
pub type Listed = (Arc<SeriesMeta>, Arc<Labels>);

/// Series listed per page from the store.
const LIST_PAGE: usize = 10_000;

fn unavailable(e: &ReadError) -> QueryError {
    QueryError::Unavailable(e.to_string())
}

/// The store's reads as a query makes them, on its blocking thread (see
/// the module doc): SQLite's calls run here, PostgreSQL's are waited for
/// here, each within `deadline`.
pub struct Reads<'a> {
    pub reader: &'a Reader,
    pub deadline: Instant,
    /// Set when whoever waits for the query is gone (`runtime.rs`): a read
    /// stops at its next chunk instead of running on after the query's
    /// slot was given back.
    pub abandoned: &'a Arc<AtomicBool>,
}

impl Reads<'_> {
    /// An error once the deadline has passed or the query was abandoned:
    /// checked between the pieces of work that have no chunk to stop at
    /// (series list pages, the catalogue's refresh wait).
    pub fn check(&self, what: &'static str) -> Result<(), QueryError> {
        if self.abandoned.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return Err(QueryError::Timeout(what));
        }
        Ok(())
    }

    /// Waits for a PostgreSQL read on this (blocking) thread, at most until
    /// the deadline.
    fn wait<T>(
        &self,
        what: &'static str,
        read: impl Future<Output = Result<T, ReadError>>,
    ) -> Result<T, QueryError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            QueryError::Unavailable(format!("{what}: no runtime to read the store on: {e}"))
        })?;
        handle
            .block_on(tokio::time::timeout_at(self.deadline.into(), read))
            .map_err(|_| QueryError::Timeout(what))?
            .map_err(|e| unavailable(&e))
    }

    /// How many series are stored, and the largest id.
    pub fn census(&self) -> Result<SeriesCensus, QueryError> {
        match self.reader {
            Reader::Sqlite(r) => r.series_census().map_err(|e| unavailable(&e)),
            Reader::Postgres(_) => self.wait("reading the store", self.reader.series_census()),
        }
    }

    fn series_page(&self, sel: &Selector, page: SeriesPage) -> Result<Vec<SeriesMeta>, QueryError> {
        match self.reader {
            Reader::Sqlite(r) => r.series_page(sel, page).map_err(|e| unavailable(&e)),
            Reader::Postgres(_) => self.wait(
                "reading the series list",
                self.reader.series_page(sel.clone(), page),
            ),
        }
    }

    /// The series that may have readings within `span`.
    pub fn series_in_span(&self, span: TimeSpan) -> Result<SpanSeries, QueryError> {
        match self.reader {
            Reader::Sqlite(r) => r.series_in_span(span).map_err(|e| unavailable(&e)),
            Reader::Postgres(_) => self.wait(
                "reading the series in the time range",
                self.reader.series_in_span(span),
            ),
        }
    }

    /// The samples of exactly `series` within `span`, loaded into
    /// `loading`: on SQLite decoded straight into samples
    /// (`SqliteReader::range_series_lent`, one call on this blocking
    /// thread), on PostgreSQL folded from the points `Reader::range_series`
    /// hands over, until `loading` says stop.
    fn load_range_series(
        &self,
        series: &[Arc<SeriesMeta>],
        span: TimeSpan,
        mut loading: Loading,
    ) -> Result<Loading, QueryError> {
        match self.reader {
            Reader::Sqlite(r) => {
                let ids: Vec<i64> = series.iter().map(|m| m.id).collect();
                r.range_series_lent(&ids, span, MAX_CHUNK_POINTS, |i, samples: &[Sample]| {
                    loading.add(i, samples.len(), samples.iter().map(|s| (s.ts_ns, s.value)))
                })
                .map_err(|e| unavailable(&e))?;
                Ok(loading)
            }
            Reader::Postgres(_) => self.wait("reading the store", async move {
                let metas = series.iter().map(|m| SeriesMeta::clone(m)).collect();
                let mut rx = self.reader.range_series(metas, span, MAX_CHUNK_POINTS);
                let mut at = 0;
                while let Some(chunk) = rx.recv().await {
                    let (meta, points) = chunk?;
                    // Chunks come in the order of `series`.
                    while series.get(at).is_some_and(|m| m.id != meta.id) {
                        at += 1;
                    }
                    if at >= series.len() || loading.add_points(at, &points).is_break() {
                        break;
                    }
                }
                Ok(loading)
            }),
        }
    }
}

/// Every stored series passing `sel` with an id above `after_id`, by id,
/// with its Prometheus labels.
pub fn list_series(
    reads: &Reads<'_>,
    sel: &Selector,
    mut after_id: i64,
) -> Result<Vec<Listed>, QueryError> {
    let mut out = Vec::new();
    loop {
        reads.check("reading the series list")?;
        let page = reads.series_page(
            sel,
            SeriesPage {
                after_id,
                limit: LIST_PAGE,
            },
        )?;
        let full = page.len() == LIST_PAGE;
        for meta in page {
            after_id = after_id.max(meta.id);
            let labels = Arc::new(prom_labels::labels(&meta.key));
            out.push((Arc::new(meta), labels));
        }
        if !full {
            return Ok(out);
        }
    }
}

/// The store filter a selector allows: exact agent and device, and the
/// metric when its Prometheus name has no `_` (then no other metric maps
/// to it: `prom_labels` only ever introduces `_`).
pub fn pushdown(vs: &promql_parser::parser::VectorSelector) -> Selector {
    let name = required_value(vs, NAME).unwrap_or("");
    Selector {
        agent: required_value(vs, "agent").unwrap_or("").to_owned(),
        device: required_value(vs, "device").unwrap_or("").to_owned(),
        metric: if name.contains('_') {
            String::new()
        } else {
            name.to_owned()
        },
    }
}

/// What the fold of one selector's read carries.
struct Loading {
    points: Vec<Vec<(i64, f64)>>,
    total: usize,
    max_samples: usize,
    deadline: Instant,
    stopped: Option<QueryError>,
    /// [`Reads::abandoned`].
    abandoned: Arc<AtomicBool>,
}

impl Loading {
    /// Adds the samples among one chunk of points of series `i`.
    fn add_points(&mut self, i: usize, chunk: &[Point]) -> ControlFlow<()> {
        let samples = chunk
            .iter()
            .filter_map(|p| Some((p.ts_ns, prom_labels::sample_value(&p.value)?)));
        self.add(i, chunk.len(), samples)
    }

    /// Adds one chunk of samples (device time in ns, value) of series `i`,
    /// at most `len` of them.
    fn add(
        &mut self,
        i: usize,
        len: usize,
        samples: impl Iterator<Item = (i64, f64)>,
    ) -> ControlFlow<()> {
        if self.abandoned.load(Ordering::Relaxed) {
            self.stopped = Some(QueryError::Timeout(
                "reading the store (the query was abandoned)",
            ));
            return ControlFlow::Break(());
        }
        if Instant::now() >= self.deadline {
            self.stopped = Some(QueryError::Timeout("reading the store"));
            return ControlFlow::Break(());
        }
        let Some(points) = self.points.get_mut(i) else {
            return ControlFlow::Continue(());
        };
        points.reserve(len);
        for (ts_ns, v) in samples {
            let t = ts_ns.div_euclid(1_000_000);
            match points.last_mut() {
                // Two readings in one ms: the later one stands.
                Some(last) if last.0 == t => last.1 = v,
                _ => {
                    points.push((t, v));
                    self.total += 1;
                }
            }
        }
        if self.total > self.max_samples {
            self.stopped = Some(too_many_samples(self.max_samples));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Reads what `needs` name from the store, refusing to hold more than
/// `max_samples` samples and stopping at the deadline. `catalogue` is the
/// whole series list when the engine keeps one.
pub fn load(
    reads: &Reads<'_>,
    catalogue: Option<&Snapshot>,
    needs: &[Need<'_>],
    max_samples: usize,
) -> Result<Data, QueryError> {
    // Without a catalogue: the series list per pushed-down filter, listed
    // once per query.
    let mut lists: FastMap<(String, String, String), Vec<Listed>> = FastMap::default();
    let mut data = Data::default();
    let mut total = 0usize;
    for need in needs {
        let chosen: Vec<&Listed> = match catalogue {
            Some(snapshot) => snapshot
                .candidates(need.selector)
                .filter(|(_, labels)| selector_matches(need.selector, labels))
                .collect(),
            None => {
                let sel = pushdown(need.selector);
                let list_key = (sel.agent.clone(), sel.device.clone(), sel.metric.clone());
                if !lists.contains_key(&list_key) {
                    let listed = list_series(reads, &sel, i64::MIN)?;
                    lists.insert(list_key.clone(), listed);
                }
                lists
                    .get(&list_key)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|(_, labels)| selector_matches(need.selector, labels))
                    .collect()
            }
        };
        let span = TimeSpan {
            since_ns: Some(need.lo.saturating_mul(1_000_000)),
            until_ns: Some(need.hi.saturating_add(1).saturating_mul(1_000_000)),
        };
        let metas: Vec<Arc<SeriesMeta>> = chosen.iter().map(|(meta, _)| meta.clone()).collect();
        let loading = Loading {
            points: vec![Vec::new(); metas.len()],
            total,
            max_samples,
            deadline: reads.deadline,
            stopped: None,
            abandoned: Arc::clone(reads.abandoned),
        };
        // One read over exactly the chosen series (by id, in id order).
        let loading = reads.load_range_series(&metas, span, loading)?;
        if let Some(e) = loading.stopped {
            return Err(e);
        }
        total = loading.total;
        let series = chosen
            .iter()
            .zip(loading.points)
            .map(|((_, labels), points)| Series {
                labels: labels.clone(),
                points,
            })
            .collect();
        data.selections
            .insert(selector_key(need.selector), Selection::new(series));
    }
    Ok(data)
}

/// The error of a query over `max_samples`, worded as Prometheus's.
pub fn too_many_samples(max_samples: usize) -> QueryError {
    QueryError::Limit(format!(
        "query processing would load too many samples into memory in query execution \
         (max_samples = {max_samples})"
    ))
}

/// The same selection from series held in memory (the evaluator's tests).
#[cfg(test)]
pub fn from_memory(needs: &[Need<'_>], all: &[Series]) -> Data {
    let mut data = Data::default();
    for need in needs {
        let chosen = all
            .iter()
            .filter(|s| selector_matches(need.selector, &s.labels))
            .map(|s| Series {
                labels: s.labels.clone(),
                points: s
                    .points
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= need.lo && *t <= need.hi)
                    .collect(),
            })
            .collect();
        data.selections
            .insert(selector_key(need.selector), Selection::new(chosen));
    }
    data
}
