//! The simulated device: the ground truth of every delivery test.
//!
//! Metric `counter` is 1 on the first poll and rises by exactly one on every
//! poll after it, never skipping or repeating: a poll has no await point, so
//! it either runs to completion or does not start. `series = N` adds N
//! synthetic gauges, metric `gauge` with label `i` = "0".."N-1".
//!
//! Owns: the counter of one device and its series (`config.rs`: its
//! settings). May touch: `crate::reading` only.

use std::collections::BTreeMap;
use std::sync::Arc;

mod config;

pub use self::config::SimConfig;

use super::{BuildError, PollError, Poller};
use crate::config::DeviceConfig;
use crate::reading::{FailureKind, Polled, Reading, SeriesKey, Value, series, series_with};

/// State of one simulated device.
#[derive(Debug)]
pub struct SimDriver {
    /// The value of `counter` at the last poll (0 before the first).
    counter: i64,
    /// `counter`, then gauge `i` at index `1 + i`: built once.
    series: Vec<Arc<SeriesKey>>,
}

impl SimDriver {
    pub fn new(cfg: &SimConfig, device: &str) -> Self {
        let mut all = Vec::with_capacity(1 + cfg.series as usize);
        all.push(series(device, "counter", ""));
        for i in 0..cfg.series {
            let labels = BTreeMap::from([("i".to_owned(), i.to_string())]);
            all.push(series_with(device, "gauge", &labels, ""));
        }
        SimDriver {
            counter: 0,
            series: all,
        }
    }

    /// One poll: the next counter value and the gauges, unstamped (with
    /// room for the scheduler's `up`). Synchronous on purpose, see the
    /// module doc.
    pub fn poll(&mut self) -> Vec<Reading> {
        self.counter += 1;
        let n = self.counter;
        let mut out = Vec::with_capacity(self.series.len() + 1);
        for (i, s) in self.series.iter().enumerate() {
            let value = match i {
                0 => Value::I64(n),
                _ => Value::F64(gauge_value(n, (i - 1) as u32)),
            };
            out.push(Reading::unstamped(s, value));
        }
        out
    }

    /// One failed reading per series (a failed poll of the same metrics).
    pub fn failed(&self, kind: FailureKind, message: &str) -> Vec<Reading> {
        let mut out = Vec::with_capacity(self.series.len() + 1);
        out.extend(self.series.iter().map(|s| {
            Reading::unstamped(
                s,
                Value::Failed {
                    kind,
                    message: message.to_owned(),
                },
            )
        }));
        out
    }
}

impl Poller for SimDriver {
    type Settings = SimConfig;

    fn build(settings: &SimConfig, device: &DeviceConfig) -> Result<Self, BuildError> {
        Ok(SimDriver::new(settings, &device.name))
    }

    /// Inline: the future holds no more than `self`.
    async fn poll(&mut self) -> Result<Polled, PollError> {
        Ok(Polled::Readings(SimDriver::poll(self)))
    }

    fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        Polled::Readings(SimDriver::failed(self, kind, message))
    }
}

/// A deterministic wave per gauge: gauge `i` at poll `n`.
fn gauge_value(n: i64, i: u32) -> f64 {
    let phase = f64::from(i) * 0.7;
    100.0 + 50.0 * ((n as f64) * 0.1 + phase).sin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Polled, Sample};

    fn poll(sim: &mut SimDriver) -> Vec<Sample> {
        Polled::Readings(sim.poll()).into_samples()
    }

    #[test]
    fn counter_counts_one_two_three() {
        let mut sim = SimDriver::new(&SimConfig { series: 0 }, "s");
        for expected in 1..=1000 {
            assert_eq!(
                poll(&mut sim),
                vec![Sample::new("counter", Value::I64(expected))]
            );
        }
    }

    #[test]
    fn gauges_are_labelled_and_deterministic() {
        let mut a = SimDriver::new(&SimConfig { series: 3 }, "s");
        let mut b = SimDriver::new(&SimConfig { series: 3 }, "s");
        let (first, again) = (poll(&mut a), poll(&mut b));
        assert_eq!(first, again);
        assert_eq!(first.len(), 4);
        assert_eq!(first[0].value, Value::I64(1));
        for (i, s) in first[1..].iter().enumerate() {
            assert_eq!(s.metric, "gauge");
            assert_eq!(s.labels.get("i"), Some(&i.to_string()));
            assert!(matches!(s.value, Value::F64(v) if v.is_finite()));
        }
    }

    #[test]
    fn polls_share_the_series_built_once() {
        let mut sim = SimDriver::new(&SimConfig { series: 2 }, "s");
        let (first, second) = (sim.poll(), sim.poll());
        for (a, b) in first.iter().zip(&second) {
            assert!(Arc::ptr_eq(&a.series, &b.series));
        }
        let failed = sim.failed(FailureKind::Timeout, "t");
        assert!(Arc::ptr_eq(&failed[2].series, &first[2].series));
        assert_eq!(failed.len(), 3);
    }
}
