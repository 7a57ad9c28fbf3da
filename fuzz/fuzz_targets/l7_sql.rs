//! PostgreSQL and MySQL: startup, queries, prepared statements, error packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, response};
use weft_l7::Protocol;

fuzz_target!(|data: &[u8]| {
    // Requests are checked by `all` (a printable method, an upper-case SQL keyword).
    all(&[Protocol::Postgres, Protocol::Mysql], data);
    if let Some(r) = response(Protocol::Postgres, data)
        && let Some(state) = &r.code
    {
        assert!(r.error, "{r:?}: a SQLSTATE without an error");
        assert!(
            state.len() == 5 && state.bytes().all(|c| c.is_ascii_alphanumeric()),
            "{r:?}"
        );
    }
    if let Some(r) = response(Protocol::Mysql, data) {
        assert_eq!(r.error, data.get(4) == Some(&0xff), "{r:?}");
        if let Some(state) = &r.code {
            assert!(
                state.len() == 5 && state.bytes().all(|c| c.is_ascii_alphanumeric()),
                "{r:?}"
            );
        }
    }
});
