//! Ad hoc queries within limits, through the real binary: an answer cut at its row
//! limit (and a header that says so), a query over its memory pool and one past its time
//! limit refused with a 400 that names the limit while the server keeps answering, and a
//! bound on how many run at once (429).

use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;

use crate::support::Weir;

const LIMITS: &str = "[runtime.queries]\nmemory-bytes = 33554432\ntimeout = '2s'\nmax-rows = 10\nmax-bytes = 4096\nmax-concurrent = 1\n";

/// A query that would run for hours: a sum over ten billion rows.
const ENDLESS: &str =
    "SELECT sum(a.value * b.value) AS s FROM range(100000) AS a CROSS JOIN range(100000) AS b";

async fn start() -> Result<Weir> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, LIMITS)?;
    let config = config.to_string_lossy().to_string();
    Weir::start_in(dir, &["--config", &config]).await
}

async fn query(weir: &Weir, sql: &str) -> Result<reqwest::Response> {
    Ok(weir
        .client
        .post(format!("{}/api/v1/sql", weir.url))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "sql": sql }).to_string())
        .send()
        .await?)
}

#[tokio::test]
async fn an_answer_is_cut_at_its_row_limit_and_says_so() -> Result<()> {
    let weir = start().await?;
    let r = query(&weir, "SELECT value FROM range(100)").await?;
    assert_eq!(r.status(), StatusCode::OK);
    let cut = r.headers()["weir-result-cut"].to_str()?.to_string();
    assert!(
        cut.contains("first 10 rows") && cut.contains("max-rows"),
        "{cut}"
    );
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(10), "{body}");
    let whole = query(&weir, "SELECT value FROM range(10)").await?;
    assert!(whole.headers().get("weir-result-cut").is_none());
    // Ten rows of a kilobyte each pass 4,096 bytes: the answer stops before.
    let wide = query(&weir, "SELECT repeat('x', 1000) AS s FROM range(10)").await?;
    assert_eq!(wide.status(), StatusCode::OK);
    let cut = wide.headers()["weir-result-cut"].to_str()?.to_string();
    assert!(
        cut.contains("4096 bytes") && cut.contains("max-bytes"),
        "{cut}"
    );
    let body: serde_json::Value = wide.json().await?;
    let rows = body["rows"].as_array().map_or(0, Vec::len);
    assert!(
        (1..10).contains(&rows),
        "{rows} rows of 1,000 bytes within 4,096"
    );
    Ok(())
}

#[tokio::test]
async fn a_query_over_its_memory_is_refused_naming_the_limit() -> Result<()> {
    let weir = start().await?;
    let r = query(
        &weir,
        "SELECT length(string_agg(CAST(value AS VARCHAR), ',')) AS n FROM range(50000000)",
    )
    .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await?;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("32 MiB") && detail.contains("memory-bytes"),
        "{body}"
    );
    // The server is as it was.
    assert_eq!(
        query(&weir, "SELECT 1 AS one").await?.status(),
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn an_endless_query_is_cancelled_and_the_server_answers_meanwhile() -> Result<()> {
    let weir = start().await?;
    let client = weir.client.clone();
    let url = weir.url.clone();
    let endless = tokio::spawn(async move {
        client
            .post(format!("{url}/api/v1/sql"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": ENDLESS }).to_string())
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While it runs: liveness answers, and a second query finds the one slot taken.
    let health = weir
        .client
        .get(format!("{}/healthz", weir.url))
        .send()
        .await?;
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        !endless.is_finished(),
        "the endless query ended before /healthz answered"
    );
    let second = query(&weir, "SELECT 1 AS one").await?;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().get("retry-after").is_some());
    let r = endless.await??;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await?;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("time limit") && detail.contains("2s"),
        "{body}"
    );
    // Its slot is free again.
    assert_eq!(
        query(&weir, "SELECT 1 AS one").await?.status(),
        StatusCode::OK
    );
    Ok(())
}
