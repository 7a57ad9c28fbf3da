//! TLS connections at a request router: routed whole by the server name the client asks
//! for (SNI), as if it were the request's `Host` header.
//!
//! The router does not terminate TLS (it has no keys): the requests inside cannot be told
//! apart, but the ClientHello's server name is in clear text, and it is what a `Host`
//! header rule means for HTTPS. A connection whose first record is a ClientHello goes
//! whole to the target when one of its port's rules is on `host` and either has no value
//! or has the server name as its value (ASCII case-insensitive, a `:port` of the rule's
//! value and a trailing dot ignored); else whole to the origin. Rules on other headers
//! cannot be seen and do not match. The ClientHello is only looked at (`peek`), so both
//! sides get the client's bytes unchanged.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use weft_reqroute::HeaderRule;

use super::proxy::{ORIGIN, TARGET};

/// How long the rest of a ClientHello is waited for once its record began.
pub const HELLO_WAIT: Duration = Duration::from_secs(2);
/// A TLS record header and the largest record body.
const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 16384 + 2048;

/// How a connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    NotTls,
    /// A TLS handshake record; the ClientHello's server name when it has one.
    Tls {
        server_name: Option<String>,
    },
}

/// What the first bytes of `b` say: `None` while more bytes are needed to tell, the
/// record's whole length when they begin a TLS handshake record.
fn record(b: &[u8]) -> Option<Result<usize, ()>> {
    if b.is_empty() {
        return None;
    }
    // Handshake (22), version 3.x with x <= 4, a length within a record's bounds.
    if b[0] != 22 || b.get(1).is_some_and(|&v| v != 3) || b.get(2).is_some_and(|&v| v > 4) {
        return Some(Err(()));
    }
    if b.len() < RECORD_HEADER {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    if len == 0 || len > MAX_RECORD {
        return Some(Err(()));
    }
    Some(Ok(RECORD_HEADER + len))
}

/// Looks at (without reading) the start of `client`: a TLS handshake record, with the
/// ClientHello's server name once the record is whole (or [`HELLO_WAIT`] passed).
pub async fn client_hello(client: &TcpStream) -> io::Result<Start> {
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    let mut seen = vec![0u8; RECORD_HEADER + MAX_RECORD];
    loop {
        let n = client.peek(&mut seen).await?;
        if n == 0 {
            return Ok(Start::NotTls);
        }
        let late = tokio::time::Instant::now() >= deadline;
        match record(&seen[..n]) {
            Some(Err(())) => return Ok(Start::NotTls),
            Some(Ok(len)) if n >= len || late => {
                let server_name =
                    weft_l7::parse_request(weft_l7::Protocol::Tls, &seen[..n.min(len)])
                        .and_then(|r| r.path);
                return Ok(Start::Tls { server_name });
            }
            None if late => return Ok(Start::NotTls),
            _ => {}
        }
        // More of the record is on its way (peek returns at once while data waits).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The side of a TLS connection asking for `server_name` under a port's `rules`.
pub fn side_for(rules: &[HeaderRule], server_name: Option<&str>) -> usize {
    let Some(name) = server_name else {
        return ORIGIN;
    };
    let name = name.trim_end_matches('.');
    let hit = rules.iter().any(|r| {
        r.name.eq_ignore_ascii_case("host")
            && r.value.as_deref().is_none_or(|v| {
                let host = match v.rsplit_once(':') {
                    Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
                    _ => v,
                };
                host.trim_end_matches('.').eq_ignore_ascii_case(name)
            })
    });
    if hit { TARGET } else { ORIGIN }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, value: Option<&str>) -> HeaderRule {
        HeaderRule::new(name, value).unwrap()
    }

    #[test]
    fn a_host_rule_routes_by_the_server_name() {
        let rules = [rule("Host", Some("Shop.Example:443"))];
        assert_eq!(side_for(&rules, Some("shop.example")), TARGET);
        assert_eq!(side_for(&rules, Some("shop.example.")), TARGET);
        assert_eq!(side_for(&rules, Some("api.example")), ORIGIN);
        assert_eq!(side_for(&rules, None), ORIGIN, "no server name");
        assert_eq!(side_for(&[rule("host", None)], Some("x.example")), TARGET);
        assert_eq!(
            side_for(&[rule("x-weft-weave", Some("w1"))], Some("shop.example")),
            ORIGIN,
            "other headers are not visible in TLS"
        );
        assert_eq!(
            side_for(
                &[rule("x-user", None), rule("host", Some("shop.example"))],
                Some("shop.example")
            ),
            TARGET
        );
    }

    #[test]
    fn only_a_handshake_record_is_tls() {
        assert_eq!(record(b""), None);
        assert_eq!(record(&[22]), None);
        assert_eq!(record(&[22, 3, 1, 0]), None);
        assert_eq!(record(&[22, 3, 1, 0x02, 0x00]), Some(Ok(5 + 512)));
        assert_eq!(record(b"GET / HTTP/1.1\r\n"), Some(Err(())));
        assert_eq!(record(b"PRI * HTTP/2.0"), Some(Err(())));
        assert_eq!(record(&[22, 2]), Some(Err(())), "not version 3");
        assert_eq!(record(&[22, 3, 9]), Some(Err(())));
        assert_eq!(record(&[22, 3, 3, 0, 0]), Some(Err(())), "empty record");
        assert_eq!(record(&[22, 3, 3, 0xff, 0xff]), Some(Err(())), "too long");
        assert_eq!(record(&[23, 3, 3, 0, 5]), Some(Err(())), "application data");
    }
}
