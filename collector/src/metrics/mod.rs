//! The collector's self-metrics, served as `/metrics` on its HTTP listener
//! in the Prometheus text format (OpenMetrics when the scraper asks).
//!
//! Two kinds, so the hot path pays almost nothing:
//!
//! - updated by their owner as things happen, each a relaxed atomic
//!   (`handles`): the sessions count streams and refusals, the merger
//!   counts groups, commit time, store errors and upkeep, the Query
//!   service counts and times RPCs, the reload task counts reloads
//!   ([`ReloadMetrics`]). Per batch, group, stream, request or reload;
//!   never per reading.
//! - read at scrape time from what the collector keeps anyway, through
//!   `prometheus-client` `Collector`s: the per-agent numbers from the
//!   merger's live snapshot (`agents`: each agent's [`AgentStats`], atomics
//!   the merger writes per batch), the gRPC listener's connection counters
//!   and the merger's queue depth (`scrape`), and the process metrics and
//!   build info of `tributary_process::metrics`.
//!
//! Cardinality is bounded: the only open-ended label is `agent`, one
//! series per agent and metric; labels never name a device, a series or a
//! reading.
//!
//! How it is wired (`server::run_with_http`): [`CollectorMetrics::new`]
//! before anything starts; its handles go to the merger, the sessions, the
//! Query service and the listener; [`CollectorMetrics::into_registry`]
//! adds the scrape-time collectors once the merger runs; the registry goes
//! to the HTTP listener in `HttpContext`, where [`routes`] serves it.
//!
//! May import: `model`, `listener` (its counters), `merger` (its queue
//! probe), `http` (the context type), `tributary-process`. Owns no task and
//! no lock; every number has one writer.

mod agents;
mod exports;
mod handles;
mod scrape;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tributary_process::metrics::prometheus_client::metrics::counter::Counter;
use tributary_process::metrics::prometheus_client::metrics::info::Info;
use tributary_process::metrics::prometheus_client::registry::Registry;
use tributary_process::metrics::{Format, ProcessCollector, encode, register_build_info};

use crate::http::HttpContext;
use crate::listener::ListenerStats;
use crate::merger::QueueProbe;
use crate::model::LiveAgents;

pub use agents::{AgentCounts, AgentStats, AgentsCollector};
pub use exports::{ExportHandles, ExportMetrics};
pub use handles::{HttpMetrics, HttpRefusal};
pub use handles::{
    IngestMetrics, MergerMetrics, QueryMetrics, QueryTimer, Rpc, StoreOp, StreamRefusal,
};
pub use scrape::{ListenerCollector, QueueCollector};

/// The reload task's counters (SIGHUP, `server/reload.rs`), named as the
/// agent's are.
#[derive(Debug, Clone, Default)]
pub struct ReloadMetrics {
    /// Reloads applied.
    pub applied: Counter,
    /// Reloads refused (an invalid file, or a change that needs a
    /// restart): the running settings stay.
    pub failed: Counter,
}

impl ReloadMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = ReloadMetrics::default();
        registry.register(
            "tributary_collector_config_reloads",
            "Configuration reloads applied since the collector started",
            m.applied.clone(),
        );
        registry.register(
            "tributary_collector_config_reload_failures",
            "Configuration reloads refused (the running configuration stays)",
            m.failed.clone(),
        );
        m
    }
}

/// The git commit of this build (`tributary_process::build`).
const COMMIT: &str = tributary_process::build::COMMIT;

/// The collector's metrics: the registry being built and the handles its
/// parts update.
#[derive(Debug)]
pub struct CollectorMetrics {
    registry: Registry,
    pub ingest: Arc<IngestMetrics>,
    pub merger: Arc<MergerMetrics>,
    pub query: Arc<QueryMetrics>,
    /// The gRPC listener's counters (it writes them; scrapes read them).
    pub listener: Arc<ListenerStats>,
    /// The exports' counters and lag (one series per export).
    pub exports: Arc<ExportMetrics>,
    /// The HTTP listener's refusals (its TLS handshakes, the fleet page's
    /// event streams over their cap).
    pub http: Arc<HttpMetrics>,
    /// Configuration reloads applied and refused.
    pub reloads: ReloadMetrics,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CollectorMetrics {
    /// Every handle, registered, with build info and process metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        register_build_info(
            &mut registry,
            "tributary_collector",
            env!("CARGO_PKG_VERSION"),
            COMMIT,
        );
        registry.register_collector(Box::new(ProcessCollector));
        let (ingest, merger, query) = handles::new(&mut registry);
        let exports = Arc::new(ExportMetrics::new(&mut registry));
        let http = Arc::new(HttpMetrics::new(&mut registry));
        let reloads = ReloadMetrics::new(&mut registry);
        CollectorMetrics {
            reloads,
            exports,
            registry,
            ingest: Arc::new(ingest),
            merger: Arc::new(merger),
            query: Arc::new(query),
            listener: Arc::new(ListenerStats::default()),
            http,
        }
    }

    /// Registers `tributary_collector_info{name="…"} 1`: this collector's
    /// `name`, as ListAgents and the fleet page show it per agent (join on
    /// it to tell collectors sharing a database apart).
    pub fn register_name(&mut self, name: &str) {
        // An info metric: `_info` is added by the encoder.
        self.registry.register(
            "tributary_collector",
            "This collector's name (always 1)",
            Info::new(vec![("name".to_owned(), name.to_owned())]),
        );
    }

    /// The finished registry, with the collectors that read the merger's
    /// live agents, its queue and the listener's counters at each scrape.
    pub fn into_registry(
        mut self,
        live: watch::Receiver<LiveAgents>,
        queue: QueueProbe,
    ) -> Arc<Registry> {
        self.registry
            .register_collector(Box::new(AgentsCollector::new(live)));
        self.registry
            .register_collector(Box::new(ListenerCollector(self.listener)));
        self.registry
            .register_collector(Box::new(QueueCollector(queue)));
        Arc::new(self.registry)
    }
}

/// `GET /metrics`, merged into the HTTP listener's router (behind its
/// `authorize`, like every route but health).
pub fn routes() -> Router<HttpContext> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(ctx): State<HttpContext>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    match encode(&ctx.metrics, format) {
        Ok(body) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}
