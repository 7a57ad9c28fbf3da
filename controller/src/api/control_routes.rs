//! The control plane over REST: which hosts there are, and per host its desired state
//! against what its agent reported (per resource: desired and applied generation, status,
//! error, measurements) and the drift its agent found and repaired. What `weft.v1`
//! resources a domain published shows here whatever its kind. `GET /events/control` streams
//! the control plane's events (drift repaired or not, kinds an agent does not know) as
//! server-sent CloudEvents.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::response::sse::{KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt as _;
use serde_json::{Value, json};
use weft_control::{ControlEvent, DriftRepaired, HostStatus, ResourceState, ResourceStatus};

use super::error::ApiError;
use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_hosts, host_status, events))]
pub struct Doc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/hosts", get(list_hosts))
        .route("/hosts/{host_id}/status", get(host_status))
        .route("/events/control", get(events))
}

/// `source` of every control event.
const SOURCE: &str = "/weft/controller/control";

/// A control event as a CloudEvent (`specversion` 1.0): `weft.control.drift.repaired`,
/// `weft.control.drift.failed` (`data` as in a host's status `drift`, plus `host`), or
/// `weft.control.kind.unsupported` (`data`: `host`, `kind`, `resources`).
fn cloud_event(event: &ControlEvent) -> Value {
    let now_ns = agent_common::time::now_unix_ns();
    let (event_type, subject, id, time_ns, data) = match event {
        ControlEvent::Drift(d) => {
            let mut data = drift(d);
            data["host"] = json!(d.host);
            let kind = if d.error.is_empty() {
                "weft.control.drift.repaired"
            } else {
                "weft.control.drift.failed"
            };
            let subject = format!("{}/{}/{}", d.host, d.resource.kind, d.resource.key);
            let id = format!("{subject}@{}", d.detected_unix_ns);
            (kind, subject, id, d.detected_unix_ns, data)
        }
        ControlEvent::Unsupported { host, kind, keys } => {
            let subject = format!("{host}/{kind}");
            let id = format!("{subject}@{now_ns}");
            let data = json!({ "host": host, "kind": kind, "resources": keys });
            ("weft.control.kind.unsupported", subject, id, now_ns, data)
        }
    };
    json!({
        "specversion": "1.0",
        "type": event_type,
        "source": SOURCE,
        "id": id,
        "time": agent_common::time::rfc3339(time_ns),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    })
}

#[utoipa::path(
    get,
    path = "/events/control",
    tag = "events",
    responses((status = 200, description = "Server-sent control CloudEvents: the drift kept per host, then live events (never ends)", body = String, content_type = "text/event-stream"))
)]
/// Server-sent events: the drift still kept per host (oldest first), then live events.
async fn events(State(state): State<AppState>) -> impl IntoResponse {
    // Subscribe before reading what is kept, so nothing reported in between is missed.
    let receiver = state.control.subscribe();
    let mut kept: Vec<DriftRepaired> = state
        .control
        .hosts()
        .iter()
        .flat_map(|h| state.control.drift_of(h))
        .collect();
    kept.sort_by_key(|d| d.detected_unix_ns);
    let recent = futures::stream::iter(kept.into_iter().map(ControlEvent::Drift));
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                // A lagging subscriber skips what it missed (GET /hosts/{id}/status keeps it).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let to_sse = |event: ControlEvent| super::sse::cloud_event(&cloud_event(&event));
    Sse::new(recent.chain(live).map(to_sse).map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
}

fn summary(s: &HostStatus) -> Value {
    json!({
        "host_id": s.host,
        "controller_epoch": s.epoch,
        "desired_generation": s.desired_generation,
        "applied_generation": s.applied_generation,
        "in_sync": s.applied_generation >= s.desired_generation && s.resources.iter().all(|r| r.desired_generation.is_none() || r.applied()),
        "reported_seconds_ago": s.reported_at.map(|t| t.elapsed().as_secs_f64()),
        "kinds": s.kinds,
        "resources": s.resources.len(),
        "drift_repaired": s.drift.iter().filter(|d| d.error.is_empty()).count(),
    })
}

fn resource(r: &ResourceState) -> Value {
    let status = match (&r.observed, r.desired_generation) {
        (None, _) => "pending",
        (Some(_), _) if r.applied() => "applied",
        (Some(o), _) if o.status == ResourceStatus::Failed => "failed",
        (Some(o), _) if o.status == ResourceStatus::Unsupported => "unsupported",
        (Some(_), None) => "removing",
        (Some(_), Some(_)) => "pending",
    };
    let o = r.observed.as_ref();
    json!({
        "kind": r.resource.kind,
        "key": r.resource.key,
        "desired_generation": r.desired_generation,
        "applied_generation": o.map(|o| o.generation),
        "status": status,
        "error": o.map(|o| o.error.as_str()).filter(|e| !e.is_empty()),
        "measurements": o.map(|o| o.measurements.clone()).unwrap_or_default(),
        "observed": o.map(|o| o.observed.clone()).unwrap_or_default(),
    })
}

fn drift(d: &DriftRepaired) -> Value {
    json!({
        "kind": d.resource.kind,
        "key": d.resource.key,
        "what": d.what,
        "detected_unix_ns": d.detected_unix_ns,
        "repaired_unix_ns": (d.repaired_unix_ns != 0).then_some(d.repaired_unix_ns),
        "error": (!d.error.is_empty()).then_some(d.error.as_str()),
    })
}

#[utoipa::path(
    get,
    path = "/hosts",
    tag = "control",
    responses((status = 200, description = "Every host with desired state or an agent", body = crate::api::openapi::schemas::HostList))
)]
async fn list_hosts(State(state): State<AppState>) -> Json<Value> {
    let hosts: Vec<Value> = state
        .control
        .hosts()
        .iter()
        .filter_map(|h| state.control.status(h))
        .map(|s| summary(&s))
        .collect();
    Json(json!({ "hosts": hosts }))
}

#[utoipa::path(
    get,
    path = "/hosts/{host_id}/status",
    tag = "control",
    params(("host_id" = String, Path, description = "The host")),
    responses(
        (status = 200, description = "The host's desired and applied state", body = crate::api::openapi::schemas::HostStatus),
        (status = 404, description = "No such host"),
    )
)]
async fn host_status(
    State(state): State<AppState>,
    Path(host): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = state.control.status(&host).ok_or_else(|| {
        ApiError::Missing(format!(
            "host {host} has no desired state and no agent; list the hosts with GET /hosts"
        ))
    })?;
    let mut v = summary(&s);
    v["resources"] = s.resources.iter().map(resource).collect();
    v["drift"] = s.drift.iter().map(drift).collect();
    Ok(Json(v))
}
