//! REST for TDL networks and mirrors: `POST /networks` (a TDL), `POST /networks/mirror`,
//! `GET /networks`, `GET|PUT|DELETE /networks/{network_id}`,
//! `GET /networks/{network_id}/status`; `GET /events/networks` (the networks' events as
//! server-sent CloudEvents, [`super::network_events`]); `GET /tdl/export` (a TDL of what
//! runs, [`crate::export`]).
//!
//! A TDL is sent as the body with `Content-Type: application/yaml` (or `text/yaml`,
//! `text/plain`), or as JSON `{"tdl": "...", "file_name": "prod.tdl", "hosts": [...]}`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_networks::{CreateRequest, MirrorRequest, NetworkError, NetworkRecord, Role, SourceDrift};
use weft_topology::time::rfc3339;

use super::error::ApiError;
use super::network_events;
use super::query::Params;
use crate::export::{DEFAULT_NAME, ExportError, ExportRequest};
use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create,
    mirror,
    list,
    show,
    update,
    remove,
    status,
    history,
    snapshots,
    take_snapshot,
    sync,
    events,
    export
))]
pub struct Doc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/networks", post(create).get(list))
        .route("/networks/mirror", post(mirror))
        .route(
            "/networks/{network_id}",
            get(show).put(update).delete(remove),
        )
        .route("/networks/{network_id}/status", get(status))
        .route("/networks/{network_id}/sync", post(sync))
        .route("/networks/{network_id}/history", get(history))
        .route(
            "/networks/{network_id}/snapshots",
            get(snapshots).post(take_snapshot),
        )
        .route("/events/networks", get(events))
        .route("/tdl/export", get(export))
}

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        match e {
            NetworkError::Invalid(m) => Self::Unprocessable {
                field: "tdl".into(),
                message: m,
            },
            NetworkError::NotFound(m) => Self::Missing(m),
            NetworkError::Exists(m) | NetworkError::Conflict(m) => Self::Conflict(m),
            NetworkError::Timeout(m) => Self::Timeout(m),
            NetworkError::Internal(m) => Self::Internal(m),
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TdlBody {
    tdl: String,
    #[serde(default)]
    file_name: String,
    #[serde(default)]
    hosts: Vec<String>,
    /// `propagate` (default) or `repair`; chosen at create.
    #[serde(default)]
    source_drift: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MirrorBody {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    tdl: Option<String>,
    #[serde(default)]
    file_name: String,
    destination: String,
    hosts: Vec<String>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == "application/json")
}

fn tdl_body(headers: &HeaderMap, body: &[u8]) -> Result<TdlBody, ApiError> {
    if is_json(headers) {
        return serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()));
    }
    let tdl = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadBody(format!("the TDL is not UTF-8: {e}")))?;
    Ok(TdlBody {
        tdl: tdl.to_owned(),
        ..Default::default()
    })
}

fn summary(r: &NetworkRecord) -> Value {
    let (role, source) = match &r.role {
        Role::Source => ("source", None),
        Role::Mirror { source } => ("mirror", source.clone()),
        Role::Weave { environment, .. } => ("weave", Some(environment.clone())),
    };
    json!({
        "network_id": r.id,
        "role": role,
        "source": source,
        "vni": r.vni,
        "hosts": r.hosts(),
        "nodes": r.network.nodes.len(),
        "revision": r.revision,
        "created": rfc3339(r.created_unix_ns),
        "source_drift": (r.role == Role::Source).then(|| r.source_drift.as_str()),
    })
}

fn detail(r: &NetworkRecord) -> Value {
    let mut v = summary(r);
    let nodes: serde_json::Map<String, Value> = r
        .network
        .nodes
        .keys()
        .map(|n| {
            (
                n.clone(),
                json!({
                    "host": r.placement.get(n),
                    "addresses": r.addresses.get(n).map(|a| a.iter().map(|x| x.cidr.clone()).collect::<Vec<_>>()).unwrap_or_default(),
                    "namespace": agent_common::netnames::netns(agent_common::netnames::DEFAULT_NETNS_PREFIX, &r.id, n),
                }),
            )
        })
        .collect();
    v["placement"] = Value::Object(nodes);
    v["tdl"] = Value::String(weft_tdl::format(&r.network));
    v
}

#[utoipa::path(
    post,
    path = "/networks",
    tag = "networks",
    request_body(description = "A TDL, or JSON with the TDL and options", content(
        (TdlBody = "application/json"),
        (String = "application/yaml"),
        (String = "text/yaml"),
        (String = "text/plain"),
    )),
    responses(
        (status = 201, description = "The network created", body = crate::api::openapi::schemas::NetworkDetail, headers(("Location" = String, description = "The network's URL"))),
        (status = 409, description = "A network of that name exists, or the placement conflicts"),
        (status = 422, description = "The TDL is not valid"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b = tdl_body(&headers, &body)?;
    let source_drift = match b.source_drift.as_deref() {
        None => SourceDrift::default(),
        Some(s) => s.parse().map_err(ApiError::BadBody)?,
    };
    let rec = state
        .networks
        .create(CreateRequest {
            tdl: b.tdl,
            file_name: b.file_name,
            hosts: b.hosts,
            source_drift,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/networks/{}", rec.id))],
        Json(detail(&rec)),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/networks/mirror",
    tag = "networks",
    request_body(content = MirrorBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The mirror created", body = crate::api::openapi::schemas::NetworkDetail, headers(("Location" = String, description = "The mirror's URL"))),
        (status = 404, description = "No such source network"),
        (status = 409, description = "The destination exists"),
        (status = 422, description = "The request is not valid"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn mirror(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let b: MirrorBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
    let rec = state
        .networks
        .mirror(MirrorRequest {
            source: b.source,
            tdl: b.tdl,
            file_name: b.file_name,
            destination: b.destination,
            hosts: b.hosts,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/networks/{}", rec.id))],
        Json(detail(&rec)),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/networks",
    tag = "networks",
    responses((status = 200, description = "Every network", body = crate::api::openapi::schemas::NetworkList))
)]
async fn list(State(state): State<AppState>) -> Json<Value> {
    let all: Vec<Value> = state.networks.list().iter().map(summary).collect();
    Json(json!({ "networks": all }))
}

fn missing(id: &str) -> ApiError {
    ApiError::Missing(format!(
        "network {id:?} does not exist; list the networks with GET /networks"
    ))
}

#[utoipa::path(
    get,
    path = "/networks/{network_id}",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    responses(
        (status = 200, description = "The network", body = crate::api::openapi::schemas::NetworkDetail),
        (status = 404, description = "No such network"),
    )
)]
async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = state.networks.get(&id).ok_or_else(|| missing(&id))?;
    Ok(Json(detail(&rec)))
}

#[utoipa::path(
    put,
    path = "/networks/{network_id}",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    request_body(description = "The new TDL", content(
        (TdlBody = "application/json"),
        (String = "application/yaml"),
        (String = "text/yaml"),
        (String = "text/plain"),
    )),
    responses(
        (status = 200, description = "The network with what changed", body = crate::api::openapi::schemas::NetworkDetail),
        (status = 404, description = "No such network"),
        (status = 409, description = "The change conflicts"),
        (status = 422, description = "The TDL is not valid"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b = tdl_body(&headers, &body)?;
    if b.source_drift.is_some() {
        return Err(ApiError::BadBody(
            "source_drift is chosen when the network is created (POST /networks); leave it out of PUT".into(),
        ));
    }
    let (rec, changes) = state.networks.update(&id, &b.tdl, &b.file_name).await?;
    let mut v = detail(&rec);
    v["changes"] = json!(changes);
    Ok(Json(v))
}

#[utoipa::path(
    delete,
    path = "/networks/{network_id}",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    responses(
        (status = 200, description = "The network removed", body = crate::api::openapi::schemas::NetworkSummary),
        (status = 404, description = "No such network"),
        (status = 409, description = "Something depends on it"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = state.networks.delete(&id).await?;
    Ok(Json(summary(&rec)))
}

#[utoipa::path(
    get,
    path = "/networks/{network_id}/status",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    responses(
        (status = 200, description = "Where each node is, as the agents report", body = Object),
        (status = 404, description = "No such network"),
    )
)]
async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = state.networks.status(&id).ok_or_else(|| missing(&id))?;
    serde_json::to_value(&s)
        .map(Json)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[utoipa::path(
    get,
    path = "/networks/{network_id}/history",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    responses(
        (status = 200, description = "Every applied revision, oldest first", body = crate::api::openapi::schemas::NetworkHistory),
        (status = 404, description = "No such network"),
        (status = 409, description = "Not a source network"),
    )
)]
/// Every applied revision of a source network, oldest first (`GET
/// /networks/{id}/history`): `{"network_id", "history": [{"revision", "applied_unix_ns",
/// "applied", "tdl"}]}`.
async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let all = state.networks.history(&id).map_err(|e| match e {
        NetworkError::NotFound(_) => missing(&id),
        e => e.into(),
    })?;
    let list: Vec<Value> = all
        .iter()
        .map(|h| {
            json!({
                "revision": h.revision,
                "applied_unix_ns": h.applied_unix_ns,
                "applied": rfc3339(h.applied_unix_ns),
                "tdl": h.record.tdl,
            })
        })
        .collect();
    Ok(Json(json!({ "network_id": id, "history": list })))
}

/// A volume snapshot as JSON (`weft.v1.VolumeSnapshot`'s field names).
pub fn snapshot_json(s: &weft_proto::v1::VolumeSnapshot) -> Value {
    json!({
        "id": s.id,
        "taken_unix_ns": s.taken_unix_ns,
        "taken": rfc3339(s.taken_unix_ns),
        "generation": s.generation,
        "volumes": s.volumes,
        "method": s.method,
        "took_seconds": s.took_seconds,
    })
}

#[utoipa::path(
    get,
    path = "/networks/{network_id}/snapshots",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    responses(
        (status = 200, description = "Each node's volume snapshots", body = crate::api::openapi::schemas::NetworkSnapshots),
        (status = 404, description = "No such network"),
    )
)]
/// The snapshots of a network's nodes with volumes as their agents reported them:
/// `{"network_id", "snapshots": {node: [snapshot, ...oldest first]}}`.
async fn snapshots(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let all = state.networks.snapshots(&id).map_err(|e| match e {
        NetworkError::NotFound(_) => missing(&id),
        e => e.into(),
    })?;
    let by_node: serde_json::Map<String, Value> = all
        .iter()
        .map(|(n, list)| (n.clone(), list.iter().map(snapshot_json).collect()))
        .collect();
    Ok(Json(json!({ "network_id": id, "snapshots": by_node })))
}

#[utoipa::path(
    post,
    path = "/networks/{network_id}/snapshots",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    responses(
        (status = 201, description = "The snapshot taken of each node", body = crate::api::openapi::schemas::SnapshotsTaken),
        (status = 404, description = "No such network"),
        (status = 409, description = "A snapshot is under way"),
        (status = 422, description = "The network has no node with volumes"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
/// Takes a snapshot of every node with volumes now and waits for the agents (201):
/// `{"network_id", "snapshots": {node: snapshot}}`.
async fn take_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let taken = state
        .networks
        .snapshot_now(&id, state.weaves.wait())
        .await
        .map_err(|e| match e {
            NetworkError::NotFound(_) => missing(&id),
            NetworkError::Invalid(m) => ApiError::Unprocessable {
                field: "network_id".into(),
                message: m,
            },
            e => e.into(),
        })?;
    let by_node: serde_json::Map<String, Value> = taken
        .iter()
        .map(|(n, s)| (n.clone(), snapshot_json(s)))
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "network_id": id, "snapshots": by_node })),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/networks/{network_id}/sync",
    tag = "networks",
    params(("network_id" = String, Path, description = "The network")),
    responses(
        (status = 200, description = "What was copied", body = crate::api::openapi::schemas::NetworkSynced),
        (status = 404, description = "No such network"),
        (status = 409, description = "Neither a mirror nor a source with mirrors"),
        (status = 422, description = "Nothing to copy"),
        (status = 504, description = "The agents did not answer in time"),
    )
)]
/// Copies volumes now: a mirror's from its source, or a source's to its mirrors.
async fn sync(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mirrors = state.networks.sync_now(&id).await?;
    Ok(Json(json!({ "network_id": id, "mirrors": mirrors })))
}

#[utoipa::path(
    get,
    path = "/events/networks",
    tag = "events",
    params(("network" = Option<String>, Query, description = "Only this network's events")),
    responses((status = 200, description = "Server-sent network CloudEvents from now on (never ends)", body = String, content_type = "text/event-stream"))
)]
/// Server-sent events: the networks' CloudEvents from now on (`?network=ID`: one network's).
async fn events(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["network"])?;
    let network = params.0.get("network").filter(|n| !n.is_empty()).cloned();
    let to_sse = |e: network_events::NetworkCloudEvent| super::sse::cloud_event(&e.to_json());
    let stream = network_events::subscribe(&state, network)
        .map(to_sse)
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[utoipa::path(
    get,
    path = "/tdl/export",
    tag = "networks",
    params(
        ("hosts" = Option<String>, Query, description = "Comma-separated host ids (default: every agent)"),
        ("network" = Option<String>, Query, description = "The exported network's name"),
        ("addresses" = Option<bool>, Query, description = "Include the addresses (default true)"),
        ("since" = Option<String>, Query, description = crate::api::views::SINCE),
        ("until" = Option<String>, Query, description = crate::api::views::UNTIL),
        ("format" = Option<String>, Query, description = "yaml (default) or json"),
    ),
    responses(
        (status = 200, description = "The TDL of what runs", content(
            (String = "application/yaml; charset=utf-8"),
            (crate::api::openapi::schemas::TdlExport = "application/json"),
        )),
        (status = 404, description = "A host is not registered"),
        (status = 422, description = "No workloads to export"),
    )
)]
/// `GET /tdl/export?hosts=a,b&network=NAME&addresses=false&since=..&until=..&format=json`:
/// the TDL of the workloads the agents of `hosts` (default: every agent) registered and
/// of the traffic seen between them in the window; YAML, or with `format=json` an object
/// with the TDL, which workload each node is, and what was left out.
async fn export(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let params = Params(params);
    params.only(&["hosts", "network", "addresses", "since", "until", "format"])?;
    let window = params.window()?;
    let get = |k: &str| params.0.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let json = match get("format") {
        None | Some("yaml") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::parameter(
                "format",
                format!("`{other}` is not yaml or json"),
            ));
        }
    };
    let addresses = match get("addresses") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::parameter(
                "addresses",
                format!("`{other}` is not true or false"),
            ));
        }
    };
    let name = get("network").unwrap_or(DEFAULT_NAME).to_owned();
    let wanted: Vec<String> = get("hosts")
        .map(|h| {
            h.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let agents = state.registry.agents();
    for h in &wanted {
        if !agents.iter().any(|a| &a.host_id == h) {
            return Err(ApiError::Missing(format!(
                "no agent registered as host {h:?}; the registered hosts are: {}",
                agents
                    .iter()
                    .map(|a| a.host_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let agents: Vec<(String, Vec<weft_topology::model::Workload>)> = agents
        .iter()
        .filter(|a| wanted.is_empty() || wanted.contains(&a.host_id))
        .map(|a| (a.host_id.clone(), a.workloads.clone()))
        .collect();
    let snapshot = state.snapshot_in(&window);
    let req = ExportRequest { name, addresses };
    let out = crate::export::export(&req, &agents, &snapshot).map_err(|e| match e {
        ExportError::Name(m) => ApiError::parameter("network", m),
        ExportError::NoWorkloads(m) => ApiError::Unprocessable {
            field: "hosts".into(),
            message: m,
        },
        e @ ExportError::Internal(_) => ApiError::Internal(e.to_string()),
    })?;
    if json {
        return Ok(Json(json!({
            "network": out.network.name,
            "tdl": out.tdl,
            "nodes": out.nodes,
            "connections": out.network.connections.len(),
            "left_out": out.left_out,
        }))
        .into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        out.tdl,
    )
        .into_response())
}
