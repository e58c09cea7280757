//! One module per resource of the HTTP API.

pub mod body;
pub mod checkpoints;
pub mod connectors;
pub mod console;
pub mod dead_letters;
pub mod ops;
pub mod plugins;
pub mod preview;
pub mod sinks;
pub mod sources;
pub mod sql;
pub mod views;
