//! `weir serve --demo`: a Nexmark bid stream and two views, so the console shows live
//! results seconds after start.

use weir_runtime::Engine;

/// The demo's statements, in order.
pub const STATEMENTS: &[&str] = &[
    "CREATE SOURCE IF NOT EXISTS bids WITH (connector = 'nexmark', table = 'bid', rate = 2000, start_time = 'now', max_delay = '200ms')",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS bids_per_channel AS \
     SELECT window_start, window_end, channel, count(*) AS bids, max(price) AS top_price, avg(price) AS avg_price \
     FROM TUMBLE(bids, date_time, INTERVAL '5' SECOND) \
     WHERE channel IN ('Google', 'Facebook', 'Baidu', 'Apple') \
     GROUP BY window_start, window_end, channel",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS big_bids AS \
     SELECT auction, bidder, price, channel, date_time FROM bids WHERE price > 50000000",
];

/// Create the demo source and views.
pub async fn start(engine: &Engine) -> anyhow::Result<()> {
    for sql in STATEMENTS {
        engine
            .execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("demo statement failed: {e}\n{sql}"))?;
    }
    tracing::info!("demo running: source bids, views bids_per_channel and big_bids");
    Ok(())
}
