//! Helpers of the tests that write through a store or speak the ingest
//! protocol raw: a counter series key, a write set of one reading per
//! sequence, blocking store work off the runtime, and a raw agent stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use tributary_collector::model::{NewReading, SeriesKey, StoredValue};
use tributary_collector::store::{AgentWrite, BatchWrite, CommittedSet, EpochRow, WriteSet};
use tributary_proto::v1 as pb;

pub fn key(agent: &str, device: &str) -> SeriesKey {
    SeriesKey {
        agent: agent.into(),
        device: device.into(),
        metric: "counter".into(),
        labels: BTreeMap::from([("site".into(), "a".into())]),
        unit: String::new(),
    }
}

/// A set with one batch per sequence in `seqs`, each holding one reading
/// of `series` whose value and timestamp are the sequence.
pub fn set(agent: &str, epoch: u64, series: i64, seqs: impl IntoIterator<Item = u64>) -> WriteSet {
    let agent: Arc<str> = Arc::from(agent);
    let batches: Vec<BatchWrite> = seqs
        .into_iter()
        .map(|seq| BatchWrite {
            agent: agent.clone(),
            epoch,
            seq,
            high_water: false,
            floor: 0,
            received_ns: 1,
            readings: vec![NewReading {
                series_id: series,
                ts_ns: seq as i64,
                value: StoredValue::I64(seq as i64),
            }],
        })
        .collect();
    let last = batches.last().map(|b| b.seq).unwrap_or(0);
    WriteSet {
        epochs: vec![(
            agent.clone(),
            epoch,
            EpochRow {
                committed: CommittedSet::up_to(last),
                dropped: 0,
                last_seq: last,
            },
        )],
        agents: vec![(
            agent,
            AgentWrite {
                epoch,
                peer: "test".into(),
                ..AgentWrite::default()
            },
        )],
        batches,
    }
}

/// Runs blocking store work off the async runtime (a PostgreSQL store
/// drives its own runtime and must not be used from async code).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.context("store task")?
}

/// A raw agent stream.
pub struct RawStream {
    pub tx: mpsc::Sender<pb::AgentFrame>,
    pub rx: Streaming<pb::CollectorFrame>,
    pub welcome: u64,
    /// The series was declared on this stream.
    pub declared: bool,
}

impl RawStream {
    pub async fn open(url: &str, agent: &str, epoch: u64) -> Result<Self> {
        let mut client = pb::ingest_client::IngestClient::connect(url.to_string()).await?;
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: agent.into(),
                version: "test".into(),
                epoch,
                agent_time_ns: 1,
                ..Default::default()
            })),
        })
        .await?;
        let mut rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match next(&mut rx).await? {
            Some(pb::collector_frame::Frame::Welcome(w)) => w.committed_seq,
            other => bail!("expected welcome, got {other:?}"),
        };
        Ok(RawStream {
            tx,
            rx,
            welcome,
            declared: false,
        })
    }

    /// Sends counter values `10 * (seq - 1) + 1 ..= 10 * seq` as batch `seq`
    /// (declaring the series in the stream's first batch).
    pub async fn send(&mut self, seq: u64) -> Result<()> {
        let from = 10 * (seq as i64 - 1) + 1;
        let batch = pb::Batch {
            seq,
            series: if std::mem::replace(&mut self.declared, true) {
                vec![]
            } else {
                vec![pb::SeriesDecl {
                    id: 1,
                    device: "dev".into(),
                    metric: "counter".into(),
                    labels: HashMap::new(),
                    unit: String::new(),
                }]
            },
            readings: (from..from + 10)
                .map(|v| pb::Reading {
                    series: 1,
                    ts_ns: 1_000_000 + v,
                    value: Some(pb::reading::Value::I64(v)),
                })
                .collect(),
            ..Default::default()
        };
        self.tx
            .send(pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Batch(batch)),
            })
            .await
            .context("stream closed")
    }

    /// Waits for an ack covering `seq`.
    pub async fn acked(&mut self, seq: u64) -> Result<u64> {
        loop {
            match next(&mut self.rx).await? {
                Some(pb::collector_frame::Frame::Ack(a)) if a.seq >= seq => return Ok(a.seq),
                Some(_) => continue,
                None => bail!("stream ended before ack {seq}"),
            }
        }
    }
}

pub async fn next(
    rx: &mut Streaming<pb::CollectorFrame>,
) -> Result<Option<pb::collector_frame::Frame>> {
    match tokio::time::timeout(Duration::from_secs(20), rx.next()).await? {
        Some(Ok(f)) => Ok(f.frame),
        Some(Err(s)) => bail!("stream failed: {s}"),
        None => Ok(None),
    }
}
