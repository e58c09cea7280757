use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::assert_batches_eq;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use crate::aggregate::KeyedRows;
use crate::operator::Collector;
use crate::parser::Statement;
use crate::parser::parse_statement;
use crate::testing::{batch, bids_for_checkpoints, catalog, plan, run, run_collecting, scrambled};
use crate::watermark::Watermark;

/// Run an updating aggregate over each batch of `rows` and keep its changes in `view`,
/// as the runtime keeps a view's rows by group.
fn fold(operator: &mut dyn crate::Operator, view: &mut KeyedRows, rows: &[&[(i64, i64, i64)]]) {
    for rows in rows {
        let mut out = Collector::default();
        operator
            .process(&batch(rows), None, &mut out)
            .expect("process");
        for change in &out.keyed {
            view.apply(change).expect("apply");
        }
    }
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
    const SQL: &str = "CREATE MATERIALIZED VIEW v AS SELECT auction, count(*) AS n, max(price) AS top \
         FROM bids GROUP BY auction HAVING count(*) < 3";
    let mut q = plan(SQL).await.expect("plans");
    assert!(
        q.description
            .contains("a batch costs its rows and the groups it touches"),
        "{}",
        q.description
    );
    // Aggregates whose state holds values of variable size (lists of every value of a
    // group here) say that a touched group costs its state; those of numbers do not.
    for (aggregate, grows) in [
        ("count(DISTINCT price)", true),
        ("median(price)", true),
        ("array_agg(price)", true),
        ("sum(price) + min(price)", false),
        ("avg(price)", false),
    ] {
        let sql = format!(
            "CREATE MATERIALIZED VIEW v AS SELECT auction, {aggregate} AS a FROM bids GROUP BY auction"
        );
        let description = plan(&sql).await.expect("plans").description;
        assert!(description.contains("updating by group"), "{description}");
        assert_eq!(
            description.contains("the state of the groups it touches"),
            grows,
            "{aggregate}: {description}"
        );
    }
    // The view's rows, kept by group as the runtime keeps them.
    let mut view = KeyedRows::new(q.output_schema.clone());
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(1, 10, 1_000), (2, 5, 2_000)]), None, &mut out)
        .expect("first");
    q.operator
        .process(&batch(&[(1, 30, 3_000)]), None, &mut out)
        .expect("second");
    assert!(out.rows.is_empty(), "changes by group only");
    let [first, second] = &out.keyed[..] else {
        panic!("one change per batch: {:?}", out.keyed);
    };
    assert_eq!(
        view.apply(first).expect("apply").num_rows(),
        0,
        "nothing shown before"
    );
    let before = view.apply(second).expect("apply");
    // The view holds every group's current value; the change names only auction 1.
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 1       | 2 | 30  |",
            "| 2       | 1 | 5   |",
            "+---------+---+-----+"
        ],
        &[view.all().expect("rows").1]
    );
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 1       | 2 | 30  |",
            "+---------+---+-----+"
        ],
        std::slice::from_ref(&second.rows)
    );
    // With the rows auction 1 showed before the second batch.
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 1       | 1 | 10  |",
            "+---------+---+-----+"
        ],
        &[before]
    );
    // A third bid on auction 1 fails HAVING: it leaves the view. No change row names
    // it, and the rows it replaced say what it showed last.
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(1, 1, 4_000)]), None, &mut out)
        .expect("third");
    assert_eq!(out.keyed.len(), 1);
    assert_eq!(out.keyed[0].rows.num_rows(), 0);
    let before = view.apply(&out.keyed[0]).expect("apply");
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 2       | 1 | 5   |",
            "+---------+---+-----+"
        ],
        &[view.all().expect("rows").1]
    );
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 1       | 2 | 30  |",
            "+---------+---+-----+"
        ],
        &[before]
    );
    // A group that was never shown and still is not changes nothing.
    let mut out = Collector::default();
    q.operator
        .process(&batch(&[(1, 2, 5_000)]), None, &mut out)
        .expect("fourth");
    let before = view.apply(&out.keyed[0]).expect("apply");
    assert!(out.keyed[0].rows.num_rows() == 0 && before.num_rows() == 0);
    // Restored from a checkpoint, the operator gives the view its rows again, and the
    // view still knows what each group showed.
    let state = q.operator.snapshot().expect("snapshot");
    let mut restored = plan(SQL).await.expect("plans");
    restored.operator.restore(&state).expect("restores");
    let mut view = KeyedRows::new(q.output_schema.clone());
    view.apply(
        &restored
            .operator
            .keyed_rows()
            .expect("rows")
            .expect("by group"),
    )
    .expect("apply");
    let mut out = Collector::default();
    restored
        .operator
        .process(&batch(&[(2, 9, 6_000)]), None, &mut out)
        .expect("after the restore");
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 2       | 1 | 5   |",
            "+---------+---+-----+"
        ],
        &[view.apply(&out.keyed[0]).expect("auction 2 was shown")]
    );
    assert_batches_eq!(
        [
            "+---------+---+-----+",
            "| auction | n | top |",
            "+---------+---+-----+",
            "| 2       | 2 | 9   |",
            "+---------+---+-----+"
        ],
        &[view.all().expect("rows").1]
    );
    assert!(q.operator.state_size() > 0);
}

#[tokio::test]
async fn a_group_that_keeps_every_value_is_updated_by_group_too() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT auction, count(DISTINCT price) AS prices, \
         sum(price) AS total FROM bids GROUP BY auction",
    )
    .await
    .expect("plans");
    // EXPLAIN says a touched group costs its state.
    let aggregate = q
        .operators
        .iter()
        .find(|(op, _)| op == "aggregate")
        .expect("aggregate");
    assert!(
        aggregate.1.contains("the state of the groups it touches"),
        "{aggregate:?}"
    );
    let mut view = KeyedRows::new(q.output_schema.clone());
    fold(
        q.operator.as_mut(),
        &mut view,
        &[
            &[(1, 10, 1_000), (1, 10, 1_000), (2, 5, 2_000)],
            &[(1, 20, 3_000), (1, 10, 3_000)],
            &[(2, 5, 4_000), (3, 7, 4_000)],
        ],
    );
    assert_batches_eq!(
        [
            "+---------+--------+-------+",
            "| auction | prices | total |",
            "+---------+--------+-------+",
            "| 1       | 2      | 50    |",
            "| 2       | 1      | 10    |",
            "| 3       | 1      | 7     |",
            "+---------+--------+-------+",
        ],
        &[view.all().expect("rows").1]
    );
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
            "CREATE MATERIALIZED VIEW v AS SELECT count(*) FROM TUMBLE(bids, date_time, INTERVAL '1' SECOND)",
            "must GROUP BY window_start",
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
            // Each state batch through an IPC file of its own, as a checkpoint keeps
            // them (their schemas differ).
            let read: Vec<RecordBatch> = state
                .iter()
                .map(|s| {
                    let mut file = Vec::new();
                    let mut w =
                        datafusion::arrow::ipc::writer::FileWriter::try_new(&mut file, &s.schema())
                            .expect("writer");
                    w.write(s).expect("write");
                    w.finish().expect("finish");
                    drop(w);
                    let mut reader = datafusion::arrow::ipc::reader::FileReader::try_new(
                        std::io::Cursor::new(file),
                        None,
                    )
                    .expect("reader");
                    reader.next().expect("one batch").expect("read")
                })
                .collect();
            q = plan(sql).await.expect("plans again");
            q.operator.restore(&read).expect("restore");
            // A view kept by group takes its rows from the restored operator.
            if let Some(all) = q.operator.keyed_rows().expect("rows") {
                out.keyed = vec![all];
            }
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
    if let Some(first) = out.keyed.first() {
        let mut view = KeyedRows::new(first.rows.schema());
        for change in &out.keyed {
            view.apply(change).expect("apply");
        }
        rows.push(view.all().expect("rows").1);
    }
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
        // One session at a time for the whole stream (no key): bids are 50 ms apart.
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, count(*) AS n \
         FROM SESSION(bids, date_time, INTERVAL '40' MILLISECOND) GROUP BY window_start, window_end",
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
async fn numeric_literals_with_a_decimal_point_are_exact_decimals() {
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT auction, 0.908 * price AS eur, price * 1.5 AS more \
         FROM bids WHERE price > 0.5",
    )
    .await
    .expect("plans");
    assert!(
        matches!(
            q.output_schema
                .field_with_name("eur")
                .map(|f| f.data_type()),
            Ok(DataType::Decimal128(_, 3))
        ),
        "{:?}",
        q.output_schema
    );
    let (rows, _) = run(&mut q, &[batch(&[(1, 1589, 1_000), (2, 0, 2_000)])], true);
    assert_batches_eq!(
        [
            "+---------+----------+--------+",
            "| auction | eur      | more   |",
            "+---------+----------+--------+",
            "| 1       | 1442.812 | 2383.5 |",
            "+---------+----------+--------+",
        ],
        &rows
    );
}

#[tokio::test]
async fn an_aggregate_without_group_by_keeps_one_row_up_to_date() {
    const SQL: &str = "CREATE MATERIALIZED VIEW v AS SELECT count(*) AS n, sum(price) AS total, \
         max(price) AS top FROM bids WHERE price > 1";
    let mut q = plan(SQL).await.expect("plans");
    assert!(q.description.contains("updating"), "{}", q.description);
    let mut view = KeyedRows::new(q.output_schema.clone());
    fold(
        q.operator.as_mut(),
        &mut view,
        &[
            &[(1, 10, 1_000), (2, 5, 2_000)],
            &[(1, 30, 3_000), (3, 1, 3_500)],
        ],
    );
    assert_batches_eq!(
        [
            "+---+-------+-----+",
            "| n | total | top |",
            "+---+-------+-----+",
            "| 3 | 45    | 30  |",
            "+---+-------+-----+"
        ],
        &[view.all().expect("rows").1]
    );
    // Checkpointed and restored at another parallelism, it goes on from there.
    let state = q.operator.snapshot().expect("snapshot");
    let mut again = plan(SQL).await.expect("plans");
    again.operator.set_parallelism(3).expect("parallelism");
    again.operator.restore(&state).expect("restore");
    fold(again.operator.as_mut(), &mut view, &[&[(4, 100, 4_000)]]);
    assert_batches_eq!(
        [
            "+---+-------+-----+",
            "| n | total | top |",
            "+---+-------+-----+",
            "| 4 | 145   | 100 |",
            "+---+-------+-----+"
        ],
        &[view.all().expect("rows").1]
    );
}

#[tokio::test]
async fn a_stateless_view_in_slices_emits_the_serial_rows_in_their_order() {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT auction, price * 2 AS doubled \
               FROM bids WHERE price % 3 <> 0";
    let rows: Vec<(i64, i64, i64)> = (0..10_000).map(|i| (i, i * 7 % 1_000, i)).collect();
    let input = batch(&rows);
    let mut serial = plan(sql).await.expect("plans");
    let mut sliced = plan(sql).await.expect("plans");
    assert_eq!(sliced.operator.set_parallelism(3).expect("parallel"), 3);
    let (mut a, mut b) = (Collector::default(), Collector::default());
    serial
        .operator
        .process(&input, None, &mut a)
        .expect("serial");
    sliced
        .operator
        .process(&input, None, &mut b)
        .expect("sliced");
    assert_eq!(a.rows.len(), 1);
    assert_eq!(b.rows.len(), 1, "the slices go out as one batch");
    assert_eq!(a.rows[0], b.rows[0]);
    assert!(a.rows[0].num_rows() > 6_000);
    // Each step counts the batch once, and every row of its slices.
    for stage in sliced.operator.stages() {
        if let crate::operator::Stage::Step(label, clock) = stage {
            let batches = clock.batches.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(batches, 1, "{label}");
        }
    }
    // Serial: a view with nothing to compute. Volatile functions draw per row, so they
    // may run in slices.
    let mut q = plan("CREATE MATERIALIZED VIEW v AS SELECT * FROM bids")
        .await
        .expect("plans");
    assert_eq!(q.operator.set_parallelism(3).expect("parallel"), 1);
    let mut q = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT auction, random() AS r FROM bids WHERE price > 1",
    )
    .await
    .expect("plans");
    assert_eq!(q.operator.set_parallelism(3).expect("parallel"), 3);
}

/// A function that fails on a negative value, as a plugin's may, and settles its
/// outcomes through [`crate::settle`] as the runtime's plugin functions do.
#[derive(Debug)]
struct Positive {
    signature: datafusion::logical_expr::Signature,
    calls: Arc<AtomicUsize>,
    settled: Arc<Mutex<Vec<Option<String>>>>,
}

impl PartialEq for Positive {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Positive {}
impl std::hash::Hash for Positive {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "positive".hash(state);
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for Positive {
    fn name(&self) -> &str {
        "positive"
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        self.calls.fetch_add(1, AtomicOrdering::Relaxed);
        let values = args.args[0].to_array(args.number_rows)?;
        let negative = values
            .as_any()
            .downcast_ref::<Int64Array>()
            .and_then(|v| v.iter().flatten().find(|v| *v < 0));
        let failure = negative.map(|v| format!("{v} is negative"));
        if negative == Some(-4_000) {
            panic!("a bug in the function");
        }
        let settled = self.settled.clone();
        if !crate::settle::defer((1, 1), failure.clone(), move |outcome| {
            settled.lock().expect("lock").push(outcome)
        }) {
            self.settled.lock().expect("lock").push(failure.clone());
        }
        match failure {
            Some(reason) => Err(datafusion::common::DataFusionError::Execution(reason)),
            None => Ok(datafusion::logical_expr::ColumnarValue::Array(values)),
        }
    }
}

/// A view calling such a function in slices makes a call per slice, and settles once
/// per batch: failed with the failure of the first failing slice, or succeeded.
#[tokio::test]
async fn a_function_called_in_slices_settles_once_per_batch() {
    let calls = Arc::new(AtomicUsize::new(0));
    let settled = Arc::new(Mutex::new(Vec::new()));
    let udf = datafusion::logical_expr::ScalarUDF::new_from_impl(Positive {
        signature: datafusion::logical_expr::Signature::exact(
            vec![DataType::Int64],
            datafusion::logical_expr::Volatility::Volatile,
        ),
        calls: calls.clone(),
        settled: settled.clone(),
    });
    let Statement::CreateView(view) = parse_statement(
        "CREATE MATERIALIZED VIEW v AS SELECT auction, positive(price) AS p FROM bids",
    )
    .expect("parses") else {
        panic!("a view")
    };
    let mut q = crate::ContinuousQuery::plan_with_functions(&view, &catalog(), &[udf])
        .await
        .expect("plans");
    assert_eq!(q.operator.set_parallelism(2).expect("parallel"), 2);
    let rows = |bad: &[usize]| {
        let rows: Vec<(i64, i64, i64)> = (0..4_096)
            .map(|i| (i as i64, if bad.contains(&i) { -(i as i64) } else { 1 }, 0))
            .collect();
        batch(&rows)
    };
    let mut process = |bad: &[usize]| {
        let mut out = Collector::default();
        q.operator
            .process(&rows(bad), None, &mut out)
            .map(|()| out.rows.iter().map(RecordBatch::num_rows).sum::<usize>())
            .map_err(|e| e.to_string())
    };
    assert_eq!(process(&[]), Ok(4_096));
    let failed = process(&[3_000]).expect_err("a slice fails the batch");
    assert!(failed.contains("-3000 is negative"), "{failed}");
    let failed = process(&[1_000, 3_000]).expect_err("both slices fail");
    assert!(
        failed.contains("-1000 is negative"),
        "the first in row order: {failed}"
    );
    assert_eq!(calls.load(AtomicOrdering::Relaxed), 6, "a call per slice");
    assert_eq!(
        *settled.lock().expect("lock"),
        [
            None,
            Some("-3000 is negative".to_string()),
            Some("-1000 is negative".to_string())
        ],
        "one outcome per batch"
    );
    // A slice that panics fails the batch like one that errs; the other slices' calls
    // still settle (here the first slice's failure).
    let failed = process(&[1_000, 4_000]).expect_err("a panicking slice fails the batch");
    assert!(failed.contains("-1000 is negative"), "{failed}");
    assert_eq!(
        settled.lock().expect("lock").last(),
        Some(&Some("-1000 is negative".to_string()))
    );
    assert_eq!(settled.lock().expect("lock").len(), 4);
}

/// `columns_read` is what a source may decode alone: a view's rows are the same when
/// every other column holds anything at all (the time column is always decoded, for
/// the watermark).
#[tokio::test]
async fn a_view_reads_only_the_columns_it_says_it_reads() {
    let input = bids_for_checkpoints();
    for (sql, read) in [
        ("SELECT auction FROM bids WHERE auction % 3 = 0", vec![0]),
        ("SELECT * FROM bids WHERE price > 50", vec![0, 1, 2]),
        (
            "SELECT auction, count(*) AS n FROM bids GROUP BY auction",
            vec![0],
        ),
        ("SELECT count(*) AS n FROM bids", vec![]),
        (
            "SELECT window_start, count(*) AS n FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) \
             GROUP BY window_start",
            vec![2],
        ),
        (
            "SELECT window_start, auction, sum(price) AS total \
             FROM HOP(bids, date_time, INTERVAL '1' SECOND, INTERVAL '4' SECOND) \
             GROUP BY window_start, auction",
            vec![0, 1, 2],
        ),
        (
            "SELECT window_start, window_end, count(*) AS n \
             FROM SESSION(bids, date_time, INTERVAL '1' SECOND) GROUP BY window_start, window_end",
            vec![2],
        ),
        (
            "SELECT b.window_start, b.auction FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) AS b \
             JOIN (SELECT window_start, max(auction) AS top \
             FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) GROUP BY window_start) AS m \
             ON b.window_start = m.window_start AND b.auction = m.top",
            vec![0, 2],
        ),
        (
            "SELECT auction, count(*) AS n FROM bids GROUP BY auction HAVING max(price) > 50",
            vec![0, 1],
        ),
        (
            "SELECT window_start, window_end, auction, count(*) AS n \
             FROM SESSION(bids, date_time, INTERVAL '1' SECOND) GROUP BY window_start, window_end, auction",
            vec![0, 2],
        ),
        // A column read only by a subquery inside an expression.
        (
            "SELECT b.window_start, b.auction FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) AS b \
             JOIN (SELECT window_start, max(auction) AS top \
             FROM TUMBLE(bids, date_time, INTERVAL '3' SECOND) GROUP BY window_start) AS m \
             ON b.window_start = m.window_start AND b.auction = m.top \
             WHERE b.auction > (SELECT min(price) FROM bids)",
            vec![0, 1, 2],
        ),
    ] {
        let sql = format!("CREATE MATERIALIZED VIEW v AS {sql}");
        let mut q = plan(&sql).await.expect("plans");
        assert_eq!(q.columns_read.as_deref(), Some(&read[..]), "{sql}");
        let expected = everything_out(run_collecting(&mut q, &input, true));
        // Every column it does not read (but the time column) made nonsense.
        let scrambled = scrambled(input.clone(), Some(read));
        let mut q = plan(&sql).await.expect("plans");
        let rows = everything_out(run_collecting(&mut q, &scrambled, true));
        assert!(
            expected.lines().count() > 8,
            "{sql}: too few rows: {expected}"
        );
        assert_eq!(rows, expected, "{sql}");
    }
}

/// An operator's rows, upserts and changes by group, as text.
fn everything_out(out: Collector) -> String {
    let text = |b: &[RecordBatch]| {
        datafusion::arrow::util::pretty::pretty_format_batches(b)
            .expect("format")
            .to_string()
    };
    let upserts: Vec<RecordBatch> = out.upserts.into_iter().map(|(_, b)| b).collect();
    let keyed: Vec<RecordBatch> = out.keyed.into_iter().map(|c| c.rows).collect();
    format!("{}\n{}\n{}", text(&out.rows), text(&upserts), text(&keyed))
}
