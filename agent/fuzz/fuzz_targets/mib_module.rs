//! MIB modules: any text parses into modules or fails with a located error,
//! and every name a parsed text defines resolves or fails (loops, deep
//! nesting, missing imports); never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_agent::drivers::snmp::mib::Mibs;
use tributary_agent::drivers::snmp::parse_oid_ref;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_oid_ref(&text);
    let Ok(mut mibs) = Mibs::from_text(&text) else {
        return;
    };
    for module in mibs.module_names() {
        let Ok(names) = mibs.defined_names(&module) else {
            continue;
        };
        for (name, _) in names {
            let _ = mibs.object(&module, &name);
        }
    }
    let _ = mibs.object_anywhere("ifName");
});
