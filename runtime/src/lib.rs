//! weir-runtime: the host side of weir. Sources (HTTP push, the built-in Nexmark
//! generator) produce Arrow record batches; one batching policy closes micro-batches;
//! each source's pipeline thread runs the continuous queries of weir-sql over them,
//! advances the watermark and publishes view rows. Records that cannot be processed go
//! to the dead-letter store with the reason. [`Engine`] ties it together and is what the
//! web layer drives.

pub mod batch;
pub mod catalog_file;
pub mod checkpoint;
pub mod config;
pub mod deadletter;
pub mod decode;
pub mod durable;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod options;
pub mod pipeline;
pub mod plugin;
pub mod source;
pub mod view;

pub use config::RuntimeConfig;
pub use engine::{Engine, SqlOutput};
pub use error::{Error, ErrorClass, Result};
