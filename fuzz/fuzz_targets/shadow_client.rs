//! weft-shadow's client framing: the first byte picks where the stream is cut; the requests
//! framed, concatenated, are exactly the bytes consumed (nothing lost, nothing added).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_shadow::{ClientFramer, Expect, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_head: 4096,
        max_message: 64 * 1024,
    };
    // Odd cuts also take a key header's value (sampling by header).
    let mut c = ClientFramer::new(limits);
    if cut & 1 == 1 {
        c = c.with_key_header("X-User");
    }
    let step = usize::from(cut).max(1);
    let mut framed = Vec::new();
    let mut fed = 0usize;
    for chunk in stream.chunks(step) {
        fed += chunk.len();
        match c.push(chunk) {
            Ok(rs) => {
                for r in rs {
                    assert!(!r.bytes.is_empty(), "an empty request: {r:?}");
                    assert_eq!(r.key == 0, matches!(r.expect, Expect::None), "{r:?}");
                    if let Some(v) = &r.key_value {
                        assert!(cut & 1 == 1, "a key value without a key header: {r:?}");
                        assert!(v.len() <= weft_shadow::MAX_KEY_VALUE && v.trim() == v, "{v:?}");
                    }
                    if let Some(e) = &r.endpoint {
                        assert!(e.len() <= 4096, "endpoint of {} bytes", e.len());
                    }
                    framed.extend_from_slice(&r.bytes);
                }
            }
            Err(e) => {
                // Sticky: the stream cannot be framed any further.
                assert_eq!(c.push(b"x").unwrap_err(), e);
                assert!(stream.starts_with(&framed));
                return;
            }
        }
    }
    assert_eq!(framed.len() + c.buffered(), fed);
    assert_eq!(&stream[..framed.len()], framed.as_slice());
});
