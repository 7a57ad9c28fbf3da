//! `GET /services/{name}/timeseries`: a service's requests, errors and latency per time
//! bucket (what it served and what it asked of others), read from the topology's buckets.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde_json::json;
use weft_topology::time::{now_unix_ns, rfc3339};
use weft_topology::topology::timeseries::{MAX_BUCKETS, SeriesError};

use super::error::ApiError;
use super::query::Params;
use crate::state::AppState;

/// Buckets answered when `since` is not given (the newest, the current one included).
pub const DEFAULT_BUCKETS: u64 = 60;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(service_timeseries))]
pub struct Doc;

/// `since` (default: 59 buckets before `until`) and `until` (default: now), RFC 3339 or
/// relative (`15m`); every bucket in between, empty ones included, oldest first.
#[utoipa::path(
    get,
    path = "/services/{name}/timeseries",
    tag = "topology",
    params(
        ("name" = String, Path, description = "The service"),
        ("since" = Option<String>, Query, description = "RFC 3339, or relative (`15m` ago); default 59 buckets before `until`"),
        ("until" = Option<String>, Query, description = "RFC 3339, or relative; default now"),
    ),
    responses(
        (status = 200, description = "The service's requests, errors and latency per time bucket, in (what it served) and out (what it asked of others), oldest first", body = Object),
        (status = 404, description = "No such service"),
    )
)]
pub async fn service_timeseries(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    let window = params.only(&["since", "until"])?.window()?;
    if !state.topology.has_service(&name) {
        return Err(ApiError::NotFound(format!(
            "/services/{name}/timeseries (no such service)"
        )));
    }
    let width_ns = u64::try_from(state.topology.bucket_config().width.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    let until = window.until.unwrap_or_else(now_unix_ns);
    let since = window
        .since
        .unwrap_or_else(|| until.saturating_sub((DEFAULT_BUCKETS - 1) * width_ns));
    let series = state
        .topology
        .service_series(&name, since, until)
        .map_err(|e| match e {
            SeriesError::Backwards => ApiError::parameter("until", "is before `since`"),
            SeriesError::TooManyBuckets { .. } => ApiError::parameter(
                "since",
                format!("{e} (--bucket-width; at most {MAX_BUCKETS} buckets per request)"),
            ),
        })?;
    let points: Vec<_> = series
        .points
        .iter()
        .map(|p| {
            json!({
                "start": rfc3339(p.start_unix_ns),
                "start_unix_ms": p.start_unix_ns / 1_000_000,
                "inbound": p.inbound,
                "outbound": p.outbound,
            })
        })
        .collect();
    Ok(Json(json!({
        "service": name,
        "bucket_width_seconds": series.width_ns as f64 / 1e9,
        "points": points,
    })))
}
