//! The collector's HTTP listener (`http_listen`, default `127.0.0.1:7401`):
//! one axum [`Router`] that every HTTP feature adds its routes to, served
//! over the collector's TLS when it has one (`serve.rs`).
//!
//! What is mounted, and where it comes from:
//!
//! - `/-/healthy`, `/-/ready`: here (liveness: the process answers;
//!   readiness: the collector accepts streams and queries).
//! - Everything else is added in [`router`] from the module that owns it
//!   (the Prometheus API and buildinfo in `prometheus/`, `/metrics`, the
//!   fleet page): each is a function
//!   returning a `Router<HttpContext>` merged in one line.
//!
//! Who may call: exactly who may call the gRPC Query service
//! (`crate::roles::Roles::authorize_query`). With mutual TLS a request
//! carries its connection's [`PeerAuth`] as an extension (set by
//! `serve.rs`), and [`authorize`] refuses an agent's certificate with 403
//! and a certificate without a usable identity with 401, before any route
//! runs. The health endpoints answer everyone who completed the handshake:
//! they reveal nothing.
//!
//! May import: `roles`, `tls`, `model`, `store::read` (the read side) and
//! `query`'s conversions; never the merger's write side. Handlers own
//! nothing mutable: they read the store through [`Reader`], connected agents
//! from the merger's `watch`, commits from its `broadcast`.

mod fleet;
pub mod prometheus;
mod serve;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tributary_process::metrics::prometheus_client::registry::Registry;

use crate::model::{Committed, LiveAgents};
use crate::roles::{PeerAuth, Roles};
use crate::store::read::Reader;

pub use serve::{HttpLimits, PeerAddr, serve};

/// Default `http_listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7401";

/// What every handler may read. Cheap to clone (handles only).
#[derive(Clone)]
pub struct HttpContext {
    /// The store's read side (the fleet page's calls).
    pub reader: Reader,
    /// PromQL's own reader on the same store: its connections are opened
    /// and (PostgreSQL) driven on the query runtime's idle-priority
    /// threads, so none is shared with the fleet page's calls, which would
    /// wait with them when the cores are busy.
    pub query_reader: Reader,
    /// Connected agents and their delivery state, from the merger.
    pub live: watch::Receiver<LiveAgents>,
    /// Every committed batch, from the merger (subscribe for live views).
    pub tail: broadcast::Sender<Committed>,
    /// Who may call.
    pub roles: Arc<Roles>,
    /// Client certificates are verified, so requests carry identities.
    pub mutual_tls: bool,
    /// Cancelled when the collector shuts down: long-lived responses
    /// (event streams) end when it is.
    pub shutdown: CancellationToken,
    /// The collector's metrics, encoded at each scrape of `/metrics`
    /// (`crate::metrics`).
    pub metrics: Arc<Registry>,
    /// What one PromQL query may use (`[query]`).
    pub query_limits: crate::promql::Limits,
    /// The HTTP side's counters (refused event streams).
    pub http_metrics: Arc<crate::metrics::HttpMetrics>,
    /// The exports' cursors and settings, as ListExports reads them (the
    /// fleet page's exports table).
    pub exports: Option<crate::export::ExportsView>,
}

/// The whole HTTP surface of the collector.
pub fn router(ctx: HttpContext) -> Router {
    // Routes of other modules go here, one `.merge(...)` each: all of them
    // are behind `authorize`.
    let protected = Router::new()
        .merge(prometheus::router(
            ctx.query_reader.clone(),
            ctx.query_limits,
        ))
        .merge(crate::metrics::routes())
        .merge(fleet::routes())
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authorize));
    Router::new()
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .merge(protected)
        .fallback(not_found)
        .with_state(ctx)
}

/// Refuses a request whose connection may not call Query (see the module
/// doc). Without mutual TLS every request passes.
async fn authorize(State(ctx): State<HttpContext>, request: Request, next: Next) -> Response {
    if ctx.mutual_tls {
        let auth = request
            .extensions()
            .get::<PeerAuth>()
            .cloned()
            .unwrap_or(PeerAuth::Missing);
        if let Err(status) = ctx.roles.authorize_query(&auth) {
            let code = match status.code() {
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            return (code, format!("{}\n", status.message())).into_response();
        }
    }
    next.run(request).await
}

async fn healthy() -> &'static str {
    "Tributary collector is Healthy.\n"
}

async fn ready(State(ctx): State<HttpContext>) -> Response {
    if ctx.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Tributary collector is shutting down.\n",
        )
            .into_response();
    }
    "Tributary collector is Ready.\n".into_response()
}

async fn not_found(request: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("404 page not found: {}\n", request.uri().path()),
    )
        .into_response()
}
