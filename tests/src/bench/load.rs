//! The load agent: one in-process agent speaking the real `tributary.v1`
//! Ingest protocol on its own connection, as fast as its window of unacked
//! batches allows or at a fixed pace.
//!
//! It declares its series once (interned), then sends batches of float
//! gauge readings in columnar form (`Batch.columns.f64`, as the agent sends
//! them) with strictly increasing sequence numbers. An ack covers
//! every batch up to its sequence; the time from handing a batch to the
//! stream until the first ack covering it is that batch's ack latency.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use tributary_proto::v1 as pb;

/// What one load agent sends.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub agent_id: String,
    /// Series declared (stream-local ids 1..=series); readings cycle over
    /// them, one reading per series per timestamp step.
    pub series: u32,
    /// Device name of every series, or `dev-<n>` (ten metrics per device)
    /// when `None`.
    pub device: Option<String>,
    pub batch: usize,
    /// Batches sent but not yet acked, at most.
    pub window: usize,
    /// Send one batch per `pace` instead of as fast as the window allows.
    pub pace: Option<Duration>,
    /// Wait this long before the first batch (spreads paced agents).
    pub offset: Duration,
    /// Stop after this many readings (the last batch may be shorter).
    pub limit: Option<u64>,
    /// Timestamp of the first reading of each series, and the step between
    /// two readings of one series.
    pub base_ts_ns: i64,
    pub step_ns: i64,
}

impl LoadSpec {
    pub fn new(agent_id: impl Into<String>, series: u32, batch: usize) -> LoadSpec {
        LoadSpec {
            agent_id: agent_id.into(),
            series,
            device: None,
            batch,
            window: 4,
            pace: None,
            offset: Duration::ZERO,
            limit: None,
            base_ts_ns: 0,
            step_ns: 1_000_000_000,
        }
    }
}

/// Counters all load agents of a run add to.
#[derive(Debug, Default)]
pub struct Shared {
    /// Streams that got their Welcome.
    pub welcomed: AtomicU64,
    pub sent_readings: AtomicU64,
    pub acked_readings: AtomicU64,
    /// Ack latencies are recorded while this is set.
    pub measuring: AtomicBool,
}

/// What one load agent did.
#[derive(Debug, Default)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    /// Ack latencies of batches acked while measuring, seconds.
    pub latencies: Vec<f64>,
}

/// A connection of its own, as a separate agent host would have.
pub async fn connect(url: &str) -> Result<Channel> {
    Channel::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(20))
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))
}

/// An open stream after its Welcome.
pub struct OpenStream {
    tx: mpsc::Sender<pb::AgentFrame>,
    inbound: tonic::Streaming<pb::CollectorFrame>,
}

/// Hello → Welcome on `channel`.
pub async fn open(channel: Channel, agent_id: &str, window: usize) -> Result<OpenStream> {
    let mut client = pb::ingest_client::IngestClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(window + 2);
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            agent_id: agent_id.to_owned(),
            version: "tributary-bench".to_owned(),
            epoch: rand::random(),
            agent_time_ns: crate::collector::now_ns(),
            ..Default::default()
        })),
    })
    .await
    .context("queue hello")?;
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .context("Ingest/Stream")?
        .into_inner();
    match inbound.message().await.context("await welcome")? {
        Some(pb::CollectorFrame {
            frame: Some(pb::collector_frame::Frame::Welcome(_)),
        }) => Ok(OpenStream { tx, inbound }),
        other => bail!("expected a welcome, got {other:?}"),
    }
}

/// Runs one agent until `stop` (or its limit), then waits up to `drain`
/// for the outstanding acks and half-closes the stream.
pub async fn run(
    channel: Channel,
    spec: LoadSpec,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain: Duration,
) -> Result<Totals> {
    let window = spec.window.max(1);
    let stream = open(channel, &spec.agent_id, window).await?;
    shared.welcomed.fetch_add(1, Ordering::Relaxed);
    send_all(stream, &spec, &shared, &stop, drain).await
}

/// The send loop of [`run`] on an already open stream.
pub async fn send_all(
    stream: OpenStream,
    spec: &LoadSpec,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    drain: Duration,
) -> Result<Totals> {
    let OpenStream { tx, inbound } = stream;
    let window = spec.window.max(1);
    let permits = Arc::new(Semaphore::new(window));
    let (pend_tx, pend_rx) = mpsc::channel::<Pending>(window + 1);
    let reader = tokio::spawn(read_acks(inbound, pend_rx, permits.clone(), shared.clone()));
    let mut generator = Generator::new(spec);
    let mut seq = 0u64;
    let mut sent = 0u64;
    let mut next = Instant::now() + spec.offset;
    if !spec.offset.is_zero() {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stop.cancelled() => {}
        }
    }
    while !stop.is_cancelled() && spec.limit.is_none_or(|l| sent < l) {
        if let Some(pace) = spec.pace {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = stop.cancelled() => break,
            }
            next += pace;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.context("window closed")?,
            () = stop.cancelled() => break,
        };
        permit.forget();
        seq += 1;
        let room = spec
            .limit
            .map_or(spec.batch as u64, |l| (l - sent).min(spec.batch as u64));
        let batch = generator.batch(seq, room as usize);
        let n = room;
        pend_tx
            .send(Pending {
                seq,
                sent_at: Instant::now(),
                readings: n,
            })
            .await
            .context("ack reader stopped")?;
        let frame = pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Batch(batch)),
        };
        // Not raced against `stop`: its entry is queued already, so the
        // batch must go out (flow control at worst delays it) and be acked.
        tx.send(frame).await.context("stream closed")?;
        sent += n;
        shared.sent_readings.fetch_add(n, Ordering::Relaxed);
    }
    drop(pend_tx);
    let totals = match tokio::time::timeout(drain, reader).await {
        Ok(joined) => joined.context("ack reader panicked")??,
        Err(_) => bail!("{}: not every batch acked within {drain:?}", spec.agent_id),
    };
    drop(tx);
    Ok(Totals { sent, ..totals })
}

/// A batch waiting for its ack.
struct Pending {
    seq: u64,
    sent_at: Instant,
    readings: u64,
}

/// Reads acks, releases window slots and records latencies; ends when the
/// sender is done and everything it sent is acked.
async fn read_acks(
    mut inbound: tonic::Streaming<pb::CollectorFrame>,
    mut pend_rx: mpsc::Receiver<Pending>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
) -> Result<Totals> {
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut totals = Totals::default();
    let mut closed = false;
    loop {
        if closed && queue.is_empty() {
            return Ok(totals);
        }
        tokio::select! {
            p = pend_rx.recv(), if !closed => match p {
                Some(p) => queue.push_back(p),
                None => closed = true,
            },
            msg = inbound.message() => {
                let frame = msg.context("ingest stream failed")?;
                let Some(frame) = frame else {
                    bail!("stream ended with {} batches unacked", queue.len());
                };
                let Some(pb::collector_frame::Frame::Ack(ack)) = frame.frame else {
                    continue;
                };
                // The entry of a batch is queued before the batch is sent,
                // so whatever this ack covers is in the channel by now.
                while let Ok(p) = pend_rx.try_recv() {
                    queue.push_back(p);
                }
                let now = Instant::now();
                let measuring = shared.measuring.load(Ordering::Relaxed);
                while queue.front().is_some_and(|p| p.seq <= ack.seq) {
                    let Some(p) = queue.pop_front() else { break };
                    totals.acked += p.readings;
                    shared.acked_readings.fetch_add(p.readings, Ordering::Relaxed);
                    if measuring {
                        totals.latencies.push(now.duration_since(p.sent_at).as_secs_f64());
                    }
                    permits.add_permits(1);
                }
            }
        }
    }
}

/// Makes the readings: reading `i` of an agent is series `i % S + 1` at
/// `base + (i / S) * step`, so each series gets strictly increasing
/// timestamps.
struct Generator {
    series: u32,
    device: Option<String>,
    base_ts_ns: i64,
    step_ns: i64,
    next: u64,
}

impl Generator {
    fn new(spec: &LoadSpec) -> Generator {
        Generator {
            series: spec.series.max(1),
            device: spec.device.clone(),
            base_ts_ns: spec.base_ts_ns,
            step_ns: spec.step_ns,
            next: 0,
        }
    }

    /// The next `n` readings as batch `seq`: float columns, series ids and
    /// timestamps as deltas to the previous reading.
    fn batch(&mut self, seq: u64, n: usize) -> pb::Batch {
        let series = if seq == 1 { self.decls() } else { Vec::new() };
        let s = u64::from(self.series);
        let mut columns = pb::FloatColumns {
            series_delta: Vec::with_capacity(n),
            ts_delta: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            ..Default::default()
        };
        let mut prev: Option<(i64, i64)> = None;
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let id = (i % s) as i64 + 1;
            let ts = self.base_ts_ns + (i / s) as i64 * self.step_ns;
            let (prev_id, prev_ts) = *prev.get_or_insert_with(|| {
                columns.base_ts_ns = ts;
                (0, ts)
            });
            columns.series_delta.push(id - prev_id);
            columns.ts_delta.push(ts - prev_ts);
            columns.values.push(230.0 + (i % 1000) as f64 * 0.125);
            prev = Some((id, ts));
        }
        pb::Batch {
            seq,
            series,
            columns: Some(pb::Columns {
                f64: Some(columns),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn decls(&self) -> Vec<pb::SeriesDecl> {
        (1..=self.series)
            .map(|id| {
                let (device, metric) = match &self.device {
                    Some(d) => (
                        d.clone(),
                        if self.series == 1 {
                            "value".to_owned()
                        } else {
                            format!("m{id}")
                        },
                    ),
                    None => (
                        format!("dev-{}", (id - 1) / 10),
                        format!("m{}", (id - 1) % 10),
                    ),
                };
                pb::SeriesDecl {
                    id,
                    device,
                    metric,
                    labels: HashMap::from([("site".to_owned(), "bench".to_owned())]),
                    unit: "W".to_owned(),
                }
            })
            .collect()
    }
}
