//! `config`: how long the agent takes to load a K-device configuration
//! written out in full (one flat TOML file) and the same configuration
//! built from a CSV inventory, a template, `[defaults]`, two included files
//! and a secret file, in this process with `tributary_agent::config::load`.
//! The ratio of the two is the cost of the layers. A consistency check
//! compares the two configs device by device.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_agent::config;
use tributary_agent::drivers::Driver;
use tributary_agent::scheduler::{Fleet, FleetDiff, PollStats};

use crate::collector::WorkDir;
use crate::options::Options;
use crate::progress::Progress;
use crate::report::{Report, Target};

const METRICS: &str = "[\n  { name = \"uptime\", oid = \"1.3.6.1.2.1.1.3.0\", unit = \"cs\" },\n  { name = \"if_in\", oid = \"1.3.6.1.2.1.2.2.1.10.1\", unit = \"By\" },\n]";
const HEAD: &str = "id = \"bench\"\ncollectors = [\"http://127.0.0.1:7400\"]\n";

fn address(i: usize) -> String {
    format!("10.{}.{}.{}:161", i / 65536, (i / 256) % 256, i % 256)
}

/// Writes the flat file and the layered site for `devices` switches.
fn write_sites(dir: &WorkDir, devices: usize) -> Result<()> {
    let mut flat = String::from(HEAD);
    for i in 0..devices {
        writeln!(
            flat,
            "\n[[devices]]\nname = \"sw{i}\"\ndriver = \"snmp\"\naddress = \"{}\"\ninterval = \"30s\"\n\
             timeout = \"5s\"\nversion = \"2c\"\ncommunity = \"c0mmunity\"\nmetrics = {METRICS}\n\
             labels = {{ site = \"s{}\" }}",
            address(i),
            i % 10
        )?;
    }
    std::fs::write(dir.join("flat.toml"), flat)?;

    std::fs::write(dir.join("community"), "c0mmunity\n")?;
    std::fs::write(
        dir.join("layered.toml"),
        format!(
            "{HEAD}include = [\"conf.d/*.toml\"]\n\n[defaults]\ninterval = \"30s\"\ntimeout = \"5s\"\n\n\
             [defaults.snmp]\nversion = \"2c\"\ncommunity_file = \"community\"\n"
        ),
    )?;
    std::fs::create_dir_all(dir.join("conf.d"))?;
    std::fs::write(
        dir.join("conf.d/10-template.toml"),
        format!("[templates.switch]\ndriver = \"snmp\"\nmetrics = {METRICS}\n"),
    )?;
    std::fs::write(
        dir.join("conf.d/20-inventory.toml"),
        "[[inventories]]\nfile = \"../switches.csv\"\ntemplate = \"switch\"\n",
    )?;
    let mut csv = String::from("name,address,label.site\n");
    for i in 0..devices {
        writeln!(csv, "sw{i},{},s{}", address(i), i % 10)?;
    }
    std::fs::write(dir.join("switches.csv"), csv)?;
    Ok(())
}

pub async fn run(opts: &Options, progress: &Progress) -> Result<Report> {
    let devices = opts.devices.unwrap_or(opts.size(10_000, 100));
    let runs = opts.runs();
    let mut report = Report::new("config");
    report.config("devices", devices as u64);
    report.config("runs", runs as u64);
    report.declare("flat_load_s", "s", None);
    report.declare("csv_load_s", "s", Some(Target::AtMost(1.0)));
    report.declare("csv_over_flat", "x", None);
    report.declare("reload_s", "s", Some(Target::AtMost(1.0)));
    let dir = WorkDir::new("config", opts.keep)?;
    write_sites(&dir, devices)?;
    for r in 0..runs {
        let (flat, flat_s) = progress
            .during(&format!("run {r}: loading the flat file"), async {
                let t = Instant::now();
                let c = config::load(&dir.join("flat.toml"));
                (c, t.elapsed().as_secs_f64())
            })
            .await;
        let flat = flat.context("load flat.toml")?;
        let (layered, csv_s) = progress
            .during(&format!("run {r}: loading the CSV site"), async {
                let t = Instant::now();
                let c = config::load(&dir.join("layered.toml"));
                (c, t.elapsed().as_secs_f64())
            })
            .await;
        let layered = layered.context("load layered.toml")?;
        report.record("flat_load_s", flat_s);
        report.record("csv_load_s", csv_s);
        report.record("csv_over_flat", csv_s / flat_s.max(1e-9));
        report.check(
            format!("run {r}: the CSV site equals the flat file, device by device"),
            layered.devices == flat.devices,
            format!(
                "{} and {} devices",
                layered.devices.len(),
                flat.devices.len()
            ),
        );
    }
    // A reload: the running fleet of the flat file, then the CSV site with
    // 1% of its rows changed; timed from reading the files to the fleet
    // applied (changed tasks started again with new drivers, the others
    // untouched).
    for r in 0..runs {
        let (reload_s, diff) = reload_once(&dir, devices)
            .await
            .with_context(|| format!("reload run {r}"))?;
        report.record("reload_s", reload_s);
        report.check(
            format!("run {r}: the reload changed exactly the changed rows"),
            diff.changed == devices / 100 && diff.added == 0 && diff.removed == 0,
            format!("{diff:?}"),
        );
    }
    report.note(
        "the CSV site: main file with [defaults] and [defaults.snmp] (community from a secret \
         file), two included files (a template; the [[inventories]] entry), one CSV row per device",
    );
    Ok(report.finish())
}

/// Starts a fleet of the flat file's devices, changes 1% of the CSV rows,
/// and times the reload: load, diff, build the drivers of the changed
/// devices, apply.
async fn reload_once(dir: &WorkDir, devices: usize) -> Result<(f64, FleetDiff)> {
    let flat = config::load(&dir.join("flat.toml"))?;
    let build = |c: config::AgentConfig| -> Result<Vec<_>> {
        c.devices
            .into_iter()
            .map(|d| {
                let driver = Driver::build(&d)?;
                Ok((d, driver))
            })
            .collect()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let mut fleet = Fleet::start(
        build(flat)?,
        1024,
        config::DEFAULT_MAX_SERIES_PER_DEVICE,
        tx,
        std::sync::Arc::new(PollStats::default()),
        None,
        tracker.clone(),
        shutdown.clone(),
    );
    // 1% of the rows get another site label.
    let mut csv = String::from("name,address,label.site\n");
    for i in 0..devices {
        let site = if i % 100 == 7 {
            "moved".to_owned()
        } else {
            format!("s{}", i % 10)
        };
        writeln!(csv, "sw{i},{},{site}", address(i))?;
    }
    std::fs::write(dir.join("switches.csv"), csv)?;
    let t = Instant::now();
    let new = config::load(&dir.join("layered.toml"))?;
    let diff = fleet.apply(new.devices)?;
    let elapsed = t.elapsed().as_secs_f64();
    shutdown.cancel();
    tracker.close();
    drop(fleet);
    tracker.wait().await;
    drain.await?;
    write_sites(dir, devices)?;
    Ok((elapsed, diff))
}
