//! Builds a [`TopologySnapshot`]: views of every dependency (made while the topology's
//! entries are read, without copying their statistics), then the traffic shape of every
//! service, then its classification.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::classify::{ServiceClassifier, ServiceFacts, is_http};
use super::histogram::HistogramSum;
use super::snapshot::{
    DependencyView, EndpointView, RequestGroupView, ServiceView, SnapshotStats, TopologySnapshot,
    Totals,
};
use super::stats::{DependencyStats, Latencies, LatencySummary};
use super::{DependencyKey, ServiceState};
use crate::registry::WorkloadDirectory;
use crate::time::rfc3339;

/// The sums over the dependencies of a snapshot: what [`Totals`] shows of their merge,
/// without merging what it does not show (request groups, first and last seen...).
#[derive(Default)]
pub(super) struct TotalsSum {
    requests: u64,
    bytes: u64,
    errors: u64,
    latency_count: u64,
    latency_sum_ns: u64,
    latency_us: HistogramSum,
}

impl TotalsSum {
    pub fn add(&mut self, stats: &DependencyStats) {
        self.requests = self.requests.saturating_add(stats.requests);
        self.bytes = self
            .bytes
            .saturating_add(stats.bytes_sent)
            .saturating_add(stats.bytes_received);
        self.errors = self.errors.saturating_add(stats.errors);
        self.latency_count = self.latency_count.saturating_add(stats.latency_count);
        self.latency_sum_ns = self.latency_sum_ns.saturating_add(stats.latency_sum_ns);
        self.latency_us.add(stats.latency_us.histogram());
    }

    pub(super) fn finish(self) -> Totals {
        let latencies = Latencies::from_histogram(self.latency_us.finish());
        Totals {
            requests: self.requests,
            bytes: self.bytes,
            errors: self.errors,
            latency_ms: LatencySummary::new(self.latency_count, self.latency_sum_ns, &latencies),
        }
    }
}

/// Who calls a service, whom it calls, and which paths it serves.
#[derive(Default)]
struct Shape<'a> {
    clients: HashSet<&'a str>,
    upstreams: HashSet<&'a str>,
    http_upstreams: HashSet<&'a str>,
    paths: BTreeSet<&'a str>,
}

/// Sorts `dependencies` as a snapshot lists them: by (source, target, transport, port).
pub(super) fn sort_dependencies(dependencies: &mut [DependencyView]) {
    dependencies.sort_unstable_by(|a, b| {
        (
            a.source.as_str(),
            a.target.as_str(),
            a.transport.as_str(),
            a.port,
        )
            .cmp(&(
                b.source.as_str(),
                b.target.as_str(),
                b.transport.as_str(),
                b.port,
            ))
    });
}

pub(super) struct Built<'a> {
    shapes: HashMap<&'a str, Shape<'a>>,
}

impl Built<'_> {
    /// Whether a dependency names the service.
    pub fn involves(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.shapes.len()
    }
}

/// The traffic shape of every service named by `dependencies`.
pub(super) fn shapes(dependencies: &[DependencyView]) -> Built<'_> {
    let mut shapes: HashMap<&str, Shape<'_>> = HashMap::new();
    for d in dependencies {
        let client = shapes.entry(d.source.as_str()).or_default();
        client.upstreams.insert(&d.target);
        if is_http(&d.protocol) {
            client.http_upstreams.insert(&d.target);
        }
        let server = shapes.entry(d.target.as_str()).or_default();
        server.clients.insert(&d.source);
        for group in &d.request_groups {
            // The `other` group has no path.
            if !group.path.is_empty() {
                server.paths.insert(&group.path);
            }
        }
    }
    Built { shapes }
}

/// How many services call a service, and how many it calls (over HTTP-style protocols).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub clients: usize,
    pub upstreams: usize,
    pub http_upstreams: usize,
}

/// The view of one service, classified by its facts and its traffic shape.
pub(super) fn service_view(
    name: &str,
    state: &ServiceState,
    built: &Built<'_>,
    directory: &impl WorkloadDirectory,
    classifier: &ServiceClassifier,
) -> ServiceView {
    let empty = Shape::default();
    let shape = built.shapes.get(name).unwrap_or(&empty);
    service_view_with(
        name,
        state,
        Counts {
            clients: shape.clients.len(),
            upstreams: shape.upstreams.len(),
            http_upstreams: shape.http_upstreams.len(),
        },
        shape.paths.iter().map(|p| (*p).to_owned()).collect(),
        directory,
        classifier,
    )
}

/// [`service_view`] of counts and paths found elsewhere.
pub(super) fn service_view_of(
    name: &str,
    state: &ServiceState,
    counts: Counts,
    paths: Option<&BTreeSet<String>>,
    directory: &impl WorkloadDirectory,
    classifier: &ServiceClassifier,
) -> ServiceView {
    let paths = paths.map_or_else(Vec::new, |p| p.iter().cloned().collect());
    service_view_with(name, state, counts, paths, directory, classifier)
}

fn service_view_with(
    name: &str,
    state: &ServiceState,
    counts: Counts,
    paths: Vec<String>,
    directory: &impl WorkloadDirectory,
    classifier: &ServiceClassifier,
) -> ServiceView {
    let endpoints: Vec<EndpointView> = state
        .endpoints
        .iter()
        .map(|((host, port), protocol)| EndpointView {
            address: host.clone(),
            port: *port,
            protocol: protocol.name_or("tcp").to_owned(),
        })
        .collect();
    let facts = ServiceFacts {
        name: name.to_owned(),
        registered: state.workload,
        endpoints: endpoints
            .iter()
            .map(|e| (e.address.clone(), e.port, e.protocol.clone()))
            .collect(),
        clients: counts.clients,
        http_upstreams: counts.http_upstreams,
        upstreams: counts.upstreams,
        paths,
    };
    let service_type = classifier.classify(&facts);
    ServiceView {
        name: facts.name,
        service_type,
        endpoints,
        host: directory.host_of(name),
        first_seen: state.first_seen_unix_ns.map(rfc3339),
        last_seen: state.last_seen_unix_ns.map(rfc3339),
    }
}

pub(super) struct Parts {
    pub services: Vec<ServiceView>,
    pub dependencies: Vec<DependencyView>,
    pub totals: TotalsSum,
    pub records_ingested: u64,
    pub agents_connected: u64,
    pub generated_at_unix_ns: u64,
}

/// The snapshot of sorted parts.
pub(super) fn build(parts: Parts) -> TopologySnapshot {
    TopologySnapshot {
        generated_at: rfc3339(parts.generated_at_unix_ns),
        services: parts.services,
        dependencies: parts.dependencies,
        totals: parts.totals.finish(),
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
