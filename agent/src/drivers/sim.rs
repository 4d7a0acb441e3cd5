//! The simulated device: the ground truth of every delivery test.
//!
//! Metric `counter` is 1 on the first poll and rises by exactly one on every
//! poll after it, never skipping or repeating: a poll has no await point, so
//! it either runs to completion or does not start. `series = N` adds N
//! synthetic gauges, metric `gauge` with label `i` = "0".."N-1".

use std::collections::BTreeMap;

use crate::config::SimConfig;
use crate::reading::{Sample, Value};

/// State of one simulated device.
#[derive(Debug)]
pub struct SimDriver {
    /// The value of `counter` at the last poll (0 before the first).
    counter: i64,
    series: u32,
}

impl SimDriver {
    pub fn new(cfg: &SimConfig) -> Self {
        SimDriver {
            counter: 0,
            series: cfg.series,
        }
    }

    /// One poll: the next counter value and the gauges. Synchronous on
    /// purpose, see the module doc.
    pub fn poll(&mut self) -> Vec<Sample> {
        self.counter += 1;
        let n = self.counter;
        let mut out = Vec::with_capacity(1 + self.series as usize);
        out.push(Sample::new("counter", Value::I64(n)));
        for i in 0..self.series {
            let mut labels = BTreeMap::new();
            labels.insert("i".to_owned(), i.to_string());
            out.push(Sample {
                labels,
                ..Sample::new("gauge", Value::F64(gauge_value(n, i)))
            });
        }
        out
    }

    /// `counter`, plus `gauge` when there are gauges.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names = vec!["counter".to_owned()];
        if self.series > 0 {
            names.push("gauge".to_owned());
        }
        names
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

    #[test]
    fn counter_counts_one_two_three() {
        let mut sim = SimDriver::new(&SimConfig { series: 0 });
        for expected in 1..=1000 {
            let samples = sim.poll();
            assert_eq!(samples, vec![Sample::new("counter", Value::I64(expected))]);
        }
        assert_eq!(sim.metric_names(), vec!["counter"]);
    }

    #[test]
    fn gauges_are_labelled_and_deterministic() {
        let mut a = SimDriver::new(&SimConfig { series: 3 });
        let mut b = SimDriver::new(&SimConfig { series: 3 });
        let (first, again) = (a.poll(), b.poll());
        assert_eq!(first, again);
        assert_eq!(first.len(), 4);
        assert_eq!(first[0].value, Value::I64(1));
        for (i, s) in first[1..].iter().enumerate() {
            assert_eq!(s.metric, "gauge");
            assert_eq!(s.labels.get("i"), Some(&i.to_string()));
            assert!(matches!(s.value, Value::F64(v) if v.is_finite()));
        }
        assert_eq!(a.metric_names(), vec!["counter", "gauge"]);
    }
}
