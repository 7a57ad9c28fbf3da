//! `/analytics/*`: critical services, bottlenecks and traffic patterns over a window.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use weft_topology::analytics;

use super::error::ApiError;
use super::openapi::schemas::Bottlenecks;
use super::query::Params;
use super::views::{SINCE, UNTIL, WindowParams};
use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    critical,
    bottlenecks,
    patterns,
    anomalies,
    scaling,
    classification_get,
    classification_post
))]
pub struct Doc;

#[utoipa::path(
    get,
    path = "/analytics/critical",
    tag = "analytics",
    params(WindowParams),
    responses((status = 200, description = "Services ranked by how much depends on them", body = Vec<analytics::critical::CriticalService>))
)]
pub async fn critical(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(&["since", "until"])?.window()?;
    Ok(Json(analytics::critical_services(
        &state.snapshot_in(&window),
    )))
}

#[utoipa::path(
    get,
    path = "/analytics/bottlenecks",
    tag = "analytics",
    params(
        ("since" = Option<String>, Query, description = SINCE),
        ("until" = Option<String>, Query, description = UNTIL),
        ("threshold_ms" = Option<f64>, Query, description = "Slower than this (default 100)", minimum = 0),
        ("stat" = Option<String>, Query, description = "avg (default), p50, p95 or p99"),
    ),
    responses((status = 200, description = "Dependencies slower than the threshold", body = Bottlenecks))
)]
pub async fn bottlenecks(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["since", "until", "threshold_ms", "stat"])?;
    let window = params.window()?;
    let threshold = params.number("threshold_ms", 100.0)?;
    let stat = params.stat()?;
    let snapshot = state.snapshot_in(&window);
    let slow: Vec<_> = analytics::bottlenecks(&snapshot, threshold, stat)
        .into_iter()
        .cloned()
        .collect();
    Ok(Json(serde_json::json!({
        "threshold_ms": threshold,
        "stat": stat,
        "dependencies": slow,
    })))
}

#[utoipa::path(
    get,
    path = "/analytics/patterns",
    tag = "analytics",
    params(WindowParams),
    responses((status = 200, description = "Traffic patterns", body = analytics::patterns::TrafficPatterns))
)]
pub async fn patterns(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(&["since", "until"])?.window()?;
    Ok(Json(analytics::analyze_traffic_patterns(
        &state.snapshot_in(&window),
    )))
}

/// `since`/`until` as the span of complete buckets to read: `until` (default now) ends
/// it, `since` defaults to `default_buckets` bucket widths before.
fn bucket_span(
    state: &AppState,
    params: &Params,
    default_buckets: u64,
) -> Result<(u64, u64), ApiError> {
    let window = params.window()?;
    let until = window
        .until
        .unwrap_or_else(weft_topology::time::now_unix_ns);
    let width = u64::try_from(state.topology.bucket_config().width.as_nanos()).unwrap_or(u64::MAX);
    let since = window
        .since
        .unwrap_or_else(|| until.saturating_sub(width.saturating_mul(default_buckets)));
    Ok((since, until))
}

fn positive(params: &Params, name: &str, default: f64) -> Result<f64, ApiError> {
    let value = params.number(name, default)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(ApiError::parameter(name, "must be more than 0"))
    }
}

fn count(params: &Params, name: &str, default: usize, min: usize) -> Result<usize, ApiError> {
    let value = params.number(name, default as f64)?;
    if value.fract() != 0.0 || value < min as f64 || value > 10_000.0 {
        return Err(ApiError::parameter(
            name,
            format!("`{value}` is not a whole number from {min} to 10000"),
        ));
    }
    Ok(value as usize)
}

#[utoipa::path(
    get,
    path = "/analytics/anomalies",
    tag = "analytics",
    params(
        ("since" = Option<String>, Query, description = "Start of the baseline (default an hour before `until`)"),
        ("until" = Option<String>, Query, description = UNTIL),
        ("threshold" = Option<f64>, Query, description = "Standard deviations that make an anomaly (> 0)"),
        ("min_baseline" = Option<u32>, Query, description = "Buckets of baseline needed (2 to 10000)", minimum = 2, maximum = 10000),
    ),
    responses((status = 200, description = "The anomalies of the latest complete bucket", body = Object))
)]
/// `GET /analytics/anomalies?since=&until=&threshold=&min_baseline=`: the latest complete
/// bucket before `until` (default now) against the buckets from `since` (default an
/// hour before). On demand: nothing is published as an event here.
pub async fn anomalies(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["since", "until", "threshold", "min_baseline"])?;
    let defaults = analytics::anomaly::AnomalyConfig::default();
    let config = analytics::anomaly::AnomalyConfig {
        threshold: positive(&params, "threshold", defaults.threshold)?,
        min_baseline: count(&params, "min_baseline", defaults.min_baseline, 2)?,
        ..defaults
    };
    let (since, until) = bucket_span(&state, &params, 60)?;
    Ok(Json(analytics::anomaly::detect(
        &state.topology,
        since,
        until,
        &config,
    )))
}

#[utoipa::path(
    get,
    path = "/analytics/scaling",
    tag = "analytics",
    params(
        ("since" = Option<String>, Query, description = "Start of the history read (default 30 buckets before `until`)"),
        ("until" = Option<String>, Query, description = UNTIL),
        ("latency_target_ms" = Option<f64>, Query, description = "The latency to stay under (> 0)"),
        ("horizon" = Option<u32>, Query, description = "Buckets ahead to forecast (1 to 10000)", minimum = 1, maximum = 10000),
    ),
    responses((status = 200, description = "Scaling recommendations", body = Object))
)]
/// `GET /analytics/scaling?since=&until=&latency_target_ms=&horizon=`.
pub async fn scaling(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["since", "until", "latency_target_ms", "horizon"])?;
    let defaults = analytics::scaling::ScalingConfig::default();
    let config = analytics::scaling::ScalingConfig {
        latency_target_ms: positive(&params, "latency_target_ms", defaults.latency_target_ms)?,
        horizon: count(&params, "horizon", defaults.horizon, 1)?,
        ..defaults
    };
    let (since, until) = bucket_span(&state, &params, 30)?;
    Ok(Json(analytics::scaling::recommend(
        &state.topology,
        since,
        until,
        &config,
    )))
}

#[utoipa::path(
    get,
    path = "/analytics/classification",
    tag = "analytics",
    params(WindowParams),
    responses((status = 200, description = "Each service's type as the learned classifier sees it", body = Object))
)]
pub async fn classification_get(
    state: State<AppState>,
    params: Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    classification(state, params, String::new()).await
}

#[utoipa::path(
    post,
    path = "/analytics/classification",
    tag = "analytics",
    params(WindowParams),
    request_body(content = Option<String>, content_type = "text/plain", description = "TOML training labels: `[[example]] service = \"x\" type = \"cache\"` (empty: none)"),
    responses((status = 200, description = "Each service's type, with the labels as training", body = Object))
)]
pub async fn classification_post(
    state: State<AppState>,
    params: Query<HashMap<String, String>>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    classification(state, params, body).await
}

/// `GET /analytics/classification?since=&until=`; `POST` the same with a TOML body of
/// `[[example]] service = "x" type = "cache"` training labels.
pub async fn classification(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(&["since", "until"])?.window()?;
    let examples = if body.trim().is_empty() {
        analytics::learned::Examples::default()
    } else {
        analytics::learned::Examples::parse(&body, "(request body)").map_err(ApiError::BadBody)?
    };
    Ok(Json(analytics::learned::classify(
        &state.snapshot_in(&window),
        &state.classifier,
        &examples,
    )))
}
