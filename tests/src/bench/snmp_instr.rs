//! `snmp`, counted in instructions: the same walk as `snmp.rs`, with the
//! agent and `snmpbulkwalk` each under valgrind's callgrind, whose counts
//! other work on the machine does not change (the `/proc` CPU of the walk
//! leg moved by ±30 % from run to run on a loaded machine).
//!
//! The agent: one process under callgrind with [`DEVICES`] devices walking
//! the ten columns every [`INTERVAL`] from the same snmpd; after the
//! warm-up its counters are zeroed (`callgrind_control -z`), and
//! `--duration` later dumped (`-d`). The polls of the window are the calls
//! of `DeviceTask::record_health` in the dump (one per completed poll), and
//! every poll must have stored the whole table (checked through Query, as
//! in the walk leg); instructions per varbind are the window's over the
//! polls' varbinds: the whole process (driver, scheduler, spool, uplink).
//!
//! net-snmp: `snmpbulkwalk` with the walk leg's arguments under callgrind,
//! [`BULKWALK_REPS`] walks of the table and as many of an empty subtree (its
//! start-up), the medians' difference over the table's varbinds.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use tokio::process::Command;

use tributary_tests::peers::snmp_mib_dirs;
use tributary_tests::process::{TestDir, bin_path};

use crate::agent::{AgentConfig, HEALTH_READINGS_PER_POLL, UP_METRIC};
use crate::collector::{CollectorProc, QueryClient, WorkDir};
use crate::metrics_instr;
use crate::progress::Progress;
use crate::report::{Report, Target};
use crate::snmp::{self, BulkWalk, IF_X_ENTRY, MAX_RATIO, VARBINDS_PER_WALK};

const AGENT: &str = "snmp-instr-agent";
/// Devices of the agent under callgrind (it runs some 50 times slower).
const DEVICES: usize = 4;
/// Their interval.
const INTERVAL: Duration = Duration::from_secs(2);
/// Walks of each kind by snmpbulkwalk under callgrind.
const BULKWALK_REPS: usize = 3;
/// How long the agent under callgrind may take to store its first poll.
const STARTUP_PATIENCE: Duration = Duration::from_secs(180);

pub fn declare(report: &mut Report) {
    report.declare("agent_instr_per_varbind", "instr", None);
    report.declare("netsnmp_instr_per_varbind", "instr", None);
    report.declare("instr_ratio", "×", Some(Target::AtMost(MAX_RATIO)));
}

/// One run of the instruction count (window: `duration`).
pub async fn run_once(
    r: usize,
    runs: usize,
    duration: Duration,
    keep: bool,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let label = format!("snmp instructions run {r}/{runs}");
    let valgrind = metrics_instr::tool("valgrind")?;
    let control = metrics_instr::tool("callgrind_control")?;
    let dir = WorkDir::new("snmp-instr", keep)?;
    let snmpd_dir = TestDir::new("bench-snmpd-instr")?;
    let snmpd = progress
        .during(
            &format!("{label}: starting snmpd"),
            snmp::table_snmpd(&snmpd_dir),
        )
        .await?;

    // net-snmp's side first: it does not share the machine with the agent.
    let bulkwalk = BulkWalk::new(&snmpd_dir, snmpd.addr)?;
    let (full, empty) = progress
        .during(
            &format!("{label}: snmpbulkwalk under callgrind, {BULKWALK_REPS} walks of each kind"),
            async {
                let mut full = Vec::new();
                let mut empty = Vec::new();
                for i in 0..BULKWALK_REPS {
                    full.push(bulkwalk_instr(&valgrind, &bulkwalk, IF_X_ENTRY, &dir, i).await?);
                    empty.push(
                        bulkwalk_instr(&valgrind, &bulkwalk, &format!("{IF_X_ENTRY}.99"), &dir, i)
                            .await?,
                    );
                }
                anyhow::Ok((median(full), median(empty)))
            },
        )
        .await?;
    let netsnmp = full.saturating_sub(empty) as f64 / VARBINDS_PER_WALK as f64;

    let collector = CollectorProc::start(&dir).await?;
    let mut query = QueryClient::connect(&collector.url).await?;
    let mut config = AgentConfig::new(AGENT, &collector.url, &dir);
    config.mib_dirs(&snmp_mib_dirs()?);
    for i in 0..DEVICES {
        config.device(
            &format!("switch-{i:04}"),
            &snmp::device_body(snmpd.addr, INTERVAL),
        );
    }
    let path = dir.join(&format!("{AGENT}.toml"));
    std::fs::write(&path, config.render()).with_context(|| format!("write {}", path.display()))?;
    let out = dir.join("callgrind.agent");
    let log = std::fs::File::create(dir.join(&format!("{AGENT}.log")))?;
    let mut child = Command::new(&valgrind)
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
        .with_context(|| format!("start {}", valgrind.display()))?;
    let started = Instant::now();
    while query.stored(AGENT).await? == 0 {
        metrics_instr::running(AGENT, &mut child, &dir)?;
        if started.elapsed() > STARTUP_PATIENCE {
            bail!("{label}: nothing stored after {STARTUP_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress
        .wait(
            INTERVAL * 2,
            &format!("{label}: warm-up, {DEVICES} devices under callgrind"),
            String::new,
        )
        .await;
    metrics_instr::running(AGENT, &mut child, &dir)?;
    metrics_instr::callgrind(&control, "-z", &child).await?;
    progress
        .wait(
            duration,
            &format!("{label}: {DEVICES} devices walking under callgrind"),
            String::new,
        )
        .await;
    metrics_instr::running(AGENT, &mut child, &dir)?;
    metrics_instr::callgrind(&control, "-d", &child).await?;
    let dump = metrics_instr::wait_for_dump(&out).await?;
    let (instructions, polls) = metrics_instr::count(&dump)?;
    // SIGTERM: the agent flushes what it read before it exits.
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(300), child.wait()).await;
    if stopped.is_err() {
        child.start_kill().ok();
    }
    let all_polls = snmp::count(&mut query, AGENT, UP_METRIC, 0, 0).await?;
    let all_readings = snmp::count(&mut query, AGENT, "", 0, 0).await?;
    collector.stop().await?;
    drop(snmpd);
    let per_poll = VARBINDS_PER_WALK + HEALTH_READINGS_PER_POLL;
    report.check(
        format!("run {r}: under callgrind every poll stored the whole table"),
        all_polls > 0 && all_readings == all_polls * per_poll,
        format!("{all_readings} readings, {all_polls} polls × {per_poll}"),
    );
    let agent = instructions as f64 / (polls * VARBINDS_PER_WALK) as f64;
    let ratio = agent / netsnmp.max(f64::MIN_POSITIVE);
    report.record("agent_instr_per_varbind", agent);
    report.record("netsnmp_instr_per_varbind", netsnmp);
    report.record("instr_ratio", ratio);
    report.note(format!(
        "run {r}: agent {instructions} instructions over {polls} polls of {VARBINDS_PER_WALK} varbinds; \
         snmpbulkwalk median {full} instructions a walk, {empty} a start"
    ));
    progress.say(&format!(
        "{label}: agent {agent:.0} instructions/varbind, snmpbulkwalk {netsnmp:.0}: {ratio:.3} ×"
    ));
    Ok(())
}

/// Instructions of one `snmpbulkwalk` of `oid` under callgrind.
async fn bulkwalk_instr(
    valgrind: &Path,
    bulkwalk: &BulkWalk,
    oid: &str,
    dir: &WorkDir,
    i: usize,
) -> Result<u64> {
    let out = dir.join(&format!("callgrind.bulkwalk.{}.{i}", oid.len()));
    let status = bulkwalk
        .command(valgrind)
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&bulkwalk.program)
        .args(bulkwalk.args(oid))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("run snmpbulkwalk under valgrind")?;
    ensure!(
        status.success(),
        "snmpbulkwalk of {oid} under callgrind: {status}"
    );
    let text = std::fs::read_to_string(&out).with_context(|| format!("read {}", out.display()))?;
    metrics_instr::parse_dump(&text)
        .0
        .with_context(|| format!("{}: no totals: line", out.display()))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
