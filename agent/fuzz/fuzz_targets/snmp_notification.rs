//! SNMP notification decoding (`driver = "snmp_trap"`): any datagram
//! decodes as a v1 trap, a v2c trap or an inform, or fails with an error;
//! an inform's acknowledgement encodes and decodes back as a Response;
//! every value converts to a reading value; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_agent::drivers::snmp::ber;
use tributary_agent::drivers::snmp::value::to_value;
use tributary_agent::drivers::snmp_trap::{decode, response};

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = decode(data) {
        for (_, value) in &n.varbinds {
            let _ = to_value(value);
        }
        if let Some((id, varbinds)) = &n.inform {
            let ack = response(n.version, &n.community, *id, varbinds);
            assert!(ber::decode_v2c(&ack).is_ok(), "an acknowledgement that does not decode");
        }
    }
});
