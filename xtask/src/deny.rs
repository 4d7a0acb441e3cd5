//! `cargo xtask deny [CHECK...]`: supply-chain checks with cargo-deny
//! against `deny.toml` (licences, banned and duplicate crates, sources,
//! advisories).
//!
//! cargo-deny is taken from `$PATH` or `target/tools/bin/`, and installed
//! there from crates.io (`cargo install --locked`) when missing. The default
//! checks are `licenses bans sources`, which need nothing but the local
//! registry cache; `advisories` (or `all`) also fetches the RustSec advisory
//! database from GitHub, so it needs that network access.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, run_checked};

pub const USAGE: &str = "deny [licenses|bans|sources|advisories|all ...]";

/// The checks run when none are named.
const DEFAULT_CHECKS: &[&str] = &["licenses", "bans", "sources"];
const ALL_CHECKS: &[&str] = &["advisories", "licenses", "bans", "sources"];

pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let mut checks: Vec<&str> = Vec::new();
    for arg in args {
        match arg.as_str() {
            "all" => checks.extend(ALL_CHECKS),
            c if ALL_CHECKS.contains(&c) => checks.push(c),
            other => bail!("deny: unknown check {other:?} (usage: cargo xtask {USAGE})"),
        }
    }
    if checks.is_empty() {
        checks.extend(DEFAULT_CHECKS);
    }
    checks.dedup();
    let deny = cargo_deny(ws)?;
    let mut command = Command::new(&deny);
    command
        .current_dir(&ws.root)
        .args(["--all-features", "check"])
        .args(&checks);
    if !checks.contains(&"advisories") {
        println!(
            "xtask deny: advisories skipped (they need the RustSec database from GitHub: `cargo xtask deny all`)"
        );
    }
    run_checked(&mut command)
}

/// cargo-deny's path, installing it under `target/tools` if needed.
fn cargo_deny(ws: &Workspace) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("cargo-deny"))
            .find(|c| c.is_file())
    }) {
        return Ok(path);
    }
    let root = ws.target.join("tools");
    let path = root.join("bin").join("cargo-deny");
    if path.is_file() {
        return Ok(path);
    }
    println!(
        "xtask deny: cargo-deny not found; installing it into {} (takes a few minutes, once)",
        root.display()
    );
    run_checked(
        ws.cargo_command(["install", "--locked", "-j2", "cargo-deny", "--root"])
            .arg(&root),
    )
    .context("install cargo-deny from crates.io")?;
    Ok(path)
}
