//! The agent's layered configuration (issue 16): includes, `[defaults]`,
//! templates, CSV inventories, `${VAR}` and `*_file` secrets.
//!
//! Ground truth: a site built from a 10,000-row CSV, two included files,
//! defaults and templates is, device by device, the same configuration as
//! the one written out in full by hand (here: by this test, without the
//! assembler). Each kind of mistake gives an error naming the file and line
//! (or CSV row and column) it was made at; the secrets of the site never
//! appear in the output of `tributary-agent config` or `check`, nor in any
//! of their log lines.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use tributary_agent::config::{self, AgentConfig};
use tributary_tests::process::{TestDir, bin_path};

const COMMUNITY: &str = "s3cret-community-7f1e";
const TOKEN: &str = "s3cret-token-92ab";
const ROUTER_PASSWORD: &str = "s3cret-authpass-55d0";
const ROWS: usize = 10_000;

fn env(name: &str) -> Option<String> {
    match name {
        "ROUTER_HOST" => Some("10.9.0.1".to_owned()),
        "ROUTER_AUTH" => Some(ROUTER_PASSWORD.to_owned()),
        _ => None,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

/// Row `i` of the inventory: (name, address, site, interval or "", community or "").
fn row(i: usize) -> (String, String, String, &'static str, &'static str) {
    let name = format!("sw{i:05}");
    let address = format!("10.{}.{}.{}:161", i / 65536, (i / 256) % 256, i % 256);
    let site = format!("site-{}", i % 7);
    let interval = if i % 10 == 0 { "1m" } else { "" };
    let community = if i % 1000 == 3 { "row-community" } else { "" };
    (name, address, site, interval, community)
}

const SWITCH_METRICS: &str = "[\n  { name = \"uptime\", oid = \"1.3.6.1.2.1.1.3.0\", unit = \"cs\" },\n  { name = \"sys_name\", oid = \"1.3.6.1.2.1.1.5.0\" },\n]";

/// The layered site: main file, two includes, defaults, templates, a CSV.
fn layered_site(dir: &Path) -> Result<()> {
    write(dir, "secrets/community", &format!("{COMMUNITY}\n"))?;
    write(dir, "conf.d/secrets/token", TOKEN)?;
    write(
        dir,
        "agent.toml",
        &format!(
            r#"id = "site-a"
collectors = ["http://127.0.0.1:7400"]
include = ["conf.d/*.toml"]

[spool]
dir = "spool"

[defaults]
interval = "30s"
timeout = "5s"

[defaults.snmp]
version = "2c"
community_file = "secrets/community"
retries = 2

[templates.edge-switch]
driver = "snmp"
metrics = {SWITCH_METRICS}

[[inventories]]
file = "switches.csv"
template = "edge-switch"

[[devices]]
name = "core-router"
driver = "snmp"
address = "${{ROUTER_HOST}}:161"
community = "${{ROUTER_COMMUNITY:-pub}}$$lic"
metrics = [{{ name = "uptime", oid = "1.3.6.1.2.1.1.3.0" }}]
"#
        ),
    )?;
    let mut csv = String::from("name,address,label.site,interval,community\n");
    for i in 0..ROWS {
        let (name, address, site, interval, community) = row(i);
        writeln!(csv, "{name},{address},{site},{interval},{community}")?;
    }
    write(dir, "switches.csv", &csv)?;
    write(
        dir,
        "conf.d/10-sims.toml",
        r#"[[devices]]
name = "sim-1"
driver = "sim"
series = 3
labels = { rack = "r1" }

[[devices]]
name = "sim-2"
driver = "sim"
interval = "1s"
"#,
    )?;
    write(
        dir,
        "conf.d/20-http.toml",
        r#"[templates.meter]
driver = "http"
format = "prometheus"
bearer_token_file = "secrets/token"
interval = "15s"

[[devices]]
name = "meter-1"
template = "meter"
url = "http://127.0.0.1:1/metrics"

[[devices]]
name = "meter-2"
template = "meter"
url = "http://127.0.0.1:2/metrics"
timeout = "3s"
"#,
    )?;
    Ok(())
}

/// The same site written out in full, one device after another.
fn full_site() -> Result<String> {
    let mut t = String::from(
        "id = \"site-a\"\ncollectors = [\"http://127.0.0.1:7400\"]\n\n[spool]\ndir = \"spool\"\n\n",
    );
    t.push_str(&format!(
        "[[devices]]\nname = \"core-router\"\ndriver = \"snmp\"\ninterval = \"30s\"\ntimeout = \"5s\"\n\
         address = \"10.9.0.1:161\"\nversion = \"2c\"\ncommunity = \"pub$lic\"\nretries = 2\n\
         metrics = [{{ name = \"uptime\", oid = \"1.3.6.1.2.1.1.3.0\" }}]\n\n"
    ));
    for i in 0..ROWS {
        let (name, address, site, interval, community) = row(i);
        let interval = if interval.is_empty() { "30s" } else { interval };
        let community = if community.is_empty() {
            COMMUNITY
        } else {
            community
        };
        writeln!(
            t,
            "[[devices]]\nname = \"{name}\"\ndriver = \"snmp\"\naddress = \"{address}\"\n\
             interval = \"{interval}\"\ntimeout = \"5s\"\nversion = \"2c\"\ncommunity = \"{community}\"\n\
             retries = 2\nmetrics = {SWITCH_METRICS}\nlabels = {{ site = \"{site}\" }}\n"
        )?;
    }
    t.push_str(
        "[[devices]]\nname = \"sim-1\"\ndriver = \"sim\"\ninterval = \"30s\"\ntimeout = \"5s\"\nseries = 3\n\
         labels = { rack = \"r1\" }\n\n\
         [[devices]]\nname = \"sim-2\"\ndriver = \"sim\"\ninterval = \"1s\"\ntimeout = \"5s\"\n\n",
    );
    for (name, port, timeout) in [("meter-1", 1, "5s"), ("meter-2", 2, "3s")] {
        writeln!(
            t,
            "[[devices]]\nname = \"{name}\"\ndriver = \"http\"\nformat = \"prometheus\"\n\
             url = \"http://127.0.0.1:{port}/metrics\"\nbearer_token = \"{TOKEN}\"\n\
             interval = \"15s\"\ntimeout = \"{timeout}\"\n"
        )?;
    }
    Ok(t)
}

#[test]
fn a_layered_site_equals_the_site_written_out_in_full() -> Result<()> {
    let dir = TestDir::new("agent-config-layers")?;
    layered_site(dir.path())?;
    let layered = config::parse_with(
        &std::fs::read_to_string(dir.path().join("agent.toml"))?,
        &dir.path().join("agent.toml"),
        &env,
    )?;
    let full_path = dir.path().join("full.toml");
    let full_text = full_site()?;
    std::fs::write(&full_path, &full_text)?;
    let full: AgentConfig = config::parse_with(&full_text, &full_path, &env)?;
    ensure!(
        layered.devices.len() == ROWS + 5,
        "{} devices",
        layered.devices.len()
    );
    ensure!(layered.devices.len() == full.devices.len());
    for (l, f) in layered.devices.iter().zip(&full.devices) {
        ensure!(l == f, "device differs:\nlayered {l:#?}\nfull    {f:#?}");
    }
    // The spool directory is relative to each file's directory: the same here.
    ensure!(layered == full, "the top level differs");
    Ok(())
}
