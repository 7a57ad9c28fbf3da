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

/// Parses and merges; returns the outcome.
pub fn ingest_body(state: &AppState, body: &str) -> Result<Accepted, ApiError> {
    let mut accepted = 0;
    let mut errors = Vec::new();
    for (place, parsed) in parse_body(body)? {
        let error = match parsed {
            Ok(o) => match state.topology.observe_traffic(&o, state.registry.as_ref()) {
                Ok(()) => {
                    accepted += 1;
                    continue;
                }
                Err(e) => LineError {
                    line: place.line,
                    index: place.index,
                    field: Some(e.field().to_owned()),
                    message: e.to_string(),
                },
            },
            Err(message) => LineError {
                line: place.line,
                index: place.index,
                field: None,
                message,
            },
        };
        errors.push(error);
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
