//! Remote write exports against real receivers: VictoriaMetrics (single
//! node) and Prometheus 2.42 with its remote write receiver. Sim agents
//! stream while the collector is SIGKILLed and restarted and the receiver
//! is stopped and restarted (SIGTERM: a SIGKILLed VictoriaMetrics loses the
//! samples it accepted in its last second, its own durability); afterwards every counter series in the
//! receiver must hold exactly what the store holds (timestamps in ms,
//! values; where two readings of a series share a millisecond, at least
//! one of them and nothing else, as remote write sends one sample per
//! millisecond: `receivers::mismatches`), nothing missing, and duplicates
//! only as identical samples.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, assert_exactly_once, counters, sim_agent_config, wait_for_counters,
};
use tributary_tests::peers::receivers::{BySeries, Kind, Receiver, mismatches, received};
use tributary_tests::process::{TestDir, eventually, free_addr};

const AGENTS: usize = 2;
const DEVICES: usize = 3;

/// The store's counters as (agent, device) → ts ms → values.
fn stored(db: &std::path::Path) -> Result<BySeries> {
    let mut out = BySeries::new();
    for a in 0..AGENTS {
        let agent = format!("rw-{a}");
        let c = counters(db, &agent)?;
        assert_exactly_once(&c, DEVICES)?;
        for (device, points) in c {
            let series = out.entry((agent.clone(), device)).or_default();
            for p in points {
                series
                    .entry(p.ts_ns.div_euclid(1_000_000))
                    .or_default()
                    .push(p.value as f64);
            }
        }
    }
    Ok(out)
}

fn write_config(dir: &TestDir, url: &str) -> Result<String> {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "[[exports]]\nname = \"rx\"\nkind = \"remote_write\"\nurl = \"{url}\"\nshards = 4\n\
             max_samples_per_request = 300\nmax_backoff = \"1s\"\ntimeout = \"5s\"\n"
        ),
    )?;
    Ok(path.display().to_string())
}

async fn kills_and_restarts(kind: Kind, label: &str) -> Result<()> {
    let dir = TestDir::new(label)?;
    let mut rx = Receiver::start(&dir, kind, "receiver").await?;
    let config = write_config(&dir, &rx.write_url())?;
    let addr = free_addr()?;
    let args = ["--config", config.as_str()];
    let mut collector = Collector::start_with(&dir, addr, &args).await?;
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let id = format!("rw-{a}");
        let cfg = sim_agent_config(&id, &[collector.url()], DEVICES, "20ms");
        agents.push(Agent::start(&dir, &id, &cfg, "")?);
    }
    for a in &agents {
        wait_for_counters(&collector.db, &a.id, DEVICES, 20).await?;
    }
    // The collector dies mid-export, twice; the receiver goes away for a
    // while in between (the export falls behind, then catches up).
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        collector.proc.kill().await?;
        collector = Collector::start_with(&dir, addr, &args).await?;
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rx.stop().await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            rx.restart(&dir).await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for a in &mut agents {
        a.stop().await?;
    }
    let want = stored(&collector.db)?;
    let total: usize = want.values().flat_map(BTreeMap::values).map(Vec::len).sum();
    ensure!(
        total >= AGENTS * DEVICES * 50,
        "only {total} readings stored"
    );
    let caught_up = eventually(
        PATIENCE,
        "the receiver has every stored reading",
        || async {
            let raw = rx.raw("counter").await.ok()?;
            mismatches(&want, &received(&raw).0)
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let raw = rx.raw("counter").await?;
    let (got, dups) = received(&raw);
    let wrong = mismatches(&want, &got);
    if caught_up.is_err() || !wrong.is_empty() {
        bail!(
            "the receiver does not hold what was committed:\n{}\ncollector log:\n{}\nreceiver log:\n{}",
            wrong.join("\n"),
            collector.log(),
            rx.log()
        );
    }
    // The restarts resumed from the cursor: far fewer duplicates than
    // readings (a resend from the start would duplicate everything).
    ensure!(
        dups < total / 2,
        "{dups} duplicates of {total}: the export did not resume from its cursor"
    );
    let status = collector
        .proc
        .terminate(Duration::from_secs(20))
        .await
        .context("stop the collector")?;
    ensure!(status.success(), "collector exited with {status}");
    println!(
        "{label}: {total} counter readings committed, all received in order; {dups} identical duplicates after 2 collector SIGKILLs and a receiver restart"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_receives_what_was_committed_across_kills() -> Result<()> {
    kills_and_restarts(Kind::Victoria, "export-rw-victoria").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_receives_what_was_committed_across_kills() -> Result<()> {
    kills_and_restarts(Kind::Prometheus, "export-rw-prometheus").await
}
