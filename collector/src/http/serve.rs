//! Serving the HTTP router: connections admitted under a cap (more wait in
//! the listen backlog), the TLS handshake under a deadline, then HTTP/1.1
//! or HTTP/2 (by ALPN, or by the preface on plaintext) with a deadline for
//! every request's headers, so a client that trickles bytes (slowloris)
//! holds its slot for at most `header_read_timeout`.
//!
//! Each request carries its connection's [`PeerAuth`] and peer address as
//! extensions; `super::authorize` reads the first. Shutdown: stop
//! accepting, ask every connection to finish what it is answering, and drop
//! the ones still open after [`DRAIN`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::roles::PeerAuth;

/// The peer address of a request's connection (a request extension:
/// `Extension<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// How long to pause accepting after an accept error such as EMFILE.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a new connection gets to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client gets to send a request's headers (HTTP/1.1; it also
    /// bounds how long an idle keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// Most concurrent requests on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 64,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled. `tls`
/// (with `mutual` when client certificates are verified) turns TLS on.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mutual: bool,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    match listener.local_addr() {
        Ok(addr) => info!(%addr, tls = tls.is_some(), "http listening"),
        Err(e) => warn!(error = %e, "http listening on an address it cannot name"),
    }
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "http: accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_io(tcp, PeerAuth::Unverified, peer, router, limits, shutdown).await,
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "http: TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "http: TLS handshake timed out");
                                return;
                            }
                        };
                    let auth = PeerAuth::from_certs(stream.get_ref().1.peer_certificates(), mutual);
                    serve_io(stream, auth, peer, router, limits, shutdown).await;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            open = connections.len(),
            "http: connections still open after the drain; closing them"
        );
    }
}

/// One connection, HTTP/1.1 or HTTP/2, until it closes or shutdown asks
/// it to finish.
async fn serve_io<I>(
    io: I,
    auth: PeerAuth,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(auth.clone());
        request.extensions_mut().insert(PeerAddr(peer));
        request
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "http: connection ended with an error");
    }
}
