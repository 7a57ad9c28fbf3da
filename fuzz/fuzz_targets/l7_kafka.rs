//! Kafka: request headers (API key, version, client id) and response framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, request, response};
use weft_l7::Protocol;

fuzz_target!(|data: &[u8]| {
    all(&[Protocol::Kafka], data);
    if let Some(r) = request(Protocol::Kafka, data) {
        assert!(r.method.bytes().all(|c| c.is_ascii_alphanumeric()), "{r:?}");
        assert!(r.path.is_none(), "{r:?}");
    }
    if let Some(r) = response(Protocol::Kafka, data) {
        assert!(!r.error && r.status.is_none() && r.code.is_none(), "{r:?}");
    }
});
