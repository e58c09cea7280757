//! Checkpoints: what is on disk, and taking one on demand.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// `GET /api/v1/checkpoints`: recent checkpoints (time, duration, size, positions).
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let engine = state.engine.clone();
    let status = tokio::task::spawn_blocking(move || engine.checkpoints())
        .await
        .ok();
    Json(json!(status))
}

/// `POST /api/v1/checkpoints`: take a checkpoint now (before maintenance, say).
pub async fn take(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let engine = state.engine.clone();
    let info = tokio::task::spawn_blocking(move || engine.checkpoint_now())
        .await
        .map_err(|e| ApiError::from(weir_runtime::Error::Internal(e.to_string())))??;
    Ok(Json(json!(info)))
}
