//! The simulated network between the agent and the collector: each
//! connection is an in-memory duplex pipe whose two ends the faults act on.
//!
//! Faults, all decided by the run's seed (`mod.rs`): a *cut* makes one or
//! both ends fail every read and write (a reset: what a dropped frame, a
//! lost ack or a dead host turns into for a TCP stream); a *stall* holds
//! the bytes of one direction back until a time (delayed frames; a stall
//! past the HTTP/2 keepalive ends the connection); a *partition* stalls
//! every connection and refuses new ones for a while. A cut of the agent's
//! end alone, with the collector's end stalled, leaves the collector a
//! session of a stream the agent already gave up (a duplicate stream of one
//! agent, once it reconnects). A seed may also give the agent's reads a
//! *gap* (`Net::set_read_gap`): after each read that brings bytes, the next
//! waits that long, so acks come in at a slow link's pace and a backlog
//! takes simulated time to drain, beside live batches.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Bytes a pipe holds in each direction before the writer waits.
const PIPE_BYTES: usize = 64 * 1024;

/// Which end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Agent,
    Collector,
}

/// One end's fault state.
#[derive(Default)]
struct EndState {
    cut: AtomicBool,
    /// Reads of this end wait until then.
    stalled_until: Mutex<Option<Instant>>,
    /// The tasks waiting to read and to write on this end, woken by a cut.
    wakers: Mutex<[Option<Waker>; 2]>,
}

/// The fault state of one connection, shared by its two ends and the
/// network.
#[derive(Default)]
struct Conn {
    agent: EndState,
    collector: EndState,
}

impl Conn {
    fn end(&self, side: Side) -> &EndState {
        match side {
            Side::Agent => &self.agent,
            Side::Collector => &self.collector,
        }
    }

    fn cut(&self, side: Side) {
        let end = self.end(side);
        end.cut.store(true, Ordering::SeqCst);
        for w in lock(&end.wakers).iter_mut().filter_map(Option::take) {
            w.wake();
        }
    }

    fn stall(&self, side: Side, until: Instant) {
        let mut s = lock(&self.end(side).stalled_until);
        *s = Some(s.map_or(until, |t| t.max(until)));
    }

    fn dead(&self) -> bool {
        self.agent.cut.load(Ordering::SeqCst) && self.collector.cut.load(Ordering::SeqCst)
    }
}

/// The harness's locks (here and the agent's taps): no section under one
/// panics midway (the simulated crash unwinds after its guard is dropped),
/// so a poisoned lock is taken anyway.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One end of a simulated connection.
pub struct SimIo {
    io: DuplexStream,
    side: Side,
    conn: Arc<Conn>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// After a read that brings bytes, this end's reads stall this long.
    read_gap: Duration,
}

impl SimIo {
    /// `Err` when this end is cut; `Pending` while its reads are stalled.
    fn check(&mut self, cx: &mut Context<'_>, reading: bool) -> Poll<io::Result<()>> {
        let end = self.conn.end(self.side);
        if end.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulated connection cut",
            )));
        }
        lock(&end.wakers)[usize::from(!reading)] = Some(cx.waker().clone());
        if reading {
            let until = *lock(&end.stalled_until);
            if let Some(until) = until
                && Instant::now() < until
            {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if sleep.deadline() != until {
                    sleep.as_mut().reset(until);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.check(cx, true) {
            Poll::Ready(Ok(())) => {
                let before = buf.filled().len();
                let read = Pin::new(&mut self.io).poll_read(cx, buf);
                if !self.read_gap.is_zero()
                    && matches!(read, Poll::Ready(Ok(())))
                    && buf.filled().len() > before
                {
                    self.conn.stall(self.side, Instant::now() + self.read_gap);
                }
                read
            }
            other => other,
        }
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.check(cx, false) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.io).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.check(cx, false) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for SimIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The network: the collector's listener (when it is up), the connections
/// and the partition.
#[derive(Clone, Default)]
pub struct Net {
    inner: Arc<Mutex<NetState>>,
}

#[derive(Default)]
struct NetState {
    /// After a read of the agent's end brings bytes, the next waits this
    /// long (see the module's comment).
    read_gap: Duration,
    /// New connections go here while the collector is up.
    listener: Option<mpsc::Sender<SimIo>>,
    /// Connects are refused until then (a partition).
    refuse_until: Option<Instant>,
    conns: Vec<Arc<Conn>>,
    /// Connections opened (for the summary).
    opened: u64,
}

impl Net {
    /// After a read of the agent's end brings bytes, the next waits `gap`
    /// (connections opened from now on).
    pub fn set_read_gap(&self, gap: Duration) {
        lock(&self.inner).read_gap = gap;
    }

    /// The collector is up: new connections go to `listener`.
    pub fn listen(&self, listener: mpsc::Sender<SimIo>) {
        lock(&self.inner).listener = Some(listener);
    }

    /// The collector is gone: no listener, every connection cut at both
    /// ends (its process is gone, so are its sockets).
    pub fn collector_down(&self) {
        let mut s = lock(&self.inner);
        s.listener = None;
        for c in s.conns.drain(..) {
            c.cut(Side::Collector);
            c.cut(Side::Agent);
        }
    }

    /// Every connection cut at both ends (also what an agent's crash does).
    pub fn cut_all(&self) {
        let mut s = lock(&self.inner);
        for c in s.conns.drain(..) {
            c.cut(Side::Collector);
            c.cut(Side::Agent);
        }
    }

    /// The agent's ends cut and the collector's stalled until `until`: the
    /// collector keeps a session the agent has left.
    pub fn cut_agent_side(&self, until: Instant) {
        let mut s = lock(&self.inner);
        for c in &s.conns {
            c.cut(Side::Agent);
            c.stall(Side::Collector, until);
        }
        s.conns.retain(|c| !c.dead());
    }

    /// The reads of `side` on every open connection wait until `until`.
    pub fn stall(&self, side: Side, until: Instant) {
        let s = lock(&self.inner);
        for c in &s.conns {
            c.stall(side, until);
        }
    }

    /// Every connection stalled both ways and new ones refused until
    /// `until`.
    pub fn partition(&self, until: Instant) {
        let mut s = lock(&self.inner);
        s.refuse_until = Some(until);
        for c in &s.conns {
            c.stall(Side::Agent, until);
            c.stall(Side::Collector, until);
        }
    }

    /// A new connection to the collector: the agent's end, the collector's
    /// given to its listener.
    pub fn connect(&self) -> io::Result<SimIo> {
        let mut s = lock(&self.inner);
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "simulated refusal");
        if s.refuse_until.is_some_and(|t| Instant::now() < t) {
            return Err(refused());
        }
        let Some(listener) = &s.listener else {
            return Err(refused());
        };
        let (a, c) = tokio::io::duplex(PIPE_BYTES);
        let conn = Arc::new(Conn::default());
        let collector_end = SimIo {
            io: c,
            side: Side::Collector,
            conn: conn.clone(),
            sleep: None,
            read_gap: Duration::ZERO,
        };
        if listener.try_send(collector_end).is_err() {
            return Err(refused());
        }
        s.conns.retain(|c| !c.dead());
        s.conns.push(conn.clone());
        s.opened += 1;
        Ok(SimIo {
            io: a,
            side: Side::Agent,
            conn,
            sleep: None,
            read_gap: s.read_gap,
        })
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        lock(&self.inner).opened
    }
}
