//! The delivery path under the seeded simulation: each seed (`sim.rs`)
//! runs the real uplink, spool, sessions and merger through its
//! own schedule of network faults and crashes, then checks the delivery
//! contract against ground truth (nothing stored twice, every spooled
//! reading stored or counted as dropped).
//!
//! `cargo xtask test` runs `DEFAULT_SEEDS` seeds; `cargo xtask sim --seeds N
//! [--from S]` or `--seed S` sets `TRIBUTARY_SIM_SEEDS`, `TRIBUTARY_SIM_FROM`
//! and `TRIBUTARY_SIM_SEED`. A failing seed is printed with the command
//! that replays it.
//!
//! The harness lives in this test target, not in the `tributary-tests`
//! library, because it needs tokio's `test-util` (a paused clock), which
//! as a normal dependency would reach the release binaries `cargo xtask
//! bench` builds with the library.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
mod check;
mod net;
mod procs;
mod rng;
mod sim;

use sim::{SeedStats, replay_command, run_seed};

/// Seeds of a plain `cargo test` / `cargo xtask test` run.
const DEFAULT_SEEDS: u64 = 300;

fn env_u64(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(
            v.trim().parse().with_context(|| format!("{name}={v:?}"))?,
        )),
        Err(_) => Ok(None),
    }
}

/// Where the seeds' files go: a `tributary-sim-<pid>` directory (removed
/// after a run without failures) under `TRIBUTARY_SIM_DIR`, else a RAM disk
/// when there is one (each seed fsyncs hundreds of times), else the target
/// directory. The given directory itself is never removed.
fn sim_dir() -> Result<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    let base = if let Some(d) = std::env::var_os("TRIBUTARY_SIM_DIR") {
        PathBuf::from(d)
    } else if shm.is_dir() {
        shm
    } else {
        tributary_tests::process::target_dir()?.join("test-tmp")
    };
    Ok(base.join(format!("tributary-sim-{}", std::process::id())))
}

/// Wall-clock time one seed may take. The paused clock moves only when
/// every task waits, so a livelock (tasks that never wait) would freeze
/// simulated time and `SETTLE_LIMIT` would never fire; a seed takes well
/// under a second when nothing is wrong.
const SEED_WALL_LIMIT: Duration = Duration::from_secs(120);

/// Runs `seed` on a thread of its own; the outer `Err` is a seed that did
/// not finish within [`SEED_WALL_LIMIT`] (its thread is left behind, so
/// the run stops there), the inner one the seed's own failure.
fn run_capped(seed: u64, dir: &Path) -> Result<Result<SeedStats>> {
    let (tx, rx) = mpsc::channel();
    let seed_dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .spawn(move || {
            let _ = tx.send(run_seed(seed, &seed_dir));
        })
        .context("starting a seed's thread")?;
    match rx.recv_timeout(SEED_WALL_LIMIT) {
        Ok(result) => Ok(result),
        Err(mpsc::RecvTimeoutError::Timeout) => anyhow::bail!(
            "seed {seed} did not finish within {SEED_WALL_LIMIT:?} of wall-clock time \
             (a livelock freezes the paused clock; replay: {})",
            replay_command(seed)
        ),
        // The thread ended without sending: it panicked (printed above).
        Err(mpsc::RecvTimeoutError::Disconnected) => Ok(Err(anyhow::anyhow!(
            "the seed's thread panicked (printed above)"
        ))),
    }
}

#[test]
fn delivery_contract_holds_under_faults() -> Result<()> {
    let (from, count) = match env_u64("TRIBUTARY_SIM_SEED")? {
        Some(seed) => (seed, 1),
        None => (
            env_u64("TRIBUTARY_SIM_FROM")?.unwrap_or(0),
            env_u64("TRIBUTARY_SIM_SEEDS")?.unwrap_or(DEFAULT_SEEDS),
        ),
    };
    let dir = sim_dir()?;
    let mut total = SeedStats::default();
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    for seed in from..from.saturating_add(count) {
        match run_capped(seed, &dir)? {
            Ok(stats) => total.add(&stats),
            Err(e) => {
                eprintln!(
                    "seed {seed} FAILED (replay: {}; files kept in {}):\n  {e:#}",
                    replay_command(seed),
                    dir.join(format!("seed-{seed}")).display()
                );
                failed.push(seed);
            }
        }
    }
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!(
        "{count} seeds from {from} in {:.1} s: {total:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} of {count} seeds broke the delivery contract: {failed:?} (replay one with `{}`)",
        failed.len(),
        failed
            .first()
            .map_or_else(String::new, |&s| replay_command(s)),
    );
    // The simulation must have reached the paths it exists for: a run of
    // many seeds that never crashed at a failpoint or never resent a batch
    // the collector already had would prove nothing about them.
    if count >= 50 {
        assert!(
            total.crashes_after_commit > 0,
            "no crash between commit and ack: {total:?}"
        );
        assert!(
            total.crashes_at_write > 0,
            "no crash between write and fsync: {total:?}"
        );
        assert!(
            total.deduplicated > 0,
            "no replay was deduplicated: {total:?}"
        );
        assert!(total.half_cuts > 0 && total.partitions > 0, "{total:?}");
        // The collector takes batches out of order: live batches must have
        // overtaken a backlog, or the seeds checked only the in-order path.
        assert!(
            total.live_ahead > 0,
            "no live batch went ahead of a backlog: {total:?}"
        );
        assert!(total.taken > 0 && total.stored > 0, "{total:?}");
    }
    Ok(())
}
