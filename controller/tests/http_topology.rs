//! REST topology, analytics, history and observations, driven in-process.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use weft_controller::AppState;
use weft_controller::api::http::app;

async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = app(state.clone())
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
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get_json(state: &AppState, uri: &str) -> Value {
    let (status, _, body) = call(state, Method::GET, uri, "").await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

fn observation(
    source: &str,
    target: &str,
    port: u16,
    protocol: &str,
    latency: f64,
    status: Option<u16>,
) -> Value {
    json!({
        "timestamp_unix_ns": 0,
        "source": {"host": source, "port": 40000},
        "destination": {"host": target, "port": port},
        "protocol": protocol,
        "bytes_sent": 100, "bytes_received": 200,
        "latency_ms": latency,
        "status_code": status, "method": "GET", "path": "/api/x",
    })
}

/// web -> api (http, 10 ms x 4), api -> db (postgres, 50 ms x 2), api -> cache (redis).
async fn seeded() -> AppState {
    let state = AppState::default();
    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.push(observation("web", "api", 8080, "http", 10.0, Some(200)));
    }
    lines.push(observation("api", "db", 5432, "postgres", 50.0, None));
    lines.push(observation("api", "db", 5432, "postgres", 50.0, None));
    lines.push(observation("api", "cache", 6379, "redis", 1.0, None));
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (status, _, answer) = call(&state, Method::POST, "/observations", &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["accepted"], 7);
    state
}

#[tokio::test]
async fn observations_report_bad_lines_and_keep_the_good_ones() {
    let state = AppState::default();
    let good = observation("a", "b", 80, "http", 1.0, None);
    let mut bad_protocol = good.clone();
    bad_protocol["protocol"] = json!("gopher");
    let body = format!("{good}\nnot json\n{bad_protocol}\n");
    let (status, _, answer) = call(&state, Method::POST, "/observations", &body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["errors"][0]["line"], 2);
    assert_eq!(answer["errors"][1]["line"], 3);
    assert_eq!(answer["errors"][1]["field"], "protocol");
    let array = json!([good, {"nonsense": true}]).to_string();
    let (_, _, answer) = call(&state, Method::POST, "/observations", &array).await;
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(
        (
            answer["accepted"].as_u64(),
            answer["errors"][0]["index"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (status, content_type, refused) =
        call(&state, Method::POST, "/observations", "garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        content_type, "application/problem+json",
        "all lines refused: a problem, with the per-line report"
    );
    let refused: Value = serde_json::from_str(&refused).expect("JSON");
    assert_eq!(
        (refused["status"].as_u64(), refused["accepted"].as_u64()),
        (Some(400), Some(0))
    );
    assert_eq!(refused["errors"][0]["line"], 1, "{refused}");
    let (status, content_type, problem) = call(&state, Method::POST, "/observations", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(content_type, "application/problem+json", "{problem}");
    assert_eq!(
        get_json(&state, "/analytics/patterns").await["total_observations"],
        2
    );
}

/// A control character (or an invisible one) in a host, method or path refuses the whole
/// body: 422 problem+json naming the field and where the observation was, nothing merged.
#[tokio::test]
async fn observations_with_control_characters_are_refused_422_naming_field_and_place() {
    let state = AppState::default();
    let good = observation("web", "api", 80, "http", 1.0, None);
    let mut bell = good.clone();
    bell["source"]["host"] = json!("we\u{7}b");
    let mut escape = good.clone();
    escape["path"] = json!("/x\u{1b}[2J");
    let mut rtl = good.clone();
    rtl["destination"]["host"] = json!("ap\u{202e}i");
    for (body, field, place) in [
        (
            json!([good, good, bell]).to_string(),
            "source.host",
            "element 2: character 2 (U+0007)",
        ),
        (
            format!("{good}\n\n{escape}\n"),
            "path",
            "line 3: character 2 (U+001B)",
        ),
        (
            json!([rtl]).to_string(),
            "destination.host",
            "element 0: character 2 (U+202E)",
        ),
    ] {
        let (status, content_type, problem) =
            call(&state, Method::POST, "/observations", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        let problem: Value = serde_json::from_str(&problem).expect("JSON");
        assert_eq!(problem["parameter"], field, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert_eq!(
            detail,
            format!("field `{field}`: {place} is not printable; nothing was merged")
        );
    }
    // Nothing of those bodies was merged, not even their good observations.
    assert_eq!(
        get_json(&state, "/analytics/patterns").await["total_observations"],
        0
    );
    let (status, _, _) = call(&state, Method::POST, "/observations", &good.to_string()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn services_dependencies_and_analytics() {
    let state = seeded().await;
    let services = get_json(&state, "/services").await;
    let types: Vec<(String, String)> = services
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        types.contains(&("db".into(), "database".into())),
        "{types:?}"
    );
    assert!(
        types.contains(&("cache".into(), "cache".into())),
        "{types:?}"
    );

    let out = get_json(&state, "/services/api/dependencies?direction=outbound").await;
    let targets: Vec<&str> = out["dependencies"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["target"].as_str())
        .collect();
    assert_eq!(targets, vec!["cache", "db"]);
    let inbound = get_json(&state, "/services/api/dependencies?direction=inbound").await;
    assert_eq!(inbound["dependencies"][0]["source"], "web");

    let critical = get_json(&state, "/analytics/critical").await;
    assert_eq!(critical[0]["service"], "api");
    assert_eq!(critical[0]["disconnects"], 2);

    let slow = get_json(&state, "/analytics/bottlenecks?threshold_ms=20&stat=p99").await;
    let slow: Vec<&str> = slow["dependencies"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["target"].as_str())
        .collect();
    assert_eq!(slow, vec!["db"]);

    let patterns = get_json(&state, "/analytics/patterns").await;
    assert_eq!(patterns["total_observations"], 7);
    assert_eq!(patterns["protocol_distribution"]["postgres"], 2);
    assert_eq!(patterns["dependency_count"], 3);
}

#[tokio::test]
async fn bad_parameters_are_problems_naming_the_parameter() {
    let state = seeded().await;
    for (uri, parameter) in [
        ("/topology?since=yesterday", "since"),
        ("/topology?since=5m&until=10m", "until"),
        ("/services/api/dependencies?direction=sideways", "direction"),
        ("/analytics/bottlenecks?threshold_ms=-1", "threshold_ms"),
        ("/analytics/bottlenecks?stat=p42", "stat"),
        ("/analytics/patterns?bogus=1", "bogus"),
        ("/topology/diff", "from"),
        ("/topology/diff?from=1h", "from"),
    ] {
        let (status, content_type, body) = call(&state, Method::GET, uri, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(content_type, "application/problem+json", "{uri}");
        let problem: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(problem["parameter"], parameter, "{uri}: {body}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(parameter)),
            "{uri}: {body}"
        );
    }
    let (status, _, _) = call(&state, Method::GET, "/services/nobody/dependencies", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn windows_select_recent_traffic() {
    let state = seeded().await;
    let old = json!({
        "timestamp_unix_ns": 1_000_000_000_000_000_000u64,
        "source": {"host": "web", "port": 1}, "destination": {"host": "legacy", "port": 80},
        "protocol": "http", "bytes_sent": 0, "bytes_received": 0, "latency_ms": 1.0,
        "status_code": null, "method": null, "path": null,
    });
    let (status, _, _) = call(&state, Method::POST, "/observations", &old.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let all = get_json(&state, "/topology?shape=weft").await;
    assert_eq!(all["dependencies"].as_array().map(Vec::len), Some(4));
    let recent = get_json(&state, "/topology?since=15m&shape=weft").await;
    assert_eq!(recent["dependencies"].as_array().map(Vec::len), Some(3));
    let then = get_json(
        &state,
        "/topology?since=2001-09-09T00:00:00Z&until=2001-09-10T00:00:00Z&shape=weft",
    )
    .await;
    assert_eq!(then["dependencies"][0]["target"], "legacy");
    assert_eq!(then["dependencies"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn snapshots_diff_and_violations() {
    let state = seeded().await;
    let (status, _, info) = call(&state, Method::POST, "/topology/snapshots", "").await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let list = get_json(&state, "/topology/snapshots").await;
    assert_eq!(list[0]["dependencies"], 3);
    let extra = observation("web", "payments.example.net", 443, "https", 5.0, None);
    call(&state, Method::POST, "/observations", &extra.to_string()).await;
    let info: Value = serde_json::from_str(&info).expect("JSON");
    let from = info["taken_at"].as_str().expect("taken_at");
    let diff = get_json(&state, &format!("/topology/diff?from={from}")).await;
    assert_eq!(diff["appeared"][0]["target"], "payments.example.net");
    assert_eq!(diff["vanished"], json!([]));

    let none = get_json(&state, "/topology/violations").await;
    assert_eq!(none["allow_list_configured"], false);
    let (status, content_type, body) = call(
        &state,
        Method::PUT,
        "/policy/allowed-dependencies",
        "allow = [\"web -> api\", \"api -> *\"]",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{content_type} {body}");
    let found = get_json(&state, "/topology/violations").await;
    assert_eq!(found["violations"].as_array().map(Vec::len), Some(1));
    assert_eq!(found["violations"][0]["target"], "payments.example.net");
    let (_, _, metrics) = call(&state, Method::GET, "/metrics", "").await;
    assert!(
        metrics.contains("weft_topology_unauthorized_dependencies 1"),
        "{metrics}"
    );
    let (status, content_type, body) = call(
        &state,
        Method::PUT,
        "/policy/allowed-dependencies",
        "[\"a b c\"]",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(content_type, "application/problem+json");
    assert!(body.contains("entry 1"), "{body}");
}

#[tokio::test]
async fn views_render_and_svg_uses_graphviz_or_says_it_is_missing() {
    let state = seeded().await;
    let (_, _, text) = call(&state, Method::GET, "/topology.txt?since=1h", "").await;
    assert!(
        text.contains("APPLICATION TOPOLOGY MAP") && text.contains("→ db"),
        "{text}"
    );
    let (_, _, dot) = call(&state, Method::GET, "/topology.dot", "").await;
    assert!(dot.contains("\"api\" -> \"db\""), "{dot}");
    let (status, content_type, body) = call(&state, Method::GET, "/topology.svg", "").await;
    if std::process::Command::new("dot").arg("-V").output().is_ok() {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_type, "image/svg+xml");
        assert!(body.contains("<svg"), "{body}");
    } else {
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert!(body.contains("Graphviz"), "{body}");
    }
}

#[tokio::test]
async fn missing_graphviz_is_a_501_problem() {
    let error = weft_controller::api::views::run_dot(
        "weft-no-such-dot",
        "digraph {}",
        std::time::Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert_eq!(error.status(), StatusCode::NOT_IMPLEMENTED);
    assert!(error.to_string().contains("weft-no-such-dot"), "{error}");
}

/// Reads server-sent events from `body` until one has `event: <event_type>` and
/// `needle` in its data; returns that event's text, or panics after `timeout`.
async fn read_event(
    body: &mut Body,
    event_type: &str,
    needle: &str,
    timeout: std::time::Duration,
) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut text = String::new();
    loop {
        if let Some(found) = text
            .split("\n\n")
            .find(|e| e.contains(&format!("event: {event_type}\n")) && e.contains(needle))
        {
            return found.to_owned();
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {event_type} with {needle} in time; got:\n{text}"))
            .expect("a frame")
            .expect("no error");
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
}

async fn open_events(state: &AppState, uri: &str) -> Body {
    let request = Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let response = app(state.clone()).oneshot(request).await.expect("router");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    response.into_body()
}

#[tokio::test]
async fn topology_events_stream_as_server_sent_events() {
    let state = seeded().await;
    let mut body = open_events(&state, "/events/topology").await;
    let extra = observation("web", "newcomer", 9000, "tcp", 1.0, None);
    call(&state, Method::POST, "/observations", &extra.to_string()).await;
    let event = read_event(
        &mut body,
        "weft.topology.dependency.appeared",
        "\"target\":\"newcomer\"",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(event.contains("\"found_by\":\"ingest\""), "{event}");
}

/// Events fire by themselves and come out of one log: a new dependency is announced
/// at ingest (within a second), a burst of 5xx on one edge is an anomaly event once its
/// bucket ends (within one bucket width of the burst), and both are in `GET /events`
/// beside shard events, with the same envelope and sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_dependencies_and_anomalies_arrive_on_the_one_event_log_unasked() {
    use weft_topology::analytics::anomaly::AnomalyConfig;
    use weft_topology::topology::BucketConfig;
    let width = std::time::Duration::from_secs(1);
    let state = AppState::builder()
        .buckets(BucketConfig {
            width,
            retention: std::time::Duration::from_secs(3600),
        })
        .anomalies(AnomalyConfig {
            min_baseline: 3,
            ..AnomalyConfig::default()
        })
        .start(std::sync::Arc::new(weft_store::MemoryStore::default()))
        .expect("state");
    let s = 1_000_000_000u64;
    let now = weft_topology::time::now_unix_ns();
    let start_of_bucket = now / s * s;
    let at = |ns: u64, status: Option<u16>| {
        let mut o = observation("web", "api", 8080, "http", 10.0, status);
        o["timestamp_unix_ns"] = json!(ns);
        o
    };
    // Five quiet buckets before this one: 20 good requests each.
    let mut baseline = Vec::new();
    for back in 1..=5u64 {
        for i in 0..20u64 {
            baseline.push(at(start_of_bucket - back * s + i * 10_000_000, Some(200)));
        }
    }
    let mut events = open_events(&state, "/events").await;
    let (status, _, body) = call(
        &state,
        Method::POST,
        "/observations",
        &json!(baseline).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    read_event(
        &mut events,
        "weft.topology.dependency.appeared",
        "\"target\":\"api\"",
        std::time::Duration::from_secs(5),
    )
    .await;

    // A new dependency: its event within a second of its first request.
    let sent = std::time::Instant::now();
    let newcomer = observation("api", "ledger", 7000, "tcp", 1.0, None);
    call(&state, Method::POST, "/observations", &newcomer.to_string()).await;
    let appeared = read_event(
        &mut events,
        "weft.topology.dependency.appeared",
        "\"target\":\"ledger\"",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert!(
        appeared.contains("\"source\":\"/weft/controller/topology\""),
        "{appeared}"
    );
    assert!(
        appeared.contains("\"subject\":\"dependencies/api/ledger\""),
        "{appeared}"
    );
    assert!(appeared.contains("\"sequence\":"), "{appeared}");

    // A burst of 5xx on web -> api in the current bucket.
    let burst_at = weft_topology::time::now_unix_ns();
    let burst: Vec<Value> = (0..20).map(|_| at(burst_at, Some(503))).collect();
    let burst_sent = std::time::Instant::now();
    call(
        &state,
        Method::POST,
        "/observations",
        &json!(burst).to_string(),
    )
    .await;
    let anomaly = read_event(
        &mut events,
        "weft.topology.anomaly",
        "\"metric\":\"error_rate\"",
        std::time::Duration::from_secs(5),
    )
    .await;
    let took = burst_sent.elapsed();
    assert!(
        took <= width + weft_controller::events::SETTLE + std::time::Duration::from_millis(500),
        "{took:?}"
    );
    assert!(anomaly.contains("\"target\":\"api\""), "{anomaly}");
    assert!(anomaly.contains("\"direction\":\"up\""), "{anomaly}");

    // The same events, stored, in the one log: numbered in order, one envelope.
    let page = get_json(&state, "/events?follow=false&from=1").await;
    let logged = page["events"].as_array().expect("events");
    let types: Vec<&str> = logged.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        types.contains(&"weft.topology.dependency.appeared"),
        "{types:?}"
    );
    assert!(types.contains(&"weft.topology.anomaly"), "{types:?}");
    for (i, e) in logged.iter().enumerate() {
        assert_eq!(e["sequence"], json!(i as u64 + 1), "{e}");
        assert_eq!(e["id"], json!((i + 1).to_string()));
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["datacontenttype"], "application/json");
    }
    // Only some types, a page at a time.
    let anomalies = logged
        .iter()
        .filter(|e| e["type"] == "weft.topology.anomaly")
        .count();
    let mut from = 1;
    let mut paged = Vec::new();
    loop {
        let page = get_json(
            &state,
            &format!("/events?follow=false&from={from}&limit=1&types=weft.topology.anomaly"),
        )
        .await;
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            break;
        }
        from = page["next"].as_u64().expect("next");
        paged.extend(events);
    }
    assert_eq!(paged.len(), anomalies);
    assert!(paged.iter().all(|e| e["type"] == "weft.topology.anomaly"));
    let (status, _, body) = call(&state, Method::GET, "/events?types=weft%20topology", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("types"), "{body}");
}

/// A client written from topomapper.md's data models alone: its `TrafficObservation`,
/// `Service` and `ServiceDependency`, nothing of weft's. Unknown fields are refused, so
/// an answer with anything but the spec's fields fails.
mod spec_client {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug)]
    pub struct NetworkEndpoint {
        pub host: String,
        pub port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocol: Option<String>,
    }

    #[derive(Serialize, Debug)]
    pub struct TrafficObservation {
        pub timestamp: String,
        pub source: NetworkEndpoint,
        pub destination: NetworkEndpoint,
        pub protocol: String,
        pub bytes_sent: u64,
        pub bytes_received: u64,
        pub latency_ms: f64,
        pub status_code: Option<u16>,
        pub method: Option<String>,
        pub path: Option<String>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    pub struct Service {
        pub service_id: String,
        pub service_name: String,
        pub service_type: String,
        pub endpoints: Vec<NetworkEndpoint>,
        pub tags: BTreeMap<String, String>,
        pub metadata: BTreeMap<String, serde_json::Value>,
        pub first_seen: Option<String>,
        pub last_seen: Option<String>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    pub struct ServiceDependency {
        pub source_service: String,
        pub target_service: String,
        pub protocol: String,
        pub direction: String,
        pub request_count: u64,
        pub total_bytes: u64,
        pub error_count: u64,
        pub avg_latency_ms: f64,
        pub first_seen: Option<String>,
        pub last_seen: Option<String>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    pub struct TopologyMap {
        pub services: BTreeMap<String, Service>,
        pub dependencies: Vec<ServiceDependency>,
    }

    /// The spec's `create_traffic_observation(src, sport, dst, dport, protocol, ...)`, with
    /// the protocol as Python writes the enum member (`str(Protocol.HTTPS)`) or its value.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        timestamp: &str,
        source: (&str, u16),
        destination: (&str, u16),
        protocol: &str,
        method: Option<&str>,
        path: Option<&str>,
        bytes: (u64, u64),
        latency_ms: f64,
        status_code: Option<u16>,
    ) -> TrafficObservation {
        TrafficObservation {
            timestamp: timestamp.to_owned(),
            source: NetworkEndpoint {
                host: source.0.into(),
                port: source.1,
                protocol: None,
            },
            destination: NetworkEndpoint {
                host: destination.0.into(),
                port: destination.1,
                protocol: None,
            },
            protocol: protocol.to_owned(),
            bytes_sent: bytes.0,
            bytes_received: bytes.1,
            latency_ms,
            status_code,
            method: method.map(str::to_owned),
            path: path.map(str::to_owned),
        }
    }
}

/// The spec's Complete Example, as its JSON, through `POST /observations` and back from
/// `GET /topology` into the spec's data models.
#[tokio::test]
async fn the_specs_complete_example_round_trips_in_the_specs_shapes() {
    use spec_client::{TopologyMap, create};
    let state = AppState::default();
    let now = weft_topology::time::now_unix_ns();
    // Python's isoformat(): naive (taken as UTC), and with an offset.
    let naive = weft_topology::time::rfc3339(now)
        .trim_end_matches('Z')
        .to_owned();
    let offset = naive.clone() + "+00:00";
    let mut all = Vec::new();
    for i in 0..100u16 {
        all.push(create(
            &naive,
            ("client.external", 54321 + i),
            ("api.example.com", 443),
            "Protocol.HTTPS",
            Some("GET"),
            Some("/api/users"),
            (0, 0),
            45.0 + f64::from(i % 10),
            None,
        ));
        all.push(create(
            &offset,
            ("api.example.com", 443),
            ("auth-service.internal", 8080),
            "HTTP",
            Some("POST"),
            Some("/verify"),
            (0, 0),
            20.0,
            None,
        ));
        all.push(create(
            &offset,
            ("api.example.com", 443),
            ("user-service.internal", 8080),
            "http",
            Some("GET"),
            Some("/users"),
            (0, 0),
            35.0,
            None,
        ));
        all.push(create(
            &naive,
            ("user-service.internal", 8080),
            ("redis.cache.internal", 6379),
            "Protocol.REDIS",
            None,
            None,
            (256, 1024),
            5.0,
            None,
        ));
    }
    for _ in 0..50 {
        all.push(create(
            &naive,
            ("user-service.internal", 8080),
            ("postgres.db.internal", 5432),
            "Protocol.POSTGRES",
            None,
            None,
            (512, 4096),
            25.0,
            None,
        ));
    }
    for _ in 0..5 {
        all.push(create(
            &naive,
            ("api.example.com", 443),
            ("user-service.internal", 8080),
            "Protocol.HTTP",
            Some("GET"),
            Some("/users"),
            (0, 0),
            150.0,
            Some(500),
        ));
    }
    // Half as one JSON array, half as JSON lines.
    let (array, lines) = all.split_at(all.len() / 2);
    let array = serde_json::to_string(array).expect("JSON");
    let (status, _, body) = call(&state, Method::POST, "/observations", &array).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lines: Vec<String> = lines
        .iter()
        .map(|o| serde_json::to_string(o).expect("JSON"))
        .collect();
    let (status, _, body) = call(&state, Method::POST, "/observations", &lines.join("\n")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let accepted: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(accepted["errors"], json!([]), "{body}");

    let (status, _, body) = call(&state, Method::GET, "/topology", "").await;
    assert_eq!(status, StatusCode::OK);
    let map: TopologyMap = serde_json::from_str(&body).expect("the spec's TopologyMap");
    assert_eq!(map.services.len(), 6, "{:?}", map.services.keys());
    assert_eq!(map.dependencies.len(), 5);
    let kind = |id: &str| map.services[id].service_type.as_str();
    assert_eq!(kind("api.example.com"), "api_gateway");
    assert_eq!(kind("user-service.internal"), "microservice");
    assert_eq!(kind("postgres.db.internal"), "database");
    assert_eq!(kind("redis.cache.internal"), "cache");
    let api = &map.services["api.example.com"];
    assert_eq!(api.service_id, "api.example.com");
    assert_eq!(api.service_name, "api.example.com");
    assert_eq!(api.endpoints.len(), 1);
    assert_eq!(api.endpoints[0].port, 443);
    assert_eq!(api.endpoints[0].protocol.as_deref(), Some("https"));
    assert!(api.first_seen.is_some() && api.last_seen.is_some());
    assert_eq!(api.tags["source"], "traffic");
    assert_eq!(api.metadata["registered"], json!(false));
    let dep = |source: &str, target: &str| {
        map.dependencies
            .iter()
            .find(|d| d.source_service == source && d.target_service == target)
            .unwrap_or_else(|| panic!("{source} -> {target}"))
    };
    let front = dep("client.external", "api.example.com");
    assert_eq!(front.protocol, "https");
    assert_eq!(front.request_count, 100);
    assert!((front.avg_latency_ms - 49.5).abs() < 1e-9);
    let users = dep("api.example.com", "user-service.internal");
    assert_eq!((users.request_count, users.error_count), (105, 5));
    assert!((users.avg_latency_ms - (100.0 * 35.0 + 5.0 * 150.0) / 105.0).abs() < 1e-9);
    assert_eq!(users.direction, "outbound");
    assert!(users.first_seen.is_some() && users.last_seen.is_some());
    // One service's side: inbound where it is called.
    let side = get_json(
        &state,
        "/services/user-service.internal/dependencies?shape=spec&direction=both",
    )
    .await;
    let side: Vec<spec_client::ServiceDependency> =
        serde_json::from_value(side["dependencies"].clone()).expect("the spec's models");
    let direction = |target: &str| {
        side.iter()
            .find(|d| d.target_service == target)
            .map(|d| d.direction.as_str())
    };
    assert_eq!(direction("user-service.internal"), Some("inbound"));
    assert_eq!(direction("postgres.db.internal"), Some("outbound"));
    let db = dep("user-service.internal", "postgres.db.internal");
    assert_eq!((db.protocol.as_str(), db.request_count), ("postgres", 50));
    assert_eq!(db.total_bytes, 50 * (512 + 4096));
    assert_eq!(
        dep("user-service.internal", "redis.cache.internal").total_bytes,
        100 * 1280
    );
}
