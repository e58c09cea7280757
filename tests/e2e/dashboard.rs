//! The dashboard in a real headless Chromium (driven by playwright-core from
//! tests/browser): `weir serve --demo` shows sources, views, a live table fed by SSE,
//! SQL results and errors, and plugin uploads (refused, accepted, failing).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::support::{Weir, plugin_wasm, wat_module};

#[tokio::test]
async fn demo_dashboard_shows_live_results_in_a_browser() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let ready = dir.join("node_modules/playwright-core").exists()
        && Path::new("/usr/bin/chromium").exists();
    if !ready {
        assert!(
            std::env::var("WEIR_SKIP_BROWSER").is_ok(),
            "the browser test needs Chromium and playwright-core: run scripts/test.sh (it installs both), \
             or set WEIR_SKIP_BROWSER=1 to skip"
        );
        return Ok(());
    }
    let weir = Weir::start(&["--demo"]).await?;
    let files = tempfile::tempdir()?;
    std::fs::write(
        files.path().join("currency.wasm"),
        plugin_wasm("weir_plugin_currency"),
    )?;
    std::fs::write(files.path().join("not-wasm.txt"), "not WebAssembly\n")?;
    std::fs::write(
        files.path().join("trap.wasm"),
        wat_module("hostile/wat/immediate_trap.wat"),
    )?;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg(dir.join("dashboard.mjs"))
            .arg(format!("{}/", weir.url))
            .arg(files.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the browser check did not finish in 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dashboard check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    Ok(())
}
