//! `promql`: the collector's Prometheus HTTP API against Prometheus itself,
//! on the same data, in one run.
//!
//! The data: the differential test's data set (`promql_data::generate`,
//! a few hundred series over two hours) and `--series` counters `m`
//! (default 10,000) over `--hours` hours (6) at 15 s
//! (`promql_data::counters`), written once as OpenMetrics, turned into
//! blocks by `promtool tsdb create-blocks-from openmetrics` for Prometheus
//! and sent to a collector process (SQLite, defaults) through Ingest.
//!
//! Measured once every collector has gone idle (its compaction of the data
//! done), each side asked in turn, one query at a time, over HTTP:
//! 1. the corpus (`tests/promql/corpus.txt`, as the differential test asks
//!    it: four instants and three ranges per query): each query's time on
//!    each side is the median of `--reps` repetitions; the ratio
//!    Tributary / Prometheus per query, and its median over the corpus;
//! 2. `sum by (device) (rate(m[5m]))` over the whole span at a 15 s step,
//!    the median of `--reps` repetitions on each side;
//! 3. ingest throughput, as `ingest` measures it (load agents streaming
//!    float readings as fast as acks allow, readings acked per second),
//!    on the same collector, in `--pairs` pairs of phases of `--duration`:
//!    one without queries, one with the query of 2. asked in a loop (its
//!    answer read, not decoded), the order alternating from pair to pair,
//!    fresh load agents and a warm-up per pair, and the collector idle
//!    again (its compaction done) before the next pair. Per pair the drop
//!    is 1 − with / without; reported: its median over the pairs, least
//!    and greatest, pooled, and counting the points compaction merged as
//!    readings (the size tiers' merges come in bursts a minute apart at
//!    full speed, and land in one phase or the other). Per phase: the CPU
//!    of the collector's merger thread, of its query threads, of the rest,
//!    and of this process (the load agents). With `--baseline`, every pair
//!    also runs on the baseline's collector, the two in turn.
//!
//! Checks: both sides answer every query with the same status and the
//! same number of values (the differential test compares the values
//! themselves), and every reading sent is stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use tributary_tests::process::{free_addr, wait_for_port};
use tributary_tests::promql_data::{self, INTERVAL, T0};

use crate::collector::{CollectorProc, QueryClient, WorkDir, now_ns};
use crate::ingest::{await_welcomes, join_all, spawn_agent};
use crate::load::{LoadSpec, Shared};
use crate::options::Options;
use crate::progress::Progress;
use crate::report::{Report, Target};
use crate::sys::{self, ThreadTimes, percentile};
use crate::vs_prometheus::find_prometheus;

/// The heavy query of the issue.
const HEAVY: &str = "sum by (device) (rate(m[5m]))";
/// Where the counters `m` start (Unix seconds): a day after the corpus data.
const M_START: i64 = T0 + 86_400;
/// Agents and devices the counters are spread over.
const M_AGENTS: usize = 10;
const M_DEVICES: usize = 100;
const NS: i64 = 1_000_000_000;
const DAY_NS: i64 = 86_400 * NS;

struct Config {
    series: usize,
    hours: i64,
    reps: usize,
    agents: usize,
    series_per_agent: usize,
    batch: usize,
    duration: Duration,
    /// Pairs of ingest phases (without and with queries).
    pairs: usize,
    warmup: Duration,
    prometheus: PathBuf,
    keep: bool,
    /// `--corpus-only`: skip the heavy query and the ingest phases.
    corpus_only: bool,
    /// Only the heavy query.
    heavy_only: bool,
    /// Another build's binaries, whose collector answers the heavy query
    /// too, on a copy of the same store.
    baseline: Option<PathBuf>,
}

pub async fn run(opts: &Options, progress: &Progress) -> Result<Report> {
    sys::require_procfs()?;
    let Some(prometheus) = opts.prometheus.clone().or_else(find_prometheus) else {
        bail!(
            "prometheus not found on PATH: install Debian's package (apt-get install prometheus) or pass --prometheus PATH (cargo xtask bench promql installs it)"
        );
    };
    let cfg = Config {
        series: opts.query_series.unwrap_or(opts.size(10_000, 50)),
        hours: opts.hours.unwrap_or(opts.size(6, 1)) as i64,
        reps: opts.reps.unwrap_or(opts.size(5, 1)),
        agents: opts.agents.unwrap_or(opts.size(100, 2)),
        series_per_agent: 100,
        batch: opts.batch.unwrap_or(opts.size(1000, 50)),
        duration: opts
            .duration
            .unwrap_or(opts.size(Duration::from_secs(10), Duration::from_millis(700))),
        pairs: opts.pairs.unwrap_or(opts.size(4, 1)),
        warmup: opts.size(Duration::from_secs(2), Duration::from_millis(200)),
        prometheus,
        keep: opts.keep,
        corpus_only: opts.corpus_only,
        heavy_only: opts.heavy_only,
        baseline: opts.baseline.clone(),
    };
    let runs = opts.runs();
    let mut report = Report::new("promql");
    report.config("series_m", cfg.series);
    report.config("hours_m", cfg.hours);
    report.config("heavy_query", HEAVY);
    report.config("heavy_step_s", INTERVAL);
    report.config("reps", cfg.reps);
    report.config("ingest_agents", cfg.agents);
    report.config("ingest_series_per_agent", cfg.series_per_agent);
    report.config("ingest_batch", cfg.batch);
    report.config("duration_s", cfg.duration.as_secs_f64());
    report.config("runs", runs);
    report.config("prometheus", prometheus_version(&cfg.prometheus));
    report.declare("corpus_median_ratio", "", Some(Target::AtMost(1.0)));
    report.declare("corpus_queries", "", None);
    report.declare("corpus_tributary_total_ms", "ms", None);
    report.declare("corpus_prometheus_total_ms", "ms", None);
    report.declare("corpus_worst_ratio", "", None);
    report.declare("heavy_tributary_ms", "ms", None);
    report.declare("heavy_prometheus_ms", "ms", None);
    report.declare("heavy_ratio", "", Some(Target::AtMost(1.0)));
    if let Some(dir) = &cfg.baseline {
        report.config("baseline", dir.display().to_string());
        report.declare("heavy_baseline_ms", "ms", None);
        report.declare("heavy_baseline_ratio", "", None);
        report.declare("heavy_speedup_over_baseline", "", None);
    }
    report.config("ingest_pairs", cfg.pairs);
    let mut ingest_metrics = INGEST_METRICS.to_vec();
    if cfg.baseline.is_some() {
        ingest_metrics.extend(BASELINE_INGEST_METRICS);
    }
    for name in ingest_metrics {
        let unit = if name.ends_with("per_s") {
            "readings/s"
        } else {
            ""
        };
        let target = (name == "ingest_drop").then_some(Target::AtMost(0.10));
        report.declare(name, unit, target);
    }
    report.declare("load_tributary_s", "s", None);
    report.declare("load_promtool_s", "s", None);
    for r in 1..=runs {
        one_run(&cfg, r, runs, progress, &mut report).await?;
    }
    report.note(
        "latency is the wall time of one HTTP request (a new connection each, for both sides) from tributary-bench, on the same two cores",
    );
    report.note(
        "corpus: per query the sum over its seven evaluations (4 instants, 3 ranges), median of the reps; the ratio is per query, then the median over the corpus",
    );
    Ok(report.finish())
}

async fn one_run(
    cfg: &Config,
    r: usize,
    runs: usize,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let label = format!("promql run {r}/{runs}");
    let dir = WorkDir::new("promql", cfg.keep)?;
    let samples = cfg.hours * 3600 / INTERVAL;
    let mut data = promql_data::generate();
    data.extend(promql_data::counters(
        cfg.series, M_AGENTS, M_DEVICES, M_START, samples,
    ));

    // Prometheus: OpenMetrics → blocks → a server on them.
    let om = dir.join("data.om");
    promql_data::write_openmetrics(&data, &om)?;
    let t = Instant::now();
    let blocks = dir.join("prometheus-data");
    let out = progress
        .during(
            &format!("{label}: promtool tsdb create-blocks-from openmetrics"),
            tokio::process::Command::new(promtool_beside(&cfg.prometheus))
                .args(["tsdb", "create-blocks-from", "openmetrics"])
                .arg(&om)
                .arg(&blocks)
                .output(),
        )
        .await
        .context("run promtool")?;
    ensure!(
        out.status.success(),
        "promtool tsdb create-blocks-from openmetrics failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let promtool_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&om);
    let (_prometheus, prom_url) = start_prometheus(&cfg.prometheus, &dir, &blocks).await?;

    // Tributary: the same series through Ingest.
    let http = free_addr()?;
    let collector = CollectorProc::start_with_http(&dir, http).await?;
    wait_for_port(http, Duration::from_secs(30)).await?;
    let trib_url = format!("http://{http}");
    let t = Instant::now();
    progress
        .during(
            &format!("{label}: ingest {} series", data.len()),
            promql_data::ingest(&collector.url, &data),
        )
        .await?;
    let load_s = t.elapsed().as_secs_f64();
    drop(data);

    // The baseline: the store copied while no collector has it open.
    let (mut collector, mut trib_url) = (collector, trib_url);
    let mut baseline = None;
    if let Some(bin_dir) = &cfg.baseline {
        collector.stop().await?;
        for suffix in ["", "-wal", "-shm"] {
            let from = dir.join(&format!("collector.db{suffix}"));
            if from.exists() {
                std::fs::copy(&from, dir.join(&format!("baseline.db{suffix}")))
                    .with_context(|| format!("copy {}", from.display()))?;
            }
        }
        let http = free_addr()?;
        collector = CollectorProc::start_with_http(&dir, http).await?;
        wait_for_port(http, Duration::from_secs(30)).await?;
        trib_url = format!("http://{http}");
        let http = free_addr()?;
        let proc = CollectorProc::start_other(&dir, "baseline", http, bin_dir).await?;
        wait_for_port(http, Duration::from_secs(30)).await?;
        baseline = Some((proc, format!("http://{http}")));
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(600))
        .build()?;

    // Both sides idle before anything is timed: Prometheus has its blocks
    // already; a collector may still be compacting what it was just sent
    // (two with `--baseline`, each on its copy), work that queries, on
    // their idle-priority threads, would wait for.
    settle(&collector, &trib_url, &label, progress).await?;
    if let Some((proc, url)) = &baseline {
        settle(proc, url, &label, progress).await?;
    }

    // 1. The corpus.
    let cases = if cfg.heavy_only {
        Vec::new()
    } else {
        corpus()?
    };
    let mut timed = Vec::new();
    let (mut trib_total, mut prom_total) = (0.0, 0.0);
    let mut mismatched = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let query = &case.query;
        progress.status(&format!("{label}: corpus {}/{}", i + 1, cases.len()));
        let (mut tt, mut pt) = (Vec::new(), Vec::new());
        for _ in 0..cfg.reps {
            let (mut ts, mut ps) = (0.0, 0.0);
            for (endpoint, params) in evaluations() {
                let (p_ms, p_status, p_values) =
                    ask(&client, &prom_url, endpoint, query, &params).await?;
                let (t_ms, t_status, t_values) =
                    ask(&client, &trib_url, endpoint, query, &params).await?;
                if (p_status, p_values) != (t_status, t_values) && mismatched.len() < 5 {
                    mismatched.push(format!(
                        "{query} ({endpoint}): prometheus {p_status} {p_values} values, tributary {t_status} {t_values}"
                    ));
                }
                ps += p_ms;
                ts += t_ms;
            }
            tt.push(ts);
            pt.push(ps);
        }
        let (t_med, p_med) = (
            percentile(&mut tt, 50.0).unwrap_or(0.0),
            percentile(&mut pt, 50.0).unwrap_or(0.0),
        );
        trib_total += t_med;
        prom_total += p_med;
        timed.push(Timed {
            case,
            tributary_ms: t_med,
            prometheus_ms: p_med,
        });
    }
    let mut ratios: Vec<f64> = timed.iter().map(Timed::ratio).collect();
    if !cfg.heavy_only {
        report.check(
            format!("run {r}: corpus answers agree in status and size"),
            mismatched.is_empty(),
            if mismatched.is_empty() {
                format!("{} queries × 7 evaluations", cases.len())
            } else {
                mismatched.join("; ")
            },
        );
    }
    let worst = ratios.iter().copied().fold(0.0, f64::max);
    let median = percentile(&mut ratios, 50.0).unwrap_or(0.0);
    report.record("corpus_median_ratio", median);
    report.record("corpus_queries", cases.len() as f64);
    report.record("corpus_tributary_total_ms", trib_total);
    report.record("corpus_prometheus_total_ms", prom_total);
    report.record("corpus_worst_ratio", worst);
    if !timed.is_empty() {
        corpus_tables(r, &mut timed, report);
    }
    if cfg.corpus_only {
        progress.say(&format!(
            "{label}: corpus median ratio {median:.2} (worst {worst:.2}), {trib_total:.0} ms vs {prom_total:.0} ms"
        ));
        collector.stop().await?;
        return Ok(());
    }

    // 2. The heavy query.
    let heavy = heavy_params(cfg.hours);
    let mut sides = vec![prom_url.as_str(), trib_url.as_str()];
    if let Some((_, url)) = &baseline {
        sides.push(url);
    }
    if cfg.heavy_only {
        // Without the corpus before it, the first query would also fill
        // each side's caches (Tributary's series catalogue).
        progress.status(&format!("{label}: {HEAVY}, unmeasured"));
        for url in &sides {
            ask(&client, url, "query_range", HEAVY, &heavy).await?;
        }
    }
    let (mut tt, mut pt, mut bt) = (Vec::new(), Vec::new(), Vec::new());
    let mut heavy_sizes = Vec::new();
    for k in 0..cfg.reps {
        progress.status(&format!("{label}: {HEAVY} {}/{}", k + 1, cfg.reps));
        // Every side first, in the middle and last in turn.
        let mut answers = Vec::new();
        for j in 0..sides.len() {
            let side = (j + k) % sides.len();
            answers.push((
                side,
                ask(&client, sides[side], "query_range", HEAVY, &heavy).await?,
            ));
        }
        answers.sort_by_key(|a| a.0);
        let [
            (_, (p_ms, p_status, p_values)),
            (_, (t_ms, t_status, t_values)),
            ref rest @ ..,
        ] = answers[..]
        else {
            bail!("{HEAVY}: not every side answered");
        };
        heavy_sizes.push((p_status, p_values, t_status, t_values));
        if let Some(&(_, (b_ms, b_status, b_values))) = rest.first() {
            heavy_sizes.push((p_status, p_values, b_status, b_values));
            bt.push(b_ms);
        }
        pt.push(p_ms);
        tt.push(t_ms);
    }
    let expected_values = (M_DEVICES.min(cfg.series / M_AGENTS.min(cfg.series).max(1)))
        * (cfg.hours * 3600 / INTERVAL + 1) as usize;
    report.check(
        format!("run {r}: {HEAVY}: both sides answer 200 with the same values"),
        heavy_sizes
            .iter()
            .all(|&(ps, pv, ts, tv)| ps == 200 && ts == 200 && pv == tv && pv > 0),
        format!("(prometheus status, values, tributary status, values): {heavy_sizes:?}; about {expected_values} expected"),
    );
    let heavy_t = percentile(&mut tt, 50.0).unwrap_or(0.0);
    let heavy_p = percentile(&mut pt, 50.0).unwrap_or(0.0);
    progress.say(&format!(
        "{label}: corpus median ratio {median:.2} (worst {worst:.2}), {HEAVY}: {heavy_t:.0} ms vs {heavy_p:.0} ms"
    ));

    report.record("heavy_tributary_ms", heavy_t);
    report.record("heavy_prometheus_ms", heavy_p);
    report.record("heavy_ratio", heavy_t / heavy_p.max(1e-6));
    if baseline.is_some() {
        let heavy_b = percentile(&mut bt, 50.0).unwrap_or(0.0);
        progress.say(&format!("{label}: baseline {heavy_b:.0} ms"));
        report.record("heavy_baseline_ms", heavy_b);
        report.record("heavy_baseline_ratio", heavy_b / heavy_p.max(1e-6));
        report.record("heavy_speedup_over_baseline", heavy_b / heavy_t.max(1e-6));
    }
    report.record("load_tributary_s", load_s);
    report.record("load_promtool_s", promtool_s);
    if cfg.heavy_only {
        if let Some((proc, _)) = baseline {
            proc.stop().await?;
        }
        collector.stop().await?;
        return Ok(());
    }

    // 3. Ingest with and without queries: alternating pairs of phases,
    // on each collector in turn (first in one pair, second in the next).
    let mut sides = vec![Side {
        name: "tributary",
        collector: &collector,
        http: trib_url.clone(),
        acked: 0,
        pairs: Vec::new(),
    }];
    if let Some((proc, url)) = &baseline {
        sides.push(Side {
            name: "baseline",
            collector: proc,
            http: url.clone(),
            acked: 0,
            pairs: Vec::new(),
        });
    }
    for side in &sides {
        settle(side.collector, &side.http, &label, progress).await?;
    }
    for pair in 0..cfg.pairs {
        let with_first = pair % 2 == 1;
        let n = sides.len();
        for j in 0..n {
            let side = &mut sides[(j + pair) % n];
            let phases =
                ingest_pair(cfg, side, pair, with_first, &client, &label, progress).await?;
            let [without, with] = &phases;
            progress.say(&format!(
                "{label}: {} pair {}: drop {:.3}; {}; {}",
                side.name,
                pair + 1,
                1.0 - with.readings_per_s / without.readings_per_s.max(1e-9),
                without.describe(),
                with.describe()
            ));
            side.pairs.push(phases);
        }
    }
    for side in &sides {
        record_ingest(report, r, side);
    }
    drop(sides);
    if let Some((proc, _)) = baseline {
        proc.stop().await?;
    }
    collector.stop().await?;
    Ok(())
}

/// One ingest phase on one collector.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    with_queries: bool,
    readings_per_s: f64,
    /// CPU cores over the phase: the collector's merger thread, its query
    /// runtime's threads (`tributary-query`), the rest of it (gRPC, HTTP),
    /// and this process (the load agents and the query loop).
    merger_cores: f64,
    query_cores: f64,
    other_cores: f64,
    bench_cores: f64,
    /// Share of the phase the merger thread was runnable but waited for a
    /// CPU (the other work on the machine, or the collector's own threads).
    merger_waiting: f64,
    /// Group commits per second, and their mean time (ms).
    commits_per_s: f64,
    commit_ms: f64,
    /// Compaction per second: points moved from the head into chunks, and
    /// points rewritten by merging small chunks (`None`: the collector does
    /// not count them, an older build).
    compacted_per_s: f64,
    merged_per_s: Option<f64>,
    /// Heavy queries answered within the phase.
    heavy_done: u64,
}

impl Phase {
    fn describe(&self) -> String {
        let merged = self
            .merged_per_s
            .map_or_else(|| "?".to_owned(), |m| format!("{:.2} M", m / 1e6));
        format!(
            "{} {:.3} M readings/s ({} queries; cores: merger {:.2}, query {:.2}, rest {:.2}, bench {:.2}; merger waiting for a CPU {:.2}; {:.1} commits/s of {:.1} ms; compaction {:.2} M/s into chunks, {merged}/s merged)",
            if self.with_queries { "with" } else { "without" },
            self.readings_per_s / 1e6,
            self.heavy_done,
            self.merger_cores,
            self.query_cores,
            self.other_cores,
            self.bench_cores,
            self.merger_waiting,
            self.commits_per_s,
            self.commit_ms,
            self.compacted_per_s / 1e6,
        )
    }
}

/// What one moment of a phase looked like.
struct Snapshot {
    at: Instant,
    acked: u64,
    collector_cpu_s: f64,
    threads: HashMap<u32, ThreadTimes>,
    bench_cpu_s: f64,
    counters: Counters,
    heavy_done: u64,
}

impl Snapshot {
    async fn take(
        collector: &CollectorProc,
        client: &reqwest::Client,
        http: &str,
        acked: u64,
        heavy_done: u64,
    ) -> Result<Snapshot> {
        let counters = Counters::read(client, http).await?;
        let pid = collector.pid()?;
        Ok(Snapshot {
            at: Instant::now(),
            acked,
            collector_cpu_s: sys::sample(pid)?.cpu_s,
            threads: sys::thread_times(pid)?,
            bench_cpu_s: sys::sample_self()?.cpu_s,
            counters,
            heavy_done,
        })
    }

    /// The phase from `self` to `later`.
    fn phase(&self, later: &Snapshot, with_queries: bool) -> Phase {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let (mut merger, mut query, mut waiting) = (0.0, 0.0, 0.0);
        for (tid, t) in &later.threads {
            // A thread started within the phase spent all its time in it.
            let before = self.threads.get(tid).cloned().unwrap_or_default();
            let spent = (t.cpu_s - before.cpu_s).max(0.0);
            if t.name == "merger" {
                merger += spent;
                waiting += (t.wait_s - before.wait_s).max(0.0);
            } else if t.name.starts_with("tributary-query") {
                query += spent;
            }
        }
        let (a, b) = (&self.counters, &later.counters);
        let commits = b.commits - a.commits;
        let total = later.collector_cpu_s - self.collector_cpu_s;
        Phase {
            with_queries,
            readings_per_s: (later.acked - self.acked) as f64 / secs,
            merger_cores: merger / secs,
            query_cores: query / secs,
            other_cores: (total - merger - query).max(0.0) / secs,
            bench_cores: (later.bench_cpu_s - self.bench_cpu_s) / secs,
            merger_waiting: waiting / secs,
            commits_per_s: commits / secs,
            commit_ms: 1000.0 * (b.commit_s - a.commit_s) / commits.max(1.0),
            compacted_per_s: (b.compacted - a.compacted) / secs,
            merged_per_s: b.merged.zip(a.merged).map(|(b, a)| (b - a) / secs),
            heavy_done: later.heavy_done - self.heavy_done,
        }
    }
}

/// The collector's counters a phase looks at, from `/metrics`.
struct Counters {
    /// Group commits, and the seconds they took.
    commits: f64,
    commit_s: f64,
    /// Points compaction moved into chunks, and points it merged (absent
    /// from builds before they were counted).
    compacted: f64,
    merged: Option<f64>,
    /// Readings committed since the collector started.
    committed: f64,
}

impl Counters {
    async fn read(client: &reqwest::Client, http: &str) -> Result<Counters> {
        let text = client
            .get(format!("{http}/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {http}/metrics"))?
            .text()
            .await
            .with_context(|| format!("GET {http}/metrics"))?;
        let counter = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        };
        let needed =
            |name: &str| counter(name).with_context(|| format!("{http}/metrics: no {name}"));
        Ok(Counters {
            commits: needed("tributary_collector_commit_duration_seconds_count")?,
            commit_s: needed("tributary_collector_commit_duration_seconds_sum")?,
            compacted: needed("tributary_collector_compaction_points_total")?,
            merged: counter("tributary_collector_compaction_merged_points_total"),
            committed: needed("tributary_collector_commit_group_readings_sum")?,
        })
    }

    /// Every reading committed since the start has moved into chunks.
    fn head_empty(&self) -> bool {
        self.compacted >= self.committed
    }
}

/// One collector the ingest phases run against.
struct Side<'a> {
    name: &'static str,
    collector: &'a CollectorProc,
    http: String,
    /// Readings acked on it by earlier pairs (all stored, checked).
    acked: u64,
    pairs: Vec<[Phase; 2]>,
}

/// One pair of ingest phases of `duration` on `side`: without queries and
/// with the heavy query asked in a loop, `with_first` deciding the order,
/// after a warm-up; fresh load agents (their readings a day after the
/// previous pair's). Returns `[without, with]`.
#[allow(clippy::too_many_arguments)]
async fn ingest_pair(
    cfg: &Config,
    side: &mut Side<'_>,
    pair: usize,
    with_first: bool,
    client: &reqwest::Client,
    label: &str,
    progress: &Progress,
) -> Result<[Phase; 2]> {
    let label = format!("{label}: {} pair {}", side.name, pair + 1);
    let shared = Arc::new(Shared::default());
    let stop = CancellationToken::new();
    let base_ts = now_ns() - 60 * DAY_NS + pair as i64 * DAY_NS;
    let mut tasks = Vec::new();
    for i in 0..cfg.agents {
        let mut spec = LoadSpec::new(
            format!("load-{i:04}"),
            cfg.series_per_agent as u32,
            cfg.batch,
        );
        spec.base_ts_ns = base_ts;
        tasks.push(spawn_agent(
            &side.collector.url,
            spec,
            &shared,
            &stop,
            Duration::from_secs(120),
        ));
    }
    await_welcomes(&shared, cfg.agents as u64, &mut tasks, progress, &label).await?;
    progress
        .wait(cfg.warmup, &format!("{label}: ingest warm-up"), String::new)
        .await;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut phases = [Phase::default(); 2];
    for with_queries in [with_first, !with_first] {
        let queries = CancellationToken::new();
        let looping = with_queries.then(|| {
            let (client, url, queries, done, failed) = (
                client.clone(),
                side.http.clone(),
                queries.clone(),
                done.clone(),
                failed.clone(),
            );
            let params = heavy_params(cfg.hours);
            tokio::spawn(async move {
                while !queries.is_cancelled() {
                    let asked = tokio::select! {
                        a = ask_status(&client, &url, HEAVY, &params) => a,
                        () = queries.cancelled() => break,
                    };
                    match asked {
                        Ok(200) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        });
        let what = if with_queries {
            "ingest with queries"
        } else {
            "ingest without queries"
        };
        let snapshot = async || {
            Snapshot::take(
                side.collector,
                client,
                &side.http,
                shared.acked_readings.load(Ordering::Relaxed),
                done.load(Ordering::Relaxed),
            )
            .await
        };
        let before = snapshot().await?;
        progress
            .wait(cfg.duration, &format!("{label}: {what}"), String::new)
            .await;
        let after = snapshot().await?;
        phases[usize::from(with_queries)] = before.phase(&after, with_queries);
        queries.cancel();
        if let Some(task) = looping {
            task.await.context("query loop")?;
        }
    }
    stop.cancel();
    let totals = progress
        .during(&format!("{label}: draining"), join_all(tasks))
        .await?;
    let mut query = QueryClient::connect(&side.collector.url).await?;
    let stored = query.stored("load-").await?;
    side.acked += totals.acked;
    ensure!(
        totals.sent == totals.acked && side.acked == stored,
        "ingest on {} (pair {}): {} sent, {} acked; {} acked in all, {stored} stored",
        side.name,
        pair + 1,
        totals.sent,
        totals.acked,
        side.acked
    );
    ensure!(
        failed.load(Ordering::Relaxed) == 0,
        "{} heavy queries failed during ingest on {}",
        failed.load(Ordering::Relaxed),
        side.name
    );
    settle(side.collector, &side.http, &label, progress).await?;
    Ok(phases)
}

/// Waits (at most a minute) until the collector has finished the
/// compaction what it was sent calls for (its CPU below a tenth of a core
/// over half a second, and, as its `/metrics` at `http` count them, as
/// many points moved out of the head as readings committed since it
/// started), so what follows, on it or on the other collector, starts from
/// a quiet machine and reads chunks, as Prometheus reads its blocks. A
/// round waits for enough points or for its oldest to age (20 s): a
/// collector can be idle with everything still in the head, and then
/// compacts in the middle of the corpus. (A collector started on a store
/// that already holds a head, `--baseline`'s, counts only its own commits.)
async fn settle(
    collector: &CollectorProc,
    http: &str,
    label: &str,
    progress: &Progress,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    progress.status(&format!("{label}: waiting for the collector to go idle"));
    loop {
        let (t0, c0) = (Instant::now(), collector.sample()?.cpu_s);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cores = (collector.sample()?.cpu_s - c0) / t0.elapsed().as_secs_f64();
        if cores < 0.1 && Counters::read(&client, http).await?.head_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            progress.say(&format!(
                "{label}: the collector still used {cores:.2} cores after 60 s; going on (what follows is timed beside its work)"
            ));
            return Ok(());
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per pair, 1 − with / without, of `rate`.
fn drops(pairs: &[[Phase; 2]], rate: impl Fn(&Phase) -> f64) -> Vec<f64> {
    pairs
        .iter()
        .map(|[without, with]| 1.0 - rate(with) / rate(without).max(1e-9))
        .collect()
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn heavy_params(hours: i64) -> Vec<(&'static str, String)> {
    vec![
        ("start", M_START.to_string()),
        ("end", (M_START + hours * 3600).to_string()),
        ("step", INTERVAL.to_string()),
    ]
}

/// What the ingest pairs give for one collector: the median over pairs of
/// the phases without queries, of those with them, the heavy queries
/// answered in all phases with them; the drop (1 − with / without) as the
/// median over pairs, its least and greatest, pooled (1 − the sum of
/// with over the sum of without), and counting the points compaction
/// merged as readings (compaction's tier merges land in one phase or
/// another); the median cores of the query threads in the phases with
/// queries, of the merger without and with them, and the median share of
/// a phase the merger waited for a CPU, without and with them.
const INGEST_METRICS: [&str; 13] = [
    "ingest_readings_per_s",
    "ingest_with_queries_readings_per_s",
    "heavy_queries_during_ingest",
    "ingest_drop",
    "ingest_drop_min",
    "ingest_drop_max",
    "ingest_drop_pooled",
    "ingest_drop_counting_merges",
    "query_cores_during_ingest",
    "merger_cores_without_queries",
    "merger_cores_with_queries",
    "merger_waiting_without_queries",
    "merger_waiting_with_queries",
];

/// The same for the baseline's collector.
const BASELINE_INGEST_METRICS: [&str; 13] = [
    "baseline_ingest_readings_per_s",
    "baseline_ingest_with_queries_readings_per_s",
    "baseline_heavy_queries_during_ingest",
    "baseline_ingest_drop",
    "baseline_ingest_drop_min",
    "baseline_ingest_drop_max",
    "baseline_ingest_drop_pooled",
    "baseline_ingest_drop_counting_merges",
    "baseline_query_cores_during_ingest",
    "baseline_merger_cores_without_queries",
    "baseline_merger_cores_with_queries",
    "baseline_merger_waiting_without_queries",
    "baseline_merger_waiting_with_queries",
];

/// Records `side`'s pairs (see [`INGEST_METRICS`]) and a note per pair.
fn record_ingest(report: &mut Report, r: usize, side: &Side<'_>) {
    let names = if side.name == "baseline" {
        BASELINE_INGEST_METRICS
    } else {
        INGEST_METRICS
    };
    let pairs = &side.pairs;
    let of = |f: &dyn Fn(&[Phase; 2]) -> f64| pairs.iter().map(f).collect::<Vec<_>>();
    let without = of(&|p| p[0].readings_per_s);
    let with = of(&|p| p[1].readings_per_s);
    let by_pair = drops(pairs, |p| p.readings_per_s);
    let (lo, hi) = min_max(&by_pair);
    let pooled = 1.0 - with.iter().sum::<f64>() / without.iter().sum::<f64>().max(1e-9);
    let values = [
        median(&without),
        median(&with),
        pairs.iter().map(|p| p[1].heavy_done as f64).sum(),
        median(&by_pair),
        lo,
        hi,
        pooled,
        // NaN when the collector does not count merged points.
        median(&drops(pairs, |p| {
            p.readings_per_s + p.merged_per_s.unwrap_or(f64::NAN)
        })),
        median(&of(&|p| p[1].query_cores)),
        median(&of(&|p| p[0].merger_cores)),
        median(&of(&|p| p[1].merger_cores)),
        median(&of(&|p| p[0].merger_waiting)),
        median(&of(&|p| p[1].merger_waiting)),
    ];
    for (name, value) in names.iter().zip(values) {
        if value.is_finite() {
            report.record(name, value);
        }
    }
    for (k, (pair, drop)) in pairs.iter().zip(&by_pair).enumerate() {
        let order = if k % 2 == 1 {
            "with first"
        } else {
            "without first"
        };
        report.note(format!(
            "run {r}: {} ingest pair {} ({order}): drop {drop:.3}; {}; {}",
            side.name,
            k + 1,
            pair[0].describe(),
            pair[1].describe()
        ));
    }
}

/// The corpus queries timed (lines marked `!422` or `!instant` left out).
/// One timed query of the corpus and the family it is listed under.
struct Case {
    /// The first line of the comment block above it (`rate family`,
    /// `aggregations`, ...), cut at its first `(`, `:` or `;`.
    family: String,
    query: String,
}

fn corpus() -> Result<Vec<Case>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("promql/corpus.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(parse_corpus(&text))
}

fn parse_corpus(text: &str) -> Vec<Case> {
    let mut out = Vec::new();
    let mut family = String::new();
    let mut in_comment = false;
    for line in text.lines().map(str::trim) {
        if let Some(comment) = line.strip_prefix('#') {
            if !in_comment {
                let head = comment.split(['(', ':', ';']).next().unwrap_or_default();
                family = head.trim().to_owned();
            }
            in_comment = true;
            continue;
        }
        in_comment = false;
        // Neither `!422` (refused) nor `!instant` lines (whose range
        // queries Prometheus 2.42 answers wrongly) are timed.
        if line.is_empty() || line.starts_with('!') {
            continue;
        }
        out.push(Case {
            family: family.clone(),
            query: line.to_owned(),
        });
    }
    out
}

/// One corpus query's times on both sides.
struct Timed<'a> {
    case: &'a Case,
    tributary_ms: f64,
    prometheus_ms: f64,
}

impl Timed<'_> {
    fn ratio(&self) -> f64 {
        self.tributary_ms / self.prometheus_ms.max(1e-6)
    }
}

/// The queries shown in the table of worst ratios (the JSON has all).
const WORST_SHOWN: usize = 40;

/// The per-query table (worst ratio first) and the per-family summary.
fn corpus_tables(r: usize, timed: &mut [Timed], report: &mut Report) {
    timed.sort_by(|a, b| b.ratio().total_cmp(&a.ratio()));
    let rows = timed
        .iter()
        .map(|t| {
            vec![
                format!("{:.2}", t.ratio()),
                format!("{:.1}", t.tributary_ms),
                format!("{:.1}", t.prometheus_ms),
                t.case.family.clone(),
                t.case.query.clone(),
            ]
        })
        .collect();
    report.table(
        format!("run {r}: corpus queries, worst ratio first (ms: the sum over the 7 evaluations)"),
        &["ratio", "tributary_ms", "prometheus_ms", "family", "query"],
        rows,
        WORST_SHOWN,
    );

    // Families by their total time's ratio, worst first.
    let mut families: Vec<(&str, Vec<&Timed>)> = Vec::new();
    for t in timed.iter() {
        match families.iter_mut().find(|(f, _)| *f == t.case.family) {
            Some((_, members)) => members.push(t),
            None => families.push((&t.case.family, vec![t])),
        }
    }
    let mut summaries: Vec<(f64, Vec<String>)> = families
        .iter()
        .map(|(family, members)| {
            let mut ratios: Vec<f64> = members.iter().map(|t| t.ratio()).collect();
            let worst = ratios.iter().copied().fold(0.0, f64::max);
            let trib: f64 = members.iter().map(|t| t.tributary_ms).sum();
            let prom: f64 = members.iter().map(|t| t.prometheus_ms).sum();
            let total_ratio = trib / prom.max(1e-6);
            let row = vec![
                (*family).to_owned(),
                members.len().to_string(),
                format!("{:.2}", percentile(&mut ratios, 50.0).unwrap_or(0.0)),
                format!("{worst:.2}"),
                format!("{trib:.1}"),
                format!("{prom:.1}"),
                format!("{total_ratio:.2}"),
            ];
            (total_ratio, row)
        })
        .collect();
    summaries.sort_by(|a, b| b.0.total_cmp(&a.0));
    let rows = summaries.into_iter().map(|(_, row)| row).collect();
    report.table(
        format!("run {r}: corpus families, worst total ratio first"),
        &[
            "family",
            "queries",
            "median_ratio",
            "worst_ratio",
            "tributary_ms",
            "prometheus_ms",
            "total_ratio",
        ],
        rows,
        usize::MAX,
    );
}

/// The differential test's evaluations of each corpus query.
fn evaluations() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let mut out = Vec::new();
    for t in [1800.0, 3607.123, 7000.0, 7400.0] {
        out.push(("query", vec![("time", format!("{}", T0 as f64 + t))]));
    }
    for (start, end, step) in [(600, 7500, "60"), (0, 7200, "5m"), (1000, 4000, "37")] {
        out.push((
            "query_range",
            vec![
                ("start", (T0 + start).to_string()),
                ("end", (T0 + end).to_string()),
                ("step", step.to_owned()),
            ],
        ));
    }
    out
}

/// Asks one range query and reads its answer whole, without decoding it
/// (the query loop beside ingest, so that the load agents' process spends
/// as little as it can on it); returns the status.
async fn ask_status(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    params: &[(&str, String)],
) -> Result<u16> {
    let mut form: Vec<(&str, String)> = vec![("query", query.to_owned())];
    form.extend(params.iter().cloned());
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query_range"), &form)?;
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("ask {base}: {query}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    ensure!(!body.is_empty(), "{base}: {query}: an empty answer");
    Ok(status)
}

/// Asks one query; returns the wall time in ms, the status and how many
/// values the answer holds.
async fn ask(
    client: &reqwest::Client,
    base: &str,
    endpoint: &str,
    query: &str,
    params: &[(&str, String)],
) -> Result<(f64, u16, usize)> {
    let mut form: Vec<(&str, String)> = vec![("query", query.to_owned())];
    form.extend(params.iter().cloned());
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/{endpoint}"), &form)?;
    let t = Instant::now();
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("ask {base}: {query}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let json: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{base}: {query}: the answer is not JSON"))?;
    Ok((ms, status, count_values(&json)))
}

/// How many values an answer holds.
fn count_values(answer: &Value) -> usize {
    let result = &answer["data"]["result"];
    match answer["data"]["resultType"].as_str() {
        Some("vector") => result.as_array().map_or(0, Vec::len),
        Some("matrix") => result.as_array().map_or(0, |a| {
            a.iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .sum()
        }),
        Some(_) => 1,
        None => 0,
    }
}

/// `promtool` next to the `prometheus` binary, else on PATH.
fn promtool_beside(prometheus: &Path) -> PathBuf {
    prometheus
        .parent()
        .map(|d| d.join("promtool"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("promtool"))
}

fn prometheus_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&[o.stdout, o.stderr].concat())
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| bin.display().to_string())
}

/// Prometheus serving the blocks in `data`, ready.
async fn start_prometheus(
    bin: &Path,
    dir: &WorkDir,
    data: &Path,
) -> Result<(tokio::process::Child, String)> {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "scrape_configs: []\n")?;
    let addr = free_addr()?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let child = tokio::process::Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        // The data is from 2023: keep it.
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("start prometheus")?;
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{url}/-/ready")).send().await
            && r.status().is_success()
        {
            return Ok((child, url));
        }
        ensure!(
            Instant::now() < deadline,
            "prometheus not ready after 120 s (see {})",
            dir.join("prometheus.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Phase, drops, median, min_max, parse_corpus};

    fn pair(without: f64, with: f64) -> [Phase; 2] {
        let phase = |rate, with_queries| Phase {
            with_queries,
            readings_per_s: rate,
            ..Phase::default()
        };
        [phase(without, false), phase(with, true)]
    }

    #[test]
    fn each_pair_gives_its_own_drop() {
        let pairs = [pair(100.0, 90.0), pair(200.0, 220.0), pair(50.0, 25.0)];
        let by_pair = drops(&pairs, |p| p.readings_per_s);
        let expected = [0.1, -0.1, 0.5];
        assert!(
            by_pair
                .iter()
                .zip(expected)
                .all(|(d, e)| (d - e).abs() < 1e-12),
            "{by_pair:?}"
        );
        assert!((median(&by_pair) - 0.1).abs() < 1e-12);
        let (lo, hi) = min_max(&by_pair);
        assert!((lo + 0.1).abs() < 1e-12 && (hi - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn corpus_queries_carry_the_first_line_of_their_comment_block() {
        let text = "# The corpus: intro\n# more intro\n\n# Selectors and matchers\nup\n\
                    up{a=\"b\"}\n\n# infinities (Prometheus 2.42: an infinite\n# sum)\n\
                    sum(x)\n!422 holt_winters(x[5m], 0.5, 0.5)\n!instant timestamp(x)\n";
        let cases = parse_corpus(text);
        let got: Vec<(&str, &str)> = cases
            .iter()
            .map(|c| (c.family.as_str(), c.query.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Selectors and matchers", "up"),
                ("Selectors and matchers", "up{a=\"b\"}"),
                ("infinities", "sum(x)"),
            ]
        );
    }
}
