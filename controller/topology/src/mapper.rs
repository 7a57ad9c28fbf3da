//! The specification's library API (`TopologyMapper`, `TopologyVisualizer`), usable
//! without any server: feed [`TrafficObservation`]s, read the map and its analytics.

use serde_json::Value;

use crate::analytics::{self, LatencyStat, TrafficDirection, TrafficPatterns};
use crate::observation::{NetworkEndpoint, TrafficObservation};
use crate::registry::WorkloadDirectory;
use crate::render;
use crate::time::now_unix_ns;
use crate::topology::{
    DependencyView, ObservationError, ServiceClassifier, ServiceView, Topology, TopologySnapshot,
    Window,
};

/// No registered workloads: hosts name themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDirectory;

impl WorkloadDirectory for NoDirectory {
    fn workload_at(&self, _: &std::net::IpAddr) -> Option<String> {
        None
    }

    fn host_of(&self, _: &str) -> Option<String> {
        None
    }
}

/// The result of a batch: how many were merged and why the others were not (by index).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    pub accepted: usize,
    pub errors: Vec<(usize, ObservationError)>,
}

/// The spec's `create_traffic_observation`: a request now, no bytes, no latency; set the
/// other fields on the result. `protocol`: a [`Protocol`](crate::observation::Protocol) or
/// a name as the spec writes it (`"https"`, `"Protocol.HTTPS"`; `""` guesses from the
/// port).
pub fn create_traffic_observation(
    source_host: &str,
    source_port: u16,
    dest_host: &str,
    dest_port: u16,
    protocol: impl AsRef<str>,
) -> TrafficObservation {
    TrafficObservation {
        timestamp_unix_ns: now_unix_ns(),
        source: NetworkEndpoint::new(source_host, source_port),
        destination: NetworkEndpoint::new(dest_host, dest_port),
        protocol: crate::observation::normalize_protocol(protocol.as_ref()),
        bytes_sent: 0,
        bytes_received: 0,
        latency_ms: 0.0,
        status_code: None,
        method: None,
        path: None,
        error: false,
    }
}

/// Discovers services and dependencies from observations. Thread-safe: every method takes
/// `&self`.
#[derive(Debug, Default)]
pub struct TopologyMapper {
    topology: Topology,
    classifier: ServiceClassifier,
}

impl TopologyMapper {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_classifier(classifier: ServiceClassifier) -> Self {
        Self {
            topology: Topology::new(),
            classifier,
        }
    }

    /// The underlying topology (time buckets, raw statistics).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Merges one observation; a refused one changes nothing.
    pub fn observe_traffic(
        &self,
        observation: &TrafficObservation,
    ) -> Result<(), ObservationError> {
        self.topology.observe_traffic(observation, &NoDirectory)
    }

    /// Merges every valid observation and reports the others by index.
    pub fn observe_traffic_batch(&self, observations: &[TrafficObservation]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        for (index, observation) in observations.iter().enumerate() {
            match self.observe_traffic(observation) {
                Ok(()) => outcome.accepted += 1,
                Err(error) => outcome.errors.push((index, error)),
            }
        }
        outcome
    }

    /// The whole map now.
    pub fn generate_topology_map(&self) -> TopologySnapshot {
        self.generate_topology_map_in(&Window::ALL)
    }

    /// The map within a time window.
    pub fn generate_topology_map_in(&self, window: &Window) -> TopologySnapshot {
        self.topology
            .snapshot_with(&NoDirectory, &self.classifier, window, now_unix_ns(), 0)
    }

    pub fn get_service(&self, service_id: &str) -> Option<ServiceView> {
        self.generate_topology_map().service(service_id).cloned()
    }

    /// The spec's `get_service_dependencies(service_id, direction=OUTBOUND)`: pass `None`
    /// for the default (what the service calls). Each dependency's `direction` is from
    /// the service's side (`inbound` where it is called).
    pub fn get_service_dependencies(
        &self,
        service_id: &str,
        direction: impl Into<Option<TrafficDirection>>,
    ) -> Vec<crate::spec::ServiceDependency> {
        let direction = direction.into().unwrap_or(TrafficDirection::Outbound);
        crate::spec::dependencies_of(&self.generate_topology_map(), service_id, direction)
    }

    /// [`Self::get_service_dependencies`] in weft's shape (transport, port, quantiles,
    /// request groups).
    pub fn dependency_views(
        &self,
        service_id: &str,
        direction: TrafficDirection,
    ) -> Vec<DependencyView> {
        let map = self.generate_topology_map();
        analytics::dependencies_of(&map, service_id, direction)
            .into_iter()
            .cloned()
            .collect()
    }

    /// (service, distinct connections), most connected first.
    pub fn find_critical_services(&self) -> Vec<(String, usize)> {
        analytics::critical_by_degree(&self.generate_topology_map())
    }

    /// Dependencies with a mean latency above `latency_threshold_ms`, slowest first.
    pub fn find_bottlenecks(&self, latency_threshold_ms: f64) -> Vec<DependencyView> {
        self.find_bottlenecks_by(latency_threshold_ms, LatencyStat::Avg)
    }

    pub fn find_bottlenecks_by(&self, threshold_ms: f64, stat: LatencyStat) -> Vec<DependencyView> {
        let map = self.generate_topology_map();
        analytics::bottlenecks(&map, threshold_ms, stat)
            .into_iter()
            .cloned()
            .collect()
    }

    pub fn analyze_traffic_patterns(&self) -> TrafficPatterns {
        analytics::analyze_traffic_patterns(&self.generate_topology_map())
    }
}

impl TopologySnapshot {
    /// The spec's `TopologyMap` ([`crate::spec`]): services by id and dependencies, with
    /// the spec's field names and nothing else.
    pub fn to_spec(&self) -> crate::spec::TopologyMap {
        crate::spec::TopologyMap::from(self)
    }

    /// The spec's `to_dict`: [`Self::to_spec`] as a JSON value.
    pub fn to_dict(&self) -> Value {
        serde_json::to_value(self.to_spec()).unwrap_or_default()
    }

    /// [`Self::to_dict`] as pretty JSON text.
    pub fn to_json(&self) -> String {
        // The map always serialises.
        serde_json::to_string_pretty(&self.to_spec()).unwrap_or_default()
    }
}

/// The spec's `TopologyVisualizer`.
#[derive(Debug, Clone, Copy)]
pub struct TopologyVisualizer<'a> {
    map: &'a TopologySnapshot,
}

impl<'a> TopologyVisualizer<'a> {
    pub fn new(map: &'a TopologySnapshot) -> Self {
        Self { map }
    }

    pub fn generate_ascii_map(&self) -> String {
        render::ascii(self.map)
    }

    pub fn generate_dot_graph(&self) -> String {
        render::dot(self.map)
    }
}

#[cfg(test)]
mod tests;
