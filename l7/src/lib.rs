//! weft-l7: application-protocol detection and parsing from short payload copies.
//!
//! The kernel program hands user space the first bytes (up to 128) of each direction of a
//! flow and of each request/response turn. This crate turns those bytes into:
//!
//! - [`detect`]: which application protocol a flow speaks ([`Protocol`]), how sure we are
//!   ([`Confidence`]: from payload, from the server port, or a plain TCP/UDP fallback), plus
//!   the TLS SNI and HTTP `Host` when they are visible;
//! - [`parse_request`] / [`parse_response`]: per-turn facts (HTTP method, path and status;
//!   Redis command and error replies; SQL statement kind and error packets; DNS name, type and
//!   rcode; gRPC status; Kafka API; MongoDB command; AMQP method);
//! - [`path_pattern`]: an HTTP path with ids collapsed (`/users/{id}`), for low-cardinality
//!   grouping;
//! - [`dns_answers`]: `name -> address` pairs from DNS responses seen on the wire (CNAME
//!   chains map every alias), used to name services.
//!
//! ```
//! use weft_l7::{detect, parse_request, parse_response, path_pattern, Confidence, Protocol, Transport};
//!
//! // Redis on a non-standard port is recognised by its payload.
//! let d = detect(Transport::Tcp, 7777, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n");
//! assert_eq!((d.protocol, d.confidence), (Protocol::Redis, Confidence::Payload));
//!
//! let req = parse_request(Protocol::Http1, b"GET /users/42?x=1 HTTP/1.1\r\nHost: a\r\n").unwrap();
//! assert_eq!(req.method, "GET");
//! assert_eq!(path_pattern(req.path.as_deref().unwrap()), "/users/{id}");
//!
//! let resp = parse_response(Protocol::Redis, b"-ERR unknown command 'FOO'\r\n").unwrap();
//! assert!(resp.error);
//! ```
//!
//! Everything is pure: no I/O, no global state beyond a lazily built constant table (HPACK
//! Huffman), and no panics on any input (property-tested).
//! Inputs are expected to be truncated; parsers work on prefixes and return partial results
//! (or `None`) rather than failing.

mod amqp;
mod detect;
mod dns;
mod hpack;
mod http;
mod kafka;
mod mongo;
mod path;
mod redis;
mod session;
mod sql;
mod tls;
mod util;

use std::fmt;
use std::str::FromStr;

pub use detect::detect;
pub use dns::dns_answers;
/// HPACK decoding of whole header blocks, for framers of HTTP/2 streams (weft-shadow).
pub use hpack::{Decoder as HpackDecoder, Header as HpackHeader};
pub use path::{MAX_PATTERN_LEN, path_pattern};
pub use session::{Call, CallKind, Session, Turn};

/// Application protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 (cleartext prior knowledge or h2c), not recognised as gRPC.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// WebSocket (HTTP/1.1 upgrade).
    WebSocket,
    /// TLS (any application inside).
    Tls,
    Postgres,
    Mysql,
    Mongodb,
    Redis,
    Kafka,
    /// AMQP 0-9-1 (and AMQP 1.0 protocol headers).
    Amqp,
    /// DNS over UDP or TCP.
    Dns,
    /// Unrecognised TCP.
    Tcp,
    /// Unrecognised UDP.
    Udp,
}

impl Protocol {
    /// Every protocol, in declaration order.
    pub const ALL: [Protocol; 14] = [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::WebSocket,
        Protocol::Tls,
        Protocol::Postgres,
        Protocol::Mysql,
        Protocol::Mongodb,
        Protocol::Redis,
        Protocol::Kafka,
        Protocol::Amqp,
        Protocol::Dns,
        Protocol::Tcp,
        Protocol::Udp,
    ];

    /// Lowercase name: "http", "http2", "grpc", "websocket", "tls", "postgres", "mysql",
    /// "mongodb", "redis", "kafka", "amqp", "dns", "tcp", "udp".
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::WebSocket => "websocket",
            Protocol::Tls => "tls",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Mongodb => "mongodb",
            Protocol::Redis => "redis",
            Protocol::Kafka => "kafka",
            Protocol::Amqp => "amqp",
            Protocol::Dns => "dns",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Protocol::from_str`]: the name is not a known protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProtocol(pub String);

impl fmt::Display for UnknownProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown protocol {:?}", self.0)
    }
}

impl std::error::Error for UnknownProtocol {}

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Parses the [`Protocol::as_str`] names, case-insensitively, and a few common aliases
    /// ("http1", "http/1.1", "h2", "postgresql", "mongo", "websockets", "ws").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        if let Some(p) = Protocol::ALL.iter().find(|p| p.as_str() == lower) {
            return Ok(*p);
        }
        Ok(match lower.as_str() {
            "http1" | "http/1" | "http/1.0" | "http/1.1" => Protocol::Http1,
            "h2" | "h2c" | "http/2" => Protocol::Http2,
            "ws" | "websockets" => Protocol::WebSocket,
            "postgresql" | "pg" => Protocol::Postgres,
            "mongo" => Protocol::Mongodb,
            _ => return Err(UnknownProtocol(s.to_string())),
        })
    }
}

/// Transport of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

/// How a [`Detection`] was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Confidence {
    /// A payload signature matched.
    Payload,
    /// No payload signature matched; the server port is the protocol's well-known port.
    Port,
    /// Nothing matched: plain TCP or UDP.
    Fallback,
}

/// Result of [`detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub protocol: Protocol,
    pub confidence: Confidence,
    /// TLS server name (SNI) from the ClientHello, when the extension is within the bytes.
    pub tls_sni: Option<String>,
    /// TLS ALPN protocols the client offered ("h2", "http/1.1"), when the extension is within
    /// the bytes.
    pub tls_alpn: Vec<String>,
    /// HTTP/1 `Host` header (or HTTP/2 `:authority`), when visible in full.
    pub http_host: Option<String>,
}

/// One request turn, as far as it is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The verb: HTTP method; Redis command (upper-cased); "QUERY", "PREPARE", "BIND",
    /// "EXECUTE", ... (PostgreSQL) or "QUERY", "STMT_PREPARE", "PING", ... (MySQL); MongoDB
    /// command name ("find", "insert", "hello"); Kafka API name ("Produce", "ApiVersions");
    /// AMQP "Class.Method" ("Basic.Publish"); DNS query type ("A", "AAAA"); WebSocket frame
    /// opcode ("TEXT", "BINARY", "PING", "CLOSE"); "CLIENT_HELLO" for TLS.
    pub method: String,
    /// What the verb acts on, raw and possibly truncated: HTTP request target (HTTP/1,
    /// HTTP/2 and gRPC `:path`), DNS query name, MongoDB collection, AMQP queue or exchange,
    /// TLS SNI. Feed HTTP paths to [`path_pattern`] before using them as a label.
    pub path: Option<String>,
    /// Sub-operation: the first SQL keyword ("SELECT", "INSERT", ...) of a PostgreSQL or
    /// MySQL statement, upper-cased.
    pub operation: Option<String>,
}

/// One response turn, as far as it is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Numeric status where the protocol has one: HTTP status (HTTP/1, HTTP/2, gRPC's
    /// `:status`, WebSocket handshake), DNS rcode, MySQL error number, MongoDB error `code`,
    /// AMQP reply code, WebSocket close code, TLS alert description.
    pub status: Option<u16>,
    /// The turn failed: HTTP 5xx (4xx is visible in `status` but not an error), Redis error
    /// reply, PostgreSQL ErrorResponse, MySQL ERR packet, DNS rcode != 0, gRPC status
    /// UNKNOWN/DEADLINE_EXCEEDED/UNIMPLEMENTED/INTERNAL/UNAVAILABLE/DATA_LOSS, MongoDB
    /// `ok: 0`, AMQP close/return with a reply code >= 300, a fatal TLS alert.
    pub error: bool,
    /// Protocol-specific detail when visible: gRPC status number, PostgreSQL SQLSTATE,
    /// MySQL SQLSTATE, Redis error kind ("ERR", "WRONGTYPE"), DNS rcode name ("NXDOMAIN"),
    /// MongoDB `codeName`, AMQP/TLS/WebSocket code names are not reported.
    pub code: Option<String>,
}

/// Parses the first bytes of a request turn of a flow already detected as `protocol`.
///
/// Returns `None` when the bytes do not look like a request of that protocol (or nothing
/// useful is visible, e.g. TLS application data). Truncated requests give what is visible.
pub fn parse_request(protocol: Protocol, bytes: &[u8]) -> Option<Request> {
    match protocol {
        Protocol::Http1 => http::parse_request_h1(bytes),
        Protocol::WebSocket => {
            http::parse_request_h1(bytes).or_else(|| http::parse_ws_frame_request(bytes))
        }
        Protocol::Http2 | Protocol::Grpc => http::parse_request_h2(bytes),
        Protocol::Tls => tls::parse_request(bytes),
        Protocol::Postgres => sql::pg_parse_request(bytes),
        Protocol::Mysql => sql::mysql_parse_request(bytes),
        Protocol::Mongodb => mongo::parse_request(bytes),
        Protocol::Redis => redis::parse_request(bytes),
        Protocol::Kafka => kafka::parse_request(bytes),
        Protocol::Amqp => amqp::parse_request(bytes),
        Protocol::Dns => dns::parse_request(bytes),
        Protocol::Tcp | Protocol::Udp => None,
    }
}

/// Parses the first bytes of a response turn of a flow already detected as `protocol`.
///
/// Returns `None` when the bytes do not look like a response of that protocol.
pub fn parse_response(protocol: Protocol, bytes: &[u8]) -> Option<Response> {
    match protocol {
        Protocol::Http1 => http::parse_response_h1(bytes),
        Protocol::WebSocket => {
            http::parse_response_h1(bytes).or_else(|| http::parse_ws_frame_response(bytes))
        }
        Protocol::Http2 | Protocol::Grpc => http::parse_response_h2(bytes),
        Protocol::Tls => tls::parse_response(bytes),
        Protocol::Postgres => sql::pg_parse_response(bytes),
        Protocol::Mysql => sql::mysql_parse_response(bytes),
        Protocol::Mongodb => mongo::parse_response(bytes),
        Protocol::Redis => redis::parse_response(bytes),
        Protocol::Kafka => kafka::parse_response(bytes),
        Protocol::Amqp => amqp::parse_response(bytes),
        Protocol::Dns => dns::parse_response(bytes),
        Protocol::Tcp | Protocol::Udp => None,
    }
}
