//! The whole path over HTTP: an http source, a tumbling-window view, thousands of events
//! with known event times (some malformed, some late), checked against the same
//! aggregation computed here in plain Rust.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::support::Weir;

/// 2023-11-14T22:13:20Z, a multiple of the window size.
const T0: i64 = 1_700_000_000_000;
const WINDOW_MS: i64 = 10_000;
const USERS: i64 = 7;

fn event(i: i64) -> Value {
    json!({ "id": i, "user_id": i % USERS, "amount": (i % 97) as f64 + 0.5, "ts": T0 + i * 20 })
}

/// (window_start ms, user) -> (count, sum, min, max), computed independently of weir.
type Expected = BTreeMap<(i64, i64), (i64, f64, f64, f64)>;

fn expect(expected: &mut Expected, e: &Value) {
    let ts = e["ts"].as_i64().expect("ts");
    let amount = e["amount"].as_f64().expect("amount");
    let entry = expected
        .entry((
            ts - ts.rem_euclid(WINDOW_MS),
            e["user_id"].as_i64().expect("user"),
        ))
        .or_insert((0, 0.0, f64::MAX, f64::MIN));
    entry.0 += 1;
    entry.1 += amount;
    entry.2 = entry.2.min(amount);
    entry.3 = entry.3.max(amount);
}

fn iso(ms: i64) -> String {
    let secs = ms / 1000;
    // Good enough for the test's range: format via the days-from-civil algorithm.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

async fn view_rows(weir: &Weir) -> Result<usize> {
    Ok(weir.get("/api/v1/views/per_user").await?["rows"]
        .as_array()
        .map_or(0, Vec::len))
}

#[tokio::test]
async fn http_source_to_tumbling_window_view() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    weir.exec(
        "CREATE SOURCE events (id BIGINT NOT NULL, user_id BIGINT NOT NULL, amount DOUBLE, ts TIMESTAMP, \
         WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'http', max_rows = 500, max_delay = '10ms')",
    )
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW per_user AS SELECT window_start, window_end, user_id, count(*) AS n, \
         sum(amount) AS total, min(amount) AS low, max(amount) AS high \
         FROM TUMBLE(events, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, user_id",
    )
    .await?;

    weir.exec("CREATE MATERIALIZED VIEW big_spends AS SELECT id, user_id, amount, ts FROM events WHERE amount > 90").await?;
    // The same windows with 60 s of allowed lateness: the late rows update window [0, 10 s).
    weir.exec(
        "CREATE MATERIALIZED VIEW per_user_lenient WITH (allowed_lateness = '60s') AS \
         SELECT window_start, user_id, count(*) AS n FROM TUMBLE(events, ts, INTERVAL '10' SECOND) \
         GROUP BY window_start, window_end, user_id",
    )
    .await?;
    // GROUP BY without a window: an updating aggregate over every record, late or not.
    weir.exec("CREATE MATERIALIZED VIEW per_user_total AS SELECT user_id, count(*) AS n FROM events GROUP BY user_id").await?;

    // Bad SQL answers 400 and names the problem.
    let (status, body) = weir
        .sql("CREATE MATERIALIZED VIEW v2 AS SELECT user_id, amount FROM events ORDER BY amount")
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("ORDER BY"),
        "{body}"
    );
    let (status, body) = weir.sql("SELECT nope FROM per_user").await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("nope"),
        "{body}"
    );
    let (status, body) = weir
        .sql("CREATE SOURCE events (a BIGINT) WITH (connector = 'http')")
        .await?;
    assert_eq!(status, 409, "{body}");

    let mut expected = Expected::new();
    // Phase 1: 0..60 s of event time in six requests (NDJSON and arrays), with three
    // malformed records in the first.
    for part in 0..6 {
        let events: Vec<Value> = (part * 500..(part + 1) * 500).map(event).collect();
        events.iter().for_each(|e| expect(&mut expected, e));
        let body = if part == 0 {
            let mut lines: Vec<String> = events.iter().map(Value::to_string).collect();
            lines.insert(10, "{\"id\": 1, \"user_id\": ".to_string());
            lines.insert(
                20,
                json!({"id": 2, "user_id": "seven", "ts": T0}).to_string(),
            );
            lines.insert(
                30,
                json!({"user_id": 3, "ts": T0, "amount": 1.0}).to_string(),
            );
            lines.join("\n")
        } else if part % 2 == 0 {
            ndjson(&events)
        } else {
            Value::Array(events).to_string()
        };
        let (status, report) = weir.post_records("events", body).await?;
        assert_eq!(status, 200, "{report}");
        let bad = if part == 0 { 3 } else { 0 };
        assert_eq!(report, json!({ "accepted": 500, "dead_lettered": bad }));
    }
    // The watermark reaches 59.98 s - 2 s: windows up to [40 s, 50 s) are closed.
    weir.wait_for("five closed windows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir).await? == 5 * USERS as usize).then_some(()))
    })
    .await?;

    // Phase 2: ten rows for the closed first window are late.
    let late: Vec<Value> = (0..10)
        .map(|i| json!({ "id": 10_000 + i, "user_id": 1, "amount": 1.0, "ts": T0 + 5_000 }))
        .collect();
    let (status, report) = weir.post_records("events", ndjson(&late)).await?;
    assert_eq!(
        (status, report),
        (200, json!({ "accepted": 10, "dead_lettered": 0 }))
    );
    weir.wait_for("ten late rows", Duration::from_secs(30), || async {
        let views = weir.get("/api/v1/views").await?;
        let per_user = views["views"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == "per_user"))
            .cloned();
        Ok(per_user.is_some_and(|v| v["late_rows"] == 10).then_some(()))
    })
    .await?;

    // Live changes: subscribe before the remaining windows close.
    let mut stream = weir
        .client
        .get(format!("{}/api/v1/views/per_user/stream", weir.url))
        .send()
        .await?;
    assert_eq!(stream.status(), 200);

    // Phase 3: 60..100 s, then one event far ahead that closes every window before it.
    let events: Vec<Value> = (3000..5000).map(event).collect();
    events.iter().for_each(|e| expect(&mut expected, e));
    weir.post_records("events", ndjson(&events)).await?;
    let (status, _) = weir
        .post_records(
            "events",
            ndjson(&[json!({"id": 99_999, "user_id": 0, "amount": 1.0, "ts": T0 + 200_000})]),
        )
        .await?;
    assert_eq!(status, 200);
    weir.wait_for("all ten windows", Duration::from_secs(30), || async {
        Ok((view_rows(&weir).await? == 10 * USERS as usize).then_some(()))
    })
    .await?;

    // The exact rows.
    let body = weir.get("/api/v1/views/per_user").await?;
    assert_eq!(
        body["columns"],
        json!([
            "window_start",
            "window_end",
            "user_id",
            "n",
            "total",
            "low",
            "high"
        ])
    );
    let mut actual: Vec<Value> = body["rows"].as_array().cloned().unwrap_or_default();
    actual.sort_by_key(|r| (r[0].as_str().unwrap_or("").to_string(), r[2].as_i64()));
    let want: Vec<Value> = expected
        .iter()
        .map(|(&(start, user), &(n, total, low, high))| {
            json!([
                iso(start),
                iso(start + WINDOW_MS),
                user,
                n,
                total,
                low,
                high
            ])
        })
        .collect();
    assert_eq!(want.len(), 70);
    assert_eq!(actual, want);

    // The live stream carried rows of the windows closed in phase 3.
    let mut seen = String::new();
    while !seen.contains("event: rows") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await??;
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap_or_default()));
    }
    let data = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("an SSE data line");
    let update: Value = serde_json::from_str(data)?;
    assert_eq!(update["columns"], body["columns"]);
    assert!(
        update["rows"][0][0].as_str().unwrap_or("") >= iso(T0 + 50_000).as_str(),
        "{update}"
    );

    // Dead letters: three malformed records with their positions, ten late rows.
    let dl = weir
        .get("/api/v1/dead-letters?source=events&limit=1000")
        .await?;
    let letters = dl["dead_letters"].as_array().cloned().unwrap_or_default();
    assert_eq!(dl["total"], 13);
    let malformed: Vec<&Value> = letters.iter().filter(|l| l["view"].is_null()).collect();
    assert_eq!(
        malformed
            .iter()
            .map(|l| l["position"].as_u64())
            .collect::<Vec<_>>(),
        vec![Some(10), Some(20), Some(30)]
    );
    assert!(
        malformed[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("invalid JSON"),
        "{}",
        malformed[0]
    );
    assert!(
        malformed[1]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("schema"),
        "{}",
        malformed[1]
    );
    assert!(
        malformed[2]["raw"]
            .as_str()
            .unwrap_or("")
            .contains("\"user_id\":3"),
        "{}",
        malformed[2]
    );
    let late_letters: Vec<&Value> = letters.iter().filter(|l| l["view"] == "per_user").collect();
    assert_eq!(late_letters.len(), 10);
    assert!(
        late_letters[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("late row"),
        "{}",
        late_letters[0]
    );
    assert!(
        late_letters[0]["late"]["watermark_ms"].as_i64().is_some()
            && late_letters[0]["late"]["event_time_ms"].as_i64().is_some(),
        "a late row keeps its times: {}",
        late_letters[0]
    );
    let on_disk = std::fs::read_to_string(weir.data_dir.path().join("dead-letters.jsonl"))?;
    assert_eq!(on_disk.lines().count(), 13);

    // The updating aggregate counted every valid record: 5000 events, 10 late ones for
    // user 1 and the far-future one for user 0.
    let mut totals = weir
        .exec("SELECT user_id, n FROM per_user_total ORDER BY user_id")
        .await?["rows"]
        .clone();
    let mut want: Vec<Value> = (0..USERS)
        .map(|u| json!([u, (0..5000).filter(|i| i % USERS == u).count()]))
        .collect();
    want[1][1] = json!(want[1][1].as_u64().unwrap_or(0) + 10);
    want[0][1] = json!(want[0][1].as_u64().unwrap_or(0) + 1);
    assert_eq!(totals.take(), Value::Array(want));

    // Allowed lateness: the ten late rows counted, each window's rows replaced, not repeated.
    let lenient = weir
        .exec("SELECT count(*), sum(n) FROM per_user_lenient")
        .await?;
    assert_eq!(lenient["rows"], json!([[70, 5010]]));
    let views = weir.get("/api/v1/views").await?;
    let lenient = views["views"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == "per_user_lenient"))
        .cloned();
    assert_eq!(lenient.map(|v| v["late_rows"].clone()), Some(json!(0)));

    // EXPLAIN shows the operators and their live state: the far-future event's window is open.
    let explain = weir.exec("EXPLAIN VIEW per_user").await?;
    let ops: Vec<&str> = explain["rows"]
        .as_array()
        .map_or(vec![], |r| r.iter().filter_map(|r| r[0].as_str()).collect());
    assert_eq!(
        ops,
        vec!["source", "window", "aggregate", "project", "sink"],
        "{explain}"
    );
    assert_eq!(explain["rows"][1][2], "1 open windows", "{explain}");
    assert_eq!(
        explain["rows"][4][2], "70 rows, 70 emitted, 10 late",
        "{explain}"
    );
    let plan = weir
        .exec("EXPLAIN CREATE MATERIALIZED VIEW x AS SELECT user_id, amount FROM events WHERE amount > 10")
        .await?;
    assert_eq!(plan["rows"][1][0], "filter", "{plan}");
    assert_eq!(plan["rows"][1][2], "not running", "{plan}");
    // With more than one core, the line also says the batch runs in slices.
    let detail = plan["rows"][1][1].as_str().unwrap_or_default();
    assert!(
        detail == "events.amount > Float64(10)"
            || detail.starts_with("events.amount > Float64(10); a batch runs in up to "),
        "{plan}"
    );
    assert_eq!(
        weir.sql("SELECT * FROM x").await?.0,
        400,
        "EXPLAIN creates nothing"
    );

    // Ad hoc SQL over the view, and the other formats.
    let total = weir.exec("SELECT sum(n) AS events FROM per_user").await?;
    assert_eq!(total["rows"], json!([[5000]]));
    // A join of two views: each big spend falls in exactly one (window, user) row.
    let big = (0..5000).filter(|i| (i % 97) as f64 + 0.5 > 90.0).count();
    let joined = weir
        .exec(
            "SELECT count(*) AS n FROM big_spends b JOIN per_user p \
             ON b.user_id = p.user_id AND b.ts >= p.window_start AND b.ts < p.window_end",
        )
        .await?;
    assert_eq!(joined["rows"], json!([[big]]));
    let csv = weir
        .client
        .get(format!("{}/api/v1/views/per_user", weir.url))
        .header("accept", "text/csv")
        .send()
        .await?
        .text()
        .await?;
    assert!(
        csv.starts_with("window_start,window_end,user_id,n,total,low,high\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 71);
    let arrow = weir
        .client
        .get(format!("{}/api/v1/views/per_user?limit=5", weir.url))
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .await?;
    assert_eq!(
        arrow.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = arrow.bytes().await?;
    assert_eq!(
        &bytes[..4],
        &[0xff, 0xff, 0xff, 0xff],
        "an Arrow IPC stream starts with a continuation marker"
    );

    // Metrics and status.
    let metrics = weir.metrics().await?;
    for line in [
        "weir_records_in_total{source=\"events\"} 5011".to_string(),
        "weir_late_rows_total{view=\"per_user\"} 10".to_string(),
        "weir_dead_letters_total{source=\"events\"} 13".to_string(),
        "weir_view_rows_emitted_total{view=\"per_user\"} 70".to_string(),
        format!("weir_watermark_ms{{source=\"events\"}} {}", T0 + 198_000),
    ] {
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    assert!(
        metrics.contains("weir_batch_latency_seconds_bucket"),
        "{metrics}"
    );
    // Each change the view published is timed from its batch's first record received.
    let published: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_end_to_end_latency_seconds_count{view=\"per_user\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        published >= 1,
        "no end-to-end latency for per_user in\n{metrics}"
    );
    let source = weir.get("/api/v1/sources/events").await?;
    assert_eq!(source["watermark_ms"], T0 + 198_000);

    // Oversized bodies are refused from their declared length, before they are read.
    let response = raw_request(&weir.url, "POST /api/v1/sources/events/records HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9437184\r\n\r\n").await?;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("larger than 8388608 bytes"), "{response}");
    Ok(())
}

/// Send raw request bytes and read the answer (the body is never sent).
async fn raw_request(url: &str, head: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

/// A join of two sources closes its windows at the minimum of their watermarks, but an
/// input that has sent nothing for the idle timeout no longer holds them back.
#[tokio::test]
async fn an_idle_input_stops_holding_a_join_back() -> Result<()> {
    idle_input_left_out_of_a_join(&[]).await
}

/// The same when each batch takes longer than the idle timeout (as on a loaded
/// machine): by the time the clicks are processed both inputs count as idle, and the
/// clicks' rows must still close their windows (this stalled for good once).
#[tokio::test]
async fn a_join_whose_inputs_are_all_idle_still_closes_its_windows() -> Result<()> {
    idle_input_left_out_of_a_join(&[("WEIR_FAILPOINTS", "pipeline-slow-batch")]).await
}

/// An input whose connector failed sends nothing more: it holds a join back no longer,
/// however long the idle timeout, and the join goes on checkpointing with its live
/// input (the failed one stays at its last position).
#[tokio::test]
async fn a_failed_input_stops_holding_a_join_back() -> Result<()> {
    failed_input_left_out_of_a_join(false).await
}

/// The same, with the join created after its input failed.
#[tokio::test]
async fn a_join_over_an_input_failed_before_it_checkpoints_with_the_live_one() -> Result<()> {
    failed_input_left_out_of_a_join(true).await
}

async fn failed_input_left_out_of_a_join(fail_before_join: bool) -> Result<()> {
    let (dir, config) = crate::kafka::config_dir("[runtime]\nidle-timeout = '1h'\n").await?;
    let files = dir.path().join("files");
    std::fs::create_dir(&files)?;
    std::fs::write(files.join("orders.jsonl"), "")?;
    let weir = Weir::start_in(dir, &["--config", &config]).await?;
    weir.exec(
        "CREATE SOURCE clicks (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'http')",
    )
    .await?;
    weir.exec(
        "CREATE SOURCE orders (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) \
         WITH (connector = 'file', path = 'orders.jsonl')",
    )
    .await?;
    // Gone when the reader opens it, at the first view.
    std::fs::remove_file(weir.data_dir.path().join("files/orders.jsonl"))?;
    if fail_before_join {
        weir.exec("CREATE MATERIALIZED VIEW order_ids AS SELECT id FROM orders")
            .await?;
        weir.wait_source("orders", "failed", Duration::from_secs(20))
            .await?;
    }
    weir.exec(CLICKS_LEFT_JOIN_ORDERS).await?;
    weir.wait_source("orders", "failed", Duration::from_secs(20))
        .await?;
    clicks_close_their_windows_alone(&weir, "the failed input to be left out").await?;
    // The checkpoint holds the join group at the clicks read (before, the group waited
    // for the failed input at every checkpoint, in vain, and kept its first snapshots).
    let taken = weir.checkpoint_now().await?;
    let clicks = taken["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "clicks"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(clicks["watermark_ms"], T0 + 24_000, "{taken}");
    Ok(())
}

async fn idle_input_left_out_of_a_join(env: &[(&str, &str)]) -> Result<()> {
    let (dir, config) = crate::kafka::config_dir("[runtime]\nidle-timeout = '1s'\n").await?;
    let weir = Weir::start_with_env(dir, &["--config", &config], env).await?;
    for table in ["clicks", "orders"] {
        weir.exec(&format!(
            "CREATE SOURCE {table} (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'http')"
        ))
        .await?;
    }
    weir.exec(CLICKS_LEFT_JOIN_ORDERS).await?;
    clicks_close_their_windows_alone(&weir, "the idle input to be left out").await
}

/// Clicks per 10 s window, with the orders of the same window when there are any.
const CLICKS_LEFT_JOIN_ORDERS: &str = "CREATE MATERIALIZED VIEW joined AS SELECT c.window_start, c.n, o.m \
     FROM (SELECT window_start, count(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY window_start) AS c \
     LEFT JOIN (SELECT window_start, count(*) AS m FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) GROUP BY window_start) AS o \
     ON c.window_start = o.window_start";

/// Orders never come; clicks cover 0..25 s, so two windows are complete and must close
/// without waiting for orders (`what` names why, for the timeout's message).
async fn clicks_close_their_windows_alone(weir: &Weir, what: &str) -> Result<()> {
    let clicks: String = (0..25)
        .map(|s| format!("{{\"id\":{s},\"ts\":{}}}\n", T0 + s * 1000))
        .collect();
    let (status, _) = weir.post_records("clicks", clicks).await?;
    assert_eq!(status, 200);
    let rows = weir
        .wait_for(what, Duration::from_secs(20), || async {
            let rows = weir.get("/api/v1/views/joined").await?["rows"].clone();
            Ok((rows.as_array().map_or(0, Vec::len) == 2).then_some(rows))
        })
        .await?;
    assert_eq!(rows[0][1], 10, "{rows}");
    assert_eq!(rows[1][1], 10, "{rows}");
    assert!(rows[0][2].is_null(), "no orders: {rows}");
    Ok(())
}

/// A stream joined with an updating view (a stream-table join): each order is joined
/// with the price the table holds when the order is processed; a later price change does
/// not change orders already joined, and a left join keeps orders without a price.
#[tokio::test]
async fn orders_join_the_prices_table_as_it_is_when_they_arrive() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    for sql in [
        "CREATE SOURCE prices (sku BIGINT, price BIGINT) WITH (connector = 'http', max_delay = '10ms')",
        "CREATE SOURCE orders (id BIGINT, sku BIGINT, qty BIGINT) WITH (connector = 'http', max_delay = '10ms')",
        "CREATE MATERIALIZED VIEW latest AS SELECT sku, max(price) AS price FROM prices GROUP BY sku",
        "CREATE MATERIALIZED VIEW priced AS SELECT o.id, o.qty * l.price AS total \
         FROM orders AS o JOIN latest AS l ON o.sku = l.sku",
        "CREATE MATERIALIZED VIEW all_orders AS SELECT o.id, l.price FROM orders AS o \
         LEFT JOIN latest AS l ON o.sku = l.sku",
    ] {
        weir.exec(sql).await?;
    }
    let rows = |view: &'static str, n: usize| {
        let weir = &weir;
        async move {
            weir.wait_for(
                &format!("{n} rows in {view}"),
                Duration::from_secs(20),
                || async {
                    let body = weir.get(&format!("/api/v1/views/{view}")).await?;
                    let rows = body["rows"].as_array().cloned().unwrap_or_default();
                    Ok((rows.len() >= n).then(|| {
                        let mut r: Vec<String> = rows.iter().map(Value::to_string).collect();
                        r.sort();
                        r
                    }))
                },
            )
            .await
        }
    };
    weir.post_records("prices", r#"{"sku": 1, "price": 10}"#.into())
        .await?;
    rows("latest", 1).await?;
    weir.post_records(
        "orders",
        r#"{"id": 1, "sku": 1, "qty": 3}
{"id": 2, "sku": 9, "qty": 1}"#
            .into(),
    )
    .await?;
    assert_eq!(rows("priced", 1).await?, ["[1,30]"]);
    weir.post_records("prices", r#"{"sku": 1, "price": 20}"#.into())
        .await?;
    weir.wait_for("the new price", Duration::from_secs(20), || async {
        let body = weir.get("/api/v1/views/latest").await?;
        Ok((body["rows"] == json!([[1, 20]])).then_some(()))
    })
    .await?;
    weir.post_records("orders", r#"{"id": 3, "sku": 1, "qty": 3}"#.into())
        .await?;
    assert_eq!(rows("priced", 2).await?, ["[1,30]", "[3,60]"]);
    assert_eq!(
        rows("all_orders", 3).await?,
        ["[1,10]", "[2,null]", "[3,20]"]
    );

    // The table cannot be dropped under its readers; other shapes are named.
    let (status, body) = weir.sql("DROP VIEW latest").await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("joined by all_orders, priced: drop them first"),
        "{body}"
    );
    for (sql, named) in [
        (
            "CREATE MATERIALIZED VIEW copy AS SELECT * FROM latest",
            "views over views",
        ),
        (
            "CREATE MATERIALIZED VIEW agg AS SELECT l.sku, count(*) FROM orders AS o JOIN latest AS l \
             ON o.sku = l.sku GROUP BY l.sku",
            "stream-table join",
        ),
        (
            "CREATE MATERIALIZED VIEW r AS SELECT o.id FROM orders AS o RIGHT JOIN latest AS l ON o.sku = l.sku",
            "left join with the source on the left",
        ),
    ] {
        let (status, body) = weir.sql(sql).await?;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(body.to_string().contains(named), "{sql}: {body}");
    }
    let explain = weir.exec("EXPLAIN VIEW priced").await?["rows"].to_string();
    assert!(explain.contains("lookup join"), "{explain}");
    weir.exec("DROP VIEW priced").await?;
    weir.exec("DROP VIEW all_orders").await?;
    weir.exec("DROP VIEW latest").await?;
    Ok(())
}

#[tokio::test]
async fn an_aggregate_without_group_by_is_one_row_kept_up_to_date_across_a_restart() -> Result<()> {
    let weir = crate::kafka::start_checkpointed().await?;
    weir.exec("CREATE SOURCE events (id BIGINT, amount BIGINT) WITH (connector = 'http')")
        .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW total AS \
         SELECT count(*) AS n, sum(amount) AS amount, max(id) AS last FROM events WHERE amount > 0",
    )
    .await?;
    let explain = weir.exec("EXPLAIN VIEW total").await?.to_string();
    anyhow::ensure!(
        explain.contains("one group (no GROUP BY)")
            && !explain.contains("parallel instances")
            && !explain.contains("__weir"),
        "{explain}"
    );
    let records = |from: i64, to: i64| -> String {
        (from..to)
            .map(|i| format!("{{\"id\": {i}, \"amount\": {}}}\n", i % 3))
            .collect()
    };
    let expected = |to: i64| {
        let kept: Vec<i64> = (0..to).filter(|i| i % 3 > 0).collect();
        json!([[
            kept.len(),
            kept.iter().map(|i| i % 3).sum::<i64>(),
            kept.last()
        ]])
    };
    weir.post_batch("events", records(0, 50)).await?;
    weir.wait_for("one row of 50", Duration::from_secs(30), || async {
        let rows = weir.get("/api/v1/views/total").await?["rows"].clone();
        Ok((rows == expected(50)).then_some(()))
    })
    .await?;
    // Checkpointed (every 200 ms), killed, restarted: it counts on from there.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let config = weir.data_dir.path().join("weir.toml");
    let config = config.to_string_lossy().to_string();
    let weir = weir.restart(&["--config", &config]).await?;
    weir.post_batch("events", records(50, 80)).await?;
    weir.wait_for("one row of 80", Duration::from_secs(30), || async {
        let rows = weir.get("/api/v1/views/total").await?["rows"].clone();
        Ok((rows == expected(80)).then_some(()))
    })
    .await?;
    Ok(())
}

/// A source decodes only the columns its views read. A view created while rows decoded
/// without its columns are still queued never sees those rows (with placeholders in
/// place of its columns' values): it sees the rows decoded after it was created.
#[tokio::test]
async fn a_view_never_sees_rows_decoded_without_its_columns() -> Result<()> {
    // Each batch takes 5 s, so rows posted meanwhile wait in the queue.
    let weir = Weir::start_with_env(
        tempfile::tempdir()?,
        &[],
        &[("WEIR_FAILPOINTS", "pipeline-slower-batch")],
    )
    .await?;
    weir.exec(
        "CREATE SOURCE people (id BIGINT, name VARCHAR, age BIGINT) \
         WITH (connector = 'http', max_delay = '10ms')",
    )
    .await?;
    weir.exec("CREATE MATERIALIZED VIEW ids AS SELECT id FROM people")
        .await?;
    let people = |ids: std::ops::Range<i64>| -> String {
        ids.map(|i| format!("{{\"id\":{i},\"name\":\"n{i}\",\"age\":{}}}\n", 20 + i))
            .collect()
    };
    assert_eq!(weir.post_records("people", people(0..10)).await?.0, 200);
    weir.wait_for("the first batch", Duration::from_secs(10), || async {
        let batches = weir.get("/api/v1/sources/people").await?["batches"].clone();
        Ok((batches == 1).then_some(()))
    })
    .await?;
    // Decoded with `id` alone, and queued behind the slow first batch.
    assert_eq!(weir.post_records("people", people(10..20)).await?.0, 200);
    weir.exec("CREATE MATERIALIZED VIEW names AS SELECT id, name, age FROM people")
        .await?;
    let batches = weir.get("/api/v1/sources/people").await?["batches"].clone();
    assert_eq!(
        batches, 1,
        "the second rows are still queued: what this test is about"
    );
    assert_eq!(weir.post_records("people", people(20..30)).await?.0, 200);
    weir.wait_for("every id", Duration::from_secs(60), || async {
        let rows = weir.get("/api/v1/views/ids").await?["rows"].clone();
        Ok((rows.as_array().map_or(0, Vec::len) == 30).then_some(()))
    })
    .await?;
    let mut rows = weir.get("/api/v1/views/names").await?["rows"].clone();
    let rows = rows.as_array_mut().expect("rows");
    rows.sort_by_key(|r| r[0].as_i64());
    let expected: Vec<Value> = (20..30)
        .map(|i| json!([i, format!("n{i}"), 20 + i]))
        .collect();
    assert_eq!(*rows, expected, "only the rows decoded with its columns");
    Ok(())
}

/// A late row is dead-lettered with the columns that were decoded: a source whose
/// views read only its time column does not show placeholders for the others.
#[tokio::test]
async fn a_late_row_is_dead_lettered_without_columns_never_decoded() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    weir.exec(
        "CREATE SOURCE events (id BIGINT, note VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts) \
         WITH (connector = 'http', max_delay = '10ms')",
    )
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW per_second AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(events, ts, INTERVAL '1' SECOND) GROUP BY window_start",
    )
    .await?;
    let event =
        |id: i64, at: i64| format!("{{\"id\":{id},\"note\":\"n{id}\",\"ts\":{}}}\n", T0 + at);
    let on_time: String = (0..5).map(|i| event(i, i * 1000)).collect();
    assert_eq!(weir.post_records("events", on_time).await?.0, 200);
    weir.wait_for("the first windows", Duration::from_secs(20), || async {
        let rows = weir.get("/api/v1/views/per_second").await?["rows"].clone();
        Ok((rows.as_array().map_or(0, Vec::len) == 4).then_some(()))
    })
    .await?;
    assert_eq!(weir.post_records("events", event(99, 500)).await?.0, 200);
    let letter = weir
        .wait_for("the late row", Duration::from_secs(20), || async {
            let dl = weir.get("/api/v1/dead-letters?source=events").await?;
            Ok(dl["dead_letters"].get(0).cloned())
        })
        .await?;
    assert_eq!(letter["view"], "per_second", "{letter}");
    let raw: Value = serde_json::from_str(letter["raw"].as_str().unwrap_or(""))?;
    assert_eq!(raw.as_object().map(|o| o.len()), Some(1), "{raw}");
    assert!(raw["ts"].is_string(), "only its time: {raw}");
    Ok(())
}

/// Bodies posted at once by many clients are decoded side by side on the server's
/// threads, as JSON lines and as JSON arrays: every record counts once, with its values.
#[tokio::test]
async fn bodies_posted_at_once_by_many_clients_each_count_once() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    weir.exec(
        "CREATE SOURCE events (client BIGINT, seq BIGINT, amount BIGINT) WITH (connector = 'http')",
    )
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW per_client AS SELECT client, count(*) AS n, sum(seq) AS seqs, \
         max(seq) AS last, sum(amount) AS amount FROM events GROUP BY client",
    )
    .await?;
    let (clients, bodies, per_body) = (8i64, 12i64, 400i64);
    let mut posting = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (http, url) = (weir.client.clone(), weir.url.clone());
        posting.spawn(async move {
            for body in 0..bodies {
                let records: Vec<String> = (body * per_body..(body + 1) * per_body)
                    .map(|seq| {
                        format!(
                            r#"{{"client": {client}, "seq": {seq}, "amount": {}}}"#,
                            seq % 7
                        )
                    })
                    .collect();
                // Every other body a JSON array, the others JSON lines.
                let text = match body % 2 {
                    0 => records.join("\n"),
                    _ => format!("[{}]", records.join(",")),
                };
                let answer: Value = http
                    .post(format!("{url}/api/v1/sources/events/records"))
                    .body(text)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                anyhow::ensure!(
                    answer == json!({"accepted": per_body, "dead_lettered": 0}),
                    "client {client}, body {body}: {answer}"
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = posting.join_next().await {
        done??;
    }
    let n = bodies * per_body;
    let expected: Vec<Value> = (0..clients)
        .map(|client| {
            json!([
                client,
                n,
                n * (n - 1) / 2,
                n - 1,
                (0..n).map(|s| s % 7).sum::<i64>()
            ])
        })
        .collect();
    weir.wait_for(
        "every client's records, once",
        Duration::from_secs(60),
        || async {
            let mut rows: Vec<Value> = weir.get("/api/v1/views/per_client").await?["rows"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            rows.sort_by_key(|r| r[0].as_i64());
            Ok((rows == expected).then_some(()))
        },
    )
    .await
}
