//! Test helpers for driver settings: one device of a minimal agent config,
//! parsed as `conf/agent.toml` (so relative paths resolve below `conf/`).

use std::path::Path;

use super::DriverConfig;
use crate::config::{AgentConfig, parse};

const HEAD: &str = "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\n";

/// The driver settings of a device whose driver keys are `body`.
pub(crate) fn device(body: &str) -> Result<DriverConfig, String> {
    let text = format!("{HEAD}[[devices]]\nname = \"d\"\ninterval = \"1s\"\n{body}");
    parse(&text, Path::new("conf/agent.toml"))
        .map(|c: AgentConfig| c.devices[0].driver.clone())
        .map_err(|e| e.to_string())
}

/// The error a device whose driver keys are `body` gets.
pub(crate) fn err(body: &str) -> String {
    match device(body) {
        Ok(d) => panic!("expected an error, got {d:?}"),
        Err(e) => e,
    }
}
