//! The state shared by the gRPC and HTTP servers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_store::{MemoryStore, Store, StoreError};
use weft_topology::history::{History, HistoryError, HistoryLimits};
use weft_topology::registry::Registry;
use weft_topology::time::now_unix_ns;
use weft_topology::topology::{
    BucketConfig, ServiceClassifier, Topology, TopologyLimits, TopologySnapshot, Window,
};

use crate::compose::RoutedAddresses;
use crate::hosts::HostDirectory;
use crate::limits::{LimitConfig, Limits};
use crate::metrics::{Exposition, Metrics, StateCollector};
use weft_control::ControlHub;
use weft_shards::{ShardConfig, ShardManager};

/// An agent counts as connected while its last contact is younger than this.
pub const CONNECTED_WINDOW: Duration = Duration::from_secs(15);

/// Cheap to clone: every part is behind an `Arc`. Made by [`AppState::builder`] and
/// [`AppStateBuilder::start`], ended by [`AppState::shutdown`].
#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub topology: Arc<Topology>,
    /// Counters of the ingest path (registered in `exposition`).
    pub metrics: Arc<Metrics>,
    /// Every metric, for `/metrics`.
    pub exposition: Arc<Exposition>,
    /// Random id of this controller process, returned to registering agents.
    pub controller_instance: Arc<str>,
    pub classifier: Arc<ServiceClassifier>,
    /// Snapshots over time, events and the allow-list, kept in the store.
    pub history: Arc<History>,
    /// Desired addresses per host and what the agents report (the control path).
    pub control: Arc<ControlHub>,
    /// IP shards, address allocation and migrations; feeds `control`.
    pub shards: ShardManager,
    /// TDL networks and their mirrors; feeds `control`, takes addresses from `shards`.
    pub networks: Arc<weft_networks::NetworkManager>,
    /// Shadow environments: mirrors of production fed sampled connections; feeds
    /// `control`, makes its networks through `networks`.
    pub shadows: Arc<weft_shadows::ShadowManager>,
    /// Weaves: an environment as it was at a point of its history, beside it; feeds
    /// `control` (steers), makes its networks through `networks`.
    pub weaves: Arc<weft_weaves::WeaveManager>,
    /// Underlay addresses of the hypervisors (from their agents' registrations).
    pub hosts: Arc<HostDirectory>,
    /// Tokens and the rules of who may call what.
    pub auth: Arc<crate::auth::Auth>,
    /// The limits on requests, connections, streams, renders and agents, and their counts.
    pub limits: Arc<Limits>,
    /// The most recent flows the agents reported, for `GET /flows`.
    pub flows: Arc<crate::flows::RecentFlows>,
}

/// Why a controller state could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("topology history: {0}")]
    History(#[from] HistoryError),
    #[error("control plane: {0}")]
    Store(#[from] StoreError),
    #[error("networks: {0}")]
    Networks(#[from] weft_networks::NetworkError),
    #[error("shadows: {0}")]
    Shadows(#[from] weft_shadows::ShadowError),
    #[error("weaves: {0}")]
    Weaves(#[from] weft_weaves::WeaveError),
}

/// The settings of a controller state; [`AppStateBuilder::start`] opens it over a store.
#[derive(Debug, Default)]
pub struct AppStateBuilder {
    classifier: ServiceClassifier,
    buckets: BucketConfig,
    shard_config: ShardConfig,
    auth: crate::auth::AuthConfig,
    topology_limits: TopologyLimits,
    history_limits: HistoryLimits,
    limits: LimitConfig,
    snapshots: weft_networks::SnapshotPolicy,
    anomalies: weft_topology::analytics::anomaly::AnomalyConfig,
}

impl AppStateBuilder {
    /// The volume snapshot schedule of source networks' nodes (default every 300 s, 12
    /// kept).
    pub fn volume_snapshots(self, snapshots: weft_networks::SnapshotPolicy) -> Self {
        Self { snapshots, ..self }
    }

    /// How the anomaly watch judges each bucket (default:
    /// [`AnomalyConfig::default`](weft_topology::analytics::anomaly::AnomalyConfig)).
    pub fn anomalies(self, anomalies: weft_topology::analytics::anomaly::AnomalyConfig) -> Self {
        Self { anomalies, ..self }
    }

    /// How services are classified (default: the built-in rules).
    pub fn classifier(self, classifier: ServiceClassifier) -> Self {
        Self { classifier, ..self }
    }

    /// The topology's time buckets (default: 60 s wide, kept 24 h).
    pub fn buckets(self, buckets: BucketConfig) -> Self {
        Self { buckets, ..self }
    }

    /// What the topology keeps at most and which timestamps it accepts (default:
    /// [`TopologyLimits::default`], no timestamp window).
    pub fn topology_limits(self, topology_limits: TopologyLimits) -> Self {
        Self {
            topology_limits,
            ..self
        }
    }

    /// How many snapshots are kept and how often one may be taken on request.
    pub fn history_limits(self, history_limits: HistoryLimits) -> Self {
        Self {
            history_limits,
            ..self
        }
    }

    /// The limits on requests, connections, streams, renders and agents.
    pub fn limits(self, limits: LimitConfig) -> Self {
        Self { limits, ..self }
    }

    /// The shard manager's pools and limits.
    pub fn shard_config(self, shard_config: ShardConfig) -> Self {
        Self {
            shard_config,
            ..self
        }
    }

    /// Who may call (default: [`crate::auth::AuthConfig::open`], for in-process tests).
    pub fn auth(self, auth: crate::auth::AuthConfig) -> Self {
        Self { auth, ..self }
    }

    /// Opens everything kept in `store`: the history, a control hub of the next epoch, and
    /// the shard manager publishing into it (its writer thread starts; inside a tokio
    /// runtime, unfinished migrations resume, and the event tasks of [`crate::events`]
    /// start: new dependencies announced at ingest, the anomaly watch, topology and
    /// network events into the one log). Builds the metrics registry and registers
    /// every part's metrics in it.
    pub fn start(self, store: Arc<dyn Store>) -> Result<AppState, StartError> {
        let tokens = store.clone();
        self.start_with_tokens(store, tokens)
    }

    /// As [`Self::start`], with the tokens in `tokens` (a follower replica: its state in
    /// memory, the tokens the site's clients hold in the shared store).
    pub fn start_with_tokens(
        self,
        store: Arc<dyn Store>,
        tokens: Arc<dyn Store>,
    ) -> Result<AppState, StartError> {
        let history = Arc::new(History::with_limits(store.clone(), self.history_limits)?);
        let auth = crate::auth::Auth::new(self.auth, crate::auth::Tokens::open(tokens)?);
        let control = Arc::new(ControlHub::open(store.as_ref())?);
        let hosts = Arc::new(HostDirectory::new(control.clone()));
        let networks =
            weft_networks::NetworkManager::open(store.clone(), control.clone(), hosts.clone())?;
        networks.set_snapshot_policy(self.snapshots);
        let store_for_shadows = store.clone();
        let store_for_weaves = store.clone();
        let shards = ShardManager::open(
            store,
            self.shard_config,
            RoutedAddresses::publisher(control.clone(), networks.clone()),
        )?;
        networks.attach_shards(shards.clone());
        networks.republish();
        // Ends with the manager (it holds it weakly).
        let _ = networks.follow_restarts();
        let shadows = weft_shadows::ShadowManager::open(
            store_for_shadows,
            control.clone(),
            networks.clone(),
            hosts.clone(),
        )?;
        // After the networks: the taps and sinks go where their nodes are.
        shadows.republish();
        // Ends with the manager (it holds it weakly); nothing without a runtime.
        let _ = shadows.follow();
        let weaves =
            weft_weaves::WeaveManager::open(store_for_weaves, control.clone(), networks.clone())?;
        // After the networks: the steers go where the environments' nodes are.
        weaves.republish();
        // Ends with the manager (it holds it weakly); nothing without a runtime.
        let _ = weaves.follow();
        let topology = Arc::new(Topology::with_config(self.buckets, self.topology_limits));
        let limits = Arc::new(Limits::new(self.limits));
        let registry = Arc::new(Registry::new());

        let mut metrics_registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut metrics_registry));
        metrics_registry.register_collector(Box::new(StateCollector {
            topology: topology.clone(),
            history: history.clone(),
            agents: registry.clone(),
            connected_window: CONNECTED_WINDOW,
            limits: limits.clone(),
        }));
        metrics_registry.register_collector(Box::new(crate::metrics::ControlCollector {
            control: control.clone(),
        }));
        metrics_registry.register_collector(Box::new(crate::metrics::WeaveCollector {
            weaves: weaves.clone(),
        }));
        metrics_registry.register_collector(Box::new(crate::metrics::ShardCollector {
            shards: shards.clone(),
        }));
        metrics_registry.register_collector(Box::new(crate::metrics::AgentCollector {
            agents: registry.clone(),
        }));
        let exposition = Arc::new(Exposition::new(
            metrics_registry,
            topology.clone(),
            limits.clone(),
            shards.clone(),
        ));

        let state = AppState {
            registry,
            topology,
            metrics,
            exposition,
            controller_instance: format!("{:016x}", rand::random::<u64>()).into(),
            classifier: Arc::new(self.classifier),
            history,
            control,
            shards,
            networks,
            shadows,
            weaves,
            hosts,
            auth,
            limits,
            flows: Arc::new(crate::flows::RecentFlows::default()),
        };
        // Inside a runtime: events fire by themselves (crate::events).
        if tokio::runtime::Handle::try_current().is_ok() {
            crate::events::follow_ingest(&state.topology, &state.history);
            crate::events::log_topology_events(&state.history, state.shards.clone());
            crate::events::log_network_events(&state);
            tokio::spawn(crate::events::anomaly_watch(
                Arc::downgrade(&state.topology),
                Arc::downgrade(&state.history),
                self.anomalies,
            ));
        }
        Ok(state)
    }
}

impl AppState {
    /// A controller state with default settings; see [`AppStateBuilder::start`].
    pub fn builder() -> AppStateBuilder {
        AppStateBuilder::default()
    }

    /// Stops the migration runners and the shard writer once it has committed every
    /// request queued before this call (later ones fail), and waits for it. Unfinished
    /// migrations resume at the next start.
    pub async fn shutdown(&self) {
        self.shards.drain().await;
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

    /// The JSON of [`Self::snapshot_in`] (the body of `GET /topology`), written without
    /// building the snapshot.
    pub fn snapshot_json_in(&self, window: &Window) -> Vec<u8> {
        self.topology.snapshot_json(
            self.registry.as_ref(),
            &self.classifier,
            window,
            now_unix_ns(),
            self.agents_connected(),
        )
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

/// A state over a fresh memory store with default settings (tests, benchmarks).
impl Default for AppState {
    fn default() -> Self {
        AppState::builder()
            .start(Arc::new(MemoryStore::default()))
            .expect("a fresh memory store holds nothing unreadable")
    }
}
