use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::assert_batches_eq;

use super::*;
use crate::parser::{Statement, parse_statement};
use crate::watermark::Watermark;

fn catalog() -> SourceCatalog {
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("date_time", TIMESTAMP, false),
    ]));
    let watermark = Some(WatermarkSpec {
        column: "date_time".into(),
        delay: std::time::Duration::ZERO,
    });
    SourceCatalog::from([("bids".to_string(), SourceInfo { schema, watermark })])
}

fn batch(rows: &[(i64, i64, i64)]) -> RecordBatch {
    let c = catalog();
    RecordBatch::try_new(
        c["bids"].schema.clone(),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

async fn plan(sql: &str) -> Result<ContinuousQuery> {
    let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
        panic!("not a view")
    };
    ContinuousQuery::plan(&view, &catalog()).await
}

/// Drive a query like the runtime does: process with the old watermark, then advance.
fn run(
    q: &mut ContinuousQuery,
    batches: &[RecordBatch],
    finish: bool,
) -> (Vec<RecordBatch>, usize) {
    let mut wm = Watermark::new(0);
    let mut out = Collector::default();
    for b in batches {
        q.operator
            .process(b, wm.current(), &mut out)
            .expect("process");
        let max = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .and_then(|a| a.iter().flatten().max());
        if let Some(w) = max.and_then(|m| wm.observe(m)) {
            q.operator.on_watermark(w, &mut out).expect("watermark");
        }
    }
    if finish && let Some(w) = wm.finish() {
        q.operator.on_watermark(w, &mut out).expect("finish");
    }
    (out.rows, out.late.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test]
async fn tumbling_aggregate_emits_each_window_once_when_the_watermark_passes() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, auction, count(*) AS n, sum(price) AS total, \
         max(price) AS top, min(price) AS low, avg(price) AS mean \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) WHERE price > 0 \
         GROUP BY window_start, window_end, auction HAVING count(*) > 1",
    )
    .await
    .expect("plans");
    let b1 = batch(&[
        (1, 10, 1_000),
        (1, 30, 2_000),
        (2, 5, 3_000),
        (2, 7, 4_000),
        (1, -1, 5_000),
        (1, 50, 11_000),
    ]);
    let (rows, late) = run(&mut q, &[b1], false);
    // Watermark 11_000 closed [0, 10s): auction 1 (two positive prices) and 2.
    assert_batches_eq!(
        [
            "+---------------------+---------------------+---------+---+-------+-----+-----+------+",
            "| window_start        | window_end          | auction | n | total | top | low | mean |",
            "+---------------------+---------------------+---------+---+-------+-----+-----+------+",
            "| 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 1       | 2 | 40    | 30  | 10  | 20.0 |",
            "| 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 2       | 2 | 12    | 7   | 5   | 6.0  |",
            "+---------------------+---------------------+---------+---+-------+-----+-----+------+",
        ],
        &rows
    );
    assert_eq!(late, 0);
    assert_eq!(q.operator.open_windows(), 1);

    // A row for the closed window is late; the open window keeps accumulating.
    let b2 = batch(&[(1, 99, 9_000), (1, 60, 12_000), (3, 1, 13_000)]);
    let mut wm_rows = Vec::new();
    let mut out = Collector::default();
    q.operator
        .process(&b2, Some(11_000), &mut out)
        .expect("process");
    assert_eq!(out.late.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    q.operator.on_watermark(i64::MAX, &mut out).expect("finish");
    wm_rows.extend(out.rows);
    assert_batches_eq!(
        [
            "+---------------------+---------------------+---------+---+-------+-----+-----+------+",
            "| window_start        | window_end          | auction | n | total | top | low | mean |",
            "+---------------------+---------------------+---------+---+-------+-----+-----+------+",
            "| 1970-01-01T00:00:10 | 1970-01-01T00:00:20 | 1       | 2 | 110   | 60  | 50  | 55.0 |",
            "+---------------------+---------------------+---------+---+-------+-----+-----+------+",
        ],
        &wm_rows
    );
    assert_eq!(
        q.operator.open_windows(),
        0,
        "closed windows free their state"
    );
}

#[tokio::test]
async fn a_lone_count_distinct_is_one_incremental_aggregate() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, count(DISTINCT auction) AS auctions \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
    )
    .await
    .expect("plans");
    let (rows, _) = run(
        &mut q,
        &[batch(&[
            (1, 1, 1_000),
            (1, 2, 2_000),
            (2, 3, 3_000),
            (3, 4, 12_000),
        ])],
        true,
    );
    assert_batches_eq!(
        [
            "+---------------------+----------+",
            "| window_start        | auctions |",
            "+---------------------+----------+",
            "| 1970-01-01T00:00:00 | 2        |",
            "| 1970-01-01T00:00:10 | 1        |",
            "+---------------------+----------+",
        ],
        &rows
    );
}

#[tokio::test]
async fn hopping_windows_count_each_row_in_every_window_it_falls_in() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, count(*) AS n, sum(price) AS total \
         FROM HOP(bids, date_time, INTERVAL '5' SECOND, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
    )
    .await
    .expect("plans");
    assert!(
        q.description
            .contains("hopping window 10000 ms every 5000 ms"),
        "{}",
        q.description
    );
    let (rows, late) = run(
        &mut q,
        &[batch(&[(1, 1, 1_000), (1, 2, 6_000), (1, 4, 12_000)])],
        true,
    );
    assert_eq!(late, 0);
    assert_batches_eq!(
        [
            "+---------------------+---------------------+---+-------+",
            "| window_start        | window_end          | n | total |",
            "+---------------------+---------------------+---+-------+",
            "| 1969-12-31T23:59:55 | 1970-01-01T00:00:05 | 1 | 1     |",
            "| 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 2 | 3     |",
            "| 1970-01-01T00:00:05 | 1970-01-01T00:00:15 | 2 | 6     |",
            "| 1970-01-01T00:00:10 | 1970-01-01T00:00:20 | 1 | 4     |",
            "+---------------------+---------------------+---+-------+",
        ],
        &rows
    );
}

#[tokio::test]
async fn group_by_without_a_window_updates_its_rows() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT auction, count(*) AS n, max(price) AS top FROM bids \
         GROUP BY auction HAVING count(*) < 3",
    )
    .await
    .expect("plans");
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(1, 10, 1_000), (2, 5, 2_000)]), None, &mut out)
        .expect("first");
    q.operator
        .process(&batch(&[(1, 30, 3_000)]), None, &mut out)
        .expect("second");
    // The view now holds every group's current value; the changes name only auction 1.
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 1       | 2 | 30  |",
            "| 2       | 1 | 5   |",
            "+---------+---+-----+"
        ],
        &[out.replace.clone().expect("replaced")]
    );
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 1       | 2 | 30  |",
            "+---------+---+-----+"
        ],
        &out.rows[1..]
    );
    // A third bid on auction 1 fails HAVING: it leaves the view.
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(1, 1, 4_000)]), None, &mut out)
        .expect("third");
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 2       | 1 | 5   |",
            "+---------+---+-----+"
        ],
        &[out.replace.expect("replaced")]
    );
    assert!(q.operator.state_size() > 0);
}

#[tokio::test]
async fn allowed_lateness_updates_an_emitted_window() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v WITH (allowed_lateness = '5s') AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
    )
    .await
    .expect("plans");
    let count = |out: &Collector| -> Vec<(i64, usize)> {
        out.upserts
            .iter()
            .map(|(k, b)| {
                (
                    *k,
                    b.column(1)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .map_or(0, |a| a.value(0) as usize),
                )
            })
            .collect()
    };
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(1, 1, 1_000), (1, 1, 2_000)]), None, &mut out)
        .expect("process");
    q.operator
        .on_watermark(10_000, &mut out)
        .expect("closes [0, 10s)");
    assert_eq!(
        count(&out),
        vec![(0, 2)],
        "emitted when the watermark reaches the end"
    );
    assert!(out.rows.is_empty(), "with lateness, windows are upserts");

    // Within the lateness: accepted, and the window is emitted again with the new count.
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(1, 1, 3_000)]), Some(12_000), &mut out)
        .expect("process");
    assert!(out.late.is_empty());
    assert_eq!(count(&out), vec![(0, 3)]);

    // Past end + lateness: the window is final and its state gone; the next row is late.
    let mut out = Collector::default();
    q.operator.on_watermark(15_000, &mut out).expect("final");
    assert!(out.upserts.is_empty(), "no change since the last emission");
    assert_eq!(q.operator.open_windows(), 0);
    q.operator
        .process(&batch(&[(1, 1, 4_000)]), Some(15_000), &mut out)
        .expect("process");
    assert_eq!(out.late.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);

    let e = plan(
        "CREATE MATERIALIZED VIEW v WITH (allowed_lateness = '5s') AS SELECT auction FROM bids",
    )
    .await
    .expect_err("not windowed");
    assert!(e.to_string().contains("windowed"), "{e}");
    let e = plan("CREATE MATERIALIZED VIEW v WITH (lateness = '5s') AS SELECT auction FROM bids")
        .await
        .expect_err("unknown");
    assert!(e.to_string().contains("unknown view option"), "{e}");
}

#[tokio::test]
async fn order_by_limit_keeps_the_top_rows_of_each_window() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, auction, count(*) AS n \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end, auction \
         ORDER BY n DESC, auction LIMIT 2",
    )
    .await
    .expect("plans");
    assert!(
        q.operators.iter().any(|(op, _)| op == "top-n"),
        "{:?}",
        q.operators
    );
    let rows = [
        (1, 1, 1_000),
        (2, 1, 2_000),
        (2, 1, 3_000),
        (3, 1, 4_000),
        (3, 1, 5_000),
        (3, 1, 6_000),
        (4, 1, 12_000),
    ];
    let (out, _) = run(&mut q, &[batch(&rows)], true);
    assert_batches_eq!(
        [
            "+---------------------+---------+---+",
            "| window_start        | auction | n |",
            "+---------------------+---------+---+",
            "| 1970-01-01T00:00:00 | 3       | 3 |",
            "| 1970-01-01T00:00:00 | 2       | 2 |",
            "| 1970-01-01T00:00:10 | 4       | 1 |",
            "+---------------------+---------+---+",
        ],
        &out
    );
}

#[tokio::test]
async fn projection_and_filter_view_is_stateless() {
    let mut q = plan("CREATE MATERIALIZED VIEW big AS SELECT auction, price * 2 AS doubled FROM bids WHERE price >= 30")
        .await
        .expect("plans");
    let (rows, late) = run(
        &mut q,
        &[batch(&[(1, 10, 1_000), (2, 30, 2_000), (3, 40, 500)])],
        true,
    );
    assert_batches_eq!(
        [
            "+---------+---------+",
            "| auction | doubled |",
            "+---------+---------+",
            "| 2       | 60      |",
            "| 3       | 80      |",
            "+---------+---------+",
        ],
        &rows
    );
    assert_eq!(late, 0, "a stateless view has no windows to be late for");
}

#[tokio::test]
async fn unsupported_constructs_are_named() {
    let cases = [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT count(*) FROM bids",
            "without GROUP BY",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM bids ORDER BY price",
            "ORDER BY",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM HOP(bids, date_time, INTERVAL '1' SECOND, INTERVAL '2' SECOND)",
            "without GROUP BY",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM SESSION(bids, date_time, INTERVAL '1' SECOND)",
            "SESSION",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT window_start, count(*) FROM HOP(bids, date_time, INTERVAL '1' SECOND) GROUP BY window_start",
            "four arguments",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM nope",
            "no source named nope",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT nope FROM bids",
            "nope",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT auction, count(*) FROM TUMBLE(bids, date_time, INTERVAL '1' SECOND) GROUP BY auction",
            "window_start",
        ),
    ];
    for (sql, expected) in cases {
        let e = plan(sql).await.expect_err(sql).to_string();
        assert!(e.contains(expected), "{sql}: {e}");
    }
}

#[tokio::test]
async fn a_failing_expression_loses_no_rows_and_changes_no_state() {
    // Pre-aggregate failure: 100 / (price - 5) divides by zero for price 5.
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, count(*) AS n \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) WHERE 100 / (price - 5) > 0 \
         GROUP BY window_start, window_end",
    )
    .await
    .expect("plans");
    let mut out = Collector::default();
    let good_then_bad = batch(&[(1, 10, 1_000), (1, 20, 15_000), (1, 5, 16_000)]);
    assert!(q.operator.process(&good_then_bad, None, &mut out).is_err());
    assert_eq!(
        q.operator.open_windows(),
        0,
        "no window counted part of the failed batch"
    );

    // Post-aggregate failure: the window's aggregated rows come back as failed, and the
    // other windows are still emitted.
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, auction, count(*) AS n \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) \
         GROUP BY window_start, window_end, auction HAVING 10 / (count(*) - 2) > 0",
    )
    .await
    .expect("plans");
    let mut out = Collector::default();
    q.operator
        .process(
            &batch(&[(1, 1, 1_000), (1, 1, 2_000), (2, 1, 12_000)]),
            None,
            &mut out,
        )
        .expect("process");
    q.operator
        .on_watermark(i64::MAX, &mut out)
        .expect("emits what it can");
    assert_eq!(out.failed.len(), 1, "window [0, 10s) fails on 10 / 0");
    assert_eq!(out.failed[0].0.num_rows(), 1);
    assert!(
        out.failed[0].1.contains("Divide by zero"),
        "{}",
        out.failed[0].1
    );
    assert_eq!(
        out.rows.iter().map(RecordBatch::num_rows).sum::<usize>(),
        0,
        "10 / (1 - 2) < 0 filters the other window"
    );
    assert_eq!(q.operator.open_windows(), 0);
}

#[test]
fn absurd_intervals_are_errors_not_panics() {
    let e = parse_statement(
        "CREATE SOURCE s (t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '1e300' SECOND) WITH (connector = 'http')",
    )
    .expect_err("too long");
    assert!(e.to_string().contains("duration"), "{e}");
}

/// Bids over 20 s with repeated auctions and prices, in event-time order.
fn bids_for_checkpoints() -> Vec<RecordBatch> {
    (0..8)
        .map(|b| {
            let rows: Vec<(i64, i64, i64)> = (0..50)
                .map(|i| {
                    let n = b * 50 + i;
                    (n % 7, (n * 37) % 101, n * 50)
                })
                .collect();
            batch(&rows)
        })
        .collect()
}

/// Run `batches`, and when `cut` is given, checkpoint after that many batches and go
/// on in a fresh operator restored from the checkpoint (through Arrow IPC, as on disk).
async fn run_with_checkpoint(
    sql: &str,
    batches: &[RecordBatch],
    cut: Option<usize>,
) -> Vec<RecordBatch> {
    let mut q = plan(sql).await.expect("plans");
    let mut wm = Watermark::new(1_000);
    let mut out = Collector::default();
    for (i, b) in batches.iter().enumerate() {
        if cut == Some(i) {
            let state = q.operator.snapshot().expect("snapshot");
            let mut file = Vec::new();
            if let Some(first) = state.first() {
                let mut w =
                    datafusion::arrow::ipc::writer::FileWriter::try_new(&mut file, &first.schema())
                        .expect("writer");
                for s in &state {
                    w.write(s).expect("write");
                }
                w.finish().expect("finish");
            }
            let read: Vec<RecordBatch> = if file.is_empty() {
                Vec::new()
            } else {
                datafusion::arrow::ipc::reader::FileReader::try_new(
                    std::io::Cursor::new(file),
                    None,
                )
                .expect("reader")
                .collect::<std::result::Result<_, _>>()
                .expect("read")
            };
            q = plan(sql).await.expect("plans again");
            q.operator.restore(&read).expect("restore");
        }
        q.operator
            .process(b, wm.current(), &mut out)
            .expect("process");
        let max = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .and_then(|a| a.iter().flatten().max());
        if let Some(w) = max.and_then(|m| wm.observe(m)) {
            q.operator.on_watermark(w, &mut out).expect("watermark");
        }
    }
    if let Some(w) = wm.finish() {
        q.operator.on_watermark(w, &mut out).expect("finish");
    }
    let mut rows = out.rows;
    rows.extend(out.replace);
    rows
}

#[tokio::test]
async fn restored_state_continues_exactly_as_if_never_stopped() {
    let input = bids_for_checkpoints();
    for sql in [
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, auction, count(*) AS n, \
         count(DISTINCT price) AS prices, avg(price) AS mean, min(price) AS low, max(price) AS high, \
         stddev(price) AS sd, array_agg(price) AS all_prices, approx_distinct(price) AS ad \
         FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) GROUP BY window_start, auction",
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, auction, sum(price) AS total \
         FROM HOP(bids, date_time, INTERVAL '1' SECOND, INTERVAL '4' SECOND) GROUP BY window_start, auction",
        "CREATE MATERIALIZED VIEW v AS SELECT auction, count(DISTINCT price) AS prices, median(price) AS mid \
         FROM bids GROUP BY auction",
        // Run whole per window: the open windows' rows are the state.
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, auction, count(*) AS n \
         FROM SESSION(bids, date_time, INTERVAL '1' SECOND) GROUP BY window_start, window_end, auction",
        "CREATE MATERIALIZED VIEW v AS SELECT b.window_start, b.auction, b.price FROM \
         TUMBLE(bids, date_time, INTERVAL '3' SECOND) AS b JOIN (SELECT window_start, max(price) AS top \
         FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) GROUP BY window_start) AS m \
         ON b.window_start = m.window_start AND b.price = m.top",
    ] {
        let whole = run_with_checkpoint(sql, &input, None).await;
        let expected = datafusion::arrow::util::pretty::pretty_format_batches(&whole)
            .expect("format")
            .to_string();
        assert!(
            whole.iter().map(|b| b.num_rows()).sum::<usize>() >= 5,
            "{sql}: {whole:?}"
        );
        for cut in [1, 3, 6] {
            let resumed = run_with_checkpoint(sql, &input, Some(cut)).await;
            let got = datafusion::arrow::util::pretty::pretty_format_batches(&resumed)
                .expect("format")
                .to_string();
            assert_eq!(got, expected, "{sql} restored after batch {cut}");
        }
    }
}

#[tokio::test]
async fn a_checkpoint_of_another_shape_is_refused() {
    let mut windowed = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) GROUP BY window_start",
    )
    .await
    .expect("plans");
    let mut out = Collector::default();
    windowed
        .operator
        .process(&batch(&[(1, 10, 1_000)]), None, &mut out)
        .expect("process");
    let state = windowed.operator.snapshot().expect("snapshot");
    assert_eq!(state.len(), 1, "one open window");
    let mut updating = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT auction, avg(price) AS a, sum(price) AS s FROM bids GROUP BY auction",
    )
    .await
    .expect("plans");
    let e = updating.operator.restore(&state).expect_err("other shape");
    assert!(e.to_string().contains("columns"), "{e}");
    let mut stateless = plan("CREATE MATERIALIZED VIEW v AS SELECT auction FROM bids")
        .await
        .expect("plans");
    assert!(stateless.operator.restore(&state).is_err());
    assert!(stateless.operator.restore(&[]).is_ok());
}

#[tokio::test]
async fn window_local_queries_run_per_window_and_others_are_named() {
    let q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, auction, price FROM (SELECT window_start, \
         auction, price, row_number() OVER (PARTITION BY window_start ORDER BY price DESC) AS rn \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)) WHERE rn <= 2",
    )
    .await
    .expect("plans");
    assert!(
        q.description.contains("query per window"),
        "{}",
        q.description
    );
    let mut q = q;
    let (rows, late) = run(
        &mut q,
        &[
            batch(&[(1, 10, 1_000), (2, 30, 2_000), (3, 20, 3_000)]),
            batch(&[(4, 5, 12_000)]),
        ],
        true,
    );
    assert_eq!(late, 0);
    assert_batches_eq!(
        [
            "+---------------------+---------+-------+",
            "| window_start        | auction | price |",
            "+---------------------+---------+-------+",
            "| 1970-01-01T00:00:00 | 2       | 30    |",
            "| 1970-01-01T00:00:00 | 3       | 20    |",
            "| 1970-01-01T00:00:10 | 4       | 5     |",
            "+---------------------+---------+-------+",
        ],
        &rows
    );
    // The query reads two of the three columns: only those are kept per window, but a
    // late row goes to the dead-letter store whole.
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, price FROM (SELECT window_start, price, \
         row_number() OVER (PARTITION BY window_start ORDER BY price DESC) AS rn \
         FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)) WHERE rn = 1",
    )
    .await
    .expect("plans");
    let mut out = Collector::default();
    q.operator
        .process(
            &batch(&[(9, 1, 500), (8, 2, 25_000)]),
            Some(20_000),
            &mut out,
        )
        .expect("late");
    let kept = q.operator.snapshot().expect("snapshot");
    assert_eq!(
        kept[0].num_columns(),
        4,
        "price and date_time are kept with the window columns, auction is not"
    );
    assert_eq!(out.late.len(), 1);
    assert_eq!(out.late[0].num_columns(), 3);
    for (sql, named) in [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT auction, row_number() OVER (ORDER BY price) AS r \
             FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)",
            "PARTITION BY window_start",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS b \
             JOIN (SELECT max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start) AS m \
             ON b.price = m.top",
            "match window_start",
        ),
        (
            // Each window against the previous one would never match within a window.
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS b \
             JOIN (SELECT window_end, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) \
             GROUP BY window_end) AS m ON b.window_start = m.window_end",
            "match window_start",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS b \
             JOIN (SELECT window_start, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '5' SECOND) \
             GROUP BY window_start) AS m ON b.window_start = m.window_start",
            "same arguments",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT m.top FROM (SELECT window_start, max(price) AS top \
             FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start) AS m \
             JOIN (SELECT window_start FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) ORDER BY price LIMIT 1) AS l \
             ON m.window_start = l.window_start",
            "inside a subquery",
        ),
    ] {
        let e = plan(sql).await.expect_err(sql).to_string();
        assert!(e.contains(named), "{sql}\n{e}");
    }
}

#[tokio::test]
async fn session_windows_per_key_merge_and_close_at_their_end() {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, auction, count(*) AS n, \
               sum(price) AS total FROM SESSION(bids, date_time, INTERVAL '5' SECOND) \
               GROUP BY window_start, window_end, auction";
    let input = [
        batch(&[(1, 10, 1_000), (2, 1, 2_000), (3, 7, 1_000), (1, 20, 3_000)]),
        batch(&[(2, 1, 6_000), (3, 7, 9_000)]),
        // Bridges auction 3's two sessions into one.
        batch(&[(3, 7, 5_000)]),
        batch(&[(1, 30, 20_000)]),
    ];
    let mut q = plan(sql).await.expect("plans");
    assert!(q.description.contains("SESSION"), "{}", q.description);
    // No watermark until the end, so that the late row can still bridge two sessions.
    let mut collected = Collector::default();
    for b in &input {
        q.operator
            .process(b, None, &mut collected)
            .expect("process");
    }
    assert_eq!(
        q.operator.open_windows(),
        4,
        "auction 3's two sessions merged"
    );
    q.operator
        .on_watermark(i64::MAX, &mut collected)
        .expect("end");
    assert!(collected.late.is_empty());
    let rows = collected.rows;
    let mut out = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
        .expect("format")
        .to_string()
        .lines()
        .filter(|l| l.starts_with("| 1970"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    out.sort();
    assert_eq!(
        out,
        [
            "| 1970-01-01T00:00:01 | 1970-01-01T00:00:08 | 1       | 2 | 30    |",
            "| 1970-01-01T00:00:01 | 1970-01-01T00:00:14 | 3       | 3 | 21    |",
            "| 1970-01-01T00:00:02 | 1970-01-01T00:00:11 | 2       | 2 | 2     |",
            "| 1970-01-01T00:00:20 | 1970-01-01T00:00:25 | 1       | 1 | 30    |",
        ]
    );
    // One batch: a row bridges two sessions of auction 5, then auction 6 starts a new
    // session; the merged-away session's id must not be reused for it within the batch.
    let mut q = plan(sql).await.expect("plans");
    let mut collected = Collector::default();
    q.operator
        .process(
            &batch(&[(5, 1, 0), (5, 1, 8_000), (5, 1, 4_000), (6, 1, 100_000)]),
            None,
            &mut collected,
        )
        .expect("process");
    q.operator
        .on_watermark(i64::MAX, &mut collected)
        .expect("end");
    let counts: Vec<String> =
        datafusion::arrow::util::pretty::pretty_format_batches(&collected.rows)
            .expect("format")
            .to_string()
            .lines()
            .filter(|l| l.starts_with("| 1970"))
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>()[3..5].join(" "))
            .collect();
    let mut counts = counts;
    counts.sort();
    assert_eq!(counts, ["5 3", "6 1"], "auction, rows");
    // A row whose own session has ended by the watermark is late.
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(9, 1, 100)]), Some(10_000), &mut out)
        .expect("late");
    assert_eq!(out.late.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    for (bad, named) in [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT window_start, price % 2 AS k, count(*) FROM \
             SESSION(bids, date_time, INTERVAL '5' SECOND) GROUP BY window_start, price % 2",
            "plain columns",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT window_start FROM SESSION(bids, date_time)",
            "three arguments",
        ),
    ] {
        let e = plan(bad).await.expect_err(bad).to_string();
        assert!(e.contains(named), "{bad}\n{e}");
    }
}

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
    let bids = slices(bids_for_checkpoints());
    let asks = slices(asks_for(&bids_for_checkpoints(), shift_ms));
    let mut q = ContinuousQuery::plan(&view, &sources).await.expect("plans");
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
            q.operator.restore(&state).expect("restore");
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
    // An updating view's rows are its last complete rows.
    let result = out.replace.map_or(out.rows, |all| vec![all]);
    sorted_rows(&result)
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
        }
    }
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
        let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
            panic!("not a view")
        };
        let mut q = ContinuousQuery::plan(&view, &two_sources())
            .await
            .expect("plans");
        let mut out = Collector::default();
        q.operator.on_watermark(5_000, &mut out).expect("watermark");
        q.operator
            .process_input(1, &batch(&[(1, 10, 4_000)]), Some(3_000), &mut out)
            .expect("process");
        assert_eq!(
            out.late.iter().map(|b| b.num_rows()).sum::<usize>(),
            1,
            "{sql}"
        );
    }
}
