//! Settings of the SNMP driver (`driver = "snmp"`): the agent's address,
//! version and credentials (v2c community or v3 USM), the scalars to GET,
//! the table columns to walk and the index lookups, and OIDs as written
//! ([`OidRef`]: numeric, `MODULE::name[.index]` or `name[.index]`).
//!
//! A MIB name cannot be resolved while one device table is read: the MIB
//! directories are an agent-level setting and loading modules is better
//! done once for the whole file. So a name is kept here as a
//! [`PendingName`] with its file, line and key, and
//! [`super::names::resolve_names`] fills in the OIDs (and default metric
//! names, units and value formats) when the whole file has been read.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::credentials::{usm_credentials, usm_user};
use super::mib::{Enums, Format};
pub use super::oid::{OidError, OidRef, oid_string, parse_oid, parse_oid_ref};
use crate::config::{ConfigError, Source, check_metric_name};
use crate::drivers::settings::{DriverTable, Settings, check_address};

/// Default for [`SnmpConfig::lookup_interval`] (as snmp_exporter's users
/// expect interface names to change rarely).
pub const DEFAULT_LOOKUP_INTERVAL: Duration = Duration::from_secs(600);

/// An SNMP agent.
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpConfig {
    /// `host:port` (UDP).
    pub address: String,
    pub security: SnmpSecurity,
    /// Scalars read with one GET per poll.
    pub metrics: Vec<SnmpMetric>,
    /// Table columns walked with GETBULK: one series per row.
    pub walks: Vec<SnmpWalk>,
    /// GETBULK max-repetitions; 10 unless set.
    pub max_repetitions: u32,
    /// Retransmissions of an unanswered request within the poll timeout; 1
    /// unless set.
    pub retries: u32,
    /// Columns whose values label the rows of the walks with the same index.
    pub lookups: Vec<SnmpLookup>,
    /// Drop a walk row's index label when a lookup labelled the row.
    pub drop_index: bool,
    /// How often the lookup columns are walked again.
    pub lookup_interval: Duration,
    /// MIB names not resolved yet; empty once the whole config is loaded.
    pub pending: Vec<PendingName>,
}

/// An index lookup: `{ label = "ifName", oid = "IF-MIB::ifName" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpLookup {
    pub label: String,
    pub oid: Vec<u32>,
    /// The OIDs of the row's INDEX objects when the MIB says them.
    pub index: Option<Vec<Vec<u32>>>,
    pub format: Format,
    /// Where the lookup was written.
    pub at: At,
}

/// What the MIB says about a value: how to show it and its named values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValueMeaning {
    pub format: Format,
    /// Named values of an enumerated INTEGER.
    pub enums: Option<Enums>,
    /// Add the value's name as a label named after the metric.
    pub enum_label: bool,
}

/// Where in the config something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: String,
    pub line: usize,
    pub key: String,
}

impl At {
    fn new(src: &Source<'_>, span: Range<usize>, key: String) -> Self {
        At {
            file: src.file().to_owned(),
            line: src.line(span.start),
            key,
        }
    }

    /// A config error here.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line,
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

/// Which entry a [`PendingName`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Metric(usize),
    Walk(usize),
    Lookup(usize),
}

/// A MIB name to resolve once the whole config is read.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingName {
    pub target: Target,
    pub module: Option<String>,
    pub name: String,
    pub suffix: Vec<u32>,
    /// Where the `oid` was written.
    pub at: At,
    /// The metric name is the object's (no `name` key).
    pub default_name: bool,
    /// The unit comes from the MIB's UNITS (no `unit` key).
    pub default_unit: bool,
}

/// SNMP version and credentials.
#[derive(Clone, PartialEq)]
pub enum SnmpSecurity {
    /// SNMPv2c with a community string.
    V2c { community: String },
    /// SNMPv3 with the user-based security model.
    V3(SnmpV3),
}

impl std::fmt::Debug for SnmpSecurity {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnmpSecurity::V2c { .. } => f.write_str("V2c(***)"),
            SnmpSecurity::V3(v3) => write!(
                f,
                "V3(user {}, auth {:?}, priv {:?})",
                v3.user,
                v3.auth.as_ref().map(|(p, _)| p),
                v3.privacy.as_ref().map(|(p, _)| p)
            ),
        }
    }
}

/// SNMPv3 USM credentials. `privacy` is only set when `auth` is.
#[derive(Clone, PartialEq)]
pub struct SnmpV3 {
    pub user: String,
    pub auth: Option<(SnmpAuthProtocol, String)>,
    pub privacy: Option<(SnmpPrivProtocol, String)>,
    /// SNMPv3 context name; empty unless set.
    pub context: String,
}

/// USM authentication protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnmpAuthProtocol {
    /// HMAC-SHA-96 (RFC 3414).
    Sha1,
    /// HMAC-SHA-256-192 (RFC 7860).
    Sha256,
    /// HMAC-SHA-512-384 (RFC 7860).
    Sha512,
}

/// USM privacy protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnmpPrivProtocol {
    /// AES-128 in CFB mode (RFC 3826).
    Aes128,
}

/// One scalar read with GET.
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpMetric {
    pub name: String,
    /// Numeric OID arcs, e.g. `[1, 3, 6, 1, 2, 1, 1, 3, 0]`.
    pub oid: Vec<u32>,
    pub unit: String,
    pub meaning: ValueMeaning,
}

/// One table column walked: every row below `oid` becomes a series whose
/// `index_label` is the row index (the OID suffix after `oid`).
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpWalk {
    pub name: String,
    pub oid: Vec<u32>,
    pub unit: String,
    /// `index` unless set.
    pub index_label: String,
    pub meaning: ValueMeaning,
    /// The OIDs of the row's INDEX objects when the MIB says them.
    pub index: Option<Vec<Vec<u32>>>,
}

impl SnmpLookup {
    /// Whether this lookup labels the rows of `walk`: when the MIB gives
    /// both rows' INDEX, when those are the same objects (compared by OID,
    /// so `IF-MIB::ifIndex` and `RFC1213-MIB::ifIndex` match); otherwise
    /// (an OID written as numbers, or a table whose INDEX the MIB does not
    /// give) only when both are columns of the same table entry (their
    /// OIDs differ in the last arc only).
    pub fn applies_to(&self, walk: &SnmpWalk) -> bool {
        match (&self.index, &walk.index) {
            (Some(a), Some(b)) => a == b,
            _ => {
                self.oid.len() == walk.oid.len()
                    && self.oid.len() > 1
                    && self.oid[..self.oid.len() - 1] == walk.oid[..walk.oid.len() - 1]
            }
        }
    }
}

impl SnmpConfig {
    /// For each walk, the lookups that label its rows (indexes into
    /// `lookups`).
    pub fn lookups_by_walk(&self) -> Vec<Vec<usize>> {
        self.walks
            .iter()
            .map(|w| {
                (0..self.lookups.len())
                    .filter(|&i| self.lookups[i].applies_to(w))
                    .collect()
            })
            .collect()
    }

    /// Checks the lookups once every OID is known: each labels some walk,
    /// and its label is not one the walk's rows already carry (the index
    /// label, or the enumeration label named after the walk), which it
    /// would overwrite, merging rows into one series.
    pub fn check_lookups(&self) -> Result<(), ConfigError> {
        let by_walk = self.lookups_by_walk();
        for (i, l) in self.lookups.iter().enumerate() {
            if !by_walk.iter().any(|applies| applies.contains(&i)) {
                return Err(l.at.error(format!(
                    "lookup \"{}\" ({}) labels no walk: a lookup labels the walks whose rows \
                     have the same INDEX objects (MIB names for both), or, for an OID written \
                     as numbers, the walks of columns of the same table",
                    l.label,
                    oid_string(&l.oid)
                )));
            }
        }
        for (w, applies) in self.walks.iter().zip(&by_walk) {
            for l in applies.iter().filter_map(|&i| self.lookups.get(i)) {
                let clash = if l.label == w.index_label {
                    Some("its index label")
                } else if w.meaning.enum_label && l.label == w.name {
                    Some("its enum_label label")
                } else {
                    None
                };
                if let Some(what) = clash {
                    return Err(l.at.error(format!(
                        "lookup label \"{}\" is {what} on the rows of walk \"{}\": \
                         choose another label (or `index_label`)",
                        l.label, w.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `version = "2c"` or `version = 3`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawVersion {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmp {
    address: Spanned<String>,
    version: Option<Spanned<RawVersion>>,
    community: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    auth_protocol: Option<Spanned<String>>,
    auth_password: Option<Spanned<String>>,
    priv_protocol: Option<Spanned<String>>,
    priv_password: Option<Spanned<String>>,
    context: Option<Spanned<String>>,
    metrics: Option<Spanned<Vec<Spanned<RawSnmpMetric>>>>,
    walks: Option<Spanned<Vec<Spanned<RawSnmpWalk>>>>,
    max_repetitions: Option<Spanned<u32>>,
    retries: Option<u32>,
    lookups: Option<Vec<Spanned<RawLookup>>>,
    drop_index: Option<bool>,
    lookup_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpMetric {
    name: Option<Spanned<String>>,
    oid: Spanned<String>,
    unit: Option<String>,
    enum_label: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpWalk {
    name: Option<Spanned<String>>,
    oid: Spanned<String>,
    unit: Option<String>,
    index_label: Option<Spanned<String>>,
    enum_label: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLookup {
    label: Spanned<String>,
    oid: Spanned<String>,
}

/// Smallest USM password net-snmp accepts (RFC 3414 recommends 8).
pub(super) const MIN_USM_PASSWORD: usize = 8;

impl RawSnmp {
    fn validate(
        self,
        src: &Source<'_>,
        key: &str,
        span: Range<usize>,
    ) -> Result<SnmpConfig, ConfigError> {
        let address = check_address(src, &self.address, &format!("{key}.address"))?;
        let v3 = match &self.version {
            None => false,
            Some(v) => match v.get_ref() {
                RawVersion::Text(t) if t == "2c" => false,
                RawVersion::Text(t) if t == "3" => true,
                RawVersion::Int(3) => true,
                other => {
                    let shown = match other {
                        RawVersion::Int(n) => n.to_string(),
                        RawVersion::Text(t) => format!("\"{t}\""),
                    };
                    return Err(src.error(
                        v.span(),
                        format!("{key}.version"),
                        format!("unsupported SNMP version {shown} (expected \"2c\" or \"3\")"),
                    ));
                }
            },
        };
        let only = |value: &Option<Spanned<String>>, name: &str, version: &str| {
            value.as_ref().map_or(Ok(()), |v| {
                Err(src.error(
                    v.span(),
                    format!("{key}.{name}"),
                    format!("`{name}` is only used with version = \"{version}\""),
                ))
            })
        };
        let security = if v3 {
            only(&self.community, "community", "2c")?;
            let user = self.user.as_ref().ok_or_else(|| {
                src.error(
                    span.clone(),
                    key,
                    "missing key `user` for driver snmp with version \"3\"",
                )
            })?;
            let user = usm_user(src, key, user)?;
            let (auth, privacy) = usm_credentials(
                src,
                key,
                (&self.auth_protocol, &self.auth_password),
                (&self.priv_protocol, &self.priv_password),
            )?;
            SnmpSecurity::V3(SnmpV3 {
                user,
                auth,
                privacy,
                context: self
                    .context
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .unwrap_or_default(),
            })
        } else {
            for (value, name) in [
                (&self.user, "user"),
                (&self.auth_protocol, "auth_protocol"),
                (&self.auth_password, "auth_password"),
                (&self.priv_protocol, "priv_protocol"),
                (&self.priv_password, "priv_password"),
                (&self.context, "context"),
            ] {
                only(value, name, "3")?;
            }
            SnmpSecurity::V2c {
                community: self
                    .community
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .unwrap_or_else(|| "public".to_owned()),
            }
        };
        let mut pending = Vec::new();
        // An OID as written: numeric now, a name later.
        let mut oid = |value: &Spanned<String>,
                       key: String,
                       target: Target,
                       name: Option<&Spanned<String>>,
                       unit: bool|
         -> Result<Vec<u32>, ConfigError> {
            let parsed = parse_oid_ref(value.get_ref()).map_err(|e| {
                src.error(
                    value.span(),
                    key.clone(),
                    format!("invalid oid \"{}\": {e}", value.get_ref()),
                )
            })?;
            match parsed {
                OidRef::Numeric(arcs) => {
                    if name.is_none() && !matches!(target, Target::Lookup(_)) {
                        return Err(src.error(
                            value.span(),
                            key,
                            "a numeric oid needs a `name` (only MIB names default it)",
                        ));
                    }
                    Ok(arcs)
                }
                OidRef::Name {
                    module,
                    name: object,
                    suffix,
                } => {
                    pending.push(PendingName {
                        target,
                        module,
                        name: object,
                        suffix,
                        at: At::new(src, value.span(), key),
                        // A lookup is a label, not a metric: it takes no
                        // metric name.
                        default_name: name.is_none() && !matches!(target, Target::Lookup(_)),
                        default_unit: !unit,
                    });
                    Ok(Vec::new())
                }
            }
        };
        let mut seen = HashMap::new();
        let mut metrics = Vec::new();
        if let Some(list) = &self.metrics {
            for (i, m) in list.get_ref().iter().enumerate() {
                let m = m.get_ref();
                let mkey = format!("{key}.metrics[{i}]");
                if let Some(name) = &m.name {
                    check_metric_name(src, &mut seen, name, &format!("{mkey}.name"))?;
                }
                let arcs = oid(
                    &m.oid,
                    format!("{mkey}.oid"),
                    Target::Metric(i),
                    m.name.as_ref(),
                    m.unit.is_some(),
                )?;
                if m.enum_label == Some(true) && !arcs.is_empty() {
                    return Err(src.error(
                        m.oid.span(),
                        format!("{mkey}.enum_label"),
                        "enum_label needs a MIB name in `oid` (the names come from the MIB)",
                    ));
                }
                metrics.push(SnmpMetric {
                    oid: arcs,
                    name: m
                        .name
                        .as_ref()
                        .map(|n| n.get_ref().clone())
                        .unwrap_or_default(),
                    unit: m.unit.clone().unwrap_or_default(),
                    meaning: ValueMeaning {
                        enum_label: m.enum_label.unwrap_or(false),
                        ..ValueMeaning::default()
                    },
                });
            }
        }
        let mut walks = Vec::new();
        if let Some(list) = &self.walks {
            for (i, w) in list.get_ref().iter().enumerate() {
                let w = w.get_ref();
                let wkey = format!("{key}.walks[{i}]");
                if let Some(name) = &w.name {
                    check_metric_name(src, &mut seen, name, &format!("{wkey}.name"))?;
                }
                let index_label = match &w.index_label {
                    Some(l) if l.get_ref().is_empty() => {
                        return Err(src.error(
                            l.span(),
                            format!("{wkey}.index_label"),
                            "must not be empty",
                        ));
                    }
                    Some(l) => l.get_ref().clone(),
                    None => "index".to_owned(),
                };
                let arcs = oid(
                    &w.oid,
                    format!("{wkey}.oid"),
                    Target::Walk(i),
                    w.name.as_ref(),
                    w.unit.is_some(),
                )?;
                if w.enum_label == Some(true) && !arcs.is_empty() {
                    return Err(src.error(
                        w.oid.span(),
                        format!("{wkey}.enum_label"),
                        "enum_label needs a MIB name in `oid` (the names come from the MIB)",
                    ));
                }
                walks.push(SnmpWalk {
                    oid: arcs,
                    name: w
                        .name
                        .as_ref()
                        .map(|n| n.get_ref().clone())
                        .unwrap_or_default(),
                    unit: w.unit.clone().unwrap_or_default(),
                    index_label,
                    meaning: ValueMeaning {
                        enum_label: w.enum_label.unwrap_or(false),
                        ..ValueMeaning::default()
                    },
                    index: None,
                });
            }
        }
        let mut lookups = Vec::new();
        let mut labels: HashMap<&str, ()> = HashMap::new();
        for (i, l) in self.lookups.iter().flatten().enumerate() {
            let lkey = format!("{key}.lookups[{i}]");
            let raw = l.get_ref();
            let label = raw.label.get_ref();
            if !valid_label(label) {
                return Err(src.error(
                    raw.label.span(),
                    format!("{lkey}.label"),
                    format!("invalid label name \"{label}\" (expected [A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            if labels.insert(label, ()).is_some() {
                return Err(src.error(
                    raw.label.span(),
                    format!("{lkey}.label"),
                    format!("duplicate lookup label \"{label}\""),
                ));
            }
            lookups.push(SnmpLookup {
                label: label.clone(),
                oid: oid(
                    &raw.oid,
                    format!("{lkey}.oid"),
                    Target::Lookup(i),
                    None,
                    true,
                )?,
                index: None,
                format: Format::Plain,
                at: At::new(src, raw.oid.span(), format!("{lkey}.oid")),
            });
        }
        if !lookups.is_empty() && walks.is_empty() {
            return Err(src.error(
                span,
                format!("{key}.lookups"),
                "lookups label the rows of `walks`, and there are none",
            ));
        }
        let lookup_interval = match &self.lookup_interval {
            None => DEFAULT_LOOKUP_INTERVAL,
            Some(d) => {
                let d = src.duration(d, &format!("{key}.lookup_interval"))?;
                if d.is_zero() {
                    return Err(src.error(
                        self.lookup_interval
                            .as_ref()
                            .map_or(span.clone(), Spanned::span),
                        format!("{key}.lookup_interval"),
                        "must be greater than 0",
                    ));
                }
                d
            }
        };
        if metrics.is_empty() && walks.is_empty() {
            return Err(src.error(
                span,
                key,
                "driver snmp needs at least one entry in `metrics` or `walks`",
            ));
        }
        let max_repetitions = match &self.max_repetitions {
            None => 10,
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1000 => {
                return Err(src.error(
                    n.span(),
                    format!("{key}.max_repetitions"),
                    "must be between 1 and 1000",
                ));
            }
            Some(n) => *n.get_ref(),
        };
        let cfg = SnmpConfig {
            address,
            security,
            metrics,
            walks,
            max_repetitions,
            retries: self.retries.unwrap_or(1),
            lookups,
            drop_index: self.drop_index.unwrap_or(false),
            lookup_interval,
            pending,
        };
        // With MIB names, once they are resolved (`names.rs`).
        if cfg.pending.is_empty() {
            cfg.check_lookups()?;
        }
        Ok(cfg)
    }
}

/// A Prometheus-style label name.
fn valid_label(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Settings for SnmpConfig {
    const SECRETS: &'static [&'static str] = &["community", "auth_password", "priv_password"];

    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawSnmp = table.deserialize()?;
        raw.validate(table.src, table.key, table.span.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::DriverConfig;
    use crate::drivers::testing::{device, err};

    #[test]
    fn snmp_v2c_and_v3() {
        let d = device(
            "driver = \"snmp\"\naddress = \"127.0.0.1:1161\"\nversion = \"2c\"\ncommunity = \"c1\"\n\
             metrics = [{ name = \"uptime\", oid = \".1.3.6.1.2.1.1.3.0\", unit = \"cs\" }]\n\
             walks = [{ name = \"if_in\", oid = \"1.3.6.1.2.1.2.2.1.10\", index_label = \"if\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Snmp(s) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            s.security,
            SnmpSecurity::V2c {
                community: "c1".into()
            }
        );
        assert_eq!(s.metrics[0].oid, vec![1, 3, 6, 1, 2, 1, 1, 3, 0]);
        assert_eq!(s.walks[0].index_label, "if");
        assert_eq!((s.max_repetitions, s.retries), (10, 1));

        let d = device(
            "driver = \"snmp\"\naddress = \"h:161\"\nversion = 3\nuser = \"u\"\nauth_protocol = \"SHA\"\n\
             auth_password = \"authpass1\"\npriv_password = \"privpass1\"\n\
             metrics = [{ name = \"a\", oid = \"1.3.6.1.2.1.1.3.0\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Snmp(s) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            s.security,
            SnmpSecurity::V3(SnmpV3 {
                user: "u".into(),
                auth: Some((SnmpAuthProtocol::Sha1, "authpass1".into())),
                privacy: Some((SnmpPrivProtocol::Aes128, "privpass1".into())),
                context: String::new(),
            })
        );
    }

    #[test]
    fn snmp_errors_name_the_key() {
        let base = "driver = \"snmp\"\naddress = \"h:161\"\n";
        let e = err(&format!(
            "{base}metrics = [{{ name = \"a\", oid = \"1.3.6.x.1\" }}]\n"
        ));
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].metrics[0].oid: invalid oid \"1.3.6.x.1\": \"x\" is not a number"),
            "{e}"
        );
        let e = err(&format!(
            "{base}metrics = [{{ name = \"a\", oid = \"3.1\" }}]\n"
        ));
        assert!(e.contains("first arc 3 must be 0, 1 or 2"), "{e}");
        let e = err(&format!(
            "{base}version = \"1\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].version: unsupported SNMP version \"1\""),
            "{e}"
        );
        let e = err(&format!(
            "{base}user = \"u\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(
            e.starts_with(
                "conf/agent.toml:8: devices[0].user: `user` is only used with version = \"3\""
            ),
            "{e}"
        );
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"u\"\nauth_password = \"short\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(
            e.contains("devices[0].auth_password: must be at least 8"),
            "{e}"
        );
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"u\"\nauth_password = \"longenough\"\nauth_protocol = \"md5\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(e.contains("unsupported auth protocol \"md5\""), "{e}");
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"u\"\npriv_password = \"longenough\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(e.contains("privacy needs authentication"), "{e}");
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"u\"\nauth_password = \"longenough\"\npriv_protocol = \"DES\"\npriv_password = \"longenough\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(
            e.contains("devices[0].priv_protocol: DES privacy (\"DES\") is not supported"),
            "{e}"
        );
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"{}\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n",
            "u".repeat(33)
        ));
        assert!(
            e.contains("devices[0].user: must be 1 to 32 characters"),
            "{e}"
        );
        let e = err(base);
        assert!(
            e.contains("at least one entry in `metrics` or `walks`"),
            "{e}"
        );
    }
}
