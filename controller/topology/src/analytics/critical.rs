//! Critical services: by degree (distinct services a service talks to, either way), and
//! by articulation impact (how many services lose their connection to the rest when it
//! goes away), both on the undirected service graph.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::topology::TopologySnapshot;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CriticalService {
    pub service: String,
    /// Distinct neighbours, inbound or outbound.
    pub connections: usize,
    /// Services cut off from the largest remaining component if this one is removed.
    pub disconnects: usize,
    /// Whether removing it splits its component (a Tarjan articulation point).
    pub articulation_point: bool,
}

/// Undirected adjacency over service indices, self-loops dropped.
fn graph(snapshot: &TopologySnapshot) -> (Vec<String>, Vec<BTreeSet<usize>>) {
    let mut names: BTreeSet<&str> = snapshot.services.iter().map(|s| s.name.as_str()).collect();
    for d in &snapshot.dependencies {
        names.insert(&d.source);
        names.insert(&d.target);
    }
    let names: Vec<String> = names.into_iter().map(str::to_owned).collect();
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
    (names, adjacency)
}

/// Sizes of the connected components when `removed` is taken out.
fn component_sizes(adjacency: &[BTreeSet<usize>], removed: Option<usize>) -> Vec<usize> {
    let mut seen = vec![false; adjacency.len()];
    if let Some(r) = removed {
        seen[r] = true;
    }
    let mut sizes = Vec::new();
    for start in 0..adjacency.len() {
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
        sizes.push(size);
    }
    sizes
}

/// Tarjan's articulation points (iterative DFS with low-link values).
fn articulation_points(adjacency: &[BTreeSet<usize>]) -> Vec<bool> {
    let n = adjacency.len();
    let mut order = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut points = vec![false; n];
    let mut counter = 0;
    for root in 0..n {
        if order[root] != usize::MAX {
            continue;
        }
        let mut root_children = 0;
        // (node, parent, neighbours iterator position)
        let mut stack: Vec<(usize, usize, Vec<usize>, usize)> = Vec::new();
        order[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push((
            root,
            usize::MAX,
            adjacency[root].iter().copied().collect(),
            0,
        ));
        while let Some(top) = stack.last_mut() {
            let (node, parent) = (top.0, top.1);
            if top.3 < top.2.len() {
                let next = top.2[top.3];
                top.3 += 1;
                if next == parent {
                    continue;
                }
                if order[next] == usize::MAX {
                    order[next] = counter;
                    low[next] = counter;
                    counter += 1;
                    if node == root {
                        root_children += 1;
                    }
                    stack.push((next, node, adjacency[next].iter().copied().collect(), 0));
                } else {
                    low[node] = low[node].min(order[next]);
                }
            } else {
                stack.pop();
                if let Some(parent_frame) = stack.last() {
                    let p = parent_frame.0;
                    low[p] = low[p].min(low[node]);
                    if p != root && low[node] >= order[p] {
                        points[p] = true;
                    }
                }
            }
        }
        points[root] = root_children > 1;
    }
    points
}

/// Services by degree, most connected first (ties by name): the spec's
/// `find_critical_services`.
pub fn critical_by_degree(snapshot: &TopologySnapshot) -> Vec<(String, usize)> {
    let (names, adjacency) = graph(snapshot);
    let mut out: Vec<(String, usize)> = names
        .into_iter()
        .zip(adjacency.iter().map(BTreeSet::len))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Services whose removal cuts others off from the largest remaining component, most
/// first (ties by name); services that cut nobody off are left out.
pub fn articulation_impact(snapshot: &TopologySnapshot) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = critical_services(snapshot)
        .into_iter()
        .filter(|c| c.disconnects > 0)
        .map(|c| (c.service, c.disconnects))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Every service with its degree and articulation impact, ordered by impact, then
/// degree, then name.
pub fn critical_services(snapshot: &TopologySnapshot) -> Vec<CriticalService> {
    let (names, adjacency) = graph(snapshot);
    let points = articulation_points(&adjacency);
    let mut out: Vec<CriticalService> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let disconnects = if points[i] {
                let sizes = component_sizes(&adjacency, Some(i));
                let remaining: usize = sizes.iter().sum();
                remaining - sizes.iter().copied().max().unwrap_or(0)
            } else {
                0
            };
            CriticalService {
                service: name.clone(),
                connections: adjacency[i].len(),
                disconnects,
                articulation_point: points[i],
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.disconnects
            .cmp(&a.disconnects)
            .then_with(|| b.connections.cmp(&a.connections))
            .then_with(|| a.service.cmp(&b.service))
    });
    out
}
