//! The controller's `GET /topology` JSON, read leniently (missing fields default), plus
//! the questions tests ask of it.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Topology {
    pub services: Vec<serde_json::Value>,
    pub dependencies: Vec<Dependency>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Dependency {
    pub source: String,
    pub target: String,
    pub transport: String,
    pub port: u16,
    pub protocol: String,
    pub flows: u64,
    pub requests: u64,
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub payload_bytes_sent: u64,
    pub payload_bytes_received: u64,
    pub latency_ms: Stats,
    pub handshake_rtt_ms: Stats,
    pub address_families: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub count: u64,
    pub avg: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Topology {
    pub fn parse(json: &str) -> Result<Topology> {
        serde_json::from_str(json).with_context(|| {
            let head: String = json.chars().take(300).collect();
            format!("topology JSON does not parse: {head}")
        })
    }

    /// The set of `source->target` edges.
    pub fn edges(&self) -> BTreeSet<String> {
        self.dependencies
            .iter()
            .map(|d| format!("{}->{}", d.source, d.target))
            .collect()
    }

    /// All dependencies from `source` to `target` (one per port/transport).
    pub fn between(&self, source: &str, target: &str) -> Vec<&Dependency> {
        self.dependencies
            .iter()
            .filter(|d| d.source == source && d.target == target)
            .collect()
    }

    /// The dependency from `source` to `target`; fails when missing.
    pub fn edge(&self, source: &str, target: &str) -> Result<&Dependency> {
        self.dependencies
            .iter()
            .find(|d| d.source == source && d.target == target)
            .with_context(|| {
                format!(
                    "no dependency {source}->{target}; edges: {:?}",
                    self.edges()
                )
            })
    }
}

/// `{"a->b", ...}` from string slices, to compare with `Topology::edges`.
pub fn edge_set(edges: &[(&str, &str)]) -> BTreeSet<String> {
    edges.iter().map(|(a, b)| format!("{a}->{b}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dependencies_and_tolerates_missing_fields() {
        let json = r#"{"services":[{"name":"web"}],"dependencies":[
            {"source":"client","target":"web","transport":"tcp","port":80,"protocol":"http",
             "flows":8,"requests":12,"latency_ms":{"count":12,"avg":1.5,"p50":1.0,"p95":2.0,"p99":3.0,"max":4.0},
             "address_families":["ipv4"]},
            {"source":"worker","target":"db"}]}"#;
        let t = Topology::parse(json).unwrap();
        assert_eq!(t.edges(), edge_set(&[("client", "web"), ("worker", "db")]));
        let e = t.edge("client", "web").unwrap();
        assert_eq!((e.flows, e.requests, e.port), (8, 12, 80));
        assert_eq!(e.latency_ms.p95, 2.0);
        assert_eq!(t.edge("worker", "db").unwrap().requests, 0);
        assert!(t.edge("web", "db").is_err());
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(Topology::parse("not json").is_err());
    }
}
