//! The JSON body format, shared by the HTTP, exec and MQTT drivers: a body
//! parsed with an error naming line and column, and values picked out of it
//! by JSON pointer.

use super::JsonMetric;
use crate::drivers::PollError;
use crate::reading::{FailureKind, Sample, Value};

/// Parses a JSON body; the error names line and column.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, PollError> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let cause = text.strip_suffix(&suffix).unwrap_or(&text);
        PollError::error(format!(
            "invalid json at line {} column {}: {cause}",
            e.line(),
            e.column()
        ))
    })
}

/// Picks each metric out of `doc`. A metric whose pointer is missing, or
/// points at null, an object or an array, becomes a failed sample; the
/// others still get their values.
pub fn extract_json(doc: &serde_json::Value, metrics: &[JsonMetric]) -> Vec<Sample> {
    metrics
        .iter()
        .map(|m| Sample {
            unit: m.unit.clone(),
            ..Sample::new(m.name.clone(), json_value(doc, &m.pointer))
        })
        .collect()
}

/// The value `pointer` picks out of `doc`, or why there is none.
pub(crate) fn json_value(doc: &serde_json::Value, pointer: &str) -> Value {
    match doc.pointer(pointer) {
        None => failed(format!("pointer {pointer} not found")),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::I64(i),
            None => n
                .as_f64()
                .map(Value::F64)
                .unwrap_or_else(|| failed(format!("pointer {pointer}: number {n} out of range"))),
        },
        Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
        Some(serde_json::Value::String(s)) => Value::Str(s.clone()),
        Some(serde_json::Value::Null) => {
            failed(format!("pointer {pointer} not found (value is null)"))
        }
        Some(serde_json::Value::Object(_)) => failed(format!(
            "pointer {pointer} not found (value is an object, not a number, bool or string)"
        )),
        Some(serde_json::Value::Array(_)) => failed(format!(
            "pointer {pointer} not found (value is an array, not a number, bool or string)"
        )),
    }
}

fn failed(message: String) -> Value {
    Value::Failed {
        kind: FailureKind::Error,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, pointer: &str) -> JsonMetric {
        JsonMetric {
            name: name.into(),
            pointer: pointer.into(),
            unit: String::new(),
        }
    }

    #[test]
    fn json_values_by_type() {
        let doc: serde_json::Value = serde_json::from_str(
            r#"{"power": 1500, "volt": 229.7, "on": true, "state": "ok",
                "big": 18446744073709551615, "nested": {"a": [1, {"b": -2}]},
                "null": null, "obj": {}, "arr": []}"#,
        )
        .expect("valid json");
        let metrics = [
            JsonMetric {
                unit: "W".into(),
                ..metric("power_w", "/power")
            },
            metric("volt", "/volt"),
            metric("on", "/on"),
            metric("state", "/state"),
            metric("big", "/big"),
            metric("deep", "/nested/a/1/b"),
            metric("missing", "/nope"),
            metric("null", "/null"),
            metric("obj", "/obj"),
            metric("arr", "/arr"),
        ];
        let samples = extract_json(&doc, &metrics);
        assert_eq!(samples[0].value, Value::I64(1500));
        assert_eq!(samples[0].unit, "W");
        assert_eq!(samples[0].metric, "power_w");
        assert_eq!(samples[1].value, Value::F64(229.7));
        assert_eq!(samples[2].value, Value::Bool(true));
        assert_eq!(samples[3].value, Value::Str("ok".into()));
        assert_eq!(samples[4].value, Value::F64(18446744073709551615.0));
        assert_eq!(samples[5].value, Value::I64(-2));
        assert_eq!(
            samples[6].value,
            Value::Failed {
                kind: FailureKind::Error,
                message: "pointer /nope not found".into()
            }
        );
        for s in &samples[7..] {
            assert!(
                matches!(&s.value, Value::Failed { kind: FailureKind::Error, message } if message.starts_with(&format!("pointer /{} not found", s.metric))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn invalid_json_names_position() {
        let e = parse_json(b"{\"a\": tru}").expect_err("invalid json");
        assert_eq!(e.kind, FailureKind::Error);
        assert!(
            e.message
                .starts_with("invalid json at line 1 column 10: expected ident"),
            "{e}"
        );
    }
}
