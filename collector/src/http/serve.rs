//! Serving the HTTP router: connections admitted under a cap (more wait in
//! the listen backlog), the TLS handshake under a deadline, then HTTP/1.1
//! or HTTP/2 (by ALPN, or by the preface on plaintext) with a deadline for
//! every request's headers, so a client that trickles bytes (slowloris)
//! holds its slot for at most `header_read_timeout`.
//!
//! A connection also ends when it has been idle (no request in flight, none
//! begun or ended) for `idle_timeout`: an HTTP/2 client answers the
//! server's keep-alive pings, and a plaintext client that sends nothing is
//! still being asked for its protocol preface, so neither would otherwise
//! ever give its slot back. (An HTTP/1.1 connection waiting for its next
//! request is already closed by hyper's `header_read_timeout`, which runs
//! from when hyper starts reading a request head, the next one on a
//! keep-alive connection included.) The connection is asked to finish
//! (HTTP/2 `GOAWAY`, HTTP/1.1 closes) and dropped `drain` later if it has
//! not.
//!
//! And a connection is asked to finish `max_connection_age` after it was
//! accepted, even when busy (a client that keeps asking), so no client
//! holds a slot for good: HTTP/2 `GOAWAY`, HTTP/1.1 closes after the
//! response in progress. Requests in flight then get `age_grace`, at least
//! the longest request deadline (the PromQL `[query] timeout`, see
//! [`HttpLimits::with_longest_request`]) so that a query is not cut with a
//! reset; the fleet page's event stream ends by itself within
//! [`STREAM_LIFETIME`] and reconnects.
//!
//! A request is in flight from when hyper hands over its head (hyper calls
//! the service at once, on the connection's task for HTTP/2 too) until its
//! response body has been sent or dropped ([`Tracked`]).
//!
//! Each request carries its connection's [`PeerAuth`] and peer address as
//! extensions; `super::authorize` reads the first. Shutdown: stop
//! accepting, ask every connection to finish what it is answering, and drop
//! the ones still open after `drain`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::fleet::STREAM_LIFETIME;
use crate::metrics::{HttpMetrics, HttpRefusal};
use crate::roles::PeerAuth;

/// The peer address of a request's connection (a request extension:
/// `Extension<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Added to the longest request deadline for the grace after
/// `max_connection_age` (the answer still has to be written).
const GRACE_MARGIN: Duration = Duration::from_secs(10);

/// How often a busy connection's watchdog looks again when `idle_timeout`
/// is zero.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

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
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2, and a connection that never said which; an HTTP/1.1
    /// connection waiting for a request meets `header_read_timeout` first).
    pub idle_timeout: Duration,
    /// A connection is asked to close this long after it was accepted,
    /// even when busy, and dropped `age_grace` later if it has not.
    pub max_connection_age: Duration,
    /// How long the requests in flight get once `max_connection_age` has
    /// passed: at least the longest request deadline (see
    /// [`HttpLimits::with_longest_request`]).
    pub age_grace: Duration,
    /// How long open connections get to finish at shutdown or once idle.
    pub drain: Duration,
}

impl HttpLimits {
    /// These limits with an `age_grace` long enough (it is never
    /// shortened) for a request whose deadline is `longest` (the PromQL
    /// `[query] timeout`), and a fleet event stream, to finish after
    /// `max_connection_age`.
    #[must_use]
    pub fn with_longest_request(self, longest: Duration) -> HttpLimits {
        HttpLimits {
            age_grace: longest
                .max(STREAM_LIFETIME)
                .saturating_add(GRACE_MARGIN)
                .max(self.age_grace),
            ..self
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 64,
            // Longer than the 90 s for which Go's HTTP client (Prometheus,
            // Grafana) keeps an idle connection, as the gRPC listener's.
            idle_timeout: Duration::from_secs(5 * 60),
            max_connection_age: Duration::from_secs(30 * 60),
            drain: Duration::from_secs(5),
            age_grace: Duration::ZERO,
        }
        .with_longest_request(crate::promql::Limits::default().timeout)
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled. `tls`
/// (with `mutual` when client certificates are verified) turns TLS on;
/// failed handshakes are counted in `metrics`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mutual: bool,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<HttpMetrics>,
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
        let metrics = metrics.clone();
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
                                metrics.refused(HttpRefusal::TlsHandshakeFailed);
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "http: TLS handshake timed out");
                                metrics.refused(HttpRefusal::TlsHandshakeTimeout);
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
    let drained = tokio::time::timeout(limits.drain, async {
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

/// One connection, HTTP/1.1 or HTTP/2, until it closes, shutdown asks it
/// to finish, or it is idle or too old (see the module doc).
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
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    // hyper's own `service_fn`: hyper calls it as soon as a request's head
    // is read (for HTTP/2 on the connection's task, before the stream's
    // task first runs), so the request is counted from then on.
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(auth.clone());
        request.extensions_mut().insert(PeerAddr(peer));
        // Taken before the router runs, so a request is in flight even
        // while its handler waits; given to the body, so a streamed
        // response stays in flight until it ends.
        let guard = InFlight::begin(tracked.clone());
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _guard: guard,
                })
            }))
        }
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
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let why = tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "http: connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => "shutdown",
        why = activity.ended(limits.idle_timeout, limits.max_connection_age) => why,
    };
    debug!(%peer, why, "http: asking the connection to close");
    connection.as_mut().graceful_shutdown();
    let grace = if why == MAX_AGE {
        limits.age_grace
    } else {
        limits.drain
    };
    // Shutdown during a longer grace: the listener drops this task after
    // its own `drain`.
    match tokio::time::timeout(grace, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "http: connection ended with an error"),
        Err(_) => debug!(%peer, why, "http: connection still busy after the drain; dropped"),
    }
}

/// Why the watchdog asks a connection to close once it is too old.
const MAX_AGE: &str = "max_connection_age";

/// What one connection is doing, for its watchdog ([`Activity::ended`]):
/// requests in flight, and when the last one began or ended. Updated by the
/// connection's requests (HTTP/2 runs their bodies on tasks of their own,
/// hence atomics), read by the connection's task. A request that ends
/// notes the time before it leaves `in_flight` (Release), and the watchdog
/// reads `in_flight` (Acquire) before the time, so when it sees nothing in
/// flight it also sees when the last request ended.
#[derive(Debug)]
struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    /// When a request last began or ended, in ms after `accepted`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Release);
    }

    /// Returns why once the connection has had no request in flight for
    /// `idle`, or is `max_age` old. A limit too far to be an `Instant` is
    /// never reached.
    async fn ended(&self, idle: Duration, max_age: Duration) -> &'static str {
        let too_old = self.accepted.checked_add(max_age);
        loop {
            let now = Instant::now();
            if too_old.is_some_and(|t| now >= t) {
                return MAX_AGE;
            }
            let next = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again one idle period from now at the
                // earliest.
                now.checked_add(idle.max(BUSY_RECHECK))
            } else {
                let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
                let idle_at = self
                    .accepted
                    .checked_add(last)
                    .and_then(|t| t.checked_add(idle));
                if idle_at.is_some_and(|t| t <= now) {
                    return "idle_timeout";
                }
                idle_at
            };
            match (next, too_old) {
                (Some(a), Some(b)) => tokio::time::sleep_until(a.min(b)).await,
                (Some(t), None) | (None, Some(t)) => tokio::time::sleep_until(t).await,
                (None, None) => std::future::pending::<()>().await,
            }
        }
    }
}

/// One request in flight on its connection, from its head to the end (or
/// drop) of its response body.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
