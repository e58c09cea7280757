//! Recovery: weir is killed with SIGKILL at random moments and restarted on the same
//! data dir; every view must end exactly as in an uninterrupted run of the same input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use serde_json::Value;

use crate::support::Weir;

/// Checkpoints often, so that kills land between and during them.
const CONFIG: &str = "[runtime.checkpoints]\ninterval = '300ms'\nkeep = 3\n";

const NEXMARK: &[&str] = &[
    "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 400000, rate = 50000, seed = 7)",
    // A windowed aggregate: open windows and partial aggregates are operator state.
    "CREATE MATERIALIZED VIEW per_window AS SELECT window_start, auction % 10 AS bucket, count(*) AS bids, \
     sum(price) AS total, max(price) AS top, count(DISTINCT bidder) AS bidders \
     FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND) GROUP BY window_start, auction % 10",
    // An updating aggregate: one state for the whole stream.
    "CREATE MATERIALIZED VIEW per_channel AS SELECT channel, count(*) AS bids, avg(price) AS mean \
     FROM bids GROUP BY channel",
    // A stateless view: its rows are the state.
    "CREATE MATERIALIZED VIEW big_bids AS SELECT auction, bidder, price, date_time FROM bids \
     WHERE price > 9000000",
];

const VIEWS: &[&str] = &["per_window", "per_channel", "big_bids"];

async fn start() -> Result<Weir> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, CONFIG)?;
    let config = config.to_string_lossy().to_string();
    Weir::start_in(dir, &["--config", &config]).await
}

async fn restart(weir: Weir) -> Result<Weir> {
    let config = weir.data_dir.path().join("weir.toml");
    let config = config.to_string_lossy().to_string();
    weir.restart(&["--config", &config]).await
}

/// A view's rows in a canonical order.
async fn rows(weir: &Weir, view: &str) -> Result<Vec<String>> {
    let body = weir.get(&format!("/api/v1/views/{view}")).await?;
    let mut rows: Vec<String> = body["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(Value::to_string)
        .collect();
    rows.sort();
    Ok(rows)
}

async fn wait_finished(weir: &Weir, source: &str) -> Result<()> {
    weir.wait_for(
        &format!("source {source} to finish"),
        Duration::from_secs(240),
        || async {
            let s = weir.get(&format!("/api/v1/sources/{source}")).await?;
            Ok((s["status"] == "finished").then_some(()))
        },
    )
    .await
}

/// A small deterministic generator of kill moments; the seed is printed so a failing
/// run can be repeated with WEIR_CRASH_SEED.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::env::var("WEIR_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("crash moments: WEIR_CRASH_SEED={seed}");
        Self(seed)
    }

    /// Milliseconds in `lo..hi`.
    fn next(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Duration::from_millis(lo + (self.0 >> 33) % (hi - lo))
    }
}

#[tokio::test]
async fn nexmark_views_survive_kill_9_exactly() -> Result<()> {
    // The uninterrupted run.
    let reference = start().await?;
    for sql in NEXMARK {
        reference.exec(sql).await?;
    }
    wait_finished(&reference, "bids").await?;
    let mut expected = Vec::new();
    for view in VIEWS {
        let r = rows(&reference, view).await?;
        ensure!(!r.is_empty(), "{view} is empty in the reference run");
        expected.push(r);
    }
    drop(reference);

    // The same input, killed five times.
    let mut moments = Moments::new();
    let mut weir = start().await?;
    for sql in NEXMARK {
        weir.exec(sql).await?;
    }
    let mut restored = 0;
    for _ in 0..5 {
        tokio::time::sleep(moments.next(400, 1_800)).await;
        weir = restart(weir).await?;
        let status = weir.get("/api/v1/checkpoints").await?;
        if status["restored_from"].is_u64() {
            restored += 1;
        }
    }
    ensure!(
        restored >= 3,
        "most restarts should restore a checkpoint, {restored} of 5 did"
    );
    wait_finished(&weir, "bids").await?;
    for (view, expected) in VIEWS.iter().zip(&expected) {
        let got = rows(&weir, view).await?;
        assert_eq!(
            got.len(),
            expected.len(),
            "{view}: row count after five kills differs from the uninterrupted run"
        );
        assert!(
            got == *expected,
            "{view}: rows after five kills differ from the uninterrupted run"
        );
    }
    let status = weir.get("/api/v1/checkpoints").await?;
    let list = status["checkpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        !list.is_empty() && list.len() <= 3,
        "kept checkpoints: {status}"
    );
    ensure!(
        list[0]["sources"][0]["position"]["event"].is_string(),
        "{status}"
    );
    Ok(())
}
