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
    let all = get_json(&state, "/topology").await;
    assert_eq!(all["dependencies"].as_array().map(Vec::len), Some(4));
    let recent = get_json(&state, "/topology?since=15m").await;
    assert_eq!(recent["dependencies"].as_array().map(Vec::len), Some(3));
    let then = get_json(
        &state,
        "/topology?since=2001-09-09T00:00:00Z&until=2001-09-10T00:00:00Z",
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

#[tokio::test]
async fn topology_events_stream_as_server_sent_events() {
    let state = seeded().await;
    state.history.observe(&state.snapshot());
    let extra = observation("web", "newcomer", 9000, "tcp", 1.0, None);
    call(&state, Method::POST, "/observations", &extra.to_string()).await;
    state.history.observe(&state.snapshot());
    let request = Request::builder()
        .uri("/events/topology")
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
    let mut body = response.into_body();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .expect("an event in time")
        .expect("a frame")
        .expect("no error");
    let text = String::from_utf8_lossy(frame.data_ref().expect("data")).into_owned();
    assert!(
        text.contains("event: weft.topology.dependency.appeared"),
        "{text}"
    );
    assert!(text.contains("\"target\":\"newcomer\""), "{text}");
}
