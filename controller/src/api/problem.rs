//! Every error response is problem+json: a layer around the whole router rewrites the
//! error responses that were not made by [`super::error::ApiError`] (axum's own
//! rejections: a path segment or query string that does not decode, a body that is not
//! UTF-8, the extractors' body limit, ...) into RFC 9457 problem details, keeping their
//! status and saying what axum said.

use axum::http::{HeaderMap, header};
use axum::response::Response;
use http_body_util::BodyExt as _;

use super::error::{PROBLEM_JSON, problem_response};

/// At most this much of a rejection's text becomes its `detail`.
const MAX_DETAIL: usize = 4096;

/// Headers of the original error response that still say something to the caller.
const KEPT: [header::HeaderName; 3] =
    [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE];

fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == PROBLEM_JSON)
}

/// Leaves successes and problem+json alone; turns any other 4xx/5xx into problem+json.
pub async fn rewrite(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, MAX_DETAIL)
        .collect()
        .await
    {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        Err(_) => String::new(),
    };
    let detail = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned()
    } else {
        text
    };
    let mut rewritten = problem_response(status, detail);
    for name in KEPT {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}
