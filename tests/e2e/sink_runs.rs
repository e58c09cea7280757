//! The run every sink into a store is tested with: bids from a Kafka topic into an
//! appending view `seen` (id, user_id) and an updating one `totals` (user_id, n, ids)
//! whose users 3 to 6 leave through HAVING at their 60th bid, in the last round; the
//! sinks under test created on them; then weir killed (`kill -9`) three times while more
//! bids come. The views are checked against what a run without kills holds (computed
//! from the bids sent), and each test compares its store with them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::kafka::{bid, config_dir, create_topic, produce, unique, view_rows};
use crate::kafka_sink::wait_delivered;
use crate::support::Weir;

/// After the kills: every bid in the views and every sink caught up.
pub(crate) struct KilledRun {
    /// Bids sent: `seen` holds ids 0..sent.
    pub sent: u64,
    /// `totals` by user_id (users 0 to 2: the others left), as a run without kills
    /// holds it.
    pub totals: BTreeMap<i64, Value>,
    /// Each sink's status once it delivered everything, by name.
    pub statuses: BTreeMap<String, Value>,
}

/// Run with `sinks`, `(name, CREATE SINK ... FROM seen | totals ...)`; weir gets `env`.
pub(crate) async fn through_three_kill_nines(
    env: &[(&str, &str)],
    sinks: &[(String, String)],
) -> Result<KilledRun> {
    let input = unique("sink-run");
    create_topic(&input, 2).await?;
    let batch = |from: u64, to: u64| -> Vec<(i32, Option<String>, String)> {
        (from..to)
            .map(|i| ((i % 2) as i32, None, bid(i, i % 7, 1_000 + i)))
            .collect()
    };
    produce(&input, &batch(0, 200)).await?;
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '200ms'\nkeep = 3\n").await?;
    let mut weir = Weir::start_with_env(dir, &["--config", &config], env).await?;
    let brokers = crate::kafka::brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{brokers}', topic = '{input}', group = '{}')",
        unique("g")
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id, user_id FROM bids")
        .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW totals AS SELECT user_id, count(*) AS n, sum(id) AS ids \
         FROM bids GROUP BY user_id HAVING count(*) < 60 OR user_id < 3",
    )
    .await?;
    for (name, sql) in sinks {
        weir.exec(sql).await?;
        wait_delivered(&weir, name).await?;
    }
    let mut sent = 200;
    for round in 0..3 {
        let before = view_rows(&weir, "seen").await?.len();
        produce(&input, &batch(sent, sent + 100)).await?;
        sent += 100;
        // Killed after the process has read some of them (a kill before the consumer
        // joins its group would test nothing).
        weir.wait_for(
            "the process to read on",
            Duration::from_secs(60),
            || async { Ok((view_rows(&weir, "seen").await?.len() > before).then_some(())) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(100 * round)).await;
        let dir = weir.kill().await?;
        weir = Weir::start_with_env(dir, &["--config", &config], env).await?;
    }
    weir.wait_for(
        "every bid in the views",
        Duration::from_secs(60),
        || async { Ok((view_rows(&weir, "seen").await?.len() == sent as usize).then_some(())) },
    )
    .await?;
    let mut statuses = BTreeMap::new();
    for (name, _) in sinks {
        statuses.insert(name.clone(), wait_delivered(&weir, name).await?);
    }
    let mut totals = BTreeMap::new();
    for row in view_rows(&weir, "totals").await? {
        totals.insert(row["user_id"].as_i64().context("user_id")?, row);
    }
    // The view after the kills is the view of a run without them: each bid counted
    // once, users 3 to 6 gone.
    ensure!(
        totals == uninterrupted_totals(sent),
        "totals after the kills {totals:?}, without kills {:?}",
        uninterrupted_totals(sent)
    );
    Ok(KilledRun {
        sent,
        totals,
        statuses,
    })
}

/// What `totals` holds after a run without kills: users 0 to 2 (the others left at
/// their 60th bid), each with its count of bids and the sum of their ids.
fn uninterrupted_totals(sent: u64) -> BTreeMap<i64, Value> {
    (0..3)
        .map(|user: i64| {
            let ids: Vec<i64> = (0..sent as i64).filter(|i| i % 7 == user).collect();
            let row = serde_json::json!({
                "user_id": user,
                "n": ids.len(),
                "ids": ids.iter().sum::<i64>(),
            });
            (user, row)
        })
        .collect()
}

/// The ids `seen` holds after a run: 0..sent, each once.
pub(crate) fn every_id(sent: u64) -> Vec<i64> {
    (0..sent as i64).collect()
}

/// The first half of a store-restart run: an HTTP source `s` (id, k), a view `counts`
/// (k, n) over it, the sink `out` made by `sink_sql`, and 100 records, delivered.
pub(crate) async fn counting_into(env: &[(&str, &str)], sink_sql: &str) -> Result<Weir> {
    let weir = Weir::start_with_env(tempfile::tempdir()?, &[], env).await?;
    weir.exec("CREATE SOURCE s (id BIGINT, k BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW counts AS SELECT k, count(*) AS n FROM s GROUP BY k")
        .await?;
    weir.exec(sink_sql).await?;
    weir.post_records("s", counted(0, 100)).await?;
    wait_delivered(&weir, "out").await?;
    Ok(weir)
}

/// With the store down: 150 records more, and the sink retrying; its status.
pub(crate) async fn count_while_the_store_is_down(weir: &Weir) -> Result<Value> {
    weir.post_records("s", counted(100, 250)).await?;
    let status = weir
        .wait_for("the sink to retry", Duration::from_secs(90), || async {
            let s = weir.get("/api/v1/sinks/out").await?;
            Ok((s["status"] == "retrying").then_some(s))
        })
        .await?;
    ensure!(status["rows_pending"].as_u64() > Some(0), "{status}");
    ensure!(status["error"].is_string(), "{status}");
    Ok(status)
}

/// What `counts` holds after the run: 50 for each k of 0..5.
pub(crate) fn counted_in_the_end() -> BTreeMap<i64, i64> {
    (0..5).map(|k| (k, 50)).collect()
}

fn counted(from: i64, to: i64) -> String {
    (from..to)
        .map(|i| serde_json::json!({"id": i, "k": i % 5}).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// weir checkpointing every 200 ms, with an HTTP source `s` (id) and a view `v` of its
/// ids; and its config file, to start it again with.
pub(crate) async fn checkpointed_ids(env: &[(&str, &str)]) -> Result<(Weir, String)> {
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '200ms'\nkeep = 3\n").await?;
    let weir = Weir::start_with_env(dir, &["--config", &config], env).await?;
    weir.exec("CREATE SOURCE s (id BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id FROM s")
        .await?;
    Ok((weir, config))
}

/// Records of `s` with ids `from..to`.
pub(crate) fn ids(ids: std::ops::Range<i64>) -> String {
    ids.map(|i| format!("{{\"id\": {i}}}\n")).collect()
}

/// A view `v` (id) over an HTTP source with ids 0..20, then the sink `crashed` made by
/// `sink_sql` with weir aborted right after its first delivery, before weir notes it (the
/// `sink-delivered` failpoint); weir restarted, the epoch offered again, and ids 20..30
/// delivered after it. The store should hold ids 0..30 once each.
pub(crate) async fn crashing_after_the_first_delivery(sink_sql: &str) -> Result<()> {
    let (weir, config) = checkpointed_ids(&[("WEIR_FAILPOINTS", "sink-delivered")]).await?;
    ensure!(weir.post_records("s", ids(0..20)).await?.0 == 200);
    weir.wait_for("the view's rows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "v").await?.len() == 20).then_some(()))
    })
    .await?;
    weir.exec(sink_sql).await?;
    weir.wait_for(
        "the failpoint to stop weir",
        Duration::from_secs(60),
        || async { Ok(weir.get("/api/v1/sinks").await.is_err().then_some(())) },
    )
    .await?;
    let dir = weir.kill().await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    wait_delivered(&weir, "crashed").await?;
    ensure!(weir.post_records("s", ids(20..30)).await?.0 == 200);
    weir.wait_for("the new rows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "v").await?.len() == 30).then_some(()))
    })
    .await?;
    wait_delivered(&weir, "crashed").await?;
    Ok(())
}

/// Wait until a checkpoint newer than the newest one now is written.
pub(crate) async fn a_newer_checkpoint(weir: &Weir) -> Result<()> {
    let newest = |c: Value| c["checkpoints"][0]["epoch"].as_u64().unwrap_or(0);
    let seen = newest(weir.get("/api/v1/checkpoints").await?);
    weir.wait_for("a newer checkpoint", Duration::from_secs(30), || async {
        Ok((newest(weir.get("/api/v1/checkpoints").await?) > seen).then_some(()))
    })
    .await
}
