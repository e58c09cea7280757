//! The Kinesis sink against kinesalite: every change put with its lineage, epoch and
//! seq, partial failures put again, and three `kill -9`s exact once deduplicated.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::kafka::unique;
use crate::kinesis::{
    client, create_stream, endpoint, fault, numbered, put, read_all, restart, source_sql,
    start_weir,
};

#[tokio::test]
async fn a_sink_puts_every_change_with_its_lineage_epoch_and_seq() -> Result<()> {
    let kinesis = client();
    let (input, output) = (unique("in"), unique("out"));
    create_stream(&kinesis, &input, 1).await?;
    create_stream(&kinesis, &output, 2).await?;
    let weir = start_weir("[runtime.checkpoints]\ninterval = '200ms'\n").await?;
    weir.exec(&source_sql("s", "k VARCHAR, n BIGINT", &input, ""))
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW rows AS SELECT k, n FROM s")
        .await?;
    weir.exec(&format!(
        "CREATE SINK out FROM rows WITH (connector = 'kinesis', stream = '{output}', \
         endpoint = '{}', region = 'us-east-1', partition_key = 'k')",
        endpoint()
    ))
    .await?;
    // Partial failures: the first calls put half their records; the rest are put again.
    fault(&output, "partial", 3).await?;
    put(&kinesis, &input, &numbered(4, 0..300)).await?;
    let records = weir
        .wait_for(
            "1,200 records on the output stream",
            Duration::from_secs(60),
            || async {
                let all = read_all(&kinesis, &output).await?;
                Ok((all.len() >= 1_200).then_some(all))
            },
        )
        .await?;
    ensure!(records.len() == 1_200, "{}", records.len());
    let mut seen = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    for r in &records {
        let v: Value = serde_json::from_slice(r)?;
        ensure!(
            v["weir-epoch"].as_u64().is_some() && v["weir-seq"].as_u64().is_some(),
            "{v}"
        );
        ensure!(v["weir-lineage"].is_string(), "{v}");
        ids.insert((v["weir-epoch"].as_u64(), v["weir-seq"].as_u64()));
        seen.insert((
            v["k"].as_str().unwrap_or_default().to_string(),
            v["n"].as_i64(),
        ));
    }
    ensure!(ids.len() == 1_200, "each record its own (epoch, seq)");
    ensure!(seen.len() == 1_200, "every row once");
    let log = std::fs::read_to_string(weir.data_dir.path().join("weir.log"))?;
    ensure!(
        log.contains("records of a partial failure were put again"),
        "{log}"
    );
    let sinks = weir.get("/api/v1/sinks").await?;
    ensure!(sinks.to_string().contains("\"messages\":1200"), "{sinks}");
    Ok(())
}

#[tokio::test]
async fn a_sinks_records_through_three_kill_nines_are_exact_once_deduplicated_by_their_ids()
-> Result<()> {
    let kinesis = client();
    let (input, output) = (unique("in"), unique("out"));
    create_stream(&kinesis, &input, 1).await?;
    create_stream(&kinesis, &output, 1).await?;
    let mut weir = start_weir("[runtime.checkpoints]\ninterval = '200ms'\n").await?;
    weir.exec(&source_sql("s", "k VARCHAR, n BIGINT", &input, ""))
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW rows AS SELECT k, n FROM s")
        .await?;
    weir.exec(&format!(
        "CREATE SINK out FROM rows WITH (connector = 'kinesis', stream = '{output}', \
         endpoint = '{}', region = 'us-east-1', partition_key = 'k')",
        endpoint()
    ))
    .await?;
    for round in 0..4u64 {
        put(&kinesis, &input, &numbered(4, round * 25..(round + 1) * 25)).await?;
        tokio::time::sleep(Duration::from_millis(350)).await;
        if round < 3 {
            weir = restart(weir).await?;
        }
    }
    // Deduplicated by (lineage, epoch, seq), as a consumer would: every row once, and
    // a record written twice is the same record both times.
    let deduplicated = weir
        .wait_for("400 distinct records", Duration::from_secs(90), || async {
            let mut by_id: BTreeMap<(String, u64, u64), Value> = BTreeMap::new();
            for r in read_all(&kinesis, &output).await? {
                let v: Value = serde_json::from_slice(&r)?;
                let id = (
                    v["weir-lineage"].as_str().context("lineage")?.to_string(),
                    v["weir-epoch"].as_u64().context("epoch")?,
                    v["weir-seq"].as_u64().context("seq")?,
                );
                if let Some(first) = by_id.get(&id) {
                    ensure!(*first == v, "one id, two records: {first} and {v}");
                }
                by_id.insert(id, v);
            }
            Ok((by_id.len() >= 400).then_some(by_id))
        })
        .await?;
    ensure!(deduplicated.len() == 400, "{}", deduplicated.len());
    let rows: std::collections::BTreeSet<(String, i64)> = deduplicated
        .values()
        .map(|v| {
            (
                v["k"].as_str().unwrap_or_default().to_string(),
                v["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    ensure!(rows.len() == 400, "every row once: {}", rows.len());
    Ok(())
}
