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

/// A chain of `n` services, s0 -> s1 -> ... -> s(n-1).
fn long_chain(n: usize) -> TopologySnapshot {
    let mapper = TopologyMapper::new();
    for i in 1..n {
        let o = create_traffic_observation(&format!("s{}", i - 1), 1, &format!("s{i}"), 80, "http");
        mapper.observe_traffic(&o).expect("valid");
    }
    mapper.generate_topology_map()
}

/// `cargo test --release -p weft-topology critical_on_a_long_chain -- --ignored --nocapture`
#[test]
#[ignore = "timing, run by hand in release"]
fn critical_on_a_long_chain() {
    for n in [500, 1_000, 2_000, 4_000] {
        let snapshot = long_chain(n);
        let start = std::time::Instant::now();
        let all = critical_services(&snapshot);
        let took = start.elapsed();
        assert_eq!(all.len(), n);
        println!(
            "RESULT critical_chain_{n}_ms {:.2} ms critical_services on a chain of {n}",
            took.as_secs_f64() * 1e3
        );
    }
}

/// The quadratic definition, for checking the linear one: remove each service in turn and
/// look at what is left.
fn naive_disconnects(snapshot: &TopologySnapshot) -> Vec<(String, usize, bool)> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut names: BTreeSet<String> = BTreeSet::new();
    for d in &snapshot.dependencies {
        names.insert(d.source.clone());
        names.insert(d.target.clone());
    }
    for s in &snapshot.services {
        names.insert(s.name.clone());
    }
    let names: Vec<String> = names.into_iter().collect();
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut adjacency = vec![BTreeSet::new(); names.len()];
    for d in &snapshot.dependencies {
        let (a, b) = (index[d.source.as_str()], index[d.target.as_str()]);
        if a != b {
            adjacency[a].insert(b);
            adjacency[b].insert(a);
        }
    }
    let sizes = |removed: Option<usize>| -> Vec<usize> {
        let mut seen = vec![false; names.len()];
        if let Some(r) = removed {
            seen[r] = true;
        }
        let mut out = Vec::new();
        for start in 0..names.len() {
            if seen[start] {
                continue;
            }
            seen[start] = true;
            let mut stack = vec![start];
            let mut size = 0;
            while let Some(node) = stack.pop() {
                size += 1;
                for &next in &adjacency[node] {
                    if !seen[next] {
                        seen[next] = true;
                        stack.push(next);
                    }
                }
            }
            out.push(size);
        }
        out
    };
    let before = sizes(None).len();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let after = sizes(Some(i));
            // An articulation point leaves more components than there were (its own
            // component minus it counts as one, or none if it was alone).
            let alone = adjacency[i].is_empty();
            let point = after.len() > before - usize::from(alone);
            let disconnects = if point {
                after.iter().sum::<usize>() - after.iter().copied().max().unwrap_or(0)
            } else {
                0
            };
            (name.clone(), disconnects, point)
        })
        .collect()
}

proptest::proptest! {
    #[test]
    fn linear_critical_services_agree_with_the_definition(
        edges in proptest::collection::vec((0u8..14, 0u8..14), 0..30)
    ) {
        let mapper = TopologyMapper::new();
        for (a, b) in &edges {
            let o = create_traffic_observation(&format!("n{a}"), 1, &format!("n{b}"), 80, "http");
            mapper.observe_traffic(&o).expect("valid");
        }
        let snapshot = mapper.generate_topology_map();
        let mut fast: Vec<(String, usize, bool)> = critical_services(&snapshot)
            .into_iter()
            .map(|c| (c.service, c.disconnects, c.articulation_point))
            .collect();
        fast.sort();
        let mut slow = naive_disconnects(&snapshot);
        slow.sort();
        proptest::prop_assert_eq!(fast, slow);
    }
}
