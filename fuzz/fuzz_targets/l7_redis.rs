//! Redis: RESP2/RESP3 arrays and inline commands, replies and error kinds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, contains_ignore_case, request, response};
use weft_l7::Protocol;

fuzz_target!(|data: &[u8]| {
    all(&[Protocol::Redis], data);
    if let Some(r) = request(Protocol::Redis, data) {
        assert!(r.method.len() <= 64, "{r:?}");
        assert_eq!(r.method, r.method.to_ascii_uppercase(), "{r:?}");
        assert!(contains_ignore_case(data, r.method.as_bytes()), "{r:?}");
        assert!(r.path.is_none() && r.operation.is_none(), "{r:?}");
    }
    if let Some(r) = response(Protocol::Redis, data) {
        assert!(r.status.is_none(), "{r:?}");
        if let Some(kind) = &r.code {
            assert!(
                r.error && kind.bytes().all(|c| c.is_ascii_uppercase()),
                "{r:?}"
            );
        }
    }
});
