//! Issue 10's findings 4-8 as attacks on the running `weft-controller` binary over real
//! sockets: each is now refused (413, 422, 429, 503, OUT_OF_RANGE, ...) with the state
//! unchanged, or, for caps, stays bounded.

#[path = "limits/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{Controller, dot_runs, eventually, fake_dot, now_ns, observation};
use serde_json::{Value, json};
use tonic::Code;
use weft_proto::v1::agent_service_client::AgentServiceClient;
use weft_proto::v1::{FlowBatch, FlowDirection, FlowRecord, RegisterRequest, Transport, Workload};

const S: u64 = 1_000_000_000;

fn services_and_dependencies(c: &Controller) -> (usize, usize) {
    let topology = c.get("/topology?shape=weft").json();
    (
        topology["services"].as_array().expect("services").len(),
        topology["dependencies"]
            .as_array()
            .expect("dependencies")
            .len(),
    )
}

// Finding 4: service names from spoofed sources grew memory and /metrics without bound
// (200,000 observations: 10 MiB -> 4,328 MiB RSS, /metrics 203 MB).
#[test]
fn finding4_200k_spoofed_sources_leave_the_topology_metrics_and_memory_bounded() {
    let c = Controller::start(&["--max-services", "1000", "--max-dependencies", "1000"]);
    let rss_before = c.rss_kib();
    let now = now_ns();
    let mut statuses = std::collections::BTreeMap::new();
    let mut bounded_at: Option<(usize, usize)> = None;
    for batch in 0..100u64 {
        let body: Vec<Value> = (0..2_000u64)
            .map(|i| {
                let n = batch * 2_000 + i;
                let source = format!("fd00:10:{:x}:{:x}::1", n >> 16, n & 0xffff);
                observation(&source, "web.lab", now)
            })
            .collect();
        let response = c.post("/observations", &serde_json::to_vec(&body).expect("json"));
        *statuses.entry(response.status).or_insert(0) += 1;
        match response.status {
            200 => {}
            503 => {
                // Refused only because the topology is full: nothing changed.
                response.problem(503);
                response.retry_after();
                let now = services_and_dependencies(&c);
                if let Some(before) = bounded_at {
                    assert_eq!(now, before, "a refused batch changed the topology");
                }
                bounded_at = Some(now);
            }
            other => panic!("batch {batch}: {other} {}", response.text()),
        }
    }
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 90,
        "{statuses:?}"
    );
    let (services, dependencies) = services_and_dependencies(&c);
    assert!(services <= 1_000, "{services} services");
    assert!(dependencies <= 1_000, "{dependencies} dependencies");
    assert!(
        services >= 900,
        "the unregistered share was used: {services}"
    );
    let metrics = c.get("/metrics").text();
    // 500 dependencies (--metrics-max-edges) of 22 series each (4 counters, bytes in two
    // directions, a latency histogram of 14 buckets, +Inf, sum and count).
    assert!(
        metrics.len() < 2 * 1024 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(
        harness::metric_in(&metrics, "weft_controller_metrics_edges_omitted", &[]) > 0.0,
        "what was left out is said"
    );
    assert!(
        harness::metric_in(&metrics, "weft_dependency_requests_total", &[]) > 0.0,
        "the busiest dependencies are still exported"
    );
    let refused = harness::metric_in(
        &metrics,
        "weft_controller_limit_hits_total",
        &[r#"limit="services""#],
    ) + harness::metric_in(
        &metrics,
        "weft_controller_limit_hits_total",
        &[r#"limit="dependencies""#],
    );
    assert!(refused >= 199_000.0, "refusals counted: {refused}");
    assert_eq!(
        harness::metric_in(&metrics, "weft_controller_topology_services", &[]),
        services as f64
    );
    let rss_after = c.rss_kib();
    assert!(
        rss_after < rss_before + 200 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn finding4_idle_services_are_evicted_and_make_room_again() {
    let c = Controller::start(&[
        "--max-services",
        "20",
        "--max-dependencies",
        "20",
        "--idle-timeout",
        "1s",
    ]);
    let now = now_ns();
    let body: Vec<Value> = (0..50)
        .map(|i| observation(&format!("198.18.4.{i}"), "web.lab", now))
        .collect();
    c.post("/observations", &serde_json::to_vec(&body).expect("json"));
    let (services, _) = services_and_dependencies(&c);
    assert_eq!(services, 18, "nine tenths of 20");
    assert!(
        eventually(Duration::from_secs(10), || services_and_dependencies(&c)
            == (0, 0)),
        "idle services were never evicted: {:?}",
        services_and_dependencies(&c)
    );
    let response = c.post(
        "/observations",
        &serde_json::to_vec(&[observation("198.18.4.200", "web.lab", now_ns())]).expect("json"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(services_and_dependencies(&c), (2, 1));
}

fn register(instance: &str) -> RegisterRequest {
    RegisterRequest {
        host_id: "hv1".into(),
        agent_instance: instance.into(),
        workloads: vec![
            Workload {
                name: "web".into(),
                interface: "veth-web".into(),
                addresses: vec!["198.18.0.11".into()],
            },
            Workload {
                name: "db".into(),
                interface: "veth-db".into(),
                addresses: vec!["198.18.0.12".into()],
            },
        ],
        agent_version: "test".into(),
        underlay_address: String::new(),
    }
}

/// web -> db, `requests` requests, last seen at `last_seen_ns`, with a long path so that
/// records have some size.
fn record(requests: u64, last_seen_ns: u64) -> FlowRecord {
    FlowRecord {
        workload: "web".into(),
        interface: "veth-web".into(),
        transport: Transport::Tcp as i32,
        local_ip: vec![198, 18, 0, 11],
        local_port: 40_000,
        remote_ip: vec![198, 18, 0, 12],
        remote_port: 5432,
        direction: FlowDirection::Outbound as i32,
        requests,
        bytes_out: 100,
        bytes_in: 200,
        first_record: true,
        first_seen_unix_ns: last_seen_ns.saturating_sub(S),
        last_seen_unix_ns: last_seen_ns,
        server_name: "x".repeat(100),
        ..Default::default()
    }
}

fn batch(sequence: u64, records: Vec<FlowRecord>) -> FlowBatch {
    FlowBatch {
        host_id: "hv1".into(),
        agent_instance: "i1".into(),
        sequence,
        records,
        dropped_records_total: 0,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// Finding 5: a batch over the decode limit was resent forever. The controller's side: the
// limit is its flag, the refusal is OUT_OF_RANGE (the agent splits on it, see
// agent/src/exporter.rs), counted, and nothing of the batch is merged.
#[test]
fn finding5_a_batch_over_the_message_limit_is_out_of_range_counted_and_not_merged() {
    let c = Controller::start(&["--grpc-max-message-size", "64KiB"]);
    runtime().block_on(async {
        let mut client = AgentServiceClient::connect(format!("http://{}", c.grpc))
            .await
            .expect("connect");
        client.register(register("i1")).await.expect("register");
        let now = now_ns();
        let big: Vec<FlowRecord> = (0..1_000).map(|_| record(1, now)).collect();
        let status = client
            .push_flows(batch(1, big))
            .await
            .expect_err("a 200 KB batch over a 64 KiB limit");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("too large"), "{status:?}");
        // The same sequence in halves fits, and is merged once.
        let half: Vec<FlowRecord> = (0..200).map(|_| record(1, now)).collect();
        let accepted = client
            .push_flows(batch(1, half))
            .await
            .expect("a batch under the limit")
            .into_inner()
            .accepted;
        assert_eq!(accepted, 200);
    });
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="grpc_message_bytes""#]
        ),
        1.0
    );
    assert_eq!(
        c.metric("weft_controller_records_ingested_total", &[]),
        200.0
    );
}

// Finding 6: one observation stamped u64::MAX made retention drop every real bucket of
// its dependency (100 requests in the last 15 minutes showed 1).
#[test]
fn finding6_a_far_future_timestamp_is_refused_and_the_buckets_survive() {
    let c = Controller::start(&[]);
    let now = now_ns();
    let body: Vec<Value> = (0..100u64)
        .map(|i| observation("web.lab", "db.lab", now - i * 5 * S))
        .collect();
    let response = c.post("/observations", &serde_json::to_vec(&body).expect("json"));
    assert_eq!(response.status, 200, "{}", response.text());
    let requests = |c: &Controller| -> u64 {
        let topology = c.get("/topology?since=15m&shape=weft").json();
        topology["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|d| d["requests"].as_u64().expect("requests"))
            .sum()
    };
    assert_eq!(requests(&c), 100);

    // REST: 422 naming the field, nothing merged.
    let bad = [
        observation("web.lab", "db.lab", now),
        observation("web.lab", "db.lab", u64::MAX),
    ];
    let response = c.post("/observations", &serde_json::to_vec(&bad).expect("json"));
    let problem = response.problem(422);
    assert_eq!(problem["parameter"], "timestamp_unix_ns", "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains("element 1"), "{detail}");
    assert!(
        detail.contains("ahead of the controller's clock"),
        "{detail}"
    );
    // Older than the retention (24 h): refused too.
    let old = [observation("web.lab", "db.lab", now - 25 * 3_600 * S)];
    let response = c.post("/observations", &serde_json::to_vec(&old).expect("json"));
    assert_eq!(response.problem(422)["parameter"], "timestamp_unix_ns");
    assert_eq!(
        requests(&c),
        100,
        "the valid observation of the refused body was not merged"
    );

    // gRPC: the record is rejected (counted), the buckets stay.
    runtime().block_on(async {
        let mut client = AgentServiceClient::connect(format!("http://{}", c.grpc))
            .await
            .expect("connect");
        client.register(register("i1")).await.expect("register");
        let accepted = client
            .push_flows(batch(1, vec![record(1, u64::MAX)]))
            .await
            .expect("the batch is answered")
            .into_inner()
            .accepted;
        assert_eq!(accepted, 0);
    });
    assert_eq!(c.metric("weft_controller_records_rejected_total", &[]), 1.0);
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="future_timestamp""#]
        ),
        2.0
    );
    assert_eq!(requests(&c), 100);
}

fn scheduled(c: &Controller) -> Vec<u64> {
    c.get("/topology/snapshots")
        .json()
        .as_array()
        .expect("list")
        .iter()
        .filter(|s| s["manual"] == false)
        .map(|s| s["taken_at_unix_ns"].as_u64().expect("time"))
        .collect()
}

fn manual(c: &Controller) -> usize {
    c.get("/topology/snapshots")
        .json()
        .as_array()
        .expect("list")
        .iter()
        .filter(|s| s["manual"] == true)
        .count()
}

// Finding 7: 200 POST /topology/snapshots in 0.2 s pushed a week of history out.
#[test]
fn finding7_two_hundred_snapshot_requests_are_refused_429_and_keep_the_history() {
    let dir = harness::TempDir::new("snapshots");
    let data = dir.0.display().to_string();
    let c = Controller::start(&[
        "--data-dir",
        &data,
        "--snapshot-interval",
        "1s",
        "--max-snapshots",
        "4",
    ]);
    assert!(
        eventually(Duration::from_secs(15), || scheduled(&c).len() >= 4),
        "scheduled snapshots"
    );
    let before = scheduled(&c);
    let mut created = 0;
    let mut refused = 0;
    for _ in 0..200 {
        let response = c.post("/topology/snapshots", b"");
        match response.status {
            201 => created += 1,
            429 => {
                let problem = response.problem(429);
                assert!(
                    problem["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("--manual-snapshot-min-interval")),
                    "{problem}"
                );
                assert!(response.retry_after() <= 10);
                refused += 1;
            }
            other => panic!("{other}: {}", response.text()),
        }
    }
    assert_eq!((created, refused), (1, 199));
    assert_eq!(manual(&c), 1);
    let after = scheduled(&c);
    // The scheduled ones go only by their own schedule: the newest of before is kept.
    assert!(
        after.contains(before.last().expect("one")),
        "{before:?} -> {after:?}"
    );
    assert!(after.len() >= 4, "{after:?}");
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="manual_snapshot_interval""#]
        ),
        199.0
    );
}

#[test]
fn finding7_without_an_interval_manual_snapshots_rotate_among_themselves() {
    let dir = harness::TempDir::new("snapshots-rotate");
    let data = dir.0.display().to_string();
    let c = Controller::start(&[
        "--data-dir",
        &data,
        "--snapshot-interval",
        "1s",
        "--max-snapshots",
        "1000",
        "--manual-snapshot-min-interval",
        "0s",
        "--max-manual-snapshots",
        "5",
    ]);
    assert!(eventually(Duration::from_secs(15), || scheduled(&c).len() >= 2));
    let before = scheduled(&c);
    for i in 0..200 {
        let response = c.post("/topology/snapshots", b"");
        assert_eq!(response.status, 201, "POST {i}: {}", response.text());
    }
    let after = scheduled(&c);
    for taken in &before {
        assert!(
            after.contains(taken),
            "scheduled {taken} pushed out: {after:?}"
        );
    }
    assert_eq!(manual(&c), 5);
}

// Finding 8: no limit on time, concurrency or cost per request.

#[test]
fn finding8_svg_runs_one_dot_at_a_time_and_serves_the_cached_rendering() {
    let (dir, path) = fake_dot(1.0);
    let c = Controller::start_with(&["--http-render-concurrency", "16"], &[("PATH", path)]);
    let http = c.http.clone();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let http = http.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&http).expect("connect");
                stream
                    .write_all(
                        b"GET /topology.svg HTTP/1.1\r\nhost: t\r\nauthorization: Bearer weft_00112233445566ff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\nconnection: close\r\n\r\n",
                    )
                    .expect("send");
                harness::read_response(&mut stream)
            })
        })
        .collect();
    for t in threads {
        let response = t.join().expect("thread");
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(response.text().contains("<svg"), "{}", response.text());
    }
    assert_eq!(dot_runs(&dir), 1, "one dot for eight requests");
    // A new topology generation renders again.
    c.post(
        "/observations",
        &serde_json::to_vec(&[observation("a.lab", "b.lab", now_ns())]).expect("json"),
    );
    assert_eq!(c.get("/topology.svg").status, 200);
    assert_eq!(dot_runs(&dir), 2);
}

#[test]
fn finding8_a_slow_dot_is_stopped_and_answered_503_and_waiters_do_not_pile_up() {
    let (dir, path) = fake_dot(30.0);
    let c = Controller::start_with(&["--svg-timeout", "1s"], &[("PATH", path)]);
    let http = c.http.clone();
    let started = Instant::now();
    let second = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut stream = TcpStream::connect(&http).expect("connect");
        stream
            .write_all(b"GET /topology.svg HTTP/1.1\r\nhost: t\r\nauthorization: Bearer weft_00112233445566ff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\nconnection: close\r\n\r\n")
            .expect("send");
        harness::read_response(&mut stream)
    });
    let first = c.get("/topology.svg");
    let problem = first.problem(503);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--svg-timeout")),
        "{problem}"
    );
    first.retry_after();
    let second = second.join().expect("thread");
    second.problem(503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(dot_runs(&dir), 1, "the waiter started no dot of its own");
    assert!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="svg_render""#]
        ) >= 2.0
    );
}

#[test]
fn finding8_a_request_over_its_time_is_answered_503() {
    let (_dir, path) = fake_dot(30.0);
    let c = Controller::start_with(&["--http-request-timeout", "1s"], &[("PATH", path)]);
    let started = Instant::now();
    let response = c.get("/topology.svg");
    let problem = response.problem(503);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--http-request-timeout")),
        "{problem}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="http_request_timeout""#]
        ),
        1.0
    );
}

#[test]
fn finding8_renders_beyond_their_concurrency_get_503_and_reads_still_pass() {
    let (_dir, path) = fake_dot(3.0);
    let c = Controller::start_with(
        &[
            "--http-render-concurrency",
            "1",
            "--http-queue-wait",
            "100ms",
        ],
        &[("PATH", path)],
    );
    let http = c.http.clone();
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&http).expect("connect");
        stream
            .write_all(b"GET /topology.svg HTTP/1.1\r\nhost: t\r\nauthorization: Bearer weft_00112233445566ff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\nconnection: close\r\n\r\n")
            .expect("send");
        harness::read_response(&mut stream)
    });
    assert!(eventually(Duration::from_secs(5), || {
        c.metric("weft_controller_http_in_flight", &[r#"class="render""#]) >= 1.0
    }));
    let response = c.get("/analytics/critical");
    let problem = response.problem(503);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--http-render-concurrency")),
        "{problem}"
    );
    assert_eq!(response.retry_after(), 1);
    // The same analytics over gRPC share the slots.
    let status = runtime().block_on(async {
        let mut client = weft_proto::v1::topology_service_client::TopologyServiceClient::connect(
            format!("http://{}", c.grpc),
        )
        .await
        .expect("connect");
        client
            .find_critical({
                let mut r = tonic::Request::new(weft_proto::v1::TopologyQuery::default());
                r.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {}", harness::TOKEN)
                        .parse()
                        .expect("metadata"),
                );
                r
            })
            .await
            .expect_err("no render slot")
    });
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(c.get("/shards").status, 200, "another class is not held up");
    assert_eq!(slow.join().expect("thread").status, 200);
    assert_eq!(
        c.get("/analytics/critical").status,
        200,
        "the slot is free again"
    );
}

#[test]
fn finding8_critical_analytics_on_an_injected_chain_of_10000_services_is_linear() {
    let c = Controller::start(&[]);
    let now = now_ns();
    let chain: Vec<Value> = (1..10_000)
        .map(|i| observation(&format!("s{}", i - 1), &format!("s{i}"), now))
        .collect();
    for part in chain.chunks(2_000) {
        let response = c.post("/observations", &serde_json::to_vec(part).expect("json"));
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let started = Instant::now();
    let response = c.get("/analytics/critical");
    let took = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    let critical = response.json();
    assert_eq!(critical.as_array().expect("list").len(), 10_000);
    // The middle of the chain cuts it in two halves.
    assert_eq!(critical[0]["disconnects"], 4_999, "{}", critical[0]);
    // Measured on a debug build: the quadratic version took 23.1 s, the linear one 0.86 s
    // (most of it building the snapshot).
    assert!(
        took < Duration::from_secs(10),
        "GET /analytics/critical took {took:?}"
    );
    println!("GET /analytics/critical on a chain of 10,000: {took:?} (debug build)");
}

/// Opens `path` as an event stream on a raw socket; returns the socket and the response
/// head (status line and headers) once they arrived.
fn open_stream(http: &str, path: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer weft_00112233445566ff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n{extra}\r\n").as_bytes())
        .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).expect("read the head") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn finding8_event_stream_subscribers_beyond_the_cap_get_503_until_one_leaves() {
    let c = Controller::start(&["--sse-max-subscribers", "2"]);
    let (first, head) = open_stream(&c.http, "/events/topology", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_second, head) = open_stream(&c.http, "/events/topology", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let third = c.get("/events/topology");
    let problem = third.problem(503);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--sse-max-subscribers")),
        "{problem}"
    );
    third.retry_after();
    // Another stream has its own subscribers.
    let (_control, head) = open_stream(&c.http, "/events/control", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        c.metric(
            "weft_controller_sse_subscribers",
            &[r#"stream="/events/topology""#]
        ),
        2.0
    );
    drop(first);
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_s, head) = open_stream(&c.http, "/events/topology", "");
            head.starts_with("HTTP/1.1 200")
        }),
        "the slot of a subscriber that left was never given back"
    );
}

#[test]
fn finding8_connections_beyond_the_cap_get_503_and_idle_ones_are_closed() {
    let c = Controller::start(&["--http-max-connections", "3", "--http-idle-timeout", "1s"]);
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&c.http).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = TcpStream::connect(&c.http).expect("connect");
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let refused = harness::read_response(&mut fourth);
    let problem = refused.problem(503);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--http-max-connections")),
        "{problem}"
    );
    refused.retry_after();
    // The idle ones are closed by the server after a second.
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        assert_eq!(
            stream.read(&mut buf).unwrap_or(0),
            0,
            "closed by the server"
        );
    }
    assert!(eventually(Duration::from_secs(5), || c
        .get("/healthz")
        .status
        == 200));
    assert!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="http_connections""#]
        ) >= 1.0
    );
}

#[test]
fn finding8_client_numbers_that_overflow_are_400_naming_the_parameter() {
    let mut c = Controller::start(&[]);
    let response = c.request(
        "GET",
        "/events",
        &[("last-event-id", "18446744073709551615")],
        b"",
    );
    assert_eq!(response.problem(400)["parameter"], "Last-Event-ID");
    for (path, parameter) in [
        ("/events?from=18446744073709551615", "from"),
        ("/events?from=18446744073709551616", "from"),
        ("/events?follow=false&limit=18446744073709551616", "limit"),
        ("/topology?since=999999999999999999d", "since"),
        ("/topology?since=99999999999999999999999s", "since"),
        ("/topology/diff?from=1h&to=999999999999999999d", "to"),
        ("/analytics/anomalies?min_baseline=1e300", "min_baseline"),
        ("/analytics/bottlenecks?threshold_ms=1e999", "threshold_ms"),
        ("/analytics/scaling?horizon=18446744073709551616", "horizon"),
        ("/shards?limit=18446744073709551616", "limit"),
    ] {
        let response = c.get(path);
        assert_eq!(
            response.problem(400)["parameter"],
            parameter,
            "{path}: {}",
            response.text()
        );
    }
    assert!(c.alive(), "the controller survived");
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn finding8_bodies_over_the_limit_are_413_and_merge_nothing() {
    let c = Controller::start(&["--http-max-body", "64KiB", "--http-request-timeout", "1s"]);
    let now = now_ns();
    let body: Vec<Value> = (0..1_000)
        .map(|i| observation(&format!("198.18.6.{}", i % 250), "web.lab", now))
        .collect();
    let bytes = serde_json::to_vec(&body).expect("json");
    assert!(bytes.len() > 64 * 1024);
    let response = c.post("/observations", &bytes);
    let problem = response.problem(413);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--http-max-body")),
        "{problem}"
    );
    // Chunked, without a length: the same.
    let mut stream = TcpStream::connect(&c.http).expect("connect");
    stream
        .write_all(b"POST /observations HTTP/1.1\r\nhost: t\r\nauthorization: Bearer weft_00112233445566ff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\nconnection: close\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n")
        .expect("head");
    for chunk in bytes.chunks(8_192) {
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| stream.write_all(chunk))
            .and_then(|()| stream.write_all(b"\r\n"))
            .is_err()
        {
            break; // the server answered and closed
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    harness::read_response(&mut stream).problem(413);
    // A body that never comes: 408 after the request timeout.
    let mut stream = TcpStream::connect(&c.http).expect("connect");
    stream
        .write_all(b"POST /observations HTTP/1.1\r\nhost: t\r\nauthorization: Bearer weft_00112233445566ff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\nconnection: close\r\ncontent-length: 100\r\n\r\n[")
        .expect("head");
    harness::read_response(&mut stream).problem(408);
    assert_eq!(services_and_dependencies(&c), (0, 0), "nothing merged");
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="http_body_bytes""#]
        ),
        2.0
    );
    let small = json!([observation("a.lab", "b.lab", now)]);
    assert_eq!(
        c.post("/observations", &serde_json::to_vec(&small).expect("json"))
            .status,
        200
    );
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", harness::TOKEN).parse().unwrap(),
    );
    r
}

/// Per-call concurrency on gRPC: with --grpc-concurrency 1, a unary call whose request
/// body never arrives holds the one slot, and another unary call is answered
/// RESOURCE_EXHAUSTED after --grpc-queue-wait (counted as `grpc_concurrency`, not as a
/// message size); WatchEvents streams take no slot, so they open while it is held and do
/// not keep unary calls out.
#[test]
fn grpc_unary_calls_beyond_their_concurrency_are_resource_exhausted_and_streams_take_none() {
    use weft_proto::v1::shard_service_client::ShardServiceClient;
    use weft_proto::v1::{ListShardsRequest, WatchEventsRequest};
    let c = Controller::start(&["--grpc-concurrency", "1", "--grpc-queue-wait", "200ms"]);
    runtime().block_on(async {
        // A ListShards call that sends its headers and never its body.
        let tcp = tokio::net::TcpStream::connect(&c.grpc).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let request =
            axum::http::Request::post(format!("http://{}/weft.v1.ShardService/ListShards", c.grpc))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {}", harness::TOKEN))
                .body(())
                .unwrap();
        let (held, mut body) = h2.send_request(request, false).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut client = ShardServiceClient::connect(format!("http://{}", c.grpc))
            .await
            .unwrap();
        let started = Instant::now();
        let refused = client
            .list_shards(with_token(ListShardsRequest::default()))
            .await
            .expect_err("a second unary call while the only slot is held");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("--grpc-concurrency"),
            "{refused:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(180));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Streams open while the slot is held (three of them: more than the slots).
        let mut streams = Vec::new();
        for _ in 0..3 {
            let stream = client
                .watch_events(with_token(WatchEventsRequest { from_sequence: 0 }))
                .await
                .expect("a stream takes no unary slot")
                .into_inner();
            streams.push(stream);
        }

        // The held call ends (an empty message, then end of stream): its slot is free,
        // and unary calls pass again while the streams stay open.
        body.send_data(vec![0u8, 0, 0, 0, 0].into(), true).unwrap();
        let answer = held.await.unwrap();
        assert_eq!(answer.status(), 200);
        for _ in 0..3 {
            client
                .list_shards(with_token(ListShardsRequest::default()))
                .await
                .expect("a unary call with the streams open");
        }
        drop(streams);
    });
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="grpc_concurrency""#]
        ),
        1.0
    );
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="grpc_message_bytes""#]
        ),
        0.0
    );
}

/// The minimum interval between snapshots on request is per client (token): one client
/// asking again gets 429 with Retry-After, another client is not held back by it.
#[test]
fn finding7_the_snapshot_interval_is_per_client() {
    let c = Controller::start(&["--manual-snapshot-min-interval", "30s"]);
    let made = c.post(
        "/tokens",
        json!({"name": "dashboards", "role": "operate"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let other = made.json()["token"].as_str().unwrap().to_owned();

    assert_eq!(c.post("/topology/snapshots", b"").status, 201);
    let again = c.post("/topology/snapshots", b"");
    let problem = again.problem(429);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("this client took a snapshot on request")),
        "{problem}"
    );
    let wait = again.retry_after();
    assert!((29..=30).contains(&wait), "Retry-After {wait}");

    // Another token: its own interval.
    let first = c.request_as(&other, "POST", "/topology/snapshots", &[], b"");
    assert_eq!(first.status, 201, "{}", first.text());
    let second = c.request_as(&other, "POST", "/topology/snapshots", &[], b"");
    second.problem(429);
    assert!(second.retry_after() >= 29);
    assert_eq!(manual(&c), 2);
    assert_eq!(
        c.metric(
            "weft_controller_limit_hits_total",
            &[r#"limit="manual_snapshot_interval""#]
        ),
        2.0
    );
}
