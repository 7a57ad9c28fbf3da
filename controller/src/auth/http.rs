//! The REST side: every request passes [`require_role`] before its handler.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Refusal, role};
use crate::api::error::ApiError;
use crate::state::AppState;

/// Who made a request: the id of its token (handlers that keep something per client read
/// it from the request's extensions). Absent when tokens are not required (in-process
/// tests) or the path is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(pub String);

/// Lets a request through if its path is open or its token's role allows it (with its
/// [`ClientId`]); otherwise answers 401 or 403 (problem+json) and the handler never runs.
pub async fn require_role(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    let path = request.uri().path();
    if auth.is_open(path) {
        return next.run(request).await;
    }
    let needed = role::for_rest(request.method(), path);
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.authorize(header, needed) {
        Ok(record) => {
            if let Some(record) = record {
                request.extensions_mut().insert(ClientId(record.id));
            }
            next.run(request).await
        }
        Err(refusal) => {
            state
                .metrics
                .auth_refused(matches!(refusal, Refusal::Forbidden { .. }));
            match refusal {
                Refusal::Forbidden { .. } => ApiError::Forbidden(refusal.to_string()),
                _ => ApiError::Unauthorized(refusal.to_string()),
            }
            .into_response()
        }
    }
}
