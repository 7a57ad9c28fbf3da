//! TLS connections at a request router: routed whole by the server name the client asks
//! for (SNI), as if it were the request's `Host` header.
//!
//! The router does not terminate TLS (it has no keys): the requests inside cannot be told
//! apart, but the ClientHello's server name is in clear text, and it is what a `Host`
//! header rule means for HTTPS. A connection whose first record is a ClientHello goes
//! whole to the target when one of its port's rules is on `host` and either has no value
//! or has the server name as its value ([`weft_reqroute::tls::server_name_matches`]);
//! else whole to the origin. Rules on other headers cannot be seen and do not match. The
//! ClientHello is only looked at (`peek`), so both sides get the client's bytes unchanged.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use weft_reqroute::HeaderRule;
use weft_reqroute::tls::{RECORD_HEADER, TlsStart, server_name_matches, tls_start};

use super::proxy::{ORIGIN, TARGET};

/// How long the rest of a ClientHello is waited for once its record began.
pub const HELLO_WAIT: Duration = Duration::from_secs(2);

/// How a connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    NotTls,
    /// A TLS handshake record; the ClientHello's server name when it has one.
    Tls {
        server_name: Option<String>,
    },
}

/// Looks at (without reading) the start of `client`: a TLS handshake record, with the
/// ClientHello's server name once the record is whole (or [`HELLO_WAIT`] passed). Only
/// a record's header is looked at until it says TLS; then the record's own length.
pub async fn client_hello(client: &TcpStream) -> io::Result<Start> {
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    let mut head = [0u8; RECORD_HEADER];
    let len = loop {
        let n = client.peek(&mut head).await?;
        let late = tokio::time::Instant::now() >= deadline;
        match tls_start(&head[..n]) {
            TlsStart::Record(len) => break len,
            TlsStart::NeedMore if n > 0 && !late => {}
            _ => return Ok(Start::NotTls),
        }
        // More of the header is on its way (peek returns at once while data waits).
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let mut seen = vec![0u8; len];
    loop {
        let n = client.peek(&mut seen).await?;
        if n >= len || n == 0 || tokio::time::Instant::now() >= deadline {
            // The SNI parser is weft-l7's (fuzzed by `l7_tls`).
            let server_name =
                weft_l7::parse_request(weft_l7::Protocol::Tls, &seen[..n]).and_then(|r| r.path);
            return Ok(Start::Tls { server_name });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The side of a TLS connection asking for `server_name` under a port's `rules`.
pub fn side_for(rules: &[HeaderRule], server_name: Option<&str>) -> usize {
    if server_name_matches(rules, server_name) {
        TARGET
    } else {
        ORIGIN
    }
}
