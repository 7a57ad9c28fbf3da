//! Anomalies, scaling and the learned classifier over synthetic bucketed traffic.

use super::anomaly::{AnomalyConfig, AnomalyWatch, Metric, detect};
use super::learned::{Examples, classify};
use super::scaling::{Action, ScalingConfig, recommend};
use crate::history::EventBus;
use crate::mapper::{TopologyMapper, create_traffic_observation};
use crate::topology::{ServiceClassifier, ServiceType};

const MIN: u64 = 60_000_000_000;
/// A minute boundary.
const T0: u64 = 28_333_340 * MIN;

struct Req {
    latency_ms: f64,
    error: bool,
    bytes: (u64, u64),
    protocol: &'static str,
    port: u16,
    path: Option<&'static str>,
}

impl Default for Req {
    fn default() -> Self {
        Self {
            latency_ms: 10.0,
            error: false,
            bytes: (100, 1_000),
            protocol: "http",
            port: 80,
            path: None,
        }
    }
}

fn send(mapper: &TopologyMapper, minute: u64, from: &str, to: &str, n: u64, r: &Req) {
    for i in 0..n {
        let mut o = create_traffic_observation(from, 40_000, to, r.port, r.protocol);
        o.timestamp_unix_ns = T0 + minute * MIN + i * (MIN / n.max(1));
        o.latency_ms = r.latency_ms;
        o.error = r.error;
        o.bytes_sent = r.bytes.0;
        o.bytes_received = r.bytes.1;
        o.path = r.path.map(str::to_owned);
        mapper.observe_traffic(&o).expect("valid observation");
    }
}

/// a -> b for minutes 0..30 with a little jitter; minute 30 is what `last` sends.
fn steady_then(last: impl FnOnce(&TopologyMapper)) -> TopologyMapper {
    let mapper = TopologyMapper::new();
    for minute in 0..30 {
        let r = Req {
            latency_ms: 10.0 + (minute % 3) as f64,
            ..Req::default()
        };
        send(&mapper, minute, "a", "b", 95 + minute % 10, &r);
    }
    last(&mapper);
    mapper
}

fn anomalies_now(mapper: &TopologyMapper) -> Vec<(String, Metric)> {
    let report = detect(
        mapper.topology(),
        T0,
        T0 + 31 * MIN + 5,
        &AnomalyConfig::default(),
    );
    assert_eq!(report.baseline_buckets, 30);
    report
        .anomalies
        .iter()
        .map(|a| (format!("{}->{}", a.source, a.target), a.metric))
        .collect()
}

#[test]
fn steady_traffic_is_not_an_anomaly() {
    let mapper = steady_then(|m| {
        let r = Req {
            latency_ms: 11.0,
            ..Req::default()
        };
        send(m, 30, "a", "b", 101, &r);
    });
    assert_eq!(anomalies_now(&mapper), vec![]);
}

#[test]
fn a_latency_spike_is_flagged_on_p99_only() {
    let mapper = steady_then(|m| {
        let r = Req {
            latency_ms: 250.0,
            ..Req::default()
        };
        send(m, 30, "a", "b", 100, &r);
    });
    let report = detect(
        mapper.topology(),
        T0,
        T0 + 31 * MIN,
        &AnomalyConfig::default(),
    );
    assert_eq!(report.anomalies.len(), 1, "{report:#?}");
    let a = &report.anomalies[0];
    assert_eq!(a.metric, Metric::P99LatencyMs);
    assert!(a.current > 200.0 && a.baseline < 15.0, "{a:?}");
    assert!(a.score.expect("scored") > 4.0);
    assert_eq!(a.direction, "up");
}

#[test]
fn an_error_burst_and_a_traffic_jump_are_flagged() {
    let mapper = steady_then(|m| {
        send(m, 30, "a", "b", 60, &Req::default());
        let bad = Req {
            error: true,
            ..Req::default()
        };
        send(m, 30, "a", "b", 40, &bad);
    });
    assert_eq!(
        anomalies_now(&mapper),
        vec![("a->b".to_owned(), Metric::ErrorRate)]
    );

    let mapper = steady_then(|m| send(m, 30, "a", "b", 1_000, &Req::default()));
    let report = detect(
        mapper.topology(),
        T0,
        T0 + 31 * MIN,
        &AnomalyConfig::default(),
    );
    assert_eq!(report.anomalies.len(), 1, "{report:#?}");
    let a = &report.anomalies[0];
    assert_eq!(a.metric, Metric::RequestRate);
    assert!(
        (a.current - 1_000.0 / 60.0).abs() < 1e-6,
        "per second: {a:?}"
    );
    // A higher threshold lets it pass.
    let lenient = AnomalyConfig {
        threshold: 1_000.0,
        ..AnomalyConfig::default()
    };
    assert!(
        detect(mapper.topology(), T0, T0 + 31 * MIN, &lenient)
            .anomalies
            .is_empty()
    );
}

#[test]
fn a_new_dependency_is_flagged_and_a_short_baseline_is_not_judged() {
    let mapper = steady_then(|m| {
        send(m, 30, "a", "b", 100, &Req::default());
        send(m, 30, "a", "intruder", 3, &Req::default());
    });
    assert_eq!(
        anomalies_now(&mapper),
        vec![("a->intruder".to_owned(), Metric::NewDependency)]
    );

    // Three buckets of history: below the minimum baseline, nothing is judged.
    let young = TopologyMapper::new();
    for minute in 0..3 {
        send(&young, minute, "a", "b", 10, &Req::default());
    }
    send(&young, 3, "a", "b", 5_000, &Req::default());
    send(&young, 3, "a", "c", 5, &Req::default());
    let report = detect(
        young.topology(),
        T0,
        T0 + 4 * MIN,
        &AnomalyConfig::default(),
    );
    assert!(report.anomalies.is_empty(), "{report:#?}");
}

#[test]
fn the_watch_publishes_each_anomaly_once() {
    let mapper = steady_then(|m| send(m, 30, "a", "b", 1_000, &Req::default()));
    let report = detect(
        mapper.topology(),
        T0,
        T0 + 31 * MIN,
        &AnomalyConfig::default(),
    );
    let events = EventBus::default();
    let watch = AnomalyWatch::default();
    assert_eq!(watch.publish(&report, &events), 1);
    assert_eq!(watch.publish(&report, &events), 0);
    let recent = events.recent();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].event_type, "weft.topology.anomaly");
    assert_eq!(recent[0].data["metric"], "request_rate");
}

fn scaling_of(mapper: &TopologyMapper, minutes: u64) -> Vec<(String, Action, f64)> {
    recommend(
        mapper.topology(),
        T0,
        T0 + minutes * MIN,
        &ScalingConfig::default(),
    )
    .services
    .iter()
    .map(|r| (r.service.clone(), r.action, r.factor))
    .collect()
}

#[test]
fn growing_idle_steady_and_slow_services_get_their_recommendation() {
    let mapper = TopologyMapper::new();
    for minute in 0..20 {
        send(
            &mapper,
            minute,
            "c",
            "growing",
            60 + 30 * minute,
            &Req::default(),
        );
        send(&mapper, minute, "c", "idle", 1, &Req::default());
        send(&mapper, minute, "c", "steady", 120, &Req::default());
        let slow = Req {
            latency_ms: 300.0,
            ..Req::default()
        };
        send(&mapper, minute, "c", "slow", 120, &slow);
    }
    let got = scaling_of(&mapper, 20);
    let find = |name: &str| got.iter().find(|r| r.0 == name).cloned().expect(name);
    let growing = find("growing");
    assert_eq!(growing.1, Action::ScaleOut, "{got:?}");
    // 630/min now, 1080/min projected 15 minutes on.
    assert!((growing.2 - 1_080.0 / 630.0).abs() < 0.01, "{growing:?}");
    assert_eq!(find("idle").1, Action::ScaleIn);
    assert_eq!(find("steady").1, Action::Hold);
    let slow = find("slow");
    assert_eq!(slow.1, Action::ScaleOut);
    assert!((2.5..=3.5).contains(&slow.2), "p99 / target: {slow:?}");
    assert_eq!(got[0].1, Action::ScaleOut, "scale_out listed first");
    // Too little history: hold.
    assert!(scaling_of(&mapper, 3).iter().all(|r| r.1 == Action::Hold));
}

/// A redis cache and a postgres database with many / few clients, plus `extra`.
fn datastore_topology(extra: impl FnOnce(&TopologyMapper)) -> TopologyMapper {
    let mapper = TopologyMapper::new();
    let redis = Req {
        latency_ms: 0.5,
        bytes: (30, 10),
        protocol: "redis",
        port: 6379,
        ..Req::default()
    };
    let postgres = Req {
        latency_ms: 20.0,
        bytes: (200, 5_000),
        protocol: "postgres",
        port: 5432,
        ..Req::default()
    };
    for i in 0..8 {
        send(&mapper, 0, &format!("app{i}"), "sessions", 50, &redis);
    }
    for i in 0..2 {
        send(&mapper, 0, &format!("app{i}"), "orders", 50, &postgres);
    }
    extra(&mapper);
    mapper
}

#[test]
fn an_unknown_port_service_with_a_redis_shape_is_learned_as_a_cache() {
    let mapper = datastore_topology(|m| {
        let kv = Req {
            latency_ms: 0.4,
            bytes: (28, 12),
            protocol: "tcp",
            port: 9999,
            ..Req::default()
        };
        for i in 0..8 {
            send(m, 0, &format!("app{i}"), "10.0.0.9", 50, &kv);
        }
    });
    let report = classify(
        &mapper.generate_topology_map(),
        &ServiceClassifier::default(),
        &Examples::default(),
    );
    assert_eq!(report.trained_types.get(&ServiceType::Cache), Some(&1));
    assert_eq!(report.trained_types.get(&ServiceType::Database), Some(&1));
    let kv = report
        .services
        .iter()
        .find(|s| s.service == "10.0.0.9:9999")
        .expect("kv");
    assert_eq!(kv.rule_type, ServiceType::Microservice, "rules only guess");
    assert!(!kv.training);
    assert_eq!(kv.learned_type, Some(ServiceType::Cache), "{kv:#?}");
    assert!(kv.confidence.expect("confidence") > 0.8, "{kv:#?}");
    assert!(!kv.ambiguous);
    assert_eq!(kv.nearest[0].service, "sessions");
    let sessions = report
        .services
        .iter()
        .find(|s| s.service == "sessions")
        .expect("sessions");
    assert!(sessions.training && sessions.learned_type.is_none());
}

#[test]
fn equally_near_types_give_low_confidence() {
    // Same shape as two differently labelled services: nothing tells them apart.
    let mapper = TopologyMapper::new();
    for name in ["x-one", "x-two", "x-three"] {
        for i in 0..3 {
            send(&mapper, 0, &format!("c{i}"), name, 20, &Req::default());
        }
    }
    let examples = Examples::parse(
        "[[example]]\nservice = \"x-one\"\ntype = \"cache\"\n\n[[example]]\nservice = \"x-two\"\ntype = \"web_server\"\n",
        "test",
    )
    .expect("valid");
    let report = classify(
        &mapper.generate_topology_map(),
        &ServiceClassifier::default(),
        &examples,
    );
    let three = report
        .services
        .iter()
        .find(|s| s.service == "x-three")
        .expect("x-three");
    assert!(three.confidence.expect("scored") < 0.05, "{three:#?}");
    assert!(three.ambiguous);
    let one = report
        .services
        .iter()
        .find(|s| s.service == "x-one")
        .expect("x-one");
    assert_eq!(one.example_type, Some(ServiceType::Cache));
    assert!(one.training);
}

#[test]
fn an_http_fan_out_is_learned_as_a_gateway_from_examples() {
    let mapper = TopologyMapper::new();
    let api = Req {
        path: Some("/api/orders"),
        bytes: (300, 800),
        ..Req::default()
    };
    let page = Req {
        path: Some("/index.html"),
        bytes: (200, 40_000),
        latency_ms: 3.0,
        ..Req::default()
    };
    // A labelled gateway and web server.
    for i in 0..5 {
        send(&mapper, 0, &format!("user{i}"), "edge", 40, &api);
        send(&mapper, 0, &format!("user{i}"), "site", 40, &page);
        // The candidate: plain TCP on 9999, fanning out the same way.
        let tcp = Req {
            protocol: "tcp",
            port: 9999,
            bytes: (300, 800),
            ..Req::default()
        };
        send(&mapper, 0, &format!("user{i}"), "front", 40, &tcp);
    }
    for upstream in ["orders", "users", "carts"] {
        send(&mapper, 0, "edge", upstream, 60, &api);
        send(&mapper, 0, "front", upstream, 60, &api);
    }
    let examples = Examples::parse(
        "[[example]]\nservice = \"edge\"\ntype = \"api_gateway\"\n[[example]]\nservice = \"site\"\ntype = \"web_server\"\n",
        "test",
    )
    .expect("valid");
    let report = classify(
        &mapper.generate_topology_map(),
        &ServiceClassifier::default(),
        &examples,
    );
    let front = report
        .services
        .iter()
        .find(|s| s.service == "front")
        .expect("front");
    assert_eq!(front.rule_type, ServiceType::Microservice);
    assert_eq!(
        front.learned_type,
        Some(ServiceType::ApiGateway),
        "{front:#?}"
    );
    assert!(!front.ambiguous, "{front:#?}");
}

#[test]
fn example_files_errors_name_the_line_or_field() {
    let bad_type = Examples::parse(
        "[[example]]\nservice = \"a\"\ntype = \"toaster\"\n",
        "ex.toml",
    )
    .unwrap_err();
    assert!(
        bad_type.contains("ex.toml") && bad_type.contains("line 3"),
        "{bad_type}"
    );
    let unknown = Examples::parse(
        "[[example]]\nservice = \"a\"\nkind = \"cache\"\n",
        "ex.toml",
    )
    .unwrap_err();
    assert!(unknown.contains("kind"), "{unknown}");
    let empty =
        Examples::parse("[[example]]\nservice = \"\"\ntype = \"cache\"\n", "ex.toml").unwrap_err();
    assert!(empty.contains("example 1: field service"), "{empty}");
}
