//! The Prometheus text parser: any text gives samples or an error naming a
//! line that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_agent::drivers::http::prometheus;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = prometheus::parse(text) {
            assert!(e.line >= 1 && e.line <= text.split('\n').count());
        }
    }
});
