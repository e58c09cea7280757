use datafusion::arrow::array::{RecordBatch, TimestampMillisecondArray, UInt32Array};
use datafusion::assert_batches_eq;

use super::*;
use crate::operator::Collector;
use crate::testing::{batch, bids_for_checkpoints, plan, run};

#[test]
fn windows_are_aligned_to_the_epoch_including_negative_times() {
    let t = Windowing::tumble(10_000).expect("size");
    assert_eq!(t.start(0), 0);
    assert_eq!(t.start(9_999), 0);
    assert_eq!(t.start(10_000), 10_000);
    assert_eq!(t.start(-1), -10_000);
    assert_eq!(t.end(10_000), 20_000);
    assert!(Windowing::tumble(0).is_err());
}

#[test]
fn one_open_window_takes_the_fast_path() {
    let times = TimestampMillisecondArray::from(vec![10_000, 15_000, 19_999]);
    let s = split_by_window(
        &times,
        Windowing::tumble(10_000).expect("size"),
        Some(5_000),
    );
    assert_eq!(
        s,
        Split {
            windows: vec![(10_000, None)],
            late: None
        }
    );
}

#[test]
fn rows_are_grouped_by_window_and_late_rows_set_aside() {
    let times = TimestampMillisecondArray::from(vec![
        Some(25_000),
        Some(3_000),
        Some(12_000),
        None,
        Some(21_000),
        Some(9_999),
    ]);
    // Watermark 10_000 closes [0, 10000): rows 1 and 5 are late, row 3 has no time.
    let s = split_by_window(
        &times,
        Windowing::tumble(10_000).expect("size"),
        Some(10_000),
    );
    assert_eq!(
        s.windows,
        vec![
            (10_000, Some(UInt32Array::from(vec![2]))),
            (20_000, Some(UInt32Array::from(vec![0, 4])))
        ]
    );
    assert_eq!(s.late, Some(UInt32Array::from(vec![1, 3, 5])));
}

#[test]
fn hopping_windows_hold_each_row_size_over_slide_times() {
    let hop = Windowing::hop(5_000, 10_000).expect("hop");
    assert_eq!(hop.starts(12_000).collect::<Vec<_>>(), vec![10_000, 5_000]);
    assert_eq!(hop.starts(10_000).collect::<Vec<_>>(), vec![10_000, 5_000]);
    assert_eq!(hop.starts(-1).collect::<Vec<_>>(), vec![-5_000, -10_000]);
    let uneven = Windowing::hop(3, 10).expect("hop");
    assert_eq!(uneven.starts(10).collect::<Vec<_>>(), vec![9, 6, 3]);
    assert!(
        Windowing::hop(20, 10).is_err(),
        "a slide above the size skips events"
    );

    // Watermark 15_000 closes [5s, 15s): row at 12s only goes to [10s, 20s);
    // row at 9s has both its windows ([0, 10s), [5s, 15s)) closed: late.
    let times = TimestampMillisecondArray::from(vec![12_000, 9_000, 16_000]);
    let s = split_by_window(&times, hop, Some(15_000));
    assert_eq!(
        s.windows,
        vec![
            (10_000, Some(UInt32Array::from(vec![0, 2]))),
            (15_000, Some(UInt32Array::from(vec![2])))
        ]
    );
    assert_eq!(s.late, Some(UInt32Array::from(vec![1])));
}

#[test]
fn window_ending_exactly_at_the_watermark_is_closed() {
    let t = Windowing::tumble(10).expect("size");
    assert!(t.is_closed(0, Some(10)));
    assert!(!t.is_closed(0, Some(9)));
    assert!(!t.is_closed(0, None));
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

/// Nexmark q5 as published (nexmark-flink, RisingWave): the subqueries rename the window
/// columns (`window_start AS starttime`) and the join matches the new names.
const Q5_PUBLISHED: &str = "CREATE MATERIALIZED VIEW q5 AS \
     SELECT AuctionBids.starttime AS ws, AuctionBids.auction, AuctionBids.num \
     FROM (SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime \
           FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
           GROUP BY auction, window_start, window_end) AS AuctionBids \
     JOIN (SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime \
           FROM (SELECT count(*) AS num, window_start AS starttime, window_end AS endtime \
                 FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
                 GROUP BY auction, window_start, window_end) AS CountBids \
           GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids \
     ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime \
     AND AuctionBids.num >= MaxBids.maxn";

/// The same query keeping the window columns' names.
const Q5_UNALIASED: &str = "CREATE MATERIALIZED VIEW q5 AS \
     SELECT a.window_start AS ws, a.auction, a.num \
     FROM (SELECT auction, count(*) AS num, window_start, window_end \
           FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
           GROUP BY auction, window_start, window_end) AS a \
     JOIN (SELECT max(c.num) AS maxn, c.window_start, c.window_end \
           FROM (SELECT count(*) AS num, window_start, window_end \
                 FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
                 GROUP BY auction, window_start, window_end) AS c \
           GROUP BY c.window_start, c.window_end) AS m \
     ON a.window_start = m.window_start AND a.window_end = m.window_end AND a.num >= m.maxn";

#[tokio::test]
async fn a_window_column_stays_the_window_under_any_alias() {
    let input = bids_for_checkpoints();
    let rows = |batches: &[RecordBatch]| {
        let mut lines: Vec<String> =
            datafusion::arrow::util::pretty::pretty_format_batches(batches)
                .expect("format")
                .to_string()
                .lines()
                .map(str::to_string)
                .collect();
        lines.sort();
        lines
    };
    let mut published = plan(Q5_PUBLISHED).await.expect("the published q5 plans");
    assert!(
        published.description.contains("query per window"),
        "{}",
        published.description
    );
    let mut unaliased = plan(Q5_UNALIASED).await.expect("plans");
    // Both count the window's bids per auction once, for the rows and their maximum.
    for q in [&published, &unaliased] {
        assert!(
            q.description.contains("a repeated aggregate runs once"),
            "{}",
            q.description
        );
    }
    let (expected, _) = run(&mut unaliased, &input, true);
    let (got, late) = run(&mut published, &input, true);
    assert_eq!(late, 0);
    assert!(expected.iter().map(RecordBatch::num_rows).sum::<usize>() >= 10);
    assert_eq!(rows(&got), rows(&expected));

    // A windowed aggregate grouping by a renamed window column runs incrementally.
    let mut renamed = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT ws, count(*) AS n FROM \
         (SELECT window_start AS ws, auction FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)) \
         GROUP BY ws",
    )
    .await
    .expect("plans");
    let (counts, _) = run(&mut renamed, &input, true);
    assert_batches_eq!(
        [
            "+---------------------+-----+",
            "| ws                  | n   |",
            "+---------------------+-----+",
            "| 1970-01-01T00:00:00 | 200 |",
            "| 1970-01-01T00:00:10 | 200 |",
            "+---------------------+-----+",
        ],
        &counts
    );

    // A column that is not the window under the window's name does not count: each
    // window matched with the next one's rows would never match inside one window.
    let e = plan(
        "CREATE MATERIALIZED VIEW v AS SELECT b.auction FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS b \
         JOIN (SELECT window_end AS window_start, max(price) AS top \
               FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_end) AS m \
         ON b.window_start = m.window_start AND b.price = m.top",
    )
    .await
    .expect_err("window_end renamed window_start is not the window's start")
    .to_string();
    assert!(e.contains("match window_start"), "{e}");
}

/// Per-window queries over HOP windows (a slide that divides the size, and one that does
/// not) and TUMBLE windows, snapshotted at some point of their run and restored in a new
/// operator, give the rows of the run without a restore; rows come out of order, some
/// late.
#[tokio::test]
async fn per_window_queries_restored_midway_give_the_uninterrupted_rows() {
    let hot = |hop: &str| {
        format!(
            "CREATE MATERIALIZED VIEW v AS SELECT a.auction, a.num, a.window_start, a.window_end \
             FROM (SELECT auction, count(*) AS num, window_start, window_end FROM {hop} \
                   GROUP BY auction, window_start, window_end) AS a \
             JOIN (SELECT max(c.num) AS maxn, c.window_start, c.window_end \
                   FROM (SELECT count(*) AS num, window_start, window_end FROM {hop} \
                         GROUP BY auction, window_start, window_end) AS c \
                   GROUP BY c.window_start, c.window_end) AS m \
             ON a.window_start = m.window_start AND a.window_end = m.window_end \
                AND a.num >= m.maxn"
        )
    };
    let queries = [
        hot("HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"),
        hot("HOP(bids, date_time, INTERVAL '3' SECOND, INTERVAL '10' SECOND)"),
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, auction, price FROM (SELECT window_start, \
         auction, price, row_number() OVER (PARTITION BY window_start ORDER BY price DESC, auction) AS rn \
         FROM TUMBLE(bids, date_time, INTERVAL '4' SECOND)) WHERE rn <= 2"
            .to_string(),
    ];
    // Out of order by up to 6 s, and every 17th row 20 s behind: late for its windows.
    let input: Vec<RecordBatch> = (0..30)
        .map(|b| {
            let rows: Vec<(i64, i64, i64)> = (0..25)
                .map(|i| {
                    let n: i64 = b * 25 + i;
                    let jitter = (n * 2_654_435_761) % 6_000;
                    let behind = if n % 17 == 0 { 20_000 } else { 0 };
                    (n * 7 % 13, n * 37 % 101, n * 150 + jitter - 3_000 - behind)
                })
                .collect();
            batch(&rows)
        })
        .collect();
    // The rows, sorted, and how many came late; `restore_after`: snapshot after that
    // batch and go on in a new operator.
    async fn sorted(
        sql: &str,
        input: &[RecordBatch],
        restore_after: Option<usize>,
    ) -> (Vec<String>, usize) {
        let (rows, late) = drive(sql, input, 1, restore_after.map(|i| (i, 1))).await;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
            .expect("format")
            .to_string();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        (lines, late.iter().map(RecordBatch::num_rows).sum())
    }
    for sql in &queries {
        let (rows, late) = sorted(sql, &input, None).await;
        assert!(rows.len() > 40, "{sql}: {rows:?}");
        assert!(late > 10, "{sql}: some rows come late ({late})");
        for at in [0, 7, 16, 28] {
            assert_eq!(
                sorted(sql, &input, Some(at)).await,
                (rows.clone(), late),
                "{sql}, restored after batch {at}"
            );
        }
    }
}

/// Run `sql`'s operator at `parallelism` over `input`: each batch with the watermark
/// before it (2 s behind the newest time), then that watermark, then the end;
/// `restore`: after batch `i`, snapshot and go on in a new operator at parallelism `n`.
/// The rows emitted and the late rows.
pub(in crate::window) async fn drive(
    sql: &str,
    input: &[RecordBatch],
    parallelism: usize,
    restore: Option<(usize, usize)>,
) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let mut op = plan(sql).await.expect("plans").operator;
    assert_eq!(op.set_parallelism(parallelism).expect("set"), parallelism);
    let (mut out, mut newest) = (Collector::default(), None::<i64>);
    for (i, b) in input.iter().enumerate() {
        let watermark = newest.map(|t| t - 2_000);
        op.process(b, watermark, &mut out).expect("process");
        let times = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>();
        newest = newest.max(times.and_then(|a| a.iter().flatten().max()));
        if let Some(t) = newest {
            op.on_watermark(t - 2_000, &mut out).expect("watermark");
        }
        if let Some((_, n)) = restore.filter(|(after, _)| *after == i) {
            let state = op.snapshot().expect("snapshot");
            op = plan(sql).await.expect("plans").operator;
            op.set_parallelism(n).expect("set");
            op.restore(&state).expect("restore");
        }
    }
    op.on_watermark(i64::MAX, &mut out).expect("end");
    (out.rows, out.late)
}
