//! `POST /observations`: a JSON array or JSON lines of `TrafficObservation`s. Valid ones
//! are merged, invalid ones reported by line (JSON lines) or index (array).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use weft_topology::observation::TrafficObservation;

use super::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct LineError {
    /// 1-based line of a JSON-lines body, or 0-based index of an array element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub errors: Vec<LineError>,
}

/// Parses and merges; returns the outcome.
pub fn ingest_body(state: &AppState, body: &str) -> Result<Accepted, ApiError> {
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return Err(ApiError::BadBody(
            "empty: send a JSON array or JSON lines of observations".into(),
        ));
    }
    let mut accepted = 0;
    let mut errors = Vec::new();
    let mut merge = |o: &TrafficObservation, line: Option<usize>, index: Option<usize>| match state
        .topology
        .observe_traffic(o, state.registry.as_ref())
    {
        Ok(()) => accepted += 1,
        Err(e) => errors.push(LineError {
            line,
            index,
            field: e.field().map(str::to_owned),
            message: e.to_string(),
        }),
    };
    if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(body)
            .map_err(|e| ApiError::BadBody(format!("not a JSON array: {e}")))?;
        let mut parse_errors = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match serde_json::from_value::<TrafficObservation>(item) {
                Ok(o) => merge(&o, None, Some(index)),
                Err(e) => parse_errors.push(LineError {
                    line: None,
                    index: Some(index),
                    field: None,
                    message: e.to_string(),
                }),
            }
        }
        errors.extend(parse_errors);
    } else {
        let mut parse_errors = Vec::new();
        for (number, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<TrafficObservation>(line) {
                Ok(o) => merge(&o, Some(number + 1), None),
                Err(e) => parse_errors.push(LineError {
                    line: Some(number + 1),
                    index: None,
                    field: None,
                    message: e.to_string(),
                }),
            }
        }
        errors.extend(parse_errors);
    }
    errors.sort_by_key(|e| (e.line, e.index));
    Ok(Accepted { accepted, errors })
}

pub async fn post_observations(
    State(state): State<AppState>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let outcome = ingest_body(&state, &body)?;
    let status = if outcome.accepted == 0 && !outcome.errors.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)))
}
