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
mod checkpoint;
mod merge;
pub use checkpoint::{
    Changes as CheckpointChanges, Checkpoint, CheckpointState, PREFIX as CHECKPOINT_PREFIX,
    RestoredCheckpoint,
};
pub mod classify;
pub mod dns;
pub mod evidence;
pub mod groups;
pub mod histogram;
mod json;
pub mod limits;
pub mod rules;
pub mod snapshot;
pub mod stats;
pub mod timeseries;
mod traffic;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::model::{Direction, FlowObservation, Transport};
use crate::registry::WorkloadDirectory;
use crate::time::now_unix_ns;

pub use buckets::{BucketConfig, Window};
pub use classify::{ServiceClassifier, ServiceFacts, ServiceType, protocol_for};
pub use evidence::{Evidence, ProtocolEvidence};
pub use limits::{
    Full, Limit, LimitHits, MAX_LABEL_BYTES, MAX_NAME_BYTES, TimestampError, TopologyLimits,
    is_printable,
};
pub use rules::{Rules, RulesError};
pub use snapshot::{
    DependencyView, EndpointView, RequestGroupView, ServiceView, SnapshotStats, TopologySnapshot,
    Totals,
};
pub use stats::{DependencyStats, LatencySummary};
pub use traffic::{ObservationError, check_fields, check_text};

use buckets::BucketedStats;
use dns::DnsNames;
use limits::{NameBook, release, reserve};

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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ServiceState {
    /// A registered (or reporting) workload, as opposed to a peer known only by address
    /// or name.
    workload: bool,
    /// (host or address, port) of every server endpoint seen, with its protocol; sorted by
    /// (host, port), sized to what it holds.
    endpoints: Vec<((String, u16), ProtocolEvidence)>,
    first_seen_unix_ns: Option<u64>,
    last_seen_unix_ns: Option<u64>,
    /// When it last took part in an observation, on the topology's clock (eviction).
    touched_unix_ns: u64,
}

/// What [`Topology::ingest`] did with an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Counted into a dependency.
    Counted,
    /// The server-side view of a connection whose client is a registered workload: that
    /// client's agent reports the same connection, which is the one counted.
    ServerSideDuplicate,
    /// A timestamp outside the accepted window ([`TopologyLimits::max_future`],
    /// [`TopologyLimits::max_age`]): nothing was merged.
    BadTimestamp(TimestampError),
    /// It needed a new service or dependency and the topology is full: nothing was merged.
    Full(Full),
}

/// What [`Topology::evict_idle`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evicted {
    pub services: usize,
    pub dependencies: usize,
    pub names: usize,
}

/// Slots taken for the new entries an observation needs, before it is merged.
#[derive(Debug, Clone, Copy, Default)]
struct Reserved {
    client: bool,
    server: bool,
    dependency: bool,
}

/// Name of a server not registered as a workload: `ip:port`, IPv6 as `[ip]:port`.
pub fn unknown_server_name(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(21);
            push_ipv4(&mut out, v4);
            out.push(':');
            push_decimal(&mut out, u32::from(port));
            out
        }
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Name of a client not registered as a workload: its address alone, since its port is
/// ephemeral.
pub fn unknown_client_name(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            push_ipv4(&mut out, v4);
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// `n` in decimal, without the formatting machinery (names of unknown peers are made for
/// every record about one).
fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

/// An IPv4 address as `Display` writes it.
fn push_ipv4(out: &mut String, v4: std::net::Ipv4Addr) {
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(out, u32::from(o));
    }
}

/// An address as text on the stack (an endpoint's host is compared on every record and
/// copied only when new).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn format(&mut self, address: IpAddr) -> &str {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
        // The longest address (IPv4-mapped IPv6 with a scope-less form) is 45 bytes.
        let _ = write!(cursor, "{address}");
        self.len = usize::try_from(cursor.position()).unwrap_or(0);
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct Topology {
    dependencies: DashMap<DependencyKey, BucketedStats, crate::FastHash>,
    services: DashMap<String, ServiceState, crate::FastHash>,
    dns: DnsNames,
    buckets: BucketConfig,
    limits: TopologyLimits,
    hits: LimitHits,
    /// Entries in `services` and `dependencies`, kept with every insert and removal (a
    /// `DashMap::len` visits every shard).
    service_count: AtomicUsize,
    dependency_count: AtomicUsize,
    names: NameBook,
    evicted: AtomicU64,
    records_ingested: AtomicU64,
    records_deduplicated: AtomicU64,
    observations_ingested: AtomicU64,
    /// Where a dependency seen for the first time is announced ([`Self::announce_to`]).
    appeared: std::sync::OnceLock<tokio::sync::mpsc::Sender<Appeared>>,
    /// Announcements dropped because the channel was full.
    appeared_dropped: AtomicU64,
}

/// A dependency the topology did not hold until this observation: announced at ingest,
/// before any snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appeared {
    pub source: String,
    pub target: String,
    pub transport: Transport,
    pub port: u16,
    /// The protocol of the first observation (what it said, or the port's guess).
    pub protocol: &'static str,
    /// When the first observation happened, Unix ns.
    pub at_unix_ns: u64,
}

impl Default for Topology {
    fn default() -> Self {
        Self::with_config(BucketConfig::default(), TopologyLimits::default())
    }
}

/// When an observation happened (first and last seen, from the record) and when it was
/// merged (the topology's clock).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    first: Option<u64>,
    last: Option<u64>,
    now: u64,
}

/// A service endpoint to note: (host, port, transport, protocol evidence).
pub(crate) struct NewEndpoint<'a> {
    host: &'a str,
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
        Self::with_config(buckets, TopologyLimits::default())
    }

    /// A topology with the given buckets and bounds.
    pub fn with_config(buckets: BucketConfig, limits: TopologyLimits) -> Self {
        Self {
            dependencies: DashMap::default(),
            services: DashMap::default(),
            dns: DnsNames::default(),
            buckets,
            limits,
            hits: LimitHits::default(),
            service_count: AtomicUsize::new(0),
            dependency_count: AtomicUsize::new(0),
            names: NameBook::new(&limits),
            evicted: AtomicU64::new(0),
            records_ingested: AtomicU64::new(0),
            records_deduplicated: AtomicU64::new(0),
            observations_ingested: AtomicU64::new(0),
            appeared: std::sync::OnceLock::new(),
            appeared_dropped: AtomicU64::new(0),
        }
    }

    /// From now on, every dependency created by an observation is sent to `sender`
    /// without waiting: when the channel is full the announcement is dropped (and
    /// counted, [`Self::appeared_dropped`]) rather than slowing ingest. Set once; a
    /// second call returns `false` and changes nothing.
    pub fn announce_to(&self, sender: tokio::sync::mpsc::Sender<Appeared>) -> bool {
        self.appeared.set(sender).is_ok()
    }

    /// Announcements of new dependencies dropped because their channel was full.
    pub fn appeared_dropped(&self) -> u64 {
        self.appeared_dropped.load(Ordering::Relaxed)
    }

    fn announce(&self, key: &DependencyKey, protocol: &str, at_unix_ns: u64) {
        let Some(sender) = self.appeared.get() else {
            return;
        };
        let appeared = Appeared {
            source: key.client.clone(),
            target: key.server.clone(),
            transport: key.transport,
            port: key.port,
            // One of the known names (no allocation); they are lower-case by now.
            protocol: crate::observation::PROTOCOLS
                .iter()
                .find(|p| **p == protocol)
                .copied()
                .unwrap_or_else(|| key.protocol()),
            at_unix_ns,
        };
        if sender.try_send(appeared).is_err() {
            self.appeared_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn bucket_config(&self) -> BucketConfig {
        self.buckets
    }

    /// An empty topology with this one's buckets and limits.
    pub fn empty_like(&self) -> Topology {
        Self::with_config(self.buckets, self.limits)
    }

    pub fn limits(&self) -> &TopologyLimits {
        &self.limits
    }

    /// Refusals per limit since the start.
    pub fn limit_hits(&self) -> &LimitHits {
        &self.hits
    }

    /// Services kept now.
    pub fn service_count(&self) -> usize {
        self.service_count.load(Ordering::Relaxed)
    }

    /// Dependencies kept now.
    pub fn dependency_count(&self) -> usize {
        self.dependency_count.load(Ordering::Relaxed)
    }

    /// Addresses holding names learned from the wire.
    pub fn named_addresses(&self) -> usize {
        self.names.len()
    }

    /// Grows whenever what a snapshot shows may have changed (records and observations
    /// merged, entries evicted): a cache of a rendering is valid while it stays the same.
    pub fn generation(&self) -> u64 {
        self.records_ingested()
            .wrapping_add(self.observations_ingested())
            .wrapping_add(self.evicted.load(Ordering::Relaxed))
    }

    /// Names learned from DNS answers, still valid or not yet swept.
    pub fn dns_names(&self) -> usize {
        self.dns.len()
    }

    /// The name of a peer address: the registered workload, else a name from a DNS
    /// answer still valid (if the address may take one more name), else `None`.
    fn known_name(
        &self,
        address: &IpAddr,
        directory: &impl WorkloadDirectory,
        at: u64,
        now: u64,
    ) -> (Option<String>, bool) {
        match directory.workload_at(address) {
            Some(name) => (Some(name), true),
            None => (
                self.dns
                    .lookup(address, at)
                    .filter(|name| self.wire_name(*address, name, now)),
                false,
            ),
        }
    }

    /// Whether `address` may go by `name`, a name that came from the wire; counts a
    /// refusal.
    fn wire_name(&self, address: IpAddr, name: &str, now: u64) -> bool {
        let admitted = self.names.admit(address, name, now);
        if !admitted {
            self.hits.hit(Limit::NamesPerAddress);
        }
        admitted
    }

    /// Checks a flow record's timestamps against the accepted window.
    pub fn check_flow_times(
        &self,
        observation: &FlowObservation,
        now: u64,
    ) -> Result<(), TimestampError> {
        self.limits.check_timestamp(
            "first_seen_unix_ns",
            observation.first_seen_unix_ns,
            now,
            false,
        )?;
        self.limits.check_timestamp(
            "last_seen_unix_ns",
            observation.last_seen_unix_ns,
            now,
            true,
        )
    }

    /// Takes a slot for each entry `key` needs that does not exist yet, or none when one
    /// of them does not fit (counted).
    fn reserve_for(
        &self,
        key: &DependencyKey,
        directory: &impl WorkloadDirectory,
    ) -> Result<Reserved, Full> {
        let new_client = !self.services.contains_key(&key.client);
        let new_server = key.server != key.client && !self.services.contains_key(&key.server);
        let new_dependency = !self.dependencies.contains_key(key);
        let mut reserved = Reserved::default();
        if !(new_client || new_server || new_dependency) {
            return Ok(reserved);
        }
        let registered = |name: &str| directory.host_of(name).is_some();
        let refuse = |reserved: Reserved, limit: Limit, max: usize| {
            self.unreserve(reserved);
            self.hits.hit(limit);
            Err(Full { limit, max })
        };
        if new_client {
            let max = self.limits.services_for(registered(&key.client));
            if !reserve(&self.service_count, max) {
                return refuse(reserved, Limit::Services, max);
            }
            reserved.client = true;
        }
        if new_server {
            let max = self.limits.services_for(registered(&key.server));
            if !reserve(&self.service_count, max) {
                return refuse(reserved, Limit::Services, max);
            }
            reserved.server = true;
        }
        if new_dependency {
            let max = self
                .limits
                .dependencies_for(registered(&key.client) && registered(&key.server));
            if !reserve(&self.dependency_count, max) {
                return refuse(reserved, Limit::Dependencies, max);
            }
            reserved.dependency = true;
        }
        Ok(reserved)
    }

    fn unreserve(&self, reserved: Reserved) {
        release(
            &self.service_count,
            usize::from(reserved.client) + usize::from(reserved.server),
        );
        release(&self.dependency_count, usize::from(reserved.dependency));
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
        let now = now_unix_ns();
        if let Err(error) = self.check_flow_times(observation, now) {
            self.hits.hit(error.limit());
            return Ingested::BadTimestamp(error);
        }
        self.records_ingested.fetch_add(1, Ordering::Relaxed);
        let at = Some(observation.last_seen_unix_ns)
            .filter(|ns| *ns > 0)
            .unwrap_or(now);
        for answer in &observation.l7.dns_answers {
            self.dns
                .learn(answer.ip, &answer.name, answer.ttl_seconds, at);
        }
        let registered_local = directory.workload_at(&observation.local_ip);
        let local = match &observation.workload {
            // The registry's own name for the address costs nothing; another name is one
            // more name for the address.
            Some(name)
                if registered_local.as_deref() == Some(name.as_str())
                    || self.wire_name(observation.local_ip, name, now) =>
            {
                name.clone()
            }
            _ => registered_local.unwrap_or_else(|| observation.local_ip.to_string()),
        };
        let (remote, remote_registered) =
            self.known_name(&observation.remote_ip, directory, at, now);

        let (client, client_is_workload, server, server_is_workload, server_ip, server_port) =
            match observation.direction {
                Direction::Outbound => {
                    let server = remote
                        .or_else(|| {
                            observation
                                .l7
                                .server_name
                                .clone()
                                .filter(|name| self.wire_name(observation.remote_ip, name, now))
                        })
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
        let evidence = observation.app_protocol().map(|name| {
            let kind = if l7.protocol_from_payload {
                Evidence::Payload
            } else {
                Evidence::Port
            };
            (kind, name)
        });
        let first_seen = Some(observation.first_seen_unix_ns).filter(|ns| *ns > 0);
        let last_seen = Some(observation.last_seen_unix_ns).filter(|ns| *ns > 0);
        let reserved = match self.reserve_for(&key, directory) {
            Ok(reserved) => reserved,
            Err(full) => return Ingested::Full(full),
        };

        // One entry guard at a time: never hold a guard of one map while taking another.
        let seen = Seen {
            first: first_seen,
            last: last_seen,
            now,
        };
        self.touch_service(&key.client, client_is_workload, None, seen, reserved.client);
        let mut text = IpText::default();
        self.touch_service(
            &key.server,
            server_is_workload,
            Some(NewEndpoint {
                host: text.format(server_ip),
                port: server_port,
                port_guess: key.protocol(),
                evidence,
            }),
            seen,
            reserved.server,
        );
        let protocol = observation.app_protocol().unwrap_or_else(|| key.protocol());
        self.record(key, at, now, reserved.dependency, protocol, |stats| {
            stats.record(observation)
        });
        Ingested::Counted
    }

    /// Applies `apply` to the dependency's total and to its time bucket at `at_unix_ns`.
    /// `reserved`: a slot was taken for it if it is new. A new one is announced
    /// ([`Self::announce_to`]) with `protocol`.
    fn record(
        &self,
        key: DependencyKey,
        at_unix_ns: u64,
        now: u64,
        reserved: bool,
        protocol: &str,
        apply: impl Fn(&mut DependencyStats),
    ) {
        let config = self.buckets;
        if let Some(mut entry) = self.dependencies.get_mut(&key) {
            entry.record(&config, at_unix_ns, now, apply);
            drop(entry);
            if reserved {
                release(&self.dependency_count, 1);
            }
            return;
        }
        match self.dependencies.entry(key) {
            Entry::Occupied(mut entry) => {
                entry.get_mut().record(&config, at_unix_ns, now, apply);
                drop(entry);
                if reserved {
                    release(&self.dependency_count, 1);
                }
            }
            Entry::Vacant(entry) => {
                let mut stats = BucketedStats::default();
                stats.record(&config, at_unix_ns, now, apply);
                self.announce(entry.key(), protocol, at_unix_ns);
                entry.insert(stats);
                if !reserved {
                    // Evicted between the check and here: count it all the same.
                    self.dependency_count.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    fn touch_service(
        &self,
        name: &str,
        workload: bool,
        endpoint: Option<NewEndpoint<'_>>,
        seen: Seen,
        reserved: bool,
    ) {
        let max_endpoints = self.limits.max_endpoints_per_service;
        let update = |state: &mut ServiceState| {
            state.workload |= workload;
            if let Some(endpoint) = &endpoint {
                let room = state.endpoints.len() < max_endpoints;
                let found = state.endpoints.binary_search_by(|((host, port), _)| {
                    (host.as_str(), *port).cmp(&(endpoint.host, endpoint.port))
                });
                let held = match found {
                    Ok(at) => Some(&mut state.endpoints[at].1),
                    Err(at) if room => {
                        state.endpoints.reserve_exact(1);
                        state.endpoints.insert(
                            at,
                            (
                                (endpoint.host.to_owned(), endpoint.port),
                                ProtocolEvidence::default(),
                            ),
                        );
                        Some(&mut state.endpoints[at].1)
                    }
                    Err(_) => {
                        self.hits.hit(Limit::EndpointsPerService);
                        None
                    }
                };
                if let Some(held) = held {
                    held.offer(Evidence::Port, endpoint.port_guess);
                    if let Some((kind, name)) = endpoint.evidence {
                        held.offer(kind, name);
                    }
                }
            }
            state.first_seen_unix_ns = match (state.first_seen_unix_ns, seen.first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            state.last_seen_unix_ns = state.last_seen_unix_ns.max(seen.last);
            state.touched_unix_ns = seen.now;
        };
        if let Some(mut state) = self.services.get_mut(name) {
            update(&mut state);
            drop(state);
            if reserved {
                release(&self.service_count, 1);
            }
            return;
        }
        match self.services.entry(name.to_owned()) {
            Entry::Occupied(mut entry) => {
                update(entry.get_mut());
                drop(entry);
                if reserved {
                    release(&self.service_count, 1);
                }
            }
            Entry::Vacant(entry) => {
                let mut state = ServiceState::default();
                update(&mut state);
                entry.insert(state);
                if !reserved {
                    self.service_count.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Removes dependencies not seen for `idle` (on the topology's clock, `now_unix_ns`),
    /// then services not seen for `idle` that no dependency left names and that are not
    /// registered workloads, then names of addresses not used for `idle`, and DNS answers
    /// that expired.
    pub fn evict_idle(
        &self,
        now_unix_ns: u64,
        idle: Duration,
        directory: &impl WorkloadDirectory,
    ) -> Evicted {
        let cutoff = now_unix_ns.saturating_sub(u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX));
        let mut evicted = Evicted::default();
        self.dependencies.retain(|_, stats| {
            let keep = stats.touched_unix_ns >= cutoff;
            if !keep {
                evicted.dependencies += 1;
            }
            keep
        });
        let mut named: std::collections::HashSet<String> = std::collections::HashSet::new();
        for entry in &self.dependencies {
            named.insert(entry.key().client.clone());
            named.insert(entry.key().server.clone());
        }
        self.services.retain(|name, state| {
            let keep = state.touched_unix_ns >= cutoff
                || named.contains(name)
                || directory.host_of(name).is_some();
            if !keep {
                evicted.services += 1;
            }
            keep
        });
        evicted.names = self.names.sweep(cutoff);
        self.dns.sweep(now_unix_ns);
        release(&self.service_count, evicted.services);
        release(&self.dependency_count, evicted.dependencies);
        let removed = evicted.services + evicted.dependencies;
        if removed > 0 {
            self.evicted.fetch_add(
                u64::try_from(removed).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        evicted
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
            .map(|stats| stats.value().total().clone())
    }

    /// All-time dependency statistics merged per (source, target, protocol): the label set
    /// of the per-dependency metrics.
    pub fn stats_by_edge(&self) -> BTreeMap<(String, String, String), DependencyStats> {
        let mut edges: BTreeMap<(String, String, String), DependencyStats> = BTreeMap::new();
        for entry in &self.dependencies {
            let key = entry.key();
            let stats = entry.value().total();
            let protocol = stats.protocol.name_or(key.protocol()).to_owned();
            edges
                .entry((key.client.clone(), key.server.clone(), protocol))
                .or_default()
                .merge(stats);
        }
        edges
    }

    /// [`Self::stats_by_edge`] for the `max` busiest edges only (by requests, then flows,
    /// then bytes, then name), and how many edges there are in all. Only the chosen edges'
    /// statistics are copied.
    pub fn top_edges(
        &self,
        max: usize,
    ) -> (BTreeMap<(String, String, String), DependencyStats>, usize) {
        type Edge = (String, String, String);
        let mut weights: std::collections::HashMap<Edge, (u64, u64, u64)> =
            std::collections::HashMap::new();
        for entry in &self.dependencies {
            let key = entry.key();
            let stats = entry.value().total();
            let protocol = stats.protocol.name_or(key.protocol()).to_owned();
            let weight = weights
                .entry((key.client.clone(), key.server.clone(), protocol))
                .or_default();
            weight.0 = weight.0.saturating_add(stats.requests);
            weight.1 = weight.1.saturating_add(stats.flows);
            weight.2 = weight
                .2
                .saturating_add(stats.bytes_sent.saturating_add(stats.bytes_received));
        }
        let total = weights.len();
        let mut ranked: Vec<(Edge, (u64, u64, u64))> = weights.into_iter().collect();
        if ranked.len() > max {
            ranked.select_nth_unstable_by(max, |a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            ranked.truncate(max);
        }
        let chosen: BTreeSet<Edge> = ranked.into_iter().map(|(edge, _)| edge).collect();
        let mut edges: BTreeMap<Edge, DependencyStats> = BTreeMap::new();
        for entry in &self.dependencies {
            let key = entry.key();
            let stats = entry.value().total();
            let edge = (
                key.client.clone(),
                key.server.clone(),
                stats.protocol.name_or(key.protocol()).to_owned(),
            );
            if chosen.contains(&edge) {
                edges.entry(edge).or_default().merge(stats);
            }
        }
        (edges, total)
    }

    /// Calls `f` with every dependency seen within `window` and its statistics there: the
    /// all-time view reads each total in place, a window merges the buckets in range (so
    /// nothing is copied for the all-time view).
    pub(crate) fn each_in_window(
        &self,
        window: &Window,
        mut f: impl FnMut(&DependencyKey, &DependencyStats),
    ) {
        for entry in &self.dependencies {
            if window.is_all() {
                f(entry.key(), entry.value().total());
            } else if let Some(stats) = entry.value().in_window(&self.buckets, window) {
                f(entry.key(), &stats);
            }
        }
    }

    /// As [`Self::each_in_window`], with the all-time JSON object of each dependency when
    /// `window` is open at both ends (rendered by [`json::write_dependency`] once per
    /// change, kept with the statistics).
    pub(crate) fn each_in_window_cached(
        &self,
        window: &Window,
        mut f: impl FnMut(&DependencyKey, &DependencyStats, Option<&std::sync::Arc<[u8]>>),
    ) {
        if !window.is_all() {
            return self.each_in_window(window, |k, s| f(k, s, None));
        }
        for entry in &self.dependencies {
            let (k, b) = (entry.key(), entry.value());
            let json = b.total_json(|stats, out| json::write_dependency(out, k, stats));
            f(k, b.total(), Some(json));
        }
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
    ///
    /// Each dependency's view is made while its entry is read (the all-time view reads its
    /// total in place, a window merges its buckets in range), so no statistics are copied.
    pub fn snapshot_with(
        &self,
        directory: &impl WorkloadDirectory,
        classifier: &ServiceClassifier,
        window: &Window,
        generated_at_unix_ns: u64,
        agents_connected: u64,
    ) -> TopologySnapshot {
        let mut totals = view::TotalsSum::default();
        let mut dependencies = Vec::with_capacity(self.dependency_count());
        self.each_in_window(window, |key, stats| {
            totals.add(stats);
            dependencies.push(view::dependency_view(key, stats));
        });
        view::sort_dependencies(&mut dependencies);
        let built = view::shapes(&dependencies);
        let mut services: Vec<ServiceView> = Vec::with_capacity(if window.is_all() {
            self.service_count()
        } else {
            built.len()
        });
        for entry in &self.services {
            let name = entry.key().as_str();
            if window.is_all() || built.involves(name) {
                services.push(view::service_view(
                    name,
                    entry.value(),
                    &built,
                    directory,
                    classifier,
                ));
            }
        }
        services.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        drop(built);
        view::build(view::Parts {
            services,
            dependencies,
            totals,
            records_ingested: self
                .records_ingested()
                .saturating_add(self.observations_ingested()),
            agents_connected,
            generated_at_unix_ns,
        })
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_identity;
#[cfg(test)]
mod tests_limits;

#[cfg(test)]
mod name_tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::{unknown_client_name, unknown_server_name};

    proptest::proptest! {
        /// The hand-written IPv4 names are what `Display` writes.
        #[test]
        fn unknown_peer_names_are_displays(a in proptest::prelude::any::<u32>(), port in proptest::prelude::any::<u16>()) {
            let v4 = Ipv4Addr::from(a);
            proptest::prop_assert_eq!(unknown_server_name(IpAddr::V4(v4), port), format!("{v4}:{port}"));
            proptest::prop_assert_eq!(unknown_client_name(IpAddr::V4(v4)), v4.to_string());
        }
    }

    #[test]
    fn edge_addresses_and_ipv6() {
        assert_eq!(
            unknown_server_name("0.0.0.0".parse().unwrap(), 0),
            "0.0.0.0:0"
        );
        assert_eq!(
            unknown_server_name("255.255.255.255".parse().unwrap(), 65535),
            "255.255.255.255:65535"
        );
        assert_eq!(
            unknown_server_name(IpAddr::V6(Ipv6Addr::LOCALHOST), 443),
            "[::1]:443"
        );
        assert_eq!(unknown_client_name("fd00::7".parse().unwrap()), "fd00::7");
    }
}
