//! Service identity (registry, DNS answers, SNI/Host, `ip:port`), L7 protocol evidence and
//! request groups on agent records, and time windows.

use std::time::Instant;

use super::*;
use crate::model::{DnsAnswer, L7Info, RequestGroup, Workload};
use crate::registry::Registry;

const T0: u64 = 1_800_000_000_000_000_000;
const MIN: u64 = 60_000_000_000;

fn record(workload: &str, local: &str, remote: &str, port: u16, at: u64) -> FlowObservation {
    FlowObservation {
        workload: Some(workload.into()),
        interface: format!("veth-{workload}"),
        transport: Transport::Tcp,
        local_ip: local.parse().expect("ip"),
        local_port: 40_000,
        remote_ip: remote.parse().expect("ip"),
        remote_port: port,
        direction: Direction::Outbound,
        packets_out: 1,
        packets_in: 1,
        bytes_out: 100,
        bytes_in: 100,
        payload_bytes_out: 0,
        payload_bytes_in: 0,
        first_seen_unix_ns: at,
        last_seen_unix_ns: at,
        tcp_flags_out: 0,
        tcp_flags_in: 0,
        handshake_rtt_ns: None,
        requests: 1,
        latency_sum_ns: 1_000_000,
        latency: Vec::new(),
        first_record: true,
        opened: true,
        ended: false,
        resets: 0,
        l7: L7Info::default(),
    }
}

fn registry(workloads: &[(&str, &str, &str)]) -> Registry {
    let registry = Registry::new();
    let mut by_host: std::collections::BTreeMap<&str, Vec<Workload>> = Default::default();
    for (host, name, address) in workloads {
        by_host.entry(host).or_default().push(Workload {
            name: (*name).into(),
            interface: format!("veth-{name}"),
            addresses: vec![address.parse().expect("ip")],
        });
    }
    for (host, list) in by_host {
        registry.register(host, "i1", list, Instant::now());
    }
    registry
}

#[test]
fn two_agents_registering_one_name_make_one_service_with_both_endpoints() {
    let registry = registry(&[
        ("host-a", "api", "10.0.0.2"),
        ("host-b", "api", "10.0.1.2"),
        ("host-a", "web", "10.0.0.1"),
    ]);
    let topology = Topology::new();
    topology.ingest(&record("web", "10.0.0.1", "10.0.0.2", 8080, T0), &registry);
    topology.ingest(&record("web", "10.0.0.1", "10.0.1.2", 8080, T0), &registry);
    let snapshot = topology.snapshot(&registry, T0, 0);
    assert_eq!(
        snapshot.dependencies.len(),
        1,
        "{:?}",
        snapshot.dependencies
    );
    assert_eq!(snapshot.dependencies[0].requests, 2);
    let api = snapshot.service("api").expect("one api service");
    let addresses: Vec<&str> = api.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, vec!["10.0.0.2", "10.0.1.2"]);
}

#[test]
fn peers_are_named_by_dns_answers_seen_on_the_wire_until_the_ttl_ends() {
    let registry = registry(&[("host-a", "web", "10.0.0.1")]);
    let topology = Topology::new();
    let mut lookup = record("web", "10.0.0.1", "10.0.0.53", 53, T0);
    lookup.transport = Transport::Udp;
    lookup.l7.dns_answers = vec![DnsAnswer {
        name: "db.lab".into(),
        ip: "10.0.9.9".parse().expect("ip"),
        ttl_seconds: 300,
    }];
    topology.ingest(&lookup, &registry);
    topology.ingest(
        &record("web", "10.0.0.1", "10.0.9.9", 5432, T0 + MIN),
        &registry,
    );
    topology.ingest(
        &record("web", "10.0.0.1", "10.0.9.9", 5432, T0 + 10 * MIN),
        &registry,
    );
    let targets: Vec<String> = topology
        .snapshot(&registry, T0, 0)
        .dependencies
        .iter()
        .map(|d| d.target.clone())
        .collect();
    assert_eq!(targets, vec!["10.0.0.53:53", "10.0.9.9:5432", "db.lab"]);
}

#[test]
fn the_registry_beats_dns_and_dns_beats_the_server_name() {
    let registry = registry(&[("host-a", "web", "10.0.0.1"), ("host-a", "db", "10.0.0.2")]);
    let topology = Topology::new();
    let mut lookup = record("web", "10.0.0.1", "10.0.0.53", 53, T0);
    lookup.l7.dns_answers = vec![
        DnsAnswer {
            name: "other-name".into(),
            ip: "10.0.0.2".parse().expect("ip"),
            ttl_seconds: 60,
        },
        DnsAnswer {
            name: "from-dns".into(),
            ip: "10.0.0.3".parse().expect("ip"),
            ttl_seconds: 60,
        },
    ];
    topology.ingest(&lookup, &registry);
    let mut to_db = record("web", "10.0.0.1", "10.0.0.2", 5432, T0);
    to_db.l7.server_name = Some("sni-name".into());
    let mut to_three = record("web", "10.0.0.1", "10.0.0.3", 443, T0);
    to_three.l7.server_name = Some("sni-name".into());
    let mut to_four = record("web", "10.0.0.1", "10.0.0.4", 443, T0);
    to_four.l7.server_name = Some("api.example.com".into());
    for r in [&to_db, &to_three, &to_four] {
        topology.ingest(r, &registry);
    }
    let snapshot = topology.snapshot(&registry, T0, 0);
    for name in ["db", "from-dns", "api.example.com"] {
        assert!(snapshot.service(name).is_some(), "{name} missing");
    }
    assert!(snapshot.service("sni-name").is_none());
    assert_eq!(
        snapshot
            .service("api.example.com")
            .expect("sni")
            .service_type,
        ServiceType::ExternalApi
    );
}

#[test]
fn a_protocol_learned_mid_flow_keeps_one_dependency_and_payload_wins() {
    let registry = registry(&[("host-a", "web", "10.0.0.1")]);
    let topology = Topology::new();
    let mut first = record("web", "10.0.0.1", "10.0.0.7", 443, T0);
    first.l7.protocol = Some("https".into());
    let mut later = record("web", "10.0.0.1", "10.0.0.7", 443, T0 + 1);
    later.first_record = false;
    later.l7.protocol = Some("http".into());
    later.l7.protocol_from_payload = true;
    later.l7.request_groups = vec![
        RequestGroup {
            method: "GET".into(),
            path: "/fail".into(),
            status: 503,
            count: 2,
            errors: 2,
            latency_sum_ns: 4_000_000,
        },
        RequestGroup {
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            count: 3,
            errors: 0,
            latency_sum_ns: 3_000_000,
        },
    ];
    later.resets = 1;
    let mut again = record("web", "10.0.0.1", "10.0.0.7", 443, T0 + 2);
    again.first_record = false;
    again.l7.protocol = Some("https".into());
    for r in [&first, &later, &again] {
        topology.ingest(r, &registry);
    }
    let snapshot = topology.snapshot(&registry, T0, 0);
    assert_eq!(snapshot.dependencies.len(), 1);
    let d = &snapshot.dependencies[0];
    assert_eq!(d.protocol, "http");
    assert_eq!(d.flows, 1);
    assert_eq!(d.errors, 3, "2 error replies + 1 reset");
    let fail = d
        .request_groups
        .iter()
        .find(|g| g.path == "/fail")
        .expect("group");
    assert_eq!((fail.count, fail.errors, fail.status), (2, 2, 503));
    assert!((fail.avg_latency_ms - 2.0).abs() < 1e-9);
    let server = snapshot.service("10.0.0.7:443").expect("server");
    assert_eq!(server.endpoints[0].protocol, "http");
}

#[test]
fn a_window_snapshot_merges_only_buckets_in_range() {
    let registry = registry(&[("host-a", "web", "10.0.0.1")]);
    let topology = Topology::new();
    topology.ingest(&record("web", "10.0.0.1", "10.0.0.2", 80, T0), &registry);
    topology.ingest(
        &record("web", "10.0.0.1", "10.0.0.2", 80, T0 + 5 * MIN),
        &registry,
    );
    topology.ingest(
        &record("web", "10.0.0.1", "10.0.0.3", 80, T0 + 10 * MIN),
        &registry,
    );
    let classifier = ServiceClassifier::default();
    let window = |since: u64, until: u64| Window {
        since: Some(since),
        until: Some(until),
    };
    let early = topology.snapshot_with(&registry, &classifier, &window(T0, T0 + 6 * MIN), 0, 0);
    assert_eq!(early.dependencies.len(), 1);
    assert_eq!(early.dependencies[0].requests, 2);
    assert_eq!(early.services.len(), 2, "10.0.0.3 is outside the window");
    let late = topology.snapshot_with(
        &registry,
        &classifier,
        &window(T0 + 9 * MIN, u64::MAX),
        0,
        0,
    );
    assert_eq!(late.dependencies.len(), 1);
    assert_eq!(late.dependencies[0].target, "10.0.0.3:80");
    assert_eq!(topology.snapshot(&registry, 0, 0).totals.requests, 3);
}
