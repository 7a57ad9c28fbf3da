//! Controller throughput and footprint, as plain timed loops (inputs built before the clock
//! starts, a warm-up pass first). Run by `cargo xtask bench`, which writes BENCHMARKS.md;
//! alone: `cargo bench -p weft-controller --bench throughput -- [ingest|grpc|memory|topology]`
//! (one section per process gives a clean memory figure).
//!
//! Every figure is printed as `RESULT <key> <value> <unit> <what>` for xtask to collect,
//! with a baseline measured in the same run and the ratio to it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use hdrhistogram::Histogram;
use http_body_util::BodyExt as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tower::ServiceExt as _;
use weft_controller::AppState;
use weft_controller::api::grpc::AgentApi;
use weft_controller::api::http;
use weft_controller::api::limits::grpc_incoming;
use weft_proto::v1 as wire;
use weft_proto::v1::agent_service_client::AgentServiceClient;
use weft_topology::mapper::TopologyMapper;
use weft_topology::model::{
    Direction, FlowObservation, L7Info, LatencyBucket, RequestGroup, Transport,
};
use weft_topology::observation::{NetworkEndpoint, TrafficObservation};
use weft_topology::registry::Registry;
use weft_topology::topology::{BucketConfig, Topology, TopologyLimits};

/// The system allocator, counting the bytes live while [`COUNTING`] is set: exact heap
/// figures for the memory section (allocator overhead and fragmentation show in RSS).
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

fn count(delta: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes live now (counted while [`COUNTING`] is set).
fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

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

/// CPU time of this thread in nanoseconds (the first field of /proc/thread-self/schedstat;
/// 0 when unreadable): time on the CPU, not time waiting for it.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
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
    let cpu_before = thread_cpu_ns();
    let fresh: Vec<FlowObservation> = (0..200_000u32)
        .map(|i| observation(i % 1000, i, 1))
        .collect();
    let topology = unbounded();
    let start = Instant::now();
    for r in &fresh {
        black_box(topology.ingest(r, &registry));
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_ns().saturating_sub(cpu_before) as f64 / 1e9;
    let fresh_rate = fresh.len() as f64 / secs;
    result(
        "ingest_new_dependency_per_s",
        fresh_rate,
        "records/s",
        "Topology::ingest, every record a new dependency and a new server service (200k, one pass, 1,000 clients)",
    );
    if cpu > 0.0 {
        result(
            "ingest_new_dependency_per_cpu_s",
            fresh.len() as f64 / cpu,
            "records/s",
            "the same, per second of this thread's CPU time (/proc/thread-self/schedstat): what the figure is without the other work on the machine",
        );
    }
    result(
        "ingest_new_over_update",
        fresh_rate / rate,
        "ratio",
        "records creating a dependency / records updating one (ingest_records_per_s), same run",
    );
}

/// How the benchmark's gRPC server accepts connections.
#[derive(Clone, Copy, PartialEq)]
enum Socket {
    /// `grpc_incoming`, as controller/src/main.rs serves gRPC (TCP_NODELAY set, the
    /// connection limit applied).
    AsMain,
    /// tonic's `TcpIncoming` without TCP_NODELAY (Nagle's algorithm on): not what the
    /// controller does, kept to show what the socket option is worth.
    Nagle,
}

/// The same batches as [`grpc`] into `AgentApi::push_flows` called in-process (no socket,
/// no HTTP/2, no protobuf encoding): the baseline of the gRPC figures.
fn grpc_in_process() -> Option<f64> {
    use weft_proto::v1::agent_service_server::AgentService as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let api = AgentApi::new(unbounded_state());
        api.register(tonic::Request::new(wire::RegisterRequest {
            host_id: "bench-host".into(),
            agent_instance: "bench-1".into(),
            ..Default::default()
        }))
        .await
        .ok()?;
        let prepared = grpc_batches();
        let (warm, timed) = prepared.split_at(20);
        for batch in warm {
            let _ = api.push_flows(tonic::Request::new(batch.clone())).await;
        }
        let start = Instant::now();
        let mut records = 0u64;
        for batch in timed {
            records += api
                .push_flows(tonic::Request::new(batch.clone()))
                .await
                .ok()?
                .into_inner()
                .accepted;
        }
        let rate = records as f64 / start.elapsed().as_secs_f64();
        result(
            "grpc_in_process_records_per_s",
            rate,
            "records/s",
            "the same 2,000-record batches into AgentApi::push_flows in-process (no socket): the gRPC baseline",
        );
        Some(rate)
    })
}

/// 40 rounds of 20 distinct 2,000-record batches over 1,000 dependencies, numbered.
fn grpc_batches() -> Vec<wire::FlowBatch> {
    const BATCH: u32 = 2_000;
    let batches: Vec<Vec<wire::FlowRecord>> = (0..20u32)
        .map(|b| {
            (0..BATCH)
                .map(|i| wire_record((b * BATCH + i) % 100, i % 10))
                .collect()
        })
        .collect();
    let mut sequence = 0u64;
    (0..40)
        .flat_map(|_| batches.iter())
        .map(|records| {
            sequence += 1;
            wire::FlowBatch {
                host_id: "bench-host".into(),
                agent_instance: "bench-1".into(),
                sequence,
                records: records.clone(),
                dropped_records_total: 0,
            }
        })
        .collect()
}

/// Flow records per second from a tonic client through gRPC into the topology over
/// loopback, batches of 2,000 records (the agent's default), one batch in flight like the
/// agent's acked exporter.
fn grpc(socket: Socket, baseline: Option<f64>) {
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
        let service = AgentApi::new(state.clone()).into_service();
        let server = match socket {
            Socket::AsMain => tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(grpc_incoming(listener, state.limits.clone())),
            ),
            Socket::Nagle => tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(false))),
            ),
        };
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
        // Built before timing.
        let prepared = grpc_batches();
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
        let (key, how) = match socket {
            Socket::AsMain => (
                "grpc_records_per_s",
                "server connections accepted as controller/src/main.rs accepts them (api::limits::grpc_incoming: TCP_NODELAY, connection limit)",
            ),
            Socket::Nagle => (
                "grpc_nagle_records_per_s",
                "server socket without TCP_NODELAY (Nagle on; not what the controller does)",
            ),
        };
        let rate = records as f64 / secs;
        result(
            key,
            rate,
            "records/s",
            &format!("tonic client -> PushFlows -> topology over loopback, 2,000-record batches, one in flight, {how}"),
        );
        if let Some(baseline) = baseline {
            result(
                &format!("{key}_over_in_process"),
                rate / baseline,
                "ratio",
                "over grpc_in_process_records_per_s, same run",
            );
        }
        server.abort();
    });
}

/// Controller memory per dependency: RSS growth and live heap growth (counted by the
/// allocator) over 100k distinct dependencies between 1,000 client workloads and 100
/// servers each; then, in the same run, the baseline: the four dense `hdrhistogram`s per
/// dependency that weft kept before (request latency and handshake RTT, all-time and in
/// the dependency's minute bucket; two significant figures, auto-resizing) holding the
/// same values.
fn memory() {
    const CLIENTS: u32 = 1_000;
    const PER_CLIENT: u32 = 100;
    let registry = Registry::new();
    let topology = Arc::new(unbounded());
    COUNTING.store(true, Ordering::Relaxed);
    let heap_before = live_bytes();
    let before = rss_bytes();
    for c in 0..CLIENTS {
        for k in 0..PER_CLIENT {
            topology.ingest(&observation(c, c * PER_CLIENT + k, 1), &registry);
        }
    }
    let after = rss_bytes();
    let heap_after = live_bytes();
    let deps = f64::from(CLIENTS * PER_CLIENT);
    let per_dependency = (after.saturating_sub(before)) as f64 / deps;
    result(
        "memory_bytes_per_dependency",
        per_dependency,
        "bytes",
        "RSS growth / 100,000 distinct dependencies (101,000 services), one minute bucket each",
    );
    result(
        "memory_heap_bytes_per_dependency",
        (heap_after - heap_before) as f64 / deps,
        "bytes",
        "live heap growth (counting allocator) / the same 100,000 dependencies",
    );
    result(
        "memory_rss_mib",
        after as f64 / 1048576.0,
        "MiB",
        "RSS after the 100,000 dependencies",
    );
    black_box(&topology);

    // The baseline: what the old design's histograms alone took per dependency (10,000
    // dependencies' worth: the values of observation(.., 1), 1,633 µs and 80 µs).
    const BASELINE: usize = 10_000;
    let dense = |value_us: u64| {
        let mut h = Box::new(Histogram::<u64>::new(2).expect("2 significant figures"));
        h.record(value_us).expect("auto-resizing");
        h
    };
    let heap_before = live_bytes();
    let old: Vec<[Box<Histogram<u64>>; 4]> = (0..BASELINE)
        .map(|_| [dense(1_633), dense(80), dense(1_633), dense(80)])
        .collect();
    let old_per_dependency = (live_bytes() - heap_before) as f64 / BASELINE as f64;
    black_box(&old);
    COUNTING.store(false, Ordering::Relaxed);
    result(
        "memory_baseline_hdr_bytes_per_dependency",
        old_per_dependency,
        "bytes",
        "the baseline: the old design's four dense hdrhistograms per dependency alone (live heap, same run)",
    );
    result(
        "memory_over_baseline",
        per_dependency / old_per_dependency,
        "ratio",
        "memory_bytes_per_dependency (everything, RSS) / the old histograms alone, same run",
    );
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
    // On a current-thread runtime the request is served on this thread.
    let mut cpu_times = Vec::new();
    let mut size = 0usize;
    let mut status = 0u16;
    runtime.block_on(async {
        for round in 0..6u32 {
            // One more record first: the topology changed since the last request, so
            // nothing computed for it can be reused.
            let client = round % CLIENTS;
            state.topology.ingest(
                &observation(client, (client * PER_CLIENT) % SERVERS, 1),
                state.registry.as_ref(),
            );
            let app = http::app(state.clone());
            let request = Request::get("/topology?shape=weft").body(Body::empty());
            let Ok(request) = request else { return };
            let start = Instant::now();
            let cpu_before = thread_cpu_ns();
            let Ok(response) = app.oneshot(request).await;
            status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            times.push(start.elapsed().as_secs_f64());
            cpu_times.push(thread_cpu_ns().saturating_sub(cpu_before) as f64 / 1e9);
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
    let mut cpu_rest = cpu_times.split_off(1);
    cpu_rest.sort_by(f64::total_cmp);
    let cpu_median = cpu_rest[cpu_rest.len() / 2];
    let snapshot = state.snapshot();
    result(
        "topology_get_ms",
        median * 1e3,
        "ms",
        &format!(
            "GET /topology through the router in-process, {} services, {} dependencies, one record ingested before each request, median of 5 after a warm-up, {} MiB of JSON",
            snapshot.services.len(),
            snapshot.dependencies.len(),
            size / 1048576
        ),
    );
    result(
        "topology_get_cpu_ms",
        cpu_median * 1e3,
        "ms",
        "the same requests' CPU time on the serving thread (/proc/thread-self/schedstat), median: the time without the other work on the machine",
    );
    // The baseline, same run: serde_json writing the same snapshot, already built, to a
    // byte vector (what serializing this JSON shape costs by itself).
    let mut serialize = Vec::new();
    let mut serialize_cpu = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let cpu_before = thread_cpu_ns();
        let bytes = serde_json::to_vec(&snapshot).map(|b| b.len()).unwrap_or(0);
        serialize.push(start.elapsed().as_secs_f64());
        serialize_cpu.push(thread_cpu_ns().saturating_sub(cpu_before) as f64 / 1e9);
        black_box(bytes);
    }
    serialize.sort_by(f64::total_cmp);
    serialize_cpu.sort_by(f64::total_cmp);
    let floor = serialize[serialize.len() / 2];
    result(
        "topology_serialize_cpu_ms",
        serialize_cpu[serialize_cpu.len() / 2] * 1e3,
        "ms",
        "the baseline's CPU time, median",
    );
    result(
        "topology_serialize_ms",
        floor * 1e3,
        "ms",
        "the baseline: serde_json::to_vec of the same snapshot, already built (median of 5)",
    );
    result(
        "topology_get_over_serialize",
        median / floor,
        "ratio",
        "GET /topology / serialization alone, same run",
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
        let baseline = grpc_in_process();
        grpc(Socket::AsMain, baseline);
        grpc(Socket::Nagle, baseline);
    }
    if wanted("topology") {
        topology_get();
    }
}
