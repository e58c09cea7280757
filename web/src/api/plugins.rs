//! Plugins: upload (raw wasm body), list, inspect, delete.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::body::Limit;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

#[derive(Deserialize)]
pub struct UploadParams {
    name: Option<String>,
}

/// `POST /api/v1/plugins?name=NAME` with the module as the body. 201 with the
/// plugin's exports, or 400 with why it was refused.
pub async fn upload(
    State(state): State<AppState>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = params.name.filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "name the plugin: POST /api/v1/plugins?name=NAME with the .wasm file as the body",
        )
    })?;
    let bytes = state.engine.plugins().config().max_upload_bytes;
    let limit = Limit {
        bytes,
        detail: format!(
            "plugins may be at most {bytes} bytes; build with --release and strip debug info"
        ),
    };
    limit.check_declared(&headers)?;
    let wasm = limit.read(body).await?;
    let status = state.engine.upload_plugin(&name, wasm.to_vec()).await?;
    Ok((StatusCode::CREATED, Json(json!(status))))
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "plugins": state.engine.plugin_statuses() }))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.engine.plugin_status(&name)?)))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    state.engine.delete_plugin(&name).await?;
    Ok(Json(json!({ "message": format!("plugin {name} deleted") })))
}
