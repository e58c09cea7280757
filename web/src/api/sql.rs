//! `POST /api/v1/sql`: run one statement.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use weir_runtime::SqlOutput;

use crate::app::AppState;
use crate::auth::{Granted, Role, forbidden};
use crate::error::{ApiError, ApiResult};
use crate::format::{Format, rows_response};

#[derive(Debug, Deserialize)]
pub struct SqlRequest {
    pub sql: String,
}

pub async fn execute(
    State(state): State<AppState>,
    granted: Option<axum::Extension<Granted>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("expected a JSON body {{\"sql\": \"...\"}}: {e}"))
    })?;
    // Readers and writers may query; DDL is an admin's.
    let role = granted.map_or(Role::Admin, |g| g.0.0);
    if role < Role::Admin && !weir_runtime::Engine::is_read_only(&request.sql) {
        return Ok(forbidden(
            role,
            Role::Admin,
            "change the catalog (CREATE, DROP)",
        ));
    }
    // A failing call counts towards marking a plugin failed, which pauses its views.
    if role < Role::Admin && state.engine.calls_plugins(&request.sql) {
        return Ok(forbidden(
            role,
            Role::Admin,
            "call plugin functions in ad hoc SQL",
        ));
    }
    let done = state.engine.execute(&request.sql).await;
    match done.map_err(|e| ApiError::of_statement(e, &request.sql))? {
        SqlOutput::Rows {
            schema,
            batches,
            cut,
        } => {
            // Encoding a large answer is CPU work: off the threads that serve the API.
            let format = Format::from_headers(&headers);
            let mut response =
                tokio::task::spawn_blocking(move || rows_response(format, &schema, &batches))
                    .await??;
            // An answer cut at a limit says so, whatever the format.
            if let Some(v) = cut.and_then(|c| axum::http::HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert("weir-result-cut", v);
            }
            Ok(response)
        }
        SqlOutput::Done { message } => {
            Ok(axum::Json(serde_json::json!({ "message": message })).into_response())
        }
    }
}
