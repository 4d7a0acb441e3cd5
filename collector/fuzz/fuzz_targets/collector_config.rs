//! `serve --config` parsing: any text must give settings or a located
//! error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tributary_collector::config::{self, Flags};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::resolve_text(
            text,
            Path::new("/nonexistent/collector.toml"),
            &Flags::default(),
        );
    }
});
