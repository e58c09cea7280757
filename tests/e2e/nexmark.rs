//! A finite Nexmark run is deterministic: the same seed gives the same view rows on two
//! runs of the binary; another seed gives other rows.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::support::Weir;

const VIEW: &str = "CREATE MATERIALIZED VIEW per_channel AS \
    SELECT window_start, window_end, channel, count(*) AS n, sum(price) AS total, max(price) AS top, min(bidder) AS first_bidder \
    FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND) \
    WHERE channel IN ('Google', 'Facebook', 'Baidu', 'Apple') \
    GROUP BY window_start, window_end, channel";

async fn run(seed: u64) -> Result<Vec<Value>> {
    let weir = Weir::start(&[]).await?;
    // 300,000 events at 10,000 events per second of event time: 30 s, fifteen windows.
    weir.exec(&format!("CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 300000, seed = {seed})")).await?;
    weir.exec(VIEW).await?;
    weir.wait_for(
        "the finite run to finish",
        Duration::from_secs(120),
        || async {
            let s = weir.get("/api/v1/sources/bids").await?;
            Ok((s["status"] == "finished").then_some(()))
        },
    )
    .await?;
    let source = weir.get("/api/v1/sources/bids").await?;
    assert_eq!(
        source["records_in"], 276_000,
        "46 of every 50 events are bids"
    );
    let mut rows = weir.get("/api/v1/views/per_channel").await?["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rows.sort_by_key(|r| r.to_string());
    Ok(rows)
}

#[tokio::test]
async fn same_seed_same_rows() -> Result<()> {
    let first = run(42).await?;
    let second = run(42).await?;
    assert_eq!(first.len(), 15 * 4, "fifteen windows, four hot channels");
    assert_eq!(first, second);
    let counted: i64 = first.iter().map(|r| r[3].as_i64().unwrap_or(0)).sum();
    assert!(
        counted > 270_000,
        "hot channels carry 99% of the bids, got {counted}"
    );
    let other = run(43).await?;
    assert_ne!(first, other, "another seed must give other rows");
    Ok(())
}

/// Views that hold rows (per window, per session) run through the real binary and
/// EXPLAIN shows what they hold.
#[tokio::test]
async fn per_window_and_session_views_run_and_explain_their_state() -> Result<()> {
    let weir = Weir::start(&[]).await?;
    // Slow enough that windows are open when EXPLAIN runs.
    weir.exec("CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', rate = 20000, events = 60000, seed = 3)")
        .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW q7 AS SELECT b.auction, b.price, b.window_start \
         FROM TUMBLE(bids, date_time, INTERVAL '1' SECOND) AS b \
         JOIN (SELECT max(price) AS top, window_start FROM TUMBLE(bids, date_time, INTERVAL '1' SECOND) \
               GROUP BY window_start) AS m ON b.window_start = m.window_start AND b.price = m.top",
    )
    .await?;
    // Sessions kept in 2 keyed instances (recovery.rs compares them with a serial view).
    weir.exec(
        "CREATE MATERIALIZED VIEW bursts WITH (parallelism = 2) AS SELECT window_start, window_end, \
         bidder, count(*) AS n FROM SESSION(bids, date_time, INTERVAL '1' SECOND) \
         GROUP BY window_start, window_end, bidder",
    )
    .await?;
    let held = weir
        .wait_for(
            "rows held by open windows",
            Duration::from_secs(30),
            || async {
                let rows = weir.exec("EXPLAIN VIEW q7").await?["rows"].clone();
                let query = rows
                    .as_array()
                    .and_then(|r| r.iter().find(|row| row[0] == "query"))
                    .cloned();
                Ok(query.filter(|q| {
                    q[2].as_str()
                        .is_some_and(|s| s.ends_with("bytes of held rows") && !s.starts_with("0 "))
                }))
            },
        )
        .await?;
    assert!(
        held[1].as_str().unwrap_or("").contains("per closed window"),
        "{held}"
    );
    let explain = weir.exec("EXPLAIN VIEW bursts").await?["rows"].to_string();
    assert!(explain.contains("SESSION on date_time"), "{explain}");
    assert!(
        explain.contains("sessions kept in 2 parallel instances"),
        "{explain}"
    );
    weir.wait_for("the run to finish", Duration::from_secs(60), || async {
        let s = weir.get("/api/v1/sources/bids").await?;
        Ok((s["status"] == "finished").then_some(()))
    })
    .await?;
    // 60,000 events at 20,000 per second of event time: three 1-second windows, one top
    // bid each (or a tie), and sessions for many bidders.
    let q7 = weir.get("/api/v1/views/q7").await?["rows"]
        .as_array()
        .map_or(0, Vec::len);
    assert!((3..=9).contains(&q7), "{q7} top bids");
    let bursts = weir.get("/api/v1/views/bursts").await?["rows"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(bursts > 10, "{bursts} sessions");
    Ok(())
}

/// Nexmark q8 (new users who opened auctions in the same window): a join of two
/// sources per window, and q3 (local sellers): an interval join of the same sources;
/// through the binary, equal to DataFusion in batch mode over the same generated events.
#[tokio::test]
async fn q8_and_q3_join_two_sources_like_the_batch_oracle() -> Result<()> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use weir_runtime::source::nexmark::Table;

    const EVENTS: u64 = 300_000;
    let weir = Weir::start(&[]).await?;
    // Each view has sources of its own (the same events): a generator starts with the
    // first view that reads it, so a second view over it would miss its first rows.
    for (name, table) in [
        ("person", "person"),
        ("auction", "auction"),
        ("q3_person", "person"),
        ("q3_auction", "auction"),
    ] {
        weir.exec(&format!(
            "CREATE SOURCE {name} WITH (connector = 'nexmark', table = '{table}', events = {EVENTS}, seed = 5)"
        ))
        .await?;
    }
    // Both joins in 3 keyed instances, whatever the machine's cores.
    weir.exec(
        "CREATE MATERIALIZED VIEW q8 WITH (parallelism = 3) AS \
         SELECT p.id, p.name, CAST(p.window_start AS BIGINT) AS ws \
         FROM (SELECT id, name, window_start, window_end FROM TUMBLE(person, date_time, INTERVAL '10' SECOND) \
               GROUP BY id, name, window_start, window_end) AS p \
         JOIN (SELECT seller, window_start, window_end FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND) \
               GROUP BY seller, window_start, window_end) AS a \
         ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end",
    )
    .await?;
    // Nexmark q3 over the same events: an interval join (rows wait for a state_ttl).
    weir.exec(
        "CREATE MATERIALIZED VIEW q3 WITH (state_ttl = '10 seconds', parallelism = 3) AS \
         SELECT P.name, P.city, P.state, A.id FROM q3_auction AS A JOIN q3_person AS P ON A.seller = P.id \
         WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
    )
    .await?;
    for table in ["person", "auction", "q3_person", "q3_auction"] {
        weir.wait_finished(table).await?;
    }
    let ctx = oracle_context(
        &[("person", Table::Person), ("auction", Table::Auction)],
        5,
        EVENTS,
    )?;
    let oracle = ctx
        .sql(
            "SELECT p.id, p.name, CAST(p.ws AS BIGINT) AS ws FROM \
             (SELECT DISTINCT id, name, date_bin(INTERVAL '10 seconds', date_time) AS ws FROM person) AS p \
             JOIN (SELECT DISTINCT seller, date_bin(INTERVAL '10 seconds', date_time) AS ws FROM auction) AS a \
             ON p.id = a.seller AND p.ws = a.ws",
        )
        .await?
        .collect()
        .await?;
    let mut expected = Vec::new();
    for b in &oracle {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let names = b.column(1).as_string::<i32>();
        let ws = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            expected.push(format!(
                "{}|{}|{}",
                ids.value(i),
                names.value(i),
                ws.value(i)
            ));
        }
    }
    expected.sort();
    assert!(!expected.is_empty(), "the oracle found no new sellers");
    // The last window closes once both inputs have finished.
    let got = weir
        .wait_for(
            "q8 to hold as many rows as the oracle",
            Duration::from_secs(30),
            || async {
                let got = q8_rows(&weir).await?;
                Ok((got.len() >= expected.len()).then_some(got))
            },
        )
        .await?;
    assert_eq!(got.len(), expected.len(), "q8 rows");
    assert_eq!(got, expected);
    let explain = weir.exec("EXPLAIN VIEW q8").await?["rows"].clone();
    assert!(
        explain.to_string().contains("minimum watermark"),
        "{explain}"
    );
    assert!(
        explain
            .to_string()
            .contains("keyed by the join's equality key, in 3 parallel instances"),
        "{explain}"
    );
    // Each source with its own state: auctions are three times the persons.
    let sources: Vec<String> = explain
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| r[0] == "source")
        .map(|r| r[2].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(sources.len(), 2, "{explain}");
    assert_ne!(sources[0], sources[1], "{explain}");

    let got = q3_rows(&weir, "q3").await?;
    let expected = q3_oracle(&ctx).await?;
    assert!(expected.len() > 100, "q3 oracle rows: {}", expected.len());
    assert_eq!(got.len(), expected.len(), "q3 rows");
    assert_eq!(got, expected);
    let explain = weir.exec("EXPLAIN VIEW q3").await?["rows"].to_string();
    assert!(explain.contains("interval join"), "{explain}");
    assert!(
        explain.contains("keyed by the join's equality key, in 3 parallel instances"),
        "{explain}"
    );
    Ok(())
}

/// Nexmark q8's rows (id, name, window start), sorted.
async fn q8_rows(weir: &Weir) -> Result<Vec<String>> {
    let mut got: Vec<String> = weir.get("/api/v1/views/q8").await?["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| format!("{}|{}|{}", r[0], r[1].as_str().unwrap_or(""), r[2]))
        .collect();
    got.sort();
    Ok(got)
}

/// Nexmark q3's rows of `view` (name, city, state, auction id), sorted.
async fn q3_rows(weir: &Weir, view: &str) -> Result<Vec<String>> {
    let mut got: Vec<String> = weir.get(&format!("/api/v1/views/{view}")).await?["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{}",
                r[0].as_str().unwrap_or(""),
                r[1].as_str().unwrap_or(""),
                r[2].as_str().unwrap_or(""),
                r[3]
            )
        })
        .collect();
    got.sort();
    Ok(got)
}

/// Nexmark q3 by DataFusion in batch mode over `person` and `auction` in `ctx`, sorted.
async fn q3_oracle(ctx: &datafusion::prelude::SessionContext) -> Result<Vec<String>> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let oracle = ctx
        .sql(
            "SELECT P.name, P.city, P.state, A.id FROM auction AS A JOIN person AS P ON A.seller = P.id \
             WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
        )
        .await?
        .collect()
        .await?;
    let mut expected = Vec::new();
    for b in &oracle {
        let text = |c: usize| b.column(c).as_string::<i32>().clone();
        let (names, cities, states) = (text(0), text(1), text(2));
        let ids = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            expected.push(format!(
                "{}|{}|{}|{}",
                names.value(i),
                cities.value(i),
                states.value(i),
                ids.value(i)
            ));
        }
    }
    expected.sort();
    Ok(expected)
}

/// Nexmark q3 as a stream-table join: auctions joined with a view of the persons (an
/// updating aggregate per person). Created once the persons are all in the table, it
/// equals DataFusion in batch mode over the same events.
#[tokio::test]
async fn q3_as_a_stream_table_join_like_the_batch_oracle() -> Result<()> {
    use weir_runtime::source::nexmark::Table;
    const EVENTS: u64 = 200_000;
    let weir = Weir::start(&[]).await?;
    weir.exec(&format!(
        "CREATE SOURCE person WITH (connector = 'nexmark', table = 'person', events = {EVENTS}, seed = 9)"
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW people AS SELECT id, max(name) AS name, max(city) AS city, \
         max(state) AS state FROM person GROUP BY id",
    )
    .await?;
    weir.wait_finished("person").await?;
    weir.exec(&format!(
        "CREATE SOURCE auction WITH (connector = 'nexmark', table = 'auction', events = {EVENTS}, seed = 9)"
    ))
    .await?;
    weir.exec(
        "CREATE MATERIALIZED VIEW q3 AS SELECT P.name, P.city, P.state, A.id \
         FROM auction AS A JOIN people AS P ON A.seller = P.id \
         WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
    )
    .await?;
    weir.wait_finished("auction").await?;
    let ctx = oracle_context(
        &[("person", Table::Person), ("auction", Table::Auction)],
        9,
        EVENTS,
    )?;
    let expected = q3_oracle(&ctx).await?;
    assert!(expected.len() > 100, "q3 oracle rows: {}", expected.len());
    assert_eq!(q3_rows(&weir, "q3").await?, expected);
    Ok(())
}

/// Nexmark q4 through the binary: an average over each auction's closing price, an
/// aggregate over an interval join of two sources; equal to DataFusion in batch mode.
#[tokio::test]
async fn q4_averages_closing_prices_like_the_batch_oracle() -> Result<()> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};
    use weir_runtime::source::nexmark::Table;
    const EVENTS: u64 = 200_000;
    let weir = Weir::start(&[]).await?;
    for table in ["auction", "bid"] {
        weir.exec(&format!(
            "CREATE SOURCE {table} WITH (connector = 'nexmark', table = '{table}', events = {EVENTS}, seed = 11)"
        ))
        .await?;
    }
    weir.exec(
        "CREATE MATERIALIZED VIEW q4 WITH (state_ttl = '10 seconds') AS \
         SELECT Q.category, avg(Q.final) AS avg_final \
         FROM (SELECT A.id, A.category, A.date_time, max(B.price) AS final \
               FROM auction AS A JOIN bid AS B ON A.id = B.auction \
               AND B.date_time BETWEEN A.date_time AND A.expires \
               GROUP BY A.id, A.category, A.date_time) AS Q \
         GROUP BY Q.category",
    )
    .await?;
    for table in ["auction", "bid"] {
        weir.wait_finished(table).await?;
    }
    let mut got: Vec<String> = weir.get("/api/v1/views/q4").await?["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| format!("{}|{:.6}", r[0], r[1].as_f64().unwrap_or(f64::NAN)))
        .collect();
    got.sort();

    let ctx = oracle_context(
        &[("auction", Table::Auction), ("bid", Table::Bid)],
        11,
        EVENTS,
    )?;
    let oracle = ctx
        .sql(
            "SELECT Q.category, avg(Q.final) FROM (SELECT max(B.price) AS final, A.category \
             FROM auction AS A, bid AS B WHERE A.id = B.auction \
             AND B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.category) AS Q \
             GROUP BY Q.category",
        )
        .await?
        .collect()
        .await?;
    let mut expected = Vec::new();
    for b in &oracle {
        let categories = b.column(0).as_primitive::<Int64Type>();
        let averages = b.column(1).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            expected.push(format!("{}|{:.6}", categories.value(i), averages.value(i)));
        }
    }
    expected.sort();
    assert_eq!(expected.len(), 5, "{expected:?}");
    assert_eq!(got, expected);
    let explain = weir.exec("EXPLAIN VIEW q4").await?["rows"].to_string();
    assert!(
        explain.contains("each group final once the join frees its rows"),
        "{explain}"
    );
    Ok(())
}

/// DataFusion over the Nexmark `tables`, generated as `CREATE SOURCE ... WITH
/// (connector = 'nexmark', table = ..., events, seed)` generates them.
fn oracle_context(
    tables: &[(&str, weir_runtime::source::nexmark::Table)],
    seed: u64,
    events: u64,
) -> Result<datafusion::prelude::SessionContext> {
    use weir_runtime::source::nexmark::{Generator, GeneratorConfig};
    let ctx = datafusion::prelude::SessionContext::new();
    for (name, table) in tables {
        let mut g = Generator::new(GeneratorConfig {
            table: *table,
            seed,
            events: Some(events),
            event_rate: 10_000,
            start_time_ms: 1_436_918_400_000,
        });
        let batches: Vec<_> = std::iter::from_fn(|| g.next_batch(4_000)).collect();
        ctx.register_table(
            *name,
            std::sync::Arc::new(datafusion::datasource::MemTable::try_new(
                table.schema(),
                vec![batches],
            )?),
        )?;
    }
    Ok(ctx)
}

/// weir with two workers (chunks are made on the workers only with more than one) and
/// the failpoint that panics every generator chunk from the fourth, `more` added to its
/// config, and a source `bids` of 100,000 events (`options` added to its WITH): weir
/// and its config file.
pub(crate) async fn failing_generator(more: &str, options: &str) -> Result<(Weir, String)> {
    let (dir, config) =
        crate::kafka::config_dir(&format!("[runtime]\nparallelism = 2\n{more}")).await?;
    let weir = Weir::start_with_env(
        dir,
        &["--config", &config],
        &[("WEIR_FAILPOINTS", "nexmark-chunk-panic")],
    )
    .await?;
    weir.exec(&format!(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 100000, \
         seed = 1{options})"
    ))
    .await?;
    Ok((weir, config))
}

/// A chunk of the generator that panics (a bug; here every chunk from the fourth) fails
/// its source, saying why, instead of leaving it running without rows; its view keeps
/// the rows read before, and the server goes on.
#[tokio::test]
async fn a_panic_in_the_generator_fails_its_source_saying_why() -> Result<()> {
    let (weir, config) = failing_generator("", "").await?;
    weir.exec("CREATE MATERIALIZED VIEW n AS SELECT count(*) AS n FROM bids")
        .await?;
    let status = weir
        .wait_source("bids", "failed", Duration::from_secs(30))
        .await?;
    let error = status["error"].as_str().unwrap_or("");
    assert!(
        error.contains("the nexmark generator stopped") && error.contains("nexmark-chunk-panic"),
        "{status}"
    );
    let read = status["records_in"].as_u64().unwrap_or(0);
    assert!(
        read > 0 && read < 100_000,
        "the first three chunks only: {status}"
    );
    let rows = weir.get("/api/v1/views/n").await?["rows"].clone();
    assert_eq!(
        rows,
        serde_json::json!([[read]]),
        "the view keeps what was read"
    );
    assert!(
        weir.get("/api/v1/health").await?.is_object(),
        "the server goes on"
    );
    // Checkpoints hold the position it stopped at (its final snapshot's, which the
    // pipeline leaves just after the status turns), for a restart to resume from.
    let at = weir
        .wait_for(
            "a checkpoint at the failed source's last position",
            Duration::from_secs(10),
            || async {
                let taken = weir.checkpoint_now().await?;
                let event = taken["sources"][0]["position"]["event"]
                    .as_str()
                    .unwrap_or("0");
                Ok((event != "0").then(|| event.to_string()))
            },
        )
        .await?;
    assert!(at.parse::<u64>()? >= read, "{at} events for {read} bids");
    // A restart (as a crash, now without the failpoint) resumes the source there: the
    // view ends with every bid of the 100,000 events once (46 in 50 events are bids).
    let weir = weir.restart(&["--config", &config]).await?;
    weir.wait_finished("bids").await?;
    let rows = weir.get("/api/v1/views/n").await?["rows"].clone();
    assert_eq!(rows, serde_json::json!([[92_000]]));
    Ok(())
}
