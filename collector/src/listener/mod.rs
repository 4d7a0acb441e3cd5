//! Accepting TCP connections under caps and deadlines: the collector's
//! first line of defence against connection floods and against clients
//! that connect and then hold their connection without using it.
//!
//! One accept task owns the listener and a semaphore of `max_connections`
//! permits. It takes a permit *before* it accepts, so at the cap new
//! connections wait in the kernel's listen backlog instead of costing memory
//! here. A connection from an address that already has
//! `max_connections_per_address` open is closed at once, and its permit
//! goes to the next one ([`addresses`]). Each admitted connection carries
//! its permit and its address slot ([`Admitted`]) until it is dropped.
//!
//! Every admitted connection then gets its own task for the handshake
//! ([`Handshake`]: none in plaintext, TLS with tokio-rustls within
//! `handshake_timeout`) and is handed to tonic wrapped in [`Guarded`]: the
//! HTTP/2 preface must arrive within `preface_timeout` and the connection
//! is closed after `idle_timeout` without a byte read ([`guard`]). TLS is
//! terminated here, not by tonic, so that the preface deadline sees the
//! decrypted bytes; tonic still finds the peer's certificates
//! (`Request::peer_certs`), since the connect info is tokio-rustls' own.
//! Every refusal is counted and logged per reason ([`stats`]). The
//! connections reach tonic through a bounded channel, as a stream.
//!
//! The [`Admission`] comes through a `watch`, so a reload changes it
//! while the listener runs: the accept task reads it before each accept.
//! A higher `max_connections` adds permits at once; a lower one takes
//! back free permits and the rest as connections close (open connections
//! are never cut); the per-address cap, the handshake timeout and the
//! deadlines apply to connections accepted from then on.

mod addresses;
mod guard;
mod stats;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use addresses::{AddressSlot, PerAddress};
pub use guard::{Deadlines, Guarded};
pub use stats::{ListenerStats, OpenConnection, Refusal, Snapshot};
/// How long to pause accepting after an accept error such as EMFILE, so a
/// full file table does not turn into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The most connections the collector admits by default: 16,384, or fewer
/// when the process may not open that many files (each connection is one
/// descriptor; 64 are kept for the store, the listener and logs). Read
/// from `/proc/self/limits`; 1,024 open files are assumed where it cannot
/// be read.
pub fn default_max_connections() -> usize {
    let open_files = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| open_files_limit(&limits))
        .unwrap_or(1024);
    usize::try_from(open_files.saturating_sub(64))
        .unwrap_or(usize::MAX)
        .clamp(64, 16_384)
}

/// The soft limit on open files from the text of `/proc/self/limits`
/// (`Max open files  20000  20000  files`); `None` if absent, `u64::MAX`
/// when unlimited.
fn open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// The default `max_connections_per_address`: an eighth of
/// `max_connections`, at most 64 (and at least 1).
pub fn default_max_connections_per_address(max_connections: usize) -> usize {
    (max_connections / 8).clamp(1, 64)
}

/// What an admitted connection holds until it is dropped: one of the
/// `max_connections` permits and one of its address's
/// `max_connections_per_address` places. Carried by its [`Guarded`] stream.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
    _open: Option<OpenConnection>,
}

#[cfg(test)]
impl Admitted {
    /// A permit and a place of their own.
    fn for_test() -> Option<Admitted> {
        Some(Admitted {
            _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().ok()?,
            _slot: PerAddress::new(1).admit(std::net::Ipv4Addr::LOCALHOST.into())?,
            _open: None,
        })
    }
}

/// What turns an accepted connection into the stream HTTP/2 is served on.
pub trait Handshake: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;

    /// The handshake; an error closes the connection (counted as a TLS
    /// handshake failure: plaintext has no handshake to fail).
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// No handshake: HTTP/2 on the TCP stream itself.
#[derive(Debug, Clone, Copy)]
pub struct Plaintext;

impl Handshake for Plaintext {
    type Io = TcpStream;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<TcpStream>> + Send {
        std::future::ready(Ok(tcp))
    }
}

/// TLS (rustls, with the collector's server config: certificate, client
/// CA verifier, ALPN `h2`).
impl Handshake for TlsAcceptor {
    type Io = TlsStream<TcpStream>;

    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = io::Result<TlsStream<TcpStream>>> + Send {
        self.accept(tcp)
    }
}

/// How connections are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Most connections open at once (including ones still handshaking).
    pub max_connections: usize,
    /// Most connections open at once from one source address.
    pub max_connections_per_address: usize,
    /// Time the TLS handshake may take.
    pub handshake_timeout: Duration,
    /// The preface and idle deadlines, once the handshake is done.
    pub deadlines: Deadlines,
}

/// Starts the accept task; the returned stream yields admitted connections
/// until it is dropped, which also stops the task. `stats` counts every
/// refusal; `admission` is read before each accept (a reload may change
/// it).
pub fn incoming<H: Handshake>(
    listener: TcpListener,
    admission: watch::Receiver<Admission>,
    handshake: H,
    stats: Arc<ListenerStats>,
) -> ReceiverStream<io::Result<Guarded<H::Io>>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(
        listener,
        admission,
        Arc::new(handshake),
        stats,
        tx,
    ));
    ReceiverStream::new(rx)
}

/// `max_connections` as the accept task applies it: the semaphore's
/// size, and permits still to take back after a reload lowered it.
struct Capacity {
    permits: Arc<Semaphore>,
    size: usize,
    /// Permits held by open connections that are forgotten, not returned,
    /// when they come back (the semaphore cannot shrink below what is
    /// taken).
    owed: usize,
}

impl Capacity {
    fn new(size: usize) -> Capacity {
        let size = size.max(1);
        Capacity {
            permits: Arc::new(Semaphore::new(size)),
            size,
            owed: 0,
        }
    }

    /// Grows or shrinks the semaphore to `size`.
    fn resize(&mut self, size: usize) {
        let size = size.max(1);
        if size > self.size {
            let grow = size - self.size;
            let repaid = grow.min(self.owed);
            self.owed -= repaid;
            self.permits.add_permits(grow - repaid);
        } else if size < self.size {
            let shrink = self.size - size;
            let forgotten = self.permits.forget_permits(shrink);
            self.owed += shrink - forgotten;
        }
        self.size = size;
    }

    /// A permit that counts, or `None` when the one taken paid a debt.
    fn keep(&mut self, permit: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        if self.owed > 0 {
            self.owed -= 1;
            permit.forget();
            return None;
        }
        Some(permit)
    }
}

async fn accept_loop<H: Handshake>(
    listener: TcpListener,
    mut admissions: watch::Receiver<Admission>,
    handshake: Arc<H>,
    stats: Arc<ListenerStats>,
    tx: mpsc::Sender<io::Result<Guarded<H::Io>>>,
) {
    let mut admission = *admissions.borrow_and_update();
    let mut capacity = Capacity::new(admission.max_connections);
    let per_address = PerAddress::new(admission.max_connections_per_address);
    // False once the sender is gone (no reloads).
    let mut reloadable = true;
    // Kept across iterations: a connection refused for its address gives
    // its permit to the next one.
    let mut permit: Option<OwnedSemaphorePermit> = None;
    loop {
        if reloadable && admissions.has_changed().unwrap_or(false) {
            admission = *admissions.borrow_and_update();
            capacity.resize(admission.max_connections);
            per_address.set_cap(admission.max_connections_per_address);
            debug!(
                max_connections = admission.max_connections,
                max_connections_per_address = admission.max_connections_per_address,
                "listener limits reloaded"
            );
        }
        let held = match permit.take() {
            Some(p) => p,
            None => match capacity.permits.clone().try_acquire_owned() {
                Ok(p) => match capacity.keep(p) {
                    Some(p) => p,
                    None => continue,
                },
                Err(_) => {
                    let detail = format!("max_connections={}", admission.max_connections);
                    stats.record(Refusal::GlobalCapWait, None, &detail);
                    let acquired = tokio::select! {
                        p = capacity.permits.clone().acquire_owned() => p,
                        changed = admissions.changed(), if reloadable => {
                            // A reload may have raised the cap: look again.
                            reloadable = changed.is_ok();
                            continue;
                        }
                        _ = tx.closed() => return,
                    };
                    match acquired {
                        Ok(p) => match capacity.keep(p) {
                            Some(p) => {
                                info!("below the connection limit again: accepting");
                                p
                            }
                            None => continue,
                        },
                        Err(_) => return,
                    }
                }
            },
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed; pausing briefly");
                permit = Some(held);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(slot) = per_address.admit(remote.ip()) else {
            let detail = format!(
                "max_connections_per_address={}",
                admission.max_connections_per_address
            );
            stats.record(Refusal::PerAddressCap, Some(remote), &detail);
            drop(stream);
            permit = Some(held);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let admitted = Admitted {
            _permit: held,
            _slot: slot,
            _open: Some(OpenConnection::new(stats.clone())),
        };
        let (handshake, stats, tx) = (handshake.clone(), stats.clone(), tx.clone());
        tokio::spawn(async move {
            let shaken =
                tokio::time::timeout(admission.handshake_timeout, handshake.handshake(stream))
                    .await;
            let io = match shaken {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    stats.record(Refusal::TlsHandshakeFailed, Some(remote), &e.to_string());
                    return;
                }
                Err(_) => {
                    let detail = format!("{:?}", admission.handshake_timeout);
                    stats.record(Refusal::TlsHandshakeTimeout, Some(remote), &detail);
                    return;
                }
            };
            let guarded = Guarded::new(io, admitted, admission.deadlines, Some(remote), stats);
            let _ = tx.send(Ok(guarded)).await;
        });
    }
}
