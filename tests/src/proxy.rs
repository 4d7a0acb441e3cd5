//! A TCP proxy that tests put between an agent and a collector to break the
//! network on purpose.
//!
//! Modes, switchable at any time:
//! - [`Mode::Forward`]: bytes flow both ways.
//! - [`Mode::Blackhole`]: a partition without resets. Bytes stop in both
//!   directions on existing connections; new connections are accepted but
//!   nothing is forwarded. The peers only notice through their own timeouts
//!   (HTTP/2 keepalive).
//! - [`Mode::DropReplies`]: what the client sends reaches the server; what the
//!   server answers is read and thrown away (the collector commits, the agent
//!   never hears the ack).
//! - [`Mode::Throttle`]: bytes flow both ways, but what the client sends
//!   reaches the server at most at this many bytes a second (a thin uplink,
//!   where an agent's backlog takes a while to drain).
//!
//! Connections opened during a blackhole stay stalled after it heals, like
//! half-open connections after a real partition; new ones flow again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Blackhole,
    DropReplies,
    /// Client to server at most this many bytes a second.
    Throttle(u64),
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    dropped_reply_bytes: AtomicU64,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind proxy")?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                st.connections.fetch_add(1, Ordering::Relaxed);
                let mode_rx = mode_rx.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, mode_rx, st).await;
                });
            }
        });
        Ok(Proxy {
            addr,
            mode,
            stats,
            task,
        })
    }

    /// Switches the mode for all connections.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Reply bytes thrown away in `DropReplies` mode.
    pub fn dropped_reply_bytes(&self) -> u64 {
        self.stats.dropped_reply_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    stats: Arc<Stats>,
) -> Result<()> {
    // A connection born in a blackhole never flows.
    let born_in_blackhole = *mode.borrow() == Mode::Blackhole;
    if born_in_blackhole {
        let _hold = client;
        return std::future::pending().await;
    }
    let server = TcpStream::connect(upstream).await?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, mode.clone(), None);
    let down = pump(sr, cw, mode, Some(stats));
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
    Ok(())
}

/// Copies `from` → `to`. Replies (`stats` is `Some`) are discarded in
/// `DropReplies`; in `Blackhole` the pump stops reading for good.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    stats: Option<Arc<Stats>>,
) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Blackhole {
            // Hold both halves open; never read or write again.
            std::future::pending::<()>().await;
        }
        // Throttled, a read takes at most a twentieth of a second's bytes,
        // so the pace is even.
        let chunk = match (current, &stats) {
            (Mode::Throttle(rate), None) => (rate / 20).clamp(1, buf.len() as u64) as usize,
            _ => buf.len(),
        };
        let n = tokio::select! {
            n = from.read(&mut buf[..chunk]) => n?,
            _ = mode.changed() => continue,
        };
        if n == 0 {
            to.shutdown().await.ok();
            return Ok(());
        }
        let current = *mode.borrow();
        match (current, &stats) {
            (Mode::Blackhole, _) => std::future::pending::<()>().await,
            (Mode::DropReplies, Some(stats)) => {
                stats
                    .dropped_reply_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            (Mode::Throttle(rate), None) => {
                to.write_all(&buf[..n]).await?;
                tokio::time::sleep(std::time::Duration::from_secs_f64(
                    n as f64 / rate.max(1) as f64,
                ))
                .await;
            }
            _ => to.write_all(&buf[..n]).await?,
        }
    }
}
