//! `GET /api/v1/dead-letters?source=&view=&limit=`: what could not be processed, and why.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;

#[derive(Debug, Deserialize)]
pub struct Filter {
    pub source: Option<String>,
    pub view: Option<String>,
    /// Newest entries to return; default 100.
    pub limit: Option<usize>,
}

pub async fn list(State(state): State<AppState>, Query(f): Query<Filter>) -> Json<Value> {
    let store = state.engine.dead_letters();
    let letters = store.recent(
        f.source.as_deref(),
        f.view.as_deref(),
        f.limit.unwrap_or(100),
    );
    // Late rows are described here, when read (see `Reason`); a late one keeps `late`.
    let letters: Vec<Value> = letters
        .iter()
        .map(|l| {
            let mut v = serde_json::to_value(l).unwrap_or_default();
            v["reason"] = l.reason_text().into();
            v
        })
        .collect();
    Json(json!({ "total": store.total(), "dead_letters": letters }))
}
