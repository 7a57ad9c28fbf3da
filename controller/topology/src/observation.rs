//! The specification's `TrafficObservation` (topomapper.md, "Data Models"): one request or
//! exchange between two endpoints, from any source — weft's own agents, a pcap file,
//! JSON lines, Envoy access logs, or a caller of the library API.

use serde::{Deserialize, Serialize};

/// Application protocol names weft knows (lowercase, as in JSON and on the CLI).
pub const PROTOCOLS: &[&str] = &[
    "http",
    "https",
    "http2",
    "grpc",
    "websocket",
    "tls",
    "postgres",
    "mysql",
    "mongodb",
    "redis",
    "kafka",
    "amqp",
    "dns",
    "tcp",
    "udp",
];

/// Whether `name` is one of [`PROTOCOLS`].
pub fn is_known_protocol(name: &str) -> bool {
    PROTOCOLS.contains(&name)
}

/// `host:port` as the spec's `NetworkEndpoint`. `host` is a name or an IP address in text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkEndpoint {
    pub host: String,
    pub port: u16,
}

impl NetworkEndpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// `host:port`, IPv6 literals in brackets (the spec's `to_string()`).
    pub fn to_endpoint_string(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One observed request/exchange from `source` (the client) to `destination` (the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficObservation {
    /// When it happened, Unix nanoseconds.
    pub timestamp_unix_ns: u64,
    pub source: NetworkEndpoint,
    pub destination: NetworkEndpoint,
    /// One of [`PROTOCOLS`].
    pub protocol: String,
    /// Client to server.
    pub bytes_sent: u64,
    /// Server to client.
    pub bytes_received: u64,
    pub latency_ms: f64,
    pub status_code: Option<u16>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// Set when the exchange failed in a way the status code does not show (a Redis or SQL
    /// error reply, a reset). HTTP 5xx counts as an error without it.
    #[serde(default)]
    pub error: bool,
}

impl TrafficObservation {
    /// Whether this exchange counts as an error: the flag, or an HTTP 5xx status.
    pub fn is_error(&self) -> bool {
        self.error || self.status_code.is_some_and(|s| s >= 500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_strings_bracket_ipv6() {
        assert_eq!(
            NetworkEndpoint::new("db.internal", 5432).to_endpoint_string(),
            "db.internal:5432"
        );
        assert_eq!(
            NetworkEndpoint::new("fd00::1", 53).to_endpoint_string(),
            "[fd00::1]:53"
        );
    }

    #[test]
    fn http_5xx_and_flag_are_errors() {
        let mut o = TrafficObservation {
            timestamp_unix_ns: 1,
            source: NetworkEndpoint::new("a", 1),
            destination: NetworkEndpoint::new("b", 80),
            protocol: "http".into(),
            bytes_sent: 0,
            bytes_received: 0,
            latency_ms: 1.0,
            status_code: Some(404),
            method: None,
            path: None,
            error: false,
        };
        assert!(!o.is_error());
        o.status_code = Some(500);
        assert!(o.is_error());
        o.status_code = None;
        o.error = true;
        assert!(o.is_error());
        assert!(is_known_protocol("redis") && !is_known_protocol("gopher"));
    }
}
