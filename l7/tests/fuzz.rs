//! Property tests: no public function panics on arbitrary input, and outputs keep their
//! invariants.

use proptest::prelude::*;
use weft_l7::{
    Confidence, Protocol, Transport, detect, dns_answers, parse_request, parse_response,
    path_pattern,
};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn protocol() -> impl Strategy<Value = Protocol> {
    (0..Protocol::ALL.len()).prop_map(|i| Protocol::ALL[i])
}

/// Bytes that start like one of the recognised protocols, then continue arbitrarily: this
/// reaches the deeper parsing paths far more often than uniform bytes.
fn seeded() -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<&'static [u8]> = vec![
        b"GET /",
        b"HTTP/1.1 ",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x00\x8c\x01\x00\x00\x88\x03\x03",
        b"\x00\x00\x00\x24\x00\x03\x00\x00",
        b"Q\x00\x00\x00",
        b"E\x00\x00\x00",
        b"*1\r\n$4\r\n",
        b"-ERR ",
        b"\x37\x00\x00\x00\x2a\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00",
        b"\x00\x00\x00\x31\x00\x12\x00\x03",
        b"AMQP\x00\x00\x09\x01\x01\x00\x01",
        b"\x1a\x2b\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00",
        b"\x4b\x00\x00\x00\x0a8.0",
        b"\xff\x00\x00\x01\xff",
    ];
    (0..seeds.len(), bytes(160)).prop_map(move |(i, tail)| {
        let mut v = seeds[i].to_vec();
        v.extend(tail);
        v
    })
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![bytes(300), seeded()]
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES overrides for longer runs.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn detect_never_panics(port in any::<u16>(), c in input(), s in input(), udp in any::<bool>()) {
        let t = if udp { Transport::Udp } else { Transport::Tcp };
        let d = detect(t, port, &c, &s);
        match t {
            Transport::Udp => prop_assert!(matches!(d.protocol, Protocol::Dns | Protocol::Udp)),
            Transport::Tcp => prop_assert!(d.protocol != Protocol::Udp),
        }
        if d.tls_sni.is_some() {
            prop_assert_eq!(d.protocol, Protocol::Tls);
        }
        if matches!(d.protocol, Protocol::Tcp | Protocol::Udp) {
            prop_assert_eq!(d.confidence, Confidence::Fallback);
        }
    }

    #[test]
    fn parsers_never_panic(p in protocol(), b in input()) {
        if let Some(r) = parse_request(p, &b) {
            prop_assert!(!r.method.is_empty());
        }
        if let Some(r) = parse_response(p, &b)
            && p == Protocol::Http1 {
                prop_assert_eq!(r.error, r.status.is_some_and(|s| s >= 500));
            }
    }

    #[test]
    fn dns_answers_never_panic(b in input(), tcp in any::<bool>()) {
        for (name, _, ttl) in dns_answers(&b, tcp) {
            prop_assert!(!name.is_empty());
            prop_assert!(ttl <= i32::MAX as u32);
        }
    }

    #[test]
    fn path_pattern_never_panics(s in ".{0,300}") {
        let p = path_pattern(&s);
        prop_assert!(p.len() <= 128);
        prop_assert!(!p.contains('?') && !p.contains('#'));
    }

    #[test]
    fn path_pattern_collapses_numbers_and_uuids(n in any::<u64>(), u in any::<u128>(), word in "[a-z]{1,12}") {
        prop_assert_eq!(path_pattern(&format!("/{word}/{n}?a=b")), format!("/{word}/{{id}}"));
        let h = format!("{u:032x}");
        let uuid = format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]);
        prop_assert_eq!(path_pattern(&format!("/{word}/{uuid}/x")), format!("/{word}/{{id}}/x"));
    }
}
