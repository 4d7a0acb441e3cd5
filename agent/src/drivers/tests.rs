//! Tests of the driver registry: every driver it names is used by an
//! example config under deploy/examples.

use std::path::Path;

use super::*;

#[test]
fn deploy_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut drivers = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/examples") {
        let path = entry.expect("entry").path();
        let collector = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("collector"));
        if path.extension().is_some_and(|e| e == "toml") && !collector {
            let cfg = crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            drivers.extend(cfg.devices.iter().map(|d| d.driver.name()));
        }
    }
    for d in DRIVERS.iter().filter(|d| **d != "prometheus") {
        assert!(drivers.contains(d), "no example uses driver {d}");
    }
}
