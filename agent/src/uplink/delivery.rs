//! Delivery on an open stream: the batches go out in the order `order.rs`
//! chooses, each declaring the series the stream has not seen; the
//! collector's Welcome and Acks tell its committed set (mark and ranges),
//! which the spool frees and never sends again, and a batch it refuses for
//! good is given up on.
//!
//! A refusal ends the stream without naming the batch, and several may be
//! in flight. So after one, the batches that were in flight then (and only
//! they: not the backlog below the live tip never sent) go one at a time,
//! each alone in flight, until all are acked or given up on, and then
//! batches go freely again: a refusal while a single batch is in flight names
//! that batch, and only such a batch, refused three times in a row, is
//! dropped (counted in `refused_batches` and `refused_readings`, and as
//! dropped in the spool, so the collector's `dropped_at_agent` shows it).
//! The agent never spools a batch the collector's default limits refuse
//! (`encode.rs`), so this happens only with a collector whose `[limits]`
//! are tighter than the wire's.

use std::collections::BTreeSet;

use prost::Message;
use tracing::{debug, error, info, warn};

use tributary_proto::limits::MAX_ACK_RANGES;
use tributary_proto::v1 as pb;

use crate::metrics::ReconnectCause;
use crate::reading::now_ns;
use crate::spool::{SeqRange, Spool, SpoolError};

use super::Uplink;
use super::connection::{Event, Link, Stream, code_name};
use super::declared::Declared;
use super::order::{Choice, Lane, Lanes};

/// How many times in a row a batch, alone in flight, is refused before it
/// is given up on.
const REFUSALS_TO_DROP: u32 = 3;

/// What is known while a refused batch is being pinned down.
#[derive(Debug)]
pub(super) struct Refusal {
    /// The batches in flight at a refusal (the refused one is among them)
    /// not yet acked or dropped: they go one at a time, and only they,
    /// until none is left. Not every unacked batch up to the highest: on
    /// an out-of-order stream that is the live tip, and the whole backlog
    /// below it would go one round trip at a time.
    suspects: BTreeSet<u64>,
    /// The batch refused while alone in flight, and how many times in a row.
    alone: Option<(u64, u32)>,
}

impl Refusal {
    /// The suspect to send next: the lowest one still unacked.
    pub(super) fn next_suspect(&self, spool: &Spool) -> Option<u64> {
        self.suspects.iter().copied().find(|&s| spool.is_unacked(s))
    }
}

impl Uplink {
    /// Acts on what the connection saw.
    pub(super) fn on_event(&mut self, link: &mut Link, event: Event) {
        match event {
            // The loop turns and `connect_if_due` connects.
            Event::RetryDue => {}
            Event::Connected => {
                if let Some(stream) = link.stream_mut() {
                    self.opened(stream);
                }
            }
            Event::ConnectFailed { error, retry_in } => {
                self.stats.connect_failures += 1;
                self.count_reconnect(error.cause());
                warn!(error = %error, retry_in = ?retry_in, "cannot reach collector");
            }
            Event::Room(permit) => {
                let Some(stream) = link.stream_mut() else {
                    return;
                };
                match self.encode_next(stream) {
                    Ok(Some(frame)) => {
                        permit.send(frame);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        error!(error = %e, "spool read failed; reconnecting to resend");
                        link.lost();
                        self.count_reconnect(ReconnectCause::SpoolError);
                        self.stats.streams_ended += 1;
                    }
                }
            }
            Event::Frame(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Ack(a)),
            }) => {
                let ranges = match ranges_of("ack.ranges", &a.ranges) {
                    Ok(ranges) => ranges,
                    Err(e) => return self.bad_frame(link, &e),
                };
                self.acked_set(a.seq, &ranges);
                if let Some(stream) = link.stream_mut() {
                    self.prune_in_flight(&mut stream.lanes);
                }
                self.after_ack(link);
            }
            Event::Frame(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Welcome(w)),
            }) => {
                let mut welcomed = Ok(());
                if let Some(stream) = link.stream_mut() {
                    welcomed = self.welcome(&stream.url, &mut stream.lanes, &w);
                    self.prune_in_flight(&mut stream.lanes);
                }
                if let Err(e) = welcomed {
                    return self.bad_frame(link, &e);
                }
                self.after_ack(link);
            }
            Event::Frame(other) => debug!(frame = ?other, "unexpected collector frame ignored"),
            Event::SendClosed => {
                warn!("collector stream closed while sending");
                self.count_reconnect(ReconnectCause::SendFailed);
                self.stats.streams_ended += 1;
            }
            Event::Ended(Some(status)) => {
                warn!(code = %code_name(status.code()), message = %status.message(), "collector stream ended");
                self.rejected(&status);
                self.count_reconnect(ReconnectCause::StreamError);
                self.stats.streams_ended += 1;
            }
            Event::Ended(None) => {
                warn!("collector closed the stream");
                self.count_reconnect(ReconnectCause::StreamClosed);
                self.stats.streams_ended += 1;
            }
        }
    }

    /// A stream opened. Resend from the oldest unacked batch at once,
    /// without waiting for the Welcome: it saves a round trip, and whatever
    /// the collector already has is acked again, not stored.
    fn opened(&mut self, stream: &mut Stream) {
        debug!(url = %stream.url, "stream open");
        stream.lanes = self.open_lanes();
    }

    /// A stream's cursors as it opens: nothing is in flight on it yet.
    pub(super) fn open_lanes(&mut self) -> Lanes {
        let live_from = self.spool.last_seq().saturating_add(1);
        self.spool.clear_in_flight();
        self.sent_on_stream = 0;
        self.stats.connects += 1;
        Lanes::open(
            self.spool.first_unacked().unwrap_or(live_from),
            live_from,
            self.config.backlog_window,
        )
    }

    /// The collector sent a frame that breaks the protocol (`error` names
    /// the field): nothing of it is believed; the stream ends and the
    /// uplink reconnects after a backoff, as after a failed stream.
    fn bad_frame(&mut self, link: &mut Link, error: &str) {
        error!(error, "bad frame from the collector; reconnecting");
        link.lost();
        self.count_reconnect(ReconnectCause::StreamError);
        self.stats.streams_ended += 1;
    }

    /// Counts a reconnect in the metrics, when they are on.
    fn count_reconnect(&mut self, cause: ReconnectCause) {
        if let Some(m) = &mut self.metrics {
            m.reconnect(cause);
        }
    }

    /// An Ack of an older collector: everything up to `seq` is committed.
    #[cfg(test)]
    pub(super) fn acked(&mut self, seq: u64) {
        self.acked_set(seq, &[]);
    }

    /// An Ack: everything up to `mark` and in `ranges` is committed, each
    /// batch with the drop count it carried (the collector commits a resent
    /// batch's count too, before acking it).
    pub(super) fn acked_set(&mut self, mark: u64, ranges: &[SeqRange]) {
        if in_set(mark, ranges, self.dropped_sent.0) {
            // The batch that carried this drop count is committed.
            self.dropped_acked = self.dropped_sent.1;
        }
        self.committed(mark, ranges);
    }

    /// Everything up to `mark` and in `ranges` is committed (an Ack, or a
    /// Welcome): the whole state of the epoch at one commit.
    fn committed(&mut self, mark: u64, ranges: &[SeqRange]) {
        self.stats.acked_seq = self.stats.acked_seq.max(mark);
        if let Err(e) = self.spool.ack_set(mark, ranges) {
            error!(error = %e, mark, "spool truncation failed");
        }
        if let Some(m) = &mut self.metrics {
            m.acked(self.spool.acked());
        }
        self.end_refusal();
    }

    /// After an ack: maybe a new epoch (the spool may just have become
    /// empty), then, if intake was blocked on a full spool, the open batch.
    fn after_ack(&mut self, link: &mut Link) {
        self.maybe_roll(link);
        if self.blocked {
            self.seal();
        }
    }

    /// Whether the batch `seq` may go out now: always, except while a
    /// refusal is being pinned down, when only the next suspect, and only
    /// with nothing unacked in flight.
    pub(super) fn may_send(&self, seq: u64) -> bool {
        match &self.refusal {
            None => true,
            Some(r) => {
                r.next_suspect(&self.spool) == Some(seq)
                    && self.spool.in_flight_unacked().is_empty()
            }
        }
    }

    /// The stream ended with `status`. A batch the collector refuses as
    /// invalid would be resent forever and hold up everything after it
    /// (batches go in order): see the module's comment for how the refused
    /// batch is found and given up on.
    pub(super) fn rejected(&mut self, status: &tonic::Status) {
        // Only a refusal of a batch's content counts (the collector names
        // the field, `batch.…`), or a frame too large to decode.
        let refused = match status.code() {
            tonic::Code::InvalidArgument => status.message().starts_with("batch"),
            tonic::Code::OutOfRange => true,
            _ => false,
        };
        let in_flight = self.spool.in_flight_unacked();
        let (Some(&front), Some(&last)) = (in_flight.first(), in_flight.last()) else {
            return;
        };
        if !refused {
            return;
        }
        let refusal = self.refusal.get_or_insert(Refusal {
            suspects: BTreeSet::new(),
            alone: None,
        });
        refusal.suspects.extend(&in_flight);
        if last != front {
            warn!(
                first = front,
                last,
                in_flight = in_flight.len(),
                "the collector refused one of the batches in flight; sending them one at a time to find it"
            );
            return;
        }
        // `front` was the only batch in flight: it is the one.
        let count = match refusal.alone {
            Some((seq, n)) if seq == front => n + 1,
            _ => 1,
        };
        refusal.alone = Some((front, count));
        if count < REFUSALS_TO_DROP {
            warn!(seq = front, count, code = %code_name(status.code()), cause = %status.message(), "the collector refused this batch; trying again");
            return;
        }
        match self.spool.drop_unacked(front) {
            Ok(readings) => {
                error!(
                    seq = front,
                    readings,
                    code = %code_name(status.code()),
                    cause = %status.message(),
                    "the collector refused this batch {REFUSALS_TO_DROP} times; dropped it (counted in refused_readings and dropped_readings)"
                );
                self.stats.refused_batches += 1;
                self.stats.refused_readings += readings;
            }
            Err(e) => error!(seq = front, error = %e, "cannot drop a refused batch"),
        }
        refusal.alone = None;
        self.note_spool();
        self.end_refusal();
    }

    /// Back to sending freely once every batch that was in flight at a
    /// refusal is acked or dropped.
    fn end_refusal(&mut self) {
        if let Some(r) = &mut self.refusal {
            let spool = &self.spool;
            r.suspects.retain(|&s| spool.is_unacked(s));
            if r.suspects.is_empty() {
                info!("refused batches dealt with; sending freely again");
                self.refusal = None;
            }
        }
    }

    /// The collector's Welcome: it has committed everything up to
    /// `committed_seq` for this epoch, and holds its drop count. An error
    /// (naming the field) when its ranges break the protocol: nothing of
    /// it is taken then.
    pub(super) fn welcome(
        &mut self,
        url: &str,
        c: &mut Lanes,
        w: &pb::Welcome,
    ) -> Result<(), String> {
        let committed = w.committed_seq;
        let ranges = ranges_of("welcome.committed_ranges", &w.committed_ranges)?;
        let highest = ranges.iter().map(|r| r.1).fold(committed, u64::max);
        if highest > self.spool.last_seq() {
            warn!(
                committed = highest,
                last_seq = self.spool.last_seq(),
                "collector has committed sequences this spool does not remember; numbering continues above them"
            );
            self.spool.advance_past(highest);
            // Nothing sealed yet is above them: the live lane starts there.
            c.live_from = c.live_from.max(highest.saturating_add(1));
            c.live_next = c.live_next.max(c.live_from);
        }
        // Batches sent earlier whose ack never came but which the collector
        // did commit: the Welcome acks them.
        let pending = self.spool.pending();
        self.welcomed(committed, &ranges, w.committed_dropped);
        let confirmed = pending.saturating_sub(self.spool.pending()) as u64;
        self.stats.confirmed_by_welcome += confirmed;
        info!(
            url,
            committed,
            ranges = ranges.len(),
            out_of_order = w.out_of_order,
            confirmed,
            "connected to collector"
        );
        c.next_send = c.next_send.max(committed.saturating_add(1));
        c.out_of_order = Some(w.out_of_order);
        self.expect_out_of_order = w.out_of_order;
        Ok(())
    }

    /// What a Welcome commits: everything up to `committed`, and the drop
    /// count the store holds (`None` from an older collector).
    pub(super) fn welcomed(
        &mut self,
        committed: u64,
        ranges: &[SeqRange],
        committed_dropped: Option<u64>,
    ) {
        match committed_dropped {
            // The store's own count. Not the count of the newest batch sent:
            // on this stream it may have gone out before the Welcome and
            // been committed earlier, on the old stream, with a smaller one.
            Some(dropped) => {
                self.dropped_acked = self.dropped_acked.max(dropped).min(self.spool.dropped());
            }
            // An older collector: the newest committed batch's count.
            None if in_set(committed, ranges, self.dropped_sent.0) => {
                self.dropped_acked = self.dropped_sent.1;
            }
            None => {}
        }
        self.committed(committed, ranges);
    }

    pub(super) fn hello(&self) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: self.config.agent_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                epoch: self.spool.epoch(),
                agent_time_ns: now_ns(),
                dropped: self.spool.dropped(),
                last_seq: self.spool.last_seq(),
                // It reads ranges and sends out of order to a collector
                // whose Welcome says so (`order.rs`).
                out_of_order: true,
            })),
        }
    }

    /// Reads the batch to send next on `c` from the spool (see
    /// `order.rs`), re-interns its series for this stream, and advances the
    /// stream's cursors.
    fn encode_next(&mut self, c: &mut Stream) -> Result<Option<pb::AgentFrame>, SpoolError> {
        self.encode_on(&mut c.lanes, &mut c.declared)
    }

    /// [`Uplink::encode_next`] on a stream's `lanes` and `declared`.
    pub(super) fn encode_on(
        &mut self,
        c: &mut Lanes,
        declared: &mut Declared,
    ) -> Result<Option<pb::AgentFrame>, SpoolError> {
        self.prune_in_flight(c);
        let Some(choice) = self.next_batch(c) else {
            return Ok(None);
        };
        let Some(record) = self.spool.read_from(choice.seq)? else {
            c.next_send = self.spool.last_seq().saturating_add(1);
            return Ok(None);
        };
        let choice = Choice {
            seq: record.seq,
            ..choice
        };
        self.spool.sent(record.seq);
        self.sent_on_stream = self.sent_on_stream.max(record.seq);
        if let Some(m) = &mut self.metrics {
            m.sent(record.seq, choice.lane == Lane::Live);
        }
        // Only a batch really sent before (by this process, on an earlier
        // stream, or possibly by an earlier process) is resent: not a
        // backlog batch below live batches an earlier stream sent.
        let resent = self.sent.contains(record.seq);
        if resent {
            self.stats.resent_batches += 1;
        }
        // Below the oldest unacked record nothing is sent again: the mark
        // rises through it, so holes (records dropped unsent) do not pile up.
        let settled = self
            .spool
            .first_unacked()
            .map_or(0, |f| f.saturating_sub(1));
        self.sent
            .add(settled, &[(record.seq, record.seq)], u64::MAX);
        let mut batch = match pb::Batch::decode(record.batch.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                // The CRC matched, so this is a bug, not a disk error; skip
                // the record rather than wedge the stream.
                error!(seq = record.seq, error = %e, "spooled batch does not decode; skipped");
                self.advance(c, choice, 0);
                return Ok(None);
            }
        };
        // Declare on this stream the series it has not seen yet (the first
        // batch that uses them in the order sent).
        let decls = match declared.missing(&batch, &self.ids) {
            Ok(decls) => decls,
            Err(id) => {
                // The spool checks every record's ids against its
                // dictionary, so this is a bug, not a disk error: skip the
                // record rather than wedge the stream.
                error!(
                    seq = record.seq,
                    series = id,
                    "spooled batch uses an unknown series; skipped"
                );
                self.advance(c, choice, 0);
                return Ok(None);
            }
        };
        batch.seq = record.seq;
        batch.resent = resent;
        batch.dropped = self.spool.dropped();
        self.dropped_sent = (record.seq, batch.dropped);
        batch.last_seq = self.spool.last_seq();
        // Every sequence below the oldest unacked record is acked, dropped
        // or was never handed out: the collector closes those holes.
        batch.oldest_spooled = self
            .spool
            .first_unacked()
            .unwrap_or(record.seq)
            .min(record.seq);
        // The share counts the batch's own bytes: the declarations go with
        // whichever batch first uses a series on the stream.
        let bytes = batch.encoded_len() as u64;
        batch.series = decls;
        self.advance(c, choice, bytes);
        match choice.lane {
            Lane::Live => self.stats.live_batches_sent += 1,
            Lane::Backlog => self.stats.backlog_batches_sent += 1,
        }
        if choice.ahead {
            self.stats.live_batches_ahead += 1;
        }
        Ok(Some(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Batch(batch)),
        }))
    }
}

/// The ranges of a Welcome or an Ack (`field` names them), as the spool
/// takes them; an error naming the field when the collector broke the
/// protocol: more than [`MAX_ACK_RANGES`] ranges (it sends the lowest that
/// many), or a range with `first > last`.
pub(super) fn ranges_of(field: &str, ranges: &[pb::SeqRange]) -> Result<Vec<SeqRange>, String> {
    if ranges.len() > MAX_ACK_RANGES {
        return Err(format!(
            "{field}: {} ranges, more than the {MAX_ACK_RANGES} allowed",
            ranges.len()
        ));
    }
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| match r.first <= r.last {
            true => Ok((r.first, r.last)),
            false => Err(format!(
                "{field}[{i}]: first {} above last {}",
                r.first, r.last
            )),
        })
        .collect()
}

/// Whether `seq` is up to `mark` or in one of `ranges`.
fn in_set(mark: u64, ranges: &[SeqRange], seq: u64) -> bool {
    seq <= mark
        || ranges
            .iter()
            .any(|&(first, last)| first <= seq && seq <= last)
}
