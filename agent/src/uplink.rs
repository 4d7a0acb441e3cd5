//! The uplink: owns the agent's spool and its one stream to a collector.
//!
//! Readings from the scheduler are appended to an open batch in memory; a
//! batch is sealed when it is full or old enough and appended to the spool,
//! which assigns its sequence number and makes it durable. From then on the
//! readings count as taken. Batches stay in the spool until the collector
//! acks them. On every (re)connect the agent says Hello and resends from the
//! oldest unacked batch at once, with a fresh series interning table; the
//! Welcome then says what the collector has committed for this spool's epoch,
//! and the spool drops that (a batch the collector already has is acked
//! again, not stored). Connection attempts run in their own task so intake never stops
//! while a collector is unreachable.
//!
//! Batches go out strictly in sequence order: the collector's committed
//! sequence is a high-water mark, so a newer batch must never overtake an
//! older one. After an outage the backlog therefore drains first, as fast as
//! the collector commits it, while new readings keep being spooled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{debug, error, info, warn};

use tributary_proto::v1 as pb;

use crate::reading::{FailureKind, Reading, Value, now_ns};
use crate::spool::{Appended, Spool, SpoolError};

/// Settings of the uplink.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub agent_id: String,
    /// Collector URLs, tried in order, moving on after a failure.
    pub collectors: Vec<String>,
    pub batch_max_readings: usize,
    pub batch_max_delay: Duration,
    /// How long to wait for the last acks at shutdown.
    pub shutdown_timeout: Duration,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// HTTP/2 keepalive: ping interval and how long to wait for the answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// TLS towards the collector (`https://` URLs).
    pub tls: Option<crate::config::TlsConfig>,
}

impl UplinkConfig {
    pub fn new(agent_id: String, collectors: Vec<String>) -> Self {
        UplinkConfig {
            agent_id,
            collectors,
            batch_max_readings: 1000,
            batch_max_delay: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// Counters the uplink exposes (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UplinkStats {
    pub sealed_batches: u64,
    pub acked_seq: u64,
    pub dropped_readings: u64,
    pub connects: u64,
    /// Batches sent again on a later stream (or after a restart).
    pub resent_batches: u64,
    /// Readings lost because the spool could not be written.
    pub spool_errors: u64,
    /// Unacked batches a Welcome reported as already committed (their ack
    /// was lost); they are not sent again.
    pub confirmed_by_welcome: u64,
}

/// An open stream to one collector.
struct Conn {
    url: String,
    out: mpsc::Sender<pb::AgentFrame>,
    inbound: Streaming<pb::CollectorFrame>,
    /// Sequence of the next batch to send on this stream.
    next_send: u64,
    /// Series declared on this stream, by content.
    interned: HashMap<DeclKey, u32>,
}

/// Content of a series declaration, for per-stream interning.
type DeclKey = (String, String, Vec<(String, String)>, String);

type Connecting = JoinHandle<Result<Conn, String>>;

/// The uplink actor. Create with [`Uplink::new`], run with [`Uplink::run`].
pub struct Uplink {
    config: Arc<UplinkConfig>,
    intake: mpsc::Receiver<Vec<Reading>>,
    spool: Spool,
    /// The batch being filled (not yet taken).
    open: Vec<Reading>,
    open_since: Option<Instant>,
    /// The spool is full under the `block` policy: intake pauses.
    blocked: bool,
    /// Records at or below this were sent by an earlier process or stream.
    sent_before: u64,
    /// Highest sequence sent on any stream by this process.
    max_sent: u64,
    /// Oldest unacked sequence when streams ended as INVALID_ARGUMENT or
    /// OUT_OF_RANGE, and how many times in a row.
    rejections: Option<(u64, u32)>,
    stats: UplinkStats,
    stats_tx: tokio::sync::watch::Sender<UplinkStats>,
}

impl Uplink {
    /// `intake` receives one `Vec` per poll from the scheduler; `spool` is
    /// the opened spool.
    pub fn new(
        config: UplinkConfig,
        intake: mpsc::Receiver<Vec<Reading>>,
        spool: Spool,
    ) -> (Self, tokio::sync::watch::Receiver<UplinkStats>) {
        let (stats_tx, stats_rx) = tokio::sync::watch::channel(UplinkStats::default());
        let sent_before = spool.last_seq();
        let stats = UplinkStats {
            dropped_readings: spool.dropped(),
            ..Default::default()
        };
        (
            Uplink {
                config: Arc::new(config),
                intake,
                spool,
                open: Vec::new(),
                open_since: None,
                blocked: false,
                sent_before,
                max_sent: 0,
                rejections: None,
                stats,
                stats_tx,
            },
            stats_rx,
        )
    }

    /// Runs until the intake closes (the scheduler stopped) and everything is
    /// acked, or `shutdown_timeout` after the intake closed.
    pub async fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut connecting: Option<Connecting> = None;
        let mut attempt: u32 = 0;
        // Agents spread over the collectors by a stable hash of their id,
        // and come back to the same one after a restart; on failure they
        // move on down the list.
        let mut url_index = (fnv1a64(self.config.agent_id.as_bytes())
            % self.config.collectors.len().max(1) as u64) as usize;
        let mut retry_at = Instant::now();
        let mut intake_open = true;
        let mut give_up_at: Option<Instant> = None;
        let flush_tick = self.config.batch_max_delay.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(flush_tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if !intake_open {
                self.seal();
                if self.open.is_empty() && self.spool.first_unacked().is_none() {
                    info!("uplink: everything acked; stopping");
                    break;
                }
                if give_up_at.is_some_and(|t| Instant::now() >= t) {
                    warn!(
                        unacked_batches = self.spool.pending(),
                        open_readings = self.open.len(),
                        "uplink: shutdown deadline passed; unacked batches stay in the spool"
                    );
                    break;
                }
            }
            if conn.is_none() {
                // Nothing is in flight without a stream: every unacked
                // record may be dropped to make room again.
                self.spool.set_in_flight(0);
            }
            if conn.is_none() && connecting.is_none() && Instant::now() >= retry_at {
                let url = self.config.collectors[url_index % self.config.collectors.len()].clone();
                let config = self.config.clone();
                let hello = self.hello();
                // The whole handshake is bounded: a collector behind a dead
                // network may accept TCP and then never answer.
                let limit =
                    config.connect_timeout + config.keepalive_interval + config.keepalive_timeout;
                connecting = Some(tokio::spawn(async move {
                    match tokio::time::timeout(limit, connect(url.clone(), hello, config)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("collector {url}: no welcome within {limit:?}")),
                    }
                }));
            }
            let can_send = conn
                .as_ref()
                .is_some_and(|c| self.spool.last_seq() >= c.next_send);
            let sender = conn.as_ref().filter(|_| can_send).map(|c| c.out.clone());

            tokio::select! {
                readings = self.intake.recv(), if intake_open && !self.blocked => match readings {
                    Some(r) => self.push(r),
                    None => {
                        intake_open = false;
                        give_up_at = Some(Instant::now() + self.config.shutdown_timeout);
                    }
                },
                _ = ticker.tick() => {
                    if self.blocked
                        || self.open_since.is_some_and(|t| t.elapsed() >= self.config.batch_max_delay)
                    {
                        self.seal();
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if conn.is_none() && connecting.is_none() => {}
                _ = tokio::time::sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {}
                done = await_connect(&mut connecting) => {
                    connecting = None;
                    let result = done.unwrap_or_else(|e| Err(format!("connect task failed: {e}")));
                    match result {
                        Ok(mut c) => {
                            // Resend from the oldest unacked batch at once,
                            // without waiting for the Welcome: it saves a
                            // round trip, and whatever the collector already
                            // has is acked again, not stored.
                            debug!(url = %c.url, "stream open");
                            c.next_send = self
                                .spool
                                .first_unacked()
                                .unwrap_or(self.spool.last_seq() + 1);
                            self.spool.set_in_flight(0);
                            self.sent_before = self.sent_before.max(self.max_sent);
                            self.stats.connects += 1;
                            attempt = 0;
                            conn = Some(c);
                        }
                        Err(e) => {
                            attempt += 1;
                            url_index += 1;
                            let delay = backoff(&self.config, attempt);
                            warn!(error = %e, retry_in = ?delay, "cannot reach collector");
                            retry_at = Instant::now() + delay;
                        }
                    }
                }
                permit = reserve(sender) => {
                    let sent = match (permit, conn.as_mut()) {
                        (Ok(permit), Some(c)) => match self.encode_next(c) {
                            Ok(Some(frame)) => {
                                permit.send(frame);
                                true
                            }
                            Ok(None) => true,
                            Err(e) => {
                                error!(error = %e, "spool read failed; reconnecting to resend");
                                false
                            }
                        },
                        _ => {
                            warn!("collector stream closed while sending");
                            false
                        }
                    };
                    if !sent {
                        conn = None;
                        attempt = 1;
                        retry_at = Instant::now() + backoff(&self.config, attempt);
                    }
                }
                frame = next_frame(&mut conn) => {
                    match frame {
                        Some(Ok(pb::CollectorFrame { frame: Some(pb::collector_frame::Frame::Ack(a)) })) => {
                            self.acked(a.seq);
                        }
                        Some(Ok(pb::CollectorFrame { frame: Some(pb::collector_frame::Frame::Welcome(w)) })) => {
                            if let Some(c) = conn.as_mut() {
                                self.welcome(c, w.committed_seq);
                            }
                        }
                        Some(Ok(other)) => debug!(frame = ?other, "unexpected collector frame ignored"),
                        Some(Err(status)) => {
                            warn!(code = %code_name(status.code()), message = %status.message(), "collector stream ended");
                            self.rejected(&status);
                            conn = None;
                            attempt = 1;
                            retry_at = Instant::now() + backoff(&self.config, attempt);
                        }
                        None => {
                            warn!("collector closed the stream");
                            conn = None;
                            attempt = 1;
                            retry_at = Instant::now() + backoff(&self.config, attempt);
                        }
                    }
                }
            }
            self.stats_tx.send_replace(self.stats.clone());
        }
        if let Some(c) = connecting {
            c.abort();
        }
        self.stats_tx.send_replace(self.stats.clone());
    }

    fn push(&mut self, readings: Vec<Reading>) {
        if self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        self.open.extend(readings);
        if self.open.len() >= self.config.batch_max_readings {
            self.seal();
        }
    }

    /// Appends the open batch to the spool: from here on it is taken.
    fn seal(&mut self) {
        // A poll can bring more readings than a batch may hold (a large
        // scrape): seal them as several batches, so the collector never
        // sees a batch over its limit.
        while !self.open.is_empty() {
            let n = self.open.len().min(self.config.batch_max_readings.max(1));
            let (bytes, count) = encode_batch(&self.open[..n]);
            match self.spool.append(&bytes, count) {
                Ok(Appended::Stored(_)) => {
                    self.stats.sealed_batches += 1;
                }
                // The spool counted them as dropped.
                Ok(Appended::Dropped) => {}
                // `block`: keep the readings and stop taking more until acks
                // make room; the scheduler's polls wait meanwhile.
                Ok(Appended::Full) => {
                    if !self.blocked {
                        warn!(
                            readings = self.open.len(),
                            "spool full: intake paused until the collector acks"
                        );
                    }
                    self.blocked = true;
                    self.stats.dropped_readings = self.spool.dropped();
                    return;
                }
                Err(e) => {
                    error!(error = %e, readings = count, "spool append failed; readings lost (counted as dropped)");
                    self.stats.spool_errors += u64::from(count);
                    if let Err(e) = self.spool.count_lost(u64::from(count)) {
                        error!(error = %e, "cannot record the loss in the spool either");
                    }
                }
            }
            self.open.drain(..n);
        }
        self.open_since = None;
        self.blocked = false;
        self.stats.dropped_readings = self.spool.dropped();
    }

    fn acked(&mut self, seq: u64) {
        self.stats.acked_seq = self.stats.acked_seq.max(seq);
        if let Err(e) = self.spool.ack(seq) {
            error!(error = %e, seq, "spool truncation failed");
        }
        if self.blocked {
            self.seal();
        }
    }

    /// The stream ended with `code`. A batch the collector refuses as
    /// invalid would be resent forever and hold up everything after it
    /// (batches go in order): when the stream ends that way three times in a
    /// row with the same oldest unacked batch, that batch is given up on and
    /// its readings are counted as dropped.
    fn rejected(&mut self, status: &tonic::Status) {
        // Only a refusal of a batch's content counts (the collector names
        // the field, `batch.…`), or a frame too large to decode.
        let refused = match status.code() {
            tonic::Code::InvalidArgument => status.message().starts_with("batch"),
            tonic::Code::OutOfRange => true,
            _ => false,
        };
        if !refused {
            self.rejections = None;
            return;
        }
        let Some(front) = self.spool.first_unacked() else {
            return;
        };
        let count = match self.rejections {
            Some((seq, n)) if seq == front => n + 1,
            _ => 1,
        };
        self.rejections = Some((front, count));
        if count >= 3 {
            match self.spool.drop_front(front) {
                Ok(readings) => error!(
                    seq = front,
                    readings, "the collector refuses this batch for good; dropped it (counted)"
                ),
                Err(e) => error!(seq = front, error = %e, "cannot drop a refused batch"),
            }
            self.rejections = None;
            self.stats.dropped_readings = self.spool.dropped();
        }
    }

    /// The collector's Welcome: it has committed everything up to
    /// `committed` for this epoch.
    fn welcome(&mut self, c: &mut Conn, committed: u64) {
        // Batches sent earlier whose ack never came but which the collector
        // did commit: the Welcome acks them.
        let confirmed = self.spool.unacked_through(committed);
        self.stats.confirmed_by_welcome += confirmed;
        info!(url = %c.url, committed, confirmed, "connected to collector");
        if committed > self.spool.last_seq() {
            warn!(
                committed,
                last_seq = self.spool.last_seq(),
                "collector has committed sequences this spool does not remember; numbering continues above them"
            );
            self.spool.advance_past(committed);
        }
        self.acked(committed);
        c.next_send = c.next_send.max(committed.saturating_add(1));
    }

    fn hello(&self) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: self.config.agent_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                epoch: self.spool.epoch(),
                agent_time_ns: now_ns(),
                dropped: self.spool.dropped(),
                last_seq: self.spool.last_seq(),
            })),
        }
    }

    /// Reads the next unsent batch for `c` from the spool, re-interns its
    /// series for this stream, and advances the stream's cursor.
    fn encode_next(&mut self, c: &mut Conn) -> Result<Option<pb::AgentFrame>, SpoolError> {
        let Some(record) = self.spool.read_from(c.next_send)? else {
            c.next_send = self.spool.last_seq() + 1;
            return Ok(None);
        };
        c.next_send = record.seq + 1;
        self.spool.set_in_flight(record.seq);
        let resent = record.seq <= self.sent_before;
        if resent {
            self.stats.resent_batches += 1;
        }
        self.max_sent = self.max_sent.max(record.seq);
        let mut batch = match pb::Batch::decode(record.batch.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                // The CRC matched, so this is a bug, not a disk error; skip
                // the record rather than wedge the stream.
                error!(seq = record.seq, error = %e, "spooled batch does not decode; skipped");
                return Ok(None);
            }
        };
        // Batch-local ids → stream ids.
        let mut local_to_stream: HashMap<u32, u32> = HashMap::with_capacity(batch.series.len());
        let mut decls = Vec::new();
        for mut decl in std::mem::take(&mut batch.series) {
            let mut labels: Vec<(String, String)> = decl
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let key = (
                decl.device.clone(),
                decl.metric.clone(),
                labels,
                decl.unit.clone(),
            );
            let next_id = c.interned.len() as u32 + 1;
            let id = *c.interned.entry(key).or_insert_with(|| {
                let local = decl.id;
                decl.id = next_id;
                decls.push(decl.clone());
                decl.id = local;
                next_id
            });
            local_to_stream.insert(decl.id, id);
        }
        for r in &mut batch.readings {
            r.series = local_to_stream.get(&r.series).copied().unwrap_or(0);
        }
        batch.series = decls;
        batch.seq = record.seq;
        batch.resent = resent;
        batch.dropped = self.spool.dropped();
        batch.last_seq = self.spool.last_seq();
        Ok(Some(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Batch(batch)),
        }))
    }
}

/// Encodes readings as a spooled batch: series declared inside the batch
/// with batch-local ids, so a record can be sent on any stream.
fn encode_batch(readings: &[Reading]) -> (Vec<u8>, u32) {
    let mut ids: HashMap<usize, u32> = HashMap::new();
    let mut series = Vec::new();
    let mut out = Vec::with_capacity(readings.len());
    for r in readings {
        let addr = Arc::as_ptr(&r.series) as usize;
        let next = ids.len() as u32 + 1;
        let id = *ids.entry(addr).or_insert_with(|| {
            series.push(pb::SeriesDecl {
                id: next,
                device: clip(&r.series.device, MAX_NAME_BYTES),
                metric: clip(&r.series.metric, MAX_NAME_BYTES),
                labels: r
                    .series
                    .labels
                    .iter()
                    .take(MAX_LABELS)
                    .map(|(k, v)| (clip(k, MAX_NAME_BYTES), clip(v, MAX_NAME_BYTES)))
                    .collect(),
                unit: clip(&r.series.unit, MAX_NAME_BYTES),
            });
            next
        });
        out.push(pb::Reading {
            series: id,
            ts_ns: r.ts_ns,
            value: Some(encode_value(&r.value)),
        });
    }
    let batch = pb::Batch {
        seq: 0,
        series,
        readings: out,
        dropped: 0,
        resent: false,
        last_seq: 0,
    };
    (batch.encode_to_vec(), readings.len() as u32)
}

/// Waits for the connect task, or forever when there is none.
async fn await_connect(
    connecting: &mut Option<Connecting>,
) -> Result<Result<Conn, String>, tokio::task::JoinError> {
    match connecting.as_mut() {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Reserves room for one frame on the stream, or waits forever when there
/// is nothing to send.
async fn reserve(
    sender: Option<mpsc::Sender<pb::AgentFrame>>,
) -> Result<mpsc::OwnedPermit<pb::AgentFrame>, mpsc::error::SendError<()>> {
    match sender {
        Some(tx) => tx.reserve_owned().await,
        None => std::future::pending().await,
    }
}

/// The next frame from the collector, or waits forever when not connected.
async fn next_frame(conn: &mut Option<Conn>) -> Option<Result<pb::CollectorFrame, tonic::Status>> {
    match conn.as_mut() {
        Some(c) => c.inbound.next().await,
        None => std::future::pending().await,
    }
}

fn encode_value(v: &Value) -> pb::reading::Value {
    use pb::reading::Value as V;
    match v {
        Value::F64(x) => V::F64(*x),
        Value::I64(x) => V::I64(*x),
        Value::Bool(x) => V::Bool(*x),
        Value::Str(x) => V::Str(clip(x, MAX_VALUE_BYTES)),
        Value::Failed { kind, message } => V::Failure(pb::Failure {
            status: match kind {
                FailureKind::Timeout => pb::PollStatus::Timeout as i32,
                FailureKind::Error => pb::PollStatus::Error as i32,
            },
            message: clip(message, MAX_VALUE_BYTES),
        }),
    }
}

/// Longest name (device, metric, label, unit) the collector accepts by
/// default, in bytes.
const MAX_NAME_BYTES: usize = 256;
/// Longest string value or failure message it accepts by default.
const MAX_VALUE_BYTES: usize = 4096;
/// Most labels on one series it accepts by default (the first ones, in
/// name order, are kept).
const MAX_LABELS: usize = 32;

/// `s`, cut at a character boundary to at most `max` bytes. The collector
/// rejects a batch with a longer string, and a batch it rejects would be
/// resent forever, so the agent cuts before it spools.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// FNV-1a, 64 bit, followed by the MurmurHash3 finalizer: a hash that stays
/// the same across Rust versions and platforms (unlike `DefaultHasher`).
/// Without the finalizer the low bits of FNV-1a follow the last byte's (ids
/// `edge-0`, `edge-2`, ... would all pick the same collector of two).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Exponential backoff with full jitter, between the configured bounds.
fn backoff(config: &UplinkConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << attempt.min(16))
        .min(config.backoff_max);
    let jittered = rand::rng().random_range(
        config.backoff_min.as_nanos()..=exp.as_nanos().max(config.backoff_min.as_nanos()),
    );
    Duration::from_nanos(jittered.min(u64::MAX as u128) as u64)
}

/// Opens a stream to `url`, sends `hello`, and waits for the Welcome.
async fn connect(
    url: String,
    hello: pb::AgentFrame,
    config: Arc<UplinkConfig>,
) -> Result<Conn, String> {
    let endpoint = crate::tls::endpoint(&url, config.tls.as_ref())
        .map_err(|e| format!("collector {url}: {e}"))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("collector {url}: {}", error_chain(&e)))?;
    let mut client =
        pb::ingest_client::IngestClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello)
        .await
        .map_err(|_| format!("collector {url}: stream closed before hello"))?;
    let response = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("collector {url}: {}: {}", code_name(s.code()), s.message()))?;
    Ok(Conn {
        url,
        out: tx,
        inbound: response.into_inner(),
        next_send: 0,
        interned: HashMap::new(),
    })
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").to_lowercase()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::fnv1a64;

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        assert_eq!(super::clip("abc", 5), "abc");
        assert_eq!(super::clip("abcdef", 4), "abcd");
        // 'é' is two bytes: never cut inside it.
        assert_eq!(super::clip("aé", 2), "a");
    }

    #[test]
    fn agents_spread_over_collectors() {
        for n in [2u64, 3, 5] {
            let mut per = vec![0; n as usize];
            for i in 0..1000 {
                per[(fnv1a64(format!("edge-{i}").as_bytes()) % n) as usize] += 1;
            }
            // Each collector gets a fair share: 1000 / n, within 30 %
            // (more than 4 standard deviations for these sizes).
            for c in &per {
                assert!(*c * n > 700 && *c * n < 1300, "{n} collectors: {per:?}");
            }
        }
        // Stable across runs and platforms.
        assert_eq!(fnv1a64(b"edge-1"), fnv1a64(b"edge-1"));
    }
}
