//! The specification's `TrafficObservation` (topomapper.md, "Data Models"): one request or
//! exchange between two endpoints, from any source — weft's own agents, a pcap file,
//! JSON lines, Envoy access logs, or a caller of the library API.
//!
//! On the wire it reads both shapes: weft's (`timestamp_unix_ns`, lower-case protocol
//! names, an `error` flag) and the spec's (`timestamp` as RFC 3339 text, a naive ISO time
//! taken as UTC; protocol names as the spec's `Protocol` enum writes them: `https`,
//! `HTTPS` or `Protocol.HTTPS`). It always writes weft's.

use std::fmt;

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

/// The spec's `Protocol` enum: every name of [`PROTOCOLS`] as a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Https,
    Http2,
    Grpc,
    WebSocket,
    Tls,
    Postgres,
    Mysql,
    Mongodb,
    Redis,
    Kafka,
    Amqp,
    Dns,
    Tcp,
    Udp,
}

impl Protocol {
    /// In the order of [`PROTOCOLS`].
    pub const ALL: [Self; 15] = [
        Self::Http,
        Self::Https,
        Self::Http2,
        Self::Grpc,
        Self::WebSocket,
        Self::Tls,
        Self::Postgres,
        Self::Mysql,
        Self::Mongodb,
        Self::Redis,
        Self::Kafka,
        Self::Amqp,
        Self::Dns,
        Self::Tcp,
        Self::Udp,
    ];

    /// The spec's `Protocol.X.value`: the lower-case name weft uses everywhere.
    pub fn as_str(self) -> &'static str {
        PROTOCOLS[self as usize]
    }

    /// A protocol name as a client of the spec may write it: `https`, `HTTPS`,
    /// `Protocol.HTTPS` (Python's `str()` of the enum member), and the aliases
    /// `postgresql`, `ws`, `h2`, `rabbitmq`. `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        let lower = normalize_protocol(name);
        Self::ALL.into_iter().find(|p| p.as_str() == lower)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or_else(|| {
            format!(
                "unknown protocol `{text}` (known: {})",
                PROTOCOLS.join(", ")
            )
        })
    }
}

impl AsRef<str> for Protocol {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A protocol name in weft's spelling: trimmed, a `Protocol.` prefix dropped, lower-cased,
/// the common aliases mapped. An unknown name stays itself (lower-cased), so the check of
/// the observation names it in its error.
pub fn normalize_protocol(name: &str) -> String {
    let name = name.trim();
    let name = match name.get(..9) {
        Some(prefix) if prefix.eq_ignore_ascii_case("protocol.") => &name[9..],
        _ => name,
    };
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "postgresql" | "pg" => "postgres".to_owned(),
        "ws" | "wss" => "websocket".to_owned(),
        "h2" | "h2c" => "http2".to_owned(),
        "rabbitmq" => "amqp".to_owned(),
        "mongo" => "mongodb".to_owned(),
        _ => lower,
    }
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
        self.to_string()
    }
}

/// The spec's `to_string()`: `host:port`, IPv6 literals in brackets.
impl fmt::Display for NetworkEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One observed request/exchange from `source` (the client) to `destination` (the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ObservationWire")]
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

/// Either shape of an observation on the wire; see the module documentation.
#[derive(Deserialize)]
struct ObservationWire {
    #[serde(default)]
    timestamp_unix_ns: Option<u64>,
    /// The spec's: RFC 3339 text (a naive ISO time is UTC).
    #[serde(default)]
    timestamp: Option<String>,
    source: NetworkEndpoint,
    destination: NetworkEndpoint,
    /// Missing or empty: guessed from the destination port.
    #[serde(default)]
    protocol: Option<String>,
    bytes_sent: u64,
    bytes_received: u64,
    latency_ms: f64,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    error: bool,
}

impl TryFrom<ObservationWire> for TrafficObservation {
    type Error = String;

    fn try_from(w: ObservationWire) -> Result<Self, String> {
        let timestamp_unix_ns = match (w.timestamp_unix_ns, w.timestamp.as_deref()) {
            (Some(ns), None) => ns,
            (None, Some(text)) => {
                crate::time::parse_timestamp(text).map_err(|e| format!("field `timestamp`: {e}"))?
            }
            (Some(_), Some(_)) => {
                return Err(
                    "give one of `timestamp` (RFC 3339 text) and `timestamp_unix_ns`, not both"
                        .into(),
                );
            }
            (None, None) => {
                return Err(
                    "missing field `timestamp` (RFC 3339 text) or `timestamp_unix_ns`".into(),
                );
            }
        };
        Ok(Self {
            timestamp_unix_ns,
            source: w.source,
            destination: w.destination,
            protocol: w
                .protocol
                .as_deref()
                .map(normalize_protocol)
                .unwrap_or_default(),
            bytes_sent: w.bytes_sent,
            bytes_received: w.bytes_received,
            latency_ms: w.latency_ms,
            status_code: w.status_code,
            method: w.method,
            path: w.path,
            error: w.error,
        })
    }
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

    #[test]
    fn protocol_enum_follows_the_names_and_reads_the_specs_spellings() {
        for (p, name) in Protocol::ALL.iter().zip(PROTOCOLS) {
            assert_eq!(p.as_str(), *name);
            assert_eq!(Protocol::parse(name), Some(*p));
        }
        assert_eq!(Protocol::parse("Protocol.HTTPS"), Some(Protocol::Https));
        assert_eq!(Protocol::parse("POSTGRES"), Some(Protocol::Postgres));
        assert_eq!(Protocol::parse("postgresql"), Some(Protocol::Postgres));
        assert_eq!(
            Protocol::parse("protocol.websocket"),
            Some(Protocol::WebSocket)
        );
        assert_eq!(Protocol::parse("gopher"), None);
        assert!(
            "Protocol.GOPHER"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("GOPHER")
        );
        assert_eq!(
            serde_json::to_string(&Protocol::Redis).unwrap(),
            r#""redis""#
        );
    }

    #[test]
    fn endpoints_display_as_host_port() {
        assert_eq!(
            NetworkEndpoint::new("api.example.com", 443).to_string(),
            "api.example.com:443"
        );
        assert_eq!(
            NetworkEndpoint::new("fd00::1", 53).to_string(),
            "[fd00::1]:53"
        );
    }

    #[test]
    fn reads_the_specs_shape() {
        let o: TrafficObservation = serde_json::from_str(
            r#"{"timestamp": "2026-11-23T16:03:17.250000", "source": {"host": "client.external", "port": 54321},
                "destination": {"host": "api.example.com", "port": 443}, "protocol": "Protocol.HTTPS",
                "bytes_sent": 0, "bytes_received": 0, "latency_ms": 45.0, "status_code": null,
                "method": "GET", "path": "/api/users"}"#,
        )
        .unwrap();
        assert_eq!(o.timestamp_unix_ns, 1_795_449_797_250_000_000);
        assert_eq!(o.protocol, "https");
        assert_eq!(o.destination.to_string(), "api.example.com:443");
        let with_offset: TrafficObservation = serde_json::from_str(
            r#"{"timestamp": "2026-11-23T17:03:17.25+01:00", "source": {"host": "a", "port": 1},
                "destination": {"host": "b", "port": 5432}, "protocol": "POSTGRES",
                "bytes_sent": 1, "bytes_received": 2, "latency_ms": 1}"#,
        )
        .unwrap();
        assert_eq!(with_offset.timestamp_unix_ns, o.timestamp_unix_ns);
        assert_eq!(with_offset.protocol, "postgres");
        // weft's own shape still reads, and is what is written.
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.contains("timestamp_unix_ns") && !text.contains(r#""timestamp":"#));
        assert_eq!(
            serde_json::from_str::<TrafficObservation>(&text).unwrap(),
            o
        );
    }

    #[test]
    fn refuses_a_missing_double_or_bad_timestamp() {
        let body = |t: &str| {
            format!(
                r#"{{{t} "source": {{"host": "a", "port": 1}}, "destination": {{"host": "b", "port": 2}},
                    "protocol": "tcp", "bytes_sent": 0, "bytes_received": 0, "latency_ms": 0}}"#
            )
        };
        let err = |t: &str| {
            serde_json::from_str::<TrafficObservation>(&body(t))
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("missing field `timestamp`"), "{}", err(""));
        assert!(
            err(r#""timestamp": "2026-11-23T16:03:17Z", "timestamp_unix_ns": 1,"#)
                .contains("not both")
        );
        assert!(err(r#""timestamp": "yesterday","#).contains("field `timestamp`"));
        assert!(err(r#""timestamp": 17,"#).contains("invalid type"));
    }
}
