//! The read side of the topology: plain, serialisable, deterministically sorted views.
//! The JSON shape of `GET /topology` is the serde shape of [`TopologySnapshot`].

use serde::{Deserialize, Serialize};

use super::classify::ServiceType;
use super::stats::LatencySummary;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologySnapshot {
    /// RFC 3339.
    pub generated_at: String,
    /// Sorted by name.
    pub services: Vec<ServiceView>,
    /// Sorted by (source, target, transport, port).
    pub dependencies: Vec<DependencyView>,
    /// Everything in the snapshot added up.
    pub totals: Totals,
    pub stats: SnapshotStats,
}

/// Sums over all dependencies of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Over every request, quantiles from the merged histograms.
    pub latency_ms: LatencySummary,
}

/// Requests of one (method, path pattern, status) on a dependency; method `other` holds
/// those beyond the per-dependency bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestGroupView {
    pub method: String,
    pub path: String,
    pub status: u32,
    pub count: u64,
    pub errors: u64,
    pub avg_latency_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// Textual IP address (IPv6 without brackets).
    pub address: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyView {
    /// Client service.
    pub source: String,
    /// Server service.
    pub target: String,
    /// "tcp" or "udp".
    pub transport: String,
    /// Server port.
    pub port: u16,
    /// Best evidence: payload, then a declared protocol, then the port.
    pub protocol: String,
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
    pub address_families: Vec<String>,
    /// Requests by (method, path pattern, status), at most 64 plus `other`.
    pub request_groups: Vec<RequestGroupView>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub records_ingested: u64,
    pub agents_connected: u64,
}

impl ServiceView {
    /// The spec's `service_id`: the service name, unique in a snapshot.
    pub fn service_id(&self) -> &str {
        &self.name
    }
}

impl DependencyView {
    /// The spec's `request_count`.
    pub fn request_count(&self) -> u64 {
        self.requests
    }

    /// The spec's `total_bytes`: both directions.
    pub fn total_bytes(&self) -> u64 {
        self.bytes_sent.saturating_add(self.bytes_received)
    }

    /// The spec's `error_count`.
    pub fn error_count(&self) -> u64 {
        self.errors
    }

    /// The spec's `avg_latency_ms`.
    pub fn avg_latency_ms(&self) -> f64 {
        self.latency_ms.avg
    }

    /// Errors per request (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl TopologySnapshot {
    pub fn service(&self, name: &str) -> Option<&ServiceView> {
        self.services
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.services[i])
    }
}
