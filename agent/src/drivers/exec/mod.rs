//! The exec driver: runs a program (no shell) with a clean environment and
//! parses its standard output as JSON (values by pointer) or Prometheus
//! text.
//!
//! The child runs in a process group of its own, and the whole group is
//! killed when the poll ends before the child was reaped (the scheduler's
//! timeout drops the poll; an early error returns), so neither a hanging
//! program nor what it started (`sh -c 'sleep 1000 & ...'`) outlives its
//! poll. Output beyond [`MAX_OUTPUT_BYTES`] fails the poll; a non-zero exit
//! fails it with the status and the last line of standard error. Standard
//! error is read to its end (only its tail is kept), so a chatty program
//! never stalls on a full pipe.
//!
//! Owns: the child process of the poll in flight (`config.rs`: its
//! settings). May touch: `crate::reading` and the HTTP driver's body formats
//! (`drivers::http::{json, prometheus}`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tracing::warn;

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
            // Its own group (pgid = its pid), so a timeout kills whatever
            // it started too (see `Group`).
            .process_group(0)
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
        // Declared after `child`, so dropped before it: the group is killed
        // while the child is unreaped, and its id cannot have been reused.
        let mut group = Group(child.id());
        let mut stdout = Vec::new();
        let (out, err) = match (child.stdout.take(), child.stderr.take()) {
            (Some(out), Some(err)) => (out, err),
            _ => return Err(PollError::error(format!("{shown}: no pipes to the child"))),
        };
        let mut out = out.take(MAX_OUTPUT_BYTES + 1);
        let (r1, stderr) = tokio::join!(out.read_to_end(&mut stdout), read_tail(err));
        r1.map_err(|e| PollError::error(format!("{shown}: reading its output: {e}")))?;
        if stdout.len() as u64 > MAX_OUTPUT_BYTES {
            return Err(PollError::error(format!(
                "{shown}: output exceeds {MAX_OUTPUT_BYTES} bytes"
            )));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| PollError::error(format!("{shown}: waiting for it: {e}")))?;
        // Reaped: its id may be reused from here on, so the group is left
        // alone (a member still running closed our pipes, so it is detached).
        group.0 = None;
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

/// Reads `r` to its end, keeping the last [`MAX_STDERR_BYTES`] bytes (the
/// failure message shows the last line). Reading it all matters: a child
/// whose standard error nobody reads blocks once the pipe is full (64 KiB on
/// Linux), and the poll would wait for its timeout. A read error ends the
/// reading; the tail so far is kept (it only adds to a message).
async fn read_tail(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let keep = MAX_STDERR_BYTES as usize;
    let mut tail = Vec::with_capacity(keep);
    let mut chunk = vec![0u8; 8 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// The process group of a child not yet reaped (its id is the child's pid,
/// see `process_group(0)`); dropping it sends SIGKILL to the whole group.
///
/// tokio's `kill_on_drop` kills only the child: a shell's background job,
/// or anything the program forked, would keep running (and keep our pipes
/// open). The project forbids `unsafe` and has no `nix`/`libc` dependency
/// for `killpg`, so the signal goes through the system's `kill` program
/// (`kill -KILL -- -PGID`, procps or util-linux), run only on this path:
/// a poll that timed out or failed before its child exited. It blocks for
/// one fork and exec, about a millisecond.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        let Some(pgid) = self.0 else {
            return;
        };
        let killed = std::process::Command::new(KILL)
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // A failure status means the group is gone already (everyone
        // exited): nothing is left to do.
        if let Err(e) = killed {
            // Once per process: every timeout would say the same.
            if !KILL_MISSING_LOGGED.swap(true, Ordering::Relaxed) {
                warn!(pgid, error = %e, "exec: cannot run `{KILL}` to kill the process group of a command that timed out; what it started may live on (logged once)");
            }
        }
    }
}

/// Whether a failure to run `kill` was logged.
static KILL_MISSING_LOGGED: AtomicBool = AtomicBool::new(false);

/// The `kill` program (procps or util-linux); both accept `-- -PGID`.
const KILL: &str = "kill";

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

    #[tokio::test]
    async fn a_megabyte_of_stderr_does_not_stall_the_command() {
        let mut driver = exec(
            "sh",
            &["-c", "head -c 1048576 /dev/zero >&2; echo '{\"v\": 5}'"],
            HttpFormat::Json,
        );
        let poll = driver.poll();
        // The outcome, not the time: before, the child blocked on its full
        // stderr pipe until this (the scheduler's) timeout dropped the poll.
        let s = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
            .await
            .expect("the poll ends before its timeout")
            .expect("runs");
        assert_eq!(s[0].value, Value::I64(5));
        // Only the tail of standard error is kept for the message.
        let e = exec(
            "sh",
            &[
                "-c",
                "head -c 1048576 /dev/zero | tr '\\0' x >&2; echo >&2; echo last >&2; exit 4",
            ],
            HttpFormat::Json,
        )
        .poll()
        .await
        .expect_err("fails");
        assert_eq!(e.message, "sh exited with status 4: last");
    }

    /// Whether process `pid` is running (a zombie waiting for its parent to
    /// reap it is not).
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_what_the_command_started() {
        let dir = std::env::temp_dir().join(format!(
            "tributary-exec-group-{}-{}",
            std::process::id(),
            crate::reading::now_ns()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pidfile = dir.join("pid");
        let script = format!("sleep 1000 & echo $! > {}; sleep 1000", pidfile.display());
        let mut driver = exec("sh", &["-c", &script], HttpFormat::Json);
        // As the scheduler does it: the poll is dropped at its timeout.
        let timed_out =
            tokio::time::timeout(std::time::Duration::from_secs(2), driver.poll()).await;
        assert!(timed_out.is_err(), "{timed_out:?}");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .expect("the shell wrote the grandchild's pid")
            .trim()
            .parse()
            .expect("a pid");
        // SIGKILL is delivered at once, but the process lingers until it is
        // gone from the scheduler's view: wait (boundedly) for the outcome.
        let mut tries = 0;
        while alive(pid) && tries < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            tries += 1;
        }
        let survived = alive(pid);
        if survived {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!survived, "grandchild {pid} outlived the poll's timeout");
    }
}
