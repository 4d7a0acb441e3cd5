//! Scheduling against misbehaving devices, and `check` over every driver,
//! with the real binaries: one agent polling 500 sim devices beside a
//! device that never answers and one that answers after three intervals; a
//! failing device that backs off and recovers without a restart; and
//! `tributary-agent check` against one working device of each driver (real
//! peers) plus a broken one.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::net::TcpListener;
use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, assert_exactly_once, counters, kind_and_text, sim_agent_config,
    stored_points, wait_for_counters,
};
use tributary_tests::http_sim::HttpSim;
use tributary_tests::peers::{self, SHARED_BROKER, SNMP_COMMUNITY, mqtt_publish};
use tributary_tests::process::{TestDir, bin_path, eventually, free_addr};

/// (kind, value as text) of every reading of `device`/`metric`, in time order.
fn readings(db: &std::path::Path, device: &str, metric: &str) -> Result<Vec<(i64, String)>> {
    let mut points: Vec<_> = stored_points(db, "", device, metric)?
        .into_iter()
        .flat_map(|(_, p)| p)
        .collect();
    points.sort_by_key(|p| p.ts_ns);
    Ok(points.iter().map(|p| kind_and_text(&p.value)).collect())
}

/// A TCP device that accepts connections and never says a word.
async fn silent_device() -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_devices_keep_their_schedule_beside_a_dead_and_a_slow_one() -> Result<()> {
    let dir = TestDir::new("drivers-500")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let dead = silent_device().await?;
    // Answers after 1.5 s: three times its 500 ms interval.
    let slow = HttpSim::new()
        .delay(Duration::from_millis(1500))
        .bind("127.0.0.1:0".parse()?)
        .await?;
    let mut config = sim_agent_config("edge-500", &[collector.url()], 500, "500ms");
    config.push_str(&format!(
        r#"
[[devices]]
name = "dead"
driver = "http"
interval = "500ms"
timeout = "300ms"
url = "http://{dead}/meter"
metrics = [{{ name = "power", pointer = "/power" }}]

[[devices]]
name = "slow"
driver = "http"
interval = "500ms"
timeout = "2s"
url = "{slow_url}"
metrics = [{{ name = "power", pointer = "/power" }}]
"#,
        slow_url = slow.url("/meter")
    ));
    let mut agent = Agent::start(&dir, "edge-500", &config, "")?;
    wait_for_counters(&collector.db, "edge-500", 500, 10).await?;
    agent.stop().await?;

    // The 500: every counter value exactly once, no gap, no repeat.
    let stored = counters(&collector.db, "edge-500")?;
    let total = assert_exactly_once(&stored, 500)?;
    ensure!(total >= 5000, "{total} readings");
    let log = agent.log();
    let overruns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("overran") && l.contains("edge-500-counter-"))
        .collect();
    ensure!(overruns.is_empty(), "sim devices fell behind: {overruns:?}");

    // The dead one: timeouts, stored with their cause, and up = 0.
    let dead_power = readings(&collector.db, "dead", "power")?;
    ensure!(
        !dead_power.is_empty(),
        "the dead device's polls are recorded"
    );
    for (kind, value) in &dead_power {
        ensure!(
            *kind == 4 && value.starts_with("timeout after 300ms"),
            "dead: {kind} {value}"
        );
    }
    let dead_up = readings(&collector.db, "dead", "up")?;
    ensure!(
        dead_up.iter().all(|(k, v)| *k == 1 && v == "0"),
        "dead up: {dead_up:?}"
    );
    // It went down once, and the log says so once.
    let down = log
        .lines()
        .filter(|l| l.contains("device down") && l.contains("device=dead"))
        .count();
    ensure!(down == 1, "`device down` logged {down} times:\n{log}");
    // Backing off, it was polled fewer times than the sims.
    let sim_polls = stored.values().map(Vec::len).min().unwrap_or(0);
    ensure!(
        dead_power.len() < sim_polls,
        "dead polled {} times, sims {sim_polls}",
        dead_power.len()
    );

    // The slow one: its answers are stored, its late polls skipped ticks.
    let slow_power = readings(&collector.db, "slow", "power")?;
    ensure!(
        !slow_power.is_empty() && slow_power.iter().all(|(k, _)| *k == 0),
        "slow: {slow_power:?}"
    );
    ensure!(
        log.lines()
            .any(|l| l.contains("overran") && l.contains("device=slow")),
        "the slow device's skipped ticks are reported:\n{log}"
    );
    ensure!(
        slow_power.len() < sim_polls,
        "slow polled {} times, sims {sim_polls}",
        slow_power.len()
    );
    slow.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_device_backs_off_and_recovers_without_restart() -> Result<()> {
    let dir = TestDir::new("drivers-recover")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let addr = free_addr()?;
    let config = format!(
        r#"id = "edge-recover"
collectors = ["{}"]

[[devices]]
name = "meter"
driver = "http"
interval = "100ms"
timeout = "100ms"
backoff_max = "400ms"
url = "http://{addr}/meter"
metrics = [{{ name = "power", pointer = "/power" }}]
"#,
        collector.url()
    );
    let mut agent = Agent::start(&dir, "edge-recover", &config, "")?;
    // Down for a while: several failed polls.
    eventually(PATIENCE, "failed polls stored", || async {
        let up = readings(&collector.db, "meter", "up").ok()?;
        (up.len() >= 5).then_some(())
    })
    .await?;
    // The device comes up on its address; the agent finds it on its own.
    let sim = HttpSim::new().bind(addr).await?;
    eventually(PATIENCE, "the device back up", || async {
        let up = readings(&collector.db, "meter", "up").ok()?;
        (up.iter().filter(|(_, v)| v == "1").count() >= 3).then_some(())
    })
    .await?;
    agent.stop().await?;

    let up: Vec<String> = readings(&collector.db, "meter", "up")?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let first_up = up.iter().position(|v| v == "1").context("came back")?;
    ensure!(up[..first_up].iter().all(|v| v == "0"), "{up:?}");
    ensure!(up[first_up..].iter().all(|v| v == "1"), "stays up: {up:?}");
    let power = readings(&collector.db, "meter", "power")?;
    ensure!(
        power[..first_up]
            .iter()
            .all(|(k, v)| *k == 5 && v.contains("connection refused")
                || v.contains("Connection refused")),
        "failures name the cause: {power:?}"
    );
    let log = agent.log();
    let count = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains("device=meter"))
            .count()
    };
    ensure!(count("device down") == 1, "down logged once:\n{log}");
    ensure!(count("device up again") == 1, "up logged once:\n{log}");
    sim.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_covers_every_driver_and_names_the_broken_device() -> Result<()> {
    let dir = TestDir::new("drivers-check")?;
    let http = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let exporter = peers::node_exporter(&dir, None).await?;
    let modbus = peers::pymodbus(&dir).await?;
    let snmpd = peers::snmpd(&dir).await?;
    let topic = format!("tributary-check-{}/line-1/temp", std::process::id());
    mqtt_publish(SHARED_BROKER, &topic, "21.5", true).await?;
    let closed = free_addr()?;
    let prefix = topic.split('/').next().unwrap_or_default();
    let config = format!(
        r#"id = "edge-check"
collectors = ["http://127.0.0.1:1"]

[[devices]]
name = "counter"
driver = "sim"
interval = "1s"

[[devices]]
name = "meter"
driver = "http"
interval = "1s"
url = "{meter}"
metrics = [{{ name = "power_w", pointer = "/power", unit = "W" }}]

[[devices]]
name = "node"
driver = "prometheus"
interval = "10s"
timeout = "5s"
url = "http://{exporter}/metrics"

[[devices]]
name = "plc"
driver = "modbus"
interval = "1s"
timeout = "3s"
address = "{modbus}"
metrics = [{{ name = "temp_c", register = 20, type = "f32" }}, {{ name = "run", register = 0, kind = "coil" }}]

[[devices]]
name = "switch-3"
driver = "snmp"
interval = "5s"
timeout = "3s"
address = "{snmp}"
community = "{SNMP_COMMUNITY}"
metrics = [{{ name = "uptime", oid = "1.3.6.1.2.1.1.3.0" }}]
walks = [{{ name = "if_descr", oid = "1.3.6.1.2.1.2.2.1.2" }}]

[[devices]]
name = "plant"
driver = "mqtt"
interval = "1s"
timeout = "3s"
broker = "{SHARED_BROKER}"
topics = [{{ filter = "{prefix}/+/temp", metric = "temp" }}]

[[devices]]
name = "web"
driver = "tcp"
interval = "1s"
address = "{exporter}"

[[devices]]
name = "script"
driver = "exec"
interval = "1s"
command = "/bin/echo"
args = ['{{"queue": 3}}']
metrics = [{{ name = "queue", pointer = "/queue" }}]

[[devices]]
name = "broken-plc"
driver = "modbus"
interval = "1s"
address = "{closed}"
metrics = [{{ name = "temp_c", register = 20, type = "f32" }}]
"#,
        meter = http.url("/meter"),
        exporter = exporter.addr,
        modbus = modbus.addr,
        snmp = snmpd.addr,
    );
    let path = dir.join("check.toml");
    std::fs::write(&path, &config)?;
    let out = tokio::process::Command::new(bin_path("tributary-agent")?)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success(), "check must fail:\n{stdout}");
    let row = |device: &str, metric: &str| {
        stdout
            .lines()
            .find(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.first() == Some(&device) && cols.get(1).is_some_and(|m| m.starts_with(metric))
            })
            .map(str::to_owned)
    };
    for (device, metric, value) in [
        ("counter", "counter", "1"),
        ("meter", "power_w", "100.5 W"),
        ("node", "node_memory_MemTotal_bytes", ""),
        ("plc", "temp_c", "21.5"),
        ("plc", "run", "true"),
        ("switch-3", "uptime", ""),
        ("switch-3", "if_descr{index=", "\"lo\""),
        ("plant/line-1", "temp", "21.5"),
        ("web", "connect_seconds", ""),
        ("script", "queue", "3"),
    ] {
        let line = row(device, metric)
            .with_context(|| format!("no row for {device} {metric}:\n{stdout}"))?;
        ensure!(
            !line.contains("ERROR") && !line.contains("TIMEOUT"),
            "{line}"
        );
        ensure!(
            line.contains(value),
            "{device} {metric}: expected {value}: {line}"
        );
    }
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAILED")).collect();
    ensure!(
        failed == [format!("FAILED device broken-plc: connection refused to {closed}").as_str()],
        "{failed:?}\n{stdout}"
    );
    mqtt_publish(SHARED_BROKER, &topic, "", true).await?;
    http.stop().await?;
    Ok(())
}
