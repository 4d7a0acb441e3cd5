//! `streams`: M agents connected at once to one collector, first idle, then
//! all active together.
//!
//! Each stream has its own connection (as separate agent hosts would),
//! says Hello and gets its Welcome; once every stream is open (or the open
//! deadline passed) the collector's RSS is taken: (RSS − RSS before) / open
//! streams is the memory one idle stream costs. After `--idle` every stream
//! sends a few small batches at once and waits for its acks; the peak RSS
//! is taken then. A stream is complete when everything it sent was acked
//! and stored (ListAgents, per agent).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::collector::{CollectorProc, QueryClient, WorkDir, now_ns};
use crate::load::{self, LoadSpec, Shared, Totals};
use crate::options::Options;
use crate::progress::Progress;
use crate::report::{Report, Target};
use crate::sys;

/// Connection attempts in flight at once.
const CONNECTS_AT_ONCE: usize = 256;

struct Config {
    streams: usize,
    batches: u64,
    readings: usize,
    pace: Duration,
    idle: Duration,
    open_deadline: Duration,
    max_connections: Option<usize>,
    keep: bool,
}

pub async fn run(opts: &Options, progress: &Progress) -> Result<Report> {
    sys::require_procfs()?;
    let streams = opts.streams.unwrap_or(opts.size(10_000, 20));
    let cfg = Config {
        streams,
        batches: opts.size(5, 2),
        readings: opts.size(20, 5),
        pace: opts.size(Duration::from_millis(500), Duration::from_millis(50)),
        idle: opts
            .duration
            .unwrap_or(opts.size(Duration::from_secs(5), Duration::from_millis(200))),
        open_deadline: Duration::from_secs(30) + Duration::from_millis(3 * streams as u64),
        max_connections: opts.max_connections,
        keep: opts.keep,
    };
    let runs = opts.runs();
    let mut report = Report::new("streams");
    report.config("streams", cfg.streams);
    report.config("connections", "one per stream");
    report.config(
        "collector_max_connections",
        cfg.max_connections
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
    );
    report.config("idle_s", cfg.idle.as_secs_f64());
    report.config(
        "active",
        format!(
            "{} batches x {} readings per stream, one per {} ms",
            cfg.batches,
            cfg.readings,
            cfg.pace.as_millis()
        ),
    );
    report.config("open_deadline_s", cfg.open_deadline.as_secs_f64());
    report.config("runs", runs);
    report.declare(
        "streams_open",
        "streams",
        Some(Target::AtLeast(cfg.streams as f64)),
    );
    report.declare(
        "streams_complete",
        "streams",
        Some(Target::AtLeast(cfg.streams as f64)),
    );
    report.declare("open_s", "s", None);
    report.declare("open_retries", "attempts", None);
    report.declare("idle_rss_per_stream_kib", "KiB", None);
    report.declare("collector_idle_rss_mib", "MiB", None);
    report.declare(
        "collector_peak_rss_mib",
        "MiB",
        Some(Target::AtMost(1024.0)),
    );
    report.declare("active_s", "s", None);
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
    let label = format!("streams run {r}/{runs}");
    let dir = WorkDir::new("streams", cfg.keep)?;
    let collector = CollectorProc::start_with(&dir, cfg.max_connections).await?;
    // Before the streams: the collector may cap connections.
    let mut query = QueryClient::connect(&collector.url).await?;
    let base = collector.sample()?;

    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared::default());
    let connects = Arc::new(Semaphore::new(CONNECTS_AT_ONCE));
    let (go_tx, go_rx) = watch::channel(false);
    let give_up = CancellationToken::new();
    let _give_up_on_exit = give_up.clone().drop_guard();
    let never = CancellationToken::new();
    let base_ts = now_ns() - 86_400_000_000_000;
    let t_open = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.streams);
    for i in 0..cfg.streams {
        let url = collector.url.clone();
        let (opened, failed, shared) = (opened.clone(), failed.clone(), shared.clone());
        let retries = retries.clone();
        let (connects, mut go_rx, give_up, never) = (
            connects.clone(),
            go_rx.clone(),
            give_up.clone(),
            never.clone(),
        );
        let mut spec = LoadSpec::new(stream_id(i), 2, cfg.readings);
        spec.limit = Some(cfg.batches * cfg.readings as u64);
        spec.pace = Some(cfg.pace);
        spec.offset = cfg.pace.mul_f64(i as f64 / cfg.streams as f64);
        spec.base_ts_ns = base_ts;
        let deadline = cfg.open_deadline;
        tasks.push(tokio::spawn(async move {
            // Like an agent, try again after a failed attempt (each one
            // counted) until the open deadline.
            let open = async {
                loop {
                    let attempt = async {
                        let permit = connects.acquire().await?;
                        let channel = load::connect(&url).await?;
                        drop(permit);
                        load::open(channel, &spec.agent_id, spec.window).await
                    };
                    match attempt.await {
                        Ok(stream) => return stream,
                        Err(_) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            };
            let stream = tokio::select! {
                s = tokio::time::timeout(deadline, open) => s,
                () = give_up.cancelled() => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return Ok::<_, anyhow::Error>(None);
                }
            };
            let Ok(stream) = stream else {
                failed.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            };
            opened.fetch_add(1, Ordering::Relaxed);
            if go_rx.wait_for(|go| *go).await.is_err() {
                return Ok(None);
            }
            let totals = load::send_all(stream, &spec, &shared, &never, Duration::from_secs(120))
                .await
                .with_context(|| format!("stream {}", spec.agent_id))?;
            Ok(Some(totals))
        }));
    }
    // Open phase.
    let deadline = Instant::now() + cfg.open_deadline;
    loop {
        let (o, f) = (
            opened.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        if o + f >= cfg.streams as u64 || Instant::now() >= deadline {
            break;
        }
        progress.status(&format!(
            "{label}: {o}/{} streams open, {f} failed, {:.0} s, collector {:.0} MiB",
            cfg.streams,
            t_open.elapsed().as_secs_f64(),
            collector.sample()?.rss as f64 / 1048576.0
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let open_s = t_open.elapsed().as_secs_f64();
    give_up.cancel();
    let open = opened.load(Ordering::Relaxed);
    progress
        .wait(
            cfg.idle,
            &format!("{label}: {open} streams idle"),
            String::new,
        )
        .await;
    let idle = collector.sample()?;
    // Active phase.
    let t_active = Instant::now();
    let _ = go_tx.send(true);
    let mut results: Vec<Option<Totals>> = Vec::with_capacity(tasks.len());
    let active_label = format!("{label}: {open} streams active");
    progress
        .during(&active_label, async {
            for t in tasks {
                results.push(t.await.context("stream task")??);
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    let active_s = t_active.elapsed().as_secs_f64();
    let peak = collector.sample()?.hwm;

    let agents = query.agents().await?;
    let want = cfg.batches * cfg.readings as u64;
    let mut complete = 0u64;
    let mut mismatched = 0u64;
    for (i, res) in results.iter().enumerate() {
        let Some(t) = res else { continue };
        let stored = agents.get(&stream_id(i)).map_or(0, |a| a.readings_stored);
        if t.sent == want && t.acked == want && stored == want {
            complete += 1;
        } else {
            mismatched += 1;
        }
    }
    collector.stop().await?;
    report.check(
        format!("run {r}: every open stream sent = acked = stored"),
        mismatched == 0,
        format!(
            "{complete} complete, {mismatched} with differing counts, {} never opened",
            cfg.streams as u64 - open
        ),
    );
    let mib = |b: u64| b as f64 / 1048576.0;
    report.record("streams_open", open as f64);
    report.record("streams_complete", complete as f64);
    report.record("open_s", open_s);
    report.record("open_retries", retries.load(Ordering::Relaxed) as f64);
    report.record(
        "idle_rss_per_stream_kib",
        idle.rss.saturating_sub(base.rss) as f64 / 1024.0 / open.max(1) as f64,
    );
    report.record("collector_idle_rss_mib", mib(idle.rss));
    report.record("collector_peak_rss_mib", mib(peak));
    report.record("active_s", active_s);
    progress.say(&format!(
        "{label}: {open} open, {complete} complete, idle {:.1} KiB/stream, peak {:.0} MiB",
        idle.rss.saturating_sub(base.rss) as f64 / 1024.0 / open.max(1) as f64,
        mib(peak)
    ));
    Ok(())
}

fn stream_id(i: usize) -> String {
    format!("stream-{i:05}")
}
