//! Connectors as data, for forms: `GET /api/v1/connectors` (every source and sink
//! connector with its options), and `POST /api/v1/connectors/{kind}/{name}/test` with
//! `{"options": {...}}`, which tries the broker or file the options name.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use weir_runtime::connectors::{self, TestRequest};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

pub async fn list() -> Json<Value> {
    Json(json!({ "connectors": connectors::all() }))
}

/// `{"ok": true, "message": "reached 1 broker ..."}`, or a 400 that says in plain
/// words what could not be reached.
pub async fn test(
    State(state): State<AppState>,
    Path((kind, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    if kind != "source" && kind != "sink" {
        return Err(ApiError::bad_request(format!(
            "{kind}: connectors are sources or sinks"
        )));
    }
    let request: TestRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"options\": {{...}}}}: {e}")))?;
    let config = state.engine.config().clone();
    // A broker that does not answer takes seconds: off the async threads.
    let message = tokio::task::spawn_blocking(move || {
        connectors::test(&kind, &name, &request.options, &config)
    })
    .await??;
    Ok(Json(json!({ "ok": true, "message": message })))
}
