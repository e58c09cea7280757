//! `weir.toml`: every setting optional; the command line overrides the file.

use std::path::Path;

use serde::Deserialize;
use weir_runtime::RuntimeConfig;

/// The server's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Serve the console and API under this path, e.g. `/weir` behind a proxy that
    /// forwards `/weir/...` unchanged. Default: the root.
    pub base_path: String,
    /// Start the Nexmark demo pipeline. Default false.
    pub demo: bool,
    /// Runtime settings (data dir, batching, HTTP ingest limits).
    pub runtime: RuntimeConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            base_path: String::new(),
            demo: false,
            runtime: RuntimeConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Read a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_typos() {
        let c: ServerConfig = toml::from_str(
            "listen = '0.0.0.0:9000'\n[runtime]\ndata-dir = '/tmp/w'\n[runtime.batch]\nmax-rows = 100\nmax-delay = '20ms'\n",
        )
        .expect("parses");
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.runtime.batch.max_rows, 100);
        assert_eq!(
            c.runtime.batch.max_delay,
            std::time::Duration::from_millis(20)
        );
        assert_eq!(
            c.runtime.http.max_body_bytes,
            8 * 1024 * 1024,
            "unset values keep their defaults"
        );
        assert!(toml::from_str::<ServerConfig>("lisen = 'x'").is_err());
    }
}
