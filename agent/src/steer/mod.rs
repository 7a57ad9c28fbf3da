//! Steering in the kernel: kinds `steer` (on the origin node's host) and `steer-target`
//! (on the target node's host when it is another host). Shadows divert with it (a share of
//! new connections, and failover: all of them while the origin fails its health check);
//! weaves route with it (`route_traffic`: a port; `activate_weave`: 100 %).
//!
//! # Design
//! The origin O (address A, MAC Mo, host-side veth Vo on bridge Bp) and the target T (the
//! same address A, MAC Mt, host-side veth Vt on another bridge Bt, maybe on another host).
//! Clients C (MAC Mc) reach O through Bp.
//!
//! ```text
//!  C --Bp--> Vo egress [flow_egress, steer_origin] --(not steered)--> O
//!                           | steered: dst MAC = Mt, redirect -> Vt egress --> T   (same host)
//!                           | or tunnel key (T's host, id), redirect -> tunnel device --> ...
//!  T --> Vt ingress [steer_return]: answers of steered connections:
//!        src MAC = Mo, dst MAC = Mc, redirect -> Vo ingress --Bp--> C       (same host)
//!        or tunnel key (O's host, id) -> tunnel device (T's host)
//!  tunnel ingress [steer_tunnel]: on T's host: record the connection, dst MAC = Mt,
//!        redirect -> Vt egress; on O's host: answers as above, into Vo ingress.
//! ```
//!
//! - The decision is taken at the client's SYN (a hash of the 5-tuple or of the client
//!   address with the steer's seed, against `share_ppm` scaled to 32 bits; every SYN while
//!   failover is active) and kept in a bounded LRU map for steered connections only:
//!   packets of connections not in it are untouched, so a share change (one map update)
//!   moves no connection in flight. A retransmitted SYN (same initial sequence number)
//!   keeps its decision; a new connection reusing a 5-tuple is decided afresh.
//! - The tunnel: one metadata-mode VXLAN device per host ([`TUNNEL_DEVICE`], UDP
//!   [`TUNNEL_PORT`], not the networks' 4789), made over netlink when the first cross-host
//!   steer needs it and removed with the last one; the VNI is the steer's `tunnel_id`.
//! - Failover: the origin's agent checks A:port from inside O's namespace every
//!   `interval_ms` ([`health`]); after `failures` failures in a row it sets the origin's
//!   failover flag (one update of its `STEER_ORIGINS` entry), after as many successes it
//!   clears it. `failover_switch_seconds` is the time from the start of the first failed
//!   check to that update. A bare connect does not see a frozen (SIGSTOPped) server, whose
//!   kernel still completes handshakes from the listen backlog: with `SteerHealth.probe`
//!   set, the origin must also answer a byte.
//! - Only frames addressed to the origin's MAC are looked at on Vo (a bridge floods
//!   frames for other nodes through every port).
//!
//! # Measured (lab tests, this machine, 2 CPUs shared)
//! - Failover with checks every 100 ms, 3 failures: the map is updated 0.31 s after the
//!   first failed check (0.37-0.41 s after SIGSTOP); no connection opened after the switch
//!   failed (660-700 of them), same host and across hosts.
//! - 100 switches between 0 and 100 % under four clients talking on connections: no
//!   connection failed or changed side.
//! - `steer_origin` per packet (BPF_PROG_TEST_RUN, 100,000 runs): 44 ns with no steer on
//!   the interface, 90 ns for a steered connection's packet, 115 ns for a packet of a
//!   connection the origin serves, 130 ns for a SYN decided; with bpf_stats on real
//!   traffic about 400 ns (flow observer on the same hook: 550 ns).
//!
//! # Limits
//! - T must resolve C's address on its own network (ARP/ND): in a mirror, the client's
//!   copy answers, and T's frames to it are taken at Vt's ingress, before Bt. In a weave
//!   without the client's copy, T's network needs a neighbour entry for C (or a route via a
//!   gateway that answers).
//! - IPv4 and IPv6 connections are steered by the same code (16-byte addresses; IPv6
//!   without extension headers); both are tested on one host and across hosts. The
//!   tunnel's underlay is IPv4 or IPv6 (`target_host`/`origin_host`; the outer header's
//!   family is the address's, and the tunnel program asks the kernel for an IPv4 key
//!   first, then an IPv6 one); tested across hosts with IPv6-only nodes on an IPv6-only
//!   underlay. The health check connects to the origin's first IPv4 address, or its
//!   first global IPv6 address when it has no IPv4. Untagged Ethernet, TCP only:
//!   ICMP errors about a steered connection (e.g. "fragmentation needed" from the target's
//!   side) are not carried back, so the underlay must carry the nodes' MTU + 50 bytes
//!   (IPv4 underlay) or + 70 bytes (IPv6).
//! - A tunnel packet is known by its outer source address and VNI: `origin_host` (and
//!   `target_host`) must be the address the other host sends from towards this one.
//! - One steer per origin interface and per target interface on a host.
//! - The flow observer on Vo sees a steered connection's packets (they pass its hooks), so
//!   the origin's flows include the connections the target served.
//! - A steered connection evicted from the LRU map (65,536 per host) goes back to the
//!   origin, which resets it. An agent restart does not do that: the maps and links are
//!   pinned and the new agent adopts the slots ([`adopt`]); only an upgrade that changes a
//!   steering map's layout starts them fresh (and resets the steered connections).
//! - The decision is per connection at its SYN: a key from the request (an HTTP header)
//!   cannot choose the side, the connection is placed before its first byte.

mod adopt;
pub mod health;
pub mod router;
pub mod tunnel;

#[cfg(test)]
mod lab;
#[cfg(test)]
mod testrun;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_common::steer::{
    self as common, MAX_STEERS, SteerConn, SteerConnKey, SteerOrigin, SteerPortKey, SteerReturn,
    SteerStats, SteerTunnel, SteerTunnelKey, Underlay, role,
};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use weft_proto::kinds::{STEER, STEER_TARGET};
use weft_proto::v1::resource::Spec;

use crate::control::{
    DesiredResource, Drift, DriftSignal, REFRESH, Reconciler, ResourceReport, Scope,
};
use crate::datapath::{DatapathError, Hook, Order, SharedDatapath};
use crate::hostevents::{Change, HostEvent};
use crate::metrics::{Counter, Gauge, register};
use crate::networks::{links, names, namespaces};

use health::{HealthCheck, HealthSpec, Switch};

pub const PROG_ORIGIN: &str = "steer_origin";
pub const PROG_RETURN: &str = "steer_return";
pub const PROG_TUNNEL: &str = "steer_tunnel";
/// Steering's programs (their links are pinned).
pub const PROGRAMS: [&str; 3] = [PROG_ORIGIN, PROG_RETURN, PROG_TUNNEL];
/// The flow observer's program on an origin's egress, which runs before steering.
#[cfg(test)]
const FLOW_IN: &str = crate::attach::PROG_EGRESS;
/// The host's tunnel device.
pub const TUNNEL_DEVICE: &str = "weft-steer";
/// Its UDP port (the networks' VXLAN devices use 4789).
pub const TUNNEL_PORT: u16 = 4790;
/// How often the counters are read for the reports and the metrics.
const STATS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Net(#[from] tunnel::NetError),
    #[error(transparent)]
    Link(#[from] links::LinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("entering the host namespace {path}: {source}")]
    HostNetns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the health check: {0}")]
    Health(std::io::Error),
    #[error(transparent)]
    Router(#[from] router::RouterError),
}

fn spec_err(s: impl Into<String>) -> SteerError {
    SteerError::Spec(s.into())
}

/// Where and how the agent steers.
#[derive(Debug, Clone)]
pub struct SteerSettings {
    /// Prefix of the node namespaces' names (`--node-netns-prefix`).
    pub netns_prefix: String,
    /// The namespace of the bridges and host-side veths (a netns file); `None`: the agent's.
    pub host_netns: Option<PathBuf>,
    pub tunnel_device: String,
    pub tunnel_port: u16,
    /// Where request routers serve: the agent's binary runs them as processes of their
    /// own (their connections outlive the agent); its tests run them in process.
    pub router_runtime: router::RouterRuntime,
}

impl Default for SteerSettings {
    fn default() -> Self {
        Self {
            netns_prefix: names::DEFAULT_NETNS_PREFIX.into(),
            host_netns: None,
            tunnel_device: TUNNEL_DEVICE.into(),
            tunnel_port: TUNNEL_PORT,
            router_runtime: router::RouterRuntime::InProcess,
        }
    }
}

/// A `steer` resource, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteerSpec {
    pub owner: String,
    pub network: String,
    pub node: String,
    /// Empty: every TCP port.
    pub ports: Vec<u16>,
    pub share_ppm: u32,
    pub key: u8,
    pub seed: u32,
    pub failover: Option<FailoverSpec>,
    pub target_network: String,
    pub target_node: String,
    /// `None`: this host.
    pub target_host: Option<IpAddr>,
    pub tunnel_id: u32,
    /// Ports routed by request and their rules; not empty: the steer's target is this
    /// host's request router for the origin ([`router`]), which takes every port of
    /// `ports` (those without rules it relays whole to the target).
    pub request_rules: router::RouterRules,
}

/// Request rules per steer at most.
const MAX_REQUEST_RULES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSpec {
    pub port: u16,
    pub interval_ms: u32,
    pub failures: u32,
    pub probe: Vec<u8>,
}

/// A `steer-target` resource, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub owner: String,
    pub network: String,
    pub node: String,
    pub origin_host: IpAddr,
    pub tunnel_id: u32,
}

const MAX_TUNNEL_ID: u32 = 16_777_215;

fn port(p: u32, what: &str) -> Result<u16, SteerError> {
    match u16::try_from(p) {
        Ok(v) if v != 0 => Ok(v),
        _ => Err(spec_err(format!("{what} {p} is not a port (1..65535)"))),
    }
}

/// A host's underlay address, IPv4 or IPv6 (an IPv4-mapped IPv6 address is its IPv4
/// address: that is what the tunnel's outer header carries).
fn underlay(s: &str, what: &str) -> Result<IpAddr, SteerError> {
    let ip = s
        .parse::<IpAddr>()
        .map_err(|_| spec_err(format!("{what} {s:?} is not an IP address")))?
        .to_canonical();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(spec_err(format!(
            "{what} {s:?} is not a host's unicast address"
        )));
    }
    Ok(ip)
}

fn tunnel_id(id: u32) -> Result<u32, SteerError> {
    if id == 0 || id > MAX_TUNNEL_ID {
        return Err(spec_err(format!(
            "tunnel_id {id} is not in 1..{MAX_TUNNEL_ID}"
        )));
    }
    Ok(id)
}

fn check_names(pairs: &[(&str, &str)]) -> Result<(), SteerError> {
    for (what, n) in pairs {
        names::check(what, n).map_err(SteerError::Spec)?;
    }
    Ok(())
}

impl TryFrom<&weft_proto::v1::Steer> for SteerSpec {
    type Error = SteerError;

    fn try_from(s: &weft_proto::v1::Steer) -> Result<Self, SteerError> {
        check_names(&[
            ("network", &s.network),
            ("node", &s.node),
            ("target network", &s.target_network),
            ("target node", &s.target_node),
        ])?;
        if s.owner.is_empty() {
            return Err(spec_err("the steer has no owner"));
        }
        let mut ports = s
            .ports
            .iter()
            .map(|p| port(*p, "port"))
            .collect::<Result<Vec<_>, _>>()?;
        ports.sort_unstable();
        ports.dedup();
        if ports.len() > 64 {
            return Err(spec_err(format!(
                "{} ports: at most 64 per steer",
                ports.len()
            )));
        }
        if s.share_ppm > 1_000_000 {
            return Err(spec_err(format!(
                "share_ppm {} is more than 1000000",
                s.share_ppm
            )));
        }
        let key = match s.key.as_str() {
            "" | "connection" => common::key::CONNECTION,
            "source" => common::key::SOURCE,
            other => {
                return Err(spec_err(format!(
                    "key {other:?}: \"connection\" or \"source\""
                )));
            }
        };
        let failover = s
            .failover
            .as_ref()
            .map(|f| {
                Ok::<_, SteerError>(FailoverSpec {
                    port: port(f.port, "failover port")?,
                    interval_ms: f.interval_ms,
                    failures: f.failures,
                    probe: f.probe.clone(),
                })
            })
            .transpose()?;
        let target_host = if s.target_host.is_empty() {
            None
        } else {
            Some(underlay(&s.target_host, "target_host")?)
        };
        let tunnel_id = match target_host {
            Some(_) => tunnel_id(s.tunnel_id)?,
            None => 0,
        };
        if target_host.is_none() && s.network == s.target_network && s.node == s.target_node {
            return Err(spec_err("the target is the origin itself"));
        }
        if s.request_rules.len() > MAX_REQUEST_RULES {
            return Err(spec_err(format!(
                "{} request rules: at most {MAX_REQUEST_RULES} per steer",
                s.request_rules.len()
            )));
        }
        let mut request_rules = router::RouterRules::new();
        for (i, r) in s.request_rules.iter().enumerate() {
            let p = port(r.port, &format!("request_rules[{i}].port"))?;
            if !ports.contains(&p) {
                return Err(spec_err(format!(
                    "request_rules[{i}]: port {p} is not one of the steered ports {ports:?}"
                )));
            }
            let value = r.value.trim();
            let rule =
                weft_reqroute::HeaderRule::new(&r.header, (!value.is_empty()).then_some(value))
                    .map_err(|e| spec_err(format!("request_rules[{i}]: {e}")))?;
            request_rules.entry(p).or_default().push(rule);
        }
        if !request_rules.is_empty() {
            if target_host.is_some() {
                return Err(spec_err(
                    "request rules need the target on the origin's host (the router reaches it in its namespace)",
                ));
            }
            // Every steered port goes to the router; those without rules whole.
            for p in &ports {
                request_rules.entry(*p).or_default();
            }
        }
        Ok(Self {
            owner: s.owner.clone(),
            network: s.network.clone(),
            node: s.node.clone(),
            ports,
            share_ppm: s.share_ppm,
            key,
            seed: s.seed,
            failover,
            target_network: s.target_network.clone(),
            target_node: s.target_node.clone(),
            target_host,
            tunnel_id,
            request_rules,
        })
    }
}

impl TryFrom<&weft_proto::v1::SteerTarget> for TargetSpec {
    type Error = SteerError;

    fn try_from(s: &weft_proto::v1::SteerTarget) -> Result<Self, SteerError> {
        check_names(&[("network", &s.network), ("node", &s.node)])?;
        if s.owner.is_empty() {
            return Err(spec_err("the steer target has no owner"));
        }
        Ok(Self {
            owner: s.owner.clone(),
            network: s.network.clone(),
            node: s.node.clone(),
            origin_host: underlay(&s.origin_host, "origin_host")?,
            tunnel_id: tunnel_id(s.tunnel_id)?,
        })
    }
}

/// Failover state of one steer, shared with its health check's thread.
#[derive(Default)]
struct Failover {
    active: bool,
    /// Time of the last switch from the first failed (or succeeded) check.
    switch_seconds: Option<f64>,
    switches: u64,
}

/// An origin's map entry, shared with the health check (which flips `failover`).
struct OriginEntry {
    ifindex: u32,
    value: SteerOrigin,
    /// Cleared when the steer goes: a late switch of its check writes nothing.
    live: bool,
}

struct ActiveSteer {
    spec: SteerSpec,
    steer_id: u32,
    origin_if: (String, u32),
    /// The target's interface (same host) or the tunnel device.
    target_if: (String, u32),
    entry: Arc<Mutex<OriginEntry>>,
    failover: Arc<Mutex<Failover>>,
    health: Option<HealthCheck>,
    observed: Vec<String>,
    /// The request router that is the target (steers with request rules).
    router: Option<Arc<router::Router>>,
}

struct ActiveTarget {
    spec: TargetSpec,
    steer_id: u32,
    target_if: (String, u32),
    tunnel_index: u32,
    observed: Vec<String>,
}

/// Counters of all steers of the host, in the agent's registry.
#[derive(Default)]
pub struct SteerMetrics {
    pub connections_seen: Counter,
    pub connections_steered: Counter,
    pub connections_received: Counter,
    pub failovers: Counter,
    pub failover_active: Gauge,
    pub steers: Gauge,
}

impl SteerMetrics {
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        register(
            registry,
            "weft_agent_steer_connections_seen_total",
            "New connections to steered ports of origin nodes, decided at their SYN.",
            m.connections_seen.clone(),
        );
        register(
            registry,
            "weft_agent_steer_connections_steered_total",
            "Of those, connections steered to their target.",
            m.connections_steered.clone(),
        );
        register(
            registry,
            "weft_agent_steer_connections_received_total",
            "Steered connections received through the tunnel for target nodes of this host.",
            m.connections_received.clone(),
        );
        register(
            registry,
            "weft_agent_steer_failovers_total",
            "Switches of steers to failover (the origin failed its health check).",
            m.failovers.clone(),
        );
        register(
            registry,
            "weft_agent_steer_failover_active",
            "Steers whose origin fails its health check now (every new connection steered).",
            m.failover_active.clone(),
        );
        register(
            registry,
            "weft_agent_steers",
            "Steers and steer targets on this host.",
            m.steers.clone(),
        );
        m
    }
}

/// An interface (name, index), a hook of it and the program that must be attached there.
type Placed = ((String, u32), Hook, &'static str);

/// What both steering reconcilers share.
pub struct Steering {
    datapath: SharedDatapath,
    settings: SteerSettings,
    host: crate::realize::netns::NetnsHandle,
    steers: Mutex<BTreeMap<String, ActiveSteer>>,
    targets: Mutex<BTreeMap<String, ActiveTarget>>,
    /// Keys that failed, with the interfaces they need: one of them appearing is drift
    /// (the node was made after the steer), repaired at once rather than at the resync.
    waiting: Mutex<BTreeMap<(&'static str, String), Vec<String>>>,
    /// Serialises reconciles of the two kinds (they share slots, programs and the tunnel).
    apply: tokio::sync::Mutex<()>,
    signals: Option<mpsc::Sender<DriftSignal>>,
    metrics: Arc<SteerMetrics>,
    /// Counters last read per slot (for metric deltas and REFRESH on change).
    last_stats: Mutex<HashMap<u32, SteerStats>>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What a previous agent left in the pinned maps and no resource claimed yet.
    leftovers: Mutex<adopt::Leftovers>,
    /// Servers' namespaces a removed, swept or replaced request router connected to:
    /// what it gave them is undone at the end of the reconcile, where no router of a
    /// steer connects to them ([`Self::undo_unused_sides`]).
    sides_to_undo: Mutex<BTreeSet<PathBuf>>,
}

impl Drop for Steering {
    fn drop(&mut self) {
        if let Some(p) = lock(&self.poller).take() {
            p.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` in the namespace of `netns` (a scoped thread) or, for `None`, here. tcx
/// attaches resolve interface names in the calling thread's namespace.
fn in_host<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, SteerError> {
    let Some(path) = netns else {
        return Ok(f());
    };
    let err = |source| SteerError::HostNetns {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on a valid, open namespace fd; this scoped thread ends after `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(err(std::io::Error::other("the namespace thread panicked"))))
    })
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> SteerError {
    move |source| SteerError::Map { map, source }
}

/// Map updates, under the datapath's lock.
impl Steering {
    fn with_map<K: aya::Pod, V: aya::Pod, T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut BpfHashMap<&mut MapData, K, V>) -> Result<T, aya::maps::MapError>,
    ) -> Result<T, SteerError> {
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = BpfHashMap::<_, K, V>::try_from(dp.map_mut(name)?).map_err(map_err(name))?;
        f(&mut m).map_err(map_err(name))
    }

    fn remove_key<K: aya::Pod, V: aya::Pod>(&self, name: &'static str, k: &K) {
        let _ = self.with_map::<K, V, ()>(name, |m| match m.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        });
    }

    fn write_origin(datapath: &SharedDatapath, e: &OriginEntry) -> Result<(), SteerError> {
        let mut dp = datapath.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = BpfHashMap::<_, u32, SteerOrigin>::try_from(dp.map_mut("STEER_ORIGINS")?)
            .map_err(map_err("STEER_ORIGINS"))?;
        m.insert(e.ifindex, e.value, 0)
            .map_err(map_err("STEER_ORIGINS"))
    }

    /// The steer's ports, exactly `ports`.
    fn write_ports(&self, steer_id: u32, ports: &[u16]) -> Result<(), SteerError> {
        self.with_map::<SteerPortKey, u8, ()>("STEER_PORTS", |m| {
            let stale: Vec<SteerPortKey> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.steer_id == steer_id && !ports.contains(&k.port))
                .collect();
            for k in stale {
                let _ = m.remove(&k);
            }
            for p in ports {
                let k = SteerPortKey {
                    steer_id,
                    port: *p,
                    _pad: [0; 2],
                };
                m.insert(k, 1, 0)?;
            }
            Ok(())
        })
    }

    /// The slot's counters, summed over the CPUs.
    fn stats(&self, steer_id: u32) -> Result<SteerStats, SteerError> {
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let a = PerCpuArray::<_, SteerStats>::try_from(dp.map_mut("STEER_STATS")?)
            .map_err(map_err("STEER_STATS"))?;
        let v = a.get(&steer_id, 0).map_err(map_err("STEER_STATS"))?;
        let mut sum = SteerStats::default();
        for s in v.iter() {
            sum.add(s);
        }
        Ok(sum)
    }

    /// Forgets the connections of a slot (its steer went, or a new one takes the slot):
    /// a later steer in the slot must not inherit them.
    fn purge_conns(&self, steer_id: u32) {
        let _ = self.with_map::<SteerConnKey, SteerConn, ()>("STEER_CONNS", |m| {
            let keys: Vec<SteerConnKey> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.steer_id == steer_id)
                .collect();
            for k in keys {
                let _ = m.remove(&k);
            }
            Ok(())
        });
    }

    /// Zeroes a slot's counters (a new steer starts from nothing).
    fn reset_stats(&self, steer_id: u32) -> Result<(), SteerError> {
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let mut a = PerCpuArray::<_, SteerStats>::try_from(dp.map_mut("STEER_STATS")?)
            .map_err(map_err("STEER_STATS"))?;
        let n = aya::util::nr_cpus().map_err(|(_, e)| SteerError::Map {
            map: "STEER_STATS",
            source: aya::maps::MapError::IoError(e),
        })?;
        let zeros = PerCpuValues::try_from(vec![SteerStats::default(); n]).map_err(|e| {
            SteerError::Map {
                map: "STEER_STATS",
                source: aya::maps::MapError::IoError(e),
            }
        })?;
        a.set(steer_id, zeros, 0).map_err(map_err("STEER_STATS"))
    }
}

impl Steering {
    /// Must be called on the runtime. `signals`: where REFRESH signals go when a steer's
    /// counters or failover state change.
    pub async fn new(
        datapath: SharedDatapath,
        settings: SteerSettings,
        signals: Option<mpsc::Sender<DriftSignal>>,
        metrics: Arc<SteerMetrics>,
    ) -> Result<Arc<Self>, SteerError> {
        let host = crate::realize::netns::connect(settings.host_netns.as_deref())
            .await
            .map_err(|e| {
                SteerError::Net(tunnel::NetError::Namespace {
                    path: format!("{:?}", settings.host_netns),
                    message: e.to_string(),
                })
            })?;
        let leftovers = {
            let mut dp = datapath.lock().unwrap_or_else(|p| p.into_inner());
            for p in PROGRAMS {
                dp.load_classifier(p)?;
            }
            adopt::Leftovers::read(&mut dp)?
        };
        if !leftovers.is_empty() {
            tracing::info!(
                origins = leftovers.origins.len(),
                returns = leftovers.returns.len(),
                tunnels = leftovers.tunnels.len(),
                slots = ?leftovers.slots(),
                "steering continues from a previous agent's pinned maps: its slots are reserved until its resources are ensured again"
            );
        }
        let s = Arc::new(Self {
            datapath,
            settings,
            host,
            steers: Mutex::new(BTreeMap::new()),
            targets: Mutex::new(BTreeMap::new()),
            waiting: Mutex::new(BTreeMap::new()),
            apply: tokio::sync::Mutex::new(()),
            signals,
            metrics,
            last_stats: Mutex::new(HashMap::new()),
            poller: Mutex::new(None),
            leftovers: Mutex::new(leftovers),
            sides_to_undo: Mutex::new(BTreeSet::new()),
        });
        let weak = Arc::downgrade(&s);
        // Ends when the steering is dropped (aborted in `Drop`, or sees it gone).
        let poller = tokio::spawn(async move {
            let mut every = tokio::time::interval(STATS_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(s) = weak.upgrade() else { return };
                s.poll_stats();
            }
        });
        *lock(&s.poller) = Some(poller);
        Ok(s)
    }

    fn netns_of(&self, network: &str, node: &str) -> PathBuf {
        namespaces::path_of(&names::netns(&self.settings.netns_prefix, network, node))
    }

    /// The slots of this agent's steers and targets.
    fn slots_in_use(&self) -> BTreeSet<u32> {
        let steers = lock(&self.steers);
        let targets = lock(&self.targets);
        steers
            .values()
            .map(|s| s.steer_id)
            .chain(targets.values().map(|t| t.steer_id))
            .collect()
    }

    /// A slot neither in use nor reserved for a previous agent's resource.
    fn free_slot(&self) -> Result<u32, SteerError> {
        let used = self.slots_in_use();
        let reserved = lock(&self.leftovers).slots();
        (0..MAX_STEERS)
            .find(|i| !used.contains(i) && !reserved.contains(i))
            .ok_or_else(|| {
                SteerError::Conflict(format!("{MAX_STEERS} steers on this host already"))
            })
    }

    /// The slot for a resource that is not active: a previous agent's (`adopted`, read
    /// from the pinned maps: its connections and counters continue) or a free one,
    /// emptied.
    fn slot_for(&self, key: &str, adopted: Option<u32>) -> Result<u32, SteerError> {
        if let Some(id) = adopted.filter(|id| !self.slots_in_use().contains(id)) {
            let now = self.stats(id)?;
            // The metrics count what happens from now; the report shows the slot's totals.
            lock(&self.last_stats).insert(id, now);
            tracing::info!(
                resource = key,
                slot = id,
                "adopted the previous agent's slot: its steered connections keep their side"
            );
            return Ok(id);
        }
        let id = self.free_slot()?;
        self.reset_stats(id)?;
        self.purge_conns(id);
        lock(&self.last_stats).remove(&id);
        Ok(id)
    }

    /// After a full reconcile of `kind`: once both kinds had theirs, what a previous
    /// agent left that no resource claimed goes (entries, then the slots' ports and
    /// connections, then its links of steering's programs).
    fn sweep_leftovers(&self, kind: adopt::Kind) {
        let in_use = self.slots_in_use();
        let Some(sweep) = lock(&self.leftovers).full_reconcile_done(kind, &in_use) else {
            return;
        };
        for k in &sweep.origins {
            self.remove_key::<u32, SteerOrigin>("STEER_ORIGINS", k);
        }
        for k in &sweep.returns {
            self.remove_key::<u32, SteerReturn>("STEER_RETURNS", k);
        }
        for k in &sweep.tunnels {
            self.remove_key::<SteerTunnelKey, SteerTunnel>("STEER_TUNNELS", k);
        }
        for slot in &sweep.slots {
            let _ = self.write_ports(*slot, &[]);
            self.purge_conns(*slot);
        }
        let links = self
            .datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_unheld_link_pins(&PROGRAMS);
        match links {
            Ok(n) => tracing::info!(
                entries = sweep.origins.len() + sweep.returns.len() + sweep.tunnels.len(),
                slots = ?sweep.slots,
                links = n,
                "removed what a previous agent steered that is no longer wanted"
            ),
            Err(e) => tracing::warn!(error = %e, "removing a previous agent's steering links"),
        }
    }

    async fn interface(&self, network: &str, node: &str) -> Result<(String, u32), SteerError> {
        let name = names::host_veth(network, node);
        match links::by_name(&self.host.handle, &name).await? {
            Some(l) => Ok((name, l.index)),
            None => Err(SteerError::Conflict(format!(
                "node {network}/{node} is not on this host (no interface {name})"
            ))),
        }
    }

    /// Attaches `program` on `hook` of `iface`: right after the flow observer where it is
    /// attached (else last).
    /// Returns the writes made (0: it was attached already).
    fn attach(
        &self,
        iface: &(String, u32),
        hook: Hook,
        program: &str,
    ) -> Result<usize, SteerError> {
        let (name, index) = (iface.0.clone(), iface.1);
        if self
            .datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_attached(index, hook, program)
        {
            return Ok(0);
        }
        let netns = self.settings.host_netns.clone();
        let dp = self.datapath.clone();
        in_host(netns.as_deref(), move || {
            let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
            // Right after the flow observer (which goes first, so it sees every packet as
            // it arrived) and before the shadow taps (which go last): a connection steered
            // to a shadow ends the hook's chain here (redirected), so no tap copies it to
            // that shadow a second time.
            let observer = match hook {
                Hook::Ingress => crate::attach::PROG_INGRESS,
                Hook::Egress => crate::attach::PROG_EGRESS,
            };
            let order = if dp.is_attached(index, hook, observer) {
                Order::After(observer)
            } else {
                Order::Last
            };
            dp.attach(&name, index, hook, program, order)
        })??;
        Ok(1)
    }

    /// [`Self::attach`] of several programs at once (their links made in parallel: each
    /// tcx attach waits for an RCU grace period). Returns how many were attached.
    fn attach_all(&self, wanted: &[(&(String, u32), Hook, &str)]) -> Result<usize, SteerError> {
        let todo: Vec<(String, u32, Hook, String)> = {
            let dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .filter(|(i, h, p)| !dp.is_attached(i.1, *h, p))
                .map(|(i, h, p)| (i.0.clone(), i.1, *h, (*p).to_owned()))
                .collect()
        };
        if todo.is_empty() {
            return Ok(0);
        }
        let n = todo.len();
        let netns = self.settings.host_netns.clone();
        let dp = self.datapath.clone();
        in_host(netns.as_deref(), move || {
            let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
            // As in `attach`: right after the flow observer when it is there.
            let requests: Vec<crate::datapath::AttachRequest<'_>> = todo
                .iter()
                .map(|(name, index, hook, program)| {
                    let observer = match hook {
                        Hook::Ingress => crate::attach::PROG_INGRESS,
                        Hook::Egress => crate::attach::PROG_EGRESS,
                    };
                    crate::datapath::AttachRequest {
                        interface: name,
                        ifindex: *index,
                        hook: *hook,
                        program,
                        order: if dp.is_attached(*index, *hook, observer) {
                            Order::After(observer)
                        } else {
                            Order::Last
                        },
                    }
                })
                .collect();
            dp.attach_all(&requests)
        })??;
        Ok(n)
    }

    fn detach(&self, index: u32, hook: Hook, program: &str) {
        self.datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .detach(index, hook, program);
    }

    async fn tunnel(&self) -> Result<(u32, usize), SteerError> {
        Ok(tunnel::ensure_tunnel(
            &self.host.handle,
            &self.settings.tunnel_device,
            self.settings.tunnel_port,
        )
        .await?)
    }

    /// Removes the tunnel device when no steer or target of this host needs it.
    async fn drop_tunnel_if_unused(&self) -> usize {
        // A previous agent's cross-host steering not claimed yet: still running in its
        // links, until it is ensured again or swept.
        let needed = lock(&self.steers)
            .values()
            .any(|s| s.spec.target_host.is_some())
            || !lock(&self.targets).is_empty()
            || !lock(&self.leftovers).tunnels.is_empty();
        if needed {
            return 0;
        }
        let index = links::by_name(&self.host.handle, &self.settings.tunnel_device)
            .await
            .ok()
            .flatten()
            .map(|l| l.index);
        if let Some(i) = index {
            self.detach(i, Hook::Ingress, PROG_TUNNEL);
        }
        match tunnel::remove_tunnel(&self.host.handle, &self.settings.tunnel_device).await {
            Ok(true) => 1,
            _ => 0,
        }
    }

    /// Remembers (on failure) or forgets (on success) what `key` waits for.
    fn wait_for(&self, kind: &'static str, key: &str, ok: bool, interfaces: Vec<String>) {
        let mut w = lock(&self.waiting);
        if ok {
            w.remove(&(kind, key.to_owned()));
        } else {
            w.insert((kind, key.to_owned()), interfaces);
        }
    }

    /// Keys of `kind` waiting for an interface that `events` made.
    fn appeared(&self, kind: &'static str, events: &[HostEvent]) -> Vec<Drift> {
        let w = lock(&self.waiting);
        let mut out: Vec<Drift> = Vec::new();
        for e in events.iter().filter(|e| e.netns.is_none()) {
            let Change::LinkNew { name, .. } = &e.change else {
                continue;
            };
            for ((k, key), names) in w.iter() {
                if *k == kind && names.contains(name) && !out.iter().any(|d| &d.key == key) {
                    out.push(Drift {
                        key: key.clone(),
                        what: format!("{name} appeared"),
                    });
                }
            }
        }
        out
    }

    fn signal(&self, kind: &'static str, key: &str) {
        self.signal_what(kind, key, REFRESH);
    }

    /// A signal for `key` saying `what` ([`REFRESH`]: new counters; anything else: drift).
    fn signal_what(&self, kind: &'static str, key: &str, what: &str) {
        if let Some(tx) = &self.signals {
            // A full channel: the periodic resync reports it.
            let _ = tx.try_send(DriftSignal {
                kind,
                drift: Drift {
                    key: key.to_owned(),
                    what: what.into(),
                },
                at: Instant::now(),
            });
        }
    }

    /// Reads every slot's counters: the metrics grow by what is new, and keys whose
    /// counters changed get a REFRESH signal.
    fn poll_stats(&self) {
        let slots: Vec<(&'static str, String, u32)> = {
            let steers = lock(&self.steers);
            let targets = lock(&self.targets);
            steers
                .iter()
                .map(|(k, s)| (STEER, k.clone(), s.steer_id))
                .chain(
                    targets
                        .iter()
                        .map(|(k, t)| (STEER_TARGET, k.clone(), t.steer_id)),
                )
                .collect()
        };
        for (kind, key, id) in slots {
            let Ok(now) = self.stats(id) else { continue };
            let before = lock(&self.last_stats).insert(id, now).unwrap_or_default();
            if before == now {
                continue;
            }
            let d = |a: u64, b: u64| a.saturating_sub(b);
            self.metrics
                .connections_seen
                .inc_by(d(now.connections_seen, before.connections_seen));
            self.metrics
                .connections_steered
                .inc_by(d(now.connections_steered, before.connections_steered));
            self.metrics
                .connections_received
                .inc_by(d(now.connections_received, before.connections_received));
            self.signal(kind, &key);
        }
    }

    fn measurements_of(&self, steer_id: u32, failover: Option<&Failover>) -> Vec<(String, f64)> {
        let s = self.stats(steer_id).unwrap_or_default();
        let mut m = vec![
            ("connections_seen".to_string(), s.connections_seen as f64),
            ("connections_steered".into(), s.connections_steered as f64),
            ("packets_to_target".into(), s.packets_to_target as f64),
            ("packets_from_target".into(), s.packets_from_target as f64),
        ];
        if let Some(f) = failover {
            m.push(("failover_active".into(), f64::from(u8::from(f.active))));
            m.push(("failover_switches".into(), f.switches as f64));
            if let Some(t) = f.switch_seconds {
                m.push(("failover_switch_seconds".into(), t));
            }
        }
        m
    }

    fn publish_gauges(&self) {
        let steers = lock(&self.steers);
        let active = steers.values().filter(|s| lock(&s.failover).active).count();
        self.metrics.failover_active.set(active as u64);
        self.metrics
            .steers
            .set((steers.len() + lock(&self.targets).len()) as u64);
    }
}

// ---- kind `steer` ----

impl Steering {
    async fn ensure_steer(
        self: &Arc<Self>,
        key: &str,
        spec: &SteerSpec,
    ) -> Result<ResourceReport, SteerError> {
        let mut changes = 0;
        let origin_if = self.interface(&spec.network, &spec.node).await?;
        // A request router: the one this steer has when it serves the same nodes.
        let router = if spec.request_rules.is_empty() {
            None
        } else {
            let origin_netns = self.netns_of(&spec.network, &spec.node);
            let target_netns = self.netns_of(&spec.target_network, &spec.target_node);
            let origin = router::origin_interface(&origin_netns).await?;
            let existing = lock(&self.steers).get(key).and_then(|a| a.router.clone());
            let r = match existing {
                Some(r) if r.serves(&origin_netns, &target_netns, &origin) => r,
                other => {
                    // Its namespace and veth are named after the key: the old one goes
                    // first (and is no longer the previous steer's).
                    if let Some(old) = other {
                        self.remove_router(&old).await;
                        if let Some(a) = lock(&self.steers).get_mut(key) {
                            a.router = None;
                        }
                    }
                    // Made when the target node exists (a clear error otherwise).
                    self.interface(&spec.target_network, &spec.target_node)
                        .await?;
                    changes += 1;
                    let (steering, gone_key) = (Arc::downgrade(self), key.to_owned());
                    let on_gone = Box::new(move || {
                        if let Some(s) = steering.upgrade() {
                            s.signal_what(STEER, &gone_key, "its request router process ended");
                        }
                    });
                    let made = Arc::new(
                        router::Router::make(
                            key,
                            &self.settings.netns_prefix,
                            &self.host.handle,
                            &origin_netns,
                            &target_netns,
                            &origin,
                            &self.settings.router_runtime,
                            on_gone,
                        )
                        .await?,
                    );
                    lock(&self.sides_to_undo).extend(made.replaced_sides());
                    made
                }
            };
            changes += r.set_rules(&spec.request_rules).await?;
            Some(r)
        };
        let (target_if, target_mac, remote) = match spec.target_host {
            None if router.is_some() => {
                let r = router.as_ref().expect("checked");
                (r.host_if.clone(), r.mac, Underlay::default())
            }
            None => {
                let t = self
                    .interface(&spec.target_network, &spec.target_node)
                    .await?;
                let nif =
                    tunnel::node_interface(&self.netns_of(&spec.target_network, &spec.target_node))
                        .await?;
                (t, nif.mac, Underlay::default())
            }
            Some(host) => {
                let (index, c) = self.tunnel().await?;
                changes += c;
                (
                    (self.settings.tunnel_device.clone(), index),
                    [0; 6],
                    Underlay::from(host),
                )
            }
        };
        // One steer per origin interface, one per target interface.
        {
            let steers = lock(&self.steers);
            for (k, s) in steers.iter().filter(|(k, _)| k.as_str() != key) {
                if s.origin_if.1 == origin_if.1 {
                    return Err(SteerError::Conflict(format!(
                        "node {}/{} is steered by {k} already",
                        spec.network, spec.node
                    )));
                }
                if spec.target_host.is_none()
                    && s.spec.target_host.is_none()
                    && s.target_if.1 == target_if.1
                {
                    return Err(SteerError::Conflict(format!(
                        "node {}/{} is the target of {k} already",
                        spec.target_network, spec.target_node
                    )));
                }
                if spec.target_host.is_some()
                    && s.spec.target_host == spec.target_host
                    && s.spec.tunnel_id == spec.tunnel_id
                {
                    return Err(SteerError::Conflict(format!(
                        "tunnel id {} to {:?} is used by {k} already",
                        spec.tunnel_id, spec.target_host
                    )));
                }
            }
        }
        // The origin's MAC, and what the health check checks (read before any write).
        let origin_nif = tunnel::node_interface(&self.netns_of(&spec.network, &spec.node)).await?;
        let health_spec = match &spec.failover {
            None => None,
            Some(f) => {
                let origin = origin_nif.check_address().ok_or_else(|| {
                    SteerError::Conflict(format!(
                        "node {}/{} has no global address to check",
                        spec.network, spec.node
                    ))
                })?;
                Some(HealthSpec::new(
                    SocketAddr::from((origin, f.port)),
                    f.interval_ms,
                    f.failures,
                    f.probe.clone(),
                ))
            }
        };
        let previous = lock(&self.steers).remove(key);
        let claimed = lock(&self.leftovers).claim_steer(
            origin_if.1,
            spec.target_host.is_none().then_some(target_if.1),
            spec.target_host.map(|_| SteerTunnelKey {
                remote,
                tunnel_id: spec.tunnel_id,
            }),
        );
        let adopted = claimed.filter(|_| previous.is_none());
        let steer_id = match &previous {
            Some(p) => p.steer_id,
            None => self.slot_for(key, adopted.map(|o| o.steer_id))?,
        };
        // The previous agent's entry, when its slot was taken back: its failover state
        // continues (the health check starts from it).
        let adopted = adopted.filter(|o| o.steer_id == steer_id);
        // What the previous version had that this one does not.
        // The previous target's side and router go once the new target is in place
        // (make before break): until then new connections still reach the old one.
        let mut retired_target = None;
        let mut retired_router = None;
        let (failover, entry, mut health) = match previous {
            Some(mut p) => {
                if p.origin_if.1 != origin_if.1 {
                    self.remove_key::<u32, SteerOrigin>("STEER_ORIGINS", &p.origin_if.1);
                    self.detach(p.origin_if.1, Hook::Egress, PROG_ORIGIN);
                    changes += 1;
                }
                let same_target = p.spec.target_host == spec.target_host
                    && p.target_if.1 == target_if.1
                    && p.spec.tunnel_id == spec.tunnel_id;
                if !same_target {
                    retired_target =
                        Some((p.spec.target_host, p.spec.tunnel_id, p.target_if.clone()));
                    changes += 1;
                }
                if let Some(old) = p.router.take()
                    && !router.as_ref().is_some_and(|r| Arc::ptr_eq(r, &old))
                {
                    retired_router = Some(old);
                    changes += 1;
                }
                let health = p.health.take();
                (p.failover.clone(), p.entry.clone(), health)
            }
            None => (
                Arc::new(Mutex::new(Failover {
                    active: adopted.is_some_and(|o| o.failover != 0),
                    ..Default::default()
                })),
                Arc::new(Mutex::new(OriginEntry {
                    ifindex: origin_if.1,
                    value: adopted.unwrap_or_default(),
                    live: true,
                })),
                None,
            ),
        };

        // Every write from here on is undone if one fails: the origin then serves
        // everything (the safe side) and the next reconcile starts afresh.
        let applied: Result<(), SteerError> = async {
            // Programs first, maps after: a program without its map entry passes everything.
            let back = match spec.target_host {
                None => PROG_RETURN,
                Some(_) => PROG_TUNNEL,
            };
            changes += self.attach_all(&[
                (&origin_if, Hook::Egress, PROG_ORIGIN),
                (&target_if, Hook::Ingress, back),
            ])?;
            self.write_ports(steer_id, &spec.ports)?;
            match spec.target_host {
                None => self.with_map::<u32, SteerReturn, ()>("STEER_RETURNS", |m| {
                    m.insert(
                        target_if.1,
                        SteerReturn {
                            steer_id,
                            ifindex: origin_if.1,
                            role: role::ORIGIN_LOCAL,
                            _pad: [0; 7],
                        },
                        0,
                    )
                })?,
                Some(_) => {
                    self.with_map::<SteerTunnelKey, SteerTunnel, ()>("STEER_TUNNELS", |m| {
                        m.insert(
                            SteerTunnelKey {
                                remote,
                                tunnel_id: spec.tunnel_id,
                            },
                            SteerTunnel {
                                steer_id,
                                ifindex: origin_if.1,
                                role: role::ORIGIN_TUNNEL,
                                _pad: 0,
                                mac: [0; 6],
                            },
                            0,
                        )
                    })?
                }
            }
            let value = SteerOrigin {
                threshold: common::threshold_of(spec.share_ppm),
                steer_id,
                seed: spec.seed,
                target_ifindex: target_if.1,
                tunnel_id: spec.tunnel_id,
                tunnel_remote: remote,
                key: spec.key,
                failover: 0,
                all_ports: u8::from(spec.ports.is_empty()),
                _pad: 0,
                target_mac,
                origin_mac: origin_nif.mac,
                _pad2: [0; 4],
            };
            {
                let mut e = lock(&entry);
                let mut v = value;
                v.failover = u8::from(spec.failover.is_some() && lock(&failover).active);
                if e.ifindex != origin_if.1 || e.value != v {
                    e.ifindex = origin_if.1;
                    e.value = v;
                    changes += 1;
                }
                e.live = true;
                Self::write_origin(&self.datapath, &e)?;
            }

            // The health check: kept when its spec is the same.
            match health_spec {
                None => {
                    health = None;
                    lock(&failover).active = false;
                }
                Some(hs) => {
                    if health.as_ref().map(|h| &h.spec) != Some(&hs) {
                        health = Some(self.start_health(
                            key,
                            hs,
                            &spec.network,
                            &spec.node,
                            &entry,
                            &failover,
                        )?);
                        changes += 1;
                    }
                }
            }
            Ok(())
        }
        .await;
        // The router first: what it sends as it stops (its connections' ends) still
        // finds its way back to the clients through its side.
        if let Some(old) = retired_router {
            self.remove_router(&old).await;
        }
        if let Some((host, tunnel_id, target_if)) = retired_target {
            self.remove_target_side_of(host, tunnel_id, &target_if);
        }
        if let Err(e) = applied {
            lock(&entry).live = false;
            self.remove_key::<u32, SteerOrigin>("STEER_ORIGINS", &origin_if.1);
            self.detach(origin_if.1, Hook::Egress, PROG_ORIGIN);
            if let Some(r) = &router {
                self.remove_router(r).await;
            }
            self.remove_target_side_of(spec.target_host, spec.tunnel_id, &target_if);
            let _ = self.write_ports(steer_id, &[]);
            self.publish_gauges();
            return Err(e);
        }

        let mut observed = vec![format!(
            "origin {}/{} ({} #{}) egress {PROG_ORIGIN} slot {steer_id}",
            spec.network, spec.node, origin_if.0, origin_if.1
        )];
        if let Some(r) = &router {
            observed.push(format!(
                "request router {}{} ({} #{}, {}, {}) for {}/{}: {}",
                r.netns.display(),
                r.process()
                    .map(|pid| format!(" process {pid}"))
                    .unwrap_or_default(),
                r.host_if.0,
                r.host_if.1,
                tunnel::mac_text(&r.mac),
                r.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                spec.target_network,
                spec.target_node,
                spec.request_rules
                    .iter()
                    .map(|(p, rules)| if rules.is_empty() {
                        format!("port {p} whole")
                    } else {
                        format!(
                            "port {p} by {}",
                            rules
                                .iter()
                                .map(|r| match &r.value {
                                    Some(v) => format!("{}: {v}", r.name),
                                    None => format!("{} (any)", r.name),
                                })
                                .collect::<Vec<_>>()
                                .join(" or ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match spec.target_host {
            None => observed.push(format!(
                "target {}/{} ({} #{}, {}) ingress {PROG_RETURN}",
                spec.target_network,
                spec.target_node,
                target_if.0,
                target_if.1,
                tunnel::mac_text(&target_mac)
            )),
            Some(h) => observed.push(format!(
                "target {}/{} on {h} via {} #{} tunnel id {}",
                spec.target_network, spec.target_node, target_if.0, target_if.1, spec.tunnel_id
            )),
        }
        observed.push(format!(
            "share {} ppm key {} ports {}",
            spec.share_ppm,
            if spec.key == common::key::SOURCE {
                "source"
            } else {
                "connection"
            },
            if spec.ports.is_empty() {
                "all".to_string()
            } else {
                format!("{:?}", spec.ports)
            }
        ));
        let active = ActiveSteer {
            spec: spec.clone(),
            steer_id,
            origin_if,
            target_if,
            entry,
            failover: failover.clone(),
            health,
            observed: observed.clone(),
            router: router.clone(),
        };
        lock(&self.steers).insert(key.to_owned(), active);
        self.publish_gauges();
        let measurements = {
            let f = lock(&failover);
            let mut m = self.measurements_of(steer_id, spec.failover.as_ref().map(|_| &*f));
            if let Some(r) = &router {
                m.extend(r.measurements());
            }
            m
        };
        Ok(ResourceReport {
            key: key.to_owned(),
            observed,
            changes,
            measurements,
            ..Default::default()
        })
    }

    fn start_health(
        self: &Arc<Self>,
        key: &str,
        spec: HealthSpec,
        network: &str,
        node: &str,
        entry: &Arc<Mutex<OriginEntry>>,
        failover: &Arc<Mutex<Failover>>,
    ) -> Result<HealthCheck, SteerError> {
        let netns =
            std::fs::File::open(self.netns_of(network, node)).map_err(SteerError::Health)?;
        let entry = entry.clone();
        let failover = failover.clone();
        let datapath = self.datapath.clone();
        let weak = Arc::downgrade(self);
        let key = key.to_owned();
        let down = lock(&failover).active;
        HealthCheck::start(netns, spec, down, move |sw: Switch| {
            // One map update: every new connection to the target (or back to the share).
            let wrote = {
                let mut e = lock(&entry);
                if !e.live {
                    return;
                }
                e.value.failover = u8::from(sw.down);
                Self::write_origin(&datapath, &e)
            };
            let after = sw.after.as_secs_f64();
            {
                let mut f = lock(&failover);
                f.active = sw.down;
                f.switch_seconds = Some(after);
                f.switches += 1;
            }
            match &wrote {
                Ok(()) => tracing::info!(steer = %key, down = sw.down, after_seconds = after, "steer failover switched"),
                Err(e) => tracing::warn!(steer = %key, error = %e, "steer failover: writing the map failed"),
            }
            if let Some(s) = weak.upgrade() {
                if sw.down {
                    s.metrics.failovers.inc();
                }
                s.publish_gauges();
                s.signal(STEER, &key);
            }
        })
        .map_err(SteerError::Health)
    }

    /// Removes what a steer put on its target side (return entry or tunnel entry).
    fn remove_target_side_of(
        &self,
        target_host: Option<IpAddr>,
        tunnel_id: u32,
        target_if: &(String, u32),
    ) {
        match target_host {
            None => {
                self.remove_key::<u32, SteerReturn>("STEER_RETURNS", &target_if.1);
                self.detach(target_if.1, Hook::Ingress, PROG_RETURN);
            }
            Some(h) => self.remove_key::<SteerTunnelKey, SteerTunnel>(
                "STEER_TUNNELS",
                &SteerTunnelKey {
                    remote: Underlay::from(h),
                    tunnel_id,
                },
            ),
        }
    }

    /// Removes request router `r` ([`router::Router::remove`]); what it gave its sides is
    /// undone at the end of the reconcile ([`Self::undo_unused_sides`]).
    async fn remove_router(&self, r: &Arc<router::Router>) {
        r.remove(&self.host.handle).await;
        lock(&self.sides_to_undo).extend(r.sides().map(Path::to_path_buf));
    }

    /// Undoes what request routers gave the namespaces in `sides_to_undo`
    /// ([`router::transparent::undo`]), but for those a steer's router connects to.
    /// Called at the end of a reconcile: a namespace can be one router's target and
    /// another's origin (a weave's node, in a weave made of that weave), and while a
    /// reconcile runs, routers it has not come to yet (adopted from a previous agent,
    /// serving) are not in `steers`.
    async fn undo_unused_sides(&self) {
        let sides = std::mem::take(&mut *lock(&self.sides_to_undo));
        if sides.is_empty() {
            return;
        }
        let used: BTreeSet<PathBuf> = lock(&self.steers)
            .values()
            .filter_map(|a| a.router.as_ref())
            .flat_map(|r| r.sides().map(Path::to_path_buf))
            .collect();
        undo_sides(sides.difference(&used)).await;
    }

    /// Stops every request router (the agent's exit without its pins kept: nothing
    /// steers to them any more) and undoes what they gave the servers' namespaces
    /// ([`router::transparent::undo`]): no agent comes to do it later.
    pub async fn stop_routers(&self) {
        let routers: Vec<Arc<router::Router>> = lock(&self.steers)
            .values()
            .filter_map(|a| a.router.clone())
            .collect();
        if routers.is_empty() {
            return;
        }
        let sides: BTreeSet<PathBuf> = routers
            .iter()
            .flat_map(|r| r.sides().map(Path::to_path_buf))
            .chain(std::mem::take(&mut *lock(&self.sides_to_undo)))
            .collect();
        let stopping = tokio::task::spawn_blocking(move || {
            for r in routers {
                r.stop_now();
            }
        });
        if let Err(e) = stopping.await {
            tracing::warn!(error = %e, "stopping the request routers");
        }
        undo_sides(&sides).await;
    }

    /// Request router namespaces no steer uses (a previous agent's): removed with their
    /// processes (their veths go with them); what they gave the servers' namespaces is
    /// undone at the end of the reconcile ([`Self::undo_unused_sides`]).
    fn sweep_routers(&self) {
        let prefix = format!("{}.router.", self.settings.netns_prefix);
        let used: BTreeSet<PathBuf> = lock(&self.steers)
            .values()
            .filter_map(|a| a.router.as_ref().map(|r| r.netns.clone()))
            .collect();
        let Ok(dir) = std::fs::read_dir(namespaces::NETNS_DIR) else {
            return;
        };
        let mut swept_sides = BTreeSet::new();
        for e in dir.flatten() {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with(&prefix) && !used.contains(&path) {
                // Its process first (it holds the namespace and the veth while it runs).
                if let router::RouterRuntime::Process { run_dir, .. } =
                    &self.settings.router_runtime
                    && let Some(served) = router::process::stop_blocking(
                        &router::process::control_path(run_dir, &path),
                    )
                {
                    swept_sides.extend([served.origin, served.target]);
                }
                match namespaces::remove(&path) {
                    Ok(()) => {
                        tracing::info!(namespace = %path.display(), "removed a request router namespace no steer uses")
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %path.display(), error = %e, "removing an unused request router namespace")
                    }
                }
            }
        }
        lock(&self.sides_to_undo).extend(swept_sides);
    }

    async fn remove_steer(&self, key: &str) -> usize {
        let Some(mut p) = lock(&self.steers).remove(key) else {
            return 0;
        };
        lock(&p.entry).live = false;
        self.remove_key::<u32, SteerOrigin>("STEER_ORIGINS", &p.origin_if.1);
        self.detach(p.origin_if.1, Hook::Egress, PROG_ORIGIN);
        // The router before its side: the ends of its connections, sent as it stops,
        // still go back to their clients.
        if let Some(r) = p.router.take() {
            self.remove_router(&r).await;
        }
        self.remove_target_side_of(p.spec.target_host, p.spec.tunnel_id, &p.target_if);
        let _ = self.write_ports(p.steer_id, &[]);
        lock(&self.last_stats).remove(&p.steer_id);
        self.purge_conns(p.steer_id);
        drop(p);
        self.publish_gauges();
        2 + self.drop_tunnel_if_unused().await
    }

    /// Whether an active resource whose spec is unchanged (`parts`: its interfaces and
    /// programs; `None`: not active or changed) needs no apply: for `Scope::Changed`
    /// always, for `Scope::Only` (signals, drift) when its interfaces are still the ones
    /// the programs were attached to.
    async fn unchanged(&self, parts: Option<Vec<Placed>>, scope: Scope<'_>) -> bool {
        let Some(parts) = parts else { return false };
        if !matches!(scope, Scope::Only(_)) {
            return true;
        }
        for ((name, index), hook, program) in parts {
            let now = links::by_name(&self.host.handle, &name)
                .await
                .ok()
                .flatten();
            let attached = self
                .datapath
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_attached(index, hook, program);
            if !now.is_some_and(|l| l.index == index && l.up) || !attached {
                return false;
            }
        }
        true
    }

    fn report_from_memory(&self, key: &str) -> Option<ResourceReport> {
        let steers = lock(&self.steers);
        let s = steers.get(key)?;
        let f = lock(&s.failover);
        let mut measurements =
            self.measurements_of(s.steer_id, s.spec.failover.as_ref().map(|_| &*f));
        if let Some(r) = &s.router {
            measurements.extend(r.measurements());
        }
        Some(ResourceReport {
            key: key.to_owned(),
            observed: s.observed.clone(),
            measurements,
            ..Default::default()
        })
    }
}

// ---- kind `steer-target` ----

impl Steering {
    async fn ensure_target(
        &self,
        key: &str,
        spec: &TargetSpec,
    ) -> Result<ResourceReport, SteerError> {
        let mut changes = 0;
        let target_if = self.interface(&spec.network, &spec.node).await?;
        let nif = tunnel::node_interface(&self.netns_of(&spec.network, &spec.node)).await?;
        let (tunnel_index, c) = self.tunnel().await?;
        changes += c;
        let remote = Underlay::from(spec.origin_host);
        {
            let targets = lock(&self.targets);
            for (k, t) in targets.iter().filter(|(k, _)| k.as_str() != key) {
                if t.target_if.1 == target_if.1 {
                    return Err(SteerError::Conflict(format!(
                        "node {}/{} is the target of {k} already",
                        spec.network, spec.node
                    )));
                }
                if t.spec.origin_host == spec.origin_host && t.spec.tunnel_id == spec.tunnel_id {
                    return Err(SteerError::Conflict(format!(
                        "tunnel id {} from {} is used by {k} already",
                        spec.tunnel_id, spec.origin_host
                    )));
                }
            }
            let steers = lock(&self.steers);
            if let Some((k, _)) = steers.iter().find(|(_, s)| {
                s.spec.target_host == Some(spec.origin_host) && s.spec.tunnel_id == spec.tunnel_id
            }) {
                return Err(SteerError::Conflict(format!(
                    "tunnel id {} with {} is used by the steer {k} of this host (one id per host pair)",
                    spec.tunnel_id, spec.origin_host
                )));
            }
        }
        let previous = lock(&self.targets).remove(key);
        let adopted = lock(&self.leftovers).claim_target(
            target_if.1,
            SteerTunnelKey {
                remote,
                tunnel_id: spec.tunnel_id,
            },
        );
        let steer_id = match &previous {
            Some(p) => {
                if p.target_if.1 != target_if.1 {
                    self.remove_key::<u32, SteerReturn>("STEER_RETURNS", &p.target_if.1);
                    self.detach(p.target_if.1, Hook::Ingress, PROG_RETURN);
                    changes += 1;
                }
                if p.spec.origin_host != spec.origin_host || p.spec.tunnel_id != spec.tunnel_id {
                    self.remove_key::<SteerTunnelKey, SteerTunnel>(
                        "STEER_TUNNELS",
                        &SteerTunnelKey {
                            remote: Underlay::from(p.spec.origin_host),
                            tunnel_id: p.spec.tunnel_id,
                        },
                    );
                    changes += 1;
                }
                p.steer_id
            }
            None => {
                let id = self.slot_for(key, adopted)?;
                if adopted != Some(id) {
                    changes += 1;
                }
                id
            }
        };
        let tunnel_if = (self.settings.tunnel_device.clone(), tunnel_index);
        changes += self.attach(&tunnel_if, Hook::Ingress, PROG_TUNNEL)?;
        changes += self.attach(&target_if, Hook::Ingress, PROG_RETURN)?;
        self.with_map::<u32, SteerReturn, ()>("STEER_RETURNS", |m| {
            m.insert(
                target_if.1,
                SteerReturn {
                    steer_id,
                    ifindex: tunnel_index,
                    role: role::TARGET,
                    _pad: [0; 7],
                },
                0,
            )
        })?;
        self.with_map::<SteerTunnelKey, SteerTunnel, ()>("STEER_TUNNELS", |m| {
            m.insert(
                SteerTunnelKey {
                    remote,
                    tunnel_id: spec.tunnel_id,
                },
                SteerTunnel {
                    steer_id,
                    ifindex: target_if.1,
                    role: role::TARGET,
                    _pad: 0,
                    mac: nif.mac,
                },
                0,
            )
        })?;
        let observed = vec![
            format!(
                "target {}/{} ({} #{}, {}) slot {steer_id}",
                spec.network,
                spec.node,
                target_if.0,
                target_if.1,
                tunnel::mac_text(&nif.mac)
            ),
            format!(
                "tunnel {} #{} udp {} from {} id {}",
                tunnel_if.0,
                tunnel_index,
                self.settings.tunnel_port,
                spec.origin_host,
                spec.tunnel_id
            ),
        ];
        lock(&self.targets).insert(
            key.to_owned(),
            ActiveTarget {
                spec: spec.clone(),
                steer_id,
                target_if,
                tunnel_index,
                observed: observed.clone(),
            },
        );
        self.publish_gauges();
        Ok(ResourceReport {
            key: key.to_owned(),
            observed,
            changes,
            measurements: self.target_measurements(steer_id, true),
            ..Default::default()
        })
    }

    fn target_measurements(&self, steer_id: u32, ready: bool) -> Vec<(String, f64)> {
        let s = self.stats(steer_id).unwrap_or_default();
        vec![
            ("tunnel_ready".to_string(), f64::from(u8::from(ready))),
            ("connections_received".into(), s.connections_received as f64),
            ("packets_to_target".into(), s.packets_to_target as f64),
            ("packets_from_target".into(), s.packets_from_target as f64),
            ("packets_dropped_unknown".into(), s.dropped_unknown as f64),
        ]
    }

    async fn remove_target(&self, key: &str) -> usize {
        let Some(t) = lock(&self.targets).remove(key) else {
            return 0;
        };
        self.remove_key::<u32, SteerReturn>("STEER_RETURNS", &t.target_if.1);
        self.detach(t.target_if.1, Hook::Ingress, PROG_RETURN);
        self.remove_key::<SteerTunnelKey, SteerTunnel>(
            "STEER_TUNNELS",
            &SteerTunnelKey {
                remote: Underlay::from(t.spec.origin_host),
                tunnel_id: t.spec.tunnel_id,
            },
        );
        lock(&self.last_stats).remove(&t.steer_id);
        self.purge_conns(t.steer_id);
        let _ = t.tunnel_index;
        self.publish_gauges();
        2 + self.drop_tunnel_if_unused().await
    }
}

/// Link names of this host a steer or target depends on, with their keys.
/// [`router::transparent::undo`] in each namespace of `sides`; a failure is logged (the
/// namespace may be gone, or going).
async fn undo_sides(sides: impl IntoIterator<Item = &PathBuf>) {
    for side in sides {
        if let Err(e) = router::transparent::undo(side).await {
            tracing::warn!(namespace = %side.display(), error = %e, "undoing a request router's rules");
        }
    }
}

fn drift_of(events: &[HostEvent], deps: &[(String, Vec<(String, u32)>)]) -> Vec<Drift> {
    let mut out: Vec<Drift> = Vec::new();
    for e in events.iter().filter(|e| e.netns.is_none()) {
        // Deleted, set down, or a new device under a name we use.
        let (name, hit_on, what) = match &e.change {
            Change::LinkDel { name, .. } => (name, None, format!("{name} deleted")),
            Change::LinkNew {
                name,
                ifindex,
                up: false,
                ..
            } => (name, Some((*ifindex, true)), format!("{name} set down")),
            Change::LinkNew { name, ifindex, .. } => {
                (name, Some((*ifindex, false)), format!("{name} made anew"))
            }
            _ => continue,
        };
        for (key, links) in deps {
            let hit = links.iter().any(|(n, i)| {
                n == name
                    && match hit_on {
                        None => true,
                        Some((index, down)) => down || *i != index,
                    }
            });
            if hit {
                out.retain(|d| &d.key != key);
                out.push(Drift {
                    key: key.clone(),
                    what: what.clone(),
                });
            }
        }
    }
    out
}

/// The reconciler of kind `steer`.
pub struct SteerReconciler {
    pub steering: Arc<Steering>,
}

/// The reconciler of kind `steer-target`.
pub struct SteerTargetReconciler {
    pub steering: Arc<Steering>,
}

fn error_report(key: &str, e: impl std::fmt::Display) -> ResourceReport {
    ResourceReport {
        key: key.to_owned(),
        error: Some(e.to_string()),
        ..Default::default()
    }
}

impl Reconciler for SteerReconciler {
    fn kind(&self) -> &'static str {
        STEER
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>> {
        Box::pin(async move {
            let s = &self.steering;
            let _apply = s.apply.lock().await;
            let mut out = Vec::new();
            for r in desired {
                if let Scope::Only(keys) = scope
                    && !keys.contains(&r.key)
                {
                    continue;
                }
                let spec = match &r.spec {
                    Spec::Steer(w) => SteerSpec::try_from(w),
                    _ => Err(spec_err("the spec is not a steer")),
                };
                let spec = match spec {
                    Ok(x) => x,
                    Err(e) => {
                        out.push(error_report(&r.key, e));
                        continue;
                    }
                };
                // Unchanged, and (for a key asked for by a signal: new counters, or drift)
                // still in place: reported from memory, no writes.
                if !matches!(scope, Scope::All) {
                    let parts = lock(&s.steers)
                        .get(&r.key)
                        .filter(|a| a.spec == spec && a.router.as_ref().is_none_or(|r| r.alive()))
                        .map(|a| {
                            let back = if a.spec.target_host.is_none() {
                                PROG_RETURN
                            } else {
                                PROG_TUNNEL
                            };
                            vec![
                                (a.origin_if.clone(), Hook::Egress, PROG_ORIGIN),
                                (a.target_if.clone(), Hook::Ingress, back),
                            ]
                        });
                    if s.unchanged(parts, scope).await
                        && let Some(rep) = s.report_from_memory(&r.key)
                    {
                        out.push(rep);
                        continue;
                    }
                }
                let result = s.ensure_steer(&r.key, &spec).await;
                let mut needs = vec![names::host_veth(&spec.network, &spec.node)];
                if spec.target_host.is_none() {
                    needs.push(names::host_veth(&spec.target_network, &spec.target_node));
                }
                s.wait_for(STEER, &r.key, result.is_ok(), needs);
                out.push(match result {
                    Ok(rep) => rep,
                    Err(e) => error_report(&r.key, e),
                });
            }
            if !matches!(scope, Scope::Only(_)) {
                lock(&s.waiting)
                    .retain(|(k, key), _| *k != STEER || desired.iter().any(|r| &r.key == key));
                let gone: Vec<String> = lock(&s.steers)
                    .keys()
                    .filter(|k| !desired.iter().any(|r| &r.key == *k))
                    .cloned()
                    .collect();
                for key in gone {
                    let changes = s.remove_steer(&key).await;
                    out.push(ResourceReport {
                        key,
                        changes,
                        observed: vec!["removed".into()],
                        ..Default::default()
                    });
                }
            }
            if matches!(scope, Scope::All) {
                s.sweep_leftovers(adopt::Kind::Steer);
                s.sweep_routers();
                // A tunnel device left by an earlier run (or a failed apply) that nothing
                // needs now goes.
                s.drop_tunnel_if_unused().await;
            }
            s.undo_unused_sides().await;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
    }

    fn drift(&self, events: &[HostEvent]) -> Vec<Drift> {
        let deps: Vec<(String, Vec<(String, u32)>)> = lock(&self.steering.steers)
            .iter()
            .map(|(k, s)| (k.clone(), vec![s.origin_if.clone(), s.target_if.clone()]))
            .collect();
        let mut out = drift_of(events, &deps);
        out.extend(self.steering.appeared(STEER, events));
        out
    }

    fn namespaces(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn managed(&self) -> Vec<String> {
        lock(&self.steering.steers).keys().cloned().collect()
    }
}

impl Reconciler for SteerTargetReconciler {
    fn kind(&self) -> &'static str {
        STEER_TARGET
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>> {
        Box::pin(async move {
            let s = &self.steering;
            let _apply = s.apply.lock().await;
            let mut out = Vec::new();
            for r in desired {
                if let Scope::Only(keys) = scope
                    && !keys.contains(&r.key)
                {
                    continue;
                }
                let spec = match &r.spec {
                    Spec::SteerTarget(w) => TargetSpec::try_from(w),
                    _ => Err(spec_err("the spec is not a steer target")),
                };
                let spec = match spec {
                    Ok(x) => x,
                    Err(e) => {
                        out.push(error_report(&r.key, e));
                        continue;
                    }
                };
                if !matches!(scope, Scope::All) {
                    let known = lock(&s.targets)
                        .get(&r.key)
                        .filter(|a| a.spec == spec)
                        .map(|a| {
                            let parts = vec![
                                (a.target_if.clone(), Hook::Ingress, PROG_RETURN),
                                (
                                    (s.settings.tunnel_device.clone(), a.tunnel_index),
                                    Hook::Ingress,
                                    PROG_TUNNEL,
                                ),
                            ];
                            (a.steer_id, a.observed.clone(), parts)
                        });
                    let known = match known {
                        Some((id, observed, parts)) => s
                            .unchanged(Some(parts), scope)
                            .await
                            .then_some((id, observed)),
                        None => None,
                    };
                    if let Some((id, observed)) = known {
                        out.push(ResourceReport {
                            key: r.key.clone(),
                            observed,
                            measurements: s.target_measurements(id, true),
                            ..Default::default()
                        });
                        continue;
                    }
                }
                let result = s.ensure_target(&r.key, &spec).await;
                s.wait_for(
                    STEER_TARGET,
                    &r.key,
                    result.is_ok(),
                    vec![names::host_veth(&spec.network, &spec.node)],
                );
                out.push(match result {
                    Ok(rep) => rep,
                    Err(e) => {
                        let mut rep = error_report(&r.key, e);
                        rep.measurements = vec![("tunnel_ready".into(), 0.0)];
                        rep
                    }
                });
            }
            if !matches!(scope, Scope::Only(_)) {
                lock(&s.waiting).retain(|(k, key), _| {
                    *k != STEER_TARGET || desired.iter().any(|r| &r.key == key)
                });
                let gone: Vec<String> = lock(&s.targets)
                    .keys()
                    .filter(|k| !desired.iter().any(|r| &r.key == *k))
                    .cloned()
                    .collect();
                for key in gone {
                    let changes = s.remove_target(&key).await;
                    out.push(ResourceReport {
                        key,
                        changes,
                        observed: vec!["removed".into()],
                        ..Default::default()
                    });
                }
            }
            if matches!(scope, Scope::All) {
                s.sweep_leftovers(adopt::Kind::Target);
                // A tunnel device left by an earlier run (or a failed apply) that nothing
                // needs now goes.
                s.drop_tunnel_if_unused().await;
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
    }

    fn drift(&self, events: &[HostEvent]) -> Vec<Drift> {
        let deps: Vec<(String, Vec<(String, u32)>)> = lock(&self.steering.targets)
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    vec![
                        t.target_if.clone(),
                        (self.steering.settings.tunnel_device.clone(), t.tunnel_index),
                    ],
                )
            })
            .collect();
        let mut out = drift_of(events, &deps);
        out.extend(self.steering.appeared(STEER_TARGET, events));
        out
    }

    fn namespaces(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn managed(&self) -> Vec<String> {
        lock(&self.steering.targets).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> weft_proto::v1::Steer {
        weft_proto::v1::Steer {
            owner: "weave/w1".into(),
            network: "prod".into(),
            node: "web".into(),
            ports: vec![80, 443, 80],
            share_ppm: 250_000,
            key: "source".into(),
            seed: 9,
            failover: None,
            target_network: "w1-prod".into(),
            target_node: "web".into(),
            target_host: String::new(),
            tunnel_id: 0,
            request_rules: Vec::new(),
        }
    }

    fn rule(port: u32, header: &str, value: &str) -> weft_proto::v1::SteerRequestRule {
        weft_proto::v1::SteerRequestRule {
            port,
            header: header.into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_steer_spec_is_checked_and_normalised() {
        let s = SteerSpec::try_from(&wire()).unwrap();
        assert_eq!(s.ports, vec![80, 443]);
        assert_eq!(s.key, common::key::SOURCE);
        assert_eq!(s.target_host, None);
        assert_eq!(s.tunnel_id, 0);

        let cross = weft_proto::v1::Steer {
            target_host: "198.18.82.2".into(),
            tunnel_id: 7,
            ..wire()
        };
        let s = SteerSpec::try_from(&cross).unwrap();
        assert_eq!(s.target_host, Some(IpAddr::from([198, 18, 82, 2])));
        assert_eq!(s.tunnel_id, 7);
        assert!(s.request_rules.is_empty());

        // Rules by request: the router takes every steered port, those without rules whole.
        let by_request = weft_proto::v1::Steer {
            request_rules: vec![rule(80, "X-Branch", " w1 "), rule(80, "x-canary", "")],
            ..wire()
        };
        let s = SteerSpec::try_from(&by_request).unwrap();
        assert_eq!(
            s.request_rules.keys().copied().collect::<Vec<_>>(),
            [80, 443]
        );
        let on_80 = &s.request_rules[&80];
        assert_eq!(on_80.len(), 2);
        assert_eq!(on_80[0].value.as_deref(), Some("w1"));
        assert_eq!(on_80[1].value, None);
        assert!(s.request_rules[&443].is_empty());
    }

    #[test]
    fn bad_steer_specs_say_why() {
        let cases: Vec<(weft_proto::v1::Steer, &str)> = vec![
            (
                weft_proto::v1::Steer {
                    share_ppm: 1_000_001,
                    ..wire()
                },
                "share_ppm",
            ),
            (
                weft_proto::v1::Steer {
                    ports: vec![70_000],
                    ..wire()
                },
                "not a port",
            ),
            (
                weft_proto::v1::Steer {
                    key: "header".into(),
                    ..wire()
                },
                "key",
            ),
            (
                weft_proto::v1::Steer {
                    target_host: "198.18.82.2".into(),
                    tunnel_id: 0,
                    ..wire()
                },
                "tunnel_id",
            ),
            (
                weft_proto::v1::Steer {
                    target_host: "fd00::2/64".into(),
                    tunnel_id: 3,
                    ..wire()
                },
                "not an IP address",
            ),
            (
                weft_proto::v1::Steer {
                    target_host: "ff02::1".into(),
                    tunnel_id: 3,
                    ..wire()
                },
                "unicast",
            ),
            (
                weft_proto::v1::Steer {
                    target_network: "prod".into(),
                    ..wire()
                },
                "origin itself",
            ),
            (
                weft_proto::v1::Steer {
                    node: "Web".into(),
                    ..wire()
                },
                "node name",
            ),
            (
                weft_proto::v1::Steer {
                    owner: String::new(),
                    ..wire()
                },
                "owner",
            ),
            (
                weft_proto::v1::Steer {
                    failover: Some(weft_proto::v1::SteerHealth {
                        port: 0,
                        ..Default::default()
                    }),
                    ..wire()
                },
                "failover port",
            ),
        ];
        let with_rules = |rules| weft_proto::v1::Steer {
            request_rules: rules,
            ..wire()
        };
        let mut cases = cases;
        cases.extend([
            (
                with_rules(vec![rule(8080, "x-branch", "")]),
                "request_rules[0]: port 8080 is not one of the steered ports",
            ),
            (
                with_rules(vec![rule(80, "x branch", "")]),
                "request_rules[0]",
            ),
            (
                with_rules(vec![rule(80, "x-ok", ""), rule(0, "x", "")]),
                "request_rules[1].port",
            ),
            (
                weft_proto::v1::Steer {
                    target_host: "198.18.82.2".into(),
                    tunnel_id: 3,
                    ..with_rules(vec![rule(80, "x-branch", "")])
                },
                "on the origin's host",
            ),
            (
                with_rules((0..65).map(|_| rule(80, "x", "")).collect()),
                "at most 64",
            ),
        ]);
        for (w, why) in cases {
            let e = SteerSpec::try_from(&w).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_target_spec_needs_an_origin_host_and_a_tunnel_id() {
        let w = weft_proto::v1::SteerTarget {
            owner: "shadow/s1".into(),
            network: "s1-prod".into(),
            node: "web".into(),
            origin_host: "198.18.82.1".into(),
            tunnel_id: 12,
        };
        assert!(TargetSpec::try_from(&w).is_ok());
        let v6 = weft_proto::v1::SteerTarget {
            origin_host: "fd00:82::1".into(),
            ..w.clone()
        };
        assert_eq!(
            TargetSpec::try_from(&v6).unwrap().origin_host,
            "fd00:82::1".parse::<IpAddr>().unwrap()
        );
        // An IPv4-mapped address is the IPv4 address the tunnel's outer header carries.
        let mapped = weft_proto::v1::SteerTarget {
            origin_host: "::ffff:198.18.82.1".into(),
            ..w.clone()
        };
        assert_eq!(
            TargetSpec::try_from(&mapped).unwrap().origin_host,
            IpAddr::from([198, 18, 82, 1])
        );
        for (bad, why) in [
            (
                weft_proto::v1::SteerTarget {
                    tunnel_id: 16_777_216,
                    ..w.clone()
                },
                "tunnel_id",
            ),
            (
                weft_proto::v1::SteerTarget {
                    origin_host: "host-a".into(),
                    ..w.clone()
                },
                "origin_host \"host-a\" is not an IP address",
            ),
            (
                weft_proto::v1::SteerTarget {
                    origin_host: "0.0.0.0".into(),
                    ..w.clone()
                },
                "unicast",
            ),
        ] {
            let e = TargetSpec::try_from(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    fn link_event(name: &str, index: u32, del: bool) -> HostEvent {
        HostEvent {
            netns: None,
            at: Instant::now(),
            change: if del {
                Change::LinkDel {
                    ifindex: index,
                    name: name.into(),
                }
            } else {
                Change::LinkNew {
                    ifindex: index,
                    name: name.into(),
                    up: true,
                    kind: Some("veth".into()),
                }
            },
        }
    }

    #[test]
    fn drift_is_a_used_interface_deleted_or_made_anew() {
        let deps = vec![("s/a".to_string(), vec![("wn1".to_string(), 5)])];
        // Our own interface seen again as it is: nothing.
        assert!(drift_of(&[link_event("wn1", 5, false)], &deps).is_empty());
        // Someone else's: nothing.
        assert!(drift_of(&[link_event("wn2", 6, true)], &deps).is_empty());
        let d = drift_of(&[link_event("wn1", 5, true)], &deps);
        assert_eq!(d.len(), 1);
        let down = HostEvent {
            netns: None,
            at: Instant::now(),
            change: Change::LinkNew {
                ifindex: 5,
                name: "wn1".into(),
                up: false,
                kind: None,
            },
        };
        assert_eq!(drift_of(&[down], &deps)[0].what, "wn1 set down");
        assert_eq!(d[0].key, "s/a");
        let d = drift_of(
            &[link_event("wn1", 5, true), link_event("wn1", 9, false)],
            &deps,
        );
        assert_eq!(d.len(), 1, "one drift per key: {d:?}");
    }
}
