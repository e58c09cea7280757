//! The Kafka source against a real Kafka-protocol broker (tansu), started once per test
//! run by `scripts/test.sh` and named by `WEIR_TEST_KAFKA`. Each test uses topics and
//! groups of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::support::Weir;

/// The broker's address; the test script starts it.
pub(crate) fn brokers() -> String {
    std::env::var("WEIR_TEST_KAFKA").expect(
        "WEIR_TEST_KAFKA is not set: run the tests with scripts/test.sh, which starts a broker",
    )
}

/// A topic name no other test (or earlier run on the same broker) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{prefix}-{now}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) async fn create_topic(topic: &str, partitions: i32) -> Result<()> {
    create_topic_on(&brokers(), topic, partitions).await
}

async fn create_topic_on(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    Ok(())
}

/// A producer that sends each message in a batch of its own (tansu reports a
/// partition's end as its last batch's first offset + 1).
pub(crate) fn producer(brokers: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()?)
}

/// Produce `(partition, key, value)` messages, in order, each acknowledged.
pub(crate) async fn produce(topic: &str, messages: &[(i32, Option<String>, String)]) -> Result<()> {
    produce_to(&brokers(), topic, messages).await
}

async fn produce_to(
    brokers: &str,
    topic: &str,
    messages: &[(i32, Option<String>, String)],
) -> Result<()> {
    let producer = producer(brokers)?;
    for (partition, key, value) in messages {
        let mut record = FutureRecord::to(topic).partition(*partition).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
    }
    Ok(())
}

/// The group's committed offsets per partition.
fn committed(group: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(offsets
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

pub(crate) fn bid(id: u64, user: u64, ts_ms: u64) -> String {
    json!({"id": id, "user_id": user, "price": id * 10, "ts": ts_ms}).to_string()
}

/// weir with a checkpoint every 200 ms.
pub(crate) async fn start_checkpointed() -> Result<Weir> {
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '200ms'\n").await?;
    Weir::start_in(dir, &["--config", &config]).await
}

pub(crate) async fn config_dir(config: &str) -> Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config)?;
    Ok((dir, path.to_string_lossy().to_string()))
}

/// A view's rows, each as an object by column name.
pub(crate) async fn view_rows(weir: &Weir, view: &str) -> Result<Vec<Value>> {
    let body = weir.get(&format!("/api/v1/views/{view}")).await?;
    let columns: Vec<String> = body["columns"]
        .as_array()
        .context("columns")?
        .iter()
        .map(|c| c.as_str().unwrap_or_default().to_string())
        .collect();
    Ok(body["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|row| {
            let values = row.as_array().cloned().unwrap_or_default();
            Value::Object(columns.iter().cloned().zip(values).collect())
        })
        .collect())
}

/// The sum of `column` over a view's rows (None without rows).
async fn column_sum(weir: &Weir, view: &str, column: &str) -> Result<Option<i64>> {
    let rows = view_rows(weir, view).await?;
    Ok((!rows.is_empty()).then(|| rows.iter().filter_map(|r| r[column].as_i64()).sum()))
}

#[tokio::test]
async fn reads_json_with_metadata_columns_and_dead_letters_bad_messages_by_offset() -> Result<()> {
    let topic = unique("meta");
    create_topic(&topic, 2).await?;
    let mut messages = Vec::new();
    for i in 0..40u64 {
        messages.push((
            (i % 2) as i32,
            Some(format!("k{i}")),
            bid(i, i % 4, 1_000 + i),
        ));
    }
    // Partition 1's 21st message (offset 20) is not JSON.
    messages.push((1, None, "{not json".to_string()));
    produce(&topic, &messages).await?;

    let weir = Weir::start(&[]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, \
         part INT METADATA FROM 'partition', off BIGINT METADATA FROM 'offset', \
         k VARCHAR METADATA FROM 'key', t VARCHAR METADATA FROM 'topic', \
         sent TIMESTAMP METADATA FROM 'timestamp') \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', start = 'earliest', group = '42')"
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW all_bids AS SELECT id, part, off, k, t, sent FROM bids")
        .await?;
    let rows = weir
        .wait_for("40 rows", Duration::from_secs(60), || async {
            let rows = view_rows(&weir, "all_bids").await?;
            Ok((rows.len() >= 40).then_some(rows))
        })
        .await?;
    ensure!(rows.len() == 40, "{} rows", rows.len());
    for r in &rows {
        let id = r["id"].as_i64().context("id")?;
        ensure!(r["part"] == json!(id % 2), "{r}");
        ensure!(
            r["off"] == json!(id / 2),
            "offsets count within a partition: {r}"
        );
        ensure!(r["k"] == json!(format!("k{id}")), "{r}");
        ensure!(r["t"] == json!(topic), "{r}");
        ensure!(r["sent"].is_string(), "the message time: {r}");
    }
    let letters = weir
        .wait_for("the dead letter", Duration::from_secs(30), || async {
            let l = weir.get("/api/v1/dead-letters?source=bids").await?["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok((!l.is_empty()).then_some(l))
        })
        .await?;
    ensure!(letters.len() == 1, "{letters:?}");
    ensure!(
        letters[0]["partition"] == json!(format!("{topic}/1")),
        "{}",
        letters[0]
    );
    ensure!(letters[0]["position"] == json!(20), "{}", letters[0]);
    ensure!(letters[0]["raw"] == json!("{not json"), "{}", letters[0]);

    // The status shows each partition's position; group '42' stayed text.
    let status = weir
        .wait_for("positions", Duration::from_secs(30), || async {
            let s = weir.get("/api/v1/sources/bids").await?;
            let done = s["partitions"]
                .as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["lag"] == json!(0)));
            Ok(done.then_some(s))
        })
        .await?;
    let positions: Vec<&Value> = status["partitions"]
        .as_array()
        .context("partitions")?
        .iter()
        .map(|p| &p["position"])
        .collect();
    ensure!(positions == [&json!(20), &json!(21)], "{status}");
    let lag_line = format!("weir_source_lag{{partition=\"{topic}/1\",source=\"bids\"}} 0");
    weir.wait_for(
        "lag per partition in /metrics",
        Duration::from_secs(10),
        || async {
            let metrics = weir.metrics().await?;
            Ok(metrics.contains(&lag_line).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn options_are_checked_when_the_source_is_created() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    let b = brokers();
    let cases = [
        (
            format!(
                "CREATE SOURCE s (a BIGINT) WITH (connector = 'kafka', brokers = '{b}', topic = 't', strat = 'earliest')"
            ),
            "unknown option `strat`",
        ),
        (
            format!("CREATE SOURCE s (a BIGINT) WITH (connector = 'kafka', brokers = '{b}')"),
            "topic",
        ),
        (
            format!(
                "CREATE SOURCE s (a BIGINT) WITH (connector = 'kafka', brokers = '{b}', topic = 't', start = 'soon')"
            ),
            "start = 'soon'",
        ),
        (
            format!(
                "CREATE SOURCE s (a BIGINT, b BIGINT) WITH (connector = 'kafka', brokers = '{b}', topic = 't', format = 'raw')"
            ),
            "one column",
        ),
        (
            format!(
                "CREATE SOURCE s (a BIGINT METADATA FROM 'leader') WITH (connector = 'kafka', brokers = '{b}', topic = 't')"
            ),
            "'partition', 'offset'",
        ),
        (
            "CREATE SOURCE s (a BIGINT METADATA FROM 'offset') WITH (connector = 'http')"
                .to_string(),
            "no metadata columns",
        ),
        (
            format!(
                "CREATE SOURCE s (a BIGINT) WITH (connector = 'kafka', brokers = '{b}', topic = 't', properties.enable.auto.commit = 'true')"
            ),
            "weir commits offsets itself",
        ),
        // properties.* reach librdkafka, which checks them.
        (
            format!(
                "CREATE SOURCE s (a BIGINT) WITH (connector = 'kafka', brokers = '{b}', topic = 't', properties.fetch.max.bytes = 'lots')"
            ),
            "fetch.max.bytes",
        ),
        (
            "CREATE SOURCE s (a BIGINT) WITH (connector = 'http', properties.linger.ms = '5')"
                .to_string(),
            "takes no properties",
        ),
    ];
    for (sql, expected) in cases {
        let (status, body) = weir.sql(&sql).await?;
        ensure!(status == 400, "{sql}: {status} {body}");
        ensure!(
            body.to_string().contains(expected),
            "{sql}: expected {expected:?} in {body}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_restart_reads_on_from_the_checkpoint_and_the_group_holds_its_offsets() -> Result<()> {
    let topic = unique("restart");
    let group = unique("g");
    create_topic(&topic, 2).await?;
    let batch = |from: u64, to: u64| -> Vec<(i32, Option<String>, String)> {
        (from..to)
            .map(|i| ((i % 2) as i32, None, bid(i, i % 7, 1_000 + i)))
            .collect()
    };
    produce(&topic, &batch(0, 300)).await?;
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '200ms'\nkeep = 3\n").await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', group = '{group}', start = 'earliest')"
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW totals AS SELECT user_id, count(*) AS n, sum(id) AS ids \
         FROM bids GROUP BY user_id",
    )
    .await?;
    let total = |n: u64| (0..n).sum::<u64>() as i64;
    weir.wait_for("300 bids", Duration::from_secs(60), || async {
        Ok((column_sum(&weir, "totals", "n").await? == Some(300)).then_some(()))
    })
    .await?;
    // Once a checkpoint holds them, the group has them as the next offsets to read.
    weir.wait_for("the committed offsets", Duration::from_secs(30), || async {
        let c = committed(&group, &topic, 2)?;
        Ok((c == BTreeMap::from([(0, 150), (1, 150)])).then_some(()))
    })
    .await?;

    // Killed three times while messages keep coming: nothing lost, nothing twice.
    let mut weir = weir;
    let mut sent = 300;
    for round in 0..3 {
        produce(&topic, &batch(sent, sent + 100)).await?;
        sent += 100;
        tokio::time::sleep(Duration::from_millis(150 * (round + 1))).await;
        let config = weir.data_dir.path().join("weir.toml");
        let config = config.to_string_lossy().to_string();
        weir = weir.restart(&["--config", &config]).await?;
    }
    let expected = sent;
    weir.wait_for("every bid once", Duration::from_secs(60), || async {
        let n = column_sum(&weir, "totals", "n").await?;
        if n.is_some_and(|n| n > expected as i64) {
            bail!("counted {n:?} bids of {expected}: some twice");
        }
        Ok((n == Some(expected as i64)).then_some(()))
    })
    .await?;
    ensure!(column_sum(&weir, "totals", "ids").await? == Some(total(expected)));
    Ok(())
}

#[tokio::test]
async fn a_partition_far_behind_holds_the_watermark_and_an_idle_one_does_not() -> Result<()> {
    let topic = unique("skew");
    // A group of its own: members of one group reading other topics would rebalance it.
    let group = unique("g");
    create_topic(&topic, 2).await?;
    // Partition 0 runs 100 s ahead of partition 1: each partition's rows are in time
    // order, but read together partition 1's would all be late by a single watermark.
    let base = 1_700_000_000_000u64;
    let mut messages = Vec::new();
    for i in 0..60u64 {
        messages.push((0, None, bid(i, 0, base + 100_000 + i * 500)));
        messages.push((1, None, bid(1_000 + i, 1, base + i * 500)));
    }
    produce(&topic, &messages).await?;
    let (dir, config) = config_dir("[runtime]\nidle-timeout = '5s'\n").await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', start = 'earliest', group = '{group}')"
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW per_10s AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(bids, ts, INTERVAL '10' SECOND) GROUP BY window_start",
    )
    .await?;
    // Partition 1 falls silent once read; partition 0 moves on, and closes the last
    // windows once partition 1 counts as idle.
    let first = weir
        .wait_for(
            "partition 1's first windows",
            Duration::from_secs(60),
            || async { Ok((view_rows(&weir, "per_10s").await?.len() >= 2).then_some(())) },
        )
        .await;
    if let Err(e) = first {
        bail!(
            "{e}\nsource: {}\nviews: {}",
            weir.get("/api/v1/sources/bids").await?,
            weir.get("/api/v1/views").await?
        );
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    produce(&topic, &[(0, None, bid(5_000, 0, base + 200_000))]).await?;
    let rows = weir
        .wait_for(
            "windows of both partitions",
            Duration::from_secs(60),
            || async {
                let rows = view_rows(&weir, "per_10s").await?;
                let counted: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
                Ok((counted == 120).then_some(rows))
            },
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => bail!(
            "{e}\nsource: {}\nviews: {}\nrows: {:?}",
            weir.get("/api/v1/sources/bids").await?,
            weir.get("/api/v1/views").await?,
            view_rows(&weir, "per_10s").await?
        ),
    };
    ensure!(rows.len() == 6, "3 windows of each partition: {rows:?}");
    let views = weir.get("/api/v1/views").await?;
    let late = views["views"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "per_10s"))
        .map(|v| v["late_rows"].clone());
    ensure!(late == Some(json!(0)), "no row was late: {views}");
    Ok(())
}

#[tokio::test]
async fn a_bounded_read_finishes_at_the_end_offsets_and_says_where() -> Result<()> {
    let topic = unique("bounded");
    let group = unique("g");
    create_topic(&topic, 2).await?;
    let messages: Vec<_> = (0..20u64)
        .map(|i| ((i % 2) as i32, None, bid(i, 0, 1_000 + i * 100)))
        .collect();
    produce(&topic, &messages).await?;
    // Two processes in one group, each with the same bounded read: a bounded read is
    // a batch job over fixed offsets, so each reads every partition and finishes.
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '200ms'\nkeep = 3\n").await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    let other = Weir::start(&[]).await?;
    let b = brokers();
    let source = format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', start = 'earliest', end = 'latest', group = '{group}')"
    );
    let view = "CREATE MATERIALIZED VIEW per_window AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(bids, ts, INTERVAL '1' SECOND) GROUP BY window_start";
    for w in [&weir, &other] {
        w.exec(&source).await?;
        w.exec(view).await?;
    }
    for w in [&weir, &other] {
        w.wait_finished("bids").await?;
    }
    // Written after the end was taken: not read.
    produce(&topic, &[(0, None, bid(99, 0, 1_500))]).await?;
    let ends = json!({format!("{topic}/0"): 10, format!("{topic}/1"): 10});
    for w in [&weir, &other] {
        let status = w.get("/api/v1/sources/bids").await?;
        ensure!(status["status"] == "finished", "{status}");
        ensure!(status["end_offsets"] == ends, "{status}");
        // The final watermark closed every window: 20 rows in 2 windows.
        let rows = view_rows(w, "per_window").await?;
        let counted: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
        ensure!(counted == 20 && rows.len() == 2, "{rows:?}");
    }
    // The checkpoints after the end commit it to the group.
    weir.wait_for("the end committed", Duration::from_secs(30), || async {
        let c = committed(&group, &topic, 2)?;
        Ok((c == BTreeMap::from([(0, 10), (1, 10)])).then_some(()))
    })
    .await?;
    // Restarted, the read ends where it was to end, not at the topic's new end: the
    // view is the same, and its windows are still closed.
    let before = view_rows(&weir, "per_window").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let weir = weir.restart(&["--config", &config]).await?;
    weir.wait_finished("bids").await?;
    let status = weir.get("/api/v1/sources/bids").await?;
    ensure!(status["end_offsets"] == ends, "{status}");
    ensure!(
        view_rows(&weir, "per_window").await? == before,
        "the restarted read changed the view"
    );
    Ok(())
}

/// A second broker of the test's own, killed on drop (`WEIR_TANSU` is the binary).
pub(crate) struct OwnBroker(pub std::process::Child);

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn a_source_waits_for_brokers_that_are_down_and_reads_once_they_are_up() -> Result<()> {
    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let weir = Weir::start(&[]).await?;
    weir.exec(&format!(
        "CREATE SOURCE later (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{address}', topic = 'later', start = 'earliest')"
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id FROM later")
        .await?;
    let status = weir
        .wait_for(
            "the source to say it is connecting",
            Duration::from_secs(30),
            || async {
                let s = weir.get("/api/v1/sources/later").await?;
                Ok((s["status"] == "connecting").then_some(s))
            },
        )
        .await?;
    ensure!(
        status["waiting"]
            .as_str()
            .is_some_and(|w| w.contains(&address)),
        "the reason names the brokers: {status}"
    );
    let _broker = tansu(&address, &[("STORAGE_ENGINE", "memory://tansu/".into())])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("linger.ms", "0")
        .create()?;
    // The broker creates the topic when the producer first asks for it.
    for i in 0..5u64 {
        producer
            .send(
                FutureRecord::<(), String>::to("later").payload(&bid(i, 0, 1_000)),
                Duration::from_secs(20),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    weir.wait_for(
        "the rows once the brokers are up",
        Duration::from_secs(90),
        || async { Ok((view_rows(&weir, "seen").await?.len() == 5).then_some(())) },
    )
    .await?;
    let status = weir.get("/api/v1/sources/later").await?;
    ensure!(status["status"] == "running", "{status}");
    Ok(())
}

/// Two processes with the same source and group split a 4-partition topic: each holds
/// the complete counts of the keys in its partitions, and together they hold them all.
#[tokio::test]
async fn two_processes_in_one_group_split_the_partitions_and_together_count_everything()
-> Result<()> {
    let topic = unique("shared");
    let group = unique("g");
    create_topic(&topic, 4).await?;
    let b = brokers();
    let mut processes = Vec::new();
    for _ in 0..2 {
        let weir = Weir::start(&[]).await?;
        weir.exec(&format!(
            "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
             WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', group = '{group}', start = 'earliest')"
        ))
        .await?;
        weir.exec(
            "CREATE MATERIALIZED VIEW per_user AS SELECT user_id, count(*) AS n FROM bids GROUP BY user_id",
        )
        .await?;
        processes.push(weir);
    }
    // Produce only once the group has settled with two partitions each.
    for weir in &processes {
        weir.wait_for("two partitions each", Duration::from_secs(60), || async {
            let s = weir.get("/api/v1/sources/bids").await?;
            Ok((s["partitions"].as_array().map(Vec::len) == Some(2)).then_some(()))
        })
        .await?;
    }
    // The key is the partition: user u's bids are all in partition u.
    let messages: Vec<_> = (0..200u64)
        .map(|i| ((i % 4) as i32, None, bid(i, i % 4, 1_000 + i)))
        .collect();
    produce(&topic, &messages).await?;
    let mut counts: BTreeMap<i64, (usize, i64)> = BTreeMap::new();
    for (p, weir) in processes.iter().enumerate() {
        let rows = weir
            .wait_for("its partitions' rows", Duration::from_secs(60), || async {
                let rows = view_rows(weir, "per_user").await?;
                let n: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
                Ok((n == 100).then_some(rows))
            })
            .await?;
        for r in rows {
            let user = r["user_id"].as_i64().context("user_id")?;
            ensure!(
                counts
                    .insert(user, (p, r["n"].as_i64().context("n")?))
                    .is_none(),
                "user {user} counted in both processes"
            );
        }
    }
    ensure!(
        counts.values().map(|(_, n)| *n).collect::<Vec<_>>() == [50, 50, 50, 50],
        "each user complete in one process: {counts:?}"
    );
    Ok(())
}

/// Two processes share a 4-partition topic; one is killed once its offsets are
/// committed, and the other takes its partitions from the group's offsets: between
/// them every message is read, none twice.
#[tokio::test]
async fn a_killed_process_leaves_its_partitions_to_the_other_and_nothing_is_lost() -> Result<()> {
    let topic = unique("takeover");
    let group = unique("g");
    create_topic(&topic, 4).await?;
    let b = brokers();
    let mut processes = Vec::new();
    for _ in 0..2 {
        let weir = start_checkpointed().await?;
        weir.exec(&format!(
            "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
             WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', group = '{group}', start = 'earliest')"
        ))
        .await?;
        weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id FROM bids")
            .await?;
        processes.push(weir);
    }
    for weir in &processes {
        weir.wait_for("two partitions each", Duration::from_secs(60), || async {
            let s = weir.get("/api/v1/sources/bids").await?;
            Ok((s["partitions"].as_array().map(Vec::len) == Some(2)).then_some(()))
        })
        .await?;
    }
    let batch = |from: u64, to: u64| -> Vec<(i32, Option<String>, String)> {
        (from..to)
            .map(|i| ((i % 4) as i32, None, bid(i, i % 4, 1_000 + i)))
            .collect()
    };
    produce(&topic, &batch(0, 200)).await?;
    let ids =
        |rows: Vec<Value>| -> Vec<i64> { rows.iter().filter_map(|r| r["id"].as_i64()).collect() };
    // Both have read their halves, and a checkpoint of each holds them.
    for weir in &processes {
        weir.wait_for("its half", Duration::from_secs(60), || async {
            Ok((view_rows(weir, "seen").await?.len() == 100).then_some(()))
        })
        .await?;
    }
    processes[0]
        .wait_for("the committed offsets", Duration::from_secs(30), || async {
            let c = committed(&group, &topic, 4)?;
            Ok((c == BTreeMap::from([(0, 50), (1, 50), (2, 50), (3, 50)])).then_some(()))
        })
        .await?;
    let survivor = processes.pop().context("two processes")?;
    let killed = processes.pop().context("two processes")?;
    let killed_ids = ids(view_rows(&killed, "seen").await?);
    killed.kill().await?;
    survivor
        .wait_for("all four partitions", Duration::from_secs(60), || async {
            let s = survivor.get("/api/v1/sources/bids").await?;
            Ok((s["partitions"].as_array().map(Vec::len) == Some(4)).then_some(()))
        })
        .await?;
    produce(&topic, &batch(200, 400)).await?;
    survivor
        .wait_for(
            "the new messages of every partition",
            Duration::from_secs(60),
            || async { Ok((view_rows(&survivor, "seen").await?.len() >= 300).then_some(())) },
        )
        .await?;
    // Anything read twice would come in now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let survivor_ids = ids(view_rows(&survivor, "seen").await?);
    let mut all: Vec<i64> = killed_ids.iter().chain(&survivor_ids).copied().collect();
    all.sort_unstable();
    ensure!(
        all == (0..400).collect::<Vec<_>>(),
        "{} ids from the killed process and {} from the survivor are not 0..400 once each",
        killed_ids.len(),
        survivor_ids.len()
    );
    Ok(())
}

/// A message over the source's `max_message_bytes` is a dead letter with its position,
/// and the partition reads on past it.
#[tokio::test]
async fn a_message_over_the_size_limit_is_dead_lettered_and_the_partition_reads_on() -> Result<()> {
    let topic = unique("big");
    create_topic(&topic, 1).await?;
    let big = json!({"id": 1, "user_id": 0, "price": 0, "ts": 1_000, "pad": "x".repeat(300)});
    produce(
        &topic,
        &[
            (0, None, bid(0, 0, 1_000)),
            (0, None, big.to_string()),
            (0, None, bid(2, 0, 1_002)),
        ],
    )
    .await?;
    let weir = Weir::start(&[]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', start = 'earliest', \
         group = '{}', max_message_bytes = '200')",
        unique("g")
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id FROM bids")
        .await?;
    weir.wait_for("the small messages", Duration::from_secs(60), || async {
        Ok((view_rows(&weir, "seen").await?.len() == 2).then_some(()))
    })
    .await?;
    let letters = weir.get("/api/v1/dead-letters").await?;
    let letter = letters["dead_letters"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["source"] == "bids"))
        .with_context(|| format!("no dead letter: {letters}"))?;
    ensure!(
        letter["position"] == 1
            && letter["partition"] == json!(format!("{topic}/0"))
            && letter["reason"]
                .as_str()
                .is_some_and(|r| r.contains("over the source's max_message_bytes (200)")),
        "{letter}"
    );
    let ids: Vec<i64> = view_rows(&weir, "seen")
        .await?
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ensure!(ids == [0, 2], "{ids:?}");
    Ok(())
}

/// Where each `start` and `end` says to begin and stop, and topics named as a list or a
/// pattern, read from one topic produced in two phases with a moment between them.
#[tokio::test]
async fn start_end_and_topic_options_read_what_they_say() -> Result<()> {
    let prefix = unique("opts");
    let topic = format!("{prefix}-a");
    let other = format!("{prefix}-b");
    create_topic(&topic, 2).await?;
    create_topic(&other, 1).await?;
    // Partition i % 2, so id i is at offset i / 2 of its partition.
    let batch = |from: u64, to: u64| -> Vec<(i32, Option<String>, String)> {
        (from..to)
            .map(|i| ((i % 2) as i32, None, bid(i, 0, 1_000 + i)))
            .collect()
    };
    produce(&topic, &batch(0, 20)).await?;
    produce(&other, &[(0, None, bid(100, 0, 1_000))]).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    produce(&topic, &batch(20, 40)).await?;

    let weir = Weir::start(&[]).await?;
    let b = brokers();
    let cases: [(&str, String); 7] = [
        ("latest", format!("topic = '{topic}', start = 'latest'")),
        ("since", format!("topic = '{topic}', start = '{between}'")),
        ("offsets", format!("topic = '{topic}', start = '0:5,1:8'")),
        (
            "upto",
            format!("topic = '{topic}', start = 'earliest', end = '0:3,1:2'"),
        ),
        (
            "before",
            format!("topic = '{topic}', start = 'earliest', end = '{between}'"),
        ),
        (
            "both",
            format!("topic = '{topic}, {other}', start = 'earliest'"),
        ),
        (
            "pattern",
            format!("topic_pattern = '{prefix}-b', start = 'earliest'"),
        ),
    ];
    for (name, options) in &cases {
        weir.exec(&format!(
            "CREATE SOURCE {name} (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
             WITH (connector = 'kafka', brokers = '{b}', group = '{}', {options})",
            unique("g")
        ))
        .await?;
        weir.exec(&format!(
            "CREATE MATERIALIZED VIEW {name}_ids AS SELECT id FROM {name}"
        ))
        .await?;
    }
    // `latest` begins at the ends of the partitions when it starts fetching them: once
    // the fetcher reports their ends (statistics, every second), and a moment more.
    weir.wait_for("latest to fetch", Duration::from_secs(60), || async {
        let s = weir.get("/api/v1/sources/latest").await?;
        let fetching = s["partitions"].as_array().is_some_and(|p| {
            p.len() == 2 && p.iter().all(|p| p["high_watermark"].as_i64().is_some())
        });
        Ok(fetching.then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce(&topic, &batch(40, 44)).await?;
    let range = |r: std::ops::Range<i64>| r.collect::<Vec<_>>();
    let expected: [(&str, Vec<i64>); 7] = [
        ("latest", range(40..44)),
        ("since", range(20..44)),
        (
            "offsets",
            [10, 12, 14, 16, 18, 17, 19]
                .into_iter()
                .chain(20..44)
                .collect(),
        ),
        ("upto", vec![0, 1, 2, 3, 4]),
        ("before", range(0..20)),
        ("both", range(0..44).into_iter().chain([100]).collect()),
        ("pattern", vec![100]),
    ];
    for (name, mut want) in expected {
        want.sort_unstable();
        let view = format!("{name}_ids");
        weir.wait_for(
            &format!("{name} to read {want:?}"),
            Duration::from_secs(60),
            || async {
                let mut ids: Vec<i64> = view_rows(&weir, &view)
                    .await?
                    .iter()
                    .filter_map(|r| r["id"].as_i64())
                    .collect();
                ids.sort_unstable();
                Ok((ids == want).then_some(()))
            },
        )
        .await?;
    }
    for bounded in ["upto", "before"] {
        weir.wait_finished(bounded).await?;
    }
    Ok(())
}

/// Partitions that appear while a source runs are found (metadata is refreshed every
/// 10 s) and read from their start. tansu cannot add partitions to a topic
/// (CreatePartitions is unsupported), so the new partitions here are a new topic's that
/// match the source's pattern: the same discovery.
#[tokio::test]
async fn partitions_that_appear_while_running_are_read_from_their_start() -> Result<()> {
    let prefix = unique("grow");
    let first = format!("{prefix}-1");
    create_topic(&first, 1).await?;
    produce(&first, &[(0, None, bid(0, 0, 1_000))]).await?;
    let weir = Weir::start(&[]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic_pattern = '{prefix}-.*', \
         start = 'earliest', group = '{}')",
        unique("g")
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id FROM bids")
        .await?;
    weir.wait_for("the first message", Duration::from_secs(60), || async {
        Ok((view_rows(&weir, "seen").await?.len() == 1).then_some(()))
    })
    .await?;
    let second = format!("{prefix}-2");
    create_topic(&second, 2).await?;
    produce(
        &second,
        &[(0, None, bid(1, 0, 1_001)), (1, None, bid(2, 0, 1_002))],
    )
    .await?;
    weir.wait_for(
        "the new partitions' messages",
        Duration::from_secs(60),
        || async {
            let mut ids: Vec<i64> = view_rows(&weir, "seen")
                .await?
                .iter()
                .filter_map(|r| r["id"].as_i64())
                .collect();
            ids.sort_unstable();
            Ok((ids == [0, 1, 2]).then_some(()))
        },
    )
    .await?;
    let s = weir.get("/api/v1/sources/bids").await?;
    ensure!(s["partitions"].as_array().map(Vec::len) == Some(3), "{s}");
    Ok(())
}

/// A second broker of the test's own on `address` (`WEIR_TANSU` is the binary), with
/// these further settings (`STORAGE_ENGINE`, ...), killed on drop.
pub(crate) fn tansu(address: &str, env: &[(&str, String)]) -> Result<OwnBroker> {
    let binary = std::env::var("WEIR_TANSU")
        .context("WEIR_TANSU is not set: run the tests with scripts/test.sh")?;
    let url = format!("tcp://{address}");
    let mut command = std::process::Command::new(binary);
    command
        .arg("broker")
        .env("LISTENER_URL", &url)
        .env("ADVERTISED_LISTENER_URL", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    Ok(OwnBroker(command.spawn()?))
}

/// tansu storing its log in S3 (the moto server the test script starts, `WEIR_TEST_S3`,
/// a bucket of its own), so that the log survives a restart of the broker.
fn durable_broker(address: &str, bucket: &str) -> Result<OwnBroker> {
    let s3 = std::env::var("WEIR_TEST_S3")
        .context("WEIR_TEST_S3 is not set: run the tests with scripts/test.sh")?;
    tansu(
        address,
        &[
            ("STORAGE_ENGINE", format!("s3://{bucket}/")),
            ("AWS_ENDPOINT", s3),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ],
    )
}

/// Start a durable broker on `address`, once the port is free again after a restart.
async fn start_durable_broker(address: &str, bucket: &str) -> Result<OwnBroker> {
    for _ in 0..50 {
        let mut broker = durable_broker(address, bucket)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // One that could not bind the port has exited.
        if broker.0.try_wait()?.is_none() && std::net::TcpStream::connect(address).is_ok() {
            return Ok(broker);
        }
    }
    bail!("tansu did not start on {address}")
}

/// A durable broker in a bucket of its own, on a free port: (address, bucket, broker).
async fn new_durable_broker() -> Result<(String, String, OwnBroker)> {
    let s3 = std::env::var("WEIR_TEST_S3")
        .context("WEIR_TEST_S3 is not set: run the tests with scripts/test.sh")?;
    let bucket = unique("tansu");
    let made = reqwest::Client::new()
        .put(format!("{s3}/{bucket}"))
        .send()
        .await?;
    ensure!(
        made.status().is_success(),
        "cannot make bucket {bucket}: {}",
        made.status()
    );
    let address = format!("127.0.0.1:{}", free_port()?);
    let broker = start_durable_broker(&address, &bucket).await?;
    Ok((address, bucket, broker))
}

/// A topic that does not exist is an error naming it, when the source is created. (The
/// shared broker creates any topic a client asks about; tansu on S3 does not.)
#[tokio::test]
async fn a_topic_that_does_not_exist_is_refused_by_name() -> Result<()> {
    let (address, _bucket, _broker) = new_durable_broker().await?;
    let weir = Weir::start(&[]).await?;
    let (status, body) = weir
        .sql(&format!(
            "CREATE SOURCE nothing (id BIGINT) WITH (connector = 'kafka', brokers = '{address}', \
             topic = 'no-such-topic')"
        ))
        .await?;
    ensure!(
        status == 400
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("topic 'no-such-topic' does not exist")),
        "{status} {body}"
    );
    ensure!(weir.get("/api/v1/sources").await?["sources"] == json!([]));
    Ok(())
}

/// The broker stops mid-stream and comes back with its log: the source waits, then
/// reads on from where it was, and every message is counted once.
#[tokio::test]
async fn a_broker_restarted_mid_stream_loses_nothing_and_counts_nothing_twice() -> Result<()> {
    let (address, bucket, broker) = new_durable_broker().await?;
    let topic = "restarted";
    create_topic_on(&address, topic, 2).await?;
    let batch = |from: u64, to: u64| -> Vec<(i32, Option<String>, String)> {
        (from..to)
            .map(|i| ((i % 2) as i32, None, bid(i, 0, 1_000 + i)))
            .collect()
    };
    produce_to(&address, topic, &batch(0, 100)).await?;
    let weir = start_checkpointed().await?;
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{address}', topic = '{topic}', start = 'earliest')"
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id FROM bids")
        .await?;
    let count = || async { Ok::<_, anyhow::Error>(view_rows(&weir, "seen").await?.len()) };
    // The HTTP front door too: its producer must survive the restart.
    let post = |id: u64| {
        let weir = &weir;
        async move {
            let body = bid(id, 0, 1_000 + id);
            weir.wait_for("the front door to take a record", Duration::from_secs(60), || {
                let body = body.clone();
                async move { Ok((weir.post_records("bids", body).await?.0 == 200).then_some(())) }
            })
            .await
        }
    };
    post(1_000).await?;
    weir.wait_for("the first messages", Duration::from_secs(60), || async {
        Ok((count().await? == 101).then_some(()))
    })
    .await?;

    drop(broker);
    weir.wait_for(
        "the source to see the brokers gone",
        Duration::from_secs(60),
        || async {
            let s = weir.get("/api/v1/sources/bids").await?;
            Ok((s["status"] == "connecting").then_some(()))
        },
    )
    .await?;
    let _broker = start_durable_broker(&address, &bucket).await?;
    produce_to(&address, topic, &batch(100, 200)).await?;
    post(1_001).await?;
    weir.wait_for(
        "every message after the restart",
        Duration::from_secs(90),
        || async { Ok((count().await? >= 202).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids: Vec<i64> = view_rows(&weir, "seen")
        .await?
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ids.sort_unstable();
    let expected: Vec<i64> = (0..200).chain([1_000, 1_001]).collect();
    ensure!(
        ids == expected,
        "{} ids, not 0..200, 1000 and 1001 once each",
        ids.len()
    );
    let s = weir.get("/api/v1/sources/bids").await?;
    ensure!(s["status"] == "running", "{s}");
    Ok(())
}

/// A process whose pipeline is stalled (its view's plugin failed, so the view holds
/// batches, then makes the source wait) still answers its group: a second process that
/// joins gets its share of the partitions at once and reads them. (A reader blocked on
/// its pipeline would hold the rebalance up to `max.poll.interval.ms`.)
#[tokio::test]
async fn a_stalled_process_does_not_hold_up_its_group() -> Result<()> {
    let topic = unique("stalled");
    let group = unique("g");
    create_topic(&topic, 2).await?;
    let messages: Vec<_> = (0..2_000u64)
        .map(|i| ((i % 2) as i32, None, bid(i, i % 7, 1_000 + i)))
        .collect();
    produce(&topic, &messages).await?;
    let (dir, config) = config_dir("[runtime.plugins]\nmax-consecutive-failures = 3\n").await?;
    let stalled = Weir::start_in(dir, &["--config", &config]).await?;
    let broken = std::fs::read_to_string(format!(
        "{}/../plugins/hostile/wat/immediate_trap.wat",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    let (code, body) = stalled
        .upload_plugin("flaky", wat::parse_str(&broken)?)
        .await?;
    ensure!(code == 201, "{body}");
    let b = brokers();
    // A batch per message, so the held batches and the channel fill fast.
    let source = format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', group = '{group}', \
         start = 'earliest', max_rows = 1, max_delay = '1ms')"
    );
    stalled.exec(&source).await?;
    stalled
        .exec("CREATE MATERIALIZED VIEW checked AS SELECT id, crash(id) AS m FROM bids")
        .await?;
    let records_in = || async {
        Ok::<_, anyhow::Error>(stalled.get("/api/v1/sources/bids").await?["records_in"].as_u64())
    };
    // Stalled: the view paused, and the source no longer takes records.
    stalled
        .wait_for("the source to stall", Duration::from_secs(60), || async {
            let before = records_in().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let views = stalled.get("/api/v1/views").await?;
            let paused = views["views"][0]["status"] == "paused";
            Ok((paused && records_in().await? == before).then_some(()))
        })
        .await?;
    let read = records_in().await?.context("records_in")?;
    ensure!(
        read < 2_000,
        "the source read everything ({read}): nothing stalled"
    );

    let other = Weir::start(&[]).await?;
    other.exec(&source).await?;
    other
        .exec("CREATE MATERIALIZED VIEW seen AS SELECT id FROM bids")
        .await?;
    other
        .wait_for(
            "the second process to read its share",
            Duration::from_secs(60),
            || async {
                let s = other.get("/api/v1/sources/bids").await?;
                let rows = view_rows(&other, "seen").await?.len();
                Ok((s["partitions"].as_array().map(Vec::len) == Some(1) && rows > 0).then_some(()))
            },
        )
        .await?;
    Ok(())
}

/// By default a source's group is `weir-<source name>` and a partition starts at the
/// group's committed offset: a source created over a group seeded at offset 6 reads
/// each partition from there, and commits its own progress to the same group.
#[tokio::test]
async fn by_default_a_source_reads_from_its_groups_offsets_and_the_group_is_named_after_it()
-> Result<()> {
    let topic = unique("grouped");
    create_topic(&topic, 2).await?;
    let messages: Vec<_> = (0..20u64)
        .map(|i| ((i % 2) as i32, None, bid(i, 0, 1_000 + i)))
        .collect();
    produce(&topic, &messages).await?;
    let name = unique("src").replace('-', "_");
    let group = format!("weir-{name}");
    commit_as_member(&group, &topic, &[(0, 6), (1, 6)]).await?;
    ensure!(
        committed(&group, &topic, 2)? == BTreeMap::from([(0, 6), (1, 6)]),
        "the group is seeded"
    );
    let weir = start_checkpointed().await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE {name} (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}')"
    ))
    .await?;
    weir.exec(&format!(
        "CREATE MATERIALIZED VIEW seen AS SELECT id FROM {name}"
    ))
    .await?;
    // Offsets 6 to 9 of each partition: ids 12 to 19.
    let ids = weir
        .wait_for(
            "the rows after the group's offsets",
            Duration::from_secs(60),
            || async {
                let mut ids: Vec<i64> = view_rows(&weir, "seen")
                    .await?
                    .iter()
                    .filter_map(|r| r["id"].as_i64())
                    .collect();
                ids.sort_unstable();
                Ok((ids.len() >= 8).then_some(ids))
            },
        )
        .await?;
    ensure!(ids == (12..20).collect::<Vec<_>>(), "{ids:?}");
    weir.wait_for(
        "its progress in the group",
        Duration::from_secs(30),
        || async {
            let c = committed(&group, &topic, 2)?;
            Ok((c == BTreeMap::from([(0, 10), (1, 10)])).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// The message timestamp as the event time: `METADATA FROM 'timestamp'` under
/// `WATERMARK FOR`, with values that carry no time of their own; windows close by the
/// messages' times.
#[tokio::test]
async fn the_message_timestamp_is_the_event_time_and_the_watermark() -> Result<()> {
    let topic = unique("stamped");
    create_topic(&topic, 1).await?;
    let weir = Weir::start(&[]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE stamped (id BIGINT, sent TIMESTAMP METADATA FROM 'timestamp', \
         WATERMARK FOR sent AS sent) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', start = 'earliest', \
         group = '{}')",
        unique("g")
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW per_second AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(stamped, sent, INTERVAL '1' SECOND) GROUP BY window_start, window_end",
    )
    .await?;
    // Second 0 gets 3 messages, second 1 gets 2; one at second 5 closes both.
    let producer = producer(&b)?;
    let base: i64 = 1_700_000_000_000;
    for (id, at) in [
        (1, 100),
        (2, 400),
        (3, 900),
        (4, 1_100),
        (5, 1_500),
        (6, 5_000),
    ] {
        let value = format!("{{\"id\": {id}}}");
        producer
            .send(
                FutureRecord::<(), String>::to(&topic)
                    .partition(0)
                    .payload(&value)
                    .timestamp(base + at),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    let rows = weir
        .wait_for(
            "the two closed windows",
            Duration::from_secs(60),
            || async {
                let rows = view_rows(&weir, "per_second").await?;
                Ok((rows.len() == 2).then_some(rows))
            },
        )
        .await?;
    let mut counts: Vec<i64> = rows.iter().filter_map(|r| r["n"].as_i64()).collect();
    counts.sort_unstable();
    ensure!(counts == [2, 3], "{rows:?}");
    let status = weir.get("/api/v1/sources/stamped").await?;
    ensure!(
        status["watermark_ms"].as_i64() == Some(base + 5_000),
        "the watermark is the newest message's time: {status}"
    );
    Ok(())
}

/// A restart seeks to the checkpoint's offsets, not to the group's: with the group
/// moved back to 0 while weir was down, the restarted source reads on from where the
/// checkpoint says, and counts nothing twice.
#[tokio::test]
async fn a_restart_seeks_to_the_checkpoint_even_when_the_group_says_otherwise() -> Result<()> {
    let topic = unique("seek");
    let group = unique("g");
    create_topic(&topic, 1).await?;
    let first: Vec<_> = (0..10u64)
        .map(|i| (0, None, bid(i, 0, 1_000 + i)))
        .collect();
    produce(&topic, &first).await?;
    let weir = start_checkpointed().await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', group = '{group}', \
         start = 'earliest')"
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT id FROM bids")
        .await?;
    weir.wait_for(
        "the checkpoint's offsets in the group",
        Duration::from_secs(60),
        || async { Ok((committed(&group, &topic, 1)? == BTreeMap::from([(0, 10)])).then_some(())) },
    )
    .await?;
    let config = weir.data_dir.path().join("weir.toml");
    let dir = weir.kill().await?;
    // Move the group back to 0 (accepted once the killed member has left the group).
    commit_as_member(&group, &topic, &[(0, 0)]).await?;
    let more: Vec<_> = (10..15u64)
        .map(|i| (0, None, bid(i, 0, 1_000 + i)))
        .collect();
    produce(&topic, &more).await?;
    let weir = Weir::start_in(dir, &["--config", &config.to_string_lossy()]).await?;
    let ids = weir
        .wait_for("the new messages", Duration::from_secs(60), || async {
            let ids: Vec<i64> = view_rows(&weir, "seen")
                .await?
                .iter()
                .filter_map(|r| r["id"].as_i64())
                .collect();
            Ok(ids.contains(&14).then_some(()))
        })
        .await;
    ids?;
    // Anything read again from offset 0 would come with the new messages.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids: Vec<i64> = view_rows(&weir, "seen")
        .await?
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ensure!(ids == (0..15).collect::<Vec<_>>(), "{ids:?}");
    Ok(())
}

/// Commit these `(partition, offset)`s of `topic` in `group` as a member of the group
/// (brokers refuse commits from outside a group that has had members): join, wait for
/// the partitions, commit, leave.
async fn commit_as_member(group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
    let (group, topic, offsets) = (group.to_string(), topic.to_string(), offsets.to_vec());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()?;
        consumer.subscribe(&[&topic])?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while consumer.assignment()?.count() == 0 {
            ensure!(
                std::time::Instant::now() < deadline,
                "no assignment in group {group}"
            );
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset) in &offsets {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
        let partitions = offsets.len() as i32;
        ensure!(committed(&group, &topic, partitions)? == offsets.into_iter().collect());
        consumer.unsubscribe();
        Ok(())
    })
    .await?
}

/// `format = 'raw'` into a BYTEA column, with a BYTEA key: bytes that are not UTF-8
/// arrive as they were sent.
#[tokio::test]
async fn raw_bytes_and_keys_arrive_as_sent() -> Result<()> {
    let topic = unique("raw");
    create_topic(&topic, 1).await?;
    let weir = Weir::start(&[]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE blobs (value BYTEA, k BYTEA METADATA FROM 'key') \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', format = 'raw', \
         start = 'earliest', group = '{}')",
        unique("g")
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW seen AS SELECT value, k FROM blobs")
        .await?;
    let producer = producer(&b)?;
    let (value, key): (&[u8], &[u8]) = (&[0xff, 0x00, 0x41, 0xfe], &[0x80, 0x01]);
    producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .payload(value)
                .key(key),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    let rows = weir
        .wait_for("the message", Duration::from_secs(60), || async {
            let rows = view_rows(&weir, "seen").await?;
            Ok((!rows.is_empty()).then_some(rows))
        })
        .await?;
    ensure!(
        rows[0]["value"] == json!("ff0041fe") && rows[0]["k"] == json!("8001"),
        "{rows:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ctrl_c_commits_the_last_checkpoints_offsets_to_the_group() -> Result<()> {
    let topic = unique("shutdown");
    let group = unique("g");
    create_topic(&topic, 2).await?;
    let bids: Vec<(i32, Option<String>, String)> = (0..100)
        .map(|i| ((i % 2) as i32, None, bid(i, i % 5, 1_000 + i)))
        .collect();
    produce(&topic, &bids).await?;
    // No checkpoint on a timer: only the last one, at shutdown, can commit.
    let (dir, config) = config_dir("[runtime.checkpoints]\ninterval = '1h'\n").await?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    let b = brokers();
    weir.exec(&format!(
        "CREATE SOURCE bids (id BIGINT, user_id BIGINT, price BIGINT, ts TIMESTAMP) \
         WITH (connector = 'kafka', brokers = '{b}', topic = '{topic}', group = '{group}', start = 'earliest')"
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW n AS SELECT user_id, count(*) AS n FROM bids GROUP BY user_id",
    )
    .await?;
    weir.wait_for("100 bids", Duration::from_secs(60), || async {
        Ok((column_sum(&weir, "n", "n").await? == Some(100)).then_some(()))
    })
    .await?;
    let everything = BTreeMap::from([(0, 50), (1, 50)]);
    ensure!(
        committed(&group, &topic, 2)? != everything,
        "the group had the offsets before any checkpoint"
    );
    let (status, data_dir) = weir.stop_with("INT").await?;
    let log = std::fs::read_to_string(data_dir.path().join("weir.log"))?;
    ensure!(status.success(), "exit after Ctrl-C: {status}\n{log}");
    ensure!(
        committed(&group, &topic, 2)? == everything,
        "after Ctrl-C the group holds {:?}\n{log}",
        committed(&group, &topic, 2)?
    );
    Ok(())
}
