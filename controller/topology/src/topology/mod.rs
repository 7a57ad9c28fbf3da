//! Services and the dependencies between them, built from flow observations.
//!
//! Nothing here talks to sockets: the API layer converts wire records into
//! [`FlowObservation`]s and calls [`Topology::ingest`]; readers take a
//! [`TopologySnapshot`].
//!
//! Ingest is the hot path. State lives in `DashMap`s keyed by dependency and by service
//! name, each entry with its own statistics, so concurrent batches only contend when they
//! touch the same entry; there is no lock over the whole topology.

pub mod buckets;
pub mod classify;
pub mod dns;
pub mod evidence;
pub mod groups;
pub mod rules;
pub mod snapshot;
pub mod stats;
mod traffic;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::model::{Direction, FlowObservation, Transport};
use crate::registry::WorkloadDirectory;
use crate::time::now_unix_ns;

pub use buckets::{BucketConfig, Window};
pub use classify::{ServiceClassifier, ServiceFacts, ServiceType, protocol_for};
pub use evidence::{Evidence, ProtocolEvidence};
pub use rules::{Rules, RulesError};
pub use snapshot::{
    DependencyView, EndpointView, RequestGroupView, ServiceView, SnapshotStats, TopologySnapshot,
    Totals,
};
pub use stats::{DependencyStats, LatencySummary};
pub use traffic::ObservationError;

use buckets::BucketedStats;
use dns::DnsNames;

/// Identity of a dependency: who calls whom, over which transport, on which server port.
/// The application protocol is not part of it: it may become known in the middle of a
/// connection, and the connection's statistics must not split then.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DependencyKey {
    pub client: String,
    pub server: String,
    pub transport: Transport,
    pub port: u16,
}

impl DependencyKey {
    /// The protocol the server port suggests.
    pub fn protocol(&self) -> &'static str {
        protocol_for(self.transport, self.port)
    }
}

/// What the topology knows about one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceState {
    /// A registered (or reporting) workload, as opposed to a peer known only by address
    /// or name.
    workload: bool,
    /// (host or address, port) of every server endpoint seen, with its protocol.
    endpoints: BTreeMap<(String, u16), ProtocolEvidence>,
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
    dependencies: DashMap<DependencyKey, BucketedStats>,
    services: DashMap<String, ServiceState>,
    dns: DnsNames,
    buckets: BucketConfig,
    records_ingested: AtomicU64,
    records_deduplicated: AtomicU64,
    observations_ingested: AtomicU64,
}

/// A service endpoint to note: (host, port, transport, protocol evidence).
pub(crate) struct NewEndpoint<'a> {
    host: String,
    port: u16,
    port_guess: &'static str,
    evidence: Option<(Evidence, &'a str)>,
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    /// A topology keeping time buckets of the given width and retention.
    pub fn with_buckets(buckets: BucketConfig) -> Self {
        Self {
            buckets,
            ..Self::default()
        }
    }

    pub fn bucket_config(&self) -> BucketConfig {
        self.buckets
    }

    /// Names learned from DNS answers, still valid or not yet swept.
    pub fn dns_names(&self) -> usize {
        self.dns.len()
    }

    /// The name of a peer address: the registered workload, else a name from a DNS
    /// answer still valid, else `None`.
    fn known_name(
        &self,
        address: &IpAddr,
        directory: &impl WorkloadDirectory,
        now: u64,
    ) -> (Option<String>, bool) {
        match directory.workload_at(address) {
            Some(name) => (Some(name), true),
            None => (self.dns.lookup(address, now), false),
        }
    }

    /// Merges one flow record.
    ///
    /// A record is seen on one workload's interface. OUTBOUND means that workload is the
    /// client, INBOUND that it is the server. The workload names its own side; the peer is
    /// named by the registry, else by a DNS answer seen on the wire, else (for a server)
    /// by the TLS SNI / HTTP Host the client sent, else `ip:port` for a server and `ip`
    /// for a client.
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
        let at = Some(observation.last_seen_unix_ns)
            .filter(|ns| *ns > 0)
            .unwrap_or_else(now_unix_ns);
        for answer in &observation.l7.dns_answers {
            self.dns
                .learn(answer.ip, &answer.name, answer.ttl_seconds, at);
        }
        let local = observation
            .workload
            .clone()
            .or_else(|| directory.workload_at(&observation.local_ip))
            .unwrap_or_else(|| observation.local_ip.to_string());
        let (remote, remote_registered) = self.known_name(&observation.remote_ip, directory, at);

        let (client, client_is_workload, server, server_is_workload, server_ip, server_port) =
            match observation.direction {
                Direction::Outbound => {
                    let server = remote
                        .or_else(|| observation.l7.server_name.clone())
                        .unwrap_or_else(|| {
                            unknown_server_name(observation.remote_ip, observation.remote_port)
                        });
                    (
                        local,
                        true,
                        server,
                        remote_registered,
                        observation.remote_ip,
                        observation.remote_port,
                    )
                }
                Direction::Inbound => {
                    if remote_registered {
                        self.records_deduplicated.fetch_add(1, Ordering::Relaxed);
                        return Ingested::ServerSideDuplicate;
                    }
                    (
                        remote.unwrap_or_else(|| unknown_client_name(observation.remote_ip)),
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
        let l7 = &observation.l7;
        let evidence = l7.protocol.as_deref().map(|name| {
            let kind = if l7.protocol_from_payload {
                Evidence::Payload
            } else {
                Evidence::Port
            };
            (kind, name)
        });
        let first_seen = Some(observation.first_seen_unix_ns).filter(|ns| *ns > 0);
        let last_seen = Some(observation.last_seen_unix_ns).filter(|ns| *ns > 0);

        // One entry guard at a time: never hold a guard of one map while taking another.
        self.touch_service(&key.client, client_is_workload, None, first_seen, last_seen);
        self.touch_service(
            &key.server,
            server_is_workload,
            Some(NewEndpoint {
                host: server_ip.to_string(),
                port: server_port,
                port_guess: key.protocol(),
                evidence,
            }),
            first_seen,
            last_seen,
        );
        self.record(key, at, |stats| stats.record(observation));
        Ingested::Counted
    }

    /// Applies `apply` to the dependency's total and to its time bucket at `at_unix_ns`.
    fn record(&self, key: DependencyKey, at_unix_ns: u64, apply: impl Fn(&mut DependencyStats)) {
        let config = self.buckets;
        if let Some(mut entry) = self.dependencies.get_mut(&key) {
            entry.record(&config, at_unix_ns, apply);
        } else {
            self.dependencies
                .entry(key)
                .or_default()
                .record(&config, at_unix_ns, apply);
        }
    }

    fn touch_service(
        &self,
        name: &str,
        workload: bool,
        endpoint: Option<NewEndpoint<'_>>,
        first_seen: Option<u64>,
        last_seen: Option<u64>,
    ) {
        let update = |state: &mut ServiceState| {
            state.workload |= workload;
            if let Some(endpoint) = &endpoint {
                let held = state
                    .endpoints
                    .entry((endpoint.host.clone(), endpoint.port))
                    .or_default();
                held.offer(Evidence::Port, endpoint.port_guess);
                if let Some((kind, name)) = endpoint.evidence {
                    held.offer(kind, name);
                }
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

    /// Observations from the library API / importers merged so far.
    pub fn observations_ingested(&self) -> u64 {
        self.observations_ingested.load(Ordering::Relaxed)
    }

    /// All-time statistics of one dependency, if it was seen.
    pub fn dependency(&self, key: &DependencyKey) -> Option<DependencyStats> {
        self.dependencies
            .get(key)
            .map(|stats| stats.value().total.clone())
    }

    /// All-time dependency statistics merged per (source, target, protocol): the label set
    /// of the per-dependency metrics.
    pub fn stats_by_edge(&self) -> BTreeMap<(String, String, String), DependencyStats> {
        let mut edges: BTreeMap<(String, String, String), DependencyStats> = BTreeMap::new();
        for entry in &self.dependencies {
            let key = entry.key();
            let stats = &entry.value().total;
            let protocol = stats.protocol.name_or(key.protocol()).to_owned();
            edges
                .entry((key.client.clone(), key.server.clone(), protocol))
                .or_default()
                .merge(stats);
        }
        edges
    }

    /// Dependencies with their statistics within `window`, sorted by key.
    pub fn dependencies_in(&self, window: &Window) -> Vec<(DependencyKey, DependencyStats)> {
        let mut out: Vec<(DependencyKey, DependencyStats)> = self
            .dependencies
            .iter()
            .filter_map(|entry| {
                let stats = entry.value().in_window(&self.buckets, window)?;
                Some((entry.key().clone(), stats))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The whole topology with the default classifier (the all-time view).
    pub fn snapshot(
        &self,
        directory: &impl WorkloadDirectory,
        generated_at_unix_ns: u64,
        agents_connected: u64,
    ) -> TopologySnapshot {
        self.snapshot_with(
            directory,
            &ServiceClassifier::default(),
            &Window::ALL,
            generated_at_unix_ns,
            agents_connected,
        )
    }

    /// The topology within `window`, services classified by `classifier`. With a window,
    /// only services taking part in a dependency within it are listed.
    pub fn snapshot_with(
        &self,
        directory: &impl WorkloadDirectory,
        classifier: &ServiceClassifier,
        window: &Window,
        generated_at_unix_ns: u64,
        agents_connected: u64,
    ) -> TopologySnapshot {
        let dependencies = self.dependencies_in(window);
        let mut involved: BTreeSet<&str> = BTreeSet::new();
        for (key, _) in &dependencies {
            involved.insert(&key.client);
            involved.insert(&key.server);
        }
        let services: Vec<(String, ServiceState)> = self
            .services
            .iter()
            .filter(|entry| window.is_all() || involved.contains(entry.key().as_str()))
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        view::build(
            view::Parts {
                services,
                dependencies,
                records_ingested: self
                    .records_ingested()
                    .saturating_add(self.observations_ingested()),
                agents_connected,
                generated_at_unix_ns,
            },
            directory,
            classifier,
        )
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_identity;
