//! [`Steps`]: the samples of one expression evaluated at successive times,
//! gathered into series by labels (a range query's steps, a subquery's).
//!
//! At each step the evaluation mostly gives the same series in the same
//! order, often with labels that are the very same `Arc` (a selector's
//! cached labels): a sample whose labels are those of the sample at its
//! position in the step before (the same `Arc`, else compared by value)
//! goes to that series without hashing its labels. Any other sample is
//! looked up by hash, so the answer is the same whatever order the
//! evaluation hands the series out in.

use crate::promql::FastMap;
use std::sync::Arc;

use super::types::{Labels, Sample, Series};

/// Series built step by step.
#[derive(Debug, Default)]
pub struct Steps {
    /// Each series' slot in `series`, by labels.
    slots: FastMap<Arc<Labels>, usize>,
    series: Vec<Series>,
    /// The slot of each sample of the step before, by position.
    last: Vec<usize>,
}

impl Steps {
    /// Adds the samples of the step at `t`.
    pub fn push_vector(&mut self, t: i64, samples: &[Sample]) {
        let mut now = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            let slot = match self.last.get(i) {
                // `Arc`'s `==` is a pointer check first, then by value.
                Some(&slot) if self.series[slot].labels == s.labels => slot,
                _ => self.slot(&s.labels),
            };
            self.series[slot].points.push((t, s.value));
            now.push(slot);
        }
        self.last = now;
    }

    /// Adds a scalar at `t` (the series without labels).
    pub fn push_scalar(&mut self, t: i64, v: f64) {
        let slot = self.slot(&Arc::new(Labels::new()));
        self.series[slot].points.push((t, v));
        self.last.clear();
    }

    /// The series, sorted by labels.
    pub fn finish(self) -> Vec<Series> {
        let mut out = self.series;
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    fn slot(&mut self, labels: &Arc<Labels>) -> usize {
        if let Some(&slot) = self.slots.get(labels) {
            return slot;
        }
        let slot = self.series.len();
        self.slots.insert(Arc::clone(labels), slot);
        self.series.push(Series {
            labels: Arc::clone(labels),
            points: Vec::new(),
        });
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(device: &str) -> Arc<Labels> {
        Arc::new(vec![("device".to_owned(), device.to_owned())])
    }

    fn sample(labels: &Arc<Labels>, value: f64) -> Sample {
        Sample {
            labels: Arc::clone(labels),
            value,
        }
    }

    /// The same series whether a step hands out the same `Arc`s in the same
    /// order, equal labels in new `Arc`s, or the series in another order.
    #[test]
    fn samples_go_to_their_series_however_a_step_hands_them_out() {
        let (a, b) = (labels("a"), labels("b"));
        let mut steps = Steps::default();
        steps.push_vector(0, &[sample(&a, 1.0), sample(&b, 2.0)]);
        // The same Arcs, the same order.
        steps.push_vector(10, &[sample(&a, 3.0), sample(&b, 4.0)]);
        // The same Arcs swapped.
        steps.push_vector(20, &[sample(&b, 5.0), sample(&a, 6.0)]);
        // Equal labels in new Arcs, one series missing, a new one.
        let c = labels("c");
        steps.push_vector(30, &[sample(&labels("b"), 7.0), sample(&c, 8.0)]);
        steps.push_scalar(40, 9.0);
        let got: Vec<(Labels, Vec<(i64, f64)>)> = steps
            .finish()
            .into_iter()
            .map(|s| ((*s.labels).clone(), s.points))
            .collect();
        assert_eq!(
            got,
            vec![
                (Labels::new(), vec![(40, 9.0)]),
                ((*a).clone(), vec![(0, 1.0), (10, 3.0), (20, 6.0)]),
                (
                    (*b).clone(),
                    vec![(0, 2.0), (10, 4.0), (20, 5.0), (30, 7.0)]
                ),
                ((*c).clone(), vec![(30, 8.0)]),
            ]
        );
    }
}
