//! weft-reqroute: what an L7 request router needs to choose, per HTTP/1.1 request, which
//! upstream gets it (origin = production, target = a branch copy) by a request header.
//! Pure: no I/O, no async, no clocks.
//!
//! - [`RequestCutter`]: cuts a client byte stream into [`ClientPiece`]s: each request's
//!   parsed head ([`RequestHead`], with its exact bytes), its body as ranges of the bytes
//!   fed (chunk framing and trailers included, never buffered), its end; after an upgrade
//!   request (`Upgrade` + `Connection: upgrade`, e.g. WebSocket, h2c) or a CONNECT, every
//!   further byte is a raw tunnel.
//! - [`ResponseCutter`]: cuts a server byte stream into [`ServerPiece`]s, told which
//!   requests were sent to that server (in order): response heads (interim 1xx ones too),
//!   body ranges, the end of each final response; a `101` or a `2xx` to CONNECT turns it
//!   into a tunnel. It stops at each end, so a router can interleave two servers' answers in
//!   the client's request order.
//! - [`HeaderRule`]: a header name (and optionally an exact value) that selects requests.
//! - [`tls`]: a TLS connection's first record (is it TLS, how long is its ClientHello
//!   record) and the `host` rule on its server name, for routing it whole.
//!
//! The only bytes ever held are those of an incomplete message head, up to a limit
//! (`max_head`, [`DEFAULT_MAX_HEAD`]); every other byte is passed on as a range of the
//! caller's buffer. Cutting is split-invariant: any cut of a stream into `feed` calls gives
//! the same heads and the same bytes (body ranges may be cut differently).
//!
//! ```
//! use weft_reqroute::{ClientPiece, HeaderRule, RequestCutter, DEFAULT_MAX_HEAD};
//! let rule = HeaderRule::new("X-Branch", Some("feature-1")).unwrap();
//! let mut c = RequestCutter::new(DEFAULT_MAX_HEAD);
//! let data = b"POST /a HTTP/1.1\r\nx-branch: feature-1\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\n\r\n";
//! let mut pieces = Vec::new();
//! c.feed(data, &mut pieces).unwrap();
//! let ClientPiece::Head(h) = &pieces[0] else { panic!() };
//! assert!(rule.matches(h));
//! assert_eq!(pieces[1], ClientPiece::Body(60..62));
//! assert_eq!(pieces[2], ClientPiece::End);
//! assert!(matches!(&pieces[3], ClientPiece::Head(h) if h.target == "/b" && !rule.matches(h)));
//! assert_eq!(pieces[4], ClientPiece::End);
//! assert!(c.idle());
//! ```
//!
//! Limits: HTTP/1.x only (no HTTP/2 prior knowledge: such a stream is [`CutError::Malformed`]);
//! parsing is strict where a lenient reading could let the router and an upstream disagree on
//! where a request ends (bare CR or LF, obsolete line folding, a space before a header's
//! colon, a request `Transfer-Encoding` not ending in `chunked`, differing `Content-Length`s
//! are all errors); after an upgrade request the client side stays a tunnel even when the
//! server declines the upgrade; response bodies read until close end only at
//! [`ResponseCutter::finish`].

mod body;
mod client;
mod head;
mod rule;
mod server;
#[cfg(test)]
mod tests;
pub mod tls;

pub use client::{ClientPiece, RequestCutter, RequestHead};
pub use rule::HeaderRule;
pub use server::{ResponseCutter, ServerPiece};

/// The default limit of a message head (start line, header fields and the final empty line,
/// and a request's leading empty lines), and of a chunked body's trailer section.
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;

/// Why a stream cannot be cut (further). Cutters keep returning it once it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CutError {
    /// A message head (or a chunked body's trailer section) is longer than the limit.
    #[error("HTTP/1 head over the limit of {0} bytes")]
    HeadTooLarge(usize),
    /// The bytes are not HTTP/1 as RFC 9112 frames it; the text says where.
    #[error("malformed HTTP/1: {0}")]
    Malformed(String),
    /// The server closed the connection while a response was in progress.
    #[error("the server closed the connection in the middle of a response")]
    Truncated,
}
