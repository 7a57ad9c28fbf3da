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

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create,
    list,
    show,
    remove,
    add_route,
    remove_route,
    activate,
    deactivate,
    sync,
    events
))]
pub struct Doc;

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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    environment: String,
    /// An RFC 3339 time, unix nanoseconds, or "now" (default).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
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

#[utoipa::path(
    post,
    path = "/weaves",
    tag = "weaves",
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The weave created", body = crate::api::openapi::schemas::Weave, headers(("Location" = String, description = "The weave's URL"))),
        (status = 404, description = "No such environment"),
        (status = 409, description = "A weave of that id exists"),
        (status = 422, description = "A field is not valid"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
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

#[utoipa::path(
    get,
    path = "/weaves",
    tag = "weaves",
    params(("environment" = Option<String>, Query, description = "Only this environment's weaves")),
    responses((status = 200, description = "The weaves", body = crate::api::openapi::schemas::WeaveList))
)]
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

#[utoipa::path(
    get,
    path = "/weaves/{weave_id}",
    tag = "weaves",
    params(("weave_id" = String, Path, description = "The weave")),
    responses(
        (status = 200, description = "The weave", body = crate::api::openapi::schemas::Weave),
        (status = 404, description = "No such weave"),
    )
)]
async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.info(&id).ok_or_else(|| missing(&id))?;
    Ok(Json(view(&info)?))
}

#[utoipa::path(
    delete,
    path = "/weaves/{weave_id}",
    tag = "weaves",
    params(("weave_id" = String, Path, description = "The weave")),
    responses(
        (status = 200, description = "The weave removed", body = crate::api::openapi::schemas::Weave),
        (status = 404, description = "No such weave"),
        (status = 409, description = "The weave cannot be removed now"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.delete(&id).await?;
    Ok(Json(view(&info)?))
}

/// `{"port": 80, "node": "web"}` (`node` left out: every node that declares the port);
/// with `"header": "x-branch", "header_value": "new"`, only the HTTP/1.1 requests that
/// carry that header (`header_value` left out or empty: any value) go to the weave, the
/// others to the environment.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    port: u32,
    #[serde(default)]
    node: Option<String>,
    /// Route by request: a request header (case-insensitive).
    #[serde(default)]
    header: Option<String>,
    /// The header's value, exactly (after trimming); empty: any value.
    #[serde(default)]
    header_value: Option<String>,
}

/// The request match of a route's fields: `header_value` without `header` is refused.
fn request_match(
    header: Option<&str>,
    value: Option<&str>,
) -> Result<Option<weft_weaves::RequestMatch>, ApiError> {
    match (header.filter(|h| !h.is_empty()), value) {
        (Some(h), v) => Ok(Some(weft_weaves::RequestMatch {
            header: h.to_owned(),
            value: v.unwrap_or_default().to_owned(),
        })),
        (None, Some(v)) if !v.is_empty() => Err(ApiError::parameter(
            "header_value",
            "a header value without a header: set \"header\" too",
        )),
        (None, _) => Ok(None),
    }
}

#[utoipa::path(
    post,
    path = "/weaves/{weave_id}/routes",
    tag = "weaves",
    params(("weave_id" = String, Path, description = "The weave")),
    request_body(content = RouteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The weave with the route", body = crate::api::openapi::schemas::Weave),
        (status = 404, description = "No such weave"),
        (status = 409, description = "The route conflicts"),
        (status = 422, description = "No node declares the port"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn add_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: RouteBody = json_body(&body)?;
    let by_request = request_match(b.header.as_deref(), b.header_value.as_deref())?;
    let info = state
        .weaves
        .route(&id, b.port, b.node.as_deref(), by_request.as_ref(), false)
        .await?;
    Ok(Json(view(&info)?))
}

#[utoipa::path(
    delete,
    path = "/weaves/{weave_id}/routes/{port}",
    tag = "weaves",
    params(
        ("weave_id" = String, Path, description = "The weave"),
        ("port" = u32, Path, description = "The routed port"),
        ("node" = Option<String>, Query, description = "Only this node's route"),
        ("header" = Option<String>, Query, description = "Only the route by this request header"),
        ("header_value" = Option<String>, Query, description = "... with this value"),
    ),
    responses(
        (status = 200, description = "The weave without the route", body = crate::api::openapi::schemas::Weave),
        (status = 404, description = "No such weave"),
        (status = 409, description = "The route cannot be removed now"),
        (status = 422, description = "No such route"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn remove_route(
    State(state): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let params = Params(params);
    params.only(&["node", "header", "header_value"])?;
    let port: u32 = port
        .parse()
        .map_err(|_| ApiError::parameter("port", format!("{port:?} is not a port number")))?;
    let node = params.0.get("node").map(String::as_str);
    let by_request = request_match(
        params.0.get("header").map(String::as_str),
        params.0.get("header_value").map(String::as_str),
    )?;
    let info = state
        .weaves
        .route(&id, port, node, by_request.as_ref(), true)
        .await?;
    Ok(Json(view(&info)?))
}

#[utoipa::path(
    post,
    path = "/weaves/{weave_id}/activate",
    tag = "weaves",
    params(("weave_id" = String, Path, description = "The weave")),
    responses(
        (status = 200, description = "The weave, active", body = crate::api::openapi::schemas::Weave),
        (status = 404, description = "No such weave"),
        (status = 409, description = "The weave cannot be activated now"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn activate(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.activate(&id).await?;
    Ok(Json(view(&info)?))
}

#[utoipa::path(
    delete,
    path = "/weaves/{weave_id}/activate",
    tag = "weaves",
    params(("weave_id" = String, Path, description = "The weave")),
    responses(
        (status = 200, description = "The weave, inactive", body = crate::api::openapi::schemas::Weave),
        (status = 404, description = "No such weave"),
        (status = 409, description = "The weave cannot be deactivated now"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn deactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = state.weaves.deactivate(&id).await?;
    Ok(Json(view(&info)?))
}

/// `{"source": "shop-w1", "volume": "data"}`; the path's id is the destination.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    source: String,
    volume: String,
}

#[utoipa::path(
    post,
    path = "/weaves/{weave_id}/sync",
    tag = "weaves",
    params(("weave_id" = String, Path, description = "The weave")),
    request_body(content = SyncBody, content_type = "application/json"),
    responses(
        (status = 200, description = "What was copied", body = Object),
        (status = 404, description = "No such weave or source"),
        (status = 409, description = "The copy cannot be made now"),
        (status = 422, description = "A field is not valid"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
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

#[utoipa::path(
    get,
    path = "/events/weaves",
    tag = "events",
    params(("weave" = Option<String>, Query, description = "Only this weave's (or environment's) events")),
    responses((status = 200, description = "Server-sent weave CloudEvents from now on (never ends)", body = String, content_type = "text/event-stream"))
)]
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
