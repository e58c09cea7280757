//! `weir.toml`: every setting optional; the command line overrides the file.

use std::path::Path;

use serde::Deserialize;
use weir_runtime::RuntimeConfig;

use crate::tls::TlsFiles;

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
    /// How the API is served (`[server.tls]`).
    pub server: ServerSection,
}

/// `[server]`: how the API is served.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServerSection {
    /// Serve HTTPS with this certificate and key (PEM), reloaded when they change.
    pub tls: Option<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            base_path: String::new(),
            demo: false,
            runtime: RuntimeConfig::default(),
            server: ServerSection::default(),
        }
    }
}

impl ServerConfig {
    /// Read a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let mut config: Self = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        // Files named in the config are found beside it, wherever weir is started from.
        let dir = path.parent().unwrap_or(Path::new("."));
        config.server.tls = config.server.tls.map(|t| t.relative_to(dir));
        Ok(config)
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

    #[test]
    fn tls_files_are_found_beside_the_config_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "[server.tls]\ncert = 'certs/cert.pem'\nkey = '/abs/key.pem'\n",
        )?;
        let tls = ServerConfig::load(&path)?.server.tls.expect("tls set");
        assert_eq!(tls.cert, dir.path().join("certs/cert.pem"));
        assert_eq!(tls.key, std::path::PathBuf::from("/abs/key.pem"));
        assert!(toml::from_str::<ServerConfig>("[server.tls]\ncert = 'c'\n").is_err());
        assert!(toml::from_str::<ServerConfig>("[server]\ntsl = 1\n").is_err());
        Ok(())
    }
}
