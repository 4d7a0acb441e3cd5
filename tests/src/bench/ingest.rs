//! `ingest`: how many readings per second the collector commits and acks.
//!
//! Each run: (1) the SQLite ceiling (see [`crate::ceiling`]) in a fresh
//! file; (2) a fresh collector process; N load agents, each on its own
//! connection with a window of unacked batches, stream float readings as
//! fast as acks allow, while a probe agent trickles in one day (86,400
//! points at 1 s) of one series, interleaved with the load; after a warm-up
//! the acked readings, the collector's CPU time and the ack latencies are
//! measured over `--duration`; (3) the day is read back through
//! `Query/Range`, with N × S + 1 series stored; (4) new agents send at a
//! fixed total rate (default 100,000 readings/s, in batches of 100 ms worth,
//! as the real agent batches) and their ack latency is measured.
//!
//! Checks: every reading acked was stored (ListAgents) and the Range call
//! returned the whole day.
//!
//! With `--store postgres://...` every run gets a fresh schema in that
//! database: the ceiling is binary COPY into an unindexed table of the
//! store's reading columns (see [`ceiling::measure_postgres`]), the
//! collector stores there, and (5) two collectors on one more fresh schema
//! of the same database take half the load agents each: their readings
//! per second together, against the same ceiling.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tributary_proto::v1 as pb;

use crate::ceiling;
use crate::collector::{CollectorProc, QueryClient, WorkDir, now_ns};
use crate::load::{self, LoadSpec, Shared, Totals};
use crate::options::Options;
use crate::progress::Progress;
use crate::report::{Report, Target};
use crate::sys::{self, percentile};

const NS: i64 = 1_000_000_000;
const DAY_NS: i64 = 86_400 * NS;
/// Range calls per run; the median is reported.
const RANGE_QUERIES: usize = 5;

struct Config {
    agents: usize,
    series: usize,
    batch: usize,
    window: usize,
    duration: Duration,
    warmup: Duration,
    ceiling_rows: u64,
    range_points: u64,
    rate: u64,
    drain: Duration,
    keep: bool,
    /// A PostgreSQL URL; SQLite when `None`.
    store: Option<String>,
}

pub async fn run(opts: &Options, progress: &Progress) -> Result<Report> {
    sys::require_procfs()?;
    let cfg = Config {
        agents: opts.agents.unwrap_or(opts.size(100, 2)),
        series: opts.series.unwrap_or(opts.size(100, 5)),
        batch: opts.batch.unwrap_or(opts.size(1000, 50)),
        window: opts.window.unwrap_or(opts.size(4, 2)),
        duration: opts
            .duration
            .unwrap_or(opts.size(Duration::from_secs(10), Duration::from_millis(700))),
        warmup: opts.size(Duration::from_secs(2), Duration::from_millis(200)),
        ceiling_rows: opts.ceiling_rows.unwrap_or(opts.size(5_000_000, 20_000)),
        range_points: opts.range_points.unwrap_or(opts.size(86_400, 1_000)),
        rate: opts.rate.unwrap_or(opts.size(100_000, 1_000)),
        drain: Duration::from_secs(120),
        keep: opts.keep,
        store: opts.store.clone(),
    };
    let runs = opts.runs();
    let mut report = Report::new("ingest");
    report.config("agents", cfg.agents);
    report.config("series_per_agent", cfg.series);
    report.config("batch", cfg.batch);
    report.config("window", cfg.window);
    report.config("duration_s", cfg.duration.as_secs_f64());
    report.config("warmup_s", cfg.warmup.as_secs_f64());
    report.config("runs", runs);
    match &cfg.store {
        None => report.config("durability", "synchronous=full (collector default)"),
        Some(url) => {
            let client = ceiling::pg_connect(url).await?;
            let sync: String = client
                .query_one("SHOW synchronous_commit", &[])
                .await
                .context("SHOW synchronous_commit")?
                .get(0);
            report.config("store", "postgres (a fresh schema per run)");
            report.config(
                "durability",
                format!("PostgreSQL synchronous_commit={sync}, for the ceiling and the collector"),
            );
        }
    }
    report.config("ceiling_rows", cfg.ceiling_rows);
    report.config("ceiling_rows_per_tx", ceiling::ROWS_PER_TX);
    report.config("range_points", cfg.range_points);
    report.config("latency_rate", cfg.rate);
    report.declare(
        "readings_per_s",
        "readings/s",
        Some(Target::AtLeast(1_000_000.0)),
    );
    report.declare("worst_1s_readings_per_s", "readings/s", None);
    if cfg.store.is_none() {
        report.declare("head_rows_at_end", "", None);
        report.declare("head_readings_at_end", "readings", None);
    }
    report.declare("ceiling_readings_per_s", "rows/s", None);
    report.declare("ceiling_client_cpu_cores", "cores", None);
    report.declare("ratio", "", Some(Target::AtLeast(0.5)));
    report.declare("ack_p50_ms", "ms", None);
    report.declare("ack_p99_ms", "ms", None);
    report.declare("collector_cpu_s_per_million", "CPU-s/M", None);
    report.declare("collector_cpu_cores", "cores", None);
    report.declare("harness_cpu_cores", "cores", None);
    report.declare("collector_peak_rss_mib", "MiB", None);
    report.declare("series_stored", "", None);
    report.declare("range_query_ms", "ms", Some(Target::AtMost(50.0)));
    report.declare("latency_run_readings_per_s", "readings/s", None);
    report.declare("latency_run_ack_p50_ms", "ms", None);
    report.declare("latency_run_ack_p99_ms", "ms", Some(Target::AtMost(50.0)));
    report.declare("latency_run_collector_cpu_cores", "cores", None);
    if cfg.store.is_some() {
        report.declare("two_collectors_readings_per_s", "readings/s", None);
        report.declare("two_collectors_ratio", "", Some(Target::AtLeast(0.5)));
    }
    for r in 1..=runs {
        one_run(&cfg, r, runs, progress, &mut report).await?;
    }
    report.note(
        "load agents, the range probe and the ceiling run inside tributary-bench on the same cores as the collector (harness_cpu_cores)",
    );
    report.note(format!(
        "range data set: {} points of one series written through Ingest, interleaved with the load (one row per reading via the collector's own write path)",
        cfg.range_points
    ));
    Ok(report.finish())
}

async fn one_run(
    cfg: &Config,
    r: usize,
    runs: usize,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let label = format!("ingest run {r}/{runs}");
    let dir = WorkDir::new("ingest", cfg.keep)?;

    // 1. The ceiling, alone on the machine.
    let (rows, series) = (cfg.ceiling_rows, (cfg.agents * cfg.series) as u64);
    let schemas = match &cfg.store {
        None => None,
        Some(url) => Some(Schemas::new(url, r, cfg.keep).await?),
    };
    let ceiling_h0 = sys::sample_self()?;
    let ceiling_t0 = Instant::now();
    let ceiling = match (&cfg.store, &schemas) {
        (Some(url), Some(s)) => progress
            .during(
                &format!("{label}: PostgreSQL ceiling (binary COPY), {rows} rows"),
                ceiling::measure_postgres(url, &s.one, rows, series),
            )
            .await
            .context("PostgreSQL ceiling")?,
        _ => {
            let path = dir.join("ceiling.db");
            progress
                .during(
                    &format!("{label}: SQLite ceiling, {rows} rows"),
                    tokio::task::spawn_blocking(move || ceiling::measure(&path, rows, series)),
                )
                .await
                .context("ceiling task")??
        }
    };
    // The ceiling's own client (COPY encoding for PostgreSQL, SQLite
    // itself otherwise) runs in this process: its share of a core says
    // whether the ceiling measured the database or its client.
    let ceiling_client_cores =
        (sys::sample_self()?.cpu_s - ceiling_h0.cpu_s) / ceiling_t0.elapsed().as_secs_f64();
    progress.say(&format!("{label}: ceiling {ceiling:.0} rows/s"));

    // 2. Throughput.
    let collector = match &schemas {
        Some(s) => CollectorProc::start_with_store(&dir, &s.url(&s.one)).await?,
        None => CollectorProc::start(&dir).await?,
    };
    let mut query = QueryClient::connect(&collector.url).await?;
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let base_ts = now_ns() - 14 * DAY_NS;
    let mut tasks = Vec::new();
    for i in 0..cfg.agents {
        let mut spec = LoadSpec::new(format!("load-{i:04}"), cfg.series as u32, cfg.batch);
        spec.window = cfg.window;
        spec.base_ts_ns = base_ts;
        tasks.push(spawn_agent(&collector.url, spec, &shared, &stop, cfg.drain));
    }
    // The day of the range query, one batch at a time across the run.
    let day_start = (now_ns() / DAY_NS - 30) * DAY_NS;
    let probe_batch = cfg.range_points.min(1000);
    let probe_batches = cfg.range_points.div_ceil(probe_batch);
    let mut probe = LoadSpec::new("range-probe", 1, probe_batch as usize);
    probe.device = Some("day".to_owned());
    probe.limit = Some(cfg.range_points);
    probe.base_ts_ns = day_start;
    probe.pace = Some((cfg.warmup + cfg.duration).div_f64(probe_batches as f64));
    let probe_stop = CancellationToken::new();
    let probe_task = spawn_agent(&collector.url, probe, &shared, &probe_stop, cfg.drain);
    let _cancel_probe = probe_stop.clone().drop_guard();

    await_welcomes(&shared, cfg.agents as u64 + 1, &mut tasks, progress, &label).await?;
    progress
        .wait(cfg.warmup, &format!("{label}: warm-up"), String::new)
        .await;
    let c0 = collector.sample()?;
    let h0 = sys::sample_self()?;
    let acked_window = measure_acked(
        &shared,
        cfg.duration,
        &format!("{label}: throughput"),
        progress,
    )
    .await;
    let (a0, a1, elapsed) = (acked_window.a0, acked_window.a1, acked_window.elapsed);
    let c1 = collector.sample()?;
    // The head at the window's end (SQLite): what compaction has not
    // caught up with; bounded when it keeps pace.
    let head = match &schemas {
        None => Some(head_of(&dir.join("collector.db"))?),
        Some(_) => None,
    };
    let h1 = sys::sample_self()?;
    stop.cancel();
    let mut totals = progress
        .during(&format!("{label}: draining"), join_all(tasks))
        .await?;
    let probe_totals = progress
        .during(&format!("{label}: range probe finishing"), async {
            probe_task.await.context("probe task")?
        })
        .await?;
    let acked = totals.acked + probe_totals.acked;
    let sent = totals.sent + probe_totals.sent;
    let stored = query.stored("load-").await? + query.stored("range-probe").await?;
    report.check(
        format!("run {r}: readings sent = acked = stored"),
        sent == acked && acked == stored,
        format!("{sent} sent, {acked} acked, {stored} stored"),
    );

    // 3. Range query of the day.
    let series_stored = query.series_count().await?;
    let filter = pb::SeriesFilter {
        agent: "range-probe".to_owned(),
        device: "day".to_owned(),
        metric: "value".to_owned(),
    };
    let until = day_start + cfg.range_points as i64 * NS;
    let mut range_ms = Vec::new();
    let mut range_points = 0;
    for _ in 0..RANGE_QUERIES {
        let (points, took) = query.range_count(filter.clone(), day_start, until).await?;
        range_points = points;
        range_ms.push(took.as_secs_f64() * 1000.0);
    }
    report.check(
        format!("run {r}: Range returned the whole day"),
        range_points == cfg.range_points,
        format!("{range_points} of {} points", cfg.range_points),
    );

    // 4. Ack latency at a fixed rate.
    let lat = latency_run(cfg, &collector, &label, progress).await?;
    let lat_stored = query.stored("lat-").await?;
    report.check(
        format!("run {r}: latency run acked = stored"),
        lat.acked == lat_stored && lat.sent == lat.acked,
        format!(
            "{} sent, {} acked, {lat_stored} stored",
            lat.sent, lat.acked
        ),
    );
    let peak = collector.sample()?.hwm;
    collector.stop().await?;

    // 5. Two collectors on one database (PostgreSQL only).
    if let Some(s) = &schemas {
        let two = two_collectors(cfg, &dir, &s.url(&s.two), &label, progress, report, r).await?;
        report.record("two_collectors_readings_per_s", two);
        report.record("two_collectors_ratio", two / ceiling);
        progress.say(&format!(
            "{label}: two collectors on one database: {two:.0} readings/s ({:.2} of the ceiling)",
            two / ceiling
        ));
        s.drop_all().await?;
    }

    let measured = (a1 - a0) as f64;
    let rate = measured / elapsed;
    report.record("readings_per_s", rate);
    report.record("worst_1s_readings_per_s", acked_window.worst_1s);
    if let Some((rows, points)) = head {
        report.record("head_rows_at_end", rows as f64);
        report.record("head_readings_at_end", points as f64);
    }
    report.record("ceiling_readings_per_s", ceiling);
    report.record("ceiling_client_cpu_cores", ceiling_client_cores);
    report.record("ratio", rate / ceiling);
    report.record(
        "ack_p50_ms",
        percentile(&mut totals.latencies, 50.0).unwrap_or(0.0) * 1000.0,
    );
    report.record(
        "ack_p99_ms",
        percentile(&mut totals.latencies, 99.0).unwrap_or(0.0) * 1000.0,
    );
    report.record(
        "collector_cpu_s_per_million",
        (c1.cpu_s - c0.cpu_s) / measured.max(1.0) * 1e6,
    );
    report.record("collector_cpu_cores", (c1.cpu_s - c0.cpu_s) / elapsed);
    report.record("harness_cpu_cores", (h1.cpu_s - h0.cpu_s) / elapsed);
    report.record("collector_peak_rss_mib", peak as f64 / (1024.0 * 1024.0));
    report.record("series_stored", series_stored as f64);
    report.record(
        "range_query_ms",
        percentile(&mut range_ms, 50.0).unwrap_or(0.0),
    );
    report.record("latency_run_readings_per_s", lat.rate);
    report.record("latency_run_ack_p50_ms", lat.p50_ms);
    report.record("latency_run_ack_p99_ms", lat.p99_ms);
    report.record("latency_run_collector_cpu_cores", lat.cpu_cores);
    progress.say(&format!(
        "{label}: {rate:.0} readings/s ({:.2} of the ceiling; worst 1 s {:.0}), range {:.1} ms, ack p99 at {:.0}/s: {:.1} ms",
        rate / ceiling,
        acked_window.worst_1s,
        percentile(&mut range_ms, 50.0).unwrap_or(0.0),
        lat.rate,
        lat.p99_ms
    ));
    Ok(())
}

/// What the load agents of one window got acked.
struct Acked {
    /// The count at the start and at the end, and the seconds between.
    a0: u64,
    a1: u64,
    elapsed: f64,
    /// The slowest stretch: the least rate over any window of at least
    /// one second between two samples (taken every half second), so a
    /// stall that an average over the run hides shows here.
    worst_1s: f64,
}

/// Readings acked by the load agents of `shared` over `duration` (shown
/// live under `label`).
async fn measure_acked(
    shared: &Shared,
    duration: Duration,
    label: &str,
    progress: &Progress,
) -> Acked {
    let a0 = shared.acked_readings.load(Ordering::Relaxed);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    let mut samples = vec![(t0, a0)];
    progress
        .wait(duration, label, || {
            let now = shared.acked_readings.load(Ordering::Relaxed);
            samples.push((Instant::now(), now));
            format!(
                "{:.0} readings/s acked",
                (now - a0) as f64 / t0.elapsed().as_secs_f64()
            )
        })
        .await;
    shared.measuring.store(false, Ordering::Relaxed);
    let a1 = shared.acked_readings.load(Ordering::Relaxed);
    samples.push((Instant::now(), a1));
    Acked {
        a0,
        a1,
        elapsed: t0.elapsed().as_secs_f64(),
        worst_1s: worst_window(&samples, Duration::from_secs(1)),
    }
}

/// The least rate of `(time, count)` samples over windows of at least
/// `width` (each from one sample to the first one `width` later); the
/// whole span's rate when it is shorter than `width`.
fn worst_window(samples: &[(Instant, u64)], width: Duration) -> f64 {
    let rate = |(t0, a0): (Instant, u64), (t1, a1): (Instant, u64)| {
        a1.saturating_sub(a0) as f64 / t1.duration_since(t0).as_secs_f64().max(1e-9)
    };
    let mut worst: Option<f64> = None;
    for (i, &start) in samples.iter().enumerate() {
        if let Some(&end) = samples[i..]
            .iter()
            .find(|(t, _)| t.duration_since(start.0) >= width)
        {
            let r = rate(start, end);
            worst = Some(worst.map_or(r, |w| w.min(r)));
        }
    }
    match (worst, samples.first(), samples.last()) {
        (Some(w), _, _) => w,
        (None, Some(&first), Some(&last)) => rate(first, last),
        _ => 0.0,
    }
}

/// Head rows (committed batches not yet compacted into chunks) and their
/// readings in the collector's SQLite file, read on the side.
fn head_of(db: &std::path::Path) -> Result<(u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("open {}", db.display()))?;
    conn.query_row(
        "SELECT count(*), COALESCE(sum(count), 0) FROM head",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .with_context(|| format!("{}: count the head", db.display()))
}

/// The schemas of one PostgreSQL run: `one` for the ceiling and the
/// single collector, `two` for the two collectors.
struct Schemas {
    base: String,
    one: String,
    two: String,
    keep: bool,
}

impl Schemas {
    async fn new(base: &str, run: usize, keep: bool) -> Result<Schemas> {
        let pid = std::process::id();
        let s = Schemas {
            base: base.to_owned(),
            one: format!("bench_ingest_{pid}_{run}_one"),
            two: format!("bench_ingest_{pid}_{run}_two"),
            keep,
        };
        let client = ceiling::pg_connect(base).await?;
        for name in [&s.one, &s.two] {
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};"
                ))
                .await
                .with_context(|| format!("create schema {name}"))?;
        }
        Ok(s)
    }

    /// The store URL of a collector in `schema`.
    fn url(&self, schema: &str) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{schema}", self.base)
    }

    async fn drop_all(&self) -> Result<()> {
        if self.keep {
            eprintln!("bench: kept schemas {} and {}", self.one, self.two);
            return Ok(());
        }
        let client = ceiling::pg_connect(&self.base).await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA {} CASCADE; DROP SCHEMA {} CASCADE;",
                self.one, self.two
            ))
            .await
            .context("drop the run's schemas")
    }
}

/// Two collectors on `store`, half the load agents each, streaming as fast
/// as acks allow: their readings per second together.
async fn two_collectors(
    cfg: &Config,
    dir: &WorkDir,
    store: &str,
    label: &str,
    progress: &Progress,
    report: &mut Report,
    r: usize,
) -> Result<f64> {
    let label = format!("{label}: two collectors on one database");
    let collectors = [
        CollectorProc::start_with_store(dir, store).await?,
        CollectorProc::start_with_store(dir, store).await?,
    ];
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let base_ts = now_ns() - 21 * DAY_NS;
    let mut tasks = Vec::new();
    for i in 0..cfg.agents {
        let mut spec = LoadSpec::new(format!("two-{i:04}"), cfg.series as u32, cfg.batch);
        spec.window = cfg.window;
        spec.base_ts_ns = base_ts;
        let to = &collectors[i % 2];
        tasks.push(spawn_agent(&to.url, spec, &shared, &stop, cfg.drain));
    }
    await_welcomes(&shared, cfg.agents as u64, &mut tasks, progress, &label).await?;
    progress
        .wait(cfg.warmup, &format!("{label}: warm-up"), String::new)
        .await;
    let Acked {
        a0, a1, elapsed, ..
    } = measure_acked(&shared, cfg.duration, &label, progress).await;
    stop.cancel();
    let totals = progress
        .during(&format!("{label}: draining"), join_all(tasks))
        .await?;
    // One store: either collector lists every agent.
    let mut query = QueryClient::connect(&collectors[0].url).await?;
    let stored = query.stored("two-").await?;
    report.check(
        format!("run {r}: two collectors, readings sent = acked = stored"),
        totals.sent == totals.acked && totals.acked == stored,
        format!(
            "{} sent, {} acked, {stored} stored",
            totals.sent, totals.acked
        ),
    );
    for c in collectors {
        c.stop().await?;
    }
    Ok((a1 - a0) as f64 / elapsed)
}

/// The fixed-rate part of a run.
struct LatencyRun {
    sent: u64,
    acked: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_cores: f64,
}

async fn latency_run(
    cfg: &Config,
    collector: &CollectorProc,
    label: &str,
    progress: &Progress,
) -> Result<LatencyRun> {
    // 100 ms worth of readings per batch, like the agent's default
    // batch_max_delay; agents evenly spread over those 100 ms.
    let per_agent = (cfg.rate as f64 / cfg.agents as f64).max(1.0);
    let (batch, pace) = if per_agent >= 10.0 {
        (
            (per_agent / 10.0).round() as usize,
            Duration::from_millis(100),
        )
    } else {
        (1, Duration::from_secs_f64(1.0 / per_agent))
    };
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let base_ts = now_ns() - 7 * DAY_NS;
    let mut tasks = Vec::new();
    for i in 0..cfg.agents {
        let mut spec = LoadSpec::new(format!("lat-{i:04}"), cfg.series as u32, batch);
        spec.window = 64;
        spec.pace = Some(pace);
        spec.offset = pace.mul_f64(i as f64 / cfg.agents as f64);
        spec.base_ts_ns = base_ts;
        tasks.push(spawn_agent(&collector.url, spec, &shared, &stop, cfg.drain));
    }
    let label = format!("{label}: latency at {} readings/s", cfg.rate);
    await_welcomes(&shared, cfg.agents as u64, &mut tasks, progress, &label).await?;
    progress
        .wait(
            cfg.warmup.max(Duration::from_millis(200)),
            &format!("{label}, warm-up"),
            String::new,
        )
        .await;
    let c0 = collector.sample()?;
    let a0 = shared.acked_readings.load(Ordering::Relaxed);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    progress.wait(cfg.duration, &label, String::new).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let a1 = shared.acked_readings.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let c1 = collector.sample()?;
    stop.cancel();
    let mut totals = join_all(tasks).await?;
    Ok(LatencyRun {
        sent: totals.sent,
        acked: totals.acked,
        rate: (a1 - a0) as f64 / elapsed,
        p50_ms: percentile(&mut totals.latencies, 50.0).unwrap_or(0.0) * 1000.0,
        p99_ms: percentile(&mut totals.latencies, 99.0).unwrap_or(0.0) * 1000.0,
        cpu_cores: (c1.cpu_s - c0.cpu_s) / elapsed,
    })
}

pub(crate) fn spawn_agent(
    url: &str,
    spec: LoadSpec,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    drain: Duration,
) -> JoinHandle<Result<Totals>> {
    let url = url.to_owned();
    let shared = shared.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        let id = spec.agent_id.clone();
        let channel = load::connect(&url).await?;
        load::run(channel, spec, shared, stop, drain)
            .await
            .with_context(|| format!("load agent {id}"))
    })
}

/// Waits until `n` streams got their Welcome; a load agent that fails
/// meanwhile fails this.
pub(crate) async fn await_welcomes(
    shared: &Shared,
    n: u64,
    tasks: &mut Vec<JoinHandle<Result<Totals>>>,
    progress: &Progress,
    label: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let welcomed = shared.welcomed.load(Ordering::Relaxed);
        if welcomed >= n {
            return Ok(());
        }
        if let Some(i) = tasks.iter().position(JoinHandle::is_finished) {
            let task = tasks.swap_remove(i);
            task.await.context("load agent task")??;
            bail!("a load agent ended before the run started");
        }
        if Instant::now() >= deadline {
            bail!("only {welcomed} of {n} streams welcomed after 60 s");
        }
        progress.status(&format!("{label}: {welcomed}/{n} streams open"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Joins the load agents and adds up what they did.
pub(crate) async fn join_all(tasks: Vec<JoinHandle<Result<Totals>>>) -> Result<Totals> {
    let mut sum = Totals::default();
    for task in tasks {
        let t = task.await.context("load agent task")??;
        sum.sent += t.sent;
        sum.acked += t.acked;
        sum.latencies.extend(t.latencies);
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_window_finds_a_stall_the_average_hides() {
        let t0 = Instant::now();
        let at = |ms: u64, n: u64| (t0 + Duration::from_millis(ms), n);
        // 1,000/s, then 1.5 s with 100 readings, then 1,000/s again.
        let samples = [
            at(0, 0),
            at(500, 500),
            at(1000, 1000),
            at(1500, 1050),
            at(2500, 1100),
            at(3000, 1600),
            at(3500, 2100),
        ];
        let worst = worst_window(&samples, Duration::from_secs(1));
        assert!((worst - 50.0).abs() < 1e-6, "worst {worst}");
        // Shorter than the window: the span's rate.
        let short = worst_window(&samples[..2], Duration::from_secs(1));
        assert!((short - 1000.0).abs() < 1e-6, "short {short}");
    }
}
