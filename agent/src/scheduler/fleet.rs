//! [`Fleet`]: the running device tasks, by device name, so a reloaded
//! configuration is applied by difference: added devices start, removed
//! ones stop after their poll in flight, changed ones stop and then start
//! again with the new settings, and unchanged ones are not touched (their
//! schedule, backoff and series continue). The uplink, the spool and the
//! stream are elsewhere and never see a reload.
//!
//! Owned by the agent's main task, which alone applies reloads; each device
//! task still owns its own state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::device::DeviceTask;
use super::endpoint::{Endpoint, endpoints};
use super::{PollStats, ReadingsTx};
use crate::config::DeviceConfig;
use crate::drivers::Driver;
use crate::metrics::SchedulerMetrics;

/// One running device.
struct Running {
    config: DeviceConfig,
    /// Stops this device only (a child of the agent's shutdown).
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What a reload changed, by device count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetDiff {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub unchanged: usize,
}

/// A reload's device whose driver could not be built (nothing was applied).
#[derive(Debug, thiserror::Error)]
#[error("device {device}: {cause}")]
pub struct StartError {
    pub device: String,
    /// In the message, so not a `source()` (each cause once).
    pub cause: crate::drivers::BuildError,
}

/// The device tasks of an agent, by name.
pub struct Fleet {
    /// Boxed: a `DeviceConfig` is about 400 bytes, and a map sized for
    /// 10,000 devices has 16,384 slots, so held inline the empty ones cost
    /// 2.4 MiB (`bench poll`'s config).
    running: HashMap<String, Box<Running>>,
    /// Tasks of removed devices, still finishing their poll in flight (kept
    /// until they end): a device added again under the same name starts
    /// after its old task has ended, as a changed one does.
    stopping: HashMap<String, JoinHandle<()>>,
    permits: Arc<Semaphore>,
    endpoints: HashMap<String, Endpoint>,
    /// Every schedule is laid out from this instant; a device a reload
    /// starts begins at its first slot after the reload.
    start: Instant,
    max_series: usize,
    out: ReadingsTx,
    stats: Arc<PollStats>,
    metrics: Option<Arc<SchedulerMetrics>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Fleet {
    /// Starts one task per device on `tracker` (see [`super::spawn_all`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        devices: Vec<(DeviceConfig, Driver)>,
        max_concurrency: usize,
        max_series: usize,
        out: impl Into<ReadingsTx>,
        stats: Arc<PollStats>,
        metrics: Option<Arc<SchedulerMetrics>>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Fleet {
        let mut fleet = Fleet {
            running: HashMap::with_capacity(devices.len()),
            stopping: HashMap::new(),
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
            endpoints: endpoints(devices.iter().map(|(c, _)| c)),
            start: Instant::now(),
            max_series,
            out: out.into(),
            stats,
            metrics,
            tracker,
            shutdown,
        };
        for (config, driver) in devices {
            let name = config.name.clone();
            let running = fleet.spawn_after(config, driver, None, false);
            fleet.running.insert(name, running);
        }
        fleet
    }

    /// The limits of the endpoint `key` (concurrency, pause), if a device uses it.
    #[cfg(test)]
    pub(super) fn endpoint_limits(&self, key: &str) -> Option<(usize, std::time::Duration)> {
        self.endpoints
            .get(key)
            .map(|e| (e.max_concurrency, e.pause))
    }

    /// Devices running.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Applies a new device list (names unique, as a valid config has them).
    ///
    /// Devices are compared by their parsed config; a driver is built only
    /// for a device that starts (added, or changed), and all of them are
    /// built before anything changes: a driver that cannot be built leaves
    /// the fleet as it runs.
    pub fn apply(&mut self, devices: Vec<DeviceConfig>) -> Result<FleetDiff, StartError> {
        let mut diff = FleetDiff::default();
        // An endpoint whose limits are the same keeps its permits; one
        // whose limits changed gets new ones, and every device on it
        // restarts (as changed) to use them. Endpoints no device uses any
        // more are dropped.
        let mut renewed: HashSet<String> = HashSet::new();
        let mut next_endpoints = endpoints(devices.iter());
        for (key, endpoint) in next_endpoints.iter_mut() {
            match self.endpoints.get(key) {
                Some(old) if old.same_limits(endpoint) => *endpoint = old.clone(),
                Some(_) => {
                    renewed.insert(key.clone());
                }
                None => {}
            }
        }
        // The plan: `None` for an unchanged device, its new driver for one
        // that starts.
        let mut plan: Vec<(DeviceConfig, Option<Driver>)> = Vec::with_capacity(devices.len());
        for config in devices {
            let unchanged = self.running.get(&config.name).is_some_and(|old| {
                old.config == config
                    && !config
                        .driver
                        .endpoint()
                        .is_some_and(|l| renewed.contains(&l.key))
            });
            let driver = if unchanged {
                None
            } else {
                Some(Driver::build(&config).map_err(|cause| StartError {
                    device: config.name.clone(),
                    cause,
                })?)
            };
            plan.push((config, driver));
        }

        self.endpoints = next_endpoints;
        self.stopping.retain(|_, task| !task.is_finished());
        self.out.grow_to(plan.len());
        let mut keep: HashMap<String, Box<Running>> = HashMap::with_capacity(plan.len());
        for (config, driver) in plan {
            let old = self.running.remove(&config.name);
            let name = config.name.clone();
            let running = match (old, driver) {
                (Some(old), None) => {
                    diff.unchanged += 1;
                    old
                }
                (Some(old), Some(driver)) => {
                    diff.changed += 1;
                    old.stop.cancel();
                    self.spawn_after(config, driver, Some(old.task), true)
                }
                (None, Some(driver)) => {
                    diff.added += 1;
                    let previous = self.stopping.remove(&config.name);
                    self.spawn_after(config, driver, previous, true)
                }
                // Only a running device is unchanged.
                (None, None) => continue,
            };
            keep.insert(name, running);
        }
        for (name, old) in self.running.drain() {
            diff.removed += 1;
            // Its poll in flight finishes and is handed over; no new one
            // starts. Its series leave the agent's /metrics now (what the
            // poll in flight adds goes to handles no scrape reads).
            old.stop.cancel();
            if let Some(m) = &self.metrics {
                m.remove_device(&name);
            }
            self.stopping.insert(name, old.task);
        }
        self.running = keep;
        Ok(diff)
    }

    /// The room of the channel to the uplink (polls that may wait there).
    pub fn intake_room(&self) -> usize {
        self.out.room()
    }

    /// Starts a device task, once `after` (the task it replaces) has ended;
    /// `reloaded` when a reload starts it (it begins at its first slot
    /// from then, not from the agent's start).
    fn spawn_after(
        &self,
        config: DeviceConfig,
        driver: Driver,
        after: Option<JoinHandle<()>>,
        reloaded: bool,
    ) -> Box<Running> {
        let endpoint = config
            .driver
            .endpoint()
            .and_then(|l| self.endpoints.get(&l.key).cloned());
        let device_metrics = self
            .metrics
            .as_ref()
            .map(|m| m.device(&config.name, config.driver.name()));
        let task = DeviceTask::new(
            config.clone(),
            driver,
            self.max_series,
            self.permits.clone(),
            endpoint,
            self.out.clone(),
            self.stats.clone(),
        )
        .with_metrics(device_metrics);
        let stop = self.shutdown.child_token();
        let start = self.start;
        let run = task.run(start, reloaded, stop.clone());
        // The device's future is the task itself unless it must wait for
        // an old task: an async block around `run` would hold the device
        // task twice (the value moved in and the future made from it), and
        // tokio allocates every task 128-byte aligned, so at 10,000 devices
        // the wrapper cost ~30 MiB (massif, `bench poll`'s config).
        let task = match after {
            None => self.tracker.spawn(run),
            Some(previous) => self.tracker.spawn(async move {
                // A panic of the old task was already reported by it.
                let _ = previous.await;
                run.await;
            }),
        };
        Box::new(Running { config, stop, task })
    }
}
