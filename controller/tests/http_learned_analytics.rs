//! `/analytics/anomalies`, `/analytics/scaling` and `/analytics/classification` through
//! the router, in-process.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use weft_controller::AppState;
use weft_controller::api::http::app;
use weft_topology::mapper::create_traffic_observation;
use weft_topology::time::{now_unix_ns, rfc3339};

const MIN: u64 = 60_000_000_000;

async fn call(
    state: AppState,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = app(state)
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

/// a -> b steady for 30 minutes before the current minute, then a latency spike in the
/// last complete minute. Requests pass `until` (the current minute's start), so a minute
/// turning during the test changes nothing.
fn state_with_spike() -> AppState {
    let state = AppState::default();
    let current_start = current_start();
    for minutes_ago in 1..=31u64 {
        let start = current_start - minutes_ago * MIN;
        for i in 0..50 {
            let mut o = create_traffic_observation("a", 40_000, "b", 80, "http");
            o.timestamp_unix_ns = start + i * MIN / 50;
            o.latency_ms = if minutes_ago == 1 { 400.0 } else { 10.0 };
            state
                .topology
                .observe_traffic(&o, state.registry.as_ref())
                .expect("valid");
        }
    }
    state
}

/// Fixed once per test binary.
fn current_start() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        let now = now_unix_ns();
        now - now % MIN
    })
}

fn until() -> String {
    rfc3339(current_start()).replace('+', "%2B")
}

#[tokio::test]
async fn anomalies_report_the_spike() {
    let (status, json) = call(
        state_with_spike(),
        Method::GET,
        &format!("/analytics/anomalies?until={}", until()),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["threshold"], 4.0);
    let anomalies = json["anomalies"].as_array().expect("list");
    assert_eq!(anomalies.len(), 1, "{json}");
    assert_eq!(anomalies[0]["metric"], "p99_latency_ms");
    assert_eq!(anomalies[0]["source"], "a");
    assert!(anomalies[0]["score"].as_f64().expect("score") > 4.0);
    let (_, json) = call(
        state_with_spike(),
        Method::GET,
        &format!(
            "/analytics/anomalies?threshold=100000&since=2h&until={}",
            until()
        ),
        "",
    )
    .await;
    assert_eq!(
        json["anomalies"].as_array().map(Vec::len),
        Some(0),
        "{json}"
    );
}

#[tokio::test]
async fn scaling_and_classification_answer() {
    let (status, json) = call(
        state_with_spike(),
        Method::GET,
        &format!("/analytics/scaling?latency_target_ms=50&until={}", until()),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["services"][0]["service"], "b");
    assert_eq!(json["services"][0]["action"], "scale_out", "{json}");

    let (status, json) = call(
        state_with_spike(),
        Method::GET,
        "/analytics/classification",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["services"][0]["service"], "b");
    assert_eq!(json["services"][0]["rule_type"], "web_server");

    let (status, json) = call(
        state_with_spike(),
        Method::POST,
        "/analytics/classification",
        "[[example]]\nservice = \"b\"\ntype = \"api_gateway\"\n",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["services"][0]["example_type"], "api_gateway");
    assert_eq!(json["trained_types"]["api_gateway"], 1);
}

#[tokio::test]
async fn bad_parameters_are_400s_naming_the_parameter() {
    for (uri, parameter) in [
        ("/analytics/anomalies?threshold=abc", "threshold"),
        ("/analytics/anomalies?threshold=0", "threshold"),
        ("/analytics/anomalies?min_baseline=1.5", "min_baseline"),
        ("/analytics/anomalies?since=yesterdayish", "since"),
        ("/analytics/anomalies?window=5", "window"),
        (
            "/analytics/scaling?latency_target_ms=-1",
            "latency_target_ms",
        ),
        ("/analytics/scaling?horizon=0", "horizon"),
        ("/analytics/classification?until=nope", "until"),
    ] {
        let (status, json) = call(AppState::default(), Method::GET, uri, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {json}");
        assert_eq!(json["parameter"], parameter, "{uri}: {json}");
        assert!(
            json["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(parameter),
            "{uri}: {json}"
        );
    }
    let (status, json) = call(
        AppState::default(),
        Method::POST,
        "/analytics/classification",
        "[[example]]\nservice = \"b\"\ntype = \"toaster\"\n",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(
        json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("line 3"),
        "{json}"
    );
}
