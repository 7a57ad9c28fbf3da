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

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, show, policy, synthetic, remove, events))]
pub struct Doc;

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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    production: String,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
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

#[utoipa::path(
    post,
    path = "/shadows",
    tag = "shadows",
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The shadow created", body = crate::api::openapi::schemas::Shadow, headers(("Location" = String, description = "The shadow's URL"))),
        (status = 404, description = "No such production network"),
        (status = 409, description = "A shadow of that id exists"),
        (status = 422, description = "A field is not valid"),
    )
)]
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

#[utoipa::path(
    get,
    path = "/shadows",
    tag = "shadows",
    responses((status = 200, description = "Every shadow", body = crate::api::openapi::schemas::ShadowList))
)]
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

#[utoipa::path(
    get,
    path = "/shadows/{shadow_id}",
    tag = "shadows",
    params(("shadow_id" = String, Path, description = "The shadow")),
    responses(
        (status = 200, description = "The shadow", body = crate::api::openapi::schemas::Shadow),
        (status = 404, description = "No such shadow"),
    )
)]
async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.shadows.info(&id).ok_or_else(|| missing(&id))?;
    Ok(Json(view(&info)?))
}

#[utoipa::path(
    put,
    path = "/shadows/{shadow_id}/policy",
    tag = "shadows",
    params(("shadow_id" = String, Path, description = "The shadow")),
    request_body(content = Object, content_type = "application/json", description = "A ShadowPolicy"),
    responses(
        (status = 200, description = "The shadow with its new policy", body = crate::api::openapi::schemas::Shadow),
        (status = 404, description = "No such shadow"),
        (status = 422, description = "The policy is not valid"),
    )
)]
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SyntheticBody {
    multiplier: f64,
    #[serde(default)]
    duration_seconds: u32,
}

#[utoipa::path(
    post,
    path = "/shadows/{shadow_id}/synthetic",
    tag = "shadows",
    params(("shadow_id" = String, Path, description = "The shadow")),
    request_body(content = SyntheticBody, content_type = "application/json"),
    responses(
        (status = 202, description = "The replay started (or stopped, multiplier 0)", body = crate::api::openapi::schemas::Shadow),
        (status = 404, description = "No such shadow"),
        (status = 422, description = "A field is not valid"),
    )
)]
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

#[utoipa::path(
    delete,
    path = "/shadows/{shadow_id}",
    tag = "shadows",
    params(("shadow_id" = String, Path, description = "The shadow")),
    responses(
        (status = 200, description = "The shadow removed", body = crate::api::openapi::schemas::Shadow),
        (status = 404, description = "No such shadow"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.shadows.delete(&id).await?;
    Ok(Json(view(&info)?))
}

#[utoipa::path(
    get,
    path = "/events/shadows",
    tag = "events",
    params(("shadow" = Option<String>, Query, description = "Only this shadow's events")),
    responses((status = 200, description = "Server-sent shadow CloudEvents from now on (never ends)", body = String, content_type = "text/event-stream"))
)]
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
