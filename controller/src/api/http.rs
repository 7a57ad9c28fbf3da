//! The REST router: topology views, services, analytics, history, observations,
//! Prometheus metrics and a health check.

use axum::Router;
use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::error::ApiError;
use super::{
    analytics_routes, console, control_routes, history_routes, networks_routes, observations,
    openapi, problem, shadows_routes, shards_routes, timeseries_routes, token_routes, views,
    weaves_routes,
};
use crate::metrics;
use crate::state::AppState;

/// This module's part of the OpenAPI document (the rest is in each routes module).
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics_text, healthz))]
pub struct Doc;

/// Builds the HTTP API, with its limits ([`super::limits`]).
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/topology", get(views::topology_json))
        .route("/topology.dot", get(views::topology_dot))
        .route("/topology.txt", get(views::topology_txt))
        .route("/topology.svg", get(views::topology_svg))
        .route("/services", get(views::services))
        .route("/flows", get(views::flows))
        .route(
            "/services/{name}/dependencies",
            get(views::service_dependencies),
        )
        .route(
            "/services/{name}/timeseries",
            get(timeseries_routes::service_timeseries),
        )
        .route("/analytics/critical", get(analytics_routes::critical))
        .route("/analytics/bottlenecks", get(analytics_routes::bottlenecks))
        .route("/analytics/patterns", get(analytics_routes::patterns))
        .route("/analytics/anomalies", get(analytics_routes::anomalies))
        .route("/analytics/scaling", get(analytics_routes::scaling))
        .route(
            "/analytics/classification",
            get(analytics_routes::classification_get).post(analytics_routes::classification_post),
        )
        .route("/topology/diff", get(history_routes::topology_diff))
        .route(
            "/topology/snapshots",
            get(history_routes::list_snapshots).post(history_routes::take_snapshot),
        )
        .route("/topology/violations", get(history_routes::violations))
        .route(
            "/policy/allowed-dependencies",
            get(history_routes::get_allowed).put(history_routes::put_allowed),
        )
        .route("/events/topology", get(history_routes::events))
        .route("/observations", post(observations::post_observations))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route(
            "/replica/topology",
            get(super::replica_routes::replica_topology),
        )
        .merge(shards_routes::routes())
        .merge(networks_routes::routes())
        .merge(shadows_routes::routes())
        .merge(weaves_routes::routes())
        .merge(control_routes::routes())
        .merge(token_routes::routes())
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // Authentication outermost: a request without the right token is refused before it
    // takes any limit's slot.
    super::limits::apply(routes, &state)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::http::require_role,
        ))
        // Outermost: whatever answers an error (axum's own rejections included) answers
        // problem+json.
        .layer(axum::middleware::map_response(problem::rewrite))
        .with_state(state)
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Prometheus metrics (OpenMetrics text)", body = String, content_type = metrics::CONTENT_TYPE),
        (status = 500, description = "Encoding the metrics failed"),
    )
)]
async fn metrics_text(State(state): State<AppState>) -> axum::response::Response {
    match state.exposition.render() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("encoding the metrics failed");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses((status = 200, description = "The controller is up", body = String, content_type = "text/plain; charset=utf-8"))
)]
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
