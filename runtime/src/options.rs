//! `WITH (...)` options of CREATE SOURCE, deserialized into plain serde structs so that
//! unknown or mistyped options get a precise error. Values arrive as text; numbers and
//! booleans are recognised before deserializing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::BatchConfig;
use crate::{Error, Result};

/// Options every connector accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct CommonOptions {
    /// `http`, `nexmark` or `file`.
    pub connector: String,
    /// Record format; only `json` for now.
    #[serde(default)]
    pub format: Option<String>,
    /// Close micro-batches at this many rows (default from the runtime config).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Close micro-batches this long after their first row, e.g. '100ms'.
    #[serde(default, with = "humantime_serde::option")]
    pub max_delay: Option<Duration>,
}

impl CommonOptions {
    /// The batch policy of this source: its options over the runtime defaults.
    pub fn batch(&self, defaults: BatchConfig) -> BatchConfig {
        BatchConfig {
            max_rows: self.max_rows.unwrap_or(defaults.max_rows),
            max_delay: self.max_delay.unwrap_or(defaults.max_delay),
        }
    }
}

/// Deserialize `options` into `T`, naming the source in errors.
pub fn parse<T: DeserializeOwned>(source: &str, options: &BTreeMap<String, String>) -> Result<T> {
    let map = options
        .iter()
        .map(|(k, v)| (k.clone(), typed(v)))
        .collect::<serde_json::Map<_, _>>();
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| Error::BadRequest(format!("source {source}: bad WITH option: {e}")))
}

fn typed(v: &str) -> serde_json::Value {
    if let Ok(i) = v.parse::<u64>() {
        return i.into();
    }
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    match v {
        "true" => true.into(),
        "false" => false.into(),
        _ => v.into(),
    }
}
