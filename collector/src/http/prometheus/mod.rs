//! The Prometheus HTTP API over the collector's store, as Grafana's
//! Prometheus data source, `promtool` and other PromQL clients call it:
//! `/api/v1/query`, `/api/v1/query_range` (GET and form POST),
//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/{name}/values`,
//! `/api/v1/metadata`, `/api/v1/query_exemplars` (always empty) and
//! `/api/v1/status/buildinfo`. Queries run in `crate::promql`; this module
//! reads parameters (`params.rs`) and writes Prometheus's JSON
//! (`json.rs`).
//!
//! The series, label and metadata endpoints list every stored series that
//! passes `match[]`; they ignore `start` and `end` (the store keeps no
//! per-series time bounds yet), so they may list more than Prometheus.
//!
//! Imports `promql`, `prom_labels`, `model` and `http`'s context.

mod json;
mod params;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::{FromRequest, Path, Query, Request};
use axum::http::Method;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Form, Router};
use serde_json::json;

use super::HttpContext;
use crate::prom_labels::NAME;
use crate::promql::{Engine, Limits, QueryError, QueryResult, parse_selector};
use crate::store::read::Reader;

pub use params::Params;

/// The routes of the Prometheus API, over `reader`, queries held to
/// `limits`.
pub fn router(reader: Reader, limits: Limits) -> Router<HttpContext> {
    let engine = Engine::new(reader, limits);
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .layer(Extension(engine))
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bad = |text: String| json::error(&QueryError::BadData(text));
        let mut pairs = match Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
            Ok(Query(p)) => p,
            Err(e) => return Err(bad(e.body_text())),
        };
        if req.method() == Method::POST {
            let Form(body) = Form::<Vec<(String, String)>>::from_request(req, state)
                .await
                .map_err(|e| bad(e.body_text()))?;
            pairs.extend(body);
        }
        Ok(Params(pairs))
    }
}

fn now_ms() -> i64 {
    crate::model::now_ns().div_euclid(1_000_000)
}

fn answer(r: Result<impl serde::Serialize, QueryError>, warnings: Vec<String>) -> Response {
    match r {
        Ok(data) => json::success(&data, warnings),
        Err(e) => json::error(&e),
    }
}

fn query_text(p: &Params) -> Result<&str, QueryError> {
    p.get("query").ok_or_else(|| {
        QueryError::BadData("invalid parameter \"query\": the query is empty".into())
    })
}

fn timeout(p: &Params) -> Result<Option<Duration>, QueryError> {
    Ok(p.duration("timeout")?
        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

/// `/api/v1/query`: `query`, `time` (default now), `timeout`.
async fn query(Extension(engine): Extension<Engine>, p: Params) -> Response {
    let r = async {
        let q = query_text(&p)?;
        let t = p.time("time", now_ms())?;
        engine.instant(q, t, timeout(&p)?).await
    }
    .await;
    query_answer(r)
}

/// `/api/v1/query_range`: `query`, `start`, `end`, `step`, `timeout`.
async fn query_range(Extension(engine): Extension<Engine>, p: Params) -> Response {
    let r = async {
        let q = query_text(&p)?;
        let required = |name: &str| {
            p.get(name).is_some().then_some(()).ok_or_else(|| {
                QueryError::BadData(format!("invalid parameter \"{name}\": missing"))
            })
        };
        required("start")?;
        required("end")?;
        let start = p.time("start", 0)?;
        let end = p.time("end", 0)?;
        let step = p
            .duration("step")?
            .ok_or_else(|| QueryError::BadData("invalid parameter \"step\": missing".into()))?;
        engine.range(q, start, end, step, timeout(&p)?).await
    }
    .await;
    query_answer(r)
}

fn query_answer(r: Result<QueryResult, QueryError>) -> Response {
    match r {
        Ok(result) => json::query_success(&result),
        Err(e) => json::error(&e),
    }
}

fn selectors(p: &Params) -> Result<Vec<promql_parser::parser::VectorSelector>, QueryError> {
    p.all("match[]").into_iter().map(parse_selector).collect()
}

/// `start` and `end` of the series, labels, label values and metadata
/// calls: `None` when neither is given (all time).
fn span(p: &Params) -> Result<Option<(i64, i64)>, QueryError> {
    if p.get("start").is_none() && p.get("end").is_none() {
        return Ok(None);
    }
    let start = p.time("start", i64::MIN)?;
    let end = p.time("end", i64::MAX)?;
    if end < start {
        return Err(QueryError::BadData(
            "invalid parameter \"end\": end timestamp must not be before start time".into(),
        ));
    }
    Ok(Some((start, end)))
}

/// Cuts `items` to the request's `limit`, with Prometheus's warning.
fn limited<T>(items: &mut Vec<T>, limit: Option<usize>) -> Vec<String> {
    match limit {
        Some(n) if items.len() > n => {
            items.truncate(n);
            vec!["results truncated due to limit".to_owned()]
        }
        _ => Vec::new(),
    }
}

/// `/api/v1/series`: `match[]` (at least one), `limit`.
async fn series(Extension(engine): Extension<Engine>, p: Params) -> Response {
    let mut warnings = Vec::new();
    let r = async {
        let sels = selectors(&p)?;
        if sels.is_empty() {
            return Err(QueryError::BadData("no match[] parameter provided".into()));
        }
        let mut found = engine.series(&sels, span(&p)?).await?;
        warnings = limited(&mut found, p.limit()?);
        Ok(json!(
            found
                .iter()
                .map(|(_, l)| json::labels(l))
                .collect::<Vec<_>>()
        ))
    }
    .await;
    answer(r, warnings)
}

/// `/api/v1/labels`: every label name of the series passing `match[]`.
async fn labels(Extension(engine): Extension<Engine>, p: Params) -> Response {
    let mut warnings = Vec::new();
    let r = async {
        let found = engine.series(&selectors(&p)?, span(&p)?).await?;
        let names: BTreeSet<&str> = found
            .iter()
            .flat_map(|(_, l)| l.iter().map(|(n, _)| n.as_str()))
            .collect();
        let mut names: Vec<&str> = names.into_iter().collect();
        warnings = limited(&mut names, p.limit()?);
        Ok(json!(names))
    }
    .await;
    answer(r, warnings)
}

/// `/api/v1/label/{name}/values`.
async fn label_values(
    Extension(engine): Extension<Engine>,
    Path(name): Path<String>,
    p: Params,
) -> Response {
    let mut warnings = Vec::new();
    let r = async {
        let valid = !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid {
            return Err(QueryError::BadData(format!("invalid label name: {name:?}")));
        }
        let found = engine.series(&selectors(&p)?, span(&p)?).await?;
        let values: BTreeSet<&str> = found
            .iter()
            .filter_map(|(_, l)| l.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()))
            .collect();
        let mut values: Vec<&str> = values.into_iter().collect();
        warnings = limited(&mut values, p.limit()?);
        Ok(json!(values))
    }
    .await;
    answer(r, warnings)
}

/// `/api/v1/metadata`: per metric name, type `unknown`, no help, and the
/// units of its series.
async fn metadata(Extension(engine): Extension<Engine>, p: Params) -> Response {
    let r = async {
        let found = engine.series(&[], span(&p)?).await?;
        let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (meta, l) in &found {
            let name = l
                .iter()
                .find(|(n, _)| n == NAME)
                .map_or("", |(_, v)| v.as_str());
            if p.get("metric").is_some_and(|m| m != name) {
                continue;
            }
            by_name.entry(name).or_default().insert(&meta.key.unit);
        }
        let limit = p.limit()?.unwrap_or(usize::MAX);
        let data: BTreeMap<String, Vec<MetricMetadata>> = by_name
            .into_iter()
            .take(limit)
            .map(|(name, units)| {
                let entries = units
                    .into_iter()
                    .map(|u| MetricMetadata {
                        kind: "unknown",
                        help: "",
                        unit: u.to_owned(),
                    })
                    .collect();
                (name.to_owned(), entries)
            })
            .collect();
        Ok(data)
    }
    .await;
    answer(r, Vec::new())
}

/// One metric's metadata, keys in Prometheus's order.
#[derive(serde::Serialize)]
struct MetricMetadata {
    #[serde(rename = "type")]
    kind: &'static str,
    help: &'static str,
    unit: String,
}

/// `/api/v1/query_exemplars`: Tributary stores no exemplars.
async fn query_exemplars() -> Response {
    json::success(&json!([]), Vec::new())
}

/// `/api/v1/status/buildinfo`'s data: Prometheus's keys in its order, and
/// `application`, which names Tributary.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildInfo {
    version: &'static str,
    revision: &'static str,
    branch: &'static str,
    build_user: &'static str,
    build_date: &'static str,
    go_version: &'static str,
    application: &'static str,
}

/// `GET /api/v1/status/buildinfo`, as Prometheus answers it (Grafana asks
/// it when a data source is saved, to learn the flavour and version).
async fn buildinfo() -> Response {
    json::success(
        &BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            revision: "",
            branch: "",
            build_user: "",
            build_date: "",
            go_version: "",
            application: "tributary-collector",
        },
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata entries with Prometheus's keys in its order.
    #[test]
    fn metadata_keys_are_in_prometheus_s_order() {
        let entry = MetricMetadata {
            kind: "unknown",
            help: "",
            unit: "s".into(),
        };
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"type":"unknown","help":"","unit":"s"}"#
        );
    }
}
