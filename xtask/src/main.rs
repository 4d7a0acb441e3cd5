//! `cargo xtask`: project chores that need more than one cargo command.
//!
//! - `cargo xtask test [CARGO TEST ARGS]`: make sure the external tools the
//!   tests use are there (installing them into `target/` if not), build every
//!   binary, run the whole test suite.
//! - `cargo xtask sim [--seeds N] [--from S] [--seed S]`: the delivery
//!   simulation over many seeds, or one again (see `xtask/src/sim.rs`).
//! - `cargo xtask demo [--duration 20s]`: a collector, device simulators and
//!   two agents on loopback, with a live progress line and a summary.
//! - `cargo xtask bench <scenario>...`: release build, then the measuring
//!   binary `tributary-bench` (see `xtask/src/bench.rs`).
//! - `cargo xtask dist [--profile release|dev] [--check-install]`: Debian
//!   packages of the agent and the collector (see `xtask/src/dist/`).
//!
//! Dependencies are kept to `anyhow` and `serde_json`: no async runtime and no
//! argument parser, so the xtask builds in seconds.

mod bench;
mod certs;
mod demo;
mod deny;
mod dist;
mod fuzz;
mod proc;
mod services;
mod sim;
mod test;
mod tools;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test [ARGS]              install missing test tools, build all binaries, run every test
                           (ARGS go to `cargo test`, e.g. `-p tributary-tests -- --nocapture`)
  sim [--seeds N] [--from S] [--seed S] [--release]
                           the seeded delivery simulation (faults, crashes, contract check) over
                           seeds S..S+N (default 1000 from 0), or one seed again to replay a failure
  demo [--duration 20s]    run a collector, device simulators and two agents on loopback;
                           stops after the duration or on Ctrl-C and prints a summary
  bench <SCENARIO>... [--json] [--duration D] [--runs N] [...]
                           release build, then measure: ingest, poll, streams, wire,
                           vs-prometheus (installs Debian's prometheus if missing), all;
                           `cargo xtask bench --help` lists every flag
  certs --out DIR [--agents edge-1,edge-2] [--names localhost,127.0.0.1] [--operators operator]
                           a development CA, a collector certificate and client certificates
  dist [--profile release|dev] [--out DIR] [--check-install]
                           .deb packages of the agent and the collector in target/dist;
                           --check-install then installs them into a scratch root, runs
                           them, purges them and checks nothing is left (root only)
  deny [CHECK...]          cargo-deny against deny.toml (licenses bans sources; `all` adds advisories)
  fuzz [--time 30s] [TARGET...]
                           a short cargo-fuzz run of every fuzz target (needs a nightly toolchain)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&Workspace::locate(), &args[1..]),
        Some("sim") => sim::run(&Workspace::locate(), &args[1..]),
        Some("demo") => demo::run(&Workspace::locate(), &args[1..]),
        Some("bench") => bench::run(&Workspace::locate(), &args[1..]),
        Some("certs") => certs::run(&args[1..]),
        Some("dist") => dist::run(&Workspace::locate(), &args[1..]),
        Some("deny") => deny::run(&Workspace::locate(), &args[1..]),
        Some("fuzz") => fuzz::run(&Workspace::locate(), &args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => {
            eprintln!("xtask: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where things are: the workspace root, its target directory and cargo.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The directory of the workspace `Cargo.toml`.
    pub root: PathBuf,
    /// `$CARGO_TARGET_DIR` or `<root>/target`.
    pub target: PathBuf,
    /// The cargo that runs us (`$CARGO`), so the same toolchain builds.
    pub cargo: PathBuf,
}

impl Workspace {
    fn locate() -> Workspace {
        // xtask/ sits directly under the workspace root.
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("cargo"));
        Workspace {
            root,
            target,
            cargo,
        }
    }

    /// Where `cargo build` (debug profile) puts the binaries.
    pub fn bin_dir(&self) -> PathBuf {
        self.target.join("debug")
    }

    /// The path of the workspace binary `name`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir()
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }

    /// A cargo command run in the workspace root, without the variables
    /// `cargo run` set to describe the xtask's own package: ring's build
    /// script reruns when they change, so passing them on would rebuild
    /// ring and everything above it at every call (and again at the next
    /// xtask build).
    pub fn cargo_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.cargo);
        command.args(args).current_dir(&self.root);
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("CARGO_PKG_")
                || n.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                ]
                .contains(&&*n)
            {
                command.env_remove(&name);
            }
        }
        command
    }

    /// `path` relative to the current directory when it is below it, for
    /// commands a person copies.
    pub fn display(&self, path: &Path) -> String {
        std::env::current_dir()
            .ok()
            .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| path.to_path_buf())
            .display()
            .to_string()
    }
}

/// Run `command` with inherited output; a failure names it.
pub fn run_checked(command: &mut Command) -> Result<()> {
    let shown = show(command);
    println!("xtask: running {shown}");
    let status = command.status().with_context(|| format!("start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// A command line as a person would type it, with the environment variables
/// it sets in front.
pub fn show(command: &Command) -> String {
    let env = command.get_envs().filter_map(|(key, value)| {
        value.map(|v| format!("{}={}", key.to_string_lossy(), v.to_string_lossy()))
    });
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned());
    env.chain(words).collect::<Vec<_>>().join(" ")
}
