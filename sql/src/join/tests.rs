use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::assert_batches_eq;

use crate::operator::Collector;
use crate::parser::{Statement, WatermarkSpec, parse_statement};
use crate::planner::{ContinuousQuery, SourceCatalog, SourceInfo};
use crate::schema::TIMESTAMP;
use crate::testing::{batch, bids_for_checkpoints, catalog, scrambled};
use crate::watermark::Watermark;

#[tokio::test]
async fn joins_of_several_sources_need_the_same_window_on_each() {
    let mut sources = catalog();
    let bids = sources["bids"].clone();
    sources.insert("asks".to_string(), bids);
    let plan_in = |sql: &'static str| {
        let sources = sources.clone();
        async move {
            let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
                panic!("not a view")
            };
            ContinuousQuery::plan(&view, &sources).await
        }
    };
    let q = plan_in(
        "CREATE MATERIALIZED VIEW v AS SELECT b.window_start, b.auction FROM \
         TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS b JOIN TUMBLE(asks, date_time, INTERVAL '10' SECOND) AS a \
         ON b.window_start = a.window_start AND b.auction = a.auction",
    )
    .await
    .expect("plans");
    assert_eq!(q.source, "asks");
    assert_eq!(q.other_sources, ["bids"]);
    for (sql, named) in [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM bids AS b JOIN asks AS a ON b.auction = a.auction",
            "without bounds on their event times",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS b \
             JOIN TUMBLE(asks, date_time, INTERVAL '5' SECOND) AS a ON b.window_start = a.window_start",
            "same TUMBLE or HOP window",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS b \
             JOIN TUMBLE(asks, date_time, INTERVAL '10' SECOND) AS a ON b.auction = a.auction",
            "match window_start",
        ),
    ] {
        let e = plan_in(sql).await.expect_err(sql).to_string();
        assert!(e.contains(named), "{sql}\n{e}");
    }
}

/// Snapshot state through Arrow IPC as the checkpoint store keeps it: one file per run
/// of batches of one schema (metadata included).
fn through_ipc(state: &[RecordBatch]) -> Vec<RecordBatch> {
    let mut read = Vec::new();
    for run in state.chunk_by(|a, b| a.schema() == b.schema()) {
        let mut file = Vec::new();
        let mut w =
            datafusion::arrow::ipc::writer::FileWriter::try_new(&mut file, &run[0].schema())
                .expect("writer");
        for b in run {
            w.write(b).expect("write");
        }
        w.finish().expect("finish");
        drop(w);
        let reader =
            datafusion::arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(file), None)
                .expect("reader");
        for b in reader {
            read.push(b.expect("read"));
        }
    }
    read
}

/// Sources `bids` and `asks` of one schema.
fn two_sources() -> SourceCatalog {
    let mut sources = catalog();
    let bids = sources["bids"].clone();
    sources.insert("asks".to_string(), bids);
    sources
}

/// Asks: like the bids, `shift_ms` later, with other prices.
fn asks_for(bids: &[RecordBatch], shift_ms: i64) -> Vec<RecordBatch> {
    bids.iter()
        .map(|b| {
            let col = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("i64")
                    .values()
                    .to_vec()
            };
            let times = b
                .column(2)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("ts");
            let rows: Vec<(i64, i64, i64)> = col(0)
                .into_iter()
                .zip(col(1))
                .zip(times.values().iter())
                .map(|((a, p), t)| (a, (p * 7) % 101, t + shift_ms))
                .collect();
            batch(&rows)
        })
        .collect()
}

/// Run a view over `bids` and `asks` (inputs by name), batch by batch, each input with
/// its own watermark and the view's the minimum; with `cut`, checkpoint after that many
/// batches (through Arrow IPC) and go on in a fresh operator. The rows, sorted.
async fn run_two(sql: &str, shift_ms: i64, cut: Option<usize>) -> Vec<String> {
    run_two_in(sql, shift_ms, cut, (1, 1)).await
}

/// `run_two` with the join in `instances.0` keyed instances, restored (at `cut`) in
/// `instances.1`; a join (not an aggregate over one, which answers for its aggregate)
/// must say it runs at that parallelism.
async fn run_two_in(
    sql: &str,
    shift_ms: i64,
    cut: Option<usize>,
    instances: (usize, usize),
) -> Vec<String> {
    let (rows, failed) = run_two_failing(sql, shift_ms, cut, instances).await;
    assert!(failed.is_empty(), "{failed:?}");
    rows
}

/// `run_two_in`, and the rows the operator dead-lettered (sorted) with their reasons.
async fn run_two_failing(
    sql: &str,
    shift_ms: i64,
    cut: Option<usize>,
    instances: (usize, usize),
) -> (Vec<String>, Vec<(Vec<String>, String)>) {
    let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
        panic!("not a view")
    };
    let sources = two_sources();
    // Small batches (10 rows, 500 ms), so that matches span batches.
    let slices = |batches: Vec<RecordBatch>| -> Vec<RecordBatch> {
        batches
            .iter()
            .flat_map(|b| {
                (0..b.num_rows())
                    .step_by(10)
                    .map(|o| b.slice(o, 10.min(b.num_rows() - o)))
            })
            .collect()
    };
    let mut q = ContinuousQuery::plan(&view, &sources).await.expect("plans");
    // The columns the plan says it does not read of an input hold nonsense: its source
    // need not decode them (`columns_read`, `other_columns_read`).
    let bids = scrambled(slices(bids_for_checkpoints()), read_of(&q, "bids"));
    let asks = scrambled(
        slices(asks_for(&bids_for_checkpoints(), shift_ms)),
        read_of(&q, "asks"),
    );
    let used = q.operator.set_parallelism(instances.0).expect("parallel");
    let over_join = q.operators.iter().any(|(op, _)| op == "aggregate");
    assert!(
        over_join || used == instances.0,
        "{used}: {:?}",
        q.operators
    );
    // The join itself is keyed, not only what follows it.
    let keyed = q
        .operators
        .iter()
        .any(|(_, d)| d.contains(crate::join::keyed::KEYED));
    assert!(keyed || instances == (1, 1), "{:?}", q.operators);
    let order: Vec<String> = std::iter::once(q.source.clone())
        .chain(q.other_sources.clone())
        .collect();
    let mut marks = [Watermark::new(1_000), Watermark::new(1_000)];
    let mut out = Collector::default();
    let combined = |m: &[Watermark; 2]| m[0].current().zip(m[1].current()).map(|(a, b)| a.min(b));
    for i in 0..bids.len() {
        if cut == Some(i) {
            let state = through_ipc(&q.operator.snapshot().expect("snapshot"));
            assert!(
                state
                    .iter()
                    .any(|b| b.schema().metadata().contains_key("weir.input")),
                "the second input's rows are in the snapshot"
            );
            q = ContinuousQuery::plan(&view, &sources)
                .await
                .expect("plans again");
            let used = q.operator.set_parallelism(instances.1).expect("parallel");
            assert!(over_join || used == instances.1, "{used}");
            q.operator.restore(&state).expect("restore");
            // A view kept by group takes its rows again (group ids change).
            if let Some(rows) = q.operator.keyed_rows().expect("rows") {
                out.keyed = vec![rows];
            }
        }
        for (input, name) in order.iter().enumerate() {
            let b = if name == "bids" { &bids[i] } else { &asks[i] };
            let before = combined(&marks);
            q.operator
                .process_input(input, b, before, &mut out)
                .expect("process");
            let max = b
                .column(2)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .and_then(|a| a.iter().flatten().max());
            if let Some(m) = max {
                marks[input].observe(m);
            }
            if let Some(w) = combined(&marks).filter(|&w| Some(w) > before) {
                q.operator.on_watermark(w, &mut out).expect("watermark");
            }
        }
    }
    assert!(out.late.is_empty(), "nothing is late in order");
    q.operator.on_watermark(i64::MAX, &mut out).expect("finish");
    // An updating view's rows are its groups' last rows.
    let result = match out.keyed.first() {
        Some(first) => {
            let mut view = crate::aggregate::KeyedRows::new(first.rows.schema());
            for change in &out.keyed {
                view.apply(change).expect("apply");
            }
            vec![view.all().expect("rows").1]
        }
        None => out.rows,
    };
    let mut failed: Vec<(Vec<String>, String)> = out
        .failed
        .iter()
        .map(|(rows, why)| (sorted_rows(std::slice::from_ref(rows)), why.clone()))
        .collect();
    failed.sort();
    (sorted_rows(&result), failed)
}

/// The columns of source `name` that `q` says it reads (`None`: every column).
fn read_of(q: &ContinuousQuery, name: &str) -> Option<Vec<usize>> {
    if q.source == name {
        return q.columns_read.clone();
    }
    let at = q.other_sources.iter().position(|o| o == name);
    at.and_then(|i| q.other_columns_read.get(i).cloned().flatten())
}

/// A join reads of each input only the columns its query reads and the input's time
/// column, and says so: those are all its sources need decode. The rows are the batch
/// join's with every other column made nonsense (`run_two` scrambles them).
#[tokio::test]
async fn a_join_reads_of_each_input_only_what_it_says() {
    for (view, oracle, reads) in [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.window_start, b.auction, b.price \
             FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND) AS b \
             JOIN TUMBLE(asks, date_time, INTERVAL '2' SECOND) AS a \
             ON b.window_start = a.window_start AND b.auction = a.auction",
            "SELECT date_bin(INTERVAL '2 seconds', b.date_time) AS window_start, b.auction, b.price \
             FROM bids AS b JOIN asks AS a ON b.auction = a.auction \
             AND date_bin(INTERVAL '2 seconds', b.date_time) = date_bin(INTERVAL '2 seconds', a.date_time)",
            [None, Some(vec![0, 2])],
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction, a.date_time \
             FROM bids AS b JOIN asks AS a ON b.auction = a.auction \
             AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
            "SELECT b.auction, a.date_time FROM bids AS b JOIN asks AS a ON b.auction = a.auction \
             AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
            [Some(vec![0, 2]), Some(vec![0, 2])],
        ),
    ] {
        let Statement::CreateView(parsed) = parse_statement(view).expect("parses") else {
            panic!("not a view")
        };
        let q = ContinuousQuery::plan(&parsed, &two_sources())
            .await
            .expect("plans");
        assert_eq!([read_of(&q, "bids"), read_of(&q, "asks")], reads, "{view}");
        let expected = oracle_two(oracle, 700).await;
        assert!(expected.len() > 20, "{oracle}: {}", expected.len());
        assert_eq!(run_two(view, 700, None).await, expected, "{view}");
        assert_eq!(
            run_two_in(view, 700, Some(13), (3, 2)).await,
            expected,
            "{view}: in 3 instances restored in 2"
        );
    }
}

/// The row lines of `batches` as a pretty-printed table, without the header, sorted.
fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows: Vec<String> = datafusion::arrow::util::pretty::pretty_format_batches(batches)
        .expect("format")
        .to_string()
        .lines()
        .filter(|l| {
            l.starts_with("| ") && !l.contains("window_start |") && !l.contains(" auction ")
        })
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

/// The same rows by DataFusion in batch mode over all of both inputs.
async fn oracle_two(sql: &str, shift_ms: i64) -> Vec<String> {
    let ctx = datafusion::prelude::SessionContext::new();
    let bids = bids_for_checkpoints();
    let asks = asks_for(&bids, shift_ms);
    let schema = bids[0].schema();
    for (name, rows) in [("bids", bids), ("asks", asks)] {
        let table =
            datafusion::datasource::MemTable::try_new(schema.clone(), vec![rows]).expect("table");
        ctx.register_table(name, Arc::new(table)).expect("register");
    }
    let result = ctx
        .sql(sql)
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs");
    sorted_rows(&result)
}

#[tokio::test]
async fn a_join_of_two_sources_restored_from_a_snapshot_continues_exactly() {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT b.window_start, b.auction, b.price, a.price AS ask FROM \
         TUMBLE(bids, date_time, INTERVAL '3' SECOND) AS b JOIN TUMBLE(asks, date_time, INTERVAL '3' SECOND) AS a \
         ON b.window_start = a.window_start AND b.auction = a.auction";
    let whole = run_two(sql, 700, None).await;
    assert!(whole.len() > 10, "{whole:?}");
    for cut in [1, 3, 6] {
        assert_eq!(
            run_two(sql, 700, Some(cut * 5)).await,
            whole,
            "restored after batch {cut}"
        );
    }
    // In keyed instances (by auction), restored at another parallelism.
    assert_eq!(run_two_in(sql, 700, Some(15), (3, 2)).await, whole);
    assert_eq!(run_two_in(sql, 700, Some(15), (1, 3)).await, whole);
}

/// A window whose query fails for one key fails whole in keyed instances, as it does
/// run serially: no row of it is emitted, and all of input 0's rows of it are
/// dead-lettered together, with the reason.
#[tokio::test]
async fn a_window_that_fails_in_one_instance_fails_whole() {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT b.auction, b.window_start, \
         CASE WHEN CAST(b.window_start AS BIGINT) < 5000 THEN 100 / (b.auction - 3) ELSE 1 END AS q \
         FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) AS b JOIN TUMBLE(asks, date_time, INTERVAL '3' SECOND) AS a \
         ON b.window_start = a.window_start AND b.auction = a.auction";
    let (serial, serial_failed) = run_two_failing(sql, 700, None, (1, 1)).await;
    // Auction 3 divides by zero in the first two windows only.
    let reasons: Vec<&String> = serial_failed.iter().map(|(_, why)| why).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(!serial.is_empty(), "the other windows give rows");
    let (keyed, keyed_failed) = run_two_failing(sql, 700, None, (3, 3)).await;
    assert_eq!(keyed, serial);
    assert_eq!(keyed_failed, serial_failed);
}

/// A per-window join splits into instances only by a key every part of the query keeps
/// together; otherwise it runs in one, and EXPLAIN says which.
#[tokio::test]
async fn a_window_join_runs_in_keyed_instances_only_by_a_key_it_keeps_together() {
    let window = |s: &str| format!("TUMBLE({s}, date_time, INTERVAL '3' SECOND)");
    let (bids, asks) = (window("bids"), window("asks"));
    for (select, keyed) in [
        // Distinct per side, grouped by the key: kept together.
        (
            format!(
                "SELECT b.auction, b.window_start FROM (SELECT auction, window_start FROM {bids} GROUP BY auction, window_start) AS b \
                 JOIN (SELECT auction, window_start FROM {asks} GROUP BY auction, window_start) AS a \
                 ON b.auction = a.auction AND b.window_start = a.window_start"
            ),
            true,
        ),
        // Matched on the window only.
        (
            format!(
                "SELECT b.auction, a.price FROM {bids} AS b JOIN {asks} AS a ON b.window_start = a.window_start \
                 WHERE b.auction = 1 AND a.auction = 2"
            ),
            false,
        ),
        // An aggregate over the join: its groups span keys.
        (
            format!(
                "SELECT b.window_start, count(*) AS n FROM {bids} AS b JOIN {asks} AS a \
                 ON b.auction = a.auction AND b.window_start = a.window_start GROUP BY b.window_start"
            ),
            false,
        ),
        // A side that aggregates over every key before the join.
        (
            format!(
                "SELECT b.top, a.auction FROM (SELECT max(price) AS top, window_start FROM {bids} GROUP BY window_start) AS b \
                 JOIN {asks} AS a ON b.top = a.price AND b.window_start = a.window_start"
            ),
            false,
        ),
    ] {
        let sql = format!("CREATE MATERIALIZED VIEW v AS {select}");
        let Statement::CreateView(view) = parse_statement(&sql).expect("parses") else {
            panic!("not a view")
        };
        let mut q = ContinuousQuery::plan(&view, &two_sources())
            .await
            .expect("plans");
        let says = q
            .operators
            .iter()
            .any(|(_, d)| d.contains(crate::join::keyed::KEYED));
        assert_eq!(says, keyed, "{select}: {:?}", q.operators);
        let expected = if keyed { 3 } else { 1 };
        assert_eq!(
            q.operator.set_parallelism(3).expect("parallel"),
            expected,
            "{select}"
        );
        // Whatever the instances, the rows are the serial run's.
        let serial = run_two(&sql, 700, None).await;
        assert!(!serial.is_empty(), "{select}");
        assert_eq!(
            run_two_in(&sql, 700, Some(15), (expected, expected.min(2))).await,
            serial,
            "{select}"
        );
    }
}

#[tokio::test]
async fn interval_joins_match_the_batch_join_within_their_bounds() {
    for (view, oracle) in [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction, b.price, a.price AS ask, b.date_time \
             FROM bids AS b JOIN asks AS a ON b.auction = a.auction \
             AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
            "SELECT b.auction, b.price, a.price AS ask, b.date_time FROM bids AS b JOIN asks AS a \
             ON b.auction = a.auction AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
        ),
        (
            // Bounds on one side only, the other from a state_ttl; a filter on each side.
            "CREATE MATERIALIZED VIEW v WITH (state_ttl = '2s') AS SELECT b.auction, a.price AS ask \
             FROM bids AS b JOIN asks AS a ON b.auction = a.auction AND b.date_time < a.date_time \
             WHERE b.price > 50 AND a.price < 30",
            "SELECT b.auction, a.price AS ask FROM bids AS b JOIN asks AS a ON b.auction = a.auction \
             AND b.date_time < a.date_time AND a.date_time <= b.date_time + INTERVAL '2' SECOND \
             WHERE b.price > 50 AND a.price < 30",
        ),
    ] {
        // Asks later and earlier than their bids: either input may wait for the other.
        for shift in [700, -700, -1_500] {
            let expected = oracle_two(oracle, shift).await;
            assert!(expected.len() > 20, "{oracle}: {}", expected.len());
            assert_eq!(
                run_two(view, shift, None).await,
                expected,
                "{view}, shift {shift}"
            );
            for cut in [7, 21] {
                assert_eq!(
                    run_two(view, shift, Some(cut)).await,
                    expected,
                    "{view}, shift {shift}, restored at {cut}"
                );
            }
            // In keyed instances, restored at another parallelism.
            assert_eq!(
                run_two_in(view, shift, Some(13), (3, 2)).await,
                expected,
                "{view}, shift {shift}, in 3 instances restored in 2"
            );
        }
    }
}

/// A join without an equality key has nothing to route rows by: one instance.
#[tokio::test]
async fn an_interval_join_without_an_equality_key_runs_in_one_instance() {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT b.auction, a.price AS ask FROM bids AS b \
         JOIN asks AS a ON a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND \
         WHERE b.auction < 3";
    let oracle = "SELECT b.auction, a.price AS ask FROM bids AS b JOIN asks AS a \
         ON a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND WHERE b.auction < 3";
    assert_eq!(
        run_two_in(sql, 700, Some(13), (1, 1)).await,
        oracle_two(oracle, 700).await
    );
    let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
        panic!("not a view")
    };
    let mut q = ContinuousQuery::plan(&view, &two_sources())
        .await
        .expect("plans");
    assert_eq!(q.operator.set_parallelism(3).expect("parallel"), 1);
    assert!(
        q.operators
            .iter()
            .any(|(op, d)| op == "join" && d.contains("in one instance (no equality key")),
        "{:?}",
        q.operators
    );
}

#[tokio::test]
async fn aggregates_over_interval_joins_close_each_group_once_its_rows_are_freed() {
    let inner = "SELECT b.auction, b.date_time, count(*) AS n, max(a.price) AS top FROM bids AS b \
         JOIN asks AS a ON b.auction = a.auction \
         AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '2' SECOND \
         GROUP BY b.auction, b.date_time";
    let later = "SELECT b.auction, b.date_time, count(*) AS n FROM bids AS b \
         JOIN asks AS a ON b.auction = a.auction \
         AND a.date_time BETWEEN b.date_time - INTERVAL '2' SECOND AND b.date_time - INTERVAL '1' SECOND \
         GROUP BY b.auction, b.date_time";
    for (view, oracle) in [
        // Final rows per group, appended.
        (
            format!("CREATE MATERIALIZED VIEW v AS {inner}"),
            inner.to_string(),
        ),
        // An updating aggregate over them (Nexmark q4's shape).
        (
            format!(
                "CREATE MATERIALIZED VIEW v AS SELECT auction, sum(n) AS n, avg(top) AS top \
                 FROM ({inner}) AS q GROUP BY auction"
            ),
            format!(
                "SELECT auction, sum(n) AS n, avg(top) AS top FROM ({inner}) AS q GROUP BY auction"
            ),
        ),
        // Grouped by the later side: its rows are freed only after the watermark passes
        // them, so groups close at the watermark.
        (
            format!("CREATE MATERIALIZED VIEW v AS {later}"),
            later.to_string(),
        ),
    ] {
        for shift in [700, -700, 1_500] {
            let expected = oracle_two(&oracle, shift).await;
            assert!(expected.len() >= 7, "{oracle}: {}", expected.len());
            assert_eq!(
                run_two(&view, shift, None).await,
                expected,
                "{view}, shift {shift}"
            );
            for cut in [7, 21] {
                assert_eq!(
                    run_two(&view, shift, Some(cut)).await,
                    expected,
                    "{view}, shift {shift}, restored at {cut}"
                );
            }
            assert_eq!(
                run_two_in(&view, shift, Some(13), (3, 2)).await,
                expected,
                "{view}, shift {shift}, in 3 instances restored in 2"
            );
        }
    }
}

#[tokio::test]
async fn joins_without_time_bounds_or_of_other_shapes_are_named() {
    let sources = two_sources();
    for (sql, named) in [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM bids AS b JOIN asks AS a ON b.auction = a.auction",
            "state_ttl",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction, count(*) FROM bids AS b JOIN asks AS a \
             ON b.auction = a.auction AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND \
             GROUP BY b.auction",
            "GROUP BY the time column",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM bids AS b LEFT JOIN asks AS a \
             ON b.auction = a.auction AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
            "only inner joins",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM bids AS b JOIN asks AS a \
             ON b.auction = a.auction AND a.date_time BETWEEN b.date_time + INTERVAL '2' SECOND AND b.date_time",
            "exclude every pair",
        ),
        (
            // The group's time column must be a side's own, not computed under its name.
            "CREATE MATERIALIZED VIEW v AS SELECT date_time, count(*) FROM (SELECT \
             b.date_time - INTERVAL '1' HOUR AS date_time FROM bids AS b JOIN asks AS a \
             ON b.auction = a.auction AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND) \
             GROUP BY date_time",
            "GROUP BY the time column",
        ),
        (
            // A cast to a coarser type is not a bound.
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM bids AS b JOIN asks AS a ON b.auction = a.auction \
             AND CAST(a.date_time AS DATE) BETWEEN CAST(b.date_time AS DATE) AND CAST(b.date_time AS DATE)",
            "without bounds",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM \
             (SELECT auction, date_time + INTERVAL '1' HOUR AS date_time FROM bids) AS b JOIN asks AS a \
             ON b.auction = a.auction AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
            "own date_time column",
        ),
        (
            "CREATE MATERIALIZED VIEW v WITH (allowed_lateness = '1s') AS SELECT b.auction FROM bids AS b \
             JOIN asks AS a ON b.auction = a.auction",
            "takes state_ttl",
        ),
    ] {
        let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
            panic!("not a view")
        };
        let e = ContinuousQuery::plan(&view, &sources)
            .await
            .expect_err(sql)
            .to_string();
        assert!(e.contains(named), "{sql}\n{e}");
    }
}

#[tokio::test]
async fn a_group_of_the_later_side_stays_open_while_its_rows_may_still_come() {
    // Bids (input 1) join asks (input 0) one to two seconds before them.
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT b.auction, b.date_time, count(*) AS n \
         FROM bids AS b JOIN asks AS a ON b.auction = a.auction \
         AND a.date_time BETWEEN b.date_time - INTERVAL '2' SECOND AND b.date_time - INTERVAL '1' SECOND \
         GROUP BY b.auction, b.date_time";
    let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
        panic!("not a view")
    };
    let mut q = ContinuousQuery::plan(&view, &two_sources())
        .await
        .expect("plans");
    assert_eq!(q.source, "asks");
    let mut out = Collector::default();
    let op = &mut q.operator;
    op.process_input(0, &batch(&[(1, 10, 3_000)]), None, &mut out)
        .expect("ask");
    op.process_input(1, &batch(&[(1, 20, 4_500)]), None, &mut out)
        .expect("bid");
    // The bids' rows of 4.5 s are still kept (until 5.5 s), but a bid of 4.5 s is not late.
    op.on_watermark(4_000, &mut out).expect("watermark");
    op.process_input(1, &batch(&[(1, 30, 4_500)]), Some(4_000), &mut out)
        .expect("another bid of the same time");
    op.on_watermark(i64::MAX, &mut out).expect("finish");
    assert!(out.late.is_empty());
    assert_batches_eq!(
        [
            "+---------+-------------------------+---+",
            "| auction | date_time               | n |",
            "+---------+-------------------------+---+",
            "| 1       | 1970-01-01T00:00:04.500 | 2 |",
            "+---------+-------------------------+---+",
        ],
        &out.rows
    );
}

#[tokio::test]
async fn a_column_named_only_where_the_optimizer_drops_it_still_plans() {
    // `k IS NOT NULL` of a column that cannot be NULL is optimized away, so the
    // optimized plan reads no `k`; planning again with only the read columns must not
    // fail on the name.
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, true),
        Field::new("date_time", TIMESTAMP, false),
    ]));
    let watermark = Some(WatermarkSpec {
        column: "date_time".into(),
        delay: std::time::Duration::ZERO,
    });
    let mut sources = SourceCatalog::new();
    for name in ["a", "b"] {
        sources.insert(
            name.to_string(),
            SourceInfo {
                schema: schema.clone(),
                watermark: watermark.clone(),
            },
        );
    }
    for sql in [
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, v FROM (SELECT window_start, v, \
         row_number() OVER (PARTITION BY window_start ORDER BY v) AS rn \
         FROM TUMBLE(a, date_time, INTERVAL '10' SECOND) WHERE k IS NOT NULL) WHERE rn <= 1",
        "CREATE MATERIALIZED VIEW v AS SELECT x.window_start, x.v FROM \
         TUMBLE(a, date_time, INTERVAL '10' SECOND) AS x JOIN TUMBLE(b, date_time, INTERVAL '10' SECOND) AS y \
         ON x.window_start = y.window_start AND x.v = y.v WHERE x.k IS NOT NULL",
    ] {
        let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
            panic!("not a view")
        };
        ContinuousQuery::plan(&view, &sources).await.expect(sql);
    }
}

#[tokio::test]
async fn a_join_input_with_an_older_watermark_still_sees_rows_behind_the_latest_as_late() {
    // Inputs run on threads of their own: a batch may come with a watermark older than
    // one the other input has already freed rows or closed windows at.
    for sql in [
        "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM bids AS b JOIN asks AS a \
         ON b.auction = a.auction AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
        "CREATE MATERIALIZED VIEW v AS SELECT b.window_start, b.auction FROM \
         TUMBLE(bids, date_time, INTERVAL '1' SECOND) AS b JOIN TUMBLE(asks, date_time, INTERVAL '1' SECOND) AS a \
         ON b.window_start = a.window_start AND b.auction = a.auction",
    ] {
        // Also across a change of parallelism in between: the new instances know the
        // watermark the old ones closed windows at.
        for rescaled in [false, true] {
            let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
                panic!("not a view")
            };
            let mut q = ContinuousQuery::plan(&view, &two_sources())
                .await
                .expect("plans");
            let mut out = Collector::default();
            q.operator.on_watermark(5_000, &mut out).expect("watermark");
            if rescaled {
                assert_eq!(q.operator.set_parallelism(3).expect("rescales"), 3, "{sql}");
            }
            let b = batch(&[(1, 10, 4_000)]);
            q.operator
                .process_input(1, &b, Some(3_000), &mut out)
                .expect("process");
            assert_eq!(
                out.late.iter().map(|b| b.num_rows()).sum::<usize>(),
                1,
                "{sql}, rescaled: {rescaled}"
            );
            // Whole, with every column of the source.
            assert_eq!(out.late[0], b, "{sql}, rescaled: {rescaled}");
        }
    }
    // Late rows of keys spread over three instances come back whole, in the order of
    // the batch they came in.
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT b.window_start, b.auction FROM \
               TUMBLE(bids, date_time, INTERVAL '1' SECOND) AS b JOIN TUMBLE(asks, date_time, INTERVAL '1' SECOND) AS a \
               ON b.window_start = a.window_start AND b.auction = a.auction";
    let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
        panic!("not a view")
    };
    let mut q = ContinuousQuery::plan(&view, &two_sources())
        .await
        .expect("plans");
    assert_eq!(q.operator.set_parallelism(3).expect("rescales"), 3);
    let mut out = Collector::default();
    q.operator.on_watermark(5_000, &mut out).expect("watermark");
    let rows: Vec<(i64, i64, i64)> = (0..40)
        .map(|i| (i, 100 + i, if i % 3 == 0 { 5_200 } else { 4_000 + i }))
        .collect();
    q.operator
        .process_input(1, &batch(&rows), Some(3_000), &mut out)
        .expect("process");
    let late: Vec<(i64, i64, i64)> = rows.iter().copied().filter(|r| r.2 < 5_000).collect();
    assert_eq!(
        datafusion::arrow::compute::concat_batches(&batch(&[]).schema(), &out.late)
            .expect("late rows"),
        batch(&late)
    );
}
