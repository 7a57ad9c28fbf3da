//! Controller throughput and footprint, as plain timed loops (inputs built before the clock
//! starts, a warm-up pass first). Run by `cargo xtask bench`, which writes BENCHMARKS.md;
//! alone: `cargo bench -p weft-controller --bench throughput -- [ingest|grpc|memory|topology]`
//! (one section per process gives a clean memory figure).
//!
//! Every figure is printed as `RESULT <key> <value> <unit> <what>` for xtask to collect.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tower::ServiceExt as _;
use weft_controller::AppState;
use weft_controller::api::grpc::AgentApi;
use weft_controller::api::http;
use weft_proto::v1 as wire;
use weft_proto::v1::agent_service_client::AgentServiceClient;
use weft_topology::mapper::TopologyMapper;
use weft_topology::model::{
    Direction, FlowObservation, L7Info, LatencyBucket, RequestGroup, Transport,
};
use weft_topology::observation::{NetworkEndpoint, TrafficObservation};
use weft_topology::registry::Registry;
use weft_topology::topology::{BucketConfig, Topology, TopologyLimits};

/// A topology without caps: these benchmarks measure the cost of size itself.
fn unbounded() -> Topology {
    Topology::with_config(BucketConfig::default(), TopologyLimits::unbounded())
}

/// A controller state without caps on the topology or on the agents' record rate: these
/// benchmarks measure throughput and the cost of size.
fn unbounded_state() -> AppState {
    AppState::builder()
        .topology_limits(TopologyLimits::unbounded())
        .limits(weft_controller::limits::LimitConfig {
            agent_record_rate: u64::MAX / 4,
            agent_record_burst: u64::MAX / 4,
            ..Default::default()
        })
        .start(Arc::new(weft_store::MemoryStore::default()))
        .expect("a fresh memory store")
}

fn result(key: &str, value: f64, unit: &str, what: &str) {
    println!("RESULT {key} {value:.3} {unit} {what}");
}

/// Resident set size in bytes, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * PAGE_BYTES
}

/// statm counts pages; 4 KiB on the x86-64 and aarch64 Linux hosts weft runs on (the
/// controller does not link libc for `sysconf`).
const PAGE_BYTES: u64 = 4096;

fn server_ip(index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + 1 + index))
}

/// A flow record as an agent sends it: the client workload `client` calling `server`
/// (unknown to the registry, so named `ip:port`) with `requests` request turns.
fn observation(client: u32, server: u32, requests: u64) -> FlowObservation {
    FlowObservation {
        workload: Some(format!("client-{client}")),
        interface: format!("wl-client-{client}"),
        transport: Transport::Tcp,
        local_ip: IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32 + client)),
        local_port: 40_000 + (server % 20_000) as u16,
        remote_ip: server_ip(server),
        remote_port: 8080,
        direction: Direction::Outbound,
        packets_out: 10,
        packets_in: 9,
        bytes_out: 1_200,
        bytes_in: 9_000,
        payload_bytes_out: 600,
        payload_bytes_in: 8_000,
        first_seen_unix_ns: 1_700_000_000_000_000_000,
        last_seen_unix_ns: 1_700_000_001_000_000_000,
        tcp_flags_out: 0x1b,
        tcp_flags_in: 0x1b,
        handshake_rtt_ns: Some(80_000),
        requests,
        latency_sum_ns: requests * 1_500_000,
        latency: vec![LatencyBucket {
            upper_bound_ns: 2_000_000,
            count: requests,
        }],
        first_record: true,
        opened: true,
        ended: false,
        resets: 0,
        l7: L7Info {
            protocol: Some("http".into()),
            protocol_from_payload: true,
            server_name: None,
            tls_sni: None,
            tls_alpn: Vec::new(),
            request_groups: vec![RequestGroup {
                method: "GET".into(),
                path: "/users/{id}".into(),
                status: 200,
                count: requests,
                errors: 0,
                latency_sum_ns: requests * 1_500_000,
            }],
            dns_answers: Vec::new(),
        },
    }
}

fn wire_record(client: u32, server: u32) -> wire::FlowRecord {
    let o = observation(client, server, 3);
    let ip = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    wire::FlowRecord {
        workload: o.workload.unwrap_or_default(),
        interface: o.interface,
        transport: wire::Transport::Tcp as i32,
        local_ip: ip(o.local_ip),
        local_port: u32::from(o.local_port),
        remote_ip: ip(o.remote_ip),
        remote_port: u32::from(o.remote_port),
        direction: wire::FlowDirection::Outbound as i32,
        packets_out: o.packets_out,
        packets_in: o.packets_in,
        bytes_out: o.bytes_out,
        bytes_in: o.bytes_in,
        payload_bytes_out: o.payload_bytes_out,
        payload_bytes_in: o.payload_bytes_in,
        first_seen_unix_ns: o.first_seen_unix_ns,
        last_seen_unix_ns: o.last_seen_unix_ns,
        tcp_flags_out: o.tcp_flags_out,
        tcp_flags_in: o.tcp_flags_in,
        handshake_rtt_ns: 80_000,
        requests: o.requests,
        latency_sum_ns: o.latency_sum_ns,
        latency: vec![wire::LatencyBucket {
            upper_bound_ns: 2_000_000,
            count: 3,
        }],
        first_record: true,
        opened: true,
        protocol: "http".into(),
        protocol_from_payload: true,
        request_groups: vec![wire::RequestGroup {
            method: "GET".into(),
            path: "/users/{id}".into(),
            status: 200,
            count: 3,
            errors: 0,
            latency_sum_ns: 3 * 1_500_000,
        }],
        ..Default::default()
    }
}

/// The spec's observation: one request from client `client` to server `server`.
fn traffic(client: u32, server: u32, i: u32) -> TrafficObservation {
    TrafficObservation {
        timestamp_unix_ns: 1_700_000_000_000_000_000 + u64::from(i) * 1_000,
        source: NetworkEndpoint::new(format!("client-{client}"), 40_000),
        destination: NetworkEndpoint::new(format!("server-{server}.internal"), 8080),
        protocol: "http".into(),
        bytes_sent: 600,
        bytes_received: 8_000,
        latency_ms: 1.5 + f64::from(i % 7),
        status_code: Some(if i.is_multiple_of(50) { 503 } else { 200 }),
        method: Some("GET".into()),
        path: Some("/users/{id}".into()),
        error: false,
    }
}

/// The library API: observations per second into `TopologyMapper::observe_traffic_batch`
/// on this thread, 1M prebuilt spec observations over 1,000 dependencies.
fn mapper() {
    const N: u32 = 1_000_000;
    let observations: Vec<TrafficObservation> = (0..N)
        .map(|i| traffic(i % 100, (i / 100) % 10, i))
        .collect();
    let mapper = TopologyMapper::new();
    black_box(mapper.observe_traffic_batch(&observations[..100_000]));
    let mut best = f64::MAX;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut rounds = 0;
    let mut accepted = 0;
    while rounds < 3 || (Instant::now() < deadline && rounds < 10) {
        let start = Instant::now();
        accepted = black_box(mapper.observe_traffic_batch(&observations)).accepted;
        best = best.min(start.elapsed().as_secs_f64());
        rounds += 1;
    }
    if accepted != N as usize {
        eprintln!("mapper: only {accepted} of {N} observations accepted");
    }
    let rate = f64::from(N) / best;
    result(
        "mapper_observations_per_s",
        rate,
        "observations/s",
        "TopologyMapper::observe_traffic_batch, one thread, spec TrafficObservations over 1,000 dependencies, best of rounds of 1M",
    );
}

/// Flow records per second into `Topology::ingest` on this thread: 1M prebuilt records over
/// 1,000 dependencies (100 clients x 10 servers), the shape of steady agent traffic.
fn ingest() {
    const N: u32 = 1_000_000;
    let records: Vec<FlowObservation> = (0..N)
        .map(|i| observation(i % 100, (i / 100) % 10, 3))
        .collect();
    let registry = Registry::new();
    let topology = Topology::new();
    for r in records.iter().take(100_000) {
        black_box(topology.ingest(r, &registry));
    }
    let mut best = f64::MAX;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut rounds = 0;
    while rounds < 3 || (Instant::now() < deadline && rounds < 10) {
        let start = Instant::now();
        for r in &records {
            black_box(topology.ingest(r, &registry));
        }
        best = best.min(start.elapsed().as_secs_f64());
        rounds += 1;
    }
    let rate = f64::from(N) / best;
    result(
        "ingest_records_per_s",
        rate,
        "records/s",
        "Topology::ingest, one thread, 1,000 dependencies, best of rounds of 1M",
    );
    result(
        "ingest_ns_per_record",
        best * 1e9 / f64::from(N),
        "ns",
        "per record, same run",
    );

    // Distinct dependencies: every record creates a dependency (and a server service).
    let fresh: Vec<FlowObservation> = (0..200_000u32)
        .map(|i| observation(i % 1000, i, 1))
        .collect();
    let topology = unbounded();
    let start = Instant::now();
    for r in &fresh {
        black_box(topology.ingest(r, &registry));
    }
    let secs = start.elapsed().as_secs_f64();
    result(
        "ingest_new_dependency_per_s",
        fresh.len() as f64 / secs,
        "records/s",
        "Topology::ingest, every record a new dependency (200k)",
    );
}

/// Flow records per second from a tonic client through gRPC into the topology over
/// loopback, batches of 2,000 records (the agent's default), one batch in flight like the
/// agent's acked exporter.
fn grpc(nodelay: bool) {
    const BATCH: u32 = 2_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        eprintln!("grpc: no tokio runtime");
        return;
    };
    runtime.block_on(async {
        let state = unbounded_state();
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            eprintln!("grpc: cannot bind loopback");
            return;
        };
        let addr: SocketAddr = listener.local_addr().unwrap_or_else(|_| ([127, 0, 0, 1], 0).into());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentApi::new(state.clone()).into_service())
                .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(nodelay))),
        );
        let mut client = match AgentServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("grpc: connect: {e}");
                return;
            }
        };
        let registered = client
            .register(wire::RegisterRequest {
                host_id: "bench-host".into(),
                agent_instance: "bench-1".into(),
                ..Default::default()
            })
            .await;
        if let Err(e) = registered {
            eprintln!("grpc: register: {e}");
            return;
        }
        // 20 distinct batches over 1,000 dependencies, built before timing.
        let batches: Vec<Vec<wire::FlowRecord>> = (0..20u32)
            .map(|b| (0..BATCH).map(|i| wire_record((b * BATCH + i) % 100, i % 10)).collect())
            .collect();
        let mut sequence = 0u64;
        let mut push = |records: Vec<wire::FlowRecord>| {
            sequence += 1;
            wire::FlowBatch {
                host_id: "bench-host".into(),
                agent_instance: "bench-1".into(),
                sequence,
                records,
                dropped_records_total: 0,
            }
        };
        let prepared: Vec<wire::FlowBatch> =
            (0..40).flat_map(|_| batches.iter()).map(|b| push(b.clone())).collect();
        let (warm, timed) = prepared.split_at(20);
        for batch in warm {
            let _ = client.push_flows(batch.clone()).await;
        }
        let start = Instant::now();
        let mut records = 0u64;
        for batch in timed {
            match client.push_flows(batch.clone()).await {
                Ok(response) => records += response.into_inner().accepted,
                Err(e) => {
                    eprintln!("grpc: push: {e}");
                    return;
                }
            }
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let (key, socket) = if nodelay {
            ("grpc_nodelay_records_per_s", "server socket with TCP_NODELAY")
        } else {
            (
                "grpc_records_per_s",
                "server socket as controller/src/main.rs makes it (TcpIncoming::from, Nagle on)",
            )
        };
        result(
            key,
            records as f64 / secs,
            "records/s",
            &format!("tonic client -> PushFlows -> topology over loopback, 2,000-record batches, one in flight, {socket}"),
        );
        server.abort();
    });
}

/// Controller memory per dependency: RSS growth over 100k distinct dependencies between
/// 1,000 client workloads and 100 servers each.
fn memory() {
    const CLIENTS: u32 = 1_000;
    const PER_CLIENT: u32 = 100;
    let registry = Registry::new();
    let topology = Arc::new(unbounded());
    let before = rss_bytes();
    for c in 0..CLIENTS {
        for k in 0..PER_CLIENT {
            topology.ingest(&observation(c, c * PER_CLIENT + k, 1), &registry);
        }
    }
    let after = rss_bytes();
    let deps = f64::from(CLIENTS * PER_CLIENT);
    result(
        "memory_bytes_per_dependency",
        (after.saturating_sub(before)) as f64 / deps,
        "bytes",
        "RSS growth / 100,000 distinct dependencies (101,000 services)",
    );
    result(
        "memory_rss_mib",
        after as f64 / 1048576.0,
        "MiB",
        "RSS after the 100,000 dependencies",
    );
    black_box(&topology);
}

/// Time to answer GET /topology (JSON) for 10,000 services and 100,000 dependencies, through
/// the router in-process (`oneshot`), the topology built first.
fn topology_get() {
    const CLIENTS: u32 = 1_000;
    const SERVERS: u32 = 9_000;
    const PER_CLIENT: u32 = 100;
    let state = unbounded_state();
    for c in 0..CLIENTS {
        for k in 0..PER_CLIENT {
            let server = (c * PER_CLIENT + k) % SERVERS;
            state
                .topology
                .ingest(&observation(c, server, 2), state.registry.as_ref());
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        eprintln!("topology: no tokio runtime");
        return;
    };
    let mut times = Vec::new();
    let mut size = 0usize;
    let mut status = 0u16;
    runtime.block_on(async {
        for _ in 0..6 {
            let app = http::app(state.clone());
            let request = Request::get("/topology").body(Body::empty());
            let Ok(request) = request else { return };
            let start = Instant::now();
            let Ok(response) = app.oneshot(request).await;
            status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            times.push(start.elapsed().as_secs_f64());
            size = body.map(|b| b.len()).unwrap_or(0);
        }
    });
    if times.is_empty() || status != 200 {
        eprintln!("topology: GET /topology answered {status}");
        return;
    }
    // The first request warms allocations; the median of the rest.
    let mut rest = times.split_off(1);
    rest.sort_by(f64::total_cmp);
    let median = rest[rest.len() / 2];
    let snapshot = state.snapshot();
    result(
        "topology_get_ms",
        median * 1e3,
        "ms",
        &format!(
            "GET /topology, {} services, {} dependencies, median of 5 after a warm-up, {} MiB of JSON",
            snapshot.services.len(),
            snapshot.dependencies.len(),
            size / 1048576
        ),
    );
}

fn main() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    if wanted("memory") {
        memory();
    }
    if wanted("mapper") {
        mapper();
    }
    if wanted("ingest") {
        ingest();
    }
    if wanted("grpc") {
        grpc(false);
        grpc(true);
    }
    if wanted("topology") {
        topology_get();
    }
}
