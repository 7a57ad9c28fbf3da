//! The web console's assets at `/ui` and the per-service time series it charts, driven
//! in-process with `tower::ServiceExt::oneshot`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use weft_controller::AppState;
use weft_controller::api::http::app;
use weft_controller::auth::{AuthConfig, Role};
use weft_store::MemoryStore;
use weft_topology::model::{Direction, FlowObservation, LatencyBucket, Transport, Workload};
use weft_topology::time::now_unix_ns;
use weft_topology::topology::BucketConfig;

const S: u64 = 1_000_000_000;

async fn call(
    state: &AppState,
    uri: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut r = Request::builder().method(Method::GET).uri(uri);
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    let response = app(state.clone())
        .oneshot(r.body(Body::empty()).expect("request"))
        .await
        .expect("infallible router");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn text(body: &[u8]) -> String {
    String::from_utf8(body.to_vec()).expect("utf-8")
}

fn with_tokens() -> (AppState, String) {
    let state = AppState::builder()
        .auth(AuthConfig {
            require_tokens: true,
            ..AuthConfig::open()
        })
        .buckets(BucketConfig {
            width: Duration::from_secs(5),
            retention: Duration::from_secs(3_600),
        })
        .start(Arc::new(MemoryStore::default()))
        .expect("state");
    let (_, read) = state
        .auth
        .tokens
        .create("console", Role::Read, None)
        .expect("token");
    (state, read)
}

/// The module paths `import ... from './x.js'` in a script names, relative to `/ui/js/`.
fn imports(script: &str) -> Vec<String> {
    script
        .lines()
        .filter(|l| l.starts_with("import "))
        .filter_map(|l| l.split(" from '").nth(1))
        .filter_map(|rest| rest.split('\'').next())
        .map(|p| format!("/ui/js/{}", p.trim_start_matches("./")))
        .collect()
}

#[tokio::test]
async fn the_console_is_served_without_a_token_with_its_policy_and_every_module_it_imports() {
    let (state, _) = with_tokens();
    let (status, headers, body) = call(&state, "/ui", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    assert!(
        !csp.contains("http") && !csp.contains("unsafe"),
        "no other origin, nothing inline: {csp}"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    let html = text(&body);
    assert!(html.contains("/ui/js/main.js") && html.contains("/ui/console.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names no other origin"
    );

    // Every module reachable from main.js is served as JavaScript.
    let mut todo = vec!["/ui/js/main.js".to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let (status, headers, body) = call(&state, &path, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8",
            "{path}"
        );
        let script = text(&body);
        assert!(
            path.ends_with("dom.js")
                || !(script.contains("http://") || script.contains("https://")),
            "{path} names another origin"
        );
        todo.extend(imports(&script));
    }
    assert!(seen.len() >= 10, "modules reached: {seen:?}");
    let (status, headers, _) = call(&state, "/ui/console.css", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");

    // The data it shows is not open.
    let (status, _, _) = call(&state, "/topology?shape=weft", None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&state, "/ui/../topology", None, &[]).await;
    assert_ne!(status, StatusCode::OK);
    // Only the assets are open: another path under /ui needs a token, and is then 404.
    let (status, _, _) = call(&state, "/ui/secret.json", None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_unchanged_asset_is_answered_304_and_an_unknown_one_404() {
    let (state, token) = with_tokens();
    let (_, headers, _) = call(&state, "/ui/js/map.js", None, &[]).await;
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let (status, headers, body) =
        call(&state, "/ui/js/map.js", None, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers[header::ETAG], etag.as_str());
    let (status, _, body) =
        call(&state, "/ui/js/map.js", None, &[("if-none-match", "\"x\"")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.is_empty());
    let (_, other, _) = call(&state, "/ui/js/api.js", None, &[]).await;
    assert_ne!(
        other[header::ETAG],
        etag.as_str(),
        "one validator per asset"
    );

    let (status, headers, body) = call(&state, "/ui/nope.js", Some(&token), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(text(&body).contains("/ui/nope.js"));
}

fn workload(name: &str, address: &str) -> Workload {
    Workload {
        name: name.into(),
        interface: format!("veth-{name}"),
        addresses: vec![address.parse().expect("test address")],
    }
}

fn web_to_db(at: u64, requests: u64, resets: u32, latency_ns: u64) -> FlowObservation {
    FlowObservation {
        workload: Some("web".into()),
        interface: "veth-web".into(),
        transport: Transport::Tcp,
        local_ip: "10.0.0.1".parse().unwrap(),
        local_port: 41_000,
        remote_ip: "10.0.0.2".parse().unwrap(),
        remote_port: 5432,
        direction: Direction::Outbound,
        packets_out: 5,
        packets_in: 4,
        bytes_out: 500,
        bytes_in: 700,
        payload_bytes_out: 200,
        payload_bytes_in: 400,
        first_seen_unix_ns: at - S,
        last_seen_unix_ns: at,
        tcp_flags_out: 0x12,
        tcp_flags_in: 0x12,
        handshake_rtt_ns: Some(100_000),
        requests,
        latency_sum_ns: latency_ns * requests,
        latency: vec![LatencyBucket {
            upper_bound_ns: latency_ns,
            count: requests,
        }],
        first_record: true,
        opened: true,
        ended: false,
        resets,
        l7: Default::default(),
    }
}

#[tokio::test]
async fn a_services_time_series_has_every_bucket_of_the_window_and_needs_a_token() {
    let (state, token) = with_tokens();
    let now = Instant::now();
    state
        .registry
        .register("host-a", "i-a", vec![workload("web", "10.0.0.1")], now);
    state
        .registry
        .register("host-b", "i-b", vec![workload("db", "10.0.0.2")], now);
    // Two buckets of 5 s with traffic, 20 s apart, in the recent past.
    let t = now_unix_ns();
    let old = t - 30 * S;
    state
        .topology
        .ingest(&web_to_db(old, 8, 2, 1_000_000), state.registry.as_ref());
    state.topology.ingest(
        &web_to_db(t - 5 * S, 3, 0, 20_000_000),
        state.registry.as_ref(),
    );

    let (status, _, _) = call(&state, "/services/db/timeseries", None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _, body) = call(&state, "/services/db/timeseries", Some(&token), &[]).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["service"], "db");
    assert_eq!(v["bucket_width_seconds"], 5.0);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 60, "the default is the newest 60 buckets");
    let served: Vec<u64> = points
        .iter()
        .map(|p| p["inbound"]["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(served.iter().sum::<u64>(), 11);
    let busy: Vec<&Value> = points
        .iter()
        .filter(|p| p["inbound"]["requests"].as_u64() > Some(0))
        .collect();
    assert_eq!(busy.len(), 2);
    assert_eq!(busy[0]["inbound"]["requests"], 8);
    assert_eq!(busy[0]["inbound"]["errors"], 2);
    assert!(busy[1]["inbound"]["latency_ms"]["p99"].as_f64().unwrap() > 10.0);
    assert!(busy[0]["inbound"]["latency_ms"]["p99"].as_f64().unwrap() < 2.0);
    let starts: Vec<u64> = points
        .iter()
        .map(|p| p["start_unix_ms"].as_u64().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[1] - w[0] == 5_000),
        "consecutive buckets"
    );
    assert!(points.iter().all(|p| p["outbound"]["requests"] == 0));
    assert!(points[0]["start"].as_str().unwrap().ends_with('Z'));

    let (_, _, body) = call(
        &state,
        "/services/web/timeseries?since=40s",
        Some(&token),
        &[],
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    let made: u64 = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outbound"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(made, 11);
    assert!(v["points"].as_array().unwrap().len() <= 10);

    for (uri, status, says) in [
        (
            "/services/nope/timeseries",
            StatusCode::NOT_FOUND,
            "no such service",
        ),
        (
            "/services/db/timeseries?step=5",
            StatusCode::BAD_REQUEST,
            "step",
        ),
        (
            "/services/db/timeseries?since=yesterday-ish",
            StatusCode::BAD_REQUEST,
            "since",
        ),
        (
            "/services/db/timeseries?since=1s&until=1m",
            StatusCode::BAD_REQUEST,
            "until",
        ),
        (
            "/services/db/timeseries?since=3h",
            StatusCode::BAD_REQUEST,
            "at most 1440 buckets",
        ),
    ] {
        let (got, headers, body) = call(&state, uri, Some(&token), &[]).await;
        assert_eq!(got, status, "{uri}: {}", text(&body));
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(text(&body).contains(says), "{uri}: {}", text(&body));
    }
}
