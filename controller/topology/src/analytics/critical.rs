//! Critical services: by degree (distinct services a service talks to, either way), and
//! by articulation impact (how many services lose their connection to the rest when it
//! goes away), both on the undirected service graph.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::topology::TopologySnapshot;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// What one depth-first pass finds: articulation points, and for each of them the size
/// of the largest piece its component falls into when it is removed.
struct Cuts {
    /// Whether removing the node splits its component (a Tarjan articulation point).
    points: Vec<bool>,
    /// Component of each node (an index into `component_sizes`).
    component: Vec<usize>,
    component_sizes: Vec<usize>,
    /// For an articulation point: the largest piece of its component without it.
    largest_piece: Vec<usize>,
}

/// Tarjan's articulation points (iterative DFS with low-link values), with subtree sizes
/// so that the pieces a removal leaves are known without another traversal: the subtrees
/// of the children whose low-link does not reach above the node, and the rest of the
/// component. Linear in nodes + edges.
fn cuts(adjacency: &[BTreeSet<usize>]) -> Cuts {
    let n = adjacency.len();
    let mut order = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut size = vec![1usize; n];
    // Sum and largest of the subtrees that a removal of the node cuts off.
    let mut cut_sum = vec![0usize; n];
    let mut cut_max = vec![0usize; n];
    let mut points = vec![false; n];
    let mut component = vec![0usize; n];
    let mut component_sizes = Vec::new();
    let mut counter = 0;
    for root in 0..n {
        if order[root] != usize::MAX {
            continue;
        }
        let id = component_sizes.len();
        let mut root_children = 0;
        // (node, parent, neighbours, position in them)
        let mut stack: Vec<(usize, usize, Vec<usize>, usize)> = Vec::new();
        order[root] = counter;
        low[root] = counter;
        counter += 1;
        component[root] = id;
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
                    component[next] = id;
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
                    size[p] += size[node];
                    if p == root || low[node] >= order[p] {
                        cut_sum[p] += size[node];
                        cut_max[p] = cut_max[p].max(size[node]);
                        if p != root {
                            points[p] = true;
                        }
                    }
                }
            }
        }
        points[root] = root_children > 1;
        component_sizes.push(size[root]);
    }
    let largest_piece = (0..n)
        .map(|v| {
            if !points[v] {
                return 0;
            }
            // What stays joined to the node's ancestors (nothing for a root).
            let rest = component_sizes[component[v]] - 1 - cut_sum[v];
            cut_max[v].max(rest)
        })
        .collect();
    Cuts {
        points,
        component,
        component_sizes,
        largest_piece,
    }
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
    let cuts = cuts(&adjacency);
    // The two largest components, so "the largest other than this one" is known for each.
    let mut largest = [(0usize, usize::MAX); 2];
    for (id, &size) in cuts.component_sizes.iter().enumerate() {
        if size > largest[0].0 {
            largest[1] = largest[0];
            largest[0] = (size, id);
        } else if size > largest[1].0 {
            largest[1] = (size, id);
        }
    }
    let remaining = names.len().saturating_sub(1);
    let mut out: Vec<CriticalService> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let disconnects = if cuts.points[i] {
                let other = if largest[0].1 == cuts.component[i] {
                    largest[1].0
                } else {
                    largest[0].0
                };
                remaining - cuts.largest_piece[i].max(other)
            } else {
                0
            };
            CriticalService {
                service: name.clone(),
                connections: adjacency[i].len(),
                disconnects,
                articulation_point: cuts.points[i],
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
