//! `cargo xtask fuzz [--time 30s] [TARGET...]`: a short cargo-fuzz run of
//! every fuzz target (or the named ones).
//!
//! The targets live beside the crates they test, in `collector/fuzz` and
//! `agent/fuzz`; those are not workspace members, so normal builds never
//! need a nightly toolchain. cargo-fuzz (libFuzzer) needs one: this command
//! uses `cargo +nightly` and says so if it is missing. cargo-fuzz itself is
//! taken from `$PATH` or installed into `target/tools` from crates.io.
//!
//! A crash leaves its input in `<crate>/fuzz/artifacts/<target>/`; turn it
//! into a regression test (tests/tests/hostile_inputs.rs holds the
//! property-test equivalents of every target, which run in `cargo xtask test`
//! on the stable toolchain).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tributary_config::parse_duration_arg;

use crate::{Workspace, run_checked};

pub const USAGE: &str = "fuzz [--time 30s] [TARGET...]";

/// (crate directory, target): every fuzz target.
pub const TARGETS: &[(&str, &str)] = &[
    ("collector", "ingest_frame"),
    ("collector", "collector_config"),
    ("collector", "cert_identity"),
    ("agent", "agent_config"),
    ("agent", "prometheus_text"),
    ("agent", "json_pointer"),
    ("agent", "modbus_registers"),
    ("agent", "snmp_response"),
    ("agent", "mib_module"),
    ("agent", "snmp_notification"),
];

pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let mut time = Duration::from_secs(30);
    let mut wanted: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--time" => {
                let v = it.next().context("--time needs a value such as 30s")?;
                time = parse_duration_arg(v)?;
            }
            t if TARGETS.iter().any(|(_, name)| *name == t) => wanted.push(t.to_owned()),
            other => bail!(
                "fuzz: unknown argument {other:?} (usage: cargo xtask {USAGE}; targets: {})",
                TARGETS
                    .iter()
                    .map(|(_, t)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !nightly {
        bail!(
            "cargo-fuzz needs a nightly toolchain (`rustup toolchain install nightly`), and none is \
             installed here; the same targets run as property tests in `cargo xtask test` \
             (tests/tests/hostile_inputs.rs)"
        );
    }
    let cargo_fuzz = cargo_fuzz(ws)?;
    let mut dirs: Vec<PathBuf> = cargo_fuzz.parent().map(PathBuf::from).into_iter().collect();
    dirs.extend(
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    let path = std::env::join_paths(dirs).context("PATH with cargo-fuzz")?;
    let secs = time.as_secs().max(1).to_string();
    for (krate, target) in TARGETS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == target) {
            continue;
        }
        let dir = ws.root.join(krate);
        // `rustup run nightly cargo fuzz`: cargo finds `cargo-fuzz` on PATH.
        let mut command = Command::new("rustup");
        command
            .current_dir(&dir)
            .env("PATH", &path)
            .env("CARGO_TARGET_DIR", ws.target.join("fuzz"))
            .args(["run", "nightly", "cargo", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={secs}"));
        run_checked(&mut command).with_context(|| {
            format!(
                "fuzz target {target} failed; a crashing input is kept in {}/fuzz/artifacts/{target}/",
                dir.display()
            )
        })?;
    }
    println!("xtask fuzz: every target ran {secs}s without a crash");
    Ok(())
}

/// cargo-fuzz's path, installing it under `target/tools` if needed.
fn cargo_fuzz(ws: &Workspace) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("cargo-fuzz"))
            .find(|c| c.is_file())
    }) {
        return Ok(path);
    }
    let root = ws.target.join("tools");
    let path = root.join("bin").join("cargo-fuzz");
    if path.is_file() {
        return Ok(path);
    }
    println!(
        "xtask fuzz: cargo-fuzz not found; installing it into {}",
        root.display()
    );
    run_checked(
        ws.cargo_command(["install", "--locked", "-j2", "cargo-fuzz", "--root"])
            .arg(&root),
    )
    .context("install cargo-fuzz from crates.io")?;
    Ok(path)
}
