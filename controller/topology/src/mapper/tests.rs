//! The specification's "Complete Example", fed through the library API, and what its text
//! implies.

use super::*;
use crate::topology::ServiceType;

fn obs(
    source: &str,
    source_port: u16,
    dest: &str,
    dest_port: u16,
    protocol: &str,
) -> TrafficObservation {
    create_traffic_observation(source, source_port, dest, dest_port, protocol)
}

fn complete_example() -> TopologyMapper {
    let mapper = TopologyMapper::new();
    let mut all = Vec::new();
    for i in 0..100u16 {
        let mut o = obs(
            "client.external",
            54321 + i,
            "api.example.com",
            443,
            "https",
        );
        o.method = Some("GET".into());
        o.path = Some("/api/users".into());
        o.latency_ms = 45.0 + f64::from(i % 10);
        mapper.observe_traffic(&o).expect("valid");
    }
    for _ in 0..100 {
        let mut o = obs(
            "api.example.com",
            443,
            "auth-service.internal",
            8080,
            "http",
        );
        o.method = Some("POST".into());
        o.path = Some("/verify".into());
        o.latency_ms = 20.0;
        all.push(o);
    }
    for _ in 0..100 {
        let mut o = obs(
            "api.example.com",
            443,
            "user-service.internal",
            8080,
            "http",
        );
        o.method = Some("GET".into());
        o.path = Some("/users".into());
        o.latency_ms = 35.0;
        all.push(o);
    }
    for _ in 0..50 {
        let mut o = obs(
            "user-service.internal",
            8080,
            "postgres.db.internal",
            5432,
            "postgres",
        );
        o.bytes_sent = 512;
        o.bytes_received = 4096;
        o.latency_ms = 25.0;
        all.push(o);
    }
    for _ in 0..100 {
        let mut o = obs(
            "user-service.internal",
            8080,
            "redis.cache.internal",
            6379,
            "redis",
        );
        o.bytes_sent = 256;
        o.bytes_received = 1024;
        o.latency_ms = 5.0;
        all.push(o);
    }
    for _ in 0..5 {
        let mut o = obs(
            "api.example.com",
            443,
            "user-service.internal",
            8080,
            "http",
        );
        o.method = Some("GET".into());
        o.path = Some("/users".into());
        o.status_code = Some(500);
        o.latency_ms = 150.0;
        all.push(o);
    }
    let outcome = mapper.observe_traffic_batch(&all);
    assert_eq!(outcome.accepted, all.len());
    assert!(outcome.errors.is_empty());
    mapper
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn dep<'a>(map: &'a TopologySnapshot, source: &str, target: &str) -> &'a DependencyView {
    map.dependencies
        .iter()
        .find(|d| d.source == source && d.target == target)
        .unwrap_or_else(|| panic!("{source} -> {target} missing"))
}

#[test]
fn complete_example_services_and_dependencies() {
    let mapper = complete_example();
    let map = mapper.generate_topology_map();
    let names: Vec<&str> = map.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "api.example.com",
            "auth-service.internal",
            "client.external",
            "postgres.db.internal",
            "redis.cache.internal",
            "user-service.internal",
        ]
    );
    assert_eq!(map.dependencies.len(), 5);
    let expected = [
        ("client.external", "api.example.com", 100, 49.5, 0, "https"),
        (
            "api.example.com",
            "auth-service.internal",
            100,
            20.0,
            0,
            "http",
        ),
        (
            "api.example.com",
            "user-service.internal",
            105,
            (100.0 * 35.0 + 5.0 * 150.0) / 105.0,
            5,
            "http",
        ),
        (
            "user-service.internal",
            "postgres.db.internal",
            50,
            25.0,
            0,
            "postgres",
        ),
        (
            "user-service.internal",
            "redis.cache.internal",
            100,
            5.0,
            0,
            "redis",
        ),
    ];
    for (source, target, requests, avg, errors, protocol) in expected {
        let d = dep(&map, source, target);
        assert_eq!(d.request_count(), requests, "{source}->{target}");
        assert!(
            close(d.avg_latency_ms(), avg),
            "{source}->{target}: {}",
            d.avg_latency_ms()
        );
        assert_eq!(d.error_count(), errors, "{source}->{target}");
        assert_eq!(d.protocol, protocol);
    }
    assert_eq!(
        dep(&map, "user-service.internal", "postgres.db.internal").total_bytes(),
        50 * (512 + 4096)
    );
    let users = dep(&map, "api.example.com", "user-service.internal");
    let failed = users
        .request_groups
        .iter()
        .find(|g| g.status == 500)
        .expect("5xx group");
    assert_eq!(
        (failed.count, failed.errors, failed.path.as_str()),
        (5, 5, "/users")
    );
}

#[test]
fn complete_example_patterns() {
    let patterns = complete_example().analyze_traffic_patterns();
    // 100 + 100 + 100 + 50 + 100 + 5 observations in the example's six loops.
    assert_eq!(patterns.total_observations, 455);
    assert_eq!(patterns.total_errors, 5);
    assert!(close(patterns.error_rate, 5.0 / 455.0));
    let latency_sum =
        100.0 * 49.5 + 100.0 * 20.0 + 100.0 * 35.0 + 50.0 * 25.0 + 100.0 * 5.0 + 5.0 * 150.0;
    assert!(
        close(patterns.avg_latency_ms, latency_sum / 455.0),
        "{}",
        patterns.avg_latency_ms
    );
    assert_eq!(patterns.total_bytes, 50 * (512 + 4096) + 100 * (256 + 1024));
    assert_eq!(patterns.service_count, 6);
    assert_eq!(patterns.dependency_count, 5);
    assert_eq!(patterns.protocol_distribution["http"], 205);
    assert_eq!(patterns.protocol_distribution["https"], 100);
    assert_eq!(patterns.protocol_distribution["redis"], 100);
    assert_eq!(patterns.protocol_distribution["postgres"], 50);
    // Sorted: 100 x 5, 100 x 20, 50 x 25, 100 x 35, 100 x 45..54, 5 x 150 ms. The median
    // (rank 228) is 25; rank 433 falls in 45..54; the top 5 (1.1 %) are 150.
    // Quantiles come from histograms with 2 significant figures: within 1 %.
    let near = |a: f64, b: f64| (a - b).abs() <= b * 0.01;
    assert!(
        near(patterns.p50_latency_ms, 25.0),
        "{}",
        patterns.p50_latency_ms
    );
    assert!(
        (45.0..=54.1).contains(&patterns.p95_latency_ms),
        "{}",
        patterns.p95_latency_ms
    );
    assert!(
        near(patterns.p99_latency_ms, 150.0),
        "{}",
        patterns.p99_latency_ms
    );
}

#[test]
fn complete_example_critical_services_and_bottlenecks() {
    let mapper = complete_example();
    let critical = mapper.find_critical_services();
    assert_eq!(
        critical[..2],
        [
            ("api.example.com".to_owned(), 3),
            ("user-service.internal".to_owned(), 3)
        ]
    );
    assert!(critical[2..].iter().all(|(_, n)| *n == 1));
    let service = mapper.get_service(&critical[0].0).expect("service by id");
    assert_eq!(service.service_type, ServiceType::ApiGateway);

    let slow = mapper.find_bottlenecks(30.0);
    let pairs: Vec<(&str, &str)> = slow
        .iter()
        .map(|d| (d.source.as_str(), d.target.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("client.external", "api.example.com"),
            ("api.example.com", "user-service.internal"),
        ]
    );
    assert!(close(slow[0].avg_latency_ms(), 49.5));
    assert!(close(slow[1].avg_latency_ms(), 4250.0 / 105.0));
    assert!(mapper.find_bottlenecks(100.0).is_empty());
    // On p99, the 5 slow errors of 105 requests make api -> user-service the slowest.
    let by_p99 = mapper.find_bottlenecks_by(100.0, LatencyStat::P99);
    assert_eq!(by_p99.len(), 1);
    assert_eq!(by_p99[0].target, "user-service.internal");
}

#[test]
fn complete_example_classification() {
    let map = complete_example().generate_topology_map();
    let kind = |name: &str| map.service(name).expect(name).service_type;
    assert_eq!(kind("api.example.com"), ServiceType::ApiGateway);
    assert_eq!(kind("postgres.db.internal"), ServiceType::Database);
    assert_eq!(kind("redis.cache.internal"), ServiceType::Cache);
    assert_eq!(kind("user-service.internal"), ServiceType::Microservice);
    assert_eq!(kind("auth-service.internal"), ServiceType::Microservice);
    assert_eq!(kind("client.external"), ServiceType::Client);
    let api = map.service("api.example.com").expect("api");
    assert_eq!(api.endpoints.len(), 1);
    assert_eq!(api.endpoints[0].address, "api.example.com");
    assert_eq!(api.endpoints[0].protocol, "https");
    assert!(api.first_seen.is_some() && api.last_seen.is_some());
}

#[test]
fn dependencies_by_direction() {
    let mapper = complete_example();
    let targets = |dir| -> Vec<String> {
        mapper
            .get_service_dependencies("user-service.internal", dir)
            .into_iter()
            .map(|d| format!("{}->{}", d.source_service, d.target_service))
            .collect()
    };
    assert_eq!(
        targets(TrafficDirection::Inbound),
        vec!["api.example.com->user-service.internal"]
    );
    assert_eq!(
        targets(TrafficDirection::Outbound),
        vec![
            "user-service.internal->postgres.db.internal",
            "user-service.internal->redis.cache.internal"
        ]
    );
    assert_eq!(targets(TrafficDirection::Both).len(), 3);
    // The spec's default direction is outbound; each dependency says its side.
    let default = mapper.get_service_dependencies("user-service.internal", None);
    assert_eq!(
        default,
        mapper.get_service_dependencies("user-service.internal", TrafficDirection::Outbound)
    );
    assert!(default.iter().all(|d| d.direction == "outbound"));
    let inbound =
        mapper.get_service_dependencies("user-service.internal", TrafficDirection::Inbound);
    assert_eq!(inbound[0].direction, "inbound");
    assert_eq!(inbound[0].request_count, 105);
}

#[test]
fn exports_and_views() {
    let map = complete_example().generate_topology_map();
    let dict = map.to_dict();
    assert_eq!(dict["services"].as_object().expect("map").len(), 6);
    assert_eq!(
        dict["services"]["api.example.com"]["service_type"],
        "api_gateway"
    );
    let deps = dict["dependencies"].as_array().expect("list");
    let users = deps
        .iter()
        .find(|d| d["target_service"] == "user-service.internal")
        .expect("dependency");
    assert_eq!(users["request_count"], 105);
    assert_eq!(users["error_count"], 5);
    let reparsed: Value = serde_json::from_str(&map.to_json()).expect("valid JSON");
    assert_eq!(reparsed, dict);
    let visualizer = TopologyVisualizer::new(&map);
    let ascii = visualizer.generate_ascii_map();
    assert!(ascii.contains("Total Services: 6"), "{ascii}");
    assert!(ascii.contains("• api.example.com (api_gateway)"), "{ascii}");
    assert!(
        ascii.contains("→ user-service.internal [105 reqs"),
        "{ascii}"
    );
    let dot = visualizer.generate_dot_graph();
    assert!(
        dot.contains("\"api.example.com\" -> \"user-service.internal\""),
        "{dot}"
    );
}

#[test]
fn bad_observations_are_refused_by_field_and_the_rest_merged() {
    let mapper = TopologyMapper::new();
    let good = obs("a", 1, "b.internal", 80, "http");
    let mut bad_protocol = good.clone();
    bad_protocol.protocol = "gopher".into();
    let mut bad_host = good.clone();
    bad_host.destination.host = " ".into();
    let mut bad_latency = good.clone();
    bad_latency.latency_ms = f64::NAN;
    let outcome =
        mapper.observe_traffic_batch(&[bad_protocol, good.clone(), bad_host, bad_latency]);
    assert_eq!(outcome.accepted, 1);
    let fields: Vec<(usize, &str)> = outcome
        .errors
        .iter()
        .map(|(i, e)| (*i, e.field().unwrap_or("")))
        .collect();
    assert_eq!(
        fields,
        vec![(0, "protocol"), (2, "destination.host"), (3, "latency_ms")]
    );
    assert_eq!(mapper.generate_topology_map().totals.requests, 1);
}

#[test]
fn empty_protocol_is_guessed_from_the_port_and_a_declared_one_wins() {
    let mapper = TopologyMapper::new();
    mapper
        .observe_traffic(&obs("a", 1, "10.0.0.5", 6379, ""))
        .expect("valid");
    mapper
        .observe_traffic(&obs("a", 1, "10.0.0.6", 6379, "http"))
        .expect("valid");
    let map = mapper.generate_topology_map();
    assert_eq!(dep(&map, "a", "10.0.0.5:6379").protocol, "redis");
    assert_eq!(dep(&map, "a", "10.0.0.6:6379").protocol, "http");
}
