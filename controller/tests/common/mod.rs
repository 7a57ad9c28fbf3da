//! What the shard REST tests share: a controller state with a shard manager on a memory
//! store, and one request through the router in-process (`app(state)` + `oneshot`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;
use weft_controller::AppState;
use weft_controller::api::http::app;
use weft_shards::ShardConfig;
use weft_store::MemoryStore;

/// A state whose shard manager runs with `config` on a fresh memory store.
pub fn shard_state(config: ShardConfig) -> AppState {
    AppState::builder()
        .shard_config(config)
        .start(Arc::new(MemoryStore::default()))
        .unwrap()
}

/// One JSON request: (status, content type, body as JSON, or as a JSON string when it is
/// not JSON).
pub async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, String, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, content_type, json)
}

/// The `data` of the first `n` server-sent events of `uri`, parsed as JSON; panics if they
/// do not come within 5 s each.
#[allow(dead_code)] // not every test binary reads a stream
pub async fn sse_data(state: &AppState, uri: &str, n: usize) -> Vec<Value> {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let (mut text, mut out) = (String::new(), Vec::new());
    while out.len() < n {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .unwrap_or_else(|_| panic!("event {} of {uri} in time; got {out:?}", out.len() + 1))
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                out.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    out
}
