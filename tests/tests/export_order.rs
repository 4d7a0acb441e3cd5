//! Readings a receiver would refuse as they come: two readings of one
//! series in one millisecond, and readings out of time order within a
//! batch. Prometheus answers such a request with 400, which would drop
//! every series in it. Sent by a raw agent stream (the sim driver never
//! does this) next to well-behaved series, against the real receivers: the
//! receiver must hold every well-behaved sample, and for the unruly series
//! what PromQL over the store shows (time order, the latest reading of a
//! millisecond), with nothing dropped.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail, ensure};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use tributary_proto::v1 as pb;
use tributary_tests::cluster::{Collector, PATIENCE};
use tributary_tests::peers::receivers::{Kind, Receiver};
use tributary_tests::process::{TestDir, eventually, free_addr, run_bin};

const GOOD: u32 = 5;
const BATCHES: u64 = 20;
const MS: i64 = 1_000_000;

/// Samples by device: (timestamp ms, value), time order.
type ByDevice = BTreeMap<String, Vec<(i64, f64)>>;

/// The batches sent, and what a receiver must hold afterwards.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn batches(base_ns: i64) -> (Vec<pb::Batch>, ByDevice) {
    let mut want = ByDevice::new();
    let mut out = Vec::new();
    for b in 0..BATCHES {
        let t = base_ns + b as i64 * 10 * MS;
        let mut readings = Vec::new();
        let mut reading = |series: u32, ts_ns: i64, v: f64| {
            readings.push(pb::Reading {
                series,
                ts_ns,
                value: Some(pb::reading::Value::F64(v)),
            })
        };
        // Series 0 ("unruly"): 5 ms, then 3 ms (out of order), then two
        // readings in the millisecond at 0 (0.7 ms, then 0.2 ms: the 0.7 ms
        // one is the latest of that millisecond).
        let v = b as f64 * 10.0;
        reading(0, t + 5 * MS, v + 5.0);
        reading(0, t + 3 * MS, v + 3.0);
        reading(0, t + 7 * MS / 10, v + 0.7);
        reading(0, t + 2 * MS / 10, v + 0.2);
        let unruly = want.entry("unruly".to_owned()).or_default();
        let ms = t / MS;
        unruly.extend([(ms, v + 0.7), (ms + 3, v + 3.0), (ms + 5, v + 5.0)]);
        for g in 1..=GOOD {
            let x = f64::from(g) * 1000.0 + b as f64;
            reading(g, t + i64::from(g) * MS, x);
            want.entry(format!("good-{g}"))
                .or_default()
                .push((ms + i64::from(g), x));
        }
        let series = if b == 0 {
            (0..=GOOD)
                .map(|id| pb::SeriesDecl {
                    id,
                    device: if id == 0 {
                        "unruly".to_owned()
                    } else {
                        format!("good-{id}")
                    },
                    metric: "order_gauge".into(),
                    labels: Default::default(),
                    unit: String::new(),
                })
                .collect()
        } else {
            Vec::new()
        };
        out.push(pb::Batch {
            seq: b + 1,
            series,
            readings,
            last_seq: BATCHES,
            ..Default::default()
        });
    }
    (out, want)
}

/// Sends `batches` on one agent stream and waits for the ack of the last.
async fn ingest(url: &str, agent: &str, batches: Vec<pb::Batch>) -> Result<()> {
    let mut client = pb::ingest_client::IngestClient::connect(url.to_string()).await?;
    let (tx, frames) = mpsc::channel(4);
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            agent_id: agent.into(),
            version: "test".into(),
            epoch: 7,
            agent_time_ns: now_ns(),
            ..Default::default()
        })),
    })
    .await?;
    let mut rx = client
        .stream(ReceiverStream::new(frames))
        .await?
        .into_inner();
    let last = batches.last().map(|b| b.seq).unwrap_or(0);
    for b in batches {
        tx.send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Batch(b)),
        })
        .await
        .context("stream closed")?;
    }
    loop {
        match tokio::time::timeout(PATIENCE, rx.next()).await? {
            Some(Ok(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Ack(a)),
            })) if a.seq >= last => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(status)) => bail!("stream ended: {status}"),
            None => bail!("stream ended without the last ack"),
        }
    }
}

async fn unruly_series_drop_nothing(kind: Kind, label: &str) -> Result<()> {
    let dir = TestDir::new(label)?;
    let rx = Receiver::start(&dir, kind, "receiver").await?;
    let config = dir.join("collector.toml");
    // One shard: every series shares each request, so a refused request
    // would take the well-behaved series with it.
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"rx\"\nkind = \"remote_write\"\nurl = \"{}\"\nshards = 1\n\
             max_backoff = \"1s\"\n",
            rx.write_url()
        ),
    )?;
    let config = config.display().to_string();
    let collector = Collector::start_with(&dir, free_addr()?, &["--config", &config]).await?;
    let base_ns = (now_ns() / MS - 60_000) * MS;
    let (sent, want) = batches(base_ns);
    ingest(&collector.url(), "order-0", sent).await?;
    let store = format!("--store=sqlite:{}", collector.db.display());
    let row = eventually(PATIENCE, "the export sent every batch", || async {
        let json = run_bin(
            "tributary-collector",
            ["exports", &store, "--format", "json"],
        )
        .await
        .ok()?;
        let rows: serde_json::Value = serde_json::from_str(&json).ok()?;
        let row = rows[0].clone();
        (row["lag_readings"] == 0 && row["sent"].as_u64()? > 0).then_some(row)
    })
    .await?;
    let got = eventually(PATIENCE, "the receiver holds every sample", || async {
        let raw = rx.raw("order_gauge").await.ok()?;
        let got: ByDevice = raw
            .into_iter()
            .map(|(labels, s)| (labels.get("device").cloned().unwrap_or_default(), s))
            .collect();
        (got == want).then_some(got)
    })
    .await;
    if got.is_err() {
        let raw = rx.raw("order_gauge").await?;
        bail!(
            "the receiver does not hold what was committed\nwant {want:?}\ngot {raw:?}\nexports: {row}\ncollector log:\n{}",
            collector.log()
        );
    }
    let samples: usize = want.values().map(Vec::len).sum();
    ensure!(
        row["dropped"] == 0 && row["sent"].as_u64() == Some(samples as u64),
        "exports shows {row}, want {samples} sent and none dropped"
    );
    println!(
        "{label}: {} readings ({} of one series out of order or two in a millisecond) → {samples} samples, all held, none dropped",
        BATCHES * u64::from(GOOD + 4),
        BATCHES * 4
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_takes_unruly_series_without_dropping_others() -> Result<()> {
    unruly_series_drop_nothing(Kind::Prometheus, "export-order-prometheus").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_takes_unruly_series_without_dropping_others() -> Result<()> {
    unruly_series_drop_nothing(Kind::Victoria, "export-order-victoria").await
}
