//! The JSON the page reads. Times are ns since the Unix epoch as decimal
//! strings (a JavaScript number holds 53 bits, a time in ns needs 61);
//! counters are numbers.

use std::collections::BTreeMap;

use serde::Serialize;
use tributary_proto::v1 as pb;

use crate::model::{Point, SeriesMeta, StoredValue};

/// A series, as the chart's picker and legend show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesJson {
    pub id: i64,
    pub agent: String,
    pub device: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub unit: String,
}

impl From<&SeriesMeta> for SeriesJson {
    fn from(meta: &SeriesMeta) -> Self {
        SeriesJson {
            id: meta.id,
            agent: meta.key.agent.clone(),
            device: meta.key.device.clone(),
            metric: meta.key.metric.clone(),
            labels: meta.key.labels.clone(),
            unit: meta.key.unit.clone(),
        }
    }
}

/// A point: `t` (device time), and one of `v` (a number or bool), `s` (a
/// string) or `fail` (`timeout` or `error`) with `msg`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PointJson {
    pub t: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
}

impl From<&Point> for PointJson {
    fn from(p: &Point) -> Self {
        let t = p.ts_ns.to_string();
        match &p.value {
            // A NaN or an infinity has no JSON number: null, drawn as a gap.
            StoredValue::F64(v) => PointJson {
                t,
                v: Some(
                    serde_json::Number::from_f64(*v)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number),
                ),
                ..PointJson::default()
            },
            StoredValue::I64(v) => PointJson {
                t,
                v: Some((*v).into()),
                ..PointJson::default()
            },
            // The exact integer, as for i64; the page's JSON.parse rounds
            // it to a double (above 2^53), which it draws and shows to
            // three or four digits anyway.
            StoredValue::U64(v) => PointJson {
                t,
                v: Some((*v).into()),
                ..PointJson::default()
            },
            StoredValue::Bool(v) => PointJson {
                t,
                v: Some((*v).into()),
                ..PointJson::default()
            },
            StoredValue::Str(s) => PointJson {
                t,
                s: Some(s.clone()),
                ..PointJson::default()
            },
            StoredValue::Timeout(m) | StoredValue::Error(m) => PointJson {
                t,
                fail: Some(outcome_of(&p.value)),
                msg: Some(m.clone()),
                ..PointJson::default()
            },
        }
    }
}

/// A poll's outcome as a value shows it: `timeout`, `error`, or `ok`.
pub fn outcome_of(value: &StoredValue) -> &'static str {
    match value {
        StoredValue::Timeout(_) => "timeout",
        StoredValue::Error(_) => "error",
        _ => "ok",
    }
}

/// An agent, as ListAgents answers it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentJson {
    pub id: String,
    /// Streaming to this collector now.
    pub connected: bool,
    /// Name of the collector its newest stream is (or was) on.
    pub collector: String,
    /// The address its last stream came from.
    pub peer: String,
    pub last_seen_ns: String,
    pub epoch: String,
    pub committed_seq: u64,
    /// Sequences spooled by the agent and not yet committed.
    pub lag: u64,
    /// Committed ranges above `committed_seq` in the agent's newest epoch:
    /// above 0 while a backlog drains beside live data (out-of-order
    /// delivery) or holes wait to be closed.
    pub committed_ranges: u64,
    /// Readings the agent dropped because its spool was full.
    pub dropped: u64,
    pub readings_stored: u64,
    pub batches_deduplicated: u64,
    pub batches_resent: u64,
    /// Readings stamped with a skewed clock, as ListAgents counts them
    /// (since this collector started).
    pub skew: Option<u64>,
    /// What of the agent's stored state could not be read (naming the
    /// row); empty when all of it reads.
    pub error: String,
}

impl From<pb::AgentInfo> for AgentJson {
    fn from(a: pb::AgentInfo) -> Self {
        AgentJson {
            id: a.id,
            connected: a.connected,
            collector: a.collector,
            peer: a.peer,
            last_seen_ns: a.last_seen_ns.to_string(),
            epoch: a.epoch.to_string(),
            committed_seq: a.committed_seq,
            lag: a.lag,
            committed_ranges: a.committed_ranges,
            dropped: a.dropped_at_agent,
            readings_stored: a.readings_stored,
            batches_deduplicated: a.batches_deduplicated,
            batches_resent: a.batches_resent,
            skew: Some(a.skewed_readings),
            error: a.error,
        }
    }
}

/// An export's row (as ListExports answers it): log positions as decimal
/// strings, counters as numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportJson {
    pub name: String,
    /// `remote_write` or `nats`; empty when this collector does not
    /// configure the export (a cursor another collector keeps).
    pub kind: String,
    /// Where it sends, credentials redacted.
    pub destination: String,
    pub position: String,
    pub end: String,
    pub lag_readings: u64,
    pub lag_seconds: f64,
    pub sent: u64,
    pub retried: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub last_error: Option<String>,
}

impl From<crate::export::ExportRow> for ExportJson {
    fn from(r: crate::export::ExportRow) -> Self {
        ExportJson {
            name: r.name,
            kind: r.kind,
            destination: r.destination,
            position: r.position.to_string(),
            end: r.end.to_string(),
            lag_readings: r.lag_readings,
            lag_seconds: r.lag_seconds,
            sent: r.sent,
            retried: r.retried,
            dropped: r.dropped,
            skipped: r.skipped,
            last_error: r.last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fleet page's agents table shows ListAgents' committed ranges
    /// (a backlog draining beside live data), under the name its script
    /// reads.
    #[test]
    fn an_agent_carries_its_committed_ranges_to_the_page() {
        let info = pb::AgentInfo {
            id: "edge".to_owned(),
            committed_seq: 10,
            committed_ranges: 3,
            ..Default::default()
        };
        let json = serde_json::to_value(AgentJson::from(info)).expect("serializes");
        assert_eq!(json["committed_ranges"], 3);
        assert_eq!(json["committed_seq"], 10);
        assert_eq!(json["error"], "");
    }

    /// An agent whose stored row does not read reaches the page with the
    /// error naming it (the script shows it in the ranges cell).
    #[test]
    fn an_agent_carries_its_error_to_the_page() {
        let info = pb::AgentInfo {
            id: "edge".to_owned(),
            error: "epochs row of agent \"edge\", epoch 9: format 7".to_owned(),
            ..Default::default()
        };
        let json = serde_json::to_value(AgentJson::from(info)).expect("serializes");
        assert_eq!(
            json["error"],
            "epochs row of agent \"edge\", epoch 9: format 7"
        );
    }
}
