//! What an SNMP varbind value becomes: integers, strings (hex when not
//! printable), or a failed value naming why there is none; with what the
//! MIB says ([`ValueMeaning`]): text, `aa:bb:..` addresses, RFC 3339 dates
//! and the names of enumerated values.

use std::fmt::Write as _;

use super::ber::SnmpValue;
use super::config::ValueMeaning;
use super::mib::Format;
use super::oid_string;
use crate::reading::{FailureKind, Value};

pub(super) fn failed(message: String) -> Value {
    Value::Failed {
        kind: FailureKind::Error,
        message,
    }
}

/// The reading for one varbind value.
pub fn to_value(v: &SnmpValue) -> Value {
    match v {
        SnmpValue::Int(i) => Value::I64(*i),
        SnmpValue::Counter32(n) | SnmpValue::Gauge32(n) | SnmpValue::TimeTicks(n) => {
            Value::I64(i64::from(*n))
        }
        // An i64 while it fits, as before the u64 kind existed, so a
        // counter's series keeps the kind every older collector and query
        // client reads; only values from 2^63 on (which were doubles then)
        // need the u64 kind, and keep every bit.
        SnmpValue::Counter64(n) => i64::try_from(*n).map_or(Value::U64(*n), Value::I64),
        SnmpValue::Octets(b) => Value::Str(text_or_hex(b)),
        SnmpValue::Opaque(b) => Value::Str(hex(b, ":")),
        SnmpValue::IpAddress(a) => Value::Str(std::net::Ipv4Addr::from(*a).to_string()),
        SnmpValue::Oid(o) => Value::Str(oid_string(o)),
        SnmpValue::Null => failed("agent answered NULL".into()),
        SnmpValue::NoSuchObject => failed("no such object (bad OID?)".into()),
        SnmpValue::NoSuchInstance => {
            failed("no such instance (bad OID? scalar OIDs end in .0)".into())
        }
        SnmpValue::EndOfMibView => failed("end of MIB view".into()),
    }
}

/// The reading for one varbind value of an object whose MIB meaning is
/// `meaning`.
pub fn to_value_as(v: &SnmpValue, meaning: &ValueMeaning) -> Value {
    match (v, meaning.format) {
        (SnmpValue::Octets(b), Format::Text) => {
            Value::Str(String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
        }
        (SnmpValue::Octets(b), Format::Hex) => Value::Str(hex(b, ":")),
        (SnmpValue::Octets(b), Format::DateAndTime) => {
            Value::Str(date_and_time(b).unwrap_or_else(|| hex(b, ":")))
        }
        _ => to_value(v),
    }
}

/// The name of an enumerated value, when the meaning asks for it as a
/// label: the value's name, or its number when the MIB names none.
pub fn enum_label(v: &SnmpValue, meaning: &ValueMeaning) -> Option<String> {
    if !meaning.enum_label {
        return None;
    }
    let SnmpValue::Int(n) = v else {
        return None;
    };
    let enums = meaning.enums.as_ref()?;
    Some(
        enums
            .iter()
            .find(|(k, _)| k == n)
            .map_or_else(|| n.to_string(), |(_, name)| name.clone()),
    )
}

/// SNMPv2-TC `DateAndTime` (8 or 11 octets) as RFC 3339; without a zone
/// the offset is `-00:00` (RFC 3339 §4.3: unknown). `None` when the octets
/// are not a valid date.
fn date_and_time(b: &[u8]) -> Option<String> {
    if b.len() != 8 && b.len() != 11 {
        return None;
    }
    let year = u16::from_be_bytes([b[0], b[1]]);
    let (month, day, hour, min, sec, deci) = (b[2], b[3], b[4], b[5], b[6], b[7]);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || min > 59
        || sec > 60
        || deci > 9
    {
        return None;
    }
    let zone = if b.len() == 11 {
        let (sign, zh, zm) = (b[8], b[9], b[10]);
        if !matches!(sign, b'+' | b'-') || zh > 13 || zm > 59 {
            return None;
        }
        format!("{}{zh:02}:{zm:02}", char::from(sign))
    } else {
        "-00:00".to_owned()
    };
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{min:02}:{sec:02}.{deci}{zone}"
    ))
}

/// Printable UTF-8 as is, anything else as `aa:bb:cc`.
fn text_or_hex(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s)
            if s.chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')) =>
        {
            s.trim_end_matches('\0').to_owned()
        }
        _ => hex(b, ":"),
    }
}

/// `bytes` in lowercase hex, two digits a byte, `separator` between bytes
/// (`aa:bb` for values, none for engine ids).
pub(crate) fn hex(bytes: &[u8], separator: &str) -> String {
    let mut out = String::with_capacity(bytes.len() * (2 + separator.len()));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_map_to_readings() {
        assert_eq!(
            to_value(&SnmpValue::Counter64(u64::MAX)),
            Value::U64(u64::MAX)
        );
        assert_eq!(
            to_value(&SnmpValue::Counter64((1 << 63) + 1)),
            Value::U64(9_223_372_036_854_775_809)
        );
        assert_eq!(to_value(&SnmpValue::Counter64(5)), Value::I64(5));
        assert_eq!(
            to_value(&SnmpValue::Counter64(i64::MAX as u64)),
            Value::I64(i64::MAX)
        );
        assert_eq!(
            to_value(&SnmpValue::Octets(b"eth0".to_vec())),
            Value::Str("eth0".into())
        );
        assert_eq!(
            to_value(&SnmpValue::Octets(vec![0, 0x1a, 0xff])),
            Value::Str("00:1a:ff".into())
        );
        assert_eq!(
            to_value(&SnmpValue::IpAddress([10, 0, 0, 1])),
            Value::Str("10.0.0.1".into())
        );
        assert!(
            matches!(to_value(&SnmpValue::NoSuchObject), Value::Failed { message, .. } if message.contains("bad OID"))
        );
    }

    #[test]
    fn meanings_from_the_mib() {
        let as_ = |format| ValueMeaning {
            format,
            ..ValueMeaning::default()
        };
        // A MAC address that happens to be printable stays hex.
        assert_eq!(
            to_value_as(&SnmpValue::Octets(b"ABCDEF".to_vec()), &as_(Format::Hex)),
            Value::Str("41:42:43:44:45:46".into())
        );
        assert_eq!(
            to_value_as(
                &SnmpValue::Octets(vec![0xc3, 0x28, b'x']),
                &as_(Format::Text)
            ),
            Value::Str("\u{fffd}(x".into())
        );
        let date = [0x07, 0xea, 12, 5, 22, 30, 15, 7, b'+', 1, 30];
        assert_eq!(
            to_value_as(&SnmpValue::Octets(date.to_vec()), &as_(Format::DateAndTime)),
            Value::Str("2026-12-05T22:30:15.7+01:30".into())
        );
        assert_eq!(
            to_value_as(
                &SnmpValue::Octets(date[..8].to_vec()),
                &as_(Format::DateAndTime)
            ),
            Value::Str("2026-12-05T22:30:15.7-00:00".into())
        );
        // Not a date: shown as hex rather than a wrong date.
        assert_eq!(
            to_value_as(
                &SnmpValue::Octets(vec![0, 1, 13, 1, 0, 0, 0, 0]),
                &as_(Format::DateAndTime)
            ),
            Value::Str("00:01:0d:01:00:00:00:00".into())
        );
        let meaning = ValueMeaning {
            enums: Some(vec![(1, "up".to_owned()), (2, "down".to_owned())].into()),
            enum_label: true,
            ..ValueMeaning::default()
        };
        assert_eq!(to_value_as(&SnmpValue::Int(2), &meaning), Value::I64(2));
        assert_eq!(
            enum_label(&SnmpValue::Int(2), &meaning),
            Some("down".into())
        );
        assert_eq!(enum_label(&SnmpValue::Int(7), &meaning), Some("7".into()));
        let quiet = ValueMeaning {
            enum_label: false,
            ..meaning
        };
        assert_eq!(enum_label(&SnmpValue::Int(2), &quiet), None);
    }
}
