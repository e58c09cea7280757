//! HTTPS: `[server.tls] cert` and `key` (PEM files). The files are read again when they
//! change, so a renewed certificate is served without a restart; a change that does not
//! load (a half-written file, a key that does not match) keeps the certificate before it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Where the certificate chain and its private key are.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How often the files are looked at for a change.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl TlsFiles {
    /// Paths relative to the directory of the config file that named them.
    pub fn relative_to(mut self, dir: &Path) -> Self {
        self.cert = dir.join(&self.cert);
        self.key = dir.join(&self.key);
        self
    }

    /// Read and check both files: the error names the file and what is wrong with it.
    pub fn load(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read TLS file {}: {e}", path.display()))
        };
        let cert_pem = read(&self.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("TLS cert {}: {e}", self.cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("TLS cert {}: no PEM certificate in it", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?)
            .map_err(|e| anyhow::anyhow!("TLS key {}: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                anyhow::anyhow!(
                    "TLS cert {} with key {}: {e}",
                    self.cert.display(),
                    self.key.display()
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Both files' bytes (None while one cannot be read): compared, not their times,
    /// so a renewal is seen however it is written (in place, renamed over, or the
    /// symlink swap of a Kubernetes secret volume).
    fn contents(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(&self.cert).ok()?,
            std::fs::read(&self.key).ok()?,
        ))
    }
}

/// Serve with these files, and reload them into `config` whenever they change until
/// `stop` fires.
pub fn watch(files: TlsFiles, config: RustlsConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut seen = files.contents();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = stop.changed() => return,
            }
            let now = files.contents();
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            let loaded = {
                let files = files.clone();
                tokio::task::spawn_blocking(move || files.load()).await
            };
            match loaded {
                Ok(Ok(server_config)) => {
                    config.reload_from_config(server_config);
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                }
                Ok(Err(e)) => {
                    tracing::warn!("{e}; still serving the certificate loaded before")
                }
                Err(e) => tracing::warn!(error = %e, "TLS reload failed"),
            }
        }
    });
}
