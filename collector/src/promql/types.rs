//! The values a PromQL expression evaluates to, at one evaluation time,
//! and the errors of a query. Times are Unix milliseconds, as in
//! Prometheus; label sets are sorted by name.
//!
//! Imports nothing of the collector: the evaluator is pure over these.

use std::sync::Arc;

/// A label set, sorted by name, without duplicates.
pub type Labels = Vec<(String, String)>;

/// The reserved label holding the metric name.
pub const NAME: &str = crate::prom_labels::NAME;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Arc<Labels>,
    pub value: f64,
}

/// A series with its samples in time order: an element of a range vector
/// (a matrix), or of a range query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Arc<Labels>,
    /// `(unix ms, value)`, ascending by time.
    pub points: Vec<(i64, f64)>,
}

/// What an expression yields at one evaluation time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    /// A range vector: the samples of a matrix selector or a subquery.
    Matrix(Vec<Series>),
}

impl Value {
    /// The PromQL name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "instant vector",
            Value::Matrix(_) => "range vector",
        }
    }
}

/// Why a query has no answer. The HTTP API maps each kind to Prometheus's
/// `errorType` and status (see `http/prometheus`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The query or a parameter is malformed (400 `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// A function or construct this evaluator does not implement (422).
    #[error("unsupported in Tributary's PromQL: {0}")]
    Unsupported(String),
    /// A limit was exceeded (422), named in the message.
    #[error("{0}")]
    Limit(String),
    /// The query is valid but cannot be evaluated, as Prometheus refuses
    /// it too (duplicate series in a match group, ...) (422).
    #[error("{0}")]
    Execution(String),
    /// The query ran out of time (503 `timeout`).
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The store failed (503 `unavailable`).
    #[error("store: {0}")]
    Unavailable(String),
}

/// Label value of `name` in a sorted label set, "" when absent (as in
/// Prometheus, an empty value and a missing label are the same).
pub fn get<'a>(labels: &'a Labels, name: &str) -> &'a str {
    match labels.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) => &labels[i].1,
        Err(_) => "",
    }
}

/// `labels` without `__name__`.
pub fn drop_name(labels: &Labels) -> Labels {
    labels.iter().filter(|(n, _)| n != NAME).cloned().collect()
}

/// [`drop_name`] as a shared label set: the same `Arc` when there is no
/// `__name__` to drop (a function of a function's result), so nothing is
/// copied and later steps match it by pointer.
pub fn without_name(labels: &Arc<Labels>) -> Arc<Labels> {
    if labels.iter().any(|(n, _)| n == NAME) {
        Arc::new(drop_name(labels))
    } else {
        Arc::clone(labels)
    }
}

/// Sets (or, with an empty value, removes) one label, keeping the order.
pub fn set(labels: &mut Labels, name: &str, value: &str) {
    match labels.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) if value.is_empty() => {
            labels.remove(i);
        }
        Ok(i) => labels[i].1 = value.to_owned(),
        Err(_) if value.is_empty() => {}
        Err(i) => labels.insert(i, (name.to_owned(), value.to_owned())),
    }
}
