//! The JSON-lines importer (nested and flat TrafficObservation shapes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::observation::{check_lines, check_report};
use weft_topology::import::jsonl;

fuzz_target!(|data: &[u8]| {
    let r = jsonl::import(data);
    check_lines(&r, data);
    check_report(&r);
});
