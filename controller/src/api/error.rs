//! HTTP errors, rendered as RFC 9457 problem details in one place.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Content type of a problem details body.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no resource at {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("query parameter `{parameter}`: {message}")]
    BadParameter { parameter: String, message: String },
    #[error("request body: {0}")]
    BadBody(String),
    /// A field of a JSON body (or a path segment) is wrong.
    #[error("field `{field}`: {message}")]
    BadField { field: String, message: String },
    /// Unknown resource, with a message that says what to do.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotImplemented(String),
    /// The request body is larger than the limit (413).
    #[error("the request body is larger than {limit} bytes (--http-max-body)")]
    TooLarge { limit: usize },
    /// A well-formed value the controller will not take, e.g. a timestamp outside the
    /// accepted window (422).
    #[error("field `{field}`: {message}")]
    Unprocessable { field: String, message: String },
    /// Too many requests of this kind from callers: try again after `retry_after` (429).
    #[error("{message}")]
    TooMany {
        message: String,
        retry_after: Duration,
    },
    /// A limit is reached for now: try again after `retry_after` (503).
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// The request body did not arrive in time (408).
    #[error("{0}")]
    BodyTimeout(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// No credentials, or credentials that are not valid (which of the two is not said).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials whose role does not allow this request.
    #[error("{0}")]
    Forbidden(String),
    /// The agents did not answer in time (a snapshot, a sync, a weave's nodes).
    #[error("{0}")]
    Timeout(String),
}

impl ApiError {
    pub fn parameter(parameter: &str, message: impl Into<String>) -> Self {
        Self::BadParameter {
            parameter: parameter.to_owned(),
            message: message.into(),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadParameter { .. } | Self::BadBody(_) | Self::BadField { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Missing(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// RFC 9457 problem details: the body of every error the REST API sends
/// (`application/problem+json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub problem_type: &'static str,
    /// The status's reason phrase.
    #[schema(example = "Bad Request")]
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(example = 400)]
    pub status: u16,
    /// What was wrong, in words meant for the caller.
    pub detail: String,
    /// The query parameter, path segment or body field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

/// A problem+json response of `status` saying `detail` (for errors that are not an
/// [`ApiError`], such as the framework's own rejections rewritten by
/// [`super::problem::rewrite`]).
pub fn problem_response(status: StatusCode, detail: String) -> Response {
    problem_with(status, detail, serde_json::Map::new())
}

/// As [`problem_response`], with extension members (RFC 9457 section 3.2) beside the
/// standard ones, e.g. the per-item report of a body none of whose items was taken.
pub fn problem_with(
    status: StatusCode,
    detail: String,
    extensions: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let problem = Problem {
        problem_type: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        parameter: None,
    };
    let mut body = match serde_json::to_value(problem) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    for (key, value) in extensions {
        body.entry(key).or_insert(value);
    }
    (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Refusals by a limit are counted and logged per limit (crate::limits).
        if status.is_server_error() && !matches!(self, Self::Unavailable { .. }) {
            tracing::error!(error = %self, "request failed");
        }
        let retry_after = match &self {
            Self::TooMany { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                Some(crate::limits::retry_after_secs(*retry_after))
            }
            _ => None,
        };
        let problem = Problem {
            problem_type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            parameter: match &self {
                Self::BadParameter { parameter, .. } => Some(parameter.clone()),
                Self::BadField { field, .. } | Self::Unprocessable { field, .. } => {
                    Some(field.clone())
                }
                _ => None,
            },
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, PROBLEM_JSON)],
            Json(problem),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"weft\""),
            );
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
