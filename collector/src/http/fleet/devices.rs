//! A device's health, derived from what its agent reports with every poll:
//! the `up` series (1 when the device answered, 0 when the poll failed or
//! timed out; see the agent's scheduler) and, on a failed poll, readings of
//! the device's series that carry the failure (`timeout` or `error`) and its
//! message, stamped with the same time as that `up` reading.
//!
//! The same rule serves the page's first load (the newest stored points)
//! and its live updates (the points of one commit).

use std::collections::BTreeMap;

use serde::Serialize;

use super::json::outcome_of;
use crate::model::{CommittedChunk, Point, StoredValue};

/// The metric of the health series the agent adds to every device
/// (`tributary_agent::scheduler::UP_METRIC`).
pub const UP_METRIC: &str = "up";

/// A device as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct DeviceJson {
    pub agent: String,
    pub device: String,
    /// How many series it has (absent in live updates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<usize>,
    #[serde(flatten)]
    pub health: Health,
}

/// Up or down, and the last poll's outcome and cause.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// `None` when the device has no `up` reading (yet).
    pub up: Option<bool>,
    /// Device time of the last poll seen, ns.
    pub last_poll_ns: Option<String>,
    /// `ok`, `timeout`, `error`, or `unknown` (nothing seen).
    pub outcome: &'static str,
    /// Why the last poll failed, as the agent said.
    pub cause: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: None,
            last_poll_ns: None,
            outcome: "unknown",
            cause: None,
        }
    }
}

/// The health shown for a device whose newest `up` point is `up` and
/// whose newest failed readings are `failures` (any order).
pub fn health<'a>(up: Option<&Point>, failures: impl IntoIterator<Item = &'a Point>) -> Health {
    let failures: Vec<&Point> = failures
        .into_iter()
        .filter(|p| is_failure(&p.value))
        .collect();
    match up {
        Some(up) => {
            let answered = match up.value {
                StoredValue::I64(v) => v != 0,
                StoredValue::U64(v) => v != 0,
                StoredValue::F64(v) => v != 0.0,
                StoredValue::Bool(v) => v,
                _ => false,
            };
            let mut health = Health {
                up: Some(answered),
                last_poll_ns: Some(up.ts_ns.to_string()),
                outcome: "ok",
                cause: None,
            };
            if !answered {
                // The readings of the failed poll carry its time.
                match failures.iter().find(|f| f.ts_ns == up.ts_ns) {
                    Some(f) => {
                        health.outcome = outcome_of(&f.value);
                        health.cause = message(&f.value);
                    }
                    None => health.outcome = "error",
                }
            }
            health
        }
        None => match failures.iter().max_by_key(|f| f.ts_ns) {
            Some(f) => Health {
                up: None,
                last_poll_ns: Some(f.ts_ns.to_string()),
                outcome: outcome_of(&f.value),
                cause: message(&f.value),
            },
            None => Health::default(),
        },
    }
}

fn is_failure(v: &StoredValue) -> bool {
    matches!(v, StoredValue::Timeout(_) | StoredValue::Error(_))
}

fn message(v: &StoredValue) -> Option<String> {
    match v {
        StoredValue::Timeout(m) | StoredValue::Error(m) => Some(m.clone()),
        _ => None,
    }
}

/// The devices whose health one commit tells something about (an `up`
/// reading or a failed one), each with what it tells.
pub fn updates(commit: &[CommittedChunk]) -> Vec<DeviceJson> {
    #[derive(Default)]
    struct Seen<'a> {
        up: Option<&'a Point>,
        failures: Vec<&'a Point>,
    }
    let mut by_device: BTreeMap<(&str, &str), Seen<'_>> = BTreeMap::new();
    for chunk in commit {
        let key = &chunk.series.key;
        let is_up = key.metric == UP_METRIC && key.labels.is_empty();
        let failures: Vec<&Point> = chunk
            .points
            .iter()
            .filter(|p| is_failure(&p.value))
            .collect();
        if !is_up && failures.is_empty() {
            continue;
        }
        let seen = by_device
            .entry((key.agent.as_str(), key.device.as_str()))
            .or_default();
        if is_up
            && let Some(newest) = chunk.points.iter().max_by_key(|p| p.ts_ns)
            && seen.up.is_none_or(|u| u.ts_ns <= newest.ts_ns)
        {
            seen.up = Some(newest);
        }
        seen.failures.extend(failures);
    }
    by_device
        .into_iter()
        .map(|((agent, device), seen)| DeviceJson {
            agent: agent.to_owned(),
            device: device.to_owned(),
            series: None,
            health: health(seen.up, seen.failures),
        })
        .collect()
}
