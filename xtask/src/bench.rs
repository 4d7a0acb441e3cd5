//! `cargo xtask bench <scenario>... [flags]`: build the collector, the agent
//! and the measuring binary `tributary-bench` in release mode, then run it.
//!
//! All measuring code lives in `tributary-bench` (`tests/src/bench/`), so
//! the xtask stays small: it builds, makes sure Prometheus is installed
//! when `vs-prometheus` or `promql` needs it (Debian's package, via apt-get, saying so),
//! and valgrind when `metrics-cost` or `snmp` (its instruction counts) does (the same way),
//! net-snmp's snmpd and snmpbulkwalk and the MIB modules when `snmp` does
//! (as `cargo xtask test` finds or installs them, passed in the same
//! variables), and passes every argument through. Its own messages go to stderr, so
//! `--json` output on stdout stays clean.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, show};

/// The binaries a benchmark runs.
const BINARIES: &[&str] = &["tributary-collector", "tributary-agent", "tributary-bench"];

pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let mut extra: Vec<String> = Vec::new();
    let wants_prometheus = args
        .iter()
        .any(|a| a == "vs-prometheus" || a == "promql" || a == "all");
    if wants_prometheus && !args.iter().any(|a| a == "--prometheus") {
        extra.push("--prometheus".into());
        extra.push(ensure_prometheus()?.display().to_string());
    }

    if args
        .iter()
        .any(|a| a == "metrics-cost" || a == "snmp" || a == "all" || a == "smoke")
    {
        crate::tools::valgrind()?;
    }

    // `snmp` walks a real snmpd, compares with snmpbulkwalk (next to
    // snmpwalk) and names traps from the IETF MIB modules.
    let mut env: Vec<(&str, PathBuf)> = Vec::new();
    if args
        .iter()
        .any(|a| a == "snmp" || a == "all" || a == "smoke")
    {
        for tool in crate::tools::TOOLS
            .iter()
            .filter(|t| SNMP_TOOLS.contains(&t.env))
        {
            env.push((tool.env, (tool.ensure)(ws)?));
        }
    }

    let mut build = ws.cargo_command(["build", "--release", "-j2"]);
    for bin in BINARIES {
        build.args(["--bin", bin]);
    }
    checked(&mut build)?;

    let bench = ws
        .target
        .join("release")
        .join(format!("tributary-bench{}", std::env::consts::EXE_SUFFIX));
    let mut command = Command::new(&bench);
    command
        .args(args)
        .args(&extra)
        .envs(env)
        .current_dir(&ws.root);
    checked(&mut command)
}

/// The tools (by their variable in [`crate::tools::TOOLS`]) `bench snmp`
/// runs.
const SNMP_TOOLS: &[&str] = &[
    "TRIBUTARY_SNMPD",
    "TRIBUTARY_SNMPWALK",
    "TRIBUTARY_NETSNMP_MIBS",
    "TRIBUTARY_IETF_MIBS",
];

/// Runs `command` with inherited output, saying so on stderr.
fn checked(command: &mut Command) -> Result<()> {
    let shown = show(command);
    eprintln!("xtask: running {shown}");
    let status = command.status().with_context(|| format!("start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// `prometheus` from PATH or `/usr/bin`, else Debian's package installed
/// with apt-get.
fn ensure_prometheus() -> Result<PathBuf> {
    if let Some(path) = find_prometheus() {
        return Ok(path);
    }
    eprintln!(
        "xtask bench: prometheus is not installed; installing Debian's package `prometheus` with apt-get"
    );
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        bail!(
            "installing prometheus needs root: run `sudo apt-get install prometheus`, or pass --prometheus PATH"
        );
    }
    let install = || {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    if checked(&mut install()).is_err() {
        // The package lists may be missing or stale.
        checked(Command::new("apt-get").arg("update"))?;
        checked(&mut install())?;
    }
    let path = find_prometheus().context("apt-get installed prometheus, but it is not on PATH")?;
    if running_prometheus() {
        eprintln!(
            "xtask bench: warning: a prometheus service is running (started by the package?); it competes for CPU with the benchmark"
        );
    }
    Ok(path)
}

fn find_prometheus() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .chain([PathBuf::from("/usr/bin/prometheus")])
        .find(|candidate| candidate.is_file())
}

/// Whether a process called `prometheus` runs on this machine.
fn running_prometheus() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "prometheus")
        })
}
