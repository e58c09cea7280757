//! weir-runtime: the host side of weir. Sources (HTTP push, the built-in Nexmark
//! generator, files of JSON lines) produce Arrow record batches; one batching policy closes micro-batches;
//! each source's pipeline thread runs the continuous queries of weir-sql over them,
//! advances the watermark and publishes view rows. Records that cannot be processed go
//! to the dead-letter store with the reason. Wasm plugins run in [`plugin`]'s host;
//! checkpoints make all of it survive a crash. [`Engine`] ties it together and is what
//! the web layer drives; [`Error::class`] tells it who must act on an error.

mod aws;
pub mod batch;
pub mod catalog_file;
pub mod checkpoint;
pub mod config;
pub mod connectors;
pub mod deadletter;
pub mod decode;
pub mod durable;
pub mod engine;
pub mod error;
pub mod failpoint;
#[cfg(test)]
mod fuzz;
mod kafka;
pub mod metrics;
pub mod options;
pub mod pipeline;
pub mod plugin;
pub mod sink;
pub mod source;
pub mod view;

pub use config::RuntimeConfig;
pub use engine::{Engine, LivePreview, Preview, SqlOutput};
pub use error::{Error, ErrorClass, Result};
