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
use weft_topology::topology::{ObservationError, check_fields};

use super::error::{ApiError, problem_with};
use super::openapi::topology_wire::{self, ObservationsAccepted, ObservationsRefused};
use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(post_observations))]
pub struct Doc;

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

/// Where an item of a body was: the 1-based line of a JSON-lines body, or the 0-based
/// index of an array element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub line: Option<usize>,
    pub index: Option<usize>,
}

/// One item of a body: the observation, or why it is not one (serde's message).
pub type Item = (Place, Result<TrafficObservation, String>);

/// Parses a `POST /observations` body into its items, as the handler does, without merging
/// them: a JSON array (items by index) or JSON lines (by line; blank lines are skipped).
/// Fails only when the body is empty or an array is not valid JSON.
pub fn parse_body(body: &str) -> Result<Vec<Item>, ApiError> {
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return Err(ApiError::BadBody(
            "empty: send a JSON array or JSON lines of observations".into(),
        ));
    }
    if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(body)
            .map_err(|e| ApiError::BadBody(format!("not a JSON array: {e}")))?;
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let place = Place {
                    line: None,
                    index: Some(index),
                };
                let parsed =
                    serde_json::from_value::<TrafficObservation>(item).map_err(|e| e.to_string());
                (place, parsed)
            })
            .collect())
    } else {
        Ok(body
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                let place = Place {
                    line: Some(number + 1),
                    index: None,
                };
                let parsed =
                    serde_json::from_str::<TrafficObservation>(line).map_err(|e| e.to_string());
                (place, parsed)
            })
            .collect())
    }
}

fn describe(place: Place) -> String {
    match (place.line, place.index) {
        (Some(line), _) => format!("line {line}"),
        (_, Some(index)) => format!("element {index}"),
        (None, None) => "the observation".to_owned(),
    }
}

/// A 422 for the whole body: `place` and what is wrong with its `field`, nothing merged.
fn refuse_body(place: Place, field: &str, reason: &str) -> ApiError {
    ApiError::Unprocessable {
        field: field.to_owned(),
        message: format!("{}: {reason}; nothing was merged", describe(place)),
    }
}

/// Parses, checks every timestamp and every name, and merges. A timestamp outside the
/// accepted window refuses the whole body (422, nothing merged): it says the sender's clock
/// or data is wrong, not that one line is. So does a control character (or another
/// invisible one) in a host, method or path: the sender is not writing names.
pub fn ingest_body(state: &AppState, body: &str) -> Result<Accepted, ApiError> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (place, item) in parse_body(body)? {
        match item {
            Ok(o) => parsed.push((place, o)),
            Err(message) => errors.push(LineError {
                line: place.line,
                index: place.index,
                field: None,
                limit: None,
                message,
            }),
        }
    }
    let now = now_unix_ns();
    for (place, o) in &parsed {
        if let Err(e @ ObservationError::NonPrintable { field, .. }) = check_fields(o) {
            return Err(refuse_body(*place, field, &e.reason()));
        }
        if let Err(e @ ObservationError::Timestamp(_)) =
            state.topology.check_observation_time(o, now)
        {
            return Err(refuse_body(
                *place,
                e.field().unwrap_or("timestamp_unix_ns"),
                &e.reason(),
            ));
        }
    }
    let mut accepted = 0;
    let mut full = 0;
    for (place, o) in &parsed {
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
                    line: place.line,
                    index: place.index,
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

#[utoipa::path(
    post,
    path = "/observations",
    tag = "observations",
    request_body(
        description = "A JSON array of observations, or JSON lines (one observation a line)",
        content(
            (Vec<topology_wire::AnyObservation> = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 200, description = "Some or all were merged; the others are listed", body = ObservationsAccepted),
        (status = 400, description = "The body is not observations, or none was valid (then the problem's `errors` lists why)", body = ObservationsRefused, content_type = "application/problem+json"),
        (status = 422, description = "A timestamp outside the accepted window or a name with control characters: nothing was merged"),
        (status = 503, description = "No observation fitted in the limits (services, dependencies) or another limit is reached"),
    )
)]
pub async fn post_observations(
    State(state): State<AppState>,
    body: String,
) -> Result<axum::response::Response, ApiError> {
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
    if outcome.accepted == 0 && !outcome.errors.is_empty() {
        // Nothing taken: a problem, with the per-item report as its extension members.
        let detail = format!(
            "none of the {} observations is valid: {}",
            outcome.errors.len(),
            outcome.errors[0].message
        );
        let extensions = match serde_json::to_value(&outcome) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        return Ok(problem_with(StatusCode::BAD_REQUEST, detail, extensions));
    }
    Ok((StatusCode::OK, Json(outcome)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"timestamp_unix_ns":1,"source":{"host":"a","port":1},"destination":{"host":"b","port":80},"protocol":"http","bytes_sent":0,"bytes_received":0,"latency_ms":1.5,"status_code":null,"method":null,"path":null}"#;

    #[test]
    fn json_lines_are_numbered_from_one_and_blank_lines_skipped() {
        let body = format!("{OK}\n\n{{\"nope\": 1}}\n{OK}\n");
        let items = parse_body(&body).unwrap();
        let lines: Vec<Option<usize>> = items.iter().map(|(p, _)| p.line).collect();
        assert_eq!(lines, [Some(1), Some(3), Some(4)]);
        assert!(items[0].1.is_ok() && items[2].1.is_ok());
        let message = items[1].1.as_ref().unwrap_err();
        assert!(message.contains("missing field"), "{message}");
    }

    #[test]
    fn arrays_are_indexed_from_zero_and_must_be_json() {
        let items = parse_body(&format!(" [{OK}, 3]")).unwrap();
        assert_eq!(
            items[1].0,
            Place {
                line: None,
                index: Some(1)
            }
        );
        assert!(items[0].1.is_ok() && items[1].1.is_err());
        assert!(
            matches!(parse_body("[1,"), Err(ApiError::BadBody(m)) if m.starts_with("not a JSON array"))
        );
        assert!(matches!(parse_body(" \n "), Err(ApiError::BadBody(_))));
    }
}
