//! The files sink: Parquet files in a local directory through three `kill -9`s, and in
//! S3 (the moto server `scripts/test.sh` starts, `WEIR_TEST_S3`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::kafka::unique;
use crate::kafka_sink::wait_delivered;
use crate::sink_runs::{
    checkpointed_ids, crashing_after_the_first_delivery, every_id, ids, through_three_kill_nines,
};
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

/// The test S3 endpoint (moto) with a new bucket: (endpoint, bucket, weir's environment).
async fn s3_bucket(prefix: &str) -> Result<(String, String, [(&'static str, &'static str); 3])> {
    let s3 = std::env::var("WEIR_TEST_S3")
        .context("WEIR_TEST_S3 is not set: run the tests with scripts/test.sh")?;
    let bucket = unique(prefix);
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
    Ok((s3, bucket, env))
}

fn s3_store(s3: &str, bucket: &str) -> Result<impl ObjectStore> {
    Ok(AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(s3)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()?)
}

/// Each file's path (relative to the sink's path) and rows, from a local directory.
fn local_files(dir: &Path) -> Result<Vec<(String, Vec<RecordBatch>)>> {
    let mut out = Vec::new();
    for file in files_under(dir)? {
        let batches = read_parquet(std::fs::read(dir.join(&file))?)?;
        out.push((file, batches));
    }
    Ok(out)
}

/// The same from S3, under `prefix`.
async fn s3_files(
    store: &impl ObjectStore,
    prefix: &str,
) -> Result<Vec<(String, Vec<RecordBatch>)>> {
    let prefix = object_store::path::Path::from(prefix);
    let (mut objects, mut todo) = (Vec::new(), vec![prefix.clone()]);
    while let Some(at) = todo.pop() {
        let listed = store.list_with_delimiter(Some(&at)).await?;
        objects.extend(listed.objects);
        todo.extend(listed.common_prefixes);
    }
    let mut out = Vec::new();
    for object in objects {
        let bytes = store.get(&object.location).await?.bytes().await?;
        let name = object
            .location
            .prefix_match(&prefix)
            .context("under the prefix")?;
        let name = name
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/");
        out.push((name, read_parquet(bytes.to_vec())?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The files of a sink of `seen` partitioned by user_id with at most 40 rows a file hold
/// ids 0..sent once each, each in its user's directory; how many files there are.
fn every_row_once_in_its_partition(
    files: &[(String, Vec<RecordBatch>)],
    sent: u64,
) -> Result<usize> {
    let mut ids = Vec::new();
    let names: Vec<&String> = files.iter().map(|(n, _)| n).collect();
    for (file, batches) in files {
        ensure!(
            file.ends_with(".parquet") && file.contains("/part-"),
            "only finished Parquet files: {names:?}"
        );
        let users = ints(batches, "user_id")?;
        let directory = file.split('/').next().unwrap_or_default();
        ensure!(
            users.iter().all(|u| directory == format!("user_id={u}")),
            "{file} holds users {users:?}"
        );
        ensure!(users.len() <= 40, "{file}: {} rows", users.len());
        ids.extend(ints(batches, "id")?);
    }
    ids.sort_unstable();
    ensure!(
        ids == every_id(sent),
        "{} rows in {} files, not ids 0..{sent} once each",
        ids.len(),
        files.len(),
    );
    Ok(files.len())
}

/// Three sinks of one view through three `kill -9`s: files for each epoch in a local
/// directory, files rolled every 2 s in another, and files rolled every second in S3
/// (a delivery of gathered epochs cut off by a kill gathers the same ones again).
#[tokio::test]
async fn files_hold_every_row_once_in_its_partition_through_three_kill_nines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (each, rolled) = (dir.path().join("seen"), dir.path().join("rolled"));
    let (s3, bucket, env) = s3_bucket("lake-kills").await?;
    let sink = |name: &str, path: String, more: &str| {
        (
            name.to_string(),
            format!(
                "CREATE SINK {name} FROM seen WITH (connector = 'files', path = '{path}', \
                 partition_by = 'user_id', max_rows_per_file = '40'{more})"
            ),
        )
    };
    let run = through_three_kill_nines(
        &env,
        &[
            sink("seen_files", each.display().to_string(), ""),
            sink(
                "seen_rolled",
                rolled.display().to_string(),
                ", roll_interval = '2s'",
            ),
            sink(
                "seen_s3",
                format!("s3://{bucket}/seen"),
                &format!(", endpoint = '{s3}', roll_interval = '1s'"),
            ),
        ],
    )
    .await?;
    every_row_once_in_its_partition(&local_files(&each)?, run.sent)?;
    every_row_once_in_its_partition(&local_files(&rolled)?, run.sent)?;
    let in_s3 = s3_files(&s3_store(&s3, &bucket)?, "seen").await?;
    every_row_once_in_its_partition(&in_s3, run.sent)?;
    Ok(())
}

/// The first epoch in a file's name (`part-<lineage>-<epoch>-<n>.parquet`).
fn first_epoch(file: &str) -> Result<u64> {
    let name = file.rsplit('/').next().unwrap_or(file);
    let parts: Vec<&str> = name.split('-').collect();
    Ok(parts.get(2).context("an epoch in the name")?.parse()?)
}

/// Epochs gather into one set of files for `roll_interval`, or until they hold
/// `max_rows_per_file` rows, while a sink without it writes each epoch's own.
#[tokio::test]
async fn files_roll_by_time_or_by_rows() -> Result<()> {
    let (weir, _) = checkpointed_ids(&[]).await?;
    let out = tempfile::tempdir()?;
    for (name, more) in [
        ("each", ""),
        ("timed", ", roll_interval = '6s'"),
        ("sized", ", roll_interval = '1h', max_rows_per_file = '20'"),
    ] {
        weir.exec(&format!(
            "CREATE SINK {name} FROM v WITH (connector = 'files', path = '{}'{more})",
            out.path().join(name).display()
        ))
        .await?;
    }
    // Five posts of 10 rows, each in a checkpoint of its own (mostly).
    for from in (0..50).step_by(10) {
        ensure!(weir.post_records("s", ids(from..from + 10)).await?.0 == 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let sorted_ids = |files: &[(String, Vec<RecordBatch>)]| -> Result<Vec<i64>> {
        let mut ids = Vec::new();
        for (_, batches) in files {
            ids.extend(ints(batches, "id")?);
        }
        ids.sort_unstable();
        Ok(ids)
    };
    wait_delivered(&weir, "each").await?;
    let each = local_files(&out.path().join("each"))?;
    ensure!(sorted_ids(&each)? == (0..50).collect::<Vec<_>>());
    ensure!(each.len() > 1, "an epoch each: {} files", each.len());

    let timed = wait_delivered(&weir, "timed").await?;
    let files = local_files(&out.path().join("timed"))?;
    ensure!(sorted_ids(&files)? == (0..50).collect::<Vec<_>>());
    ensure!(
        files.len() == 1 && timed["epochs_delivered"] == 1,
        "the epochs of 6 s in one file: {} files, {timed}",
        files.len()
    );

    // By rows: each gathering holds 20 rows or more; what waits holds fewer.
    let sized = weir
        .wait_for(
            "20 rows or more to be written",
            Duration::from_secs(30),
            || async {
                let s = weir.get("/api/v1/sinks/sized").await?;
                Ok((s["messages"].as_u64() >= Some(40)).then_some(s))
            },
        )
        .await?;
    let files = local_files(&out.path().join("sized"))?;
    let mut by_epoch: std::collections::BTreeMap<u64, usize> = Default::default();
    for (file, batches) in &files {
        *by_epoch.entry(first_epoch(file)?).or_default() +=
            batches.iter().map(RecordBatch::num_rows).sum::<usize>();
    }
    ensure!(
        by_epoch.values().all(|rows| *rows >= 20),
        "rows by gathering: {by_epoch:?}"
    );
    let written: usize = by_epoch.values().sum();
    ensure!(
        sized["rows_pending"].as_u64() == Some(50 - written as u64) && written > 30,
        "{written} rows written; {sized}"
    );
    ensure!(
        files
            .iter()
            .all(|(_, b)| b.iter().map(RecordBatch::num_rows).sum::<usize>() <= 20),
        "at most 20 rows a file"
    );
    Ok(())
}

/// Objects in S3 written with credentials from an AWS profile.
#[tokio::test]
async fn objects_in_s3_hold_the_views_rows_and_bad_options_are_refused() -> Result<()> {
    let (s3, bucket, _) = s3_bucket("lake").await?;
    // Credentials and region from a profile in AWS's own files, as `aws configure`
    // writes them: none in weir's environment.
    let aws = tempfile::tempdir()?;
    let (credentials, config) = (aws.path().join("credentials"), aws.path().join("config"));
    std::fs::write(
        &credentials,
        "[lake]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )?;
    std::fs::write(&config, "[profile lake]\nregion = us-east-1\n")?;
    let (credentials, config) = (
        credentials.display().to_string(),
        config.display().to_string(),
    );
    let env = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str()),
        ("AWS_CONFIG_FILE", config.as_str()),
        ("AWS_PROFILE", "lake"),
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

    let store = s3_store(&s3, &bucket)?;
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

/// A moto server of the test's own, which it stops and starts again. moto keeps its
/// objects in memory: a restart starts it empty.
struct OwnS3 {
    port: u16,
    child: crate::support::ServiceProcess,
}

impl OwnS3 {
    async fn start() -> Result<Self> {
        let mut me = Self {
            port: crate::kafka::free_port()?,
            child: Default::default(),
        };
        me.up().await?;
        Ok(me)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start it, with an empty bucket `lake`.
    async fn up(&mut self) -> Result<()> {
        let moto =
            std::env::var("WEIR_MOTO").context("WEIR_MOTO is not set: run scripts/test.sh")?;
        let child = std::process::Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child.running(child);
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(made) = http.put(format!("{}/lake", self.endpoint())).send().await
                && made.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("moto did not start on port {}", self.port)
    }

    fn down(&mut self) -> Result<()> {
        self.child.down()
    }
}

/// With the S3 endpoint down the sink retries while its epochs wait; once the endpoint
/// is back they are written, each row once. (moto starts again empty, so what is
/// checked is what waited through the outage.)
#[tokio::test]
async fn an_s3_endpoint_down_mid_run_loses_nothing_that_waited() -> Result<()> {
    let mut s3 = OwnS3::start().await?;
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let (weir, _) = checkpointed_ids(&env).await?;
    weir.exec(&format!(
        "CREATE SINK out FROM v WITH (connector = 'files', path = 's3://lake/ids', \
         endpoint = '{}')",
        s3.endpoint()
    ))
    .await?;
    ensure!(weir.post_records("s", ids(0..20)).await?.0 == 200);
    wait_delivered(&weir, "out").await?;
    s3.down()?;
    ensure!(weir.post_records("s", ids(20..50)).await?.0 == 200);
    let retrying = weir
        .wait_for("the sink to retry", Duration::from_secs(60), || async {
            let s = weir.get("/api/v1/sinks/out").await?;
            Ok((s["status"] == "retrying").then_some(s))
        })
        .await?;
    ensure!(retrying["rows_pending"] == 30, "{retrying}");
    s3.up().await?;
    wait_delivered(&weir, "out").await?;
    let files = s3_files(&s3_store(&s3.endpoint(), "lake")?, "ids").await?;
    let mut written = Vec::new();
    for (_, batches) in &files {
        written.extend(ints(batches, "id")?);
    }
    written.sort_unstable();
    ensure!(
        written == (20..50).collect::<Vec<_>>(),
        "the rows that waited, once each: {written:?}"
    );
    Ok(())
}

/// A sink whose directory cannot be made when weir restarts still comes back, its
/// backlog kept: it retries, and once the directory can be made, writes what waited.
#[tokio::test]
async fn a_sink_whose_store_is_unusable_at_a_restart_keeps_its_backlog() -> Result<()> {
    let (weir, config) = checkpointed_ids(&[]).await?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    weir.exec(&format!(
        "CREATE SINK out FROM v WITH (connector = 'files', path = '{}')",
        out.display()
    ))
    .await?;
    ensure!(weir.post_records("s", ids(0..10)).await?.0 == 200);
    wait_delivered(&weir, "out").await?;
    // The directory goes, a file takes its name, and 10 more rows wait for the sink.
    std::fs::remove_dir_all(&out)?;
    std::fs::write(&out, b"in the way")?;
    ensure!(weir.post_records("s", ids(10..20)).await?.0 == 200);
    weir.wait_for("the sink to retry", Duration::from_secs(60), || async {
        let s = weir.get("/api/v1/sinks/out").await?;
        Ok((s["status"] == "retrying" && s["rows_pending"] == 10).then_some(()))
    })
    .await?;
    crate::sink_runs::a_newer_checkpoint(&weir).await?;
    let data = weir.kill().await?;
    let weir = Weir::start_in(data, &["--config", &config]).await?;
    let status = weir.get("/api/v1/sinks/out").await?;
    ensure!(
        status["rows_pending"] == 10,
        "restored with its backlog: {status}"
    );
    std::fs::remove_file(&out)?;
    wait_delivered(&weir, "out").await?;
    let mut written = Vec::new();
    for (_, batches) in local_files(&out)? {
        written.extend(ints(&batches, "id")?);
    }
    written.sort_unstable();
    ensure!(written == (10..20).collect::<Vec<_>>(), "{written:?}");
    Ok(())
}

/// A sink made on a view of a source that has failed still gets the view's rows: the
/// source's final snapshot is sealed with them at the next checkpoint, as a finished
/// source's is (no pipeline is left to answer).
#[tokio::test]
async fn a_sink_on_a_view_of_a_failed_source_writes_its_rows() -> Result<()> {
    let (weir, _) =
        crate::nexmark::failing_generator("[runtime.checkpoints]\ninterval = '200ms'\n", "")
            .await?;
    weir.exec("CREATE MATERIALIZED VIEW v AS SELECT auction AS id FROM bids")
        .await?;
    let status = weir
        .wait_source("bids", "failed", Duration::from_secs(30))
        .await?;
    let read = status["records_in"].as_u64().unwrap_or(0);
    ensure!(
        read > 0 && read < 92_000,
        "the first three chunks only: {status}"
    );
    let out = tempfile::tempdir()?;
    weir.exec(&format!(
        "CREATE SINK out FROM v WITH (connector = 'files', path = '{}')",
        out.path().display()
    ))
    .await?;
    wait_delivered(&weir, "out").await?;
    let mut written = 0;
    for (_, batches) in local_files(out.path())? {
        written += ints(&batches, "id")?.len() as u64;
    }
    ensure!(written == read, "{written} rows written of {read} read");
    Ok(())
}
