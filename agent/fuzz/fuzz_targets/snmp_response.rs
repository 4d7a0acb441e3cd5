//! SNMP response decoding, SNMPv3 verification and decryption, and value
//! conversion: any datagram decodes as a v2c or v3 message or fails with an
//! error, a v3 message goes through the MAC check, decryption and every
//! check of an answer, and every decoded value converts to a reading value;
//! never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tributary_agent::drivers::snmp::value::to_value;
use tributary_agent::drivers::snmp::{SnmpAuthProtocol, SnmpPrivProtocol, ber, usm, v3};

const ENGINE: &[u8] = b"\x80\x00\x1f\x88\x80fuzz";

/// Localized once: about a million hash rounds.
fn keys() -> &'static usm::Keys {
    static KEYS: OnceLock<usm::Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        usm::Keys::new(
            (SnmpAuthProtocol::Sha256, "fuzz-auth-1"),
            Some((SnmpPrivProtocol::Aes128, "fuzz-priv-1")),
            ENGINE,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = ber::message_version(data);
    if let Ok((_, _, pdu)) = ber::decode_v2c(data) {
        for (_, value) in &pdu.varbinds {
            let _ = to_value(value);
        }
    }
    if let Ok(m) = usm::decode(data) {
        let _ = v3::open(&m, data, None);
        let _ = v3::open(&m, data, Some(keys()));
        let mut engine = v3::Engine::discovered(ENGINE.to_vec(), 0, 0, Some(keys().clone()));
        if let Ok(v3::Verified::Response(pdu)) = v3::check(&mut engine, b"fuzz", b"", &m, data, 7) {
            for (_, value) in &pdu.varbinds {
                let _ = to_value(value);
            }
        }
    }
});
