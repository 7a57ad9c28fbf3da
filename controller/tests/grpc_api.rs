//! The agent gRPC API over a real socket, with a tonic client.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use weft_controller::AppState;
use weft_controller::api::grpc::AgentApi;
use weft_proto::v1::agent_service_client::AgentServiceClient;
use weft_proto::v1::{FlowBatch, FlowDirection, FlowRecord, RegisterRequest, Transport, Workload};

async fn serve(state: AppState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    // The server lives as long as the test's runtime; dropping the runtime stops it.
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentApi::new(state).into_service())
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    addr
}

async fn client(addr: SocketAddr) -> AgentServiceClient<Channel> {
    AgentServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

fn register_request(instance: &str) -> RegisterRequest {
    RegisterRequest {
        host_id: "hv1".into(),
        agent_instance: instance.into(),
        workloads: vec![
            Workload {
                name: "web".into(),
                interface: "veth-web".into(),
                addresses: vec!["10.0.0.1".into()],
            },
            Workload {
                name: "db".into(),
                interface: "veth-db".into(),
                addresses: vec!["10.0.0.2".into()],
            },
        ],
        agent_version: "test".into(),
        underlay_address: String::new(),
    }
}

fn record(direction: FlowDirection, requests: u64) -> FlowRecord {
    let outbound = direction == FlowDirection::Outbound;
    let (local, remote) = if outbound {
        ((vec![10, 0, 0, 1], 40_000), (vec![10, 0, 0, 2], 5432))
    } else {
        ((vec![10, 0, 0, 2], 5432), (vec![10, 0, 0, 1], 40_000))
    };
    FlowRecord {
        workload: if outbound { "web" } else { "db" }.into(),
        interface: "veth".into(),
        transport: Transport::Tcp as i32,
        local_ip: local.0,
        local_port: local.1,
        remote_ip: remote.0,
        remote_port: remote.1,
        direction: direction as i32,
        requests,
        bytes_out: 100,
        bytes_in: 200,
        first_record: true,
        first_seen_unix_ns: 1,
        last_seen_unix_ns: 2,
        ..Default::default()
    }
}

fn batch(instance: &str, sequence: u64, records: Vec<FlowRecord>) -> FlowBatch {
    FlowBatch {
        host_id: "hv1".into(),
        agent_instance: instance.into(),
        sequence,
        records,
        dropped_records_total: 0,
    }
}

#[tokio::test]
async fn register_push_and_duplicate_sequence_round_trip() {
    let state = AppState::default();
    let mut client = client(serve(state.clone()).await).await;

    let registered = client
        .register(register_request("i1"))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(registered.last_sequence, 0);
    assert_eq!(
        registered.controller_instance,
        state.controller_instance.as_ref()
    );

    // Both ends of one connection plus one invalid record: two accepted, one counted.
    let mut invalid = record(FlowDirection::Outbound, 1);
    invalid.remote_ip = vec![1, 2, 3];
    let records = vec![
        record(FlowDirection::Outbound, 3),
        record(FlowDirection::Inbound, 3),
        invalid,
    ];
    let pushed = client
        .push_flows(batch("i1", 1, records.clone()))
        .await
        .expect("push")
        .into_inner();
    assert_eq!(pushed.accepted, 2);
    assert_eq!(state.metrics.records_rejected_total(), 1);

    let resent = client
        .push_flows(batch("i1", 1, records))
        .await
        .expect("duplicate push is accepted")
        .into_inner();
    assert_eq!(resent.accepted, 0);
    assert_eq!(state.metrics.batches_duplicate_total(), 1);

    let snapshot = state.snapshot();
    assert_eq!(snapshot.dependencies.len(), 1);
    let dependency = &snapshot.dependencies[0];
    assert_eq!(
        (dependency.source.as_str(), dependency.target.as_str()),
        ("web", "db")
    );
    assert_eq!(
        dependency.requests, 3,
        "neither the inbound view nor the resend counted"
    );
    assert_eq!(dependency.flows, 1);
    assert_eq!(snapshot.stats.records_ingested, 2);

    // A heartbeat keeps the sequence; the same instance re-registering learns it.
    let heartbeat = client
        .push_flows(batch("i1", 0, vec![]))
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(heartbeat.accepted, 0);
    let again = client
        .register(register_request("i1"))
        .await
        .expect("re-register")
        .into_inner();
    assert_eq!(again.last_sequence, 1);

    let next = client
        .push_flows(batch("i1", 2, vec![record(FlowDirection::Outbound, 4)]))
        .await
        .expect("next batch")
        .into_inner();
    assert_eq!(next.accepted, 1);
    assert_eq!(state.snapshot().dependencies[0].requests, 7);
}

#[tokio::test]
async fn unregistered_agent_gets_failed_precondition() {
    let state = AppState::default();
    let mut client = client(serve(state.clone()).await).await;
    let status = client
        .push_flows(batch(
            "never-registered",
            1,
            vec![record(FlowDirection::Outbound, 1)],
        ))
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "agent hv1 instance never-registered is not registered; call Register first"
    );

    // A new instance of the same host replaces the old one, whose batches are then refused.
    client
        .register(register_request("old"))
        .await
        .expect("register old");
    client
        .register(register_request("new"))
        .await
        .expect("register new");
    let status = client
        .push_flows(batch("old", 5, vec![]))
        .await
        .expect_err("old instance refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(state.snapshot().dependencies.is_empty());
}

#[tokio::test]
async fn register_rejects_bad_workload_addresses() {
    let mut client = client(serve(AppState::default()).await).await;
    let mut request = register_request("i1");
    request.workloads[0].addresses.push("10.0.0.300".into());
    let status = client.register(request).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("workload.addresses"),
        "{}",
        status.message()
    );

    let mut request = register_request("i1");
    request.host_id.clear();
    let status = client.register(request).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("host_id"));
}

/// Records pushed by an agent show per flow on `GET /flows`: endpoints, protocol, SNI and
/// ALPN, and the requests, errors, methods, statuses and paths counted on the flow.
#[tokio::test]
async fn pushed_flows_show_on_get_flows_with_sni_alpn_and_counts() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use weft_proto::v1::RequestGroup;

    let state = AppState::default();
    let mut client = client(serve(state.clone()).await).await;
    client
        .register(register_request("i1"))
        .await
        .expect("register");
    let mut first = record(FlowDirection::Outbound, 2);
    first.protocol = "grpc".into();
    first.protocol_from_payload = true;
    first.tls_sni = "API.example".into();
    first.tls_alpn = vec!["h2".into()];
    first.request_groups = vec![RequestGroup {
        method: "POST".into(),
        path: "/demo.Echo/Say".into(),
        status: 200,
        count: 2,
        errors: 0,
        latency_sum_ns: 10,
    }];
    let mut second = first.clone();
    second.first_record = false;
    second.last_seen_unix_ns = 9;
    second.ended = true;
    second.request_groups = vec![RequestGroup {
        method: "POST".into(),
        path: "/demo.Echo/Fail".into(),
        status: 200,
        count: 1,
        errors: 1,
        latency_sum_ns: 5,
    }];
    client
        .push_flows(batch("i1", 1, vec![first, second]))
        .await
        .expect("push");

    let get = |uri: &str| {
        let app = weft_controller::api::http::app(state.clone());
        let uri = uri.to_owned();
        async move {
            let response = app
                .oneshot(
                    axum::http::Request::get(uri)
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("response");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).expect("json"),
            )
        }
    };
    let (status, body) = get("/flows").await;
    assert_eq!(status, 200, "{body}");
    let flows = body["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 1, "{body}");
    let f = &flows[0];
    assert_eq!(f["client"], "10.0.0.1:40000");
    assert_eq!(f["server"], "10.0.0.2:5432");
    assert_eq!(f["protocol"], "grpc");
    assert_eq!(f["sni"], "api.example");
    assert_eq!(f["alpn"], serde_json::json!(["h2"]));
    assert_eq!(
        (f["requests"].as_u64(), f["errors"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(f["paths"]["/demo.Echo/Say"], 2);
    assert_eq!(f["paths"]["/demo.Echo/Fail"], 1);
    assert_eq!(f["statuses"]["200"], 3);
    assert_eq!(f["ended"], true);

    let (status, _) = get("/flows?limit=0").await;
    assert_eq!(status, 400);
    let (status, _) = get("/flows?nope=1").await;
    assert_eq!(status, 400);
}
