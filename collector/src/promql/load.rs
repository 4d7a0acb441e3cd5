//! Reads what a planned query needs, once, before it is evaluated: the
//! series each selector chooses (from the engine's series catalogue,
//! `catalogue.rs`, matchers applied to the cached Prometheus labels; or,
//! when the catalogue is too large to keep, listed through
//! `Reader::series_page` with exact `agent`, `device` and reversible
//! `__name__` equality pushed down into the `Selector`), then those
//! series' points in the selector's window through
//! `Reader::fold_range_series` (one read over exactly those series, by id:
//! on SQLite one call on the blocking pool and one connection however many
//! there are), converted to samples as they are read
//! (`prom_labels::sample_value`; strings and failures are not samples) at
//! ms resolution.
//!
//! Imports `store::read`, `prom_labels`, `model` and the plan.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::model::{Point, SeriesMeta};
use crate::prom_labels;
use crate::store::read::{ReadError, Reader, Selector, SeriesPage, TimeSpan};

use super::catalogue::Snapshot;
use super::plan::{Need, required_value, selector_key, selector_matches};
use super::types::{Labels, NAME, QueryError, Series, drop_name};

/// The samples of every selector of a query, by [`selector_key`]; each
/// series' points cover the selector's window (and may hold more).
#[derive(Debug, Default)]
pub struct Data {
    pub selections: HashMap<usize, Selection>,
}

/// The series one selector chose, with their samples.
#[derive(Debug, Default)]
pub struct Selection {
    pub series: Vec<Series>,
    /// Each series' labels without `__name__`, and whether those are all
    /// different: made once per query, on first use, instead of at every
    /// step of a range query.
    unnamed: OnceLock<(Vec<Arc<Labels>>, bool)>,
}

impl Selection {
    pub fn new(series: Vec<Series>) -> Selection {
        Selection {
            series,
            unnamed: OnceLock::new(),
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
            let mut seen = std::collections::HashSet::with_capacity(labels.len());
            let unique = labels.iter().all(|l| seen.insert(&**l));
            (labels, unique)
        });
        (labels, *unique)
    }
}

/// A stored series and its Prometheus labels.
pub type Listed = (Arc<SeriesMeta>, Arc<Labels>);

/// Series listed per page from the store.
const LIST_PAGE: usize = 10_000;

fn unavailable(e: &ReadError) -> QueryError {
    QueryError::Unavailable(e.to_string())
}

/// Every stored series passing `sel` with an id above `after_id`, by id,
/// with its Prometheus labels.
pub async fn list_series(
    reader: &Reader,
    sel: Selector,
    mut after_id: i64,
) -> Result<Vec<Listed>, QueryError> {
    let mut out = Vec::new();
    loop {
        let page = reader
            .series_page(
                sel.clone(),
                SeriesPage {
                    after_id,
                    limit: LIST_PAGE,
                },
            )
            .await
            .map_err(|e| unavailable(&e))?;
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
    deadline: Option<Instant>,
    stopped: Option<QueryError>,
    /// Set when the query that asked is dropped (its client went away):
    /// the read, on a blocking thread of its own, stops at its next chunk
    /// instead of running on after the query's slot was given back.
    abandoned: Arc<AtomicBool>,
}

/// Sets its flag when dropped: tells a blocking read that whoever awaited
/// it is gone (on the normal path it is set after the read has ended).
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Loading {
    /// Adds the samples of one chunk of series `i`.
    fn add(&mut self, i: usize, chunk: &[Point]) -> ControlFlow<()> {
        if self.abandoned.load(Ordering::Relaxed) {
            self.stopped = Some(QueryError::Timeout(
                "reading the store (the query was abandoned)",
            ));
            return ControlFlow::Break(());
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stopped = Some(QueryError::Timeout("reading the store"));
            return ControlFlow::Break(());
        }
        let Some(points) = self.points.get_mut(i) else {
            return ControlFlow::Continue(());
        };
        points.reserve(chunk.len());
        for p in chunk {
            let Some(v) = prom_labels::sample_value(&p.value) else {
                continue;
            };
            let t = p.ts_ns.div_euclid(1_000_000);
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
/// `max_samples` samples and stopping at `deadline`. `catalogue` is the
/// whole series list when the engine keeps one.
pub async fn load(
    reader: &Reader,
    catalogue: Option<&Snapshot>,
    needs: &[Need<'_>],
    max_samples: usize,
    deadline: Option<Instant>,
) -> Result<Data, QueryError> {
    // Without a catalogue: the series list per pushed-down filter, listed
    // once per query.
    let mut lists: HashMap<(String, String, String), Vec<Listed>> = HashMap::new();
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
                    let listed = list_series(reader, sel, i64::MIN).await?;
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
        let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
        let loading = Loading {
            points: vec![Vec::new(); metas.len()],
            total,
            max_samples,
            deadline,
            stopped: None,
            abandoned: abandoned.0.clone(),
        };
        // One read over exactly the chosen series (by id, in id order).
        let loading = reader
            .fold_range_series(&metas, span, loading, Loading::add)
            .await
            .map_err(|e| unavailable(&e))?;
        drop(abandoned);
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
