//! Shared endpoints (a Modbus gateway serving many devices): one semaphore
//! per endpoint key, and the pause after each poll before its permit is
//! given back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::DeviceConfig;

/// A shared endpoint: its semaphore and the pause after each poll.
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) permits: Arc<Semaphore>,
    pub(super) pause: Duration,
    /// Polls in flight at once (the semaphore's size).
    pub(super) max_concurrency: usize,
}

impl Endpoint {
    /// Whether `other` has the same limits (a reload keeps this one then).
    pub(super) fn same_limits(&self, other: &Endpoint) -> bool {
        self.max_concurrency == other.max_concurrency && self.pause == other.pause
    }
}

/// One [`Endpoint`] per key, with the smallest concurrency and the longest
/// pause any device sharing it asks for.
pub(super) fn endpoints<'a>(
    configs: impl Iterator<Item = &'a DeviceConfig>,
) -> HashMap<String, Endpoint> {
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
                max_concurrency: n.max(1),
            };
            (key, endpoint)
        })
        .collect()
}

/// Gives the endpoint permit back after `pause`, without holding up the
/// device task.
pub(super) fn release_after(permit: OwnedSemaphorePermit, pause: Duration) {
    if pause.is_zero() {
        drop(permit);
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            drop(permit);
        });
    }
}
