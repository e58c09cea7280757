//! Recovery: weir is killed with SIGKILL at random moments and restarted on the same
//! data dir; every view must end exactly as in an uninterrupted run of the same input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use serde_json::Value;

use crate::support::Weir;

/// Checkpoints often, so that kills land between and during them.
const CONFIG: &str = "[runtime.checkpoints]\ninterval = '300ms'\nkeep = 3\n";

// Each view over the bids reads a source of its own with the same events: a generator
// starts with its first view, so a second view over it would miss whatever the first saw
// before the second was created, differently in each run (with batches that close as
// soon as nothing is queued, often a whole chunk).
const NEXMARK: &[&str] = &[
    "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 400000, rate = 50000, seed = 7)",
    "CREATE SOURCE bids_c WITH (connector = 'nexmark', table = 'bid', events = 400000, rate = 50000, seed = 7)",
    "CREATE SOURCE bids_b WITH (connector = 'nexmark', table = 'bid', events = 400000, rate = 50000, seed = 7)",
    // A windowed aggregate: open windows and partial aggregates are operator state.
    "CREATE MATERIALIZED VIEW per_window AS SELECT window_start, auction % 10 AS bucket, count(*) AS bids, \
     sum(price) AS total, max(price) AS top, count(DISTINCT bidder) AS bidders \
     FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND) GROUP BY window_start, auction % 10",
    // An updating aggregate: one state for the whole stream.
    "CREATE MATERIALIZED VIEW per_channel AS SELECT channel, count(*) AS bids, avg(price) AS mean \
     FROM bids_c GROUP BY channel",
    // A stateless view: its rows are the state.
    "CREATE MATERIALIZED VIEW big_bids AS SELECT auction, bidder, price, date_time FROM bids_b \
     WHERE price > 9000000",
    // A join of two sources (Nexmark q8): its open windows hold rows of both, which a
    // checkpoint takes with both sources' positions at one moment.
    "CREATE SOURCE person WITH (connector = 'nexmark', table = 'person', events = 400000, rate = 50000, seed = 7)",
    "CREATE SOURCE auction WITH (connector = 'nexmark', table = 'auction', events = 400000, rate = 50000, seed = 7)",
    "CREATE MATERIALIZED VIEW new_sellers AS SELECT p.id, p.name, p.window_start \
     FROM (SELECT id, name, window_start, window_end FROM TUMBLE(person, date_time, INTERVAL '2' SECOND) \
           GROUP BY id, name, window_start, window_end) AS p \
     JOIN (SELECT seller, window_start, window_end FROM TUMBLE(auction, date_time, INTERVAL '2' SECOND) \
           GROUP BY seller, window_start, window_end) AS a \
     ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end",
];

const VIEWS: &[&str] = &["per_window", "per_channel", "big_bids", "new_sellers"];
const NEXMARK_SOURCES: &[&str] = &["bids", "bids_c", "bids_b", "person", "auction"];

async fn start() -> Result<Weir> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, CONFIG)?;
    let config = config.to_string_lossy().to_string();
    Weir::start_in(dir, &["--config", &config]).await
}

async fn restart(weir: Weir) -> Result<Weir> {
    let config = weir.data_dir.path().join("weir.toml");
    let config = config.to_string_lossy().to_string();
    weir.restart(&["--config", &config]).await
}

/// A view's rows in a canonical order.
async fn rows(weir: &Weir, view: &str) -> Result<Vec<String>> {
    let body = weir.get(&format!("/api/v1/views/{view}")).await?;
    let mut rows: Vec<String> = body["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(Value::to_string)
        .collect();
    rows.sort();
    Ok(rows)
}

/// A small deterministic generator of kill moments; the seed is printed so a failing
/// run can be repeated with WEIR_CRASH_SEED.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::env::var("WEIR_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("crash moments: WEIR_CRASH_SEED={seed}");
        Self(seed)
    }

    /// Milliseconds in `lo..hi`.
    fn next(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Duration::from_millis(lo + (self.0 >> 33) % (hi - lo))
    }
}

/// Flip a byte in the middle of a view-state file of the newest checkpoint that has
/// one (when an older checkpoint exists to fall back to); returns its epoch.
fn damage_newest_checkpoint(data_dir: &std::path::Path) -> Result<Option<u64>> {
    let mut epochs: Vec<(u64, std::path::PathBuf)> =
        std::fs::read_dir(data_dir.join("checkpoints"))?
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
            .collect();
    epochs.sort();
    if epochs.len() < 2 {
        return Ok(None);
    }
    let (epoch, newest) = epochs.pop().expect("two or more");
    let Some(file) = std::fs::read_dir(&newest)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-state.arrow"))
    else {
        return Ok(None);
    };
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&file, bytes)?;
    Ok(Some(epoch))
}

#[tokio::test]
async fn nexmark_views_survive_kill_9_exactly() -> Result<()> {
    // The uninterrupted run.
    let reference = start().await?;
    for sql in NEXMARK {
        reference.exec(sql).await?;
    }
    for source in NEXMARK_SOURCES {
        reference.wait_finished(source).await?;
    }
    let mut expected = Vec::new();
    for view in VIEWS {
        let r = rows(&reference, view).await?;
        ensure!(!r.is_empty(), "{view} is empty in the reference run");
        expected.push(r);
    }
    drop(reference);

    // The same input, killed five times.
    let mut moments = Moments::new();
    let mut weir = start().await?;
    for sql in NEXMARK {
        weir.exec(sql).await?;
    }
    let mut restored = 0;
    let mut join_resumed = 0;
    let mut fell_back = false;
    for kill in 0..5 {
        tokio::time::sleep(moments.next(400, 1_800)).await;
        if kill == 2 {
            // This time the newest checkpoint is also damaged: the one before it is used.
            let dir = weir.kill().await?;
            let damaged = damage_newest_checkpoint(dir.path())?;
            let config = dir.path().join("weir.toml").to_string_lossy().to_string();
            weir = Weir::start_in(dir, &["--config", &config]).await?;
            if let Some(epoch) = damaged {
                let status = weir.get("/api/v1/checkpoints").await?;
                let warnings = status["warnings"].to_string();
                ensure!(
                    warnings.contains(&format!("checkpoint {epoch}")),
                    "{status}"
                );
                ensure!(status["restored_from"].as_u64() < Some(epoch), "{status}");
                // The console's health page shows it where people look.
                let health = weir.get("/api/v1/health").await?;
                ensure!(
                    health["warnings"]
                        .to_string()
                        .contains(&format!("checkpoint {epoch}")),
                    "{health}"
                );
                fell_back = true;
            }
        } else {
            weir = restart(weir).await?;
        }
        let status = weir.get("/api/v1/checkpoints").await?;
        if let Some(epoch) = status["restored_from"].as_u64() {
            restored += 1;
            // The join's inputs resumed mid-stream, not from their start.
            let list = status["checkpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(c) = list.iter().find(|c| c["epoch"].as_u64() == Some(epoch)) {
                let at = |name: &str| {
                    c["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|s| s["name"] == name)
                        .and_then(|s| s["position"]["event"].as_str()?.parse::<u64>().ok())
                };
                if at("person").is_some_and(|p| p > 0) && at("auction").is_some_and(|p| p > 0) {
                    join_resumed += 1;
                }
            }
        }
    }
    ensure!(
        join_resumed >= 1,
        "no restart resumed the join's sources from a checkpointed position"
    );
    ensure!(fell_back, "the damaged-checkpoint restart did not happen");
    ensure!(
        restored >= 3,
        "most restarts should restore a checkpoint, {restored} of 5 did"
    );
    for source in NEXMARK_SOURCES {
        weir.wait_finished(source).await?;
    }
    for (view, expected) in VIEWS.iter().zip(&expected) {
        let got = rows(&weir, view).await?;
        assert_eq!(
            got.len(),
            expected.len(),
            "{view}: row count after five kills differs from the uninterrupted run"
        );
        assert!(
            got == *expected,
            "{view}: rows after five kills differ from the uninterrupted run"
        );
    }
    let status = weir.get("/api/v1/checkpoints").await?;
    let list = status["checkpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        !list.is_empty() && list.len() <= 3,
        "kept checkpoints: {status}"
    );
    ensure!(
        list[0]["sources"][0]["position"]["event"].is_string(),
        "{status}"
    );
    Ok(())
}

const HTTP: &[&str] = &[
    "CREATE SOURCE events (id BIGINT, user_id BIGINT, amount BIGINT, ts TIMESTAMP, \
     WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http')",
    "CREATE MATERIALIZED VIEW per_user AS SELECT user_id, count(*) AS n, sum(amount) AS total \
     FROM events GROUP BY user_id",
    "CREATE MATERIALIZED VIEW per_second AS SELECT window_start, user_id % 3 AS k, count(*) AS n, \
     sum(amount) AS total FROM TUMBLE(events, ts, INTERVAL '1' SECOND) GROUP BY window_start, user_id % 3",
];
const REQUESTS: usize = 240;
const PER_REQUEST: usize = 25;

/// Request `i`'s body: records in event-time order across requests.
fn request_body(i: usize) -> String {
    (0..PER_REQUEST)
        .map(|j| {
            let id = i * PER_REQUEST + j;
            format!(
                "{{\"id\":{id},\"user_id\":{},\"amount\":{},\"ts\":{}}}\n",
                id % 17,
                (id * 31) % 1000,
                1_700_000_000_000u64 + id as u64 * 20
            )
        })
        .collect()
}

/// Send every request in order, each with its idempotency key, retrying until it is
/// answered 200; `url` follows the server across restarts. After a failure the client
/// also sends the previous request again, as one unsure whether its last answer was
/// lost would: the server must recognise it. Returns (retries, duplicates answered).
async fn send_all(
    url: std::sync::Arc<tokio::sync::Mutex<String>>,
    pace: Duration,
) -> Result<(usize, usize)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let (mut retries, mut duplicates) = (0, 0);
    let mut unsure = false;
    let mut i = 0;
    while i < REQUESTS {
        tokio::time::sleep(pace).await;
        let n = if unsure && i > 0 { i - 1 } else { i };
        let base = url.lock().await.clone();
        let sent = client
            .post(format!("{base}/api/v1/sources/events/records"))
            .header("Idempotency-Key", format!("request-{n}"))
            .body(request_body(n))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 200 => {
                let answer: Value = r.json().await?;
                if answer["duplicate"] == true {
                    duplicates += 1;
                }
                if n == i {
                    i += 1;
                }
                unsure = false;
            }
            _ => {
                retries += 1;
                unsure = true;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Ok((retries, duplicates))
}

async fn http_view_rows(weir: &Weir) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for view in ["per_user", "per_second"] {
        out.push(rows(weir, view).await?);
    }
    Ok(out)
}

/// The views' rows once they hold every record (and, for the reference run, stopped
/// changing), or once they equal `expected`; on timeout the difference is shown.
async fn settled_rows(
    weir: &Weir,
    expected: Option<&Vec<Vec<String>>>,
) -> Result<Vec<Vec<String>>> {
    let total = (REQUESTS * PER_REQUEST) as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut previous = Vec::new();
    loop {
        let now = http_view_rows(weir).await?;
        let counted: i64 = weir.get("/api/v1/views/per_user").await?["rows"]
            .as_array()
            .map(|r| r.iter().filter_map(|row| row[1].as_i64()).sum())
            .unwrap_or(0);
        let done = match expected {
            Some(e) => now == *e,
            None => counted == total && now == previous,
        };
        if done {
            return Ok(now);
        }
        if std::time::Instant::now() > deadline {
            let log =
                std::fs::read_to_string(weir.data_dir.path().join("weir.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            if let Some(e) = expected {
                assert_eq!(
                    now, *e,
                    "{counted} of {total} records counted; log tail (newest first): {tail:#?}"
                );
            }
            anyhow::bail!("the views did not settle: {counted} of {total} records counted");
        }
        previous = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn http_ingest_with_retries_survives_kill_9_exactly() -> Result<()> {
    let reference = start().await?;
    for sql in HTTP {
        reference.exec(sql).await?;
    }
    let url = std::sync::Arc::new(tokio::sync::Mutex::new(reference.url.clone()));
    send_all(url, Duration::ZERO).await?;
    let expected = settled_rows(&reference, None).await?;
    ensure!(expected[1].len() > 10, "closed windows: {:?}", expected[1]);
    drop(reference);

    let mut moments = Moments::new();
    let mut weir = start().await?;
    for sql in HTTP {
        weir.exec(sql).await?;
    }
    let url = std::sync::Arc::new(tokio::sync::Mutex::new(weir.url.clone()));
    // Paced so that the kills land while requests are in flight.
    let client = tokio::spawn(send_all(url.clone(), Duration::from_millis(25)));
    for _ in 0..5 {
        tokio::time::sleep(moments.next(200, 1_200)).await;
        weir = restart(weir).await?;
        *url.lock().await = weir.url.clone();
    }
    let (retries, duplicates) = client.await??;
    ensure!(retries > 0, "no request was in flight during a kill");
    ensure!(duplicates > 0, "no request was sent twice");
    settled_rows(&weir, Some(&expected)).await?;
    Ok(())
}

#[tokio::test]
async fn a_retried_request_with_the_same_key_counts_once() -> Result<()> {
    let weir = start().await?;
    for sql in HTTP {
        weir.exec(sql).await?;
    }
    let post = |key: &'static str| {
        weir.client
            .post(format!("{}/api/v1/sources/events/records", weir.url))
            .header("Idempotency-Key", key)
            .body(request_body(0))
            .send()
    };
    let first: Value = post("k-1").await?.json().await?;
    assert_eq!(first["accepted"], PER_REQUEST);
    assert!(first.get("duplicate").is_none(), "{first}");
    let again: Value = post("k-1").await?.json().await?;
    assert_eq!(again["accepted"], PER_REQUEST);
    assert_eq!(again["duplicate"], true, "{again}");
    // The key is remembered across a crash: it is in the write-ahead log.
    let weir = restart(weir).await?;
    let after: Value = weir
        .client
        .post(format!("{}/api/v1/sources/events/records", weir.url))
        .header("Idempotency-Key", "k-1")
        .body(request_body(0))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(after["duplicate"], true, "{after}");
    // The log is replayed before the server answers: every logged record is in, once.
    let status = weir.get("/api/v1/sources/events").await?;
    assert_eq!(status["records_in"], PER_REQUEST, "{status}");
    let counted = weir
        .wait_for(
            "the replayed records to be counted",
            Duration::from_secs(10),
            || async {
                let rows = weir.get("/api/v1/views/per_user").await?["rows"].clone();
                let n: i64 = rows
                    .as_array()
                    .map(|r| r.iter().filter_map(|row| row[1].as_i64()).sum())
                    .unwrap_or(0);
                Ok((n >= PER_REQUEST as i64).then_some(n))
            },
        )
        .await?;
    assert_eq!(counted, PER_REQUEST as i64, "counted once, replayed once");
    Ok(())
}

/// Readers that must never see a row a crash takes back ask for committed rows: they
/// see only what a written checkpoint holds.
#[tokio::test]
async fn committed_readers_see_only_checkpointed_rows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    // Checkpoints only when asked, so the test decides when rows become committed.
    std::fs::write(&config, "[runtime.checkpoints]\ninterval = '1h'\n")?;
    let config = config.to_string_lossy().to_string();
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    weir.exec("CREATE SOURCE msgs (id BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW ids AS SELECT id FROM msgs")
        .await?;
    let mut committed_stream = weir
        .client
        .get(format!(
            "{}/api/v1/views/ids/stream?consistency=committed",
            weir.url
        ))
        .send()
        .await?;
    assert_eq!(committed_stream.status(), 200);
    let ids = |body: Value| -> Vec<i64> {
        let mut v: Vec<i64> = body["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r[0].as_i64())
            .collect();
        v.sort_unstable();
        v
    };

    // Each CREATE is followed by a checkpoint (in the background): wait for both.
    weir.wait_for(
        "the checkpoints after the DDL",
        Duration::from_secs(10),
        || async {
            let s = weir.get("/api/v1/checkpoints").await?;
            Ok((s["checkpoints"].as_array().map_or(0, Vec::len) >= 2).then_some(()))
        },
    )
    .await?;
    weir.post_records("msgs", "{\"id\":1}\n{\"id\":2}".into())
        .await?;
    weir.wait_for("live rows", Duration::from_secs(10), || async {
        Ok((ids(weir.get("/api/v1/views/ids").await?) == vec![1, 2]).then_some(()))
    })
    .await?;
    assert!(
        ids(weir.get("/api/v1/views/ids?consistency=committed").await?).is_empty(),
        "no checkpoint holds the rows yet"
    );
    let taken = weir.checkpoint_now().await?;
    let epoch = taken["epoch"].as_u64().expect("an epoch");
    assert_eq!(
        ids(weir.get("/api/v1/views/ids?consistency=committed").await?),
        vec![1, 2]
    );
    let mut seen = String::new();
    while !seen.contains("event: rows") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(10), committed_stream.chunk()).await??;
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap_or_default()));
    }
    assert!(seen.contains(&format!("id: {epoch}")), "{seen}");

    // Rows after the checkpoint are live, not committed; a crash replays them from the
    // write-ahead log, and committed readers still see only the checkpoint's rows.
    weir.post_records("msgs", "{\"id\":3}".into()).await?;
    weir.wait_for("the third row", Duration::from_secs(10), || async {
        Ok((ids(weir.get("/api/v1/views/ids").await?).len() == 3).then_some(()))
    })
    .await?;
    let weir = weir.restart(&["--config", &config]).await?;
    weir.wait_for("the replayed row", Duration::from_secs(10), || async {
        Ok((ids(weir.get("/api/v1/views/ids").await?) == vec![1, 2, 3]).then_some(()))
    })
    .await?;
    assert_eq!(
        ids(weir.get("/api/v1/views/ids?consistency=committed").await?),
        vec![1, 2]
    );
    let status = weir.get("/api/v1/checkpoints").await?;
    assert_eq!(status["restored_from"], epoch, "{status}");
    Ok(())
}

/// Records counted by the per_user view.
async fn counted(weir: &Weir) -> Result<i64> {
    Ok(weir.get("/api/v1/views/per_user").await?["rows"]
        .as_array()
        .map(|r| r.iter().filter_map(|row| row[1].as_i64()).sum())
        .unwrap_or(0))
}

/// A small tmpfs mounted over a directory, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// None when this process may not mount (not root): the test says so and skips.
    fn mount(path: &std::path::Path, size: &str) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(path.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Post requests `next`, `next + 1`, ... until one is refused with 503 (the data dir is
/// full); `next` ends at the refused one. Returns the refusal.
async fn post_until_refused(weir: &Weir, next: &mut usize) -> Result<Value> {
    for _ in 0..200 {
        let (status, body) = weir.post_records("events", request_body(*next)).await?;
        match status {
            200 => *next += 1,
            503 => return Ok(body),
            _ => anyhow::bail!("answered {status}: {body}"),
        }
    }
    anyhow::bail!("200 requests were accepted on a full disk")
}

/// Run `weir serve` on `data_dir` where it is expected to refuse to start: whether it
/// started (exited successfully) and what it said on stderr.
async fn try_start(data_dir: &std::path::Path, extra_args: &[&str]) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(crate::support::weir_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra_args)
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Fill the disk under `dir`; returns the filler to remove.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]);
    filler
}

#[tokio::test]
async fn a_full_data_dir_refuses_writes_keeps_reads_and_the_last_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let Some(_disk) = SmallDisk::mount(&path, "16m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the full-disk test did not run"
        );
        return Ok(());
    };
    let config = std::env::temp_dir().join(format!("weir-full-{}.toml", std::process::id()));
    std::fs::write(&config, "[runtime.checkpoints]\ninterval = '200ms'\n")?;
    let config = config.to_string_lossy().to_string();
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    for sql in HTTP {
        weir.exec(sql).await?;
    }
    let (status, _) = weir.post_records("events", request_body(0)).await?;
    assert_eq!(status, 200);
    weir.wait_for(
        "a checkpoint with the first rows",
        Duration::from_secs(10),
        || async {
            let c = weir
                .get("/api/v1/views/per_user?consistency=committed")
                .await?;
            Ok((c["rows"].as_array().is_some_and(|r| !r.is_empty())).then_some(()))
        },
    )
    .await?;

    // The disk fills up: requests are refused once the log's last block is full.
    let mut next = 1;
    let filler = fill(&path);
    let body = post_until_refused(&weir, &mut next).await?;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("write-ahead log"),
        "{body}"
    );
    let acknowledged = (next * PER_REQUEST) as i64;
    weir.wait_for(
        "reads to show every acknowledged record",
        Duration::from_secs(10),
        || async { Ok((counted(&weir).await? == acknowledged).then_some(())) },
    )
    .await?;
    let health = weir
        .client
        .get(format!("{}/healthz", weir.url))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    let failing = weir
        .wait_for("a failed checkpoint", Duration::from_secs(10), || async {
            let s = weir.get("/api/v1/checkpoints").await?;
            Ok(s["last_error"].is_string().then_some(s))
        })
        .await?;
    assert!(
        failing["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("intact"),
        "{failing}"
    );
    // The console's health page lists it among its warnings.
    let health = weir.get("/api/v1/health").await?;
    assert!(
        health["warnings"]
            .to_string()
            .contains("checkpoints are failing"),
        "{health}"
    );
    let metrics = weir.metrics().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_checkpoint_failures_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Space comes back: writes and checkpoints resume.
    std::fs::remove_file(&filler)?;
    let (status, body) = weir.post_records("events", request_body(next)).await?;
    assert_eq!(status, 200, "{body}");
    next += 1;
    weir.wait_for(
        "checkpoints to succeed again",
        Duration::from_secs(10),
        || async {
            let s = weir.get("/api/v1/checkpoints").await?;
            Ok(s["last_error"].is_null().then_some(()))
        },
    )
    .await?;

    // Full again, then a crash: a start on a full disk is refused with a clear error,
    // and once there is room the last good checkpoint and the log bring back every
    // acknowledged record.
    let filler = fill(&path);
    post_until_refused(&weir, &mut next).await?;
    let dir = weir.kill().await?;
    let (started, said) = try_start(dir.path(), &["--config", &config]).await?;
    assert!(!started, "weir started on a full data dir");
    assert!(said.contains("cannot use data dir"), "{said}");
    std::fs::remove_file(&filler)?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    let status = weir.get("/api/v1/checkpoints").await?;
    assert!(status["restored_from"].is_u64(), "{status}");
    weir.wait_for(
        "every acknowledged record",
        Duration::from_secs(10),
        || async { Ok((counted(&weir).await? == (next * PER_REQUEST) as i64).then_some(())) },
    )
    .await?;
    Ok(())
}

/// A data dir that has become read-only: weir says so at start and changes nothing.
#[tokio::test]
async fn a_read_only_data_dir_is_refused_at_start_untouched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let Some(_disk) = SmallDisk::mount(&path, "4m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the read-only test did not run"
        );
        return Ok(());
    };
    let weir = Weir::start_in(dir, &[]).await?;
    weir.exec("CREATE SOURCE msgs (id BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW ids AS SELECT id FROM msgs")
        .await?;
    let (status, _) = weir.post_records("msgs", "{\"id\":1}".into()).await?;
    assert_eq!(status, 200);
    let dir = weir.kill().await?;
    let before = std::fs::read(path.join("catalog.json"))?;
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&path)
        .status()?;
    ensure!(remounted.success(), "cannot remount read-only");
    let (started, said) = try_start(&path, &[]).await?;
    assert!(!started, "weir started on a read-only data dir");
    assert!(
        said.contains("cannot use data dir") && said.contains("Read-only"),
        "{said}"
    );
    assert_eq!(std::fs::read(path.join("catalog.json"))?, before);
    // Writable again: everything is back.
    std::process::Command::new("mount")
        .args(["-o", "remount,rw"])
        .arg(&path)
        .status()?;
    let weir = Weir::start_in(dir, &[]).await?;
    weir.wait_for("the logged row", Duration::from_secs(10), || async {
        let rows = weir.get("/api/v1/views/ids").await?["rows"].clone();
        Ok((rows == serde_json::json!([[1]])).then_some(()))
    })
    .await?;
    Ok(())
}

/// A file source's position is the byte offset it read up to: after a restart it reads
/// only what was appended to the file since.
#[tokio::test]
async fn a_file_source_resumes_at_its_byte_offset() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = dir.path().join("files");
    std::fs::create_dir(&files)?;
    let line = |i: usize| format!("{{\"id\":{i},\"user_id\":{},\"amount\":{i}}}\n", i % 7);
    let first: String = (0..20_000).map(line).collect();
    std::fs::write(files.join("events.jsonl"), &first)?;
    let weir = Weir::start_in(dir, &[]).await?;
    weir.exec(
        "CREATE SOURCE events (id BIGINT, user_id BIGINT, amount BIGINT) \
         WITH (connector = 'file', path = 'events.jsonl')",
    )
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW per_user AS SELECT user_id, count(*) AS n, sum(amount) AS total \
         FROM events GROUP BY user_id",
    )
    .await?;
    weir.wait_finished("events").await?;
    let taken = weir.checkpoint_now().await?;
    assert_eq!(
        taken["sources"][0]["position"]["offset"],
        first.len().to_string(),
        "{taken}"
    );
    let (code, body) = weir
        .sql("CREATE SOURCE outside (id BIGINT) WITH (connector = 'file', path = '../weir.log')")
        .await?;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("files dir"),
        "{body}"
    );

    let more: String = (20_000..20_010).map(line).collect();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(weir.data_dir.path().join("files/events.jsonl"))?;
    std::io::Write::write_all(&mut file, more.as_bytes())?;
    let weir = weir.restart(&[]).await?;
    weir.wait_finished("events").await?;
    let status = weir.get("/api/v1/sources/events").await?;
    assert_eq!(
        status["records_in"], 10,
        "only the appended lines are read: {status}"
    );
    let n = counted(&weir).await?;
    assert_eq!(n, 20_010, "every line counted once");
    Ok(())
}

/// A file source that cannot read its file (removed between CREATE SOURCE and the
/// first view, when the reader opens it) shows as failed and says why; the server
/// goes on.
#[tokio::test]
async fn a_file_source_that_cannot_read_its_file_fails_saying_why() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = dir.path().join("files");
    std::fs::create_dir(&files)?;
    std::fs::write(files.join("gone.jsonl"), "{\"id\":1}\n")?;
    std::fs::write(files.join("here.jsonl"), "{\"id\":2}\n")?;
    let weir = Weir::start_in(dir, &[]).await?;
    weir.exec("CREATE SOURCE gone (id BIGINT) WITH (connector = 'file', path = 'gone.jsonl')")
        .await?;
    std::fs::remove_file(weir.data_dir.path().join("files/gone.jsonl"))?;
    weir.exec("CREATE MATERIALIZED VIEW gone_ids AS SELECT id FROM gone")
        .await?;
    let status = weir
        .wait_source("gone", "failed", Duration::from_secs(30))
        .await?;
    let error = status["error"].as_str().unwrap_or("");
    assert!(
        error.contains("the file source stopped") && error.contains("No such file"),
        "{status}"
    );
    weir.exec("CREATE SOURCE here (id BIGINT) WITH (connector = 'file', path = 'here.jsonl')")
        .await?;
    weir.exec("CREATE MATERIALIZED VIEW here_ids AS SELECT id FROM here")
        .await?;
    weir.wait_finished("here").await?;
    let rows = weir.get("/api/v1/views/here_ids").await?["rows"].clone();
    assert_eq!(rows, serde_json::json!([[2]]));
    assert_eq!(
        weir.get("/api/v1/sources/here").await?.get("error"),
        None,
        "a source that did not fail says no error"
    );
    Ok(())
}

/// What EXPLAIN VIEW says of a view, as text.
async fn explain(weir: &Weir, view: &str) -> Result<String> {
    Ok(weir.exec(&format!("EXPLAIN VIEW {view}")).await?["rows"].to_string())
}

/// A view's rows from the API, each row as text, sorted.
async fn sorted_rows(weir: &Weir, view: &str) -> Result<Vec<String>> {
    let status = weir.get(&format!("/api/v1/views/{view}")).await?;
    let mut rows: Vec<String> = status["rows"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no rows: {status}"))?
        .iter()
        .map(|r| r.to_string())
        .collect();
    rows.sort();
    Ok(rows)
}

/// Keyed operators run in parallel instances (`runtime.parallelism` by default, or a
/// view's own `parallelism`), giving the rows a serial view gives; a checkpoint taken
/// at one parallelism restores at another with every record counted once.
#[tokio::test]
async fn a_checkpoint_taken_in_parallel_restores_at_another_parallelism() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = dir.path().join("files");
    std::fs::create_dir(&files)?;
    let config = dir.path().join("weir.toml");
    let parallelism = |n: usize| std::fs::write(&config, format!("[runtime]\nparallelism = {n}\n"));
    let config_arg = config.to_string_lossy().to_string();
    let line = |i: i64| {
        format!(
            "{{\"id\":{i},\"user_id\":{},\"amount\":{i},\"ts\":{}}}\n",
            i % 1013,
            1_700_000_000_000 + i * 10
        )
    };
    let (first, total) = (30_000, 40_000);
    // Empty until every view exists: a source starts reading when its first view is
    // created, so a view created after it would miss rows that its twin reads.
    std::fs::write(files.join("events.jsonl"), "")?;
    parallelism(3)?;
    let weir = Weir::start_in(dir, &["--config", &config_arg]).await?;
    weir.exec(
        "CREATE SOURCE events (id BIGINT, user_id BIGINT, amount BIGINT, ts TIMESTAMP, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'file', path = 'events.jsonl')",
    )
    .await?;
    let per_user =
        "SELECT user_id, count(*) AS n, sum(amount) AS total FROM events GROUP BY user_id";
    let windows = "SELECT window_start, user_id % 5 AS k, count(*) AS n, max(amount) AS top \
                   FROM TUMBLE(events, ts, INTERVAL '1' SECOND) GROUP BY window_start, user_id % 5";
    weir.exec(&format!("CREATE MATERIALIZED VIEW per_user AS {per_user}"))
        .await?;
    weir.exec(&format!(
        "CREATE MATERIALIZED VIEW per_user_serial WITH (parallelism = 1) AS {per_user}"
    ))
    .await?;
    weir.exec(&format!("CREATE MATERIALIZED VIEW windows AS {windows}"))
        .await?;
    weir.exec(&format!(
        "CREATE MATERIALIZED VIEW windows_serial WITH (parallelism = 1) AS {windows}"
    ))
    .await?;
    // Sessions kept per key in keyed instances: each user's rows are 10.13 s apart, so
    // a gap of 12 s chains them into one session per user and 8 s gives one per row.
    let sessions = |gap: u32| {
        format!(
            "SELECT window_start, window_end, user_id, count(*) AS n, sum(amount) AS total \
             FROM SESSION(events, ts, INTERVAL '{gap}' SECOND) GROUP BY window_start, window_end, user_id"
        )
    };
    for (name, gap) in [("long_sessions", 12), ("short_sessions", 8)] {
        weir.exec(&format!(
            "CREATE MATERIALIZED VIEW {name} AS {}",
            sessions(gap)
        ))
        .await?;
        weir.exec(&format!(
            "CREATE MATERIALIZED VIEW {name}_serial WITH (parallelism = 1) AS {}",
            sessions(gap)
        ))
        .await?;
    }
    // A stateless view runs a batch in slices side by side, and keeps their order.
    let kept = "SELECT id, amount * 2 AS doubled FROM events WHERE amount % 7 <> 0";
    weir.exec(&format!("CREATE MATERIALIZED VIEW kept AS {kept}"))
        .await?;
    weir.exec(&format!(
        "CREATE MATERIALIZED VIEW kept_serial WITH (parallelism = 1) AS {kept}"
    ))
    .await?;
    // Joins of two sources (the same file read twice) in keyed instances: each user's
    // rows are 10.13 s apart, so a row meets itself and, within 11 s, the user's next.
    weir.exec(
        "CREATE SOURCE others (id BIGINT, user_id BIGINT, amount BIGINT, ts TIMESTAMP, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'file', path = 'events.jsonl')",
    )
    .await?;
    let pairs = "SELECT a.id, b.id AS other FROM events AS a JOIN others AS b \
                 ON a.user_id = b.user_id AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '11' SECOND";
    let same_window = "SELECT a.id, a.window_start FROM TUMBLE(events, ts, INTERVAL '1' SECOND) AS a \
                       JOIN TUMBLE(others, ts, INTERVAL '1' SECOND) AS b \
                       ON a.window_start = b.window_start AND a.user_id = b.user_id";
    for (name, sql) in [("pairs", pairs), ("same_window", same_window)] {
        weir.exec(&format!("CREATE MATERIALIZED VIEW {name} AS {sql}"))
            .await?;
        weir.exec(&format!(
            "CREATE MATERIALIZED VIEW {name}_serial WITH (parallelism = 1) AS {sql}"
        ))
        .await?;
        let text = explain(&weir, name).await?;
        assert!(
            text.contains("keyed by the join's equality key, in 3 parallel instances"),
            "{name}: {text}"
        );
        let text = explain(&weir, &format!("{name}_serial")).await?;
        assert!(!text.contains("parallel instances"), "{name}: {text}");
    }
    for view in ["per_user", "windows"] {
        let text = explain(&weir, view).await?;
        assert!(text.contains("in 3 parallel instances"), "{view}: {text}");
    }
    let text = explain(&weir, "long_sessions").await?;
    assert!(
        text.contains("sessions kept in 3 parallel instances"),
        "{text}"
    );
    let text = explain(&weir, "long_sessions_serial").await?;
    assert!(!text.contains("parallel instances"), "{text}");
    let text = explain(&weir, "kept").await?;
    assert!(text.contains("in up to 3 slices side by side"), "{text}");
    let text = explain(&weir, "kept_serial").await?;
    assert!(!text.contains("slices"), "{text}");
    let text = explain(&weir, "per_user_serial").await?;
    assert!(!text.contains("parallel instances"), "{text}");
    let (code, body) = weir
        .sql(&format!(
            "CREATE MATERIALIZED VIEW bad WITH (parallelism = 0) AS {per_user}"
        ))
        .await?;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("parallelism must be"),
        "{body}"
    );
    // The first records, read after a restart without a checkpoint (which would hold
    // the empty file's final watermark): a restart creates every view again before its
    // sources start.
    let dir = weir.kill().await?;
    let _ = std::fs::remove_dir_all(dir.path().join("checkpoints"));
    std::fs::write(
        dir.path().join("files/events.jsonl"),
        (0..first).map(line).collect::<String>(),
    )?;
    let weir = Weir::start_in(dir, &["--config", &config_arg]).await?;
    weir.wait_finished("events").await?;
    assert_eq!(
        sorted_rows(&weir, "per_user").await?,
        sorted_rows(&weir, "per_user_serial").await?
    );
    let in_order = weir.get("/api/v1/views/kept").await?["rows"].clone();
    let kept_rows = in_order.as_array().map_or(0, Vec::len);
    assert_eq!(kept_rows, (0..first).filter(|i| i % 7 != 0).count());
    assert_eq!(
        in_order,
        weir.get("/api/v1/views/kept_serial").await?["rows"],
        "the rows in the order they came"
    );
    for (name, rows) in [("long_sessions", 1013), ("short_sessions", first as usize)] {
        let parallel = sorted_rows(&weir, name).await?;
        assert_eq!(parallel.len(), rows, "{name}");
        assert_eq!(
            parallel,
            sorted_rows(&weir, &format!("{name}_serial")).await?,
            "{name}"
        );
    }
    weir.wait_finished("others").await?;
    // Joins' restore at another parallelism with rows held: the sql join tests and
    // the golden cases (here the final watermark has freed every row at the end).
    let n = first as usize;
    for (name, rows) in [("pairs", 2 * n - 1013), ("same_window", n)] {
        let parallel = sorted_rows(&weir, name).await?;
        assert_eq!(parallel.len(), rows, "{name}");
        assert_eq!(
            parallel,
            sorted_rows(&weir, &format!("{name}_serial")).await?,
            "{name}"
        );
    }
    let windowed = sorted_rows(&weir, "windows").await?;
    assert_eq!(windowed, sorted_rows(&weir, "windows_serial").await?);
    assert_eq!(
        windowed.len(),
        300 * 5,
        "30 s of one-second windows, 5 keys each"
    );
    weir.checkpoint_now().await?;

    // More records, and a restart at parallelism 1: the 3 instances' groups are routed
    // into one.
    let more: String = (first..total).map(line).collect();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(weir.data_dir.path().join("files/events.jsonl"))?;
    std::io::Write::write_all(&mut file, more.as_bytes())?;
    parallelism(1)?;
    let weir = weir.restart(&["--config", &config_arg]).await?;
    weir.wait_finished("events").await?;
    let status = weir.get("/api/v1/sources/events").await?;
    assert_eq!(
        status["records_in"],
        total - first,
        "the groups before come from the checkpoint: {status}"
    );
    assert!(
        !explain(&weir, "per_user")
            .await?
            .contains("parallel instances")
    );
    let mut expected = std::collections::BTreeMap::<i64, (i64, i64)>::new();
    for i in 0..total {
        let e = expected.entry(i % 1013).or_default();
        e.0 += 1;
        e.1 += i;
    }
    let mut expected: Vec<String> = expected
        .into_iter()
        .map(|(user, (n, sum))| serde_json::json!([user, n, sum]).to_string())
        .collect();
    expected.sort();
    assert_eq!(sorted_rows(&weir, "per_user").await?, expected);
    assert_eq!(sorted_rows(&weir, "per_user_serial").await?, expected);
    Ok(())
}

/// Open sessions in a checkpoint taken in 3 instances restore into 2, through the
/// binary, and end as they would have: the view equals its serial twin's and counts
/// every click once.
#[tokio::test]
async fn open_sessions_restore_at_another_parallelism() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    let parallelism = |n: usize| std::fs::write(&config, format!("[runtime]\nparallelism = {n}\n"));
    let config_arg = config.to_string_lossy().to_string();
    parallelism(3)?;
    let weir = Weir::start_in(dir, &["--config", &config_arg]).await?;
    weir.exec(
        "CREATE SOURCE clicks (user_id BIGINT, ts TIMESTAMP, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'http')",
    )
    .await?;
    let sessions = "SELECT window_start, window_end, user_id, count(*) AS n \
                    FROM SESSION(clicks, ts, INTERVAL '2' SECOND) GROUP BY window_start, window_end, user_id";
    weir.exec(&format!("CREATE MATERIALIZED VIEW sessions AS {sessions}"))
        .await?;
    weir.exec(&format!(
        "CREATE MATERIALIZED VIEW sessions_serial WITH (parallelism = 1) AS {sessions}"
    ))
    .await?;
    let text = explain(&weir, "sessions").await?;
    assert!(
        text.contains("sessions kept in 3 parallel instances"),
        "{text}"
    );
    // 50 users, each clicking every 1.85 s (closer than the gap): one session per user
    // per phase, open until the next phase's clicks move the watermark past it.
    const BASE: i64 = 1_700_000_000_000;
    let clicks = |phase: i64| -> String {
        (0..2_000i64)
            .map(|i| {
                format!(
                    "{{\"user_id\":{},\"ts\":{}}}\n",
                    i % 50,
                    BASE + phase * 200_000 + i * 37
                )
            })
            .collect()
    };
    for chunk in clicks(0).lines().collect::<Vec<_>>().chunks(500) {
        weir.post_batch("clicks", chunk.join("\n")).await?;
    }
    assert!(
        sorted_rows(&weir, "sessions").await?.is_empty(),
        "every session is still open"
    );
    weir.checkpoint_now().await?;

    parallelism(2)?;
    let weir = weir.restart(&["--config", &config_arg]).await?;
    let text = explain(&weir, "sessions").await?;
    assert!(
        text.contains("sessions kept in 2 parallel instances"),
        "{text}"
    );
    for chunk in clicks(1).lines().collect::<Vec<_>>().chunks(500) {
        weir.post_batch("clicks", chunk.join("\n")).await?;
    }
    // A last click an hour later ends every session before it.
    weir.post_batch(
        "clicks",
        format!("{{\"user_id\":999,\"ts\":{}}}", BASE + 3_600_000),
    )
    .await?;
    // Both views: each publishes its rows on its own, so one may lag the other briefly.
    let (rows, serial) = weir
        .wait_for("both phases' sessions", Duration::from_secs(30), || async {
            let rows = sorted_rows(&weir, "sessions").await?;
            let serial = sorted_rows(&weir, "sessions_serial").await?;
            Ok((rows.len() == 100 && serial.len() == 100).then_some((rows, serial)))
        })
        .await?;
    assert_eq!(rows, serial);
    let counted: i64 = rows
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).map_or(0, |v| v[3].as_i64().unwrap_or(0))
        })
        .sum();
    assert_eq!(counted, 4_000, "every click in one session: {rows:?}");
    Ok(())
}
