//! The read side of the topology: plain, serialisable, deterministically sorted views.
//! The JSON shape of `GET /topology` is the serde shape of [`TopologySnapshot`].

use serde::Serialize;

use super::classify::ServiceType;
use super::stats::LatencySummary;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopologySnapshot {
    /// RFC 3339.
    pub generated_at: String,
    /// Sorted by name.
    pub services: Vec<ServiceView>,
    /// Sorted by (source, target, transport, port).
    pub dependencies: Vec<DependencyView>,
    pub stats: SnapshotStats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceView {
    pub name: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    /// Every address and port the service was seen serving, sorted.
    pub endpoints: Vec<EndpointView>,
    /// Host id of the agent the workload is registered with; `null` for other services.
    pub host: Option<String>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    /// Textual IP address (IPv6 without brackets).
    pub address: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DependencyView {
    /// Client service.
    pub source: String,
    /// Server service.
    pub target: String,
    /// "tcp" or "udp".
    pub transport: &'static str,
    /// Server port.
    pub port: u16,
    pub protocol: &'static str,
    pub flows: u64,
    pub requests: u64,
    pub errors: u64,
    pub resets: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub payload_bytes_sent: u64,
    pub payload_bytes_received: u64,
    pub latency_ms: LatencySummary,
    pub handshake_rtt_ms: LatencySummary,
    /// "ipv4" and/or "ipv6".
    pub address_families: Vec<&'static str>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SnapshotStats {
    pub records_ingested: u64,
    pub agents_connected: u64,
}
