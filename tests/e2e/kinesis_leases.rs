//! Kinesis shard leases against a real DynamoDB endpoint (dynalite), started once per
//! test run by `scripts/test.sh` and named by `WEIR_TEST_DYNAMODB`: processes share a
//! stream's shards, take a killed one's over, and stop reading a shard whose lease is
//! taken. Each test uses a stream and a lease table of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::kafka::unique;
use crate::kinesis::{
    Totals, client, create_stream, keyed, put, shards_read, source_sql, start_weir, totals,
    wait_totals, want_totals,
};
use crate::support::Weir;

/// The DynamoDB endpoint's URL; the test script starts it.
fn dynamodb_endpoint() -> String {
    std::env::var("WEIR_TEST_DYNAMODB").expect(
        "WEIR_TEST_DYNAMODB is not set: run the tests with scripts/test.sh, which starts dynalite",
    )
}

fn dynamodb() -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(dynamodb_endpoint())
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "weir-test",
            "weir-test",
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The lease table's items: shard id to (owner, counter, checkpoint).
async fn leases(table: &str) -> Result<BTreeMap<String, (String, i64, String)>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let out = dynamodb()
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await?;
    let text = |item: &std::collections::HashMap<String, AttributeValue>, k: &str| {
        item.get(k)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    Ok(out
        .items()
        .iter()
        .map(|item| {
            let counter = item
                .get("lease_counter")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(-1);
            (
                text(item, "shard_id"),
                (text(item, "lease_owner"), counter, text(item, "checkpoint")),
            )
        })
        .collect())
}

fn lease_source_sql(stream: &str, table: &str, failover: &str) -> String {
    source_sql(
        "s",
        "k VARCHAR, v BIGINT",
        stream,
        &format!(
            ", lease_table = '{table}', lease_endpoint = '{}', lease_failover = '{failover}'",
            dynamodb_endpoint()
        ),
    )
}

/// Per key, the sum of several processes' totals.
async fn union_of(processes: &[&Weir], also: &[Value]) -> Result<Vec<Value>> {
    let mut sum = Totals::new();
    let mut rows = also.to_vec();
    for weir in processes {
        rows.extend(totals(weir).await?);
    }
    for r in rows {
        let e = sum
            .entry(r["k"].as_str().context("k")?.to_string())
            .or_default();
        e.0 += r["n"].as_i64().context("n")?;
        e.1 += r["total"].as_i64().context("total")?;
    }
    Ok(want_totals(&sum))
}

#[tokio::test]
async fn two_processes_share_the_shards_and_one_takes_a_killed_ones_over_from_their_leases()
-> Result<()> {
    let kinesis = client();
    let (stream, table) = (unique("shared"), unique("leases"));
    create_stream(&kinesis, &stream, 4).await?;
    let config = "[runtime.checkpoints]\ninterval = '200ms'\n";
    let (a, b) = (start_weir(config).await?, start_weir(config).await?);
    for weir in [&a, &b] {
        weir.exec(&lease_source_sql(&stream, &table, "3s")).await?;
        weir.exec(
            "CREATE MATERIALIZED VIEW totals AS SELECT k, count(*) AS n, sum(v) AS total FROM s GROUP BY k",
        )
        .await?;
    }
    a.wait_for("two shards each", Duration::from_secs(60), || async {
        let (sa, sb) = (shards_read(&a, "s").await?, shards_read(&b, "s").await?);
        Ok((sa.len() == 2 && sb.len() == 2).then_some(()))
    })
    .await?;
    // Each sees the other (at its next round, when both took leases in the same one).
    a.wait_for("two processes seen", Duration::from_secs(30), || async {
        let (sa, sb) = (
            a.get("/api/v1/sources/s").await?,
            b.get("/api/v1/sources/s").await?,
        );
        let two = |s: &Value| s["stream"]["processes"] == json!(2);
        Ok((two(&sa) && two(&sb)).then_some(()))
    })
    .await?;
    let mut expected = Totals::new();
    put(&kinesis, &stream, &keyed(1, 200, &mut expected)).await?;
    let want = want_totals(&expected);
    a.wait_for(
        "every record read by one of the two",
        Duration::from_secs(60),
        || async { Ok((union_of(&[&a, &b], &[]).await? == want).then_some(())) },
    )
    .await?;
    // A's leases hold where it read (its checkpoints are durable): then it is killed.
    let a_shards = shards_read(&a, "s").await?;
    let a_status = a.get("/api/v1/sources/s").await?;
    a.wait_for("A's lease checkpoints", Duration::from_secs(30), || async {
        let table = leases(&table).await?;
        let done = a_status["partitions"].as_array().is_some_and(|parts| {
            parts.iter().all(|p| {
                let shard = p["partition"].as_str().unwrap_or_default();
                table.get(shard).map(|l| l.2.as_str()) == p["sequence_number"].as_str()
            })
        });
        Ok(done.then_some(()))
    })
    .await?;
    let a_rows = totals(&a).await?;
    a.kill().await?;
    put(&kinesis, &stream, &keyed(201, 200, &mut expected)).await?;
    let want = want_totals(&expected);
    b.wait_for(
        "B to read all four shards",
        Duration::from_secs(60),
        || async { Ok((shards_read(&b, "s").await?.len() == 4).then_some(())) },
    )
    .await?;
    let table_now = leases(&table).await?;
    let b_owner = b.get("/api/v1/sources/s").await?["stream"]["lease_owner"].clone();
    for shard in &a_shards {
        ensure!(
            table_now.get(shard).map(|l| json!(l.0)) == Some(b_owner.clone()),
            "{shard} went to B: {table_now:?}"
        );
    }
    b.wait_for(
        "A's snapshot and B's view together equal every record once",
        Duration::from_secs(60),
        || async { Ok((union_of(&[&b], &a_rows).await? == want).then_some(())) },
    )
    .await
    .with_context(|| format!("expected {want:?}"))?;
    Ok(())
}

#[tokio::test]
async fn a_stolen_lease_stops_the_reading_until_it_expires_and_is_taken_back() -> Result<()> {
    let kinesis = client();
    let (stream, table) = (unique("stolen"), unique("leases"));
    create_stream(&kinesis, &stream, 1).await?;
    let weir = start_weir("[runtime.checkpoints]\ninterval = '200ms'\n").await?;
    weir.exec(&lease_source_sql(&stream, &table, "6s")).await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW totals AS SELECT k, count(*) AS n, sum(v) AS total FROM s GROUP BY k",
    )
    .await?;
    let mut expected = Totals::new();
    put(&kinesis, &stream, &keyed(1, 10, &mut expected)).await?;
    wait_totals(&weir, &expected).await?;
    let shard = "shardId-000000000000";
    weir.wait_for(
        "the lease's checkpoint",
        Duration::from_secs(30),
        || async {
            let l = leases(&table).await?;
            Ok(l.get(shard).is_some_and(|l| l.2.len() > 20).then_some(()))
        },
    )
    .await?;
    // Another process takes the lease (as a process that found it expired would) while
    // records are being written and read.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (kinesis, stream, writing) = (kinesis.clone(), stream.clone(), writing.clone());
        let mut expected = std::mem::take(&mut expected);
        tokio::spawn(async move {
            let mut v = 11;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                put(&kinesis, &stream, &keyed(v, 5, &mut expected)).await?;
                v += 5;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, anyhow::Error>((expected, v))
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let counter = leases(&table).await?[shard].1;
    use aws_sdk_dynamodb::types::AttributeValue;
    dynamodb()
        .update_item()
        .table_name(&table)
        .key("shard_id", AttributeValue::S(shard.into()))
        .update_expression("SET lease_owner = :thief, lease_counter = :next")
        .expression_attribute_values(":thief", AttributeValue::S("thief".into()))
        .expression_attribute_values(":next", AttributeValue::N((counter + 1).to_string()))
        .send()
        .await?;
    weir.wait_for("the reading to stop", Duration::from_secs(10), || async {
        Ok(shards_read(&weir, "s").await?.is_empty().then_some(()))
    })
    .await?;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (mut expected, next) = writer.await??;
    let before = totals(&weir).await?;
    put(&kinesis, &stream, &keyed(next, 10, &mut expected)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(
        totals(&weir).await? == before,
        "nothing read while the lease is another's"
    );
    // The thief never renews: after the failover time the lease is taken back and the
    // shard read on from its checkpoint, every record once.
    wait_totals(&weir, &expected).await?;
    ensure!(shards_read(&weir, "s").await? == [shard]);
    Ok(())
}
