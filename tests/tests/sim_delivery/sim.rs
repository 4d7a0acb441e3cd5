//! A deterministic simulation of the delivery path (issue 18): the real
//! uplink and spool of an agent and the real Ingest sessions, merger and
//! SQLite store of a collector run on one current-thread tokio runtime with
//! a paused clock, over a simulated network (`net.rs`), while a seeded
//! schedule injects faults: cut connections (dropped frames, lost acks),
//! stalled directions (delayed frames), partitions, collector sessions the
//! agent already left (duplicate streams of one agent), collector crashes
//! at random moments and between a commit and its acks, agent crashes at
//! random moments and between a spool record's write and its fsync (the
//! record then kept, lost or torn). After the faults stop and delivery
//! settles, the delivery contract is checked against ground truth and
//! what the spool reported giving up (`check.rs`).
//!
//! Entry points: the test in `main.rs` (a few hundred seeds in
//! `cargo xtask test`) and `cargo xtask sim --seeds N [--from S]` /
//! `--seed S`, which run that test with `TRIBUTARY_SIM_*` set. A failing
//! seed is printed with the command that replays it.
//!
//! What is deterministic: the fault schedule, the devices' readings and
//! the uplink's reconnect jitter (`UplinkConfig::jitter_seed`) are
//! functions of the seed, and everything runs on one thread whose clock
//! only moves when every task waits. What is not: tokio's `select!` polls
//! its branches from a random start, hash maps iterate in a random order,
//! a new spool's epoch is drawn from the OS's random numbers, and the wall
//! clock stamps receipt and paces compaction, so a replay is the same
//! faults at the same times but may interleave differently in places (see
//! ARCHITECTURE "Simulation" for how often a failing seed failed again).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use tributary_agent::reading::{Labels, Reading, SeriesKey, Value, intern};

use crate::check;
use crate::net::{Net, Side, lock};
use crate::procs::{
    Agent, Collector, SimCrash, Taps, WriteCrash, apply_write_crash, crash_copy, restore,
};
use crate::rng::Rng;

/// Simulated devices, each polled every [`POLL`].
const DEVICES: usize = 3;
const POLL: Duration = Duration::from_millis(100);
/// The harness's step: faults, crashes and restarts happen between steps.
const STEP: Duration = Duration::from_millis(50);
/// How long delivery may take to settle after the faults stop.
const SETTLE_LIMIT: Duration = Duration::from_secs(1800);

/// What one seed did, for the summary of a run of many.
#[derive(Debug, Default, Clone)]
pub struct SeedStats {
    pub produced: u64,
    pub taken: u64,
    pub stored: u64,
    pub dropped: u64,
    pub deduplicated: u64,
    pub resent: u64,
    pub connections: u64,
    pub cuts: u64,
    pub half_cuts: u64,
    pub stalls: u64,
    pub partitions: u64,
    pub collector_crashes: u64,
    pub crashes_after_commit: u64,
    pub agent_crashes: u64,
    pub crashes_at_write: u64,
    /// Batches the uplinks sent, and the live ones among them sent while
    /// older backlog batches waited (out of order).
    pub batches_sent: u64,
    pub live_ahead: u64,
}

impl SeedStats {
    pub fn add(&mut self, o: &SeedStats) {
        self.produced += o.produced;
        self.taken += o.taken;
        self.stored += o.stored;
        self.dropped += o.dropped;
        self.deduplicated += o.deduplicated;
        self.resent += o.resent;
        self.connections += o.connections;
        self.cuts += o.cuts;
        self.half_cuts += o.half_cuts;
        self.stalls += o.stalls;
        self.partitions += o.partitions;
        self.collector_crashes += o.collector_crashes;
        self.crashes_after_commit += o.crashes_after_commit;
        self.agent_crashes += o.agent_crashes;
        self.crashes_at_write += o.crashes_at_write;
        self.batches_sent += o.batches_sent;
        self.live_ahead += o.live_ahead;
    }
}

/// The command that replays `seed`.
pub fn replay_command(seed: u64) -> String {
    format!("cargo xtask sim --seed {seed}")
}

/// Runs one seed in a fresh directory under `dir`; `Err` names every
/// violation of the contract (or what kept the run from finishing).
pub fn run_seed(seed: u64, dir: &Path) -> Result<SeedStats> {
    quiet_sim_crashes();
    let dir = dir.join(format!("seed-{seed}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .context("building the runtime")?;
    let panics_before = PANICS.load(Ordering::SeqCst);
    let mut result = rt.block_on(Sim::new(seed, &dir).run());
    drop(rt);
    // A task that panicked for another reason than the simulation's crash
    // (a session, say: tokio catches it and the stream just ends) fails
    // the seed even if delivery recovered from it.
    let panics = PANICS.load(Ordering::SeqCst) - panics_before;
    if panics > 0 && result.is_ok() {
        result = Err(anyhow::anyhow!(
            "{panics} task(s) panicked during the run (printed above)"
        ));
    }
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Panics other than [`SimCrash`] since the process started; seeds run one
/// at a time, so a seed's are the difference across its run.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// The panic that stops the uplink at the spool's failpoint is the
/// simulation's crash, not a failure: its message is not printed. Every
/// other panic is printed and counted in [`PANICS`].
fn quiet_sim_crashes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<SimCrash>() {
                PANICS.fetch_add(1, Ordering::SeqCst);
                previous(info);
            }
        }));
    });
}

/// One run: the world and its schedule.
struct Sim<'a> {
    rng: Rng,
    dir: &'a Path,
    net: Net,
    taps: Taps,
    crash_at_commit: Arc<AtomicBool>,
    /// How the next crash at a spool write leaves the record.
    write_crash: WriteCrash,
    agent: Option<Agent>,
    agent_restart_at: Option<Instant>,
    collector: Option<Collector>,
    collector_restart_at: Option<Instant>,
    series: Vec<Arc<SeriesKey>>,
    /// The spool's bound: large, or (a quarter of the seeds) small enough
    /// for outages to overflow it, with more readings per poll.
    spool_bytes: u64,
    readings_per_poll: i64,
    /// Last counter value produced per device.
    produced: HashMap<String, i64>,
    stats: SeedStats,
}

impl<'a> Sim<'a> {
    fn new(seed: u64, dir: &'a Path) -> Sim<'a> {
        let series = (0..DEVICES)
            .map(|d| {
                Arc::new(SeriesKey {
                    device: intern(&format!("d{d}")),
                    metric: intern("counter"),
                    labels: Labels::default(),
                    unit: intern(""),
                })
            })
            .collect();
        let mut rng = Rng::new(seed);
        let small = rng.percent(25);
        let net = Net::default();
        // A slow link for four seeds in five: acks 10 to 40 ms apart, so
        // a backlog drains beside live batches (drawn from the seed itself,
        // so the fault schedule's draws stay as they were).
        net.set_read_gap(Duration::from_millis(seed % 5 * 10));
        Sim {
            spool_bytes: if small { 48 * 1024 } else { 64 * 1024 * 1024 },
            readings_per_poll: if small { 8 } else { 1 },
            rng,
            dir,
            net,
            taps: Taps::default(),
            crash_at_commit: Arc::new(AtomicBool::new(false)),
            write_crash: WriteCrash::Kept,
            agent: None,
            agent_restart_at: None,
            collector: None,
            collector_restart_at: None,
            series,
            produced: HashMap::new(),
            stats: SeedStats::default(),
        }
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.join("collector.db")
    }

    fn spool_dir(&self) -> std::path::PathBuf {
        self.dir.join("spool")
    }

    async fn run(mut self) -> Result<SeedStats> {
        let chaos_for = Duration::from_millis(self.rng.between(5_000, 30_000));
        self.collector = Some(Collector::start(
            &self.db(),
            &self.net,
            self.crash_at_commit.clone(),
        )?);
        self.agent = Some(self.start_agent()?);
        let start = Instant::now();
        let mut next_fault = start + self.fault_gap();
        let mut next_poll = start;
        while start.elapsed() < chaos_for {
            self.supervise().await?;
            if Instant::now() >= next_poll {
                self.poll_devices();
                next_poll += POLL;
            }
            if Instant::now() >= next_fault {
                self.fault().await?;
                next_fault = Instant::now() + self.fault_gap();
            }
            tokio::time::sleep(STEP).await;
        }
        self.settle().await?;
        self.check()
    }

    fn fault_gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.between(50, 2_000))
    }

    /// Each device polled once: its next counter value into the agent's
    /// intake (a poll the intake cannot take now is skipped, as the
    /// scheduler would skip it).
    fn poll_devices(&mut self) {
        let Some(intake) = self.agent.as_ref().and_then(|a| a.intake.clone()) else {
            return;
        };
        for key in &self.series {
            let last = self.produced.get(&*key.device).copied().unwrap_or(0);
            let readings: Vec<Reading> = (last + 1..=last + self.readings_per_poll)
                .map(|k| Reading {
                    series: key.clone(),
                    ts_ns: 1_700_000_000_000_000_000 + k * 1_000_000,
                    value: Value::I64(k),
                })
                .collect();
            let n = readings.len() as u64;
            if intake.try_send(readings).is_ok() {
                self.produced
                    .insert(key.device.to_string(), last + self.readings_per_poll);
                self.stats.produced += n;
            }
        }
    }

    /// Notices crashes at the failpoints and restarts what is due.
    async fn supervise(&mut self) -> Result<()> {
        if self.collector.as_ref().is_some_and(Collector::ended)
            && let Some(c) = self.collector.take()
        {
            // `Err` unless the merger stopped at the failpoint.
            c.kill(&self.net).await?;
            self.stats.crashes_after_commit += 1;
            self.collector_restart_at = Some(Instant::now() + self.restart_delay());
        }
        if self.agent.as_ref().is_some_and(Agent::ended)
            && let Some(a) = self.agent.take()
        {
            self.count_sent(&a);
            a.join().await?;
            self.net.cut_all();
            let (at, failed) = {
                let mut t = lock(&self.taps);
                (t.crashed_at.take(), t.snapshot_failed.take())
            };
            let Some(at) = at else {
                anyhow::bail!("the uplink stopped during the faults without a crash");
            };
            if let Some(e) = failed {
                anyhow::bail!("copying the spool at the crash: {e}");
            }
            let spool = self.spool_dir();
            restore(&crash_copy(&spool), &spool)?;
            apply_write_crash(&at, self.write_crash)?;
            self.stats.crashes_at_write += 1;
            self.agent_restart_at = Some(Instant::now() + self.restart_delay());
        }
        let now = Instant::now();
        if self.collector_restart_at.is_some_and(|t| now >= t) {
            self.collector_restart_at = None;
            self.collector = Some(Collector::start(
                &self.db(),
                &self.net,
                self.crash_at_commit.clone(),
            )?);
        }
        if self.agent_restart_at.is_some_and(|t| now >= t) {
            self.agent_restart_at = None;
            self.agent = Some(self.start_agent()?);
        }
        Ok(())
    }

    /// Adds what `agent` sent to the seed's counts (before it goes).
    fn count_sent(&mut self, agent: &Agent) {
        let (ahead, sent) = agent.sent_ahead();
        self.stats.live_ahead += ahead;
        self.stats.batches_sent += sent;
    }

    fn start_agent(&mut self) -> Result<Agent> {
        let seed = self.rng.next_u64();
        Agent::start(
            &self.spool_dir(),
            &self.net,
            &self.taps,
            seed,
            self.spool_bytes,
        )
    }

    fn restart_delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.between(0, 3_000))
    }

    /// One fault, drawn from the seed.
    async fn fault(&mut self) -> Result<()> {
        let now = Instant::now();
        match self.rng.below(10) {
            0 | 1 => {
                self.net.cut_all();
                self.stats.cuts += 1;
            }
            2 => {
                let until = now + Duration::from_millis(self.rng.between(1_000, 40_000));
                self.net.cut_agent_side(until);
                self.stats.half_cuts += 1;
            }
            3 => {
                let side = if self.rng.percent(50) {
                    Side::Agent
                } else {
                    Side::Collector
                };
                let until = now + Duration::from_millis(self.rng.between(10, 30_000));
                self.net.stall(side, until);
                self.stats.stalls += 1;
            }
            4 => {
                let until = now + Duration::from_millis(self.rng.between(100, 20_000));
                self.net.partition(until);
                self.stats.partitions += 1;
            }
            5 => {
                if let Some(c) = self.collector.take() {
                    if c.kill(&self.net).await? {
                        // The failpoint had fired since the last step.
                        self.stats.crashes_after_commit += 1;
                    } else {
                        self.stats.collector_crashes += 1;
                    }
                    self.collector_restart_at = Some(now + self.restart_delay());
                }
            }
            6 => self.crash_at_commit.store(true, Ordering::SeqCst),
            7 => {
                if let Some(a) = self.agent.take() {
                    self.count_sent(&a);
                    a.kill(&self.spool_dir(), &self.net).await?;
                    self.stats.agent_crashes += 1;
                    self.agent_restart_at = Some(now + self.restart_delay());
                }
            }
            _ => {
                self.write_crash = match self.rng.below(3) {
                    0 => WriteCrash::Kept,
                    1 => WriteCrash::Lost,
                    _ => WriteCrash::Torn(self.rng.between(1, 64)),
                };
                lock(&self.taps).crash_at_write = true;
            }
        }
        Ok(())
    }

    /// The faults stop: nothing armed, both processes up, the devices
    /// stop, and the agent drains until the collector has acked every
    /// spooled batch (the uplink then ends by itself).
    async fn settle(&mut self) -> Result<()> {
        self.crash_at_commit.store(false, Ordering::SeqCst);
        lock(&self.taps).crash_at_write = false;
        // A crash may have fired at the last step.
        self.supervise().await?;
        if self.collector.is_none() {
            self.collector = Some(Collector::start(
                &self.db(),
                &self.net,
                self.crash_at_commit.clone(),
            )?);
        }
        if self.agent.is_none() {
            self.agent = Some(self.start_agent()?);
        }
        let Some(mut agent) = self.agent.take() else {
            anyhow::bail!("no agent to settle");
        };
        agent.intake = None;
        let settled = tokio::time::timeout(SETTLE_LIMIT, agent.settle()).await;
        self.count_sent(&agent);
        match settled {
            Ok(r) => r?,
            Err(_) => anyhow::bail!(
                "delivery did not settle within {SETTLE_LIMIT:?} of simulated time after the faults"
            ),
        }
        if let Some(c) = self.collector.take() {
            c.kill(&self.net).await?;
        }
        self.stats.connections = self.net.opened();
        Ok(())
    }

    fn check(mut self) -> Result<SeedStats> {
        let stored = check::read_store(&self.db())?;
        let (taken, drops) = {
            let mut t = lock(&self.taps);
            let drops = check::Drops {
                ids: std::mem::take(&mut t.dropped),
                count: t.dropped_count,
                unknown: t.dropped_unknown,
            };
            (std::mem::take(&mut t.taken), drops)
        };
        self.stats.taken = taken.len() as u64;
        self.stats.stored = stored.counts.values().map(|&n| u64::from(n)).sum();
        self.stats.dropped = stored.dropped;
        self.stats.deduplicated = stored.deduplicated;
        self.stats.resent = stored.resent;
        let problems = check::contract(&self.produced, &taken, &drops, &stored);
        if problems.is_empty() {
            Ok(self.stats)
        } else {
            anyhow::bail!("{}\n  faults: {:?}", problems.join("\n  "), self.stats)
        }
    }
}
