//! Why the listener closed or held back connections: one counter per reason
//! and a warning per reason at most once a second; and how many it
//! admitted and holds open ([`OpenConnection`]).
//!
//! [`ListenerStats`] is shared (`Arc`) by the accept task and every
//! admitted connection; nothing else writes it. The counters are relaxed
//! atomics (each is an independent total, nothing is derived from two of
//! them). [`ListenerStats::snapshot`] is the accessor for whoever exposes
//! them (the server logs the totals at shutdown; `/metrics` reads them at
//! each scrape, `crate::metrics`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use tracing::warn;

/// Why a connection was refused, closed or made to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The HTTP/2 client preface and first frame header did not arrive
    /// within `preface_timeout`.
    PrefaceTimeout,
    /// The first bytes were not the HTTP/2 client preface.
    BadPreface,
    /// Nothing was read for `idle_timeout`.
    IdleTimeout,
    /// The source address already had `max_connections_per_address` open.
    PerAddressCap,
    /// `max_connections` were open: accepting paused until one closed.
    GlobalCapWait,
    /// The TLS handshake failed (a bad or missing client certificate, not
    /// TLS at all, or the peer hung up).
    TlsHandshakeFailed,
    /// The TLS handshake took longer than `handshake_timeout`.
    TlsHandshakeTimeout,
}

impl Refusal {
    /// Every reason, in the order of [`Snapshot`].
    pub const ALL: [Refusal; 7] = [
        Refusal::PrefaceTimeout,
        Refusal::BadPreface,
        Refusal::IdleTimeout,
        Refusal::PerAddressCap,
        Refusal::GlobalCapWait,
        Refusal::TlsHandshakeFailed,
        Refusal::TlsHandshakeTimeout,
    ];

    /// The counter's name, as logged (and as a metric label later).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::PrefaceTimeout => "preface_timeout",
            Refusal::BadPreface => "bad_preface",
            Refusal::IdleTimeout => "idle_timeout",
            Refusal::PerAddressCap => "per_address_cap",
            Refusal::GlobalCapWait => "global_cap_wait",
            Refusal::TlsHandshakeFailed => "tls_handshake_failed",
            Refusal::TlsHandshakeTimeout => "tls_handshake_timeout",
        }
    }

    /// What happened, for the warning.
    fn message(self) -> &'static str {
        match self {
            Refusal::PrefaceTimeout => "connection closed: no HTTP/2 preface in time",
            Refusal::BadPreface => "connection closed: not an HTTP/2 preface",
            Refusal::IdleTimeout => "connection closed: idle for too long",
            Refusal::PerAddressCap => "connection refused: too many connections from this address",
            Refusal::GlobalCapWait => {
                "connection limit reached: new connections wait until one closes"
            }
            Refusal::TlsHandshakeFailed => "connection closed: TLS handshake failed",
            Refusal::TlsHandshakeTimeout => "connection closed: TLS handshake timed out",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters of one listener.
#[derive(Debug)]
pub struct ListenerStats {
    counts: [AtomicU64; Refusal::ALL.len()],
    /// Per reason: when its warning was last logged, in milliseconds since
    /// `start` plus one (0: never).
    logged_at: [AtomicU64; Refusal::ALL.len()],
    start: Instant,
    /// Connections admitted so far, and admitted and not yet closed.
    accepted: AtomicU64,
    open: AtomicI64,
}

impl Default for ListenerStats {
    fn default() -> Self {
        ListenerStats {
            counts: Default::default(),
            logged_at: Default::default(),
            start: Instant::now(),
            accepted: AtomicU64::new(0),
            open: AtomicI64::new(0),
        }
    }
}

/// Counts one admitted connection as open until it is dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<ListenerStats>);

impl OpenConnection {
    /// A connection admitted now.
    pub fn new(stats: Arc<ListenerStats>) -> OpenConnection {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Minimum time between two warnings for the same reason, milliseconds.
const LOG_EVERY_MS: u64 = 1000;

impl ListenerStats {
    /// Counts one `reason` and warns about it unless a warning for the same
    /// reason went out less than a second ago (`total` in the line says how
    /// many there were in all).
    pub(crate) fn record(&self, reason: Refusal, peer: Option<SocketAddr>, detail: &str) {
        let i = reason.index();
        let total = self.counts[i].fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.logged_at[i].load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < LOG_EVERY_MS {
            return;
        }
        // One of several racing threads wins the slot and logs.
        if self.logged_at[i]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        if detail.is_empty() {
            warn!(reason = reason.name(), peer, total, "{}", reason.message());
        } else {
            warn!(
                reason = reason.name(),
                peer,
                total,
                detail,
                "{}",
                reason.message()
            );
        }
    }

    /// How many times `reason` happened so far.
    pub fn get(&self, reason: Refusal) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Connections admitted since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections admitted and not yet closed (handshaking or served).
    pub fn open_connections(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Every counter at once.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(Refusal::ALL.map(|r| (r, self.get(r))))
    }
}

/// The counters at one moment, in [`Refusal::ALL`] order. Displays as
/// `preface_timeout=0 bad_preface=0 ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(pub [(Refusal, u64); Refusal::ALL.len()]);

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (reason, n)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={n}", reason.name())?;
        }
        Ok(())
    }
}
