//! weft-control: the control plane, controller side: one store of desired state per host, made of typed
//! resources (`weft.v1.Resource`: a kind, a key, a spec), streamed whole to the host's agent
//! whenever it changes, and the agent's per-resource reports.
//!
//! ```text
//!  domain (shards, ...) --publish/withdraw--> ControlHub --DesiredState stream--> agent
//!            ^                                   |                                  |
//!            +------- wait_applied <--- observed <------- ObservedState report -----+
//! ```
//!
//! Level-triggered: a reconnecting agent receives the full current state; applying it
//! twice changes nothing. Every change bumps the host's generation; each resource carries
//! the generation at which its spec last changed, and the agent reports per resource which
//! generation it applied. `epoch` grows at every controller start (kept in the store) and
//! generations start at `epoch << 40`, so they never go backwards for a host across
//! restarts; reports of another epoch are ignored.
//!
//! Nothing here talks to sockets; [`grpc`] exposes it as `weft.v1.AgentControlService`.
//! The hub knows no domain: a new kind is a new `Resource.spec` case, published by its
//! domain through [`ControlHub::publish`] and reconciled by an agent reconciler.

pub mod fake;
pub mod grpc;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{broadcast, watch};
pub use weft_proto::kinds;
pub use weft_proto::v1::resource::Spec;

use weft_store::{Store, StoreError};

/// Where the controller epoch is kept.
const EPOCH_KEY: &str = "control/epoch";
/// Generations of one epoch: `epoch << GENERATION_BITS` up to the next epoch's start.
const GENERATION_BITS: u32 = 40;
/// Drift reports kept per host for status queries.
const DRIFT_KEPT: usize = 64;
/// Control events buffered for slow subscribers.
const EVENT_CHANNEL: usize = 1024;

/// Names one resource on its host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub kind: String,
    pub key: String,
}

impl ResourceKey {
    pub fn new(kind: &str, key: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            key: key.to_owned(),
        }
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

/// One resource as desired: its spec and the host generation at which it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredResource {
    pub generation: u64,
    pub spec: Spec,
}

/// The desired state of one host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostDesired {
    pub epoch: u64,
    pub generation: u64,
    pub resources: BTreeMap<ResourceKey, DesiredResource>,
}

impl HostDesired {
    /// The `workload-addresses` resources, by workload: the addresses view of the state.
    pub fn workload_addresses(&self) -> BTreeMap<String, Vec<weft_proto::v1::AddressAssignment>> {
        self.resources
            .values()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadAddresses(w) => Some((w.workload.clone(), w.addresses.clone())),
                _ => None,
            })
            .collect()
    }
}

/// What an agent said of one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResourceStatus {
    #[default]
    Applied,
    Failed,
    /// The agent has no reconciler for the kind.
    Unsupported,
}

/// The agent's report of one resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceObserved {
    /// The resource generation the report is about.
    pub generation: u64,
    pub status: ResourceStatus,
    pub error: String,
    /// Base units in the names (`readdress_down_seconds`).
    pub measurements: BTreeMap<String, f64>,
    /// What is there now, in the kind's own words.
    pub observed: Vec<String>,
    /// A network node that keeps hand changes: what it has where that differs from its
    /// spec (the network manager makes it the desired state of the node and its mirrors).
    pub hand_changes: Option<weft_proto::v1::NodeHandChanges>,
    /// A shadow sink: its comparison of production and shadow so far (the shadow manager
    /// sums and analyses it).
    pub shadow: Option<weft_proto::v1::ShadowReport>,
    /// A network node: its volume snapshots, oldest first (the weaves branch from them).
    pub snapshots: Vec<weft_proto::v1::VolumeSnapshot>,
    /// A network node: its volume syncs, the last done per volume.
    pub syncs: Vec<weft_proto::v1::VolumeSyncDone>,
}

/// An out-of-band change an agent found on something weft manages, and its repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRepaired {
    pub host: String,
    pub resource: ResourceKey,
    pub what: String,
    pub detected_unix_ns: u64,
    /// 0 when the repair failed, or when the change was kept.
    pub repaired_unix_ns: u64,
    pub error: String,
    /// Kept, not repaired: a hand change in a source network whose hand changes
    /// propagate (the resource's report carries what it has now).
    pub kept: bool,
}

/// The last report of one host.
#[derive(Debug, Clone, Default)]
pub struct HostObserved {
    pub epoch: u64,
    /// Every resource of this host generation was processed.
    pub applied_generation: u64,
    pub resources: BTreeMap<ResourceKey, ResourceObserved>,
    pub reported_at: Option<Instant>,
}

/// One resource of a host as desired and as last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceState {
    pub resource: ResourceKey,
    /// The generation at which its spec last changed; `None`: withdrawn, still reported.
    pub desired_generation: Option<u64>,
    /// The agent's last report of it; `None`: not reported yet.
    pub observed: Option<ResourceObserved>,
}

impl ResourceState {
    /// Whether the agent reported the desired spec applied.
    pub fn applied(&self) -> bool {
        match (self.desired_generation, &self.observed) {
            (Some(g), Some(o)) => o.status == ResourceStatus::Applied && o.generation >= g,
            _ => false,
        }
    }
}

/// A host's desired state against its agent's reports (for status queries).
#[derive(Debug, Clone)]
pub struct HostStatus {
    pub host: String,
    pub epoch: u64,
    pub desired_generation: u64,
    pub applied_generation: u64,
    pub reported_at: Option<Instant>,
    pub kinds: Vec<String>,
    pub resources: Vec<ResourceState>,
    /// The last drift reports, oldest first.
    pub drift: Vec<DriftRepaired>,
}

/// Things the control plane tells whoever listens (the event log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    Drift(DriftRepaired),
    /// An agent reported resources of a kind it has no reconciler for.
    Unsupported {
        host: String,
        kind: String,
        keys: usize,
    },
}

#[derive(Debug)]
struct Host {
    desired: watch::Sender<HostDesired>,
    observed: watch::Sender<HostObserved>,
    /// Kinds the host's agent announced when it last connected.
    kinds: Mutex<Vec<String>>,
    drift: Mutex<std::collections::VecDeque<DriftRepaired>>,
    /// Drift reports since the controller started, per kind: (repaired, failed).
    drift_totals: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Serialises changes to this host's desired state.
    edit: Mutex<()>,
}

impl Host {
    fn new(epoch: u64) -> Self {
        let base = epoch << GENERATION_BITS;
        Self {
            desired: watch::channel(HostDesired {
                epoch,
                generation: base,
                resources: BTreeMap::new(),
            })
            .0,
            observed: watch::channel(HostObserved {
                epoch,
                ..Default::default()
            })
            .0,
            kinds: Mutex::default(),
            drift: Mutex::default(),
            drift_totals: Mutex::default(),
            edit: Mutex::new(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why waiting for an agent ended without success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error(
        "host {host}: no report of {resource} at generation {generation} within {timeout:?} (agent offline?)"
    )]
    Timeout {
        host: String,
        resource: ResourceKey,
        generation: u64,
        timeout: Duration,
    },
    #[error(
        "host {host}: the agent does not understand resources of kind {:?} (it has no reconciler for them; upgrade it)",
        resource.kind
    )]
    Unsupported { host: String, resource: ResourceKey },
    #[error("host {host}: {resource}: {error}")]
    Failed {
        host: String,
        resource: ResourceKey,
        error: String,
    },
}

/// Desired and observed state of every host.
#[derive(Debug)]
pub struct ControlHub {
    epoch: u64,
    hosts: DashMap<String, Arc<Host>>,
    events: broadcast::Sender<ControlEvent>,
}

impl Default for ControlHub {
    /// Epoch 0: for tests and controllers without a store.
    fn default() -> Self {
        Self::with_epoch(0)
    }
}

impl ControlHub {
    pub fn with_epoch(epoch: u64) -> Self {
        Self {
            epoch,
            hosts: DashMap::new(),
            events: broadcast::channel(EVENT_CHANNEL).0,
        }
    }

    /// A hub whose epoch is one above the last one kept in `store` (kept before it is used).
    pub fn open(store: &dyn Store) -> Result<Self, StoreError> {
        let last = match store.get(EPOCH_KEY)? {
            None => 0,
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                text.trim()
                    .parse::<u64>()
                    .map_err(|_| StoreError(format!("{EPOCH_KEY}: {text:?} is not a number")))?
            }
        };
        let epoch = last + 1;
        if epoch >= 1 << (64 - GENERATION_BITS) {
            return Err(StoreError(format!(
                "{EPOCH_KEY}: epoch {epoch} is out of range"
            )));
        }
        store.put(EPOCH_KEY, epoch.to_string().as_bytes())?;
        Ok(Self::with_epoch(epoch))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn host(&self, host_id: &str) -> Arc<Host> {
        if let Some(h) = self.hosts.get(host_id) {
            return h.clone();
        }
        self.hosts
            .entry(host_id.to_owned())
            .or_insert_with(|| Arc::new(Host::new(self.epoch)))
            .clone()
    }

    /// Sets one resource's spec (kind from the spec's case); returns the host generation
    /// that carries it: a new one, or the resource's own when the spec is unchanged.
    pub fn publish(&self, host_id: &str, key: &str, spec: Spec) -> u64 {
        let rk = ResourceKey::new(kinds::of(&spec), key);
        self.edit(host_id, rk, Some(spec))
    }

    /// Removes one resource; returns the host generation without it (the current one when
    /// it was not there).
    pub fn withdraw(&self, host_id: &str, kind: &str, key: &str) -> u64 {
        self.edit(host_id, ResourceKey::new(kind, key), None)
    }

    /// Sets and removes several resources of one host at once (`None`: remove), as one
    /// new host generation (or none when nothing changes); returns the host generation
    /// that carries them. A network of a thousand nodes is one state for the agent, not a
    /// thousand.
    pub fn publish_batch(&self, host_id: &str, changes: Vec<(ResourceKey, Option<Spec>)>) -> u64 {
        let host = self.host(host_id);
        let _guard = lock(&host.edit);
        let mut generation = host.desired.borrow().generation;
        host.desired.send_if_modified(|d| {
            let next = d.generation + 1;
            let mut changed = false;
            for (rk, spec) in changes {
                match (spec, d.resources.get(&rk)) {
                    (Some(s), Some(cur)) if cur.spec == s => {}
                    (None, None) => {}
                    (Some(spec), _) => {
                        d.resources.insert(
                            rk,
                            DesiredResource {
                                generation: next,
                                spec,
                            },
                        );
                        changed = true;
                    }
                    (None, Some(_)) => {
                        d.resources.remove(&rk);
                        changed = true;
                    }
                }
            }
            if changed {
                d.generation = next;
                generation = next;
            }
            changed
        });
        generation
    }

    fn edit(&self, host_id: &str, rk: ResourceKey, spec: Option<Spec>) -> u64 {
        let host = self.host(host_id);
        let _guard = lock(&host.edit);
        let mut generation = host.desired.borrow().generation;
        host.desired.send_if_modified(|d| {
            match (&spec, d.resources.get(&rk)) {
                (Some(s), Some(cur)) if cur.spec == *s => {
                    generation = cur.generation;
                    return false;
                }
                (None, None) => return false,
                _ => {}
            }
            d.generation += 1;
            generation = d.generation;
            match spec {
                Some(spec) => {
                    d.resources.insert(rk, DesiredResource { generation, spec });
                }
                None => {
                    d.resources.remove(&rk);
                }
            }
            true
        });
        generation
    }

    pub fn desired(&self, host_id: &str) -> HostDesired {
        self.host(host_id).desired.borrow().clone()
    }

    /// Hosts with desired state, an agent or reports, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut all: Vec<String> = self.hosts.iter().map(|e| e.key().clone()).collect();
        all.sort();
        all
    }

    /// A host's desired state against its reports; `None` for a host the hub never heard
    /// of (looking does not make one).
    pub fn status(&self, host_id: &str) -> Option<HostStatus> {
        let host = self.hosts.get(host_id)?.clone();
        let desired = host.desired.borrow().clone();
        let observed = host.observed.borrow().clone();
        let mut resources: Vec<ResourceState> = desired
            .resources
            .iter()
            .map(|(rk, r)| ResourceState {
                resource: rk.clone(),
                desired_generation: Some(r.generation),
                observed: observed.resources.get(rk).cloned(),
            })
            .collect();
        resources.extend(
            observed
                .resources
                .iter()
                .filter(|(rk, _)| !desired.resources.contains_key(*rk))
                .map(|(rk, o)| ResourceState {
                    resource: rk.clone(),
                    desired_generation: None,
                    observed: Some(o.clone()),
                }),
        );
        resources.sort_by(|a, b| a.resource.cmp(&b.resource));
        Some(HostStatus {
            host: host_id.to_owned(),
            epoch: self.epoch,
            desired_generation: desired.generation,
            applied_generation: observed.applied_generation,
            reported_at: observed.reported_at,
            kinds: lock(&host.kinds).clone(),
            resources,
            drift: lock(&host.drift).iter().cloned().collect(),
        })
    }

    /// The host's current generation.
    pub fn generation(&self, host_id: &str) -> u64 {
        self.host(host_id).desired.borrow().generation
    }

    /// One resource's spec as desired now.
    pub fn resource(&self, host_id: &str, kind: &str, key: &str) -> Option<DesiredResource> {
        self.host(host_id)
            .desired
            .borrow()
            .resources
            .get(&ResourceKey::new(kind, key))
            .cloned()
    }

    /// A receiver that sees the current desired state at once and every change after.
    pub fn watch(&self, host_id: &str) -> watch::Receiver<HostDesired> {
        self.host(host_id).desired.subscribe()
    }

    /// Records the kinds the host's agent understands (at each connect).
    pub fn announce(&self, host_id: &str, kinds: Vec<String>) {
        *lock(&self.host(host_id).kinds) = kinds;
    }

    /// Kinds the host's agent announced.
    pub fn kinds(&self, host_id: &str) -> Vec<String> {
        lock(&self.host(host_id).kinds).clone()
    }

    /// Takes a report. A report of another epoch (sent before this controller started) is
    /// ignored and `false` returned: its generations mean nothing here.
    pub fn report(&self, host_id: &str, observed: HostObserved) -> bool {
        if observed.epoch != self.epoch {
            tracing::debug!(
                host = host_id,
                epoch = observed.epoch,
                current = self.epoch,
                "report of another controller epoch ignored"
            );
            return false;
        }
        let host = self.host(host_id);
        let unsupported = |o: &HostObserved| {
            let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
            for (rk, r) in &o.resources {
                if r.status == ResourceStatus::Unsupported {
                    *by_kind.entry(rk.kind.clone()).or_default() += 1;
                }
            }
            by_kind
        };
        let now = unsupported(&observed);
        let before = unsupported(&host.observed.borrow());
        // Told once per change, not at every report that repeats it.
        for (kind, keys) in now.into_iter().filter(|(k, n)| before.get(k) != Some(n)) {
            let _ = self.events.send(ControlEvent::Unsupported {
                host: host_id.to_owned(),
                kind,
                keys,
            });
        }
        host.observed.send_replace(observed);
        true
    }

    /// Takes drift an agent found and repaired (or failed to).
    pub fn drift(&self, items: Vec<DriftRepaired>) {
        for d in items {
            tracing::info!(host = %d.host, resource = %d.resource, what = %d.what, error = %d.error, "drift reported by agent");
            let host = self.host(&d.host);
            {
                let mut kept = lock(&host.drift);
                if kept.len() == DRIFT_KEPT {
                    kept.pop_front();
                }
                kept.push_back(d.clone());
            }
            {
                let mut totals = lock(&host.drift_totals);
                let entry = totals.entry(d.resource.kind.clone()).or_default();
                if d.error.is_empty() {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
            }
            let _ = self.events.send(ControlEvent::Drift(d));
        }
    }

    /// The last drift reports of a host, oldest first.
    pub fn drift_of(&self, host_id: &str) -> Vec<DriftRepaired> {
        lock(&self.host(host_id).drift).iter().cloned().collect()
    }

    /// Drift reports since start, per host and kind: (host, kind, repaired, failed).
    pub fn drift_totals(&self) -> Vec<(String, String, u64, u64)> {
        let hosts: Vec<(String, Arc<Host>)> = self
            .hosts
            .iter()
            .map(|h| (h.key().clone(), h.value().clone()))
            .collect();
        let mut out = Vec::new();
        for (id, host) in hosts {
            for (kind, (repaired, failed)) in lock(&host.drift_totals).iter() {
                out.push((id.clone(), kind.clone(), *repaired, *failed));
            }
        }
        out.sort();
        out
    }

    /// Control events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ControlEvent> {
        self.events.subscribe()
    }

    pub fn observed(&self, host_id: &str) -> HostObserved {
        self.host(host_id).observed.borrow().clone()
    }

    /// One watcher of the reports of each of `hosts`, for [`next_report`]: taken before
    /// publishing what the caller waits for, so that no report after it is missed.
    pub fn report_watchers(&self, hosts: &[String]) -> Vec<watch::Receiver<HostObserved>> {
        hosts
            .iter()
            .map(|h| self.host(h).observed.subscribe())
            .collect()
    }

    /// Waits until the host's agent has applied `kind/key` at `generation` or later, and
    /// returns its report. For a resource withdrawn by then: until the agent applied a host
    /// generation >= `generation` (one without it) and reported no error for it. Fails on
    /// a reported error, or after `timeout` (saying so if the agent does not know the kind:
    /// such a resource is never counted as applied).
    pub async fn wait_applied(
        &self,
        host_id: &str,
        kind: &str,
        key: &str,
        generation: u64,
        timeout: Duration,
    ) -> Result<ResourceObserved, WaitError> {
        let rk = ResourceKey::new(kind, key);
        let host = self.host(host_id);
        let mut rx = host.observed.subscribe();
        let mut unsupported = false;
        let wait = async {
            loop {
                {
                    let o = rx.borrow_and_update();
                    if let Some(r) = o.resources.get(&rk).filter(|r| r.generation >= generation) {
                        match r.status {
                            ResourceStatus::Applied => return Ok(r.clone()),
                            ResourceStatus::Failed => {
                                return Err(WaitError::Failed {
                                    host: host_id.to_owned(),
                                    resource: rk.clone(),
                                    error: r.error.clone(),
                                });
                            }
                            ResourceStatus::Unsupported => unsupported = true,
                        }
                    } else if o.applied_generation >= generation
                        && !o.resources.contains_key(&rk)
                        && !host.desired.borrow().resources.contains_key(&rk)
                    {
                        // Withdrawn, and the agent applied a state without it.
                        return Ok(ResourceObserved {
                            generation: o.applied_generation,
                            ..Default::default()
                        });
                    } else if o
                        .resources
                        .get(&rk)
                        .is_some_and(|r| r.status == ResourceStatus::Unsupported)
                    {
                        unsupported = true;
                    }
                }
                if rx.changed().await.is_err() {
                    // The hub lives as long as the controller: a closed channel means
                    // shutdown; treat it as a timeout.
                    std::future::pending::<()>().await;
                }
            }
        };
        let result = tokio::time::timeout(timeout, wait).await;
        match result {
            Ok(r) => r,
            Err(_) if unsupported => Err(WaitError::Unsupported {
                host: host_id.to_owned(),
                resource: rk,
            }),
            Err(_) => Err(WaitError::Timeout {
                host: host_id.to_owned(),
                resource: rk,
                generation,
                timeout,
            }),
        }
    }
}

/// Waits until one of `watchers` has a report it has not seen yet, or `timeout` (a poll's
/// upper bound: the caller checks what it waits for after each return).
pub async fn next_report(watchers: &mut [watch::Receiver<HostObserved>], timeout: Duration) {
    if watchers.is_empty() {
        tokio::time::sleep(timeout).await;
        return;
    }
    let any = futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
    if let Ok((Err(_), _, _)) = tokio::time::timeout(timeout, any).await {
        // A host gone (not while the hub lives): no spinning until the deadline.
        tokio::time::sleep(timeout).await;
    }
}

#[cfg(test)]
mod tests;
