//! `weir serve`: check the data dir, bind, start, and serve until Ctrl-C.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use weir_runtime::Engine;

use crate::app::{AppState, app};
use crate::config::ServerConfig;

/// Run the server. Errors are one line a person can act on.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let signals = Signals::catch()?;
    let data_dir = &config.runtime.data_dir;
    check_data_dir(data_dir)?;
    let tokens = crate::auth::Tokens::of(Some(data_dir));
    if !tokens.required() && !loopback(&config.listen) {
        anyhow::bail!(
            "refusing to listen on {} without API tokens: anyone who reaches it could run \
             anything. Make one with `weir token create --role admin --data-dir {}` (then \
             send it as Authorization: Bearer <token>), or listen on 127.0.0.1",
            config.listen,
            data_dir.display()
        );
    }
    // A certificate that does not load stops the start, before anything else is opened.
    let tls = match &config.server.tls {
        Some(files) => Some((files.clone(), files.load()?)),
        None => None,
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().context("listener address")?;
    let engine = Engine::new(config.runtime.clone())
        .map_err(|e| anyhow::anyhow!("cannot start on data dir {}: {e}", data_dir.display()))?;
    for problem in engine.restore_catalog().await {
        tracing::warn!("{problem}");
    }
    if config.demo {
        crate::demo::start(&engine).await?;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, data_dir = %data_dir.display(), "weir listening");
    // A line on stdout that scripts and tests can wait for.
    println!(
        "weir listening on {scheme}://{addr}{}",
        state_base(&config.base_path)
    );
    let _ = std::io::stdout().flush();
    let state = AppState::new(engine.clone())
        .with_base_path(&config.base_path)
        .with_tokens(tokens);
    state.rates.start(engine.clone());
    let shutdown = state.shutdown.clone();
    let stopped = stop_on_signal(signals, engine, shutdown.clone());
    match tls {
        None => axum::serve(listener, app(state))
            .with_graceful_shutdown(stopped)
            .await
            .context("serving HTTP")?,
        Some((files, server_config)) => {
            let rustls = RustlsConfig::from_config(server_config);
            crate::tls::watch(files, rustls.clone(), shutdown.subscribe());
            let handle = axum_server::Handle::new();
            let on_stop = handle.clone();
            tokio::spawn(async move {
                stopped.await;
                on_stop.graceful_shutdown(Some(DRAIN));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, rustls)?
                .handle(handle)
                .serve(app(state).into_make_service())
                .await
                .context("serving HTTPS")?
        }
    }
    Ok(())
}

/// How long open connections get to finish once an HTTPS server is told to stop.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Ctrl-C and SIGTERM (what systemd, Docker and Kubernetes send), caught from the start:
/// a signal that comes while weir is still starting stops it as gracefully as later.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn catch() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("catching Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Wait for Ctrl-C or SIGTERM, then end live streams, take a last checkpoint and stop
/// the engine. A second signal stops the process at once.
async fn stop_on_signal(
    mut signals: Signals,
    engine: Engine,
    shutdown: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
) {
    signals.next().await;
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("a second signal: stopping now, without the last checkpoint");
        std::process::exit(130);
    });
    tracing::info!("shutting down");
    // End live streams, or graceful shutdown would wait for them forever.
    let _ = shutdown.send(true);
    // A last checkpoint, so a planned restart replays nothing.
    let last = engine.clone();
    match tokio::task::spawn_blocking(move || last.checkpoint_now()).await {
        Ok(Ok(c)) => tracing::info!(epoch = c.epoch, "final checkpoint written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "no final checkpoint"),
        Err(e) => tracing::warn!(error = %e, "no final checkpoint"),
    }
    engine.shut_down();
}

/// Whether `listen` (host:port) is a loopback address only.
fn loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The base path as it ends a URL ("" at the root).
fn state_base(base_path: &str) -> &str {
    base_path.trim_end_matches('/')
}

/// Create the data dir if needed and prove it is writable.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot use data dir {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".weir-write-probe");
    std::fs::write(&probe, b"ok").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    Ok(())
}
