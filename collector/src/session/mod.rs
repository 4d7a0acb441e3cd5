//! One session per agent stream: the gRPC edge of ingest.
//!
//! A session reads the agent's frames, checks them (Hello first, sequence
//! numbers from 1, strictly increasing unless the agent's Hello says it
//! may send out of order, declared series, sane strings and
//! timestamps, in both forms a batch may carry readings in: rows and
//! columns), resolves the stream's interned series ids to global ids
//! through the merger, and forwards whole batches. It owns only the stream's
//! interning table and its last sequence; it holds no store handle. Acks come back from the
//! merger through a `watch` channel, which never blocks the merger: each
//! carries the committed set (mark and the lowest `MAX_ACK_RANGES` ranges
//! above it), acks that grow it coalesce into one frame, and every replay
//! (a batch already committed) gets an Ack frame of its own, even when the
//! set does not grow, so a client that resends what the Welcome covered and
//! waits for its ack is answered. A stream that ends
//! (half-close) gets the answer to every batch it sent before its status.
//!
//! A bad frame ends the stream with INVALID_ARGUMENT naming the field;
//! nothing of that batch is forwarded, and other streams are unaffected.
//!
//! A stream keeps the [`Limits`] it started with. It watches the roles
//! (a `watch` the reload task sends on, `server/reload.rs`): when a reload
//! takes its agent off `allowed_agents`, the stream is drained (what it
//! sent is answered) and ended with PERMISSION_DENIED, as a new Hello of
//! that agent would be.
//!
//! What it may touch: the merger, through [`MergerHandle`] only; the stream
//! it serves; its counters in `crate::metrics::IngestMetrics` (streams open,
//! refusals by reason; atomics, per stream). Files: this one is the task (the stream loop, drain, acks);
//! `handshake` the Hello and Welcome; `check` the pure validation of a
//! batch; `readings` turns a checked batch into the merger's readings;
//! `series` the stream's interning table.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use tributary_proto::{limits, v1 as pb};

use crate::merger::{AckSender, IncomingBatch, MergerHandle, Refused, ResolveError, StreamAcks};
use crate::metrics::{IngestMetrics, StreamRefusal};
use crate::model::{NewReading, SeriesKey, now_ns};
use crate::roles::Roles;
use crate::store::CommittedSet;

mod check;
mod handshake;
mod readings;
mod series;

pub use crate::roles::PeerAuth;
pub use check::check_batch;
pub use handshake::{authorize, check_hello};
pub use readings::batch_readings;
pub use series::StreamSeries;

/// Limits a session enforces on what an agent sends. A stream keeps the
/// limits it started with; a reload's apply to the streams that start
/// after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest agent id, device, metric, label key or value, unit (bytes).
    pub max_name_len: usize,
    /// Longest string value or failure message (bytes).
    pub max_value_len: usize,
    /// Most series one stream may declare.
    pub max_series_per_stream: usize,
    /// Most series one agent may have in the store, across its streams
    /// (enforced by the merger, which counts them).
    pub max_series_per_agent: u64,
    /// Most series the merger keeps in memory (its series table, a cache
    /// of the store's).
    pub max_series_in_memory: usize,
    /// Most labels on one series.
    pub max_labels: usize,
    /// Most readings in one batch.
    pub max_readings_per_batch: usize,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// How long a session waits, at shutdown, for its last batches' acks.
    pub drain_timeout: Duration,
    /// How far a reading's timestamp may be ahead of the collector's clock,
    /// and the agent's clock (in its Hello) off in either direction, before
    /// readings are flagged as skewed. They are stored all the same.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_len: limits::MAX_NAME_BYTES,
            max_value_len: limits::MAX_VALUE_BYTES,
            max_series_per_stream: 1_000_000,
            max_series_per_agent: 1_000_000,
            max_series_in_memory: 1_000_000,
            max_labels: limits::MAX_LABELS,
            max_readings_per_batch: limits::MAX_READINGS_PER_BATCH,
            hello_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

/// Frames sent back to the agent.
pub type Outbound = mpsc::Sender<Result<pb::CollectorFrame, Status>>;

/// One agent stream.
pub struct Session {
    merger: MergerHandle,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    peer: String,
    auth: PeerAuth,
    /// The roles, which a reload may change: a stream whose agent leaves
    /// `allowed_agents` is ended (see [`Session::stream_loop`]).
    roles: watch::Receiver<Arc<Roles>>,
    metrics: Arc<IngestMetrics>,
}

/// Identity and progress of a stream after its Hello.
struct Stream {
    agent: Arc<str>,
    epoch: u64,
    /// This stream's id, unique in the process.
    session: u64,
    /// The agent's Hello said it reads ranges and may send out of order;
    /// else its batches are in sequence order, each a high-water mark.
    out_of_order: bool,
    last_seq: u64,
    /// Batches handed to the merger on this stream.
    forwarded: u64,
    /// Stream-local series id → global series id.
    series: StreamSeries,
    ack_tx: AckSender,
    /// The agent's clock (in its Hello) was off by more than the limit:
    /// every reading of this stream counts as skewed.
    clock_skewed: bool,
    /// A skewed reading was already logged on this stream (log once).
    skew_logged: bool,
}

impl Session {
    pub fn new(
        merger: MergerHandle,
        limits: Arc<Limits>,
        shutdown: CancellationToken,
        peer: String,
    ) -> Self {
        Session {
            merger,
            limits,
            shutdown,
            peer,
            auth: PeerAuth::Unverified,
            roles: watch::channel(Arc::default()).1,
            metrics: Arc::default(),
        }
    }

    /// Counts this session's stream and refusals in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<IngestMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets what TLS knows of the peer and the roles of identities (the
    /// operators, the optional allowlist of agent ids), as they are now and
    /// after each reload; by default any agent id is accepted.
    pub fn with_auth(mut self, auth: PeerAuth, roles: watch::Receiver<Arc<Roles>>) -> Self {
        self.auth = auth;
        self.roles = roles;
        self
    }

    /// Runs the stream to its end. Errors are sent to the agent as the
    /// stream's final status.
    pub async fn run(self, inbound: Streaming<pb::AgentFrame>, out: Outbound) {
        let peer = self.peer.clone();
        let metrics = self.metrics.clone();
        if let Err(status) = self.serve(inbound, &out).await {
            if status.code() == tonic::Code::InvalidArgument {
                metrics.refused(StreamRefusal::InvalidFrame);
                warn!(%peer, error = %status.message(), "stream rejected");
            } else {
                debug!(%peer, status = %status, "stream ended");
            }
            let _ = out.send(Err(status)).await;
        }
    }

    async fn serve(
        self,
        mut inbound: Streaming<pb::AgentFrame>,
        out: &Outbound,
    ) -> Result<(), Status> {
        let Some((mut stream, mut ack_rx)) = self.handshake(&mut inbound, out).await? else {
            return Ok(());
        };
        self.metrics.streams_opened.inc();
        self.metrics.streams_open.inc();
        let result = self
            .stream_loop(&mut stream, &mut inbound, &mut ack_rx, out)
            .await;
        self.metrics.streams_open.dec();
        self.merger.goodbye(stream.agent.clone(), stream.session);
        info!(agent = %stream.agent, peer = %self.peer, "agent stream ended");
        result
    }

    async fn stream_loop(
        &self,
        stream: &mut Stream,
        inbound: &mut Streaming<pb::AgentFrame>,
        ack_rx: &mut watch::Receiver<StreamAcks>,
        out: &Outbound,
    ) -> Result<(), Status> {
        // What Ack frames were sent for: at first what the Welcome said.
        let mut sent = ack_rx.borrow_and_update().clone();
        // Not marked seen: a reload since the service's receiver was made
        // (maybe between the Hello's check and here) is checked at once.
        let mut roles = self.roles.clone();
        // False once the roles' sender is gone (no reloads): `changed`
        // would then be ready at once, forever.
        let mut reloadable = true;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    return self.drain(stream, ack_rx, out, sent).await;
                }
                changed = roles.changed(), if reloadable => {
                    if changed.is_err() {
                        reloadable = false;
                        continue;
                    }
                    let allowed = roles.borrow_and_update().is_allowed_agent(&stream.agent);
                    if !allowed {
                        // A reload took the agent off `allowed_agents`: what
                        // it sent is answered, then the stream ends as a new
                        // one would be refused.
                        self.metrics.refused(StreamRefusal::Allowlist);
                        warn!(agent = %stream.agent, peer = %self.peer, "agent no longer in allowed_agents after a reload: ending its stream");
                        self.drain(stream, ack_rx, out, sent).await?;
                        return Err(Status::permission_denied(format!(
                            "hello.agent_id: {:?} is not an allowed agent (allowed_agents changed)",
                            &*stream.agent
                        )));
                    }
                }
                changed = ack_rx.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("collector shutting down"));
                    }
                    let now = ack_rx.borrow_and_update().clone();
                    let refused = now.refused.clone();
                    if send_acks(&mut sent, now, out).await.is_err() {
                        return Ok(());
                    }
                    if let Some(refused) = refused {
                        return Err(self.refusal(stream, refused));
                    }
                }
                frame = inbound.next() => match frame {
                    // The agent half-closed: ack what is in flight, then end.
                    None => return self.drain(stream, ack_rx, out, sent).await,
                    // A frame that could not be decoded (too large, not
                    // protobuf) or a reset: end with that status, so an agent
                    // that is still listening learns why.
                    Some(Err(status)) => {
                        debug!(agent = %stream.agent, %status, "inbound stream error");
                        return Err(status);
                    }
                    Some(Ok(frame)) => self.handle_frame(stream, frame).await?,
                },
            }
        }
    }

    /// Waits (bounded) until every forwarded batch is answered, sends the
    /// Ack frames still owed and ends the stream.
    async fn drain(
        &self,
        stream: &Stream,
        ack_rx: &mut watch::Receiver<StreamAcks>,
        out: &Outbound,
        mut sent: StreamAcks,
    ) -> Result<(), Status> {
        let target = stream.forwarded;
        let reached = tokio::time::timeout(
            self.limits.drain_timeout,
            ack_rx.wait_for(|acks| acks.batches >= target),
        )
        .await
        .map(|r| r.is_ok());
        let now = ack_rx.borrow().clone();
        let answered = now.batches;
        let acked = now.committed.to_string();
        let refused = now.refused.clone();
        let _ = send_acks(&mut sent, now, out).await;
        if let Some(refused) = refused {
            return Err(self.refusal(stream, refused));
        }
        if reached.is_err() {
            warn!(
                agent = %stream.agent,
                forwarded = target,
                answered,
                acked,
                "drain deadline passed before every batch was acked"
            );
        }
        if self.shutdown.is_cancelled() {
            Err(Status::unavailable("collector shutting down"))
        } else {
            Ok(())
        }
    }

    /// The end of a stream one of whose batches the merger refused (the
    /// message names the agent and the epoch).
    fn refusal(&self, stream: &Stream, refused: Refused) -> Status {
        match refused {
            Refused::RangeLimit(message) => {
                self.metrics.refused(StreamRefusal::RangeLimit);
                warn!(agent = %stream.agent, peer = %self.peer, error = %message, "batch refused: ending the stream");
                Status::resource_exhausted(message.to_string())
            }
            // The merger logged it (an operator must repair the row).
            Refused::BadEpochRow(message) => Status::internal(message.to_string()),
        }
    }

    async fn handle_frame(&self, stream: &mut Stream, frame: pb::AgentFrame) -> Result<(), Status> {
        let batch = match frame.frame {
            Some(pb::agent_frame::Frame::Batch(b)) => b,
            Some(pb::agent_frame::Frame::Hello(_)) => {
                return Err(Status::invalid_argument("hello: sent twice on one stream"));
            }
            None => return Err(Status::invalid_argument("frame: empty")),
        };
        // Validate everything before touching any state, so a bad batch
        // leaves nothing behind. In sequence order unless the stream may
        // send out of order.
        let previous = if stream.out_of_order {
            0
        } else {
            stream.last_seq
        };
        let new_series = check_batch(
            &batch,
            &stream.agent,
            previous,
            &stream.series,
            &self.limits,
        )?;
        if !new_series.is_empty() {
            let (new_ids, new_keys): (Vec<u32>, Vec<SeriesKey>) = new_series.into_iter().unzip();
            let ids = self.merger.resolve(new_keys).await.map_err(|e| match e {
                ResolveError::Gone(gone) => unavailable(gone),
                ResolveError::SeriesLimit(refused) => {
                    self.metrics.refused(StreamRefusal::SeriesLimit);
                    Status::resource_exhausted(refused.to_string())
                }
            })?;
            stream.series.extend(new_ids.into_iter().zip(ids));
        }
        let seq = batch.seq;
        let (dropped, last_seq, resent) = (batch.dropped, batch.last_seq, batch.resent);
        let floor = batch.oldest_spooled;
        let readings = batch_readings(batch, &stream.series);
        let skewed_readings = self.count_skewed(stream, &readings);
        stream.last_seq = seq;
        self.merger
            .batch(IncomingBatch {
                agent: stream.agent.clone(),
                epoch: stream.epoch,
                seq,
                high_water: !stream.out_of_order,
                floor,
                dropped: clamp_counter(dropped),
                last_seq: clamp_counter(last_seq),
                resent,
                skewed_readings,
                received_ns: now_ns(),
                readings,
                ack: stream.ack_tx.clone(),
            })
            .await
            .map_err(unavailable)?;
        stream.forwarded += 1;
        Ok(())
    }

    fn max_skew_ns(&self) -> u64 {
        u64::try_from(self.limits.max_clock_skew.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Readings of a batch whose time is not to be trusted: all of them when
    /// the agent's clock is off, else those too far in the future.
    fn count_skewed(&self, stream: &mut Stream, readings: &[NewReading]) -> u64 {
        if stream.clock_skewed {
            return readings.len() as u64;
        }
        let limit = now_ns().saturating_add(i64::try_from(self.max_skew_ns()).unwrap_or(i64::MAX));
        let ahead = readings.iter().filter(|r| r.ts_ns > limit);
        let n = ahead.clone().count() as u64;
        if n > 0 && !stream.skew_logged {
            stream.skew_logged = true;
            let max_ts = ahead.map(|r| r.ts_ns).max().unwrap_or(limit);
            warn!(
                agent = %stream.agent,
                ahead = %format_offset(max_ts.saturating_sub(now_ns())),
                "readings time-stamped in the future: stored but counted as skewed (logged once per stream)"
            );
        }
        n
    }
}

/// `+3m12s` / `-2h` style offset for logs.
fn format_offset(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let d = Duration::from_secs(ns.unsigned_abs() / 1_000_000_000);
    format!("{sign}{}", humantime::format_duration(d))
}

/// A counter reported by the agent, kept within what the stores hold
/// (signed 64 bit) and summable per agent without overflow.
fn clamp_counter(n: u64) -> u64 {
    n.min(i64::MAX as u64 / 1024)
}

/// Sends the Ack frames that `now` owes beyond `sent`: one per replay
/// answered since (each resend is owed its own ack, though the set may not
/// grow), else one when the committed set grew (commits coalesce). Every
/// frame carries the newest committed set. Errs when the agent is gone.
async fn send_acks(sent: &mut StreamAcks, now: StreamAcks, out: &Outbound) -> Result<(), ()> {
    let replays = now.replays.saturating_sub(sent.replays);
    // The set only grows: a different one is a larger one.
    let grew = !Arc::ptr_eq(&now.committed, &sent.committed) && now.committed != sent.committed;
    let frames = replays.max(u64::from(grew));
    *sent = now;
    if frames == 0 {
        return Ok(());
    }
    let frame = ack_frame(&sent.committed);
    for _ in 0..frames {
        out.send(Ok(frame.clone())).await.map_err(|_| ())?;
    }
    Ok(())
}

/// An Ack frame carrying `set`: its mark and its lowest ranges.
fn ack_frame(set: &CommittedSet) -> pb::CollectorFrame {
    pb::CollectorFrame {
        frame: Some(pb::collector_frame::Frame::Ack(pb::Ack {
            seq: set.mark(),
            ranges: wire_ranges(set),
        })),
    }
}

/// The lowest [`limits::MAX_ACK_RANGES`] ranges of `set`, as the wire
/// carries them (a Welcome or an Ack).
pub(super) fn wire_ranges(set: &CommittedSet) -> Vec<pb::SeqRange> {
    set.lowest_ranges(limits::MAX_ACK_RANGES)
        .iter()
        .map(|&(first, last)| pb::SeqRange { first, last })
        .collect()
}

fn unavailable(_: crate::merger::MergerGone) -> Status {
    Status::unavailable("collector shutting down: merger stopped")
}
