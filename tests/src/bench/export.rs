//! `export`: what a remote write export costs ingest, and how fast it
//! catches up, against a real VictoriaMetrics (Debian's `victoria-metrics`).
//!
//! Each run: (1) a fresh collector without exports, N load agents at full
//! speed for `--duration`: the ingest rate; (2) a fresh collector with one
//! `remote_write` export to VictoriaMetrics, the same load: the ingest rate
//! (its ratio to (1) is the cost of the export to ingest) and the export's
//! rate over the load and its drain (readings committed / time until the
//! lag is zero); (3) VictoriaMetrics stopped, the same load again (the
//! export falls behind), then VictoriaMetrics started: the catch-up rate
//! (readings behind / time until the lag is zero), and its ratio to the
//! live ingest rate of (2).
//!
//! Checks: each export's lag reaches zero and its cursor counts as sent
//! every reading committed (all are float samples), nothing dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio_util::sync::CancellationToken;

use tributary_collector::store::export::CommitLog;
use tributary_tests::peers::receivers::{Kind, Receiver};
use tributary_tests::process::{Proc, TestDir, free_addr, wait_for_port};

use crate::load::{self, LoadSpec, Shared};
use crate::options::Options;
use crate::progress::Progress;
use crate::report::{Report, Target};

struct Config {
    agents: usize,
    series: u32,
    batch: usize,
    duration: Duration,
}

pub async fn run(opts: &Options, progress: &Progress) -> Result<Report> {
    let cfg = Config {
        agents: opts.agents.unwrap_or(opts.size(4, 1)),
        series: opts.series.unwrap_or(opts.size(100, 10)) as u32,
        batch: opts.batch.unwrap_or(opts.size(1000, 100)),
        duration: opts
            .duration
            .unwrap_or(opts.size(Duration::from_secs(10), Duration::from_secs(1))),
    };
    let mut report = Report::new("export");
    report.config("agents", cfg.agents);
    report.config("series_per_agent", cfg.series);
    report.config("batch", cfg.batch);
    report.config("duration_s", cfg.duration.as_secs_f64());
    report.config(
        "export",
        "remote_write to VictoriaMetrics, 4 shards, 2000 samples/request",
    );
    report.declare("ingest_without_export", "readings/s", None);
    report.declare("ingest_with_export", "readings/s", None);
    report.declare("ingest_ratio", "x", Some(Target::AtLeast(0.8)));
    report.declare("export_live", "samples/s", None);
    report.declare("catch_up", "samples/s", None);
    report.declare("catch_up_vs_live_ingest", "x", None);
    for run in 0..opts.runs() {
        progress.status(&format!("export: run {}", run + 1));
        let dir = TestDir::new("bench-export")?;
        // (1) no export.
        let (c, db) = start_collector(&dir, "plain", None).await?;
        let (acked, took) = load(&c.1, &cfg, "plain").await?;
        stop(c.0).await?;
        let _ = db;
        let without = acked as f64 / took;
        report.record("ingest_without_export", without);

        // (2) with the export, VictoriaMetrics up.
        let mut vm = Receiver::start(&dir, Kind::Victoria, "victoria").await?;
        let (c, db) = start_collector(&dir, "export", Some(&vm.write_url())).await?;
        let start = Instant::now();
        let (acked, took) = load(&c.1, &cfg, "live").await?;
        let with = acked as f64 / took;
        report.record("ingest_with_export", with);
        report.record("ingest_ratio", with / without);
        let sent = drained(&db).await?;
        report.record("export_live", sent as f64 / start.elapsed().as_secs_f64());
        report.check(
            "live: every committed reading sent",
            sent == acked,
            format!("{acked} acked, {sent} sent"),
        );

        // (3) VictoriaMetrics down during the load, then back.
        vm.stop().await?;
        let (acked2, _) = load(&c.1, &cfg, "behind").await?;
        let behind_start = Instant::now();
        vm.restart(&dir).await?;
        let sent2 = drained(&db).await?;
        let catch = acked2 as f64 / behind_start.elapsed().as_secs_f64();
        report.record("catch_up", catch);
        report.record("catch_up_vs_live_ingest", catch / with);
        report.check(
            "catch-up: every committed reading sent",
            sent2 == acked + acked2,
            format!("{} acked, {sent2} sent", acked + acked2),
        );
        stop(c.0).await?;
        vm.stop().await?;
    }
    report.note(
        "catch_up counts from the receiver's restart (its start-up time included) to lag 0; \
         live ingest here is the full-speed rate, far above a fleet's live rate",
    );
    Ok(report.finish())
}

/// A collector on `dir/<name>.db`, with an export to `url` when given.
async fn start_collector(
    dir: &TestDir,
    name: &str,
    url: Option<&str>,
) -> Result<((Proc, String), std::path::PathBuf)> {
    let addr = free_addr()?;
    let db = dir.join(format!("{name}.db"));
    let config = dir.join(format!("{name}.toml"));
    let mut text = "[limits]\nmax_connections_per_address = 1000000\n".to_owned();
    if let Some(url) = url {
        text.push_str(&format!(
            "\n[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\nurl = \"{url}\"\nmax_backoff = \"1s\"\n"
        ));
    }
    std::fs::write(&config, text)?;
    let proc = Proc::builder("tributary-collector")?
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--http-listen", "off"])
        .arg(format!("--store=sqlite:{}", db.display()))
        .arg("--config")
        .arg(&config)
        .log_to(dir.join(format!("{name}.log")))
        .spawn()?;
    wait_for_port(addr, Duration::from_secs(30)).await?;
    Ok(((proc, format!("http://{addr}")), db))
}

async fn stop(mut p: Proc) -> Result<()> {
    let status = p.terminate(Duration::from_secs(30)).await?;
    if !status.success() {
        bail!("collector exited with {status}");
    }
    Ok(())
}

/// Full-speed load from `cfg.agents` agents for `cfg.duration`: readings
/// acked and seconds.
async fn load(url: &str, cfg: &Config, tag: &str) -> Result<(u64, f64)> {
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for a in 0..cfg.agents {
        let channel = load::connect(url).await?;
        let mut spec = LoadSpec::new(format!("{tag}-{a}"), cfg.series, cfg.batch);
        spec.base_ts_ns = crate::collector::now_ns();
        spec.step_ns = 1_000_000;
        tasks.push(tokio::spawn(load::run(
            channel,
            spec,
            shared.clone(),
            stop.clone(),
            Duration::from_secs(30),
        )));
    }
    let start = Instant::now();
    tokio::time::sleep(cfg.duration).await;
    stop.cancel();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.context("load task")??.acked;
    }
    Ok((acked, start.elapsed().as_secs_f64()))
}

/// Waits until the export has nothing pending; its `sent` total.
async fn drained(db: &std::path::Path) -> Result<u64> {
    let log = CommitLog::sqlite(db.to_owned());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let rows = log.status().await.context("export status")?;
        if let Some((c, p)) = rows.first()
            && p.readings == 0
            && c.sent > 0
        {
            return Ok(c.sent);
        }
        if Instant::now() > deadline {
            bail!("the export did not catch up within 300 s: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
