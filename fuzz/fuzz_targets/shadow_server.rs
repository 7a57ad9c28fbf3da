//! weft-shadow's server framing: the first byte picks the expected answers; whatever the
//! bytes, framing ends in responses or an error, and their comparison fields are bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_shadow::compare::{MAX_FIELDS, fields};
use weft_shadow::{Expect, Limits, PgExpect, Request, ServerFramer};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let expect = match pick % 6 {
        0 => Expect::Http1 {
            head: pick & 0x80 != 0,
            upgrade_h2c: pick & 0x40 != 0,
        },
        1 => Expect::Redis,
        2 => Expect::Postgres(PgExpect::Byte),
        3 => Expect::Postgres(PgExpect::UntilReady {
            startup: pick & 0x80 != 0,
        }),
        4 => Expect::H2Stream,
        _ => Expect::Http1 {
            head: false,
            upgrade_h2c: false,
        },
    };
    let mut s = ServerFramer::new(Limits {
        max_head: 4096,
        max_message: 64 * 1024,
    });
    if pick % 6 == 4 {
        s.h2_prior_knowledge();
    }
    for key in 1..=4u64 {
        let r = Request {
            bytes: Vec::new(),
            endpoint: None,
            read_only: true,
            request_id: None,
            key_value: None,
            expect,
            key,
        };
        if s.expect(&r).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    for chunk in stream.chunks(usize::from(pick).max(1)) {
        match s.push(chunk) {
            Ok(rs) => out.extend(rs),
            Err(_) => break,
        }
    }
    if let Ok(rs) = s.finish() {
        out.extend(rs);
    }
    for r in &out {
        assert!(
            r.body.len() <= 64 * 1024 + stream.len(),
            "{} body bytes",
            r.body.len()
        );
        let f = fields(r);
        assert!(f.len() <= MAX_FIELDS && f.first().is_some_and(|(k, _)| k == "status"));
    }
});
