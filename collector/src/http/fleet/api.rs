//! The JSON API the page reads at load and on `resync`: the fleet (agents
//! and devices), a device's series, and a series' points over a window.
//! Every answer is bounded: series by [`MAX_FLEET_SERIES`], failure causes
//! looked up by [`MAX_CAUSE_LOOKUPS`], points by [`MAX_POINTS`] (thinned to
//! each bucket's extremes above it, and said so).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::warn;

use super::devices::{DeviceJson, UP_METRIC, health};
use super::json::{AgentJson, ExportJson, PointJson, SeriesJson};
use super::params::{BadRequest, Params};
use crate::http::HttpContext;
use crate::model::{Point, SeriesMeta, now_ns};
use crate::query::merge_agents;
use crate::store::read::{MAX_CHUNK_POINTS, ReadError, Reader, Selector, SeriesPage, TimeSpan};

/// Most series `/api/fleet` reads to list devices; beyond, it says it
/// stopped (`truncated`).
pub const MAX_FLEET_SERIES: usize = 100_000;

/// Series read per page while listing.
const SERIES_PAGE: usize = 10_000;

/// Most down devices whose failure cause `/api/fleet` looks up (one read of
/// the device's newest points each); the others show no cause until their
/// next poll arrives live.
pub const MAX_CAUSE_LOOKUPS: usize = 200;

/// Most series `/api/fleet/series` lists for one device.
pub const MAX_DEVICE_SERIES: usize = 2_000;

/// Most points `/api/fleet/range` returns; a window holding more is thinned.
pub const MAX_POINTS: usize = 4_000;

/// Default chart window.
const DEFAULT_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// A failed read: 503 when retrying may help, 500 otherwise.
fn read_failed(what: &str, e: &ReadError) -> Response {
    warn!(error = %e, "fleet page: {what} failed");
    let code = if e.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (code, format!("{what}: {e}\n")).into_response()
}

/// What `/api/fleet` answers.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub now_ns: String,
    pub version: &'static str,
    pub agents: Vec<AgentJson>,
    pub devices: Vec<DeviceJson>,
    /// More than [`MAX_FLEET_SERIES`] series: devices of the rest are missing.
    pub truncated: bool,
}

/// The agents as ListAgents answers them.
pub async fn agents(ctx: &HttpContext) -> Result<Vec<AgentJson>, ReadError> {
    let stored = ctx.reader.agents().await?;
    let live = ctx.live.borrow().clone();
    Ok(merge_agents(stored, &live)
        .into_iter()
        .map(AgentJson::from)
        .collect())
}

/// `GET /api/fleet`.
pub async fn fleet(
    State(ctx): State<HttpContext>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(e) = Params::new(query, &[]) {
        return e.into_response();
    }
    let agents = match agents(&ctx).await {
        Ok(agents) => agents,
        Err(e) => return read_failed("list agents", &e),
    };
    match devices(&ctx.reader).await {
        Ok((devices, truncated)) => Json(Fleet {
            now_ns: now_ns().to_string(),
            version: env!("CARGO_PKG_VERSION"),
            agents,
            devices,
            truncated,
        })
        .into_response(),
        Err(e) => read_failed("list devices", &e),
    }
}

/// What `/api/fleet/exports` answers.
#[derive(Debug, Serialize)]
pub struct Exports {
    pub now_ns: String,
    pub exports: Vec<ExportJson>,
}

/// `GET /api/fleet/exports`: every export's cursor as ListExports reads
/// it (none when this collector has no store log).
pub async fn exports(
    State(ctx): State<HttpContext>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(e) = Params::new(query, &[]) {
        return e.into_response();
    }
    let rows = match &ctx.exports {
        None => Vec::new(),
        Some(view) => match view.list().await {
            Ok(rows) => rows,
            Err(e) => return read_failed("list exports", &e),
        },
    };
    Json(Exports {
        now_ns: now_ns().to_string(),
        exports: rows.into_iter().map(ExportJson::from).collect(),
    })
    .into_response()
}

/// Every device that has a series (as ListSeries lists them), with its
/// health; `true` when the listing stopped at [`MAX_FLEET_SERIES`].
async fn devices(reader: &Reader) -> Result<(Vec<DeviceJson>, bool), ReadError> {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut after_id = 0;
    let mut listed = 0;
    let mut truncated = false;
    loop {
        let page = reader
            .series_page(
                Selector::default(),
                SeriesPage {
                    after_id,
                    limit: SERIES_PAGE,
                },
            )
            .await?;
        for meta in &page {
            *counts
                .entry((meta.key.agent.clone(), meta.key.device.clone()))
                .or_default() += 1;
        }
        listed += page.len();
        match page.last() {
            Some(last) if page.len() == SERIES_PAGE => after_id = last.id,
            _ => break,
        }
        if listed >= MAX_FLEET_SERIES {
            truncated = true;
            break;
        }
    }
    let up_sel = Selector {
        metric: UP_METRIC.to_owned(),
        ..Selector::default()
    };
    let mut up: HashMap<(String, String), Point> = HashMap::new();
    for (meta, point) in reader.latest(up_sel).await? {
        // The scheduler's series has no labels; a scraped `up` may.
        if meta.key.labels.is_empty() {
            up.insert((meta.key.agent, meta.key.device), point);
        }
    }
    let mut out = Vec::with_capacity(counts.len());
    let mut lookups = 0;
    for ((agent, device), series) in counts {
        let newest_up = up.get(&(agent.clone(), device.clone()));
        let mut failures = Vec::new();
        let down = newest_up.is_some_and(|p| health(Some(p), []).up == Some(false));
        if down && lookups < MAX_CAUSE_LOOKUPS {
            lookups += 1;
            let sel = Selector {
                agent: agent.clone(),
                device: device.clone(),
                metric: String::new(),
            };
            failures = reader
                .latest(sel)
                .await?
                .into_iter()
                .map(|(_, p)| p)
                .collect();
        }
        out.push(DeviceJson {
            agent,
            device,
            series: Some(series),
            health: health(newest_up, &failures),
        });
    }
    Ok((out, truncated))
}

/// `GET /api/fleet/series?agent=A&device=D`: the device's series by id.
pub async fn series(
    State(ctx): State<HttpContext>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let params = match Params::new(query, &["agent", "device"]) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (agent, device) = (params.text("agent"), params.text("device"));
    if agent.is_empty() || device.is_empty() {
        return BadRequest("agent and device: both are required".into()).into_response();
    }
    let sel = Selector {
        agent: agent.to_owned(),
        device: device.to_owned(),
        metric: String::new(),
    };
    let page = SeriesPage {
        after_id: 0,
        limit: MAX_DEVICE_SERIES,
    };
    match ctx.reader.series_page(sel, page).await {
        Ok(series) => Json(series.iter().map(SeriesJson::from).collect::<Vec<_>>()).into_response(),
        Err(e) => read_failed("list series", &e),
    }
}

/// What `/api/fleet/range` answers.
#[derive(Debug, Serialize)]
pub struct RangeJson {
    pub series: SeriesJson,
    pub since_ns: String,
    pub until_ns: String,
    /// Points in the window (all of them, or each bucket's extremes).
    pub points: Vec<PointJson>,
    /// Points the window holds.
    pub total: usize,
    /// `points` is a thinned copy of the window (more than [`MAX_POINTS`]).
    pub thinned: bool,
}

/// `GET /api/fleet/range?series=ID&window=5m` (or `since_ns`, `until_ns`;
/// `until_ns` defaults to now, the window to 5 minutes).
pub async fn range(
    State(ctx): State<HttpContext>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let request = match range_params(query) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let meta = match series_by_id(&ctx.reader, request.id).await {
        Ok(Some(meta)) => meta,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                format!("series: no series {}\n", request.id),
            )
                .into_response();
        }
        Err(e) => return read_failed("find series", &e),
    };
    let sel = Selector {
        agent: meta.key.agent.clone(),
        device: meta.key.device.clone(),
        metric: meta.key.metric.clone(),
    };
    let span = TimeSpan {
        since_ns: Some(request.since_ns),
        until_ns: Some(request.until_ns),
    };
    let mut thinner = super::thin::Thinner::new(request.since_ns, request.until_ns, MAX_POINTS);
    let mut chunks = ctx.reader.range(sel, span, MAX_CHUNK_POINTS);
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            // Other label sets of the same metric come along: skip them.
            Ok((m, points)) if m.id == meta.id => points.iter().for_each(|p| thinner.push(p)),
            Ok(_) => {}
            Err(e) => return read_failed("range", &e),
        }
    }
    let (points, total, thinned) = thinner.finish();
    Json(RangeJson {
        series: SeriesJson::from(&meta),
        since_ns: request.since_ns.to_string(),
        until_ns: request.until_ns.to_string(),
        points: points.iter().map(PointJson::from).collect(),
        total,
        thinned,
    })
    .into_response()
}

/// A checked range request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeRequest {
    pub id: i64,
    pub since_ns: i64,
    pub until_ns: i64,
}

/// `series` is required; `until_ns` defaults to now; `since_ns` to
/// `until_ns - window`, the window to 5 minutes.
pub fn range_params(query: BTreeMap<String, String>) -> Result<RangeRequest, BadRequest> {
    let params = Params::new(query, &["series", "window", "since_ns", "until_ns"])?;
    let id = params
        .series_id("series")?
        .ok_or_else(|| BadRequest("series: required (a series id)".into()))?;
    let until_ns = params.time_ns("until_ns")?.unwrap_or_else(now_ns);
    let window = params.window("window")?;
    let since_ns = match (params.time_ns("since_ns")?, window) {
        (Some(_), Some(_)) => {
            return Err(BadRequest(
                "since_ns and window: give one of them, not both".into(),
            ));
        }
        (Some(since), None) => since,
        (None, window) => {
            let window = window.unwrap_or(DEFAULT_WINDOW);
            until_ns.saturating_sub(i64::try_from(window.as_nanos()).unwrap_or(i64::MAX))
        }
    };
    if until_ns < since_ns {
        return Err(BadRequest(format!(
            "until_ns: {until_ns} is before since_ns {since_ns}"
        )));
    }
    Ok(RangeRequest {
        id,
        since_ns,
        until_ns,
    })
}

/// The stored series with id `id`, if there is one.
pub async fn series_by_id(reader: &Reader, id: i64) -> Result<Option<SeriesMeta>, ReadError> {
    let page = SeriesPage {
        after_id: id - 1,
        limit: 1,
    };
    let found = reader.series_page(Selector::default(), page).await?;
    Ok(found.into_iter().next().filter(|m| m.id == id))
}
