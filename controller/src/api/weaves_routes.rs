//! REST for weaves: `POST /weaves`, `GET /weaves[?environment=]`,
//! `GET|DELETE /weaves/{weave_id}`, `POST /weaves/{weave_id}/routes`,
//! `DELETE /weaves/{weave_id}/routes/{port}[?node=]`,
//! `POST|DELETE /weaves/{weave_id}/activate` (POST with the environment's id: back to
//! the environment), `POST /weaves/{weave_id}/sync` (the id is the destination: a weave or
//! the environment); `GET /events/weaves[?weave=]` (server-sent CloudEvents,
//! [`super::weave_events`]). Answers are JSON with the field names of `weft.v1.WeaveInfo`
//! and `SyncVolumesResponse`.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_weaves::{WeaveError, WeaveInfo};

use super::error::ApiError;
use super::query::Params;
use super::weave_events;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/weaves", post(create).get(list))
        .route("/weaves/{weave_id}", get(show).delete(remove))
        .route("/weaves/{weave_id}/routes", post(add_route))
        .route("/weaves/{weave_id}/routes/{port}", delete(remove_route))
        .route(
            "/weaves/{weave_id}/activate",
            post(activate).delete(deactivate),
        )
        .route("/weaves/{weave_id}/sync", post(sync))
        .route("/events/weaves", get(events))
}

impl From<WeaveError> for ApiError {
    fn from(e: WeaveError) -> Self {
        match e {
            WeaveError::Invalid { field, message } => Self::Unprocessable { field, message },
            WeaveError::NotFound(m) => Self::Missing(m),
            WeaveError::Conflict(m) => Self::Conflict(m),
            WeaveError::Timeout(m) => Self::Timeout(m),
            WeaveError::Internal(m) => Self::Internal(m),
        }
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

fn view(info: &WeaveInfo) -> Result<Value, ApiError> {
    serde_json::to_value(info).map_err(|e| ApiError::Internal(format!("encoding a weave: {e}")))
}

/// `weft.v1.CreateWeaveRequest` as JSON; `at` an RFC 3339 time or unix nanoseconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    environment: String,
    #[serde(default)]
    at: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

/// `at`: absent, null or "now": now; an integer: unix ns; a string: RFC 3339.
fn at(v: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "now" => Ok(None),
        Some(Value::String(s)) => {
            agent_common::time::parse_rfc3339(s)
                .map(Some)
                .map_err(|e| ApiError::Unprocessable {
                    field: "at".into(),
                    message: format!("{s:?} is not an RFC 3339 time: {e}"),
                })
        }
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| ApiError::BadField {
            field: "at".into(),
            message: format!("{n} is not unix nanoseconds (a whole number >= 0)"),
        }),
        Some(other) => Err(ApiError::BadField {
            field: "at".into(),
            message: format!(
                "{other} is neither an RFC 3339 time (a string) nor unix nanoseconds (an integer)"
            ),
        }),
    }
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b: CreateBody = json_body(&body)?;
    let at = at(b.at.as_ref())?;
    let info = state.weaves.create(&b.environment, at, b.id).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/weaves/{}", info.id))],
        Json(view(&info)?),
    )
        .into_response())
}

async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let params = Params(params);
    params.only(&["environment"])?;
    let env = params.0.get("environment").filter(|e| !e.is_empty());
    let all = state
        .weaves
        .infos(env.map(String::as_str))
        .iter()
        .map(view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "weaves": all })))
}

fn missing(id: &str) -> ApiError {
    ApiError::Missing(format!(
        "weave {id:?} does not exist; list the weaves with GET /weaves"
    ))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.info(&id).ok_or_else(|| missing(&id))?;
    Ok(Json(view(&info)?))
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.delete(&id).await?;
    Ok(Json(view(&info)?))
}

/// `{"port": 80, "node": "web"}` (`node` left out: every node that declares the port).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    port: u32,
    #[serde(default)]
    node: Option<String>,
}

async fn add_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: RouteBody = json_body(&body)?;
    let info = state
        .weaves
        .route(&id, b.port, b.node.as_deref(), false)
        .await?;
    Ok(Json(view(&info)?))
}

async fn remove_route(
    State(state): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let params = Params(params);
    params.only(&["node"])?;
    let port: u32 = port
        .parse()
        .map_err(|_| ApiError::parameter("port", format!("{port:?} is not a port number")))?;
    let node = params.0.get("node").map(String::as_str);
    let info = state.weaves.route(&id, port, node, true).await?;
    Ok(Json(view(&info)?))
}

async fn activate(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.activate(&id).await?;
    Ok(Json(view(&info)?))
}

async fn deactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.deactivate(&id).await?;
    Ok(Json(view(&info)?))
}

/// `{"source": "shop-w1", "volume": "data"}`; the path's id is the destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    source: String,
    volume: String,
}

async fn sync(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: SyncBody = json_body(&body)?;
    let r = state.weaves.sync(&b.source, &id, &b.volume).await?;
    serde_json::to_value(&r)
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("encoding a sync: {e}")))
}

/// Server-sent events: the weaves' CloudEvents from now on (`?weave=ID`: one weave's, or
/// one environment's).
async fn events(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["weave"])?;
    let id = params.0.get("weave").filter(|n| !n.is_empty()).cloned();
    let to_sse = |e: weft_weaves::WeaveEvent| super::sse::cloud_event(&weave_events::to_json(&e));
    let stream = weave_events::subscribe(&state, id)
        .map(to_sse)
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
