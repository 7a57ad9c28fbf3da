//! Per-flow sessions (weft_l7::Session): any sequence of turns of any protocol, cut or not.
//! Input: a protocol index byte, a byte of "complete" flags, then turns separated by
//! `\xff\xfe` (request, response, request, ...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::assert_label;
use weft_l7::{Protocol, Session, Turn};

fuzz_target!(|data: &[u8]| {
    let (Some(&p), Some(&flags)) = (data.first(), data.get(1)) else {
        return;
    };
    let protocol = Protocol::ALL[usize::from(p) % Protocol::ALL.len()];
    let rest = data.get(2..).unwrap_or(&[]);
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < rest.len() {
        if rest[i] == 0xff && rest[i + 1] == 0xfe {
            parts.push(&rest[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    parts.push(&rest[start..]);
    let mut session = Session::new(protocol);
    let mut calls = Vec::new();
    for (k, pair) in parts.chunks(2).enumerate() {
        let t = Turn {
            request: pair[0],
            request_complete: flags & (1 << (k % 8)) != 0,
            response: pair.get(1).copied().unwrap_or(&[]),
            response_complete: flags & (1 << ((k + 4) % 8)) != 0,
            start_ns: k as u64 * 1000,
            latency_ns: 10,
        };
        calls.extend(session.turn(&t));
    }
    calls.extend(session.flush(true));
    for c in calls {
        if let Some(r) = &c.request {
            assert_label("method", &r.method);
            if let Some(p) = &r.path {
                assert_label("path", p);
            }
        }
        if let Some(code) = c.response.as_ref().and_then(|r| r.code.as_deref()) {
            assert_label("code", code);
        }
    }
});
