//! Liveness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;

use crate::app::AppState;
use crate::error::ApiError;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /api/v1/health`: uptime, CPU and memory of the process, and what needs the
/// operator's attention (failing or skipped checkpoints, failed plugins, stopped views).
pub async fn health(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let engine = &state.engine;
    let checkpoints = engine.checkpoints();
    let mut warnings: Vec<String> = checkpoints.warnings.clone();
    if let Some(e) = &checkpoints.last_error {
        warnings.push(format!("checkpoints are failing: {e}"));
    }
    for p in engine.plugin_statuses() {
        if let Some(reason) = p.reason.filter(|_| p.status != "ok") {
            warnings.push(format!("plugin {} is {}: {reason}", p.name, p.status));
        }
    }
    for v in engine.views() {
        if let Some(e) = v.error {
            warnings.push(format!("view {} is {}: {e}", v.name, v.status));
        }
    }
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "cpu_seconds": crate::process::cpu_seconds(),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_bytes": crate::process::memory_kib("VmRSS:") * 1024,
        "peak_memory_bytes": crate::process::memory_kib("VmHWM:") * 1024,
        "warnings": warnings,
    }))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics().render(),
    )
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not found",
        format!("no route {uri}; the API lives under /api/v1"),
    )
}
