//! The exec driver: runs a program (no shell) with a clean environment and
//! parses its standard output as JSON (values by pointer) or Prometheus
//! text.
//!
//! The child is killed when the poll is dropped (the scheduler's timeout),
//! so a hanging program never outlives its poll. Output beyond
//! [`MAX_OUTPUT_BYTES`] fails the poll; a non-zero exit fails it with the
//! status and the last line of standard error.
//!
//! Owns: the child process of the poll in flight (`config.rs`: its
//! settings). May touch: `crate::reading` and the HTTP driver's body formats
//! (`drivers::http::{json, prometheus}`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

mod config;

pub use self::config::ExecConfig;

use super::http::{HttpFormat, json, prometheus};
use super::{BuildError, PollError, Poller, failed_metrics};
use crate::config::DeviceConfig;
use crate::reading::{FailureKind, Polled, Sample, Value};

/// Largest standard output a poll reads.
pub const MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Standard error kept for the failure message.
const MAX_STDERR_BYTES: u64 = 8 * 1024;

/// Metric name a failed Prometheus-format run is reported under.
pub const RUN_METRIC: &str = "run";

/// A program to run.
#[derive(Debug)]
pub struct ExecDriver {
    cfg: ExecConfig,
    /// The program, resolved against the agent's `PATH` when it is a bare
    /// name (the child's environment is clean, so it has no `PATH` of its own
    /// unless the config gives one).
    program: PathBuf,
}

impl ExecDriver {
    pub fn new(cfg: &ExecConfig) -> Self {
        ExecDriver {
            cfg: cfg.clone(),
            program: resolve(&cfg.command),
        }
    }

    /// (name, unit) of every metric a poll reports.
    pub fn metrics(&self) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
        match self.cfg.format {
            HttpFormat::Json => Box::new(
                self.cfg
                    .metrics
                    .iter()
                    .map(|m| (m.name.as_str(), m.unit.as_str())),
            ),
            HttpFormat::Prometheus => Box::new(std::iter::once((RUN_METRIC, ""))),
        }
    }

    pub async fn poll(&mut self) -> Result<Vec<Sample>, PollError> {
        let shown = self.cfg.command.display().to_string();
        let mut child = Command::new(&self.program)
            .args(&self.cfg.args)
            .env_clear()
            .envs(&self.cfg.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                PollError::error(match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("cannot run {shown}: program not found")
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        format!("cannot run {shown}: permission denied")
                    }
                    _ => format!("cannot run {shown}: {e}"),
                })
            })?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let (out, err) = match (child.stdout.take(), child.stderr.take()) {
            (Some(out), Some(err)) => (out, err),
            _ => return Err(PollError::error(format!("{shown}: no pipes to the child"))),
        };
        let (mut out, mut err) = (out.take(MAX_OUTPUT_BYTES + 1), err.take(MAX_STDERR_BYTES));
        let (r1, r2) = tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr));
        r1.map_err(|e| PollError::error(format!("{shown}: reading its output: {e}")))?;
        let _ = r2;
        if stdout.len() as u64 > MAX_OUTPUT_BYTES {
            return Err(PollError::error(format!(
                "{shown}: output exceeds {MAX_OUTPUT_BYTES} bytes"
            )));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| PollError::error(format!("{shown}: waiting for it: {e}")))?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let how = match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => format!("was killed ({status})"),
            };
            return Err(PollError::error(if last.is_empty() {
                format!("{shown} {how}")
            } else {
                format!("{shown} {how}: {}", last.trim())
            }));
        }
        match self.cfg.format {
            HttpFormat::Json => {
                let doc = json::parse_json(&stdout)
                    .map_err(|e| PollError::error(format!("{shown}: output is {}", e.message)))?;
                Ok(json::extract_json(&doc, &self.cfg.metrics))
            }
            HttpFormat::Prometheus => {
                let text = std::str::from_utf8(&stdout)
                    .map_err(|e| PollError::error(format!("{shown}: output is not utf-8: {e}")))?;
                let samples = prometheus::parse(text)
                    .map_err(|e| PollError::error(format!("{shown}: output: {e}")))?;
                Ok(samples
                    .into_iter()
                    .map(|s| Sample {
                        labels: s.labels,
                        ..Sample::new(s.name, Value::F64(s.value))
                    })
                    .collect())
            }
        }
    }
}

/// A bare program name looked up in the agent's `PATH`; anything else as is.
fn resolve(command: &Path) -> PathBuf {
    if command.components().count() != 1 || command.is_absolute() {
        return command.to_owned();
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(command))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| command.to_owned())
}

impl Poller for ExecDriver {
    type Settings = ExecConfig;

    fn build(settings: &ExecConfig, _: &DeviceConfig) -> Result<Self, BuildError> {
        Ok(ExecDriver::new(settings))
    }

    /// Boxed: the poll future is large (see [`super::Driver::poll_values`]).
    async fn poll(&mut self) -> Result<Polled, PollError> {
        Ok(Polled::Samples(Box::pin(ExecDriver::poll(self)).await?))
    }

    fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        failed_metrics(self.metrics(), kind, message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::drivers::http::JsonMetric;

    fn exec(command: &str, args: &[&str], format: HttpFormat) -> ExecDriver {
        ExecDriver::new(&ExecConfig {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::from([("ONLY".to_string(), "this".to_string())]),
            format,
            metrics: vec![JsonMetric {
                name: "v".into(),
                pointer: "/v".into(),
                unit: String::new(),
            }],
        })
    }

    #[tokio::test]
    async fn json_prometheus_and_failures() {
        let s = exec("echo", &[r#"{"v": 7}"#], HttpFormat::Json)
            .poll()
            .await
            .expect("runs");
        assert_eq!(s[0].value, Value::I64(7));
        let s = exec("printf", &["a 1\\nb{x=\"y\"} 2\\n"], HttpFormat::Prometheus)
            .poll()
            .await
            .expect("runs");
        assert_eq!(s.len(), 2);
        // The environment is exactly the configured one.
        let s = exec(
            "sh",
            &[
                "-c",
                "printf '{\"v\": \"%s\"}' \"$(env | sort | tr '\\n' ' ')\"",
            ],
            HttpFormat::Json,
        )
        .poll()
        .await
        .expect("runs");
        let Value::Str(env) = &s[0].value else {
            panic!("{:?}", s[0])
        };
        assert!(env.contains("ONLY=this"), "{env}");
        assert!(
            !env.contains("HOME=") && !env.contains("PATH="),
            "inherited: {env}"
        );
        let e = exec("sh", &["-c", "echo oops >&2; exit 3"], HttpFormat::Json)
            .poll()
            .await
            .expect_err("fails");
        assert_eq!(e.message, "sh exited with status 3: oops");
        let e = exec("/nonexistent/probe", &[], HttpFormat::Json)
            .poll()
            .await
            .expect_err("missing");
        assert_eq!(
            e.message,
            "cannot run /nonexistent/probe: program not found"
        );
        let e = exec("echo", &["{\"v\": "], HttpFormat::Json)
            .poll()
            .await
            .expect_err("bad json");
        assert!(
            e.message
                .starts_with("echo: output is invalid json at line 2 column 0"),
            "{e}"
        );
        assert_eq!(e.kind, FailureKind::Error);
    }
}
