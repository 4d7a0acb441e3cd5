//! MIB names in an SNMP device's settings resolved to numeric OIDs, once the
//! whole configuration is read ([`resolve_names`]): each device's
//! [`PendingName`]s get their OID, and, unless the config says otherwise,
//! their metric name (the object's), unit (its `UNITS`), value format and
//! enumerations (its textual conventions) and row index (its `INDEX`).
//! One [`Mibs`] serves the whole file, so a module is parsed once however
//! many devices name it; nothing is read when no device names a MIB object.

use std::collections::HashSet;
use std::time::Instant;

use tracing::info;

use super::config::{PendingName, SnmpConfig, Target};
use super::mib::{Mibs, Object};
use crate::config::{AgentConfig, ConfigError};
use crate::drivers::DriverConfig;

/// Resolves every MIB name of every SNMP device of `cfg`, reading MIB
/// modules from `cfg.mib_dirs`.
pub fn resolve_names(cfg: &mut AgentConfig) -> Result<(), ConfigError> {
    let any = cfg.devices.iter().any(|d| match &d.driver {
        DriverConfig::Snmp(s) => !s.pending.is_empty(),
        DriverConfig::SnmpTrap(t) => !t.mibs.is_empty(),
        _ => false,
    });
    if !any {
        return Ok(());
    }
    let started = Instant::now();
    let mut mibs = Mibs::new(cfg.mib_dirs.clone());
    let mut names = 0;
    for device in &mut cfg.devices {
        match &mut device.driver {
            DriverConfig::Snmp(s) => {
                names += s.pending.len();
                resolve_device(&mut mibs, s)?;
            }
            DriverConfig::SnmpTrap(t) => {
                crate::drivers::snmp_trap::resolve_trap_names(&mut mibs, t)?;
                names += t.names.0.len();
            }
            _ => {}
        }
    }
    info!(
        names,
        modules = mibs.loaded_modules(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "MIB names resolved"
    );
    Ok(())
}

/// Resolves one device's names with `mibs`.
pub fn resolve_device(mibs: &mut Mibs, s: &mut SnmpConfig) -> Result<(), ConfigError> {
    let pending = std::mem::take(&mut s.pending);
    let mut used: HashSet<String> = s
        .metrics
        .iter()
        .map(|m| m.name.clone())
        .chain(s.walks.iter().map(|w| w.name.clone()))
        .filter(|n| !n.is_empty())
        .collect();
    for p in pending {
        let object = lookup(mibs, &p)?;
        let mut oid = object.oid.clone();
        oid.extend_from_slice(&p.suffix);
        if oid.len() > 128 {
            return Err(p
                .at
                .error(format!("{} resolves to more than 128 arcs", shown(&p))));
        }
        let name = if p.default_name {
            let name = object.name.replace('-', "_");
            if !used.insert(name.clone()) {
                return Err(p.at.error(format!(
                    "duplicate metric name \"{name}\" (the name of {}): set `name`",
                    shown(&p)
                )));
            }
            Some(name)
        } else {
            None
        };
        let unit = if p.default_unit {
            object.units.clone()
        } else {
            None
        };
        let enum_label = match p.target {
            Target::Metric(i) => s.metrics.get(i).is_some_and(|m| m.meaning.enum_label),
            Target::Walk(i) => s.walks.get(i).is_some_and(|w| w.meaning.enum_label),
            Target::Lookup(_) => false,
        };
        if enum_label && object.enums.is_none() {
            return Err(p.at.error(format!(
                "enum_label: {}::{} is not an enumerated INTEGER",
                object.module, object.name
            )));
        }
        match p.target {
            Target::Metric(i) => {
                if let Some(m) = s.metrics.get_mut(i) {
                    m.oid = oid;
                    m.name = name.unwrap_or_else(|| m.name.clone());
                    m.unit = unit.unwrap_or_else(|| m.unit.clone());
                    m.meaning.format = object.format;
                    m.meaning.enums = object.enums.clone();
                }
            }
            Target::Walk(i) => {
                if let Some(w) = s.walks.get_mut(i) {
                    w.oid = oid;
                    w.name = name.unwrap_or_else(|| w.name.clone());
                    w.unit = unit.unwrap_or_else(|| w.unit.clone());
                    w.meaning.format = object.format;
                    w.meaning.enums = object.enums.clone();
                    w.index = object.index_oids.clone();
                }
            }
            Target::Lookup(i) => {
                if let Some(l) = s.lookups.get_mut(i) {
                    l.oid = oid;
                    l.format = object.format;
                    l.index = object.index_oids.clone();
                }
            }
        }
    }
    s.check_lookups()
}

fn lookup(mibs: &mut Mibs, p: &PendingName) -> Result<Object, ConfigError> {
    let found = match &p.module {
        Some(m) => mibs.object(m, &p.name),
        None => mibs.object_anywhere(&p.name),
    };
    found.map_err(|e| p.at.error(format!("cannot resolve {}: {e}", shown(p))))
}

/// The name as written.
fn shown(p: &PendingName) -> String {
    let mut out = match &p.module {
        Some(m) => format!("{m}::{}", p.name),
        None => p.name.clone(),
    };
    for arc in &p.suffix {
        out.push('.');
        out.push_str(&arc.to_string());
    }
    out
}
