//! Modbus register decoding: the first byte picks the type and word order,
//! the next eight are the scale, the rest the registers. A value or a
//! "short response" error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_agent::drivers::modbus::{self, RegisterType, WordOrder};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let types = [
        RegisterType::U16,
        RegisterType::I16,
        RegisterType::U32,
        RegisterType::I32,
        RegisterType::F32,
        RegisterType::Bool,
    ];
    let data_type = types[usize::from(pick % 6)];
    let order = if pick & 0x80 == 0 {
        WordOrder::Big
    } else {
        WordOrder::Little
    };
    let Some((scale, words)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let scale = f64::from_le_bytes(*scale);
    let words: Vec<u16> = words
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect();
    if let Err(e) = modbus::decode_registers(&words, data_type, order, scale) {
        assert!(e.got < e.need);
    }
});
