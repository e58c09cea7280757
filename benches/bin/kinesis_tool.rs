//! The Kinesis side of `scripts/bench-kinesis.sh`: fill a stream with small JSON bids,
//! and a plain aws-sdk-kinesis reader that reads every shard to its tip and does
//! nothing with the records: the ceiling weir's Kinesis source is measured against.
//!
//!   weir-kinesis-tool produce ENDPOINT STREAM RECORDS SHARDS
//!   weir-kinesis-tool consume ENDPOINT STREAM RECORDS          (prints records/s)

use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: weir-kinesis-tool produce|consume ENDPOINT STREAM RECORDS [SHARDS]";
    let (command, endpoint, stream, records) = match args.as_slice() {
        [_, c, e, s, n, ..] => (c.as_str(), e.as_str(), s.as_str(), n.parse::<u64>()?),
        _ => return Err(usage.into()),
    };
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .build();
    let client = Client::from_conf(config);
    match command {
        "produce" => {
            let shards = args.get(5).map_or(Ok(4), |s| s.parse())?;
            produce(&client, stream, records, shards).await
        }
        "consume" => consume(&client, stream, records).await,
        _ => Err(usage.into()),
    }
}

async fn produce(client: &Client, stream: &str, records: u64, shards: i32) -> Result<(), Error> {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await?;
    loop {
        let d = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if d.stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut buf = Vec::new();
    let mut i = 0;
    while i < records {
        let n = (records - i).min(500);
        let entries = (i..i + n)
            .map(|i| {
                buf.clear();
                let _ = write!(
                    buf,
                    r#"{{"id":{i},"user_id":{},"price":{},"ts":{}}}"#,
                    i % 10_000,
                    i % 997,
                    1_700_000_000_000 + i
                );
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("u{}", i % 10_000))
                    .data(Blob::new(buf.clone()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            return Err("records failed; try fewer".into());
        }
        i += n;
    }
    Ok(())
}

/// Read every shard from its start until `records` records, shards side by side.
async fn consume(client: &Client, stream: &str, records: u64) -> Result<(), Error> {
    let started = Instant::now();
    let shards = client.list_shards().stream_name(stream).send().await?;
    let mut readers = Vec::new();
    for shard in shards.shards() {
        let (client, stream, shard) = (
            client.clone(),
            stream.to_string(),
            shard.shard_id().to_string(),
        );
        readers.push(tokio::spawn(async move {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(&stream)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator
                .ok_or("no iterator")?;
            let mut n = 0u64;
            loop {
                let out = client
                    .get_records()
                    .shard_iterator(&iterator)
                    .limit(10_000)
                    .send()
                    .await?;
                n += out.records().len() as u64;
                if out.records().is_empty() && out.millis_behind_latest() == Some(0) {
                    return Ok::<u64, Error>(n);
                }
                match out.next_shard_iterator {
                    Some(next) => iterator = next,
                    None => return Ok(n),
                }
            }
        }));
    }
    let mut total = 0;
    for r in readers {
        total += r.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    if total != records {
        return Err(format!("read {total} records, not {records}").into());
    }
    println!(
        "plain aws-sdk-kinesis reader: {total} records in {secs:.2} s = {:.0} records/s",
        total as f64 / secs
    );
    Ok(())
}
