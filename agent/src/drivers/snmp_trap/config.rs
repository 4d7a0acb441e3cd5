//! Settings of the SNMP notification receiver (`driver = "snmp_trap"`):
//! where it listens, the community a notification must carry, the MIB
//! modules its OIDs are named from and how many notifications wait for the
//! next poll.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source};
use crate::drivers::settings::{DriverTable, Settings};
use crate::drivers::snmp::At;

/// Notifications kept between two polls unless `max_pending` says.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// Modules whose names are used unless `mibs` says: the generic traps
/// (`coldStart`, `linkDown`, ...) and the interface objects they carry.
pub const DEFAULT_MIBS: &[&str] = &["SNMPv2-MIB", "IF-MIB"];

/// An SNMP notification receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpTrapConfig {
    /// UDP address to receive on (`0.0.0.0:162` needs the privilege to
    /// bind a low port).
    pub listen: SocketAddr,
    /// The community an SNMPv1/v2c notification must carry; others are
    /// counted and dropped (and an inform is not acknowledged).
    pub community: String,
    /// MIB modules whose object and notification names label readings.
    pub mibs: Vec<String>,
    /// Notifications kept for the next poll; beyond that they are counted
    /// as dropped (an inform is then not acknowledged, so its sender
    /// retries).
    pub max_pending: usize,
    /// `mibs` was written (a module missing is then an error; the default
    /// modules are used when present).
    pub mibs_written: bool,
    /// Where the device's `listen` was written, for errors found later.
    pub at: At,
    /// Names of the OIDs of `mibs`, filled in when the whole config is
    /// read (`drivers::snmp::resolve_names`).
    pub names: OidNames,
}

/// What an OID is called and how its values read.
#[derive(Debug, Clone, PartialEq)]
pub struct OidName {
    pub name: String,
    pub meaning: crate::drivers::snmp::ValueMeaning,
}

/// OID → name, for the longest known prefix of an OID. Compared by
/// content; shown by size (it can hold thousands of names).
#[derive(Clone, PartialEq, Default)]
pub struct OidNames(pub Arc<BTreeMap<Vec<u32>, OidName>>);

impl std::fmt::Debug for OidNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OidNames({} names)", self.0.len())
    }
}

impl OidNames {
    /// The name of `oid` itself, or of its longest named prefix with the
    /// rest of `oid` (the instance: `3` of `ifOperStatus.3`).
    pub fn find<'a>(&'a self, oid: &'a [u32]) -> Option<(&'a OidName, &'a [u32])> {
        (1..=oid.len())
            .rev()
            .find_map(|n| self.0.get(&oid[..n]).map(|name| (name, &oid[n..])))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpTrap {
    listen: Spanned<String>,
    community: Spanned<String>,
    mibs: Option<Vec<Spanned<String>>>,
    max_pending: Option<Spanned<usize>>,
}

impl RawSnmpTrap {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<SnmpTrapConfig, ConfigError> {
        let listen = self
            .listen
            .get_ref()
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                src.error(
                    self.listen.span(),
                    format!("{key}.listen"),
                    format!(
                        "invalid address \"{}\" (expected ip:port, e.g. 0.0.0.0:162)",
                        self.listen.get_ref()
                    ),
                )
            })?;
        if self.community.get_ref().is_empty() {
            return Err(src.error(
                self.community.span(),
                format!("{key}.community"),
                "must not be empty",
            ));
        }
        let mibs_written = self.mibs.is_some();
        let at = At {
            file: src.file().to_owned(),
            line: src.line(self.listen.span().start),
            key: format!("{key}.mibs"),
        };
        let mibs = match self.mibs {
            None => DEFAULT_MIBS.iter().map(|m| (*m).to_owned()).collect(),
            Some(list) => {
                let mut mibs = Vec::with_capacity(list.len());
                for m in list {
                    let name = m.get_ref();
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(src.error(
                            m.span(),
                            format!("{key}.mibs"),
                            format!("\"{name}\" is not a MIB module name (e.g. \"IF-MIB\")"),
                        ));
                    }
                    mibs.push(m.into_inner());
                }
                mibs
            }
        };
        let max_pending = match self.max_pending {
            None => DEFAULT_MAX_PENDING,
            Some(n) if (1..=1_000_000).contains(n.get_ref()) => n.into_inner(),
            Some(n) => {
                return Err(src.error(
                    n.span(),
                    format!("{key}.max_pending"),
                    format!("{} is out of range (1..=1000000)", n.get_ref()),
                ));
            }
        };
        Ok(SnmpTrapConfig {
            listen,
            community: self.community.into_inner(),
            mibs,
            max_pending,
            mibs_written,
            at,
            names: OidNames::default(),
        })
    }
}

impl Settings for SnmpTrapConfig {
    const SECRETS: &'static [&'static str] = &["community"];

    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawSnmpTrap = table.deserialize()?;
        raw.validate(table.src, table.key)
    }
}
