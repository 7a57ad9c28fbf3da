//! The REST API's OpenAPI 3.1 document, `GET /openapi.json`, generated from the code: each
//! routes module describes its handlers with `#[utoipa::path]` next to them and gathers
//! them in its own `Doc`; [`document`] merges those and adds what every operation shares
//! ([`finish`]): the bearer-token security scheme, the error statuses the layers around
//! every route can answer, and the problem+json body of every error.
//!
//! The schemas of `GET /topology` and `POST /observations` live in one place,
//! [`topology_wire`], so that a change of those two shapes is made there.

pub mod markdown;
pub mod schemas;
pub mod topology_wire;

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};

use super::error::{PROBLEM_JSON, Problem};
use super::{
    analytics_routes, console, control_routes, history_routes, http, networks_routes, observations,
    shadows_routes, shards_routes, timeseries_routes, token_routes, views, weaves_routes,
};

/// The security scheme's name in the document.
pub const BEARER: &str = "bearer";

/// Paths served to anyone (`--open-path` style defaults of the binary): no token needed.
const OPEN: &[&str] = &["/healthz", "/ui", "/ui/", "/ui/{path}"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "weft controller REST API",
        description = "The controller's REST API: topology views and analytics, history, \
            observations, IP shards and migrations, TDL networks, shadows, weaves, hosts' \
            control state, tokens, events (server-sent) and metrics. Every error is an \
            RFC 9457 problem (application/problem+json). Every request but GET /healthz and the web console (/ui) \
            needs `Authorization: Bearer <token>`: `read` for GET, `operate` for changes, \
            `admin` for /tokens and PUT /policy/allowed-dependencies.",
        license(name = "Apache-2.0 OR MIT")
    ),
    paths(openapi_json),
    components(schemas(Problem)),
    tags(
        (name = "topology", description = "The topology: views, services, flows, history"),
        (name = "analytics", description = "Analyses of the topology over a window"),
        (name = "observations", description = "Traffic observations sent by clients"),
        (name = "shards", description = "IP shards, address allocation and migrations"),
        (name = "networks", description = "TDL networks, mirrors, volume snapshots"),
        (name = "shadows", description = "Shadow copies of production"),
        (name = "weaves", description = "Weaves: environments at a point in time"),
        (name = "control", description = "Hosts' desired and applied state"),
        (name = "tokens", description = "Client tokens (admin)"),
        (name = "events", description = "Server-sent event streams"),
        (name = "meta", description = "Health, metrics and this document"),
        (name = "console", description = "The web console's page and assets (no token)"),
    )
)]
struct Base;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = Base::openapi();
        for part in [
            views::Doc::openapi(),
            analytics_routes::Doc::openapi(),
            history_routes::Doc::openapi(),
            observations::Doc::openapi(),
            http::Doc::openapi(),
            shards_routes::Doc::openapi(),
            networks_routes::Doc::openapi(),
            shadows_routes::Doc::openapi(),
            weaves_routes::Doc::openapi(),
            control_routes::Doc::openapi(),
            token_routes::Doc::openapi(),
            timeseries_routes::Doc::openapi(),
            console::Doc::openapi(),
            super::replica_routes::Doc::openapi(),
        ] {
            doc.merge(part);
        }
        finish(&mut doc);
        doc
    })
}

/// This document (OpenAPI 3.1, JSON).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object))
)]
pub async fn openapi_json() -> axum::response::Response {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    let body = BODY.get_or_init(|| document().to_json().unwrap_or_default().into_bytes());
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.as_slice(),
    )
        .into_response()
}

fn problem_content() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
        .build()
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

/// Adds a response of `status` (problem+json) unless the operation documents it already.
fn add_error(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
}

/// What every operation shares: the security scheme and requirement, the statuses of the
/// layers around every route (auth: 401/403; limits: 503, and for bodies 408/413; any
/// parameter or body: 400), problem+json on every error response, and the headers that
/// come with 401 (`WWW-Authenticate`) and 429/503 (`Retry-After`).
fn finish(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("weft token (weft_...)")
                .description(Some(
                    "A token from `weft-controller token create` or POST /tokens, as \
                     `Authorization: Bearer weft_...`",
                ))
                .build(),
        ),
    );
    doc.security = Some(vec![SecurityRequirement::new::<_, _, &str>(BEARER, [])]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = OPEN.contains(&path.as_str());
        let path_params = path.contains('{');
        for (method, op) in operations(item) {
            op.operation_id = Some(operation_id(method, path));
            if open {
                // An empty requirement: no credentials needed.
                op.security = Some(vec![SecurityRequirement::default()]);
            } else {
                add_error(op, 401, "No token, or one that is not valid or has expired");
                add_error(op, 403, "The token's role does not allow this request");
            }
            let has_query = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            if op.request_body.is_some() {
                add_error(op, 408, "The request body did not arrive in time");
                add_error(op, 413, "The request body is larger than --http-max-body");
            }
            if has_query || path_params || op.request_body.is_some() {
                add_error(op, 400, "A parameter or the body is not valid");
            }
            add_error(
                op,
                503,
                "A limit is reached for now (connections, concurrent requests, request \
                 time, subscribers): try again after Retry-After",
            );
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                let code: u16 = status.parse().unwrap_or(0);
                if code < 400 {
                    continue;
                }
                if response.content.is_empty() {
                    response
                        .content
                        .insert(PROBLEM_JSON.to_owned(), problem_content());
                }
                let header = match code {
                    401 => Some((
                        "WWW-Authenticate",
                        "The scheme to authenticate with (Bearer)",
                    )),
                    429 | 503 => Some(("Retry-After", "Seconds to wait before trying again")),
                    _ => None,
                };
                if let Some((name, description)) = header {
                    response
                        .headers
                        .insert(name.to_owned(), string_header(description));
                }
            }
        }
    }
}

/// Every operation of a path item, with its method.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
}

/// A unique operation id from the method and the path: `delete_tokens_id`,
/// `get_topology_dot` (handlers of different modules share names such as `create`); a
/// path ending in `/` (`/ui/`) ends in `_index`.
pub fn operation_id(method: &str, path: &str) -> String {
    let mut words: Vec<String> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if path.len() > 1 && path.ends_with('/') {
        words.push("index".to_owned());
    }
    format!("{method}_{}", words.join("_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_response_is_a_problem_and_auth_is_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() > 50, "{} paths", paths.len());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for (status, response) in responses {
                    if status.as_str() >= "400" {
                        let content = response["content"].as_object().unwrap();
                        assert!(
                            content.contains_key(PROBLEM_JSON),
                            "{method} {path} {status} is not problem+json: {response}"
                        );
                    }
                }
                let open = OPEN.contains(&path.as_str());
                assert_eq!(
                    responses.contains_key("401"),
                    !open,
                    "{method} {path}: 401 documented iff the path needs a token"
                );
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique");
        assert!(ids.contains(&"delete_tokens_id"), "{ids:?}");
    }
}
