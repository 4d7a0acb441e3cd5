//! What an SNMP varbind value becomes: integers, strings (hex when not
//! printable), or a failed value naming why there is none.

use std::fmt::Write as _;

use super::ber::SnmpValue;
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
        SnmpValue::Counter64(n) => i64::try_from(*n)
            .map(Value::I64)
            .unwrap_or(Value::F64(*n as f64)),
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
pub(super) fn hex(bytes: &[u8], separator: &str) -> String {
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
            Value::F64(u64::MAX as f64)
        );
        assert_eq!(to_value(&SnmpValue::Counter64(5)), Value::I64(5));
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
}
