//! The specification's data models (topomapper.md, "Data Models") as weft writes them:
//! `GET /topology` answers a [`TopologyMap`] by default, and the library's
//! [`TopologySnapshot::to_dict`](crate::topology::TopologySnapshot::to_dict) is its JSON.
//!
//! Only the spec's fields, with the spec's names, so that a client built from the spec
//! alone (`Service(**service)`, `ServiceDependency(**dependency)`) reads them. weft's own
//! detail (transport, port, packets, latency quantiles, request groups) stays in weft's
//! shape (`GET /topology?shape=weft`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analytics::TrafficDirection;
use crate::topology::{DependencyView, ServiceView, TopologySnapshot};

/// The spec's `NetworkEndpoint` of a service: where it serves, with the protocol seen
/// there.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub protocol: String,
}

/// The spec's `Service`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The service name: unique in a map.
    pub service_id: String,
    pub service_name: String,
    /// `web_server`, `api_gateway`, `microservice`, `database`, `cache`,
    /// `message_queue`, `load_balancer`, `external_api`, or weft's `client` (a service
    /// only ever seen calling).
    pub service_type: String,
    pub endpoints: Vec<Endpoint>,
    /// `source`: `workload` (registered with an agent) or `traffic` (known from traffic
    /// alone); `host`: the agent's host id of a workload; `protocol`: the protocol of its
    /// endpoints when they agree.
    pub tags: BTreeMap<String, String>,
    /// `registered` (bool), `host` (host id or null), `addresses` (the endpoints' hosts),
    /// `ports`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

/// The spec's `ServiceDependency`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDependency {
    pub source_service: String,
    pub target_service: String,
    pub protocol: String,
    /// `outbound` in a map (seen from its source); from a service's point of view in
    /// [`dependencies_of`]: `inbound` when the service is the target.
    pub direction: String,
    pub request_count: u64,
    /// Both directions.
    pub total_bytes: u64,
    pub error_count: u64,
    pub avg_latency_ms: f64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

/// The spec's `TopologyMap`: services by id, dependencies in (source, target) order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyMap {
    pub services: BTreeMap<String, Service>,
    pub dependencies: Vec<ServiceDependency>,
}

impl From<&ServiceView> for Service {
    fn from(s: &ServiceView) -> Self {
        let registered = s.host.is_some();
        let mut tags = BTreeMap::new();
        tags.insert(
            "source".to_owned(),
            if registered { "workload" } else { "traffic" }.to_owned(),
        );
        if let Some(host) = &s.host {
            tags.insert("host".to_owned(), host.clone());
        }
        if let Some(first) = s.endpoints.first()
            && s.endpoints.iter().all(|e| e.protocol == first.protocol)
        {
            tags.insert("protocol".to_owned(), first.protocol.clone());
        }
        let mut addresses: Vec<&str> = s.endpoints.iter().map(|e| e.address.as_str()).collect();
        addresses.dedup();
        let mut ports: Vec<u16> = s.endpoints.iter().map(|e| e.port).collect();
        ports.sort_unstable();
        ports.dedup();
        let mut metadata = serde_json::Map::new();
        metadata.insert("registered".into(), registered.into());
        metadata.insert("host".into(), s.host.clone().into());
        metadata.insert("addresses".into(), addresses.into());
        metadata.insert("ports".into(), ports.into());
        Self {
            service_id: s.service_id().to_owned(),
            service_name: s.name.clone(),
            service_type: s.service_type.as_str().to_owned(),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    host: e.address.clone(),
                    port: e.port,
                    protocol: e.protocol.clone(),
                })
                .collect(),
            tags,
            metadata,
            first_seen: s.first_seen.clone(),
            last_seen: s.last_seen.clone(),
        }
    }
}

impl ServiceDependency {
    /// `d` as seen from `direction`'s side (`Both` counts as outbound, the map's view).
    pub fn from_view(d: &DependencyView, direction: TrafficDirection) -> Self {
        Self {
            source_service: d.source.clone(),
            target_service: d.target.clone(),
            protocol: d.protocol.clone(),
            direction: match direction {
                TrafficDirection::Inbound => "inbound",
                TrafficDirection::Outbound | TrafficDirection::Both => "outbound",
            }
            .to_owned(),
            request_count: d.request_count(),
            total_bytes: d.total_bytes(),
            error_count: d.error_count(),
            avg_latency_ms: d.avg_latency_ms(),
            first_seen: d.first_seen.clone(),
            last_seen: d.last_seen.clone(),
        }
    }
}

impl From<&TopologySnapshot> for TopologyMap {
    fn from(snapshot: &TopologySnapshot) -> Self {
        Self {
            services: snapshot
                .services
                .iter()
                .map(|s| (s.name.clone(), Service::from(s)))
                .collect(),
            dependencies: snapshot
                .dependencies
                .iter()
                .map(|d| ServiceDependency::from_view(d, TrafficDirection::Outbound))
                .collect(),
        }
    }
}

/// The dependencies of `service` in `direction`, each with its direction from the
/// service's side: `outbound` where it calls, `inbound` where it is called (a call to
/// itself is outbound).
pub fn dependencies_of(
    snapshot: &TopologySnapshot,
    service: &str,
    direction: TrafficDirection,
) -> Vec<ServiceDependency> {
    crate::analytics::dependencies_of(snapshot, service, direction)
        .into_iter()
        .map(|d| {
            let side = if d.source == service {
                TrafficDirection::Outbound
            } else {
                TrafficDirection::Inbound
            };
            ServiceDependency::from_view(d, side)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::{TopologyMapper, create_traffic_observation};
    use crate::observation::Protocol;

    fn mapper() -> TopologyMapper {
        let m = TopologyMapper::new();
        let mut a = create_traffic_observation("web", 40000, "api.internal", 8080, Protocol::Http);
        a.latency_ms = 10.0;
        a.bytes_sent = 100;
        a.bytes_received = 300;
        m.observe_traffic(&a).unwrap();
        a.status_code = Some(503);
        a.latency_ms = 30.0;
        m.observe_traffic(&a).unwrap();
        let b = create_traffic_observation("api.internal", 8080, "pg.internal", 5432, "postgres");
        m.observe_traffic(&b).unwrap();
        m
    }

    #[test]
    fn a_map_has_the_specs_names_and_sums() {
        let map = TopologyMap::from(&mapper().generate_topology_map());
        let json = serde_json::to_value(&map).unwrap();
        let api = &json["services"]["api.internal"];
        assert_eq!(api["service_id"], "api.internal");
        assert_eq!(api["service_name"], "api.internal");
        assert_eq!(api["service_type"], "microservice");
        assert_eq!(api["endpoints"][0]["port"], 8080);
        assert_eq!(api["tags"]["source"], "traffic");
        assert_eq!(json["services"]["pg.internal"]["service_type"], "database");
        let web_api = &json["dependencies"][1];
        assert_eq!(web_api["source_service"], "web");
        assert_eq!(web_api["target_service"], "api.internal");
        assert_eq!(web_api["protocol"], "http");
        assert_eq!(web_api["direction"], "outbound");
        assert_eq!(web_api["request_count"], 2);
        assert_eq!(web_api["error_count"], 1);
        assert_eq!(web_api["total_bytes"], 800);
        assert_eq!(web_api["avg_latency_ms"], 20.0);
        // Only the spec's fields.
        let mut keys: Vec<&str> = web_api
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "avg_latency_ms",
                "direction",
                "error_count",
                "first_seen",
                "last_seen",
                "protocol",
                "request_count",
                "source_service",
                "target_service",
                "total_bytes"
            ]
        );
        let back: TopologyMap = serde_json::from_value(json).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn inbound_edges_say_inbound() {
        let snapshot = mapper().generate_topology_map();
        let both = dependencies_of(&snapshot, "api.internal", TrafficDirection::Both);
        let dir = |target: &str| {
            both.iter()
                .find(|d| d.target_service == target)
                .map(|d| d.direction.as_str())
        };
        assert_eq!(dir("api.internal"), Some("inbound"));
        assert_eq!(dir("pg.internal"), Some("outbound"));
        let inbound = dependencies_of(&snapshot, "api.internal", TrafficDirection::Inbound);
        assert_eq!(inbound.len(), 1);
        assert_eq!(inbound[0].source_service, "web");
    }
}
