//! The console in a real headless Chromium (playwright-core from tests/browser drives
//! Debian's chromium): `weir serve --demo --base-path /weir`, then tests/browser/console.mjs
//! walks every page as a user would. Screenshots of each page go to
//! `$CARGO_TARGET_DIR/browser-screenshots` (or target/), for people to look at.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;

use crate::support::{Weir, plugin_wasm, wat_module};

#[tokio::test]
async fn the_console_works_in_a_browser() -> Result<()> {
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
    let weir = Weir::start(&["--demo", "--base-path", "/weir"]).await?;
    assert!(weir.url.ends_with("/weir"), "{}", weir.url);
    let files = tempfile::tempdir()?;
    std::fs::write(
        files.path().join("currency.wasm"),
        plugin_wasm("weir_plugin_currency"),
    )?;
    std::fs::write(
        files.path().join("redact.wasm"),
        plugin_wasm("weir_plugin_redact"),
    )?;
    std::fs::write(files.path().join("not-wasm.txt"), "not WebAssembly\n")?;
    std::fs::write(
        files.path().join("trap.wasm"),
        wat_module("hostile/wat/immediate_trap.wat"),
    )?;
    let shots = screenshots_dir();
    std::fs::create_dir_all(&shots)?;
    // A topic of two partitions with records in each, for the Kafka form and the lag
    // per partition on the sources page.
    let topic = crate::kafka::unique("console");
    crate::kafka::create_topic(&topic, 2).await?;
    let messages: Vec<(i32, Option<String>, String)> = (0..20)
        .map(|i| (i % 2, None, format!("{{\"id\": {i}}}")))
        .collect();
    crate::kafka::produce(&topic, &messages).await?;
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        Command::new("node")
            .env("WEIR_TEST_KAFKA", crate::kafka::brokers())
            .env("WEIR_TEST_TOPIC", &topic)
            .arg(dir.join("console.mjs"))
            .arg(format!("{}/", weir.url))
            .arg(files.path())
            .arg(&shots)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the browser check did not finish in 240 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "console check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    for page in [
        "query",
        "query-error",
        "preview",
        "view",
        "plugins",
        "sources",
        "health",
    ] {
        let shot = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
            "no screenshot {}",
            shot.display()
        );
    }
    eprintln!("screenshots in {}", shots.display());
    Ok(())
}

#[tokio::test]
async fn the_console_asks_for_a_token_and_keeps_to_its_role() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    if !(dir.join("node_modules/playwright-core").exists()
        && Path::new("/usr/bin/chromium").exists())
    {
        assert!(
            std::env::var("WEIR_SKIP_BROWSER").is_ok(),
            "run scripts/test.sh"
        );
        return Ok(());
    }
    let data = tempfile::tempdir()?;
    let token = |role: &str| {
        let out = std::process::Command::new(crate::support::weir_binary())
            .args(["token", "create", "--role", role, "--data-dir"])
            .arg(data.path())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let (admin, reader) = (token("admin")?, token("reader")?);
    let weir = Weir::start_in(data, &[]).await?;
    for sql in [
        "CREATE SOURCE t (id BIGINT) WITH (connector = 'http')",
        "CREATE MATERIALIZED VIEW v AS SELECT id FROM t",
    ] {
        let r = weir
            .client
            .post(format!("{}/api/v1/sql", weir.url))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": sql }).to_string())
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{sql}");
    }
    let r = weir
        .client
        .post(format!("{}/api/v1/sources/t/records", weir.url))
        .bearer_auth(&admin)
        .body("{\"id\": 7}\n")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg(dir.join("login.mjs"))
            .arg(format!("{}/", weir.url))
            .arg(&reader)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the login check did not finish in 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"ok\":true"),
        "login check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("browser-screenshots")
}

/// The SSE events of `response` until `until` says stop: (event, data) pairs.
async fn events_until(
    response: &mut reqwest::Response,
    seen: &mut Vec<(String, String)>,
    until: impl Fn(&[(String, String)]) -> bool,
) -> Result<()> {
    let mut buffer = String::new();
    while !until(seen) {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .context("no event in 30 s")??
            .context("the stream ended")?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(cut) = buffer.find("\n\n") {
            let block: String = buffer.drain(..cut + 2).collect();
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if !data.is_empty() {
                seen.push((event, data));
            }
        }
    }
    Ok(())
}

async fn previews_of(weir: &Weir, source: &str) -> Result<u64> {
    let status: serde_json::Value = weir
        .client
        .get(format!("{}/api/v1/sources/{source}", weir.url))
        .send()
        .await?
        .json()
        .await?;
    status["previews"]
        .as_u64()
        .with_context(|| format!("no previews in {status}"))
}

#[tokio::test]
async fn a_preview_streams_first_rows_creates_nothing_and_ends_with_its_reader() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    weir.exec("CREATE SOURCE clicks (user_id BIGINT, page VARCHAR) WITH (connector = 'http')")
        .await?;
    let preview = |sql: &str, limit: usize| {
        let query = serde_urlencoded::to_string([("sql", sql), ("limit", &limit.to_string())])
            .unwrap_or_default();
        weir.client
            .get(format!("{}/api/v1/preview?{query}", weir.url))
            .send()
    };
    let mut live = preview(
        "SELECT user_id * 10 AS u, page FROM clicks WHERE page <> 'skip'",
        3,
    )
    .await?;
    assert_eq!(live.status(), 200);
    let mut seen = Vec::new();
    events_until(&mut live, &mut seen, |s| !s.is_empty()).await?;
    assert_eq!(seen[0].0, "columns");
    assert!(seen[0].1.contains("\"u\""), "{seen:?}");
    assert_eq!(previews_of(&weir, "clicks").await?, 1);
    let metrics = weir
        .client
        .get(format!("{}/metrics", weir.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(!metrics.contains("preview"), "a preview shows in /metrics");
    let ingest = |body: &'static str| {
        weir.client
            .post(format!("{}/api/v1/sources/clicks/records", weir.url))
            .body(body)
            .send()
    };
    ingest("{\"user_id\": 1, \"page\": \"a\"}\n{\"user_id\": 2, \"page\": \"skip\"}\n").await?;
    events_until(&mut live, &mut seen, |s| s.iter().any(|(e, _)| e == "rows")).await?;
    let rows = &seen.iter().find(|(e, _)| e == "rows").expect("rows").1;
    assert!(rows.contains("[10,\"a\"]"), "{rows}");
    assert!(!rows.contains("skip"), "{rows}");
    // Nothing durable: no view, nothing in the catalog.
    let (_, views) = weir.sql("SHOW VIEWS").await?;
    assert_eq!(views["rows"].as_array().map(Vec::len), Some(0), "{views}");
    // The limit ends it (3 rows: one more batch of two).
    ingest("{\"user_id\": 3, \"page\": \"b\"}\n{\"user_id\": 4, \"page\": \"c\"}\n").await?;
    events_until(&mut live, &mut seen, |s| s.iter().any(|(e, _)| e == "end")).await?;
    let sent: usize = seen
        .iter()
        .filter(|(e, _)| e == "rows")
        .map(|(_, d)| d.matches("],[").count() + 1)
        .sum();
    assert_eq!(sent, 3, "{seen:?}");
    drop(live);
    wait_for_no_previews(&weir).await?;

    // A reader that goes away ends the preview too.
    let mut gone = preview("SELECT page FROM clicks", 1000).await?;
    let mut seen = Vec::new();
    events_until(&mut gone, &mut seen, |s| !s.is_empty()).await?;
    assert_eq!(previews_of(&weir, "clicks").await?, 1);
    drop(gone);
    // The server learns of it when it next writes.
    ingest("{\"user_id\": 5, \"page\": \"d\"}\n").await?;
    wait_for_no_previews(&weir).await?;

    // Over views only: the rows now, then the end.
    weir.exec("CREATE MATERIALIZED VIEW pages AS SELECT page FROM clicks")
        .await?;
    ingest("{\"user_id\": 6, \"page\": \"e\"}\n").await?;
    let mut once = preview("SELECT count(*) AS n FROM pages", 10).await?;
    let mut seen = Vec::new();
    events_until(&mut once, &mut seen, |s| s.iter().any(|(e, _)| e == "end")).await?;
    assert!(
        seen.iter().any(|(e, d)| e == "rows" && d.contains("\"n\"")),
        "{seen:?}"
    );

    // What cannot be previewed is a JSON error with a reason.
    let refused = preview("DROP SOURCE clicks", 10).await?;
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("only a SELECT")),
        "{body}"
    );
    let bad = preview("SELECT nope FROM clicks", 10).await?;
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await?;
    assert_eq!(body["position"]["column"], 8, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_windowed_query_previews_and_a_source_not_reading_yet_is_left_alone() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    weir.exec("CREATE SOURCE ev (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'http')")
        .await?;
    let sql = "SELECT window_start, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end";
    let query = serde_urlencoded::to_string([("sql", sql)])?;
    let mut live = weir
        .client
        .get(format!("{}/api/v1/preview?{query}", weir.url))
        .send()
        .await?;
    assert_eq!(live.status(), 200);
    let mut seen = Vec::new();
    events_until(&mut live, &mut seen, |s| !s.is_empty()).await?;
    let records =
        "{\"id\": 1, \"ts\": 1000}\n{\"id\": 2, \"ts\": 1500}\n{\"id\": 3, \"ts\": 3000}\n";
    weir.client
        .post(format!("{}/api/v1/sources/ev/records", weir.url))
        .body(records)
        .send()
        .await?;
    events_until(&mut live, &mut seen, |s| s.iter().any(|(e, _)| e == "rows")).await?;
    let rows = &seen.iter().find(|(e, _)| e == "rows").expect("rows").1;
    assert!(
        rows.contains(",2]"),
        "the first second's window holds two rows: {rows}"
    );
    // A late row in a preview is not kept anywhere: the dead-letter store stays empty.
    weir.client
        .post(format!("{}/api/v1/sources/ev/records", weir.url))
        .body("{\"id\": 4, \"ts\": 100}\n")
        .send()
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let letters: serde_json::Value = weir
        .client
        .get(format!("{}/api/v1/dead-letters", weir.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(letters["total"], 0, "{letters}");
    drop(live);

    // A generator with no view has not started: a preview must not start it.
    weir.exec("CREATE SOURCE gen WITH (connector = 'nexmark', table = 'bid', events = 1000)")
        .await?;
    let query = serde_urlencoded::to_string([("sql", "SELECT auction FROM gen")])?;
    let refused = weir
        .client
        .get(format!("{}/api/v1/preview?{query}", weir.url))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not reading yet")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status: serde_json::Value = weir
        .client
        .get(format!("{}/api/v1/sources/gen", weir.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(status["records_in"], 0, "{status}");
    Ok(())
}

async fn wait_for_no_previews(weir: &Weir) -> Result<()> {
    for _ in 0..200 {
        if previews_of(weir, "clicks").await? == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the preview still runs")
}
