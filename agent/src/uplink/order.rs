//! Which batch goes out next on a stream (see ARCHITECTURE.md, "Live
//! first, backlog beside").
//!
//! A batch sealed while the stream is open is *live*; every unacked batch
//! below the stream's first live sequence is *backlog*. To a collector whose
//! Welcome said `out_of_order`, live batches go ahead of the backlog, and
//! while both wait the backlog gets `backlog_share` of the bytes sent,
//! oldest first. Nothing the collector has acked is ever sent (the spool
//! skips its acked set), and nothing sent on this stream is sent again on
//! it. The agent keeps its own gaps (the ranges above the collector's mark)
//! under [`MAX_GAPS`]: at that many it sends oldest first until they close,
//! so every range it must hear about fits in an Ack. Backlog batches in
//! flight are kept within a window (`window.rs`), live ones within none,
//! so a window full of backlog never holds a live batch back.
//!
//! In sequence order, as every agent did before, while the Welcome has not
//! come (the first stream of a process: it resends from the oldest unacked
//! batch at once), to a collector without `out_of_order`, and while a
//! refusal is being pinned down (`delivery.rs`). A process that has heard
//! an `out_of_order` Welcome waits for the next one before sending: it may
//! come from another collector, and it tells the acked set.

use tributary_proto::limits::MAX_ACK_RANGES;

use super::Uplink;
use super::window::Window;

/// The most gaps (ranges above the collector's mark) before the uplink
/// sends oldest first until they close.
pub(super) const MAX_GAPS: usize = MAX_ACK_RANGES / 2;

/// A stream's cursors: what it sent, where its live batches begin.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Lanes {
    /// Every unacked batch below this was sent on this stream: the cursor
    /// of the backlog (in sequence order, the only cursor).
    pub(super) next_send: u64,
    /// The first sequence sealed while this stream is open: batches from
    /// here on are live, those below are the backlog.
    pub(super) live_from: u64,
    /// Every unacked live batch below this was sent on this stream.
    pub(super) live_next: u64,
    /// `None` until the Welcome; then whether the collector takes batches
    /// out of sequence order.
    pub(super) out_of_order: Option<bool>,
    /// Bytes of backlog and of live batches sent while both waited (how
    /// `backlog_share` is kept).
    pub(super) contested: (u64, u64),
    /// Backlog batches in flight on this stream, out of order.
    pub(super) window: Window,
}

impl Lanes {
    /// A stream opened: its backlog begins at `first_unacked`, its live
    /// batches at `live_from` (the spool's next sequence); `window` fixes
    /// the backlog's window (`UplinkConfig::backlog_window`).
    pub(super) fn open(first_unacked: u64, live_from: u64, window: Option<u64>) -> Lanes {
        Lanes {
            next_send: first_unacked,
            live_from,
            live_next: live_from,
            out_of_order: None,
            contested: (0, 0),
            window: Window::new(window),
        }
    }
}

/// Where a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Sealed while this stream is open.
    Live,
    /// Unacked from before this stream opened.
    Backlog,
}

/// The batch to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Choice {
    pub(super) seq: u64,
    pub(super) lane: Lane,
    /// Chosen out of order (live and backlog both waited, the share
    /// decided); its bytes count toward the share.
    pub(super) contested: bool,
    /// In sequence order: the stream's cursors follow it.
    pub(super) in_order: bool,
    /// A live batch sent while older backlog batches wait to be sent on
    /// the stream (the share or the backlog's window let it go first).
    pub(super) ahead: bool,
    /// A batch in flight at a refusal, sent alone to pin it down
    /// (`delivery.rs`): the stream's cursors stay where they were.
    pub(super) pinned: bool,
}

impl Uplink {
    /// The batch to send next on `s`, if any may go now.
    pub(super) fn next_batch(&self, s: &Lanes) -> Option<Choice> {
        let out_of_order = match s.out_of_order {
            None => {
                if self.expect_out_of_order {
                    return None;
                }
                false
            }
            Some(ooo) => ooo && self.refusal.is_none(),
        };
        if let Some(r) = &self.refusal {
            // Only the batches in flight at the refusal, one at a time.
            let seq = r.next_suspect(&self.spool)?;
            return self.may_send(seq).then_some(Choice {
                seq,
                lane: if seq >= s.live_from {
                    Lane::Live
                } else {
                    Lane::Backlog
                },
                contested: false,
                in_order: true,
                ahead: false,
                pinned: true,
            });
        }
        let lane = |seq: u64| {
            if seq >= s.live_from {
                Lane::Live
            } else {
                Lane::Backlog
            }
        };
        if !out_of_order {
            let seq = self.spool.next_unacked_from(s.next_send)?;
            return self.may_send(seq).then_some(Choice {
                seq,
                lane: lane(seq),
                contested: false,
                in_order: true,
                ahead: false,
                pinned: false,
            });
        }
        let waiting = self
            .spool
            .next_unacked_from(s.next_send)
            .filter(|&seq| seq < s.live_from);
        let backlog = waiting.filter(|_| s.window.is_open());
        let live = self
            .spool
            .next_unacked_from(s.live_next.max(s.live_from).max(s.next_send));
        let choice = |seq: u64, lane: Lane, contested: bool| Choice {
            seq,
            lane,
            contested,
            in_order: false,
            ahead: lane == Lane::Live && waiting.is_some(),
            pinned: false,
        };
        match (backlog, live) {
            (Some(b), Some(l)) => {
                if self.spool.acked().ranges().len() >= MAX_GAPS {
                    // Too many gaps: oldest first until they close.
                    Some(choice(b, Lane::Backlog, false))
                } else if backlog_turn(s.contested, self.config.backlog_share) {
                    Some(choice(b, Lane::Backlog, true))
                } else {
                    Some(choice(l, Lane::Live, true))
                }
            }
            (Some(b), None) => Some(choice(b, Lane::Backlog, false)),
            (None, Some(l)) => Some(choice(l, Lane::Live, false)),
            (None, None) => None,
        }
    }

    /// `choice` went out on `s` as `bytes` bytes: moves the stream's
    /// cursors past it and counts its bytes toward the share.
    pub(super) fn advance(&self, s: &mut Lanes, choice: Choice, bytes: u64) {
        if choice.pinned {
            return;
        }
        if choice.in_order || choice.lane == Lane::Backlog {
            s.next_send = s.next_send.max(choice.seq + 1);
        }
        if choice.lane == Lane::Live {
            s.live_next = s.live_next.max(choice.seq + 1);
        }
        if choice.contested {
            match choice.lane {
                Lane::Backlog => s.contested.0 += bytes,
                Lane::Live => s.contested.1 += bytes,
            }
        }
        if choice.lane == Lane::Backlog && !choice.in_order {
            s.window.sent(choice.seq, bytes);
        }
    }

    /// Forgets the backlog batches in flight on `s` that are acked (or
    /// no longer in the spool): room in the backlog's window.
    pub(super) fn prune_in_flight(&self, s: &mut Lanes) {
        let spool = &self.spool;
        s.window.answered(tokio::time::Instant::now(), |seq| {
            spool.next_unacked_from(seq) == Some(seq)
        });
    }
}

/// Whether the backlog's turn has come while both wait: its bytes so far
/// (`contested.0`) are below `share` of all bytes sent while both waited.
/// A live batch goes first (nothing sent yet: 0 is not below 0), and the
/// backlog's part never strays from `share` by more than one batch.
pub(super) fn backlog_turn(contested: (u64, u64), share: f64) -> bool {
    let (backlog, live) = contested;
    (backlog as f64) < share * (backlog as f64 + live as f64)
}
