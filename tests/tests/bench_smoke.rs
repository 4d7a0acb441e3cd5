//! `tributary-bench smoke`: every benchmark scenario at tiny sizes, so
//! `cargo xtask test` proves the harness works and its numbers agree
//! (readings counted = readings stored, the whole day read back, ...).
//! Nothing here is timed: the numbers are printed, never compared with a
//! target.

use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use tributary_tests::process::bin_path;

#[test]
fn every_bench_scenario_runs_and_its_counts_agree() -> Result<()> {
    let output = Command::new(bin_path("tributary-bench")?)
        .args(["smoke", "--json"])
        .output()
        .context("run tributary-bench smoke")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "tributary-bench smoke failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let reports: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("one JSON object per line expected:\n{stdout}"))?;
    let names: Vec<&str> = reports
        .iter()
        .filter_map(|r| r["scenario"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ingest",
            "poll",
            "streams",
            "wire",
            "vs-prometheus",
            "config",
            "snmp",
            "recovery"
        ],
        "every scenario reports once"
    );
    for report in &reports {
        assert_eq!(report["consistent"], Value::Bool(true), "{report:#}");
        assert!(
            !report["checks"].as_array().is_none_or(Vec::is_empty),
            "{} checks something: {report:#}",
            report["scenario"]
        );
    }
    let ingest = &reports[0];
    for key in [
        "readings_per_s",
        "ceiling_readings_per_s",
        "ratio",
        "range_query_ms",
    ] {
        assert!(
            ingest[key].as_f64().is_some_and(|v| v > 0.0),
            "ingest {key}: {ingest:#}"
        );
    }
    // The SNMP walk was measured on both sides, and traps were stored.
    let snmp = &reports[6];
    for key in [
        "agent_us_per_varbind",
        "netsnmp_us_per_varbind_with_startup",
        "traps_per_cpu_s",
    ] {
        assert!(
            snmp[key].as_f64().is_some_and(|v| v > 0.0),
            "snmp {key}: {snmp:#}"
        );
    }
    Ok(())
}
