//! Traffic patterns: the spec's `analyze_traffic_patterns`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::topology::TopologySnapshot;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrafficPatterns {
    /// Requests observed (one per traffic observation; request turns for agent records).
    pub total_observations: u64,
    pub total_bytes: u64,
    pub total_errors: u64,
    /// Mean over every request.
    pub avg_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// Errors per request (0 without requests).
    pub error_rate: f64,
    /// Requests per protocol.
    pub protocol_distribution: BTreeMap<String, u64>,
    pub service_count: usize,
    pub dependency_count: usize,
}

pub fn analyze_traffic_patterns(snapshot: &TopologySnapshot) -> TrafficPatterns {
    let totals = &snapshot.totals;
    let mut protocol_distribution: BTreeMap<String, u64> = BTreeMap::new();
    for d in &snapshot.dependencies {
        *protocol_distribution.entry(d.protocol.clone()).or_default() += d.requests;
    }
    TrafficPatterns {
        total_observations: totals.requests,
        total_bytes: totals.bytes,
        total_errors: totals.errors,
        avg_latency_ms: totals.latency_ms.avg,
        p50_latency_ms: totals.latency_ms.p50,
        p95_latency_ms: totals.latency_ms.p95,
        p99_latency_ms: totals.latency_ms.p99,
        error_rate: if totals.requests == 0 {
            0.0
        } else {
            totals.errors as f64 / totals.requests as f64
        },
        protocol_distribution,
        service_count: snapshot.services.len(),
        dependency_count: snapshot.dependencies.len(),
    }
}
