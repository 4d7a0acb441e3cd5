//! PromQL over the store's read side: [`Engine::instant`] and
//! [`Engine::range`] parse a query (`promql-parser`; the last 256 texts'
//! parses kept, `parsed.rs`), plan it (`plan.rs`:
//! every selector's window; unsupported functions refused before any
//! read), choose each selector's series from the series catalogue
//! (`catalogue.rs`: every series and its Prometheus labels, kept between
//! queries and checked against the store's census at each), read each
//! selected series' samples once (`load.rs`, through
//! `store::read::Reader`, which uses its own connections: the merger
//! never waits for a query), then evaluate from memory (`eval.rs`,
//! `functions/`, `aggregate.rs`, `binary.rs`). Once it holds its permit,
//! a query (census, reads, evaluation) is one call on one of the query
//! runtime's lower-priority blocking threads (`runtime.rs`): no hand-off
//! between threads per read.
//!
//! Semantics are Prometheus 2.x's (the differential test in
//! `tests/tests/promql_differential.rs` holds them to it). Limits: at most
//! `max_concurrent` queries at once (others wait, within their timeout),
//! `max_samples` samples held, `max_points` steps per range query, and a
//! timeout.
//!
//! Imports `store::read`, `prom_labels`, `model`; nothing of the HTTP API
//! (`http/prometheus` calls in and formats the answer).
//!
//! Maps and sets that live for one query (keyed by label sets, group
//! hashes, series ids, node ids) are [`FastMap`]/[`FastSet`], foldhash
//! seeded per process and per map, not SipHash (a tenth of a query's
//! instructions): label values can come from devices (an SNMP interface
//! description), so an unseeded hash (FxHash) would let crafted values
//! collide and make one query quadratic; foldhash's random seed keeps
//! that out of reach at FxHash's speed.

mod aggregate;
mod binary;
mod catalogue;
mod columns;
mod eval;
mod functions;
mod load;
mod memo;
mod numbers;
mod parsed;
mod plan;
pub mod runtime;
mod steps;
mod types;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, VectorSelector};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::model::SeriesMeta;
use crate::store::read::Reader;

/// A map that lives for one query (see the module's doc on hashing).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A set that lives for one query.
pub(crate) type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

pub use numbers::{format_float, format_sample_value, write_float, write_sample_value};
pub use plan::selector_matches;
pub use types::{Labels, QueryError, Sample, Series};

/// Prometheus's defaults, which are ours.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 60);
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;
pub const DEFAULT_MAX_CONCURRENT: usize = 4;
/// The step of a subquery that names none (Prometheus's default
/// evaluation interval).
const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// What one query may use: the `[query]` table of the collector's config
/// and its `--query-*` flags (`config/query.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How far back an instant selector looks for a sample.
    pub lookback: Duration,
    /// Most samples a query may hold at once.
    pub max_samples: usize,
    /// Longest a query may run, waiting for a slot included.
    pub timeout: Duration,
    /// Queries evaluated at once; more wait for a slot.
    pub max_concurrent: usize,
    /// Most steps of a range query (`(end - start) / step`).
    pub max_points: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            lookback: DEFAULT_LOOKBACK,
            max_samples: DEFAULT_MAX_SAMPLES,
            timeout: DEFAULT_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_points: MAX_POINTS_PER_SERIES,
        }
    }
}

/// A query's answer, in the four shapes of the Prometheus API.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    Scalar { t: i64, v: f64 },
    String { t: i64, s: String },
    Vector { t: i64, samples: Vec<Sample> },
    Matrix(Vec<Series>),
}

/// Runs PromQL queries against the store. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    reader: Reader,
    limits: Limits,
    permits: Arc<Semaphore>,
    /// Every series and its labels, shared by the clones.
    catalogue: Arc<catalogue::Catalogue>,
    /// The recent queries' parses, shared by the clones.
    parsed: Arc<parsed::Parsed>,
}

/// Parses a query, with the parser's message (which carries the position).
pub fn parse(query: &str) -> Result<Box<Expr>, QueryError> {
    promql_parser::parser::parse(query)
        .map(Box::new)
        .map_err(|e| {
            // Prometheus 2.x's name of `double_exponential_smoothing`, which
            // the parser (following Prometheus 3) no longer knows.
            if e.contains("unknown function with name 'holt_winters'") {
                QueryError::Unsupported("function holt_winters()".into())
            } else {
                QueryError::BadData(format!("invalid parameter \"query\": {e}"))
            }
        })
}

/// Parses a series selector (`match[]` of the metadata endpoints).
pub fn parse_selector(text: &str) -> Result<VectorSelector, QueryError> {
    match promql_parser::parser::parse(text) {
        Ok(Expr::VectorSelector(vs)) => Ok(vs),
        Ok(_) => Err(QueryError::BadData(format!(
            "invalid parameter \"match[]\": {text:?} is not a series selector"
        ))),
        Err(e) => Err(QueryError::BadData(format!(
            "invalid parameter \"match[]\": {e}"
        ))),
    }
}

impl Engine {
    pub fn new(reader: Reader, limits: Limits) -> Engine {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Engine {
            reader,
            limits,
            permits,
            catalogue: Arc::default(),
            parsed: Arc::default(),
        }
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Every stored series passing one of `selectors` (all of them when
    /// there is none), with its labels, in label order; with `span`
    /// (`[start, end]`, ms), only those that may have readings in it
    /// (`Reader::series_in_span`). Like a query, it holds one of the
    /// `max_concurrent` permits and ends at the timeout.
    pub async fn series(
        &self,
        selectors: &[VectorSelector],
        span: Option<(i64, i64)>,
    ) -> Result<Vec<(Arc<SeriesMeta>, Arc<Labels>)>, QueryError> {
        let deadline = Instant::now() + self.limits.timeout;
        let permit = self.permit(deadline).await?;
        let this = self.clone();
        let selectors = selectors.to_vec();
        let work = runtime::blocking(move |abandoned| {
            let _permit = permit;
            let reads = load::Reads {
                reader: &this.reader,
                deadline: deadline.into_std(),
                abandoned,
            };
            this.series_here(&reads, &selectors, span)
        });
        within(deadline, "listing series", work).await
    }

    /// One of the `max_concurrent` permits, waited for until `deadline`.
    async fn permit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, QueryError> {
        tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| QueryError::Timeout("waiting for a query slot"))?
            .map_err(|_| QueryError::Unavailable("the query engine is shut down".into()))
    }

    /// [`series`](Self::series), on the query's blocking thread.
    fn series_here(
        &self,
        reads: &load::Reads<'_>,
        selectors: &[VectorSelector],
        span: Option<(i64, i64)>,
    ) -> Result<Vec<load::Listed>, QueryError> {
        let listed = self.list(reads, selectors)?;
        let Some((start, end)) = span else {
            return Ok(listed);
        };
        let span = crate::store::read::TimeSpan {
            since_ns: Some(start.saturating_mul(1_000_000)),
            until_ns: Some(end.saturating_add(1).saturating_mul(1_000_000)),
        };
        let present = reads.series_in_span(span)?;
        Ok(listed
            .into_iter()
            .filter(|(meta, _)| present.contains(meta.id))
            .collect())
    }

    fn list(
        &self,
        reads: &load::Reads<'_>,
        selectors: &[VectorSelector],
    ) -> Result<Vec<load::Listed>, QueryError> {
        let mut out: FastMap<i64, load::Listed> = FastMap::default();
        if let Some(snapshot) = self.catalogue.snapshot(reads)? {
            if selectors.is_empty() {
                for listed in snapshot.all() {
                    out.insert(listed.0.id, listed.clone());
                }
            }
            for vs in selectors {
                for listed in snapshot.candidates(vs) {
                    if selector_matches(vs, &listed.1) {
                        out.insert(listed.0.id, listed.clone());
                    }
                }
            }
        } else {
            if selectors.is_empty() {
                for (meta, labels) in load::list_series(reads, &Default::default(), i64::MIN)? {
                    out.insert(meta.id, (meta, labels));
                }
            }
            for vs in selectors {
                for (meta, labels) in load::list_series(reads, &load::pushdown(vs), i64::MIN)? {
                    if selector_matches(vs, &labels) {
                        out.insert(meta.id, (meta, labels));
                    }
                }
            }
        }
        let mut out: Vec<_> = out.into_values().collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// `query` at `t` (ms).
    pub async fn instant(
        &self,
        query: &str,
        t: i64,
        timeout: Option<Duration>,
    ) -> Result<QueryResult, QueryError> {
        let expr = self.parsed.get(query)?;
        self.run(expr, t, t, None, timeout).await
    }

    /// `query` at every `step` ms from `start` to `end` (ms): a matrix.
    pub async fn range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
        timeout: Option<Duration>,
    ) -> Result<QueryResult, QueryError> {
        let expr = self.parsed.get(query)?;
        match expr.value_type() {
            ValueType::Vector | ValueType::Scalar => {}
            other => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type \"{other}\" for range query, must be Scalar or instant Vector"
                )));
            }
        }
        if step <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end < start {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        let max_points = self.limits.max_points;
        if (end - start) / step >= max_points {
            return Err(QueryError::Limit(format!(
                "exceeded maximum resolution of {max_points} points per timeseries. \
                 Try decreasing the query resolution (?step=XX)"
            )));
        }
        self.run(expr, start, end, Some(step), timeout).await
    }

    /// Plans `expr` (refusing what is not supported before waiting or
    /// reading), waits for a permit, then reads and evaluates in one call
    /// on the query runtime's blocking pool (`runtime.rs`).
    async fn run(
        &self,
        expr: Arc<Expr>,
        start: i64,
        end: i64,
        step: Option<i64>,
        timeout: Option<Duration>,
    ) -> Result<QueryResult, QueryError> {
        let timeout = timeout.map_or(self.limits.timeout, |t| t.min(self.limits.timeout));
        let deadline = Instant::now() + timeout;
        let bounds = plan::Bounds {
            start,
            end,
            lookback: plan::duration_ms(self.limits.lookback),
            default_step: DEFAULT_SUBQUERY_STEP_MS,
        };
        plan::plan(&expr, &bounds)?;
        // Owned: it goes with the query onto its blocking thread, so a
        // query whose request went away keeps its slot until that work
        // ends, and its reads stop at their next chunk (`load`): abandoned
        // work never runs beyond the slots.
        let permit = self.permit(deadline).await?;
        let this = self.clone();
        let work = runtime::blocking(move |abandoned| {
            let _permit = permit;
            let reads = load::Reads {
                reader: &this.reader,
                deadline: deadline.into_std(),
                abandoned,
            };
            this.run_here(&reads, &expr, bounds, step)
        });
        within(deadline, "query evaluation", work).await
    }

    /// [`run`](Self::run), on the query's blocking thread.
    fn run_here(
        &self,
        reads: &load::Reads<'_>,
        expr: &Expr,
        bounds: plan::Bounds,
        step: Option<i64>,
    ) -> Result<QueryResult, QueryError> {
        // Planned again (cheap): the needs borrow the expression.
        let needs = plan::plan(expr, &bounds)?;
        let snapshot = self.catalogue.snapshot(reads)?;
        let data = load::load(reads, snapshot.as_deref(), &needs, self.limits.max_samples)?;
        drop(needs);
        let ev = eval::Evaluator {
            data: &data,
            bounds,
            deadline: Some(reads.deadline),
            max_samples: self.limits.max_samples,
            memo: Default::default(),
            abandoned: Some(reads.abandoned),
        };
        match step {
            None => evaluate_instant(&ev, expr, bounds.start),
            Some(step) => evaluate_range(&ev, expr, bounds.start, bounds.end, step),
        }
    }
}

fn evaluate_instant(
    ev: &eval::Evaluator<'_>,
    expr: &Expr,
    t: i64,
) -> Result<QueryResult, QueryError> {
    Ok(match ev.eval(expr, t)? {
        types::Value::Scalar(v) => QueryResult::Scalar { t, v },
        types::Value::String(s) => QueryResult::String { t, s },
        types::Value::Vector(samples) => QueryResult::Vector { t, samples },
        types::Value::Matrix(series) => QueryResult::Matrix(series),
    })
}

fn evaluate_range(
    ev: &eval::Evaluator<'_>,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
) -> Result<QueryResult, QueryError> {
    // A range function (or a reducing aggregation of one) a series at a
    // time across the steps.
    if let Some(answer) = columns::range(ev, expr, start, end, step) {
        return answer.map(QueryResult::Matrix);
    }
    evaluate_steps(ev, expr, start, end, step)
}

/// A range query as instant evaluations at every step, merged by labels.
fn evaluate_steps(
    ev: &eval::Evaluator<'_>,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
) -> Result<QueryResult, QueryError> {
    let mut series = steps::Steps::default();
    let mut total = 0usize;
    let mut t = start;
    while t <= end {
        ev.check_deadline()?;
        match ev.eval(expr, t)? {
            types::Value::Scalar(v) => {
                total += 1;
                series.push_scalar(t, v);
            }
            types::Value::Vector(samples) => {
                total += samples.len();
                series.push_vector(t, &samples);
            }
            other => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    other.type_name()
                )));
            }
        }
        if total > ev.max_samples {
            return Err(load::too_many_samples(ev.max_samples));
        }
        t += step;
    }
    Ok(QueryResult::Matrix(series.finish()))
}

/// `work` (a query on its blocking thread), answered by [`QueryError::Timeout`]
/// at `deadline` whatever the work is doing: dropping it sets its abandon
/// flag (`runtime.rs`), so its reads stop at their next chunk or page while
/// its permit stays with it until it ends.
pub(crate) async fn within<T>(
    deadline: Instant,
    what: &'static str,
    work: impl Future<Output = Result<T, QueryError>>,
) -> Result<T, QueryError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| QueryError::Timeout(what))?
}
