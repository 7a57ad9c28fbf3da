//! weft-reqroute's TLS framing at the request router: `tls_start` on every prefix of the
//! bytes (a decision, once taken, does not change as bytes arrive; a record's length is in
//! bounds and taken from its header), and the `host` rule on a server name (a name that
//! is a rule's value matches it whatever its case).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_reqroute::HeaderRule;
use weft_reqroute::tls::{MAX_RECORD, RECORD_HEADER, TlsStart, server_name_matches, tls_start};

fuzz_target!(|data: &[u8]| {
    let whole = tls_start(data);
    for n in 0..=data.len().min(64) {
        let part = tls_start(&data[..n]);
        assert!(
            part == TlsStart::NeedMore || part == whole,
            "{n} bytes say {part:?}, all {} say {whole:?}",
            data.len()
        );
    }
    if let TlsStart::Record(len) = whole {
        assert_eq!(data[0], 22);
        assert!(
            len > RECORD_HEADER && len <= RECORD_HEADER + MAX_RECORD,
            "{len}"
        );
        assert_eq!(
            len,
            RECORD_HEADER + usize::from(u16::from_be_bytes([data[3], data[4]]))
        );
    }
    if whole == TlsStart::NeedMore {
        assert!(
            data.len() < RECORD_HEADER,
            "{} bytes and no decision",
            data.len()
        );
    }

    // The rest as a server name and as a rule's value.
    let text = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
    let rules: Vec<HeaderRule> = [("host", Some(text.as_ref())), ("host", None), ("x-b", None)]
        .into_iter()
        .take(usize::from(data.first().copied().unwrap_or(0) % 4))
        .filter_map(|(n, v)| HeaderRule::new(n, v).ok())
        .collect();
    let _ = server_name_matches(&rules, Some(&text));
    let _ = server_name_matches(&rules, None);
    if let Ok(r) = HeaderRule::new("host", Some(&text))
        && let Some(v) = r.value.clone()
        && !v.contains(':')
        && !v.trim_end_matches('.').is_empty()
    {
        assert!(
            server_name_matches(&[r], Some(&v.to_ascii_uppercase())),
            "{v:?} does not match itself"
        );
    }
});
