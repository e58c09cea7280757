//! Sinks: list and inspect (created and dropped with SQL).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiResult;

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "sinks": state.engine.sinks() }))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(state.engine.sink(&name)?)))
}
