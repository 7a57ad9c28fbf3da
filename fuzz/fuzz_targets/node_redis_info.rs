//! Redis `INFO replication` answers as the agent's replication-lag probe reads them from a
//! node's server: the bulk string (`redis_bulk`, `redis_bulk_len`) and the offsets in it
//! (`redis_info_field`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_noderun::replies;

const FIELDS: [&str; 2] = ["master_repl_offset", "slave_repl_offset"];

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = replies::redis_bulk(data) {
        assert!(body.len() <= replies::REDIS_MAX_BULK);
        // The body is the declared length, right after the first line.
        let eol = data.iter().position(|&c| c == b'\n').expect("a first line");
        assert_eq!(replies::redis_bulk_len(&data[..eol]), Ok(body.len()));
        assert_eq!(&data[eol + 1..eol + 1 + body.len()], body);
        for f in FIELDS {
            check_field(body, f);
        }
    } else if let Some(eol) = data.iter().position(|&c| c == b'\n')
        && let Ok(len) = replies::redis_bulk_len(&data[..eol])
    {
        assert!(
            data.len() - eol - 1 < len,
            "a complete bulk string was refused"
        );
    }
    for f in FIELDS {
        check_field(data, f);
    }
});

fn check_field(body: &[u8], field: &str) {
    let Ok(n) = replies::redis_info_field(body, field) else {
        return;
    };
    // Found where it is written: a line `field:n` (surrounding spaces aside).
    let text = String::from_utf8_lossy(body);
    assert!(
        text.lines().any(|l| l
            .strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .is_some_and(|v| v.trim().parse() == Ok(n))),
        "{field} = {n} is not in {text:?}"
    );
    // The same value from a clean answer that says only that.
    let clean = format!("{field}:{n}\r\n");
    assert_eq!(replies::redis_info_field(clean.as_bytes(), field), Ok(n));
}
