//! Wasm plugins: the host (wasmtime, limits, instances), what plugins declare, the
//! registry of uploaded plugins, and the bridge that makes their functions SQL UDFs.
//! The ABI is in docs/PLUGIN_ABI.md.

pub mod descriptor;
pub mod error;
pub mod host;
pub mod registry;
pub mod transform;
pub mod udf;

pub use descriptor::{ABI_VERSION, Descriptor};
pub use error::PluginError;
pub use host::{CallFailure, PluginHost};
pub use registry::{PluginCallError, PluginEntry, PluginStatus, Plugins};
pub use udf::PluginFunction;

#[cfg(test)]
mod tests;
