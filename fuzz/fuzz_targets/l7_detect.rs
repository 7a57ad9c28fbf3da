//! `weft_l7::detect` on both directions' first bytes. Input: flags (bit 0: UDP), server
//! port (2 bytes, big-endian), client length, client bytes, server bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::l7::{contains_ignore_case, detection};
use weft_l7::{Confidence, Protocol, Transport, parse_request};

fuzz_target!(|data: &[u8]| {
    let [flags, hi, lo, n, rest @ ..] = data else {
        return;
    };
    let t = if flags & 1 == 1 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let port = u16::from_be_bytes([*hi, *lo]);
    let (client, server) = rest.split_at(usize::from(*n).min(rest.len()));
    let d = detection(t, port, client, server);
    // Names come from the bytes.
    if let Some(sni) = &d.tls_sni {
        assert!(contains_ignore_case(client, sni.as_bytes()), "{d:?}");
        // The SNI of detection is the path of the ClientHello request.
        let r = parse_request(Protocol::Tls, client).expect("a ClientHello is a TLS request");
        assert_eq!(r.path.as_ref(), Some(sni));
    }
    if let Some(host) = &d.http_host {
        assert!(
            contains_ignore_case(client, host.as_bytes())
                || matches!(d.protocol, Protocol::Http2 | Protocol::Grpc),
            "{d:?}: host not in the client bytes"
        );
    }
    // Payload evidence does not depend on the port, except HTTP/2 on the gRPC port.
    if d.confidence == Confidence::Payload {
        let other = detection(t, port ^ 0x5a5a, client, server);
        let same = other.protocol == d.protocol
            || (matches!(d.protocol, Protocol::Http2 | Protocol::Grpc)
                && matches!(other.protocol, Protocol::Http2 | Protocol::Grpc));
        assert!(same, "port {port}: {d:?}, other port: {other:?}");
    }
});
