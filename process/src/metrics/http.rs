//! `/metrics` over HTTP: [`routes`], an axum router answering
//! `GET /metrics` (every other path is 404), and [`serve`], which runs a
//! router on a listener with the limits a read-only endpoint on a busy
//! process needs: at most [`ServeLimits::max_connections`] connections at
//! once (the permit is taken before `accept`, so further clients wait in
//! the kernel's backlog, not in our memory), a deadline for each request's
//! headers (a slowloris client is cut off, an idle keep-alive connection
//! too), and a maximum age per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Format, encode};

/// The listen backlog of [`bind`]: the kernel caps it at
/// `net.core.somaxconn` (4096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for an HTTP endpoint that scrapers hammer, with a
/// backlog of [`LISTEN_BACKLOG`] rather than tokio's 1,024: clients past
/// [`ServeLimits::max_connections`] wait in the kernel's accept queue, and
/// when that queue overflows the kernel drops their handshakes and
/// requests, which then come back by TCP retransmission seconds later
/// (possibly after the header deadline), so a deeper queue keeps a scrape
/// storm fast.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A router with `GET /metrics` serving `registry`, in OpenMetrics when the
/// scraper's `Accept` asks for it (Prometheus does), in the Prometheus text
/// format otherwise. Merge it into a larger router, or give it to
/// [`serve`].
pub fn routes(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    match encode(&registry, format) {
        Ok(body) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

/// What [`serve`] lets clients hold.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections open at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// Time to send a request's headers, counted from when the server
    /// starts waiting for them (so also the idle time allowed between two
    /// requests on one connection).
    pub header_read_timeout: Duration,
    /// A connection is closed (after the request in progress) this long
    /// after it was accepted.
    pub max_connection_age: Duration,
}

impl Default for ServeLimits {
    /// 32 connections, 10 s for headers, 5 minutes per connection.
    fn default() -> Self {
        ServeLimits {
            max_connections: 32,
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// Serves `router` over HTTP/1.1 on `listener` within `limits` until
/// `shutdown` is cancelled; connections then finish the request in
/// progress and close. Accept errors (out of file descriptors) are logged
/// and retried after a pause; they never end the server.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                _ = tokio::time::sleep(limits.max_connection_age) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
