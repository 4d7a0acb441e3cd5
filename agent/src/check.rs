//! `tributary-agent check`: poll every configured device once, print what was
//! read (or why not) as a table, and say whether everything succeeded.
//!
//! Devices are polled concurrently, at most `max_concurrency` at a time, each
//! under its own timeout, exactly as the scheduler would poll them. A metric
//! that failed inside an otherwise successful poll (a JSON pointer that
//! matched nothing) counts as a failure too.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{AgentConfig, DeviceConfig};
use crate::drivers::{Driver, PollError};
use crate::reading::{FailureKind, Sample, Value};

/// The result of polling one device once.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceResult {
    pub device: String,
    /// Wall time of the poll (zero when the driver could not be built).
    pub latency: Duration,
    /// The samples of a poll that answered (some may still be failed
    /// values), or one failed sample per metric and the cause.
    pub outcome: Result<Vec<Sample>, (Vec<Sample>, PollError)>,
}

impl DeviceResult {
    /// Why the device failed, or `None` when every metric has a value.
    pub fn failure(&self) -> Option<String> {
        match &self.outcome {
            Err((_, e)) => Some(e.message.clone()),
            Ok(samples) => {
                let failed: Vec<String> = samples
                    .iter()
                    .filter_map(|s| match &s.value {
                        Value::Failed { message, .. } => {
                            Some(format!("metric {}: {message}", metric_label(s)))
                        }
                        _ => None,
                    })
                    .collect();
                (!failed.is_empty()).then(|| failed.join("; "))
            }
        }
    }
}

/// Polls every device once, prints the table and the failures to stdout,
/// and returns whether everything succeeded.
pub async fn run(cfg: &AgentConfig) -> bool {
    let results = poll_all(cfg).await;
    print!("{}", render(&results));
    results.iter().all(|r| r.failure().is_none())
}

/// Polls every device once, concurrently; results come in config order.
pub async fn poll_all(cfg: &AgentConfig) -> Vec<DeviceResult> {
    let permits = Arc::new(Semaphore::new(cfg.max_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, device) in cfg.devices.iter().enumerate() {
        let device = device.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = permits.acquire_owned().await.ok();
            (index, poll_device(&device).await)
        });
    }
    let mut results: Vec<Option<DeviceResult>> = vec![None; cfg.devices.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => {
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(result);
                }
            }
            Err(e) => tracing::error!(error = %e, "check poll task failed"),
        }
    }
    results
        .into_iter()
        .zip(&cfg.devices)
        .map(|(result, device)| {
            result.unwrap_or_else(|| DeviceResult {
                device: device.name.clone(),
                latency: Duration::ZERO,
                outcome: Err((Vec::new(), PollError::error("poll task panicked"))),
            })
        })
        .collect()
}

/// Builds the driver and polls it once under the device's timeout.
pub async fn poll_device(device: &DeviceConfig) -> DeviceResult {
    let mut driver = match Driver::build(device) {
        Ok(d) => d,
        Err(e) => {
            return DeviceResult {
                device: device.name.clone(),
                latency: Duration::ZERO,
                outcome: Err((Vec::new(), PollError::error(e.to_string()))),
            };
        }
    };
    let start = Instant::now();
    let result = tokio::time::timeout(device.timeout, driver.poll()).await;
    let latency = start.elapsed();
    let outcome = match result {
        Ok(Ok(samples)) => Ok(samples),
        Ok(Err(e)) => Err((driver.failure_samples(e.kind, &e.message), e)),
        Err(_) => {
            let e = PollError::timeout(format!(
                "timeout after {}",
                humantime::format_duration(device.timeout)
            ));
            Err((driver.failure_samples(e.kind, &e.message), e))
        }
    };
    DeviceResult {
        device: device.name.clone(),
        latency,
        outcome,
    }
}

/// The table (DEVICE, METRIC, VALUE, LATENCY), then one
/// `FAILED device <name>: <cause>` line per failed device.
pub fn render(results: &[DeviceResult]) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "DEVICE".into(),
        "METRIC".into(),
        "VALUE".into(),
        "LATENCY".into(),
    ]];
    for r in results {
        let latency = format!("{:.1} ms", r.latency.as_secs_f64() * 1000.0);
        let samples = match &r.outcome {
            Ok(samples) | Err((samples, _)) => samples,
        };
        if samples.is_empty() {
            let value = match &r.outcome {
                Err((_, e)) => failed_text(e.kind, &e.message),
                Ok(_) => "(no samples)".to_owned(),
            };
            rows.push([r.device.clone(), "-".into(), value, latency.clone()]);
        }
        for s in samples {
            rows.push([
                s.device.clone().unwrap_or_else(|| r.device.clone()),
                metric_label(s),
                value_text(s),
                latency.clone(),
            ]);
        }
    }
    for row in &mut rows {
        for cell in row.iter_mut() {
            clip_cell(cell);
        }
    }
    let mut widths = [0usize; 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for r in results {
        if let Some(cause) = r.failure() {
            let _ = writeln!(out, "FAILED device {}: {}", r.device, one_line(&cause));
        }
    }
    out
}

/// Longest table cell, in characters. A cell is padded to its column's
/// width through `format!`, whose width must fit in 16 bits (a 15 MiB
/// Prometheus label made `check` panic); a table wider than a few screens
/// is no use either. The `FAILED` lines below the table keep whole causes.
const MAX_CELL_CHARS: usize = 200;

/// Cuts `cell` to [`MAX_CELL_CHARS`] characters, the last one `…`.
fn clip_cell(cell: &mut String) {
    // A character at index MAX_CELL_CHARS means there are more than that.
    if cell.char_indices().nth(MAX_CELL_CHARS).is_some()
        && let Some((keep, _)) = cell.char_indices().nth(MAX_CELL_CHARS - 1)
    {
        cell.truncate(keep);
        cell.push('…');
    }
}

/// `name` or `name{k="v",...}`.
fn metric_label(s: &Sample) -> String {
    if s.labels.is_empty() {
        return s.metric.clone();
    }
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{}{{{}}}", s.metric, labels.join(","))
}

fn value_text(s: &Sample) -> String {
    let value = match &s.value {
        Value::F64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::Bool(v) => v.to_string(),
        Value::Str(v) => format!("{v:?}"),
        Value::Failed { kind, message } => return failed_text(*kind, message),
    };
    if s.unit.is_empty() {
        value
    } else {
        format!("{value} {}", s.unit)
    }
}

fn failed_text(kind: FailureKind, message: &str) -> String {
    let kind = match kind {
        FailureKind::Timeout => "TIMEOUT",
        FailureKind::Error => "ERROR",
    };
    format!("{kind}: {}", one_line(message))
}

/// Keeps a table row on one line.
fn one_line(s: &str) -> String {
    s.replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::DriverConfig;
    use crate::drivers::http::{HttpConfig, HttpFormat, JsonMetric};
    use crate::drivers::sim::SimConfig;

    fn device(name: &str, driver: DriverConfig) -> DeviceConfig {
        DeviceConfig {
            name: name.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            labels: Default::default(),
            driver,
        }
    }

    fn config(devices: Vec<DeviceConfig>) -> AgentConfig {
        AgentConfig {
            id: "edge-1".into(),
            collectors: vec!["http://127.0.0.1:7400".into()],
            max_concurrency: 2,
            max_series_per_device: crate::config::DEFAULT_MAX_SERIES_PER_DEVICE,
            batch: Default::default(),
            spool: crate::config::SpoolConfig::default_for("edge-1"),
            tls: None,
            uplink: Default::default(),
            metrics: Default::default(),
            devices,
            mib_dirs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn all_good_devices_pass() {
        let cfg = config(vec![
            device("sim-a", DriverConfig::Sim(SimConfig { series: 2 })),
            device("sim-b", DriverConfig::Sim(SimConfig { series: 0 })),
        ]);
        assert!(run(&cfg).await);
        let results = poll_all(&cfg).await;
        let text = render(&results);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        let cells = |i: usize| lines[i].split_whitespace().take(3).collect::<Vec<_>>();
        assert_eq!(cells(0), ["DEVICE", "METRIC", "VALUE"], "{text}");
        assert_eq!(cells(1), ["sim-a", "counter", "1"], "{text}");
        assert_eq!(cells(2)[..2], ["sim-a", "gauge{i=\"0\"}"], "{text}");
        assert_eq!(cells(4), ["sim-b", "counter", "1"], "{text}");
        assert!(!text.contains("FAILED"), "{text}");
    }

    #[tokio::test]
    async fn failures_are_listed_per_metric_and_device() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let cfg = config(vec![
            device("ok", DriverConfig::Sim(SimConfig { series: 0 })),
            device(
                "meter",
                DriverConfig::Http(HttpConfig {
                    url: format!("http://{addr}/meter"),
                    format: HttpFormat::Json,
                    metrics: vec![
                        JsonMetric {
                            name: "power_w".into(),
                            pointer: "/power".into(),
                            unit: "W".into(),
                        },
                        JsonMetric {
                            name: "volt".into(),
                            pointer: "/volt".into(),
                            unit: String::new(),
                        },
                    ],
                    auth: Default::default(),
                    ca: None,
                }),
            ),
        ]);
        let results = poll_all(&cfg).await;
        assert!(results[0].failure().is_none());
        let cause = results[1].failure().expect("meter fails");
        let text = render(&results);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        let cells = |i: usize| lines[i].split_whitespace().take(3).collect::<Vec<_>>();
        assert_eq!(cells(2), ["meter", "power_w", "ERROR:"], "{text}");
        assert_eq!(cells(3), ["meter", "volt", "ERROR:"], "{text}");
        assert!(cause.contains("Connection refused"), "{cause}");
        assert_eq!(lines[4], format!("FAILED device meter: {cause}"));
        assert!(!run(&cfg).await);
    }

    #[test]
    fn timeouts_and_metric_failures_render() {
        let results = vec![
            DeviceResult {
                device: "slow".into(),
                latency: Duration::from_secs(1),
                outcome: Err((
                    vec![Sample::new(
                        "counter",
                        Value::Failed {
                            kind: FailureKind::Timeout,
                            message: "timeout after 1s".into(),
                        },
                    )],
                    PollError::timeout("timeout after 1s"),
                )),
            },
            DeviceResult {
                device: "json".into(),
                latency: Duration::from_micros(1500),
                outcome: Ok(vec![
                    Sample {
                        unit: "W".into(),
                        ..Sample::new("power", Value::F64(12.5))
                    },
                    Sample::new(
                        "x",
                        Value::Failed {
                            kind: FailureKind::Error,
                            message: "pointer /x not found".into(),
                        },
                    ),
                ]),
            },
        ];
        let text = render(&results);
        let row = |a: &str, b: &str, c: &str, d: &str| format!("{a:<6}  {b:<7}  {c:<27}  {d}\n");
        let expected = [
            row("DEVICE", "METRIC", "VALUE", "LATENCY"),
            row("slow", "counter", "TIMEOUT: timeout after 1s", "1000.0 ms"),
            row("json", "power", "12.5 W", "1.5 ms"),
            row("json", "x", "ERROR: pointer /x not found", "1.5 ms"),
            "FAILED device slow: timeout after 1s\n".to_owned(),
            "FAILED device json: metric x: pointer /x not found\n".to_owned(),
        ]
        .concat();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_huge_label_is_clipped_in_its_cell_not_a_panic() {
        let huge = "x".repeat(15 * 1024 * 1024);
        let results = vec![DeviceResult {
            device: "node".into(),
            latency: Duration::from_millis(2),
            outcome: Ok(vec![Sample {
                labels: [("big".to_string(), huge.clone())].into(),
                ..Sample::new("m", Value::Str(huge))
            }]),
        }];
        let text = render(&results);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{}", &text[..200.min(text.len())]);
        let cells: Vec<&str> = lines[1].split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(cells.len(), 4, "{cells:?}");
        assert_eq!(cells[0], "node");
        for cell in &cells[1..3] {
            assert_eq!(cell.chars().count(), MAX_CELL_CHARS, "{cell}");
            assert!(cell.ends_with("xx…"), "{cell}");
        }
        assert_eq!(cells[3], "2.0 ms");
        // At the limit exactly, nothing is cut.
        let mut exact = "é".repeat(MAX_CELL_CHARS);
        clip_cell(&mut exact);
        assert_eq!(exact, "é".repeat(MAX_CELL_CHARS));
    }
}
