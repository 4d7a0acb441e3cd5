//! `cargo xtask sim`: the delivery simulation (`tests/tests/sim_delivery/`)
//! over many seeds, or one seed again.
//!
//! - `--seeds N [--from S]`: seeds `S..S+N` (default 1000 from 0);
//! - `--seed S`: that seed alone (how a failure printed is replayed);
//! - `--release`: an optimised build (many thousands of seeds).
//!
//! It runs the test `tests/tests/sim_delivery/` with
//! `TRIBUTARY_SIM_SEEDS`, `TRIBUTARY_SIM_FROM` or `TRIBUTARY_SIM_SEED` set,
//! which `cargo xtask test` runs with its default of a few hundred seeds.

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, run_checked};

/// Seeds of `cargo xtask sim` without `--seeds`.
const DEFAULT_SEEDS: u64 = 1000;

pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let mut seeds = DEFAULT_SEEDS;
    let mut from = 0u64;
    let mut seed: Option<u64> = None;
    let mut release = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64> {
            let v = it
                .next()
                .with_context(|| format!("{name} needs a number"))?;
            v.parse().with_context(|| format!("{name} {v:?}"))
        };
        match arg.as_str() {
            "--seeds" => seeds = number("--seeds")?,
            "--from" => from = number("--from")?,
            "--seed" => seed = Some(number("--seed")?),
            "--release" => release = true,
            other => bail!(
                "sim: unknown argument {other:?} (usage: cargo xtask sim [--seeds N] [--from S] [--seed S] [--release])"
            ),
        }
    }
    let mut test = ws.cargo_command([
        "test",
        "-j2",
        "-p",
        "tributary-tests",
        "--test",
        "sim_delivery",
    ]);
    if release {
        test.arg("--release");
    }
    test.args(["--", "--nocapture"]);
    match seed {
        Some(s) => {
            test.env("TRIBUTARY_SIM_SEED", s.to_string());
        }
        None => {
            test.env("TRIBUTARY_SIM_SEEDS", seeds.to_string())
                .env("TRIBUTARY_SIM_FROM", from.to_string());
        }
    }
    run_checked(&mut test)
}
