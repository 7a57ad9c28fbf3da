//! Services and the dependencies between them, built from flow observations.
//!
//! Nothing here talks to sockets: the API layer converts wire records into
//! [`FlowObservation`]s and calls [`Topology::ingest`]; readers take a
//! [`TopologySnapshot`].
//!
//! Ingest is the hot path. State lives in `DashMap`s keyed by dependency and by service
//! name, each entry with its own statistics, so concurrent batches only contend when they
//! touch the same entry; there is no lock over the whole topology.

pub mod classify;
pub mod snapshot;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::model::{Direction, FlowObservation, Transport};
use crate::registry::WorkloadDirectory;
use crate::time::rfc3339;

pub use classify::{ServiceType, protocol_for};
pub use snapshot::{DependencyView, EndpointView, ServiceView, SnapshotStats, TopologySnapshot};
pub use stats::{DependencyStats, LatencySummary};

/// Identity of a dependency: who calls whom, over which transport, on which server port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DependencyKey {
    pub client: String,
    pub server: String,
    pub transport: Transport,
    pub port: u16,
}

impl DependencyKey {
    pub fn protocol(&self) -> &'static str {
        protocol_for(self.transport, self.port)
    }
}

/// What the topology knows about one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceState {
    /// A registered (or reporting) workload, as opposed to a peer known only by address.
    workload: bool,
    /// (address, port, protocol) of every server endpoint seen.
    endpoints: BTreeSet<(IpAddr, u16, &'static str)>,
    first_seen_unix_ns: Option<u64>,
    last_seen_unix_ns: Option<u64>,
}

/// What [`Topology::ingest`] did with an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Counted into a dependency.
    Counted,
    /// The server-side view of a connection whose client is a registered workload: that
    /// client's agent reports the same connection, which is the one counted.
    ServerSideDuplicate,
}

/// Name of a server not registered as a workload: `ip:port`, IPv6 as `[ip]:port`.
pub fn unknown_server_name(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Name of a client not registered as a workload: its address alone, since its port is
/// ephemeral.
pub fn unknown_client_name(address: IpAddr) -> String {
    address.to_string()
}

#[derive(Debug, Default)]
pub struct Topology {
    dependencies: DashMap<DependencyKey, DependencyStats>,
    services: DashMap<String, ServiceState>,
    records_ingested: AtomicU64,
    records_deduplicated: AtomicU64,
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one observation.
    ///
    /// A record is seen on one workload's interface. OUTBOUND means that workload is the
    /// client, INBOUND that it is the server. The workload names its own side; the peer is
    /// the registered workload owning `remote_ip`, else an unknown service (`ip:port` for a
    /// server, `ip` for a client).
    ///
    /// Deduplication: a connection between two registered workloads is observed twice, once
    /// at each end (OUTBOUND at the client, INBOUND at the server). OUTBOUND records always
    /// count. An INBOUND record counts only if its `remote_ip` is *not* a registered workload
    /// address, because then no agent reports the client side; otherwise it is the second
    /// view of a connection already counted from the client's record, and is skipped.
    pub fn ingest(
        &self,
        observation: &FlowObservation,
        directory: &impl WorkloadDirectory,
    ) -> Ingested {
        self.records_ingested.fetch_add(1, Ordering::Relaxed);
        let local = observation
            .workload
            .clone()
            .or_else(|| directory.workload_at(&observation.local_ip))
            .unwrap_or_else(|| observation.local_ip.to_string());
        let remote = directory.workload_at(&observation.remote_ip);

        let (client, client_is_workload, server, server_is_workload, server_ip, server_port) =
            match observation.direction {
                Direction::Outbound => {
                    let server_is_workload = remote.is_some();
                    let server = remote.unwrap_or_else(|| {
                        unknown_server_name(observation.remote_ip, observation.remote_port)
                    });
                    (
                        local,
                        true,
                        server,
                        server_is_workload,
                        observation.remote_ip,
                        observation.remote_port,
                    )
                }
                Direction::Inbound => {
                    if remote.is_some() {
                        self.records_deduplicated.fetch_add(1, Ordering::Relaxed);
                        return Ingested::ServerSideDuplicate;
                    }
                    (
                        unknown_client_name(observation.remote_ip),
                        false,
                        local,
                        true,
                        observation.local_ip,
                        observation.local_port,
                    )
                }
            };

        let key = DependencyKey {
            client,
            server,
            transport: observation.transport,
            port: server_port,
        };
        let protocol = key.protocol();
        let first_seen = Some(observation.first_seen_unix_ns).filter(|ns| *ns > 0);
        let last_seen = Some(observation.last_seen_unix_ns).filter(|ns| *ns > 0);

        // One entry guard at a time: never hold a guard of one map while taking another.
        self.touch_service(&key.client, client_is_workload, None, first_seen, last_seen);
        self.touch_service(
            &key.server,
            server_is_workload,
            Some((server_ip, server_port, protocol)),
            first_seen,
            last_seen,
        );
        if let Some(mut stats) = self.dependencies.get_mut(&key) {
            stats.record(observation);
        } else {
            self.dependencies
                .entry(key)
                .or_default()
                .record(observation);
        }
        Ingested::Counted
    }

    fn touch_service(
        &self,
        name: &str,
        workload: bool,
        endpoint: Option<(IpAddr, u16, &'static str)>,
        first_seen: Option<u64>,
        last_seen: Option<u64>,
    ) {
        let update = |state: &mut ServiceState| {
            state.workload |= workload;
            if let Some(endpoint) = endpoint {
                state.endpoints.insert(endpoint);
            }
            state.first_seen_unix_ns = match (state.first_seen_unix_ns, first_seen) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            state.last_seen_unix_ns = state.last_seen_unix_ns.max(last_seen);
        };
        if let Some(mut state) = self.services.get_mut(name) {
            update(&mut state);
        } else {
            update(&mut self.services.entry(name.to_owned()).or_default());
        }
    }

    /// Records merged so far, counted or deduplicated.
    pub fn records_ingested(&self) -> u64 {
        self.records_ingested.load(Ordering::Relaxed)
    }

    /// Server-side records skipped because the client side is reported too.
    pub fn records_deduplicated(&self) -> u64 {
        self.records_deduplicated.load(Ordering::Relaxed)
    }

    /// Statistics of one dependency, if it was seen.
    pub fn dependency(&self, key: &DependencyKey) -> Option<DependencyStats> {
        self.dependencies
            .get(key)
            .map(|stats| stats.value().clone())
    }

    /// Dependency statistics merged per (source, target, protocol): the label set of the
    /// per-dependency metrics.
    pub fn stats_by_edge(&self) -> BTreeMap<(String, String, &'static str), DependencyStats> {
        let mut edges: BTreeMap<(String, String, &'static str), DependencyStats> = BTreeMap::new();
        for entry in &self.dependencies {
            let key = entry.key();
            edges
                .entry((key.client.clone(), key.server.clone(), key.protocol()))
                .or_default()
                .merge(entry.value());
        }
        edges
    }

    /// A consistent-per-entry view of the whole topology, sorted deterministically.
    pub fn snapshot(
        &self,
        directory: &impl WorkloadDirectory,
        generated_at_unix_ns: u64,
        agents_connected: u64,
    ) -> TopologySnapshot {
        let mut services: Vec<ServiceView> = self
            .services
            .iter()
            .map(|entry| {
                let (name, state) = entry.pair();
                ServiceView {
                    name: name.clone(),
                    service_type: ServiceType::classify(
                        state.endpoints.iter().map(|(_, _, protocol)| *protocol),
                        state.workload,
                    ),
                    endpoints: state
                        .endpoints
                        .iter()
                        .map(|(address, port, protocol)| EndpointView {
                            address: address.to_string(),
                            port: *port,
                            protocol: (*protocol).to_owned(),
                        })
                        .collect(),
                    host: directory.host_of(name),
                    first_seen: state.first_seen_unix_ns.map(rfc3339),
                    last_seen: state.last_seen_unix_ns.map(rfc3339),
                }
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));

        let mut dependencies: Vec<(DependencyKey, DependencyView)> = self
            .dependencies
            .iter()
            .map(|entry| {
                let (key, stats) = entry.pair();
                (key.clone(), dependency_view(key, stats))
            })
            .collect();
        dependencies.sort_by(|a, b| a.0.cmp(&b.0));

        TopologySnapshot {
            generated_at: rfc3339(generated_at_unix_ns),
            services,
            dependencies: dependencies.into_iter().map(|(_, view)| view).collect(),
            stats: SnapshotStats {
                records_ingested: self.records_ingested(),
                agents_connected,
            },
        }
    }
}

fn dependency_view(key: &DependencyKey, stats: &DependencyStats) -> DependencyView {
    let mut address_families = Vec::new();
    if stats.ipv4 {
        address_families.push("ipv4");
    }
    if stats.ipv6 {
        address_families.push("ipv6");
    }
    DependencyView {
        source: key.client.clone(),
        target: key.server.clone(),
        transport: key.transport.as_str(),
        port: key.port,
        protocol: key.protocol(),
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
        first_seen: stats.first_seen_unix_ns.map(rfc3339),
        last_seen: stats.last_seen_unix_ns.map(rfc3339),
    }
}

#[cfg(test)]
mod tests;
