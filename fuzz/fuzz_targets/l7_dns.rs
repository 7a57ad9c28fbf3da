//! DNS over UDP and TCP: queries, responses, and the answers that name services.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, request, response};
use weft_l7::{Protocol, dns_answers};

/// Presentation form of a name as weft writes it: lower-case letters, digits, `-_*`, dots,
/// and `\DDD` escapes for anything else.
fn presentation(name: &str) -> bool {
    name == "."
        || name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_*.\\".contains(&c))
}

fuzz_target!(|data: &[u8]| {
    all(&[Protocol::Dns], data);
    if let Some(r) = request(Protocol::Dns, data)
        && let Some(name) = &r.path
    {
        assert!(presentation(name), "{r:?}");
    }
    if let Some(r) = response(Protocol::Dns, data) {
        let rcode = r.status.expect("a DNS response has an rcode");
        assert!(rcode <= 15, "{r:?}");
        assert_eq!(r.error, rcode != 0, "{r:?}");
        assert!(r.code.is_some(), "{r:?}");
    }
    for tcp in [false, true] {
        let answers = dns_answers(data, tcp);
        assert_eq!(answers, dns_answers(data, tcp), "not deterministic");
        assert!(answers.len() <= 256 * 256, "{} answers", answers.len());
        for (name, ip, ttl) in &answers {
            assert!(!name.is_empty() && presentation(name), "{name:?}");
            assert!(*ttl <= i32::MAX as u32, "ttl {ttl}");
            // Names map to distinct addresses: no (name, ip) twice.
            assert_eq!(
                answers
                    .iter()
                    .filter(|(n, i, _)| n == name && i == ip)
                    .count(),
                1,
                "{name} -> {ip} twice"
            );
        }
    }
});
