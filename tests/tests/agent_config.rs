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
    let interval = if i.is_multiple_of(10) { "1m" } else { "" };
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
    t.push_str(
        "[[devices]]\nname = \"core-router\"\ndriver = \"snmp\"\ninterval = \"30s\"\ntimeout = \"5s\"\n\
         address = \"10.9.0.1:161\"\nversion = \"2c\"\ncommunity = \"pub$lic\"\nretries = 2\n\
         metrics = [{ name = \"uptime\", oid = \"1.3.6.1.2.1.1.3.0\" }]\n\n",
    );
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

/// Writes `files` under a fresh directory and loads its `agent.toml`; the
/// error, with the directory's path shortened to `DIR`.
fn load_err(name: &str, files: &[(&str, &str)]) -> Result<String> {
    let dir = TestDir::new(name)?;
    for (file, text) in files {
        write(dir.path(), file, text)?;
    }
    let main = dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&main)?;
    let e = match config::parse_with(&text, &main, &env) {
        Ok(_) => anyhow::bail!("{name}: the config was accepted"),
        Err(e) => e.to_string(),
    };
    Ok(e.replace(&dir.path().display().to_string(), "DIR"))
}

const HEAD: &str = "id = \"a\"\ncollectors = [\"http://127.0.0.1:7400\"]\n";

#[test]
fn each_mistake_is_named_where_it_was_made() -> Result<()> {
    let snmp = "driver = \"snmp\"\naddress = \"10.0.0.1:161\"\nmetrics = [{ name = \"up\", oid = \"1.3.6.1.2.1.1.3.0\" }]\n";
    // (name, files, the error's start)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "unset-var",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[[devices]]\nname = \"s\"\ndriver = \"sim\"\ninterval = \"${{POLL_EVERY}}\"\n"
                ),
            )],
            "DIR/agent.toml:7: devices[0].interval: environment variable POLL_EVERY is not set (use ${POLL_EVERY:-default} for a default)",
        ),
        (
            "unset-var-in-include",
            vec![
                (
                    "agent.toml",
                    format!("{HEAD}include = [\"conf.d/*.toml\"]\n"),
                ),
                (
                    "conf.d/a.toml",
                    format!(
                        "[[devices]]\nname = \"r\"\n{snmp}community = \"${{SNMP_COMMUNITY}}\"\n"
                    ),
                ),
            ],
            // The value is the reference alone: the variable is named.
            "DIR/conf.d/a.toml:6: devices[0].community: environment variable SNMP_COMMUNITY is not set (use ${SNMP_COMMUNITY:-default} for a default)",
        ),
        (
            "missing-secret-file",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[[devices]]\nname = \"r\"\n{snmp}community_file = \"nope/community\"\n"
                ),
            )],
            "DIR/agent.toml:9: devices[0].community_file: cannot read secret file DIR/nope/community: No such file or directory (os error 2)",
        ),
        (
            "secret-twice",
            vec![
                ("c", "x\n".to_owned()),
                (
                    "agent.toml",
                    format!(
                        "{HEAD}\n[[devices]]\nname = \"r\"\n{snmp}community = \"a\"\ncommunity_file = \"c\"\n"
                    ),
                ),
            ],
            "DIR/agent.toml:10: devices[0].community_file: `community` is set twice: use either `community` or `community_file`",
        ),
        (
            "bad-csv-row",
            vec![
                (
                    "agent.toml",
                    format!(
                        "{HEAD}\n[templates.sw]\n{snmp}\n[[inventories]]\nfile = \"sw.csv\"\ntemplate = \"sw\"\n"
                    ),
                ),
                (
                    "sw.csv",
                    "name,address\nsw1,10.0.0.1:161\nsw2,10.0.0.2:161,extra\n".to_owned(),
                ),
            ],
            "DIR/sw.csv:3: row has 3 fields, the header has 2 (name,address)",
        ),
        (
            "csv-secret-twice",
            vec![
                (
                    "agent.toml",
                    format!(
                        "{HEAD}\n[templates.sw]\n{snmp}\n[[inventories]]\nfile = \"sw.csv\"\ntemplate = \"sw\"\n"
                    ),
                ),
                (
                    "sw.csv",
                    "name,address,community,community_file\nsw1,10.0.0.1:161,a,c\n".to_owned(),
                ),
            ],
            "DIR/sw.csv:1: community_file: columns `community` and `community_file` both set `community`: use either `community` or `community_file`",
        ),
        (
            "bad-csv-value",
            vec![
                (
                    "agent.toml",
                    format!(
                        "{HEAD}\n[templates.sw]\ninterval = \"1m\"\n{snmp}\n[[inventories]]\nfile = \"sw.csv\"\ntemplate = \"sw\"\n"
                    ),
                ),
                ("sw.csv", "name,interval\nsw1,30s\nsw2,5x\n".to_owned()),
            ],
            "DIR/sw.csv:3: devices[1].interval: invalid duration \"5x\"",
        ),
        (
            "unknown-csv-column",
            vec![
                (
                    "agent.toml",
                    format!(
                        "{HEAD}\n[templates.sw]\ninterval = \"1m\"\n{snmp}\n[[inventories]]\nfile = \"sw.csv\"\ntemplate = \"sw\"\n"
                    ),
                ),
                ("sw.csv", "name,comunity\nsw1,public\n".to_owned()),
            ],
            "DIR/sw.csv:2: devices[0]: unknown key `comunity` for driver snmp",
        ),
        (
            "duplicate-across-files",
            vec![
                (
                    "agent.toml",
                    format!(
                        "{HEAD}include = [\"conf.d/*.toml\"]\n\n[[devices]]\nname = \"pump\"\ndriver = \"sim\"\ninterval = \"1s\"\n"
                    ),
                ),
                (
                    "conf.d/b.toml",
                    "\n[[devices]]\nname = \"pump\"\ndriver = \"sim\"\ninterval = \"1s\"\n"
                        .to_owned(),
                ),
            ],
            "DIR/conf.d/b.toml:3: devices[1].name: duplicate device name \"pump\" (first defined at DIR/agent.toml:6)",
        ),
        (
            "duplicate-in-csv",
            vec![
                (
                    "agent.toml",
                    format!(
                        "{HEAD}\n[[devices]]\nname = \"sw2\"\ndriver = \"sim\"\ninterval = \"1s\"\n\n[templates.sw]\ninterval = \"1m\"\n{snmp}\n[[inventories]]\nfile = \"sw.csv\"\ntemplate = \"sw\"\n"
                    ),
                ),
                ("sw.csv", "name\nsw1\nsw2\n".to_owned()),
            ],
            "DIR/sw.csv:3: devices[2].name: duplicate device name \"sw2\" (first defined at DIR/agent.toml:5)",
        ),
        (
            "error-in-template",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[templates.t]\ndriver = \"sim\"\ninterval = \"5x\"\n\n[[devices]]\nname = \"s\"\ntemplate = \"t\"\n"
                ),
            )],
            "DIR/agent.toml:6: devices[0].interval: invalid duration \"5x\"",
        ),
        (
            "error-in-defaults",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[defaults]\ninterval = \"0s\"\n\n[[devices]]\nname = \"s\"\ndriver = \"sim\"\n"
                ),
            )],
            "DIR/agent.toml:5: devices[0].interval: interval must be greater than 0",
        ),
        (
            "unknown-template",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[templates.t]\ndriver = \"sim\"\n\n[[devices]]\nname = \"s\"\ntemplate = \"x\"\n"
                ),
            )],
            "DIR/agent.toml:9: devices[0].template: unknown template \"x\" (expected one of t)",
        ),
        (
            "template-chain",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[templates.a]\ndriver = \"sim\"\n[templates.b]\ntemplate = \"a\"\n"
                ),
            )],
            "DIR/agent.toml:7: templates.b.template: a template may not name another template",
        ),
        (
            "nested-include",
            vec![
                (
                    "agent.toml",
                    format!("{HEAD}include = [\"conf.d/*.toml\"]\n"),
                ),
                ("conf.d/a.toml", "include = [\"more/*.toml\"]\n".to_owned()),
            ],
            "DIR/conf.d/a.toml:1: include: includes do not nest: only the main config file may include files",
        ),
        (
            "unknown-default",
            vec![(
                "agent.toml",
                format!("{HEAD}\n[defaults]\ncommunity = \"x\"\n"),
            )],
            "DIR/agent.toml:5: defaults.community: unknown key `community` in [defaults]",
        ),
        (
            "secret-with-dollar-brace",
            vec![(
                "agent.toml",
                format!("{HEAD}\n[[devices]]\nname = \"r\"\n{snmp}community = \"pa${{ss}}wd\"\n"),
            )],
            "DIR/agent.toml:9: devices[0].community: a ${...} in this secret's value is not a set environment variable (the value is not shown; write $$ for a literal $)",
        ),
        (
            "secret-with-dollar-brace-in-csv",
            vec![
                (
                    "agent.toml",
                    format!(
                        "{HEAD}\n[templates.sw]\n{snmp}\n[[inventories]]\nfile = \"sw.csv\"\ntemplate = \"sw\"\n"
                    ),
                ),
                (
                    "sw.csv",
                    "name,address,community\nsw1,10.0.0.1:161,pa${ss}wd\n".to_owned(),
                ),
            ],
            "DIR/sw.csv:2: column community: a ${...} in this secret's value is not a set environment variable (the value is not shown; write $$ for a literal $)",
        ),
        (
            "endless-secret-file",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[[devices]]\nname = \"r\"\n{snmp}community_file = \"/dev/zero\"\n"
                ),
            )],
            "DIR/agent.toml:9: devices[0].community_file: cannot read secret file /dev/zero: larger than 65536 bytes",
        ),
        (
            "endless-inventory",
            vec![(
                "agent.toml",
                format!(
                    "{HEAD}\n[templates.sw]\n{snmp}\n[[inventories]]\nfile = \"/dev/zero\"\ntemplate = \"sw\"\n"
                ),
            )],
            "DIR/agent.toml:10: inventories[0].file: cannot read inventory /dev/zero: larger than 268435456 bytes",
        ),
        (
            "endless-include",
            vec![("agent.toml", format!("{HEAD}include = [\"/dev/zero\"]\n"))],
            "/dev/zero: cannot read config file: larger than 16777216 bytes",
        ),
    ];
    let mut failed = Vec::new();
    for (name, files, expected) in &cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(f, t)| (*f, t.as_str())).collect();
        let e = load_err(name, &files)?;
        if !e.starts_with(expected) {
            failed.push(format!("{name}:\n  got      {e}\n  expected {expected}"));
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

/// Runs `tributary-agent <args>` with debug logs and `envs`; stdout and
/// stderr together, and whether it succeeded.
fn agent(args: &[&str], config: &Path, envs: &[(&str, &str)]) -> Result<(String, bool)> {
    let out = std::process::Command::new(bin_path("tributary-agent")?)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "debug")
        .envs(envs.iter().copied())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((text, out.status.success()))
}

#[test]
fn secrets_never_appear_in_config_or_check_output() -> Result<()> {
    let dir = TestDir::new("agent-config-secrets")?;
    let d = dir.path();
    let mqtt_password = "s3cret-mqtt-41c2";
    let basic_password = "s3cret-basic-8d77";
    write(d, "secrets/community", &format!("{COMMUNITY}\n"))?;
    write(d, "secrets/token", TOKEN)?;
    write(d, "secrets/mqtt", mqtt_password)?;
    // An SNMP agent that never answers, an HTTP port that refuses.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let snmp_addr = silent.local_addr()?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    write(
        d,
        "agent.toml",
        &format!(
            r#"id = "secrets"
collectors = ["http://127.0.0.1:7400"]

[defaults]
timeout = "300ms"
interval = "10s"

[templates.switch]
driver = "snmp"
version = "2c"
community_file = "secrets/community"
metrics = [{{ name = "uptime", oid = "1.3.6.1.2.1.1.3.0" }}]

[[devices]]
name = "switch"
template = "switch"
address = "{snmp_addr}"

[[devices]]
name = "router"
driver = "snmp"
address = "{snmp_addr}"
version = "3"
user = "monitor"
auth_protocol = "sha256"
auth_password = "${{ROUTER_AUTH}}"
metrics = [{{ name = "uptime", oid = "1.3.6.1.2.1.1.3.0" }}]

[[devices]]
name = "meter"
driver = "prometheus"
url = "http://{closed}/metrics"
bearer_token_file = "secrets/token"

[[devices]]
name = "pdu"
driver = "prometheus"
url = "http://{closed}/metrics"
username = "admin"
password = "${{BASIC_PASSWORD}}"

[[devices]]
name = "sensors"
driver = "mqtt"
broker = "127.0.0.1:1883"
username = "agent"
password_file = "secrets/mqtt"
topics = [{{ filter = "tributary-secrets-test/#", metric = "t" }}]
"#
        ),
    )?;
    let envs = [
        ("ROUTER_AUTH", ROUTER_PASSWORD),
        ("BASIC_PASSWORD", basic_password),
    ];
    let secrets = [
        COMMUNITY,
        TOKEN,
        ROUTER_PASSWORD,
        mqtt_password,
        basic_password,
    ];
    let config = d.join("agent.toml");

    let (shown, ok) = agent(&["config"], &config, &envs)?;
    ensure!(ok, "config must succeed:\n{shown}");
    ensure!(
        shown.matches("\"<redacted>\"").count() == secrets.len(),
        "every secret is shown redacted:\n{shown}"
    );
    ensure!(
        shown.contains("# ") && shown.contains("valid, 5 device(s)"),
        "{shown}"
    );

    let (checked, ok) = agent(&["check"], &config, &envs)?;
    ensure!(!ok, "check must fail (no device answers):\n{checked}");
    ensure!(
        checked.contains("switch") && checked.contains("meter"),
        "{checked}"
    );

    // A refused secret is named by its key, never by its value.
    let (refused, ok) = agent(
        &["config"],
        &config,
        &[("ROUTER_AUTH", "sh0rt"), ("BASIC_PASSWORD", basic_password)],
    )?;
    ensure!(!ok && refused.contains("auth_password"), "{refused}");
    ensure!(
        !refused.contains("sh0rt"),
        "the refused secret is not echoed: {refused}"
    );

    for secret in secrets {
        ensure!(!shown.contains(secret), "`config` shows a secret:\n{shown}");
        ensure!(
            !checked.contains(secret),
            "`check` shows a secret:\n{checked}"
        );
    }
    Ok(())
}

/// `include = ["*.toml"]` beside a main file named without a directory
/// lists the current one, skips the main file itself, and reads a file two
/// patterns match once.
#[test]
fn a_wildcard_include_beside_the_main_file_skips_it() -> Result<()> {
    let dir = TestDir::new("agent-config-include-here")?;
    write(
        dir.path(),
        "agent.toml",
        &format!("{HEAD}include = [\"*.toml\", \"a.toml\"]\n"),
    )?;
    write(
        dir.path(),
        "a.toml",
        "[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"1s\"\n",
    )?;
    write(
        dir.path(),
        "b.toml",
        "[[devices]]\nname = \"b\"\ndriver = \"sim\"\ninterval = \"1s\"\n",
    )?;
    let out = std::process::Command::new(bin_path("tributary-agent")?)
        .args(["config", "--config", "agent.toml"])
        .current_dir(dir.path())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "{text}");
    for name in ["a", "b"] {
        ensure!(
            text.matches(&format!("name = \"{name}\"")).count() == 1,
            "device {name} once:\n{text}"
        );
    }
    Ok(())
}

/// The block of kind `lang` (```lang) that follows `after` in `text`.
fn block_after<'a>(text: &'a str, after: &str, lang: &str) -> Result<&'a str> {
    let start = text.find(after).with_context(|| format!("no {after:?}"))?;
    let fence = format!("```{lang}\n");
    let body = &text[start..];
    let open = body
        .find(&fence)
        .with_context(|| format!("no ```{lang} block after {after:?}"))?
        + fence.len();
    let len = body[open..].find("```").context("unclosed block")?;
    Ok(&body[open..open + len])
}

/// README's worked example, as written there: its `agent.toml`, its
/// secret file and its CSV grown to 1,000 rows (the three shown, then
/// more like them) is a valid config of 1,000 switches with the values
/// the README says; the row its `echo` appends adds one device and leaves
/// the 1,000 others equal (a reload's added=1 unchanged=1000).
#[test]
fn the_readme_worked_example_is_true() -> Result<()> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let section = "### Worked example: 1,000 switches from one CSV";
    let toml = block_after(&readme, section, "toml")?;
    let csv = block_after(&readme, section, "csv")?;
    ensure!(
        toml.contains("community_file = \"secrets/community\""),
        "{toml}"
    );
    let dir = TestDir::new("agent-config-readme")?;
    let d = dir.path();
    write(d, "agent.toml", toml)?;
    write(d, "secrets/community", "n0t-public\n")?;
    std::fs::create_dir_all(d.join("conf.d"))?;
    let mut rows = csv.to_owned();
    for i in 4..=1000 {
        writeln!(
            rows,
            "sw-{i:04},10.20.{}.{}:161,paris,r{},,",
            i / 256,
            i % 256,
            i % 9 + 1
        )?;
    }
    write(d, "switches.csv", &rows)?;
    let lookup = |_: &str| None;
    let load = || -> Result<AgentConfig> {
        let text = std::fs::read_to_string(d.join("agent.toml"))?;
        Ok(config::parse_with(&text, &d.join("agent.toml"), &lookup)?)
    };
    let before = load()?;
    ensure!(
        before.devices.len() == 1000,
        "{} devices",
        before.devices.len()
    );
    let sw3 = &before.devices[2];
    ensure!(
        sw3.name == "sw-0003" && sw3.interval == std::time::Duration::from_secs(60),
        "{sw3:?}"
    );
    ensure!(
        sw3.labels.get("rack").map(String::as_str) == Some("r2")
            && sw3.labels.get("site").map(String::as_str) == Some("paris"),
        "{:?}",
        sw3.labels
    );
    ensure!(
        before.devices[0].interval == std::time::Duration::from_secs(30),
        "the default interval"
    );

    // The row the README's `echo` appends.
    let echo = readme
        .lines()
        .find(|l| l.starts_with("echo '") && l.ends_with(">> /etc/tributary/switches.csv"))
        .context("no echo >> switches.csv")?;
    let row = echo
        .trim_start_matches("echo '")
        .split('\'')
        .next()
        .context("the echoed row")?;
    rows.push_str(row);
    rows.push('\n');
    write(d, "switches.csv", &rows)?;
    let after = load()?;
    ensure!(
        after.devices.len() == 1001,
        "{} devices",
        after.devices.len()
    );
    ensure!(
        after.devices[..1000] == before.devices[..],
        "the others changed"
    );
    ensure!(
        after.devices[1000].name == "sw-1001",
        "{:?}",
        after.devices[1000].name
    );
    ensure!(
        readme.contains("added=1 removed=0 changed=0 unchanged=1000"),
        "the README states the reload's counts"
    );
    Ok(())
}
