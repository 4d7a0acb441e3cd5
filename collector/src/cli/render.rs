//! What each subcommand prints: agents, series and readings as rows
//! (table, CSV) or JSON objects, with times as RFC 3339 and labels as in
//! the Prometheus text format.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value as Json, json};
use tributary_proto::v1 as pb;

use super::writers::{write_csv, write_csv_row, write_json_array, write_table};
use super::{Format, READINGS_CSV_HEADER};
use crate::model::{Point, SeriesMeta, StoredValue};

/// Writes agents in `format`.
pub fn write_agents(
    out: &mut impl Write,
    format: Format,
    agents: &[pb::AgentInfo],
) -> io::Result<()> {
    let last_seen = |a: &pb::AgentInfo| {
        if a.last_seen_ns == 0 {
            String::new()
        } else {
            rfc3339(a.last_seen_ns)
        }
    };
    match format {
        Format::Json => {
            let rows: Vec<Json> = agents
                .iter()
                .map(|a| {
                    json!({
                        "id": a.id,
                        "connected": a.connected,
                        "collector": a.collector,
                        "peer": a.peer,
                        "last_seen_ns": a.last_seen_ns,
                        "last_seen": last_seen(a),
                        "epoch": format!("{:016x}", a.epoch),
                        "committed_seq": a.committed_seq,
                        "committed_ranges": a.committed_ranges,
                        "lag": a.lag,
                        "readings_stored": a.readings_stored,
                        "batches_deduplicated": a.batches_deduplicated,
                        "batches_resent": a.batches_resent,
                        "dropped_at_agent": a.dropped_at_agent,
                        "skewed_readings": a.skewed_readings,
                        "error": a.error,
                    })
                })
                .collect();
            write_json_array(out, &rows)
        }
        Format::Csv | Format::Table => {
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.connected.to_string(),
                        a.collector.clone(),
                        a.peer.clone(),
                        last_seen(a),
                        format!("{:016x}", a.epoch),
                        a.committed_seq.to_string(),
                        a.lag.to_string(),
                        a.readings_stored.to_string(),
                        a.batches_deduplicated.to_string(),
                        a.batches_resent.to_string(),
                        a.dropped_at_agent.to_string(),
                        a.skewed_readings.to_string(),
                        // Last in CSV (scripts read columns by position: a
                        // new column goes at the end); beside COMMITTED SEQ
                        // in the table.
                        a.committed_ranges.to_string(),
                        a.error.clone(),
                    ]
                })
                .collect();
            if format == Format::Csv {
                let header = "id,connected,collector,peer,last_seen,epoch,committed_seq,lag,\
                              readings_stored,batches_deduplicated,batches_resent,dropped_at_agent,\
                              skewed_readings,ranges,error";
                write_csv(out, header, &rows)
            } else {
                let mut rows = rows;
                let mut errors = Vec::new();
                for row in &mut rows {
                    // The error goes below the table (a long message
                    // would widen every row); RANGES says "unreadable".
                    let error = row.pop().unwrap_or_default();
                    if let Some(ranges) = row.pop() {
                        row.insert(
                            7,
                            if error.is_empty() {
                                ranges
                            } else {
                                "unreadable".into()
                            },
                        );
                    }
                    if !error.is_empty() {
                        let id = row.first().map_or("", String::as_str);
                        // On one line, as the table's cells are.
                        let error = error.replace(char::is_control, " ");
                        errors.push(format!("agent {id:?}: {error}"));
                    }
                }
                let header = [
                    "ID",
                    "CONNECTED",
                    "COLLECTOR",
                    "PEER",
                    "LAST SEEN",
                    "EPOCH",
                    "COMMITTED SEQ",
                    "RANGES",
                    "LAG",
                    "READINGS STORED",
                    "DEDUPLICATED",
                    "RESENT",
                    "DROPPED AT AGENT",
                    "SKEWED",
                ];
                write_table(out, &header, &rows)?;
                for e in errors {
                    writeln!(out, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

/// Writes series in `format`.
pub fn write_series(out: &mut impl Write, format: Format, series: &[SeriesMeta]) -> io::Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<Json> = series
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "agent": s.key.agent,
                        "device": s.key.device,
                        "metric": s.key.metric,
                        "labels": s.key.labels,
                        "unit": s.key.unit,
                    })
                })
                .collect();
            write_json_array(out, &rows)
        }
        Format::Csv | Format::Table => {
            let rows: Vec<Vec<String>> = series
                .iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        s.key.agent.clone(),
                        s.key.device.clone(),
                        s.key.metric.clone(),
                        labels_text(s),
                        s.key.unit.clone(),
                    ]
                })
                .collect();
            if format == Format::Csv {
                write_csv(out, "id,agent,device,metric,labels,unit", &rows)
            } else {
                let header = ["ID", "AGENT", "DEVICE", "METRIC", "LABELS", "UNIT"];
                write_table(out, &header, &rows)
            }
        }
    }
}

/// Writes readings in `format`, in the order given.
pub fn write_readings(
    out: &mut impl Write,
    format: Format,
    readings: &[(Arc<SeriesMeta>, Point)],
) -> io::Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<Json> = readings.iter().map(|(s, p)| reading_json(s, p)).collect();
            write_json_array(out, &rows)
        }
        Format::Csv => {
            let rows: Vec<Vec<String>> = readings.iter().map(|(s, p)| reading_csv(s, p)).collect();
            write_csv(out, READINGS_CSV_HEADER, &rows)
        }
        Format::Table => {
            let rows: Vec<Vec<String>> =
                readings.iter().map(|(s, p)| reading_table(s, p)).collect();
            write_table(out, &READINGS_TABLE_HEADER, &rows)
        }
    }
}

const READINGS_TABLE_HEADER: [&str; 7] = [
    "TIME", "AGENT", "DEVICE", "METRIC", "LABELS", "VALUE", "STATUS",
];

/// Writes one streamed chunk: table lines without a header (widths are not
/// known in advance), CSV rows (the header is written once by the caller),
/// or JSON lines.
pub fn write_tail_chunk(
    out: &mut impl Write,
    format: Format,
    series: &SeriesMeta,
    points: &[Point],
) -> io::Result<()> {
    for p in points {
        match format {
            Format::Json => {
                serde_json::to_writer(&mut *out, &reading_json(series, p))?;
                writeln!(out)?;
            }
            Format::Csv => write_csv_row(out, &reading_csv(series, p))?,
            Format::Table => writeln!(out, "{}", reading_table(series, p).join("  "))?,
        }
    }
    Ok(())
}

/// `(value, status, failure message)` of a stored value; the value is empty
/// when the poll failed.
fn value_parts(v: &StoredValue) -> (String, &'static str, Option<&str>) {
    match v {
        StoredValue::F64(x) => (x.to_string(), "ok", None),
        StoredValue::I64(x) => (x.to_string(), "ok", None),
        StoredValue::U64(x) => (x.to_string(), "ok", None),
        StoredValue::Bool(x) => (x.to_string(), "ok", None),
        StoredValue::Str(x) => (x.clone(), "ok", None),
        StoredValue::Timeout(m) => (String::new(), "timeout", Some(m)),
        StoredValue::Error(m) => (String::new(), "error", Some(m)),
    }
}

fn reading_csv(s: &SeriesMeta, p: &Point) -> Vec<String> {
    let (value, status, _) = value_parts(&p.value);
    vec![
        s.key.agent.clone(),
        s.key.device.clone(),
        s.key.metric.clone(),
        p.ts_ns.to_string(),
        value,
        status.to_string(),
    ]
}

fn reading_table(s: &SeriesMeta, p: &Point) -> Vec<String> {
    let (mut value, status, message) = value_parts(&p.value);
    if !value.is_empty() && !s.key.unit.is_empty() {
        value = format!("{value} {}", s.key.unit);
    }
    let status = match message {
        Some(m) if !m.is_empty() => format!("{status}: {m}"),
        _ => status.to_string(),
    };
    vec![
        rfc3339(p.ts_ns),
        s.key.agent.clone(),
        s.key.device.clone(),
        s.key.metric.clone(),
        labels_text(s),
        value,
        status,
    ]
}

fn reading_json(s: &SeriesMeta, p: &Point) -> Json {
    let (_, status, message) = value_parts(&p.value);
    let value = match &p.value {
        // NaN and infinities have no JSON form and become null.
        StoredValue::F64(x) => json!(x),
        StoredValue::I64(x) => json!(x),
        // serde_json writes a u64 as its exact decimal integer.
        StoredValue::U64(x) => json!(x),
        StoredValue::Bool(x) => json!(x),
        StoredValue::Str(x) => json!(x),
        StoredValue::Timeout(_) | StoredValue::Error(_) => Json::Null,
    };
    let mut obj = json!({
        "agent": s.key.agent,
        "device": s.key.device,
        "metric": s.key.metric,
        "labels": s.key.labels,
        "unit": s.key.unit,
        "ts_ns": p.ts_ns,
        "time": rfc3339_nanos(p.ts_ns),
        "received_ns": p.received_ns,
        "value": value,
        "status": status,
    });
    if let (Some(m), Some(map)) = (message, obj.as_object_mut()) {
        map.insert("message".into(), json!(m));
    }
    obj
}

/// Labels as `{k="v",...}`, values escaped as in the Prometheus text format.
pub fn labels_text(s: &SeriesMeta) -> String {
    let body: Vec<String> = s
        .key
        .labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Device time as RFC 3339 with milliseconds (nanoseconds in JSON); times
/// before 1970 stay raw nanoseconds.
pub(super) fn rfc3339(ns: i64) -> String {
    match u64::try_from(ns) {
        Ok(n) => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(n)).to_string(),
        Err(_) => ns.to_string(),
    }
}

fn rfc3339_nanos(ns: i64) -> String {
    match u64::try_from(ns) {
        Ok(n) => humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(n)).to_string(),
        Err(_) => ns.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::SeriesKey;

    fn meta(metric: &str, labels: &[(&str, &str)]) -> Arc<SeriesMeta> {
        Arc::new(SeriesMeta {
            id: 1,
            key: SeriesKey {
                agent: "edge-1".into(),
                device: "pump,1".into(),
                metric: metric.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                unit: "C".into(),
            },
        })
    }

    fn point(ts_ns: i64, value: StoredValue) -> Point {
        Point {
            ts_ns,
            received_ns: ts_ns + 1,
            value,
        }
    }

    fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn readings_csv_has_the_exact_header_and_empty_value_on_failure() {
        let m = meta("temp", &[]);
        let readings = vec![
            (Arc::clone(&m), point(1, StoredValue::F64(21.5))),
            (
                Arc::clone(&m),
                point(2, StoredValue::Timeout("no answer".into())),
            ),
            (
                Arc::clone(&m),
                point(3, StoredValue::Error("refused".into())),
            ),
            (
                Arc::clone(&m),
                point(4, StoredValue::Str("on, \"auto\"".into())),
            ),
            (Arc::clone(&m), point(5, StoredValue::Bool(true))),
            (m, point(6, StoredValue::I64(-3))),
        ];
        let text = render(|out| write_readings(out, Format::Csv, &readings));
        assert_eq!(
            text,
            "agent,device,metric,ts_ns,value,status\n\
             edge-1,\"pump,1\",temp,1,21.5,ok\n\
             edge-1,\"pump,1\",temp,2,,timeout\n\
             edge-1,\"pump,1\",temp,3,,error\n\
             edge-1,\"pump,1\",temp,4,\"on, \"\"auto\"\"\",ok\n\
             edge-1,\"pump,1\",temp,5,true,ok\n\
             edge-1,\"pump,1\",temp,6,-3,ok\n"
        );
    }

    #[test]
    fn table_aligns_and_shows_labels_and_failures() {
        let readings = vec![
            (
                meta("t", &[("room", "a\"1"), ("z", "x")]),
                point(0, StoredValue::F64(1.0)),
            ),
            (
                meta("longer", &[]),
                point(1_000_000, StoredValue::Error("boom".into())),
            ),
        ];
        let text = render(|out| write_readings(out, Format::Table, &readings));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME "));
        assert!(lines[1].contains(r#"{room="a\"1",z="x"}"#), "{text}");
        assert!(lines[1].contains("1970-01-01T00:00:00.000Z"), "{text}");
        assert!(lines[2].ends_with("error: boom"), "{text}");
        // Columns line up: LABELS starts at the same offset on every line.
        let col = lines[0].find("LABELS").unwrap();
        assert_eq!(lines[1].find('{').unwrap(), col);
        assert_eq!(lines[2].find('{').unwrap(), col);
    }

    #[test]
    fn json_readings_carry_failure_messages() {
        let readings = vec![(
            meta("t", &[]),
            point(5, StoredValue::Timeout("slow".into())),
        )];
        let text = render(|out| write_readings(out, Format::Json, &readings));
        let v: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0]["status"], "timeout");
        assert_eq!(v[0]["message"], "slow");
        assert!(v[0]["value"].is_null());
        assert_eq!(v[0]["ts_ns"], 5);
    }

    #[test]
    fn agents_csv_and_table() {
        let agents = vec![pb::AgentInfo {
            id: "edge-1".into(),
            connected: true,
            peer: "10.0.0.5:4411".into(),
            last_seen_ns: 0,
            epoch: 0xab,
            committed_seq: 7,
            readings_stored: 70,
            batches_deduplicated: 1,
            dropped_at_agent: 2,
            batches_resent: 3,
            lag: 4,
            skewed_readings: 5,
            collector: "col-a".into(),
            committed_ranges: 6,
            error: String::new(),
        }];
        let csv = render(|out| write_agents(out, Format::Csv, &agents));
        assert_eq!(
            csv,
            "id,connected,collector,peer,last_seen,epoch,committed_seq,lag,readings_stored,\
             batches_deduplicated,batches_resent,dropped_at_agent,skewed_readings,ranges,error\n\
             edge-1,true,col-a,10.0.0.5:4411,,00000000000000ab,7,4,70,1,3,2,5,6,\n"
        );
        let table = render(|out| write_agents(out, Format::Table, &agents));
        assert!(table.starts_with("ID "), "{table}");
        let words = |line: &str| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            // LAST SEEN is empty: the epoch is the fifth word.
            words(lines[1])[4..8],
            ["00000000000000ab", "7", "6", "4"],
            "RANGES beside COMMITTED SEQ in the table: {table}"
        );
        assert!(
            table.contains(" COLLECTOR ") && table.contains(" col-a "),
            "{table}"
        );
        let json = render(|out| write_agents(out, Format::Json, &agents));
        let v: Json = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["collector"], "col-a");
        assert_eq!(v[0]["committed_ranges"], 6);
        assert_eq!(v[0]["error"], "");
    }

    /// An agent whose stored row does not read: RANGES says so, the
    /// message (naming the row) follows the table, and the other agents'
    /// rows are as usual.
    #[test]
    fn agents_table_shows_an_unreadable_row() {
        let agents = vec![
            pb::AgentInfo {
                id: "bad".into(),
                committed_seq: 4,
                error: "epochs row of agent \"bad\", epoch 9: format 7".into(),
                ..Default::default()
            },
            pb::AgentInfo {
                id: "good".into(),
                committed_seq: 10,
                committed_ranges: 2,
                ..Default::default()
            },
        ];
        let table = render(|out| write_agents(out, Format::Table, &agents));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].contains(" unreadable "), "{table}");
        assert!(
            lines[2].starts_with("good ") && !lines[2].contains("unreadable"),
            "{table}"
        );
        assert_eq!(
            lines[3],
            "agent \"bad\": epochs row of agent \"bad\", epoch 9: format 7"
        );
        let csv = render(|out| write_agents(out, Format::Csv, &agents));
        assert!(csv.contains("format 7"), "{csv}");
    }
}
