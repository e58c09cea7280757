//! The identity transform: what the plugin path costs when the plugin does nothing.

use weir_sdk::arrow::array::RecordBatch;
use weir_sdk::{Output, Plugin, PluginError};

pub fn passthrough(batch: RecordBatch) -> Result<RecordBatch, PluginError> {
    Ok(batch)
}

pub fn plugin() -> Plugin {
    Plugin::new("passthrough", env!("CARGO_PKG_VERSION")).transform(
        "passthrough",
        Output::SameAsInput,
        passthrough,
    )
}

weir_sdk::export!(plugin);
