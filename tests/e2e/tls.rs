//! HTTPS with `[server.tls]`: the real binary serves the certificate the test made, over
//! TLS only, picks up a renewed certificate without a restart, keeps the one it has when
//! the new files do not load, and refuses to start on files that do not load.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::aws_lc_rs};

use crate::support::Weir;

/// A certificate authority and a server certificate it signed for localhost.
struct Pki {
    ca: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    cert: CertificateDer<'static>,
}

fn pki(name: &str) -> Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("weir test CA {name}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
        .signed_by(&key, &ca)?;
    Ok(Pki {
        ca: ca.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert: cert.der().clone(),
    })
}

/// GET `path` over TLS, trusting only `ca`: the status line and the certificate served.
async fn https_get(
    addr: &str,
    ca: &CertificateDer<'static>,
    path: &str,
) -> Result<(String, CertificateDer<'static>)> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate served")?
        .clone()
        .into_owned();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    let status = answer.lines().next().unwrap_or_default().to_string();
    Ok((status, served))
}

/// Wait until the server hands out `want` to a client that trusts `ca`.
async fn wait_for_cert(addr: &str, ca: &CertificateDer<'static>, want: &CertificateDer<'_>) {
    for _ in 0..150 {
        if let Ok((_, served)) = https_get(addr, ca, "/healthz").await
            && served.as_ref() == want.as_ref()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the renewed certificate was not served within 15 s");
}

#[tokio::test]
async fn https_serves_the_configured_certificate_and_picks_up_a_renewed_one() -> Result<()> {
    let conf = tempfile::tempdir()?;
    let first = pki("first")?;
    std::fs::create_dir(conf.path().join("certs"))?;
    std::fs::write(conf.path().join("certs/cert.pem"), &first.cert_pem)?;
    std::fs::write(conf.path().join("certs/key.pem"), &first.key_pem)?;
    // Relative paths: found beside the config file, not in weir's working directory.
    let config = conf.path().join("weir.toml");
    std::fs::write(
        &config,
        "[server.tls]\ncert = 'certs/cert.pem'\nkey = 'certs/key.pem'\n",
    )?;
    let config_arg = config.to_string_lossy().to_string();
    let weir = Weir::start(&["--config", &config_arg]).await?;
    let addr = weir
        .url
        .strip_prefix("https://")
        .with_context(|| format!("weir says it serves {}, not https", weir.url))?
        .to_string();

    let (status, served) = https_get(&addr, &first.ca, "/healthz").await?;
    assert!(status.contains("200"), "healthz over TLS: {status}");
    assert_eq!(served, first.cert, "the configured certificate is served");
    let (status, _) = https_get(&addr, &first.ca, "/api/v1/views").await?;
    assert!(status.contains("200"), "the API over TLS: {status}");

    // Plain HTTP gets no answer from a TLS port.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP was answered on the TLS port: {plain:?}"
    );

    // A client that trusts another authority refuses the server.
    let stranger = pki("stranger")?;
    assert!(
        https_get(&addr, &stranger.ca, "/healthz").await.is_err(),
        "a client trusting another CA must not accept the certificate"
    );

    // Renew: new files in place, the server picks them up without a restart.
    let second = pki("second")?;
    std::fs::write(conf.path().join("certs/key.pem"), &second.key_pem)?;
    std::fs::write(conf.path().join("certs/cert.pem"), &second.cert_pem)?;
    wait_for_cert(&addr, &second.ca, &second.cert).await;
    let (status, _) = https_get(&addr, &second.ca, "/healthz").await?;
    assert!(status.contains("200"), "healthz after renewal: {status}");
    assert!(
        https_get(&addr, &first.ca, "/healthz").await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken renewal keeps the working certificate and the server.
    let log_path = weir.data_dir.path().join("weir.log");
    let refused = |log: &str| {
        log.matches("still serving the certificate loaded before")
            .count()
    };
    let refused_before = refused(&std::fs::read_to_string(&log_path)?);
    std::fs::write(conf.path().join("certs/cert.pem"), "not a certificate")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, served) = https_get(&addr, &second.ca, "/healthz").await?;
    assert!(
        status.contains("200"),
        "healthz after a broken renewal: {status}"
    );
    assert_eq!(served, second.cert, "the last good certificate is kept");
    let log = std::fs::read_to_string(&log_path)?;
    assert!(
        refused(&log) > refused_before && log.contains("no PEM certificate"),
        "the failed reload is logged: {log}"
    );

    // A renewal renamed over the old files (as certbot's and most tools' are) too.
    let third = pki("third")?;
    for (name, text) in [("key.pem", &third.key_pem), ("cert.pem", &third.cert_pem)] {
        let staged = conf.path().join(format!("certs/.{name}.new"));
        std::fs::write(&staged, text)?;
        std::fs::rename(&staged, conf.path().join("certs").join(name))?;
    }
    wait_for_cert(&addr, &third.ca, &third.cert).await;

    // SIGTERM (what service managers send): a last checkpoint, then a clean exit.
    let (status, data_dir) = weir.stop_with("TERM").await?;
    let log = std::fs::read_to_string(data_dir.path().join("weir.log"))?;
    assert!(status.success(), "exit after SIGTERM: {status}\n{log}");
    assert!(log.contains("final checkpoint written"), "{log}");
    Ok(())
}

#[tokio::test]
async fn the_command_line_flags_serve_https_and_files_that_do_not_load_stop_the_start() -> Result<()>
{
    let conf = tempfile::tempdir()?;
    let good = pki("good")?;
    let other = pki("other")?;
    let cert = conf.path().join("cert.pem");
    let key = conf.path().join("key.pem");
    let (cert_arg, key_arg) = (
        cert.to_string_lossy().to_string(),
        key.to_string_lossy().to_string(),
    );
    let cases = [
        ("garbage", "no PEM certificate", good.key_pem.as_str()),
        (good.cert_pem.as_str(), "TLS key", "garbage"),
        // A key that is not the certificate's.
        (good.cert_pem.as_str(), "with key", other.key_pem.as_str()),
    ];
    for (cert_text, expected, key_text) in cases {
        std::fs::write(&cert, cert_text)?;
        std::fs::write(&key, key_text)?;
        let data = tempfile::tempdir()?;
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(crate::support::weir_binary())
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(data.path())
                .args(["--tls-cert", &cert_arg, "--tls-key", &key_arg])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("weir neither started nor stopped")??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !stdout.contains("listening"),
            "weir started with a bad {expected}: {stdout}"
        );
        assert!(
            stderr.contains(expected) && stderr.contains(conf.path().to_string_lossy().as_ref()),
            "the error names the file and the problem ({expected}): {stderr}"
        );
    }
    // The same flags with a good pair: HTTPS.
    std::fs::write(&cert, &good.cert_pem)?;
    std::fs::write(&key, &good.key_pem)?;
    let weir = Weir::start(&["--tls-cert", &cert_arg, "--tls-key", &key_arg]).await?;
    let addr = weir.url.strip_prefix("https://").context("https")?;
    let (status, served) = https_get(addr, &good.ca, "/healthz").await?;
    assert!(status.contains("200"), "{status}");
    assert_eq!(served, good.cert);
    Ok(())
}
