//! `GET /replica/topology`: this controller replica's own topology, whole, as checkpoint
//! entries (each dependency's head and time buckets, each service): what another replica
//! merges into the answer of a topology query ([`crate::replicas`]).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use weft_topology::topology::CheckpointState;

use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(replica_topology))]
pub struct Doc;

/// The entries of this replica's own topology (not merged with the other replicas').
pub fn entries(state: &AppState) -> Vec<(String, Vec<u8>)> {
    state
        .topology
        .checkpoint(0, &CheckpointState::default())
        .puts
}

/// This replica's own topology, every entry.
#[utoipa::path(
    get,
    path = "/replica/topology",
    tag = "topology",
    responses(
        (status = 200, description = "`entries`: [key, value] pairs of this replica's own topology (the flow records its agents sent), the format of its topology checkpoints; other replicas merge them into their topology answers", body = Object),
    )
)]
pub async fn replica_topology(State(state): State<AppState>) -> Json<Value> {
    let entries: Vec<Value> = entries(&state)
        .into_iter()
        .map(|(key, value)| {
            // Checkpoint values are JSON; one that is not goes as a string.
            let value = serde_json::from_slice::<Value>(&value)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&value).into_owned()));
            json!([key, value])
        })
        .collect();
    Json(json!({ "entries": entries }))
}
