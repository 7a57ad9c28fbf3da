//! `/shadows` and `/events/shadows` through the router in-process: create, read, change
//! the policy, delete; errors as problem+json naming the field; the events as server-sent
//! CloudEvents; and tokens: none is 401, a read token reads but is 403 for changes.

#[allow(dead_code)] // the shard helpers are not used here
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use weft_control::fake::FakeAgent;
use weft_control::kinds;
use weft_controller::AppState;
use weft_controller::api::http::app;
use weft_controller::auth::{AuthConfig, Role};
use weft_networks::CreateRequest as NetworkCreate;
use weft_store::MemoryStore;

use common::{call, sse_data};

const TDL: &str = "\
network: shop
nodes:
  web:
    image: nginx
    ports: [80]
    addresses: [10.9.0.2/24]
  db:
    image: alpine:3
    ports: [5432]
    addresses: [10.9.0.3/24]
";

fn agent() -> FakeAgent {
    FakeAgent {
        kinds: Some(
            [
                kinds::NETWORK_SEGMENT,
                kinds::NETWORK_NODE,
                kinds::SHADOW_TAP,
                kinds::SHADOW_SINK,
            ]
            .iter()
            .map(|k| (*k).to_owned())
            .collect::<BTreeSet<_>>(),
        ),
        ..Default::default()
    }
}

/// A controller state with production `shop` on hv1 and agents on hv1 and hv2.
async fn state(auth: AuthConfig) -> (AppState, Vec<tokio::task::JoinHandle<()>>) {
    let s = AppState::builder()
        .auth(auth)
        .start(Arc::new(MemoryStore::default()))
        .unwrap();
    s.hosts
        .set_underlay("hv1", Some("198.19.0.65".parse().unwrap()));
    s.hosts
        .set_underlay("hv2", Some("198.19.0.66".parse().unwrap()));
    let agents = ["hv1", "hv2"]
        .iter()
        .map(|h| agent().spawn(s.control.clone(), h))
        .collect();
    s.networks
        .create(NetworkCreate {
            tdl: TDL.into(),
            file_name: "shop.tdl".into(),
            hosts: vec!["hv1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    (s, agents)
}

fn create_body() -> Value {
    json!({
        "id": "shop-shadow",
        "production": "shop",
        "hosts": ["hv2"],
        "nodes": ["web"],
        "policy": {"share_ppm": 100000, "key": "source", "ports": [80]},
        "noise_baseline": true,
    })
}

#[tokio::test]
async fn shadows_are_created_read_changed_and_deleted_over_rest() {
    let (s, _agents) = state(AuthConfig::open()).await;
    let (status, _, all) = call(&s, Method::GET, "/shadows", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all, json!({"shadows": []}));

    let (status, _, created) = call(&s, Method::POST, "/shadows", &create_body().to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["id"], "shop-shadow");
    assert_eq!(created["production"], "shop");
    assert_eq!(created["nodes"], json!(["web"]));
    assert_eq!(
        created["networks"],
        json!(["shop-shadow", "shop-shadow-baseline"])
    );
    assert_eq!(created["policy"]["share_ppm"], 100_000);
    assert_eq!(created["policy"]["key"], "source");
    assert_eq!(created["sinks"]["web"]["host"], "hv2");
    for k in [
        "state",
        "error",
        "created_unix_ns",
        "counters",
        "analysis",
        "hosts",
    ] {
        assert!(created.get(k).is_some(), "{k} missing: {created}");
    }
    assert_eq!(created["counters"]["connections_sampled"], 0);

    // Read: one and all; the agents apply it.
    let mut shown = Value::Null;
    for _ in 0..500 {
        shown = call(&s, Method::GET, "/shadows/shop-shadow", "").await.2;
        if shown["state"] == "sampling" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(shown["state"], "sampling", "{shown}");
    let (_, _, all) = call(&s, Method::GET, "/shadows", "").await;
    assert_eq!(all["shadows"][0]["id"], "shop-shadow");

    // The policy is replaced; the events tell it.
    let events = {
        let s = s.clone();
        tokio::spawn(async move { sse_data(&s, "/events/shadows?shadow=shop-shadow", 2).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, _, changed) = call(
        &s,
        Method::PUT,
        "/shadows/shop-shadow/policy",
        r#"{"share_ppm": 250000, "read_only": true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["policy"]["share_ppm"], 250_000);
    assert_eq!(changed["policy"]["key"], "connection");
    assert_eq!(changed["policy"]["read_only"], true);
    assert_eq!(changed["revision"], 2);

    let (status, _, deleted) = call(&s, Method::DELETE, "/shadows/shop-shadow", "").await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["id"], "shop-shadow");
    let events = events.await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["weft.shadow.policy.changed", "weft.shadow.deleted"],
        "{events:?}"
    );
    assert_eq!(events[0]["subject"], "shop-shadow");
    assert_eq!(events[0]["specversion"], "1.0");
    assert_eq!(events[0]["data"]["policy"]["share_ppm"], 250_000);

    let (status, content_type, problem) = call(&s, Method::GET, "/shadows/shop-shadow", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/problem+json");
    assert!(
        problem["detail"].as_str().unwrap().contains("shop-shadow"),
        "{problem}"
    );
    assert!(s.networks.get("shop-shadow").is_none());
}

#[tokio::test]
async fn bad_requests_are_problems_naming_the_field() {
    let (s, _agents) = state(AuthConfig::open()).await;
    let cases = [
        (
            json!({"id": "x", "production": "nope", "hosts": ["hv2"]}),
            "production",
        ),
        (
            json!({"id": "x", "production": "shop", "hosts": []}),
            "hosts",
        ),
        (
            json!({"id": "x", "production": "shop", "hosts": ["hv2"], "nodes": ["ghost"]}),
            "nodes[0]",
        ),
        (
            json!({"id": "x", "production": "shop", "hosts": ["hv2"], "policy": {"share_ppm": 1000001}}),
            "policy.share_ppm",
        ),
        (
            json!({"id": "x", "production": "shop", "hosts": ["hv2"], "policy": {"ports": [0]}}),
            "policy.ports[0]",
        ),
        (
            json!({"id": "x", "production": "shop", "hosts": ["hv2"], "policy": {"sources": ["10.0.0.0/99"]}}),
            "policy.sources[0]",
        ),
        (
            json!({"id": "x", "production": "shop", "hosts": ["hv2"], "policy": {"window_start_minute": 2000}}),
            "policy.window_start_minute",
        ),
    ];
    for (body, field) in cases {
        let (status, content_type, problem) =
            call(&s, Method::POST, "/shadows", &body.to_string()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem["parameter"], field, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{problem}"
        );
    }
    // Not JSON of the request's shape: 400.
    let (status, content_type, _) = call(
        &s,
        Method::POST,
        "/shadows",
        r#"{"id": "x", "production": "shop", "colour": "blue"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(content_type, "application/problem+json");
    // Taken id: 409.
    let (status, _, _) = call(&s, Method::POST, "/shadows", &create_body().to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, problem) = call(&s, Method::POST, "/shadows", &create_body().to_string()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    // Synthetic load: 202 with the run, a bad value a 422 naming it, a bad body a 400.
    let id = create_body()["id"].as_str().unwrap().to_owned();
    let path = format!("/shadows/{id}/synthetic");
    let (status, _, info) = call(
        &s,
        Method::POST,
        &path,
        r#"{"multiplier": 2.5, "duration_seconds": 30}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{info}");
    assert_eq!(info["synthetic"]["multiplier_milli"], 2500);
    assert_eq!(info["synthetic"]["generation"], 1);
    for (body, field) in [
        (
            r#"{"multiplier": 5000, "duration_seconds": 30}"#,
            "multiplier",
        ),
        (
            r#"{"multiplier": 2, "duration_seconds": 0}"#,
            "duration_seconds",
        ),
    ] {
        let (status, content_type, problem) = call(&s, Method::POST, &path, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem["parameter"], field, "{problem}");
    }
    let (status, _, _) = call(&s, Method::POST, &path, r#"{"speed": 2}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown shadow: 404 for every verb.
    for (m, path, body) in [
        (Method::PUT, "/shadows/nope/policy", "{}"),
        (
            Method::POST,
            "/shadows/nope/synthetic",
            r#"{"multiplier": 2, "duration_seconds": 5}"#,
        ),
        (Method::DELETE, "/shadows/nope", ""),
    ] {
        let (status, _, _) = call(&s, m, path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert_eq!(s.shadows.list().len(), 1);
}

async fn with_token(
    s: &AppState,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut r = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let response = app(s.clone())
        .oneshot(r.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn shadows_need_a_token_and_changes_need_the_operate_role() {
    let (s, _agents) = state(AuthConfig {
        require_tokens: true,
        ..AuthConfig::open()
    })
    .await;
    let (_, read) = s.auth.tokens.create("dash", Role::Read, None).unwrap();
    let (_, operate) = s.auth.tokens.create("ops", Role::Operate, None).unwrap();
    let body = create_body().to_string();

    for (m, path) in [
        (Method::GET, "/shadows"),
        (Method::GET, "/shadows/shop-shadow"),
        (Method::GET, "/events/shadows"),
        (Method::POST, "/shadows"),
        (Method::PUT, "/shadows/shop-shadow/policy"),
        (Method::DELETE, "/shadows/shop-shadow"),
    ] {
        let (status, _) = with_token(&s, m.clone(), path, None, &body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{m} {path} without a token"
        );
        let (status, _) = with_token(&s, m.clone(), path, Some("weft_bad_token"), &body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{m} {path} with a bad token"
        );
    }
    for (m, path) in [
        (Method::POST, "/shadows"),
        (Method::PUT, "/shadows/shop-shadow/policy"),
        (Method::DELETE, "/shadows/shop-shadow"),
    ] {
        let (status, problem) = with_token(&s, m.clone(), path, Some(&read), &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{m} {path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("operate"),
            "{problem}"
        );
    }
    assert!(s.shadows.list().is_empty(), "nothing was made");

    let (status, created) = with_token(&s, Method::POST, "/shadows", Some(&operate), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, shown) =
        with_token(&s, Method::GET, "/shadows/shop-shadow", Some(&read), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["id"], "shop-shadow");
    let (status, _) = with_token(
        &s,
        Method::DELETE,
        "/shadows/shop-shadow",
        Some(&operate),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
