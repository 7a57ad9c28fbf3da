//! REST for the shard manager, as the spec names it: `POST /shards`, `GET /shards/{id}`,
//! `DELETE /shards/{id}`, `POST|DELETE /networks/{network_id}/shards/{shard_id}`; plus
//! listing, migrations (and `POST /migrations/{id}/cancel`), address allocation and
//! release, and `GET /events` (server-sent CloudEvents; `id:` is the sequence, so
//! `Last-Event-ID` resumes).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt as _;
use serde_json::{Value, json};
use weft_topology::time::rfc3339;

use super::error::ApiError;
use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_shard,
    list_shards,
    get_shard,
    delete_shard,
    assign_shard,
    deallocate_shard,
    allocate_address,
    release_address,
    workload_addresses,
    release_workload,
    list_migrations,
    get_migration,
    cancel_migration,
    events
))]
pub struct Doc;

/// A `POST /shards` body, for the document ([`parse_create`] reads it field by field).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct CreateShardBody {
    /// Addresses: a power of two (default 1024).
    size: Option<u64>,
    /// Or the prefix length.
    prefix_len: Option<u8>,
    /// ipv4 (default) or ipv6.
    #[schema(pattern = "^ipv[46]$")]
    family: Option<String>,
    /// The network it is for (default: none, Available).
    network_id: Option<String>,
    /// Kept out of automatic assignment.
    reserved: Option<bool>,
}

/// A `POST /networks/{network_id}/addresses` body, for the document
/// ([`parse_allocate_body`] reads it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AllocateBody {
    workload: String,
    host_id: String,
    /// ipv4 (default) or ipv6.
    #[schema(pattern = "^ipv[46]$")]
    family: Option<String>,
}
use weft_shards::{
    Allocation, CreateShard, Deallocation, Family, Migration, Shard, ShardError, ShardStatus,
    default_prefix, prefix_bounds,
};

/// The shard routes, merged into [`super::http::app`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/shards", post(create_shard).get(list_shards))
        .route("/shards/{shard_id}", get(get_shard).delete(delete_shard))
        .route(
            "/networks/{network_id}/shards/{shard_id}",
            post(assign_shard).delete(deallocate_shard),
        )
        .route("/networks/{network_id}/addresses", post(allocate_address))
        .route(
            "/networks/{network_id}/addresses/{address}",
            delete(release_address),
        )
        .route(
            "/networks/{network_id}/workloads/{workload}/addresses",
            get(workload_addresses).delete(release_workload),
        )
        .route("/migrations", get(list_migrations))
        .route("/migrations/{migration_id}", get(get_migration))
        .route("/migrations/{migration_id}/cancel", post(cancel_migration))
        .route("/events", get(events))
}

impl From<ShardError> for ApiError {
    fn from(e: ShardError) -> Self {
        match e {
            ShardError::Invalid { field, message } => Self::BadField { field, message },
            ShardError::NotFound(m) => Self::Missing(m),
            ShardError::Conflict(m) => Self::Conflict(m),
            ShardError::Internal(m) => Self::Internal(m),
        }
    }
}

pub fn shard_json(s: &Shard) -> Value {
    json!({
        "id": s.id,
        "cidr": s.cidr.to_string(),
        "family": s.family.as_str(),
        "prefix_len": s.cidr.prefix_len,
        "size": u64::try_from(s.cidr.size()).unwrap_or(u64::MAX),
        "gateway": s.gateway.to_string(),
        "network_id": s.network_id,
        "status": s.status.as_str(),
        "resource_count": s.resource_count,
        "last_accessed": rfc3339(s.last_accessed_ns),
        "created": rfc3339(s.created_ns),
    })
}

pub fn allocation_json(a: &Allocation) -> Value {
    json!({
        "address": a.address.to_string(),
        "cidr": a.cidr(),
        "gateway": a.gateway().to_string(),
        "seq": a.seq,
        "shard_id": a.shard_id,
        "network_id": a.network_id,
        "workload": a.workload,
        "host_id": a.host_id,
        "allocated": rfc3339(a.allocated_ns),
        "retiring": a.retiring,
        "releasing": a.releasing,
    })
}

pub fn migration_json(m: &Migration) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("created".into(), json!(rfc3339(m.created_ns)));
        o.insert("updated".into(), json!(rfc3339(m.updated_ns)));
        if m.finished_ns != 0 {
            o.insert("finished".into(), json!(rfc3339(m.finished_ns)));
        }
        let c = m.counts();
        // Skipped moves (the workload released its address) count as moved: nothing is
        // left to move for them.
        o.insert("moved".into(), json!(c.done + c.skipped));
        o.insert("rolled_back".into(), json!(c.rolled_back));
        o.insert("total".into(), json!(m.moves.len()));
    }
    v
}

/// A JSON object body whose fields are all in `allowed`.
fn body_object(body: &[u8], allowed: &[&str]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadBody(format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::BadBody(format!(
            "expected a JSON object with fields {}",
            allowed.join(", ")
        )));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::BadField {
            field: unknown.clone(),
            message: format!(
                "unknown field (this endpoint takes: {})",
                allowed.join(", ")
            ),
        });
    }
    Ok(map)
}

/// Refuses a body on an endpoint that takes none (an empty JSON object is fine).
pub fn no_body(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => match map.keys().next() {
            None => Ok(()),
            Some(field) => Err(bad(field, "unknown field (this endpoint takes no body)")),
        },
        _ => Err(ApiError::BadBody(
            "this endpoint takes no body (or an empty JSON object)".into(),
        )),
    }
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadField {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn opt_str<'a>(
    map: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(bad(field, format!("expected a string, got {other}"))),
    }
}

fn opt_u64(map: &serde_json::Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(field, format!("expected a non-negative integer, got {v}"))),
    }
}

fn family_field(map: &serde_json::Map<String, Value>) -> Result<Family, ApiError> {
    opt_str(map, "family")?.map_or(Ok(Family::Ipv4), |f| {
        f.parse::<Family>().map_err(|e| bad("family", e))
    })
}

/// Parses `POST /shards`: `size` (addresses, a power of two) or `prefix_len`, `family`
/// (default ipv4), `network_id`, `reserved`.
pub fn parse_create(map: &serde_json::Map<String, Value>) -> Result<CreateShard, ApiError> {
    let family = family_field(map)?;
    let (min, max) = prefix_bounds(family);
    let bits = u32::from(match family {
        Family::Ipv4 => 32u8,
        Family::Ipv6 => 128,
    });
    let from_size = match opt_u64(map, "size")? {
        None => None,
        Some(size) => {
            let (lo, hi) = (
                1u64 << (bits - u32::from(max)),
                1u64 << (bits - u32::from(min)),
            );
            if !size.is_power_of_two() || !(lo..=hi).contains(&size) {
                return Err(bad(
                    "size",
                    format!(
                        "{size} is not a shard size: use a power of two from {lo} to {hi} addresses (default 1024)"
                    ),
                ));
            }
            Some(u8::try_from(bits - size.trailing_zeros()).unwrap_or(0))
        }
    };
    let from_len = match opt_u64(map, "prefix_len")? {
        None => None,
        Some(len) => {
            let len = u8::try_from(len)
                .ok()
                .filter(|l| (min..=max).contains(l))
                .ok_or_else(|| {
                    bad(
                        "prefix_len",
                        format!(
                            "/{len} is outside the {} shard prefixes /{min} to /{max}",
                            family.as_str()
                        ),
                    )
                })?;
            Some(len)
        }
    };
    let prefix_len = match (from_size, from_len) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                "size",
                format!("size means /{a} but prefix_len says /{b}; give one of them"),
            ));
        }
        (a, b) => a.or(b).unwrap_or_else(|| default_prefix(family)),
    };
    let reserved = match map.get("reserved") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(
                "reserved",
                format!("expected true or false, got {other}"),
            ));
        }
    };
    Ok(CreateShard {
        family,
        prefix_len,
        network_id: opt_str(map, "network_id")?.map(str::to_owned),
        reserved,
    })
}

/// The fields `POST /shards` takes.
pub const CREATE_FIELDS: &[&str] = &["size", "prefix_len", "family", "network_id", "reserved"];

/// Parses a `POST /shards` body (empty, or a JSON object of [`CREATE_FIELDS`]).
pub fn parse_create_body(body: &[u8]) -> Result<CreateShard, ApiError> {
    parse_create(&body_object(body, CREATE_FIELDS)?)
}

#[utoipa::path(
    post,
    path = "/shards",
    tag = "shards",
    request_body(content = Option<CreateShardBody>, content_type = "application/json", description = "Empty, or the shard wanted"),
    responses(
        (status = 201, description = "The shard made", body = crate::api::openapi::schemas::Shard, headers(("Location" = String, description = "The shard's URL"))),
        (status = 409, description = "No room for such a shard"),
    )
)]
async fn create_shard(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req = parse_create_body(&body)?;
    let shard = state.shards.create_shard(req).await?;
    let location = format!("/shards/{}", shard.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(shard_json(&shard)),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/shards/{shard_id}",
    tag = "shards",
    params(("shard_id" = String, Path, description = "The shard")),
    responses(
        (status = 200, description = "The shard", body = crate::api::openapi::schemas::Shard),
        (status = 404, description = "No such shard"),
    )
)]
async fn get_shard(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let shard = state.shards.shard(&id).ok_or_else(|| {
        ApiError::Missing(format!(
            "shard {id} does not exist; list the shards with GET /shards"
        ))
    })?;
    Ok(Json(shard_json(&shard)))
}

#[utoipa::path(
    delete,
    path = "/shards/{shard_id}",
    tag = "shards",
    params(("shard_id" = String, Path, description = "The shard")),
    responses(
        (status = 200, description = "The shard deleted", body = crate::api::openapi::schemas::Shard),
        (status = 404, description = "No such shard"),
        (status = 409, description = "The shard is in use"),
    )
)]
async fn delete_shard(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let shard = state.shards.delete_shard(&id).await?;
    Ok(Json(shard_json(&shard)))
}

/// Listing filter and page.
pub struct ListQuery {
    pub network_id: Option<String>,
    pub status: Option<ShardStatus>,
    pub family: Option<Family>,
    pub limit: usize,
    pub page_token: Option<String>,
}

pub fn parse_list(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    const ALLOWED: &[&str] = &["network_id", "status", "family", "limit", "page_token"];
    if let Some(k) = params.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(ApiError::parameter(
            k,
            format!(
                "unknown parameter (this endpoint takes: {})",
                ALLOWED.join(", ")
            ),
        ));
    }
    let status = params
        .get("status")
        .map(|s| {
            ShardStatus::parse(s).ok_or_else(|| {
                ApiError::parameter(
                    "status",
                    format!("`{s}` is not a status; use Available, In-Use, Migrating or Reserved"),
                )
            })
        })
        .transpose()?;
    let family = params
        .get("family")
        .map(|f| {
            f.parse::<Family>()
                .map_err(|e| ApiError::parameter("family", e))
        })
        .transpose()?;
    let limit = params
        .get("limit")
        .map(|l| {
            l.parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    ApiError::parameter("limit", format!("`{l}` is not a page size from 1 to 1000"))
                })
        })
        .transpose()?
        .unwrap_or(100);
    Ok(ListQuery {
        network_id: params.get("network_id").cloned(),
        status,
        family,
        limit,
        page_token: params.get("page_token").cloned().filter(|t| !t.is_empty()),
    })
}

/// One page of shards (ordered by id); the next page token is the last id.
pub fn list_page(state: &AppState, q: &ListQuery) -> (Vec<Shard>, Option<String>) {
    let index = state.shards.read();
    let mut page: Vec<Shard> = index
        .shards()
        .filter(|s| {
            q.page_token
                .as_ref()
                .is_none_or(|t| s.id.as_str() > t.as_str())
        })
        .filter(|s| {
            q.network_id
                .as_ref()
                .is_none_or(|n| s.network_id.as_ref() == Some(n))
        })
        .filter(|s| q.status.is_none_or(|st| s.status == st))
        .filter(|s| q.family.is_none_or(|f| s.family == f))
        .take(q.limit + 1)
        .cloned()
        .collect();
    let next = (page.len() > q.limit).then(|| {
        page.truncate(q.limit);
        page.last().map(|s| s.id.clone()).unwrap_or_default()
    });
    (page, next)
}

#[utoipa::path(
    get,
    path = "/shards",
    tag = "shards",
    params(
        ("network_id" = Option<String>, Query, description = "Only this network's"),
        ("status" = Option<String>, Query, description = "Available, In-Use, Migrating or Reserved"),
        ("family" = Option<String>, Query, description = "ipv4 or ipv6"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the page before"),
    ),
    responses((status = 200, description = "A page of shards", body = crate::api::openapi::schemas::ShardPage))
)]
async fn list_shards(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let q = parse_list(&params)?;
    let (page, next) = list_page(&state, &q);
    Ok(Json(json!({
        "shards": page.iter().map(shard_json).collect::<Vec<_>>(),
        "next_page_token": next,
    })))
}

#[utoipa::path(
    post,
    path = "/networks/{network_id}/shards/{shard_id}",
    tag = "shards",
    params(("network_id" = String, Path, description = "The network"), ("shard_id" = String, Path, description = "The shard")),
    responses(
        (status = 200, description = "The shard, now the network's", body = crate::api::openapi::schemas::Shard),
        (status = 404, description = "No such shard"),
        (status = 409, description = "The shard is another network's, or reserved"),
    )
)]
async fn assign_shard(
    State(state): State<AppState>,
    Path((network, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let shard = state.shards.assign_shard(&network, &id).await?;
    Ok(Json(shard_json(&shard)))
}

#[utoipa::path(
    delete,
    path = "/networks/{network_id}/shards/{shard_id}",
    tag = "shards",
    params(("network_id" = String, Path, description = "The network"), ("shard_id" = String, Path, description = "The shard")),
    responses(
        (status = 200, description = "The shard, released (no workload had an address in it)", body = crate::api::openapi::schemas::Shard),
        (status = 202, description = "Workloads are being moved first: follow the migration", body = crate::api::openapi::schemas::DeallocationStarted, headers(("Location" = String, description = "The migration's URL"))),
        (status = 404, description = "No such shard or network"),
        (status = 409, description = "The shard is not the network's, or already migrating"),
    )
)]
async fn deallocate_shard(
    State(state): State<AppState>,
    Path((network, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(match state.shards.deallocate_shard(&network, &id).await? {
        Deallocation::Released(shard) => Json(shard_json(&shard)).into_response(),
        Deallocation::Migrating(m) => {
            let location = format!("/migrations/{}", m.id);
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location.clone())],
                Json(json!({
                    "migration_id": m.id,
                    "status_url": location,
                    "shard_id": m.shard_id,
                    "network_id": m.network_id,
                    "workloads": m.moves.len(),
                })),
            )
                .into_response()
        }
    })
}

/// A `POST /networks/{network_id}/addresses` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateRequest {
    pub workload: String,
    pub host_id: String,
    /// Default ipv4.
    pub family: Family,
}

/// Parses a `POST /networks/{network_id}/addresses` body: `workload` and `host_id`
/// (required strings), `family` (default ipv4), nothing else.
pub fn parse_allocate_body(body: &[u8]) -> Result<AllocateRequest, ApiError> {
    let map = body_object(body, &["workload", "host_id", "family"])?;
    let workload = opt_str(&map, "workload")?
        .ok_or_else(|| bad("workload", "required: the workload the address is for"))?;
    let host_id = opt_str(&map, "host_id")?
        .ok_or_else(|| bad("host_id", "required: the host the workload runs on"))?;
    Ok(AllocateRequest {
        workload: workload.to_owned(),
        host_id: host_id.to_owned(),
        family: family_field(&map)?,
    })
}

#[utoipa::path(
    post,
    path = "/networks/{network_id}/addresses",
    tag = "shards",
    params(("network_id" = String, Path, description = "The network")),
    request_body(content = AllocateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The address allocated", body = crate::api::openapi::schemas::Allocation, headers(("Location" = String, description = "The address's URL"))),
        (status = 404, description = "No such network"),
        (status = 409, description = "No free address"),
    )
)]
async fn allocate_address(
    State(state): State<AppState>,
    Path(network): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = parse_allocate_body(&body)?;
    let a = state
        .shards
        .allocate_address(&network, &req.workload, &req.host_id, req.family)
        .await?;
    let location = format!("/networks/{network}/addresses/{}", a.address);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(allocation_json(&a)),
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/networks/{network_id}/addresses/{address}",
    tag = "shards",
    params(
        ("network_id" = String, Path, description = "The network"),
        ("address" = String, Path, description = "The IPv4 or IPv6 address"),
        ("seq" = u64, Query, description = "The allocation's seq, as returned when it was allocated"),
    ),
    responses(
        (status = 200, description = "The allocation released", body = crate::api::openapi::schemas::Allocation),
        (status = 404, description = "No such allocation"),
        (status = 409, description = "The seq is not the current allocation's"),
    )
)]
async fn release_address(
    State(state): State<AppState>,
    Path((network, address)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(k) = params.keys().find(|k| k.as_str() != "seq") {
        return Err(ApiError::parameter(
            k,
            "unknown parameter (this endpoint takes: seq)",
        ));
    }
    let address: IpAddr = address.parse().map_err(|_| {
        bad(
            "address",
            format!("`{address}` is not an IPv4 or IPv6 address"),
        )
    })?;
    let seq = params.get("seq").ok_or_else(|| {
        ApiError::parameter(
            "seq",
            "required: the allocation seq returned when the address was allocated",
        )
    })?;
    let seq: u64 = seq.parse().map_err(|_| {
        ApiError::parameter(
            "seq",
            format!("`{seq}` is not an allocation sequence (a non-negative integer)"),
        )
    })?;
    let a = state.shards.release_address(&network, address, seq).await?;
    Ok(Json(allocation_json(&a)))
}

#[utoipa::path(
    get,
    path = "/networks/{network_id}/workloads/{workload}/addresses",
    tag = "shards",
    params(("network_id" = String, Path, description = "The network"), ("workload" = String, Path, description = "The workload")),
    responses((status = 200, description = "The workload's addresses", body = crate::api::openapi::schemas::WorkloadAddresses))
)]
async fn workload_addresses(
    State(state): State<AppState>,
    Path((network, workload)): Path<(String, String)>,
) -> Json<Value> {
    let index = state.shards.read();
    let list: Vec<Value> = index
        .workload_addresses(&network, &workload)
        .iter()
        .map(allocation_json)
        .collect();
    Json(json!({ "addresses": list }))
}

#[utoipa::path(
    delete,
    path = "/networks/{network_id}/workloads/{workload}/addresses",
    tag = "shards",
    params(("network_id" = String, Path, description = "The network"), ("workload" = String, Path, description = "The workload")),
    responses(
        (status = 200, description = "The addresses released", body = crate::api::openapi::schemas::ReleasedAddresses),
        (status = 404, description = "No such network or workload"),
        (status = 409, description = "The workload is being migrated"),
    )
)]
async fn release_workload(
    State(state): State<AppState>,
    Path((network, workload)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let released = state.shards.release_workload(&network, &workload).await?;
    Ok(Json(
        json!({ "released": released.iter().map(allocation_json).collect::<Vec<_>>() }),
    ))
}

#[utoipa::path(
    get,
    path = "/migrations",
    tag = "shards",
    responses((status = 200, description = "Every migration", body = crate::api::openapi::schemas::MigrationList))
)]
async fn list_migrations(State(state): State<AppState>) -> Json<Value> {
    Json(
        json!({ "migrations": state.shards.migrations().iter().map(migration_json).collect::<Vec<_>>() }),
    )
}

#[utoipa::path(
    get,
    path = "/migrations/{migration_id}",
    tag = "shards",
    params(("migration_id" = String, Path, description = "The migration")),
    responses(
        (status = 200, description = "The migration", body = crate::api::openapi::schemas::Migration),
        (status = 404, description = "No such migration"),
    )
)]
async fn get_migration(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = state.shards.migration(&id).ok_or_else(|| {
        ApiError::Missing(format!(
            "migration {id} does not exist; list them with GET /migrations"
        ))
    })?;
    Ok(Json(migration_json(&m)))
}

#[utoipa::path(
    post,
    path = "/migrations/{migration_id}/cancel",
    tag = "shards",
    params(("migration_id" = String, Path, description = "The migration")),
    request_body(content = Option<Object>, content_type = "application/json", description = "None, or an empty JSON object"),
    responses(
        (status = 200, description = "The migration, failed and rolled back", body = crate::api::openapi::schemas::Migration),
        (status = 404, description = "No such migration"),
        (status = 409, description = "The migration has finished"),
    )
)]
/// `POST /migrations/{id}/cancel`: rolls back the moves not done and fails the migration;
/// answers the failed migration. No body (or an empty JSON object).
async fn cancel_migration(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    no_body(&body)?;
    let m = state.shards.cancel_migration(&id).await?;
    Ok(Json(migration_json(&m)))
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(
        ("from" = Option<u64>, Query, description = "The first sequence to send (default: new events only; with follow=false, 1)"),
        ("follow" = Option<bool>, Query, description = "true (default): a server-sent stream that never ends; false: the stored events as one JSON document"),
        ("limit" = Option<u32>, Query, description = "With follow=false: at most this many events, 1 to 10000 (default 1000)", minimum = 1, maximum = 10000),
        ("types" = Option<String>, Query, description = "Only events whose type starts with one of these comma-separated prefixes (`weft.topology.`, `weft.shard.deallocated`)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Without `from`: resume after this sequence"),
    ),
    responses((status = 200, description = "The CloudEvents of the one event log (shard, address, topology and network events)", content(
        (String = "text/event-stream"),
        (crate::api::openapi::schemas::ShardEventPage = "application/json"),
    )))
)]
/// `GET /events?from=N`: the one event log (shard, address, topology and network events)
/// from sequence N, then live ones (server-sent events). Without `from`,
/// `Last-Event-ID: N` resumes after N; without either, only new events. `follow=false`
/// answers the stored events from N (default 1) as one JSON document instead:
/// `{"events": [...], "next": M}`. `types=P,Q`: only events whose type starts with one
/// of these prefixes (`weft.topology.`, `weft.shard.deallocated`); a page then holds up
/// to `limit` matching events and `next` is past the last event read.
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(k) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "from" | "follow" | "limit" | "types"))
    {
        return Err(ApiError::parameter(
            k,
            "unknown parameter (this endpoint takes: from, follow, limit, types)",
        ));
    }
    let types = event_types(params.get("types").map(String::as_str))?;
    let wanted = move |t: &str| types.is_empty() || types.iter().any(|p| t.starts_with(p.as_str()));
    let follow = match params.get("follow").map(String::as_str) {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(ApiError::parameter(
                "follow",
                format!("`{other}` is not true or false"),
            ));
        }
    };
    let next_event = state.shards.next_event();
    let from = match (params.get("from"), headers.get("last-event-id")) {
        (Some(f), _) => f.parse::<u64>().map_err(|_| {
            ApiError::parameter(
                "from",
                format!("`{f}` is not an event sequence (a non-negative integer)"),
            )
        })?,
        (None, Some(id)) => {
            let id = id
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::parameter(
                        "Last-Event-ID",
                        "header: not an event sequence (a non-negative integer)",
                    )
                })?;
            id.checked_add(1).ok_or_else(|| {
                ApiError::parameter(
                    "Last-Event-ID",
                    format!("header: {id} is past the last possible event sequence"),
                )
            })?
        }
        (None, None) if follow => next_event,
        (None, None) => 1,
    };
    // Sequences grow by one per event: a stream from past the next one would wait for
    // events that never come in order.
    if follow && from > next_event {
        let what = if params.contains_key("from") {
            "from"
        } else {
            "Last-Event-ID"
        };
        return Err(ApiError::parameter(
            what,
            format!(
                "{from} is beyond the next event sequence {next_event}: no such event will come in order"
            ),
        ));
    }
    if !follow {
        let limit = params
            .get("limit")
            .map(|l| {
                l.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::parameter(
                            "limit",
                            format!("`{l}` is not a count from 1 to 10000"),
                        )
                    })
            })
            .transpose()?
            .unwrap_or(1000);
        let mut out = Vec::new();
        let mut next = from.max(state.shards.oldest_event());
        while out.len() < limit {
            let mut events = state
                .shards
                .stored_events(next, limit)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let Some(last) = events.last().map(|e| e.sequence) else {
                break;
            };
            events.retain(|e| wanted(&e.event_type));
            // Whole events up to `limit`: `next` follows the last one kept, or the last
            // one read when none was cut.
            if out.len() + events.len() > limit {
                events.truncate(limit - out.len());
                next = events.last().map_or(next, |e| e.sequence + 1);
                out.extend(events);
                break;
            }
            next = last + 1;
            out.extend(events);
        }
        return Ok(Json(json!({ "events": out, "next": next })).into_response());
    }
    let stream = weft_shards::events::stream_from(state.shards.clone(), from)
        .filter(move |e| std::future::ready(wanted(&e.event_type)))
        .map(|e| {
            let data = serde_json::to_string(e.as_ref()).unwrap_or_default();
            Ok::<_, Infallible>(
                Event::default()
                    .id(e.id.clone())
                    .event(e.event_type.clone())
                    .data(data),
            )
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The `types` parameter: comma-separated prefixes of event types, each a dotted name.
fn event_types(text: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|p| {
            let p = p.trim();
            let ok = !p.is_empty()
                && p.len() <= 128
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            ok.then(|| p.to_owned()).ok_or_else(|| {
                ApiError::parameter(
                    "types",
                    format!("`{p}` is not an event type prefix such as weft.topology. (letters, digits, `.`, `_`, `-`)"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_prefixes_are_dotted_names() {
        assert!(event_types(None).unwrap().is_empty());
        assert_eq!(
            event_types(Some("weft.topology., weft.shard.deallocated")).unwrap(),
            ["weft.topology.", "weft.shard.deallocated"]
        );
        assert!(event_types(Some("")).is_err());
        assert!(event_types(Some("weft.topology.,")).is_err());
        assert!(event_types(Some("weft topology")).is_err());
    }

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::BadField { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn allocate_bodies_need_workload_and_host_and_take_nothing_else() {
        let r =
            parse_allocate_body(br#"{"workload":"w1","host_id":"hv1","family":"ipv6"}"#).unwrap();
        assert_eq!(
            r,
            AllocateRequest {
                workload: "w1".into(),
                host_id: "hv1".into(),
                family: Family::Ipv6
            }
        );
        assert_eq!(
            parse_allocate_body(br#"{"workload":"w1","host_id":"hv1"}"#)
                .unwrap()
                .family,
            Family::Ipv4
        );
        assert_eq!(
            field_of(parse_allocate_body(br#"{"host_id":"h"}"#).unwrap_err()),
            "workload"
        );
        assert_eq!(field_of(parse_allocate_body(b"").unwrap_err()), "workload");
        assert_eq!(
            field_of(parse_allocate_body(br#"{"workload":"w","host_id":"h","x":1}"#).unwrap_err()),
            "x"
        );
        assert!(matches!(
            parse_allocate_body(b"[]"),
            Err(ApiError::BadBody(_))
        ));
    }

    #[test]
    fn create_bodies_default_and_check_their_fields() {
        let c = parse_create_body(b"").unwrap();
        assert_eq!(
            (c.family, c.prefix_len),
            (Family::Ipv4, default_prefix(Family::Ipv4))
        );
        let c = parse_create_body(br#"{"size":256,"network_id":"n1","reserved":true}"#).unwrap();
        assert_eq!(
            (c.prefix_len, c.network_id.as_deref(), c.reserved),
            (24, Some("n1"), true)
        );
        assert_eq!(
            field_of(parse_create_body(br#"{"size":3}"#).unwrap_err()),
            "size"
        );
        assert_eq!(
            field_of(parse_create_body(br#"{"gateway":1}"#).unwrap_err()),
            "gateway"
        );
        assert!(no_body(b" \n").is_ok() && no_body(b"{}").is_ok());
        assert!(no_body(b"[]").is_err() && no_body(br#"{"a":1}"#).is_err());
    }
}
