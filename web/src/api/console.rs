//! The console's static files, embedded in the binary (the third-party bundle under
//! `vendor/` is rebuilt by scripts/build-web-assets.sh, never by cargo).

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::app::AppState;

const INDEX: &str = include_str!("../../assets/index.html");

/// Every file under /assets/: its path, content type and bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("console.js", JS, include_bytes!("../../assets/console.js")),
    ("editor.js", JS, include_bytes!("../../assets/editor.js")),
    ("view.js", JS, include_bytes!("../../assets/view.js")),
    ("sources.js", JS, include_bytes!("../../assets/sources.js")),
    ("plugins.js", JS, include_bytes!("../../assets/plugins.js")),
    ("health.js", JS, include_bytes!("../../assets/health.js")),
    ("ui.js", JS, include_bytes!("../../assets/ui.js")),
    ("style.css", CSS, include_bytes!("../../assets/style.css")),
    (
        "vendor/vendor.js",
        JS,
        include_bytes!("../../assets/vendor/vendor.js"),
    ),
    (
        "vendor/uplot.css",
        CSS,
        include_bytes!("../../assets/vendor/uplot.css"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page, told where it is served (`<base href>`), so it works behind a proxy.
pub async fn index(State(state): State<AppState>) -> Html<String> {
    Html(INDEX.replace("{{BASE}}", &format!("{}/", state.base_path)))
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
