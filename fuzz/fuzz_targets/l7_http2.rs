//! HTTP/2 and gRPC: frames, HPACK header blocks (Huffman strings, the dynamic table).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, pattern, request, response};
use weft_l7::Protocol;

const GRPC_ERRORS: [u16; 6] = [2, 4, 12, 13, 14, 15];

fuzz_target!(|data: &[u8]| {
    all(&[Protocol::Http2, Protocol::Grpc], data);
    for p in [Protocol::Http2, Protocol::Grpc] {
        if let Some(r) = request(p, data) {
            assert!(r.method.bytes().all(|c| c.is_ascii_uppercase()), "{r:?}");
            if let Some(path) = &r.path {
                pattern(path);
            }
        }
        if let Some(r) = response(p, data) {
            assert!(
                r.status.is_some() || r.code.is_some(),
                "{r:?}: nothing seen"
            );
            if let Some(s) = r.status {
                assert!((100..=599).contains(&s), "{r:?}");
            }
            let grpc: Option<u16> = r.code.as_deref().map(|c| c.parse().expect("a number"));
            let error = r.status.is_some_and(|s| s >= 500)
                || grpc.is_some_and(|g| GRPC_ERRORS.contains(&g));
            assert_eq!(r.error, error, "{r:?}");
        }
    }
});
