//! The `tributary.v1.Query` gRPC service, and the conversions between the
//! collector's model and the generated Query messages (both directions: the
//! CLI client uses the proto → model half).
//!
//! The service owns nothing mutable: it reads the database through
//! `store::read::Reader` (SQLite on the blocking pool, PostgreSQL through a
//! small pool of read-only connections), reads which agents are connected
//! from the merger's `watch`, and subscribes to the merger's commit
//! `broadcast` for Tail.
//!
//! `ListExports` lives in `query/exports.rs`.
//!
//! Every RPC is counted and timed (`crate::metrics::QueryMetrics`:
//! atomics, per request).
//!
//! With mutual TLS, every RPC first checks that the caller's certificate is
//! an operator's (`crate::roles`): an agent's certificate gets
//! `PERMISSION_DENIED`. Without it there are no identities and Query is
//! open.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};
use tributary_proto::v1 as pb;

mod exports;

pub use exports::{export_from_proto, export_to_proto};

use crate::export::ExportsView;
use crate::metrics::{QueryMetrics, Rpc};
use crate::model::{AgentLive, Committed, LiveAgents, Point, SeriesKey, SeriesMeta, StoredValue};
use crate::roles::{PeerAuth, Roles};
use crate::store::read::{
    MAX_CHUNK_POINTS, RangeChunk, ReadError, Reader, Selector, SeriesPage, StoredAgent, TimeSpan,
};

/// Chunks a Range stream may have in flight: enough to keep the reader
/// busy while the client drains, bounded so a slow client stops it.
const RANGE_BUFFER: usize = 4;

/// Chunks a Tail stream may have queued for a slow client before the
/// broadcast receiver starts to lag.
const TAIL_BUFFER: usize = 16;

/// Series in a `ListSeries` page when the request names no `page_size`.
pub const DEFAULT_PAGE_SIZE: usize = 10_000;

/// Most series in a `ListSeries` page; a larger `page_size` is taken as this.
pub const MAX_PAGE_SIZE: usize = 100_000;

/// A `ListSeries` page ends before its message grows past this, so it fits
/// the 4 MiB a gRPC client accepts by default, whatever the labels hold.
pub const MAX_PAGE_BYTES: usize = 2 << 20;

/// The Query service. Cheap to clone the parts it holds; tonic wraps it in an
/// `Arc`.
pub struct QueryService {
    reader: Reader,
    live: watch::Receiver<LiveAgents>,
    tail: broadcast::Sender<Committed>,
    shutdown: CancellationToken,
    /// Who may call (operators, with mutual TLS).
    roles: Arc<Roles>,
    /// Client certificates are verified, so callers have identities.
    mutual_tls: bool,
    /// Requests, errors and durations per RPC, for `/metrics`.
    metrics: Arc<QueryMetrics>,
    /// The exports' cursors and settings; `None`: `ListExports` is empty.
    exports: Option<ExportsView>,
}

impl QueryService {
    /// A service reading the store through `reader`, the merger's live
    /// agent snapshot and its commit broadcast.
    pub fn new(
        reader: Reader,
        live: watch::Receiver<LiveAgents>,
        tail: broadcast::Sender<Committed>,
    ) -> Self {
        QueryService {
            reader,
            live,
            tail,
            shutdown: CancellationToken::new(),
            roles: Arc::default(),
            mutual_tls: false,
            metrics: Arc::default(),
            exports: None,
        }
    }

    /// Answers `ListExports` from `view`.
    pub fn with_exports(mut self, view: ExportsView) -> Self {
        self.exports = Some(view);
        self
    }

    /// Counts and times every RPC in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<QueryMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Lets only operators call when `mutual_tls` (client certificates are
    /// verified); without it every caller may, as there are no identities.
    pub fn with_roles(mut self, roles: Arc<Roles>, mutual_tls: bool) -> Self {
        self.roles = roles;
        self.mutual_tls = mutual_tls;
        self
    }

    /// Refuses `request` unless its caller may query; a refusal is logged.
    fn authorize<T>(&self, request: &Request<T>, rpc: &str) -> Result<(), Status> {
        let auth = PeerAuth::of(request, self.mutual_tls);
        self.roles.authorize_query(&auth).inspect_err(|status| {
            let peer = request.remote_addr().map(|a| a.to_string());
            let peer = peer.as_deref().unwrap_or("");
            warn!(peer, rpc, error = %status.message(), "query refused");
        })
    }

    /// Ends open Range and Tail streams (with `UNAVAILABLE`) when `token` is
    /// cancelled. Without it a Tail stream never ends by itself, and a
    /// graceful server shutdown would wait for it until its deadline.
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }
}

/// A read error as a status: `UNAVAILABLE` when retrying may help (database
/// missing or locked), `INTERNAL` otherwise, with the cause in the message.
fn read_status(what: &str, e: &ReadError) -> Status {
    let msg = format!("{what}: {e}");
    if e.is_unavailable() {
        Status::unavailable(msg)
    } else {
        Status::internal(msg)
    }
}

/// The unary RPCs' bodies (counted and timed by the `Query` impl below).
impl QueryService {
    async fn list_agents_body(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.authorize(&request, "ListAgents")?;
        let stored = self
            .reader
            .agents()
            .await
            .map_err(|e| read_status("list agents", &e))?;
        let live = self.live.borrow().clone();
        Ok(Response::new(pb::ListAgentsResponse {
            agents: merge_agents(stored, &live),
        }))
    }

    async fn list_series_body(
        &self,
        request: Request<pb::ListSeriesRequest>,
    ) -> Result<Response<pb::ListSeriesResponse>, Status> {
        self.authorize(&request, "ListSeries")?;
        let (sel, page) = list_series_request(request.into_inner())?;
        // One more than the page holds, to know whether another follows.
        let fetch = SeriesPage {
            limit: page.limit + 1,
            ..page
        };
        let series = self
            .reader
            .series_page(sel, fetch)
            .await
            .map_err(|e| read_status("list series", &e))?;
        Ok(Response::new(series_page(&series, page.limit)))
    }

    async fn latest_body(
        &self,
        request: Request<pb::SeriesFilter>,
    ) -> Result<Response<pb::LatestResponse>, Status> {
        self.authorize(&request, "Latest")?;
        let sel = selector(request.into_inner());
        let latest = self
            .reader
            .latest(sel)
            .await
            .map_err(|e| read_status("latest", &e))?;
        Ok(Response::new(pb::LatestResponse {
            readings: latest
                .into_iter()
                .map(|(meta, point)| pb::SeriesPoint {
                    series: Some(series_to_proto(&meta)),
                    point: Some(point_to_proto(point)),
                })
                .collect(),
        }))
    }

    /// Runs an RPC's `body`, counted and timed.
    async fn timed<T>(
        &self,
        rpc: Rpc,
        body: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let timer = self.metrics.start(rpc);
        let result = body.await;
        self.metrics.finish(timer, result.is_ok());
        result
    }
}

#[tonic::async_trait]
impl pb::query_server::Query for QueryService {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.timed(Rpc::ListAgents, self.list_agents_body(request))
            .await
    }

    async fn list_series(
        &self,
        request: Request<pb::ListSeriesRequest>,
    ) -> Result<Response<pb::ListSeriesResponse>, Status> {
        self.timed(Rpc::ListSeries, self.list_series_body(request))
            .await
    }

    async fn latest(
        &self,
        request: Request<pb::SeriesFilter>,
    ) -> Result<Response<pb::LatestResponse>, Status> {
        self.timed(Rpc::Latest, self.latest_body(request)).await
    }

    async fn list_exports(
        &self,
        request: Request<pb::ListExportsRequest>,
    ) -> Result<Response<pb::ListExportsResponse>, Status> {
        self.timed(Rpc::ListExports, self.list_exports_body(request))
            .await
    }

    type RangeStream = ReceiverStream<Result<pb::ReadingsChunk, Status>>;

    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStream>, Status> {
        let timer = self.metrics.start(Rpc::Range);
        let checked = self
            .authorize(&request, "Range")
            .and_then(|()| range_request(request.into_inner()));
        let (sel, span) = match checked {
            Ok(x) => x,
            Err(status) => {
                self.metrics.finish(timer, false);
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(RANGE_BUFFER);
        let mut chunks = self.reader.range(sel, span, MAX_CHUNK_POINTS);
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        // Detached: ends when the walk is done, the client is gone (the
        // next send fails; dropping `chunks` then stops the reader) or the
        // collector shuts down. Timed until then; failed if it ended with
        // an error status.
        tokio::spawn(async move {
            let ok = range_walk(&mut chunks, &tx, &shutdown).await;
            metrics.finish(timer, ok);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type TailStream = ReceiverStream<Result<pb::ReadingsChunk, Status>>;

    async fn tail(
        &self,
        request: Request<pb::SeriesFilter>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let timer = self.metrics.start(Rpc::Tail);
        let authorized = self.authorize(&request, "Tail");
        self.metrics.finish(timer, authorized.is_ok());
        authorized?;
        let sel = selector(request.into_inner());
        let mut commits = self.tail.subscribe();
        let (tx, rx) = mpsc::channel(TAIL_BUFFER);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let committed = tokio::select! {
                    () = tx.closed() => break,
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("collector shutting down"))).await;
                        break;
                    }
                    r = commits.recv() => match r {
                        Ok(committed) => committed,
                        // Tail is best effort: a subscriber that falls behind
                        // the merger skips commits rather than slowing it
                        // down; the readings are stored and Range has them.
                        Err(broadcast::error::RecvError::Lagged(skipped)) => {
                            warn!(skipped_commits = skipped, filter = ?sel, "tail client lagging, commits skipped");
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let _ = tx.send(Err(Status::unavailable("collector shutting down"))).await;
                            break;
                        }
                    },
                };
                for chunk in committed.iter().filter(|c| sel.matches(&c.series.key)) {
                    let msg = pb::ReadingsChunk {
                        series: Some(series_to_proto(&chunk.series)),
                        points: chunk.points.iter().cloned().map(point_to_proto).collect(),
                    };
                    // Fails only when the client is gone.
                    if tx.send(Ok(msg)).await.is_err() {
                        debug!("tail client went away");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends a Range's chunks to `tx` until the walk is done, the client is
/// gone or the collector shuts down. False when the stream ended with an
/// error status.
async fn range_walk(
    chunks: &mut mpsc::Receiver<Result<RangeChunk, ReadError>>,
    tx: &mpsc::Sender<Result<pb::ReadingsChunk, Status>>,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let chunk = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("collector shutting down"))).await;
                return false;
            }
            chunk = chunks.recv() => chunk,
        };
        let msg = match chunk {
            None => return true,
            Some(Ok((meta, points))) => Ok(pb::ReadingsChunk {
                series: Some(series_to_proto(&meta)),
                points: points.into_iter().map(point_to_proto).collect(),
            }),
            Some(Err(e)) => {
                warn!(error = %e, "range failed");
                Err(read_status("range", &e))
            }
        };
        let failed = msg.is_err();
        tokio::select! {
            sent = tx.send(msg) => if sent.is_err() {
                debug!("range client went away");
                return true;
            },
            // A client too slow to take the next chunk does not
            // hold up shutdown.
            () = shutdown.cancelled() => {
                let _ = tx.try_send(Err(Status::unavailable("collector shutting down")));
                return false;
            }
        }
        if failed {
            return false;
        }
    }
}

// ------------------------------------------------------------ model → proto

/// A request filter as a store selector.
pub fn selector(f: pb::SeriesFilter) -> Selector {
    Selector {
        agent: f.agent,
        device: f.device,
        metric: f.metric,
    }
}

/// Validates a ListSeries request: the filter, and the page it asks for.
/// A `page_size` of 0 is [`DEFAULT_PAGE_SIZE`], one above
/// [`MAX_PAGE_SIZE`] is that; a `page_token` that is not one this service
/// gave out is `INVALID_ARGUMENT` naming the field.
#[allow(clippy::result_large_err)] // tonic::Status is what tonic wants here
pub fn list_series_request(req: pb::ListSeriesRequest) -> Result<(Selector, SeriesPage), Status> {
    let limit = match usize::try_from(req.page_size).unwrap_or(MAX_PAGE_SIZE) {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    // A token is the id of the last series of the previous page.
    let after_id = if req.page_token.is_empty() {
        0
    } else {
        match req.page_token.parse::<i64>() {
            Ok(id) if id > 0 && req.page_token.bytes().all(|b| b.is_ascii_digit()) => id,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "page_token: {:?} is not a next_page_token of ListSeries",
                    req.page_token
                )));
            }
        }
    };
    let sel = Selector {
        agent: req.agent,
        device: req.device,
        metric: req.metric,
    };
    Ok((sel, SeriesPage { after_id, limit }))
}

/// The response holding the first of `series` (in id order) that fit in
/// `limit` series and [`MAX_PAGE_BYTES`] (at least one), with a token for
/// the rest when some are left.
pub fn series_page(series: &[SeriesMeta], limit: usize) -> pb::ListSeriesResponse {
    use prost::Message;
    let mut out = pb::ListSeriesResponse::default();
    let mut bytes = 0;
    for meta in series.iter().take(limit) {
        let info = series_to_proto(meta);
        // The field's tag and length prefix take at most 1 + 5 bytes.
        let size = info.encoded_len() + 6;
        if !out.series.is_empty() && bytes + size > MAX_PAGE_BYTES {
            break;
        }
        bytes += size;
        out.series.push(info);
    }
    if out.series.len() < series.len()
        && let Some(last) = out.series.last()
    {
        out.next_page_token = last.id.to_string();
    }
    out
}

/// Validates a Range request: 0 means unbounded; `until_ns` before
/// `since_ns` is `INVALID_ARGUMENT`.
#[allow(clippy::result_large_err)] // tonic::Status is what tonic wants here
pub fn range_request(req: pb::RangeRequest) -> Result<(Selector, TimeSpan), Status> {
    let span = TimeSpan {
        since_ns: (req.since_ns != 0).then_some(req.since_ns),
        until_ns: (req.until_ns != 0).then_some(req.until_ns),
    };
    if let (Some(since), Some(until)) = (span.since_ns, span.until_ns)
        && until < since
    {
        return Err(Status::invalid_argument(format!(
            "until_ns ({until}) is before since_ns ({since})"
        )));
    }
    Ok((selector(req.filter.unwrap_or_default()), span))
}

pub fn series_to_proto(meta: &SeriesMeta) -> pb::SeriesInfo {
    pb::SeriesInfo {
        // Series ids are assigned by the merger from 1 up.
        id: u64::try_from(meta.id).unwrap_or(0),
        agent: meta.key.agent.clone(),
        device: meta.key.device.clone(),
        metric: meta.key.metric.clone(),
        labels: meta
            .key
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        unit: meta.key.unit.clone(),
    }
}

pub fn point_to_proto(p: Point) -> pb::Point {
    use pb::point::Value;
    let failure = |status: pb::PollStatus, message| {
        Value::Failure(pb::Failure {
            status: status as i32,
            message,
        })
    };
    let value = match p.value {
        StoredValue::F64(v) => Value::F64(v),
        StoredValue::I64(v) => Value::I64(v),
        StoredValue::U64(v) => Value::U64(v),
        StoredValue::Bool(v) => Value::Bool(v),
        StoredValue::Str(v) => Value::Str(v),
        StoredValue::Timeout(m) => failure(pb::PollStatus::Timeout, m),
        StoredValue::Error(m) => failure(pb::PollStatus::Error, m),
    };
    pb::Point {
        ts_ns: p.ts_ns,
        received_ns: p.received_ns,
        value: Some(value),
    }
}

/// Stored agents merged with the live snapshot, by id. An agent that is
/// connected but has nothing committed yet is listed with zero counters.
pub fn merge_agents(
    stored: Vec<StoredAgent>,
    live: &BTreeMap<String, AgentLive>,
) -> Vec<pb::AgentInfo> {
    let mut out: BTreeMap<String, pb::AgentInfo> = stored
        .into_iter()
        .map(|a| {
            let info = pb::AgentInfo {
                id: a.id.clone(),
                connected: false,
                peer: a.peer,
                collector: a.collector,
                last_seen_ns: a.last_seen_ns,
                epoch: a.epoch,
                committed_seq: a.committed_seq,
                readings_stored: a.readings_stored,
                batches_deduplicated: a.batches_deduplicated,
                dropped_at_agent: a.dropped_at_agent,
                batches_resent: a.batches_resent,
                lag: a.lag,
                skewed_readings: 0,
                committed_ranges: a.committed_ranges,
                error: a.error,
            };
            (a.id, info)
        })
        .collect();
    for (id, l) in live {
        let info = out.entry(id.clone()).or_insert_with(|| pb::AgentInfo {
            id: id.clone(),
            ..pb::AgentInfo::default()
        });
        info.connected = l.connected;
        info.skewed_readings = l.stats.skewed_readings();
        if !l.peer.is_empty() {
            info.peer = l.peer.clone();
        }
        if l.connected {
            info.collector = l.collector.to_string();
        }
    }
    out.into_values().collect()
}

// ------------------------------------------------------------ proto → model

/// A Query response that breaks the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("chunk without a series")]
    MissingSeries,
    #[error("point at ts_ns {0} without a value")]
    MissingValue(i64),
}

pub fn series_from_proto(s: pb::SeriesInfo) -> SeriesMeta {
    SeriesMeta {
        id: i64::try_from(s.id).unwrap_or(i64::MAX),
        key: SeriesKey {
            agent: s.agent,
            device: s.device,
            metric: s.metric,
            labels: s.labels.into_iter().collect(),
            unit: s.unit,
        },
    }
}

pub fn point_from_proto(p: pb::Point) -> Result<Point, ConvertError> {
    use pb::point::Value;
    let value = match p.value {
        Some(Value::F64(v)) => StoredValue::F64(v),
        Some(Value::I64(v)) => StoredValue::I64(v),
        Some(Value::U64(v)) => StoredValue::U64(v),
        Some(Value::Bool(v)) => StoredValue::Bool(v),
        Some(Value::Str(v)) => StoredValue::Str(v),
        Some(Value::Failure(f)) => match pb::PollStatus::try_from(f.status) {
            Ok(pb::PollStatus::Timeout) => StoredValue::Timeout(f.message),
            // Unspecified or unknown statuses are still failures.
            _ => StoredValue::Error(f.message),
        },
        None => return Err(ConvertError::MissingValue(p.ts_ns)),
    };
    Ok(Point {
        ts_ns: p.ts_ns,
        received_ns: p.received_ns,
        value,
    })
}

/// A streamed chunk as the series and its points.
pub fn chunk_from_proto(c: pb::ReadingsChunk) -> Result<(SeriesMeta, Vec<Point>), ConvertError> {
    let series = series_from_proto(c.series.ok_or(ConvertError::MissingSeries)?);
    let points = c
        .points
        .into_iter()
        .map(point_from_proto)
        .collect::<Result<_, _>>()?;
    Ok((series, points))
}

#[cfg(test)]
mod tests;
