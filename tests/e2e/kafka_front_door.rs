//! The HTTP front door of a Kafka source against a real broker (tansu, see `kafka.rs`):
//! records posted to the source are produced to its topic, acknowledged before the
//! answer, and read back by the source's consumer.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::kafka::{brokers, create_topic, free_port, unique, view_rows};
use crate::kafka_sink::read_topic;
use crate::support::Weir;

#[tokio::test]
async fn records_posted_to_a_kafka_source_reach_its_topic_and_its_views_once() -> Result<()> {
    let topic = unique("door");
    create_topic(&topic, 2).await?;
    let weir = Weir::start(&[]).await?;
    let b = brokers();
    let group = unique("g");
    weir.exec(&format!(
        "CREATE SOURCE door (user_name VARCHAR, n BIGINT) WITH (connector = 'kafka', \
         brokers = '{b}', topic = '{topic}', group = '{group}', key = 'user_name')"
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW totals AS SELECT user_name, count(*) AS c, sum(n) AS s \
         FROM door GROUP BY user_name",
    )
    .await?;
    let body = "{\"user_name\": \"ann\", \"n\": 1}\n{\"user_name\": \"bob\", \"n\": 2}\n\
                not json\n{\"user_name\": \"ann\", \"n\": 3}\n";
    let post = |key: &'static str| {
        weir.client
            .post(format!("{}/api/v1/sources/door/records", weir.url))
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    let first: Value = post("k1").await?.json().await?;
    ensure!(
        first["accepted"] == 3 && first["dead_lettered"] == 1 && first["duplicate"].is_null(),
        "{first}"
    );
    // A retry with the same key is answered as the first time and produces nothing.
    let again: Value = post("k1").await?.json().await?;
    ensure!(
        again["accepted"] == 3 && again["duplicate"] == true,
        "{again}"
    );

    weir.wait_for(
        "the records in the view",
        Duration::from_secs(60),
        || async {
            let rows = view_rows(&weir, "totals").await?;
            let count: i64 = rows.iter().filter_map(|r| r["c"].as_i64()).sum();
            Ok((count >= 3).then_some(rows))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rows = view_rows(&weir, "totals").await?;
    rows.sort_by_key(|r| r["user_name"].as_str().map(str::to_string));
    ensure!(
        rows == vec![
            serde_json::json!({"user_name": "ann", "c": 2, "s": 4}),
            serde_json::json!({"user_name": "bob", "c": 1, "s": 2}),
        ],
        "each record once: {rows:?}"
    );
    // In the topic, keyed by the key field.
    let written = read_topic(&b, &topic, 3).await?;
    ensure!(written.len() == 3, "{written:?}");
    for w in &written {
        let value = w.value.as_ref().context("a value")?;
        ensure!(w.key.as_ref() == Some(&value["user_name"]), "{w:?}");
    }
    let letters = weir.get("/api/v1/dead-letters").await?;
    ensure!(letters.to_string().contains("not json"), "{letters}");
    // A record larger than a message may be is refused whole (413), nothing produced.
    let big = format!(
        "{{\"user_name\": \"ann\", \"n\": 1, \"pad\": \"{}\"}}\n{{\"user_name\": \"cy\", \"n\": 9}}",
        "x".repeat(1_100_000)
    );
    let (status, body) = weir.post_records("door", big).await?;
    ensure!(
        status == 413
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("record 0")),
        "{status} {body}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = view_rows(&weir, "totals").await?;
    ensure!(!rows.iter().any(|r| r["user_name"] == "cy"), "{rows:?}");

    // Brokers that do not answer: 503 with Retry-After, nothing accepted.
    let port = free_port()?;
    weir.exec(&format!(
        "CREATE SOURCE nowhere (n BIGINT) WITH (connector = 'kafka', \
         brokers = '127.0.0.1:{port}', topic = 'nowhere')"
    ))
    .await?;
    let slow = {
        let (client, url) = (weir.client.clone(), weir.url.clone());
        tokio::spawn(async move {
            client
                .post(format!("{url}/api/v1/sources/nowhere/records"))
                .header("Idempotency-Key", "slow")
                .body("{\"n\": 1}")
                .send()
                .await
        })
    };
    // A retry while the first request still waits is refused, not produced again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let retry = weir
        .client
        .post(format!("{}/api/v1/sources/nowhere/records", weir.url))
        .header("Idempotency-Key", "slow")
        .body("{\"n\": 1}")
        .send()
        .await?;
    ensure!(retry.status().as_u16() == 409, "{}", retry.status());
    let r = slow.await??;
    ensure!(r.status().as_u16() == 503, "{}", r.status());
    ensure!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await?;
    ensure!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("could not be produced")),
        "{body}"
    );
    Ok(())
}
