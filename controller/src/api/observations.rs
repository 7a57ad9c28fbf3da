//! `POST /observations`: a JSON array or JSON lines of `TrafficObservation`s. Valid ones
//! are merged, invalid ones reported by line (JSON lines) or index (array).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use std::time::Duration;

use weft_topology::observation::TrafficObservation;
use weft_topology::time::now_unix_ns;
use weft_topology::topology::ObservationError;

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
    /// The limit that kept a valid observation out (`services`, `dependencies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub errors: Vec<LineError>,
    /// Every error is a limit: nothing was wrong with the observations, there was no room.
    #[serde(skip)]
    pub all_full: bool,
}

/// Where an observation is in the body: (line, index).
type Place = (Option<usize>, Option<usize>);

fn describe(place: Place) -> String {
    match place {
        (Some(line), _) => format!("line {line}"),
        (_, Some(index)) => format!("element {index}"),
        (None, None) => "the observation".to_owned(),
    }
}

/// Parses every observation of the body: the valid ones with their place, and the errors.
/// The observations of a body that parsed, with their place, and the errors of the rest.
type Parsed = (Vec<(Place, TrafficObservation)>, Vec<LineError>);

fn parse(body: &str) -> Result<Parsed, ApiError> {
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return Err(ApiError::BadBody(
            "empty: send a JSON array or JSON lines of observations".into(),
        ));
    }
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    let mut keep =
        |place: Place, result: Result<TrafficObservation, serde_json::Error>| match result {
            Ok(o) => parsed.push((place, o)),
            Err(e) => errors.push(LineError {
                line: place.0,
                index: place.1,
                field: None,
                limit: None,
                message: e.to_string(),
            }),
        };
    if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(body)
            .map_err(|e| ApiError::BadBody(format!("not a JSON array: {e}")))?;
        for (index, item) in items.into_iter().enumerate() {
            keep((None, Some(index)), serde_json::from_value(item));
        }
    } else {
        for (number, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            keep((Some(number + 1), None), serde_json::from_str(line));
        }
    }
    Ok((parsed, errors))
}

/// Parses, checks every timestamp, and merges. A timestamp outside the accepted window
/// refuses the whole body (422, nothing merged): it says the sender's clock or data is
/// wrong, not that one line is.
pub fn ingest_body(state: &AppState, body: &str) -> Result<Accepted, ApiError> {
    let (parsed, mut errors) = parse(body)?;
    let now = now_unix_ns();
    for (place, o) in &parsed {
        if let Err(ObservationError::Timestamp(e)) = state.topology.check_observation_time(o, now) {
            let detail = e.to_string();
            let detail = detail
                .split_once(": ")
                .map_or(detail.as_str(), |(_, rest)| rest);
            return Err(ApiError::Unprocessable {
                field: e.field.to_owned(),
                message: format!("{}: {detail}; nothing was merged", describe(*place)),
            });
        }
    }
    let mut accepted = 0;
    let mut full = 0;
    for ((line, index), o) in &parsed {
        match state.topology.observe_traffic(o, state.registry.as_ref()) {
            Ok(()) => accepted += 1,
            Err(e) => {
                let limit = match &e {
                    ObservationError::Full(f) => {
                        full += 1;
                        Some(f.limit.as_str())
                    }
                    _ => None,
                };
                errors.push(LineError {
                    line: *line,
                    index: *index,
                    field: e.field().map(str::to_owned),
                    limit,
                    message: e.to_string(),
                });
            }
        }
    }
    errors.sort_by_key(|e| (e.line, e.index));
    let all_full = full > 0 && full == errors.len();
    Ok(Accepted {
        accepted,
        errors,
        all_full,
    })
}

pub async fn post_observations(
    State(state): State<AppState>,
    body: String,
) -> Result<impl IntoResponse, ApiError> {
    let outcome = ingest_body(&state, &body)?;
    if outcome.accepted == 0 && outcome.all_full {
        return Err(ApiError::Unavailable {
            message: format!(
                "none of the {} observations was merged: {}",
                outcome.errors.len(),
                outcome.errors[0].message
            ),
            retry_after: state
                .limits
                .config
                .idle_timeout
                .min(Duration::from_secs(60)),
        });
    }
    let status = if outcome.accepted == 0 && !outcome.errors.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)))
}
