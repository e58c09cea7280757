//! Sources: list, inspect, and HTTP ingest.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "sources": state.engine.sources() }))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.engine.source(&name)?.status())))
}

/// `POST /api/v1/sources/{name}/records`: a JSON array or newline-delimited JSON.
pub async fn ingest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let limit = state.engine.config().http.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request too large",
            format!("the body is larger than {limit} bytes; split it into smaller requests"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Check the source before reading the body, so a typo answers 404 at once.
    state.engine.source(&name)?;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let engine = state.engine.clone();
    let report = tokio::task::spawn_blocking(move || engine.ingest(&name, &bytes))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                e.to_string(),
            )
        })??;
    Ok(Json(json!(report)))
}
