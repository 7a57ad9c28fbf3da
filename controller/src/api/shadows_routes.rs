//! REST for shadow environments: `POST /shadows`, `GET /shadows`,
//! `GET|DELETE /shadows/{shadow_id}`, `PUT /shadows/{shadow_id}/policy`,
//! `POST /shadows/{shadow_id}/synthetic`;
//! `GET /events/shadows` (the shadows' events as server-sent CloudEvents,
//! [`super::shadow_events`]). Bodies and answers are JSON with the field names of
//! `weft.v1.CreateShadowRequest`, `ShadowPolicy` and `ShadowInfo`.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_shadows::{CreateRequest, ShadowError, ShadowInfo, ShadowPolicy};

use super::error::ApiError;
use super::query::Params;
use super::shadow_events;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/shadows", post(create).get(list))
        .route("/shadows/{shadow_id}", get(show).delete(remove))
        .route("/shadows/{shadow_id}/policy", put(policy))
        .route("/shadows/{shadow_id}/synthetic", post(synthetic))
        .route("/events/shadows", get(events))
}

impl From<ShadowError> for ApiError {
    fn from(e: ShadowError) -> Self {
        match e {
            ShadowError::Invalid { field, message } => Self::Unprocessable { field, message },
            ShadowError::NotFound(m) => Self::Missing(m),
            ShadowError::Exists(m) => Self::Conflict(m),
            ShadowError::Internal(m) => Self::Internal(m),
        }
    }
}

/// `weft.v1.CreateShadowRequest` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    production: String,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    policy: ShadowPolicy,
    #[serde(default)]
    noise_baseline: bool,
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

fn view(info: &ShadowInfo) -> Result<Value, ApiError> {
    serde_json::to_value(info).map_err(|e| ApiError::Internal(format!("encoding a shadow: {e}")))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b: CreateBody = json_body(&body)?;
    let info = state
        .shadows
        .create(CreateRequest {
            id: b.id,
            production: b.production,
            nodes: b.nodes,
            hosts: b.hosts,
            policy: b.policy,
            noise_baseline: b.noise_baseline,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/shadows/{}", info.id))],
        Json(view(&info)?),
    )
        .into_response())
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = state
        .shadows
        .infos()
        .iter()
        .map(view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "shadows": all })))
}

fn missing(id: &str) -> ApiError {
    ApiError::Missing(format!(
        "shadow {id:?} does not exist; list the shadows with GET /shadows"
    ))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.shadows.info(&id).ok_or_else(|| missing(&id))?;
    Ok(Json(view(&info)?))
}

/// The body is a `ShadowPolicy` as JSON; it replaces the shadow's.
async fn policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let p: ShadowPolicy = json_body(&body)?;
    let info = state.shadows.update_policy(&id, p).await?;
    Ok(Json(view(&info)?))
}

/// `{"multiplier": 3.0, "duration_seconds": 60}`: replay what the sinks recorded into the
/// shadow at that multiple of its rate (multiplier 0 stops a run).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyntheticBody {
    multiplier: f64,
    #[serde(default)]
    duration_seconds: u32,
}

async fn synthetic(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: SyntheticBody = json_body(&body)?;
    let info = state
        .shadows
        .synthetic(&id, b.multiplier, b.duration_seconds)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view(&info)?)).into_response())
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.shadows.delete(&id).await?;
    Ok(Json(view(&info)?))
}

/// Server-sent events: the shadows' CloudEvents from now on (`?shadow=ID`: one shadow's).
async fn events(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["shadow"])?;
    let shadow = params.0.get("shadow").filter(|n| !n.is_empty()).cloned();
    let to_sse = |e: shadow_events::ShadowCloudEvent| super::sse::cloud_event(&e.to_json());
    let stream = shadow_events::subscribe(&state, shadow)
        .map(to_sse)
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
