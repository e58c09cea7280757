//! Misbehaving exports built with weir-sdk, for the containment tests. The hostile
//! modules that need no SDK (loops, memory bombs, traps, garbage) are in `wat/`.

use std::sync::Arc;

use weir_sdk::arrow::array::{ArrayRef, StringArray};
use weir_sdk::arrow::datatypes::DataType;
use weir_sdk::{Plugin, PluginError};

/// Declares Int64 but returns strings.
pub fn wrong_type(args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
    let n = args.first().map_or(0, |a| a.len());
    Ok(Arc::new(StringArray::from(vec!["not a number"; n])))
}

/// Returns 3 MiB of text per row: the right shape, far too much of it.
pub fn enormous(args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
    let n = args.first().map_or(0, |a| a.len());
    let big = "x".repeat(3 << 20);
    Ok(Arc::new(StringArray::from(vec![big.as_str(); n])))
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
        .function("enormous", &[DataType::Int64], DataType::Utf8, enormous)
        .function("refuse", &[DataType::Int64], DataType::Int64, refuse)
}

weir_sdk::export!(plugin);
