//! The deadlines of an admitted connection, enforced on the bytes HTTP/2
//! reads (decrypted, with TLS): the client preface and the header of the
//! first frame must arrive within `preface_timeout`, and after that the
//! connection is closed once nothing has been read for `idle_timeout`.
//!
//! [`Guarded`] wraps the stream hyper serves. It checks the preface byte by
//! byte (garbage is refused at its first wrong byte) and keeps one timer:
//! the preface deadline first, then the idle deadline, re-armed lazily from
//! the time of the last read when it fires (so a busy connection costs one
//! `Instant::now()` per read, not a timer update). HTTP/2 reads a
//! connection all the time, so the timer is polled whenever the connection
//! is waiting for its peer; a live peer always has something to send within
//! the idle timeout, since the server pings it (`keepalive_interval`) and
//! it must answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::Admitted;
use super::stats::{ListenerStats, Refusal};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The preface and the 9-byte header of the first frame (SETTINGS).
const PREFACE_AND_FRAME_HEADER: usize = PREFACE.len() + 9;

/// The two deadlines of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From admission (after the TLS handshake) to the end of the first
    /// frame header.
    pub preface: Duration,
    /// Longest time without a byte read, after the preface.
    pub idle: Duration,
}

/// A stream under [`Deadlines`]. Reads fail with `TimedOut` (or
/// `InvalidData` for a wrong preface) once a deadline passes, which makes
/// hyper close the connection; each such failure is counted once.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    /// Bytes of preface and first frame header read so far (at most
    /// `PREFACE_AND_FRAME_HEADER`).
    seen: usize,
    /// The preface deadline, then the idle deadline.
    timer: Pin<Box<Sleep>>,
    last_read: Instant,
    deadlines: Deadlines,
    /// Set once a deadline or the preface check failed: every later read
    /// fails the same way, uncounted.
    failed: Option<io::ErrorKind>,
    peer: Option<SocketAddr>,
    stats: Arc<ListenerStats>,
    /// The connection's places, given back when it is dropped.
    _admitted: Admitted,
}

impl<S> Guarded<S> {
    /// Starts the preface deadline now.
    pub fn new(
        inner: S,
        admitted: Admitted,
        deadlines: Deadlines,
        peer: Option<SocketAddr>,
        stats: Arc<ListenerStats>,
    ) -> Self {
        let now = Instant::now();
        Guarded {
            inner,
            seen: 0,
            timer: Box::pin(tokio::time::sleep_until(now + deadlines.preface)),
            last_read: now,
            deadlines,
            failed: None,
            peer,
            stats,
            _admitted: admitted,
        }
    }

    /// Counts `reason` and fails this and every later read with `kind`.
    fn fail(&mut self, reason: Refusal, kind: io::ErrorKind, detail: &str) -> io::Error {
        self.stats.record(reason, self.peer, detail);
        self.failed = Some(kind);
        io::Error::new(kind, reason.name())
    }

    /// Checks `new`, the bytes just read while the preface is incomplete.
    fn check_preface(&mut self, new: &[u8]) -> io::Result<()> {
        let start = self.seen;
        if start < PREFACE.len() {
            let end = (start + new.len()).min(PREFACE.len());
            if new[..end - start] != PREFACE[start..end] {
                return Err(self.fail(Refusal::BadPreface, io::ErrorKind::InvalidData, ""));
            }
        }
        self.seen = (start + new.len()).min(PREFACE_AND_FRAME_HEADER);
        if self.seen == PREFACE_AND_FRAME_HEADER {
            let idle_until = self.last_read + self.deadlines.idle;
            self.timer.as_mut().reset(idle_until);
        } else if self.last_read >= self.timer.deadline() {
            // Bytes dribbled in, but too late.
            return Err(self.preface_timeout());
        }
        Ok(())
    }

    fn preface_timeout(&mut self) -> io::Error {
        let detail = format!(
            "{} of {PREFACE_AND_FRAME_HEADER} bytes in {:?}",
            self.seen, self.deadlines.preface
        );
        self.fail(Refusal::PrefaceTimeout, io::ErrorKind::TimedOut, &detail)
    }

    /// With no bytes to read: `Pending` until a deadline passes, then the
    /// error that closes the connection.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.seen < PREFACE_AND_FRAME_HEADER {
                return Poll::Ready(Err(self.preface_timeout()));
            }
            let idle_until = self.last_read + self.deadlines.idle;
            if idle_until <= Instant::now() {
                let detail = format!("nothing read for {:?}", self.deadlines.idle);
                return Poll::Ready(Err(self.fail(
                    Refusal::IdleTimeout,
                    io::ErrorKind::TimedOut,
                    &detail,
                )));
            }
            // Read since the timer was armed: wait from the last read.
            self.timer.as_mut().reset(idle_until);
        }
    }
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    /// The inner stream's: `TlsConnectInfo` (with the peer's certificates)
    /// under TLS, so `Request::peer_certs` works as without the guard.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(kind) = this.failed {
            return Poll::Ready(Err(io::Error::new(
                kind,
                "connection closed by its deadline",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.last_read = Instant::now();
                    if this.seen < PREFACE_AND_FRAME_HEADER {
                        this.check_preface(new)?;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_deadline(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
