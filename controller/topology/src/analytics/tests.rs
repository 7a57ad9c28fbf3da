use super::*;
use crate::mapper::{TopologyMapper, create_traffic_observation};

/// A chain a -> b -> c -> d plus b -> e, latencies given per edge.
fn chain() -> TopologySnapshot {
    let mapper = TopologyMapper::new();
    for (source, target, latency) in [
        ("a", "b", 10.0),
        ("b", "c", 50.0),
        ("c", "d", 5.0),
        ("b", "e", 200.0),
    ] {
        for i in 0..10 {
            let mut o = create_traffic_observation(source, 1, target, 80, "http");
            o.latency_ms = if i == 9 { latency * 10.0 } else { latency };
            mapper.observe_traffic(&o).expect("valid");
        }
    }
    mapper.generate_topology_map()
}

#[test]
fn articulation_impact_counts_services_cut_off() {
    let snapshot = chain();
    // Removing b leaves {a}, {c, d}, {e}: a and e are cut off from the largest part.
    // Removing c leaves {a, b, e}, {d}: one.
    assert_eq!(
        articulation_impact(&snapshot),
        vec![("b".to_owned(), 2), ("c".to_owned(), 1)]
    );
    let all = critical_services(&snapshot);
    assert_eq!(all[0].service, "b");
    assert!(all[0].articulation_point);
    assert_eq!(all[0].connections, 3);
    assert!(
        !all.iter()
            .find(|c| c.service == "a")
            .expect("a")
            .articulation_point
    );
}

#[test]
fn degree_orders_by_connections_then_name() {
    let degrees = critical_by_degree(&chain());
    assert_eq!(degrees[0], ("b".to_owned(), 3));
    assert_eq!(degrees[1], ("c".to_owned(), 2));
    assert_eq!(degrees[2], ("a".to_owned(), 1));
}

#[test]
fn a_cycle_has_no_articulation_point() {
    let mapper = TopologyMapper::new();
    for (s, t) in [("a", "b"), ("b", "c"), ("c", "a")] {
        mapper
            .observe_traffic(&create_traffic_observation(s, 1, t, 80, "http"))
            .expect("valid");
    }
    assert!(articulation_impact(&mapper.generate_topology_map()).is_empty());
}

#[test]
fn bottlenecks_use_the_chosen_statistic() {
    let snapshot = chain();
    let names = |stat, threshold| -> Vec<String> {
        bottlenecks(&snapshot, threshold, stat)
            .iter()
            .map(|d| format!("{}->{}", d.source, d.target))
            .collect()
    };
    // Means: a->b 19, b->c 95, c->d 9.5, b->e 380. p50s: 10, 50, 5, 200.
    assert_eq!(names(LatencyStat::Avg, 60.0), vec!["b->e", "b->c"]);
    assert_eq!(names(LatencyStat::P50, 60.0), vec!["b->e"]);
    assert_eq!(names(LatencyStat::P99, 60.0), vec!["b->e", "b->c", "a->b"]);
}

#[test]
fn directions_parse_and_bad_ones_say_why() {
    assert_eq!(
        "Inbound".parse::<TrafficDirection>(),
        Ok(TrafficDirection::Inbound)
    );
    assert!(
        "sideways"
            .parse::<TrafficDirection>()
            .unwrap_err()
            .contains("sideways")
    );
    assert_eq!("p95".parse::<LatencyStat>(), Ok(LatencyStat::P95));
    assert!("p42".parse::<LatencyStat>().is_err());
}
