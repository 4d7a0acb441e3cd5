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

/// Formats a float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` does,
/// which is how Prometheus writes a scalar's value and `count_values`'s
/// label: the shortest decimal that reads back the same, no exponent, and
/// `NaN`, `+Inf`, `-Inf`.
pub fn format_float(v: f64) -> String {
    let mut out = String::new();
    write_float(&mut out, v);
    out
}

/// [`format_float`], appended to `out` (no allocation of its own).
pub fn write_float(out: &mut String, v: f64) {
    use std::fmt::Write as _;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        // Rust's Display is also the shortest round-trip form without an
        // exponent; only negative zero differs ("-0" in both, in fact).
        // Writing to a String cannot fail.
        let _ = write!(out, "{v}");
    }
}

/// A sample's value as Prometheus 2.42 writes it in a vector or a matrix
/// (`jsonutil.MarshalValue`): as [`format_float`], but with an exponent
/// (`1e+21`, `1.5e-07`: sign and at least two digits, as Go writes it)
/// when the magnitude is below 1e-6 or at least 1e21.
pub fn format_sample_value(v: f64) -> String {
    let mut out = String::new();
    write_sample_value(&mut out, v);
    out
}

/// [`format_sample_value`], appended to `out`.
pub fn write_sample_value(out: &mut String, v: f64) {
    let abs = v.abs();
    if !abs.is_finite() || abs == 0.0 || (1e-6..1e21).contains(&abs) {
        write_float(out, v);
        return;
    }
    write_exponent(out, v);
}

/// A finite float as Go's `strconv.FormatFloat(v, 'e', -1, 64)` writes
/// it: the shortest mantissa that reads back the same, `e`, the exponent's
/// sign and at least two digits (`1.5e-07`, `1e+100`).
pub fn write_exponent(out: &mut String, v: f64) {
    use std::fmt::Write as _;
    // Rust's LowerExp is the shortest round-trip mantissa, `1.5e-7`.
    let text = format!("{v:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exponent),
    };
    // Writing to a String cannot fail.
    let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
}
