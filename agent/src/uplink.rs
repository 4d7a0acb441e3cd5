//! The uplink: owns the agent's buffer of unacknowledged batches and its one
//! stream to a collector.
//!
//! Readings from the scheduler are appended to an open batch; a batch is
//! sealed (and gets the next sequence number) when it is full or old enough.
//! Sealed batches stay in the buffer until the collector acks them. On every
//! (re)connect the agent says Hello, the Welcome says what the collector has
//! committed for this epoch, the buffer drops that, and everything else is
//! sent again with a fresh series interning table. Connection attempts run in
//! their own task so intake never stops while a collector is unreachable.
//!
//! The buffer is in memory and bounded by readings; when full the oldest
//! batches are dropped and counted, and the count is reported to the
//! collector in every Hello and Batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{debug, info, warn};

use tributary_proto::v1 as pb;

use crate::reading::{FailureKind, Reading, SeriesKey, Value, now_ns};

/// Settings of the uplink.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub agent_id: String,
    /// Collector URLs, tried in order, moving on after a failure.
    pub collectors: Vec<String>,
    pub batch_max_readings: usize,
    pub batch_max_delay: Duration,
    /// Unacknowledged readings kept before the oldest are dropped.
    pub buffer_max_readings: usize,
    /// How long to wait for the last acks at shutdown.
    pub shutdown_timeout: Duration,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl UplinkConfig {
    pub fn new(agent_id: String, collectors: Vec<String>) -> Self {
        UplinkConfig {
            agent_id,
            collectors,
            batch_max_readings: 1000,
            batch_max_delay: Duration::from_millis(100),
            buffer_max_readings: 1_000_000,
            shutdown_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Counters the uplink exposes (for `check`, logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UplinkStats {
    pub sealed_batches: u64,
    pub acked_seq: u64,
    pub dropped_readings: u64,
    pub connects: u64,
    /// Batches sent more than once (resent after a reconnect).
    pub resent_batches: u64,
}

struct SealedBatch {
    seq: u64,
    readings: Vec<Reading>,
    /// Sent at least once on some stream.
    sent: bool,
}

/// Unacknowledged batches, oldest first.
struct Buffer {
    epoch: u64,
    batches: VecDeque<SealedBatch>,
    readings: usize,
    max_readings: usize,
    next_seq: u64,
    open: Vec<Reading>,
    open_since: Option<Instant>,
    stats: UplinkStats,
}

impl Buffer {
    fn push(&mut self, readings: Vec<Reading>, max_batch: usize) {
        if self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        self.open.extend(readings);
        if self.open.len() >= max_batch {
            self.seal();
        }
    }

    fn seal(&mut self) {
        self.open_since = None;
        if self.open.is_empty() {
            return;
        }
        let readings = std::mem::take(&mut self.open);
        self.readings += readings.len();
        self.next_seq += 1;
        self.stats.sealed_batches += 1;
        self.batches.push_back(SealedBatch {
            seq: self.next_seq,
            readings,
            sent: false,
        });
        while self.readings > self.max_readings && self.batches.len() > 1 {
            if let Some(old) = self.batches.pop_front() {
                self.readings -= old.readings.len();
                self.stats.dropped_readings += old.readings.len() as u64;
                warn!(
                    seq = old.seq,
                    readings = old.readings.len(),
                    "buffer full: dropped the oldest batch"
                );
            }
        }
    }

    fn ack(&mut self, seq: u64) {
        self.stats.acked_seq = self.stats.acked_seq.max(seq);
        while self.batches.front().is_some_and(|b| b.seq <= seq) {
            if let Some(b) = self.batches.pop_front() {
                self.readings -= b.readings.len();
            }
        }
    }

    fn is_drained(&self) -> bool {
        self.batches.is_empty() && self.open.is_empty()
    }
}

/// An open stream to one collector.
struct Conn {
    url: String,
    out: mpsc::Sender<pb::AgentFrame>,
    inbound: Streaming<pb::CollectorFrame>,
    /// Sequence of the next batch to send on this stream.
    next_send: u64,
    /// Series already declared on this stream, by `Arc` address. The map
    /// holds the `Arc`, so an address cannot be reused while it is a key.
    interned: HashMap<usize, (Arc<SeriesKey>, u32)>,
}

type Connecting = JoinHandle<Result<(Conn, u64), String>>;

/// The uplink actor. Create with [`Uplink::new`], run with [`Uplink::run`].
pub struct Uplink {
    config: UplinkConfig,
    intake: mpsc::Receiver<Vec<Reading>>,
    buffer: Buffer,
    stats_tx: tokio::sync::watch::Sender<UplinkStats>,
}

impl Uplink {
    /// `intake` receives one `Vec` per poll from the scheduler.
    pub fn new(
        config: UplinkConfig,
        intake: mpsc::Receiver<Vec<Reading>>,
    ) -> (Self, tokio::sync::watch::Receiver<UplinkStats>) {
        let (stats_tx, stats_rx) = tokio::sync::watch::channel(UplinkStats::default());
        let buffer = Buffer {
            epoch: rand::rng().random(),
            batches: VecDeque::new(),
            readings: 0,
            max_readings: config.buffer_max_readings,
            next_seq: 0,
            open: Vec::new(),
            open_since: None,
            stats: UplinkStats::default(),
        };
        (
            Uplink {
                config,
                intake,
                buffer,
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
        let mut url_index = 0usize;
        let mut retry_at = Instant::now();
        let mut intake_open = true;
        let mut give_up_at: Option<Instant> = None;
        let flush_tick = self.config.batch_max_delay.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(flush_tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if !intake_open {
                self.buffer.seal();
                if self.buffer.is_drained() {
                    info!("uplink: everything acked; stopping");
                    break;
                }
                if give_up_at.is_some_and(|t| Instant::now() >= t) {
                    warn!(
                        unacked_batches = self.buffer.batches.len(),
                        "uplink: shutdown deadline passed with unacked batches"
                    );
                    break;
                }
            }
            if conn.is_none() && connecting.is_none() && Instant::now() >= retry_at {
                let url = self.config.collectors[url_index % self.config.collectors.len()].clone();
                connecting = Some(tokio::spawn(connect(url, self.hello())));
            }
            let can_send = conn
                .as_ref()
                .is_some_and(|c| self.buffer.batches.iter().any(|b| b.seq >= c.next_send));
            let sender = conn.as_ref().filter(|_| can_send).map(|c| c.out.clone());

            tokio::select! {
                readings = self.intake.recv(), if intake_open => match readings {
                    Some(r) => self.buffer.push(r, self.config.batch_max_readings),
                    None => {
                        intake_open = false;
                        give_up_at = Some(Instant::now() + self.config.shutdown_timeout);
                    }
                },
                _ = ticker.tick() => {
                    if self.buffer.open_since.is_some_and(|t| t.elapsed() >= self.config.batch_max_delay) {
                        self.buffer.seal();
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if conn.is_none() && connecting.is_none() => {}
                _ = tokio::time::sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {}
                done = await_connect(&mut connecting) => {
                    connecting = None;
                    let result = done.unwrap_or_else(|e| Err(format!("connect task failed: {e}")));
                    match result {
                        Ok((mut c, committed)) => {
                            info!(url = %c.url, committed, "connected to collector");
                            self.buffer.ack(committed);
                            c.next_send = self
                                .buffer
                                .batches
                                .front()
                                .map(|b| b.seq)
                                .unwrap_or(self.buffer.next_seq + 1);
                            self.buffer.stats.connects += 1;
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
                    match (permit, conn.as_mut()) {
                        (Ok(permit), Some(c)) => {
                            if let Some(frame) = self.encode_next(c) {
                                permit.send(frame);
                            }
                        }
                        _ => {
                            warn!("collector stream closed while sending");
                            conn = None;
                            attempt = 1;
                            retry_at = Instant::now() + backoff(&self.config, attempt);
                        }
                    }
                }
                frame = next_frame(&mut conn) => {
                    match frame {
                        Some(Ok(pb::CollectorFrame { frame: Some(pb::collector_frame::Frame::Ack(a)) })) => {
                            self.buffer.ack(a.seq);
                        }
                        Some(Ok(other)) => debug!(frame = ?other, "unexpected collector frame ignored"),
                        Some(Err(status)) => {
                            warn!(code = %code_name(status.code()), message = %status.message(), "collector stream ended");
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
            self.stats_tx.send_replace(self.buffer.stats.clone());
        }
        if let Some(c) = connecting {
            c.abort();
        }
        self.stats_tx.send_replace(self.buffer.stats.clone());
    }

    fn hello(&self) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: self.config.agent_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                epoch: self.buffer.epoch,
                agent_time_ns: now_ns(),
                dropped: self.buffer.stats.dropped_readings,
            })),
        }
    }

    /// Encodes the next unsent batch for `c` and advances its cursor.
    fn encode_next(&mut self, c: &mut Conn) -> Option<pb::AgentFrame> {
        let batch = self
            .buffer
            .batches
            .iter_mut()
            .find(|b| b.seq >= c.next_send)?;
        c.next_send = batch.seq + 1;
        if batch.sent {
            self.buffer.stats.resent_batches += 1;
        }
        batch.sent = true;
        let mut series = Vec::new();
        let mut readings = Vec::with_capacity(batch.readings.len());
        for r in &batch.readings {
            let addr = Arc::as_ptr(&r.series) as usize;
            let next_id = c.interned.len() as u32 + 1;
            let id = match c.interned.get(&addr) {
                Some((_, id)) => *id,
                None => {
                    c.interned.insert(addr, (r.series.clone(), next_id));
                    series.push(pb::SeriesDecl {
                        id: next_id,
                        device: r.series.device.clone(),
                        metric: r.series.metric.clone(),
                        labels: r
                            .series
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        unit: r.series.unit.clone(),
                    });
                    next_id
                }
            };
            readings.push(pb::Reading {
                series: id,
                ts_ns: r.ts_ns,
                value: Some(encode_value(&r.value)),
            });
        }
        Some(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Batch(pb::Batch {
                seq: batch.seq,
                series,
                readings,
                dropped: self.buffer.stats.dropped_readings,
            })),
        })
    }
}

/// Waits for the connect task, or forever when there is none.
async fn await_connect(
    connecting: &mut Option<Connecting>,
) -> Result<Result<(Conn, u64), String>, tokio::task::JoinError> {
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
        Value::Str(x) => V::Str(x.clone()),
        Value::Failed { kind, message } => V::Failure(pb::Failure {
            status: match kind {
                FailureKind::Timeout => pb::PollStatus::Timeout as i32,
                FailureKind::Error => pb::PollStatus::Error as i32,
            },
            message: message.clone(),
        }),
    }
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
async fn connect(url: String, hello: pb::AgentFrame) -> Result<(Conn, u64), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("collector {url}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
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
    let mut inbound = response.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
        .await
        .map_err(|_| format!("collector {url}: no welcome within 10s"))?;
    let committed = match first {
        Some(Ok(pb::CollectorFrame {
            frame: Some(pb::collector_frame::Frame::Welcome(w)),
        })) => w.committed_seq,
        Some(Ok(other)) => return Err(format!("collector {url}: expected welcome, got {other:?}")),
        Some(Err(s)) => {
            return Err(format!(
                "collector {url}: {}: {}",
                code_name(s.code()),
                s.message()
            ));
        }
        None => return Err(format!("collector {url}: stream ended before welcome")),
    };
    Ok((
        Conn {
            url,
            out: tx,
            inbound,
            next_send: 0,
            interned: HashMap::new(),
        },
        committed,
    ))
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
