//! Reading an identity from a client certificate (DER), its first DNS
//! subject alternative name (without webpki's parse in front, so the
//! fuzzer reaches the extension reader with any bytes) and a common name
//! from a subject: any bytes give a name or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_collector::tls;

fuzz_target!(|data: &[u8]| {
    let _ = tls::cert_identity(data);
    let _ = tls::first_dns_name(data);
    let _ = tls::common_name(data);
});
