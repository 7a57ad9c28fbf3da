//! TLS at a request router: the first record's framing (is the connection TLS, and how
//! many bytes hold its ClientHello record) and the rule on the server name (SNI) the
//! ClientHello asks for, taken as the request's `Host`. The ClientHello itself is parsed
//! elsewhere (weft-l7); the router does not terminate TLS.

use crate::HeaderRule;

/// A TLS record's header.
pub const RECORD_HEADER: usize = 5;
/// The largest record body (TLSCiphertext: 2^14 + 2048).
pub const MAX_RECORD: usize = 16384 + 2048;

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsStart {
    /// More bytes are needed to tell.
    NeedMore,
    /// Not a TLS handshake record.
    NotTls,
    /// A TLS handshake record of this many bytes, header included.
    Record(usize),
}

/// A handshake record (type 22) of version 3.x (x <= 4) with a length within a record's
/// bounds; said as soon as the bytes tell (one byte can say `NotTls`).
pub fn tls_start(b: &[u8]) -> TlsStart {
    let Some(&kind) = b.first() else {
        return TlsStart::NeedMore;
    };
    if kind != 22 || b.get(1).is_some_and(|&v| v != 3) || b.get(2).is_some_and(|&v| v > 4) {
        return TlsStart::NotTls;
    }
    let [_, _, _, hi, lo, ..] = *b else {
        return TlsStart::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 || len > MAX_RECORD {
        return TlsStart::NotTls;
    }
    TlsStart::Record(RECORD_HEADER + len)
}

/// Whether a TLS connection asking for `server_name` matches one of `rules`: a rule on
/// `host` with no value, or with the server name as its value (ASCII case-insensitive; a
/// `:port` of the value and a trailing dot of either are ignored). Rules on other headers
/// cannot be seen in TLS and do not match; nor does a connection without a server name.
pub fn server_name_matches(rules: &[HeaderRule], server_name: Option<&str>) -> bool {
    let Some(name) = server_name else {
        return false;
    };
    let name = name.trim_end_matches('.');
    rules.iter().any(|r| {
        r.name.eq_ignore_ascii_case("host")
            && r.value.as_deref().is_none_or(|v| {
                let host = match v.rsplit_once(':') {
                    Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
                    _ => v,
                };
                host.trim_end_matches('.').eq_ignore_ascii_case(name)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, value: Option<&str>) -> HeaderRule {
        HeaderRule::new(name, value).unwrap()
    }

    #[test]
    fn a_host_rule_matches_the_server_name() {
        let rules = [rule("Host", Some("Shop.Example:443"))];
        assert!(server_name_matches(&rules, Some("shop.example")));
        assert!(server_name_matches(&rules, Some("shop.example.")));
        assert!(!server_name_matches(&rules, Some("api.example")));
        assert!(!server_name_matches(&rules, None), "no server name");
        assert!(server_name_matches(
            &[rule("host", None)],
            Some("x.example")
        ));
        assert!(
            !server_name_matches(&[rule("x-weft-weave", Some("w1"))], Some("shop.example")),
            "other headers are not visible in TLS"
        );
        assert!(server_name_matches(
            &[rule("x-user", None), rule("host", Some("shop.example"))],
            Some("shop.example")
        ));
    }

    #[test]
    fn only_a_handshake_record_is_tls() {
        assert_eq!(tls_start(b""), TlsStart::NeedMore);
        assert_eq!(tls_start(&[22]), TlsStart::NeedMore);
        assert_eq!(tls_start(&[22, 3, 1, 0]), TlsStart::NeedMore);
        assert_eq!(
            tls_start(&[22, 3, 1, 0x02, 0x00]),
            TlsStart::Record(5 + 512)
        );
        assert_eq!(tls_start(b"GET / HTTP/1.1\r\n"), TlsStart::NotTls);
        assert_eq!(tls_start(b"PRI * HTTP/2.0"), TlsStart::NotTls);
        assert_eq!(tls_start(&[22, 2]), TlsStart::NotTls, "not version 3");
        assert_eq!(tls_start(&[22, 3, 9]), TlsStart::NotTls);
        assert_eq!(
            tls_start(&[22, 3, 3, 0, 0]),
            TlsStart::NotTls,
            "empty record"
        );
        assert_eq!(
            tls_start(&[22, 3, 3, 0xff, 0xff]),
            TlsStart::NotTls,
            "too long"
        );
        assert_eq!(
            tls_start(&[23, 3, 3, 0, 5]),
            TlsStart::NotTls,
            "application data"
        );
    }
}
