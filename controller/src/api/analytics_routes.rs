//! `/analytics/*`: critical services, bottlenecks and traffic patterns over a window.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;

use super::error::ApiError;
use super::query::Params;
use crate::analytics;
use crate::state::AppState;

pub async fn critical(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(&["since", "until"])?.window()?;
    Ok(Json(analytics::critical_services(
        &state.snapshot_in(&window),
    )))
}

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

pub async fn patterns(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(&["since", "until"])?.window()?;
    Ok(Json(analytics::analyze_traffic_patterns(
        &state.snapshot_in(&window),
    )))
}
