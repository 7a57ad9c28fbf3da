use std::collections::HashMap;
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::model::LatencyBucket;

/// A fixed directory: web (10.0.0.1, fd00::1) on host-a, db (10.0.0.2) on host-b.
pub(super) struct Directory {
    addresses: HashMap<IpAddr, &'static str>,
}

impl Directory {
    pub(super) fn lab() -> Self {
        let addresses = [("10.0.0.1", "web"), ("fd00::1", "web"), ("10.0.0.2", "db")]
            .into_iter()
            .map(|(ip, name)| (ip.parse().expect("test address"), name))
            .collect();
        Self { addresses }
    }
}

impl WorkloadDirectory for Directory {
    fn workload_at(&self, address: &IpAddr) -> Option<String> {
        self.addresses.get(address).map(|name| (*name).to_owned())
    }

    fn host_of(&self, workload: &str) -> Option<String> {
        match workload {
            "web" => Some("host-a".into()),
            "db" => Some("host-b".into()),
            _ => None,
        }
    }
}

pub(super) fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

pub(super) fn observation(
    workload: &str,
    direction: Direction,
    local: (&str, u16),
    remote: (&str, u16),
) -> FlowObservation {
    FlowObservation {
        workload: Some(workload.to_owned()),
        interface: format!("veth-{workload}"),
        transport: Transport::Tcp,
        local_ip: ip(local.0),
        local_port: local.1,
        remote_ip: ip(remote.0),
        remote_port: remote.1,
        direction,
        packets_out: 0,
        packets_in: 0,
        bytes_out: 0,
        bytes_in: 0,
        payload_bytes_out: 0,
        payload_bytes_in: 0,
        first_seen_unix_ns: 1_000,
        last_seen_unix_ns: 2_000,
        tcp_flags_out: 0,
        tcp_flags_in: 0,
        handshake_rtt_ns: None,
        requests: 0,
        latency_sum_ns: 0,
        latency: Vec::new(),
        first_record: true,
        opened: true,
        ended: false,
        resets: 0,
        l7: Default::default(),
    }
}

fn web_to_db() -> FlowObservation {
    let mut o = observation(
        "web",
        Direction::Outbound,
        ("10.0.0.1", 40_000),
        ("10.0.0.2", 5432),
    );
    o.requests = 3;
    o.packets_out = 10;
    o.packets_in = 8;
    o.bytes_out = 1_000;
    o.bytes_in = 4_000;
    o.payload_bytes_out = 600;
    o.payload_bytes_in = 3_500;
    o
}

/// The same connection as `web_to_db`, seen on db's interface.
fn db_from_web() -> FlowObservation {
    let mut o = observation(
        "db",
        Direction::Inbound,
        ("10.0.0.2", 5432),
        ("10.0.0.1", 40_000),
    );
    o.requests = 3;
    o.packets_out = 8;
    o.packets_in = 10;
    o.bytes_out = 4_000;
    o.bytes_in = 1_000;
    o
}

pub(super) fn key(client: &str, server: &str, port: u16) -> DependencyKey {
    DependencyKey {
        client: client.into(),
        server: server.into(),
        transport: Transport::Tcp,
        port,
    }
}

fn snapshot(topology: &Topology) -> TopologySnapshot {
    topology.snapshot(&Directory::lab(), 0, 0)
}

#[test]
fn a_connection_seen_at_both_ends_counts_once() {
    let topology = Topology::new();
    let directory = Directory::lab();
    assert_eq!(topology.ingest(&web_to_db(), &directory), Ingested::Counted);
    assert_eq!(
        topology.ingest(&db_from_web(), &directory),
        Ingested::ServerSideDuplicate
    );
    let snapshot = snapshot(&topology);
    assert_eq!(snapshot.dependencies.len(), 1);
    let dependency = &snapshot.dependencies[0];
    assert_eq!(
        (dependency.source.as_str(), dependency.target.as_str()),
        ("web", "db")
    );
    assert_eq!(dependency.flows, 1);
    assert_eq!(dependency.requests, 3);
    assert_eq!(dependency.bytes_sent, 1_000);
    assert_eq!(topology.records_ingested(), 2);
    assert_eq!(topology.records_deduplicated(), 1);
}

#[test]
fn inbound_from_an_unknown_client_counts_with_the_client_named_by_address() {
    let topology = Topology::new();
    let mut o = observation(
        "db",
        Direction::Inbound,
        ("10.0.0.2", 5432),
        ("192.0.2.7", 51_000),
    );
    o.bytes_in = 100;
    o.bytes_out = 900;
    o.packets_in = 2;
    o.packets_out = 3;
    assert_eq!(topology.ingest(&o, &Directory::lab()), Ingested::Counted);
    let stats = topology
        .dependency(&key("192.0.2.7", "db", 5432))
        .expect("dependency from the unknown client");
    // From the client's point of view: what db received is what the client sent.
    assert_eq!((stats.bytes_sent, stats.bytes_received), (100, 900));
    assert_eq!((stats.packets_sent, stats.packets_received), (2, 3));
    let snapshot = snapshot(&topology);
    let client = snapshot
        .services
        .iter()
        .find(|s| s.name == "192.0.2.7")
        .expect("client service");
    assert_eq!(client.service_type, ServiceType::Client);
    assert!(client.endpoints.is_empty());
    let db = snapshot
        .services
        .iter()
        .find(|s| s.name == "db")
        .expect("db");
    assert_eq!(db.service_type, ServiceType::Database);
    assert_eq!(db.host.as_deref(), Some("host-b"));
    assert_eq!(
        db.endpoints,
        vec![EndpointView {
            address: "10.0.0.2".into(),
            port: 5432,
            protocol: "postgres".into()
        }]
    );
}

#[test]
fn unknown_servers_are_named_ip_port_with_ipv6_bracketed() {
    let topology = Topology::new();
    let directory = Directory::lab();
    topology.ingest(
        &observation(
            "web",
            Direction::Outbound,
            ("10.0.0.1", 40_001),
            ("203.0.113.5", 443),
        ),
        &directory,
    );
    topology.ingest(
        &observation(
            "web",
            Direction::Outbound,
            ("fd00::1", 40_002),
            ("2001:db8::5", 8080),
        ),
        &directory,
    );
    let snapshot = snapshot(&topology);
    let targets: Vec<&str> = snapshot
        .dependencies
        .iter()
        .map(|d| d.target.as_str())
        .collect();
    assert_eq!(targets, vec!["203.0.113.5:443", "[2001:db8::5]:8080"]);
    assert_eq!(snapshot.dependencies[0].protocol, "https");
    assert_eq!(snapshot.dependencies[1].protocol, "http");
    assert_eq!(snapshot.dependencies[0].address_families, vec!["ipv4"]);
    assert_eq!(snapshot.dependencies[1].address_families, vec!["ipv6"]);
    let web = snapshot
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("web");
    assert_eq!(web.service_type, ServiceType::Client);
    let external = snapshot
        .services
        .iter()
        .find(|s| s.name == "[2001:db8::5]:8080")
        .expect("external server");
    assert_eq!(external.service_type, ServiceType::ExternalApi);
    assert_eq!(external.endpoints[0].address, "2001:db8::5");
    assert_eq!(external.host, None);
}

#[test]
fn unknown_ipv6_client_is_named_without_brackets() {
    assert_eq!(unknown_client_name(ip("2001:db8::9")), "2001:db8::9");
    assert_eq!(
        unknown_server_name(ip("2001:db8::9"), 53),
        "[2001:db8::9]:53"
    );
    assert_eq!(unknown_server_name(ip("192.0.2.1"), 53), "192.0.2.1:53");
}

#[test]
fn flows_requests_bytes_and_resets_are_summed() {
    let topology = Topology::new();
    let directory = Directory::lab();
    let first = web_to_db();
    let mut second = web_to_db();
    second.first_record = false;
    second.resets = 1;
    second.first_seen_unix_ns = 500;
    second.last_seen_unix_ns = 9_000;
    let mut third = web_to_db();
    third.local_port = 40_100;
    topology.ingest(&first, &directory);
    topology.ingest(&second, &directory);
    topology.ingest(&third, &directory);
    let stats = topology
        .dependency(&key("web", "db", 5432))
        .expect("dependency");
    assert_eq!(stats.flows, 2, "only first records start a flow");
    assert_eq!(stats.requests, 9);
    assert_eq!(stats.packets_sent, 30);
    assert_eq!(stats.packets_received, 24);
    assert_eq!(stats.bytes_sent, 3_000);
    assert_eq!(stats.bytes_received, 12_000);
    assert_eq!(stats.payload_bytes_sent, 1_800);
    assert_eq!(stats.payload_bytes_received, 10_500);
    assert_eq!((stats.errors, stats.resets), (1, 1));
    assert_eq!(stats.first_seen_unix_ns, Some(500));
    assert_eq!(stats.last_seen_unix_ns, Some(9_000));
}

#[test]
fn latency_mean_is_exact_and_p99_falls_in_the_right_bucket() {
    let topology = Topology::new();
    let mut o = web_to_db();
    // 90 requests in [1 ms, 2 ms), 10 in [8 ms, 16 ms) (buckets between are empty).
    o.requests = 100;
    o.latency_sum_ns = 90 * 1_500_000 + 10 * 12_000_000;
    o.latency = vec![
        LatencyBucket {
            upper_bound_ns: 1_000_000,
            count: 0,
        },
        LatencyBucket {
            upper_bound_ns: 2_000_000,
            count: 90,
        },
        LatencyBucket {
            upper_bound_ns: 4_000_000,
            count: 0,
        },
        LatencyBucket {
            upper_bound_ns: 8_000_000,
            count: 0,
        },
        LatencyBucket {
            upper_bound_ns: 16_000_000,
            count: 10,
        },
    ];
    o.handshake_rtt_ns = Some(250_000);
    topology.ingest(&o, &Directory::lab());
    let snapshot = snapshot(&topology);
    let latency = snapshot.dependencies[0].latency_ms;
    assert_eq!(latency.count, 100);
    assert!(
        (latency.avg - 2.55).abs() < 1e-9,
        "exact mean, got {}",
        latency.avg
    );
    assert!((1.0..2.0).contains(&latency.p50), "p50 {}", latency.p50);
    assert!((8.0..16.0).contains(&latency.p95), "p95 {}", latency.p95);
    assert!((8.0..16.0).contains(&latency.p99), "p99 {}", latency.p99);
    assert!((8.0..16.0).contains(&latency.max), "max {}", latency.max);
    let rtt = snapshot.dependencies[0].handshake_rtt_ms;
    assert_eq!(rtt.count, 1);
    assert!((rtt.avg - 0.25).abs() < 1e-9);
    assert!((rtt.p99 - 0.25).abs() < 0.001, "rtt p99 {}", rtt.p99);
}

#[test]
fn snapshot_is_sorted_and_times_are_rfc3339() {
    let topology = Topology::new();
    let directory = Directory::lab();
    topology.ingest(
        &observation(
            "web",
            Direction::Outbound,
            ("10.0.0.1", 1),
            ("198.51.100.1", 9999),
        ),
        &directory,
    );
    topology.ingest(&web_to_db(), &directory);
    let snapshot = topology.snapshot(&directory, 1_709_210_096_000_000_000, 2);
    let names: Vec<&str> = snapshot.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["198.51.100.1:9999", "db", "web"]);
    let targets: Vec<&str> = snapshot
        .dependencies
        .iter()
        .map(|d| d.target.as_str())
        .collect();
    assert_eq!(targets, vec!["198.51.100.1:9999", "db"]);
    assert_eq!(snapshot.dependencies[0].protocol, "tcp");
    assert_eq!(snapshot.generated_at, "2024-02-29T12:34:56.000000Z");
    assert_eq!(
        snapshot.stats,
        SnapshotStats {
            records_ingested: 2,
            agents_connected: 2
        }
    );
    assert_eq!(
        snapshot.dependencies[1].first_seen.as_deref(),
        Some("1970-01-01T00:00:00.000001Z")
    );
}

#[test]
fn stats_by_edge_merges_ports_of_one_protocol() {
    let topology = Topology::new();
    let directory = Directory::lab();
    let mut a = observation(
        "web",
        Direction::Outbound,
        ("10.0.0.1", 1),
        ("10.0.0.2", 80),
    );
    a.requests = 2;
    let mut b = observation(
        "web",
        Direction::Outbound,
        ("10.0.0.1", 2),
        ("10.0.0.2", 8080),
    );
    b.requests = 5;
    topology.ingest(&a, &directory);
    topology.ingest(&b, &directory);
    let edges = topology.stats_by_edge();
    assert_eq!(edges.len(), 1);
    let stats = &edges[&("web".to_owned(), "db".to_owned(), "http".to_owned())];
    assert_eq!(stats.requests, 7);
}

fn arb_observation() -> impl Strategy<Value = FlowObservation> {
    let addresses = prop::sample::select(vec![
        "10.0.0.1",
        "10.0.0.2",
        "192.0.2.9",
        "fd00::1",
        "2001:db8::7",
    ]);
    (
        (
            prop::sample::select(vec!["web", "db"]),
            any::<bool>(),
            addresses.clone(),
            addresses,
            prop::sample::select(vec![80u16, 5432, 6379, 9999]),
            any::<bool>(),
        ),
        (
            0u64..1_000,
            0u64..1_000_000,
            0u64..100,
            0u32..3,
            1u64..1_000_000,
            0u64..1_000_000,
            prop::option::of(1u64..10_000_000),
        ),
        prop::collection::vec((1u64..50_000_000, 0u64..20), 0..4),
    )
        .prop_map(
            |(
                (workload, outbound, local, remote, port, udp),
                (packets, bytes, requests, resets, first_seen, span, rtt),
                buckets,
            )| {
                let direction = if outbound {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                let mut o = observation(workload, direction, (local, 40_000), (remote, port));
                if !outbound {
                    o.local_port = port;
                    o.remote_port = 40_000;
                }
                o.transport = if udp { Transport::Udp } else { Transport::Tcp };
                o.packets_out = packets;
                o.packets_in = packets / 2;
                o.bytes_out = bytes;
                o.bytes_in = bytes / 3;
                o.payload_bytes_out = bytes / 2;
                o.payload_bytes_in = bytes / 4;
                o.requests = requests;
                o.resets = resets;
                o.first_record = resets == 0;
                o.first_seen_unix_ns = first_seen;
                o.last_seen_unix_ns = first_seen + span;
                o.handshake_rtt_ns = rtt;
                let mut latency: Vec<LatencyBucket> = buckets
                    .into_iter()
                    .map(|(upper_bound_ns, count)| LatencyBucket {
                        upper_bound_ns,
                        count,
                    })
                    .collect();
                latency.sort_by_key(|b| b.upper_bound_ns);
                o.latency_sum_ns = latency.iter().map(|b| b.count * b.upper_bound_ns / 2).sum();
                o.latency = latency;
                o
            },
        )
}

fn stats_of(observations: &[FlowObservation]) -> DependencyStats {
    let mut stats = DependencyStats::default();
    for o in observations {
        stats.record(o);
    }
    stats
}

proptest! {
    #[test]
    fn dependency_merge_is_associative_and_commutative(
        a in prop::collection::vec(arb_observation(), 0..5),
        b in prop::collection::vec(arb_observation(), 0..5),
        c in prop::collection::vec(arb_observation(), 0..5),
    ) {
        let (a, b, c) = (stats_of(&a), stats_of(&b), stats_of(&c));
        let mut left = a.clone();
        left.merge(&b);
        left.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut right = a.clone();
        right.merge(&bc);
        prop_assert_eq!(&left, &right);
        let mut ba = b.clone();
        ba.merge(&a);
        let mut ab = a.clone();
        ab.merge(&b);
        prop_assert_eq!(ab, ba);
    }

    #[test]
    fn merging_partial_stats_equals_recording_everything(
        a in prop::collection::vec(arb_observation(), 0..6),
        b in prop::collection::vec(arb_observation(), 0..6),
    ) {
        let mut merged = stats_of(&a);
        merged.merge(&stats_of(&b));
        let all: Vec<FlowObservation> = a.iter().chain(&b).cloned().collect();
        prop_assert_eq!(merged, stats_of(&all));
    }

    #[test]
    fn ingest_order_does_not_change_the_topology(
        (records, shuffled) in prop::collection::vec(arb_observation(), 0..12)
            .prop_flat_map(|records| (Just(records.clone()), Just(records).prop_shuffle()))
    ) {
        let directory = Directory::lab();
        let in_order = Topology::new();
        for o in &records {
            in_order.ingest(o, &directory);
        }
        let reordered = Topology::new();
        for o in &shuffled {
            reordered.ingest(o, &directory);
        }
        prop_assert_eq!(
            in_order.snapshot(&directory, 0, 0),
            reordered.snapshot(&directory, 0, 0)
        );
    }
}

#[test]
fn tls_carrying_http_is_https_by_port_or_alpn() {
    let topology = Topology::new();
    let tls = |remote: (&'static str, u16), alpn: &[&str]| {
        let mut o = observation("web", Direction::Outbound, ("10.0.0.1", 40000), remote);
        o.l7.protocol = Some("tls".into());
        o.l7.protocol_from_payload = true;
        o.l7.tls_alpn = alpn.iter().map(|a| (*a).to_owned()).collect();
        o
    };
    let directory = Directory::lab();
    for o in [
        tls(("192.0.2.1", 443), &[]),
        tls(("192.0.2.2", 9000), &["h2", "http/1.1"]),
        tls(("192.0.2.3", 5432), &[]),
        tls(("192.0.2.4", 9000), &["postgresql"]),
    ] {
        assert_eq!(topology.ingest(&o, &directory), Ingested::Counted);
    }
    let snapshot = snapshot(&topology);
    let protocol = |target: &str| {
        snapshot
            .dependencies
            .iter()
            .find(|d| d.target == target)
            .map(|d| d.protocol.clone())
    };
    assert_eq!(protocol("192.0.2.1:443").as_deref(), Some("https"));
    assert_eq!(protocol("192.0.2.2:9000").as_deref(), Some("https"));
    assert_eq!(protocol("192.0.2.3:5432").as_deref(), Some("tls"));
    assert_eq!(protocol("192.0.2.4:9000").as_deref(), Some("tls"));
    let server = snapshot.service("192.0.2.2:9000").expect("server");
    assert_eq!(server.endpoints[0].protocol, "https");
}

/// What announcing new dependencies costs ingest: 200k records, each a new dependency,
/// into a topology without and with a consumer draining the announcements (as the
/// controller's), best of 5.
/// `cargo test --release -p weft-topology announcing_new_dependencies_costs -- --ignored --nocapture`
#[test]
#[ignore = "timing, run by hand in release"]
fn announcing_new_dependencies_costs() {
    let directory = Directory::lab();
    let records: Vec<FlowObservation> = (0..200_000u32)
        .map(|i| {
            let server = std::net::Ipv4Addr::from(0x0a01_0000 + i).to_string();
            let mut o = observation(
                "web",
                Direction::Outbound,
                ("10.0.0.1", 40000),
                ("10.0.0.9", 80),
            );
            o.remote_ip = ip(&server);
            o
        })
        .collect();
    let run = |announce: bool| -> f64 {
        let topology = Topology::with_config(BucketConfig::default(), TopologyLimits::unbounded());
        let consumer = announce.then(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel(4_096);
            topology.announce_to(tx);
            // As the controller's: drains what is queued, then pauses, so a burst of
            // new dependencies does not wake it once per dependency.
            std::thread::spawn(move || {
                loop {
                    loop {
                        match rx.try_recv() {
                            Ok(_) => {}
                            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return,
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        });
        let start = std::time::Instant::now();
        for r in &records {
            topology.ingest(r, &directory);
        }
        let rate = records.len() as f64 / start.elapsed().as_secs_f64();
        eprintln!(
            "announce={announce}: {rate:.0} records/s, {} announcements dropped",
            topology.appeared_dropped()
        );
        drop(topology);
        if let Some(c) = consumer {
            c.join().expect("consumer");
        }
        rate
    };
    let best = |announce| (0..5).map(|_| run(announce)).fold(0.0, f64::max);
    let (without, with) = (best(false), best(true));
    eprintln!(
        "without {without:.0}/s, with {with:.0}/s: x{:.2}",
        with / without
    );
}

#[test]
fn tls_captures_are_https_in_the_topology_and_tls_in_the_flows() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../l7/fixtures/tls.pcap"
    ))
    .expect("fixture");
    let imported = crate::import::pcap::import(&bytes);
    assert!(!imported.flows.is_empty() && !imported.observations.is_empty());
    for o in &imported.observations {
        let server = o.destination.to_string();
        let flow = imported
            .flows
            .iter()
            .find(|f| f.server == server)
            .unwrap_or_else(|| panic!("no flow to {server}"));
        assert_eq!(
            flow.protocol, "tls",
            "the flow says what the wire said: {flow:?}"
        );
        let http = flow
            .alpn
            .iter()
            .any(|a| matches!(a.as_str(), "h2" | "http/1.1" | "http/1.0"))
            || matches!(o.destination.port, 443 | 8443);
        assert!(http, "the fixture's TLS carries HTTP: {flow:?}");
        assert_eq!(o.protocol, "https", "{flow:?}");
    }
}
