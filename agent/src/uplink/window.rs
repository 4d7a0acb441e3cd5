//! The backlog's window on a stream: how many bytes of backlog batches may
//! be in flight (sent, not acked) when batches go out of order.
//!
//! Whatever is in flight is ahead of the next live batch (the transport
//! sends in order), so the window is what a live batch may wait behind.
//! It follows the rate at which the collector acks backlog bytes, so that
//! what is in flight takes about [`DRAIN`] to be acked: on a thin uplink a
//! live batch waits about that long at most, on a fast one the window
//! opens to [`MAX`], half the collector's HTTP/2 stream window (1 MiB by
//! default), so the transport always has room for live batches. Live
//! batches count against no window.
//!
//! The rate is measured over periods of [`DRAIN`] in which the window
//! filled at least once; in a period where it did not, the rate says
//! nothing about the link and the window stays.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long what is in flight should take to be acked.
pub(super) const DRAIN: Duration = Duration::from_millis(500);
/// The window's bounds.
pub(super) const MIN: u64 = 64 * 1024;
pub(super) const MAX: u64 = 512 * 1024;

/// See the module's comment.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Window {
    /// Backlog batches in flight and their bytes.
    in_flight: BTreeMap<u64, u64>,
    /// Their sum.
    bytes: u64,
    /// Bytes of backlog in flight allowed now.
    limit: u64,
    /// The current measuring period: since when, backlog bytes acked in
    /// it, and whether the window held the backlog back in it.
    since: Instant,
    acked: u64,
    limited: bool,
    /// The limit stays (`UplinkConfig::backlog_window`).
    fixed: bool,
}

impl Default for Window {
    fn default() -> Self {
        Window::new(None)
    }
}

impl Window {
    /// A window that adapts from [`MIN`], or one of `fixed` bytes.
    pub(super) fn new(fixed: Option<u64>) -> Window {
        Window {
            in_flight: BTreeMap::new(),
            bytes: 0,
            limit: fixed.unwrap_or(MIN),
            since: Instant::now(),
            acked: 0,
            limited: false,
            fixed: fixed.is_some(),
        }
    }

    /// Whether another backlog batch may go now.
    pub(super) fn is_open(&self) -> bool {
        self.bytes < self.limit
    }

    /// The bytes allowed in flight now.
    #[cfg(test)]
    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    /// Backlog batch `seq` of `bytes` bytes went out.
    pub(super) fn sent(&mut self, seq: u64, bytes: u64) {
        if let Some(old) = self.in_flight.insert(seq, bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        if self.bytes >= self.limit {
            // The window holds the backlog back from here: this period's
            // acks measure the link.
            self.limited = true;
        }
    }

    /// Forgets the batches `waiting` says are no longer waiting (acked, or
    /// gone from the spool), and adapts the limit at the end of a period
    /// (`now`).
    pub(super) fn answered(&mut self, now: Instant, waiting: impl Fn(u64) -> bool) {
        let mut freed = 0;
        self.in_flight.retain(|&seq, &mut bytes| {
            let keep = waiting(seq);
            if !keep {
                freed += bytes;
            }
            keep
        });
        self.bytes -= freed;
        self.acked += freed;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= DRAIN {
            if self.limited && !self.fixed {
                let rate = self.acked as f64 / elapsed.as_secs_f64();
                self.limit = ((rate * DRAIN.as_secs_f64()) as u64).clamp(MIN, MAX);
            }
            self.since = now;
            self.acked = 0;
            self.limited = false;
        }
    }
}
