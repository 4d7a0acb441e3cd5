//! End to end with the real binaries: collector and agents as processes on
//! loopback, device simulators in process, ground truth compared with what
//! the collector stored (read straight from its SQLite file and through the
//! CLI and grpcurl).
//!
//! The binaries must be built first (`cargo xtask test` does it).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use tributary_collector::model::{Point, StoredValue};
use tributary_tests::cluster::{self, Agent, Collector, PATIENCE, assert_exactly_once};
use tributary_tests::http_sim::{HttpSim, MeterValues};
use tributary_tests::modbus_sim::ModbusSim;
use tributary_tests::process::{Proc, TestDir, eventually, free_addr, run_bin, run_grpcurl};

/// Counter values stored per device of `agent`, in device-time order.
fn counters(db: &Path, agent: &str) -> Result<BTreeMap<String, Vec<i64>>> {
    Ok(cluster::counters(db, agent)?
        .into_iter()
        .map(|(d, r)| (d, cluster::values(&r)))
        .collect())
}

fn sim_agent_config(id: &str, collector: &str, devices: usize, interval: &str) -> String {
    cluster::sim_agent_config(id, &[collector.to_string()], devices, interval)
}

fn start_agent(dir: &TestDir, id: &str, config: &str) -> Result<Proc> {
    Ok(Agent::start(dir, id, config, "")?.proc)
}

async fn wait_for_counters(db: &Path, agent: &str, devices: usize, n: usize) -> Result<()> {
    cluster::wait_for_counters(db, agent, devices, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_store_every_counter_value_exactly_once() -> Result<()> {
    let dir = TestDir::new("e2e-three-agents")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let mut agents = Vec::new();
    for a in 0..3 {
        let id = format!("edge-{a}");
        let config = sim_agent_config(&id, &collector.url(), 20, "20ms");
        agents.push((id.clone(), start_agent(&dir, &id, &config)?));
    }
    for (id, _) in &agents {
        wait_for_counters(&collector.db, id, 20, 50).await?;
    }
    // SIGTERM: the agent finishes polls in flight and waits for their acks.
    for (id, proc) in &mut agents {
        let status = proc.terminate(PATIENCE).await?;
        ensure!(
            status.success(),
            "{id} exited with {status}: {}",
            proc.log()
        );
    }
    for (id, _) in &agents {
        let total = assert_exactly_once(&cluster::counters(&collector.db, id)?, 20)?;
        ensure!(total >= 20 * 50, "{id}: only {total} readings");
    }

    // The CLI reports the same, as CSV in time order.
    let csv = run_bin(
        "tributary-collector",
        [
            "query",
            "--server",
            &collector.url(),
            "--device",
            "edge-1-counter-3",
            "--metric",
            "counter",
            "--format",
            "csv",
        ],
    )
    .await?;
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("agent,device,metric,ts_ns,value,status"));
    let stored = counters(&collector.db, "edge-1")?;
    let expected = &stored["edge-1-counter-3"];
    let mut n = 0;
    for (i, line) in lines.enumerate() {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols.len(), 6, "{line}");
        assert_eq!(&cols[..3], ["edge-1", "edge-1-counter-3", "counter"]);
        assert_eq!(cols[4], expected[i].to_string());
        assert_eq!(cols[5], "ok");
        n += 1;
    }
    assert_eq!(n, expected.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_modbus_values_arrive_as_served() -> Result<()> {
    let dir = TestDir::new("e2e-devices")?;
    let http = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let modbus = ModbusSim::new().bind("127.0.0.1:0".parse()?).await?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let config = format!(
        r#"id = "edge-dev"
collectors = ["{url}"]

[[devices]]
name = "meter"
driver = "http"
url = "{meter}"
format = "json"
interval = "50ms"
metrics = [
  {{ name = "power_w", pointer = "/power", unit = "W" }},
  {{ name = "count", pointer = "/count" }},
  {{ name = "ok", pointer = "/ok" }},
  {{ name = "name", pointer = "/name" }},
  {{ name = "missing", pointer = "/nope" }},
]

[[devices]]
name = "node"
driver = "http"
url = "{metrics}"
format = "prometheus"
interval = "50ms"

[[devices]]
name = "broken"
driver = "http"
url = "{error}"
format = "json"
interval = "50ms"
metrics = [{{ name = "x", pointer = "/x" }}]

[[devices]]
name = "plc"
driver = "modbus"
address = "{modbus}"
interval = "50ms"
metrics = [
  {{ name = "temp_c", register = 100, kind = "holding", type = "f32" }},
  {{ name = "temp_low_first", register = 102, kind = "holding", type = "f32", word_order = "little" }},
  {{ name = "u16", register = 110, kind = "holding", type = "u16" }},
  {{ name = "u32", register = 120, kind = "holding", type = "u32" }},
  {{ name = "i32", register = 122, kind = "holding", type = "i32" }},
  {{ name = "i16", register = 200, kind = "input", type = "i16" }},
  {{ name = "scaled", register = 201, kind = "input", type = "u16", scale = 0.1 }},
]
"#,
        url = collector.url(),
        meter = http.url("/meter"),
        metrics = http.url("/metrics"),
        error = http.url("/error"),
        modbus = modbus.addr,
    );
    let mut agent = start_agent(&dir, "edge-dev", &config)?;
    let db = collector.db.clone();
    eventually(PATIENCE, "20 meter polls stored", || async {
        let n = cluster::stored_points(&db, "", "meter", "count")
            .ok()?
            .iter()
            .flat_map(|(_, p)| p)
            .filter(|p| matches!(p.value, StoredValue::I64(_)))
            .count();
        (n >= 20).then_some(())
    })
    .await?;
    let status = agent.terminate(PATIENCE).await?;
    ensure!(
        status.success(),
        "agent exited with {status}: {}",
        agent.log()
    );

    let conn = rusqlite::Connection::open(&collector.db)?;
    let points = |device: &str, metric: &str| -> Result<Vec<Point>> {
        Ok(cluster::stored_points(&collector.db, "", device, metric)?
            .into_iter()
            .flat_map(|(_, p)| p)
            .collect())
    };
    // Each meter poll: power and count come from the same response, so
    // power must be exactly what the simulator served for that count.
    let power = points("meter", "power_w")?;
    let mut rows: Vec<(i64, f64, i64)> = Vec::new();
    for c in points("meter", "count")? {
        let StoredValue::I64(count) = c.value else {
            continue;
        };
        for p in power.iter().filter(|p| p.ts_ns == c.ts_ns) {
            let value = match p.value {
                StoredValue::F64(v) => v,
                StoredValue::I64(v) => v as f64,
                ref other => anyhow::bail!("power at {} is not a number: {other:?}", p.ts_ns),
            };
            rows.push((count, value, p.value.kind_code()));
        }
    }
    ensure!(rows.len() >= 20, "only {} meter polls", rows.len());
    for (count, power, kind) in &rows {
        assert_eq!(*kind, 0, "power is a double");
        assert_eq!(
            *power,
            MeterValues::nth(*count as u64).power,
            "count {count}"
        );
    }
    let unit: String = conn.query_row(
        "SELECT unit FROM series WHERE device = 'meter' AND metric = 'power_w'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(unit, "W");
    // Typed values and a per-metric failure (one reading per metric).
    let mut kinds: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for device in ["meter", "broken"] {
        for (series, points) in cluster::stored_points(&collector.db, "", device, "")? {
            if let Some(p) = points.last() {
                kinds.insert(series.key.metric, cluster::kind_and_text(&p.value));
            }
        }
    }
    assert_eq!(kinds["ok"], (2, "1".to_string()), "bool");
    assert_eq!(kinds["name"].0, 3, "string");
    assert_eq!(kinds["missing"].0, 5, "a missing pointer fails that metric");
    assert!(
        kinds["missing"].1.contains("/nope"),
        "{:?}",
        kinds["missing"]
    );
    assert_eq!(kinds["x"].0, 5, "HTTP 500 is an error reading");
    assert!(kinds["x"].1.contains("500"), "{:?}", kinds["x"]);

    // Prometheus: every sample of a scrape, labels kept.
    let labelled: i64 = conn.query_row(
        "SELECT count(DISTINCT s.id) FROM series s WHERE s.device = 'node' AND s.labels != '{}'",
        [],
        |r| r.get(0),
    )?;
    ensure!(
        labelled >= 2,
        "prometheus labels kept: {labelled} labelled series"
    );

    // Modbus: every register decodes to the value the simulator holds.
    let expect = [
        ("temp_c", 21.5),
        ("temp_low_first", 21.5),
        ("u16", 1234.0),
        ("u32", 305419896.0),
        ("i32", -100000.0),
        ("i16", -5.0),
        ("scaled", 21.5),
    ];
    for (metric, value) in expect {
        // A failure (text) is not a number, as CAST(... AS REAL) made it 0.
        let values: Vec<f64> = points("plc", metric)?
            .iter()
            .map(|p| match p.value {
                StoredValue::F64(v) => v,
                StoredValue::I64(v) => v as f64,
                StoredValue::Bool(v) => f64::from(u8::from(v)),
                _ => f64::NAN,
            })
            .collect();
        ensure!(!values.is_empty(), "{metric}: nothing stored");
        for v in values {
            ensure!(
                (v - value).abs() < 1e-9,
                "{metric}: stored {v}, served {value}"
            );
        }
    }
    http.stop().await?;
    modbus.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_crash_loses_nothing_that_was_acked() -> Result<()> {
    let dir = TestDir::new("e2e-collector-crash")?;
    let addr = free_addr()?;
    let mut collector = Collector::start(&dir, addr).await?;
    let config = sim_agent_config("edge-crash", &collector.url(), 10, "20ms");
    let mut agent = start_agent(&dir, "edge-crash", &config)?;
    wait_for_counters(&collector.db, "edge-crash", 10, 20).await?;
    for round in 0..2 {
        // SIGKILL: no drain, no last ack. The agent keeps what was not
        // acked and resends it to the restarted collector.
        collector.proc.kill().await?;
        let before = counters(&collector.db, "edge-crash")?;
        let n = before.values().map(Vec::len).min().unwrap_or(0);
        collector = Collector::start(&dir, addr).await?;
        wait_for_counters(&collector.db, "edge-crash", 10, n + 20)
            .await
            .with_context(|| format!("round {round}"))?;
    }
    let status = agent.terminate(PATIENCE).await?;
    ensure!(
        status.success(),
        "agent exited with {status}: {}",
        agent.log()
    );
    assert_exactly_once(&cluster::counters(&collector.db, "edge-crash")?, 10)?;
    let status = collector.proc.terminate(PATIENCE).await?;
    ensure!(status.success(), "collector exited with {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_everything() -> Result<()> {
    let dir = TestDir::new("e2e-grpcurl")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let addr = collector.addr.to_string();
    let list = run_grpcurl(&["-plaintext", &addr, "list"]).await?;
    for service in [
        "tributary.v1.Ingest",
        "tributary.v1.Query",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        ensure!(
            list.lines().any(|l| l.trim() == service),
            "{service} not listed:\n{list}"
        );
    }
    let batch = run_grpcurl(&["-plaintext", &addr, "describe", "tributary.v1.Batch"]).await?;
    ensure!(batch.contains("uint64 seq"), "{batch}");
    for symbol in [
        "tributary.v1.Query",
        "tributary.v1.Ingest",
        "tributary.v1.AgentInfo",
        "tributary.v1.ReadingsChunk",
        "grpc.health.v1.HealthCheckResponse",
    ] {
        run_grpcurl(&["-plaintext", &addr, "describe", symbol]).await?;
    }
    let health = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await?;
    ensure!(health.contains("SERVING"), "{health}");

    // An agent streams; ListAgents shows it through grpcurl.
    let config = sim_agent_config("edge-g", &collector.url(), 2, "20ms");
    let mut agent = start_agent(&dir, "edge-g", &config)?;
    wait_for_counters(&collector.db, "edge-g", 2, 5).await?;
    let agents = run_grpcurl(&["-plaintext", &addr, "tributary.v1.Query/ListAgents"]).await?;
    ensure!(agents.contains("\"edge-g\""), "{agents}");
    ensure!(agents.contains("\"connected\": true"), "{agents}");
    let latest = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"device":"edge-g-counter-0"}"#,
        &addr,
        "tributary.v1.Query/Latest",
    ])
    .await?;
    ensure!(latest.contains("\"counter\""), "{latest}");
    agent.terminate(PATIENCE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_the_broken_device() -> Result<()> {
    let dir = TestDir::new("e2e-check")?;
    let http = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let dead = free_addr()?;
    let good = format!(
        r#"id = "edge-check"
collectors = ["http://127.0.0.1:1"]

[[devices]]
name = "counter"
driver = "sim"
interval = "1s"

[[devices]]
name = "meter"
driver = "http"
url = "{meter}"
format = "json"
interval = "1s"
metrics = [{{ name = "power_w", pointer = "/power" }}]
"#,
        meter = http.url("/meter")
    );
    let path = dir.join("good.toml");
    std::fs::write(&path, &good)?;
    let out = tokio::process::Command::new(tributary_tests::process::bin_path("tributary-agent")?)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "check failed: {stdout}");
    ensure!(
        stdout.contains("power_w") && stdout.contains("100.5"),
        "{stdout}"
    );

    let bad = format!(
        "{good}\n[[devices]]\nname = \"plc-dead\"\ndriver = \"modbus\"\naddress = \"{dead}\"\ninterval = \"1s\"\n\
         metrics = [{{ name = \"t\", register = 1, kind = \"holding\", type = \"u16\" }}]\n"
    );
    let path = dir.join("bad.toml");
    std::fs::write(&path, &bad)?;
    let out = tokio::process::Command::new(tributary_tests::process::bin_path("tributary-agent")?)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success(), "check should fail: {stdout}");
    ensure!(
        stdout
            .lines()
            .any(|l| l.contains("plc-dead") && l.to_lowercase().contains("refused")),
        "{stdout}"
    );
    http.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_config_exits_2_naming_file_line_and_key() -> Result<()> {
    let dir = TestDir::new("e2e-bad-config")?;
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\n\n[[devices]]\nname = \"c\"\ndriver = \"sim\"\ninterval = \"50ms\"\nintervall = \"1s\"\n",
    )?;
    let out = tokio::process::Command::new(tributary_tests::process::bin_path("tributary-agent")?)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("agent.toml"), "{stderr}");
    ensure!(stderr.contains(":8"), "line 8: {stderr}");
    ensure!(stderr.contains("intervall"), "{stderr}");
    Ok(())
}

/// The main startup failures of the collector print one line, each cause
/// once (an error names its cause in its message or returns it as its
/// source, never both): checked word for word against the real binary.
#[tokio::test]
async fn an_unusable_store_is_one_line_with_each_cause_once() -> Result<()> {
    let cases = [
        (
            "sqlite:/nonexistent/dir/x.db",
            "error: opening the store: sqlite /nonexistent/dir/x.db: unable to open database file\n",
        ),
        (
            // Nothing listens on port 1.
            "postgres://127.0.0.1:1/x",
            "error: opening the store: postgres://127.0.0.1:1/x: connect: error connecting to server: \
             Connection refused (os error 111)\n",
        ),
    ];
    for (store, expected) in cases {
        let out = tokio::process::Command::new(tributary_tests::process::bin_path(
            "tributary-collector",
        )?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--store",
            store,
        ])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{store}: {stderr}");
        assert_eq!(stderr, expected, "{store}");
    }
    Ok(())
}

/// Logs carry no colour codes when stderr is not a terminal (a file, a
/// pipe, the journal), whatever `NO_COLOR` says.
#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes() -> Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = TestDir::new("e2e-no-colour")?;
    let db = dir.join("c.db");
    let mut child =
        tokio::process::Command::new(tributary_tests::process::bin_path("tributary-collector")?)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
                "--store",
            ])
            .arg(format!("sqlite:{}", db.display()))
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let listening = line.contains("collector listening");
        seen.push(line);
        if listening {
            break;
        }
    }
    child.kill().await?;
    ensure!(
        seen.iter().any(|l| l.contains("collector listening")),
        "{seen:?}"
    );
    ensure!(!seen.iter().any(|l| l.contains('\u{1b}')), "{seen:?}");
    Ok(())
}
