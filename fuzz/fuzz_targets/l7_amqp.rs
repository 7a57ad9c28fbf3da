//! AMQP 0-9-1: protocol headers and method frames (Class.Method, queues, exchanges, codes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, request, response};
use weft_l7::Protocol;

fuzz_target!(|data: &[u8]| {
    all(&[Protocol::Amqp], data);
    if let Some(r) = request(Protocol::Amqp, data) {
        assert!(r.method.contains('.'), "{r:?}: not Class.Method");
        if let Some(p) = &r.path {
            assert!(!p.is_empty() && p.chars().count() <= 255, "{r:?}");
        }
    }
    if let Some(r) = response(Protocol::Amqp, data) {
        assert_eq!(r.error, r.status.is_some_and(|c| c >= 300), "{r:?}");
    }
});
