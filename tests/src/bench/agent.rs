//! The real `tributary-agent` as a process under test: its TOML config
//! (default settings, except that the spool directory is placed in the
//! work directory and shutdown waits longer for the last acks), start, `/proc` samples, graceful stop.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use tributary_tests::process::Proc;

use crate::collector::{WorkDir, tail};
use crate::options::Format;
use crate::sys::{self, ProcSample};

/// How long a stopping agent waits for the collector to ack its backlog.
const FLUSH_PATIENCE: Duration = Duration::from_secs(180);
/// How long a stopping agent gets to exit.
const STOP_PATIENCE: Duration = Duration::from_secs(200);

/// A config being written: header, then devices; metrics off unless
/// [`AgentConfig::metrics`] says where to serve them.
pub struct AgentConfig {
    text: String,
    metrics: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    pub fn new(id: &str, collector_url: &str, dir: &WorkDir) -> AgentConfig {
        let spool = dir.join(&format!("{id}-spool"));
        AgentConfig {
            text: format!(
                "# written by tributary-bench\nid = \"{id}\"\ncollectors = [\"{collector_url}\"]\n\n\
                 [spool]\ndir = \"{}\"\n\n\
                 # Only shutdown differs from the defaults: a stopping agent waits\n\
                 # for the collector to ack its backlog, so the counts can be compared.\n\
                 [uplink]\nshutdown_timeout = \"{}s\"\n",
                spool.display(),
                FLUSH_PATIENCE.as_secs()
            ),
            metrics: None,
        }
    }

    /// Serves the agent's metrics at `listen` (they are off otherwise).
    pub fn metrics(&mut self, listen: std::net::SocketAddr) {
        self.metrics = Some(listen);
    }

    /// The whole file.
    pub fn render(&self) -> String {
        let listen = self
            .metrics
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        format!("{}\n[metrics]\nlisten = \"{listen}\"\n", self.text)
    }

    /// An HTTP device; JSON devices read the simulator's three `/meter`
    /// values.
    pub fn http_device(&mut self, name: &str, url: &str, format: Format, interval: Duration) {
        let interval_ms = interval.as_millis();
        let _ = write!(
            self.text,
            "\n[[devices]]\nname = \"{name}\"\ndriver = \"http\"\nurl = \"{url}\"\ninterval = \"{interval_ms}ms\"\n"
        );
        match format {
            Format::Json => self.text.push_str(
                "format = \"json\"\nmetrics = [\n  { name = \"power\", pointer = \"/power\", unit = \"W\" },\n  \
                 { name = \"voltage\", pointer = \"/voltage\", unit = \"V\" },\n  \
                 { name = \"count\", pointer = \"/count\" },\n]\n",
            ),
            Format::Prometheus => self.text.push_str("format = \"prometheus\"\n"),
        }
    }

    /// Where MIB names are looked up (a top-level key, so it goes first).
    pub fn mib_dirs(&mut self, dirs: &[std::path::PathBuf]) {
        let list: Vec<String> = dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect();
        self.text = format!("mib_dirs = [{}]\n{}", list.join(", "), self.text);
    }

    /// A device of any driver: `body` holds its keys after `name`.
    pub fn device(&mut self, name: &str, body: &str) {
        let _ = write!(self.text, "\n[[devices]]\nname = \"{name}\"\n{body}");
    }

    /// A simulated device with `series` float gauges besides its counter.
    pub fn sim_device(&mut self, name: &str, series: usize, interval: Duration) {
        let interval_ms = interval.as_millis();
        let _ = write!(
            self.text,
            "\n[[devices]]\nname = \"{name}\"\ndriver = \"sim\"\ninterval = \"{interval_ms}ms\"\nseries = {series}\n"
        );
    }
}

/// Readings the agent adds to every poll of any device: its `up` health
/// reading (1 answered, 0 failed), stamped with the poll's time.
pub const HEALTH_READINGS_PER_POLL: u64 = 1;

/// The agent's health metric, one point per poll.
pub const UP_METRIC: &str = "up";

/// Readings one JSON poll of the simulator's `/meter` yields.
pub const JSON_READINGS_PER_POLL: u64 = 3 + HEALTH_READINGS_PER_POLL;

/// A running agent.
pub struct AgentProc {
    proc: Proc,
    pub id: String,
    /// Its config file.
    path: std::path::PathBuf,
}

impl AgentProc {
    pub fn start(dir: &WorkDir, id: &str, config: AgentConfig) -> Result<AgentProc> {
        let path = dir.join(&format!("{id}.toml"));
        std::fs::write(&path, config.render())
            .with_context(|| format!("write {}", path.display()))?;
        let proc = Proc::builder("tributary-agent")?
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .log_to(dir.join(&format!("{id}.log")))
            .spawn()?;
        Ok(AgentProc {
            proc,
            id: id.to_owned(),
            path,
        })
    }

    /// Writes `config` over the agent's config file and sends SIGHUP.
    pub async fn reload(&self, config: AgentConfig) -> Result<()> {
        std::fs::write(&self.path, config.render())
            .with_context(|| format!("write {}", self.path.display()))?;
        self.proc.signal("HUP").await
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn sample(&self) -> Result<ProcSample> {
        sys::sample(self.proc.id().context("agent has exited")?)
    }

    /// Fails with the end of its log if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.proc.try_wait()? {
            bail!(
                "agent {} exited with {status}:\n{}",
                self.id,
                tail(&self.proc.log(), 20)
            );
        }
        Ok(())
    }

    /// SIGTERM; the agent finishes its polls, flushes and waits for acks.
    pub async fn stop(mut self) -> Result<()> {
        let status = self.proc.terminate(STOP_PATIENCE).await?;
        if !status.success() {
            bail!(
                "agent {} exited with {status}:\n{}",
                self.id,
                tail(&self.proc.log(), 20)
            );
        }
        Ok(())
    }
}
