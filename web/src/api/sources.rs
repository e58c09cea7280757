//! Sources: list, inspect, and HTTP ingest.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::api::body::Limit;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// Every source's status, with `rate_history`: its events per second over the last
/// five minutes, `[[ms since the epoch, events/s], ...]`, oldest first.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let sources: Vec<Value> = (state.engine.sources().into_iter())
        .map(|s| {
            let history = state.rates.of(&s.name);
            let mut v = json!(s);
            v["rate_history"] = json!(history);
            v
        })
        .collect();
    Json(json!({ "sources": sources }))
}

/// `GET /api/v1/streams`: every derived stream, with its columns.
pub async fn streams(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "streams": state.engine.streams() }))
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
    let bytes = state.engine.config().http.max_body_bytes;
    let limit = Limit {
        bytes,
        detail: format!("the body is larger than {bytes} bytes; split it into smaller requests"),
    };
    limit.check_declared(&headers)?;
    // Check the source before reading the body, so a typo answers 404 at once.
    state.engine.source(&name)?;
    let bytes = limit.read(body).await?;
    let engine = state.engine.clone();
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 256 => Some(k.to_string()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "the Idempotency-Key header must be 1 to 256 visible ASCII characters",
            ));
        }
    };
    let report = tokio::task::spawn_blocking(move || engine.ingest(&name, &bytes, key.as_deref()))
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
