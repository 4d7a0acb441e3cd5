//! `metrics-cost`: what the agent's own metrics cost, counted in
//! instructions (valgrind's callgrind), which other work on the machine
//! does not change: on a shared machine the `/proc` CPU of `poll` and
//! `vs-prometheus` (`metrics_cost`) does not resolve 3 %.
//!
//! For each device interval (1 s and 10 s, or `--interval`): one `http`
//! simulator in this process answering after `--delay` (20 ms), one
//! collector process, and two agent processes side by side under
//! `valgrind --tool=callgrind`, each polling the same `--devices` (100)
//! JSON devices, one with metrics off and one with them on. After the
//! warm-up (25 s) both agents' counters are zeroed (`callgrind_control
//! -z`); `--duration` (60 s) later both are dumped (`callgrind_control
//! -d`). Within that window the agent with metrics on is scraped every 15 s
//! (Prometheus's default `scrape_interval`), the first time 7.5 s in.
//! Polls in the window are the calls of `DeviceTask::record_health` (one
//! per completed poll) in each dump; the ratio compared with the issue's
//! 1.03 is the instructions per poll with metrics on over those with them
//! off, measured in the same run. `--runs N` repeats each interval (the
//! table shows the median; the notes each run): the count of one binary
//! moves by about 1 % from run to run.
//!
//! The agent is the one built next to this binary (`cargo xtask bench`
//! builds it in release mode; `TRIBUTARY_BIN_DIR` picks another).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use tributary_tests::http_sim::HttpSim;
use tributary_tests::process::{bin_path, free_addr};

use crate::agent::AgentConfig;
use crate::collector::{CollectorProc, WorkDir};
use crate::metrics_cost::{self, MAX_RATIO};
use crate::options::{Format, Options};
use crate::progress::Progress;
use crate::report::{Report, Target};

/// The function called once per completed poll (`DeviceTask::…` or
/// `<…DeviceTask>::…`, as the demangler writes it).
const POLL_FUNCTION: (&str, &str) = ("DeviceTask", "::record_health");

/// One interval's counts.
struct Leg {
    off_instructions: u64,
    off_polls: u64,
    on_instructions: u64,
    on_polls: u64,
    scrapes: u64,
}

impl Leg {
    fn per_poll(instructions: u64, polls: u64) -> f64 {
        instructions as f64 / polls.max(1) as f64
    }

    fn ratio(&self) -> f64 {
        Self::per_poll(self.on_instructions, self.on_polls)
            / Self::per_poll(self.off_instructions, self.off_polls).max(f64::MIN_POSITIVE)
    }
}

pub async fn run(opts: &Options, progress: &Progress) -> Result<Report> {
    let valgrind = tool("valgrind")?;
    let control = tool("callgrind_control")?;
    let intervals = match opts.interval {
        Some(i) => vec![i],
        None => vec![Duration::from_secs(1), Duration::from_secs(10)],
    };
    let devices = opts.devices.unwrap_or(opts.size(100, 5));
    let delay = opts.delay.unwrap_or(Duration::from_millis(20));
    let window = opts
        .duration
        .unwrap_or(opts.size(Duration::from_secs(60), Duration::from_secs(10)));
    let warmup = opts.size(Duration::from_secs(25), Duration::from_secs(8));
    let mut report = Report::new("metrics-cost");
    report.config("devices", devices);
    report.config(
        "intervals_ms",
        intervals
            .iter()
            .map(|i| i.as_millis().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.config("device_delay_ms", delay.as_millis() as u64);
    report.config("warmup_s", warmup.as_secs_f64());
    report.config("window_s", window.as_secs_f64());
    report.config(
        "scrape_interval_s",
        metrics_cost::scrape_interval(window).as_secs_f64(),
    );
    report.config(
        "measure",
        "instructions of the agent (callgrind), per completed poll; metrics off and on side by side",
    );
    for i in &intervals {
        let (ratio, off, on) = names(*i);
        report.declare(ratio, "×", Some(Target::AtMost(MAX_RATIO)));
        report.declare(off, "instr", None);
        report.declare(on, "instr", None);
    }
    // One run per interval unless --runs says more: each takes ~2 min.
    let runs = opts.runs.unwrap_or(1);
    report.config("runs", runs);
    for interval in intervals.iter().flat_map(|i| std::iter::repeat_n(*i, runs)) {
        progress.say(&format!(
            "metrics-cost: {devices} devices every {} ms, {} s warm-up, {} s window under callgrind",
            interval.as_millis(),
            warmup.as_secs(),
            window.as_secs()
        ));
        let dir = WorkDir::new(
            &format!("metrics-cost-{}ms", interval.as_millis()),
            opts.keep,
        )?;
        let leg = measure(
            &dir,
            (&valgrind, &control),
            devices,
            interval,
            delay,
            (warmup, window),
        )
        .await?;
        let (ratio, off, on) = names(interval);
        report.record(ratio, leg.ratio());
        report.record(off, Leg::per_poll(leg.off_instructions, leg.off_polls));
        report.record(on, Leg::per_poll(leg.on_instructions, leg.on_polls));
        report.note(format!(
            "{} ms: ratio {:.3}; metrics off {} instructions / {} polls, on {} / {} polls, {} scrapes",
            interval.as_millis(),
            leg.ratio(),
            leg.off_instructions,
            leg.off_polls,
            leg.on_instructions,
            leg.on_polls,
            leg.scrapes
        ));
        report.check(
            format!("{} ms: both agents polled", interval.as_millis()),
            leg.off_polls > 0 && leg.on_polls > 0,
            format!("{} and {} polls", leg.off_polls, leg.on_polls),
        );
        report.check(
            format!(
                "{} ms: the agent with metrics on was scraped",
                interval.as_millis()
            ),
            leg.scrapes > 0,
            format!("{} scrapes", leg.scrapes),
        );
    }
    Ok(report.finish())
}

/// The metric names of one interval (the two get their own).
fn names(interval: Duration) -> (&'static str, &'static str, &'static str) {
    match interval.as_millis() {
        1000 => (
            "metrics_instr_ratio_1s",
            "instr_per_poll_off_1s",
            "instr_per_poll_on_1s",
        ),
        10_000 => (
            "metrics_instr_ratio_10s",
            "instr_per_poll_off_10s",
            "instr_per_poll_on_10s",
        ),
        _ => (
            "metrics_instr_ratio",
            "instr_per_poll_off",
            "instr_per_poll_on",
        ),
    }
}

/// One interval: both agents under callgrind, counted over the window.
async fn measure(
    dir: &WorkDir,
    (valgrind, control): (&Path, &Path),
    devices: usize,
    interval: Duration,
    delay: Duration,
    (warmup, window): (Duration, Duration),
) -> Result<Leg> {
    let sim = HttpSim::new()
        .delay(delay)
        .bind("127.0.0.1:0".parse()?)
        .await?;
    let collector = CollectorProc::start(dir).await?;
    let metrics = free_addr()?;
    let mut agents = Vec::new();
    for on in [false, true] {
        let id = if on { "metrics-on" } else { "metrics-off" };
        let mut config = AgentConfig::new(id, &collector.url, dir);
        if on {
            config.metrics(metrics);
        }
        for d in 0..devices {
            config.http_device(
                &format!("dev-{d:05}"),
                &sim.url(&format!("/meter?device={d}")),
                Format::Json,
                interval,
            );
        }
        let path = dir.join(&format!("{id}.toml"));
        std::fs::write(&path, config.render())
            .with_context(|| format!("write {}", path.display()))?;
        let out = dir.join(&format!("callgrind.{id}"));
        let log = std::fs::File::create(dir.join(&format!("{id}.log")))?;
        let child = Command::new(valgrind)
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(bin_path("tributary-agent")?)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} (is valgrind installed?)", valgrind.display()))?;
        agents.push((id, child, out));
    }
    tokio::time::sleep(warmup).await;
    for (id, child, _) in &mut agents {
        running(id, child, dir)?;
        callgrind(control, "-z", child).await?;
    }
    let stop = CancellationToken::new();
    let scraper = tokio::spawn(metrics_cost::scrape(
        metrics,
        "tributary_agent_polls_total",
        metrics_cost::scrape_interval(window),
        stop.clone(),
    ));
    tokio::time::sleep(window).await;
    for (_, child, _) in &agents {
        callgrind(control, "-d", child).await?;
    }
    stop.cancel();
    let scrapes = scraper.await.context("the scraper panicked")??;
    let mut counts = Vec::new();
    for (id, child, out) in &mut agents {
        let dump = wait_for_dump(out).await?;
        counts.push(count(&dump).with_context(|| format!("{id}: {}", dump.display()))?);
        child.start_kill().ok();
    }
    for (_, child, _) in &mut agents {
        let _ = child.wait().await;
    }
    collector.stop().await?;
    drop(sim);
    let [(off_instructions, off_polls), (on_instructions, on_polls)] = counts[..] else {
        bail!("expected two dumps");
    };
    Ok(Leg {
        off_instructions,
        off_polls,
        on_instructions,
        on_polls,
        scrapes,
    })
}

/// `name` on PATH or in `/usr/bin`.
pub(crate) fn tool(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found: install valgrind (`cargo xtask bench metrics-cost` and `snmp` do, as root)")
        })
}

pub(crate) fn running(id: &str, child: &mut Child, dir: &WorkDir) -> Result<()> {
    if let Some(status) = child.try_wait()? {
        let log = std::fs::read_to_string(dir.join(&format!("{id}.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "agent {id} under callgrind exited with {status}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// `callgrind_control FLAG PID`.
pub(crate) async fn callgrind(control: &Path, flag: &str, child: &Child) -> Result<()> {
    let pid = child.id().context("agent has exited")?;
    let out = Command::new(control)
        .args([flag, &pid.to_string()])
        .output()
        .await
        .with_context(|| format!("run {}", control.display()))?;
    ensure!(
        out.status.success(),
        "callgrind_control {flag} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The dump `callgrind_control -d` wrote next to `out` (`out.1`, ...),
/// once it is complete (it ends with its `totals:` line).
pub(crate) async fn wait_for_dump(out: &Path) -> Result<PathBuf> {
    let dir = out.parent().context("dump path without a directory")?;
    let prefix = format!(
        "{}.",
        out.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    );
    for _ in 0..600 {
        let newest = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
                (n > 0).then(|| (n, e.path()))
            })
            .max();
        if let Some((_, path)) = newest
            && std::fs::read_to_string(&path)
                .is_ok_and(|t| t.lines().any(|l| l.starts_with("totals:")))
        {
            return Ok(path);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no complete callgrind dump {}N after 60 s", out.display())
}

/// (instructions, calls of [`POLL_FUNCTION`]) in a dump.
pub(crate) fn count(path: &Path) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let (total, polls) = parse_dump(&text);
    let total = total.context("no totals: line")?;
    ensure!(
        polls > 0,
        "no call of {}{} in the dump",
        POLL_FUNCTION.0,
        POLL_FUNCTION.1
    );
    Ok((total, polls))
}

/// Parses a callgrind dump: the `totals:` (or `summary:`) instruction
/// count and the calls of [`POLL_FUNCTION`]. Function names are compressed
/// (`cfn=(id) name` the first time, `cfn=(id)` after); a `calls=` line
/// follows the `cfn=` of the function called.
pub fn parse_dump(text: &str) -> (Option<u64>, u64) {
    let mut names = std::collections::HashMap::<&str, bool>::new();
    let (mut total, mut polls, mut pending) = (None, 0u64, false);
    for line in text.lines() {
        let call = line.starts_with("cfn=");
        if let Some(rest) = line
            .strip_prefix("cfn=(")
            .or_else(|| line.strip_prefix("fn=("))
        {
            let (id, name) = rest.split_once(')').unwrap_or((rest, ""));
            let name = name.trim();
            if !name.is_empty() {
                names.insert(
                    id,
                    name.contains(POLL_FUNCTION.0) && name.contains(POLL_FUNCTION.1),
                );
            }
            pending = call && names.get(id).copied().unwrap_or(false);
            continue;
        }
        if pending && let Some(n) = line.strip_prefix("calls=") {
            polls += n
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            pending = false;
            continue;
        }
        if let Some(v) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            total = v.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    (total, polls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_gives_its_total_and_the_polls() {
        let dump = "events: Ir\n\
            fn=(1) main\n0 5\n\
            cfn=(2) tributary_agent::scheduler::device::DeviceTask::record_health\n\
            calls=3 0\n0 30\n\
            fn=(3) other\n\
            cfn=(2)\ncalls=4 0\n0 40\n\
            cfn=(4) <tributary_agent::scheduler::device::DeviceTask>::record_health\n\
            calls=2 0\n0 20\n\
            cfn=(1)\ncalls=9 0\n0 1\n\
            totals: 1234\n";
        assert_eq!(parse_dump(dump), (Some(1234), 9));
    }
}
