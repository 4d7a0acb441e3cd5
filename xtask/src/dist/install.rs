//! The packages' install check, run by `cargo xtask dist --check-install`
//! and as a step of `cargo xtask test` ([`test_step`]):
//!
//! 1. a scratch root under `target/dist-check/` gets an empty dpkg
//!    database plus this machine's records of the packages named in
//!    `Depends`, so dpkg checks them against what is installed here;
//! 2. both packages install into it with `dpkg --root` (the maintainer
//!    scripts run on the host with `DPKG_ROOT` set,
//!    `--force-script-chrootless`: they leave the running system's systemd
//!    alone then, and deb-systemd-helper keeps its state inside the root);
//! 3. the installed `tributary-agent check --config` on the installed
//!    config (a sim device, so it passes offline) and both binaries'
//!    `--version` run from the scratch root; the units pass
//!    `systemd-analyze verify` and `security` when systemd-analyze is there;
//!    the installed collector serves on the installed config (listen
//!    address and store moved by flags) and stops on SIGTERM;
//! 4. `dpkg -r` keeps the conffiles and removes everything else, `dpkg
//!    --purge` removes the rest: every path `dpkg -L` listed is gone (but
//!    directories that still hold something), and no file is left in the
//!    scratch root besides dpkg's own database (so deb-systemd-helper's
//!    state went with the purge too).
//!
//! The machine's own dpkg database is not touched. Needs root (dpkg
//! chowns what it installs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::{Deb, Profile, build_all, capture, remove_if_exists};
use crate::proc::{Child, free_addr, output_within, wait_for_port};
use crate::{Workspace, run_checked};

/// The step of `cargo xtask test`: package the debug binaries the test
/// just built (no release build: that would cost CI minutes) and check
/// them; skipped, saying so, when not root or without dpkg.
pub fn test_step(ws: &Workspace) -> Result<()> {
    if !is_root() {
        println!(
            "xtask test: SKIPPED the package install check (cargo xtask dist --check-install): \
             dpkg needs root"
        );
        return Ok(());
    }
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        println!("xtask test: SKIPPED the package install check: dpkg-deb is not installed");
        return Ok(());
    }
    let started = Instant::now();
    println!("xtask test: packaging the debug binaries and checking that the packages install");
    let debs = build_all(ws, Profile::Dev, &ws.target.join("dist-test"))?;
    check(ws, &debs)?;
    println!(
        "xtask test: packages built, installed, run and purged in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Steps 1 to 4 above for `debs`.
pub fn check(ws: &Workspace, debs: &[Deb]) -> Result<()> {
    ensure!(
        is_root(),
        "--check-install needs root: dpkg chowns what it installs"
    );
    let root = ws.target.join("dist-check").join("root");
    scratch_root(&root)?;
    seed_dependencies(&root, debs)?;

    let mut install = dpkg(&root);
    install.arg("--install").args(debs.iter().map(|d| &d.path));
    run_checked(&mut install)?;

    let mut listed = Vec::new();
    for deb in debs {
        let list = capture(dpkg(&root).args(["--listfiles", deb.spec.name]))?;
        listed.extend(list.lines().map(|l| l.to_owned()));
        run_installed(&root, deb)?;
    }
    verify_units(&root, debs)?;

    let names: Vec<&str> = debs.iter().map(|d| d.spec.name).collect();
    run_checked(dpkg(&root).arg("--remove").args(&names))?;
    for deb in debs {
        let conffile = root.join("etc/tributary").join(deb.spec.config);
        ensure!(
            conffile.is_file(),
            "dpkg --remove {} removed its conffile {} (only --purge should)",
            deb.spec.name,
            conffile.display()
        );
        let binary = root.join("usr/bin").join(deb.spec.name);
        ensure!(
            !binary.exists(),
            "dpkg --remove {} left {}",
            deb.spec.name,
            binary.display()
        );
    }
    run_checked(dpkg(&root).arg("--purge").args(&names))?;

    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status"))
        .context("read the scratch root's dpkg status")?;
    for name in &names {
        ensure!(
            !status.contains(&format!("Package: {name}\n")),
            "dpkg still knows {name} after --purge"
        );
    }
    let mut left = Vec::new();
    for path in &listed {
        let full = root.join(path.trim_start_matches('/'));
        if full.is_dir() {
            // A directory another package (or dpkg) still uses stays.
            if std::fs::read_dir(&full).is_ok_and(|mut d| d.next().is_none()) {
                left.push(format!("{path} (empty directory)"));
            }
        } else if full.symlink_metadata().is_ok() {
            left.push(path.clone());
        }
    }
    left.extend(stray_files(&root)?);
    if !left.is_empty() {
        bail!(
            "after dpkg --purge, left in {}: {}",
            root.display(),
            left.join(", ")
        );
    }
    remove_if_exists(&root)?;
    println!(
        "xtask dist: {} installed, ran, removed and purged cleanly ({} paths checked)",
        names.join(" and "),
        listed.len()
    );
    Ok(())
}

/// `dpkg` acting on the scratch root only.
fn dpkg(root: &Path) -> Command {
    let mut command = Command::new("dpkg");
    command
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("dpkg.log").display()))
        .arg("--force-script-chrootless");
    command
}

/// An empty dpkg database in a fresh `root`.
fn scratch_root(root: &Path) -> Result<()> {
    remove_if_exists(root)?;
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir))
            .with_context(|| format!("create {}", admin.join(dir).display()))?;
    }
    for file in ["status", "available"] {
        std::fs::write(admin.join(file), "")
            .with_context(|| format!("write {}", admin.join(file).display()))?;
    }
    Ok(())
}

/// Step 1: the host's dpkg records of every package named in the
/// packages' `Depends` go into the scratch root's database, so dpkg checks
/// the dependencies (names, versions, alternatives) against what this
/// machine has installed; one missing here fails the install.
fn seed_dependencies(root: &Path, debs: &[Deb]) -> Result<()> {
    let mut names = Vec::new();
    for deb in debs {
        let depends = capture(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(&deb.path)
                .arg("Depends"),
        )?;
        for alternative in depends.split([',', '|']) {
            let name = alternative.split('(').next().unwrap_or_default().trim();
            let name = name.split(':').next().unwrap_or_default();
            if !name.is_empty() && !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    let mut status = String::new();
    for name in &names {
        // Not installed here: left out, and dpkg names it below.
        let out = Command::new("dpkg-query")
            .args(["--status", name])
            .output()
            .context("start dpkg-query")?;
        if out.status.success() {
            status.push_str(String::from_utf8_lossy(&out.stdout).trim_end());
            status.push_str("\n\n");
            // An empty file list: dpkg wants one for every installed package
            // (named `libc6:amd64.list` for a Multi-Arch: same package).
            let full = capture(Command::new("dpkg-query").args([
                "--show",
                "--showformat=${binary:Package}",
                name,
            ]))?;
            let list = root.join("var/lib/dpkg/info").join(format!("{full}.list"));
            std::fs::write(&list, "").with_context(|| format!("write {}", list.display()))?;
        }
    }
    let path = root.join("var/lib/dpkg/status");
    std::fs::write(&path, status).with_context(|| format!("write {}", path.display()))
}

/// Step 3 for one package: `--version` from the scratch root matches the
/// binary that was packaged, and the agent's `check` passes on the
/// installed config.
fn run_installed(root: &Path, deb: &Deb) -> Result<()> {
    let installed = root.join("usr/bin").join(deb.spec.name);
    let version = capture(Command::new(&installed).arg("--version"))?;
    let built = capture(Command::new(&deb.binary).arg("--version"))?;
    let expected = format!("{} {} (commit ", deb.spec.name, env!("CARGO_PKG_VERSION"));
    ensure!(
        version.starts_with(&expected) && version == built,
        "installed {} --version printed {version:?}, expected {built:?} (what {} prints, \
         starting {expected:?})",
        installed.display(),
        deb.binary.display()
    );
    println!("xtask dist: {} --version: {version}", installed.display());

    if deb.spec.name == "tributary-agent" {
        let config = root.join("etc/tributary").join(deb.spec.config);
        let mut command = Command::new(&installed);
        command.arg("check").arg("--config").arg(&config);
        let out = output_within(&mut command, Duration::from_secs(60))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains("sim-1"),
            "{} failed ({}):\n{stdout}{}",
            crate::show(&command),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        println!("xtask dist: {} passed:\n{stdout}", crate::show(&command));
    }
    if deb.spec.name == "tributary-collector" {
        serve_installed_config(root, deb, &installed)?;
    }
    Ok(())
}

/// Starts the installed collector on the installed config, with the
/// listen address and the store (under the service's state directory,
/// which only systemd makes) replaced by flags, waits until it listens,
/// and stops it with SIGTERM: the shipped config must load.
fn serve_installed_config(root: &Path, deb: &Deb, installed: &Path) -> Result<()> {
    let dir = root.with_file_name("collector");
    remove_if_exists(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let config = root.join("etc/tributary").join(deb.spec.config);
    let addr = free_addr()?;
    let mut command = Command::new(installed);
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--store")
        .arg(format!("sqlite:{}", dir.join("tributary.db").display()))
        .current_dir(&dir);
    // Any other listener the collector has gets a free port too.
    let help = capture(Command::new(installed).args(["serve", "--help"]))?;
    if help.contains("--http-listen") {
        command.arg("--http-listen").arg(free_addr()?.to_string());
    }
    let shown = crate::show(&command);
    let log = dir.join("collector.log");
    let mut child = Child::spawn("installed collector", &mut command, &log)?;
    wait_for_port(addr, &mut child, Duration::from_secs(30))?;
    // The port is bound before the SIGTERM handler is installed; the
    // handler is in place right after this line is logged.
    let until = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("collector listening")) {
        ensure!(
            child.exited()?.is_none() && Instant::now() < until,
            "{shown} did not log `collector listening`; its log ends with:\n{}",
            child.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, killed) = child.terminate(Duration::from_secs(30))?;
    ensure!(
        status.success() && !killed,
        "{shown} did not stop cleanly on SIGTERM ({status}); its log ends with:\n{}",
        child.log_tail(20)
    );
    println!("xtask dist: {shown} served and stopped");
    remove_if_exists(&dir)
}

/// `systemd-analyze verify` and `security` on the installed units, their
/// `ExecStart` pointed into the scratch root (verify checks the binary
/// exists). Skipped when systemd-analyze is not installed.
fn verify_units(root: &Path, debs: &[Deb]) -> Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("xtask dist: systemd-analyze is not installed; units not verified");
        return Ok(());
    }
    let dir = root.with_file_name("units");
    remove_if_exists(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut units: Vec<PathBuf> = Vec::new();
    for deb in debs {
        let name = format!("{}.service", deb.spec.name);
        let installed = root.join("usr/lib/systemd/system").join(&name);
        let text = std::fs::read_to_string(&installed)
            .with_context(|| format!("read {}", installed.display()))?;
        let bin = root.join("usr/bin");
        let text = text.replace(
            "ExecStart=/usr/bin/",
            &format!("ExecStart={}/", bin.display()),
        );
        let unit = dir.join(&name);
        std::fs::write(&unit, text).with_context(|| format!("write {}", unit.display()))?;
        units.push(unit);
    }
    let out = capture(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .args(&units),
    );
    // `verify` prints problems and may still exit 0: any output is one.
    match out {
        Ok(text) if text.is_empty() => {}
        Ok(text) => bail!("systemd-analyze verify: {text}"),
        Err(e) => return Err(e),
    }
    for unit in &units {
        // Exposure above 2.0 ("OK" ends there) fails: a unit lost hardening.
        let mut command = Command::new("systemd-analyze");
        command
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(unit);
        let out = command
            .output()
            .with_context(|| format!("start {}", crate::show(&command)))?;
        let report = String::from_utf8_lossy(&out.stdout);
        let verdict = report.lines().last().unwrap_or_default().trim();
        ensure!(
            out.status.success(),
            "{} ({}): {verdict}{}",
            crate::show(&command),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        println!("xtask dist: {verdict}");
    }
    remove_if_exists(&dir)
}

/// Files left in the scratch root besides dpkg's database and log.
fn stray_files(root: &Path) -> Result<Vec<String>> {
    let mut stray = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("read {}", dir.display()))?
                .path();
            if path == root.join("var/lib/dpkg") || path == root.join("dpkg.log") {
                continue;
            }
            if path.is_dir() && !path.is_symlink() {
                dirs.push(path);
            } else {
                stray.push(
                    path.strip_prefix(root)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    Ok(stray)
}

/// Whether this process runs as root (`id -u`: no libc call in xtask).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
