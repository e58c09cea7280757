//! A finite Nexmark run is deterministic: the same seed gives the same view rows on two
//! runs of the binary; another seed gives other rows.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::support::Weir;

const VIEW: &str = "CREATE MATERIALIZED VIEW per_channel AS \
    SELECT window_start, window_end, channel, count(*) AS n, sum(price) AS total, max(price) AS top, min(bidder) AS first_bidder \
    FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND) \
    WHERE channel IN ('Google', 'Facebook', 'Baidu', 'Apple') \
    GROUP BY window_start, window_end, channel";

async fn run(seed: u64) -> Result<Vec<Value>> {
    let weir = Weir::start(&[]).await?;
    // 300,000 events at 10,000 events per second of event time: 30 s, fifteen windows.
    weir.exec(&format!("CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 300000, seed = {seed})")).await?;
    weir.exec(VIEW).await?;
    weir.wait_for(
        "the finite run to finish",
        Duration::from_secs(120),
        || async {
            let s = weir.get("/api/v1/sources/bids").await?;
            Ok((s["status"] == "finished").then_some(()))
        },
    )
    .await?;
    let source = weir.get("/api/v1/sources/bids").await?;
    assert_eq!(
        source["records_in"], 276_000,
        "46 of every 50 events are bids"
    );
    let mut rows = weir.get("/api/v1/views/per_channel").await?["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rows.sort_by_key(|r| r.to_string());
    Ok(rows)
}

#[tokio::test]
async fn same_seed_same_rows() -> Result<()> {
    let first = run(42).await?;
    let second = run(42).await?;
    assert_eq!(first.len(), 15 * 4, "fifteen windows, four hot channels");
    assert_eq!(first, second);
    let counted: i64 = first.iter().map(|r| r[3].as_i64().unwrap_or(0)).sum();
    assert!(
        counted > 270_000,
        "hot channels carry 99% of the bids, got {counted}"
    );
    let other = run(43).await?;
    assert_ne!(first, other, "another seed must give other rows");
    Ok(())
}
