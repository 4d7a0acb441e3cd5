//! The one mapping from a Tributary series to a Prometheus series, used by
//! everything that speaks Prometheus (the HTTP query API; the exports).
//!
//! - `__name__` is the metric, every character outside `[a-zA-Z0-9_:]`
//!   replaced by `_`, and `_` put in front of a leading digit
//!   (`in.temp-c` → `in_temp_c`, `1m_load` → `_1m_load`).
//! - `agent` and `device` are the agent id and the device name, unchanged.
//! - Every label of the series follows, its name mapped like the metric's
//!   but without `:` (`[a-zA-Z0-9_]`), its value unchanged.
//! - A label name that is taken (`__name__`, `agent`, `device`, one that an
//!   earlier label in name order already mapped to) or that starts with
//!   `__` (reserved by Prometheus) gets `exported_` in front, again until
//!   it is free: a device label `device="x"` becomes `exported_device="x"`,
//!   as Prometheus itself renames a scraped label that collides with a
//!   target label.
//! - The unit is not a label; it goes to metadata.
//! - Values: doubles as they are (NaN and ±Inf too), integers as doubles,
//!   booleans as 0 and 1. Strings, timeouts and errors are not samples:
//!   the device's failures are in its readings' `Timeout`/`Error` values,
//!   which the query API does not show as numbers.
//!
//! Imports `model` only.

use crate::model::{SeriesKey, StoredValue};

/// The reserved label that holds the metric name.
pub const NAME: &str = "__name__";

/// A Prometheus metric name for `metric`.
pub fn metric_name(metric: &str) -> String {
    sanitize(metric, true)
}

/// A Prometheus label name for a series label called `name` (before
/// collisions are resolved, see [`labels`]).
pub fn label_name(name: &str) -> String {
    sanitize(name, false)
}

fn sanitize(name: &str, colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':') {
            c
        } else {
            '_'
        }
    }));
    out
}

/// The Prometheus labels of a series, sorted by name: `__name__`, `agent`,
/// `device` and the series labels, mapped as the module doc says.
pub fn labels(key: &SeriesKey) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(key.labels.len() + 3);
    out.push((NAME.to_owned(), metric_name(&key.metric)));
    out.push(("agent".to_owned(), key.agent.clone()));
    out.push(("device".to_owned(), key.device.clone()));
    // `key.labels` is a BTreeMap: name order, so the rule is deterministic.
    for (name, value) in &key.labels {
        let mut mapped = label_name(name);
        while mapped.starts_with("__") || out.iter().any(|(n, _)| *n == mapped) {
            mapped.insert_str(0, "exported_");
        }
        out.push((mapped, value.clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The sample value of a stored value, if it is one.
pub fn sample_value(value: &StoredValue) -> Option<f64> {
    match value {
        StoredValue::F64(v) => Some(*v),
        // Exact up to 2^53, as in Prometheus, whose samples are doubles.
        StoredValue::I64(v) => Some(*v as f64),
        // The nearest double (exact up to 2^53): 2^64 - 1 becomes 2^64.
        StoredValue::U64(v) => Some(*v as f64),
        StoredValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        StoredValue::Str(_) | StoredValue::Timeout(_) | StoredValue::Error(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(metric: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey {
            agent: "edge-1".into(),
            device: "meter-3".into(),
            metric: metric.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            unit: "W".into(),
        }
    }

    fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn names_keep_only_what_prometheus_allows() {
        assert_eq!(metric_name("in.temp-c"), "in_temp_c");
        assert_eq!(metric_name("node:load1"), "node:load1");
        assert_eq!(metric_name("1m_load"), "_1m_load");
        assert_eq!(metric_name("é"), "_");
        assert_eq!(metric_name(""), "_");
        assert_eq!(label_name("a:b"), "a_b");
        assert_eq!(label_name("if.name"), "if_name");
    }

    #[test]
    fn a_series_maps_to_sorted_labels_with_its_name_agent_and_device() {
        let k = key("power", &[("phase", "L1"), ("zone", "a b")]);
        assert_eq!(
            pairs(&labels(&k)),
            [
                ("__name__", "power"),
                ("agent", "edge-1"),
                ("device", "meter-3"),
                ("phase", "L1"),
                ("zone", "a b"),
            ]
        );
    }

    #[test]
    fn colliding_and_reserved_names_are_exported() {
        let k = key(
            "up",
            &[
                ("__name__", "x"),
                ("agent", "other"),
                ("device", "d"),
                ("exported_device", "e"),
                ("if.name", "Gi0/1"),
                ("if_name", "dup"),
            ],
        );
        assert_eq!(
            pairs(&labels(&k)),
            [
                ("__name__", "up"),
                ("agent", "edge-1"),
                ("device", "meter-3"),
                ("exported___name__", "x"),
                ("exported_agent", "other"),
                ("exported_device", "d"),
                ("exported_exported_device", "e"),
                ("exported_if_name", "dup"),
                ("if_name", "Gi0/1"),
            ]
        );
    }

    #[test]
    fn numbers_and_booleans_are_samples_the_rest_is_not() {
        assert_eq!(sample_value(&StoredValue::F64(1.5)), Some(1.5));
        assert!(sample_value(&StoredValue::F64(f64::NAN)).is_some_and(f64::is_nan));
        assert_eq!(
            sample_value(&StoredValue::F64(f64::NEG_INFINITY)),
            Some(f64::NEG_INFINITY)
        );
        assert_eq!(sample_value(&StoredValue::I64(-7)), Some(-7.0));
        // The nearest double: 2^64 - 1 is 2^64, 2^63 + 1 is 2^63.
        assert_eq!(
            sample_value(&StoredValue::U64(u64::MAX)),
            Some(18_446_744_073_709_551_616.0)
        );
        assert_eq!(
            sample_value(&StoredValue::U64((1 << 63) + 1)),
            Some(9_223_372_036_854_775_808.0)
        );
        assert_eq!(sample_value(&StoredValue::Bool(true)), Some(1.0));
        assert_eq!(sample_value(&StoredValue::Bool(false)), Some(0.0));
        assert_eq!(sample_value(&StoredValue::Str("on".into())), None);
        assert_eq!(sample_value(&StoredValue::Timeout("2s".into())), None);
        assert_eq!(sample_value(&StoredValue::Error("refused".into())), None);
    }
}
