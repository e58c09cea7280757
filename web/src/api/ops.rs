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

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.engine.metrics().render();
    text.push_str(&operator_metrics(&state.engine.views()));
    text.push_str(&sink_metrics(&state.engine.sinks()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Each view's operators (the console's operator graph) in Prometheus text: the
/// operator label is its place in EXPLAIN and its name, e.g. `2:filter`.
fn operator_metrics(views: &[weir_runtime::view::ViewStatus]) -> String {
    use std::fmt::Write;
    type Figure = fn(&weir_runtime::view::OperatorStatus) -> Option<f64>;
    let counter = "counter";
    let gauge = "gauge";
    let figures: [(&str, &str, &str, Figure); 7] = [
        (
            "weir_operator_rows_in_total",
            counter,
            "Rows into an operator of a view.",
            |o| Some(o.rows_in as f64),
        ),
        (
            "weir_operator_rows_out_total",
            counter,
            "Rows out of an operator of a view.",
            |o| Some(o.rows_out as f64),
        ),
        (
            "weir_operator_batches_total",
            counter,
            "Batches an operator of a view ran over.",
            |o| o.batches.map(|b| b as f64),
        ),
        (
            "weir_operator_seconds_total",
            counter,
            "Time an operator of a view took (a stateful one: the view's operator less its stateless steps).",
            |o| o.seconds,
        ),
        (
            "weir_operator_state_bytes",
            gauge,
            "State an operator of a view holds.",
            |o| o.state_bytes.map(|b| b as f64),
        ),
        (
            "weir_operator_open_windows",
            gauge,
            "Windows an operator of a view holds open.",
            |o| o.open_windows.map(|w| w as f64),
        ),
        (
            "weir_operator_late_rows_total",
            counter,
            "Rows an operator of a view found late.",
            |o| o.late_rows.map(|l| l as f64),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, figure) in figures {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for view in views {
            for (i, op) in view.operators.iter().enumerate() {
                if let Some(value) = figure(op) {
                    let _ = writeln!(
                        out,
                        "{name}{{view=\"{}\",operator=\"{i}:{}\"}} {value}",
                        label(&view.name),
                        label(&op.name)
                    );
                }
            }
        }
    }
    out
}

/// Each sink's lag and progress in Prometheus text, read from its status.
fn sink_metrics(sinks: &[weir_runtime::sink::SinkStatus]) -> String {
    use std::fmt::Write;
    type Figure = fn(&weir_runtime::sink::SinkStatus) -> f64;
    let figures: [(&str, &str, Figure); 5] = [
        (
            "weir_sink_rows_pending",
            "Changed rows of a sink's view not delivered yet: its lag in rows.",
            |s| s.rows_pending as f64,
        ),
        (
            "weir_sink_spilled_bytes",
            "Bytes of a sink's undelivered changes spilled to disk.",
            |s| s.spilled_bytes as f64,
        ),
        (
            "weir_sink_lag_seconds",
            "How long the oldest change a sink has not delivered has waited.",
            |s| s.lag_seconds,
        ),
        (
            "weir_sink_delivered_epoch",
            "The newest checkpoint epoch whose changes a sink's destination holds.",
            |s| s.delivered_epoch as f64,
        ),
        (
            "weir_sink_up",
            "1 while a sink delivers (running), 0 while it retries, has failed or stopped.",
            |s| f64::from(u8::from(s.status == "running")),
        ),
    ];
    let mut out = String::new();
    for (name, help, figure) in figures {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for sink in sinks {
            let _ = writeln!(
                out,
                "{name}{{sink=\"{}\"}} {}",
                label(&sink.name),
                figure(sink)
            );
        }
    }
    out
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not found",
        format!("no route {uri}; the API lives under /api/v1"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
