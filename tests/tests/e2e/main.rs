//! End-to-end: real servers and clients in a namespace lab, weft-agent on the hypervisor,
//! weft-controller in the root namespace; the assertions read the controller's
//! `GET /topology`. Needs root and built binaries (`cargo xtask test` does both). Labs
//! take a machine-wide lock, so these tests run one at a time even in parallel threads.

mod console;
mod events;
mod export;
mod failover;
mod l7;
mod l7_exact;
mod migration;
mod multi_hv;
mod networks;
mod restart;
mod shadows;
mod steer_restart;
mod support;
mod tap_restart;
mod trust;
mod weaves;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use weft_lab::servers::{self, Site};
use weft_lab::topology::{Dependency, edge_set};
use weft_lab::weft::Controller;
use weft_lab::{delay, eventually, rawframes, skip_unless_root, traffic};

use support::{BLOB_SIZE, Weft, wait_edge};

#[test]
fn topology_edges_are_exactly_the_generated_ones() -> Result<()> {
    if skip_unless_root("topology_edges_are_exactly_the_generated_ones") {
        return Ok(());
    }
    let lab = support::lab(&["client", "web", "api", "worker", "db", "cache"])?;
    let api = servers::nginx(lab.workload("api")?, support::static_site())?;
    let web = servers::nginx(
        lab.workload("web")?,
        Site::Proxy {
            upstream: api.addr(),
        },
    )?;
    let db = servers::postgres(lab.workload("db")?)?;
    let cache = servers::redis(lab.workload("cache")?)?;
    let weft = Weft::start(&lab)?;

    let client = &lab.workload("client")?.netns;
    let worker = &lab.workload("worker")?.netns;
    traffic::curl_each(client, &format!("{}/small.json", web.url()), 3, &[])?;
    traffic::curl_keepalive(client, &format!("{}/small.json", web.url()), 3, &[])?;
    traffic::pgbench_init(worker, &db.ipv4)?;
    traffic::pgbench_run(worker, &db.ipv4, 2, 2)?;
    traffic::redis_benchmark(worker, &cache.ipv4, 1000, 2)?;

    let expected = edge_set(&[
        ("client", "web"),
        ("web", "api"),
        ("worker", "db"),
        ("worker", "cache"),
    ]);
    let topology = eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let t = weft.controller.topology()?;
        ensure!(
            expected.is_subset(&t.edges()),
            "edges so far: {:?}",
            t.edges()
        );
        ensure!(
            t.dependencies.iter().all(|d| d.requests > 0),
            "an edge has no requests yet: {:?}",
            t.dependencies
        );
        Ok(t)
    })
    .with_context(|| weft.logs())?;
    assert_eq!(
        topology.edges(),
        expected,
        "dependencies must be exactly the generated ones"
    );
    for (source, target, protocol) in [
        ("client", "web", "http"),
        ("web", "api", "http"),
        ("worker", "db", "postgres"),
        ("worker", "cache", "redis"),
    ] {
        let d = topology.edge(source, target)?;
        assert_eq!(
            d.protocol, protocol,
            "protocol of {source}->{target}: {d:?}"
        );
        assert_eq!(d.transport, "tcp", "transport of {source}->{target}: {d:?}");
    }
    // Both /metrics endpoints (text format 0.0.4 from their registries) count the traffic.
    let controller = weft.controller.get("/metrics")?;
    assert!(
        weft_lab::weft::sum_metric(&controller, "weft_dependency_requests_total") > 0.0,
        "{controller}"
    );
    assert!(
        controller.contains("# TYPE weft_dependency_request_duration_seconds histogram"),
        "{controller}"
    );
    let agent = weft.agent.metrics(&lab)?;
    assert!(
        weft_lab::weft::sum_metric(&agent, "weft_agent_records_sent_total") > 0.0,
        "{agent}"
    );
    assert!(
        agent.contains("# TYPE weft_agent_interfaces_attached gauge"),
        "{agent}"
    );
    assert!(!controller.contains("# EOF") && !agent.contains("# EOF"));
    Ok(())
}

#[test]
fn curl_connections_and_requests_are_counted() -> Result<()> {
    if skip_unless_root("curl_connections_and_requests_are_counted") {
        return Ok(());
    }
    const N: usize = 7;
    const M: usize = 5;
    let lab = support::lab(&["client", "web"])?;
    let web = servers::nginx(lab.workload("web")?, support::static_site())?;
    let weft = Weft::start(&lab)?;
    let client = &lab.workload("client")?.netns;
    let url = format!("{}/blob.bin", web.url());
    let mut transfers = traffic::curl_each(client, &url, N, &[])?;
    let keepalive = traffic::curl_keepalive(client, &url, M, &[])?;
    assert_eq!(
        keepalive.iter().map(|t| t.num_connects).sum::<u64>(),
        1,
        "curl must reuse one connection"
    );
    transfers.extend(keepalive);
    let downloaded = traffic::total_download(&transfers);
    assert_eq!(downloaded, ((N + M) * BLOB_SIZE) as u64);
    let request_bytes: u64 = transfers
        .iter()
        .map(|t| t.size_request + t.size_upload)
        .sum();

    let d = wait_edge(&weft, "client", "web", |d| {
        d.flows >= (N + 1) as u64 && d.requests >= (N + M) as u64
    })?;
    assert_eq!(
        d.flows,
        (N + 1) as u64,
        "flows: {N} single-request connections + 1 keep-alive: {d:?}"
    );
    assert_eq!(d.requests, (N + M) as u64, "requests: {N} + {M}: {d:?}");
    assert_within(
        d.payload_bytes_received,
        downloaded,
        0.03,
        "payload_bytes_received vs curl size_download",
    )?;
    assert_within(
        d.payload_bytes_sent,
        request_bytes,
        0.05,
        "payload_bytes_sent vs curl size_request+size_upload",
    )?;
    assert!(d.bytes_received >= d.payload_bytes_received, "{d:?}");
    assert!(d.bytes_sent >= d.payload_bytes_sent, "{d:?}");
    Ok(())
}

#[test]
fn handshake_rtt_reads_netem_delay() -> Result<()> {
    if skip_unless_root("handshake_rtt_reads_netem_delay") {
        return Ok(());
    }
    let lab = support::lab(&["client", "web"])?;
    let web_wl = lab.workload("web")?;
    let web = servers::nginx(web_wl, support::static_site())?;
    // `tc qdisc add dev eth0 root netem delay 20ms`, or an NFQUEUE delayer on kernels
    // without netem (this machine's).
    let delay = delay::egress_delay(web_wl, 20)?;
    let weft = Weft::start(&lab)?;
    let client = &lab.workload("client")?.netns;
    traffic::curl_each(client, &format!("{}/small.json", web.url()), 10, &[])?;

    let d = wait_edge(&weft, "client", "web", |d| {
        d.flows >= 10 && d.handshake_rtt_ms.count >= 10
    })?;
    let p50 = d.handshake_rtt_ms.p50;
    let how = delay.method();
    assert!(
        (18.0..=26.0).contains(&p50),
        "handshake RTT p50 {p50} ms with a 20 ms delay ({how}): {d:?}"
    );
    assert!(
        d.latency_ms.avg >= 20.0,
        "request latency avg {} ms with a 20 ms delay ({how}): {d:?}",
        d.latency_ms.avg
    );
    Ok(())
}

#[test]
fn udp_and_ipv6_flows_are_seen() -> Result<()> {
    if skip_unless_root("udp_and_ipv6_flows_are_seen") {
        return Ok(());
    }
    let lab = support::lab(&["client", "server"])?;
    let server_wl = lab.workload("server")?;
    let echo = servers::udp_echo(server_wl, 5005)?;
    let _web = servers::nginx(server_wl, support::static_site())?;
    let weft = Weft::start(&lab)?;
    let client = &lab.workload("client")?.netns;
    let echoed = traffic::udp_roundtrips(client, &echo.ipv4, echo.port, 5)?;
    assert_eq!(echoed, 5, "every UDP datagram must come back");
    traffic::curl_each(
        client,
        &format!("http://[{}]/small.json", server_wl.ipv6),
        3,
        &["-6"],
    )?;

    let deps = eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let t = weft.controller.topology()?;
        let deps: Vec<Dependency> = t.between("client", "server").into_iter().cloned().collect();
        let udp = deps.iter().any(|d| d.transport.eq_ignore_ascii_case("udp"));
        let v6 = deps
            .iter()
            .any(|d| d.transport.eq_ignore_ascii_case("tcp") && has_ipv6(d));
        ensure!(
            udp && v6,
            "client->server so far (udp seen: {udp}, tcp over ipv6 seen: {v6}): {deps:?}"
        );
        Ok(deps)
    })
    .with_context(|| weft.logs())?;
    let udp = deps
        .iter()
        .find(|d| d.transport.eq_ignore_ascii_case("udp"))
        .context("udp edge")?;
    assert_eq!(udp.port, 5005, "{udp:?}");
    assert!(udp.flows >= 1, "{udp:?}");
    Ok(())
}

#[test]
fn unparseable_packets_pass_untouched() -> Result<()> {
    if skip_unless_root("unparseable_packets_pass_untouched") {
        return Ok(());
    }
    let lab = support::lab(&["sender", "receiver"])?;
    let receiver = lab.workload("receiver")?;
    let sender = lab.workload("sender")?;
    let web = servers::nginx(receiver, support::static_site())?;
    let weft = Weft::start(&lab)?;

    // ARP and ICMP: the parser has no business with them.
    let loss = traffic::ping_loss(&sender.netns, &receiver.ipv4, 5)?;
    assert_eq!(loss, 0.0, "ping IPv4 loss");
    let loss = traffic::ping_loss(&sender.netns, &receiver.ipv6, 5)?;
    assert_eq!(loss, 0.0, "ping IPv6 loss");

    let mut rx = rawframes::start_receiver(receiver, 20)?;
    rawframes::send(sender, receiver)?;
    rawframes::wait_all_received(&mut rx, Duration::from_secs(15)).with_context(|| weft.logs())?;

    // TCP still works and is still observed.
    traffic::curl_each(&sender.netns, &format!("{}/small.json", web.url()), 2, &[])?;
    wait_edge(&weft, "sender", "receiver", |d| d.requests >= 2)?;
    let mut agent = weft.agent;
    ensure!(
        agent.child.is_running(),
        "weft-agent died: {}",
        agent.child.tail(30)
    );
    Ok(())
}

/// A controller killed (`kill -9`) while traffic flows loses the records merged since its
/// last topology checkpoint; the agent keeps every acknowledged batch until a checkpoint
/// holds it and sends those again to the restarted controller, so the topology counts
/// every request of the run exactly once: before the kill, during it and after.
#[test]
fn a_controller_killed_during_traffic_counts_every_request_once_after_restart() -> Result<()> {
    if skip_unless_root(
        "a_controller_killed_during_traffic_counts_every_request_once_after_restart",
    ) {
        return Ok(());
    }
    const BEFORE: usize = 4;
    const DURING: usize = 12;
    let lab = support::lab(&["client", "web"])?;
    let web = servers::nginx(lab.workload("web")?, support::static_site())?;
    let ip = lab.hypervisor().uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", weft_lab::weft::free_port(&ip)?);
    let http = format!("127.0.0.1:{}", weft_lab::weft::free_port("127.0.0.1")?);
    // No checkpoint before the kill: everything merged is lost with the process and only
    // the agents' retained batches can bring it back.
    let flags = ["--topology-checkpoint-interval", "1h"];
    let controller = Controller::start_with(&lab, &grpc, &http, &flags)?;
    let agent = weft_lab::weft::Agent::start(&lab, 0, &controller.grpc_url())?;
    let mut weft = Weft { controller, agent };
    let client = &lab.workload("client")?.netns;
    let url = format!("{}/small.json", web.url());
    traffic::curl_each(client, &url, BEFORE, &[])?;
    wait_edge(&weft, "client", "web", |d| d.requests >= BEFORE as u64)?;

    // Requests go on while the controller is killed and started again.
    let restarted = std::thread::scope(|scope| -> Result<Controller> {
        let during = scope.spawn(|| -> Result<usize> {
            let mut done = 0;
            for _ in 0..DURING {
                traffic::curl_each(client, &url, 1, &[])?;
                done += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(done)
        });
        std::thread::sleep(Duration::from_millis(300));
        weft.controller.child.kill_hard();
        // Same ports again (retried while the killed process's sockets go away).
        let second = eventually(Duration::from_secs(10), Duration::from_millis(300), || {
            Controller::start_with(&lab, &grpc, &http, &flags)
        });
        let done = during
            .join()
            .map_err(|_| anyhow::anyhow!("traffic thread panicked"))??;
        ensure!(done == DURING, "{done} of {DURING} requests made");
        second
    })?;
    weft.controller = restarted;
    let total = (BEFORE + DURING) as u64;
    eventually(Duration::from_secs(45), Duration::from_secs(1), || {
        let t = weft.controller.topology()?;
        let d = t.edge("client", "web")?.clone();
        ensure!(
            d.requests >= total,
            "the restarted controller has {} of the {total} requests: {d:?}",
            d.requests
        );
        Ok(d)
    })
    .with_context(|| weft.logs())?;
    // Give a duplicate the time to arrive, then: each request once.
    std::thread::sleep(Duration::from_secs(2));
    let d = weft.controller.topology()?.edge("client", "web")?.clone();
    assert_eq!(
        d.requests,
        total,
        "every request once: {d:?}\n{}",
        weft.logs()
    );
    assert_eq!(d.flows, total, "every connection once: {d:?}");
    let metrics = weft.agent.metrics(&lab)?;
    let resent = weft_lab::weft::sum_metric(&metrics, "weft_agent_batches_resent_total");
    assert!(
        resent >= 1.0,
        "the records before the kill came back from the agent's resend buffer: {resent}"
    );
    assert_eq!(
        weft_lab::weft::sum_metric(&metrics, "weft_agent_batches_lost_total"),
        0.0
    );
    Ok(())
}

#[test]
fn agent_counts_what_it_drops_when_its_queue_overflows() -> Result<()> {
    if skip_unless_root("agent_counts_what_it_drops_when_its_queue_overflows") {
        return Ok(());
    }
    const CAPACITY: usize = 4;
    const CONNECTIONS: usize = 12;
    let lab = support::lab(&["client", "web"])?;
    let web = servers::nginx(lab.workload("web")?, support::static_site())?;
    let controller = Controller::start(&lab)?;
    let (grpc, http) = (controller.grpc_addr.clone(), controller.http_addr.clone());
    let agent = weft_lab::weft::Agent::start_with(
        &lab,
        0,
        &controller.grpc_url(),
        &["--queue-capacity", &CAPACITY.to_string()],
    )?;
    let mut weft = Weft { controller, agent };
    weft.controller.child.kill_hard();
    let client = &lab.workload("client")?.netns;
    traffic::curl_each(
        client,
        &format!("{}/small.json", web.url()),
        CONNECTIONS,
        &[],
    )?;
    // Each connection gives at least one record per interface it crossed (2 here): far
    // more than the queue holds.
    let dropped = eventually(Duration::from_secs(15), Duration::from_millis(500), || {
        let m = weft.agent.metrics(&lab)?;
        let dropped = weft_lab::weft::sum_metric(&m, "weft_agent_records_dropped_total");
        let queued = weft_lab::weft::sum_metric(&m, "weft_agent_records_queued");
        ensure!(
            queued <= CAPACITY as f64,
            "queue holds {queued} > {CAPACITY}"
        );
        ensure!(dropped > 0.0, "nothing dropped yet:\n{m}");
        Ok(dropped)
    })
    .with_context(|| weft.logs())?;
    ensure!(
        weft.agent.child.is_running(),
        "agent died: {}",
        weft.agent.child.tail(20)
    );

    weft.controller = eventually(Duration::from_secs(10), Duration::from_millis(500), || {
        Controller::start_on(&lab, &grpc, &http)
    })?;
    // What the queue kept arrives, and the controller learns how much was dropped.
    let reported = eventually(Duration::from_secs(30), Duration::from_millis(500), || {
        let reported = weft
            .controller
            .metric("weft_controller_agent_dropped_records")?;
        ensure!(
            reported >= dropped,
            "controller knows {reported} dropped, agent {dropped}"
        );
        Ok(reported)
    })
    .with_context(|| weft.logs())?;
    let t = weft.controller.topology()?;
    let requests: u64 = t.dependencies.iter().map(|d| d.requests).sum();
    assert!(
        requests < CONNECTIONS as u64,
        "{requests} requests arrived although records were dropped ({reported})"
    );
    Ok(())
}

#[test]
fn new_interface_is_attached_within_a_second_and_a_vanished_one_forgotten() -> Result<()> {
    if skip_unless_root("new_interface_is_attached_within_a_second_and_a_vanished_one_forgotten") {
        return Ok(());
    }
    let mut lab = support::lab(&["client", "web"])?;
    let web = servers::nginx(lab.workload("web")?, support::static_site())?;
    let url = format!("{}/small.json", web.url());
    let mut weft = Weft::start(&lab)?;
    let attached = |weft: &Weft, lab: &weft_lab::Lab| -> Result<f64> {
        Ok(weft_lab::weft::sum_metric(
            &weft.agent.metrics(lab)?,
            "weft_agent_interfaces_attached",
        ))
    };
    assert_eq!(attached(&weft, &lab)?, 2.0);

    let started = std::time::Instant::now();
    let late_if = lab.add_late_workload("late")?.host_if.clone();
    weft.agent
        .child
        .wait_for_line(&["weft-agent attached", &late_if], Duration::from_secs(5))?;
    let took = started.elapsed();
    println!(
        "{late_if} attached {took:?} after the workload was started (veth, namespace and addresses included)"
    );
    assert!(
        took <= Duration::from_secs(1),
        "{late_if} attached after {took:?}"
    );

    // The new workload is not in the agent's workloads file: it is named after its
    // interface, and its traffic is observed.
    traffic::curl_each(&lab.workload("late")?.netns, &url, 2, &[])?;
    let d = wait_edge(&weft, &late_if, "web", |d| d.requests >= 2)?;
    assert_eq!(d.requests, 2, "{d:?}");

    lab.remove_workload("late")?;
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        let n = attached(&weft, &lab)?;
        ensure!(n == 2.0, "{n} interfaces attached");
        Ok(())
    })
    .with_context(|| weft.logs())?;
    // The others are still observed.
    traffic::curl_each(&lab.workload("client")?.netns, &url, 1, &[])?;
    wait_edge(&weft, "client", "web", |d| d.requests >= 1)?;
    Ok(())
}

fn has_ipv6(d: &Dependency) -> bool {
    d.address_families
        .iter()
        .any(|f| f.eq_ignore_ascii_case("ipv6"))
}

fn assert_within(actual: u64, expected: u64, tolerance: f64, what: &str) -> Result<()> {
    let diff = (actual as f64 - expected as f64).abs();
    if diff > expected as f64 * tolerance {
        bail!(
            "{what}: {actual} is not within {:.0}% of {expected}",
            tolerance * 100.0
        );
    }
    Ok(())
}
