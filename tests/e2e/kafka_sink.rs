//! The Kafka sink against a real Kafka-protocol broker (tansu, see `kafka.rs`): views'
//! changes written to topics, exact through crashes once duplicates are dropped by their
//! `weir-epoch` and `weir-seq` headers, and a sink that waits for its brokers while its
//! view goes on serving.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::kafka::{
    bid, brokers, config_dir, create_topic, free_port, produce, start_checkpointed, tansu, unique,
    view_rows,
};
use crate::support::Weir;

/// One message of a sink's topic.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub key: Option<Value>,
    pub value: Option<Value>,
    pub lineage: Option<String>,
    pub epoch: Option<u64>,
    pub seq: Option<u64>,
    /// Where it is in its partition.
    pub offset: i64,
}

/// Every message of `topic` (partition by partition), read until `expected` have come and the
/// topic stays quiet for two seconds (or a minute has passed).
pub(crate) async fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
) -> Result<Vec<Written>> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> Result<Vec<Written>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(1, |t| t.partitions().len().max(1));
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p as i32, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        // JSON, or else text (a key produced from a field's text).
        let json = |b: Option<&[u8]>| -> Result<Option<Value>> {
            Ok(b.map(|b| {
                serde_json::from_slice::<Value>(b)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
            }))
        };
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline
            && (out.len() < expected || quiet_since.elapsed() < Duration::from_secs(2))
        {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m?;
            quiet_since = Instant::now();
            let header = |name: &str| -> Option<u64> {
                let h = m.headers()?.iter().find(|h| h.key == name)?;
                std::str::from_utf8(h.value?).ok()?.parse().ok()
            };
            let lineage = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "weir-lineage"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            out.push(Written {
                key: json(m.key())?,
                value: json(m.payload())?,
                lineage,
                epoch: header("weir-epoch"),
                seq: header("weir-seq"),
                offset: m.offset(),
            });
        }
        Ok(out)
    })
    .await?
}

/// Drop the messages written again after a crash: the same (lineage, epoch, seq) must
/// be the same message.
fn deduplicate(written: &[Written]) -> Result<Vec<Written>> {
    let mut seen: HashMap<(&str, u64, u64), &Written> = HashMap::new();
    let mut out = Vec::new();
    for w in written {
        let (Some(lineage), Some(epoch), Some(seq)) = (w.lineage.as_deref(), w.epoch, w.seq) else {
            bail!("a message without weir-lineage, weir-epoch and weir-seq headers: {w:?}");
        };
        match seen.get(&(lineage, epoch, seq)) {
            Some(first) => ensure!(
                first.key == w.key && first.value == w.value,
                "epoch {epoch} seq {seq} was written twice with different content: {first:?} and {w:?}"
            ),
            None => {
                seen.insert((lineage, epoch, seq), w);
                out.push(w.clone());
            }
        }
    }
    Ok(out)
}

/// Wait until the sink has delivered every change a durable checkpoint holds.
pub(crate) async fn wait_delivered(weir: &Weir, sink: &str) -> Result<Value> {
    let path = format!("/api/v1/sinks/{sink}");
    let waited = weir
        .wait_for(
            &format!("sink {sink} to deliver everything"),
            Duration::from_secs(90),
            || async {
                let s = weir.get(&path).await?;
                Ok((s["status"] == "running"
                    && s["rows_pending"] == 0
                    && s["delivered_epoch"] == s["durable_epoch"]
                    && s["delivered_epoch"].as_u64() > Some(0))
                .then_some(s))
            },
        )
        .await;
    match waited {
        Ok(s) => Ok(s),
        Err(e) => Err(e.context(format!("the sink is {}", weir.get(&path).await?))),
    }
}

#[tokio::test]
async fn sinks_survive_three_kills_and_are_exact_once_deduplicated_by_their_headers() -> Result<()>
{
    let input = unique("sink-in");
    let appends = unique("sink-appends");
    let upserts = unique("sink-upserts");
    let cdc = unique("sink-cdc");
    create_topic(&input, 2).await?;
    create_topic(&appends, 1).await?;
    create_topic(&upserts, 1).await?;
    create_topic(&cdc, 1).await?;
    let batch = |from: u64, to: u64| -> Vec<(i32, Option<String>, String)> {
        (from..to)
            .map(|i| ((i % 2) as i32, None, bid(i, i % 7, 1_000 + i)))
            .collect()
    };
    produce(&input, &batch(0, 200)).await?;
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '200ms'\nkeep = 3\n").await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    let b = brokers();
    let group = unique("g");
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{input}', group = '{group}')"
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id, user_id FROM bids")
        .await?;
    // Users 3 to 6 leave the view at their 60th bid, in the last round: their keys
    // must end with a tombstone (upsert) and a delete (Debezium).
    weir.exec(
        "CREATE MATERIALIZED VIEW totals AS SELECT user_id, count(*) AS n, sum(id) AS ids \
         FROM bids GROUP BY user_id HAVING count(*) < 60 OR user_id < 3",
    )
    .await?;
    weir.exec(&format!(
        "CREATE SINK seen_out FROM seen WITH (connector = 'kafka', brokers = '{b}', topic = '{appends}')"
    ))
    .await?;
    weir.exec(&format!(
        "CREATE SINK totals_out FROM totals WITH (connector = 'kafka', brokers = '{b}', \
         topic = '{upserts}', format = 'upsert', key = 'user_id', delivery = 'exactly_once')"
    ))
    .await?;
    weir.exec(&format!(
        "CREATE SINK totals_cdc FROM totals WITH (connector = 'kafka', brokers = '{b}', \
         topic = '{cdc}', format = 'debezium_json', key = 'user_id')"
    ))
    .await?;
    let listed = weir.get("/api/v1/sinks").await?;
    let names: Vec<&str> = listed["sinks"]
        .as_array()
        .context("sinks")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    ensure!(
        names == ["seen_out", "totals_cdc", "totals_out"],
        "{listed}"
    );
    wait_delivered(&weir, "seen_out").await?;

    // Killed three times while messages keep coming, each time after the process has
    // read some of them (a kill before the consumer joins its group would test nothing).
    let mut weir = weir;
    let mut sent = 200;
    for round in 0..3 {
        let before = view_rows(&weir, "seen").await?.len();
        produce(&input, &batch(sent, sent + 100)).await?;
        sent += 100;
        weir.wait_for(
            "the process to read on",
            Duration::from_secs(60),
            || async { Ok((view_rows(&weir, "seen").await?.len() > before).then_some(())) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(100 * round)).await;
        let config = weir.data_dir.path().join("weir.toml");
        let config = config.to_string_lossy().to_string();
        weir = weir.restart(&["--config", &config]).await?;
    }
    weir.wait_for(
        "every bid in the views",
        Duration::from_secs(60),
        || async { Ok((view_rows(&weir, "seen").await?.len() == sent as usize).then_some(())) },
    )
    .await?;
    wait_delivered(&weir, "seen_out").await?;
    let status = wait_delivered(&weir, "totals_out").await?;
    eprintln!("totals_out: {status}");
    wait_delivered(&weir, "totals_cdc").await?;

    // The appends, duplicates dropped by their headers, are every row exactly once.
    let written = read_topic(&b, &appends, sent as usize).await?;
    let unique_rows = deduplicate(&written)?;
    eprintln!(
        "appends: {} messages, {} after dropping duplicates",
        written.len(),
        unique_rows.len()
    );
    let mut ids: Vec<i64> = unique_rows
        .iter()
        .map(|w| w.value.as_ref().and_then(|v| v["id"].as_i64()))
        .collect::<Option<_>>()
        .context("every value has an id")?;
    ids.sort_unstable();
    ensure!(
        ids == (0..sent as i64).collect::<Vec<_>>(),
        "{} messages ({} after dropping duplicates) are not ids 0..{sent} once each",
        written.len(),
        unique_rows.len()
    );

    // The upsert topic's last value per key is the view's row.
    let written = read_topic(&b, &upserts, 7).await?;
    eprintln!(
        "upserts: {} messages in epochs {:?}",
        written.len(),
        written
            .iter()
            .map(|w| (w.epoch, w.seq, w.offset))
            .collect::<Vec<_>>()
    );
    let mut last: BTreeMap<i64, Value> = BTreeMap::new();
    let mut tombstones = Vec::new();
    for w in deduplicate(&written)? {
        let key = w.key.as_ref().and_then(|k| k["user_id"].as_i64());
        let key = key.context("every message is keyed by user_id")?;
        match w.value {
            Some(value) => last.insert(key, value),
            None => {
                tombstones.push(key);
                last.remove(&key)
            }
        };
    }
    let mut view: BTreeMap<i64, Value> = BTreeMap::new();
    for row in view_rows(&weir, "totals").await? {
        view.insert(row["user_id"].as_i64().context("user_id")?, row);
    }
    ensure!(
        view.keys().copied().collect::<Vec<_>>() == [0, 1, 2],
        "users 3 to 6 have left the view: {view:?}"
    );
    tombstones.sort_unstable();
    ensure!(
        tombstones == [3, 4, 5, 6],
        "one tombstone for each user that left: {tombstones:?}"
    );
    ensure!(
        last == view,
        "the topic's last values {last:?} are not the view {view:?}"
    );

    // Debezium, duplicates dropped: each message's `before` is the row the key had, so
    // replaying the messages in order builds the view.
    let mut replayed: BTreeMap<i64, Value> = BTreeMap::new();
    for w in deduplicate(&read_topic(&b, &cdc, 7).await?)? {
        let v = w.value.context("a value")?;
        let key = w.key.as_ref().and_then(|k| k["user_id"].as_i64());
        let key = key.context("every message is keyed by user_id")?;
        let had = replayed.get(&key).cloned().unwrap_or(Value::Null);
        ensure!(v["before"] == had, "{key} had {had}, the message says {v}");
        match v["op"].as_str() {
            Some("r" | "c") if had.is_null() => replayed.insert(key, v["after"].clone()),
            Some("u") if !had.is_null() => replayed.insert(key, v["after"].clone()),
            Some("d") if v["after"].is_null() => replayed.remove(&key),
            _ => bail!("{v} does not follow {had}"),
        };
    }
    ensure!(
        replayed == view,
        "the Debezium topic replayed {replayed:?} is not the view {view:?}"
    );
    // Epochs are written in order, each whole: the first copy of each epoch comes after
    // the epochs before it, and its messages are numbered 0, 1, 2, ... without a gap.
    let mut firsts: Vec<u64> = Vec::new();
    let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for w in deduplicate(&written)? {
        let (epoch, seq) = (w.epoch.context("epoch")?, w.seq.context("seq")?);
        if !firsts.contains(&epoch) {
            firsts.push(epoch);
        }
        seqs.entry(epoch).or_default().push(seq);
    }
    ensure!(firsts.is_sorted(), "epochs out of order: {firsts:?}");
    // One transaction per epoch: the broker writes a commit (or abort) marker after
    // each, which takes an offset, so each epoch's messages are contiguous and a gap
    // comes before the next epoch begins (seq 0).
    for pair in written.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let next_in_epoch = b.seq != Some(0);
        if next_in_epoch {
            ensure!(
                b.epoch == a.epoch && b.seq == a.seq.map(|s| s + 1) && b.offset == a.offset + 1,
                "a transaction is not one epoch: {a:?} then {b:?}"
            );
        } else {
            ensure!(
                b.offset >= a.offset + 2,
                "no transaction marker between epochs: {a:?} then {b:?}"
            );
        }
    }
    for (epoch, seq) in &seqs {
        ensure!(
            *seq == (0..seq.len() as u64).collect::<Vec<_>>(),
            "epoch {epoch} is not whole: {seq:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_sink_waits_for_its_brokers_while_the_view_serves_and_then_catches_up() -> Result<()> {
    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let weir = start_checkpointed().await?;
    weir.exec("CREATE SOURCE s (id BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id FROM s")
        .await?;

    // Options are checked when the sink is created.
    for (options, expected) in [
        ("connector = 'kafka', topic = 't'", "needs brokers"),
        (
            "connector = 'kafka', brokers = 'x:1', topic = 't', colour = 'red'",
            "unknown option `colour`",
        ),
        (
            "connector = 'kafka', brokers = 'x:1', topic = 't', format = 'upsert'",
            "needs key",
        ),
        (
            "connector = 'kafka', brokers = 'x:1', topic = 't', key = 'nope'",
            "key column nope",
        ),
        (
            "connector = 'kafka', brokers = 'x:1', topic = 't', delivery = 'twice'",
            "delivery twice",
        ),
        ("connector = 'carrier-pigeon'", "unknown connector"),
    ] {
        let (status, body) = weir
            .sql(&format!("CREATE SINK bad FROM v WITH ({options})"))
            .await?;
        ensure!(
            status == 400
                && body["detail"]
                    .as_str()
                    .is_some_and(|e| e.contains(expected)),
            "{options}: {status} {body}"
        );
    }
    let (status, body) = weir
        .sql("CREATE SINK bad FROM nowhere WITH (connector = 'kafka')")
        .await?;
    ensure!(status == 404, "{status} {body}");
    let (status, body) = weir
        .sql("CREATE SINK bad FROM s WITH (connector = 'kafka')")
        .await?;
    ensure!(
        status == 400
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("not a view")),
        "{status} {body}"
    );

    weir.exec(&format!(
        "CREATE SINK k FROM v WITH (connector = 'kafka', brokers = '{address}', topic = 'caught-up')"
    ))
    .await?;
    let body = (0..10)
        .map(|i| format!("{{\"id\": {i}}}\n"))
        .collect::<String>();
    let (status, _) = weir.post_records("s", body).await?;
    ensure!(status == 200);
    // The view serves while its sink cannot deliver.
    weir.wait_for("the view's rows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "v").await?.len() == 10).then_some(()))
    })
    .await?;
    let retrying = weir
        .wait_for("the sink to retry", Duration::from_secs(60), || async {
            let s = weir.get("/api/v1/sinks/k").await?;
            Ok((s["status"] == "retrying").then_some(s))
        })
        .await?;
    ensure!(retrying["rows_pending"] == 10, "{retrying}");
    ensure!(
        retrying["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{retrying}"
    );
    let shown = weir.exec("SHOW SINKS").await?;
    ensure!(shown.to_string().contains("retrying"), "{shown}");
    // A view with a sink is not dropped under it; names are one namespace.
    let (status, body) = weir.sql("DROP VIEW v").await?;
    ensure!(
        status == 409
            && body["detail"]
                .as_str()
                .is_some_and(|e| e.contains("sink k")),
        "{status} {body}"
    );
    let (status, body) = weir
        .sql("CREATE SINK v FROM v WITH (connector = 'kafka', brokers = 'x:1', topic = 't')")
        .await?;
    ensure!(status == 409, "{status} {body}");
    let again = weir
        .exec("CREATE SINK IF NOT EXISTS k FROM v WITH (connector = 'kafka', brokers = 'x:1', topic = 't')")
        .await?;
    ensure!(again.to_string().contains("already exists"), "{again}");

    let _broker = tansu(&address, &[("STORAGE_ENGINE", "memory://tansu/".into())])?;
    let delivered = wait_delivered(&weir, "k").await?;
    ensure!(delivered["error"].is_null(), "{delivered}");
    let written = read_topic(&address, "caught-up", 10).await?;
    let mut ids: Vec<i64> = deduplicate(&written)?
        .iter()
        .filter_map(|w| w.value.as_ref().and_then(|v| v["id"].as_i64()))
        .collect();
    ids.sort_unstable();
    ensure!(ids == (0..10).collect::<Vec<_>>(), "{written:?}");

    weir.exec("DROP SINK k").await?;
    let listed = weir.get("/api/v1/sinks").await?;
    ensure!(
        listed["sinks"].as_array().is_some_and(|s| s.is_empty()),
        "{listed}"
    );
    weir.exec("DROP VIEW v").await?;
    let gone = weir
        .client
        .get(format!("{}/api/v1/sinks/k", weir.url))
        .send()
        .await?;
    ensure!(gone.status().as_u16() == 404, "{}", gone.status());
    Ok(())
}

#[tokio::test]
async fn a_sink_on_a_finished_source_writes_the_views_rows_in_debezium_json() -> Result<()> {
    let topic = unique("sink-finished");
    create_topic(&topic, 1).await?;
    let weir = start_checkpointed().await?;
    weir.exec("CREATE SOURCE bid WITH (connector = 'nexmark', table = 'bid', events = 200)")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW prices AS SELECT auction, price FROM bid")
        .await?;
    weir.wait_finished("bid").await?;
    let rows = view_rows(&weir, "prices").await?;
    ensure!(!rows.is_empty());
    let b = brokers();
    weir.exec(&format!(
        "CREATE SINK prices_out FROM prices WITH (connector = 'kafka', brokers = '{b}', \
         topic = '{topic}', format = 'debezium_json')"
    ))
    .await?;
    wait_delivered(&weir, "prices_out").await?;
    let written = deduplicate(&read_topic(&b, &topic, rows.len()).await?)?;
    let mut seen = Vec::new();
    for w in &written {
        let v = w.value.as_ref().context("a value")?;
        ensure!(v["op"] == "r" && v["before"].is_null(), "{v}");
        seen.push(v["after"].clone());
    }
    ensure!(
        seen == rows,
        "{} messages for {} rows of the view",
        seen.len(),
        rows.len()
    );
    Ok(())
}

/// A sink created on a view that has rows, and weir killed at once (before or after the
/// checkpoint that would hold the sink): after the restart the sink still writes the
/// view's rows, once each.
#[tokio::test]
async fn a_sink_killed_right_after_its_creation_still_writes_the_views_rows() -> Result<()> {
    let topic = unique("sink-killed");
    create_topic(&topic, 1).await?;
    let weir = start_checkpointed().await?;
    weir.exec("CREATE SOURCE s (id BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id FROM s")
        .await?;
    let body = (0..20)
        .map(|i| format!("{{\"id\": {i}}}\n"))
        .collect::<String>();
    ensure!(weir.post_records("s", body).await?.0 == 200);
    weir.wait_for("the view's rows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "v").await?.len() == 20).then_some(()))
    })
    .await?;
    // Let a checkpoint hold the view without the sink first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SINK k FROM v WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}')"
    ))
    .await?;
    let config_path = weir.data_dir.path().join("weir.toml");
    let weir = weir
        .restart(&["--config", &config_path.to_string_lossy()])
        .await?;
    wait_delivered(&weir, "k").await?;
    let written = deduplicate(&read_topic(&b, &topic, 20).await?)?;
    let mut ids: Vec<i64> = written
        .iter()
        .filter_map(|w| w.value.as_ref().and_then(|v| v["id"].as_i64()))
        .collect();
    ids.sort_unstable();
    ensure!(ids == (0..20).collect::<Vec<_>>(), "{written:?}");
    Ok(())
}

/// A sink's first epoch, with weir aborted at `failpoint`, then restarted and given
/// more rows: what the topic holds (read uncommitted), checked to be every row once
/// when duplicates (same headers, same content) are dropped.
async fn crash_a_sink_at(failpoint: &str, delivery: &str) -> Result<Vec<Written>> {
    let topic = unique("sink-window");
    let sink = unique("window").replace('-', "_");
    create_topic(&topic, 1).await?;
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '200ms'\nkeep = 3\n").await?;
    let weir = Weir::start_with_env(
        dir,
        &["--config", &config],
        &[("WEIR_FAILPOINTS", failpoint)],
    )
    .await?;
    weir.exec("CREATE SOURCE s (id BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id FROM s")
        .await?;
    let body = |ids: std::ops::Range<i64>| {
        ids.map(|i| format!("{{\"id\": {i}}}\n"))
            .collect::<String>()
    };
    ensure!(weir.post_records("s", body(0..20)).await?.0 == 200);
    weir.wait_for("the view's rows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "v").await?.len() == 20).then_some(()))
    })
    .await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SINK {sink} FROM v WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', \
         delivery = '{delivery}')"
    ))
    .await?;
    weir.wait_for(
        "the failpoint to stop weir",
        Duration::from_secs(60),
        || async { Ok(weir.get("/api/v1/sinks").await.is_err().then_some(())) },
    )
    .await?;
    let dir = weir.kill().await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    wait_delivered(&weir, &sink).await?;
    ensure!(weir.post_records("s", body(20..30)).await?.0 == 200);
    weir.wait_for("the new rows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "v").await?.len() == 30).then_some(()))
    })
    .await?;
    wait_delivered(&weir, &sink).await?;
    let written = read_topic(&b, &topic, 30).await?;
    let mut ids: Vec<i64> = deduplicate(&written)?
        .iter()
        .filter_map(|w| w.value.as_ref().and_then(|v| v["id"].as_i64()))
        .collect();
    ids.sort_unstable();
    ensure!(ids == (0..30).collect::<Vec<_>>(), "{written:?}");
    Ok(written)
}

/// weir crashes after the brokers committed an exactly-once epoch and before weir noted
/// it: the restarted sink finds the epoch in the brokers' record and does not write it
/// again.
#[tokio::test]
async fn an_epoch_committed_just_before_a_crash_is_not_written_again() -> Result<()> {
    let written = crash_a_sink_at("sink-delivered", "exactly_once").await?;
    let unique_rows = deduplicate(&written)?;
    ensure!(
        unique_rows.len() == written.len(),
        "an epoch was written twice: {} messages, {} different",
        written.len(),
        unique_rows.len()
    );
    Ok(())
}

/// weir crashes with an epoch's transaction open, after the checkpoint that holds it is
/// durable and before the commit (the gap Arroyo leaves): after the restart that epoch
/// is written again, in a transaction that commits, with the same headers. (tansu
/// leaves the aborted copy readable, so the first copy is there too.)
#[tokio::test]
async fn an_epoch_whose_commit_a_crash_cut_off_is_written_again_and_committed() -> Result<()> {
    let written = crash_a_sink_at("sink-before-commit", "exactly_once").await?;
    ensure!(
        copies_of_first_epoch(&written)? == 2,
        "the first epoch is not in the topic once aborted and once committed: {written:?}"
    );
    Ok(())
}

/// An at-least-once sink killed right after writing an epoch writes it again after the
/// restart, message for message with the same headers (`crash_a_sink_at` drops the
/// copies by those and checks they are the same).
#[tokio::test]
async fn an_at_least_once_epoch_written_again_after_a_crash_carries_the_same_headers() -> Result<()>
{
    let written = crash_a_sink_at("sink-delivered", "at_least_once").await?;
    ensure!(
        copies_of_first_epoch(&written)? == 2,
        "the first epoch is not in the topic twice: {written:?}"
    );
    Ok(())
}

/// How many times the topic holds the first message of its first epoch.
fn copies_of_first_epoch(written: &[Written]) -> Result<usize> {
    let first = written.first().and_then(|w| w.epoch).context("an epoch")?;
    Ok(written
        .iter()
        .filter(|w| w.epoch == Some(first) && w.seq == Some(0))
        .count())
}

/// A message the producer can never send (over `message.max.bytes`) is a dead letter
/// and the rest of its epoch is written; a sink whose destination never takes its
/// changes and that may not spill them to disk fails once more than `max_pending_rows`
/// wait, and stays failed after a restart, while its view serves.
#[tokio::test]
async fn a_sink_dead_letters_a_message_too_large_and_fails_past_its_pending_limit() -> Result<()> {
    let topic = unique("sink-large");
    create_topic(&topic, 1).await?;
    let weir = start_checkpointed().await?;
    weir.exec("CREATE SOURCE s (id BIGINT, note VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id, note FROM s")
        .await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SINK big FROM v WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', \
         properties.message.max.bytes = '2000')"
    ))
    .await?;
    let down = format!("127.0.0.1:{}", free_port()?);
    let (code, body) = weir
        .sql(&format!(
            "CREATE SINK stuck FROM v WITH (connector = 'kafka', brokers = '{down}', \
             topic = 't', max_pending_rows = 'none')"
        ))
        .await?;
    ensure!(
        code == 400 && body.to_string().contains("max_pending_rows"),
        "{code} {body}"
    );
    let (code, body) = weir
        .sql(&format!(
            "CREATE SINK stuck FROM v WITH (connector = 'kafka', brokers = '{down}', \
             topic = 't', max_spilled_bytes = '4 GiB')"
        ))
        .await?;
    ensure!(
        code == 400 && body.to_string().contains("max_spilled_bytes"),
        "{code} {body}"
    );
    // Without spilling to disk (max_spilled_bytes = 0), past its rows in memory the
    // sink fails.
    weir.exec(&format!(
        "CREATE SINK stuck FROM v WITH (connector = 'kafka', brokers = '{down}', topic = 't', \
         max_pending_rows = 15, max_spilled_bytes = 0)"
    ))
    .await?;
    let body = (0..10)
        .map(|i| {
            let note = if i == 4 {
                "x".repeat(3000)
            } else {
                format!("n{i}")
            };
            format!("{{\"id\": {i}, \"note\": \"{note}\"}}\n")
        })
        .collect::<String>();
    ensure!(weir.post_records("s", body).await?.0 == 200);
    wait_delivered(&weir, "big").await?;
    let written = deduplicate(&read_topic(&b, &topic, 9).await?)?;
    let ids: Vec<i64> = written
        .iter()
        .filter_map(|w| w.value.as_ref().and_then(|v| v["id"].as_i64()))
        .collect();
    ensure!(ids == [0, 1, 2, 3, 5, 6, 7, 8, 9], "{ids:?}");
    let letters = weir.get("/api/v1/dead-letters?source=s").await?;
    let letters = letters["dead_letters"].as_array().context("dead letters")?;
    ensure!(letters.len() == 1, "one dead letter: {letters:?}");
    let letter = letters[0].clone();
    ensure!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sink big") && r.contains("message.max.bytes"))
            && letter["position"] == 4
            && letter["view"] == "v"
            && letter["raw"].as_str().is_some_and(|r| r.contains("xxxx")),
        "{letter}"
    );

    // 10 rows wait for the stuck sink: within its limit, it retries.
    let stuck = weir.get("/api/v1/sinks/stuck").await?;
    ensure!(stuck["status"] != "failed", "{stuck}");
    let more = (10..20)
        .map(|i| format!("{{\"id\": {i}, \"note\": \"n\"}}\n"))
        .collect::<String>();
    ensure!(weir.post_records("s", more).await?.0 == 200);
    let failed = weir
        .wait_for(
            "the stuck sink to fail",
            Duration::from_secs(30),
            || async {
                let s = weir.get("/api/v1/sinks/stuck").await?;
                Ok((s["status"] == "failed").then_some(s))
            },
        )
        .await?;
    ensure!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_pending_rows"))
            && failed["rows_pending"] == 0,
        "{failed}"
    );
    ensure!(view_rows(&weir, "v").await?.len() == 20, "the view serves");
    // Once a checkpoint after the failure is written, the failure outlives a crash.
    crate::sink_runs::a_newer_checkpoint(&weir).await?;
    // A dropped sink stays dropped: DROP SINK is durable DDL.
    weir.exec(&format!(
        "CREATE SINK gone FROM v WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}')"
    ))
    .await?;
    weir.exec("DROP SINK gone").await?;
    let config_path = weir.data_dir.path().join("weir.toml");
    let weir = weir
        .restart(&["--config", &config_path.to_string_lossy()])
        .await?;
    let after = weir.get("/api/v1/sinks/stuck").await?;
    ensure!(after["status"] == "failed", "still failed: {after}");
    let names: Vec<String> = weir.get("/api/v1/sinks").await?["sinks"]
        .as_array()
        .context("sinks")?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    ensure!(names == ["big", "stuck"], "after the restart: {names:?}");
    Ok(())
}

/// A window emitted again under allowed lateness: a group a late row takes out of the
/// view (HAVING) ends its key with a tombstone in an `upsert` topic and a `d` in a
/// Debezium one, and a group it changes gets a `u` with its row before.
#[tokio::test]
async fn a_window_emitted_again_writes_updates_and_tombstones() -> Result<()> {
    let upserts = unique("sink-window-upserts");
    let cdc = unique("sink-window-cdc");
    create_topic(&upserts, 1).await?;
    create_topic(&cdc, 1).await?;
    let weir = start_checkpointed().await?;
    weir.exec(
        "CREATE SOURCE s (user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) \
         WITH (connector = 'http')",
    )
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW w WITH (allowed_lateness = '30s') AS \
         SELECT window_start, user_id, count(*) AS n FROM TUMBLE(s, ts, INTERVAL '10' SECOND) \
         GROUP BY window_start, window_end, user_id HAVING count(*) < 3",
    )
    .await?;
    let b = brokers();
    for (sink, topic, format) in [
        ("w_upserts", &upserts, "upsert"),
        ("w_cdc", &cdc, "debezium_json"),
    ] {
        weir.exec(&format!(
            "CREATE SINK {sink} FROM w WITH (connector = 'kafka', brokers = '{b}', \
             topic = '{topic}', format = '{format}', key = 'window_start, user_id')"
        ))
        .await?;
    }
    let rows = |r: &[(i64, i64)]| {
        r.iter()
            .map(|(user, s)| format!("{{\"user_id\": {user}, \"ts\": {}}}\n", s * 1000))
            .collect::<String>()
    };
    // Window [0 s, 10 s) closes at 11 s: user 1 with 2 rows, user 2 with 1.
    ensure!(
        weir.post_records("s", rows(&[(1, 1), (1, 2), (2, 3), (3, 11)]))
            .await?
            .0
            == 200
    );
    weir.wait_for("the window", Duration::from_secs(30), || async {
        Ok((view_rows(&weir, "w").await?.len() == 2).then_some(()))
    })
    .await?;
    // Late rows: user 1's third row takes it out, user 2's second row changes it.
    ensure!(weir.post_records("s", rows(&[(1, 4), (2, 5)])).await?.0 == 200);
    weir.wait_for("the window again", Duration::from_secs(30), || async {
        let v = view_rows(&weir, "w").await?;
        Ok((v.len() == 1 && v[0]["n"] == 2).then_some(()))
    })
    .await?;
    wait_delivered(&weir, "w_upserts").await?;
    wait_delivered(&weir, "w_cdc").await?;

    let user = |k: &Option<Value>| k.as_ref().and_then(|k| k["user_id"].as_i64());
    let written = deduplicate(&read_topic(&b, &upserts, 4).await?)?;
    let last: Vec<(Option<i64>, Option<i64>)> = written
        .iter()
        .map(|w| (user(&w.key), w.value.as_ref().and_then(|v| v["n"].as_i64())))
        .collect();
    ensure!(
        last == [
            (Some(1), Some(2)),
            (Some(2), Some(1)),
            (Some(2), Some(2)),
            (Some(1), None)
        ],
        "upserts: {last:?}"
    );
    let written = deduplicate(&read_topic(&b, &cdc, 4).await?)?;
    let ops: Vec<(Option<i64>, String, Value)> = written
        .iter()
        .map(|w| {
            let v = w.value.clone().unwrap_or_default();
            (
                user(&w.key),
                v["op"].as_str().unwrap_or("").to_string(),
                v["before"]["n"].clone(),
            )
        })
        .collect();
    ensure!(
        ops == [
            (Some(1), "c".into(), Value::Null),
            (Some(2), "c".into(), Value::Null),
            (Some(2), "u".into(), 1.into()),
            (Some(1), "d".into(), 2.into()),
        ],
        "debezium: {ops:?}"
    );
    Ok(())
}

/// Two processes that run the same exactly-once sink (same name, same topic) do not
/// fence each other: each has its own transactional id, and both write every epoch
/// without a failed delivery.
#[tokio::test]
async fn two_processes_with_the_same_exactly_once_sink_do_not_fence_each_other() -> Result<()> {
    let topic = unique("sink-twice");
    create_topic(&topic, 1).await?;
    let b = brokers();
    let mut processes = Vec::new();
    for _ in 0..2 {
        let weir = start_checkpointed().await?;
        weir.exec("CREATE SOURCE s (id BIGINT) WITH (connector = 'http')")
            .await?;
        weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id FROM s")
            .await?;
        weir.exec(&format!(
            "CREATE SINK k FROM v WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', \
             delivery = 'exactly_once')"
        ))
        .await?;
        processes.push(weir);
    }
    // Epochs from both, interleaved.
    for round in 0..5i64 {
        for (p, weir) in processes.iter().enumerate() {
            let id = round * 2 + p as i64;
            ensure!(
                weir.post_records("s", format!("{{\"id\": {id}}}\n"))
                    .await?
                    .0
                    == 200
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for weir in &processes {
        let status = wait_delivered(weir, "k").await?;
        ensure!(status["failed_deliveries"] == 0, "{status}");
    }
    let mut ids: Vec<i64> = deduplicate(&read_topic(&b, &topic, 10).await?)?
        .iter()
        .filter_map(|w| w.value.as_ref().and_then(|v| v["id"].as_i64()))
        .collect();
    ids.sort_unstable();
    ensure!(ids == (0..10).collect::<Vec<_>>(), "{ids:?}");
    Ok(())
}
