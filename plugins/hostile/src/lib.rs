//! Misbehaving exports built with weir-sdk, for the containment tests. The hostile
//! modules that need no SDK (loops, memory bombs, traps, garbage) are in `wat/`.

use std::sync::Arc;

use weir_sdk::arrow::array::{ArrayRef, Int64Array, StringArray};
use weir_sdk::arrow::datatypes::DataType;
use weir_sdk::{Plugin, PluginError};

/// Declares Int64 but returns strings.
pub fn wrong_type(args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
    let n = args.first().map_or(0, |a| a.len());
    Ok(Arc::new(StringArray::from(vec!["not a number"; n])))
}

/// Returns 2 million values (16 MiB) whatever the input.
pub fn enormous(_args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
    Ok(Arc::new(Int64Array::from_iter_values(0..2_000_000)))
}

/// Fails politely with an error message.
pub fn refuse(_args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
    Err(PluginError::new("refused on purpose"))
}

pub fn plugin() -> Plugin {
    Plugin::new("hostile", env!("CARGO_PKG_VERSION"))
        .function(
            "wrong_type",
            &[DataType::Int64],
            DataType::Int64,
            wrong_type,
        )
        .function("enormous", &[DataType::Int64], DataType::Int64, enormous)
        .function("refuse", &[DataType::Int64], DataType::Int64, refuse)
}

weir_sdk::export!(plugin);
