//! `cargo xtask test`: the whole suite, as CI runs it (`.ci/run`).
//!
//! 1. find or install the external tools the tests use ([`crate::tools`])
//!    and make sure PostgreSQL and Mosquitto answer ([`crate::services`]);
//! 2. `cargo build --workspace --bins`: the end-to-end tests spawn the
//!    collector, agent and simulator binaries, which `cargo test` alone does
//!    not build for other packages;
//! 3. the packages of those debug binaries install into a scratch root,
//!    run, and purge without a trace ([`crate::dist::test_step`]; root
//!    only, a few seconds);
//! 4. `cargo test --workspace` with every tool's path in its variable.

use anyhow::Result;

use crate::{Workspace, dist, run_checked, services, tools};

/// Run the suite; `extra` goes to `cargo test`.
pub fn run(ws: &Workspace, extra: &[String]) -> Result<()> {
    println!(
        "xtask test: checking test tools ({}), building every binary, then running every test",
        tools::TOOLS
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let env = tools::ensure_all(ws)?;
    services::ensure_all()?;

    run_checked(&mut ws.cargo_command([
        "build",
        "-j2",
        "--workspace",
        "--bins",
        "--exclude",
        "xtask",
    ]))?;
    dist::test_step(ws)?;

    let mut test = ws.cargo_command(["test", "-j2"]);
    // `-p NAME` narrows the run; otherwise every package is tested.
    let narrowed = extra
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a.starts_with("--package") || a.starts_with("-p"));
    if !narrowed {
        test.arg("--workspace");
    }
    test.args(extra).envs(env);
    run_checked(&mut test)?;
    println!("xtask test: all tests passed");
    Ok(())
}
