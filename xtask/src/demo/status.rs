//! What the demo knows about the agents: `tributary-collector agents
//! --format json`, read tolerantly, and the live progress line built from it.
//!
//! The collector's CLI prints a JSON array of objects with `id`, `connected`
//! and `readings_stored` (collector/src/cli/render.rs, `write_agents`). The reader
//! also accepts `{"agents": [...]}`, JSON lines, and numbers as strings (as
//! protobuf's JSON mapping writes 64-bit integers), so a change in the CLI's
//! shape degrades the progress line instead of ending the demo.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::Workspace;
use crate::proc::output_within;

/// One agent as the collector reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStats {
    pub id: String,
    pub connected: bool,
    pub readings_stored: u64,
}

/// Ask the collector on `addr` for its agents.
pub fn fetch(ws: &Workspace, addr: SocketAddr) -> Result<Vec<AgentStats>> {
    let server = format!("http://{addr}");
    let output = output_within(
        std::process::Command::new(ws.bin("tributary-collector"))
            .args(["agents", "--server", &server, "--format", "json"]),
        Duration::from_secs(5),
    )?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default().trim();
        bail!("tributary-collector agents: {first}");
    }
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// Parse the CLI's JSON (see the module documentation for what is accepted).
pub fn parse(text: &str) -> Result<Vec<AgentStats>> {
    let rows: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(rows)) => rows,
        Ok(Value::Object(mut object)) => match object.remove("agents") {
            Some(Value::Array(rows)) => rows,
            _ => vec![Value::Object(object)],
        },
        Ok(other) => bail!("unexpected agents JSON: {other}"),
        // JSON lines: one object per line.
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("agents output is neither JSON nor JSON lines")?,
    };
    Ok(rows.iter().filter_map(agent).collect())
}

fn agent(row: &Value) -> Option<AgentStats> {
    let id = field(row, &["id", "agent", "agent_id", "agentId", "name"])?;
    Some(AgentStats {
        id: id.as_str().map_or_else(|| id.to_string(), str::to_owned),
        connected: field(row, &["connected", "is_connected", "state"]).is_some_and(truthy),
        readings_stored: field(
            row,
            &["readings_stored", "readingsStored", "readings", "stored"],
        )
        .and_then(number)
        .unwrap_or(0),
    })
}

fn field<'a>(row: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|name| row.get(name))
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.as_str(), "true" | "yes" | "connected"),
        Value::Number(n) => n.as_u64().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// `12345` → `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Readings stored by all agents together.
pub fn total(agents: &[AgentStats]) -> u64 {
    agents.iter().map(|a| a.readings_stored).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cli_array() {
        let json = r#"[{"id":"edge-1","connected":true,"readings_stored":10},
                       {"id":"edge-2","connected":false,"readings_stored":5}]"#;
        let agents = parse(json).ok();
        assert_eq!(
            agents,
            Some(vec![
                AgentStats {
                    id: "edge-1".into(),
                    connected: true,
                    readings_stored: 10
                },
                AgentStats {
                    id: "edge-2".into(),
                    connected: false,
                    readings_stored: 5
                },
            ])
        );
    }

    #[test]
    fn reads_other_shapes() {
        let wrapped = r#"{"agents":[{"agentId":"a","connected":"true","readingsStored":"7"}]}"#;
        let lines = "{\"id\":\"a\",\"connected\":true,\"readings_stored\":7}\n";
        for text in [wrapped, lines] {
            let agents = parse(text).unwrap_or_default();
            assert_eq!(agents.len(), 1, "{text}");
            assert_eq!(total(&agents), 7);
            assert!(agents[0].connected);
        }
        assert_eq!(parse("[]").ok(), Some(vec![]));
        assert!(parse("not json").is_err());
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
