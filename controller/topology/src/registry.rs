//! Registered agents and the workloads they host.
//!
//! Each agent (keyed by host id) carries the instance id it registered with, its workloads,
//! when it last contacted the controller and the last batch sequence merged from it. An
//! index maps every registered workload address to the workload's name, over all agents.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::model::Workload;

/// Names endpoints: which registered workload owns an address, and on which host a
/// workload runs. The topology depends on this trait, not on the registry itself.
pub trait WorkloadDirectory {
    fn workload_at(&self, address: &IpAddr) -> Option<String>;
    fn host_of(&self, workload: &str) -> Option<String>;
}

/// One registered agent.
#[derive(Debug)]
pub struct Agent {
    pub host_id: String,
    pub agent_instance: String,
    pub workloads: Vec<Workload>,
    last_contact: Mutex<Instant>,
    /// Last merged batch sequence. Held while a batch is merged, so two pushes of the same
    /// batch cannot both pass the duplicate check.
    sequence: Mutex<u64>,
    /// Highest merged sequence the controller holds durably (in a written checkpoint).
    durable: std::sync::atomic::AtomicU64,
    dropped_records_total: Mutex<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain numbers: a panic elsewhere cannot leave them invalid.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Agent {
    pub fn last_contact(&self) -> Instant {
        *lock(&self.last_contact)
    }

    pub fn touch(&self, now: Instant) {
        *lock(&self.last_contact) = now;
    }

    pub fn last_sequence(&self) -> u64 {
        *lock(&self.sequence)
    }

    /// Runs `merge` if `sequence` is newer than the last merged one, then records it.
    /// Returns `None` (without calling `merge`) for a batch already merged.
    pub fn merge_batch<R>(&self, sequence: u64, merge: impl FnOnce() -> R) -> Option<R> {
        let mut last = lock(&self.sequence);
        if sequence <= *last {
            return None;
        }
        let result = merge();
        *last = sequence;
        Some(result)
    }

    /// Highest merged sequence held durably (by the last written topology checkpoint).
    pub fn durable_sequence(&self) -> u64 {
        self.durable.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_dropped_records_total(&self, total: u64) {
        *lock(&self.dropped_records_total) = total;
    }

    pub fn dropped_records_total(&self) -> u64 {
        *lock(&self.dropped_records_total)
    }
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent {host_id} instance {agent_instance} is not registered; call Register first")]
pub struct NotRegistered {
    pub host_id: String,
    pub agent_instance: String,
}

#[derive(Debug, Default)]
pub struct Registry {
    agents: DashMap<String, Arc<Agent>>,
    /// Workload address -> workload name, over all agents.
    addresses: DashMap<IpAddr, String, crate::FastHash>,
    /// Workload name -> host id.
    hosts: DashMap<String, String>,
    /// Serialises registrations so the indexes are rebuilt from one consistent view.
    registration: Mutex<()>,
    /// Grows at every registration: names of addresses may have changed.
    version: std::sync::atomic::AtomicU64,
    /// Host id -> (agent instance, last merged sequence) read back from a checkpoint, for
    /// agents that have not registered again since the controller started.
    restored: DashMap<String, (String, u64)>,
    /// Whether merged batches are durable only once a checkpoint holds them (checkpoints
    /// on); otherwise a batch is as durable as the controller ever makes it once merged.
    durable_at_checkpoint: std::sync::atomic::AtomicBool,
    /// Held shared while a batch is merged, exclusively while a checkpoint copies the
    /// topology and the sequences: the two are then one consistent cut.
    merges: std::sync::RwLock<()>,
}

/// One agent instance's last merged batch sequence, as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSequence {
    pub host_id: String,
    pub agent_instance: String,
    pub sequence: u64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or re-registers) an agent, replacing its workload list. Returns the last
    /// batch sequence merged from this agent instance (0 for a new instance).
    pub fn register(
        &self,
        host_id: &str,
        agent_instance: &str,
        workloads: Vec<Workload>,
        now: Instant,
    ) -> u64 {
        let _registration = lock(&self.registration);
        let live = self
            .agents
            .get(host_id)
            .filter(|agent| agent.agent_instance == agent_instance)
            .map(|agent| (agent.last_sequence(), agent.durable_sequence()));
        let (last_sequence, durable) = live.unwrap_or_else(|| {
            // Not registered since the controller started: what the checkpoint holds.
            let restored = self
                .restored
                .get(host_id)
                .filter(|r| r.0 == agent_instance)
                .map_or(0, |r| r.1);
            (restored, restored)
        });
        let agent = Agent {
            host_id: host_id.to_owned(),
            agent_instance: agent_instance.to_owned(),
            workloads,
            last_contact: Mutex::new(now),
            sequence: Mutex::new(last_sequence),
            durable: std::sync::atomic::AtomicU64::new(durable),
            dropped_records_total: Mutex::new(0),
        };
        self.agents.insert(host_id.to_owned(), Arc::new(agent));
        self.rebuild_indexes();
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        last_sequence
    }

    /// From now on a merged batch is durable only once [`Self::set_durable`] says a
    /// checkpoint holds it (the controller checkpoints its topology).
    pub fn durable_at_checkpoint(&self) {
        self.durable_at_checkpoint
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The sequence up to which `agent`'s batches are durable: the agent may forget them.
    pub fn durable_sequence(&self, agent: &Agent) -> u64 {
        if self
            .durable_at_checkpoint
            .load(std::sync::atomic::Ordering::Acquire)
        {
            agent.durable_sequence()
        } else {
            agent.last_sequence()
        }
    }

    /// Held while a batch is merged (shared: merges run side by side).
    pub fn merging(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.merges.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held while a checkpoint copies the topology and [`Self::sequences`]: no batch is
    /// half merged meanwhile.
    pub fn pause_merges(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.merges.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sequence read back from a checkpoint (before agents register).
    pub fn restore_sequence(&self, restored: AgentSequence) {
        self.restored.insert(
            restored.host_id,
            (restored.agent_instance, restored.sequence),
        );
    }

    /// Every agent instance's last merged sequence: registered agents, and those read back
    /// from the last checkpoint that have not registered again. Consistent with the
    /// topology only while no batch is being merged (the caller holds the ingest gate).
    pub fn sequences(&self) -> Vec<AgentSequence> {
        let mut all: Vec<AgentSequence> = self
            .restored
            .iter()
            .filter(|r| !self.agents.contains_key(r.key()))
            .map(|r| AgentSequence {
                host_id: r.key().clone(),
                agent_instance: r.value().0.clone(),
                sequence: r.value().1,
            })
            .collect();
        all.extend(self.agents.iter().map(|a| AgentSequence {
            host_id: a.host_id.clone(),
            agent_instance: a.agent_instance.clone(),
            sequence: a.last_sequence(),
        }));
        all.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        all
    }

    /// A checkpoint holding `sequences` was written: those batches are durable.
    pub fn set_durable(&self, sequences: &[AgentSequence]) {
        for s in sequences {
            if let Some(agent) = self
                .agents
                .get(&s.host_id)
                .filter(|a| a.agent_instance == s.agent_instance)
            {
                agent
                    .durable
                    .fetch_max(s.sequence, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }

    /// Grows at every registration (a cache of a rendering that names workloads is valid
    /// while it stays the same).
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registered agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Every registered agent, by host id.
    pub fn agents(&self) -> Vec<Arc<Agent>> {
        let mut all: Vec<Arc<Agent>> = self.agents.iter().map(|a| a.value().clone()).collect();
        all.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        all
    }

    /// Rebuilds the address and host indexes from all agents. Agents are visited in host id
    /// order so that an address claimed by two hosts resolves the same way every time.
    fn rebuild_indexes(&self) {
        let mut agents: Vec<Arc<Agent>> = self.agents.iter().map(|a| a.value().clone()).collect();
        agents.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        let mut addresses = HashMap::new();
        let mut hosts = HashMap::new();
        for agent in &agents {
            for workload in &agent.workloads {
                hosts.insert(workload.name.clone(), agent.host_id.clone());
                for address in &workload.addresses {
                    addresses.insert(*address, workload.name.clone());
                }
            }
        }
        self.addresses
            .retain(|address, _| addresses.contains_key(address));
        for (address, name) in addresses {
            self.addresses.insert(address, name);
        }
        self.hosts.retain(|name, _| hosts.contains_key(name));
        for (name, host) in hosts {
            self.hosts.insert(name, host);
        }
    }

    /// The agent registered for `host_id` with exactly this instance id.
    pub fn agent(&self, host_id: &str, agent_instance: &str) -> Result<Arc<Agent>, NotRegistered> {
        self.agents
            .get(host_id)
            .filter(|agent| agent.agent_instance == agent_instance)
            .map(|agent| agent.value().clone())
            .ok_or_else(|| NotRegistered {
                host_id: host_id.to_owned(),
                agent_instance: agent_instance.to_owned(),
            })
    }

    /// Agents whose last contact is less than `window` before `now`.
    pub fn connected(&self, now: Instant, window: Duration) -> usize {
        self.agents
            .iter()
            .filter(|agent| now.saturating_duration_since(agent.last_contact()) < window)
            .count()
    }

    /// Records the agents had to drop, summed over agents.
    pub fn dropped_records_total(&self) -> u64 {
        self.agents
            .iter()
            .map(|agent| agent.dropped_records_total())
            .fold(0, u64::saturating_add)
    }
}

impl WorkloadDirectory for Registry {
    fn workload_at(&self, address: &IpAddr) -> Option<String> {
        self.addresses.get(address).map(|name| name.value().clone())
    }

    fn host_of(&self, workload: &str) -> Option<String> {
        self.hosts.get(workload).map(|host| host.value().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, address: &str) -> Workload {
        Workload {
            name: name.into(),
            interface: format!("veth-{name}"),
            addresses: vec![address.parse().expect("test address")],
        }
    }

    #[test]
    fn addresses_resolve_to_workloads_of_all_agents() {
        let registry = Registry::new();
        let now = Instant::now();
        registry.register("host-a", "i1", vec![workload("web", "10.0.0.1")], now);
        registry.register("host-b", "i2", vec![workload("db", "10.0.0.2")], now);
        assert_eq!(
            registry
                .workload_at(&"10.0.0.1".parse().unwrap())
                .as_deref(),
            Some("web")
        );
        assert_eq!(
            registry
                .workload_at(&"10.0.0.2".parse().unwrap())
                .as_deref(),
            Some("db")
        );
        assert_eq!(registry.host_of("db").as_deref(), Some("host-b"));
        assert_eq!(registry.workload_at(&"10.0.0.3".parse().unwrap()), None);
    }

    #[test]
    fn re_registering_replaces_the_workload_list() {
        let registry = Registry::new();
        let now = Instant::now();
        registry.register("host-a", "i1", vec![workload("web", "10.0.0.1")], now);
        registry.register("host-a", "i1", vec![workload("api", "10.0.0.9")], now);
        assert_eq!(registry.workload_at(&"10.0.0.1".parse().unwrap()), None);
        assert_eq!(
            registry
                .workload_at(&"10.0.0.9".parse().unwrap())
                .as_deref(),
            Some("api")
        );
        assert_eq!(registry.host_of("web"), None);
    }

    #[test]
    fn same_instance_keeps_its_sequence_and_a_new_instance_starts_at_zero() {
        let registry = Registry::new();
        let now = Instant::now();
        assert_eq!(registry.register("host-a", "i1", vec![], now), 0);
        let agent = registry.agent("host-a", "i1").expect("registered");
        assert_eq!(agent.merge_batch(5, || ()), Some(()));
        assert_eq!(agent.merge_batch(5, || ()), None, "duplicate batch");
        assert_eq!(registry.register("host-a", "i1", vec![], now), 5);
        assert_eq!(registry.register("host-a", "i2", vec![], now), 0);
        assert!(registry.agent("host-a", "i1").is_err());
    }

    #[test]
    fn connected_counts_only_recent_contacts() {
        let registry = Registry::new();
        let start = Instant::now();
        registry.register("host-a", "i1", vec![], start);
        registry.register("host-b", "i2", vec![], start + Duration::from_secs(20));
        let now = start + Duration::from_secs(21);
        assert_eq!(registry.connected(now, Duration::from_secs(15)), 1);
    }
}
