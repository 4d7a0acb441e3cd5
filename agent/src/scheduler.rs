//! The scheduler: polls every device on its own interval.
//!
//! Each device gets one task that owns its driver and its series cache, so a
//! slow or dead device only ever delays itself. A shared semaphore bounds the
//! polls in flight for the whole agent. Scheduling uses the monotonic clock
//! (tokio's `Instant`); the wall clock only stamps readings. Every scheduled
//! poll has an outcome: ok, timeout, error (each yields readings), or skipped
//! (the previous poll of the device overran its interval), which is counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::DeviceConfig;
use crate::drivers::Driver;
use crate::reading::{FailureKind, Reading, Sample, SeriesKey, Value, now_ns};

/// Poll outcome counters for the whole agent. Written by device tasks with
/// relaxed atomics: they are statistics, not state anyone decides on.
#[derive(Debug, Default)]
pub struct PollStats {
    pub ok: AtomicU64,
    pub timeout: AtomicU64,
    pub error: AtomicU64,
    pub skipped: AtomicU64,
}

/// Where device tasks send their readings (one `Vec` per poll).
pub type ReadingsTx = mpsc::Sender<Vec<Reading>>;

/// Starts one task per device on `tracker`. Tasks stop at the next
/// scheduled poll after `shutdown` is cancelled; a poll in flight finishes.
pub fn spawn_all(
    devices: Vec<(DeviceConfig, Driver)>,
    max_concurrency: usize,
    out: ReadingsTx,
    stats: Arc<PollStats>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_concurrency.max(1)));
    for (config, driver) in devices {
        let task = DeviceTask {
            config,
            driver,
            series: HashMap::new(),
            permits: permits.clone(),
            out: out.clone(),
            stats: stats.clone(),
        };
        tracker.spawn(task.run(shutdown.clone()));
    }
}

/// Cache key of a series within one device.
type LocalKey = (String, BTreeMap<String, String>, String);

struct DeviceTask {
    config: DeviceConfig,
    driver: Driver,
    /// Interned series of this device, so readings share one `Arc`.
    series: HashMap<LocalKey, Arc<SeriesKey>>,
    permits: Arc<Semaphore>,
    out: ReadingsTx,
    stats: Arc<PollStats>,
}

impl DeviceTask {
    async fn run(mut self, shutdown: CancellationToken) {
        let interval = self.config.interval;
        // Spread devices over the interval so they do not all poll at once.
        let jitter = Duration::from_nanos(
            rand::rng().random_range(0..interval.as_nanos().clamp(1, u64::MAX as u128) as u64),
        );
        let mut next = Instant::now() + jitter;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.cancelled() => return,
            }
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let readings = self.poll_once().await;
            drop(permit);
            if self.out.send(readings).await.is_err() {
                return;
            }
            next += interval;
            let now = Instant::now();
            if next <= now {
                // The poll overran: the ticks that passed are skipped.
                let behind = now.duration_since(next);
                let missed = 1 + (behind.as_nanos() / interval.as_nanos().max(1)) as u64;
                self.stats.skipped.fetch_add(missed, Ordering::Relaxed);
                warn!(device = %self.config.name, missed, "poll overran its interval; skipped");
                next += interval * missed as u32;
            }
        }
    }

    /// One poll under the device's timeout, stamped and turned into readings.
    async fn poll_once(&mut self) -> Vec<Reading> {
        let ts_ns = now_ns();
        let result = tokio::time::timeout(self.config.timeout, self.driver.poll()).await;
        let samples = match result {
            Ok(Ok(samples)) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                samples
            }
            Ok(Err(e)) => {
                self.stats.error.fetch_add(1, Ordering::Relaxed);
                debug!(device = %self.config.name, error = %e, "poll failed");
                self.failed(e.kind, e.message)
            }
            Err(_) => {
                self.stats.timeout.fetch_add(1, Ordering::Relaxed);
                debug!(device = %self.config.name, timeout = ?self.config.timeout, "poll timed out");
                let message = format!(
                    "timeout after {}",
                    humantime::format_duration(self.config.timeout)
                );
                self.failed(FailureKind::Timeout, message)
            }
        };
        samples
            .into_iter()
            .map(|s| Reading {
                series: self.intern(s.metric, s.labels, s.unit),
                ts_ns,
                value: s.value,
            })
            .collect()
    }

    /// One failed sample per metric the driver would have produced.
    fn failed(&self, kind: FailureKind, message: String) -> Vec<Sample> {
        self.driver
            .metric_names()
            .into_iter()
            .map(|m| {
                Sample::new(
                    m,
                    Value::Failed {
                        kind,
                        message: message.clone(),
                    },
                )
            })
            .collect()
    }

    fn intern(
        &mut self,
        metric: String,
        labels: BTreeMap<String, String>,
        unit: String,
    ) -> Arc<SeriesKey> {
        let key = (metric, labels, unit);
        if let Some(s) = self.series.get(&key) {
            return s.clone();
        }
        let series = Arc::new(SeriesKey {
            device: self.config.name.clone(),
            metric: key.0.clone(),
            labels: key.1.clone(),
            unit: key.2.clone(),
        });
        self.series.insert(key, series.clone());
        series
    }
}
