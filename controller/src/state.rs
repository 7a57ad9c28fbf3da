//! The state shared by the gRPC and HTTP servers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::time::now_unix_ns;
use crate::topology::{Topology, TopologySnapshot};

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
}

impl AppState {
    /// A fresh controller state with a random instance id, reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            registry: Arc::new(Registry::new()),
            topology: Arc::new(Topology::new()),
            metrics,
            controller_instance: format!("{:016x}", rand::random::<u64>()).into(),
        }
    }

    /// Agents heard from within [`CONNECTED_WINDOW`].
    pub fn agents_connected(&self) -> u64 {
        let connected = self.registry.connected(Instant::now(), CONNECTED_WINDOW);
        u64::try_from(connected).unwrap_or(u64::MAX)
    }

    /// The topology now.
    pub fn snapshot(&self) -> TopologySnapshot {
        self.topology.snapshot(
            self.registry.as_ref(),
            now_unix_ns(),
            self.agents_connected(),
        )
    }
}

impl Default for AppState {
    fn default() -> Self {
        Self::new(Arc::new(Metrics::default()))
    }
}
