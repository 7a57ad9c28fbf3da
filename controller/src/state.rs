//! The state shared by the gRPC and HTTP servers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_store::{MemoryStore, Store, StoreError};
use weft_topology::history::{History, HistoryError};
use weft_topology::registry::Registry;
use weft_topology::time::now_unix_ns;
use weft_topology::topology::{BucketConfig, ServiceClassifier, Topology, TopologySnapshot, Window};

use weft_control::ControlHub;
use crate::metrics::Metrics;
use crate::shards::{ShardConfig, ShardManager};
use crate::compose::HubAddresses;

/// An agent counts as connected while its last contact is younger than this.
pub const CONNECTED_WINDOW: Duration = Duration::from_secs(15);

/// Cheap to clone: every part is behind an `Arc`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub topology: Arc<Topology>,
    pub metrics: Arc<Metrics>,
    /// Random id of this controller process, returned to registering agents.
    pub controller_instance: Arc<str>,
    pub classifier: Arc<ServiceClassifier>,
    /// Snapshots over time, events and the allow-list, kept in the store.
    pub history: Arc<History>,
    /// Desired addresses per host and what the agents report (the control path).
    pub control: Arc<ControlHub>,
    /// IP shards, address allocation and migrations; feeds `control`.
    pub shards: ShardManager,
}

impl AppState {
    /// A fresh controller state with a random instance id, reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let history = History::new(Arc::new(MemoryStore::default()))
            .expect("an empty memory store holds nothing unreadable");
        let control = Arc::new(ControlHub::default());
        Self {
            registry: Arc::new(Registry::new()),
            topology: Arc::new(Topology::new()),
            metrics,
            controller_instance: format!("{:016x}", rand::random::<u64>()).into(),
            classifier: Arc::new(ServiceClassifier::default()),
            history: Arc::new(history),
            control: control.clone(),
            shards: ShardManager::open(
                Arc::new(MemoryStore::default()),
                ShardConfig::default(),
                HubAddresses::publisher(control),
            )
            .expect("an empty memory store holds nothing unreadable"),
        }
    }

    /// A controller state over `store`, classifying with `classifier` and keeping time
    /// buckets as `buckets` says.
    pub fn with_parts(
        metrics: Arc<Metrics>,
        classifier: ServiceClassifier,
        store: Arc<dyn Store>,
        buckets: BucketConfig,
    ) -> Result<Self, HistoryError> {
        Ok(Self {
            topology: Arc::new(Topology::with_buckets(buckets)),
            classifier: Arc::new(classifier),
            history: Arc::new(History::new(store)?),
            ..Self::new(metrics)
        })
    }

    /// Agents heard from within [`CONNECTED_WINDOW`].
    pub fn agents_connected(&self) -> u64 {
        let connected = self.registry.connected(Instant::now(), CONNECTED_WINDOW);
        u64::try_from(connected).unwrap_or(u64::MAX)
    }

    /// The topology now.
    pub fn snapshot(&self) -> TopologySnapshot {
        self.snapshot_in(&Window::ALL)
    }

    /// The topology within a time window.
    pub fn snapshot_in(&self, window: &Window) -> TopologySnapshot {
        self.topology.snapshot_with(
            self.registry.as_ref(),
            &self.classifier,
            window,
            now_unix_ns(),
            self.agents_connected(),
        )
    }
}

impl AppState {
    /// The same state with a shard manager over `store`, publishing into this state's
    /// control hub.
    pub fn open_shards(self, store: Arc<dyn Store>, config: ShardConfig) -> Result<Self, StoreError> {
        let shards = ShardManager::open(store, config, HubAddresses::publisher(self.control.clone()))?;
        Ok(Self { shards, ..self })
    }

    /// The same state with the control plane kept in `store`: a control hub of the next
    /// epoch, and the shard manager over `store` publishing into it.
    pub fn open_control_plane(self, store: Arc<dyn Store>, config: ShardConfig) -> Result<Self, StoreError> {
        let control = Arc::new(ControlHub::open(store.as_ref())?);
        Self { control, ..self }.open_shards(store, config)
    }
}

impl Default for AppState {
    fn default() -> Self {
        Self::new(Arc::new(Metrics::default()))
    }
}
