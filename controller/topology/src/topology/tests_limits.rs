//! The bounds: caps on services and dependencies (with the share kept for registered
//! workloads), names per address, endpoints per service, the timestamp window, and the
//! eviction of idle entries.

use std::time::Duration;

use super::tests::{Directory, key, observation};
use super::*;
use crate::observation::{NetworkEndpoint, TrafficObservation};

const S: u64 = 1_000_000_000;

/// One UDP datagram from `source` to web (10.0.0.1:53), seen on web's interface.
fn spoofed(source: &str) -> FlowObservation {
    let mut o = observation(
        "web",
        Direction::Inbound,
        ("10.0.0.1", 53),
        (source, 40_000),
    );
    o.transport = Transport::Udp;
    o.packets_in = 1;
    o.bytes_in = 60;
    o.first_seen_unix_ns = 0;
    o.last_seen_unix_ns = 0;
    o
}

fn small(max_services: usize, max_dependencies: usize) -> Topology {
    Topology::with_config(
        BucketConfig::default(),
        TopologyLimits {
            max_services,
            max_dependencies,
            ..TopologyLimits::default()
        },
    )
}

#[test]
fn spoofed_sources_fill_at_most_the_unregistered_share_and_workloads_still_fit() {
    let topology = small(20, 100);
    let directory = Directory::lab();
    let mut full = 0;
    for i in 0..1_000 {
        match topology.ingest(&spoofed(&format!("fd00:99::{i:x}")), &directory) {
            Ingested::Counted => {}
            Ingested::Full(f) => {
                assert_eq!(f.limit, Limit::Services);
                assert_eq!(f.max, 18, "nine tenths of 20");
                full += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // web + 17 spoofed clients = 18 services.
    assert_eq!(topology.service_count(), 18);
    assert_eq!(topology.dependency_count(), 17);
    assert_eq!(full, 1_000 - 17);
    assert_eq!(topology.limit_hits().get(Limit::Services), 983);
    let snapshot = topology.snapshot(&directory, 0, 0);
    assert_eq!(snapshot.services.len(), 18);

    // web -> db: both registered, so the last tenth is theirs.
    let mut o = observation(
        "web",
        Direction::Outbound,
        ("10.0.0.1", 40_000),
        ("10.0.0.2", 5432),
    );
    o.requests = 1;
    assert_eq!(topology.ingest(&o, &directory), Ingested::Counted);
    assert!(topology.dependency(&key("web", "db", 5432)).is_some());
    assert_eq!(topology.service_count(), 19);
}

#[test]
fn the_dependency_cap_refuses_and_changes_nothing() {
    let topology = small(1_000, 10);
    let directory = Directory::lab();
    for i in 0..50 {
        let _ = topology.ingest(&spoofed(&format!("198.18.9.{i}")), &directory);
    }
    assert_eq!(topology.dependency_count(), 9);
    assert_eq!(
        topology.service_count(),
        10,
        "web and the 9 admitted clients"
    );
    assert_eq!(topology.limit_hits().get(Limit::Dependencies), 41);
    assert!(
        topology
            .dependency(&key("198.18.9.49", "web", 53))
            .is_none()
    );
    let snapshot = topology.snapshot(&directory, 0, 0);
    assert_eq!(snapshot.dependencies.len(), 9);
    assert_eq!(
        snapshot.services.len(),
        10,
        "no service without its dependency"
    );
}

#[test]
fn idle_entries_are_evicted_and_make_room_but_registered_workloads_stay() {
    let topology = small(20, 100);
    let directory = Directory::lab();
    for i in 0..100 {
        let _ = topology.ingest(&spoofed(&format!("fd00:98::{i:x}")), &directory);
    }
    assert_eq!(topology.service_count(), 18);
    let generation = topology.generation();
    let later = now_unix_ns() + 3_600 * S;
    let evicted = topology.evict_idle(later, Duration::from_secs(60), &directory);
    assert_eq!(evicted.dependencies, 17);
    assert_eq!(evicted.services, 17, "web is a registered workload");
    assert_eq!(topology.service_count(), 1);
    assert_eq!(topology.dependency_count(), 0);
    assert_ne!(topology.generation(), generation);
    assert_eq!(
        topology.ingest(&spoofed("fd00:97::1"), &directory),
        Ingested::Counted
    );
    // Nothing is idle for a minute right now.
    let evicted = topology.evict_idle(now_unix_ns(), Duration::from_secs(60), &directory);
    assert_eq!(evicted, Evicted::default());
}

#[test]
fn an_address_takes_a_bounded_number_of_names_from_sni() {
    let topology = Topology::with_config(
        BucketConfig::default(),
        TopologyLimits {
            max_names_per_address: 3,
            ..TopologyLimits::default()
        },
    );
    let directory = Directory::lab();
    for i in 0..10 {
        let mut o = observation(
            "web",
            Direction::Outbound,
            ("10.0.0.1", 40_000),
            ("198.18.7.7", 443),
        );
        o.l7.server_name = Some(format!("name{i}.example"));
        assert_eq!(topology.ingest(&o, &directory), Ingested::Counted);
    }
    let snapshot = topology.snapshot(&directory, 0, 0);
    let servers: Vec<&str> = snapshot
        .dependencies
        .iter()
        .map(|d| d.target.as_str())
        .collect();
    assert_eq!(
        servers,
        vec![
            "198.18.7.7:443",
            "name0.example",
            "name1.example",
            "name2.example"
        ]
    );
    assert_eq!(topology.limit_hits().get(Limit::NamesPerAddress), 7);
}

#[test]
fn a_record_workload_field_cannot_name_an_address_without_bound() {
    let topology = Topology::with_config(
        BucketConfig::default(),
        TopologyLimits {
            max_names_per_address: 2,
            ..TopologyLimits::default()
        },
    );
    let directory = Directory::lab();
    for i in 0..10 {
        let mut o = observation(
            &format!("fake{i}"),
            Direction::Outbound,
            ("198.18.5.5", 40_000),
            ("10.0.0.2", 5432),
        );
        o.requests = 1;
        let _ = topology.ingest(&o, &directory);
    }
    let snapshot = topology.snapshot(&directory, 0, 0);
    let clients: Vec<&str> = snapshot
        .dependencies
        .iter()
        .map(|d| d.source.as_str())
        .collect();
    assert_eq!(clients, vec!["198.18.5.5", "fake0", "fake1"]);
    // The registry's own name costs nothing.
    let o = observation(
        "web",
        Direction::Outbound,
        ("10.0.0.1", 40_000),
        ("10.0.0.2", 5432),
    );
    for _ in 0..5 {
        assert_eq!(topology.ingest(&o, &directory), Ingested::Counted);
    }
    assert!(topology.dependency(&key("web", "db", 5432)).is_some());
}

#[test]
fn endpoints_per_service_are_bounded() {
    let topology = Topology::with_config(
        BucketConfig::default(),
        TopologyLimits {
            max_endpoints_per_service: 4,
            ..TopologyLimits::default()
        },
    );
    let directory = Directory::lab();
    for port in 1..=10 {
        let o = observation(
            "db",
            Direction::Inbound,
            ("10.0.0.2", port),
            ("198.18.3.3", 40_000),
        );
        assert_eq!(topology.ingest(&o, &directory), Ingested::Counted);
    }
    let snapshot = topology.snapshot(&directory, 0, 0);
    let db = snapshot.service("db").expect("db");
    assert_eq!(db.endpoints.len(), 4);
    assert_eq!(topology.limit_hits().get(Limit::EndpointsPerService), 6);
}

fn windowed() -> Topology {
    Topology::with_config(
        BucketConfig::default(),
        TopologyLimits {
            max_future: Some(Duration::from_secs(300)),
            max_age: Some(Duration::from_secs(24 * 3_600)),
            ..TopologyLimits::default()
        },
    )
}

#[test]
fn a_far_future_record_is_refused_and_the_buckets_survive() {
    let topology = windowed();
    let directory = Directory::lab();
    let now = now_unix_ns();
    for minute in 0..10u64 {
        let mut o = observation(
            "web",
            Direction::Outbound,
            ("10.0.0.1", 40_000),
            ("10.0.0.2", 5432),
        );
        o.requests = 10;
        o.first_seen_unix_ns = now - (minute + 1) * 60 * S;
        o.last_seen_unix_ns = now - minute * 60 * S;
        assert_eq!(topology.ingest(&o, &directory), Ingested::Counted);
    }
    let before = topology.snapshot_with(
        &directory,
        &ServiceClassifier::default(),
        &Window {
            since: Some(now - 15 * 60 * S),
            until: None,
        },
        now,
        0,
    );
    assert_eq!(before.dependencies[0].requests, 100);

    let mut o = observation(
        "web",
        Direction::Outbound,
        ("10.0.0.1", 40_000),
        ("10.0.0.2", 5432),
    );
    o.requests = 1;
    o.last_seen_unix_ns = u64::MAX;
    match topology.ingest(&o, &directory) {
        Ingested::BadTimestamp(e) => {
            assert_eq!(e.field, "last_seen_unix_ns");
            assert!(e.future);
        }
        other => panic!("{other:?}"),
    }
    let ingested = topology.records_ingested();
    o.last_seen_unix_ns = now - 25 * 3_600 * S;
    assert!(matches!(
        topology.ingest(&o, &directory),
        Ingested::BadTimestamp(TimestampError { future: false, .. })
    ));
    assert_eq!(topology.records_ingested(), ingested, "refused, not merged");
    let after = topology.snapshot_with(
        &directory,
        &ServiceClassifier::default(),
        &Window {
            since: Some(now - 15 * 60 * S),
            until: None,
        },
        now,
        0,
    );
    assert_eq!(after.dependencies[0].requests, 100);
    assert_eq!(topology.limit_hits().get(Limit::FutureTimestamp), 1);
    assert_eq!(topology.limit_hits().get(Limit::OldTimestamp), 1);
}

#[test]
fn an_observation_outside_the_window_names_its_field_and_changes_nothing() {
    let topology = windowed();
    let o = TrafficObservation {
        timestamp_unix_ns: u64::MAX,
        source: NetworkEndpoint::new("a", 1),
        destination: NetworkEndpoint::new("b", 80),
        protocol: "http".into(),
        bytes_sent: 0,
        bytes_received: 0,
        latency_ms: 1.0,
        status_code: None,
        method: None,
        path: None,
        error: false,
    };
    let error = topology.observe_traffic(&o, &Directory::lab()).unwrap_err();
    assert_eq!(error.field(), Some("timestamp_unix_ns"));
    assert!(
        error
            .to_string()
            .contains("ahead of the controller's clock"),
        "{error}"
    );
    assert_eq!(topology.service_count(), 0);
    assert_eq!(topology.observations_ingested(), 0);
}

#[test]
fn top_edges_keep_the_busiest() {
    let topology = Topology::new();
    let directory = Directory::lab();
    for (i, requests) in [(1u16, 5u64), (2, 50), (3, 1), (4, 20)] {
        let mut o = observation(
            "web",
            Direction::Outbound,
            ("10.0.0.1", 40_000),
            ("198.18.1.1", 8_000 + i),
        );
        o.requests = requests;
        topology.ingest(&o, &directory);
    }
    let (edges, total) = topology.top_edges(2);
    assert_eq!(total, 4);
    let ports: Vec<&str> = edges.keys().map(|(_, server, _)| server.as_str()).collect();
    assert_eq!(ports, vec!["198.18.1.1:8002", "198.18.1.1:8004"]);
    assert_eq!(topology.top_edges(10).0, topology.stats_by_edge());
}

#[test]
fn hosts_and_paths_longer_than_their_bound_are_refused_with_the_field() {
    let topology = Topology::new();
    let mut o = TrafficObservation {
        timestamp_unix_ns: 0,
        source: NetworkEndpoint::new("a".repeat(254), 1),
        destination: NetworkEndpoint::new("b", 80),
        protocol: "http".into(),
        bytes_sent: 0,
        bytes_received: 0,
        latency_ms: 1.0,
        status_code: None,
        method: None,
        path: None,
        error: false,
    };
    let error = topology.observe_traffic(&o, &Directory::lab()).unwrap_err();
    assert_eq!(error.field(), Some("source.host"), "{error}");
    o.source.host = "a".into();
    o.path = Some("/x".repeat(200));
    let error = topology.observe_traffic(&o, &Directory::lab()).unwrap_err();
    assert_eq!(error.field(), Some("path"), "{error}");
    assert_eq!(topology.service_count(), 0);
}

#[test]
fn control_and_invisible_characters_in_names_and_labels_are_refused_with_field_and_index() {
    let topology = Topology::new();
    let good = TrafficObservation {
        timestamp_unix_ns: 0,
        source: NetworkEndpoint::new("web", 1),
        destination: NetworkEndpoint::new("api", 80),
        protocol: "http".into(),
        bytes_sent: 0,
        bytes_received: 0,
        latency_ms: 1.0,
        status_code: None,
        method: Some("GET".into()),
        path: Some("/users/{id}".into()),
        error: false,
    };
    type Spoil = fn(&mut TrafficObservation);
    let cases: [(&str, Spoil, usize, char); 6] = [
        (
            "source.host",
            |o| o.source.host = "we\u{7}b".into(),
            2,
            '\u{7}',
        ),
        (
            "destination.host",
            |o| o.destination.host = "api\u{1b}[2J".into(),
            3,
            '\u{1b}',
        ),
        (
            "destination.host",
            |o| o.destination.host = "ap\u{202e}i".into(),
            2,
            '\u{202e}',
        ),
        ("method", |o| o.method = Some("G\u{0}ET".into()), 1, '\u{0}'),
        ("path", |o| o.path = Some("/é\u{9f}x".into()), 2, '\u{9f}'),
        (
            "path",
            |o| o.path = Some("/a\u{200b}".into()),
            2,
            '\u{200b}',
        ),
    ];
    for (field, spoil, index, character) in cases {
        let mut o = good.clone();
        spoil(&mut o);
        let error = topology.observe_traffic(&o, &Directory::lab()).unwrap_err();
        assert_eq!(
            error,
            ObservationError::NonPrintable {
                field,
                index,
                character
            }
        );
        assert_eq!(error.field(), Some(field));
        assert!(
            error
                .to_string()
                .starts_with(&format!("field `{field}`: character {index} (U+")),
            "{error}"
        );
    }
    assert_eq!(topology.service_count(), 0);
    // Printable text from any script is fine, and the library (TopologyMapper) applies
    // the same checks.
    let mapper = crate::mapper::TopologyMapper::new();
    let mut o = good.clone();
    o.destination.host = "café-ü.例え".into();
    mapper.observe_traffic(&o).unwrap();
    o.source.host = "tab\there".into();
    assert!(matches!(
        mapper.observe_traffic(&o),
        Err(ObservationError::NonPrintable {
            field: "source.host",
            index: 3,
            ..
        })
    ));
}
