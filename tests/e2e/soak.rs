//! The soak: the real binary under many readers and writers at once, killed with -9 now
//! and then, must lose nothing, count nothing twice, keep answering, and give back what
//! it took. Run by `scripts/soak.sh` (ten minutes by default; the test command runs one
//! minute of it); settings come from the environment:
//!
//! - `WEIR_SOAK_SECS` (60): how long the load runs;
//! - `WEIR_SOAK_KILL_EVERY_SECS` (25): a `kill -9` and restart this often;
//! - `WEIR_SOAK_SUBSCRIBERS` (1000): SSE readers across three views, one in twenty slow;
//! - `WEIR_SOAK_WRITERS` (100): ingest clients, each retrying every request with its
//!   `Idempotency-Key` until it is acknowledged;
//! - `WEIR_SOAK_REPORT`: a file for the figures (JSON), also printed.
//!
//! Views are created and dropped and a plugin uploaded every few seconds meanwhile.
//! Afterwards every acknowledged record must be counted exactly once in every view, the
//! server's memory must be back at its plateau and its file descriptors back to what it
//! had before the readers came, and `/healthz` must have answered every probe outside
//! the restarts (its p99 is reported, not asserted: machines are noisy).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::sync::watch;

use crate::support::{Weir, plugin_wasm};

const RECORDS_PER_REQUEST: i64 = 20;
/// Views the readers follow; all three count every record.
const VIEWS: [&str; 3] = ["halves", "per_writer", "recent"];

struct Settings {
    duration: Duration,
    kill_every: Duration,
    subscribers: usize,
    writers: usize,
    report: Option<String>,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            duration: Duration::from_secs(number("WEIR_SOAK_SECS", 60)),
            kill_every: Duration::from_secs(number("WEIR_SOAK_KILL_EVERY_SECS", 25)),
            subscribers: number("WEIR_SOAK_SUBSCRIBERS", 1000) as usize,
            writers: number("WEIR_SOAK_WRITERS", 100) as usize,
            report: std::env::var("WEIR_SOAK_REPORT").ok(),
        }
    }
}

/// Where the server is now (None while it is down), and when it was down.
struct Server {
    url: watch::Sender<Option<String>>,
    /// (killed at, listening again at) for each restart.
    restarts: std::sync::Mutex<Vec<(Instant, Instant)>>,
    stop: AtomicBool,
}

impl Server {
    /// The server's URL, waiting while it restarts (a restart that takes over two
    /// minutes fails the soak).
    async fn url(&self) -> Result<String> {
        let mut rx = self.url.subscribe();
        let url = tokio::time::timeout(Duration::from_secs(120), rx.wait_for(Option::is_some))
            .await
            .context("the server was down for over two minutes")?
            .map(|u| u.clone());
        url.ok().flatten().context("the soak ended")
    }

    /// Whether `at` fell within a restart (or the second after it).
    fn restarting(&self, at: Instant) -> bool {
        self.url.borrow().is_none()
            || self
                .restarts
                .lock()
                .map(|r| {
                    r.iter().any(|(down, up)| {
                        at + Duration::from_secs(1) >= *down && at <= *up + Duration::from_secs(1)
                    })
                })
                .unwrap_or(true)
    }
}

#[derive(Default)]
struct Acked {
    /// Per writer: records acknowledged and the sum of their ids.
    per_writer: BTreeMap<i64, (i64, i64)>,
}

/// One writer: requests of `RECORDS_PER_REQUEST` records with ids of its own, each
/// retried with the same key until it is acknowledged.
async fn writer(server: Arc<Server>, w: i64, seed: u64) -> Result<(i64, i64, u64)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let (mut count, mut sum, mut retries) = (0i64, 0i64, 0u64);
    let mut rng = seed | 1;
    for k in 0.. {
        if server.stop.load(Ordering::Relaxed) {
            break;
        }
        let ids: Vec<i64> = (0..RECORDS_PER_REQUEST)
            .map(|j| w * 100_000_000 + k * RECORDS_PER_REQUEST + j)
            .collect();
        let body: String = ids
            .iter()
            .map(|id| format!("{{\"id\":{id},\"writer\":{w}}}\n"))
            .collect();
        let given_up = Instant::now() + Duration::from_secs(120);
        loop {
            anyhow::ensure!(
                Instant::now() < given_up,
                "writer {w}: request {k} was not acknowledged in two minutes of retries"
            );
            let url = server.url().await?;
            let answer = client
                .post(format!("{url}/api/v1/sources/events/records"))
                .header("Idempotency-Key", format!("w{w}-{k}"))
                .body(body.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == 200 => break,
                // Full (429), unavailable (5xx), or the source not running yet after a
                // restart (409): the same request again, with its key.
                Ok(r) if r.status() == 429 || r.status() == 409 || r.status().is_server_error() => {
                }
                Ok(r) => bail!(
                    "writer {w}: request {k} answered {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(_) => {}
            }
            retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        count += RECORDS_PER_REQUEST;
        sum += ids.iter().sum::<i64>();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(200 + rng % 400)).await;
    }
    Ok((count, sum, retries))
}

/// A reader that stops reading for `STALL` while a fast view changes hundreds of times,
/// then reads: the server must have let it go with `lagged`, and the stream must end.
/// Returns whether it was.
async fn stalled_reader(server: Arc<Server>) -> Result<bool> {
    let url = server.url().await?;
    let mut r = reqwest::get(format!("{url}/api/v1/views/ticks_seen/stream")).await?;
    tokio::time::sleep(STALL).await;
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(chunk)) = r.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    // Ended (not timed out), and the last event says it lagged.
    Ok(read.is_ok()
        && text
            .trim_end()
            .rsplit("\n\n")
            .next()
            .is_some_and(|e| e.starts_with("event: lagged")))
}

/// How long a stalled reader stops reading.
const STALL: Duration = Duration::from_secs(20);

/// Ticks into the fast source, a request every 10 ms or so, for the stalled readers.
async fn ticker(server: Arc<Server>) -> Result<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut sent = 0;
    while !server.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let url = server.url().await?;
        let answer = client
            .post(format!("{url}/api/v1/sources/ticks/records"))
            // 32 KiB each, so that a stalled reader's socket buffers fill within seconds
            // and the view's change buffer (256) overflows well within its stall.
            .body(format!(
                "{{\"n\":{sent},\"pad\":\"{}\"}}",
                "x".repeat(32 << 10)
            ))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == 200) {
            sent += 1;
        }
    }
    Ok(sent)
}

#[derive(Default)]
struct Reading {
    events: AtomicU64,
    lagged: AtomicU64,
    connects: AtomicU64,
}

/// One SSE reader of `view`, reconnecting when its stream ends (after `lagged`, or a
/// restart); a slow one waits between reads.
async fn subscriber(
    server: Arc<Server>,
    client: reqwest::Client,
    view: &'static str,
    slow: bool,
    reading: Arc<Reading>,
) {
    while !server.stop.load(Ordering::Relaxed) {
        let Ok(url) = server.url().await else { return };
        let response = client
            .get(format!("{url}/api/v1/views/{view}/stream"))
            .send()
            .await;
        if let Ok(mut r) = response
            && r.status() == 200
        {
            reading.connects.fetch_add(1, Ordering::Relaxed);
            while let Ok(Some(chunk)) = r.chunk().await {
                let text = String::from_utf8_lossy(&chunk);
                let rows = text.matches("event: rows").count() as u64;
                reading.events.fetch_add(rows, Ordering::Relaxed);
                if text.contains("event: lagged") {
                    reading.lagged.fetch_add(1, Ordering::Relaxed);
                }
                if server.stop.load(Ordering::Relaxed) {
                    return;
                }
                if slow {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// DDL and plugin uploads while everything else runs: every answer given while the
/// server is up must be a success. How many statements and uploads succeeded.
async fn ddl(server: Arc<Server>) -> Result<[u64; 2]> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let wasm = plugin_wasm("weir_plugin_passthrough");
    let mut done = [0; 2];
    for n in 0u64.. {
        if server.stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let url = server.url().await?;
        let steps = [
            (
                format!("{url}/api/v1/sql"),
                json!({"sql": format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS ddl_{n} AS \
                     SELECT writer, count(*) AS n FROM events GROUP BY writer"
                )})
                .to_string()
                .into_bytes(),
            ),
            (
                format!("{url}/api/v1/sql"),
                json!({"sql": format!("DROP VIEW IF EXISTS ddl_{}", n.saturating_sub(1))})
                    .to_string()
                    .into_bytes(),
            ),
            (
                format!("{url}/api/v1/plugins?name=soak_passthrough"),
                wasm.clone(),
            ),
        ];
        for (step, (target, body)) in steps.into_iter().enumerate() {
            let at = Instant::now();
            let sent = client.post(&target).body(body).send().await;
            match sent {
                Ok(r) if r.status().is_success() => done[usize::from(step == 2)] += 1,
                Ok(_) | Err(_) if server.restarting(at) => {}
                Ok(r) => bail!(
                    "{target} answered {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) => bail!("{target}: {e}"),
            }
        }
    }
    Ok(done)
}

/// `/healthz` ten times a second: latencies, and probes that failed outside restarts.
async fn prober(server: Arc<Server>) -> (Vec<Duration>, Vec<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (mut latencies, mut failures) = (Vec::new(), Vec::new());
    while !server.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(url) = server.url.borrow().clone() else {
            continue;
        };
        let at = Instant::now();
        match client.get(format!("{url}/healthz")).send().await {
            Ok(r) if r.status() == 200 => latencies.push(at.elapsed()),
            _ if server.restarting(at) => {}
            Ok(r) => failures.push(format!("healthz answered {}", r.status())),
            Err(e) => failures.push(format!("healthz: {e}")),
        }
    }
    (latencies, failures)
}

/// Resident memory (bytes) and open file descriptors of process `pid`.
fn usage(pid: Option<u32>) -> (u64, usize) {
    let Some(pid) = pid else { return (0, 0) };
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

async fn setup(weir: &Weir) -> Result<()> {
    for sql in [
        "CREATE SOURCE events (id BIGINT NOT NULL, writer BIGINT NOT NULL) \
         WITH (connector = 'http', max_delay = '200ms')",
        "CREATE MATERIALIZED VIEW halves AS \
         SELECT writer % 2 AS half, count(*) AS n, sum(id) AS ids FROM events GROUP BY writer % 2",
        "CREATE MATERIALIZED VIEW per_writer AS \
         SELECT writer, count(*) AS n, sum(id) AS ids FROM events GROUP BY writer",
        "CREATE MATERIALIZED VIEW recent WITH (max_rows = 'unbounded') AS \
         SELECT id, writer FROM events WHERE id % 97 = 0",
        "CREATE SOURCE ticks (n BIGINT, pad VARCHAR) WITH (connector = 'http', max_delay = '5ms')",
        "CREATE MATERIALIZED VIEW ticks_seen WITH (max_rows = 10) AS SELECT n, pad FROM ticks",
    ] {
        weir.exec(sql).await?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "the soak: run by scripts/soak.sh (the test command runs its one-minute version)"]
async fn soak_many_readers_and_writers_and_kill_9_lose_nothing() -> Result<()> {
    let settings = Settings::from_env();
    // Bounded: everything below has its own limits, and this is the last resort.
    let limit = settings.duration + Duration::from_secs(600);
    tokio::time::timeout(limit, soak(settings))
        .await
        .context("the soak did not finish within ten minutes of its end")?
}

async fn soak(settings: Settings) -> Result<()> {
    let started = Instant::now();
    let mut weir = Weir::start(&[]).await?;
    setup(&weir).await?;
    let mut fds_baseline = usage(weir.pid()).1;
    let server = Arc::new(Server {
        url: watch::channel(Some(weir.url.clone())).0,
        restarts: std::sync::Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    // kill -9 at these times; the last life is left at least half a period.
    let kills: Vec<Duration> = (1..)
        .map(|k| settings.kill_every * k)
        .take_while(|at| *at + settings.kill_every / 2 < settings.duration)
        .collect();

    let writers: Vec<_> = (0..settings.writers as i64)
        .map(|w| tokio::spawn(writer(server.clone(), w, 0x9e37_79b9 ^ (w as u64 * 7919))))
        .collect();
    let ticker = tokio::spawn(ticker(server.clone()));
    let reading = Arc::new(Reading::default());
    let readers_client = reqwest::Client::new();
    let mut subscribers = Vec::new();
    for i in 0..settings.subscribers {
        // Open the connections over a few seconds, not all in one instant.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        subscribers.push(tokio::spawn(subscriber(
            server.clone(),
            readers_client.clone(),
            VIEWS[i % VIEWS.len()],
            i % 20 == 0,
            reading.clone(),
        )));
    }
    let ddl = tokio::spawn(ddl(server.clone()));
    let prober = tokio::spawn(prober(server.clone()));

    // Sample memory each second; kill -9 and restart on schedule; stall five readers
    // in the last life.
    let mut lives: Vec<Vec<u64>> = vec![Vec::new()];
    let mut stalled = Vec::new();
    let mut next_kill = kills.iter();
    let mut kill_at = next_kill.next();
    while started.elapsed() < settings.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(life) = lives.last_mut() {
            life.push(usage(weir.pid()).0);
        }
        if kill_at.is_some_and(|at| started.elapsed() >= *at) {
            let down = Instant::now();
            server.url.send_replace(None);
            let data_dir = weir.kill().await?;
            weir = Weir::start_in(data_dir, &[]).await?;
            // Before any reader or writer is back.
            fds_baseline = usage(weir.pid()).1;
            if let Ok(mut r) = server.restarts.lock() {
                r.push((down, Instant::now()));
            }
            server.url.send_replace(Some(weir.url.clone()));
            lives.push(Vec::new());
            kill_at = next_kill.next();
        }
        if kill_at.is_none()
            && stalled.is_empty()
            && started.elapsed() + STALL + Duration::from_secs(5) < settings.duration
        {
            stalled = (0..5)
                .map(|_| tokio::spawn(stalled_reader(server.clone())))
                .collect();
        }
    }

    // Stop: writers finish the request they are on (acknowledged, however many tries).
    server.stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::default();
    let mut retries = 0;
    for (w, handle) in writers.into_iter().enumerate() {
        let (count, sum, tries) = handle.await??;
        if count > 0 {
            acked.per_writer.insert(w as i64, (count, sum));
        }
        retries += tries;
    }
    let ticks = ticker.await??;
    let ddl_done = ddl.await??;
    let (mut latencies, failures) = prober.await?;
    let mut let_go = 0;
    for s in stalled {
        let_go += usize::from(s.await??);
    }
    for s in &subscribers {
        s.abort();
    }
    for s in subscribers {
        let _ = s.await;
    }
    // Its pool would keep idle connections to the server open for 90 s.
    drop(readers_client);
    let total: (i64, i64) = acked
        .per_writer
        .values()
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    anyhow::ensure!(total.0 > 0, "no record was acknowledged");

    // Every acknowledged record, exactly once, in every view.
    let deadline = Instant::now() + Duration::from_secs(120);
    let halves = |rows: &serde_json::Value| {
        let mut h: Vec<(i64, i64, i64)> = rows
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let n = |i: usize| r[i].as_i64().unwrap_or(-1);
                (n(0), n(1), n(2))
            })
            .collect();
        h.sort_unstable();
        h
    };
    let expected_halves: Vec<(i64, i64, i64)> = (0..2)
        .map(|half| {
            acked
                .per_writer
                .iter()
                .filter(|(w, _)| *w % 2 == half)
                .fold((half, 0, 0), |a, (_, c)| (half, a.1 + c.0, a.2 + c.1))
        })
        .filter(|h| h.1 > 0)
        .collect();
    let kept: Vec<i64> = acked
        .per_writer
        .iter()
        .flat_map(|(w, (count, _))| (0..*count).map(move |i| w * 100_000_000 + i))
        .filter(|id| id % 97 == 0)
        .collect();
    let expected_recent = json!([[kept.len(), kept.len(), kept.iter().sum::<i64>()]]);
    // A batch reaches the views one after another: wait until all three hold it all.
    loop {
        let now_halves = weir.get("/api/v1/views/halves").await?;
        let per_writer = weir.get("/api/v1/views/per_writer").await?;
        let mut counted: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for row in per_writer["rows"].as_array().context("rows")? {
            let number = |i: usize| row[i].as_i64().unwrap_or(-1);
            counted.insert(number(0), (number(1), number(2)));
        }
        let (code, recent) = weir
            .sql("SELECT count(*) AS n, count(DISTINCT id) AS d, sum(id) AS s FROM recent")
            .await?;
        let halves_right = halves(&now_halves["rows"]) == expected_halves;
        let per_writer_right = counted == acked.per_writer;
        let recent_right = code == 200 && recent["rows"] == expected_recent;
        if halves_right && per_writer_right && recent_right {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after 120 s the views differ from what was acknowledged:\n\
                 halves {} (expected {expected_halves:?})\n\
                 per_writer {counted:?}\n (expected {:?})\n\
                 recent {recent} (expected {expected_recent})",
                now_halves["rows"],
                acked.per_writer
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Memory: flat under load in the last life, and no higher once the load is gone;
    // descriptors: back to what the last process had before readers and writers came.
    let last = lives.last().cloned().unwrap_or_default();
    let median = |part: &[u64]| {
        let mut p = part.to_vec();
        p.sort_unstable();
        p.get(p.len() / 2).copied().unwrap_or(0)
    };
    let quarter = last.len() / 4;
    let plateau = median(&last[quarter..2 * quarter]);
    let late = median(&last[3 * quarter..]);
    let mut settled = usage(weir.pid());
    let deadline = Instant::now() + Duration::from_secs(40);
    while settled.1 > fds_baseline + 16 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        settled = usage(weir.pid());
    }
    let (rss_after, fds_after) = settled;
    latencies.sort_unstable();
    let report = json!({
        "seconds": settings.duration.as_secs(),
        "kills": lives.len() - 1,
        "writers": settings.writers,
        "subscribers": settings.subscribers,
        "records_acknowledged": total.0,
        "requests_retried": retries,
        "ddl_statements": ddl_done[0],
        "plugin_uploads": ddl_done[1],
        "ticks": ticks,
        "sse_events": reading.events.load(Ordering::Relaxed),
        "sse_connects": reading.connects.load(Ordering::Relaxed),
        "sse_lagged_and_dropped": reading.lagged.load(Ordering::Relaxed),
        "stalled_readers_let_go": let_go,
        "healthz_probes": latencies.len(),
        "healthz_p50_ms": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        "healthz_p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        "healthz_max_ms": latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        "rss_plateau_mib": plateau >> 20,
        "rss_late_mib": late >> 20,
        "rss_peak_mib": lives.iter().flatten().max().copied().unwrap_or(0) >> 20,
        "rss_after_mib": rss_after >> 20,
        "fds_baseline": fds_baseline,
        "fds_after": fds_after,
    });
    println!("soak report: {report:#}");
    if let Some(path) = &settings.report {
        std::fs::write(path, format!("{report:#}\n"))?;
    }
    anyhow::ensure!(
        failures.is_empty(),
        "healthz failed outside restarts: {failures:?}"
    );
    anyhow::ensure!(
        reading.events.load(Ordering::Relaxed) > 0,
        "no reader received an event"
    );
    anyhow::ensure!(
        ddl_done[0] > 0 && ddl_done[1] > 0,
        "statements and uploads that succeeded: {ddl_done:?}"
    );
    anyhow::ensure!(
        let_go == 5,
        "{let_go} of 5 stalled readers were let go with `lagged`"
    );
    anyhow::ensure!(
        fds_after <= fds_baseline + 16,
        "file descriptors leaked: {fds_after} open after the readers left, {fds_baseline} before they came"
    );
    let bound = |base: u64| base + base / 4 + (32 << 20);
    anyhow::ensure!(
        late <= bound(plateau) && rss_after <= bound(plateau),
        "memory grew: plateau {} MiB, late in the load {} MiB, after it {} MiB",
        plateau >> 20,
        late >> 20,
        rss_after >> 20
    );
    Ok(())
}
