//! Two hypervisors, each with its own weft-agent, one controller: workloads on both get
//! their addresses from one network's shard, and reach each other on them.
//!
//! Topology: the hypervisors' bridges are joined by a VXLAN (VNI 100) over the lab's
//! underlay, so the shard's /28 is one L2 segment spanning both hypervisors, as a
//! network stretched over several hosts would be. The shard's gateway lives on hv1's
//! bridge only (one router per segment; hv2's workloads reach it through the VXLAN).
//! Both agents dial the controller on hv1's uplink (hv2 routes to it through its own).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{Lab, Netns, eventually, skip_unless_root, traffic};

const NETWORK: &str = "stretch";
/// (workload, hypervisor index).
const WORKLOADS: [(&str, usize); 4] = [("a1", 0), ("a2", 0), ("b1", 1), ("b2", 1)];

/// One ping from `src` to `dst` inside `ns`; Ok when it was answered.
fn ping_from(ns: &Netns, src: &str, dst: &str) -> Result<()> {
    let out = ns.exec_timeout(
        Duration::from_secs(5),
        &["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", src, dst],
    );
    let text = out.unwrap_or_else(|e| format!("{e:#}"));
    ensure!(
        traffic::parse_ping_loss(&text).ok() == Some(0.0),
        "{src} -> {dst} in {}: {text}",
        ns.name()
    );
    Ok(())
}

#[test]
fn workloads_on_two_hypervisors_get_addresses_from_one_shard() -> Result<()> {
    if skip_unless_root("workloads_on_two_hypervisors_get_addresses_from_one_shard") {
        return Ok(());
    }
    let lab = Lab::builder()
        .hypervisor("hv1")
        .workload("a1")
        .workload("a2")
        .hypervisor("hv2")
        .workload("b1")
        .workload("b2")
        .build()?;
    let _overlay = lab.join_bridges(100)?;
    let x = lab.x();
    let hv1 = &lab.hypervisors()[0];

    let ip = hv1.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let pool = format!("198.19.{x}.128/25");
    let controller = Controller::start_with(&lab, &grpc, &http, &["--shard-pool", &pool])?;
    let agents = [
        Agent::start(&lab, 0, &controller.grpc_url())?,
        Agent::start(&lab, 1, &controller.grpc_url())?,
    ];
    let logs = || {
        format!(
            "controller output:\n{}\nhv1 agent output:\n{}\nhv2 agent output:\n{}",
            controller.child.tail(20),
            agents[0].child.tail(20),
            agents[1].child.tail(20)
        )
    };

    let shard = controller
        .json(
            "POST",
            "/shards",
            Some(&json!({"prefix_len": 28, "network_id": NETWORK})),
        )
        .with_context(logs)?;
    let shard_id = shard["id"].as_str().context("shard id")?.to_owned();
    let gateway = shard["gateway"].as_str().context("gateway")?.to_owned();
    hv1.netns
        .ip(&["addr", "add", &format!("{gateway}/28"), "dev", "br0"])?;

    // (workload, address, cidr) as the controller handed them out.
    let mut given: Vec<(&str, String, String)> = Vec::new();
    for (w, hv) in WORKLOADS {
        let host = &lab.hypervisors()[hv].name;
        let a: Value = controller
            .json(
                "POST",
                &format!("/networks/{NETWORK}/addresses"),
                Some(&json!({"workload": w, "host_id": host, "family": "ipv4"})),
            )
            .with_context(logs)?;
        assert_eq!(
            a["shard_id"],
            shard_id.as_str(),
            "{w} is addressed from the one shard: {a}"
        );
        assert_eq!(a["host_id"], host.as_str(), "{a}");
        let address = a["address"].as_str().context("address")?.to_owned();
        let cidr = a["cidr"].as_str().context("cidr")?.to_owned();
        ensure!(cidr.ends_with("/28"), "{w}: {cidr}");
        given.push((w, address, cidr));
    }
    let mut distinct: Vec<&String> = given.iter().map(|(_, a, _)| a).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        WORKLOADS.len(),
        "every workload has its own address: {given:?}"
    );

    // Each hypervisor's agent puts the address on its own workloads' eth0.
    for (w, _, cidr) in &given {
        let wl = lab.workload(w)?;
        eventually(Duration::from_secs(20), Duration::from_millis(100), || {
            let out = wl.netns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
            ensure!(
                out.contains(&format!(" {cidr} ")),
                "{w} has no {cidr} yet: {out}"
            );
            Ok(())
        })
        .with_context(logs)?;
    }

    // Across the hypervisors, shard address to shard address, both ways.
    for (src, src_addr, _) in &given {
        for (dst, dst_addr, _) in &given {
            let (s, d) = (lab.workload(src)?, lab.workload(dst)?);
            if s.hypervisor == d.hypervisor {
                continue;
            }
            eventually(Duration::from_secs(10), Duration::from_millis(200), || {
                ping_from(&s.netns, src_addr, dst_addr)
            })
            .with_context(|| format!("{src} ({src_addr}) cannot reach {dst} ({dst_addr})"))
            .with_context(logs)?;
        }
    }
    // hv2's workloads use the shard's gateway, which only hv1 holds: through the overlay.
    let b1 = lab.workload("b1")?;
    let route = b1.netns.ip(&["-4", "route", "show", "default"])?;
    ensure!(
        route.contains(&gateway),
        "b1 routes through the shard gateway: {route}"
    );
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        ping_from(&b1.netns, &given[2].1, &gateway)
    })?;
    Ok(())
}
