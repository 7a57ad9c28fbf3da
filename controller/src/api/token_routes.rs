//! Client tokens over REST (role `admin`): `POST /tokens` `{"name", "role"}` makes one and
//! answers it once (201); `GET /tokens` lists them (never a secret or a hash);
//! `DELETE /tokens/{id}` revokes one for the next request.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::auth::{Role, TokenRecord};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", delete(revoke))
}

fn view(r: &TokenRecord) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "role": r.role,
        "created": agent_common::time::rfc3339(r.created_unix_ns),
    })
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    let tokens: Vec<Value> = state.auth.tokens.list().iter().map(view).collect();
    Json(json!({ "tokens": tokens }))
}

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
    let (record, token) = state.auth.tokens.create(name, role).map_err(|e| match e {
        crate::auth::tokens::TokenError::BadName(message) => ApiError::BadField {
            field: "name".into(),
            message,
        },
        other => ApiError::Internal(other.to_string()),
    })?;
    let mut v = view(&record);
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.auth.tokens.revoke(&id) {
        Ok(Some(record)) => Ok(Json(view(&record))),
        Ok(None) => Err(ApiError::Missing(format!(
            "no token {id}; list them with GET /tokens"
        ))),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}
