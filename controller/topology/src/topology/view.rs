//! Builds a [`TopologySnapshot`] from copied state: views of every dependency, then the
//! traffic shape of every service, then its classification.

use std::collections::{BTreeMap, BTreeSet};

use super::classify::{ServiceClassifier, ServiceFacts, is_http};
use super::snapshot::{
    DependencyView, EndpointView, RequestGroupView, ServiceView, SnapshotStats, TopologySnapshot,
    Totals,
};
use super::stats::DependencyStats;
use super::{DependencyKey, ServiceState};
use crate::registry::WorkloadDirectory;
use crate::time::rfc3339;

pub(super) struct Parts {
    pub services: Vec<(String, ServiceState)>,
    pub dependencies: Vec<(DependencyKey, DependencyStats)>,
    pub records_ingested: u64,
    pub agents_connected: u64,
    pub generated_at_unix_ns: u64,
}

/// Who calls a service, whom it calls, and which paths it serves.
#[derive(Default)]
struct Shape {
    clients: BTreeSet<String>,
    upstreams: BTreeSet<String>,
    http_upstreams: BTreeSet<String>,
    paths: BTreeSet<String>,
}

pub(super) fn build(
    parts: Parts,
    directory: &impl WorkloadDirectory,
    classifier: &ServiceClassifier,
) -> TopologySnapshot {
    let mut totals = DependencyStats::default();
    let mut shapes: BTreeMap<&str, Shape> = BTreeMap::new();
    for (key, stats) in &parts.dependencies {
        totals.merge(stats);
        let protocol = stats.protocol.name_or(key.protocol());
        let client = shapes.entry(key.client.as_str()).or_default();
        client.upstreams.insert(key.server.clone());
        if is_http(protocol) {
            client.http_upstreams.insert(key.server.clone());
        }
        let server = shapes.entry(key.server.as_str()).or_default();
        server.clients.insert(key.client.clone());
        for ((_, path, _), _) in stats.request_groups.iter() {
            if !path.is_empty() {
                server.paths.insert(path.clone());
            }
        }
    }

    let empty = Shape::default();
    let mut services: Vec<ServiceView> = parts
        .services
        .iter()
        .map(|(name, state)| {
            let endpoints: Vec<EndpointView> = state
                .endpoints
                .iter()
                .map(|((host, port), protocol)| EndpointView {
                    address: host.clone(),
                    port: *port,
                    protocol: protocol.name_or("tcp").to_owned(),
                })
                .collect();
            let shape = shapes.get(name.as_str()).unwrap_or(&empty);
            let facts = ServiceFacts {
                name: name.clone(),
                registered: state.workload,
                endpoints: endpoints
                    .iter()
                    .map(|e| (e.address.clone(), e.port, e.protocol.clone()))
                    .collect(),
                clients: shape.clients.len(),
                http_upstreams: shape.http_upstreams.len(),
                upstreams: shape.upstreams.len(),
                paths: shape.paths.iter().cloned().collect(),
            };
            ServiceView {
                name: name.clone(),
                service_type: classifier.classify(&facts),
                endpoints,
                host: directory.host_of(name),
                first_seen: state.first_seen_unix_ns.map(rfc3339),
                last_seen: state.last_seen_unix_ns.map(rfc3339),
            }
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));

    let dependencies = parts
        .dependencies
        .iter()
        .map(|(key, stats)| dependency_view(key, stats))
        .collect();

    TopologySnapshot {
        generated_at: rfc3339(parts.generated_at_unix_ns),
        services,
        dependencies,
        totals: Totals {
            requests: totals.requests,
            bytes: totals.bytes_sent.saturating_add(totals.bytes_received),
            errors: totals.errors,
            latency_ms: totals.latency_summary(),
        },
        stats: SnapshotStats {
            records_ingested: parts.records_ingested,
            agents_connected: parts.agents_connected,
        },
    }
}

pub(super) fn dependency_view(key: &DependencyKey, stats: &DependencyStats) -> DependencyView {
    let mut address_families = Vec::new();
    if stats.ipv4 {
        address_families.push("ipv4".to_owned());
    }
    if stats.ipv6 {
        address_families.push("ipv6".to_owned());
    }
    let mut request_groups: Vec<RequestGroupView> = stats
        .request_groups
        .iter()
        .map(|((method, path, status), g)| RequestGroupView {
            method: method.clone(),
            path: path.clone(),
            status: *status,
            count: g.count,
            errors: g.errors,
            avg_latency_ms: g.avg_latency_ms(),
        })
        .collect();
    let other = stats.request_groups.other();
    if other.count > 0 {
        request_groups.push(RequestGroupView {
            method: "other".into(),
            path: String::new(),
            status: 0,
            count: other.count,
            errors: other.errors,
            avg_latency_ms: other.avg_latency_ms(),
        });
    }
    DependencyView {
        source: key.client.clone(),
        target: key.server.clone(),
        transport: key.transport.as_str().to_owned(),
        port: key.port,
        protocol: stats.protocol.name_or(key.protocol()).to_owned(),
        flows: stats.flows,
        requests: stats.requests,
        errors: stats.errors,
        resets: stats.resets,
        packets_sent: stats.packets_sent,
        packets_received: stats.packets_received,
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        payload_bytes_sent: stats.payload_bytes_sent,
        payload_bytes_received: stats.payload_bytes_received,
        latency_ms: stats.latency_summary(),
        handshake_rtt_ms: stats.handshake_rtt_summary(),
        address_families,
        request_groups,
        first_seen: stats.first_seen_unix_ns.map(rfc3339),
        last_seen: stats.last_seen_unix_ns.map(rfc3339),
    }
}
