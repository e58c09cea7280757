//! The files sink: Parquet files in a local directory through three `kill -9`s, and in
//! S3 (the moto server `scripts/test.sh` starts, `WEIR_TEST_S3`).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::kafka::unique;
use crate::kafka_sink::wait_delivered;
use crate::sink_runs::{crashing_after_the_first_delivery, every_id, through_three_kill_nines};
use crate::support::Weir;

/// The rows of a Parquet file.
fn read_parquet(bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?.build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// The values of an Int64 column.
fn ints(batches: &[RecordBatch], column: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for b in batches {
        let values = b
            .column_by_name(column)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .context("an Int64 column")?;
        out.extend((0..values.len()).map(|i| values.value(i)));
    }
    Ok(out)
}

/// Every file under `dir`, by its path relative to `dir`.
fn files_under(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir)?.to_string_lossy().to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn files_hold_every_row_once_in_its_partition_through_three_kill_nines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("seen");
    let run = through_three_kill_nines(
        &[],
        &[(
            "seen_files".to_string(),
            format!(
                "CREATE SINK seen_files FROM seen WITH (connector = 'files', path = '{}', \
             partition_by = 'user_id', max_rows_per_file = '40')",
                out.display()
            ),
        )],
    )
    .await?;
    let files = files_under(&out)?;
    let mut ids = Vec::new();
    for file in &files {
        ensure!(
            file.ends_with(".parquet") && file.contains("/part-"),
            "only finished Parquet files: {files:?}"
        );
        let batches = read_parquet(std::fs::read(out.join(file))?)?;
        let users = ints(&batches, "user_id")?;
        let directory = file.split('/').next().unwrap_or_default();
        ensure!(
            users.iter().all(|u| directory == format!("user_id={u}")),
            "{file} holds users {users:?}"
        );
        ensure!(users.len() <= 40, "{file}: {} rows", users.len());
        ids.extend(ints(&batches, "id")?);
    }
    ids.sort_unstable();
    ensure!(
        ids == every_id(run.sent),
        "{} rows in {} files, not ids 0..{} once each",
        ids.len(),
        files.len(),
        run.sent
    );
    Ok(())
}

#[tokio::test]
async fn objects_in_s3_hold_the_views_rows_and_bad_options_are_refused() -> Result<()> {
    let s3 = std::env::var("WEIR_TEST_S3")
        .context("WEIR_TEST_S3 is not set: run the tests with scripts/test.sh")?;
    let bucket = unique("lake");
    let made = reqwest::Client::new()
        .put(format!("{s3}/{bucket}"))
        .send()
        .await?;
    ensure!(made.status().is_success(), "cannot make bucket {bucket}");
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let weir = Weir::start_with_env(tempfile::tempdir()?, &[], &env).await?;
    weir.exec("CREATE SOURCE s (id BIGINT, dt VARCHAR) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT id, dt FROM s")
        .await?;
    for (options, reason) in [
        (
            format!("path = 's3://{bucket}/out', partition_by = 'day'"),
            "partition_by day is not a column of view v",
        ),
        (
            "path = 'ftp://host/x'".to_string(),
            "neither a local directory nor s3://bucket/prefix",
        ),
    ] {
        let (code, body) = weir
            .sql(&format!(
                "CREATE SINK f FROM v WITH (connector = 'files', endpoint = '{s3}', {options})"
            ))
            .await?;
        let detail = body["detail"].as_str().unwrap_or_default();
        ensure!(
            code == 400 && detail.contains(reason),
            "{options}: {code} {body}"
        );
    }
    weir.exec(&format!(
        "CREATE SINK f FROM v WITH (connector = 'files', path = 's3://{bucket}/out', \
         endpoint = '{s3}', partition_by = 'dt')"
    ))
    .await?;
    let rows: Vec<String> = (0..50)
        .map(|i| format!("{{\"id\": {i}, \"dt\": \"2024-05-0{}\"}}", 1 + i % 3))
        .collect();
    weir.post_records("s", rows.join("\n")).await?;
    wait_delivered(&weir, "f").await?;

    let store = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(&s3)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()?;
    let prefix = object_store::path::Path::from("out");
    let listed = store.list_with_delimiter(Some(&prefix)).await?;
    let mut days: Vec<String> = listed
        .common_prefixes
        .iter()
        .map(|p| p.filename().unwrap_or_default().to_string())
        .collect();
    days.sort();
    ensure!(
        days == ["dt=2024-05-01", "dt=2024-05-02", "dt=2024-05-03"],
        "{days:?}"
    );
    let mut ids = Vec::new();
    for day in &listed.common_prefixes {
        for object in store.list_with_delimiter(Some(day)).await?.objects {
            let bytes = store.get(&object.location).await?.bytes().await?;
            ids.extend(ints(&read_parquet(bytes.to_vec())?, "id")?);
        }
    }
    ids.sort_unstable();
    ensure!(ids == (0..50).collect::<Vec<_>>(), "{ids:?}");
    Ok(())
}

/// weir crashes after an epoch's files were written and before weir noted it: the
/// restarted sink writes the same files again, over them, and no row is there twice.
#[tokio::test]
async fn an_epoch_written_again_after_a_crash_replaces_its_own_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("crashed");
    crashing_after_the_first_delivery(&format!(
        "CREATE SINK crashed FROM v WITH (connector = 'files', path = '{}')",
        out.display()
    ))
    .await?;
    let mut ids = Vec::new();
    for file in files_under(&out)? {
        ids.extend(ints(&read_parquet(std::fs::read(out.join(&file))?)?, "id")?);
    }
    ids.sort_unstable();
    ensure!(
        ids == (0..30).collect::<Vec<_>>(),
        "every row once: {ids:?}"
    );
    Ok(())
}
