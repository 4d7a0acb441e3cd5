//! The scheduler: polls every device on its own interval.
//!
//! Each device gets one task that owns its driver, its series cache and its
//! health, so a slow or dead device only ever delays itself. Two kinds of
//! semaphore bound the polls in flight: one for the whole agent, and one per
//! shared endpoint (a Modbus gateway serving many devices), taken first and
//! held for the endpoint's pause after each poll. Scheduling uses the
//! monotonic clock (tokio's `Instant`); the wall clock only stamps readings.
//!
//! Every scheduled poll has an outcome: ok, timeout, error (each yields
//! readings), or skipped (the previous poll of the device overran its
//! interval), which is counted. Device health is data: every poll adds an
//! `up` reading (1 when the device answered, 0 when it failed or timed out),
//! and a change of state is logged once (down with the cause, up again with
//! how long it was down), not on every failed poll. A device that keeps
//! failing backs off: after `n` failures in a row the next poll waits
//! `interval * 2^(n-1)`, capped at the device's `backoff_max`; the first
//! success returns it to its interval, without a restart.
//!
//! Lateness (how long after its scheduled time a poll starts, permits
//! included) is recorded in [`PollStats`]; the agent logs it at shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::DeviceConfig;
use crate::drivers::Driver;
use crate::reading::{
    FailureKind, Labels, Polled, Reading, SeriesKey, Value, intern, now_ns, series,
};

mod histogram;
pub use histogram::Histogram;

/// The metric of the health series every device has.
pub const UP_METRIC: &str = "up";

/// Poll outcome counters for the whole agent. Written by device tasks with
/// relaxed atomics: they are statistics, not state anyone decides on.
#[derive(Debug, Default)]
pub struct PollStats {
    pub ok: AtomicU64,
    pub timeout: AtomicU64,
    pub error: AtomicU64,
    pub skipped: AtomicU64,
    /// Ticks not polled because the device was backing off after failures.
    pub backed_off: AtomicU64,
    /// How late polls started: from the scheduled time to holding every
    /// permit, just before the driver is called. Every poll but a device's
    /// first.
    pub lateness: Histogram,
    /// The same for the first poll of each device, kept apart: at startup
    /// every device connects at once, and those polls say how the agent
    /// starts, not how it keeps time.
    pub first_lateness: Histogram,
}

impl PollStats {
    /// One line's worth: counts and lateness quantiles (for the shutdown
    /// log).
    pub fn summary(&self) -> PollSummary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PollSummary {
            ok: get(&self.ok),
            timeout: get(&self.timeout),
            error: get(&self.error),
            skipped: get(&self.skipped),
            backed_off: get(&self.backed_off),
            lateness_p50: self.lateness.quantile(0.50),
            lateness_p99: self.lateness.quantile(0.99),
            lateness_max: self.lateness.max(),
            first_lateness_p99: self.first_lateness.quantile(0.99),
            first_lateness_max: self.first_lateness.max(),
        }
    }
}

/// A snapshot of [`PollStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSummary {
    pub ok: u64,
    pub timeout: u64,
    pub error: u64,
    pub skipped: u64,
    pub backed_off: u64,
    /// Upper bound of the bucket holding the median lateness.
    pub lateness_p50: Duration,
    pub lateness_p99: Duration,
    /// Exact.
    pub lateness_max: Duration,
    /// Of first polls only.
    pub first_lateness_p99: Duration,
    pub first_lateness_max: Duration,
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
    let endpoints = endpoints(devices.iter().map(|(c, _)| c));
    // Every schedule is laid out from this one instant, so devices that
    // draw the same slot share their wake-ups (see [`start_offset`]).
    let start = Instant::now();
    for (config, driver) in devices {
        let endpoint = config
            .driver
            .endpoint()
            .and_then(|l| endpoints.get(&l.key).cloned());
        // The task keeps the schedule; the driver holds what it needs of
        // the protocol settings.
        let DeviceConfig {
            name,
            interval,
            timeout,
            backoff_max,
            driver: _,
        } = config;
        let task = DeviceTask {
            up: series(&name, UP_METRIC, ""),
            config: Schedule {
                name,
                interval,
                timeout,
                backoff_max,
            },
            driver,
            series: HashMap::new(),
            permits: permits.clone(),
            endpoint,
            out: out.clone(),
            stats: stats.clone(),
            health: Health::default(),
        };
        tracker.spawn(task.run(start, shutdown.clone()));
    }
}

/// A shared endpoint: its semaphore and the pause after each poll.
#[derive(Clone)]
struct Endpoint {
    permits: Arc<Semaphore>,
    pause: Duration,
}

/// One [`Endpoint`] per key, with the smallest concurrency and the longest
/// pause any device sharing it asks for.
fn endpoints<'a>(configs: impl Iterator<Item = &'a DeviceConfig>) -> HashMap<String, Endpoint> {
    let mut limits: HashMap<String, (usize, Duration)> = HashMap::new();
    for c in configs {
        if let Some(l) = c.driver.endpoint() {
            let entry = limits.entry(l.key).or_insert((l.max_concurrency, l.pause));
            entry.0 = entry.0.min(l.max_concurrency);
            entry.1 = entry.1.max(l.pause);
        }
    }
    limits
        .into_iter()
        .map(|(key, (n, pause))| {
            let endpoint = Endpoint {
                permits: Arc::new(Semaphore::new(n.max(1))),
                pause,
            };
            (key, endpoint)
        })
        .collect()
}

/// How long to wait before the next poll after `failures` failed polls in a
/// row: the interval, doubled per failure after the first, capped.
pub fn backoff_delay(interval: Duration, failures: u32, max: Duration) -> Duration {
    if failures <= 1 {
        return interval;
    }
    let factor = 1u32 << (failures - 1).min(20);
    interval.saturating_mul(factor).min(max.max(interval))
}

/// Cache key of a series within one device task.
type LocalKey = (Option<String>, String, BTreeMap<String, String>, String);

/// What a device task knows about its device's health.
#[derive(Debug, Default)]
struct Health {
    /// `None` before the first poll.
    up: Option<bool>,
    /// Failed polls in a row.
    failures: u32,
    /// When the current state began.
    since: Option<Instant>,
    /// Whether the last poll overran its interval (to warn once per streak).
    overrunning: bool,
}

struct DeviceTask {
    config: Schedule,
    driver: Driver,
    /// Series of drivers that return named samples, interned so readings
    /// share one `Arc` (drivers that resolve their own series skip this).
    series: HashMap<LocalKey, Arc<SeriesKey>>,
    /// The device's `up` series.
    up: Arc<SeriesKey>,
    permits: Arc<Semaphore>,
    endpoint: Option<Endpoint>,
    out: ReadingsTx,
    stats: Arc<PollStats>,
    health: Health,
}

/// What a device task keeps of its device's configuration.
struct Schedule {
    name: String,
    interval: Duration,
    timeout: Duration,
    backoff_max: Duration,
}

/// How long a device task waits, at shutdown, for the uplink to take its
/// last poll.
const SHUTDOWN_HANDOVER: Duration = Duration::from_secs(5);

/// Slots a device's polls may start in, per interval.
const SLOTS: u32 = 100;

/// Shortest slot.
const MIN_SLOT: Duration = Duration::from_millis(1);

/// When, after the scheduler's start, a device with `interval` polls first
/// (and then every interval): one of [`SLOTS`] evenly spaced slots of the
/// interval, drawn at random, so devices are spread over the interval
/// rather than all polling at once, while those of one slot wake together.
/// Spread to the nanosecond instead, 10,000 devices at 1 s woke the
/// runtime's workers for nearly every poll and every answer on its own:
/// thousands of parks and wake-ups a second, the largest part of the
/// agent's CPU per poll after the loopback TCP itself (`cargo xtask bench
/// poll`). A slot of 1 s / 100 = 10 ms is far below the lateness anyone
/// would notice, and the polls of a slot still run concurrently.
fn start_offset(interval: Duration) -> Duration {
    let slot = (interval / SLOTS).max(MIN_SLOT);
    let slots = (interval.as_nanos() / slot.as_nanos()).clamp(1, u128::from(SLOTS)) as u32;
    slot * rand::rng().random_range(0..slots)
}

impl DeviceTask {
    async fn run(mut self, start: Instant, shutdown: CancellationToken) {
        let interval = self.config.interval;
        let mut next = start + start_offset(interval);
        // One registration with the token for the task's life, rather than
        // one per await.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut first = true;
        loop {
            // Shutdown first (`biased`): once it is signalled no new poll
            // starts, even if this task's time came meanwhile. Unbiased,
            // `select!` picks a ready branch at random, and a poll due while
            // 10,000 tasks wake up for shutdown started anyway, 100–350 ms
            // late: that was the lateness maximum of the `poll` bench.
            tokio::select! {
                biased;
                _ = &mut cancelled => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            // The endpoint first: a device waiting for its gateway must not
            // hold one of the agent's permits meanwhile.
            // Waiting for a permit ends at shutdown (no poll started yet).
            let endpoint_permit = match &self.endpoint {
                Some(e) => tokio::select! {
                    biased;
                    _ = &mut cancelled => return,
                    p = e.permits.clone().acquire_owned() => match p {
                        Ok(p) => Some((p, e.pause)),
                        Err(_) => return,
                    },
                },
                None => None,
            };
            let permit = tokio::select! {
                biased;
                _ = &mut cancelled => return,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let late = Instant::now().saturating_duration_since(next);
            if std::mem::replace(&mut first, false) {
                self.stats.first_lateness.record(late);
            } else {
                self.stats.lateness.record(late);
            }
            let (readings, ok) = self.poll_once().await;
            drop(permit);
            if let Some((p, pause)) = endpoint_permit {
                release_after(p, pause);
            }
            // Hand the readings over; at shutdown wait a bounded time for
            // room (a spool that blocks when full may never make any).
            let slot = tokio::select! {
                biased;
                slot = self.out.reserve() => slot.ok(),
                _ = &mut cancelled => {
                    tokio::time::timeout(SHUTDOWN_HANDOVER, self.out.reserve())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
            };
            let Some(slot) = slot else {
                if shutdown.is_cancelled() {
                    warn!(device = %self.config.name, readings = readings.len(), "shutdown: the uplink took no more readings; the last poll is lost");
                }
                return;
            };
            slot.send(readings);
            let wait = if ok {
                interval
            } else {
                let wait = backoff_delay(interval, self.health.failures, self.config.backoff_max);
                let extra = (wait.as_nanos() / interval.as_nanos().max(1)).saturating_sub(1);
                self.stats
                    .backed_off
                    .fetch_add(extra as u64, Ordering::Relaxed);
                wait
            };
            next += wait;
            let now = Instant::now();
            if next <= now {
                // The poll overran: the ticks that passed are skipped.
                let behind = now.duration_since(next);
                let missed = 1 + (behind.as_nanos() / interval.as_nanos().max(1)) as u64;
                self.stats.skipped.fetch_add(missed, Ordering::Relaxed);
                if self.health.overrunning {
                    debug!(device = %self.config.name, missed, "poll overran its interval; skipped");
                } else {
                    warn!(device = %self.config.name, missed, "poll overran its interval; skipped (further overruns are logged at debug level)");
                }
                self.health.overrunning = true;
                next += interval * missed as u32;
            } else {
                self.health.overrunning = false;
            }
        }
    }

    /// One poll under the device's timeout, stamped and turned into
    /// readings (the `up` reading included); `true` when the device answered.
    async fn poll_once(&mut self) -> (Vec<Reading>, bool) {
        let ts_ns = now_ns();
        let result = tokio::time::timeout(self.config.timeout, self.driver.poll_values()).await;
        let (polled, failure) = match result {
            Ok(Ok(polled)) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                (polled, None)
            }
            Ok(Err(e)) => {
                self.stats.error.fetch_add(1, Ordering::Relaxed);
                debug!(device = %self.config.name, error = %e, "poll failed");
                (self.driver.failed(e.kind, &e.message), Some(e.message))
            }
            Err(_) => {
                self.stats.timeout.fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    "timeout after {}",
                    humantime::format_duration(self.config.timeout)
                );
                debug!(device = %self.config.name, %message, "poll timed out");
                (
                    self.driver.failed(FailureKind::Timeout, &message),
                    Some(message),
                )
            }
        };
        let ok = failure.is_none();
        self.record_health(failure);
        let mut readings = match polled {
            Polled::Readings(mut readings) => {
                for r in &mut readings {
                    r.ts_ns = ts_ns;
                }
                readings
            }
            Polled::Samples(samples) => {
                let mut readings = Vec::with_capacity(samples.len() + 1);
                for s in samples {
                    readings.push(Reading {
                        series: self.intern(s.device, s.metric, s.labels, s.unit),
                        ts_ns,
                        value: s.value,
                    });
                }
                readings
            }
        };
        readings.push(Reading {
            series: self.up.clone(),
            ts_ns,
            value: Value::I64(i64::from(ok)),
        });
        (readings, ok)
    }

    /// Updates the health after a poll and logs a change of state once.
    fn record_health(&mut self, failure: Option<String>) {
        let now = Instant::now();
        let name = &self.config.name;
        let h = &mut self.health;
        match (h.up, failure) {
            (Some(true), None) => {}
            (None, None) => {
                debug!(device = %name, "device up");
                h.up = Some(true);
                h.since = Some(now);
            }
            (Some(false), None) => {
                let down_for = h.since.map(|s| now.duration_since(s)).unwrap_or_default();
                info!(
                    device = %name,
                    down_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                    failed_polls = h.failures,
                    "device up again"
                );
                h.up = Some(true);
                h.since = Some(now);
                h.failures = 0;
            }
            (Some(false), Some(_)) => h.failures = h.failures.saturating_add(1),
            (None | Some(true), Some(cause)) => {
                warn!(device = %name, cause = %cause, "device down (polls back off while it stays down)");
                h.up = Some(false);
                h.since = Some(now);
                h.failures = 1;
            }
        }
    }

    fn intern(
        &mut self,
        device: Option<String>,
        metric: String,
        labels: BTreeMap<String, String>,
        unit: String,
    ) -> Arc<SeriesKey> {
        let key = (device, metric, labels, unit);
        if let Some(s) = self.series.get(&key) {
            return s.clone();
        }
        let series = Arc::new(SeriesKey {
            device: intern(key.0.as_deref().unwrap_or(&self.config.name)),
            metric: intern(&key.1),
            labels: Labels::from_map(&key.2),
            unit: intern(&key.3),
        });
        self.series.insert(key, series.clone());
        series
    }
}

/// Gives the endpoint permit back after `pause`, without holding up the
/// device task.
fn release_after(permit: OwnedSemaphorePermit, pause: Duration) {
    if pause.is_zero() {
        drop(permit);
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::drivers::DriverConfig;
    use crate::drivers::modbus::{
        ModbusConfig, ModbusMetric, RegisterKind, RegisterType, WordOrder,
    };
    use crate::drivers::sim::SimConfig;
    use crate::drivers::tcp::TcpConfig;

    #[test]
    fn start_offsets_fall_on_slots_within_the_interval() {
        for (interval, slot) in [
            (Duration::from_secs(1), Duration::from_millis(10)),
            (Duration::from_millis(20), Duration::from_millis(1)),
            (Duration::from_micros(1500), Duration::from_millis(1)),
            (Duration::from_micros(500), Duration::from_millis(1)),
        ] {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..5000 {
                let offset = start_offset(interval);
                assert!(
                    offset.is_zero() || offset < interval,
                    "{offset:?} of {interval:?}"
                );
                assert_eq!(
                    offset.as_nanos() % slot.as_nanos(),
                    0,
                    "{offset:?} of {interval:?}"
                );
                seen.insert(offset);
            }
            let slots = (interval.as_nanos() / slot.as_nanos()).clamp(1, 100) as usize;
            // Every slot drawn (5000 draws of at most 100 slots).
            assert_eq!(seen.len(), slots, "{interval:?}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs(1);
        let max = Duration::from_secs(10);
        let waits: Vec<u64> = (0..7).map(|f| backoff_delay(s, f, max).as_secs()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff_delay(s, 1000, max), max);
        // A cap below the interval never shortens the interval.
        assert_eq!(backoff_delay(s, 5, Duration::from_millis(10)), s);
    }

    fn device(name: &str, interval_ms: u64, driver: DriverConfig) -> (DeviceConfig, Driver) {
        let config = DeviceConfig {
            name: name.into(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms),
            backoff_max: Duration::from_millis(interval_ms * 4),
            driver,
        };
        let driver = Driver::build(&config).expect("driver");
        (config, driver)
    }

    /// Runs `devices` until `until` says stop, returning every reading.
    async fn run_until(
        devices: Vec<(DeviceConfig, Driver)>,
        mut until: impl FnMut(&[Reading]) -> bool,
    ) -> (Vec<Reading>, Arc<PollStats>) {
        let (tx, mut rx) = mpsc::channel(64);
        let stats = Arc::new(PollStats::default());
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        spawn_all(devices, 8, tx, stats.clone(), &tracker, shutdown.clone());
        tracker.close();
        let mut all = Vec::new();
        while let Some(batch) = rx.recv().await {
            all.extend(batch);
            if until(&all) {
                break;
            }
        }
        shutdown.cancel();
        drop(rx);
        tracker.wait().await;
        (all, stats)
    }

    fn values(readings: &[Reading], device: &str, metric: &str) -> Vec<Value> {
        readings
            .iter()
            .filter(|r| &*r.series.device == device && &*r.series.metric == metric)
            .map(|r| r.value.clone())
            .collect()
    }

    #[tokio::test]
    async fn up_series_follows_a_device_that_fails_and_recovers() {
        // A TCP endpoint that is closed at first, then listens.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let tcp = DriverConfig::Tcp(TcpConfig {
            address: addr.to_string(),
            send: None,
            expect: None,
        });
        let sim = DriverConfig::Sim(SimConfig { series: 0 });
        let mut listener = None;
        let (all, stats) = run_until(
            vec![device("gate", 20, tcp), device("sim", 20, sim)],
            |all| {
                let up = values(all, "gate", UP_METRIC);
                if up.len() == 4 && listener.is_none() {
                    // Four failures in a row: now it comes back.
                    listener = Some(std::net::TcpListener::bind(addr).expect("rebind"));
                }
                up.last() == Some(&Value::I64(1)) && up.len() >= 6
            },
        )
        .await;
        let up = values(&all, "gate", UP_METRIC);
        let first_up = up
            .iter()
            .position(|v| *v == Value::I64(1))
            .expect("recovered");
        assert!(first_up >= 4, "{up:?}");
        assert!(up[..first_up].iter().all(|v| *v == Value::I64(0)), "{up:?}");
        // The failed polls carry the cause on the device's metric.
        let connect = values(&all, "gate", "connect_seconds");
        assert!(
            matches!(&connect[0], Value::Failed { message, .. } if message.contains("connection refused")),
            "{connect:?}"
        );
        assert!(stats.backed_off.load(Ordering::Relaxed) > 0);
        // Every poll's lateness was recorded, the two first polls apart.
        let polls: u64 = [&stats.ok, &stats.error, &stats.timeout]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        assert_eq!(stats.first_lateness.count(), 2);
        assert_eq!(stats.lateness.count() + 2, polls);
        let summary = stats.summary();
        assert!(summary.lateness_p50 <= summary.lateness_p99);
        assert!(summary.lateness_p99 <= summary.lateness_max);
        // The healthy device is up on every poll.
        assert!(
            values(&all, "sim", UP_METRIC)
                .iter()
                .all(|v| *v == Value::I64(1))
        );
    }

    #[tokio::test]
    async fn shared_gateway_sees_one_poll_at_a_time_with_pauses() {
        // A Modbus TCP "gateway" that records how many requests overlap and
        // the quiet time between them.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let active = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        // The test's fake gateway records timings from its own tasks; a
        // lock is fine here, outside the agent's data path.
        let last_end = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
        let min_gap = Arc::new(std::sync::Mutex::new(Duration::MAX));
        {
            let (active, max_active, last_end, min_gap) = (
                active.clone(),
                max_active.clone(),
                last_end.clone(),
                min_gap.clone(),
            );
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    let (active, max_active, last_end, min_gap) = (
                        active.clone(),
                        max_active.clone(),
                        last_end.clone(),
                        min_gap.clone(),
                    );
                    tokio::spawn(async move {
                        let mut head = [0u8; 12];
                        while sock.read_exact(&mut head).await.is_ok() {
                            let n = active.fetch_add(1, Ordering::SeqCst) + 1;
                            max_active.fetch_max(n, Ordering::SeqCst);
                            if let Ok(mut last) = last_end.lock()
                                && let Some(t) = *last
                            {
                                let gap = t.elapsed();
                                if let Ok(mut g) = min_gap.lock() {
                                    *g = (*g).min(gap);
                                }
                                *last = None;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            let reply = [head[0], head[1], 0, 0, 0, 5, head[6], head[7], 2, 0, 42];
                            active.fetch_sub(1, Ordering::SeqCst);
                            if let Ok(mut last) = last_end.lock() {
                                *last = Some(std::time::Instant::now());
                            }
                            if sock.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        let modbus = |unit_id| {
            DriverConfig::Modbus(ModbusConfig {
                address: addr.to_string(),
                unit_id,
                metrics: vec![ModbusMetric {
                    name: "v".into(),
                    register: 0,
                    kind: RegisterKind::Holding,
                    data_type: RegisterType::U16,
                    word_order: WordOrder::Big,
                    scale: 1.0,
                    unit: String::new(),
                }],
                max_concurrency: 1,
                connect_delay: Duration::from_millis(1),
                request_pause: Duration::from_millis(15),
            })
        };
        // A generous timeout: a poll cancelled mid-request would let the
        // next one start before the gateway answered the first.
        let devices = (1..=4u8)
            .map(|u| {
                let (mut config, driver) = device(&format!("m{u}"), 20, modbus(u));
                config.timeout = Duration::from_secs(5);
                (config, driver)
            })
            .collect();
        let (all, _) = run_until(devices, |all| {
            (1..=4).all(|u| values(all, &format!("m{u}"), "v").len() >= 3)
        })
        .await;
        for u in 1..=4 {
            assert!(values(&all, &format!("m{u}"), "v").contains(&Value::I64(42)));
        }
        assert_eq!(
            max_active.load(Ordering::SeqCst),
            1,
            "one request at a time"
        );
        let gap = *min_gap.lock().expect("lock");
        assert!(
            gap >= Duration::from_millis(15),
            "pause between requests: {gap:?}"
        );
    }
}
