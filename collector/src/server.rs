//! The collector's gRPC server: wires the store, the merger, the Ingest and
//! Query services, health and reflection, and runs until shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future so tests can bind
//! port 0 and stop it cleanly. Shutdown is three steps: stop accepting and
//! tell every session to drain; sessions wait (bounded) for the acks of what
//! they forwarded; the merger commits what is queued and exits once the last
//! session is gone.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use tributary_proto::v1 as pb;

use crate::merger::{self, MergerHandle};
use crate::query::QueryService;
use crate::session::{Limits, Session};
use crate::store::sqlite::{Durability, SqliteStore};

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// SQLite database file.
    pub sqlite_path: PathBuf,
    pub durability: Durability,
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
    /// How long shutdown may take before the process gives up on stragglers.
    pub shutdown_deadline: Duration,
}

impl ServerConfig {
    /// Defaults for a store at `sqlite_path`.
    pub fn new(sqlite_path: PathBuf) -> Self {
        ServerConfig {
            sqlite_path,
            durability: Durability::Full,
            merger_queue: 256,
            limits: Limits::default(),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 64,
            max_message_bytes: 16 * 1024 * 1024,
            shutdown_deadline: Duration::from_secs(15),
        }
    }
}

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening store: {0}")]
    Store(#[from] crate::store::sqlite::StoreError),
    #[error("starting merger: {0}")]
    Merger(#[from] merger::SpawnError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("merger thread panicked")]
    MergerPanicked,
}

/// The Ingest service: accepts a stream and hands it to a new session task.
struct IngestService {
    merger: MergerHandle,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
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
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(
            self.merger.clone(),
            self.limits.clone(),
            self.shutdown.clone(),
            peer,
        );
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
    let store = SqliteStore::open(&config.sqlite_path, config.durability)?;
    let (merger, outputs, merger_join) = merger::spawn(store, config.merger_queue)?;
    let token = CancellationToken::new();

    let ingest = pb::ingest_server::IngestServer::new(IngestService {
        merger,
        limits: Arc::new(config.limits.clone()),
        shutdown: token.clone(),
    })
    .max_decoding_message_size(config.max_message_bytes);
    let query = pb::query_server::QueryServer::new(
        QueryService::new(config.sqlite_path.clone(), outputs.live, outputs.tail)
            .with_shutdown(token.clone()),
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
    info!(addr = ?addr, store = %config.sqlite_path.display(), "collector listening");
    let drain = token.clone();
    let deadline = config.shutdown_deadline;
    let signal = async move {
        shutdown.await;
        info!("shutdown: no new streams, draining sessions");
        drain.cancel();
    };
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(query)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    // Boxed so it can be dropped below: it owns the last merger handle.
    let mut serve = Box::pin(serve);
    // Serve; once shutdown has begun, give connections `deadline` to close.
    let served = tokio::select! {
        r = &mut serve => r,
        _ = async { token.cancelled().await; tokio::time::sleep(deadline).await } => {
            tracing::warn!(?deadline, "shutdown deadline passed with connections still open");
            Ok(())
        }
    };
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
