//! Prometheus's JSON: the `status`/`data`/`errorType`/`error` envelope,
//! the status codes of each error kind, `[unix seconds, "value"]` pairs
//! with Prometheus's number formatting, and the four result types.
//!
//! A query's answer ([`query_success`]) is written straight into its body,
//! in Prometheus's key order, without a JSON tree of its own (one
//! allocation per value and per label, and a second pass to serialize, for
//! answers that are mostly numbers); the other endpoints build a
//! `serde_json::Value`.

use std::fmt::Write as _;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json_, json};

use crate::promql::{Labels, QueryError, QueryResult, write_float};
#[cfg(test)]
use crate::promql::{Sample, Series, format_float};
#[cfg(test)]
use serde_json::Number;

/// A successful answer.
pub fn success(data: Json_, warnings: Vec<String>) -> Response {
    let mut body = json!({ "status": "success", "data": data });
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    Json(body).into_response()
}

/// An error answer: the status and `errorType` Prometheus gives it.
pub fn error(e: &QueryError) -> Response {
    let (status, kind) = match e {
        QueryError::BadData(_) => (StatusCode::BAD_REQUEST, "bad_data"),
        QueryError::Unsupported(_) | QueryError::Limit(_) | QueryError::Execution(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "execution")
        }
        QueryError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        QueryError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let body = json!({ "status": "error", "errorType": kind, "error": e.to_string() });
    (status, Json(body)).into_response()
}

// The same answers as JSON trees: what the direct writer is tested against.

/// A time in ms as Prometheus writes it: seconds, with a fraction only
/// when there is one.
#[cfg(test)]
fn timestamp(ms: i64) -> Json_ {
    if ms % 1000 == 0 {
        Json_::Number(Number::from(ms / 1000))
    } else {
        Number::from_f64(ms as f64 / 1000.0).map_or(Json_::Null, Json_::Number)
    }
}

#[cfg(test)]
fn pair(t: i64, v: f64) -> Json_ {
    json!([timestamp(t), format_float(v)])
}

/// A label set as a JSON object.
pub fn labels(l: &Labels) -> Json_ {
    let mut m = Map::with_capacity(l.len());
    for (n, v) in l {
        m.insert(n.clone(), Json_::String(v.clone()));
    }
    Json_::Object(m)
}

#[cfg(test)]
fn vector(t: i64, samples: &[Sample]) -> Json_ {
    Json_::Array(
        samples
            .iter()
            .map(|s| json!({ "metric": labels(&s.labels), "value": pair(t, s.value) }))
            .collect(),
    )
}

#[cfg(test)]
fn matrix(series: &[Series]) -> Json_ {
    Json_::Array(
        series
            .iter()
            .map(|s| {
                let values: Vec<Json_> = s.points.iter().map(|&(t, v)| pair(t, v)).collect();
                json!({ "metric": labels(&s.labels), "values": values })
            })
            .collect(),
    )
}

/// The `data` of a query answer.
#[cfg(test)]
fn result(r: &QueryResult) -> Json_ {
    match r {
        QueryResult::Scalar { t, v } => json!({ "resultType": "scalar", "result": pair(*t, *v) }),
        QueryResult::String { t, s } => {
            json!({ "resultType": "string", "result": [timestamp(*t), s] })
        }
        QueryResult::Vector { t, samples } => {
            json!({ "resultType": "vector", "result": vector(*t, samples) })
        }
        QueryResult::Matrix(series) => json!({ "resultType": "matrix", "result": matrix(series) }),
    }
}

/// A query's successful answer: `{"status":"success","data":{...}}`.
pub fn query_success(r: &QueryResult) -> Response {
    let mut out = String::with_capacity(256);
    out.push_str(r#"{"status":"success","data":"#);
    write_result(&mut out, r);
    out.push('}');
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// The `data` of a query answer.
fn write_result(out: &mut String, r: &QueryResult) {
    match r {
        QueryResult::Scalar { t, v } => {
            out.push_str(r#"{"resultType":"scalar","result":"#);
            write_pair(out, *t, *v);
        }
        QueryResult::String { t, s } => {
            out.push_str(r#"{"resultType":"string","result":["#);
            write_timestamp(out, *t);
            out.push(',');
            write_str(out, s);
            out.push(']');
        }
        QueryResult::Vector { t, samples } => {
            out.push_str(r#"{"resultType":"vector","result":["#);
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                write_labels(out, &s.labels);
                out.push_str(r#","value":"#);
                write_pair(out, *t, s.value);
                out.push('}');
            }
            out.push(']');
        }
        QueryResult::Matrix(series) => {
            out.push_str(r#"{"resultType":"matrix","result":["#);
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                write_labels(out, &s.labels);
                out.push_str(r#","values":["#);
                for (j, &(t, v)) in s.points.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_pair(out, t, v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    out.push('}');
}

/// A time as `timestamp` gives it, appended to `out`.
fn write_timestamp(out: &mut String, ms: i64) {
    // Writing to a String cannot fail.
    if ms % 1000 == 0 {
        let _ = write!(out, "{}", ms / 1000);
    } else {
        // The shortest form that reads back as the same f64, as serde_json
        // writes it (a time in seconds never needs an exponent).
        let _ = write!(out, "{}", ms as f64 / 1000.0);
    }
}

/// `[time, "value"]`, appended to `out`.
fn write_pair(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_timestamp(out, t);
    out.push_str(",\"");
    write_float(out, v);
    out.push_str("\"]");
}

/// A label set as [`labels`] gives it, appended to `out` (labels are sorted by name, without
/// duplicates, so this is the object serde_json would write).
fn write_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, (n, v)) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, n);
        out.push(':');
        write_str(out, v);
    }
    out.push('}');
}

/// A JSON string, escaped as serde_json escapes it.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_prometheus_writes_them() {
        assert_eq!(timestamp(1_700_000_000_000).to_string(), "1700000000");
        assert_eq!(timestamp(1_700_000_000_500).to_string(), "1700000000.5");
        assert_eq!(pair(1000, f64::NAN).to_string(), r#"[1,"NaN"]"#);
        assert_eq!(pair(1000, f64::INFINITY).to_string(), r#"[1,"+Inf"]"#);
        assert_eq!(pair(1000, f64::NEG_INFINITY).to_string(), r#"[1,"-Inf"]"#);
        assert_eq!(pair(1000, 0.1).to_string(), r#"[1,"0.1"]"#);
        assert_eq!(
            pair(1000, 1e21).to_string(),
            r#"[1,"1000000000000000000000"]"#
        );
        assert_eq!(pair(1000, 3.0).to_string(), r#"[1,"3"]"#);
    }

    /// The body written directly is the JSON the tree gives, value for
    /// value, for every result type, awkward strings and times included.
    #[test]
    fn answers_written_directly_are_the_tree_s_json() {
        use std::sync::Arc;
        let odd = Arc::new(vec![
            ("__name__".to_owned(), "m".to_owned()),
            (
                "q".to_owned(),
                "a\"b\\c\n\t\r\u{1}\u{8}\u{c}\u{1f}é/€".to_owned(),
            ),
        ]);
        let plain = Arc::new(vec![("job".to_owned(), "x".to_owned())]);
        let results = [
            QueryResult::Scalar {
                t: 1_700_000_000_123,
                v: 0.1,
            },
            QueryResult::String {
                t: 1_700_000_000_000,
                s: "a\"\\\u{0}".to_owned(),
            },
            QueryResult::Vector {
                t: 1_700_003_607_123,
                samples: vec![
                    Sample {
                        labels: odd.clone(),
                        value: f64::NAN,
                    },
                    Sample {
                        labels: plain.clone(),
                        value: -1e-7,
                    },
                ],
            },
            QueryResult::Vector {
                t: 5,
                samples: Vec::new(),
            },
            QueryResult::Matrix(vec![
                Series {
                    labels: odd,
                    points: vec![(1, f64::INFINITY), (2_000, 1e21)],
                },
                Series {
                    labels: plain,
                    points: Vec::new(),
                },
                Series {
                    labels: Arc::new(Vec::new()),
                    points: vec![(-1500, -0.0)],
                },
            ]),
            QueryResult::Matrix(Vec::new()),
        ];
        for r in results {
            let mut out = String::new();
            write_result(&mut out, &r);
            let direct: Json_ = serde_json::from_str(&out).unwrap();
            assert_eq!(direct, result(&r), "{out}");
        }
    }
}
