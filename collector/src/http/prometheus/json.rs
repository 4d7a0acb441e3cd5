//! Prometheus's JSON: the `status`/`data`/`errorType`/`error` envelope,
//! the status codes of each error kind, `[unix seconds, "value"]` pairs
//! with Prometheus's number formatting, and the four result types.
//!
//! A query's answer ([`query_success`]) is written straight into its body,
//! in Prometheus's key order, without a JSON tree of its own (one
//! allocation per value and per label, and a second pass to serialize, for
//! answers that are mostly numbers); the other endpoints build a
//! `serde_json::Value`, written in an envelope of Prometheus's key order.
//! Every string is escaped as Prometheus 2.42 escapes it ([`write_str`]:
//! HTML-safe, as Go's JSON encoders are), so the bytes are Prometheus's.

use std::fmt::Write as _;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json_, json};

use crate::promql::{Labels, QueryError, QueryResult, write_float, write_sample_value};
#[cfg(test)]
use crate::promql::{Sample, Series, format_float, format_sample_value};
#[cfg(test)]
use serde_json::Number;

/// A successful answer: `{"status":"success","data":...}`, keys in
/// Prometheus's order, `warnings` last when there are any.
pub fn success(data: &impl serde::Serialize, warnings: Vec<String>) -> Response {
    json_body(StatusCode::OK, success_body(data, &warnings))
}

fn success_body(data: &impl serde::Serialize, warnings: &[String]) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(r#"{"status":"success","data":"#);
    write_json(&mut out, data);
    if !warnings.is_empty() {
        out.push_str(r#","warnings":"#);
        write_json(&mut out, &json!(warnings));
    }
    out.push('}');
    out
}

/// An error answer: the status and `errorType` Prometheus gives it,
/// `{"status":"error","errorType":...,"error":...}`.
pub fn error(e: &QueryError) -> Response {
    let (status, body) = error_body(e);
    json_body(status, body)
}

fn error_body(e: &QueryError) -> (StatusCode, String) {
    let (status, kind) = match e {
        QueryError::BadData(_) => (StatusCode::BAD_REQUEST, "bad_data"),
        QueryError::Unsupported(_) | QueryError::Limit(_) | QueryError::Execution(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "execution")
        }
        QueryError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        QueryError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let mut out = String::with_capacity(128);
    out.push_str(r#"{"status":"error","errorType":"#);
    write_str(&mut out, kind);
    out.push_str(r#","error":"#);
    write_str(&mut out, &e.to_string());
    out.push('}');
    (status, out)
}

/// A JSON body with `status`.
fn json_body(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
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

/// A sample of a vector or a matrix.
#[cfg(test)]
fn pair(t: i64, v: f64) -> Json_ {
    json!([timestamp(t), format_sample_value(v)])
}

/// A scalar answer's `[time, "value"]`.
#[cfg(test)]
fn scalar_pair(t: i64, v: f64) -> Json_ {
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
        QueryResult::Scalar { t, v } => {
            json!({ "resultType": "scalar", "result": scalar_pair(*t, *v) })
        }
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
    json_body(StatusCode::OK, out)
}

/// The `data` of a query answer.
fn write_result(out: &mut String, r: &QueryResult) {
    match r {
        QueryResult::Scalar { t, v } => {
            out.push_str(r#"{"resultType":"scalar","result":"#);
            write_scalar_pair(out, *t, *v);
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

/// A scalar's or a string's time, appended to `out`: seconds as Go's
/// `encoding/json` writes a float64 (Prometheus marshals those answers
/// with it), which is [`timestamp`]'s number.
fn write_timestamp(out: &mut String, ms: i64) {
    if ms % 1000 == 0 {
        out.push_str(itoa::Buffer::new().format(ms / 1000));
    } else {
        // The shortest form that reads back as the same f64, as Go writes
        // it (a time in seconds never needs an exponent).
        write_float(out, ms as f64 / 1000.0);
    }
}

/// A sample's time in a vector or a matrix, appended to `out`, as
/// Prometheus 2.42 writes it (`jsonutil.MarshalTimestamp`): whole seconds,
/// and when there are milliseconds, all three digits (`1700000000.500`).
fn write_sample_time(out: &mut String, ms: i64) {
    if ms < 0 {
        out.push('-');
    }
    let ms = ms.unsigned_abs();
    out.push_str(itoa::Buffer::new().format(ms / 1000));
    let frac = ms % 1000;
    if frac != 0 {
        out.push('.');
        if frac < 100 {
            out.push('0');
        }
        if frac < 10 {
            out.push('0');
        }
        out.push_str(itoa::Buffer::new().format(frac));
    }
}

/// `[time, "value"]` of a vector's or a matrix's sample, appended to `out`.
fn write_pair(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_sample_time(out, t);
    out.push_str(",\"");
    write_sample_value(out, v);
    out.push_str("\"]");
}

/// A scalar answer's `[time, "value"]`, appended to `out`: Prometheus
/// writes its value without an exponent.
fn write_scalar_pair(out: &mut String, t: i64, v: f64) {
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

/// A JSON string as Prometheus 2.42 writes it (Go's `encoding/json` and
/// jsoniter in its standard-library mode, checked against the Prometheus
/// binary): `"` `\\` and `\n` `\r` `\t` by backslash, every other
/// control character as `\u00xx` (lowercase hex, so backspace and form
/// feed too), `<` `>` `&` as `\u003c` `\u003e` `\u0026`, U+2028 and U+2029
/// as `\u2028` `\u2029`; DEL and everything else as it is. (Go writes
/// invalid UTF-8 as U+FFFD; a Rust `str` never holds any.)
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// The inside of [`write_str`]'s string, appended to `out`.
fn escape_into(out: &mut String, s: &str) {
    let mut plain = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{0}'..='\u{1f}' | '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escaped.is_empty() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(escaped);
        }
        plain = i + c.len_utf8();
    }
    out.push_str(&s[plain..]);
}

/// serde_json's output with its strings escaped as [`write_str`] escapes
/// them: for the answers built as a `serde_json::Value`.
struct GoStrings;

impl serde_json::ser::Formatter for GoStrings {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut out = String::with_capacity(fragment.len());
        escape_into(&mut out, fragment);
        writer.write_all(out.as_bytes())
    }

    fn write_char_escape<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        escape: serde_json::ser::CharEscape,
    ) -> std::io::Result<()> {
        use serde_json::ser::CharEscape as E;
        let c = match escape {
            E::Quote => '"',
            E::ReverseSolidus => '\\',
            E::Solidus => '/',
            E::Backspace => '\u{8}',
            E::FormFeed => '\u{c}',
            E::LineFeed => '\n',
            E::CarriageReturn => '\r',
            E::Tab => '\t',
            E::AsciiControl(b) => char::from(b),
        };
        let mut out = String::new();
        escape_into(&mut out, c.encode_utf8(&mut [0; 4]));
        writer.write_all(out.as_bytes())
    }
}

/// `value` as JSON with [`GoStrings`], appended to `out`.
fn write_json(out: &mut String, value: &impl serde::Serialize) {
    let mut bytes = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut bytes, GoStrings);
    // Serializing the answers' types (a `Value`, maps, vectors, strings)
    // into a Vec cannot fail, and what it writes is UTF-8;
    // `from_utf8_lossy` only keeps the types honest.
    let _ = serde::Serialize::serialize(value, &mut ser);
    out.push_str(&String::from_utf8_lossy(&bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings and the JSON Prometheus 2.42 wrote for them (a label value
    /// and a string result, read from the Prometheus binary's answers).
    const PROMETHEUS_ESCAPES: &[(&str, &str)] = &[
        (
            "a\u{1}b\u{8}c\u{c}d\u{1f}e\u{7f}f",
            concat!(r#""a\u0001b\u0008c\u000cd\u001fe"#, "\u{7f}", r#"f""#),
        ),
        (
            "<a href=\"x\">&amp;</a>",
            r#""\u003ca href=\"x\"\u003e\u0026amp;\u003c/a\u003e""#,
        ),
        ("x\u{2028}y\u{2029}z", r#""x\u2028y\u2029z""#),
        ("tab\there\\back", r#""tab\there\\back""#),
        ("\u{e9}\u{20ac}\u{1f600}", "\"\u{e9}\u{20ac}\u{1f600}\""),
        (
            "<&>\u{8}\u{c}\u{1}\u{2028}\t\n\r\u{7f}",
            concat!(
                r#""\u003c\u0026\u003e\u0008\u000c\u0001\u2028\t\n\r"#,
                "\u{7f}\""
            ),
        ),
    ];

    #[test]
    fn strings_are_escaped_as_prometheus_escapes_them() {
        for (s, prometheus) in PROMETHEUS_ESCAPES {
            let mut direct = String::new();
            write_str(&mut direct, s);
            assert_eq!(direct, *prometheus, "{s:?}");
            // Through serde_json, as a key and as a value.
            let mut tree = String::new();
            write_json(&mut tree, &json!({ *s: [s] }));
            assert_eq!(tree, format!("{{{prometheus}:[{prometheus}]}}"), "{s:?}");
            // And still JSON that reads back as the same string.
            assert_eq!(serde_json::from_str::<String>(&direct).unwrap(), *s);
        }
    }

    #[test]
    fn envelopes_are_prometheus_s_bytes() {
        // Prometheus 2.42's answer to `count_values("<", esc_probe)`.
        let (status, body) = error_body(&QueryError::Execution("invalid label name \"<\"".into()));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body,
            r#"{"status":"error","errorType":"execution","error":"invalid label name \"\u003c\""}"#
        );
        // Its answer to `/api/v1/label/v/values`, over two of those values.
        assert_eq!(
            success_body(&json!(["<a>", "x\u{2028}"]), &[]),
            r#"{"status":"success","data":["\u003ca\u003e","x\u2028"]}"#
        );
        assert_eq!(
            success_body(&json!([]), &["w&".to_owned()]),
            r#"{"status":"success","data":[],"warnings":["w\u0026"]}"#
        );
    }

    #[test]
    fn numbers_are_written_as_prometheus_writes_them() {
        assert_eq!(timestamp(1_700_000_000_000).to_string(), "1700000000");
        assert_eq!(timestamp(1_700_000_000_500).to_string(), "1700000000.5");
        let sample = |t, v| {
            let mut out = String::new();
            write_pair(&mut out, t, v);
            out
        };
        let scalar = |t, v| {
            let mut out = String::new();
            write_scalar_pair(&mut out, t, v);
            out
        };
        assert_eq!(sample(1000, f64::NAN), r#"[1,"NaN"]"#);
        assert_eq!(sample(1000, f64::INFINITY), r#"[1,"+Inf"]"#);
        assert_eq!(sample(1000, f64::NEG_INFINITY), r#"[1,"-Inf"]"#);
        assert_eq!(sample(1000, 0.1), r#"[1,"0.1"]"#);
        assert_eq!(sample(1000, 3.0), r#"[1,"3"]"#);
        assert_eq!(sample(1000, -0.0), r#"[1,"-0"]"#);
        // What Prometheus 2.42 answered: `vector(1e-7)` at 1700000000.5,
        // `vector(1e21)` at 1700000000.05, `-0.0000001` at -1.5 and
        // `-0.000001` at 100 (scalars: no exponent, Go's float time).
        assert_eq!(
            sample(1_700_000_000_500, 1e-7),
            r#"[1700000000.500,"1e-07"]"#
        );
        assert_eq!(
            sample(1_700_000_000_050, 1e21),
            r#"[1700000000.050,"1e+21"]"#
        );
        assert_eq!(scalar(-1500, -1e-7), r#"[-1.5,"-0.0000001"]"#);
        assert_eq!(scalar(100_000, -1e-6), r#"[100,"-0.000001"]"#);
        assert_eq!(sample(-1500, -1e-6), r#"[-1.500,"-0.000001"]"#);
        assert_eq!(sample(1000, 1e100), r#"[1,"1e+100"]"#);
        assert_eq!(
            sample(1000, -8.164965809277261e99),
            r#"[1,"-8.164965809277261e+99"]"#
        );
        assert_eq!(sample(1000, 2.5e-300), r#"[1,"2.5e-300"]"#);
        assert_eq!(
            sample(1000, 999999999999999900000.0),
            r#"[1,"999999999999999900000"]"#
        );
        // `count_values`' label: no exponent (Prometheus: "1000000000000000000000").
        assert_eq!(format_float(1e21), "1000000000000000000000");
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
