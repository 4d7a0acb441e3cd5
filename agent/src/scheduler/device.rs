//! One device's task: waits for its slot, takes the endpoint's and the
//! agent's permits, polls under the device's timeout, turns the result into
//! readings (with the `up` reading), hands them to the uplink, tracks the
//! device's health and backs off while it keeps failing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::endpoint::{Endpoint, release_after};
use super::series_limit::SeriesLimit;
use super::timing::{backoff_delay, first_slot_from, start_offset};
use super::{PollStats, ReadingsTx, SERIES_DROPPED_METRIC, UP_METRIC};
use crate::config::DeviceConfig;
use crate::drivers::Driver;
use crate::metrics::{DeviceMetrics, Outcome};
use crate::reading::{
    FailureKind, Labels, Polled, Reading, SeriesKey, Value, intern, now_ns, series,
};

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

pub(super) struct DeviceTask {
    config: Schedule,
    driver: Driver,
    /// Series of drivers that return named samples, interned so readings
    /// share one `Arc` (drivers that resolve their own series skip this);
    /// at most as many as the series limit lets through.
    series: HashMap<LocalKey, Arc<SeriesKey>>,
    /// Which series pass `max_series_per_device`.
    limit: SeriesLimit,
    /// The device's own labels, added to each of its series; `None` when
    /// it has none. Boxed, as `metrics` is: inline, the two made every
    /// device's task 88 bytes larger, labels or metrics or not (see `run`).
    relabel: Option<Box<DeviceLabels>>,
    /// The device's `up` series.
    up: Arc<SeriesKey>,
    /// The device's `series_dropped_total` series (sent once it drops).
    series_dropped: Arc<SeriesKey>,
    permits: Arc<Semaphore>,
    endpoint: Option<Endpoint>,
    out: ReadingsTx,
    stats: Arc<PollStats>,
    /// The device's metric handles, when metrics are on.
    metrics: Option<Box<DeviceMetrics>>,
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

impl DeviceTask {
    /// The task of one device; the task keeps the schedule, the driver holds
    /// what it needs of the protocol settings. At most `max_series`
    /// distinct series of the device pass (its own included).
    pub(super) fn new(
        config: DeviceConfig,
        driver: Driver,
        max_series: usize,
        permits: Arc<Semaphore>,
        endpoint: Option<Endpoint>,
        out: ReadingsTx,
        stats: Arc<PollStats>,
    ) -> Self {
        let DeviceConfig {
            name,
            interval,
            timeout,
            backoff_max,
            labels,
            driver: _,
        } = config;
        let mut relabel = DeviceLabels::new(labels).map(Box::new);
        let up = series(&name, UP_METRIC, "");
        let series_dropped = series(&name, SERIES_DROPPED_METRIC, "");
        DeviceTask {
            up: relabel.as_mut().map_or(up.clone(), |r| r.apply(&up)),
            series_dropped: relabel
                .as_mut()
                .map_or(series_dropped.clone(), |r| r.apply(&series_dropped)),
            relabel,
            limit: SeriesLimit::new(max_series),
            config: Schedule {
                name,
                interval,
                timeout,
                backoff_max,
            },
            driver,
            series: HashMap::new(),
            permits,
            endpoint,
            out,
            stats,
            metrics: None,
            health: Health::default(),
        }
    }

    /// Updates `metrics` as it polls.
    pub(super) fn with_metrics(mut self, metrics: Option<DeviceMetrics>) -> Self {
        self.metrics = metrics.map(Box::new);
        self
    }

    /// Polls from `start` (the agent's) on the device's slot; a task
    /// `reloaded` into a running agent begins at its first slot from now,
    /// so the agent's uptime before it counts as neither lateness nor
    /// skipped polls.
    ///
    /// A plain `fn` returning an `async move` block, not an `async fn`: an
    /// `async fn` keeps its arguments in its future and moves `self` into a
    /// local of its body as well, so every device task held its 448-byte
    /// `DeviceTask` twice. The block uses the captured task in place: the
    /// future went from 1,440 to 984 bytes (`size_of_val`, debug build), 896
    /// with `relabel` and `metrics` boxed; tokio's 128-byte-aligned task cell
    /// went from 1,664 to 1,024 bytes (heaptrack, release build).
    // Not an `async fn` on purpose (see above), which clippy suggests.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run(
        mut self,
        start: Instant,
        reloaded: bool,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let interval = self.config.interval;
            let mut next = start + start_offset(interval);
            if reloaded {
                next = first_slot_from(next, interval, Instant::now());
            }
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
                if let Some(m) = &self.metrics {
                    m.late(late);
                }
                // Boxed: the driver's poll future is the largest state of this
                // task, and held inline it would make every idle device's task
                // that large between polls (10,000 devices: tens of MiB).
                let (readings, ok) = Box::pin(self.poll_once()).await;
                drop(permit);
                if let Some((p, pause)) = endpoint_permit {
                    release_after(p, pause);
                }
                // Hand the readings over; at shutdown wait a bounded time for
                // room (a spool that blocks when full may never make any).
                let slot = tokio::select! {
                    biased;
                    slot = self.out.reserve() => slot,
                    _ = &mut cancelled => {
                        tokio::time::timeout(SHUTDOWN_HANDOVER, self.out.reserve())
                            .await
                            .ok()
                            .flatten()
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
                    let wait =
                        backoff_delay(interval, self.health.failures, self.config.backoff_max);
                    let extra = (wait.as_nanos() / interval.as_nanos().max(1)).saturating_sub(1);
                    self.stats
                        .backed_off
                        .fetch_add(extra as u64, Ordering::Relaxed);
                    wait
                };
                if let Some(m) = &self.metrics {
                    m.backoff(wait.saturating_sub(interval));
                }
                next += wait;
                let now = Instant::now();
                if next <= now {
                    // The poll overran: the ticks that passed are skipped.
                    let behind = now.duration_since(next);
                    let missed = 1 + (behind.as_nanos() / interval.as_nanos().max(1)) as u64;
                    self.stats.skipped.fetch_add(missed, Ordering::Relaxed);
                    if let Some(m) = &self.metrics {
                        m.skipped(missed);
                    }
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
    }

    /// One poll under the device's timeout, stamped and turned into
    /// readings (the `up` reading included); `true` when the device answered.
    async fn poll_once(&mut self) -> (Vec<Reading>, bool) {
        let ts_ns = now_ns();
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.timeout, self.driver.poll_values()).await;
        // One clock read for the poll's duration and the health's.
        let ended = Instant::now();
        if let Some(m) = &self.metrics {
            let outcome = match &result {
                Ok(Ok(_)) => Outcome::Ok,
                Ok(Err(_)) => Outcome::Error,
                Err(_) => Outcome::Timeout,
            };
            m.polled(outcome, ended.saturating_duration_since(started));
        }
        let mut refused_total = 0;
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
        self.record_health(failure, ended);
        let mut readings = match polled {
            Polled::Readings(mut readings) => {
                // A driver that knows when a value was true (a notification
                // received between polls) stamps it itself.
                for r in readings.iter_mut().filter(|r| r.ts_ns == 0) {
                    r.ts_ns = ts_ns;
                }
                readings
            }
            Polled::Samples(samples) => {
                let mut readings = Vec::with_capacity(samples.len() + 2);
                let mut refused = 0;
                for s in samples {
                    match self.intern(s.device, s.metric, s.labels, s.unit) {
                        Some(series) => readings.push(Reading {
                            series,
                            ts_ns,
                            value: s.value,
                        }),
                        None => refused += 1,
                    }
                }
                self.limit.count_dropped(&self.config.name, refused);
                self.stats
                    .series_dropped
                    .fetch_add(refused, Ordering::Relaxed);
                refused_total = refused;
                readings
            }
        };
        let dropped = self.limit.admit(&self.config.name, &mut readings);
        if let Some(relabel) = &mut self.relabel {
            relabel.bound(self.limit.max());
            for r in &mut readings {
                r.series = relabel.apply(&r.series);
            }
        }
        self.stats
            .series_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        readings.push(Reading {
            series: self.up.clone(),
            ts_ns,
            value: Value::I64(i64::from(ok)),
        });
        if self.limit.dropped() > 0 {
            readings.push(Reading {
                series: self.series_dropped.clone(),
                ts_ns,
                value: Value::I64(i64::try_from(self.limit.dropped()).unwrap_or(i64::MAX)),
            });
        }
        if let Some(m) = &self.metrics {
            m.produced(readings.len(), refused_total + dropped);
        }
        (readings, ok)
    }

    /// Updates the health after a poll that ended `now` and logs a change
    /// of state once.
    // Not inlined: `tests/src/bench/metrics-cost.sh` counts polls by its calls.
    #[inline(never)]
    fn record_health(&mut self, failure: Option<String>, now: Instant) {
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

    /// The series of a sample, built once; `None` when it is new and the
    /// device has reached its series limit (so the cache stays within it).
    fn intern(
        &mut self,
        device: Option<String>,
        metric: String,
        labels: BTreeMap<String, String>,
        unit: String,
    ) -> Option<Arc<SeriesKey>> {
        let key = (device, metric, labels, unit);
        if let Some(s) = self.series.get(&key) {
            return Some(s.clone());
        }
        if self.series.len() >= self.limit.max() {
            return None;
        }
        let series = Arc::new(SeriesKey {
            device: intern(key.0.as_deref().unwrap_or(&self.config.name)),
            metric: intern(&key.1),
            labels: Labels::from_map(&key.2),
            unit: intern(&key.3),
        });
        self.series.insert(key, series.clone());
        Some(series)
    }
}

/// A device's `labels`, added to each series of the device (a label the
/// driver set itself wins). The labelled series is made once per series:
/// cached by the address of the driver's series, whose `Arc` the cache
/// holds so the address cannot be reused by another series.
struct DeviceLabels {
    labels: BTreeMap<String, String>,
    cache: HashMap<usize, (Arc<SeriesKey>, Arc<SeriesKey>)>,
}

impl DeviceLabels {
    fn new(labels: BTreeMap<String, String>) -> Option<Self> {
        (!labels.is_empty()).then(|| DeviceLabels {
            labels,
            cache: HashMap::new(),
        })
    }

    /// `series` with the device's labels.
    fn apply(&mut self, series: &Arc<SeriesKey>) -> Arc<SeriesKey> {
        let at = Arc::as_ptr(series) as usize;
        if let Some((_, labelled)) = self.cache.get(&at) {
            return labelled.clone();
        }
        let mut map = series.labels.to_map();
        for (k, v) in &self.labels {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let labelled = Arc::new(SeriesKey {
            labels: Labels::from_map(&map),
            ..(**series).clone()
        });
        self.cache.insert(at, (series.clone(), labelled.clone()));
        labelled
    }

    /// Keeps the cache within a few times the device's series limit (a
    /// driver that made new series each poll would grow it otherwise).
    fn bound(&mut self, max_series: usize) {
        if self.cache.len() > max_series.saturating_mul(2).max(64) {
            self.cache.clear();
        }
    }
}
