//! The collector's gRPC server: wires the store, the merger, the Ingest and
//! Query services, health and reflection, and runs until shutdown.
//!
//! It also builds the metrics (`crate::metrics`): their handles go to the
//! merger, the sessions, Query and the listener, the registry to the HTTP
//! listener's `/metrics`.
//!
//! [`run`] takes a bound listener and a shutdown future so tests can bind
//! port 0 and stop it cleanly; [`run_reloadable`] also takes the reloads
//! `main` reads on SIGHUP, which the reload task (`reload.rs`) applies.
//! Shutdown is three steps: stop accepting and tell every session to drain;
//! sessions wait (bounded) for the acks of what they forwarded; the merger
//! commits what is queued and exits once the last session is gone.
//!
//! Limits the server enforces below the sessions (see README "Limits"):
//! connections in all and per address, the TLS handshake, the HTTP/2
//! preface deadline and the idle timeout ([`crate::listener`]), HTTP/2 concurrent streams per connection, header list size,
//! decoded message size, keepalive pings, and the number of streams a peer
//! may get reset by protocol errors before its connection is closed
//! (tonic leaves that cap off unless it is set, so it is always set here).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use tributary_proto::v1 as pb;

use crate::http::{self, HttpContext, HttpLimits};
use crate::listener::{self, Plaintext};
use crate::merger::{self, MergerHandle};
use crate::metrics::{CollectorMetrics, IngestMetrics};
use crate::query::QueryService;
use crate::roles::{PeerAuth, Roles};
use crate::session::{Limits, Session};
use crate::store::read::Reader;
use crate::store::{Durability, Retention, StoreUrl};
use crate::tls::{LiveTls, ServerTls};

mod reload;

pub use reload::{Reload, needs_restart};

/// Streams a peer may open and reset before they are accepted, per
/// connection (the "rapid reset" guard; h2's default, set explicitly).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This collector's name (`name`): stored with each agent whose stream
    /// it accepted, shown by ListAgents and the fleet page.
    pub name: String,
    /// SQLite database file, used when `store` is `None`.
    pub sqlite_path: PathBuf,
    /// Where readings go (`sqlite:PATH` or `postgres://...`); overrides
    /// `sqlite_path` when set.
    pub store: Option<StoreUrl>,
    pub durability: Durability,
    /// Delete readings older than this, on a schedule; `None` keeps all.
    pub retention: Option<Retention>,
    /// Capacity of the merger's command queue (batches waiting to commit).
    pub merger_queue: usize,
    pub limits: Limits,
    /// HTTP/2 keepalive ping interval and the time to wait for its answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Most concurrent streams on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Largest decoded message.
    pub max_message_bytes: usize,
    /// Most connections open at once; more wait in the listen backlog.
    /// Default: [`crate::listener::default_max_connections`].
    pub max_connections: usize,
    /// Time a new connection gets to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Most connections open at once from one source address; `None`:
    /// [`crate::listener::default_max_connections_per_address`].
    pub max_connections_per_address: Option<usize>,
    /// Time from accept (with TLS: from the end of the handshake) to the
    /// HTTP/2 client preface and first frame header.
    pub preface_timeout: Duration,
    /// A connection with nothing read for this long is closed (the pings
    /// every `keepalive_interval` keep a live one busy).
    pub idle_timeout: Duration,
    /// Streams a peer may cause to be reset by its protocol errors before
    /// its connection is closed with GOAWAY.
    pub max_local_error_resets: usize,
    /// Largest HTTP/2 header list (all headers of one request), bytes.
    pub max_header_list_bytes: u32,
    /// TLS material; `None` serves plaintext.
    pub tls: Option<ServerTls>,
    /// Who may query (`operators`) and who may stream (`allowed_agents`).
    pub roles: Arc<Roles>,
    /// How long shutdown may take before the process gives up on stragglers.
    pub shutdown_deadline: Duration,
    /// Limits of the HTTP listener (when there is one).
    pub http_limits: HttpLimits,
    /// `[[exports]]`: each a reader of the commit log (`crate::export`).
    pub exports: Vec<crate::config::exports::ExportConfig>,
    /// What one PromQL query may use (`[query]`).
    pub query_limits: crate::promql::Limits,
}

impl ServerConfig {
    /// Defaults for a store at `sqlite_path`.
    pub fn new(sqlite_path: PathBuf) -> Self {
        ServerConfig {
            name: crate::config::default_name(std::net::SocketAddr::from(([127, 0, 0, 1], 7400))),
            sqlite_path,
            store: None,
            durability: Durability::Full,
            retention: None,
            merger_queue: 256,
            limits: Limits::default(),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 16,
            max_message_bytes: 8 * 1024 * 1024,
            max_connections: crate::listener::default_max_connections(),
            handshake_timeout: Duration::from_secs(10),
            max_connections_per_address: None,
            preface_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_local_error_resets: 256,
            max_header_list_bytes: 16 * 1024,
            tls: None,
            roles: Arc::default(),
            shutdown_deadline: Duration::from_secs(15),
            http_limits: HttpLimits::default(),
            exports: Vec::new(),
            query_limits: crate::promql::Limits::default(),
        }
    }

    /// The store `run` opens: `store`, or the SQLite file `sqlite_path`.
    pub fn store_url(&self) -> StoreUrl {
        self.store
            .clone()
            .unwrap_or_else(|| StoreUrl::Sqlite(self.sqlite_path.clone()))
    }
}

/// Errors that stop the server from starting or running. The message says
/// what failed; the cause is the `source()`, so a `{:#}` chain prints it
/// once (the merger's own errors already say what failed).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the store for queries")]
    Store(#[from] crate::store::read::ReadError),
    #[error(transparent)]
    Merger(#[from] merger::SpawnError),
    #[error("reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving")]
    Serve(#[from] tonic::transport::Error),
    #[error("merger thread panicked")]
    MergerPanicked,
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error("tls")]
    Tls(#[from] tokio_rustls::rustls::Error),
    #[error("PromQL queries: start their runtime: {0}")]
    QueryRuntime(std::io::Error),
}

/// The Ingest service: accepts a stream and hands it to a new session task.
pub struct IngestService {
    merger: MergerHandle,
    /// The limits of new streams, as the last reload left them.
    limits: watch::Receiver<Arc<Limits>>,
    shutdown: CancellationToken,
    /// Client certificates are verified: streams need one.
    mutual_tls: bool,
    /// The roles, as the last reload left them (each session watches them).
    roles: watch::Receiver<Arc<Roles>>,
    metrics: Arc<IngestMetrics>,
}

impl IngestService {
    /// The service alone, without TLS, roles (any agent id streams) or
    /// registered metrics, in front of `merger`: what the delivery
    /// simulation serves over its simulated network (`server::run` builds
    /// its own, with everything).
    pub fn new(merger: MergerHandle, limits: Limits, shutdown: CancellationToken) -> Self {
        IngestService {
            merger,
            limits: watch::channel(Arc::new(limits)).1,
            shutdown,
            mutual_tls: false,
            roles: watch::channel(Arc::new(Roles::default())).1,
            metrics: Arc::default(),
        }
    }
}

type FrameStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::CollectorFrame, Status>> + Send>>;

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    type StreamStream = FrameStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable("collector shutting down"));
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let auth = PeerAuth::of(&request, self.mutual_tls);
        let (tx, rx) = mpsc::channel(16);
        let limits = self.limits.borrow().clone();
        let session = Session::new(self.merger.clone(), limits, self.shutdown.clone(), peer)
            .with_auth(auth, self.roles.clone())
            .with_metrics(self.metrics.clone());
        tokio::spawn(session.run(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves on `listener` until `shutdown` completes, then drains and returns.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_with_http(listener, None, config, shutdown).await
}

/// Like [`run`], also serving the HTTP router (`crate::http`) on
/// `http_listener` when there is one.
pub async fn run_with_http(
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // The sender goes at once: no reloads.
    let (_, reloads) = mpsc::channel(1);
    run_reloadable(listener, http_listener, config, reloads, shutdown).await
}

/// Like [`run_with_http`], applying each [`Reload`] that arrives on
/// `reloads` (`reload.rs`).
pub async fn run_reloadable(
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    config: ServerConfig,
    reloads: mpsc::Receiver<Reload>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = config.store_url();
    // Handles first: the merger, the sessions, Query and the listener
    // count into them from their first action.
    let mut metrics = CollectorMetrics::new();
    metrics.register_name(&config.name);
    let (merger, outputs, merger_join) = merger::start(
        &store,
        merger::MergerOptions {
            name: Arc::from(config.name.as_str()),
            durability: config.durability,
            capacity: config.merger_queue,
            retention: config.retention,
            max_series_per_agent: config.limits.max_series_per_agent,
            max_series_in_memory: config.limits.max_series_in_memory,
            metrics: metrics.merger.clone(),
        },
    )
    .await?;
    // Exports follow the commit log; set up before anything can commit.
    let exports = crate::export::start(&store, &config.exports, &metrics.exports).await?;
    let exports_view = exports.view();
    let token = CancellationToken::new();
    let mutual_tls = config.tls.as_ref().is_some_and(|t| t.mutual);
    let tls = config.tls.clone().map(LiveTls::new).transpose()?;
    // What a reload changes, each through the channel its owner reads.
    let (roles_tx, roles_rx) = watch::channel(config.roles.clone());
    let (limits_tx, limits_rx) = watch::channel(Arc::new(config.limits.clone()));
    let (admission_tx, admission_rx) = watch::channel(reload::admission(&config));
    let merger_settings = merger.settings_handle();
    let reload_metrics = metrics.reloads.clone();

    let (ingest_metrics, query_metrics) = (metrics.ingest.clone(), metrics.query.clone());
    // The listener's counters (README "Limits"), logged at the end too.
    let refusals = metrics.listener.clone();
    let http_metrics = metrics.http.clone();
    let registry = metrics.into_registry(outputs.live.clone(), merger.queue_probe());
    let ingest = pb::ingest_server::IngestServer::new(IngestService {
        merger,
        limits: limits_rx,
        shutdown: token.clone(),
        mutual_tls,
        roles: roles_rx,
        metrics: ingest_metrics,
    })
    .max_decoding_message_size(config.max_message_bytes);
    let reader = Reader::open(&store)?;
    // PromQL's own (`HttpContext::query_reader`); connects lazily.
    let query_reader = Reader::open_promql(&store)?;
    if http_listener.is_some() {
        // Its threads now, so that a bad `TRIBUTARY_QUERY_NICE` stops the
        // start instead of failing every query.
        crate::promql::runtime::start().map_err(ServerError::QueryRuntime)?;
    }
    let http_task = http_listener.map(|http_listener| {
        let ctx = HttpContext {
            reader: reader.clone(),
            query_reader,
            live: outputs.live.clone(),
            tail: outputs.tail.clone(),
            roles: config.roles.clone(),
            mutual_tls,
            shutdown: token.clone(),
            metrics: registry,
            query_limits: config.query_limits,
            http_metrics: http_metrics.clone(),
            exports: Some(exports_view.clone()),
        };
        tokio::spawn(http::serve(
            http_listener,
            tls.as_ref().map(|t| t.http_acceptor()),
            mutual_tls,
            http::router(ctx),
            config
                .http_limits
                .with_longest_request(config.query_limits.timeout),
            http_metrics,
            token.clone(),
        ))
    });
    let query = pb::query_server::QueryServer::new(
        QueryService::new(reader, outputs.live, outputs.tail)
            .with_shutdown(token.clone())
            .with_roles(config.roles.clone(), mutual_tls)
            .with_metrics(query_metrics)
            .with_exports(exports_view),
    )
    .max_decoding_message_size(config.max_message_bytes);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::ingest_server::IngestServer<IngestService>>()
        .await;
    health_reporter
        .set_serving::<pb::query_server::QueryServer<QueryService>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr().ok();
    let tls_mode = match &config.tls {
        None => "off",
        Some(t) if t.mutual => "mutual",
        Some(_) => "server-only",
    };
    info!(addr = ?addr, store = %store, tls = tls_mode, "collector listening");
    let drain = token.clone();
    let deadline = config.shutdown_deadline;
    let signal = async move {
        shutdown.await;
        info!("shutdown: no new streams, draining sessions");
        drain.cancel();
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .http2_max_local_error_reset_streams(Some(config.max_local_error_resets))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .http2_max_header_list_size(Some(config.max_header_list_bytes))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(query);
    let stats = refusals.clone();
    // The listener terminates TLS itself, so tonic sees one stream type or
    // the other.
    let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &tls {
            None => Box::pin(router.serve_with_incoming_shutdown(
                listener::incoming(listener, admission_rx, Plaintext, stats),
                signal,
            )),
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                listener::incoming(listener, admission_rx, tls.acceptor(), stats),
                signal,
            )),
        };
    // The reload task owns the running settings and the exports until
    // shutdown.
    let reload_task = tokio::spawn(reload::run(
        reload::Owners {
            running: config.clone(),
            roles: roles_tx,
            limits: limits_tx,
            admission: admission_tx,
            tls,
            merger: merger_settings,
            exports,
            metrics: reload_metrics,
            deadline,
        },
        reloads,
        token.clone(),
    ));
    // Boxed so it can be dropped below: it owns the last merger handle.
    let mut serve = serve;
    // Serve; once shutdown has begun, give connections `deadline` to close.
    let served = tokio::select! {
        r = &mut serve => r,
        _ = async { token.cancelled().await; tokio::time::sleep(deadline).await } => {
            tracing::warn!(?deadline, "shutdown deadline passed with connections still open");
            Ok(())
        }
    };
    info!(refusals = %refusals.snapshot(), "listener totals");
    // The HTTP listener stops accepting once the token is cancelled (the
    // signal did, unless serving failed) and drains on its own deadline;
    // the reload task ends (a reload under way first) and hands back the
    // exports.
    token.cancel();
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(deadline, task).await;
    }
    match reload_task.await {
        Ok(exports) => exports.shutdown(deadline).await,
        Err(e) => {
            tracing::warn!(error = %e, "the reload task failed; exports stop with the process")
        }
    }
    served?;
    // The Ingest service (and with it the last merger handle) is gone once
    // `serve` is dropped; the merger then drains its queue and stops.
    drop(serve);
    let join = tokio::task::spawn_blocking(move || merger_join.join());
    match tokio::time::timeout(deadline, join).await {
        Ok(Ok(Ok(()))) => info!("collector stopped"),
        Ok(_) => return Err(ServerError::MergerPanicked),
        // Only possible while the store refuses commits: nothing unacked is
        // lost, agents resend it to the next collector.
        Err(_) => tracing::warn!("merger still committing at the shutdown deadline; exiting"),
    }
    Ok(())
}
