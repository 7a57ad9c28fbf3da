//! TLS: record headers, ClientHello and its SNI, alerts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{all, contains_ignore_case, detection, request, response};
use weft_l7::{Protocol, Transport};

fuzz_target!(|data: &[u8]| {
    all(&[Protocol::Tls], data);
    if let Some(r) = request(Protocol::Tls, data) {
        assert_eq!(r.method, "CLIENT_HELLO");
        if let Some(sni) = &r.path {
            assert!(sni.len() <= 255, "{sni:?}");
            assert!(
                sni.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(&c)),
                "{sni:?}"
            );
            assert!(
                contains_ignore_case(data, sni.as_bytes()),
                "{sni:?} not in the bytes"
            );
        }
        // What the request parser calls a ClientHello, detection calls TLS with that SNI.
        let d = detection(Transport::Tcp, 8443, data, &[]);
        assert_eq!(d.protocol, Protocol::Tls, "{d:?}");
        assert_eq!(d.tls_sni, r.path, "{d:?}");
    }
    if let Some(r) = response(Protocol::Tls, data)
        && r.error
    {
        assert!(
            r.status.is_some(),
            "{r:?}: a fatal alert without its description"
        );
    }
});
