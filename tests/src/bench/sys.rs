//! What `/proc` tells about a process and the machine: CPU time, resident
//! and peak memory, cores, CPU model, load average.

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::{Context as _, Result, bail};
use serde_json::json;

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU seconds of all its threads since it started.
    pub cpu_s: f64,
    /// Resident set now (`VmRSS`), bytes.
    pub rss: u64,
    /// Peak resident set (`VmHWM`), bytes.
    pub hwm: u64,
}

/// Samples `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // utime and stime are fields 14 and 15.
    let cpu_ticks = stat_field(&stat, 14)? + stat_field(&stat, 15)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_s: cpu_ticks as f64 / clock_ticks() as f64,
        rss: kib("VmRSS:") * 1024,
        hwm: kib("VmHWM:") * 1024,
    })
}

/// Field `n` (numbered from 1, as `man 5 proc` does) of a `/proc/<pid>/stat`
/// text, for the numeric fields after the command name.
fn stat_field(stat: &str, n: usize) -> Result<u64> {
    // The command name (field 2) may hold spaces; fields after it follow
    // the last ')', the first of them field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/<pid>/stat: no ')'")?;
    rest.split_whitespace()
        .nth(n.saturating_sub(3))
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("/proc/<pid>/stat: field {n}"))
}

/// The CPU seconds (user + system) of the children a process waited for,
/// from a `/proc/<pid>/stat` text (`cutime` + `cstime`, fields 16 and 17).
pub fn children_cpu_s(stat: &str) -> Result<f64> {
    let ticks = stat_field(stat, 16)? + stat_field(stat, 17)?;
    Ok(ticks as f64 / clock_ticks() as f64)
}

/// This process.
pub fn sample_self() -> Result<ProcSample> {
    sample(std::process::id())
}

/// One thread's name and times since it started.
#[derive(Debug, Clone, Default)]
pub struct ThreadTimes {
    /// `comm`, at most 15 bytes.
    pub name: String,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Seconds it was runnable but waited for a CPU (`schedstat`'s second
    /// field; 0 where the kernel keeps no schedstats).
    pub wait_s: f64,
}

/// The times of every live thread of `pid`, by thread id. A thread that
/// ended is not listed (its CPU time stays in [`sample`]'s total).
pub fn thread_times(pid: u32) -> Result<HashMap<u32, ThreadTimes>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let entry = entry.with_context(|| format!("read {dir}"))?;
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Gone between the listing and this read: not live any more.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map_or_else(String::new, |(n, _)| n.to_owned());
        let ticks = stat_field(&stat, 14)? + stat_field(&stat, 15)?;
        let wait_ns: u64 = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().nth(1).and_then(|f| f.parse().ok()))
            .unwrap_or(0);
        out.insert(
            tid,
            ThreadTimes {
                name,
                cpu_s: ticks as f64 / clock_ticks() as f64,
                wait_s: wait_ns as f64 / 1e9,
            },
        );
    }
    Ok(out)
}

/// `sysconf(_SC_CLK_TCK)` via `getconf` (no libc); 100 if that fails.
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// The machine a report comes from.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "cores": self.cores,
            "cpu_model": self.cpu_model,
            "memory_gib": (self.memory_gib * 10.0).round() / 10.0,
            "kernel": self.kernel,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "{}, {} cores, {:.1} GiB, Linux {}",
            self.cpu_model, self.cores, self.memory_gib, self.kernel
        )
    }
}

/// The p-th percentile (0..=100) of `values`, nearest rank; `None` when
/// empty. Sorts in place.
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// Fails unless `/proc` is there (Linux).
pub fn require_procfs() -> Result<()> {
    if !std::path::Path::new("/proc/self/stat").exists() {
        bail!("tributary-bench reads /proc and runs on Linux only");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_listed_with_their_names_and_times() -> Result<()> {
        let name = "bench-sys-test";
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        // The thread names itself as it starts: listed once it runs.
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _ = started_tx.send(());
                rx.recv()
            })?;
        started.recv()?;
        let threads = thread_times(std::process::id())?;
        let _ = tx.send(());
        let _ = thread.join();
        assert!(
            threads.values().any(|t| t.name == name),
            "{name} among {threads:?}"
        );
        assert!(
            threads.values().all(|t| t.cpu_s >= 0.0 && t.wait_s >= 0.0),
            "{threads:?}"
        );
        Ok(())
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(50.0));
        assert_eq!(percentile(&mut v, 99.0), Some(99.0));
        assert_eq!(percentile(&mut v, 100.0), Some(100.0));
        assert_eq!(percentile(&mut [], 50.0), None);
        assert_eq!(percentile(&mut [7.0], 99.0), Some(7.0));
    }

    #[test]
    fn stat_fields_follow_the_command_name() -> Result<()> {
        // A command name with a space and a ')' in it.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 250 150 20 0";
        assert_eq!(stat_field(stat, 14)?, 7);
        assert_eq!(stat_field(stat, 15)?, 3);
        let ticks = clock_ticks() as f64;
        assert!((children_cpu_s(stat)? - 400.0 / ticks).abs() < 1e-9);
        assert!(children_cpu_s("42 (short) S 1").is_err());
        Ok(())
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() -> Result<()> {
        let s = sample_self()?;
        assert!(s.rss > 0 && s.hwm >= s.rss);
        Ok(())
    }
}
