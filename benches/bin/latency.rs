//! End-to-end latency through a running weir: events sent over HTTP at a steady rate,
//! and the time until they come back on a view's server-sent event stream.
//!
//!   weir-latency-tool URL [EVENTS_PER_SECOND] [SECONDS]   (default 100000 events/s, 20 s)
//!
//! It creates a source `lat` and two views: `lat_filter` (1% of the events) and
//! `lat_tumble` (a count per 1-second tumbling window, watermark delay 0). Every event
//! carries its send time in ms (`sent`). A filter row's latency is its receipt time less
//! its `sent`; a window's is its receipt time less the window's end (the earliest time
//! an event could close it). Prints p50, p99 and max of each, and the rate achieved.
//! `scripts/bench-latency.sh` starts weir and runs this.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const FILTER: &str = "lat_filter";
const TUMBLE: &str = "lat_tumble";
const REQUESTS_PER_SECOND: u64 = 100;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .ok_or("usage: weir-latency-tool URL [EVENTS_PER_SECOND] [SECONDS]")?
        .trim_end_matches('/')
        .to_string();
    let rate: u64 = args.get(2).map_or(Ok(100_000), |s| s.parse())?;
    let seconds: u64 = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let client = reqwest::Client::new();
    // MAX_DELAY=0ms: the source's batches close as soon as nothing more is queued.
    let max_delay = std::env::var("MAX_DELAY")
        .map(|d| format!(", max_delay = '{d}'"))
        .unwrap_or_default();
    for sql in [
        format!(
            "CREATE SOURCE lat (id BIGINT NOT NULL, sent BIGINT NOT NULL, ts TIMESTAMP NOT NULL, \
             WATERMARK FOR ts AS ts - INTERVAL '0' SECOND) WITH (connector = 'http'{max_delay})"
        ),
        format!("CREATE MATERIALIZED VIEW {FILTER} AS SELECT id, sent FROM lat WHERE id % 100 = 0"),
        format!(
            "CREATE MATERIALIZED VIEW {TUMBLE} AS SELECT window_start, count(*) AS n, \
             max(sent) AS last_sent FROM TUMBLE(lat, ts, INTERVAL '1' SECOND) \
             GROUP BY window_start, window_end"
        ),
    ] {
        let r = client
            .post(format!("{url}/api/v1/sql"))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("{sql}: {}", r.text().await?).into());
        }
    }
    let filter = tokio::spawn(follow(
        client.clone(),
        format!("{url}/api/v1/views/{FILTER}/stream"),
    ));
    let tumble = tokio::spawn(follow(
        client.clone(),
        format!("{url}/api/v1/views/{TUMBLE}/stream"),
    ));
    // Let the subscriptions open before the first event.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let per_request = (rate / REQUESTS_PER_SECOND).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / REQUESTS_PER_SECOND));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = std::time::Instant::now();
    let mut id = 0u64;
    let mut body = Vec::with_capacity(per_request as usize * 64);
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        body.clear();
        let sent = now_ms();
        for _ in 0..per_request {
            use std::io::Write;
            writeln!(body, r#"{{"id":{id},"sent":{sent},"ts":{sent}}}"#)?;
            id += 1;
        }
        let r = client
            .post(format!("{url}/api/v1/sources/lat/records"))
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("ingest: {} {}", r.status(), r.text().await?).into());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let last_sent = now_ms();
    // A last event a second later closes the last window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = now_ms();
    client
        .post(format!("{url}/api/v1/sources/lat/records"))
        .body(format!(r#"{{"id":{id},"sent":{sent},"ts":{sent}}}"#))
        .send()
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    filter.abort();
    tumble.abort();
    report(id as f64 / elapsed, last_sent);
    Ok(())
}

/// Record the rows of a view's stream with their receipt times (in [`SAMPLES`]), until
/// aborted.
async fn follow(client: reqwest::Client, url: String) {
    let Ok(mut r) = client.get(&url).send().await else {
        eprintln!("cannot subscribe to {url}");
        return;
    };
    let view = if url.contains(FILTER) { FILTER } else { TUMBLE };
    let mut pending = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        let at = now_ms();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                    record(view, at, &v);
                }
            }
        }
    }
}

/// The filter view's latencies (ms), and the tumbling view's windows as (end, received)
/// in ms since the epoch.
static SAMPLES: std::sync::Mutex<Samples> = std::sync::Mutex::new((Vec::new(), Vec::new()));

type Samples = (Vec<i64>, Vec<(i64, i64)>);

/// One `rows` event of `view`, received at `at`.
fn record(view: &str, at: i64, event: &Value) {
    let Some(columns) = event.get("columns").and_then(Value::as_array) else {
        return;
    };
    let column = |name: &str| columns.iter().position(|c| c.as_str() == Some(name));
    let Some(rows) = event.get("rows").and_then(Value::as_array) else {
        return;
    };
    let mut samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    for row in rows {
        let cell = |i: Option<usize>| i.and_then(|i| row.get(i)).and_then(Value::as_i64);
        if view == FILTER {
            if let Some(sent) = cell(column("sent")) {
                samples.0.push(at - sent);
            }
        } else if let Some(last) = cell(column("last_sent")) {
            // The window's end: the earliest an event could have closed it.
            let end = (last.div_euclid(1000) + 1) * 1000;
            samples.1.push((end, at));
        }
    }
}

/// Percentiles of each view's latencies; windows that ended after the steady sending
/// (closed by the last event, sent a second later) are left out.
fn report(rate: f64, last_sent: i64) {
    let samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    println!("sent {rate:.0} events/s");
    let windows: Vec<i64> = samples
        .1
        .iter()
        .filter(|(end, _)| *end <= last_sent)
        .map(|(end, at)| at - end)
        .collect();
    for (name, values) in [
        ("filter view (per row, from send)", &samples.0),
        (
            "tumbling 1 s window (per window, from the window's end)",
            &windows,
        ),
    ] {
        let mut v = values.clone();
        v.sort_unstable();
        if v.is_empty() {
            println!("{name}: nothing received");
            continue;
        }
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name}: {} samples, p50 {} ms, p99 {} ms, max {} ms",
            v.len(),
            at(0.5),
            at(0.99),
            v[v.len() - 1]
        );
    }
}
