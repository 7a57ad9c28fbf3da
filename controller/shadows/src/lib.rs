//! weft-shadows: shadow environments. A shadow is a mirror of a production network
//! (weft-networks) that receives a sampled share of production's inbound connections,
//! replayed, and is compared with production per endpoint.
//!
//! ```text
//!  POST /shadows --> ShadowManager --NetworkManager::mirror--> networks `id` (+ `id-baseline`)
//!      record (store: shadows/<id>) --> ControlHub.publish_batch:
//!        shadow-tap  <id>/<node> on the production node's host  (policy, sinks: sink address:port)
//!        shadow-sink <id>/<node> on the host of the shadow's copy (port, peers, targets)
//!      agents' reports (measurements, ShadowReport) --> state, counters, analysis
//! ```
//!
//! A tap streams what it samples to its node's sink over the underlay: the tap needs the
//! sink host's underlay address, the sink the production host's (its only peer). While a
//! host has none (its agent gave none at registration), that node's tap and sink are not
//! published and the shadow is `degraded`, saying which host; [`ShadowManager::republish`]
//! (called when a host's underlay address changes, and at start) publishes them once it
//! has one. A policy change re-publishes the taps only (one map update in the kernel), and
//! the sinks too when `read_only` changed (the sink drops writes).

pub mod analysis;
pub mod record;
pub mod scaling;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::time::now_unix_ns;
use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{info, warn};
use weft_control::{ControlHub, ResourceKey, ResourceStatus, Spec, kinds};
use weft_networks::{Hosts, MirrorRequest, NetworkError, NetworkManager, Role};
use weft_proto::v1 as wire;
use weft_store::Store;

pub use analysis::EndpointAnalysis;
pub use record::{
    FailoverCheck, ShadowPolicy, ShadowRecord, SinkPlacement, SyntheticRun, baseline,
};

const STORE_PREFIX: &str = "shadows/";
const EVENT_CHANNEL: usize = 256;
/// Ports the sinks listen on (below the networks' replication ports, 40000..60000).
pub const SINK_PORTS: std::ops::RangeInclusive<u16> = 39_000..=39_999;
/// A node's limit is changed by autoscale at most this often.
pub const SCALE_COOLDOWN: Duration = Duration::from_secs(60);
/// How often the state of every shadow is looked at for `weft.shadow.degraded`.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// A field of the request is wrong.
    #[error("field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The id is taken (by a shadow or a network).
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Internal(String),
}

impl From<weft_store::StoreError> for ShadowError {
    fn from(e: weft_store::StoreError) -> Self {
        Self::Internal(format!("store: {e}"))
    }
}

impl ShadowError {
    /// A network manager's refusal while making the shadow's networks on `hosts`.
    fn from_network(e: NetworkError) -> Self {
        match e {
            NetworkError::Invalid(m) => Self::Invalid {
                field: "hosts".into(),
                message: m,
            },
            NetworkError::NotFound(m) => Self::Invalid {
                field: "production".into(),
                message: m,
            },
            NetworkError::Exists(m) | NetworkError::Conflict(m) => Self::Exists(m),
            NetworkError::Internal(m) | NetworkError::Timeout(m) => {
                Self::Internal(format!("networks: {m}"))
            }
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ShadowError {
    ShadowError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Something that happened to a shadow (the event streams carry them as CloudEvents).
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowEvent {
    Created {
        id: String,
        production: String,
        networks: Vec<String>,
        nodes: Vec<String>,
        hosts: Vec<String>,
        policy: ShadowPolicy,
        at_unix_ns: u64,
    },
    PolicyChanged {
        id: String,
        policy: ShadowPolicy,
        revision: u64,
        at_unix_ns: u64,
    },
    /// The shadow became degraded, or why it is changed.
    Degraded {
        id: String,
        error: String,
        at_unix_ns: u64,
    },
    Deleted {
        id: String,
        at_unix_ns: u64,
    },
    /// Synthetic load asked for (multiplier 0: a run stopped).
    SyntheticAsked {
        id: String,
        multiplier: f64,
        duration_seconds: u32,
        generation: u64,
        at_unix_ns: u64,
    },
    /// A scaling recommendation appeared (or its value changed), with its evidence.
    ScalingRecommended {
        id: String,
        view: ScalingView,
    },
    /// A recommendation was applied (the policy's `autoscale`): production's definition
    /// (and so its mirrors') has the new limit.
    ScalingApplied {
        id: String,
        view: ScalingView,
    },
    /// Production's node failed its health check and new connections go to the shadow
    /// (`active`), or it passes again and they go back (as the production host's steer
    /// reported it).
    Failover {
        id: String,
        node: String,
        active: bool,
        /// Seconds from the first failed check to the switch, when the agent measured it.
        switch_seconds: Option<f64>,
        at_unix_ns: u64,
    },
}

impl ShadowEvent {
    pub fn shadow(&self) -> &str {
        match self {
            Self::Created { id, .. }
            | Self::PolicyChanged { id, .. }
            | Self::Degraded { id, .. }
            | Self::Deleted { id, .. }
            | Self::Failover { id, .. }
            | Self::SyntheticAsked { id, .. }
            | Self::ScalingRecommended { id, .. }
            | Self::ScalingApplied { id, .. } => id,
        }
    }

    pub fn at_unix_ns(&self) -> u64 {
        match self {
            Self::Created { at_unix_ns, .. }
            | Self::PolicyChanged { at_unix_ns, .. }
            | Self::Degraded { at_unix_ns, .. }
            | Self::Deleted { at_unix_ns, .. }
            | Self::Failover { at_unix_ns, .. }
            | Self::SyntheticAsked { at_unix_ns, .. } => *at_unix_ns,
            Self::ScalingRecommended { view, .. } | Self::ScalingApplied { view, .. } => {
                view.at_unix_ns
            }
        }
    }
}

/// Create a shadow.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// The shadow's id and its network's; a TDL name.
    pub id: String,
    /// The production network (a source network).
    pub production: String,
    /// Production nodes sampled; empty: every node that declares ports.
    pub nodes: Vec<String>,
    /// Hypervisors to place the shadow on (required).
    pub hosts: Vec<String>,
    pub policy: ShadowPolicy,
    /// Also a second replica, `<id>-baseline`, as the noise baseline.
    pub noise_baseline: bool,
}

/// Counters summed over a shadow's taps and sinks (`ShadowCounters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShadowCounters {
    pub connections_seen: u64,
    /// Seen and eligible (port, source, window): what the share applies to. REST only
    /// (not in the wire's `ShadowCounters`).
    pub connections_eligible: u64,
    pub connections_sampled: u64,
    pub bytes_streamed: u64,
    pub connections_lost: u64,
    pub requests_replayed: u64,
    pub requests_skipped_write: u64,
    /// Requests not replayed because their key was out of the share (key `header`).
    pub requests_unsampled: u64,
    /// Connections the sinks replayed, and those whose replay failed. REST only.
    pub connections_replayed: u64,
    pub connections_failed: u64,
    /// New connections really sent to the shadow (divert, failover), by the steers of
    /// production's hosts. REST only.
    pub connections_diverted: u64,
    /// Production nodes whose traffic is failed over to the shadow now. REST only.
    pub nodes_failed_over: u64,
    /// Taps not copying now because their sinks take nothing (the agent's breaker:
    /// stopped or unreachable shadow side). REST only.
    pub taps_paused: u64,
    /// Synthetic load: connections opened and requests sent into the shadow, runs done.
    /// REST only.
    pub synthetic_connections: u64,
    pub synthetic_requests: u64,
    pub synthetic_runs_finished: u64,
}

/// The taps' measurements summed into the counters.
const TAP_COUNTERS: [&str; 6] = [
    "connections_seen",
    "connections_eligible",
    "connections_sampled",
    "bytes_streamed",
    "connections_lost",
    "paused",
];
/// The steers' (divert and failover).
const STEER_COUNTERS: [&str; 2] = ["connections_steered", "failover_active"];
/// The sinks'.
const SINK_COUNTERS: [&str; 8] = [
    "requests_replayed",
    "requests_skipped_write",
    "requests_unsampled",
    "connections_replayed",
    "connections_failed",
    "synthetic_connections",
    "synthetic_requests",
    "synthetic_runs_finished",
];

impl ShadowCounters {
    fn add(&mut self, name: &str, value: f64) {
        // Counters are whole numbers; a negative or NaN report counts nothing.
        let v = if value.is_finite() && value > 0.0 {
            value as u64
        } else {
            0
        };
        let slot = match name {
            "connections_seen" => &mut self.connections_seen,
            "connections_eligible" => &mut self.connections_eligible,
            "connections_replayed" => &mut self.connections_replayed,
            "connections_failed" => &mut self.connections_failed,
            "connections_sampled" => &mut self.connections_sampled,
            "bytes_streamed" => &mut self.bytes_streamed,
            "connections_lost" => &mut self.connections_lost,
            "requests_replayed" => &mut self.requests_replayed,
            "requests_skipped_write" => &mut self.requests_skipped_write,
            "requests_unsampled" => &mut self.requests_unsampled,
            "connections_steered" => &mut self.connections_diverted,
            "failover_active" => &mut self.nodes_failed_over,
            "paused" => &mut self.taps_paused,
            "synthetic_connections" => &mut self.synthetic_connections,
            "synthetic_requests" => &mut self.synthetic_requests,
            "synthetic_runs_finished" => &mut self.synthetic_runs_finished,
            _ => return,
        };
        *slot = slot.saturating_add(v);
    }

    pub fn to_wire(&self) -> wire::ShadowCounters {
        wire::ShadowCounters {
            connections_seen: self.connections_seen,
            connections_sampled: self.connections_sampled,
            bytes_streamed: self.bytes_streamed,
            connections_lost: self.connections_lost,
            requests_replayed: self.requests_replayed,
            requests_skipped_write: self.requests_skipped_write,
            requests_unsampled: self.requests_unsampled,
        }
    }
}

/// A shadow and its state now (`ShadowInfo`, with the wire's field names, plus where
/// each sink is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowInfo {
    pub id: String,
    pub production: String,
    pub nodes: Vec<String>,
    pub hosts: Vec<String>,
    pub policy: ShadowPolicy,
    pub networks: Vec<String>,
    /// `provisioning`, `sampling` or `degraded`.
    pub state: &'static str,
    pub error: String,
    pub created_unix_ns: u64,
    pub counters: ShadowCounters,
    pub analysis: Vec<EndpointAnalysis>,
    pub noise_baseline: bool,
    pub revision: u64,
    /// Sampled node -> its sink's host and port.
    pub sinks: BTreeMap<String, SinkPlacement>,
    /// The synthetic load asked for last. REST only.
    pub synthetic: Option<SyntheticRun>,
    /// Scaling recommendations in force (the latest per node and resource), and those
    /// applied (`applied`, with the policy's `autoscale`) that no newer one replaced.
    pub scaling: Vec<ScalingView>,
}

/// One scaling recommendation (`ShadowScaling`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingView {
    pub node: String,
    /// `cpu` (millis) or `memory` (bytes).
    pub resource: &'static str,
    pub current: u64,
    pub recommended: u64,
    pub reason: String,
    pub evidence: BTreeMap<String, f64>,
    pub at_unix_ns: u64,
    pub applied: bool,
}

/// Usage samples kept per shadow node (one per look, a second apart: ten minutes).
const USAGE_SAMPLES: usize = 600;

impl ShadowInfo {
    pub fn to_wire(&self) -> wire::ShadowInfo {
        wire::ShadowInfo {
            id: self.id.clone(),
            production: self.production.clone(),
            nodes: self.nodes.clone(),
            hosts: self.hosts.clone(),
            policy: Some(self.policy.to_wire()),
            networks: self.networks.clone(),
            state: self.state.into(),
            error: self.error.clone(),
            created_unix_ns: self.created_unix_ns,
            counters: Some(self.counters.to_wire()),
            analysis: self
                .analysis
                .iter()
                .map(|a| wire::ShadowEndpointAnalysis {
                    endpoint: a.endpoint.clone(),
                    production_requests: a.production_requests,
                    shadow_requests: a.shadow_requests,
                    production_error_rate: a.production_error_rate,
                    shadow_error_rate: a.shadow_error_rate,
                    production_p50_ms: a.production_p50_ms,
                    production_p99_ms: a.production_p99_ms,
                    shadow_p50_ms: a.shadow_p50_ms,
                    shadow_p99_ms: a.shadow_p99_ms,
                    latency_p_value: a.latency_p_value,
                    shadow_slower: a.shadow_slower,
                    compared: a.compared,
                    differing: a.differing,
                    differing_fields: a.differing_fields.clone().into_iter().collect(),
                    reference: a.reference.into(),
                    reference_error_rate: a.reference_error_rate,
                    reference_p99_ms: a.reference_p99_ms,
                    error_p_value: a.error_p_value,
                    shadow_errs_more: a.shadow_errs_more,
                })
                .collect(),
            scaling: self
                .scaling
                .iter()
                .map(|r| wire::ShadowScaling {
                    node: r.node.clone(),
                    resource: r.resource.into(),
                    current: r.current,
                    recommended: r.recommended,
                    reason: r.reason.clone(),
                    evidence: r.evidence.clone().into_iter().collect(),
                    at_unix_ns: r.at_unix_ns,
                    applied: r.applied,
                })
                .collect(),
        }
    }
}

/// Which of a shadow's resources a publish touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    taps: bool,
    sinks: bool,
}

const ALL: Parts = Parts {
    taps: true,
    sinks: true,
};

#[derive(Debug)]
pub struct ShadowManager {
    store: Arc<dyn Store>,
    hub: Arc<ControlHub>,
    networks: Arc<NetworkManager>,
    hosts: Arc<dyn Hosts>,
    records: Mutex<BTreeMap<String, ShadowRecord>>,
    /// Shadow -> why some of its nodes are not published (a host without an underlay
    /// address), as of its last publish.
    unpublished: Mutex<BTreeMap<String, String>>,
    /// Shadow -> the degraded error last told in an event.
    told: Mutex<BTreeMap<String, String>>,
    /// (shadow, node) -> whether production's node is failed over, as last told.
    failed_over: Mutex<BTreeMap<(String, String), bool>>,
    /// (shadow, node) -> the shadow copy's cgroup usage as its sink reported it, oldest
    /// first.
    usage: Mutex<BTreeMap<(String, String), std::collections::VecDeque<scaling::UsageSample>>>,
    /// Shadow -> its recommendations in force.
    recommendations: Mutex<BTreeMap<String, Vec<ScalingView>>>,
    /// Shadow -> the recommendations applied (the latest per node and resource).
    applied: Mutex<BTreeMap<String, Vec<ScalingView>>>,
    scaling_config: Mutex<scaling::ScalingConfig>,
    /// One create/update/delete at a time.
    ops: tokio::sync::Mutex<()>,
    events: broadcast::Sender<ShadowEvent>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A resource's key on its host: `<shadow>/<node>`.
pub fn resource_key(shadow: &str, node: &str) -> String {
    format!("{shadow}/{node}")
}

/// A shadow's `steer`/`steer-target` resource key: `shadow/<shadow>/<node>` (other
/// owners, weaves, steer too).
pub fn steer_key(shadow: &str, node: &str) -> String {
    format!("{STEER_OWNER_PREFIX}{shadow}/{node}")
}

const STEER_OWNER_PREFIX: &str = "shadow/";

/// The shadow a `shadow-tap`/`shadow-sink`/`steer`/`steer-target` resource belongs to.
pub fn shadow_of(rk: &ResourceKey) -> Option<&str> {
    if rk.kind == kinds::SHADOW_TAP || rk.kind == kinds::SHADOW_SINK {
        return rk.key.split_once('/').map(|(s, _)| s);
    }
    if rk.kind == kinds::STEER || rk.kind == kinds::STEER_TARGET {
        return rk
            .key
            .strip_prefix(STEER_OWNER_PREFIX)?
            .split_once('/')
            .map(|(s, _)| s);
    }
    None
}

/// The node of a shadow's resource (`<shadow>/<node>` or `shadow/<shadow>/<node>`).
fn node_of(rk: &ResourceKey) -> Option<&str> {
    shadow_of(rk)?;
    rk.key.rsplit_once('/').map(|(_, n)| n)
}

impl ShadowManager {
    /// Loads every shadow kept in `store`. Call [`Self::republish`] next (the networks
    /// first: the shadows' resources need the networks' placements).
    pub fn open(
        store: Arc<dyn Store>,
        hub: Arc<ControlHub>,
        networks: Arc<NetworkManager>,
        hosts: Arc<dyn Hosts>,
    ) -> Result<Arc<Self>, ShadowError> {
        let mut records = BTreeMap::new();
        for (key, bytes) in store.scan_prefix(STORE_PREFIX)? {
            let rec: ShadowRecord = serde_json::from_slice(&bytes).map_err(|e| {
                ShadowError::Internal(format!("store key {key}: not a shadow record: {e}"))
            })?;
            records.insert(rec.id.clone(), rec);
        }
        Ok(Arc::new(Self {
            store,
            hub,
            networks,
            hosts,
            records: Mutex::new(records),
            unpublished: Mutex::default(),
            told: Mutex::default(),
            failed_over: Mutex::default(),
            usage: Mutex::default(),
            recommendations: Mutex::default(),
            applied: Mutex::default(),
            scaling_config: Mutex::new(scaling::ScalingConfig::default()),
            ops: tokio::sync::Mutex::new(()),
            events: broadcast::channel(EVENT_CHANNEL).0,
        }))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ShadowEvent> {
        self.events.subscribe()
    }

    pub fn get(&self, id: &str) -> Option<ShadowRecord> {
        lock(&self.records).get(id).cloned()
    }

    pub fn list(&self) -> Vec<ShadowRecord> {
        lock(&self.records).values().cloned().collect()
    }

    /// Publishes every shadow's taps and sinks again (at start: the hub of a new epoch is
    /// empty; when a host's underlay address changed: nodes waiting for it go out).
    pub fn republish(&self) {
        for rec in self.list() {
            if let Err(e) = self.publish(&rec, ALL) {
                warn!(shadow = %rec.id, error = %e, "shadow not published");
            }
        }
    }

    fn persist(&self, rec: &ShadowRecord) -> Result<(), ShadowError> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| ShadowError::Internal(format!("encoding shadow {}: {e}", rec.id)))?;
        self.store
            .put(&format!("{STORE_PREFIX}{}", rec.id), &bytes)?;
        Ok(())
    }

    /// The taps and sinks `rec` wants, by host, and why some nodes have none.
    fn wanted(
        &self,
        rec: &ShadowRecord,
    ) -> (BTreeMap<String, BTreeMap<ResourceKey, Spec>>, Vec<String>) {
        let mut wanted: BTreeMap<String, BTreeMap<ResourceKey, Spec>> = BTreeMap::new();
        let mut missing = Vec::new();
        let Some(prod) = self.networks.get(&rec.production) else {
            missing.push(format!(
                "production network {:?} no longer exists: nothing is sampled",
                rec.production
            ));
            return (wanted, missing);
        };
        let policy = rec.policy.to_wire();
        let networks = rec.networks();
        for node in &rec.nodes {
            let Some(prod_host) = prod.placement.get(node) else {
                missing.push(format!(
                    "production node {node:?} is no longer in network {:?}",
                    rec.production
                ));
                continue;
            };
            let Some(sink) = rec.sinks.get(node) else {
                missing.push(format!("node {node:?} has no sink placed"));
                continue;
            };
            let (Some(prod_ul), Some(sink_ul)) = (
                self.hosts.underlay(prod_host),
                self.hosts.underlay(&sink.host),
            ) else {
                let without: Vec<&str> = [prod_host.as_str(), sink.host.as_str()]
                    .into_iter()
                    .filter(|h| self.hosts.underlay(h).is_none())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let hosts = if without.len() == 1 {
                    format!("host {} has", without[0])
                } else {
                    format!("hosts {} have", without.join(", "))
                };
                missing.push(format!(
                    "{hosts} no underlay address (an agent gives it at registration): node {node:?} is not sampled until then"
                ));
                continue;
            };
            let key = resource_key(&rec.id, node);
            wanted.entry(prod_host.clone()).or_default().insert(
                ResourceKey::new(kinds::SHADOW_TAP, &key),
                Spec::ShadowTap(wire::ShadowTap {
                    shadow: rec.id.clone(),
                    network: rec.production.clone(),
                    node: node.clone(),
                    policy: Some(policy.clone()),
                    sinks: vec![SocketAddr::new(sink_ul, sink.listen_port).to_string()],
                }),
            );
            wanted.entry(sink.host.clone()).or_default().insert(
                ResourceKey::new(kinds::SHADOW_SINK, &key),
                Spec::ShadowSink(wire::ShadowSink {
                    shadow: rec.id.clone(),
                    listen_port: u32::from(sink.listen_port),
                    peers: vec![prod_ul.to_string()],
                    targets: networks
                        .iter()
                        .map(|n| wire::ShadowTarget {
                            network: n.clone(),
                            node: node.clone(),
                        })
                        .collect(),
                    read_only: rec.policy.read_only,
                    synthetic: rec.synthetic.as_ref().map(SyntheticRun::to_wire),
                    sample: (rec.policy.key == "header").then(|| wire::ShadowKeySample {
                        header: rec.policy.header.clone(),
                        share_ppm: rec.policy.share_ppm,
                        seed: rec.policy.seed,
                    }),
                }),
            );
            // Divert and failover: new connections really go to the shadow's copy of the
            // node, steered in the production host's kernel (through a tunnel when the
            // copy is on another host). The tunnel id is the sink's port: unique on the
            // copy's host, so unique per host pair.
            let p = &rec.policy;
            if p.divert_ppm > 0 || p.failover.is_some() {
                let cross = sink.host != *prod_host;
                let skey = steer_key(&rec.id, node);
                let owner = format!("{STEER_OWNER_PREFIX}{}", rec.id);
                let tunnel_id = u32::from(sink.listen_port);
                wanted.entry(prod_host.clone()).or_default().insert(
                    ResourceKey::new(kinds::STEER, &skey),
                    Spec::Steer(wire::Steer {
                        owner: owner.clone(),
                        network: rec.production.clone(),
                        node: node.clone(),
                        ports: p.ports.clone(),
                        share_ppm: p.divert_ppm,
                        // Key "header" never diverts (checked); failover takes every
                        // connection whatever the key.
                        key: if p.key == "header" {
                            "connection".into()
                        } else {
                            p.key.clone()
                        },
                        seed: p.seed,
                        failover: policy.failover.clone(),
                        target_network: rec.id.clone(),
                        target_node: node.clone(),
                        target_host: if cross {
                            sink_ul.to_string()
                        } else {
                            String::new()
                        },
                        tunnel_id,
                        request_rules: Vec::new(),
                    }),
                );
                if cross {
                    wanted.entry(sink.host.clone()).or_default().insert(
                        ResourceKey::new(kinds::STEER_TARGET, &skey),
                        Spec::SteerTarget(wire::SteerTarget {
                            owner,
                            network: rec.id.clone(),
                            node: node.clone(),
                            origin_host: prod_ul.to_string(),
                            tunnel_id,
                        }),
                    );
                }
            }
        }
        (wanted, missing)
    }

    /// Publishes `rec`'s taps and/or sinks where they belong and withdraws those of its
    /// that are no longer wanted (anywhere).
    fn publish(&self, rec: &ShadowRecord, parts: Parts) -> Result<(), ShadowError> {
        let (wanted, missing) = self.wanted(rec);
        // Steers go with the taps: both follow the policy.
        let selected = |rk: &ResourceKey| {
            (parts.taps
                && (rk.kind == kinds::SHADOW_TAP
                    || rk.kind == kinds::STEER
                    || rk.kind == kinds::STEER_TARGET))
                || (parts.sinks && rk.kind == kinds::SHADOW_SINK)
        };
        let mut hosts: BTreeSet<String> = self.hub.hosts().into_iter().collect();
        hosts.extend(wanted.keys().cloned());
        for host in hosts {
            let want = wanted.get(&host);
            let mut changes: Vec<(ResourceKey, Option<Spec>)> = Vec::new();
            for rk in self.hub.desired(&host).resources.keys() {
                if shadow_of(rk) == Some(rec.id.as_str())
                    && selected(rk)
                    && want.is_none_or(|w| !w.contains_key(rk))
                {
                    changes.push((rk.clone(), None));
                }
            }
            if let Some(w) = want {
                changes.extend(
                    w.iter()
                        .filter(|(rk, _)| selected(rk))
                        .map(|(k, s)| (k.clone(), Some(s.clone()))),
                );
            }
            if !changes.is_empty() {
                self.hub.publish_batch(&host, changes);
            }
        }
        let mut unpublished = lock(&self.unpublished);
        if missing.is_empty() {
            unpublished.remove(&rec.id);
        } else {
            let why = missing.join("; ");
            warn!(shadow = %rec.id, %why, "shadow nodes not published");
            unpublished.insert(rec.id.clone(), why);
        }
        Ok(())
    }

    /// Withdraws the shadow's resources of one kind from every host.
    fn withdraw(&self, id: &str, kind: &str) {
        for host in self.hub.hosts() {
            let changes: Vec<(ResourceKey, Option<Spec>)> = self
                .hub
                .desired(&host)
                .resources
                .keys()
                .filter(|rk| rk.kind == kind && shadow_of(rk) == Some(id))
                .map(|rk| (rk.clone(), None))
                .collect();
            if !changes.is_empty() {
                self.hub.publish_batch(&host, changes);
            }
        }
    }

    /// Checks a create request; returns the production nodes to sample, sorted.
    fn check(&self, req: &CreateRequest) -> Result<Vec<String>, ShadowError> {
        weft_tdl::check_name(&req.id).map_err(|e| invalid("id", e))?;
        if req.noise_baseline {
            weft_tdl::check_name(&baseline(&req.id)).map_err(|e| {
                invalid(
                    "id",
                    format!(
                        "with a noise baseline, {:?} must be a name too: {e}",
                        baseline(&req.id)
                    ),
                )
            })?;
        }
        if req.production.trim().is_empty() {
            return Err(invalid("production", "name the production network"));
        }
        let prod = self.networks.get(&req.production).ok_or_else(|| {
            invalid(
                "production",
                format!("network {:?} does not exist", req.production),
            )
        })?;
        if let Role::Mirror { .. } = prod.role {
            return Err(invalid(
                "production",
                format!(
                    "network {:?} is a mirror; shadow a source network",
                    req.production
                ),
            ));
        }
        let nodes: Vec<String> = if req.nodes.is_empty() {
            let n: Vec<String> = prod
                .network
                .nodes
                .iter()
                .filter(|(_, n)| !n.ports.is_empty())
                .map(|(name, _)| name.clone())
                .collect();
            if n.is_empty() {
                return Err(invalid(
                    "nodes",
                    format!(
                        "no node of network {:?} declares ports; name the nodes to sample",
                        req.production
                    ),
                ));
            }
            n
        } else {
            for (i, n) in req.nodes.iter().enumerate() {
                if !prod.network.nodes.contains_key(n) {
                    return Err(invalid(
                        format!("nodes[{i}]"),
                        format!(
                            "network {:?} has no node {n:?} (it has {})",
                            req.production,
                            prod.network
                                .nodes
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            let set: BTreeSet<String> = req.nodes.iter().cloned().collect();
            set.into_iter().collect()
        };
        if req.hosts.is_empty() {
            return Err(invalid(
                "hosts",
                "say where to place the shadow (one or more hypervisor ids)",
            ));
        }
        for (i, h) in req.hosts.iter().enumerate() {
            if h.trim().is_empty() {
                return Err(invalid(format!("hosts[{i}]"), "empty host id"));
            }
        }
        Ok(nodes)
    }

    /// Free sink ports on `host`, lowest first, given what the shadows hold.
    fn free_port(
        records: &BTreeMap<String, ShadowRecord>,
        taken: &BTreeSet<(String, u16)>,
        host: &str,
    ) -> Option<u16> {
        let used: BTreeSet<u16> = records
            .values()
            .flat_map(|r| r.sinks.values())
            .filter(|s| s.host == host)
            .map(|s| s.listen_port)
            .chain(taken.iter().filter(|(h, _)| h == host).map(|(_, p)| *p))
            .collect();
        SINK_PORTS.clone().find(|p| !used.contains(p))
    }

    /// Makes the shadow's networks (mirrors of production placed on `hosts`), places a
    /// sink per sampled node where the shadow's copy is, and publishes taps and sinks.
    pub async fn create(&self, req: CreateRequest) -> Result<ShadowInfo, ShadowError> {
        let nodes = self.check(&req)?;
        let policy = req.policy.clone().checked()?;
        let _op = self.ops.lock().await;
        if lock(&self.records).contains_key(&req.id) {
            return Err(ShadowError::Exists(format!(
                "shadow {:?} exists; delete it first or pick another id",
                req.id
            )));
        }
        let mut ids = vec![req.id.clone()];
        if req.noise_baseline {
            ids.push(baseline(&req.id));
        }
        for n in &ids {
            if self.networks.get(n).is_some() {
                return Err(ShadowError::Exists(format!(
                    "a network named {n:?} exists; pick another shadow id"
                )));
            }
        }
        let mut made: Vec<String> = Vec::new();
        let result = self.install(&req, nodes, policy, &ids, &mut made).await;
        match result {
            Ok(info) => Ok(info),
            Err(e) => {
                // Nothing of it stays.
                for n in made.iter().rev() {
                    if let Err(d) = self.networks.delete(n).await {
                        warn!(shadow = %req.id, network = %n, error = %d, "shadow network not removed after a failed create");
                    }
                }
                Err(e)
            }
        }
    }

    async fn install(
        &self,
        req: &CreateRequest,
        nodes: Vec<String>,
        policy: ShadowPolicy,
        ids: &[String],
        made: &mut Vec<String>,
    ) -> Result<ShadowInfo, ShadowError> {
        let mut placements = Vec::new();
        for n in ids {
            let rec = self
                .networks
                .mirror(MirrorRequest {
                    source: Some(req.production.clone()),
                    destination: n.clone(),
                    hosts: req.hosts.clone(),
                    ..Default::default()
                })
                .await
                .map_err(ShadowError::from_network)?;
            made.push(n.clone());
            placements.push(rec.placement);
        }
        let mut sinks = BTreeMap::new();
        let records = lock(&self.records).clone();
        let mut taken = BTreeSet::new();
        for node in &nodes {
            let host = placements[0].get(node).cloned().ok_or_else(|| {
                ShadowError::Internal(format!("the shadow's copy of node {node:?} is not placed"))
            })?;
            if let Some(b) = placements.get(1)
                && b.get(node) != Some(&host)
            {
                return Err(invalid(
                    "hosts",
                    format!(
                        "the noise baseline's copy of node {node:?} was placed on {:?}, the shadow's on {host:?}: the sink replays into both on one host",
                        b.get(node)
                    ),
                ));
            }
            let port = Self::free_port(&records, &taken, &host).ok_or_else(|| {
                invalid(
                    "hosts",
                    format!(
                        "host {host:?} has no free sink port left ({}..={})",
                        SINK_PORTS.start(),
                        SINK_PORTS.end()
                    ),
                )
            })?;
            taken.insert((host.clone(), port));
            sinks.insert(
                node.clone(),
                SinkPlacement {
                    host,
                    listen_port: port,
                },
            );
        }
        let rec = ShadowRecord {
            id: req.id.clone(),
            production: req.production.clone(),
            nodes,
            hosts: req.hosts.clone(),
            policy,
            noise_baseline: req.noise_baseline,
            sinks,
            created_unix_ns: now_unix_ns(),
            revision: 1,
            synthetic: None,
        };
        self.persist(&rec)?;
        lock(&self.records).insert(rec.id.clone(), rec.clone());
        if let Err(e) = self.publish(&rec, ALL) {
            self.forget(&rec.id);
            return Err(e);
        }
        info!(shadow = %rec.id, production = %rec.production, nodes = ?rec.nodes, "shadow created");
        let _ = self.events.send(ShadowEvent::Created {
            id: rec.id.clone(),
            production: rec.production.clone(),
            networks: rec.networks(),
            nodes: rec.nodes.clone(),
            hosts: rec.hosts.clone(),
            policy: rec.policy.clone(),
            at_unix_ns: now_unix_ns(),
        });
        Ok(self.info_of(&rec))
    }

    /// Removes a record and its resources (a failed create).
    fn forget(&self, id: &str) {
        self.withdraw(id, kinds::STEER);
        self.withdraw(id, kinds::STEER_TARGET);
        self.withdraw(id, kinds::SHADOW_TAP);
        self.withdraw(id, kinds::SHADOW_SINK);
        lock(&self.records).remove(id);
        lock(&self.unpublished).remove(id);
        if let Err(e) = self.store.delete(&format!("{STORE_PREFIX}{id}")) {
            warn!(shadow = %id, error = %e, "shadow record not removed");
        }
    }

    /// Replaces the sampling policy: the taps are published again (one map update on each
    /// production host), the sinks only when `read_only` changed.
    pub async fn update_policy(
        &self,
        id: &str,
        policy: ShadowPolicy,
    ) -> Result<ShadowInfo, ShadowError> {
        let policy = policy.checked()?;
        let _op = self.ops.lock().await;
        let old = self.get(id).ok_or_else(|| missing(id))?;
        if old.policy == policy {
            return Ok(self.info_of(&old));
        }
        let rec = ShadowRecord {
            policy: policy.clone(),
            revision: old.revision + 1,
            ..old.clone()
        };
        self.persist(&rec)?;
        lock(&self.records).insert(id.to_owned(), rec.clone());
        self.publish(
            &rec,
            Parts {
                taps: true,
                sinks: old.policy.read_only != policy.read_only,
            },
        )?;
        info!(shadow = %id, share_ppm = policy.share_ppm, "shadow policy changed");
        let _ = self.events.send(ShadowEvent::PolicyChanged {
            id: id.to_owned(),
            policy,
            revision: rec.revision,
            at_unix_ns: now_unix_ns(),
        });
        Ok(self.info_of(&rec))
    }

    /// Asks the sinks for synthetic load: what they recorded replayed into the shadow at
    /// `multiplier` times its rate for `duration_seconds` (a new run each call);
    /// `multiplier` 0 stops a run. Only the sinks are published again.
    pub async fn synthetic(
        &self,
        id: &str,
        multiplier: f64,
        duration_seconds: u32,
    ) -> Result<ShadowInfo, ShadowError> {
        let _op = self.ops.lock().await;
        let old = self.get(id).ok_or_else(|| missing(id))?;
        let generation = old.synthetic.as_ref().map_or(1, |s| s.generation + 1);
        let run = if multiplier == 0.0 {
            None
        } else {
            Some(SyntheticRun::checked(
                multiplier,
                duration_seconds,
                generation,
                now_unix_ns(),
            )?)
        };
        let rec = ShadowRecord {
            synthetic: run.clone(),
            revision: old.revision + 1,
            ..old
        };
        self.persist(&rec)?;
        lock(&self.records).insert(id.to_owned(), rec.clone());
        self.publish(
            &rec,
            Parts {
                taps: false,
                sinks: true,
            },
        )?;
        info!(shadow = %id, multiplier, duration_seconds, "synthetic load asked for");
        let _ = self.events.send(ShadowEvent::SyntheticAsked {
            id: id.to_owned(),
            multiplier: run.as_ref().map_or(0.0, SyntheticRun::multiplier),
            duration_seconds: run.as_ref().map_or(0, |r| r.duration_seconds),
            generation: run.as_ref().map_or(0, |r| r.generation),
            at_unix_ns: now_unix_ns(),
        });
        Ok(self.info_of(&rec))
    }

    /// Stops sampling (the taps go first), then replay (the sinks), then removes the
    /// shadow's networks. Returns the shadow as it last was.
    pub async fn delete(&self, id: &str) -> Result<ShadowInfo, ShadowError> {
        let _op = self.ops.lock().await;
        let rec = self.get(id).ok_or_else(|| missing(id))?;
        let last = self.info_of(&rec);
        // New connections stop going to the shadow first (divert, failover).
        self.withdraw(id, kinds::STEER);
        self.withdraw(id, kinds::STEER_TARGET);
        self.withdraw(id, kinds::SHADOW_TAP);
        self.withdraw(id, kinds::SHADOW_SINK);
        self.store.delete(&format!("{STORE_PREFIX}{id}"))?;
        lock(&self.records).remove(id);
        lock(&self.unpublished).remove(id);
        lock(&self.told).remove(id);
        lock(&self.failed_over).retain(|(s, _), _| s != id);
        lock(&self.usage).retain(|(s, _), _| s != id);
        lock(&self.recommendations).remove(id);
        lock(&self.applied).remove(id);
        for n in rec.networks().iter().rev() {
            match self.networks.delete(n).await {
                Ok(_) | Err(NetworkError::NotFound(_)) => {}
                Err(e) => {
                    warn!(shadow = %id, network = %n, error = %e, "shadow network not removed")
                }
            }
        }
        info!(shadow = %id, "shadow deleted");
        let _ = self.events.send(ShadowEvent::Deleted {
            id: id.to_owned(),
            at_unix_ns: now_unix_ns(),
        });
        Ok(last)
    }

    /// The shadow with its state, counters and analysis as last reported.
    pub fn info(&self, id: &str) -> Option<ShadowInfo> {
        self.get(id).map(|r| self.info_of(&r))
    }

    /// Every shadow with its state (the hosts' states are read once for all).
    pub fn infos(&self) -> Vec<ShadowInfo> {
        let statuses = self.statuses();
        self.list()
            .iter()
            .map(|r| self.info_with(r, &statuses, true))
            .collect()
    }

    /// Every host's desired state against its reports.
    fn statuses(&self) -> Vec<weft_control::HostStatus> {
        self.hub
            .hosts()
            .iter()
            .filter_map(|h| self.hub.status(h))
            .collect()
    }

    fn info_of(&self, rec: &ShadowRecord) -> ShadowInfo {
        self.info_with(rec, &self.statuses(), true)
    }

    /// `analyse`: decode the sinks' histograms and compare (else `analysis` is empty: the
    /// state alone is wanted).
    fn info_with(
        &self,
        rec: &ShadowRecord,
        statuses: &[weft_control::HostStatus],
        analyse: bool,
    ) -> ShadowInfo {
        let mut errors: Vec<String> = lock(&self.unpublished)
            .get(&rec.id)
            .cloned()
            .into_iter()
            .collect();
        let mut pending = false;
        let mut counters = ShadowCounters::default();
        let mut reports = Vec::new();
        let mut published = 0usize;
        for st in statuses {
            let host = &st.host;
            for r in &st.resources {
                if shadow_of(&r.resource) != Some(rec.id.as_str()) || r.desired_generation.is_none()
                {
                    continue;
                }
                published += 1;
                let rk = &r.resource;
                match &r.observed {
                    Some(o) if o.status == ResourceStatus::Failed => {
                        errors.push(format!("{} {} on {host}: {}", rk.kind, rk.key, o.error));
                    }
                    Some(o) if o.status == ResourceStatus::Unsupported => {
                        errors.push(format!(
                            "{} {} on {host}: the agent has no reconciler for kind {:?} (upgrade it)",
                            rk.kind, rk.key, rk.kind
                        ));
                    }
                    _ if !r.applied() => pending = true,
                    _ => {}
                }
                if let Some(o) = &r.observed {
                    let names: &[&str] = if rk.kind == kinds::SHADOW_TAP {
                        &TAP_COUNTERS
                    } else if rk.kind == kinds::STEER {
                        &STEER_COUNTERS
                    } else if rk.kind == kinds::SHADOW_SINK {
                        &SINK_COUNTERS
                    } else {
                        &[]
                    };
                    for n in names {
                        if let Some(v) = o.measurements.get(*n) {
                            counters.add(n, *v);
                        }
                    }
                    if rk.kind == kinds::SHADOW_SINK
                        && let Some(report) = &o.shadow
                    {
                        reports.push(report.clone());
                    }
                }
            }
        }
        for n in rec.networks() {
            match self.networks.status(&n) {
                None => errors.push(format!("the shadow's network {n:?} no longer exists")),
                Some(s) if !s.in_sync => pending = true,
                Some(_) => {}
            }
        }
        let (analysis, problems) = if analyse {
            analysis::analyse(reports.iter())
        } else {
            (Vec::new(), Vec::new())
        };
        for p in problems {
            warn!(shadow = %rec.id, problem = %p, "shadow report not analysed");
        }
        let state = if !errors.is_empty() {
            "degraded"
        } else if pending || published == 0 {
            "provisioning"
        } else {
            "sampling"
        };
        ShadowInfo {
            id: rec.id.clone(),
            production: rec.production.clone(),
            nodes: rec.nodes.clone(),
            hosts: rec.hosts.clone(),
            policy: rec.policy.clone(),
            networks: rec.networks(),
            state,
            error: errors.join("; "),
            created_unix_ns: rec.created_unix_ns,
            counters,
            analysis,
            noise_baseline: rec.noise_baseline,
            revision: rec.revision,
            sinks: rec.sinks.clone(),
            synthetic: rec.synthetic.clone(),
            scaling: self.scaling_of(&rec.id),
        }
    }

    /// Tells `weft.shadow.degraded` for every shadow that became degraded (or whose reason
    /// changed) since the last look. Returns the events sent.
    pub fn check_degraded(&self) -> usize {
        // A production network deleted under a shadow: its taps sample nothing that
        // exists any more; they (and the sinks) are withdrawn once.
        for rec in self.list() {
            let gone = self.networks.get(&rec.production).is_none();
            let known = lock(&self.unpublished)
                .get(&rec.id)
                .is_some_and(|m| m.contains("no longer exists"));
            if gone
                && !known
                && let Err(e) = self.publish(&rec, ALL)
            {
                warn!(shadow = %rec.id, error = %e, "shadow not withdrawn");
            }
        }
        let statuses = self.statuses();
        let mut sent = self.tell_failovers(&statuses);
        let states: Vec<ShadowInfo> = self
            .list()
            .iter()
            .map(|r| self.info_with(r, &statuses, false))
            .collect();
        for info in states {
            let mut told = lock(&self.told);
            if info.state == "degraded" {
                if told.get(&info.id) != Some(&info.error) {
                    told.insert(info.id.clone(), info.error.clone());
                    drop(told);
                    warn!(shadow = %info.id, error = %info.error, "shadow degraded");
                    let _ = self.events.send(ShadowEvent::Degraded {
                        id: info.id.clone(),
                        error: info.error,
                        at_unix_ns: now_unix_ns(),
                    });
                    sent += 1;
                }
            } else {
                told.remove(&info.id);
            }
        }
        sent
    }

    /// Tells `weft.shadow.failover` for every production node whose steer reported a
    /// switch (to the shadow or back) since the last look. Returns the events sent.
    fn tell_failovers(&self, statuses: &[weft_control::HostStatus]) -> usize {
        let mut now: BTreeMap<(String, String), (bool, Option<f64>)> = BTreeMap::new();
        for st in statuses {
            for r in &st.resources {
                let rk = &r.resource;
                if rk.kind != kinds::STEER || r.desired_generation.is_none() {
                    continue;
                }
                let (Some(shadow), Some(node), Some(o)) = (shadow_of(rk), node_of(rk), &r.observed)
                else {
                    continue;
                };
                let Some(active) = o.measurements.get("failover_active") else {
                    continue;
                };
                now.insert(
                    (shadow.to_owned(), node.to_owned()),
                    (
                        *active >= 1.0,
                        o.measurements.get("failover_switch_seconds").copied(),
                    ),
                );
            }
        }
        let mut told = lock(&self.failed_over);
        let mut sent = 0;
        for ((shadow, node), (active, switch_seconds)) in now {
            let before = told.insert((shadow.clone(), node.clone()), active);
            // The first report of a node that is not failed over is no news.
            if before.unwrap_or(false) == active {
                continue;
            }
            if active {
                warn!(shadow = %shadow, node = %node, "production failed its health check: new connections go to the shadow");
            } else {
                info!(shadow = %shadow, node = %node, "production passes its health check again: new connections go back");
            }
            let _ = self.events.send(ShadowEvent::Failover {
                id: shadow,
                node,
                active,
                switch_seconds,
                at_unix_ns: now_unix_ns(),
            });
            sent += 1;
        }
        sent
    }

    /// The rules of the scaling recommendations (default: [`scaling::ScalingConfig`]'s).
    pub fn set_scaling_config(&self, cfg: scaling::ScalingConfig) {
        *lock(&self.scaling_config) = cfg;
    }

    /// Takes one usage sample of every sampled node's shadow copy (the measurements
    /// `shadow_cpu_seconds`, ... its sink reports) and recomputes the scaling
    /// recommendations ([`scaling::recommend`]) from the samples, the copy's limits (the
    /// shadow network's definition) and the sink's latency comparison. Reported only.
    pub fn sample_usage(&self) {
        let cfg = *lock(&self.scaling_config);
        let now = now_unix_ns();
        for rec in self.list() {
            let Some(net) = self.networks.get(&rec.id) else {
                continue;
            };
            let mut views = Vec::new();
            for (node, sink) in &rec.sinks {
                let rk = ResourceKey::new(kinds::SHADOW_SINK, &resource_key(&rec.id, node));
                let observed = self.hub.observed(&sink.host);
                let Some(o) = observed.resources.get(&rk) else {
                    continue;
                };
                let m: std::collections::HashMap<String, f64> = o
                    .measurements
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                let Some(sample) = scaling::UsageSample::from_measurements(&m, "shadow", now)
                else {
                    continue;
                };
                let samples: Vec<scaling::UsageSample> = {
                    let mut usage = lock(&self.usage);
                    let q = usage.entry((rec.id.clone(), node.clone())).or_default();
                    if q.len() == USAGE_SAMPLES {
                        q.pop_front();
                    }
                    q.push_back(sample);
                    q.iter().copied().collect()
                };
                let limits = net
                    .network
                    .nodes
                    .get(node)
                    .map(|n| scaling::Limits {
                        cpu_millis: n.cpu_millis.unwrap_or(0),
                        memory_bytes: n.memory_bytes.unwrap_or(0),
                    })
                    .unwrap_or_default();
                let latency = o.shadow.as_ref().and_then(|r| {
                    let (a, _) = analysis::analyse([r]);
                    (!a.is_empty()).then(|| scaling::Latency {
                        shadow_p99_ms: a.iter().map(|e| e.shadow_p99_ms).fold(0.0, f64::max),
                        reference_p99_ms: a.iter().map(|e| e.reference_p99_ms).fold(0.0, f64::max),
                        slower: a.iter().any(|e| e.shadow_slower),
                    })
                });
                for r in scaling::recommend(&samples, limits, latency, &cfg) {
                    views.push(ScalingView {
                        node: node.clone(),
                        resource: r.resource.name(),
                        current: r.current,
                        recommended: r.recommended,
                        reason: r.reason,
                        evidence: r.evidence,
                        at_unix_ns: now,
                        applied: false,
                    });
                }
            }
            let mut recs = lock(&self.recommendations);
            for v in &views {
                let known = recs.get(&rec.id).is_some_and(|old| {
                    old.iter().any(|o| {
                        o.node == v.node
                            && o.resource == v.resource
                            && o.recommended == v.recommended
                    })
                });
                if !known {
                    info!(shadow = %rec.id, node = %v.node, resource = v.resource, current = v.current, recommended = v.recommended, reason = %v.reason, "scaling recommended");
                    let _ = self.events.send(ShadowEvent::ScalingRecommended {
                        id: rec.id.clone(),
                        view: v.clone(),
                    });
                }
            }
            // The latest per node and resource: a node that calls for nothing now keeps
            // none.
            if views.is_empty() {
                recs.remove(&rec.id);
            } else {
                recs.insert(rec.id.clone(), views);
            }
        }
    }

    /// The recommendations in force, and those applied that no newer one replaced.
    fn scaling_of(&self, id: &str) -> Vec<ScalingView> {
        let mut out = lock(&self.recommendations)
            .get(id)
            .cloned()
            .unwrap_or_default();
        for a in lock(&self.applied).get(id).into_iter().flatten() {
            if !out.iter().any(|v| {
                v.node == a.node && v.resource == a.resource && v.at_unix_ns > a.at_unix_ns
            }) {
                out.push(a.clone());
            }
        }
        out
    }

    /// Applies the recommendations of every shadow whose policy has `autoscale`: the
    /// production network's definition gets the recommended CPU or memory limit
    /// ([`NetworkManager::update`]); its mirrors, the shadow and its noise baseline among
    /// them, follow, and the agents change the limits in place (nothing restarts). The
    /// node's usage samples start over (the window saw the old limit); a node and
    /// resource is changed at most once per [`SCALE_COOLDOWN`]. Returns the changes made.
    pub async fn autoscale(&self) -> usize {
        let mut made = 0;
        for rec in self.list() {
            if !rec.policy.autoscale {
                continue;
            }
            let now = now_unix_ns();
            let todo: Vec<ScalingView> = lock(&self.recommendations)
                .get(&rec.id)
                .into_iter()
                .flatten()
                .filter(|v| {
                    !lock(&self.applied)
                        .get(&rec.id)
                        .into_iter()
                        .flatten()
                        .any(|a| {
                            a.node == v.node
                                && a.resource == v.resource
                                && now.saturating_sub(a.at_unix_ns)
                                    < SCALE_COOLDOWN.as_nanos() as u64
                        })
                })
                .cloned()
                .collect();
            if todo.is_empty() {
                continue;
            }
            let Some(prod) = self.networks.get(&rec.production) else {
                continue;
            };
            let mut net = prod.network.clone();
            let mut changed = Vec::new();
            for v in todo {
                let Some(n) = net.nodes.get_mut(&v.node) else {
                    continue;
                };
                match v.resource {
                    "cpu" => n.cpu_millis = Some(u32::try_from(v.recommended).unwrap_or(u32::MAX)),
                    "memory" => n.memory_bytes = Some(v.recommended),
                    _ => continue,
                }
                changed.push(v);
            }
            if changed.is_empty() {
                continue;
            }
            let tdl = weft_tdl::format(&net);
            let _op = self.ops.lock().await;
            if let Err(e) = self
                .networks
                .update(&rec.production, &tdl, &prod.file_name)
                .await
            {
                warn!(shadow = %rec.id, production = %rec.production, error = %e, "scaling not applied");
                continue;
            }
            for mut v in changed {
                v.applied = true;
                v.at_unix_ns = now_unix_ns();
                info!(shadow = %rec.id, node = %v.node, resource = v.resource, from = v.current, to = v.recommended, "scaling applied to production and its mirrors");
                lock(&self.usage).remove(&(rec.id.clone(), v.node.clone()));
                if let Some(r) = lock(&self.recommendations).get_mut(&rec.id) {
                    r.retain(|o| !(o.node == v.node && o.resource == v.resource));
                }
                let mut applied = lock(&self.applied);
                let list = applied.entry(rec.id.clone()).or_default();
                list.retain(|o| !(o.node == v.node && o.resource == v.resource));
                list.push(v.clone());
                drop(applied);
                let _ = self.events.send(ShadowEvent::ScalingApplied {
                    id: rec.id.clone(),
                    view: v,
                });
                made += 1;
            }
        }
        made
    }

    /// Looks at every shadow's state once a second ([`Self::check_degraded`]) until the
    /// manager is dropped. Needs a runtime.
    pub fn follow(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let this = Arc::downgrade(self);
        Some(rt.spawn(async move {
            let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                this.check_degraded();
                this.sample_usage();
                this.autoscale().await;
            }
        }))
    }
}

fn missing(id: &str) -> ShadowError {
    ShadowError::NotFound(format!(
        "shadow {id:?} does not exist; list the shadows with GET /shadows"
    ))
}
