//! weft-weaves: weaves. A weave is an environment (a source network) as it was at a point
//! of its history, made a network of its own beside it, and traffic routed to it.
//!
//! ```text
//!  POST /weaves --> WeaveManager
//!      NetworkManager::at (the revision in force) + the environment nodes' snapshots
//!      --NetworkManager::weave--> network `id` (same addresses, own VNI, every node on
//!        the host of the environment's node of that name, volumes cloned from a snapshot)
//!      --NetworkManager::pin--> the snapshots kept in the environment's node specs
//!      record (store: weaves/<id>) --> ControlHub.publish_batch:
//!        steer weave/<env>/<node> on the environment node's host (owner weave/<id>)
//! ```
//!
//! Steers (see agent/src/steer): one per origin interface, so one per environment node,
//! whichever weave holds it. The decision is made per connection at its SYN; the target is
//! not kept per connection, so retargeting a steer resets the connections it steered.
//! Hence: a weave holds the steer of an environment node from its first route or
//! activation of that node until it is deleted, and another weave cannot route or
//! activate that node meanwhile (409). Deactivating keeps the steers with share 0 and
//! the routed ports (nothing new is steered, nothing in flight is reset); removing a
//! route keeps the steer too. Deleting the weave removes its steers (what they steered
//! goes back to the environment and is reset).

pub mod record;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_common::time::{now_unix_ns, rfc3339};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tracing::{info, warn};
use weft_control::{ControlHub, ResourceKey, ResourceStatus, Spec, kinds};
use weft_networks::{
    CloneFrom, HistoryEntry, NetworkError, NetworkManager, NetworkRecord, Role, WeaveRequest,
    node_key,
};
use weft_proto::v1 as wire;
use weft_store::Store;

pub use record::{WeaveRecord, WeaveRoute};

const STORE_PREFIX: &str = "weaves/";
const EVENT_CHANNEL: usize = 256;
/// Share of new connections a routing steer takes: all.
pub const FULL_SHARE_PPM: u32 = 1_000_000;
/// How long a create waits for the nodes, a snapshot or a sync, by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WeaveError {
    /// A field of the request is wrong.
    #[error("field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The id is taken, or a node's steer is another weave's.
    #[error("{0}")]
    Conflict(String),
    /// The agents did not answer in time.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl From<weft_store::StoreError> for WeaveError {
    fn from(e: weft_store::StoreError) -> Self {
        Self::Internal(format!("store: {e}"))
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> WeaveError {
    WeaveError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A network manager's refusal; `field`: the request field an invalid value is about.
fn from_network(field: &str, e: NetworkError) -> WeaveError {
    match e {
        NetworkError::Invalid(m) => invalid(field, m),
        NetworkError::NotFound(m) => WeaveError::NotFound(m),
        NetworkError::Exists(m) | NetworkError::Conflict(m) => WeaveError::Conflict(m),
        NetworkError::Timeout(m) => WeaveError::Timeout(m),
        NetworkError::Internal(m) => WeaveError::Internal(format!("networks: {m}")),
    }
}

fn missing(id: &str) -> WeaveError {
    WeaveError::NotFound(format!(
        "weave {id:?} does not exist; list the weaves with GET /weaves"
    ))
}

/// Something that happened to a weave (the event streams carry them as CloudEvents,
/// `type` = `event_type`).
#[derive(Debug, Clone, PartialEq)]
pub struct WeaveEvent {
    /// `weft.weave.created|ready|routed|activated|deactivated|synced|deleted`.
    pub event_type: &'static str,
    /// The weave (for `synced`: the destination, a weave or the environment).
    pub weave: String,
    pub environment: String,
    pub data: Value,
    pub at_unix_ns: u64,
}

/// What a route by request matches: a request header (case-insensitive name) equal to
/// `value` (after trimming; empty: any value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMatch {
    pub header: String,
    pub value: String,
}

impl RequestMatch {
    /// Checked by the agent's own rules (a header token, a printable value); the name
    /// kept lower-case.
    fn checked(&self) -> Result<Self, WeaveError> {
        let value = self.value.trim();
        weft_reqroute::HeaderRule::new(&self.header, (!value.is_empty()).then_some(value))
            .map_err(|e| invalid("header", e))?;
        Ok(Self {
            header: self.header.to_ascii_lowercase(),
            value: value.to_owned(),
        })
    }
}

impl std::fmt::Display for RequestMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{:?} (any value)", self.header)
        } else {
            write!(f, "{:?}: {:?}", self.header, self.value)
        }
    }
}

/// A weave and its state now (`WeaveInfo`, with the wire's field names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeaveInfo {
    pub id: String,
    pub environment: String,
    pub at_unix_ns: u64,
    pub environment_revision: u64,
    pub revision_applied_unix_ns: u64,
    pub created_unix_ns: u64,
    /// `provisioning`, `running` or `degraded` (`error` says what).
    pub state: &'static str,
    pub error: String,
    pub snapshots: BTreeMap<String, String>,
    /// Port 0: every port (the weave is active).
    pub routes: Vec<RouteView>,
    pub active: bool,
    pub placement: BTreeMap<String, String>,
    pub ready_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteView {
    pub node: String,
    pub port: u32,
    /// Set: only requests with this header (and `header_value`; empty: any) are routed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub header: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub header_value: String,
}

impl WeaveInfo {
    pub fn to_wire(&self) -> wire::WeaveInfo {
        wire::WeaveInfo {
            id: self.id.clone(),
            environment: self.environment.clone(),
            at_unix_ns: self.at_unix_ns,
            environment_revision: self.environment_revision,
            revision_applied_unix_ns: self.revision_applied_unix_ns,
            created_unix_ns: self.created_unix_ns,
            state: self.state.into(),
            error: self.error.clone(),
            snapshots: self.snapshots.clone().into_iter().collect(),
            routes: self
                .routes
                .iter()
                .map(|r| wire::WeaveRoute {
                    node: r.node.clone(),
                    port: r.port,
                    header: r.header.clone(),
                    header_value: r.header_value.clone(),
                })
                .collect(),
            active: self.active,
            placement: self.placement.clone().into_iter().collect(),
            ready_seconds: self.ready_seconds,
        }
    }
}

/// One node's sync done.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncedNode {
    pub node: String,
    pub took_seconds: f64,
    pub method: String,
}

/// `sync`'s answer (`SyncVolumesResponse`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncResult {
    pub destination: WeaveInfo,
    pub nodes: Vec<SyncedNode>,
}

impl SyncResult {
    pub fn to_wire(&self) -> wire::SyncVolumesResponse {
        wire::SyncVolumesResponse {
            destination: Some(self.destination.to_wire()),
            nodes: self
                .nodes
                .iter()
                .map(|n| wire::VolumeSyncedNode {
                    node: n.node.clone(),
                    took_seconds: n.took_seconds,
                    method: n.method.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug)]
pub struct WeaveManager {
    store: Arc<dyn Store>,
    hub: Arc<ControlHub>,
    networks: Arc<NetworkManager>,
    records: Mutex<BTreeMap<String, WeaveRecord>>,
    /// How long a create waits for the nodes, and a snapshot or a sync for the agents.
    wait: Mutex<Duration>,
    /// One operation at a time.
    ops: tokio::sync::Mutex<()>,
    events: broadcast::Sender<WeaveEvent>,
    /// When each environment's volumes were last snapshotted for a weave operation.
    snapshotted: Mutex<BTreeMap<String, std::time::Instant>>,
}

/// Weave operations snapshot their environment's volumes at most this often (a burst of
/// activations takes one snapshot, not one per call).
const OPERATION_SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A weave's `steer` resource key on the environment node's host: `weave/<env>/<node>`
/// (one per environment node, whichever weave holds it).
pub fn steer_key(environment: &str, node: &str) -> String {
    format!("weave/{environment}/{node}")
}

/// A weave's steer owner: `weave/<id>`.
pub fn steer_owner(weave: &str) -> String {
    format!("weave/{weave}")
}

impl WeaveManager {
    /// Loads every weave kept in `store`. Call [`Self::republish`] next (after the
    /// networks: steers go where the environment's nodes are).
    pub fn open(
        store: Arc<dyn Store>,
        hub: Arc<ControlHub>,
        networks: Arc<NetworkManager>,
    ) -> Result<Arc<Self>, WeaveError> {
        let mut records = BTreeMap::new();
        for (key, bytes) in store.scan_prefix(STORE_PREFIX)? {
            let rec: WeaveRecord = serde_json::from_slice(&bytes).map_err(|e| {
                WeaveError::Internal(format!("store key {key}: not a weave record: {e}"))
            })?;
            records.insert(rec.id.clone(), rec);
        }
        Ok(Arc::new(Self {
            store,
            hub,
            networks,
            records: Mutex::new(records),
            wait: Mutex::new(DEFAULT_WAIT),
            ops: tokio::sync::Mutex::new(()),
            events: broadcast::channel(EVENT_CHANNEL).0,
            snapshotted: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Volumes are snapshotted at every weave operation: asks for a snapshot of the
    /// environment's volumes without waiting for it (at most one per
    /// [`OPERATION_SNAPSHOT_EVERY`] per environment). A failure is logged, not returned:
    /// the operation itself was done.
    async fn snapshot_for_operation(&self, environment: &str, operation: &str) {
        {
            let mut last = lock(&self.snapshotted);
            let now = std::time::Instant::now();
            if last
                .get(environment)
                .is_some_and(|t| now.duration_since(*t) < OPERATION_SNAPSHOT_EVERY)
            {
                return;
            }
            last.insert(environment.to_owned(), now);
        }
        match self.networks.request_snapshot(environment).await {
            Ok(_) | Err(NetworkError::NotFound(_)) => {}
            Err(e) => {
                warn!(environment, operation, error = %e, "no snapshot for the weave operation")
            }
        }
    }

    /// How long a create waits for the weave's nodes, and a snapshot or a sync for the
    /// agents (default [`DEFAULT_WAIT`]).
    pub fn set_wait(&self, wait: Duration) {
        *lock(&self.wait) = wait;
    }

    pub fn wait(&self) -> Duration {
        *lock(&self.wait)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<WeaveEvent> {
        self.events.subscribe()
    }

    pub fn get(&self, id: &str) -> Option<WeaveRecord> {
        lock(&self.records).get(id).cloned()
    }

    pub fn list(&self) -> Vec<WeaveRecord> {
        lock(&self.records).values().cloned().collect()
    }

    /// Publishes every environment's steers again (at start: the hub of a new epoch is
    /// empty).
    pub fn republish(&self) {
        let envs: BTreeSet<String> = self.list().into_iter().map(|r| r.environment).collect();
        for env in envs {
            self.publish_steers(&env);
        }
    }

    /// Follows the networks' events: when an environment with weaves changes (a new
    /// definition, a node moved or gone), its steers are published again to follow its
    /// nodes. Ends with the manager (it holds it weakly); `None` without a runtime.
    pub fn follow(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let mut events = self.networks.subscribe();
        let this = Arc::downgrade(self);
        Some(rt.spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let id = match events.recv().await {
                    Ok(weft_networks::NetworkEvent::Updated { id, .. }) => id,
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let Some(this) = this.upgrade() else { return };
                if this.list().iter().any(|w| w.environment == id) {
                    this.publish_steers(&id);
                }
            }
        }))
    }

    fn persist(&self, rec: &WeaveRecord) -> Result<(), WeaveError> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| WeaveError::Internal(format!("encoding weave {}: {e}", rec.id)))?;
        self.store
            .put(&format!("{STORE_PREFIX}{}", rec.id), &bytes)?;
        lock(&self.records).insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    fn tell(&self, event_type: &'static str, rec: &WeaveRecord, data: Value) {
        let _ = self.events.send(WeaveEvent {
            event_type,
            weave: rec.id.clone(),
            environment: rec.environment.clone(),
            data,
            at_unix_ns: now_unix_ns(),
        });
    }

    /// The steers the weaves of `environment` want, by host.
    fn wanted_steers(&self, environment: &str) -> BTreeMap<String, BTreeMap<ResourceKey, Spec>> {
        let mut wanted: BTreeMap<String, BTreeMap<ResourceKey, Spec>> = BTreeMap::new();
        let Some(env) = self.networks.get(environment) else {
            return wanted;
        };
        for w in self.list().iter().filter(|w| w.environment == environment) {
            for node in &w.steered {
                let Some(host) = env.placement.get(node) else {
                    continue;
                };
                let routed = w.ports_of(node);
                // An active weave takes every connection: no request router in between.
                let request_rules = if w.active {
                    Vec::new()
                } else {
                    w.request_rules_of(node)
                        .into_iter()
                        .map(|(port, header, value)| wire::SteerRequestRule {
                            port: u32::from(port),
                            header,
                            value,
                        })
                        .collect()
                };
                let (ports, share_ppm) = if w.active {
                    (Vec::new(), FULL_SHARE_PPM)
                } else if w.paused || routed.is_empty() {
                    (routed, 0)
                } else {
                    (routed, FULL_SHARE_PPM)
                };
                wanted.entry(host.clone()).or_default().insert(
                    ResourceKey::new(kinds::STEER, &steer_key(environment, node)),
                    Spec::Steer(wire::Steer {
                        owner: steer_owner(&w.id),
                        network: environment.to_owned(),
                        node: node.clone(),
                        ports,
                        share_ppm,
                        key: "connection".into(),
                        seed: 0,
                        failover: None,
                        target_network: w.id.clone(),
                        target_node: node.clone(),
                        target_host: String::new(),
                        tunnel_id: 0,
                        request_rules,
                    }),
                );
            }
        }
        wanted
    }

    /// Publishes the steers of `environment`'s weaves and withdraws those no longer
    /// wanted: one batch (one host generation) per host.
    fn publish_steers(&self, environment: &str) {
        let wanted = self.wanted_steers(environment);
        let prefix = format!("weave/{environment}/");
        let mut hosts: BTreeSet<String> = self.hub.hosts().into_iter().collect();
        hosts.extend(wanted.keys().cloned());
        for host in hosts {
            let want = wanted.get(&host);
            let mut changes: Vec<(ResourceKey, Option<Spec>)> = Vec::new();
            for rk in self.hub.desired(&host).resources.keys() {
                if rk.kind == kinds::STEER
                    && rk.key.starts_with(&prefix)
                    && want.is_none_or(|w| !w.contains_key(rk))
                {
                    changes.push((rk.clone(), None));
                }
            }
            if let Some(w) = want {
                changes.extend(w.iter().map(|(k, s)| (k.clone(), Some(s.clone()))));
            }
            if !changes.is_empty() {
                self.hub.publish_batch(&host, changes);
            }
        }
    }

    /// A weave id not taken: `<env>-w<n>`, the lowest n.
    fn fresh_id(&self, environment: &str) -> String {
        let records = lock(&self.records);
        (1u64..)
            .map(|n| format!("{environment}-w{n}"))
            .find(|id| !records.contains_key(id) && self.networks.get(id).is_none())
            .expect("an unbounded range has a free id")
    }

    /// Checks the environment of a create: an existing source network.
    fn environment(&self, environment: &str) -> Result<NetworkRecord, WeaveError> {
        if environment.trim().is_empty() {
            return Err(invalid(
                "environment",
                "name the environment (a source network)",
            ));
        }
        let env = self.networks.get(environment).ok_or_else(|| {
            invalid(
                "environment",
                format!("network {environment:?} does not exist"),
            )
        })?;
        match &env.role {
            Role::Source => Ok(env),
            Role::Weave { environment: e, .. } => Err(invalid(
                "environment",
                format!(
                    "network {environment:?} is a weave of {e:?}; a weave is not the source of further weaves: weave {e:?}"
                ),
            )),
            Role::Mirror { .. } => Err(invalid(
                "environment",
                format!("network {environment:?} is a mirror; weave a source network"),
            )),
        }
    }

    /// Materializes `environment` as it was at `at` (unix ns; `None`: now, after a
    /// snapshot of every node's volumes) as network `id` (default `<env>-w<n>`), beside
    /// it, and waits (bounded) until every node of it is applied.
    pub async fn create(
        &self,
        environment: &str,
        at: Option<u64>,
        id: Option<String>,
    ) -> Result<WeaveInfo, WeaveError> {
        let started = Instant::now();
        let _op = self.ops.lock().await;
        let env = self.environment(environment)?;
        let id = match id.filter(|i| !i.trim().is_empty()) {
            Some(i) => {
                weft_tdl::check_name(&i).map_err(|e| invalid("id", e))?;
                if lock(&self.records).contains_key(&i) {
                    return Err(WeaveError::Conflict(format!(
                        "weave {i:?} exists; delete it first or pick another id"
                    )));
                }
                if self.networks.get(&i).is_some() {
                    return Err(WeaveError::Conflict(format!(
                        "a network named {i:?} exists; pick another weave id"
                    )));
                }
                i
            }
            None => self.fresh_id(environment),
        };
        let now = now_unix_ns();
        // From "now": the snapshot is taken while the weave's nodes are made. Its
        // generation is reserved here, the weave published with clones asking for it,
        // then the environment: each clone takes it (or finds it taken) on its agent, so
        // the branch's namespaces, links and servers without volumes are ready by the
        // time the snapshot is.
        let (from, snapshots, generation) = match at {
            None => {
                let generation = self
                    .networks
                    .reserve_snapshot(environment)
                    .await
                    .map_err(|e| from_network("environment", e))?;
                // The snapshot of this operation: the next one (a route right after) within
                // the second takes none.
                lock(&self.snapshotted).insert(environment.to_owned(), std::time::Instant::now());
                let history = self
                    .networks
                    .history(environment)
                    .map_err(|e| from_network("environment", e))?;
                let from = history
                    .into_iter()
                    .rev()
                    .find(|h| h.revision == env.revision)
                    .ok_or_else(|| {
                        WeaveError::Internal(format!(
                            "revision {} of {environment:?} is not in its history",
                            env.revision
                        ))
                    })?;
                (from, BTreeMap::new(), generation)
            }
            Some(t) => {
                if t > now {
                    return Err(invalid(
                        "at",
                        format!("{} is in the future (now is {})", rfc3339(t), rfc3339(now)),
                    ));
                }
                let from = self
                    .networks
                    .at(environment, t)
                    .map_err(|e| from_network("at", e))?;
                let snapshots = self.snapshots_at(environment, &from, t)?;
                (from, snapshots, 0)
            }
        };
        let placement = self.placement(&env, &from, &snapshots)?;
        let clones: BTreeMap<String, CloneFrom> = if generation > 0 {
            env.nodes_with_volumes()
                .into_iter()
                .filter(|n| from.record.network.nodes.contains_key(n))
                .map(|node| {
                    let source = node_key(environment, &node);
                    (
                        node,
                        CloneFrom {
                            source,
                            snapshot: String::new(),
                            generation,
                        },
                    )
                })
                .collect()
        } else {
            snapshots
                .iter()
                .map(|(node, s)| {
                    (
                        node.clone(),
                        CloneFrom {
                            source: node_key(environment, node),
                            snapshot: s.clone(),
                            generation: 0,
                        },
                    )
                })
                .collect()
        };
        let net = self
            .networks
            .weave(WeaveRequest {
                environment: environment.to_owned(),
                from: from.clone(),
                id: id.clone(),
                placement: placement.clone(),
                clones,
            })
            .await
            .map_err(|e| from_network("id", e))?;
        let snapshots = if generation > 0 {
            let taken = async {
                self.networks
                    .publish_snapshot_generation(environment)
                    .await?;
                self.networks
                    .wait_snapshot(environment, generation, self.wait())
                    .await
            }
            .await;
            match taken {
                Ok(t) => t.into_iter().map(|(n, s)| (n, s.id)).collect(),
                Err(e) => {
                    if let Err(d) = self.networks.delete_weave(&id).await {
                        warn!(weave = %id, error = %d, "weave network not removed after a failed create");
                    }
                    return Err(from_network("environment", e));
                }
            }
        } else {
            snapshots
        };
        let rec = WeaveRecord {
            id: id.clone(),
            environment: environment.to_owned(),
            at_unix_ns: at.unwrap_or(0),
            environment_revision: from.revision,
            revision_applied_unix_ns: from.applied_unix_ns,
            created_unix_ns: now,
            snapshots: snapshots.clone(),
            placement: net.placement.clone(),
            routes: BTreeSet::new(),
            active: false,
            paused: false,
            steered: BTreeSet::new(),
            ready_seconds: 0.0,
            error: String::new(),
        };
        let kept = self
            .networks
            .pin(environment, &id, Some(snapshots.clone()))
            .await
            .map_err(|e| from_network("environment", e))
            .and_then(|()| self.persist(&rec));
        if let Err(e) = kept {
            // Nothing of it stays.
            let _ = self.networks.pin(environment, &id, None).await;
            if let Err(d) = self.networks.delete_weave(&id).await {
                warn!(weave = %id, error = %d, "weave network not removed after a failed create");
            }
            lock(&self.records).remove(&id);
            return Err(e);
        }
        info!(weave = %id, environment, revision = from.revision, "weave created");
        self.tell(
            "weft.weave.created",
            &rec,
            json!({
                "weave": id,
                "environment": environment,
                "at_unix_ns": rec.at_unix_ns,
                "environment_revision": rec.environment_revision,
                "revision_applied_unix_ns": rec.revision_applied_unix_ns,
                "snapshots": rec.snapshots,
                "placement": rec.placement,
            }),
        );
        let rec = self.wait_ready(rec, &net, started).await?;
        Ok(self.info_of(&rec))
    }

    /// The newest snapshot taken at or before `t` of every node with volumes of `from`.
    fn snapshots_at(
        &self,
        environment: &str,
        from: &HistoryEntry,
        t: u64,
    ) -> Result<BTreeMap<String, String>, WeaveError> {
        let reported = self
            .networks
            .snapshots(environment)
            .map_err(|e| from_network("environment", e))?;
        let mut out = BTreeMap::new();
        for node in from.record.nodes_with_volumes() {
            let list = reported.get(&node).cloned().unwrap_or_default();
            let best = list
                .iter()
                .filter(|s| s.taken_unix_ns <= t)
                .max_by_key(|s| s.taken_unix_ns);
            match best {
                Some(s) => {
                    out.insert(node, s.id.clone());
                }
                None => {
                    let earliest = list.iter().min_by_key(|s| s.taken_unix_ns);
                    let why = match earliest {
                        Some(e) => format!(
                            "its earliest is {} taken at {}",
                            e.id,
                            rfc3339(e.taken_unix_ns)
                        ),
                        None => "it has none (not in the environment any more, or its agent reported none)".into(),
                    };
                    return Err(invalid(
                        "at",
                        format!(
                            "node {node:?} of {environment:?} has no volume snapshot taken at or before {}: {why}",
                            rfc3339(t)
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Every node of `from` on the host of the environment's node of that name (a node no
    /// longer in the environment: its first host; one with volumes needs a snapshot,
    /// which only exists where the environment's node is).
    fn placement(
        &self,
        env: &NetworkRecord,
        from: &HistoryEntry,
        snapshots: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, WeaveError> {
        let hosts = env.hosts();
        let mut out = BTreeMap::new();
        for (name, n) in &from.record.network.nodes {
            let host = match env.placement.get(name) {
                Some(h) => h.clone(),
                None => {
                    if !n.volumes.is_empty() && !snapshots.contains_key(name) {
                        return Err(invalid(
                            "at",
                            format!(
                                "node {name:?} is no longer in {:?} and has volumes without a snapshot",
                                env.id
                            ),
                        ));
                    }
                    hosts.first().cloned().ok_or_else(|| {
                        invalid("environment", format!("network {:?} is on no host", env.id))
                    })?
                }
            };
            out.insert(name.clone(), host);
        }
        Ok(out)
    }

    /// Waits until every node of the weave's network is applied; records the time (or
    /// why not, and the weave is degraded).
    async fn wait_ready(
        &self,
        mut rec: WeaveRecord,
        net: &NetworkRecord,
        started: Instant,
    ) -> Result<WeaveRecord, WeaveError> {
        let wait = self.wait();
        let mut error = None;
        for (node, host) in &net.placement {
            let key = node_key(&net.id, node);
            let Some(r) = self.hub.resource(host, kinds::NETWORK_NODE, &key) else {
                continue;
            };
            if let Err(e) = self
                .hub
                .wait_applied(host, kinds::NETWORK_NODE, &key, r.generation, wait)
                .await
            {
                error = Some(e.to_string());
                break;
            }
        }
        match error {
            None => {
                rec.ready_seconds = started.elapsed().as_secs_f64().max(1e-9);
                self.persist(&rec)?;
                info!(weave = %rec.id, ready_seconds = rec.ready_seconds, "weave ready");
                self.tell(
                    "weft.weave.ready",
                    &rec,
                    json!({ "weave": rec.id, "ready_seconds": rec.ready_seconds }),
                );
            }
            Some(e) => {
                warn!(weave = %rec.id, error = %e, "weave not ready");
                rec.error = e;
                self.persist(&rec)?;
            }
        }
        Ok(rec)
    }

    /// The environment node `node`'s steer holder other than `weave`, if any.
    fn holder(&self, environment: &str, node: &str, weave: &str) -> Option<String> {
        lock(&self.records)
            .values()
            .find(|w| w.environment == environment && w.id != weave && w.steered.contains(node))
            .map(|w| w.id.clone())
    }

    fn held(environment: &str, node: &str, holder: &str) -> WeaveError {
        WeaveError::Conflict(format!(
            "node {node:?} of environment {environment:?} is steered by weave {holder:?}; deactivate or delete it first (a deactivated weave keeps its steers at share 0 so that the connections it steered are not reset: only deleting it frees the node, because retargeting a steer resets them)"
        ))
    }

    /// Checks that the environment's node `node` can be steered to `w`'s copy.
    fn steerable(
        &self,
        env: &NetworkRecord,
        w: &WeaveRecord,
        node: &str,
    ) -> Result<(), WeaveError> {
        if let Some(h) = self.holder(&env.id, node, &w.id) {
            return Err(Self::held(&env.id, node, &h));
        }
        // One steer per origin interface: a shadow's divert or failover holds it too.
        if let Some(host) = env.placement.get(node) {
            let other = self
                .hub
                .desired(host)
                .resources
                .into_iter()
                .find_map(|(rk, r)| match r.spec {
                    Spec::Steer(st)
                        if rk.kind == kinds::STEER
                            && !rk.key.starts_with("weave/")
                            && st.network == env.id
                            && st.node == node =>
                    {
                        Some(st.owner)
                    }
                    _ => None,
                });
            if let Some(owner) = other {
                return Err(WeaveError::Conflict(format!(
                    "node {node:?} of environment {:?} is steered by {owner} (one steer per node); stop its divert or failover first",
                    env.id
                )));
            }
        }
        let (Some(eh), Some(wh)) = (env.placement.get(node), w.placement.get(node)) else {
            return Err(invalid(
                "node",
                format!(
                    "node {node:?} is not in both environment {:?} and weave {:?}",
                    env.id, w.id
                ),
            ));
        };
        if eh != wh {
            return Err(invalid(
                "node",
                format!(
                    "node {node:?} of {:?} is on host {eh:?}, the weave's copy on {wh:?}: a weave's steer goes to a node on the same host",
                    env.id
                ),
            ));
        }
        Ok(())
    }

    fn live_environment(&self, w: &WeaveRecord) -> Result<NetworkRecord, WeaveError> {
        self.networks.get(&w.environment).ok_or_else(|| {
            WeaveError::Conflict(format!(
                "the environment {:?} of weave {:?} no longer exists",
                w.environment, w.id
            ))
        })
    }

    /// New connections to `port` of the environment's node `node` (`None`: every node
    /// that declares the port) go to the weave's copy; with `by_request`, only the HTTP/1.1
    /// requests carrying that header do (the others go to the environment). `remove`:
    /// that route goes (the steer stays, steering nothing new on that port); without a
    /// header it removes every route of the port. A route of the whole port replaces the
    /// port's routes by request; a route by request where the whole port is routed is a
    /// conflict.
    pub async fn route(
        &self,
        id: &str,
        port: u32,
        node: Option<&str>,
        by_request: Option<&RequestMatch>,
        remove: bool,
    ) -> Result<WeaveInfo, WeaveError> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid("port", format!("{port} is not a port (1..=65535)")))?;
        let node = node.map(str::trim).filter(|n| !n.is_empty());
        let by_request = by_request.map(RequestMatch::checked).transpose()?;
        let _op = self.ops.lock().await;
        let mut w = self.get(id).ok_or_else(|| missing(id))?;
        let env = self.live_environment(&w)?;
        if remove {
            let before = w.routes.len();
            w.routes.retain(|r| {
                !(r.port == port
                    && node.is_none_or(|n| n == r.node)
                    && by_request
                        .as_ref()
                        .is_none_or(|m| m.header == r.header && m.value == r.header_value))
            });
            if w.routes.len() == before {
                return Err(WeaveError::NotFound(format!(
                    "weave {id:?} has no route of port {port}{}{}",
                    node.map(|n| format!(" on node {n:?}")).unwrap_or_default(),
                    by_request
                        .as_ref()
                        .map(|m| format!(" by header {m}"))
                        .unwrap_or_default()
                )));
            }
        } else {
            let nodes: Vec<String> = match node {
                Some(n) => {
                    if !env.network.nodes.contains_key(n) {
                        return Err(invalid(
                            "node",
                            format!(
                                "environment {:?} has no node {n:?} (it has {})",
                                env.id,
                                env.network
                                    .nodes
                                    .keys()
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                    vec![n.to_owned()]
                }
                None => {
                    let n: Vec<String> = env
                        .network
                        .nodes
                        .iter()
                        .filter(|(name, n)| {
                            n.ports.contains(&port) && w.placement.contains_key(*name)
                        })
                        .map(|(name, _)| name.clone())
                        .collect();
                    if n.is_empty() {
                        let ports: Vec<String> = env
                            .network
                            .nodes
                            .iter()
                            .map(|(name, n)| {
                                let p: Vec<String> = n.ports.iter().map(u16::to_string).collect();
                                format!(
                                    "{name}: {}",
                                    if p.is_empty() {
                                        "none".into()
                                    } else {
                                        p.join(", ")
                                    }
                                )
                            })
                            .collect();
                        return Err(invalid(
                            "port",
                            format!(
                                "no node of environment {:?} (with a copy in the weave) declares port {port} ({}); name a node",
                                env.id,
                                ports.join("; ")
                            ),
                        ));
                    }
                    n
                }
            };
            for n in &nodes {
                self.steerable(&env, &w, n)?;
                if by_request.is_some() && w.routes.contains(&WeaveRoute::port(n, port)) {
                    return Err(WeaveError::Conflict(format!(
                        "port {port} of node {n:?} is routed whole to weave {id:?}: remove that route before routing it by request"
                    )));
                }
            }
            for n in nodes {
                match &by_request {
                    Some(m) => {
                        w.routes.insert(WeaveRoute {
                            header: m.header.clone(),
                            header_value: m.value.clone(),
                            ..WeaveRoute::port(&n, port)
                        });
                    }
                    None => {
                        w.routes.retain(|r| !(r.node == n && r.port == port));
                        w.routes.insert(WeaveRoute::port(&n, port));
                    }
                }
                w.steered.insert(n);
            }
            w.paused = false;
        }
        self.persist(&w)?;
        self.publish_steers(&w.environment);
        info!(weave = %id, port, ?node, header = ?by_request.as_ref().map(|m| m.to_string()), remove, "weave route changed");
        self.tell(
            "weft.weave.routed",
            &w,
            json!({
                "weave": id,
                "environment": w.environment,
                "port": port,
                "node": node,
                "header": by_request.as_ref().map(|m| &m.header),
                "header_value": by_request.as_ref().map(|m| &m.value),
                "removed": remove,
                "routes": w.routes,
            }),
        );
        drop(_op);
        self.snapshot_for_operation(&w.environment, "route").await;
        Ok(self.info_of(&w))
    }

    /// `id` a weave: it takes every new connection to every node of the environment it
    /// has a copy of (one steer spec per node: one map update in the kernel). `id` the
    /// environment: its active weave is deactivated.
    pub async fn activate(&self, id: &str) -> Result<WeaveInfo, WeaveError> {
        if self.get(id).is_none()
            && let Some(env) = self.networks.get(id)
            && env.role == Role::Source
        {
            let active = self
                .list()
                .into_iter()
                .find(|w| w.environment == id && w.active)
                .ok_or_else(|| {
                    WeaveError::Conflict(format!(
                        "no weave of environment {id:?} is active: the environment is the default already"
                    ))
                })?;
            return self.deactivate(&active.id).await;
        }
        let _op = self.ops.lock().await;
        let mut w = self.get(id).ok_or_else(|| missing(id))?;
        let env = self.live_environment(&w)?;
        let nodes: Vec<String> = env
            .network
            .nodes
            .keys()
            .filter(|n| w.placement.contains_key(*n))
            .cloned()
            .collect();
        for n in &nodes {
            self.steerable(&env, &w, n)?;
        }
        w.active = true;
        w.paused = false;
        w.steered.extend(nodes.iter().cloned());
        self.persist(&w)?;
        self.publish_steers(&w.environment);
        info!(weave = %id, environment = %w.environment, "weave activated");
        self.tell(
            "weft.weave.activated",
            &w,
            json!({ "weave": id, "environment": w.environment, "nodes": nodes }),
        );
        drop(_op);
        self.snapshot_for_operation(&w.environment, "activate")
            .await;
        Ok(self.info_of(&w))
    }

    /// Back to the environment: the weave's steers stay with share 0 and its routed ports
    /// (connections in flight to it are not reset); its routes stay recorded.
    pub async fn deactivate(&self, id: &str) -> Result<WeaveInfo, WeaveError> {
        let _op = self.ops.lock().await;
        let mut w = self.get(id).ok_or_else(|| missing(id))?;
        w.active = false;
        w.paused = true;
        self.persist(&w)?;
        self.publish_steers(&w.environment);
        info!(weave = %id, environment = %w.environment, "weave deactivated");
        self.tell(
            "weft.weave.deactivated",
            &w,
            json!({ "weave": id, "environment": w.environment }),
        );
        drop(_op);
        self.snapshot_for_operation(&w.environment, "deactivate")
            .await;
        Ok(self.info_of(&w))
    }

    /// A sync's end: `(network id, environment)`; `field`: the request field.
    fn sync_end(&self, x: &str, field: &str) -> Result<(String, String), WeaveError> {
        if let Some(w) = self.get(x) {
            return Ok((w.id, w.environment));
        }
        match self.networks.get(x).map(|n| n.role) {
            Some(Role::Source) => Ok((x.to_owned(), x.to_owned())),
            Some(_) => Err(invalid(
                field,
                format!("network {x:?} is neither a weave nor an environment (a source network)"),
            )),
            None if field == "destination" => Err(missing(x)),
            None => Err(invalid(
                field,
                format!("{x:?} is neither a weave nor a network"),
            )),
        }
    }

    /// Replaces `volume` of `destination`'s nodes with `source`'s current state (both the
    /// environment or weaves of it), node by node for the nodes that have the volume in
    /// both, and waits (bounded) until every one is done.
    pub async fn sync(
        &self,
        source: &str,
        destination: &str,
        volume: &str,
    ) -> Result<SyncResult, WeaveError> {
        if volume.trim().is_empty() {
            return Err(invalid("volume", "name the volume"));
        }
        let _op = self.ops.lock().await;
        let (src, src_env) = self.sync_end(source, "source")?;
        let (dst, dst_env) = self.sync_end(destination, "destination")?;
        if src_env != dst_env {
            return Err(invalid(
                "source",
                format!(
                    "{src:?} is of environment {src_env:?}, {dst:?} of {dst_env:?}: a sync is between the weaves of one environment"
                ),
            ));
        }
        if src == dst {
            return Err(invalid("source", "the source is the destination"));
        }
        let (Some(s), Some(d)) = (self.networks.get(&src), self.networks.get(&dst)) else {
            return Err(WeaveError::Internal("a sync's network vanished".into()));
        };
        let has = |r: &NetworkRecord, node: &str| {
            r.network
                .nodes
                .get(node)
                .is_some_and(|n| n.volumes.iter().any(|v| v.name == volume))
        };
        let mut sources = BTreeMap::new();
        for node in d.network.nodes.keys() {
            if !has(&d, node) || !has(&s, node) {
                continue;
            }
            let (sh, dh) = (s.placement.get(node), d.placement.get(node));
            if sh != dh {
                return Err(invalid(
                    "source",
                    format!(
                        "node {node:?} of {src:?} is on host {}, of {dst:?} on host {}: a sync copies on one host",
                        sh.map_or("?", String::as_str),
                        dh.map_or("?", String::as_str)
                    ),
                ));
            }
            sources.insert(node.clone(), node_key(&src, node));
        }
        if sources.is_empty() {
            let vols = |r: &NetworkRecord| {
                r.network
                    .nodes
                    .iter()
                    .filter(|(_, n)| !n.volumes.is_empty())
                    .map(|(name, n)| {
                        format!(
                            "{name}: {}",
                            n.volumes
                                .iter()
                                .map(|v| v.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(invalid(
                "volume",
                format!(
                    "no node has volume {volume:?} in both {src:?} ({}) and {dst:?} ({})",
                    vols(&s),
                    vols(&d)
                ),
            ));
        }
        if dst == dst_env {
            // The environment's own volume is about to be replaced: its state now is kept
            // as a snapshot first (a weave can be made from it, or a sync back).
            self.networks
                .snapshot_now(&dst, self.wait())
                .await
                .map_err(|e| from_network("destination", e))?;
        }
        let done = self
            .networks
            .sync_volume(&dst, volume, &sources, self.wait())
            .await
            .map_err(|e| from_network("destination", e))?;
        let nodes: Vec<SyncedNode> = done
            .into_iter()
            .map(|(node, d)| SyncedNode {
                node,
                took_seconds: d.took_seconds,
                method: d.method,
            })
            .collect();
        let destination = match self.get(&dst) {
            Some(w) => self.info_of(&w),
            None => self.environment_info(&d),
        };
        info!(source = %src, destination = %dst, volume, "volumes synced");
        let _ = self.events.send(WeaveEvent {
            event_type: "weft.weave.synced",
            weave: dst.clone(),
            environment: dst_env.clone(),
            data: json!({
                "source": src,
                "destination": dst,
                "volume": volume,
                "nodes": nodes,
            }),
            at_unix_ns: now_unix_ns(),
        });
        drop(_op);
        if dst != dst_env {
            self.snapshot_for_operation(&dst_env, "sync").await;
        }
        Ok(SyncResult { destination, nodes })
    }

    /// Removes its steers (what they steered goes back to the environment), its network
    /// and volumes, and unpins its snapshots. Returns the weave as it last was.
    pub async fn delete(&self, id: &str) -> Result<WeaveInfo, WeaveError> {
        let _op = self.ops.lock().await;
        let rec = self.get(id).ok_or_else(|| missing(id))?;
        let last = self.info_of(&rec);
        lock(&self.records).remove(id);
        self.publish_steers(&rec.environment);
        match self.networks.delete_weave(id).await {
            Ok(_) | Err(NetworkError::NotFound(_)) => {}
            Err(e) => warn!(weave = %id, error = %e, "weave network not removed"),
        }
        match self.networks.pin(&rec.environment, id, None).await {
            Ok(()) | Err(NetworkError::NotFound(_)) => {}
            Err(e) => warn!(weave = %id, error = %e, "weave snapshots not unpinned"),
        }
        self.store.delete(&format!("{STORE_PREFIX}{id}"))?;
        info!(weave = %id, "weave deleted");
        self.tell(
            "weft.weave.deleted",
            &rec,
            json!({ "weave": id, "environment": rec.environment }),
        );
        drop(_op);
        self.snapshot_for_operation(&rec.environment, "delete")
            .await;
        Ok(last)
    }

    pub fn info(&self, id: &str) -> Option<WeaveInfo> {
        self.get(id).map(|r| self.info_of(&r))
    }

    /// Every weave (of `environment` only, when given).
    pub fn infos(&self, environment: Option<&str>) -> Vec<WeaveInfo> {
        self.list()
            .iter()
            .filter(|w| environment.is_none_or(|e| e == w.environment))
            .map(|w| self.info_of(w))
            .collect()
    }

    /// How many weaves there are, and how many are active (for metrics).
    pub fn counts(&self) -> (u64, u64) {
        let all = self.list();
        let active = all.iter().filter(|w| w.active).count();
        (all.len() as u64, active as u64)
    }

    /// The environment as a sync's destination (`WeaveInfo`-shaped).
    fn environment_info(&self, env: &NetworkRecord) -> WeaveInfo {
        WeaveInfo {
            id: env.id.clone(),
            environment: env.id.clone(),
            at_unix_ns: 0,
            environment_revision: env.revision,
            revision_applied_unix_ns: 0,
            created_unix_ns: env.created_unix_ns,
            state: "running",
            error: String::new(),
            snapshots: BTreeMap::new(),
            routes: Vec::new(),
            active: !self
                .list()
                .iter()
                .any(|w| w.environment == env.id && w.active),
            placement: env.placement.clone(),
            ready_seconds: 0.0,
        }
    }

    fn info_of(&self, w: &WeaveRecord) -> WeaveInfo {
        let (state, error) = self.state(w);
        let mut routes: Vec<RouteView> = w
            .routes
            .iter()
            .map(|r| RouteView {
                node: r.node.clone(),
                port: u32::from(r.port),
                header: r.header.clone(),
                header_value: r.header_value.clone(),
            })
            .collect();
        if w.active {
            routes.extend(w.steered.iter().map(|n| RouteView {
                node: n.clone(),
                port: 0,
                header: String::new(),
                header_value: String::new(),
            }));
        }
        WeaveInfo {
            id: w.id.clone(),
            environment: w.environment.clone(),
            at_unix_ns: w.at_unix_ns,
            environment_revision: w.environment_revision,
            revision_applied_unix_ns: w.revision_applied_unix_ns,
            created_unix_ns: w.created_unix_ns,
            state,
            error,
            snapshots: w.snapshots.clone(),
            routes,
            active: w.active,
            placement: w.placement.clone(),
            ready_seconds: w.ready_seconds,
        }
    }

    /// `running` when every node of its network (and its steers) is applied,
    /// `degraded` when one failed (or the create's wait did), else `provisioning`.
    fn state(&self, w: &WeaveRecord) -> (&'static str, String) {
        let mut pending = false;
        let mut check = |host: &str, kind: &str, key: &str| -> Option<String> {
            let desired = self.hub.resource(host, kind, key)?;
            let observed = self.hub.observed(host);
            match observed.resources.get(&ResourceKey::new(kind, key)) {
                Some(o) if o.generation >= desired.generation => match o.status {
                    ResourceStatus::Applied => None,
                    ResourceStatus::Failed => {
                        Some(format!("host {host}: {kind} {key}: {}", o.error))
                    }
                    ResourceStatus::Unsupported => Some(format!(
                        "host {host}: the agent has no reconciler for {kind} (upgrade it)"
                    )),
                },
                _ => {
                    pending = true;
                    None
                }
            }
        };
        let mut errors = Vec::new();
        for (node, host) in &w.placement {
            errors.extend(check(host, kinds::NETWORK_NODE, &node_key(&w.id, node)));
        }
        if let Some(env) = self.networks.get(&w.environment) {
            for node in &w.steered {
                if let Some(host) = env.placement.get(node) {
                    errors.extend(check(host, kinds::STEER, &steer_key(&w.environment, node)));
                }
            }
        }
        if !errors.is_empty() {
            return ("degraded", errors.join("; "));
        }
        if pending || w.ready_seconds == 0.0 {
            if !w.error.is_empty() {
                return ("degraded", w.error.clone());
            }
            return ("provisioning", String::new());
        }
        ("running", String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steer_keys_and_owners_name_the_environment_node_and_the_weave() {
        assert_eq!(steer_key("shop", "web"), "weave/shop/web");
        assert_eq!(steer_owner("shop-w1"), "weave/shop-w1");
    }

    #[test]
    fn network_refusals_keep_their_kind_and_name_the_field() {
        match from_network("at", NetworkError::Invalid("before".into())) {
            WeaveError::Invalid { field, message } => {
                assert_eq!((field.as_str(), message.as_str()), ("at", "before"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_network("id", NetworkError::Exists("x".into())),
            WeaveError::Conflict(_)
        ));
        assert!(matches!(
            from_network("id", NetworkError::Timeout("x".into())),
            WeaveError::Timeout(_)
        ));
        let e = invalid("port", "no node declares it");
        assert_eq!(e.to_string(), "field `port`: no node declares it");
    }
}
