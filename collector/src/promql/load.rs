//! Reads what a planned query needs, once, before it is evaluated: the
//! series list (through `Reader::series_page`, exact `agent`, `device`
//! and reversible `__name__` equality pushed down into the `Selector`),
//! the matchers applied to each series' Prometheus labels
//! (`prom_labels`), then every selected series' points in its window
//! through `Reader::range_series` (one read over exactly those series, by
//! id: one SQLite connection however many there are), converted to samples (`prom_labels::sample_value`;
//! strings and failures are not samples) at ms resolution.
//!
//! Imports `store::read`, `prom_labels`, `model` and the plan.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::SeriesMeta;
use crate::prom_labels;
use crate::store::read::{MAX_CHUNK_POINTS, ReadError, Reader, Selector, SeriesPage, TimeSpan};

use super::plan::{Need, required_value, selector_key, selector_matches};
use super::types::{Labels, NAME, QueryError, Series};

/// The samples of every selector of a query, by [`selector_key`]; each
/// series' points cover the selector's window (and may hold more).
#[derive(Debug, Default)]
pub struct Data {
    pub selections: HashMap<usize, Vec<Series>>,
}

/// A stored series and its Prometheus labels.
pub type Listed = (SeriesMeta, Arc<Labels>);

/// Series listed per page from the store.
const LIST_PAGE: usize = 10_000;

fn unavailable(e: &ReadError) -> QueryError {
    QueryError::Unavailable(e.to_string())
}

/// Every stored series passing `sel`, with its Prometheus labels.
pub async fn list_series(reader: &Reader, sel: Selector) -> Result<Vec<Listed>, QueryError> {
    let mut out = Vec::new();
    let mut after_id = i64::MIN;
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
            out.push((meta, labels));
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

/// Reads what `needs` name from the store, refusing to hold more than
/// `max_samples` samples.
pub async fn load(
    reader: &Reader,
    needs: &[Need<'_>],
    max_samples: usize,
) -> Result<Data, QueryError> {
    // The series list per pushed-down filter, listed once per query.
    let mut lists: HashMap<(String, String, String), Vec<Listed>> = HashMap::new();
    let mut data = Data::default();
    let mut total = 0usize;
    for need in needs {
        let sel = pushdown(need.selector);
        let list_key = (sel.agent.clone(), sel.device.clone(), sel.metric.clone());
        if !lists.contains_key(&list_key) {
            let listed = list_series(reader, sel.clone()).await?;
            lists.insert(list_key.clone(), listed);
        }
        let listed = lists.get(&list_key).map(Vec::as_slice).unwrap_or_default();
        let chosen: Vec<&Listed> = listed
            .iter()
            .filter(|(_, labels)| selector_matches(need.selector, labels))
            .collect();
        let span = TimeSpan {
            since_ns: Some(need.lo.saturating_mul(1_000_000)),
            until_ns: Some(need.hi.saturating_add(1).saturating_mul(1_000_000)),
        };
        let mut by_id: BTreeMap<i64, Series> = chosen
            .iter()
            .map(|(meta, labels)| {
                (
                    meta.id,
                    Series {
                        labels: labels.clone(),
                        points: Vec::new(),
                    },
                )
            })
            .collect();
        // One read over exactly the chosen series (by id): one SQLite
        // connection, whatever their number.
        let metas: Vec<SeriesMeta> = chosen.iter().map(|(meta, _)| meta.clone()).collect();
        {
            let mut rx = reader.range_series(metas, span, MAX_CHUNK_POINTS);
            while let Some(chunk) = rx.recv().await {
                let (meta, points) = chunk.map_err(|e| unavailable(&e))?;
                let Some(series) = by_id.get_mut(&meta.id) else {
                    continue;
                };
                for p in &points {
                    let Some(v) = prom_labels::sample_value(&p.value) else {
                        continue;
                    };
                    let t = p.ts_ns.div_euclid(1_000_000);
                    match series.points.last_mut() {
                        // Two readings in one ms: the later one stands.
                        Some(last) if last.0 == t => last.1 = v,
                        _ => {
                            series.points.push((t, v));
                            total += 1;
                        }
                    }
                }
                if total > max_samples {
                    return Err(too_many_samples(max_samples));
                }
            }
        }
        data.selections
            .insert(selector_key(need.selector), by_id.into_values().collect());
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
        data.selections.insert(selector_key(need.selector), chosen);
    }
    data
}
