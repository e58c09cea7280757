//! Why a plugin could not be taken or kept: refused (the author must change it), not
//! stored or read (the data dir: the operator must act), or the Wasm engine failing
//! (a bug or the machine). Failures of calls are [`super::CallFailure`]s.

/// A plugin refused, or not stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The module is not one weir runs: not WebAssembly, imports weir does not grant,
    /// another ABI version, a bad descriptor. The text says what to change.
    #[error("{0}")]
    Rejected(String),
    /// Storing or reading the module in the data dir failed.
    #[error("{0}")]
    Storage(std::io::Error),
    /// The Wasm engine could not start.
    #[error("{0}")]
    Host(String),
}

impl PluginError {
    /// The same error, naming the plugin it is about.
    pub fn of(self, name: &str) -> Self {
        match self {
            Self::Rejected(m) => Self::Rejected(format!("plugin {name} refused: {m}")),
            other => other,
        }
    }
}
