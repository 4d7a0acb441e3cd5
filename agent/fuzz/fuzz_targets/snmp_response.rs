//! SNMP response decoding and value conversion: any datagram decodes as a
//! v2c or v3 message or fails with an error, and every decoded value
//! converts to a reading value; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_agent::drivers::snmp::value::to_value;
use tributary_agent::drivers::snmp::{ber, usm};

fuzz_target!(|data: &[u8]| {
    let _ = ber::message_version(data);
    if let Ok((_, _, pdu)) = ber::decode_v2c(data) {
        for (_, value) in &pdu.varbinds {
            let _ = to_value(value);
        }
    }
    let _ = usm::decode(data);
});
