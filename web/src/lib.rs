//! weir-web: the `weir` binary's library half: the HTTP API (axum), the embedded
//! console, the server configuration and the demo pipeline. `main.rs` is the CLI.

pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod config;
pub mod demo;
pub mod error;
pub mod format;
pub mod malloc;
pub mod process;
pub mod rates;
pub mod scaffold;
pub mod serve;
pub mod tls;

pub use app::{AppState, app};
