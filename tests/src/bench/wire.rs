//! `wire`: bytes on the wire per reading, counted at the socket by a proxy
//! between agent and collector (TCP payload both ways: HTTP/2 frames with
//! the protobuf inside; no TLS, no IP/TCP headers).
//!
//! Two streams are measured in each run:
//! - the real agent process polling `--devices` simulated devices, each
//!   with `--series` float gauges (plus its integer counter) every 100 ms:
//!   bytes per stored reading over the measured window, once every series is
//!   declared (interned);
//! - one load agent of this process sending float gauges over `--series`
//!   series in batches of 1,000: what the protocol costs with full batches.
//!
//! Checks: the agent's counters arrived complete (1..=n per device, and n
//! readings of every gauge), and the load agent's readings sent = acked =
//! stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use tributary_proto::v1 as pb;

use crate::agent::{AgentConfig, AgentProc, HEALTH_READINGS_PER_POLL};
use crate::collector::{CollectorProc, QueryClient, WorkDir, now_ns};
use crate::counting_proxy::CountingProxy;
use crate::ingest::{join_all, spawn_agent};
use crate::load::{LoadSpec, Shared};
use crate::options::Options;
use crate::progress::Progress;
use crate::report::{Report, Target};
use crate::sys;

const AGENT: &str = "wire-agent";
const INTERVAL: Duration = Duration::from_millis(100);

struct Config {
    devices: usize,
    series: usize,
    duration: Duration,
    warmup: Duration,
    keep: bool,
}

pub async fn run(opts: &Options, progress: &Progress) -> Result<Report> {
    sys::require_procfs()?;
    let cfg = Config {
        devices: opts.devices.unwrap_or(opts.size(10, 2)),
        series: opts.series.unwrap_or(opts.size(100, 10)),
        duration: opts
            .duration
            .unwrap_or(opts.size(Duration::from_secs(10), Duration::from_millis(800))),
        warmup: opts.size(Duration::from_secs(2), Duration::from_millis(500)),
        keep: opts.keep,
    };
    let runs = opts.runs();
    let mut report = Report::new("wire");
    report.config("agent", format!(
        "{} sim devices x ({} float gauges + integer counter + up) every {} ms, default batching",
        cfg.devices,
        cfg.series,
        INTERVAL.as_millis()
    ));
    report.config(
        "load_agent",
        format!("{} float series, batches of 1000", cfg.series),
    );
    report.config("duration_s", cfg.duration.as_secs_f64());
    report.config("runs", runs);
    report.config(
        "counted",
        "TCP payload at a proxy (HTTP/2 + protobuf, plaintext)",
    );
    report.declare("agent_bytes_per_reading", "B", Some(Target::AtMost(12.0)));
    report.declare("agent_ack_bytes_per_reading", "B", None);
    report.declare("agent_readings_per_s", "readings/s", None);
    report.declare("load_bytes_per_reading", "B", Some(Target::AtMost(12.0)));
    report.declare("load_ack_bytes_per_reading", "B", None);
    for r in 1..=runs {
        one_run(&cfg, r, runs, progress, &mut report).await?;
    }
    Ok(report.finish())
}

async fn one_run(
    cfg: &Config,
    r: usize,
    runs: usize,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let label = format!("wire run {r}/{runs}");
    let dir = WorkDir::new("wire", cfg.keep)?;
    let collector = CollectorProc::start(&dir).await?;
    let mut query = QueryClient::connect(&collector.url).await?;

    // The real agent.
    let proxy = CountingProxy::start(collector.addr).await?;
    let mut config = AgentConfig::new(AGENT, &format!("http://{}", proxy.addr), &dir);
    for i in 0..cfg.devices {
        config.sim_device(&format!("sim-{i:03}"), cfg.series, INTERVAL);
    }
    let mut agent = AgentProc::start(&dir, AGENT, config)?;
    progress
        .wait(cfg.warmup, &format!("{label}: agent warm-up"), String::new)
        .await;
    agent.ensure_running()?;
    let (up0, down0) = proxy.bytes();
    let s0 = query.stored(AGENT).await?;
    let t0 = Instant::now();
    progress
        .wait(cfg.duration, &format!("{label}: agent"), || {
            format!("{} bytes up", proxy.bytes().0 - up0)
        })
        .await;
    let (up1, down1) = proxy.bytes();
    let s1 = query.stored(AGENT).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    agent.ensure_running()?;
    agent.stop().await?;
    let readings = (s1 - s0).max(1) as f64;
    report.record("agent_bytes_per_reading", (up1 - up0) as f64 / readings);
    report.record(
        "agent_ack_bytes_per_reading",
        (down1 - down0) as f64 / readings,
    );
    report.record("agent_readings_per_s", (s1 - s0) as f64 / elapsed);
    let (ok, detail) = counters_complete(&mut query, cfg.series as u64).await?;
    report.check(format!("run {r}: agent counters complete"), ok, detail);

    // The load agent with full batches.
    let proxy = CountingProxy::start(collector.addr).await?;
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let mut spec = LoadSpec::new("wire-load", cfg.series as u32, 1000);
    spec.pace = Some(Duration::from_millis(50));
    spec.window = 16;
    spec.base_ts_ns = now_ns() - 86_400_000_000_000;
    let task = spawn_agent(
        &format!("http://{}", proxy.addr),
        spec,
        &shared,
        &stop,
        Duration::from_secs(60),
    );
    progress
        .wait(cfg.duration, &format!("{label}: load agent"), String::new)
        .await;
    stop.cancel();
    let totals = join_all(vec![task]).await?;
    let (up, down) = proxy.bytes();
    let stored = query.stored("wire-load").await?;
    report.check(
        format!("run {r}: load agent sent = acked = stored"),
        totals.sent == totals.acked && totals.acked == stored,
        format!(
            "{} sent, {} acked, {stored} stored",
            totals.sent, totals.acked
        ),
    );
    let n = totals.acked.max(1) as f64;
    report.record("load_bytes_per_reading", up as f64 / n);
    report.record("load_ack_bytes_per_reading", down as f64 / n);
    collector.stop().await?;
    progress.say(&format!(
        "{label}: agent {:.1} B/reading, load agent {:.1} B/reading",
        (up1 - up0) as f64 / readings,
        up as f64 / n
    ));
    Ok(())
}

/// Every sim device's counter went 1, 2, ..., n without a gap or repeat,
/// and the agent stored n × (gauges + counter + health) readings in all.
async fn counters_complete(query: &mut QueryClient, gauges: u64) -> Result<(bool, String)> {
    let filter = pb::SeriesFilter {
        agent: AGENT.to_owned(),
        device: String::new(),
        metric: "counter".to_owned(),
    };
    let series = query.range_points(filter, 0, 0).await?;
    let mut polls = 0u64;
    let mut broken = Vec::new();
    for s in &series {
        let values: Vec<i64> = s
            .points
            .iter()
            .filter_map(|p| match p.value {
                Some(pb::point::Value::I64(v)) => Some(v),
                _ => None,
            })
            .collect();
        let expected: Vec<i64> = (1..=values.len() as i64).collect();
        if values != expected {
            broken.push(s.series.device.clone());
        }
        polls += values.len() as u64;
    }
    let stored = query.stored(AGENT).await?;
    let per_poll = gauges + 1 + HEALTH_READINGS_PER_POLL;
    let ok = broken.is_empty() && !series.is_empty() && stored == polls * per_poll;
    Ok((
        ok,
        format!(
            "{} devices, {polls} polls, {stored} readings stored (expected {}), gaps in {broken:?}",
            series.len(),
            polls * per_poll
        ),
    ))
}
