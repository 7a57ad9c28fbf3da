//! The control plane over REST: which hosts there are, and per host its desired state
//! against what its agent reported (per resource: desired and applied generation, status,
//! error, measurements) and the drift its agent found and repaired. What `weft.v1`
//! resources a domain published shows here whatever its kind.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use weft_control::{DriftRepaired, HostStatus, ResourceState, ResourceStatus};

use super::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/hosts", get(list_hosts))
        .route("/hosts/{host_id}/status", get(host_status))
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
