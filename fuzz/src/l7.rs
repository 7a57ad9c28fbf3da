//! Checks of weft-l7's outputs: every request and response of every protocol.

use weft_l7::{Protocol, Request, Response, parse_request, parse_response, path_pattern};

/// A label built from wire bytes (method, path, operation, code) must be printable: it ends
/// up in Prometheus labels, JSON and the ASCII map.
pub fn assert_label(what: &str, s: &str) {
    assert!(
        !s.chars().any(char::is_control),
        "{what} {s:?} has a control character"
    );
}

/// `parse_request` on `bytes`, with the invariants every protocol keeps: deterministic, a
/// non-empty printable method, printable path and operation.
pub fn request(p: Protocol, bytes: &[u8]) -> Option<Request> {
    let r = parse_request(p, bytes);
    assert_eq!(
        r,
        parse_request(p, bytes),
        "{p}: parse_request is not deterministic"
    );
    if let Some(r) = &r {
        assert!(!r.method.is_empty(), "{p}: empty method in {r:?}");
        assert_label("method", &r.method);
        if let Some(path) = &r.path {
            assert_label("path", path);
        }
        if let Some(op) = &r.operation {
            assert!(
                !op.is_empty() && op.len() <= 32 && op.bytes().all(|c| c.is_ascii_uppercase()),
                "{p}: operation {op:?} is not an upper-case SQL keyword"
            );
        }
    }
    r
}

/// `parse_response` on `bytes`: deterministic, a printable code.
pub fn response(p: Protocol, bytes: &[u8]) -> Option<Response> {
    let r = parse_response(p, bytes);
    assert_eq!(
        r,
        parse_response(p, bytes),
        "{p}: parse_response is not deterministic"
    );
    if let Some(code) = r.as_ref().and_then(|r| r.code.as_deref()) {
        assert!(!code.is_empty(), "{p}: empty code");
        assert_label("code", code);
    }
    r
}

/// Both directions of `protocols` on `bytes`, and detection with `bytes` as either side's
/// first payload (which reaches the protocols' detectors).
pub fn all(protocols: &[Protocol], bytes: &[u8]) -> Vec<(Option<Request>, Option<Response>)> {
    for port in [0, 443, 53, 5432, 3306] {
        detection(weft_l7::Transport::Tcp, port, bytes, &[]);
        detection(weft_l7::Transport::Tcp, port, &[], bytes);
    }
    detection(weft_l7::Transport::Udp, 53, bytes, &[]);
    detection(weft_l7::Transport::Udp, 53, &[], bytes);
    protocols
        .iter()
        .map(|p| (request(*p, bytes), response(*p, bytes)))
        .collect()
}

/// `detect` with what it guarantees: UDP is DNS or UDP, TCP never UDP, an SNI only for TLS,
/// a fallback only for plain TCP/UDP, names printable and lower-case.
pub fn detection(
    t: weft_l7::Transport,
    port: u16,
    client: &[u8],
    server: &[u8],
) -> weft_l7::Detection {
    use weft_l7::{Confidence, Transport};
    let d = weft_l7::detect(t, port, client, server);
    assert_eq!(
        d,
        weft_l7::detect(t, port, client, server),
        "detect is not deterministic"
    );
    match t {
        Transport::Udp => assert!(matches!(d.protocol, Protocol::Dns | Protocol::Udp), "{d:?}"),
        Transport::Tcp => assert!(d.protocol != Protocol::Udp, "{d:?}"),
    }
    if d.tls_sni.is_some() {
        assert_eq!(d.protocol, Protocol::Tls, "{d:?}");
    }
    assert_eq!(
        matches!(d.protocol, Protocol::Tcp | Protocol::Udp),
        d.confidence == Confidence::Fallback,
        "{d:?}"
    );
    for name in [&d.tls_sni, &d.http_host].into_iter().flatten() {
        assert!(
            !name.is_empty() && name.bytes().all(|c| (0x21..0x7f).contains(&c)),
            "{d:?}: name is not printable ASCII"
        );
        assert_eq!(
            *name,
            name.to_ascii_lowercase(),
            "{d:?}: name is not lower-case"
        );
    }
    d
}

/// `path_pattern` of a request path: bounded, no query or fragment, and applying it again
/// changes nothing when it was not truncated (a truncated pattern is at least
/// `MAX_PATTERN_LEN - 3` bytes: the cut falls on a character boundary).
pub fn pattern(path: &str) -> String {
    let p = path_pattern(path);
    assert!(p.len() <= weft_l7::MAX_PATTERN_LEN, "{p:?} is too long");
    assert!(!p.contains(['?', '#']), "{p:?} keeps a query or fragment");
    assert!(!p.is_empty(), "empty pattern of {path:?}");
    if p.len() + 3 < weft_l7::MAX_PATTERN_LEN {
        assert_eq!(
            path_pattern(&p),
            p,
            "the pattern of {path:?} is not a fixed point"
        );
    }
    p
}

/// Whether `needle` occurs in `hay`, ignoring ASCII case.
pub fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}
