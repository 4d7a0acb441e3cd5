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
//! Then JetStream, on the machine's `nats-server` (127.0.0.1:4222, one
//! node, file storage): (4) a fresh collector with one `nats` export
//! (protobuf, subject `<prefix>.{agent}.{device}`: ten series a device,
//! so a 1,000-reading batch is ten messages), the same load: ingest rate
//! and its ratio to (1), and the export's rate to lag zero; (5) the
//! export's catch-up: a collector whose nats export points at a port
//! nobody listens on takes the same load (the export falls behind), then
//! restarts with the export (same name, same cursor) pointing at the
//! server: readings behind / time until lag zero. Each run uses its own
//! stream, deleted afterwards.
//!
//! Then both exports at once: (6) a fresh collector with the remote
//! write export and the nats export, the same full-speed load: ingest
//! rate and its ratio to (1); (7) the same two exports with the load held
//! at a fixed rate (100,000 readings/s; 10,000 under `--smoke`; spread
//! over the agents, one batch per agent every `agents × batch / rate`): each
//! export's lag in seconds (the age of its oldest unsent reading, as its
//! cursor's status reads it) sampled every 100 ms, its p99.
//!
//! `--only nats`: phases (1), (4) and (5) only.
//!
//! Checks: each export's lag reaches zero and its cursor counts as sent
//! every reading committed (all are float samples), nothing dropped; the
//! JetStream stream holds as many readings as were committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio_util::sync::CancellationToken;

use tributary_collector::store::export::CommitLog;
use tributary_tests::peers::nats::{SHARED_NATS, delete_stream, stream_info};
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
        "remote_write to VictoriaMetrics, 4 shards, 2000 samples/request; nats to the \
         machine's nats-server (one node, file storage, R1), protobuf, \
         subject <prefix>.{agent}.{device}, 256 messages in flight",
    );
    report.declare("ingest_without_export", "readings/s", None);
    report.declare("ingest_with_export", "readings/s", None);
    report.declare("ingest_ratio", "x", Some(Target::AtLeast(0.8)));
    report.declare("export_live", "samples/s", None);
    report.declare("catch_up", "samples/s", None);
    report.declare("catch_up_vs_live_ingest", "x", None);
    report.declare("ingest_with_nats", "readings/s", None);
    report.declare("ingest_ratio_nats", "x", Some(Target::AtLeast(0.8)));
    report.declare("nats_live", "readings/s", None);
    report.declare(
        "nats_catch_up",
        "readings/s",
        Some(Target::AtLeast(1_000_000.0)),
    );
    let rate = opts.size(100_000.0, 10_000.0);
    report.config("paced_rate", rate);
    report.declare("ingest_with_two", "readings/s", None);
    report.declare("ingest_ratio_two", "x", Some(Target::AtLeast(0.8)));
    report.declare("paced_ingest", "readings/s", None);
    report.declare("lag_p99_remote_write", "s", Some(Target::AtMost(2.0)));
    report.declare("lag_p99_nats", "s", Some(Target::AtMost(2.0)));
    for run in 0..opts.runs() {
        progress.status(&format!("export: run {}", run + 1));
        let dir = TestDir::new("bench-export")?;
        // (1) no export.
        let (c, db) = start_collector(&dir, "plain", None, None).await?;
        let (acked, took) = load(&c.1, &cfg, "plain").await?;
        stop(c.0).await?;
        let _ = db;
        let without = acked as f64 / took;
        report.record("ingest_without_export", without);

        // (2) with the export, VictoriaMetrics up; (3) down, then back.
        if !opts.only_nats {
            let mut vm = Receiver::start(&dir, Kind::Victoria, "victoria").await?;
            let (c, db) =
                start_collector(&dir, "export", Some(&rw_export(&vm.write_url())), None).await?;
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

        // (4) JetStream live.
        let stream = format!("BENCH_{}_{run}", std::process::id());
        let subject = format!("bench{}r{run}", std::process::id());
        delete_stream(SHARED_NATS, &stream).await?;
        let live = nats_export(&format!("nats://{SHARED_NATS}"), &stream, &subject);
        let (c, db) = start_collector(&dir, "nats", Some(&live), None).await?;
        let start = Instant::now();
        let (acked, took) = load(&c.1, &cfg, "nats").await?;
        let with = acked as f64 / took;
        report.record("ingest_with_nats", with);
        report.record("ingest_ratio_nats", with / without);
        let sent = drained(&db).await?;
        report.record("nats_live", sent as f64 / start.elapsed().as_secs_f64());
        report.check(
            "nats live: every committed reading sent",
            sent == acked,
            format!("{acked} acked, {sent} sent"),
        );
        stop(c.0).await?;

        // (5) JetStream catch-up: behind first (nobody on the port), then
        // the same export (name, cursor) pointed at the server.
        let nobody = free_addr()?;
        let dead = nats_export(&format!("nats://{nobody}"), &stream, &subject);
        let (c, db) = start_collector(&dir, "nats-behind", Some(&dead), None).await?;
        let (acked2, _) = load(&c.1, &cfg, "nats-behind").await?;
        // Killed: what it committed is durable; its export only retries.
        let mut behind = c.0;
        behind.kill().await?;
        let (c, _) = start_collector(&dir, "nats-behind", Some(&live), Some(&db)).await?;
        let behind_start = Instant::now();
        let sent2 = drained(&db).await?;
        report.record(
            "nats_catch_up",
            acked2 as f64 / behind_start.elapsed().as_secs_f64(),
        );
        report.check(
            "nats catch-up: every committed reading sent",
            sent2 == acked2,
            format!("{acked2} acked, {sent2} sent"),
        );
        stop(c.0).await?;
        let messages = stream_info(SHARED_NATS, &stream)
            .await?
            .and_then(|i| {
                i.pointer("/state/messages")
                    .and_then(serde_json::Value::as_u64)
            })
            .unwrap_or(0);
        report.check(
            "nats: the stream holds messages",
            messages > 0,
            format!("{messages} messages in {stream}"),
        );
        delete_stream(SHARED_NATS, &stream).await?;
        if opts.only_nats {
            continue;
        }

        // (6) both exports, full speed; (7) both, at a fixed rate.
        let mut vm = Receiver::start(&dir, Kind::Victoria, "victoria-two").await?;
        let stream = format!("BENCH2_{}_{run}", std::process::id());
        delete_stream(SHARED_NATS, &stream).await?;
        let two = format!(
            "{}{}",
            rw_export(&vm.write_url()),
            nats_export(&format!("nats://{SHARED_NATS}"), &stream, &subject)
        );
        let (c, db) = start_collector(&dir, "two", Some(&two), None).await?;
        let (acked, took) = load(&c.1, &cfg, "two").await?;
        let with = acked as f64 / took;
        report.record("ingest_with_two", with);
        report.record("ingest_ratio_two", with / without);
        let sent = drained_all(&db, 2).await?;
        report.check(
            "two exports: every committed reading sent by each",
            sent.iter().all(|&s| s == acked),
            format!("{acked} acked, sent {sent:?}"),
        );
        let sampling = CancellationToken::new();
        let sampler = tokio::spawn(sample_lags(db.clone(), sampling.clone()));
        let (acked2, took2) = paced(&c.1, &cfg, rate, "paced").await?;
        sampling.cancel();
        let lags = sampler.await.context("lag sampler")??;
        report.record("paced_ingest", acked2 as f64 / took2);
        for (name, metric) in [("vm", "lag_p99_remote_write"), ("bus", "lag_p99_nats")] {
            let mut v = lags.get(name).cloned().unwrap_or_default();
            v.sort_by(f64::total_cmp);
            let p99 = v
                .get(((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN);
            report.record(metric, p99);
        }
        let sent = drained_all(&db, 2).await?;
        report.check(
            "paced: every committed reading sent by each export",
            sent.iter().all(|&s| s == acked + acked2),
            format!("{} acked, sent {sent:?}", acked + acked2),
        );
        stop(c.0).await?;
        vm.stop().await?;
        delete_stream(SHARED_NATS, &stream).await?;
    }
    report.note(
        "catch_up counts from the receiver's restart (its start-up time included) to lag 0; \
         live ingest here is the full-speed rate, far above a fleet's live rate; nats_catch_up \
         counts from the collector's restart (its start-up included) to lag 0",
    );
    Ok(report.finish())
}

/// The remote write export to `url`.
fn rw_export(url: &str) -> String {
    format!(
        "\n[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\nurl = \"{url}\"\nmax_backoff = \"1s\"\n"
    )
}

/// The nats export to `url`, creating `stream` (one replica).
fn nats_export(url: &str, stream: &str, subject: &str) -> String {
    format!(
        "\n[[exports]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"{url}\"\nstream = \"{stream}\"\n\
         subject = \"{subject}.{{agent}}.{{device}}\"\ncreate_stream = true\nmax_backoff = \"500ms\"\n\
         timeout = \"2s\"\n"
    )
}

/// A collector on `dir/<name>.db` (or `db`), with the `export` table when given.
async fn start_collector(
    dir: &TestDir,
    name: &str,
    export: Option<&str>,
    db: Option<&std::path::Path>,
) -> Result<((Proc, String), std::path::PathBuf)> {
    let addr = free_addr()?;
    let db = db
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| dir.join(format!("{name}.db")));
    let config = dir.join(format!("{name}.toml"));
    let mut text = "[limits]\nmax_connections_per_address = 1000000\n".to_owned();
    if let Some(export) = export {
        text.push_str(export);
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
    drive(url, cfg, None, tag).await
}

/// The load held at `rate` readings/s (each agent one batch every
/// `agents × batch / rate`, the agents spread over that interval) for
/// `cfg.duration`: readings acked and seconds.
async fn paced(url: &str, cfg: &Config, rate: f64, tag: &str) -> Result<(u64, f64)> {
    drive(url, cfg, Some(rate), tag).await
}

/// `cfg.agents` load agents for `cfg.duration`, at full speed or held at
/// `rate`: readings acked and seconds.
async fn drive(url: &str, cfg: &Config, rate: Option<f64>, tag: &str) -> Result<(u64, f64)> {
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let pace = rate.map(|r| Duration::from_secs_f64(cfg.agents as f64 * cfg.batch as f64 / r));
    let mut tasks = Vec::new();
    for a in 0..cfg.agents {
        let channel = load::connect(url).await?;
        let mut spec = LoadSpec::new(format!("{tag}-{a}"), cfg.series, cfg.batch);
        spec.base_ts_ns = crate::collector::now_ns();
        spec.step_ns = 1_000_000;
        if let Some(pace) = pace {
            spec.pace = Some(pace);
            spec.offset = pace.mul_f64(a as f64 / cfg.agents as f64);
        }
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

/// Each export's lag in seconds, read from its cursor's status every
/// 100 ms until `stop`.
async fn sample_lags(
    db: std::path::PathBuf,
    stop: CancellationToken,
) -> Result<std::collections::HashMap<String, Vec<f64>>> {
    let log = CommitLog::sqlite(db);
    let mut out: std::collections::HashMap<String, Vec<f64>> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.is_cancelled() {
        tick.tick().await;
        let now = crate::collector::now_ns();
        for (c, p) in log.status().await.context("export status")? {
            let lag = p
                .oldest_received_ns
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1e9);
            out.entry(c.name).or_default().push(lag);
        }
    }
    Ok(out)
}

/// Waits until `n` exports have nothing pending; their `sent` totals.
async fn drained_all(db: &std::path::Path, n: usize) -> Result<Vec<u64>> {
    let log = CommitLog::sqlite(db.to_owned());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let rows = log.status().await.context("export status")?;
        if rows.len() == n && rows.iter().all(|(c, p)| p.readings == 0 && c.sent > 0) {
            return Ok(rows.iter().map(|(c, _)| c.sent).collect());
        }
        if Instant::now() > deadline {
            bail!("the exports did not catch up within 300 s: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the one export has nothing pending; its `sent` total.
async fn drained(db: &std::path::Path) -> Result<u64> {
    Ok(drained_all(db, 1).await?[0])
}
