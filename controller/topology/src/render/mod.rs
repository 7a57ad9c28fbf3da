//! The topology as text: ASCII for people, Graphviz DOT for pictures, JSON for programs.
//! Renderers read a [`TopologySnapshot`] and nothing else.

mod ascii;
mod dot;

pub use ascii::ascii;
pub use dot::dot;

use crate::topology::TopologySnapshot;

/// The snapshot as JSON (the body of `GET /topology`).
pub fn json(snapshot: &TopologySnapshot) -> Result<String, serde_json::Error> {
    serde_json::to_string(snapshot)
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::topology::{
        DependencyView, EndpointView, LatencySummary, ServiceType, ServiceView, SnapshotStats,
        TopologySnapshot,
    };

    fn service(
        name: &str,
        service_type: ServiceType,
        endpoints: &[(&str, u16, &str)],
    ) -> ServiceView {
        ServiceView {
            name: name.into(),
            service_type,
            endpoints: endpoints
                .iter()
                .map(|(address, port, protocol)| EndpointView {
                    address: (*address).into(),
                    port: *port,
                    protocol: (*protocol).into(),
                })
                .collect(),
            host: Some("host-a".into()),
            first_seen: Some("2026-11-23T16:00:00.000000Z".into()),
            last_seen: Some("2026-11-23T16:01:00.000000Z".into()),
        }
    }

    fn dependency(source: &str, target: &str, port: u16, protocol: &'static str) -> DependencyView {
        DependencyView {
            source: source.into(),
            target: target.into(),
            transport: "tcp".into(),
            port,
            protocol: protocol.into(),
            flows: 4,
            requests: 150,
            errors: 0,
            resets: 0,
            packets_sent: 300,
            packets_received: 280,
            bytes_sent: 20_000,
            bytes_received: 30_000,
            payload_bytes_sent: 15_000,
            payload_bytes_received: 25_000,
            latency_ms: LatencySummary {
                count: 150,
                avg: 35.0,
                p50: 30.0,
                p95: 60.0,
                p99: 80.5,
                max: 90.0,
            },
            handshake_rtt_ms: LatencySummary::default(),
            address_families: vec!["ipv4".into()],
            request_groups: Vec::new(),
            first_seen: Some("2026-11-23T16:00:00.000000Z".into()),
            last_seen: Some("2026-11-23T16:01:00.000000Z".into()),
        }
    }

    /// web -> api (http), api -> db (postgres, with resets), api -> [2001:db8::1]:443.
    pub fn snapshot() -> TopologySnapshot {
        let mut failing = dependency("api", "db", 5432, "postgres");
        failing.errors = 3;
        failing.resets = 3;
        TopologySnapshot {
            generated_at: "2026-11-23T16:02:00.000000Z".into(),
            services: vec![
                service(
                    "[2001:db8::1]:443",
                    ServiceType::WebServer,
                    &[("2001:db8::1", 443, "https")],
                ),
                service("api", ServiceType::WebServer, &[("10.0.0.2", 8080, "http")]),
                service(
                    "db",
                    ServiceType::Database,
                    &[("10.0.0.3", 5432, "postgres")],
                ),
                service("web", ServiceType::Client, &[]),
            ],
            dependencies: vec![
                dependency("api", "[2001:db8::1]:443", 443, "https"),
                failing,
                dependency("web", "api", 8080, "http"),
            ],
            totals: Default::default(),
            stats: SnapshotStats {
                records_ingested: 10,
                agents_connected: 2,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields() {
        let text = json(&fixtures::snapshot()).expect("serialisable");
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["generated_at"], "2026-11-23T16:02:00.000000Z");
        assert_eq!(value["stats"]["records_ingested"], 10);
        assert_eq!(value["stats"]["agents_connected"], 2);
        let service = &value["services"][2];
        assert_eq!(service["name"], "db");
        assert_eq!(service["type"], "database");
        assert_eq!(service["host"], "host-a");
        assert_eq!(service["endpoints"][0]["address"], "10.0.0.3");
        assert_eq!(service["endpoints"][0]["port"], 5432);
        assert_eq!(service["endpoints"][0]["protocol"], "postgres");
        let dependency = &value["dependencies"][1];
        for field in [
            "source",
            "target",
            "transport",
            "port",
            "protocol",
            "flows",
            "requests",
            "errors",
            "resets",
            "packets_sent",
            "packets_received",
            "bytes_sent",
            "bytes_received",
            "payload_bytes_sent",
            "payload_bytes_received",
            "latency_ms",
            "handshake_rtt_ms",
            "address_families",
            "first_seen",
            "last_seen",
        ] {
            assert!(dependency.get(field).is_some(), "missing {field}");
        }
        assert_eq!(dependency["transport"], "tcp");
        assert_eq!(dependency["errors"], 3);
        assert_eq!(dependency["latency_ms"]["p99"], 80.5);
        assert_eq!(dependency["handshake_rtt_ms"]["count"], 0);
        assert_eq!(dependency["handshake_rtt_ms"]["avg"], 0.0);
        assert_eq!(dependency["address_families"], serde_json::json!(["ipv4"]));
        assert_eq!(value["services"][3]["type"], "client");
    }
}
