//! Shard manager request bodies. First byte: `c` POST /shards, `a` POST
//! /networks/{id}/addresses, anything else an endpoint that takes no body; then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use weft_controller::api::shards_routes::{no_body, parse_allocate_body, parse_create_body};
use weft_shards::prefix_bounds;

fuzz_target!(|data: &[u8]| {
    let [which, body @ ..] = data else {
        return;
    };
    match which {
        b'c' => {
            let Ok(c) = parse_create_body(body) else {
                return;
            };
            let (min, max) = prefix_bounds(c.family);
            assert!((min..=max).contains(&c.prefix_len), "{c:?}");
            // What was understood, written back as a body, means the same.
            let again = json!({
                "family": c.family.as_str(),
                "prefix_len": c.prefix_len,
                "network_id": c.network_id,
                "reserved": c.reserved,
            });
            let back = parse_create_body(again.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{again} refused: {e}"));
            assert_eq!(back, c);
        }
        b'a' => {
            let Ok(a) = parse_allocate_body(body) else {
                return;
            };
            let again = json!({
                "workload": a.workload,
                "host_id": a.host_id,
                "family": a.family.as_str(),
            });
            let back = parse_allocate_body(again.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{again} refused: {e}"));
            assert_eq!(back, a);
        }
        _ => {
            if no_body(body).is_ok() {
                let blank = body.iter().all(u8::is_ascii_whitespace);
                let empty_object = matches!(
                    serde_json::from_slice::<serde_json::Value>(body),
                    Ok(serde_json::Value::Object(m)) if m.is_empty()
                );
                assert!(blank || empty_object, "a body accepted where none is taken");
            }
        }
    }
});
