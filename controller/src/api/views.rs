//! Topology views: JSON, ASCII, DOT and SVG (through Graphviz `dot`), and services.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use tokio::io::AsyncWriteExt as _;
use weft_topology::analytics::dependencies_of;
use weft_topology::render;

use super::error::ApiError;
use super::query::Params;
use crate::state::AppState;

const WINDOW: &[&str] = &["since", "until"];

/// The document's words for `since` and `until`.
pub const SINCE: &str =
    "Start of the window: RFC 3339, or a duration ago such as `15m` (default: the beginning)";
pub const UNTIL: &str = "End of the window: RFC 3339, or a duration ago (default: now)";

/// `since` and `until` (the window of most views), for the document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by hand from the query (unknown names are refused)
pub struct WindowParams {
    /// Start of the window: RFC 3339, or a duration ago such as `15m` (default: the beginning).
    since: Option<String>,
    /// End of the window: RFC 3339, or a duration ago (default: now).
    until: Option<String>,
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    topology_json,
    topology_dot,
    topology_txt,
    topology_svg,
    services,
    service_dependencies,
    flows
))]
pub struct Doc;
const TOPOLOGY_JSON: &[&str] = &["since", "until", "shape"];

/// `GET /topology?since=&until=&shape=`: the map in the spec's data model by default
/// (`shape=spec`: services by `service_id`, dependencies with `source_service`,
/// `request_count`, ...; [`weft_topology::spec`]), or in weft's own shape with every
/// statistic (`shape=weft`, what the CLI and the console read).
#[utoipa::path(
    get,
    path = "/topology",
    tag = "topology",
    params(
        ("since" = Option<String>, Query, description = SINCE),
        ("until" = Option<String>, Query, description = UNTIL),
        ("shape" = Option<String>, Query, description = "`spec` (default): the specification's data model (services by service_id, dependencies with source_service, request_count, ...); `weft`: weft's own shape with every statistic", example = "weft"),
    ),
    responses((status = 200, description = "The topology", body = crate::api::openapi::topology_wire::TopologyAnswer))
)]
pub async fn topology_json(
    State(state): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    let window = params.only(TOPOLOGY_JSON)?.window()?;
    let body = match params.0.get("shape").map(String::as_str) {
        None | Some("spec") => {
            let mut map = state.snapshot_in(&window).to_spec();
            describe_services(&state, &mut map);
            serde_json::to_vec(&map)
                .map_err(|e| ApiError::Internal(format!("writing the topology: {e}")))?
        }
        Some("weft") => state.snapshot_json_in(&window),
        Some(other) => {
            return Err(ApiError::parameter(
                "shape",
                format!("unknown shape {other:?} (known: spec, the default; weft)"),
            ));
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}

/// Fills the spec's `tags`/`metadata` of registered workloads with what the controller
/// knows beyond the topology: the agent's `interface` and the workload's `addresses` from
/// the registry; for a TDL network's node (`<network>.<node>`), its `network`, `node`,
/// `node_type` and `image`.
fn describe_services(state: &AppState, map: &mut weft_topology::spec::TopologyMap) {
    for agent in state.registry.agents() {
        for w in &agent.workloads {
            let Some(service) = map.services.get_mut(&w.name) else {
                continue;
            };
            service.tags.insert("interface".into(), w.interface.clone());
            let addresses: Vec<String> = w.addresses.iter().map(ToString::to_string).collect();
            service
                .metadata
                .insert("workload_addresses".into(), addresses.into());
        }
    }
    for record in state.networks.list() {
        for (name, node) in &record.network.nodes {
            let workload = weft_networks::node_workload(&record.id, name);
            let Some(service) = map.services.get_mut(&workload) else {
                continue;
            };
            service.tags.insert("network".into(), record.id.clone());
            service.tags.insert("node".into(), name.clone());
            service.metadata.insert(
                "node_type".into(),
                serde_json::to_value(node.node_type).unwrap_or_default(),
            );
            if let Some(image) = &node.image {
                service.tags.insert("image".into(), image.clone());
            }
        }
    }
}

#[utoipa::path(
    get,
    path = "/topology.dot",
    tag = "topology",
    params(WindowParams),
    responses((status = 200, description = "The topology as Graphviz DOT", body = String, content_type = "text/vnd.graphviz; charset=utf-8"))
)]
pub async fn topology_dot(
    State(state): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(WINDOW)?.window()?;
    Ok((
        [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
        render::dot(&state.snapshot_in(&window)),
    ))
}

#[utoipa::path(
    get,
    path = "/topology.txt",
    tag = "topology",
    params(WindowParams),
    responses((status = 200, description = "The topology as text", body = String, content_type = "text/plain; charset=utf-8"))
)]
pub async fn topology_txt(
    State(state): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(WINDOW)?.window()?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        render::ascii(&state.snapshot_in(&window)),
    ))
}

#[utoipa::path(
    get,
    path = "/topology.svg",
    tag = "topology",
    params(WindowParams),
    responses(
        (status = 200, description = "The topology drawn by Graphviz", body = String, content_type = "image/svg+xml"),
        (status = 500, description = "`dot` failed"),
        (status = 501, description = "Graphviz is not installed on the controller host"),
    )
)]
/// One `dot` at a time, cached per topology generation ([`super::limits::render_svg`]).
pub async fn topology_svg(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(WINDOW)?.window()?;
    let svg = super::limits::render_svg(&state, &window, query.unwrap_or_default()).await?;
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml")],
        axum::body::Bytes::from(svg.as_ref().clone()),
    ))
}

/// Renders DOT text to SVG with the Graphviz program `program`.
pub async fn run_dot(program: &str, dot: &str, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    let child = tokio::process::Command::new(program)
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotImplemented(format!(
                "SVG needs Graphviz, and `{program}` is not installed on the controller host; \
                 install graphviz, or fetch /topology.dot and render it elsewhere"
            )));
        }
        Err(e) => return Err(ApiError::Internal(format!("starting `{program}`: {e}"))),
    };
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ApiError::Internal("no stdin for dot".into()))?;
    let input = dot.as_bytes().to_vec();
    let writer = async move {
        // A write error shows up as dot's own failure below.
        let _ = stdin.write_all(&input).await;
    };
    let run = async {
        writer.await;
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| ApiError::Unavailable {
            message: format!(
                "`{program} -Tsvg` took longer than {timeout:?} (--svg-timeout); fetch /topology.dot and render it elsewhere"
            ),
            retry_after: timeout,
        })?
        .map_err(|e| ApiError::Internal(format!("running `{program}`: {e}")))?;
    if !output.status.success() {
        return Err(ApiError::Internal(format!(
            "`{program} -Tsvg` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

#[utoipa::path(
    get,
    path = "/services",
    tag = "topology",
    params(WindowParams),
    responses((status = 200, description = "The services, sorted by name", body = Vec<Object>))
)]
pub async fn services(
    State(state): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let window = Params(params).only(WINDOW)?.window()?;
    Ok(Json(state.snapshot_in(&window).services))
}

#[utoipa::path(
    get,
    path = "/services/{name}/dependencies",
    tag = "topology",
    params(
        ("name" = String, Path, description = "The service"),
        ("since" = Option<String>, Query, description = SINCE),
        ("until" = Option<String>, Query, description = UNTIL),
        ("direction" = Option<String>, Query, description = "inbound, outbound or both (default)"),
        ("shape" = Option<String>, Query, description = "`weft` (default): weft's dependency views; `spec`: the specification's ServiceDependency, each with its direction from the service's side"),
    ),
    responses(
        (status = 200, description = "The service's dependencies", body = crate::api::openapi::schemas::ServiceDependencies),
        (status = 404, description = "No such service"),
    )
)]
/// `GET /services/{name}/dependencies?direction=&since=&until=&shape=`: weft's views of
/// the service's dependencies (default), or the spec's `ServiceDependency`s
/// (`shape=spec`), each with its `direction` from the service's side.
pub async fn service_dependencies(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["since", "until", "direction", "shape"])?;
    let window = params.window()?;
    let direction = params.direction()?;
    let spec = match params.0.get("shape").map(String::as_str) {
        None | Some("weft") => false,
        Some("spec") => true,
        Some(other) => {
            return Err(ApiError::parameter(
                "shape",
                format!("unknown shape {other:?} (known: weft, the default; spec)"),
            ));
        }
    };
    let snapshot = state.snapshot_in(&window);
    if snapshot.service(&name).is_none() {
        return Err(ApiError::NotFound(format!(
            "/services/{name} (no such service)"
        )));
    }
    let deps = if spec {
        serde_json::to_value(weft_topology::spec::dependencies_of(
            &snapshot, &name, direction,
        ))
    } else {
        let views: Vec<_> = dependencies_of(&snapshot, &name, direction)
            .into_iter()
            .cloned()
            .collect();
        serde_json::to_value(views)
    }
    .map_err(|e| ApiError::Internal(format!("writing the dependencies: {e}")))?;
    Ok(Json(serde_json::json!({
        "service": name,
        "direction": direction,
        "dependencies": deps,
    })))
}

#[utoipa::path(
    get,
    path = "/flows",
    tag = "topology",
    params(("limit" = Option<u64>, Query, description = "At most this many flows (default 100; more than the capacity means the capacity)", minimum = 1)),
    responses((status = 200, description = "The flows reported last, most recent first", body = crate::api::openapi::schemas::Flows))
)]
/// `GET /flows?limit=N`: the flows the agents reported last (at most `limit`, default 100),
/// most recent first, with what weft counted on each.
pub async fn flows(
    State(state): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = Params(params);
    params.only(&["limit"])?;
    let capacity = state.flows.capacity();
    let limit = params.number("limit", 100.0)?;
    if limit.fract() != 0.0 || limit < 1.0 {
        return Err(ApiError::parameter(
            "limit",
            format!("`{limit}` is not a whole number >= 1"),
        ));
    }
    let limit = (limit as usize).min(capacity);
    Ok(Json(serde_json::json!({
        "flows": state.flows.recent(limit),
        "capacity": capacity,
    })))
}
