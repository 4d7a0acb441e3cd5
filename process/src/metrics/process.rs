//! [`ProcessCollector`]: the process metrics every Prometheus client
//! library exports under the same names, read from `/proc/self` at each
//! scrape (nothing is kept between scrapes). On a system without `/proc`
//! it exports nothing.
//!
//! `/proc` gives CPU time and the start time in clock ticks; Linux fixes
//! the tick the kernel reports to user space (`USER_HZ`) at 100 on every
//! architecture this project builds for, so no `sysconf` (unsafe) call is
//! needed. Memory comes from `/proc/self/status` in kB, which needs no
//! page size either.

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second in `/proc` (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Exports `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`
/// and `process_start_time_seconds` (register it in a registry without a
/// prefix, so the names stay the standard ones).
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of `/proc/self`.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct ProcessStats {
    pub(super) cpu_seconds: Option<f64>,
    pub(super) start_time_seconds: Option<f64>,
    pub(super) resident_bytes: Option<f64>,
    pub(super) virtual_bytes: Option<f64>,
    pub(super) open_fds: Option<i64>,
    pub(super) max_fds: Option<i64>,
}

impl ProcessStats {
    /// Reads what it can; a file that cannot be read leaves its metrics out.
    pub(super) fn read() -> ProcessStats {
        let proc = Path::new("/proc/self");
        let mut stats = ProcessStats::default();
        if let Ok(stat) = std::fs::read_to_string(proc.join("stat")) {
            // The boot time does not change: read once, not per scrape.
            static BOOT: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
            let boot = *BOOT.get_or_init(|| {
                std::fs::read_to_string("/proc/stat")
                    .ok()
                    .and_then(|s| boot_time(&s))
            });
            if let Some((cpu, start_ticks)) = parse_stat(&stat) {
                stats.cpu_seconds = Some(cpu);
                stats.start_time_seconds = boot.map(|b| b + start_ticks / TICKS_PER_SECOND);
            }
        }
        if let Ok(status) = std::fs::read_to_string(proc.join("status")) {
            stats.resident_bytes = status_kb(&status, "VmRSS:").map(|kb| kb * 1024.0);
            stats.virtual_bytes = status_kb(&status, "VmSize:").map(|kb| kb * 1024.0);
        }
        if let Ok(dir) = std::fs::read_dir(proc.join("fd")) {
            // The directory handle read_dir holds is one of them.
            stats.open_fds = Some((dir.count() as i64 - 1).max(0));
        }
        if let Ok(limits) = std::fs::read_to_string(proc.join("limits")) {
            stats.max_fds = max_open_files(&limits);
        }
        stats
    }
}

/// CPU seconds (user + system) and the start time in ticks after boot,
/// from `/proc/self/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub(super) fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field n of proc(5) is fields[n - 3] here.
    let num = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let cpu = (num(14)? + num(15)?) / TICKS_PER_SECOND;
    Some((cpu, num(22)?))
}

/// Boot time in seconds since the Unix epoch (`btime` of `/proc/stat`).
pub(super) fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `kB` value of `/proc/self/status`.
pub(super) fn status_kb(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The soft limit of open files from `/proc/self/limits` (`None` when
/// unlimited).
pub(super) fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        if let Some(v) = s.cpu_seconds {
            let m = ConstCounter::new(v);
            let e = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                m.metric_type(),
            )?;
            m.encode(e)?;
        }
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 3] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                s.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(Unit::Bytes),
                s.virtual_bytes,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                Some(Unit::Seconds),
                s.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let m = ConstGauge::new(v);
                let e = encoder.encode_descriptor(name, help, unit.as_ref(), m.metric_type())?;
                m.encode(e)?;
            }
        }
        let counts = [
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
        ];
        for (name, help, value) in counts {
            if let Some(v) = value {
                let m = ConstGauge::new(v);
                let e = encoder.encode_descriptor(name, help, None, m.metric_type())?;
                m.encode(e)?;
            }
        }
        Ok(())
    }
}
