//! Secrets never appear in any output (issue 16), with the agent running:
//! `tributary-agent run` at debug level against a real collector, with
//! devices whose community and passwords come from `${VAR}` and `*_file`,
//! every one of them failing (so their errors are logged), a reload that
//! rotates a secret file, and a reload that is refused. Every line the
//! agent wrote, and the output of `config` and `check` on the same files,
//! is searched for each secret string.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use tributary_tests::cluster::{Collector, PATIENCE, agent_sections};
use tributary_tests::process::{Proc, TestDir, bin_path, eventually, free_addr};

const COMMUNITY: &str = "s3cret-community-a1b2";
const ROTATED: &str = "s3cret-rotated-c3d4";
const TOKEN: &str = "s3cret-token-e5f6";
const AUTH: &str = "s3cret-authpass-0718";
const BASIC: &str = "s3cret-basic-293a";
const MQTT: &str = "s3cret-mqtt-b4c5";

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

/// The site: SNMP v2c (community from a file, through a template),
/// SNMP v3 (`${VAR}` password), Prometheus with a bearer token file and
/// with basic auth from `${VAR}`, MQTT with a password file. The SNMP
/// agent never answers and the HTTP port refuses; `extra` goes at the end.
fn site(collector: &str, snmp: &str, closed: &str, community_file: &str, extra: &str) -> String {
    format!(
        r#"id = "secrets-run"
collectors = ["{collector}"]

[defaults]
timeout = "300ms"
interval = "500ms"

[defaults.snmp]
version = "2c"

[templates.switch]
driver = "snmp"
community_file = "{community_file}"
metrics = [{{ name = "uptime", oid = "1.3.6.1.2.1.1.3.0" }}]

[[devices]]
name = "switch"
template = "switch"
address = "{snmp}"

[[devices]]
name = "router"
driver = "snmp"
address = "{snmp}"
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
topics = [{{ filter = "tributary-secrets-run/#", metric = "t" }}]
{extra}"#
    )
}

const ENVS: [(&str, &str); 3] = [
    ("ROUTER_AUTH", AUTH),
    ("BASIC_PASSWORD", BASIC),
    ("RUST_LOG", "debug"),
];

/// `tributary-agent <command> --config FILE`: stdout and stderr together.
fn one_shot(command: &str, config: &Path) -> Result<String> {
    let out = Command::new(bin_path("tributary-agent")?)
        .arg(command)
        .arg("--config")
        .arg(config)
        .envs(ENVS)
        .output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_log_line_of_a_running_agent() -> Result<()> {
    let dir = TestDir::new("agent-secrets-run")?;
    let d = dir.path();
    let collector = Collector::start(&dir, free_addr()?).await?;
    write(d, "secrets/community", &format!("{COMMUNITY}\n"))?;
    write(d, "secrets/rotated", &format!("{ROTATED}\n"))?;
    write(d, "secrets/token", TOKEN)?;
    write(d, "secrets/mqtt", MQTT)?;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let snmp = silent.local_addr()?.to_string();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let sections = agent_sections(&d.join("spool"), "");
    let config = d.join("agent.toml");
    let url = collector.url();
    let write_site = |community_file: &str, extra: &str| {
        write(
            d,
            "agent.toml",
            &format!(
                "{}{sections}",
                site(&url, &snmp, &closed, community_file, extra)
            ),
        )
    };
    write_site("secrets/community", "")?;

    let log = d.join("agent.log");
    let mut builder = Proc::builder("tributary-agent")?
        .arg("run")
        .args(["--metrics-listen", "off"])
        .arg("--config")
        .arg(&config);
    for (k, v) in ENVS {
        builder = builder.env(k, v);
    }
    let mut agent = builder.log_to(&log).spawn()?;
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Every device has failed, and said so.
    eventually(PATIENCE, "every device's failure is logged", || async {
        let l = agent_log();
        ["switch", "router", "meter", "pdu"]
            .iter()
            .all(|d| {
                l.lines()
                    .any(|line| line.contains(&format!("device={d}")) && line.contains("down"))
            })
            .then_some(())
    })
    .await?;

    // A reload that rotates the community (every SNMP v2c device changes)...
    write_site("secrets/rotated", "")?;
    agent.signal("HUP").await?;
    eventually(PATIENCE, "the reload", || async {
        agent_log().contains("config reloaded").then_some(())
    })
    .await?;
    ensure!(agent_log().contains("changed=1"), "{}", agent_log());
    // ...and one that is refused (a bad value beside the secrets).
    write_site(
        "secrets/rotated",
        "\n[[devices]]\nname = \"bad\"\ndriver = \"sim\"\ninterval = \"5x\"\n",
    )?;
    agent.signal("HUP").await?;
    eventually(PATIENCE, "the refused reload", || async {
        agent_log().contains("config reload refused").then_some(())
    })
    .await?;
    // The switch fails again with the rotated community.
    let polls_after = agent_log().len();
    eventually(PATIENCE, "the switch polls again", || async {
        agent_log()[polls_after..].contains("switch").then_some(())
    })
    .await?;
    let status = agent.terminate(PATIENCE).await?;
    ensure!(status.success(), "agent exited {status}:\n{}", agent_log());

    write_site("secrets/rotated", "")?;
    let shown = one_shot("config", &config)?;
    ensure!(
        shown.matches("\"<redacted>\"").count() == 5,
        "every secret is shown redacted:\n{shown}"
    );
    let checked = one_shot("check", &config)?;
    ensure!(checked.contains("switch"), "{checked}");

    let outputs = [
        ("the agent's log", agent_log()),
        ("`config`", shown),
        ("`check`", checked),
        ("the collector's log", collector.log()),
    ];
    for (what, text) in &outputs {
        ensure!(text.lines().count() > 3, "{what} is nearly empty:\n{text}");
        for secret in [COMMUNITY, ROTATED, TOKEN, AUTH, BASIC, MQTT] {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                anyhow::bail!("{what} shows a secret: {line}");
            }
        }
    }
    Ok(())
}
