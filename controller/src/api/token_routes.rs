//! Client tokens over REST (role `admin`): `POST /tokens` `{"name", "role", "expires_in"}`
//! makes one and answers it once (201; `expires_in` is optional, a duration such as `30d`
//! or `12h`); `GET /tokens` lists them (never a secret or a hash), with `expires` and
//! `expired`; `DELETE /tokens/{id}` revokes one for the next request.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::auth::{Role, TokenRecord};
use crate::state::AppState;

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, create, revoke))]
pub struct Doc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", delete(revoke))
}

fn view(r: &TokenRecord, now_unix_ns: u64) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "role": r.role,
        "created": agent_common::time::rfc3339(r.created_unix_ns),
        "expires": r.expires_unix_ns.map(agent_common::time::rfc3339),
        "expired": r.expired(now_unix_ns),
    })
}

#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    responses((status = 200, description = "The tokens (never their secrets)", body = crate::api::openapi::schemas::TokenList))
)]
async fn list(State(state): State<AppState>) -> Json<Value> {
    let tokens = &state.auth.tokens;
    let now = tokens.now_unix_ns();
    let all: Vec<Value> = tokens.list().iter().map(|r| view(r, now)).collect();
    Json(json!({ "tokens": all }))
}

#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    request_body(content = crate::api::openapi::schemas::CreateToken, content_type = "application/json"),
    responses((status = 201, description = "The token, with its secret shown this once", body = crate::api::openapi::schemas::NewToken))
)]
async fn create(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadBody(format!("not valid JSON: {e}")))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::BadField {
                field: name.to_owned(),
                message: "required, a string".into(),
            })
    };
    let name = field("name")?;
    let role: Role = field("role")?
        .parse()
        .map_err(|message| ApiError::BadField {
            field: "role".into(),
            message,
        })?;
    let expires_in = match value.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            Some(agent_common::time::parse_duration(text).map_err(|message| {
                ApiError::BadField {
                    field: "expires_in".into(),
                    message,
                }
            })?)
        }
        Some(_) => {
            return Err(ApiError::BadField {
                field: "expires_in".into(),
                message: "a duration such as 30d, 12h or 90m".into(),
            });
        }
    };
    let tokens = &state.auth.tokens;
    let (record, token) = tokens.create(name, role, expires_in).map_err(|e| match e {
        crate::auth::tokens::TokenError::BadName(message) => ApiError::BadField {
            field: "name".into(),
            message,
        },
        crate::auth::tokens::TokenError::BadExpiry(message) => ApiError::BadField {
            field: "expires_in".into(),
            message,
        },
        other => ApiError::Internal(other.to_string()),
    })?;
    let mut v = view(&record, tokens.now_unix_ns());
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The token revoked", body = crate::api::openapi::schemas::Token),
        (status = 404, description = "No such token"),
    )
)]
async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.auth.tokens.revoke(&id) {
        Ok(Some(record)) => Ok(Json(view(&record, state.auth.tokens.now_unix_ns()))),
        Ok(None) => Err(ApiError::Missing(format!(
            "no token {id}; list them with GET /tokens"
        ))),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}
