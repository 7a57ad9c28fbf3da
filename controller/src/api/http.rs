//! The REST router: topology in three formats, Prometheus metrics and a health check.

use axum::Router;
use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::error::ApiError;
use crate::state::AppState;
use crate::{metrics, render};

/// Builds the HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/topology", get(topology_json))
        .route("/topology.dot", get(topology_dot))
        .route("/topology.txt", get(topology_txt))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn topology_json(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let body = render::json(&state.snapshot()).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}

async fn topology_dot(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
        render::dot(&state.snapshot()),
    )
}

async fn topology_txt(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        render::ascii(&state.snapshot()),
    )
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&state),
    )
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
