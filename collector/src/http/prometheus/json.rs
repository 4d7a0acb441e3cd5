//! Prometheus's JSON: the `status`/`data`/`errorType`/`error` envelope,
//! the status codes of each error kind, `[unix seconds, "value"]` pairs
//! with Prometheus's number formatting, and the four result types.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Number, Value as Json_, json};

use crate::promql::{Labels, QueryError, QueryResult, Sample, Series, format_float};

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

/// A time in ms as Prometheus writes it: seconds, with a fraction only
/// when there is one.
pub fn timestamp(ms: i64) -> Json_ {
    if ms % 1000 == 0 {
        Json_::Number(Number::from(ms / 1000))
    } else {
        Number::from_f64(ms as f64 / 1000.0).map_or(Json_::Null, Json_::Number)
    }
}

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

fn vector(t: i64, samples: &[Sample]) -> Json_ {
    Json_::Array(
        samples
            .iter()
            .map(|s| json!({ "metric": labels(&s.labels), "value": pair(t, s.value) }))
            .collect(),
    )
}

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
pub fn result(r: &QueryResult) -> Json_ {
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
}
