//! JSON body parsing and pointer extraction: the first line is a JSON
//! pointer, the rest the body. One sample per metric, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_agent::drivers::http::{JsonMetric, json};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (pointer, body) = data.split_at(split);
    let Ok(pointer) = std::str::from_utf8(pointer) else {
        return;
    };
    if let Ok(doc) = json::parse_json(body) {
        let metrics = [JsonMetric {
            name: "m".into(),
            pointer: pointer.to_owned(),
            unit: String::new(),
        }];
        assert_eq!(json::extract_json(&doc, &metrics).len(), 1);
    }
});
