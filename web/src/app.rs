//! The HTTP application: `fn app(state) -> Router`, apart from serving, so tests can
//! call it without a socket.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::watch;
use weir_runtime::Engine;

use crate::api;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// Set to true on shutdown: live streams end so the server can stop.
    pub shutdown: Arc<watch::Sender<bool>>,
    /// Where the console and API are served, e.g. `/weir` behind a proxy ("" at the root).
    pub base_path: Arc<str>,
    /// When the server started (the console shows its uptime).
    pub started: std::time::Instant,
    /// Each source's recent events per second (sampled by `weir serve`).
    pub rates: Arc<crate::rates::RateHistory>,
    /// The API tokens; none: every request may do everything (loopback only).
    pub tokens: Arc<crate::auth::Tokens>,
}

impl AppState {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            shutdown: Arc::new(watch::channel(false).0),
            base_path: "".into(),
            started: std::time::Instant::now(),
            rates: Arc::default(),
            tokens: crate::auth::Tokens::of(None),
        }
    }

    /// Ask for these tokens.
    pub fn with_tokens(mut self, tokens: Arc<crate::auth::Tokens>) -> Self {
        self.tokens = tokens;
        self
    }

    /// Serve under `base_path` ("/weir"; "" or "/" for the root).
    pub fn with_base_path(mut self, base_path: &str) -> Self {
        self.base_path = base_path.trim_end_matches('/').into();
        self
    }
}

/// Every route of weir, under the state's base path.
pub fn app(state: AppState) -> Router {
    let base = state.base_path.clone();
    let auth = axum::middleware::from_fn_with_state(state.clone(), crate::auth::check);
    if base.is_empty() {
        return routes(state).layer(auth);
    }
    // `/weir` and `/weir/` both answer with the page; its `<base href>` fixes relative URLs.
    let index = get(api::console::index).with_state(state.clone());
    Router::new()
        .nest(&base, routes(state))
        .route(&format!("{base}/"), index)
        .layer(auth)
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/", get(api::console::index))
        .route("/assets/{*file}", get(api::console::asset))
        .route("/api/v1/preview", get(api::preview::preview))
        .route("/api/v1/connectors", get(api::connectors::list))
        .route(
            "/api/v1/connectors/{kind}/{name}/test",
            post(api::connectors::test),
        )
        .route("/healthz", get(api::ops::healthz))
        .route("/api/v1/health", get(api::ops::health))
        .route("/metrics", get(api::ops::metrics))
        .route("/api/v1/sql", post(api::sql::execute))
        .route("/api/v1/sources", get(api::sources::list))
        .route("/api/v1/streams", get(api::sources::streams))
        .route("/api/v1/sources/{name}", get(api::sources::get_one))
        .route(
            "/api/v1/sources/{name}/records",
            post(api::sources::ingest).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/views", get(api::views::list))
        .route("/api/v1/views/{name}", get(api::views::rows))
        .route("/api/v1/views/{name}/stream", get(api::views::stream))
        .route("/api/v1/sinks", get(api::sinks::list))
        .route("/api/v1/sinks/{name}", get(api::sinks::get_one))
        .route("/api/v1/dead-letters", get(api::dead_letters::list))
        .route(
            "/api/v1/checkpoints",
            get(api::checkpoints::list).post(api::checkpoints::take),
        )
        .route(
            "/api/v1/plugins",
            get(api::plugins::list)
                .post(api::plugins::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/plugins/{name}",
            get(api::plugins::get_one).delete(api::plugins::delete),
        )
        .fallback(api::ops::not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod every_route;

#[cfg(test)]
mod stream_tests;
