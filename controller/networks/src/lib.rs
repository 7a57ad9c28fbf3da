//! weft-networks: networks defined in TDL (weft-tdl) and their mirrors, made real by the
//! agents.
//!
//! ```text
//!  POST /networks (TDL) --> NetworkManager --plan, VNI, addresses (ShardManager)-->
//!      record (store: networks/<id>) --resources::by_host--> ControlHub.publish_batch
//!      --> agents: network-segment + network-node reconcilers --> reports --> status
//! ```
//!
//! A node's addresses come from the IP shards of the TDL's `addressing.shards` network
//! (the node's shard workload is `<network>.<node>`), so a shard migration re-addresses
//! nodes like any workload: the shard manager's publish for such a workload reaches
//! [`NetworkManager::node_addresses`], which rewrites the node (and its peers' firewall
//! rules) instead of publishing `workload-addresses`.
//!
//! A mirror is a network of its own (own id, own VNI, own bridges, placed where asked)
//! built from its source's definition with the source's addresses: the same services at
//! the same addresses in an isolated layer 2, as a disaster-recovery or test copy needs.
//! Every change of the source (a new TDL, a migrated address) is applied to its mirrors.

pub mod record;
pub mod resources;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use agent_common::time::now_unix_ns;
use tokio::sync::broadcast;
use tracing::{info, warn};
use weft_control::{ControlHub, ResourceKey, Spec, kinds};
use weft_shards::publish::AddressAssignment;
use weft_shards::{Family, ShardManager};
use weft_store::Store;

pub use record::{
    CloneFrom, HandChanges, HandRule, HistoryEntry, NetworkRecord, NodeAddress, Role, SourceDrift,
    SyncFrom, history_key, history_prefix, node_key, node_workload, split_node_workload,
};
pub use resources::SnapshotPolicy;
pub use status::{HostNetworkStatus, NetworkStatus, ResourceStatusView};

const STORE_PREFIX: &str = "networks/";
/// VNIs weft assigns start here (lower ones are left to networks that name theirs).
const FIRST_VNI: u32 = 10_000;
const EVENT_CHANNEL: usize = 256;

/// What the manager needs to know of the hypervisors.
pub trait Hosts: Send + Sync + std::fmt::Debug {
    /// The host's underlay address (its agent's `--underlay-address`).
    fn underlay(&self, host: &str) -> Option<IpAddr>;
    /// Hosts whose agents can make networks (they announced the network kinds), sorted.
    fn network_hosts(&self) -> Vec<String>;
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request or the TDL is wrong; the message says what and where.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A network with that id exists.
    #[error("{0}")]
    Exists(String),
    /// Another conflict (a VNI another network has).
    #[error("{0}")]
    Conflict(String),
    /// The agents did not answer in time (an agent offline, a snapshot or sync slow).
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl From<weft_store::StoreError> for NetworkError {
    fn from(e: weft_store::StoreError) -> Self {
        Self::Internal(format!("store: {e}"))
    }
}

/// Something that happened to a network (the event streams carry them as CloudEvents).
/// `at_unix_ns`: when the controller made the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkEvent {
    Created {
        id: String,
        role: &'static str,
        hosts: Vec<String>,
        nodes: usize,
        at_unix_ns: u64,
    },
    Updated {
        id: String,
        changes: Vec<String>,
        revision: u64,
        at_unix_ns: u64,
    },
    /// A mirror took its source's state.
    Synced {
        id: String,
        source: String,
        revision: u64,
        at_unix_ns: u64,
    },
    Deleted {
        id: String,
        at_unix_ns: u64,
    },
    /// A change made by hand in a source node was taken into the source's desired state
    /// and carried to its mirrors.
    DriftPropagated {
        id: String,
        node: String,
        host: String,
        changes: Vec<String>,
        /// The mirrors it was carried to.
        mirrors: Vec<String>,
        /// Rules of shapes weft does not write: kept in the source, not carried.
        foreign_rules: Vec<String>,
        at_unix_ns: u64,
    },
}

impl NetworkEvent {
    /// The network the event is about.
    pub fn network(&self) -> &str {
        match self {
            Self::Created { id, .. }
            | Self::Updated { id, .. }
            | Self::Synced { id, .. }
            | Self::Deleted { id, .. }
            | Self::DriftPropagated { id, .. } => id,
        }
    }

    pub fn at_unix_ns(&self) -> u64 {
        match self {
            Self::Created { at_unix_ns, .. }
            | Self::Updated { at_unix_ns, .. }
            | Self::Synced { at_unix_ns, .. }
            | Self::Deleted { at_unix_ns, .. }
            | Self::DriftPropagated { at_unix_ns, .. } => *at_unix_ns,
        }
    }
}

/// Create a network from a TDL.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub tdl: String,
    /// For error messages (`prod.tdl:7:3: ...`).
    pub file_name: String,
    /// Where it may be placed; empty: every host whose agent can make networks.
    pub hosts: Vec<String>,
    /// What happens to changes made by hand in its nodes.
    pub source_drift: SourceDrift,
}

/// Make a weave's network ([`NetworkManager::weave`]).
#[derive(Debug, Clone)]
pub struct WeaveRequest {
    /// The environment (a source network).
    pub environment: String,
    /// Its revision the weave is made from.
    pub from: HistoryEntry,
    /// The weave's (and its network's) id.
    pub id: String,
    /// Node -> host (every node of `from`).
    pub placement: BTreeMap<String, String>,
    /// Nodes with volumes -> the snapshot their volumes are cloned from.
    pub clones: BTreeMap<String, CloneFrom>,
}

/// Create a mirror: of a source network, or of a TDL.
#[derive(Debug, Clone, Default)]
pub struct MirrorRequest {
    pub source: Option<String>,
    pub tdl: Option<String>,
    pub file_name: String,
    /// The mirror's network id.
    pub destination: String,
    /// Where to place it (required).
    pub hosts: Vec<String>,
}

#[derive(Debug)]
pub struct NetworkManager {
    store: Arc<dyn Store>,
    hub: Arc<ControlHub>,
    hosts: Arc<dyn Hosts>,
    shards: OnceLock<ShardManager>,
    records: Mutex<BTreeMap<String, NetworkRecord>>,
    /// Networks being created: address publishes update memory only.
    creating: Mutex<BTreeSet<String>>,
    /// One create/update/delete at a time.
    ops: tokio::sync::Mutex<()>,
    events: broadcast::Sender<NetworkEvent>,
    /// The snapshot schedule of source nodes with volumes.
    snapshot_policy: Mutex<SnapshotPolicy>,
    /// Source -> the last revision kept in its history.
    history_last: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse(file_name: &str, text: &str) -> Result<weft_tdl::Network, NetworkError> {
    let name = if file_name.is_empty() {
        "tdl"
    } else {
        file_name
    };
    weft_tdl::parse(name, text).map_err(|e| NetworkError::Invalid(e.to_string()))
}

impl NetworkManager {
    /// Loads every network kept in `store`. Call [`Self::attach_shards`] next, then
    /// [`Self::republish`].
    pub fn open(
        store: Arc<dyn Store>,
        hub: Arc<ControlHub>,
        hosts: Arc<dyn Hosts>,
    ) -> Result<Arc<Self>, NetworkError> {
        let mut records = BTreeMap::new();
        for (key, bytes) in store.scan_prefix(STORE_PREFIX)? {
            let rec: NetworkRecord = serde_json::from_slice(&bytes).map_err(|e| {
                NetworkError::Internal(format!("store key {key}: not a network record: {e}"))
            })?;
            records.insert(rec.id.clone(), rec);
        }
        let mut history_last = BTreeMap::new();
        for (key, _) in store.scan_prefix("network-history/")? {
            if let Some((id, rev)) = key
                .strip_prefix("network-history/")
                .and_then(|k| k.rsplit_once('/'))
                && let Ok(rev) = rev.parse::<u64>()
            {
                let e = history_last.entry(id.to_owned()).or_insert(0);
                *e = (*e).max(rev);
            }
        }
        let this = Arc::new(Self {
            store,
            hub,
            hosts,
            shards: OnceLock::new(),
            records: Mutex::new(records),
            creating: Mutex::new(BTreeSet::new()),
            ops: tokio::sync::Mutex::new(()),
            events: broadcast::channel(EVENT_CHANNEL).0,
            snapshot_policy: Mutex::new(SnapshotPolicy::default()),
            history_last: Mutex::new(history_last),
        });
        // Sources kept before history was: their current revision is their first, applied
        // when the network was made if it is its first revision, else (when is not known)
        // now.
        for rec in this.list() {
            let applied = if rec.revision <= 1 {
                rec.created_unix_ns
            } else {
                now_unix_ns()
            };
            if rec.role == Role::Source
                && !lock(&this.history_last).contains_key(&rec.id)
                && let Err(e) = this.record_history(&rec, applied)
            {
                warn!(network = %rec.id, error = %e, "history not started");
            }
        }
        Ok(this)
    }

    /// The snapshot schedule of source nodes with volumes (published at the next
    /// [`Self::republish`] or change).
    pub fn set_snapshot_policy(&self, policy: SnapshotPolicy) {
        *lock(&self.snapshot_policy) = policy;
    }

    pub fn snapshot_policy(&self) -> SnapshotPolicy {
        *lock(&self.snapshot_policy)
    }

    /// Keeps `rec` in its history when its revision is new there.
    fn record_history(
        &self,
        rec: &NetworkRecord,
        applied_unix_ns: u64,
    ) -> Result<(), NetworkError> {
        let mut last = lock(&self.history_last);
        if last.get(&rec.id).is_some_and(|l| *l >= rec.revision) {
            return Ok(());
        }
        let entry = HistoryEntry {
            revision: rec.revision,
            applied_unix_ns,
            record: rec.clone(),
        };
        let bytes = serde_json::to_vec(&entry).map_err(|e| {
            NetworkError::Internal(format!("encoding network {} history: {e}", rec.id))
        })?;
        self.store
            .put(&history_key(&rec.id, rec.revision), &bytes)?;
        last.insert(rec.id.clone(), rec.revision);
        Ok(())
    }

    /// Every applied revision of source network `id`, oldest first (empty for a mirror
    /// or a weave).
    pub fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, NetworkError> {
        if self.get(id).is_none() {
            return Err(NetworkError::NotFound(format!(
                "network {id:?} does not exist"
            )));
        }
        let mut out = Vec::new();
        for (key, bytes) in self.store.scan_prefix(&history_prefix(id))? {
            let e: HistoryEntry = serde_json::from_slice(&bytes).map_err(|e| {
                NetworkError::Internal(format!("store key {key}: not a history entry: {e}"))
            })?;
            out.push(e);
        }
        out.sort_by_key(|e| e.revision);
        Ok(out)
    }

    /// The revision of source network `id` in force at `unix_ns`.
    pub fn at(&self, id: &str, unix_ns: u64) -> Result<HistoryEntry, NetworkError> {
        let all = self.history(id)?;
        let Some(first) = all.first() else {
            return Err(NetworkError::Invalid(format!(
                "network {id:?} has no history (only source networks keep one)"
            )));
        };
        if unix_ns < first.applied_unix_ns {
            return Err(NetworkError::Invalid(format!(
                "network {id:?} has no revision in force at {} in its history: its first revision ({}) was applied at {}",
                agent_common::time::rfc3339(unix_ns),
                first.revision,
                agent_common::time::rfc3339(first.applied_unix_ns)
            )));
        }
        Ok(all
            .into_iter()
            .rev()
            .find(|e| e.applied_unix_ns <= unix_ns)
            .expect("the first entry is at or before"))
    }

    /// The shard manager nodes' addresses come from (it is made after this manager: its
    /// publisher routes node addresses here).
    pub fn attach_shards(&self, shards: ShardManager) {
        let _ = self.shards.set(shards);
    }

    fn shards(&self) -> Result<&ShardManager, NetworkError> {
        self.shards
            .get()
            .ok_or_else(|| NetworkError::Internal("no shard manager attached".into()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NetworkEvent> {
        self.events.subscribe()
    }

    /// Publishes every network's resources again (at start: the hub of a new epoch is
    /// empty).
    pub fn republish(&self) {
        let all: Vec<NetworkRecord> = lock(&self.records).values().cloned().collect();
        for rec in all {
            if let Err(e) = self.publish(&rec, &[]) {
                warn!(network = %rec.id, error = %e, "network not published");
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<NetworkRecord> {
        lock(&self.records).get(id).cloned()
    }

    pub fn list(&self) -> Vec<NetworkRecord> {
        lock(&self.records).values().cloned().collect()
    }

    fn persist(&self, rec: &NetworkRecord) -> Result<(), NetworkError> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| NetworkError::Internal(format!("encoding network {}: {e}", rec.id)))?;
        self.store
            .put(&format!("{STORE_PREFIX}{}", rec.id), &bytes)?;
        if rec.role == Role::Source {
            self.record_history(rec, now_unix_ns())?;
        }
        Ok(())
    }

    /// Publishes `rec`'s resources on its hosts, and withdraws its resources from
    /// `former` hosts it no longer uses. Returns each host's generation.
    fn publish(
        &self,
        rec: &NetworkRecord,
        former: &[String],
    ) -> Result<BTreeMap<String, u64>, NetworkError> {
        let underlay = |h: &str| self.hosts.underlay(h);
        let mut all = lock(&self.records).clone();
        all.insert(rec.id.clone(), rec.clone());
        let wanted = resources::by_host(rec, &all, &underlay, self.snapshot_policy())
            .map_err(NetworkError::Invalid)?;
        let mut generations = BTreeMap::new();
        let mut hosts: BTreeSet<String> = wanted.keys().cloned().collect();
        hosts.extend(former.iter().cloned());
        for host in hosts {
            let mut changes: Vec<(ResourceKey, Option<Spec>)> = Vec::new();
            let want = wanted.get(&host);
            // This network's resources there now that are no longer wanted.
            for rk in self.hub.desired(&host).resources.keys() {
                if self.owns_key(&rec.id, rk) && want.is_none_or(|w| !w.contains_key(rk)) {
                    changes.push((rk.clone(), None));
                }
            }
            if let Some(w) = want {
                changes.extend(w.iter().map(|(k, s)| (k.clone(), Some(s.clone()))));
            }
            generations.insert(host.clone(), self.hub.publish_batch(&host, changes));
        }
        Ok(generations)
    }

    /// A mirror's source publishes its replication exports again (a mirror came or went).
    fn republish_source_of(&self, mirror: &NetworkRecord) {
        if let Role::Mirror { source: Some(src) } = &mirror.role
            && let Some(source) = self.get(src)
            && let Err(e) = self.publish(&source, &[])
        {
            warn!(network = %src, error = %e, "source not published again");
        }
    }

    fn owns_key(&self, id: &str, rk: &ResourceKey) -> bool {
        (rk.kind == kinds::NETWORK_SEGMENT && rk.key == id)
            || (rk.kind == kinds::NETWORK_NODE
                && rk.key.split_once('/').is_some_and(|(n, _)| n == id))
    }

    fn next_vni(&self, records: &BTreeMap<String, NetworkRecord>) -> u32 {
        let used: BTreeSet<u32> = records.values().map(|r| r.vni).collect();
        (FIRST_VNI..=0x00ff_ffff)
            .find(|v| !used.contains(v))
            .unwrap_or(FIRST_VNI)
    }

    fn placement(
        &self,
        net: &weft_tdl::Network,
        hosts: &[String],
    ) -> Result<BTreeMap<String, String>, NetworkError> {
        let hosts = if hosts.is_empty() {
            self.hosts.network_hosts()
        } else {
            hosts.to_vec()
        };
        if hosts.is_empty() {
            return Err(NetworkError::Invalid(
                "no hypervisor to place the network on: no agent that can make networks is connected, and the request names no hosts".into(),
            ));
        }
        let plan = weft_tdl::plan(net, &hosts).map_err(|e| NetworkError::Invalid(e.to_string()))?;
        Ok(plan
            .hosts
            .iter()
            .flat_map(|h| {
                h.nodes
                    .iter()
                    .map(move |n| (n.node.clone(), h.host.clone()))
            })
            .collect())
    }

    /// Creates a source network from a TDL: placed, addressed and published.
    pub async fn create(&self, req: CreateRequest) -> Result<NetworkRecord, NetworkError> {
        let net = parse(&req.file_name, &req.tdl)?;
        let _op = self.ops.lock().await;
        let id = net.name.clone();
        let placement = self.placement(&net, &req.hosts)?;
        let rec = {
            let records = lock(&self.records);
            if records.contains_key(&id) {
                return Err(NetworkError::Exists(format!(
                    "network {id:?} exists; delete it first or change `network:`"
                )));
            }
            let vni = match net.vni {
                Some(v) => {
                    if let Some(o) = records.values().find(|r| r.vni == v) {
                        return Err(NetworkError::Conflict(format!(
                            "vni {v} is network {:?}'s; pick another or leave `vni:` out",
                            o.id
                        )));
                    }
                    v
                }
                None => self.next_vni(&records),
            };
            NetworkRecord {
                id: id.clone(),
                role: Role::Source,
                tdl: req.tdl.clone(),
                file_name: req.file_name.clone(),
                addresses: explicit_addresses(&net),
                network: net,
                placement,
                vni,
                created_unix_ns: now_unix_ns(),
                revision: 1,
                synced_unix_ns: 0,
                restarts: BTreeMap::new(),
                sync_generation: 0,
                source_drift: req.source_drift,
                hand_changes: BTreeMap::new(),
                snapshot_generation: 0,
                pins: BTreeMap::new(),
                clones: BTreeMap::new(),
                sync_from: BTreeMap::new(),
            }
        };
        self.check_underlays(&rec)?;
        self.install(rec, "source").await
    }

    /// Creates a mirror of a source network (its definition and addresses, kept in sync)
    /// or of a TDL, placed on `hosts`.
    pub async fn mirror(&self, req: MirrorRequest) -> Result<NetworkRecord, NetworkError> {
        weft_tdl::check_name(&req.destination)
            .map_err(|e| NetworkError::Invalid(format!("destination: {e}")))?;
        if req.hosts.is_empty() {
            return Err(NetworkError::Invalid(
                "hosts: say where to place the mirror (one or more hypervisor ids)".into(),
            ));
        }
        let _op = self.ops.lock().await;
        let (net, tdl, file_name, addresses, source, hand_changes) = match (&req.source, &req.tdl) {
            (Some(s), None) => {
                let src = self.get(s).ok_or_else(|| {
                    NetworkError::NotFound(format!("source network {s:?} does not exist"))
                })?;
                let mut net = src.network.clone();
                net.name = req.destination.clone();
                net.vni = None;
                // Placement is the mirror's own.
                for n in net.nodes.values_mut() {
                    n.host = None;
                }
                let addresses = copied_addresses(&src);
                (
                    net,
                    src.tdl,
                    src.file_name,
                    addresses,
                    Some(s.clone()),
                    src.hand_changes,
                )
            }
            (None, Some(t)) => {
                let mut net = parse(&req.file_name, t)?;
                net.name = req.destination.clone();
                for n in net.nodes.values_mut() {
                    n.host = None;
                }
                let a = explicit_addresses(&net);
                (
                    net,
                    t.clone(),
                    req.file_name.clone(),
                    a,
                    None,
                    BTreeMap::new(),
                )
            }
            _ => {
                return Err(NetworkError::Invalid(
                    "give exactly one of source (a network id) and tdl".into(),
                ));
            }
        };
        let placement = self.placement(&net, &req.hosts)?;
        let rec = {
            let records = lock(&self.records);
            if records.contains_key(&req.destination) {
                return Err(NetworkError::Exists(format!(
                    "network {:?} exists; pick another destination",
                    req.destination
                )));
            }
            let now = now_unix_ns();
            NetworkRecord {
                id: req.destination.clone(),
                role: Role::Mirror {
                    source: source.clone(),
                },
                tdl,
                file_name,
                network: net,
                placement,
                vni: self.next_vni(&records),
                addresses,
                created_unix_ns: now,
                revision: 1,
                synced_unix_ns: if source.is_some() { now } else { 0 },
                restarts: BTreeMap::new(),
                sync_generation: 0,
                source_drift: SourceDrift::default(),
                hand_changes,
                snapshot_generation: 0,
                pins: BTreeMap::new(),
                clones: BTreeMap::new(),
                sync_from: BTreeMap::new(),
            }
        };
        self.check_underlays(&rec)?;
        // A mirror of a TDL allocates like a source; a mirror of a network copies.
        let rec = self.install(rec, "mirror").await?;
        self.republish_source_of(&rec);
        Ok(rec)
    }

    fn check_underlays(&self, rec: &NetworkRecord) -> Result<(), NetworkError> {
        let underlay = |h: &str| self.hosts.underlay(h);
        let all = lock(&self.records).clone();
        resources::by_host(rec, &all, &underlay, self.snapshot_policy())
            .map(|_| ())
            .map_err(NetworkError::Invalid)
    }

    /// Registers `rec`, allocates the addresses its nodes still need, keeps and publishes it.
    async fn install(
        &self,
        rec: NetworkRecord,
        role: &'static str,
    ) -> Result<NetworkRecord, NetworkError> {
        let id = rec.id.clone();
        lock(&self.records).insert(id.clone(), rec);
        lock(&self.creating).insert(id.clone());
        let allocated = self.allocate_missing(&id).await;
        lock(&self.creating).remove(&id);
        let result = allocated.and_then(|()| {
            let rec = self
                .get(&id)
                .ok_or_else(|| NetworkError::Internal("record vanished".into()))?;
            self.persist(&rec)?;
            self.publish(&rec, &[])?;
            Ok(rec)
        });
        match result {
            Ok(rec) => {
                info!(network = %id, role, hosts = ?rec.hosts(), nodes = rec.network.nodes.len(), "network created");
                let _ = self.events.send(NetworkEvent::Created {
                    id,
                    role,
                    hosts: rec.hosts(),
                    nodes: rec.network.nodes.len(),
                    at_unix_ns: now_unix_ns(),
                });
                Ok(rec)
            }
            Err(e) => {
                // Nothing of it stays: its addresses go back to the shards.
                let rec = lock(&self.records).remove(&id);
                if let Some(rec) = rec {
                    self.release_all(&rec).await;
                }
                let _ = self.store.delete(&format!("{STORE_PREFIX}{id}"));
                Err(e)
            }
        }
    }

    /// Allocates, from the TDL's shard network, the addresses of every node of `id` that
    /// has none.
    async fn allocate_missing(&self, id: &str) -> Result<(), NetworkError> {
        let Some(rec) = self.get(id) else {
            return Ok(());
        };
        let shards = self.shards()?;
        let addressing = &rec.network.addressing;
        for (node, host) in &rec.placement {
            if rec.addresses.get(node).is_some_and(|a| !a.is_empty()) {
                continue;
            }
            for f in &addressing.families {
                let family = match f {
                    weft_tdl::Family::Ipv4 => Family::Ipv4,
                    weft_tdl::Family::Ipv6 => Family::Ipv6,
                };
                let a = shards
                    .allocate_address(&addressing.shards, &node_workload(id, node), host, family)
                    .await
                    .map_err(|e| {
                        NetworkError::Invalid(format!(
                            "addresses for node {node:?} from shard network {:?}: {e}",
                            addressing.shards
                        ))
                    })?;
                // The shard manager's publish put the address in the record; if it did
                // not (another publisher), it goes in as a host address.
                let mut records = lock(&self.records);
                if let Some(r) = records.get_mut(id) {
                    let list = r.addresses.entry(node.clone()).or_default();
                    if !list.iter().any(|x| x.allocation_seq == a.seq) {
                        list.push(NodeAddress {
                            cidr: match a.address {
                                IpAddr::V4(_) => format!("{}/32", a.address),
                                IpAddr::V6(_) => format!("{}/128", a.address),
                            },
                            gateway: String::new(),
                            shard_id: a.shard_id.clone(),
                            allocation_seq: a.seq,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    async fn release_all(&self, rec: &NetworkRecord) {
        let Ok(shards) = self.shards() else { return };
        for (node, addrs) in &rec.addresses {
            if addrs.iter().any(NodeAddress::allocated) {
                let w = node_workload(&rec.id, node);
                if let Err(e) = shards
                    .release_workload(&rec.network.addressing.shards, &w)
                    .await
                {
                    warn!(network = %rec.id, node, error = %e, "addresses not released");
                }
            }
        }
    }

    /// Replaces a source network's definition with a new TDL: new nodes are placed and
    /// addressed, removed ones go (their addresses back to the shards), changed ones are
    /// changed; its mirrors follow. Returns the record and the changes.
    pub async fn update(
        &self,
        id: &str,
        tdl: &str,
        file_name: &str,
    ) -> Result<(NetworkRecord, Vec<String>), NetworkError> {
        let net = parse(file_name, tdl)?;
        let _op = self.ops.lock().await;
        let old = self
            .get(id)
            .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
        if net.name != id {
            return Err(NetworkError::Invalid(format!(
                "the TDL defines network {:?}, not {id:?}",
                net.name
            )));
        }
        if let Some(v) = net.vni
            && v != old.vni
        {
            return Err(NetworkError::Invalid(format!(
                "vni {v}: a network's VNI cannot change (it is {})",
                old.vni
            )));
        }
        let mut changes: Vec<String> = weft_tdl::diff(&old.network, &net)
            .iter()
            .map(ToString::to_string)
            .collect();
        // The new definition replaces what was changed by hand.
        changes.extend(
            old.hand_changes
                .keys()
                .map(|n| format!("hand changes of node {n} dropped: the definition replaces them")),
        );
        // Nodes keep their hosts; new ones are placed among the hosts in use.
        let mut placement: BTreeMap<String, String> = BTreeMap::new();
        let hosts = old.hosts();
        let fresh = self.placement(&net, &hosts)?;
        for name in net.nodes.keys() {
            let h = old
                .placement
                .get(name)
                .filter(|_| net.nodes[name].host.is_none())
                .cloned()
                .or_else(|| fresh.get(name).cloned())
                .ok_or_else(|| NetworkError::Internal(format!("node {name:?} not placed")))?;
            placement.insert(name.clone(), h);
        }
        let removed: Vec<String> = old
            .network
            .nodes
            .keys()
            .filter(|n| !net.nodes.contains_key(*n))
            .cloned()
            .collect();
        let mut rec = old.clone();
        rec.tdl = tdl.to_owned();
        rec.file_name = file_name.to_owned();
        let explicit = explicit_addresses(&net);
        for (node, n) in &net.nodes {
            if !n.addresses.is_empty() {
                rec.addresses.insert(node.clone(), explicit[node].clone());
            }
        }
        for n in &removed {
            rec.addresses.remove(n);
        }
        rec.network = net;
        rec.placement = placement;
        rec.hand_changes.clear();
        rec.revision += 1;
        self.check_underlays(&rec)?;
        // Released before the new ones are allocated.
        let gone = NetworkRecord {
            addresses: old
                .addresses
                .iter()
                .filter(|(n, _)| removed.contains(n))
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect(),
            ..old.clone()
        };
        self.release_all(&gone).await;
        lock(&self.records).insert(id.to_owned(), rec);
        lock(&self.creating).insert(id.to_owned());
        let allocated = self.allocate_missing(id).await;
        lock(&self.creating).remove(id);
        allocated?;
        let rec = self
            .get(id)
            .ok_or_else(|| NetworkError::Internal("record vanished".into()))?;
        self.persist(&rec)?;
        self.publish(&rec, &old.hosts())?;
        let _ = self.events.send(NetworkEvent::Updated {
            id: id.to_owned(),
            changes: changes.clone(),
            revision: rec.revision,
            at_unix_ns: now_unix_ns(),
        });
        self.sync_mirrors(id);
        Ok((rec, changes))
    }

    /// Brings every mirror of `source` to its state (definition and addresses); a node
    /// new in the source is placed among the mirror's hosts.
    fn sync_mirrors(&self, source: &str) {
        let Some(src) = self.get(source) else { return };
        let mirrors: Vec<NetworkRecord> = lock(&self.records)
            .values()
            .filter(|r| {
                r.role
                    == Role::Mirror {
                        source: Some(source.to_owned()),
                    }
            })
            .cloned()
            .collect();
        for m in mirrors {
            let mut net = src.network.clone();
            net.name = m.id.clone();
            net.vni = None;
            for n in net.nodes.values_mut() {
                n.host = None;
            }
            let mut placement = BTreeMap::new();
            let hosts = m.hosts();
            let fresh = match self.placement(&net, &hosts) {
                Ok(p) => p,
                Err(e) => {
                    warn!(mirror = %m.id, error = %e, "mirror not synced");
                    continue;
                }
            };
            for name in net.nodes.keys() {
                if let Some(h) = m.placement.get(name).or_else(|| fresh.get(name)) {
                    placement.insert(name.clone(), h.clone());
                }
            }
            let rec = NetworkRecord {
                tdl: src.tdl.clone(),
                file_name: src.file_name.clone(),
                network: net,
                placement,
                addresses: copied_addresses(&src),
                hand_changes: src.hand_changes.clone(),
                revision: m.revision + 1,
                synced_unix_ns: now_unix_ns(),
                ..m.clone()
            };
            if let Err(e) = self
                .persist(&rec)
                .and_then(|()| self.publish(&rec, &m.hosts()))
            {
                warn!(mirror = %m.id, error = %e, "mirror not synced");
                continue;
            }
            lock(&self.records).insert(rec.id.clone(), rec.clone());
            let _ = self.events.send(NetworkEvent::Synced {
                id: rec.id.clone(),
                source: source.to_owned(),
                revision: rec.revision,
                at_unix_ns: now_unix_ns(),
            });
        }
        // Its replication exports follow where the mirrors' nodes are.
        if let Some(src) = self.get(source)
            && let Err(e) = self.publish(&src, &[])
        {
            warn!(network = %source, error = %e, "source not published again");
        }
    }

    /// Removes a network: every resource on every host (the agents remove what they made)
    /// and its addresses back to the shards.
    pub async fn delete(&self, id: &str) -> Result<NetworkRecord, NetworkError> {
        self.delete_as(id, false).await
    }

    /// Removes a weave's network (the weave manager's part of deleting a weave).
    pub async fn delete_weave(&self, id: &str) -> Result<NetworkRecord, NetworkError> {
        self.delete_as(id, true).await
    }

    async fn delete_as(&self, id: &str, weave: bool) -> Result<NetworkRecord, NetworkError> {
        let _op = self.ops.lock().await;
        let rec = self
            .get(id)
            .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
        match &rec.role {
            Role::Weave { .. } if !weave => {
                return Err(NetworkError::Conflict(format!(
                    "network {id:?} is weave {id:?}'s; delete the weave (DELETE /weaves/{id})"
                )));
            }
            Role::Source => {
                let weaves = self.weaves_of(id);
                if !weaves.is_empty() {
                    return Err(NetworkError::Conflict(format!(
                        "network {id:?} has weaves ({}); delete them first (DELETE /weaves/{{id}})",
                        weaves.join(", ")
                    )));
                }
            }
            _ => {}
        }
        for host in rec.hosts() {
            let changes: Vec<(ResourceKey, Option<Spec>)> = self
                .hub
                .desired(&host)
                .resources
                .keys()
                .filter(|rk| self.owns_key(id, rk))
                .map(|rk| (rk.clone(), None))
                .collect();
            self.hub.publish_batch(&host, changes);
        }
        self.store.delete(&format!("{STORE_PREFIX}{id}"))?;
        for (key, _) in self.store.scan_prefix(&history_prefix(id))? {
            self.store.delete(&key)?;
        }
        lock(&self.history_last).remove(id);
        lock(&self.records).remove(id);
        self.release_all(&rec).await;
        // Its source stops exporting to it.
        self.republish_source_of(&rec);
        info!(network = %id, "network deleted");
        let _ = self.events.send(NetworkEvent::Deleted {
            id: id.to_owned(),
            at_unix_ns: now_unix_ns(),
        });
        Ok(rec)
    }

    /// The shard manager's publish for `workload` on `host`: when it is a node of a
    /// network, its addresses change there (and in its peers' firewalls and its network's
    /// mirrors) and the generation carrying them is returned; `None`: not a node.
    pub fn node_addresses(
        &self,
        host: &str,
        workload: &str,
        addresses: &[AddressAssignment],
    ) -> Option<u64> {
        let (id, node) = split_node_workload(workload)?;
        let mut records = lock(&self.records);
        let rec = records.get_mut(id)?;
        if !rec.network.nodes.contains_key(node) {
            return None;
        }
        let mut list: Vec<NodeAddress> = addresses
            .iter()
            .map(|a| NodeAddress {
                cidr: a.cidr.clone(),
                gateway: a.gateway.clone(),
                shard_id: a.shard_id.clone(),
                allocation_seq: a.allocation_seq,
            })
            .collect();
        list.sort_by(|a, b| a.cidr.cmp(&b.cidr));
        // Explicit addresses of the TDL stay.
        if let Some(old) = rec.addresses.get(node) {
            list.extend(old.iter().filter(|a| !a.allocated()).cloned());
        }
        rec.addresses.insert(node.to_owned(), list);
        rec.revision += 1;
        let rec = rec.clone();
        drop(records);
        if lock(&self.creating).contains(id) {
            // The create publishes once at its end.
            return Some(self.hub.generation(host));
        }
        if let Err(e) = self.persist(&rec) {
            warn!(network = %id, error = %e, "node addresses not kept");
        }
        let generations = match self.publish(&rec, &[]) {
            Ok(g) => g,
            Err(e) => {
                warn!(network = %id, error = %e, "node addresses not published");
                return Some(self.hub.generation(host));
            }
        };
        self.sync_mirrors(id);
        Some(
            generations
                .get(host)
                .copied()
                .unwrap_or_else(|| self.hub.generation(host)),
        )
    }

    /// The resource that carries `workload`'s addresses when it is a node: (kind, key).
    pub fn node_resource(&self, workload: &str) -> Option<(&'static str, String)> {
        let (id, node) = split_node_workload(workload)?;
        let records = lock(&self.records);
        let rec = records.get(id)?;
        rec.network
            .nodes
            .contains_key(node)
            .then(|| (kinds::NETWORK_NODE, node_key(id, node)))
    }

    /// Follows the control plane's drift reports: a source node whose process was
    /// restarted restarts its copy in every mirror (event-driven sync). Needs a runtime.
    pub fn follow_restarts(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let mut events = self.hub.subscribe();
        let this = Arc::downgrade(self);
        Some(rt.spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let d = match events.recv().await {
                    Ok(weft_control::ControlEvent::Drift(d)) => d,
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let Some(this) = this.upgrade() else { return };
                if d.resource.kind == kinds::NETWORK_NODE && d.kept {
                    this.adopt_hand_changes(&d.host, &d.resource);
                } else if d.resource.kind == kinds::NETWORK_NODE
                    && d.what.contains("restarted")
                    && let Some((net, node)) = d.resource.key.split_once('/')
                {
                    this.restart_mirrors(net, node);
                }
            }
        }))
    }

    /// Takes what a source node that keeps hand changes reported it has (its addresses,
    /// its inbound rules) into the source's desired state, and carries it to the mirrors.
    /// Nothing when the report is stale (the node moved, the network is gone or repairs).
    fn adopt_hand_changes(&self, host: &str, rk: &ResourceKey) {
        let Some((id, node)) = rk.key.split_once('/') else {
            return;
        };
        let observed = self.hub.observed(host);
        let Some(h) = observed
            .resources
            .get(rk)
            .and_then(|o| o.hand_changes.clone())
        else {
            return;
        };
        let rules: Vec<HandRule> = h.firewall.iter().map(HandRule::from_wire).collect();
        let rec = {
            let mut records = lock(&self.records);
            let Some(rec) = records.get_mut(id) else {
                return;
            };
            if rec.role != Role::Source
                || rec.source_drift != SourceDrift::Propagate
                || rec.placement.get(node).map(String::as_str) != Some(host)
            {
                return;
            }
            let before = rec.hand_changes.get(node);
            let adopted = HandChanges {
                host: host.to_owned(),
                changes: h.changes.clone(),
                addresses: if h.addresses_changed {
                    Some(h.addresses.clone())
                } else {
                    before.and_then(|b| b.addresses.clone())
                },
                firewall: if h.firewall_changed {
                    Some(rules)
                } else {
                    before.and_then(|b| b.firewall.clone())
                },
                foreign_rules: h.foreign_rules.clone(),
                adopted_unix_ns: now_unix_ns(),
            };
            if before.is_some_and(|b| b.same_state(&adopted)) {
                return;
            }
            rec.hand_changes.insert(node.to_owned(), adopted);
            rec.revision += 1;
            rec.clone()
        };
        if let Err(e) = self
            .persist(&rec)
            .and_then(|()| self.publish(&rec, &[]).map(|_| ()))
        {
            warn!(network = %id, node, error = %e, "hand change not taken in");
            return;
        }
        let mirrors: Vec<String> = lock(&self.records)
            .values()
            .filter(|r| {
                r.role
                    == Role::Mirror {
                        source: Some(id.to_owned()),
                    }
            })
            .map(|r| r.id.clone())
            .collect();
        info!(network = %id, node, host, changes = ?h.changes, ?mirrors, "hand change in a source: taken in and propagated");
        let _ = self.events.send(NetworkEvent::DriftPropagated {
            id: id.to_owned(),
            node: node.to_owned(),
            host: host.to_owned(),
            changes: h.changes,
            mirrors,
            foreign_rules: h.foreign_rules,
            at_unix_ns: now_unix_ns(),
        });
        self.sync_mirrors(id);
    }

    /// Restarts node `node` in every mirror of `source`.
    fn restart_mirrors(&self, source: &str, node: &str) {
        let mirrors: Vec<NetworkRecord> = lock(&self.records)
            .values()
            .filter(|r| {
                r.role
                    == Role::Mirror {
                        source: Some(source.to_owned()),
                    }
            })
            .filter(|r| r.network.nodes.contains_key(node))
            .cloned()
            .collect();
        for mut m in mirrors {
            *m.restarts.entry(node.to_owned()).or_default() += 1;
            m.revision += 1;
            m.synced_unix_ns = now_unix_ns();
            if let Err(e) = self.persist(&m).and_then(|()| self.publish(&m, &[])) {
                warn!(mirror = %m.id, node, error = %e, "mirror node not restarted");
                continue;
            }
            info!(mirror = %m.id, node, "source node restarted: mirror's copy restarted");
            lock(&self.records).insert(m.id.clone(), m.clone());
            let _ = self.events.send(NetworkEvent::Synced {
                id: m.id.clone(),
                source: source.to_owned(),
                revision: m.revision,
                at_unix_ns: now_unix_ns(),
            });
        }
    }

    /// Copies the volumes of network `id` now: a mirror from its source; a source to
    /// every mirror of it. Returns the mirrors asked.
    pub async fn sync_now(&self, id: &str) -> Result<Vec<String>, NetworkError> {
        let _op = self.ops.lock().await;
        let rec = self
            .get(id)
            .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
        let mirrors: Vec<NetworkRecord> = match &rec.role {
            Role::Mirror { source: Some(_) } => vec![rec],
            Role::Mirror { source: None } => {
                return Err(NetworkError::Conflict(format!(
                    "network {id:?} mirrors a TDL, not a network: it has no source to copy from"
                )));
            }
            Role::Weave { environment, .. } => {
                return Err(NetworkError::Conflict(format!(
                    "network {id:?} is a weave of {environment:?}, not a mirror: sync its volumes with POST /weaves/{id}/sync"
                )));
            }
            Role::Source => lock(&self.records)
                .values()
                .filter(|r| {
                    r.role
                        == Role::Mirror {
                            source: Some(id.to_owned()),
                        }
                })
                .cloned()
                .collect(),
        };
        let mut asked = Vec::new();
        for mut m in mirrors {
            m.sync_generation += 1;
            m.revision += 1;
            m.synced_unix_ns = now_unix_ns();
            self.persist(&m)?;
            self.publish(&m, &[])?;
            lock(&self.records).insert(m.id.clone(), m.clone());
            let _ = self.events.send(NetworkEvent::Synced {
                id: m.id.clone(),
                source: match &m.role {
                    Role::Mirror { source: Some(s) } => s.clone(),
                    _ => String::new(),
                },
                revision: m.revision,
                at_unix_ns: m.synced_unix_ns,
            });
            asked.push(m.id);
        }
        Ok(asked)
    }

    /// The weaves of environment `id` (their network ids), sorted.
    pub fn weaves_of(&self, id: &str) -> Vec<String> {
        lock(&self.records)
            .values()
            .filter(|r| matches!(&r.role, Role::Weave { environment, .. } if environment == id))
            .map(|r| r.id.clone())
            .collect()
    }

    /// Makes a weave's network: `req.from` (a revision of the environment) renamed, with
    /// its addresses (the same addresses in an isolated layer 2, own VNI, as a mirror),
    /// placed as `req.placement` says, nodes with volumes cloned as `req.clones` says.
    pub async fn weave(&self, req: WeaveRequest) -> Result<NetworkRecord, NetworkError> {
        weft_tdl::check_name(&req.id).map_err(|e| NetworkError::Invalid(format!("id: {e}")))?;
        let _op = self.ops.lock().await;
        let src = &req.from.record;
        let mut net = src.network.clone();
        net.name = req.id.clone();
        net.vni = None;
        for n in net.nodes.values_mut() {
            n.host = None;
        }
        for name in net.nodes.keys() {
            if !req.placement.contains_key(name) {
                return Err(NetworkError::Internal(format!("node {name:?} not placed")));
            }
        }
        let rec = {
            let records = lock(&self.records);
            if records.contains_key(&req.id) {
                return Err(NetworkError::Exists(format!(
                    "network {:?} exists; pick another weave id",
                    req.id
                )));
            }
            NetworkRecord {
                id: req.id.clone(),
                role: Role::Weave {
                    environment: req.environment.clone(),
                    environment_revision: req.from.revision,
                },
                tdl: src.tdl.clone(),
                file_name: src.file_name.clone(),
                network: net,
                placement: req.placement.clone(),
                vni: self.next_vni(&records),
                addresses: copied_addresses(src),
                created_unix_ns: now_unix_ns(),
                revision: 1,
                synced_unix_ns: 0,
                restarts: BTreeMap::new(),
                sync_generation: 0,
                source_drift: SourceDrift::default(),
                hand_changes: src.hand_changes.clone(),
                snapshot_generation: 0,
                pins: BTreeMap::new(),
                clones: req.clones.clone(),
                sync_from: BTreeMap::new(),
            }
        };
        self.check_underlays(&rec)?;
        self.install(rec, "weave").await
    }

    /// Keeps (`Some`) or lets go (`None`) the snapshots weave `weave` was made from in
    /// source `id`'s node specs.
    pub async fn pin(
        &self,
        id: &str,
        weave: &str,
        snapshots: Option<BTreeMap<String, String>>,
    ) -> Result<(), NetworkError> {
        let _op = self.ops.lock().await;
        let Some(mut rec) = self.get(id) else {
            return Err(NetworkError::NotFound(format!(
                "network {id:?} does not exist"
            )));
        };
        match snapshots {
            Some(m) if !m.is_empty() => {
                rec.pins.insert(weave.to_owned(), m);
            }
            _ => {
                if rec.pins.remove(weave).is_none() {
                    return Ok(());
                }
            }
        }
        self.persist(&rec)?;
        lock(&self.records).insert(id.to_owned(), rec.clone());
        self.publish(&rec, &[])?;
        Ok(())
    }

    /// The snapshots of source `id`'s nodes with volumes, as their agents last reported
    /// them (oldest first), by node.
    pub fn snapshots(
        &self,
        id: &str,
    ) -> Result<BTreeMap<String, Vec<weft_proto::v1::VolumeSnapshot>>, NetworkError> {
        let rec = self
            .get(id)
            .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
        Ok(rec
            .nodes_with_volumes()
            .into_iter()
            .map(|node| {
                let list = self
                    .node_report(&rec, &node)
                    .map(|o| o.snapshots)
                    .unwrap_or_default();
                (node, list)
            })
            .collect())
    }

    /// The last report of node `node` of `rec` from its host.
    fn node_report(
        &self,
        rec: &NetworkRecord,
        node: &str,
    ) -> Option<weft_control::ResourceObserved> {
        let host = rec.placement.get(node)?;
        self.hub
            .observed(host)
            .resources
            .get(&ResourceKey::new(
                kinds::NETWORK_NODE,
                &node_key(&rec.id, node),
            ))
            .cloned()
    }

    /// Source `id` with its snapshot generation grown by one (persisted, not published);
    /// `None` when it has no volumes. Call with `ops` held.
    fn next_snapshot_generation(&self, id: &str) -> Result<Option<NetworkRecord>, NetworkError> {
        let mut rec = self
            .get(id)
            .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
        if rec.role != Role::Source {
            return Err(NetworkError::Invalid(format!(
                "network {id:?} is not a source network: only a source's volumes are snapshotted"
            )));
        }
        if rec.nodes_with_volumes().is_empty() {
            return Ok(None);
        }
        rec.snapshot_generation += 1;
        self.persist(&rec)?;
        lock(&self.records).insert(id.to_owned(), rec.clone());
        Ok(Some(rec))
    }

    /// The hosts of `rec`'s nodes with volumes (where its snapshots are taken).
    fn volume_hosts(rec: &NetworkRecord) -> Vec<String> {
        rec.nodes_with_volumes()
            .iter()
            .filter_map(|n| rec.placement.get(n).cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Asks for a snapshot of every node with volumes of source `id` and returns at once
    /// (the agents take it and report it; [`Self::snapshots`] lists it then). Returns the
    /// generation asked for; 0 when the network has no volumes or is not a source.
    pub async fn request_snapshot(&self, id: &str) -> Result<u64, NetworkError> {
        let _op = self.ops.lock().await;
        let rec = match self.next_snapshot_generation(id) {
            Ok(Some(rec)) => rec,
            Ok(None) | Err(NetworkError::Invalid(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        self.publish(&rec, &[])?;
        Ok(rec.snapshot_generation)
    }

    /// Takes the next snapshot generation of source `id` for a weave's clones, without
    /// publishing it yet: the weave's nodes, published first, take that snapshot while
    /// they are made ([`Self::publish_snapshot_generation`] then tells the source's nodes,
    /// whose apply finds it answered). Returns the generation; 0 when the network has no
    /// volumes.
    pub async fn reserve_snapshot(&self, id: &str) -> Result<u64, NetworkError> {
        let _op = self.ops.lock().await;
        Ok(self
            .next_snapshot_generation(id)?
            .map_or(0, |rec| rec.snapshot_generation))
    }

    /// Publishes source `id` as it is (after [`Self::reserve_snapshot`]).
    pub async fn publish_snapshot_generation(&self, id: &str) -> Result<(), NetworkError> {
        let _op = self.ops.lock().await;
        let rec = self
            .get(id)
            .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
        self.publish(&rec, &[])?;
        Ok(())
    }

    /// Waits (at most `timeout`) until every node with volumes of source `id` reported its
    /// snapshot of `generation`. Returns node -> snapshot.
    pub async fn wait_snapshot(
        &self,
        id: &str,
        generation: u64,
        timeout: std::time::Duration,
    ) -> Result<BTreeMap<String, weft_proto::v1::VolumeSnapshot>, NetworkError> {
        let rec = self
            .get(id)
            .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
        let watchers = self.hub.report_watchers(&Self::volume_hosts(&rec));
        self.wait_reported_snapshot(&rec, generation, watchers, timeout)
            .await
    }

    /// Asks for a snapshot of every node with volumes of source `id` now and waits (at
    /// most `timeout`) until each node's agent reported it. Returns node -> snapshot.
    pub async fn snapshot_now(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<BTreeMap<String, weft_proto::v1::VolumeSnapshot>, NetworkError> {
        let (rec, watchers) = {
            let _op = self.ops.lock().await;
            let Some(rec) = self.next_snapshot_generation(id)? else {
                return Ok(BTreeMap::new());
            };
            // Watching before publishing: no report is missed.
            let watchers = self.hub.report_watchers(&Self::volume_hosts(&rec));
            self.publish(&rec, &[])?;
            (rec, watchers)
        };
        self.wait_reported_snapshot(&rec, rec.snapshot_generation, watchers, timeout)
            .await
    }

    async fn wait_reported_snapshot(
        &self,
        rec: &NetworkRecord,
        generation: u64,
        mut watchers: Vec<tokio::sync::watch::Receiver<weft_control::HostObserved>>,
        timeout: std::time::Duration,
    ) -> Result<BTreeMap<String, weft_proto::v1::VolumeSnapshot>, NetworkError> {
        let id = &rec.id;
        let nodes = rec.nodes_with_volumes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut got = BTreeMap::new();
            let mut waiting = Vec::new();
            for node in &nodes {
                let found = self
                    .node_report(rec, node)
                    .and_then(|o| o.snapshots.into_iter().find(|s| s.generation == generation));
                match found {
                    Some(s) => {
                        got.insert(node.clone(), s);
                    }
                    None => waiting.push(format!(
                        "{node} (host {})",
                        rec.placement.get(node).map_or("?", String::as_str)
                    )),
                }
            }
            if waiting.is_empty() {
                return Ok(got);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetworkError::Timeout(format!(
                    "no snapshot of generation {generation} reported within {timeout:?} by node(s) {} of network {id:?} (agent offline, or without volume snapshots?)",
                    waiting.join(", ")
                )));
            }
            weft_control::next_report(&mut watchers, std::time::Duration::from_millis(20)).await;
        }
    }

    /// Asks node by node of network `id` (a source or a weave) that `volume` be replaced
    /// by the state of the node named in `sources` (node -> `<network>/<node>`), and
    /// waits (at most `timeout`) until each node's agent reported it done. Returns node
    /// -> the sync done.
    pub async fn sync_volume(
        &self,
        id: &str,
        volume: &str,
        sources: &BTreeMap<String, String>,
        timeout: std::time::Duration,
    ) -> Result<BTreeMap<String, weft_proto::v1::VolumeSyncDone>, NetworkError> {
        let (rec, generations) = {
            let _op = self.ops.lock().await;
            let mut rec = self
                .get(id)
                .ok_or_else(|| NetworkError::NotFound(format!("network {id:?} does not exist")))?;
            let mut generations = BTreeMap::new();
            for (node, source) in sources {
                if !rec.network.nodes.contains_key(node) {
                    return Err(NetworkError::Invalid(format!(
                        "network {id:?} has no node {node:?}"
                    )));
                }
                let f = rec
                    .sync_from
                    .entry(node.clone())
                    .or_default()
                    .entry(volume.to_owned())
                    .or_insert_with(|| SyncFrom {
                        source: source.clone(),
                        generation: 0,
                    });
                f.source = source.clone();
                f.generation += 1;
                generations.insert(node.clone(), f.generation);
            }
            self.persist(&rec)?;
            lock(&self.records).insert(id.to_owned(), rec.clone());
            self.publish(&rec, &[])?;
            (rec, generations)
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut got = BTreeMap::new();
            let mut waiting = Vec::new();
            for (node, g) in &generations {
                let found = self.node_report(&rec, node).and_then(|o| {
                    o.syncs
                        .into_iter()
                        .find(|d| d.volume == volume && d.generation >= *g)
                });
                match found {
                    Some(d) => {
                        got.insert(node.clone(), d);
                    }
                    None => waiting.push(node.clone()),
                }
            }
            if waiting.is_empty() {
                return Ok(got);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetworkError::Timeout(format!(
                    "no sync of volume {volume:?} reported within {timeout:?} by node(s) {} of network {id:?}",
                    waiting.join(", ")
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Desired against applied, per host, of network `id`.
    pub fn status(&self, id: &str) -> Option<NetworkStatus> {
        let rec = self.get(id)?;
        Some(status::of(&rec, &self.hub, |rk| self.owns_key(id, rk)))
    }
}

/// The TDL's own addresses of its nodes.
fn explicit_addresses(net: &weft_tdl::Network) -> BTreeMap<String, Vec<NodeAddress>> {
    net.nodes
        .iter()
        .filter(|(_, n)| !n.addresses.is_empty())
        .map(|(name, n)| {
            (
                name.clone(),
                n.addresses
                    .iter()
                    .map(|c| NodeAddress {
                        cidr: format!("{}/{}", c.addr, c.prefix),
                        gateway: String::new(),
                        shard_id: String::new(),
                        allocation_seq: 0,
                    })
                    .collect(),
            )
        })
        .collect()
}

/// A source's addresses for its mirror: the same, not held from the shards by the mirror.
fn copied_addresses(src: &NetworkRecord) -> BTreeMap<String, Vec<NodeAddress>> {
    src.addresses
        .iter()
        .map(|(n, list)| {
            (
                n.clone(),
                list.iter()
                    .map(|a| NodeAddress {
                        shard_id: String::new(),
                        allocation_seq: 0,
                        ..a.clone()
                    })
                    .collect(),
            )
        })
        .collect()
}
