//! OIDs as written in the config: numeric (`1.3.6.1.2.1.1.3.0`, [`parse_oid`])
//! or a MIB name (`IF-MIB::ifName`, `sysUpTime.0`, [`parse_oid_ref`]), the
//! errors that say why a text is neither, and the dotted form
//! ([`oid_string`]).

/// An OID as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidRef {
    Numeric(Vec<u32>),
    /// `name.suffix`, looked up in `module` or (when `None`) in every
    /// module of the MIB directories.
    Name {
        module: Option<String>,
        name: String,
        suffix: Vec<u32>,
    },
}

/// Parses an OID as written: numeric (`1.3.6.1.2.1.1.3.0`),
/// `MODULE::name[.index]` or `name[.index]`.
pub fn parse_oid_ref(text: &str) -> Result<OidRef, OidError> {
    let trimmed = text.trim();
    if !trimmed.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return parse_oid(trimmed).map(OidRef::Numeric);
    }
    let (module, rest) = match trimmed.split_once("::") {
        Some((m, rest)) => {
            if !is_descriptor(m) {
                return Err(OidError::BadName(m.to_owned()));
            }
            (Some(m.to_owned()), rest)
        }
        None => (None, trimmed),
    };
    let (name, suffix) = match rest.split_once('.') {
        Some((name, suffix)) => (name, suffix),
        None => (rest, ""),
    };
    if !is_descriptor(name) {
        return Err(OidError::BadName(name.to_owned()));
    }
    let suffix = if suffix.is_empty() {
        Vec::new()
    } else {
        let mut arcs = Vec::new();
        for (i, arc) in suffix.split('.').enumerate() {
            arcs.push(arc.parse::<u32>().map_err(|_| {
                if arc.is_empty() {
                    OidError::EmptyArc(i + 2)
                } else {
                    OidError::BadIndex(arc.to_owned())
                }
            })?);
        }
        arcs
    };
    Ok(OidRef::Name {
        module,
        name: name.to_owned(),
        suffix,
    })
}

/// An SMI descriptor or module name: a letter, then letters, digits, `-`, `_`.
fn is_descriptor(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
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
    #[error(
        "\"{0}\" is not a number (write a numeric OID such as 1.3.6.1.2.1.1.3.0, or a MIB name such as IF-MIB::ifName)"
    )]
    NotNumeric(String),
    #[error("\"{0}\" is not a MIB name (letters, digits and `-`, starting with a letter)")]
    BadName(String),
    #[error("index arc \"{0}\" is not a number (e.g. sysUpTime.0, ifInOctets.3)")]
    BadIndex(String),
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
    use std::fmt::Write as _;
    // One allocation: a walk labels every row with its index.
    let mut s = String::with_capacity(oid.len() * 4);
    for (i, arc) in oid.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        let _ = write!(s, "{arc}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids() {
        assert_eq!(parse_oid("1.3.6.1"), Ok(vec![1, 3, 6, 1]));
        assert!(parse_oid("1").is_err());
        assert!(parse_oid("1..3").is_err());
        assert!(parse_oid("1.3.99999999999").is_err());
        assert!(parse_oid("1.40").is_err());
        assert_eq!(oid_string(&[1, 3, 6]), "1.3.6");
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_oid_ref("IF-MIB::ifName.3"),
            Ok(OidRef::Name {
                module: Some("IF-MIB".into()),
                name: "ifName".into(),
                suffix: vec![3]
            })
        );
        assert_eq!(
            parse_oid_ref("sysUpTime.0"),
            Ok(OidRef::Name {
                module: None,
                name: "sysUpTime".into(),
                suffix: vec![0]
            })
        );
        assert_eq!(parse_oid_ref(".1.3.6"), Ok(OidRef::Numeric(vec![1, 3, 6])));
        assert_eq!(
            parse_oid_ref("IF-MIB::ifName.x"),
            Err(OidError::BadIndex("x".into()))
        );
        assert_eq!(
            parse_oid_ref("IF MIB::a"),
            Err(OidError::BadName("IF MIB".into()))
        );
        assert_eq!(parse_oid_ref("a.1..2"), Err(OidError::EmptyArc(3)));
        assert!(parse_oid_ref("::x").is_err());
    }
}
