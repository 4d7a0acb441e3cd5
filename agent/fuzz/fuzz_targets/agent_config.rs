//! The agent's TOML config: any text gives a config or a located error,
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tributary_agent::config::parse(text, Path::new("/nonexistent/agent.toml"));
    }
});
