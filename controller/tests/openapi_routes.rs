//! The OpenAPI document covers every route, and documents none that is not there.
//!
//! The router cannot list its routes, so the paths come from the `.route("...")` calls in
//! the API's source; which methods each path serves is asked of the router itself: any
//! answer but its method-not-allowed fallback (405) means the method is routed. A route
//! added without `#[utoipa::path]` (or without its module's `Doc`) fails here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use weft_controller::AppState;
use weft_controller::api::http::app;
use weft_controller::api::openapi::document;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

/// The paths of every `.route("...")` call under controller/src/api.
fn source_paths() -> BTreeSet<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("src/api") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let args = rest.trim_start();
            if let Some(literal) = args.strip_prefix('"') {
                let end = literal.find('"').expect("closing quote");
                // A catch-all `{*name}` is `{name}` in OpenAPI.
                paths.insert(literal[..end].replace("{*", "{"));
            }
        }
    }
    assert!(
        paths.len() > 50,
        "only {} routes found: {paths:?}",
        paths.len()
    );
    paths
}

/// A concrete URI for a route path: every `{param}` filled with a plausible value.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{port}" => "80",
            "{address}" => "10.0.0.1",
            // The console's assets: one that exists.
            "{path}" => "js/main.js",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the router serves `method` on `path` (anything but its 405 fallback, and not
/// its 404 fallback for unknown paths).
async fn routed(state: &AppState, method: &Method, path: &str) -> bool {
    let request = Request::builder()
        .method(method.clone())
        .uri(concrete(path))
        .body(Body::empty())
        .expect("request");
    let response = app(state.clone()).oneshot(request).await.expect("response");
    let status = response.status();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return false;
    }
    if status == StatusCode::NOT_FOUND {
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem+json");
        // The fallback's detail is exactly this; a handler's 404 says more.
        let fallback = format!("no resource at {}", concrete(path));
        assert_ne!(
            problem["detail"], fallback,
            "{method} {path}: the router does not know this path"
        );
    }
    true
}

fn documented() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(document()).expect("document as JSON");
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let state = AppState::default();
    let mut served = BTreeSet::new();
    for path in source_paths() {
        for method in &METHODS {
            if routed(&state, method, &path).await {
                served.insert((method.to_string(), path.clone()));
            }
        }
    }
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes without OpenAPI documentation (add #[utoipa::path] and list the handler \
         in its module's Doc): {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&served).collect();
    assert!(
        unrouted.is_empty(),
        "documented operations the router does not serve: {unrouted:?}"
    );
    assert!(served.len() >= 70, "{} operations", served.len());
}
