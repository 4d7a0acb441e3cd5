//! Settings of the SNMP driver (`driver = "snmp"`): the agent's address,
//! version and credentials (v2c community or v3 USM), the scalars to GET and
//! the table columns to walk, and numeric OIDs ([`parse_oid`],
//! [`oid_string`]).

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source, check_metric_name};
use crate::drivers::settings::{DriverTable, Settings, check_address};

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpMetric {
    name: Spanned<String>,
    oid: Spanned<String>,
    unit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpWalk {
    name: Spanned<String>,
    oid: Spanned<String>,
    unit: Option<String>,
    index_label: Option<Spanned<String>>,
}

/// Smallest USM password net-snmp accepts (RFC 3414 recommends 8).
const MIN_USM_PASSWORD: usize = 8;

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
            if user.get_ref().is_empty() {
                return Err(src.error(user.span(), format!("{key}.user"), "must not be empty"));
            }
            let password = |p: &Spanned<String>, name: &str| {
                if p.get_ref().len() < MIN_USM_PASSWORD {
                    Err(src.error(
                        p.span(),
                        format!("{key}.{name}"),
                        format!("must be at least {MIN_USM_PASSWORD} characters (RFC 3414)"),
                    ))
                } else {
                    Ok(p.get_ref().clone())
                }
            };
            let auth = match (&self.auth_protocol, &self.auth_password) {
                (None, None) => None,
                (Some(p), None) => {
                    return Err(src.error(
                        p.span(),
                        format!("{key}.auth_protocol"),
                        "`auth_protocol` needs `auth_password`",
                    ));
                }
                (proto, Some(pw)) => {
                    let protocol = match proto
                        .as_ref()
                        .map(|p| (p, p.get_ref().to_ascii_lowercase()))
                    {
                        None => SnmpAuthProtocol::Sha1,
                        Some((_, p)) if p == "sha" || p == "sha1" => SnmpAuthProtocol::Sha1,
                        Some((_, p)) if p == "sha256" || p == "sha-256" => SnmpAuthProtocol::Sha256,
                        Some((_, p)) if p == "sha512" || p == "sha-512" => SnmpAuthProtocol::Sha512,
                        Some((p, _)) => {
                            return Err(src.error(
                                p.span(),
                                format!("{key}.auth_protocol"),
                                format!(
                                    "unsupported auth protocol \"{}\" (expected sha, sha256 or sha512)",
                                    p.get_ref()
                                ),
                            ));
                        }
                    };
                    Some((protocol, password(pw, "auth_password")?))
                }
            };
            let privacy = match (&self.priv_protocol, &self.priv_password) {
                (None, None) => None,
                (Some(p), None) => {
                    return Err(src.error(
                        p.span(),
                        format!("{key}.priv_protocol"),
                        "`priv_protocol` needs `priv_password`",
                    ));
                }
                (proto, Some(pw)) => {
                    if auth.is_none() {
                        return Err(src.error(
                            pw.span(),
                            format!("{key}.priv_password"),
                            "privacy needs authentication: set `auth_password` too",
                        ));
                    }
                    let protocol = match proto
                        .as_ref()
                        .map(|p| (p, p.get_ref().to_ascii_lowercase()))
                    {
                        None => SnmpPrivProtocol::Aes128,
                        Some((_, p)) if p == "aes" || p == "aes128" || p == "aes-128" => {
                            SnmpPrivProtocol::Aes128
                        }
                        Some((p, _)) => {
                            return Err(src.error(
                                p.span(),
                                format!("{key}.priv_protocol"),
                                format!(
                                    "unsupported privacy protocol \"{}\" (expected aes)",
                                    p.get_ref()
                                ),
                            ));
                        }
                    };
                    Some((protocol, password(pw, "priv_password")?))
                }
            };
            SnmpSecurity::V3(SnmpV3 {
                user: user.get_ref().clone(),
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
        let oid = |value: &Spanned<String>, key: String| {
            parse_oid(value.get_ref()).map_err(|e| {
                src.error(
                    value.span(),
                    key,
                    format!("invalid oid \"{}\": {e}", value.get_ref()),
                )
            })
        };
        let mut seen = HashMap::new();
        let mut metrics = Vec::new();
        if let Some(list) = &self.metrics {
            for (i, m) in list.get_ref().iter().enumerate() {
                let m = m.get_ref();
                let mkey = format!("{key}.metrics[{i}]");
                check_metric_name(src, &mut seen, &m.name, &format!("{mkey}.name"))?;
                metrics.push(SnmpMetric {
                    name: m.name.get_ref().clone(),
                    oid: oid(&m.oid, format!("{mkey}.oid"))?,
                    unit: m.unit.clone().unwrap_or_default(),
                });
            }
        }
        let mut walks = Vec::new();
        if let Some(list) = &self.walks {
            for (i, w) in list.get_ref().iter().enumerate() {
                let w = w.get_ref();
                let wkey = format!("{key}.walks[{i}]");
                check_metric_name(src, &mut seen, &w.name, &format!("{wkey}.name"))?;
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
                walks.push(SnmpWalk {
                    name: w.name.get_ref().clone(),
                    oid: oid(&w.oid, format!("{wkey}.oid"))?,
                    unit: w.unit.clone().unwrap_or_default(),
                    index_label,
                });
            }
        }
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
        Ok(SnmpConfig {
            address,
            security,
            metrics,
            walks,
            max_repetitions,
            retries: self.retries.unwrap_or(1),
        })
    }
}

/// Parses a numeric OID such as `1.3.6.1.2.1.1.3.0` (a leading dot is allowed).
pub fn parse_oid(text: &str) -> Result<Vec<u32>, OidError> {
    let trimmed = text.trim().strip_prefix('.').unwrap_or(text.trim());
    if trimmed.is_empty() {
        return Err(OidError::Empty);
    }
    let mut arcs = Vec::new();
    for (i, arc) in trimmed.split('.').enumerate() {
        let n: u32 = arc.parse().map_err(|_| {
            if arc.is_empty() {
                OidError::EmptyArc(i + 1)
            } else if arc.chars().all(|c| c.is_ascii_digit()) {
                OidError::ArcTooLarge(arc.to_owned())
            } else {
                OidError::NotNumeric(arc.to_owned())
            }
        })?;
        arcs.push(n);
    }
    match arcs.as_slice() {
        [_] => Err(OidError::OneArc),
        [first, ..] if *first > 2 => Err(OidError::FirstArc(*first)),
        [first, second, ..] if *first < 2 && *second >= 40 => Err(OidError::SecondArc {
            first: *first,
            second: *second,
        }),
        _ if arcs.len() > MAX_OID_ARCS => Err(OidError::TooLong),
        _ => Ok(arcs),
    }
}

/// Most arcs an OID may have (RFC 2578).
const MAX_OID_ARCS: usize = 128;

/// Why a text is not a numeric OID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidError {
    #[error("empty")]
    Empty,
    /// The 1-based position of an empty arc (`1..3`).
    #[error("empty arc at position {0}")]
    EmptyArc(usize),
    #[error("arc {0} is larger than 4294967295")]
    ArcTooLarge(String),
    #[error("\"{0}\" is not a number (only numeric OIDs are supported, e.g. 1.3.6.1.2.1.1.3.0)")]
    NotNumeric(String),
    #[error("an OID has at least two arcs")]
    OneArc,
    #[error("first arc {0} must be 0, 1 or 2")]
    FirstArc(u32),
    #[error("second arc {second} must be below 40 when the first is {first}")]
    SecondArc { first: u32, second: u32 },
    #[error("more than {MAX_OID_ARCS} arcs")]
    TooLong,
}

/// The OID in dotted form.
pub fn oid_string(oid: &[u32]) -> String {
    let parts: Vec<String> = oid.iter().map(u32::to_string).collect();
    parts.join(".")
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
        let e = err(base);
        assert!(
            e.contains("at least one entry in `metrics` or `walks`"),
            "{e}"
        );
    }

    #[test]
    fn oids() {
        assert_eq!(parse_oid("1.3.6.1"), Ok(vec![1, 3, 6, 1]));
        assert!(parse_oid("1").is_err());
        assert!(parse_oid("1..3").is_err());
        assert!(parse_oid("1.3.99999999999").is_err());
        assert!(parse_oid("1.40").is_err());
        assert_eq!(oid_string(&[1, 3, 6]), "1.3.6");
    }
}
