//! History: snapshots, diffs, violations of the allow-list, and topology events (SSE).

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::StreamExt as _;
use weft_topology::history::{AllowList, DiffThresholds, HistoryError, diff};
use weft_topology::time::{now_unix_ns, rfc3339};

use super::error::ApiError;
use super::openapi::schemas::Violations;
use super::query::Params;
use crate::auth::http::ClientId;
use crate::limits::Guard;
use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_snapshots,
    take_snapshot,
    topology_diff,
    violations,
    get_allowed,
    put_allowed,
    events
))]
pub struct Doc;

fn internal(error: HistoryError) -> ApiError {
    ApiError::Internal(error.to_string())
}

#[utoipa::path(
    get,
    path = "/topology/snapshots",
    tag = "topology",
    responses((status = 200, description = "The snapshots kept, oldest first", body = Vec<Object>))
)]
pub async fn list_snapshots(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.history.snapshots().map_err(internal)?))
}

#[utoipa::path(
    post,
    path = "/topology/snapshots",
    tag = "topology",
    responses(
        (status = 201, description = "The snapshot taken", body = Object),
        (status = 429, description = "This client took one too recently (--manual-snapshot-min-interval)"),
    )
)]
/// `POST /topology/snapshots`: a snapshot on request, kept apart from the scheduled ones
/// (`--max-manual-snapshots`) and at most one per `--manual-snapshot-min-interval` per
/// client (its token; 429 with `Retry-After` sooner).
pub async fn take_snapshot(
    State(state): State<AppState>,
    client: Option<Extension<ClientId>>,
) -> Result<impl IntoResponse, ApiError> {
    let client = client.map_or_else(|| "-".to_owned(), |Extension(ClientId(id))| id);
    let info = state
        .history
        .take_manual_snapshot(&client, || state.snapshot(), now_unix_ns())
        .map_err(|error| match error {
            HistoryError::TooSoon { retry_after, .. } => {
                state.limits.hit(Guard::ManualSnapshots);
                ApiError::TooMany {
                    message: format!("{error} (--manual-snapshot-min-interval)"),
                    retry_after,
                }
            }
            other => internal(other),
        })?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(
    get,
    path = "/topology/diff",
    tag = "topology",
    params(
        ("from" = String, Query, description = "RFC 3339, or a duration ago such as `1h`: the snapshot at or before it"),
        ("to" = Option<String>, Query, description = "RFC 3339 or a duration ago (default now: the live topology)"),
        ("latency_ratio" = Option<f64>, Query, description = "A latency this many times the old one counts as a change", minimum = 0),
        ("error_rate" = Option<f64>, Query, description = "An error rate change this large counts", minimum = 0),
    ),
    responses((status = 200, description = "What changed between the two", body = Object))
)]
pub async fn topology_diff(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["from", "to", "latency_ratio", "error_rate"])?;
    let from = params.time_or("from", None)?;
    let to = params.time_or("to", Some(now_unix_ns()))?;
    if to < from {
        return Err(ApiError::parameter("to", "is before `from`"));
    }
    let thresholds = DiffThresholds {
        latency_ratio: params.number("latency_ratio", DiffThresholds::default().latency_ratio)?,
        error_rate: params.number("error_rate", DiffThresholds::default().error_rate)?,
    };
    let before = state
        .history
        .snapshot_at(from)
        .map_err(internal)?
        .ok_or_else(|| {
            ApiError::parameter(
                "from",
                format!("no snapshot was taken at or before {}", rfc3339(from)),
            )
        })?;
    // "to" in the present (or future) means the live topology.
    let after = if to >= now_unix_ns().saturating_sub(1_000_000_000) {
        state.snapshot()
    } else {
        state
            .history
            .snapshot_at(to)
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::parameter(
                    "to",
                    format!("no snapshot was taken at or before {}", rfc3339(to)),
                )
            })?
    };
    Ok(Json(diff(&before, &after, thresholds)))
}

#[utoipa::path(
    get,
    path = "/topology/violations",
    tag = "topology",
    responses((status = 200, description = "Dependencies outside the allow-list", body = Violations))
)]
pub async fn violations(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let snapshot = state.snapshot();
    let configured = state.history.allow_list().is_some();
    Ok(Json(serde_json::json!({
        "allow_list_configured": configured,
        "violations": state.history.violations(&snapshot),
    })))
}

#[utoipa::path(
    get,
    path = "/policy/allowed-dependencies",
    tag = "topology",
    responses(
        (status = 200, description = "The allow-list", body = Object),
        (status = 404, description = "No allow-list is set"),
    )
)]
pub async fn get_allowed(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    match state.history.allow_list() {
        Some(list) => Ok(Json(list)),
        None => Err(ApiError::NotFound(
            "/policy/allowed-dependencies (no allow-list is set)".into(),
        )),
    }
}

#[utoipa::path(
    put,
    path = "/policy/allowed-dependencies",
    tag = "topology",
    request_body(content = String, content_type = "text/plain", description = "The allow-list as TOML"),
    responses((status = 200, description = "The allow-list now in force", body = Object))
)]
pub async fn put_allowed(
    State(state): State<AppState>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let list = AllowList::parse(&body, "body").map_err(ApiError::BadBody)?;
    state
        .history
        .set_allow_list(list.clone(), &body)
        .map_err(internal)?;
    state.history.observe(&state.snapshot());
    Ok(Json(list))
}

#[utoipa::path(
    get,
    path = "/events/topology",
    tag = "events",
    responses((status = 200, description = "Server-sent topology events: those still kept, then live ones (never ends)", body = String, content_type = "text/event-stream"))
)]
/// Server-sent events: the events still in the ring, then live ones.
pub async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let receiver = state.history.events.subscribe();
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                // A lagging subscriber skips what it missed (the ring still has it).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let recent = futures::stream::iter(state.history.events.recent());
    let to_sse = |event: weft_topology::history::TopologyEvent| {
        Event::default()
            .id(event.id.clone())
            .event(event.event_type)
            .json_data(&event)
            .unwrap_or_else(|_| Event::default().comment("unserialisable event"))
    };
    let stream = recent.chain(live).map(to_sse).map(Ok::<_, Infallible>);
    Sse::new(stream).keep_alive(KeepAlive::default())
}
