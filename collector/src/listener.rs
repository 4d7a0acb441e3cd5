//! Accepting TCP connections under a cap: the collector's first line of
//! defence against connection floods.
//!
//! One accept task owns the listener and a semaphore of `max_connections`
//! permits. It takes a permit *before* it accepts, so at the cap new
//! connections wait in the kernel's listen backlog instead of costing memory
//! here. Each accepted connection carries its permit until it is dropped
//! (closed by either side, a failed TLS handshake, or shutdown).
//!
//! A plaintext connection must send its first byte within the handshake
//! timeout, or it is closed without ever reaching HTTP/2; with TLS, tonic
//! bounds the handshake with the same timeout. The connections reach tonic
//! through a bounded channel, as a stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

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

/// An accepted connection holding one of the `max_connections` permits.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    info: TcpConnectInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How connections are admitted.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Most connections open at once (including ones still handshaking).
    pub max_connections: usize,
    /// Plaintext only: a connection that sends nothing for this long after
    /// it was accepted is closed. `None` with TLS, whose handshake timeout
    /// tonic enforces.
    pub first_byte_timeout: Option<Duration>,
}

/// Starts the accept task; the returned stream yields admitted connections
/// until it is dropped, which also stops the task.
pub fn incoming(listener: TcpListener, admission: Admission) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, admission, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    admission: Admission,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let permits = Arc::new(Semaphore::new(admission.max_connections.max(1)));
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                warn!(
                    max_connections = admission.max_connections,
                    "connection limit reached: new connections wait until one closes"
                );
                let acquired = tokio::select! {
                    p = permits.clone().acquire_owned() => p,
                    _ = tx.closed() => return,
                };
                match acquired {
                    Ok(p) => {
                        info!("below the connection limit again: accepting");
                        p
                    }
                    Err(_) => return,
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed; pausing briefly");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            info: TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(remote),
            },
            stream,
            _permit: permit,
        };
        match admission.first_byte_timeout {
            None => {
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(timeout) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    match tokio::time::timeout(timeout, conn.stream.peek(&mut byte)).await {
                        Ok(Ok(n)) if n > 0 => {
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(_) => {
                            debug!(peer = %remote, "connection closed before sending anything")
                        }
                        Err(_) => {
                            debug!(peer = %remote, ?timeout, "connection sent nothing in time: closed")
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             95043                95043                processes \n\
                    Max open files            20000                524288               files     \n";
        assert_eq!(open_files_limit(text), Some(20_000));
        assert_eq!(
            open_files_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(u64::MAX)
        );
        assert_eq!(open_files_limit("Max processes 1 1 processes\n"), None);
        assert_eq!(
            open_files_limit("Max open files  lots  lots  files\n"),
            None
        );
    }

    #[test]
    fn default_connection_cap_stays_within_bounds() {
        let n = default_max_connections();
        assert!((64..=16_384).contains(&n), "{n}");
    }
}
