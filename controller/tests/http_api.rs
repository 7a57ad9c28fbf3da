//! The HTTP router, driven in-process with `tower::ServiceExt::oneshot`.

use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use weft_controller::AppState;
use weft_controller::api::http::app;
use weft_topology::model::{Direction, FlowObservation, LatencyBucket, Transport, Workload};

fn workload(name: &str, address: &str) -> Workload {
    Workload {
        name: name.into(),
        interface: format!("veth-{name}"),
        addresses: vec![address.parse().expect("test address")],
    }
}

fn web_to_db(resets: u32) -> FlowObservation {
    FlowObservation {
        workload: Some("web".into()),
        interface: "veth-web".into(),
        transport: Transport::Tcp,
        local_ip: "10.0.0.1".parse().expect("test address"),
        local_port: 41_000,
        remote_ip: "10.0.0.2".parse().expect("test address"),
        remote_port: 5432,
        direction: Direction::Outbound,
        packets_out: 5,
        packets_in: 4,
        bytes_out: 500,
        bytes_in: 700,
        payload_bytes_out: 200,
        payload_bytes_in: 400,
        first_seen_unix_ns: 1_700_000_000_000_000_000,
        last_seen_unix_ns: 1_700_000_001_000_000_000,
        tcp_flags_out: 0x12,
        tcp_flags_in: 0x12,
        handshake_rtt_ns: Some(100_000),
        requests: 2,
        latency_sum_ns: 3_000_000,
        latency: vec![LatencyBucket {
            upper_bound_ns: 2_000_000,
            count: 2,
        }],
        first_record: true,
        opened: true,
        ended: false,
        resets,
        l7: Default::default(),
    }
}

/// A controller that knows web (host-a) calling db (host-b) once.
fn state_with_traffic(resets: u32) -> AppState {
    let state = AppState::default();
    let now = Instant::now();
    state
        .registry
        .register("host-a", "i-a", vec![workload("web", "10.0.0.1")], now);
    state
        .registry
        .register("host-b", "i-b", vec![workload("db", "10.0.0.2")], now);
    state
        .topology
        .ingest(&web_to_db(resets), state.registry.as_ref());
    state
}

async fn call(state: AppState, method: Method, uri: &str) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let response = app(state)
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).expect("utf-8 body"),
    )
}

#[tokio::test]
async fn topology_json_has_services_dependencies_and_stats() {
    let (status, content_type, body) =
        call(state_with_traffic(0), Method::GET, "/topology?shape=weft").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert!(
        json["generated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(json["stats"]["records_ingested"], 1);
    assert_eq!(json["stats"]["agents_connected"], 2);

    let services = json["services"].as_array().expect("services");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, vec!["db", "web"]);
    assert_eq!(services[0]["type"], "database");
    assert_eq!(services[0]["host"], "host-b");
    assert_eq!(
        services[0]["endpoints"],
        serde_json::json!([{"address": "10.0.0.2", "port": 5432, "protocol": "postgres"}])
    );
    assert_eq!(services[1]["type"], "client");
    assert_eq!(services[1]["first_seen"], "2023-11-14T22:13:20.000000Z");

    let dependency = &json["dependencies"][0];
    assert_eq!(dependency["source"], "web");
    assert_eq!(dependency["target"], "db");
    assert_eq!(dependency["transport"], "tcp");
    assert_eq!(dependency["port"], 5432);
    assert_eq!(dependency["protocol"], "postgres");
    assert_eq!(dependency["flows"], 1);
    assert_eq!(dependency["requests"], 2);
    assert_eq!(dependency["bytes_sent"], 500);
    assert_eq!(dependency["bytes_received"], 700);
    assert_eq!(dependency["payload_bytes_received"], 400);
    assert_eq!(dependency["latency_ms"]["count"], 2);
    assert_eq!(dependency["latency_ms"]["avg"], 1.5);
    assert_eq!(dependency["handshake_rtt_ms"]["count"], 1);
    assert_eq!(dependency["address_families"], serde_json::json!(["ipv4"]));
    assert_eq!(dependency["last_seen"], "2023-11-14T22:13:21.000000Z");
}

#[tokio::test]
async fn topology_txt_is_the_ascii_map() {
    let (status, content_type, body) =
        call(state_with_traffic(0), Method::GET, "/topology.txt").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"));
    assert!(body.contains("APPLICATION TOPOLOGY MAP"));
    assert!(body.contains("  • db (database)\n    - 10.0.0.2:5432 [postgres]"));
    assert!(
        body.contains("  web\n    → db [2 reqs, 1.50 ms avg, p99 "),
        "{body}"
    );
}

#[tokio::test]
async fn topology_dot_draws_error_edges_red() {
    let (status, content_type, body) =
        call(state_with_traffic(2), Method::GET, "/topology.dot").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/vnd.graphviz"));
    assert!(body.starts_with("digraph"));
    let edge = body
        .lines()
        .find(|l| l.contains(r#""web" -> "db""#))
        .expect("web -> db edge");
    assert!(edge.contains(r#"color="red""#), "{edge}");
    assert!(edge.contains("2 errors"), "{edge}");
}

#[tokio::test]
async fn metrics_expose_controller_and_dependency_series() {
    let (status, content_type, body) = call(state_with_traffic(1), Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let labels = r#"source="web",target="db",protocol="postgres""#;
    for line in [
        "weft_controller_records_ingested_total 1".to_owned(),
        "weft_controller_agents_connected 2".to_owned(),
        format!("weft_dependency_requests_total{{{labels}}} 2"),
        format!("weft_dependency_flows_total{{{labels}}} 1"),
        format!("weft_dependency_errors_total{{{labels}}} 1"),
        format!(r#"weft_dependency_bytes_total{{{labels},direction="sent"}} 500"#),
        format!(r#"weft_dependency_bytes_total{{{labels},direction="received"}} 700"#),
        format!("weft_dependency_request_duration_seconds_sum{{{labels}}} 0.003"),
        format!("weft_dependency_request_duration_seconds_count{{{labels}}} 2"),
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    // Two requests in the agent's bucket up to 2 ms, recorded at its midpoint (1.63 ms):
    // none at most 1 ms, both at most 2.5 ms and in every bucket above.
    for (le, count) in [("0.001", 0), ("0.0025", 2), ("10", 2), ("+Inf", 2)] {
        let line = format!(
            r#"weft_dependency_request_duration_seconds_bucket{{{labels},le="{le}"}} {count}"#
        );
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    assert!(
        !body.contains("quantile="),
        "latency is a histogram, not a summary:\n{body}"
    );
}

#[tokio::test]
async fn healthz_answers_ok() {
    let (status, _, body) = call(AppState::default(), Method::GET, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
}

#[tokio::test]
async fn unknown_path_is_a_problem_json_404() {
    let (status, content_type, body) = call(AppState::default(), Method::GET, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&body).expect("JSON problem");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["title"], "Not Found");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/nope"))
    );
}

#[tokio::test]
async fn wrong_method_is_a_problem_json_405() {
    let (status, content_type, body) = call(AppState::default(), Method::POST, "/topology").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&body).expect("JSON problem");
    assert_eq!(problem["status"], 405);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("POST"))
    );
}

#[tokio::test]
async fn empty_topology_is_valid() {
    let (status, _, body) = call(AppState::default(), Method::GET, "/topology?shape=weft").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(json["services"], serde_json::json!([]));
    assert_eq!(json["dependencies"], serde_json::json!([]));
    assert_eq!(json["stats"]["agents_connected"], 0);
    let (status, _, body) = call(AppState::default(), Method::GET, "/topology").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(
        json,
        serde_json::json!({"services": {}, "dependencies": []})
    );
}

#[tokio::test]
async fn topology_json_speaks_the_specs_data_model_by_default() {
    let (status, content_type, body) = call(state_with_traffic(0), Method::GET, "/topology").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    let db = &json["services"]["db"];
    assert_eq!(db["service_id"], "db");
    assert_eq!(db["service_name"], "db");
    assert_eq!(db["service_type"], "database");
    assert_eq!(db["tags"]["source"], "workload");
    assert_eq!(db["tags"]["host"], "host-b");
    assert_eq!(db["metadata"]["registered"], true);
    assert_eq!(db["tags"]["interface"], "veth-db");
    assert_eq!(
        db["metadata"]["workload_addresses"],
        serde_json::json!(["10.0.0.2"])
    );
    assert_eq!(
        db["endpoints"],
        serde_json::json!([{"host": "10.0.0.2", "port": 5432, "protocol": "postgres"}])
    );
    assert_eq!(json["services"]["web"]["service_type"], "client");
    let dependency = &json["dependencies"][0];
    assert_eq!(dependency["source_service"], "web");
    assert_eq!(dependency["target_service"], "db");
    assert_eq!(dependency["protocol"], "postgres");
    assert_eq!(dependency["direction"], "outbound");
    assert_eq!(dependency["request_count"], 2);
    let (status, _, body) =
        call(state_with_traffic(0), Method::GET, "/topology?shape=hubble").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("shape") && body.contains("hubble"), "{body}");
}
