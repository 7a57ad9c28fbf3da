//! A pcap of the lab's traffic, written by tcpdump on the hypervisor's bridge while the
//! agent watches live, imports to the same topology: the same dependencies and the same
//! request count on each, counted by the library's `TopologyMapper`. Needs root, tcpdump
//! and built binaries (`cargo xtask test`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_lab::lab::BRIDGE;
use weft_lab::servers::{self, Site};
use weft_lab::weft::{Agent, Controller};
use weft_lab::{Lab, eventually, skip_unless_root, traffic};
use weft_topology::import::pcap;
use weft_topology::mapper::TopologyMapper;
use weft_topology::observation::TrafficObservation;

/// `(source, target) -> requests`, summed over ports.
type Edges = BTreeMap<(String, String), u64>;

fn live_edges(controller: &Controller) -> Result<Edges> {
    let mut edges = Edges::new();
    for d in controller.topology()?.dependencies {
        *edges.entry((d.source, d.target)).or_default() += d.requests;
    }
    Ok(edges)
}

/// The capture imported and fed through the library (`TopologyMapper`), hosts renamed to
/// their workloads as the live controller names them from the registry. Flow-level
/// observations (connections without a complete turn) are not requests and stay out of the
/// mapper; the edges they would add are returned apart.
fn imported_edges(lab: &Lab, capture: &Path) -> Result<(Edges, Edges, usize)> {
    let bytes = std::fs::read(capture).with_context(|| format!("reading {}", capture.display()))?;
    let report = pcap::import(&bytes);
    let names: HashMap<String, String> = lab
        .workloads()
        .iter()
        .flat_map(|w| {
            [
                (w.ipv4.clone(), w.name.clone()),
                (w.ipv6.clone(), w.name.clone()),
            ]
        })
        .collect();
    let rename = |o: &TrafficObservation| {
        let mut o = o.clone();
        for host in [&mut o.source.host, &mut o.destination.host] {
            if let Some(name) = names.get(host.as_str()) {
                *host = name.clone();
            }
        }
        o
    };
    let requests: Vec<TrafficObservation> = report.requests().map(rename).collect();
    let mapper = TopologyMapper::new();
    let outcome = mapper.observe_traffic_batch(&requests);
    ensure!(
        outcome.errors.is_empty(),
        "the mapper refused observations: {:?}",
        outcome.errors
    );
    let mut edges = Edges::new();
    for d in mapper.generate_topology_map().dependencies {
        *edges.entry((d.source, d.target)).or_default() += d.requests;
    }
    let mut flow_only = Edges::new();
    for &i in &report.flow_only {
        if let Some(o) = report.observations.get(i).map(rename) {
            *flow_only
                .entry((o.source.host, o.destination.host))
                .or_default() += 1;
        }
    }
    Ok((edges, flow_only, report.errors.len()))
}

#[test]
fn pcap_of_the_lab_imports_to_the_topology_the_agent_built_live() -> Result<()> {
    if skip_unless_root("pcap_of_the_lab_imports_to_the_topology_the_agent_built_live") {
        return Ok(());
    }
    let mut b = Lab::builder().hypervisor("hv1");
    for w in ["client", "web", "api", "worker", "cache"] {
        b = b.workload(w);
    }
    let lab = b.build()?;
    let api = servers::nginx(
        lab.workload("api")?,
        Site::Static(vec![("small.json".into(), b"{\"ok\":true}\n".to_vec())]),
    )?;
    let web = servers::nginx(
        lab.workload("web")?,
        Site::Proxy {
            upstream: api.addr(),
        },
    )?;
    let cache = servers::redis(lab.workload("cache")?)?;
    let controller = Controller::start(&lab)?;
    let _agent = Agent::start(&lab, 0, &controller.grpc_url())?;

    // The bridge sees every frame between workloads (tcpdump puts it in promiscuous mode);
    // -U writes each packet as it comes, so the file is complete when tcpdump stops.
    let capture = lab.dir().join("lab.pcap");
    let capture_arg = capture.to_string_lossy().into_owned();
    let mut tcpdump = lab.hypervisor().netns.spawn(
        lab.dir(),
        "tcpdump",
        &[
            "tcpdump",
            "-i",
            BRIDGE,
            "-n",
            "-U",
            "-s",
            "0",
            "-w",
            &capture_arg,
            "ip or ip6",
        ],
    )?;
    eventually(Duration::from_secs(10), Duration::from_millis(50), || {
        let len = std::fs::metadata(&capture).map(|m| m.len()).unwrap_or(0);
        ensure!(len >= 24, "tcpdump has not written its header yet");
        Ok(())
    })?;
    // tcpdump writes the header after activating the capture: from here every frame is in.

    let client = &lab.workload("client")?.netns;
    let worker = &lab.workload("worker")?.netns;
    traffic::curl_each(client, &format!("{}/small.json", web.url()), 3, &[])?;
    traffic::curl_keepalive(client, &format!("{}/small.json", web.url()), 4, &[])?;
    traffic::redis_benchmark(worker, &cache.ipv4, 200, 2)?;

    // The live topology is complete when the agent's counts stop moving.
    let mut previous = Edges::new();
    let live = eventually(Duration::from_secs(30), Duration::from_secs(2), || {
        let now = live_edges(&controller)?;
        let settled = now == previous
            && ["client", "web", "worker"]
                .iter()
                .all(|s| now.keys().any(|(src, _)| src == s));
        previous = now.clone();
        ensure!(settled, "live topology still moving: {now:?}");
        Ok(now)
    })?;
    tcpdump.stop();

    let (mut imported, flow_only, errors) = imported_edges(&lab, &capture)?;
    for edge in flow_only.keys() {
        imported.entry(edge.clone()).or_insert(0);
    }
    eprintln!(
        "live topology: {live:?}\nimported from {}: {imported:?}",
        capture.display()
    );
    assert_eq!(errors, 0, "tcpdump's capture must import without errors");
    let live_set: Vec<_> = live.keys().collect();
    let imported_set: Vec<_> = imported.keys().collect();
    assert_eq!(imported_set, live_set, "the same dependencies");
    assert_eq!(imported, live, "the same request count on every dependency");
    for edge in [("client", "web"), ("web", "api"), ("worker", "cache")] {
        let key = (edge.0.to_string(), edge.1.to_string());
        assert!(
            live.get(&key).copied().unwrap_or(0) > 0,
            "{edge:?} carried requests: {live:?}"
        );
    }
    Ok(())
}
