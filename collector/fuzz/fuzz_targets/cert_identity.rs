//! Reading an identity from a client certificate (DER) and a common name
//! from a subject: any bytes give a name or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_collector::tls;

fuzz_target!(|data: &[u8]| {
    let _ = tls::cert_identity(data);
    let _ = tls::common_name(data);
});
