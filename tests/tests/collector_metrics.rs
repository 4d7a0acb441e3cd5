//! The collector's `/metrics` against a real Prometheus (Debian's 2.42) and
//! `promtool`, and against ground truth: what the store holds.
//!
//! - Prometheus scrapes the collector while sim agents run; once the agents
//!   have stopped (every batch acked, so committed) and Prometheus has
//!   scraped after that moment, what PromQL says each agent committed must
//!   equal what the store holds for it, exactly, and the lag must be 0.
//! - `promtool check metrics` finds no problem in a scrape.
//! - A stream whose agent clock is an hour off: its readings are counted as
//!   skewed in `/metrics`, `ListAgents` and `tributary-collector agents`.
//! - 1,000 concurrent scrapes while an agent runs: ingest keeps every
//!   counter value exactly once.
//!
//! `cargo xtask test` installs `prometheus` and `promtool` and names them
//! in `TRIBUTARY_PROMETHEUS` and `TRIBUTARY_PROMTOOL`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use tributary_proto::v1 as pb;
use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, agent_counters, assert_exactly_once, counters, sim_agent_config,
    stored_count, wait_for_counters,
};
use tributary_tests::peers::prometheus::{Prometheus, promtool_check_metrics};
use tributary_tests::process::{TestDir, eventually, free_addr, run_bin};

/// Waits until `prometheus` holds a scrape of the collector that began
/// after `after` (Unix seconds).
async fn scraped_after(prometheus: &Prometheus, after: f64) -> Result<()> {
    eventually(PATIENCE, "a scrape after the agents stopped", || async {
        let t = prometheus
            .query_one("timestamp(up{job=\"collector\"})")
            .await
            .ok()?;
        (t > after).then_some(())
    })
    .await
    .with_context(|| format!("prometheus log:\n{}", prometheus.log()))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn scrape(collector: &Collector) -> Result<String> {
    let response = reqwest::get(format!("{}/metrics", collector.http_url())).await?;
    ensure!(response.status() == 200, "/metrics: {}", response.status());
    Ok(response.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_agree_with_the_store() -> Result<()> {
    let dir = TestDir::new("collector-metrics")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let prometheus = Prometheus::start(&dir, &[("collector", collector.http)]).await?;
    let ids = ["metrics-a", "metrics-b"];
    let mut agents = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let config = sim_agent_config(id, &[collector.url()], 2 + i, "100ms");
        agents.push(Agent::start(&dir, id, &config, "")?);
    }
    for (i, id) in ids.iter().enumerate() {
        wait_for_counters(&collector.db, id, 2 + i, 10).await?;
    }
    // While they run: the target is up and its scrapes pass promtool.
    prometheus.wait_for("up{job=\"collector\"}", 1.0).await?;
    promtool_check_metrics(&scrape(&collector).await?).await?;

    // Stop the agents: each exits once every batch it took is acked, so
    // everything is committed before `stopped`.
    for agent in &mut agents {
        agent.stop().await?;
    }
    let stopped = unix_now();
    scraped_after(&prometheus, stopped).await?;

    let mut total = 0.0;
    for (i, id) in ids.iter().enumerate() {
        let stored = stored_count(&collector.db, id)?;
        ensure!(stored > 0, "{id}: nothing stored");
        total += stored as f64;
        let sel = format!("{{agent=\"{id}\"}}");
        let committed = prometheus
            .query_one(&format!(
                "tributary_collector_agent_readings_committed_total{sel}"
            ))
            .await?;
        ensure!(
            committed == stored as f64,
            "{id}: Prometheus says {committed} readings committed, the store holds {stored}"
        );
        let truth = agent_counters(&collector.db, id)?;
        for (metric, expected) in [
            (
                "tributary_collector_agent_batches_deduplicated_total",
                truth.batches_deduplicated,
            ),
            (
                "tributary_collector_agent_batches_resent_total",
                truth.batches_resent,
            ),
            (
                "tributary_collector_agent_dropped_readings_total",
                truth.dropped_at_agent,
            ),
            ("tributary_collector_agent_lag_sequences", 0),
            ("tributary_collector_agent_connected", 0),
            ("tributary_collector_agent_skewed_readings_total", 0),
        ] {
            let got = prometheus.query_one(&format!("{metric}{sel}")).await?;
            ensure!(
                got == expected as f64,
                "{id}: {metric} is {got}, expected {expected}"
            );
        }
        let lag = prometheus
            .query_one(&format!("tributary_collector_agent_lag_seconds{sel}"))
            .await?;
        ensure!(lag == 0.0, "{id}: lag {lag} s after it drained");
        // Every device's counter arrived exactly once.
        assert_exactly_once(&counters(&collector.db, id)?, 2 + i)?;
    }
    // The histograms add up to the same readings.
    let grouped = prometheus
        .query_one("tributary_collector_commit_group_readings_sum")
        .await?;
    ensure!(
        grouped == total,
        "commit group readings sum {grouped}, the store holds {total}"
    );
    let batches = prometheus
        .query_one("sum(tributary_collector_agent_batches_committed_total)")
        .await?;
    let grouped_batches = prometheus
        .query_one("tributary_collector_commit_group_batches_sum")
        .await?;
    ensure!(
        batches == grouped_batches && batches > 0.0,
        "batches committed {batches}, in groups {grouped_batches}"
    );
    ensure!(
        prometheus
            .query_one("tributary_collector_streams_open")
            .await?
            == 0.0,
        "streams still open after the agents stopped"
    );
    ensure!(
        prometheus
            .query_one("sum(tributary_collector_store_errors_total)")
            .await?
            == 0.0,
        "store errors"
    );
    let info = prometheus.query("tributary_collector_build_info").await?;
    ensure!(
        info.len() == 1
            && info[0].labels.get("version").map(String::as_str) == Some(env!("CARGO_PKG_VERSION")),
        "build info: {info:?}"
    );
    ensure!(
        prometheus
            .query_one("process_resident_memory_bytes")
            .await?
            > 0.0,
        "process metrics"
    );
    promtool_check_metrics(&scrape(&collector).await?).await?;
    Ok(())
}

/// The one sample of `series` (name and labels as encoded) in `body`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Readings of a stream whose agent clock was an hour ahead at its Hello
/// are all counted as skewed, and shown as such everywhere. Also what this
/// test did itself shows: a refused stream by its reason, the Query RPCs
/// the CLI made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_readings_are_counted_and_listed() -> Result<()> {
    let dir = TestDir::new("collector-metrics-skew")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let hour_ns = 3_600_000_000_000i64;
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
    let mut client = pb::ingest_client::IngestClient::connect(collector.url()).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            agent_id: "skewed".into(),
            version: "test".into(),
            epoch: 7,
            agent_time_ns: now_ns + hour_ns,
            dropped: 0,
            last_seq: 1,
            out_of_order: false,
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let readings: Vec<pb::Reading> = (0..5)
        .map(|i| pb::Reading {
            series: 1,
            ts_ns: now_ns + i,
            value: Some(pb::reading::Value::I64(i)),
        })
        .collect();
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Batch(pb::Batch {
            seq: 1,
            series: vec![pb::SeriesDecl {
                id: 1,
                device: "d".into(),
                metric: "counter".into(),
                ..Default::default()
            }],
            readings,
            last_seq: 1,
            ..Default::default()
        })),
    })
    .await?;
    // Welcome, then the ack of batch 1: committed.
    let mut acked = false;
    while let Some(frame) = tokio::time::timeout(PATIENCE, inbound.next()).await? {
        if let Some(pb::collector_frame::Frame::Ack(a)) = frame?.frame {
            acked = a.seq >= 1;
            if acked {
                break;
            }
        }
    }
    ensure!(acked, "batch 1 was never acked");
    ensure!(stored_count(&collector.db, "skewed")? == 5);

    let body = scrape(&collector).await?;
    ensure!(
        sample(
            &body,
            "tributary_collector_agent_skewed_readings_total{agent=\"skewed\"}"
        ) == Some(5.0),
        "{body}"
    );

    // A stream that starts with a batch: refused as an invalid frame.
    let mut client = pb::ingest_client::IngestClient::connect(collector.url()).await?;
    let (bad_tx, bad_rx) = mpsc::channel(1);
    bad_tx
        .send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Batch(pb::Batch::default())),
        })
        .await?;
    let mut refused = client
        .stream(ReceiverStream::new(bad_rx))
        .await?
        .into_inner();
    let status = loop {
        match tokio::time::timeout(PATIENCE, refused.next()).await? {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => bail!("the stream of a batch before its hello ended without a status"),
        }
    };
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status}");
    let body = scrape(&collector).await?;
    for (series, expected) in [
        (
            "tributary_collector_streams_refused_total{reason=\"invalid_frame\"}",
            1.0,
        ),
        (
            "tributary_collector_streams_refused_total{reason=\"identity\"}",
            0.0,
        ),
        ("tributary_collector_streams_opened_total", 1.0),
        ("tributary_collector_streams_open", 1.0),
        ("tributary_collector_agent_connected{agent=\"skewed\"}", 1.0),
        ("tributary_collector_queries_total{rpc=\"ListAgents\"}", 0.0),
    ] {
        ensure!(
            sample(&body, series) == Some(expected),
            "{series}: expected {expected} in\n{body}"
        );
    }

    let json = run_bin(
        "tributary-collector",
        ["agents", "--server", &collector.url(), "--format", "json"],
    )
    .await?;
    let agents: serde_json::Value = serde_json::from_str(&json)?;
    ensure!(
        agents[0]["id"] == "skewed" && agents[0]["skewed_readings"] == 5,
        "{agents}"
    );
    let table = run_bin(
        "tributary-collector",
        ["agents", "--server", &collector.url()],
    )
    .await?;
    ensure!(
        table.lines().next().is_some_and(|h| h.contains("SKEWED")),
        "{table}"
    );
    let body = scrape(&collector).await?;
    ensure!(
        sample(
            &body,
            "tributary_collector_queries_total{rpc=\"ListAgents\"}"
        ) == Some(2.0)
            && sample(
                &body,
                "tributary_collector_query_duration_seconds_count{rpc=\"ListAgents\"}"
            ) == Some(2.0),
        "two ListAgents calls (json, table):\n{body}"
    );
    drop(tx);
    Ok(())
}

/// 1,000 scrapes at once, three times over, while an agent streams: every
/// scrape is answered and the store still has every counter value once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_scrapes_do_not_disturb_ingest() -> Result<()> {
    let dir = TestDir::new("collector-metrics-flood")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let config = sim_agent_config("flooded", &[collector.url()], 4, "50ms");
    let mut agent = Agent::start(&dir, "flooded", &config, "")?;
    wait_for_counters(&collector.db, "flooded", 4, 5).await?;
    let url = Arc::new(format!("{}/metrics", collector.http_url()));
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .pool_max_idle_per_host(0)
        .build()?;
    for round in 0..3 {
        let mut scrapes = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let (client, url) = (client.clone(), url.clone());
            scrapes.spawn(async move {
                let r = client.get(url.as_str()).send().await?;
                let status = r.status();
                let body = r.text().await?;
                anyhow::Ok((status, body.contains("tributary_collector_commits_total")))
            });
        }
        let mut answered = 0;
        while let Some(done) = scrapes.join_next().await {
            let (status, complete) = done??;
            ensure!(
                status == 200 && complete,
                "round {round}: a scrape got {status}"
            );
            answered += 1;
        }
        ensure!(
            answered == 1000,
            "round {round}: {answered} scrapes answered"
        );
    }
    // Ingest goes on after the flood, then drains.
    let most = counters(&collector.db, "flooded")?
        .values()
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    wait_for_counters(&collector.db, "flooded", 4, most + 5).await?;
    agent.stop().await?;
    assert_exactly_once(&counters(&collector.db, "flooded")?, 4)?;
    Ok(())
}
