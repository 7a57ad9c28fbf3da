//! The web console at `/ui`: static assets compiled into the binary (plain ES modules,
//! CSS and one HTML page; nothing is fetched from another origin). The assets hold no
//! data, so they are served without a token; every data call the console makes carries
//! one ([`is_public`]).

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::state::AppState;

/// Everything the console may load or call: its own origin only, no inline script or
/// style, no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// (path under /ui/, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/console.css"),
    ),
    ("js/api.js", JS, include_bytes!("../../ui/js/api.js")),
    ("js/chart.js", JS, include_bytes!("../../ui/js/chart.js")),
    ("js/colors.js", JS, include_bytes!("../../ui/js/colors.js")),
    ("js/dom.js", JS, include_bytes!("../../ui/js/dom.js")),
    ("js/feed.js", JS, include_bytes!("../../ui/js/feed.js")),
    ("js/format.js", JS, include_bytes!("../../ui/js/format.js")),
    ("js/infra.js", JS, include_bytes!("../../ui/js/infra.js")),
    ("js/layout.js", JS, include_bytes!("../../ui/js/layout.js")),
    ("js/live.js", JS, include_bytes!("../../ui/js/live.js")),
    ("js/main.js", JS, include_bytes!("../../ui/js/main.js")),
    ("js/map.js", JS, include_bytes!("../../ui/js/map.js")),
    (
        "js/service.js",
        JS,
        include_bytes!("../../ui/js/service.js"),
    ),
    ("js/stream.js", JS, include_bytes!("../../ui/js/stream.js")),
];
const JS: &str = "text/javascript; charset=utf-8";

/// Whether `path` is one of the console's assets (served without a token).
pub fn is_public(path: &str) -> bool {
    path == "/ui"
        || path == "/ui/"
        || path
            .strip_prefix("/ui/")
            .is_some_and(|p| asset(p).is_some())
}

fn asset(path: &str) -> Option<usize> {
    ASSETS.iter().position(|(p, _, _)| *p == path)
}

/// A strong validator per asset: the hash of its bytes (computed once).
fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, bytes)| {
                let digest = Sha256::digest(bytes);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    &tags[index]
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index_slash))
        .route("/ui/{*path}", get(file))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(index, index_slash, file))]
pub struct Doc;

/// The web console's page (no token needed: the page holds no data).
#[utoipa::path(
    get,
    path = "/ui",
    tag = "console",
    responses(
        (status = 200, description = "The console's HTML page", body = String, content_type = "text/html; charset=utf-8"),
        (status = 304, description = "The client holds this version (If-None-Match)"),
    )
)]
async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// The web console's page, as `/ui`.
#[utoipa::path(
    get,
    path = "/ui/",
    tag = "console",
    responses(
        (status = 200, description = "The console's HTML page", body = String, content_type = "text/html; charset=utf-8"),
        (status = 304, description = "The client holds this version (If-None-Match)"),
    )
)]
async fn index_slash(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// One of the console's assets: its ES modules (`js/*.js`), stylesheet and page.
#[utoipa::path(
    get,
    path = "/ui/{path}",
    tag = "console",
    params(("path" = String, Path, description = "The asset, e.g. `js/main.js` or `console.css`")),
    responses(
        (status = 200, description = "The asset", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
            (String = "text/html; charset=utf-8"),
        )),
        (status = 304, description = "The client holds this version (If-None-Match)"),
        (status = 404, description = "No such asset"),
    )
)]
async fn file(Path(path): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let index = asset(&path).ok_or_else(|| ApiError::NotFound(format!("/ui/{path}")))?;
    Ok(serve(index, &headers))
}

/// The asset, or 304 when the client holds this version. Browsers revalidate every time
/// (`no-cache`): asset names carry no version, and a new controller must not run with an
/// old console.
fn serve(index: usize, headers: &HeaderMap) -> Response {
    let (_, content_type, bytes) = ASSETS[index];
    let tag = etag(index);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let common = [
        (header::ETAG, HeaderValue::from_static(tag)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes,
    )
        .into_response()
}
