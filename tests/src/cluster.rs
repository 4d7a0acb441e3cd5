//! Running a small Tributary deployment in a test: a collector process with
//! its SQLite file, agent processes with their spools, and the ground truth
//! to compare against (the sim counter goes up by exactly one per poll).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::process::{Proc, TestDir, eventually, wait_for_port};
use tributary_agent::reading::Value;
use tributary_agent::spool::{FullPolicy, Spool, SpoolOptions};
use tributary_agent::uplink::{UplinkStats, spooled_readings};
use tributary_collector::model::{Point, SeriesMeta, StoredValue};
use tributary_collector::store::read::Selector;
use tributary_collector::store::sqlite::SqliteReader;

/// How long anything may take before it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A collector process with its database in a test directory.
pub struct Collector {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Where its HTTP listener (Prometheus API, /metrics, fleet page) is.
    pub http: SocketAddr,
    pub db: PathBuf,
    log: PathBuf,
}

impl Collector {
    /// Starts `tributary-collector serve` on `addr` with its database (and
    /// log) in `dir`; a restart with the same `dir` and `addr` reopens it.
    pub async fn start(dir: &TestDir, addr: SocketAddr) -> Result<Self> {
        Self::start_with(dir, addr, &[]).await
    }

    /// [`Collector::start`] with more arguments for `serve` (a `--config`).
    pub async fn start_with(dir: &TestDir, addr: SocketAddr, args: &[&str]) -> Result<Self> {
        let db = dir.join("collector.db");
        let log = dir.join("collector.log");
        // Tests run collectors side by side: no fixed HTTP port.
        let http = crate::process::free_addr()?;
        let proc = Proc::builder("tributary-collector")?
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--http-listen", &http.to_string()])
            .arg(format!("--store=sqlite:{}", db.display()))
            .args(args)
            .log_to(&log)
            .spawn()?;
        wait_for_port(addr, PATIENCE).await?;
        wait_for_port(http, PATIENCE).await?;
        Ok(Collector {
            proc,
            addr,
            http,
            db,
            log,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL of its HTTP listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The collector's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `[spool]` and `[uplink]` sections tests use: the spool in the test
/// directory, fast keepalive and reconnects.
pub fn agent_sections(spool: &Path, extra_spool: &str) -> String {
    agent_sections_keepalive(spool, extra_spool, "2s")
}

/// [`agent_sections`] with another keepalive timeout: a test whose link is
/// slow on purpose (a throttled proxy) queues the pings behind its data.
pub fn agent_sections_keepalive(
    spool: &Path,
    extra_spool: &str,
    keepalive_timeout: &str,
) -> String {
    format!(
        "\n[spool]\ndir = \"{}\"\n{extra_spool}\n[uplink]\nkeepalive_interval = \"1s\"\n\
         keepalive_timeout = \"{keepalive_timeout}\"\nconnect_timeout = \"2s\"\nbackoff_max = \"500ms\"\n\
         shutdown_timeout = \"20s\"\n",
        spool.display()
    )
}

/// A config with `devices` sim devices named `<id>-counter-<i>`.
pub fn sim_agent_config(id: &str, collectors: &[String], devices: usize, interval: &str) -> String {
    let urls: Vec<String> = collectors.iter().map(|c| format!("\"{c}\"")).collect();
    let mut s = format!("id = \"{id}\"\ncollectors = [{}]\n", urls.join(", "));
    for i in 0..devices {
        s.push_str(&format!(
            "\n[[devices]]\nname = \"{id}-counter-{i}\"\ndriver = \"sim\"\ninterval = \"{interval}\"\n"
        ));
    }
    s
}

/// An agent process; its config and spool live in the test directory.
pub struct Agent {
    pub proc: Proc,
    pub id: String,
    pub spool: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The uplink's counters (`--stats-file`), see [`Agent::uplink_stats`].
    stats: PathBuf,
}

impl Agent {
    /// Writes `config` (plus [`agent_sections`] with `extra_spool` keys) and
    /// starts `tributary-agent run`.
    pub fn start(dir: &TestDir, id: &str, config: &str, extra_spool: &str) -> Result<Agent> {
        Self::start_keepalive(dir, id, config, extra_spool, "2s")
    }

    /// [`Agent::start`] with another keepalive timeout (see
    /// [`agent_sections_keepalive`]).
    pub fn start_keepalive(
        dir: &TestDir,
        id: &str,
        config: &str,
        extra_spool: &str,
        keepalive_timeout: &str,
    ) -> Result<Agent> {
        let spool = dir.join(format!("{id}-spool"));
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(
            &path,
            format!(
                "{config}{}",
                agent_sections_keepalive(&spool, extra_spool, keepalive_timeout)
            ),
        )?;
        let log = dir.join(format!("{id}.log"));
        let stats = dir.join(format!("{id}.stats.prom"));
        let proc = Self::spawn(&path, &log, &stats)?;
        Ok(Agent {
            proc,
            id: id.to_string(),
            spool,
            config: path,
            log,
            stats,
        })
    }

    fn spawn(config: &Path, log: &Path, stats: &Path) -> Result<Proc> {
        // Metrics off: tests run several agents at once, and the default
        // port is one (tests/tests/agent_metrics.rs serves them).
        Proc::builder("tributary-agent")?
            .arg("run")
            .args(["--metrics-listen", "off"])
            .arg("--config")
            .arg(config)
            .arg("--stats-file")
            .arg(stats)
            .log_to(log)
            .spawn()
    }

    /// Starts the agent again with the same config and spool (its counters
    /// start again from zero).
    pub fn restart(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.stats);
        self.proc = Self::spawn(&self.config, &self.log, &self.stats)?;
        Ok(())
    }

    /// The running agent's uplink counters, from its stats file (rewritten
    /// at most every 100 ms, so a moment behind).
    pub fn uplink_stats(&self) -> Result<UplinkStats> {
        let text = std::fs::read_to_string(&self.stats)
            .with_context(|| format!("read {}", self.stats.display()))?;
        UplinkStats::from_prometheus_text(&text).ok_or_else(|| {
            anyhow!(
                "{}: not the uplink's counters:\n{text}",
                self.stats.display()
            )
        })
    }

    /// SIGTERM, and the agent must exit 0 within [`PATIENCE`].
    pub async fn stop(&mut self) -> Result<()> {
        let status = self.proc.terminate(PATIENCE).await?;
        ensure!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.id,
            self.log()
        );
        Ok(())
    }

    /// The agent's log so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One stored counter reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stored {
    pub ts_ns: i64,
    pub value: i64,
}

/// Every stored point of the series matching `agent`, `device` and
/// `metric` (empty matches all) in the collector database `db`, series by
/// series (by id), each in device-time order. Read through the collector's
/// own SQLite reader: readings are stored in blobs (a head of batches and
/// per-series chunks) that no SQL `SELECT` can count.
pub fn stored_points(
    db: &Path,
    agent: &str,
    device: &str,
    metric: &str,
) -> Result<Vec<(SeriesMeta, Vec<Point>)>> {
    let sel = Selector {
        agent: agent.into(),
        device: device.into(),
        metric: metric.into(),
    };
    SqliteReader::new(db)
        .points(&sel)
        .with_context(|| format!("stored points in {}", db.display()))
}

/// Readings stored for `agent` (any series).
pub fn stored_count(db: &Path, agent: &str) -> Result<usize> {
    Ok(stored_points(db, agent, "", "")?
        .iter()
        .map(|(_, p)| p.len())
        .sum())
}

/// A stored value's kind code and text, as the `readings` table had them
/// (`kind`, `CAST(value AS TEXT)`): 0 f64, 1 i64, 2 bool (`0`/`1`),
/// 3 string, 4 timeout, 5 error (the text is the message), 6 u64.
pub fn kind_and_text(v: &StoredValue) -> (i64, String) {
    let text = match v {
        StoredValue::F64(v) => format!("{v:?}"),
        StoredValue::I64(v) => v.to_string(),
        StoredValue::U64(v) => v.to_string(),
        StoredValue::Bool(v) => i64::from(*v).to_string(),
        StoredValue::Str(s) | StoredValue::Timeout(s) | StoredValue::Error(s) => s.clone(),
    };
    (v.kind_code(), text)
}

/// A stored integer (or bool) value; anything else is an error.
pub fn stored_int(v: &StoredValue) -> Result<i64> {
    match v {
        StoredValue::I64(v) => Ok(*v),
        StoredValue::Bool(v) => Ok(i64::from(*v)),
        other => bail!("stored value {other:?} is not an integer"),
    }
}

/// Counter readings stored per device of `agent`, in device-time order.
pub fn counters(db: &Path, agent: &str) -> Result<BTreeMap<String, Vec<Stored>>> {
    let mut out: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    for (series, points) in stored_points(db, agent, "", "counter")? {
        let stored = out.entry(series.key.device).or_default();
        for p in points {
            stored.push(Stored {
                ts_ns: p.ts_ns,
                value: stored_int(&p.value)?,
            });
        }
    }
    // A device with several counter series (labels, units): one run, by time.
    for stored in out.values_mut() {
        stored.sort_by_key(|s| s.ts_ns);
    }
    Ok(out)
}

/// The counter values alone.
pub fn values(stored: &[Stored]) -> Vec<i64> {
    stored.iter().map(|s| s.value).collect()
}

/// Every device's counter must read exactly 1, 2, ..., n: nothing lost,
/// nothing twice, nothing spurious. Returns the total.
pub fn assert_exactly_once(stored: &BTreeMap<String, Vec<Stored>>, devices: usize) -> Result<u64> {
    ensure!(
        stored.len() == devices,
        "expected {devices} devices, found {}",
        stored.len()
    );
    let mut total = 0;
    for (device, readings) in stored {
        check_run(device, &values(readings))?;
        total += readings.len() as u64;
    }
    Ok(total)
}

/// `values` must be exactly 1..=n.
pub fn check_run(device: &str, values: &[i64]) -> Result<()> {
    let expected: Vec<i64> = (1..=values.len() as i64).collect();
    if values != expected {
        let dup = values.windows(2).find(|w| w[0] >= w[1]);
        let gap = values.windows(2).find(|w| w[1] > w[0] + 1);
        bail!(
            "{device}: {} values, first {:?}, duplicate/out of order at {dup:?}, gap at {gap:?}",
            values.len(),
            values.first()
        );
    }
    Ok(())
}

/// Waits until every device of `agent` has at least `n` counter readings.
pub async fn wait_for_counters(db: &Path, agent: &str, devices: usize, n: usize) -> Result<()> {
    eventually(
        PATIENCE,
        &format!("{agent} has {n} readings per device"),
        || async {
            let c = counters(db, agent).ok()?;
            (c.len() == devices && c.values().all(|v| v.len() >= n)).then_some(())
        },
    )
    .await
}

/// Per-agent counters as the collector stores them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentCounters {
    pub readings_stored: u64,
    pub batches_deduplicated: u64,
    pub batches_resent: u64,
    pub dropped_at_agent: u64,
}

pub fn agent_counters(db: &Path, agent: &str) -> Result<AgentCounters> {
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let row = conn
        .query_row(
            "SELECT readings_stored, batches_deduplicated, batches_resent, \
             (SELECT COALESCE(SUM(dropped), 0) FROM epochs WHERE agent = ?1) \
             FROM agents WHERE id = ?1",
            [agent],
            |r| {
                Ok(AgentCounters {
                    readings_stored: r.get::<_, i64>(0)? as u64,
                    batches_deduplicated: r.get::<_, i64>(1)? as u64,
                    batches_resent: r.get::<_, i64>(2)? as u64,
                    dropped_at_agent: r.get::<_, i64>(3)? as u64,
                })
            },
        )
        .with_context(|| format!("agent {agent} in {}", db.display()))?;
    Ok(row)
}

/// What a spool holds: counter values per device, read from a copy of the
/// spool directory (opening a spool repairs it; the original stays as is).
/// Records carry series ids; the names come from the spool's dictionary.
pub fn spooled_counters(spool: &Path, scratch: &Path) -> Result<BTreeMap<String, Vec<i64>>> {
    copy_dir(spool, scratch)?;
    let (mut s, _) = Spool::open(SpoolOptions {
        dir: scratch.to_path_buf(),
        max_bytes: u64::MAX / 2,
        policy: FullPolicy::Block,
        sync: false,
    })?;
    let series = s.take_series();
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut next = 0;
    while let Some(rec) = s.read_from(next)? {
        next = rec.seq + 1;
        for r in spooled_readings(&rec, &series).map_err(|e| anyhow!(e))? {
            if let (true, Value::I64(v)) = (&*r.series.metric == "counter", r.value) {
                out.entry(r.series.device.to_string()).or_default().push(v);
            }
        }
    }
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Resident set size and its peak of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
