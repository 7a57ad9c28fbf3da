//! HTTP/1 and WebSocket: requests, responses and WebSocket frames; path patterns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, pattern, request, response};
use weft_l7::Protocol;

fuzz_target!(|data: &[u8]| {
    all(&[Protocol::Http1, Protocol::WebSocket], data);
    if let Some(r) = request(Protocol::Http1, data) {
        assert!(r.method.bytes().all(|c| c.is_ascii_uppercase()), "{r:?}");
        if let Some(path) = &r.path {
            // The request target is taken as it is: printable ASCII from the bytes.
            assert!(
                data.windows(path.len()).any(|w| w == path.as_bytes()),
                "{r:?}: path not in the bytes"
            );
            pattern(path);
        }
    }
    if let Some(r) = response(Protocol::Http1, data) {
        let s = r.status.expect("an HTTP/1 response has a status");
        assert!((100..=599).contains(&s), "{r:?}");
        assert_eq!(r.error, s >= 500, "{r:?}");
    }
    if let Some(r) = response(Protocol::WebSocket, data)
        && r.error
    {
        assert!(r.status.is_some(), "{r:?}: an error without a close code");
    }
    // Paths from any client: the pattern of the bytes as text.
    pattern(&String::from_utf8_lossy(data));
});
