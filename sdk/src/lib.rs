//! weir-sdk: what a weir plugin author links. A plugin is a WebAssembly module that
//! receives whole Arrow record batches, one call per batch. This crate is a skeleton
//! until the plugin ABI (docs/PLUGIN_ABI.md) lands; it has no host dependencies.

/// The plugin ABI version this SDK speaks. The host refuses modules of another version.
pub const ABI_VERSION: u32 = 1;
