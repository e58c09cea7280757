//! The Kinesis source, front door and sink against a real Kinesis endpoint (kinesalite),
//! started once per test run by `scripts/test.sh` and named by `WEIR_TEST_KINESIS`.
//! Each test uses streams of its own. Faults (throttling, expired iterators) are made
//! by the endpoint itself, per stream, through `scripts/lib/kinesalite.js`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use serde_json::{Value, json};

use crate::kafka::{config_dir, unique, view_rows};
use crate::support::Weir;
use weir_runtime::source::kinesis::kpl;

/// The endpoint's URL; the test script starts it.
pub(crate) fn endpoint() -> String {
    std::env::var("WEIR_TEST_KINESIS").expect(
        "WEIR_TEST_KINESIS is not set: run the tests with scripts/test.sh, which starts kinesalite",
    )
}

/// What weir needs to sign its calls: the AWS default chain reads these.
pub(crate) const AWS_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "weir-test"),
    ("AWS_SECRET_ACCESS_KEY", "weir-test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub(crate) fn client_of(endpoint: &str) -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "weir-test",
            "weir-test",
            None,
            None,
            "test",
        ))
        .build();
    Client::from_conf(config)
}

pub(crate) fn client() -> Client {
    client_of(&endpoint())
}

/// Create `stream` with `shards` shards and wait until it is active.
pub(crate) async fn create_stream(client: &Client, stream: &str, shards: i32) -> Result<()> {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .context("CreateStream")?;
    wait_active(client, stream).await
}

pub(crate) async fn wait_active(client: &Client, stream: &str) -> Result<()> {
    for _ in 0..200 {
        let d = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if d.stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("stream {stream} did not become active")
}

/// Put `(partition key, data)` records in order, 500 a call.
pub(crate) async fn put(
    client: &Client,
    stream: &str,
    records: &[(String, Vec<u8>)],
) -> Result<()> {
    for chunk in records.chunks(500) {
        let entries = chunk
            .iter()
            .map(|(k, d)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(k)
                    .data(Blob::new(d.clone()))
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .context("PutRecords")?;
        ensure!(out.failed_record_count().unwrap_or(0) == 0, "{out:?}");
    }
    Ok(())
}

/// Every record of `stream`, shard by shard, from the start.
pub(crate) async fn read_all(client: &Client, stream: &str) -> Result<Vec<Vec<u8>>> {
    let shards = client.list_shards().stream_name(stream).send().await?;
    let mut all = Vec::new();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .context("iterator")?;
        loop {
            let out = client
                .get_records()
                .shard_iterator(&iterator)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GetRecords: {:?}", e.into_service_error()))?;
            let n = out.records().len();
            all.extend(out.records().iter().map(|r| r.data().as_ref().to_vec()));
            match out.next_shard_iterator() {
                Some(next) if n > 0 => iterator = next.to_string(),
                _ => break,
            }
        }
    }
    Ok(all)
}

/// The most GetRecords calls any shard of `stream` had in one second (a sliding
/// window), as the endpoint saw them.
async fn most_calls_a_second(stream: &str) -> Result<usize> {
    let calls: BTreeMap<String, Vec<i64>> = reqwest::Client::new()
        .get(format!("{}/__weir/calls?stream={stream}", endpoint()))
        .send()
        .await?
        .json()
        .await?;
    Ok(calls
        .values()
        .map(|times| {
            (0..times.len())
                .map(|i| {
                    times[i..]
                        .iter()
                        .take_while(|t| **t < times[i] + 1_000)
                        .count()
                })
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0))
}

/// Ask the endpoint to throttle (`throttle`) or expire (`expire`) the next `count`
/// GetRecords calls on `stream`.
pub(crate) async fn fault(stream: &str, fault: &str, count: u32) -> Result<()> {
    let status = reqwest::Client::new()
        .post(format!("{}/__weir/faults", endpoint()))
        .json(&json!({"stream": stream, "fault": fault, "count": count}))
        .send()
        .await?
        .status();
    ensure!(status.as_u16() == 204, "{status}");
    Ok(())
}

pub(crate) async fn start_weir(config: &str) -> Result<Weir> {
    let (dir, path) = config_dir(config).await?;
    Weir::start_with_env(dir, &["--config", &path], &AWS_ENV).await
}

pub(crate) async fn restart(weir: Weir) -> Result<Weir> {
    let dir = weir.kill().await?;
    let path = dir.path().join("weir.toml").to_string_lossy().to_string();
    Weir::start_with_env(dir, &["--config", &path], &AWS_ENV).await
}

pub(crate) fn source_sql(name: &str, columns: &str, stream: &str, extra: &str) -> String {
    format!(
        "CREATE SOURCE {name} ({columns}) WITH (connector = 'kinesis', stream = '{stream}', \
         endpoint = '{}', region = 'us-east-1', poll_interval = '200ms'{extra})",
        endpoint()
    )
}

/// Per key: records and the sum of their `v`.
pub(crate) type Totals = BTreeMap<String, (i64, i64)>;

pub(crate) fn want_totals(expected: &Totals) -> Vec<Value> {
    expected
        .iter()
        .map(|(k, (n, total))| json!({"k": k, "n": n, "total": total}))
        .collect()
}

/// The rows of view `totals` (k, n, total), by key.
pub(crate) async fn totals(weir: &Weir) -> Result<Vec<Value>> {
    let mut rows = view_rows(weir, "totals").await?;
    rows.sort_by_key(|r| r["k"].as_str().unwrap_or_default().to_string());
    Ok(rows)
}

/// Wait until view `totals` holds exactly `expected`: every record once.
pub(crate) async fn wait_totals(weir: &Weir, expected: &Totals) -> Result<()> {
    let want = want_totals(expected);
    weir.wait_for(
        "every record once in the totals",
        Duration::from_secs(90),
        || async { Ok((totals(weir).await? == want).then_some(())) },
    )
    .await
    .with_context(|| format!("expected {want:?}"))
}

/// A KPL aggregated record of JSON `values` by partition key.
fn aggregate(values: &[(String, Value)]) -> Vec<u8> {
    let texts: Vec<(&str, String)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_string()))
        .collect();
    kpl::aggregate(texts.iter().map(|(k, v)| (*k, v.as_bytes())))
}

pub(crate) fn record(key: &str, value: Value) -> (String, Vec<u8>) {
    (key.to_string(), value.to_string().into_bytes())
}

#[tokio::test]
async fn plain_and_kpl_records_arrive_with_their_envelope_and_bad_ones_are_dead_letters()
-> Result<()> {
    let kinesis = client();
    let stream = unique("kpl");
    create_stream(&kinesis, &stream, 1).await?;
    let agg = |items: &[(&str, u64)]| {
        let values: Vec<(String, Value)> = items
            .iter()
            .map(|(k, id)| (k.to_string(), json!({"id": id})))
            .collect();
        aggregate(&values)
    };
    let mut broken = agg(&[("z", 90)]);
    let last = broken.len() - 1;
    broken[last] ^= 0x01; // the MD5 trailer no longer matches
    put(
        &kinesis,
        &stream,
        &[
            record("a", json!({"id": 1})),
            ("agg".into(), agg(&[("a", 2), ("b", 3), ("a", 4)])),
            ("z".into(), b"not json".to_vec()),
            ("z".into(), broken),
            record("b", json!({"id": 5})),
            // Over the source's max_record_bytes (below): a dead letter, not a row.
            record("b", json!({"id": 6, "pad": "x".repeat(300)})),
        ],
    )
    .await?;

    let weir = start_weir("").await?;
    weir.exec(&source_sql(
        "s",
        "id BIGINT, pk VARCHAR METADATA FROM 'partition_key', \
         seq VARCHAR METADATA FROM 'sequence_number', sub BIGINT METADATA FROM 'sub_sequence_number', \
         shard VARCHAR METADATA FROM 'shard_id', at TIMESTAMP METADATA FROM 'arrival_time'",
        &stream,
        ", max_record_bytes = '300'",
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW rows AS SELECT id, pk, seq, sub, shard, at FROM s")
        .await?;
    let rows = weir
        .wait_for("5 rows", Duration::from_secs(60), || async {
            let rows = view_rows(&weir, "rows").await?;
            Ok((rows.len() >= 5).then_some(rows))
        })
        .await?;
    let got: Vec<(i64, &str, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap_or(-1),
                r["pk"].as_str().unwrap_or_default(),
                r["sub"].as_i64(),
            )
        })
        .collect();
    ensure!(
        got == [
            (1, "a", None),
            (2, "a", Some(0)),
            (3, "b", Some(1)),
            (4, "a", Some(2)),
            (5, "b", None)
        ],
        "user records in order, keys from the aggregate's table: {got:?}"
    );
    ensure!(
        rows[1]["seq"] == rows[3]["seq"] && rows[0]["seq"] != rows[1]["seq"],
        "the user records of one aggregate share its sequence number: {rows:?}"
    );
    ensure!(
        rows.iter()
            .all(|r| r["shard"] == json!("shardId-000000000000"))
    );
    ensure!(rows.iter().all(|r| r["at"].is_string()), "{rows:?}");
    let letters = weir
        .wait_for("three dead letters", Duration::from_secs(30), || async {
            let l = weir.get("/api/v1/dead-letters?source=s").await?["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok((l.len() >= 3).then_some(l))
        })
        .await?;
    ensure!(letters.len() == 3, "{letters:?}");
    let reasons: Vec<String> = letters.iter().map(|l| l.to_string()).collect();
    ensure!(
        reasons.iter().any(|r| r.contains("not json"))
            && reasons.iter().any(|r| r.contains("MD5"))
            && reasons.iter().any(|r| r.contains("max_record_bytes")),
        "{reasons:?}"
    );
    for l in &letters {
        ensure!(l["partition"] == json!("shardId-000000000000"), "{l}");
        ensure!(
            l["sequence_number"].as_str().is_some_and(|s| s.len() > 20),
            "the record's sequence number: {l}"
        );
    }
    Ok(())
}

/// Records `0..n` for each of `keys` keys, numbered per key, interleaved.
pub(crate) fn numbered(keys: usize, per_key: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for n in per_key {
        for k in 0..keys {
            out.push(record(
                &format!("k{k}"),
                json!({"k": format!("k{k}"), "n": n}),
            ));
        }
    }
    out
}

#[tokio::test]
async fn a_split_and_a_merge_lose_nothing_double_nothing_and_keep_each_keys_order() -> Result<()> {
    let kinesis = client();
    let stream = unique("reshard");
    create_stream(&kinesis, &stream, 2).await?;
    put(&kinesis, &stream, &numbered(20, 0..15)).await?;
    // Shard 0 covers the lower half of the hash keys: split it in the middle.
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("85070591730234615865843651857942052864")
        .send()
        .await?;
    wait_active(&kinesis, &stream).await?;
    put(&kinesis, &stream, &numbered(20, 15..30)).await?;
    // Shard 3 (the upper half of shard 0) and shard 1 are adjacent: merge them.
    kinesis
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge("shardId-000000000003")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await?;
    wait_active(&kinesis, &stream).await?;
    put(&kinesis, &stream, &numbered(20, 30..45)).await?;
    let shards = kinesis.list_shards().stream_name(&stream).send().await?;
    ensure!(shards.shards().len() == 5, "{shards:?}");

    // Read after the fact: every shard holds records, parents and children alike.
    let weir = start_weir("[runtime.checkpoints]\ninterval = '200ms'\n").await?;
    weir.exec(&source_sql(
        "s",
        "k VARCHAR, n BIGINT, shard VARCHAR METADATA FROM 'shard_id'",
        &stream,
        // A few records a call, so that a parent takes many calls to read: a child
        // read beside it would be seen.
        ", shard_refresh = '1s', records_per_call = '20'",
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW rows AS SELECT k, n, shard FROM s")
        .await?;
    let rows = weir
        .wait_for("900 rows", Duration::from_secs(90), || async {
            let rows = view_rows(&weir, "rows").await?;
            Ok((rows.len() >= 900).then_some(rows))
        })
        .await?;
    ensure!(rows.len() == 900, "{} rows", rows.len());
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut shards_seen = std::collections::BTreeSet::new();
    for r in &rows {
        per_key
            .entry(r["k"].as_str().context("k")?.to_string())
            .or_default()
            .push(r["n"].as_i64().context("n")?);
        shards_seen.insert(r["shard"].as_str().context("shard")?.to_string());
    }
    ensure!(per_key.len() == 20);
    for (k, ns) in &per_key {
        ensure!(
            *ns == (0..45).collect::<Vec<i64>>(),
            "key {k}: every record once, in the order written: {ns:?}"
        );
    }
    ensure!(
        shards_seen.len() == 5,
        "all five shards read: {shards_seen:?}"
    );
    // Each parent took many calls in a row: never more than Kinesis's 5 a second.
    let most = most_calls_a_second(&stream).await?;
    ensure!(
        (1..=5).contains(&most),
        "{most} GetRecords calls in one second on a shard"
    );
    // The parents were read to their end and are finished; the open shards remain.
    let status = weir
        .wait_for("the open shards", Duration::from_secs(30), || async {
            let s = weir.get("/api/v1/sources/s").await?;
            let ids: Vec<String> = s["partitions"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p["partition"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Ok((ids == ["shardId-000000000002", "shardId-000000000004"]).then_some(s))
        })
        .await?;
    ensure!(status["stream"]["open"] == json!(2), "{status}");
    // After a crash, the finished parents are not read again: still every record once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let weir = restart(weir).await?;
    weir.wait_for("the open shards again", Duration::from_secs(30), || async {
        Ok(
            (shards_read(&weir, "s").await? == ["shardId-000000000002", "shardId-000000000004"])
                .then_some(()),
        )
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = view_rows(&weir, "rows").await?;
    ensure!(rows.len() == 900, "{} rows after the restart", rows.len());
    Ok(())
}

#[tokio::test]
async fn killed_three_times_its_view_equals_an_uninterrupted_run() -> Result<()> {
    let kinesis = client();
    let stream = unique("kill");
    create_stream(&kinesis, &stream, 2).await?;
    // Small micro-batches, so that chunks (and checkpoints) end inside aggregates.
    let mut weir = start_weir("[runtime.checkpoints]\ninterval = '200ms'\n").await?;
    weir.exec(&source_sql(
        "s",
        "k VARCHAR, v BIGINT",
        &stream,
        ", max_rows = '7'",
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW totals AS SELECT k, count(*) AS n, sum(v) AS total FROM s GROUP BY k",
    )
    .await?;
    let mut expected = Totals::new();
    let mut v = 0i64;
    for round in 0..8 {
        let mut records = Vec::new();
        for i in 0..40 {
            let k = format!("k{}", (round * 40 + i) % 13);
            v += 1;
            let e = expected.entry(k.clone()).or_default();
            e.0 += 1;
            e.1 += v;
            records.push((k, v));
        }
        // Half plain, half in KPL aggregates of 10.
        let (plain, aggregated) = records.split_at(20);
        let mut batch: Vec<(String, Vec<u8>)> = plain
            .iter()
            .map(|(k, v)| record(k, json!({"k": k, "v": v})))
            .collect();
        for group in aggregated.chunks(10) {
            let values: Vec<(String, Value)> = group
                .iter()
                .map(|(k, v)| (k.clone(), json!({"k": k, "v": v})))
                .collect();
            batch.push((group[0].0.clone(), aggregate(&values)));
        }
        put(&kinesis, &stream, &batch).await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        if round % 2 == 1 && round < 7 {
            weir = restart(weir).await?;
        }
    }
    wait_totals(&weir, &expected).await
}

#[tokio::test]
async fn throttling_and_expired_iterators_lose_nothing_and_lag_is_in_the_metrics() -> Result<()> {
    let kinesis = client();
    let stream = unique("faults");
    create_stream(&kinesis, &stream, 1).await?;
    let weir = start_weir("").await?;
    weir.exec(&source_sql("s", "k VARCHAR, n BIGINT", &stream, ""))
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n, sum(n) AS total FROM s")
        .await?;
    put(&kinesis, &stream, &numbered(5, 0..20)).await?;
    weir.wait_for("100 records", Duration::from_secs(60), || async {
        let rows = view_rows(&weir, "c").await?;
        Ok((rows.first().is_some_and(|r| r["n"] == json!(100))).then_some(()))
    })
    .await?;
    fault(&stream, "throttle", 4).await?;
    put(&kinesis, &stream, &numbered(5, 20..40)).await?;
    weir.wait_for("200 records", Duration::from_secs(60), || async {
        let rows = view_rows(&weir, "c").await?;
        Ok((rows.first().is_some_and(|r| r["n"] == json!(200))).then_some(()))
    })
    .await?;
    fault(&stream, "expire", 2).await?;
    put(&kinesis, &stream, &numbered(5, 40..60)).await?;
    let total: i64 = 5 * (0..60).sum::<i64>();
    weir.wait_for(
        "300 records, each once",
        Duration::from_secs(60),
        || async {
            let rows = view_rows(&weir, "c").await?;
            Ok(rows
                .first()
                .is_some_and(|r| r["n"] == json!(300) && r["total"] == json!(total))
                .then_some(()))
        },
    )
    .await?;
    let status = weir.get("/api/v1/sources/s").await?;
    ensure!(
        status["stream"]["throttled"].as_u64() >= Some(4),
        "{status}"
    );
    ensure!(
        status["stream"]["expired_iterators"].as_u64() >= Some(2),
        "{status}"
    );
    ensure!(status["status"] == json!("running"), "{status}");
    let line = "weir_source_lag_ms{shard=\"shardId-000000000000\",source=\"s\"}";
    let metrics = weir.metrics().await?;
    ensure!(metrics.contains(line), "{line} in:\n{metrics}");
    ensure!(
        metrics.contains(
            "weir_source_shard_records_total{shard=\"shardId-000000000000\",source=\"s\"} 300"
        ),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_stream_is_refused_and_a_dead_endpoint_is_waited_for() -> Result<()> {
    let weir = start_weir("").await?;
    let (status, body) = weir
        .sql(&source_sql("s", "k VARCHAR", "no-such-stream", ""))
        .await?;
    ensure!(status == 400, "{status} {body}");
    ensure!(
        body.to_string().contains("'no-such-stream' does not exist"),
        "{body}"
    );

    // Nothing listens here yet: the source is created and waits.
    let port = crate::kafka::free_port()?;
    let dead = format!("http://127.0.0.1:{port}");
    weir.exec(&format!(
        "CREATE SOURCE late (k VARCHAR, n BIGINT) WITH (connector = 'kinesis', stream = 'late', \
         endpoint = '{dead}', poll_interval = '200ms', shard_refresh = '1s')"
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n FROM late")
        .await?;
    let s = weir.get("/api/v1/sources/late").await?;
    ensure!(s["status"] == json!("connecting"), "{s}");
    // Records posted meanwhile cannot be put: 503, to be retried.
    let (code, body) = weir
        .post_records("late", json!({"k": "x", "n": 1}).to_string())
        .await?;
    ensure!(code == 503, "{code} {body}");

    let modules =
        std::env::var("WEIR_AWS_MODULES").context("WEIR_AWS_MODULES (scripts/test.sh)")?;
    let script = std::env::var("WEIR_KINESALITE_JS").context("WEIR_KINESALITE_JS")?;
    let _endpoint = OwnEndpoint(
        std::process::Command::new("node")
            .args([&script, &port.to_string(), &modules])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let own = client_of(&dead);
    for _ in 0..100 {
        if create_stream(&own, "late", 1).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    put(&own, "late", &numbered(3, 0..10)).await?;
    weir.wait_for(
        "30 records once the endpoint is up",
        Duration::from_secs(60),
        || async {
            let rows = view_rows(&weir, "c").await?;
            Ok(rows
                .first()
                .is_some_and(|r| r["n"] == json!(30))
                .then_some(()))
        },
    )
    .await?;
    let s = weir.get("/api/v1/sources/late").await?;
    ensure!(s["status"] == json!("running"), "{s}");
    Ok(())
}

/// A kinesalite of a test's own, killed when the test ends.
struct OwnEndpoint(std::process::Child);

impl Drop for OwnEndpoint {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn posted_records_are_put_on_the_stream_once_and_read_back() -> Result<()> {
    let kinesis = client();
    let stream = unique("door");
    create_stream(&kinesis, &stream, 2).await?;
    let weir = start_weir("").await?;
    weir.exec(&source_sql(
        "s",
        "user VARCHAR, n BIGINT, pk VARCHAR METADATA FROM 'partition_key'",
        &stream,
        ", partition_key = 'user'",
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW rows AS SELECT user, n, pk FROM s")
        .await?;
    let body = "{\"user\": \"ann\", \"n\": 1}\n{\"user\": \"bob\", \"n\": 2}\n[1]\n";
    let post = |key: &'static str| {
        weir.client
            .post(format!("{}/api/v1/sources/s/records", weir.url))
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    let first = post("req-1").await?;
    ensure!(first.status() == 200, "{}", first.status());
    let first: Value = first.json().await?;
    ensure!(
        first["accepted"] == json!(2) && first["dead_lettered"] == json!(1),
        "{first}"
    );
    let again: Value = post("req-1").await?.json().await?;
    ensure!(again["duplicate"] == json!(true), "{again}");
    // On the stream itself, once, keyed by the field.
    let on_stream = read_all(&kinesis, &stream).await?;
    ensure!(
        on_stream.len() == 2,
        "{} records on the stream",
        on_stream.len()
    );
    let rows = weir
        .wait_for(
            "both records read back",
            Duration::from_secs(60),
            || async {
                let rows = view_rows(&weir, "rows").await?;
                Ok((rows.len() >= 2).then_some(rows))
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rows_later = view_rows(&weir, "rows").await?;
    ensure!(rows_later.len() == 2, "{rows_later:?}");
    for r in &rows {
        ensure!(
            r["pk"] == r["user"],
            "the partition key is the user field: {r}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_crash_inside_a_kpl_aggregate_neither_loses_nor_repeats_its_user_records() -> Result<()> {
    let kinesis = client();
    let stream = unique("inside");
    create_stream(&kinesis, &stream, 1).await?;
    let mut expected = Totals::new();
    let mut batch = Vec::new();
    let mut v = 0i64;
    for a in 0..3 {
        let mut values = Vec::new();
        for i in 0..10 {
            v += 1;
            let k = format!("k{}", (a * 10 + i) % 4);
            let e = expected.entry(k.clone()).or_default();
            (e.0, e.1) = (e.0 + 1, e.1 + v);
            values.push((k.clone(), json!({"k": k, "v": v})));
        }
        batch.push((format!("agg{a}"), aggregate(&values)));
    }
    put(&kinesis, &stream, &batch).await?;
    // Chunks of 4 user records end inside the aggregates of 10; the reader holds each
    // such chunk a second, and the process aborts once a checkpoint inside one is durable.
    let (dir, path) = config_dir("[runtime.checkpoints]\ninterval = '100ms'\n").await?;
    let mut env = AWS_ENV.to_vec();
    env.push((
        "WEIR_FAILPOINTS",
        "kinesis-inside-aggregate,kinesis-durable-inside-aggregate",
    ));
    let weir = Weir::start_with_env(dir, &["--config", &path], &env).await?;
    weir.exec(&source_sql(
        "s",
        "k VARCHAR, v BIGINT",
        &stream,
        ", max_rows = '4'",
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW totals AS SELECT k, count(*) AS n, sum(v) AS total FROM s GROUP BY k",
    )
    .await?;
    weir.wait_for(
        "the crash inside an aggregate",
        Duration::from_secs(60),
        || async {
            let answer = weir
                .client
                .get(format!("{}/healthz", weir.url))
                .send()
                .await;
            Ok(answer.is_err().then_some(()))
        },
    )
    .await?;
    let log = std::fs::read_to_string(weir.data_dir.path().join("weir.log"))?;
    ensure!(
        log.contains("failpoint kinesis-durable-inside-aggregate reached"),
        "{log}"
    );
    let weir = restart(weir).await?;
    wait_totals(&weir, &expected).await?;
    // Settled: nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(800)).await;
    ensure!(
        totals(&weir).await? == want_totals(&expected),
        "after a while"
    );
    Ok(())
}

/// The shards a process reads now, by its status.
pub(crate) async fn shards_read(weir: &Weir, source: &str) -> Result<Vec<String>> {
    let s = weir.get(&format!("/api/v1/sources/{source}")).await?;
    Ok(s["partitions"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["partition"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// `n` records with `v` from `first` on, over 20 keys; added to `expected`.
pub(crate) fn keyed(first: i64, n: i64, expected: &mut Totals) -> Vec<(String, Vec<u8>)> {
    (first..first + n)
        .map(|v| {
            let k = format!("k{}", v % 20);
            let e = expected.entry(k.clone()).or_default();
            (e.0, e.1) = (e.0 + 1, e.1 + v);
            record(&k, json!({"k": k, "v": v}))
        })
        .collect()
}

/// The stream's open shards (those without an ending sequence number).
async fn open_shards(client: &Client, stream: &str) -> Result<usize> {
    let out = client.list_shards().stream_name(stream).send().await?;
    Ok(out
        .shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .is_none_or(|r| r.ending_sequence_number().is_none())
        })
        .count())
}

#[tokio::test]
async fn autoscale_splits_under_load_within_max_shards_and_merges_when_quiet() -> Result<()> {
    let kinesis = client();
    let stream = unique("scale");
    create_stream(&kinesis, &stream, 1).await?;
    let weir = start_weir("").await?;
    weir.exec(&source_sql(
        "s",
        "k VARCHAR, v BIGINT",
        &stream,
        ", autoscale = 'true', max_shards = '2', autoscale_cooldown = '2s', shard_refresh = '1s'",
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n, sum(v) AS total FROM s")
        .await?;
    // Write well over 1,000 records a second (what one shard takes) until weir splits.
    let mut written = 0i64;
    let mut ignored = Totals::new();
    let started = std::time::Instant::now();
    let mut split_at = None;
    while started.elapsed() < Duration::from_secs(60) {
        put(&kinesis, &stream, &keyed(written, 500, &mut ignored)).await?;
        written += 500;
        if split_at.is_none() && open_shards(&kinesis, &stream).await? == 2 {
            split_at = Some(std::time::Instant::now());
        }
        // Go on writing a while after the split: the rate still asks for more shards,
        // but max_shards is 2.
        if split_at.is_some_and(|t| t.elapsed() > Duration::from_secs(8)) {
            break;
        }
    }
    ensure!(split_at.is_some(), "no split after {written} records");
    ensure!(
        open_shards(&kinesis, &stream).await? == 2,
        "never above max_shards"
    );
    let status = weir.get("/api/v1/sources/s").await?;
    ensure!(
        status["stream"]["last_change"]
            .as_str()
            .is_some_and(|c| c.contains("split")),
        "{status}"
    );
    // Quiet: one shard is enough again.
    weir.wait_for(
        "a merge back to one open shard",
        Duration::from_secs(60),
        || async { Ok((open_shards(&kinesis, &stream).await? == 1).then_some(())) },
    )
    .await?;
    let status = weir.get("/api/v1/sources/s").await?;
    ensure!(
        status["stream"]["last_change"]
            .as_str()
            .is_some_and(|c| c.contains("merged")),
        "{status}"
    );
    // Nothing lost across both reshards.
    weir.wait_for("every record", Duration::from_secs(60), || async {
        let rows = view_rows(&weir, "c").await?;
        Ok(rows
            .first()
            .is_some_and(|r| r["n"] == json!(written))
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// The hash key in the middle of shard `i` of a stream created with `n` shards (as
/// CreateStream splits the hash key space evenly).
fn hash_key_of_shard(i: u128, n: u128) -> u128 {
    u128::MAX / n * i + u128::MAX / n / 2
}

/// Put records at chosen hash keys: `(hash key, data)`, in order.
async fn put_at(client: &Client, stream: &str, records: &[(u128, Vec<u8>)]) -> Result<()> {
    for chunk in records.chunks(500) {
        let entries = chunk
            .iter()
            .map(|(key, d)| {
                PutRecordsRequestEntry::builder()
                    .partition_key("k")
                    .explicit_hash_key(key.to_string())
                    .data(Blob::new(d.clone()))
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await?;
        ensure!(out.failed_record_count().unwrap_or(0) == 0, "{out:?}");
    }
    Ok(())
}

/// A row of the skewed streams below.
fn timed(id: i64, ts: i64) -> Vec<u8> {
    json!({"id": id, "ts": ts}).to_string().into_bytes()
}

const BASE: i64 = 1_700_000_000_000;

/// A 2-shard stream whose shard 0 runs 100 s ahead of shard 1 (`per_shard` rows each, a
/// row every 500 ms), read by source `s` with `ts` as its watermark (less 1 s), a view
/// `c` counting its rows and a view `per_10s` of 10-second windows.
async fn skewed(per_shard: i64, config: &str, extra: &str) -> Result<(Client, String, Weir)> {
    let kinesis = client();
    let stream = unique("skew");
    create_stream(&kinesis, &stream, 2).await?;
    let mut records = Vec::new();
    for i in 0..per_shard {
        records.push((hash_key_of_shard(0, 2), timed(i, BASE + 100_000 + i * 500)));
        records.push((hash_key_of_shard(1, 2), timed(1_000 + i, BASE + i * 500)));
    }
    put_at(&kinesis, &stream, &records).await?;
    let weir = start_weir(config).await?;
    weir.exec(&source_sql(
        "s",
        "id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND",
        &stream,
        extra,
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n FROM s")
        .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW per_10s AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(s, ts, INTERVAL '10' SECOND) GROUP BY window_start",
    )
    .await?;
    Ok((kinesis, stream, weir))
}

/// Rows view `per_10s` refused as late.
async fn late_rows(weir: &Weir) -> Result<Value> {
    let views = weir.get("/api/v1/views").await?;
    views["views"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "per_10s"))
        .map(|v| v["late_rows"].clone())
        .with_context(|| format!("no view per_10s: {views}"))
}

#[tokio::test]
async fn a_shard_far_behind_holds_the_watermark_and_an_idle_one_does_not() -> Result<()> {
    // Each shard's rows are in time order, but read together shard 1's would all be
    // late by a single watermark.
    let (kinesis, stream, weir) = skewed(60, "[runtime]\nidle-timeout = '5s'\n", "").await?;
    weir.wait_for(
        "shard 1's first windows",
        Duration::from_secs(60),
        || async { Ok((view_rows(&weir, "per_10s").await?.len() >= 2).then_some(())) },
    )
    .await?;
    // Shard 1 falls silent; shard 0 moves on and closes the last windows once shard 1
    // counts as idle.
    tokio::time::sleep(Duration::from_secs(6)).await;
    put_at(
        &kinesis,
        &stream,
        &[(hash_key_of_shard(0, 2), timed(5_000, BASE + 200_000))],
    )
    .await?;
    let rows = weir
        .wait_for(
            "windows of both shards",
            Duration::from_secs(60),
            || async {
                let rows = view_rows(&weir, "per_10s").await?;
                let counted: i64 = rows.iter().filter_map(|r| r["n"].as_i64()).sum();
                Ok((counted == 120).then_some(rows))
            },
        )
        .await?;
    ensure!(rows.len() == 6, "3 windows of each shard: {rows:?}");
    ensure!(late_rows(&weir).await? == json!(0), "no row was late");
    Ok(())
}

#[tokio::test]
async fn start_latest_and_start_at_a_time_read_what_they_say() -> Result<()> {
    let kinesis = client();
    let stream = unique("start");
    create_stream(&kinesis, &stream, 2).await?;
    put(&kinesis, &stream, &numbered(4, 0..5)).await?;
    // Arrival times have millisecond resolution: a clear gap on each side of `between`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&kinesis, &stream, &numbered(4, 5..10)).await?;
    let weir = start_weir("").await?;
    for (name, start) in [
        ("oldest", "trim_horizon".to_string()),
        ("at_time", between.to_string()),
        ("newest", "latest".into()),
    ] {
        weir.exec(&source_sql(
            name,
            "k VARCHAR, n BIGINT",
            &stream,
            &format!(", start = '{start}'"),
        ))
        .await?;
        weir.exec(&format!(
            "CREATE MATERIALIZED VIEW {name}_c AS SELECT count(*) AS c, min(n) AS first FROM {name}"
        ))
        .await?;
    }
    // The latest source reads from when it started: wait until it reads, then write.
    weir.wait_for(
        "the latest source's shards",
        Duration::from_secs(30),
        || async { Ok((shards_read(&weir, "newest").await?.len() == 2).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    put(&kinesis, &stream, &numbered(4, 10..12)).await?;
    let counts = [
        ("oldest_c", 48, 0),
        ("at_time_c", 28, 5),
        ("newest_c", 8, 10),
    ];
    for (view, want, first) in counts {
        weir.wait_for(
            &format!("{view} = {want}"),
            Duration::from_secs(60),
            || async {
                let rows = view_rows(&weir, view).await?;
                Ok(rows
                    .first()
                    .is_some_and(|r| r["c"] == json!(want) && r["first"] == json!(first))
                    .then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_children_of_a_shard_far_behind_take_its_place_in_the_watermark() -> Result<()> {
    let (kinesis, stream, weir) = skewed(
        40,
        "[runtime]\nidle-timeout = '10s'\n",
        ", shard_refresh = '1s'",
    )
    .await?;
    weir.wait_for("both shards read", Duration::from_secs(60), || async {
        let rows = view_rows(&weir, "c").await?;
        Ok(rows
            .first()
            .is_some_and(|r| r["n"] == json!(80))
            .then_some(()))
    })
    .await?;
    // Shard 1 (behind) is split; its children go on from its time. Were its split let
    // go before theirs were announced, the watermark would leap to shard 0's time and
    // every row of the children would be late.
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000001")
        .new_starting_hash_key((u128::MAX / 4 * 3).to_string())
        .send()
        .await?;
    wait_active(&kinesis, &stream).await?;
    // Hash keys in each child's half of shard 1's range.
    let children = [u128::MAX / 8 * 5, u128::MAX / 8 * 7];
    let later: Vec<(u128, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                children[i % 2],
                timed(2_000 + i as i64, BASE + 20_000 + i as i64 * 500),
            )
        })
        .collect();
    put_at(&kinesis, &stream, &later).await?;
    weir.wait_for("the children's rows", Duration::from_secs(60), || async {
        let rows = view_rows(&weir, "c").await?;
        Ok(rows
            .first()
            .is_some_and(|r| r["n"] == json!(100))
            .then_some(()))
    })
    .await?;
    ensure!(late_rows(&weir).await? == json!(0), "no row was late");
    Ok(())
}

#[tokio::test]
async fn a_latest_source_reads_a_shard_that_closed_after_it_started_before_its_children()
-> Result<()> {
    let kinesis = client();
    let stream = unique("latest-reshard");
    create_stream(&kinesis, &stream, 2).await?;
    let weir = start_weir("").await?;
    // Two records a call: shard 1's backlog takes many calls, while shard 0 (empty)
    // ends at once after the splits below and makes the source list the shards again.
    // That listing must not take shard 1, closed since, for one closed before the start
    // (finished): its children would be read beside it.
    weir.exec(&source_sql(
        "s",
        "id BIGINT, ts TIMESTAMP",
        &stream,
        ", start = 'latest', records_per_call = '2', shard_refresh = '1s'",
    ))
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW rows AS SELECT id FROM s")
        .await?;
    weir.wait_for("both shards read", Duration::from_secs(30), || async {
        Ok((shards_read(&weir, "s").await?.len() == 2).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parent: Vec<(u128, Vec<u8>)> = (0..150)
        .map(|i| (hash_key_of_shard(1, 2), timed(i, BASE + i)))
        .collect();
    put_at(&kinesis, &stream, &parent).await?;
    for (shard, at) in [
        ("shardId-000000000000", u128::MAX / 4),
        ("shardId-000000000001", u128::MAX / 4 * 3),
    ] {
        kinesis
            .split_shard()
            .stream_name(&stream)
            .shard_to_split(shard)
            .new_starting_hash_key(at.to_string())
            .send()
            .await?;
        wait_active(&kinesis, &stream).await?;
    }
    // Into both children of shard 1.
    let children = [u128::MAX / 8 * 5, u128::MAX / 8 * 7];
    let later: Vec<(u128, Vec<u8>)> = (150..170)
        .map(|i| (children[i as usize % 2], timed(i, BASE + i)))
        .collect();
    put_at(&kinesis, &stream, &later).await?;
    let rows = weir
        .wait_for("all 170 records", Duration::from_secs(90), || async {
            let rows = view_rows(&weir, "rows").await?;
            Ok((rows.len() >= 170).then_some(rows))
        })
        .await?;
    let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    let first_child = ids.iter().position(|id| *id >= 150).unwrap_or(ids.len());
    ensure!(
        ids.len() == 170 && ids[..first_child].len() == 150,
        "every record once, shard 1's before its children's: {ids:?}"
    );
    Ok(())
}
