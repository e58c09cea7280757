//! The SESSION operator: sessions per key, merged and closed at their end, in keyed
//! instances, through checkpoints, against a plain model.

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};

use crate::operator::{Collector, Operator};
use crate::testing::{batch, plan};
use crate::window::tests::drive;

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

/// Sessions kept in keyed instances give the serial rows in the serial order, late rows
/// included, and a snapshot taken in 3 instances restores in 2 with nothing lost.
#[tokio::test]
async fn sessions_in_parallel_instances_emit_the_serial_rows_in_order() {
    let sql = &bursts(3);
    let input = jittered_bids();
    let (serial, serial_late) = drive(sql, &input, 1, None).await;
    let (parallel, parallel_late) = drive(sql, &input, 3, Some((input.len() / 2, 2))).await;
    let text = |rows: &[RecordBatch]| {
        datafusion::arrow::util::pretty::pretty_format_batches(rows)
            .expect("format")
            .to_string()
    };
    assert!(
        text(&serial_late).lines().count() > 100,
        "many rows come late"
    );
    assert!(text(&serial).lines().count() > 100, "{}", text(&serial));
    assert_eq!(
        text(&parallel_late),
        text(&serial_late),
        "the same late rows"
    );
    assert_eq!(
        text(&parallel),
        text(&serial),
        "the same rows in the same order"
    );
    // Without a key beside the window, one stream of sessions: serial.
    let mut global = plan(
        "CREATE MATERIALIZED VIEW g AS SELECT window_start, count(*) AS n FROM \
         SESSION(bids, date_time, INTERVAL '3' SECOND) GROUP BY window_start, window_end",
    )
    .await
    .expect("plans");
    assert_eq!(global.operator.set_parallelism(3).expect("set"), 1);
}

/// Sessions per auction with a gap of `gap` seconds: each one's rows and top price.
fn bursts(gap: u32) -> String {
    format!(
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, auction, count(*) AS n, \
         max(price) AS top FROM SESSION(bids, date_time, INTERVAL '{gap}' SECOND) \
         GROUP BY window_start, window_end, auction"
    )
}

/// 24 batches of 40 bids of 17 auctions, out of order by up to 16 s, so that rows
/// bridge sessions and some come late.
fn jittered_bids() -> Vec<RecordBatch> {
    (0..24)
        .map(|b| {
            let rows: Vec<(i64, i64, i64)> = (0..40)
                .map(|i| {
                    let n: i64 = b * 40 + i;
                    let jitter = (n * 2_654_435_761) % 16_000;
                    (n * 31 % 17, n * 37 % 101, n * 200 + jitter - 8_000)
                })
                .collect();
            batch(&rows)
        })
        .collect()
}

/// SESSION windows as plainly as they can be said, over [`drive`]'s watermarks: per
/// auction, open sessions (start, last, rows, top price); a row is late when its own
/// session `[t, t + gap)` ends by the watermark, else it joins, and merges, every open
/// session of its auction it overlaps; a session ends when the watermark reaches its
/// last row's time plus the gap. Returns (start, end, auction, rows, top), sorted.
fn session_model(input: &[RecordBatch], gap: i64) -> Vec<[i64; 5]> {
    let (mut open, mut ended) = (Vec::<[i64; 5]>::new(), Vec::new());
    let mut newest = None::<i64>;
    let mut close = |open: &mut Vec<[i64; 5]>, watermark: i64| {
        let (done, going): (Vec<[i64; 5]>, Vec<[i64; 5]>) =
            open.iter().partition(|s| s[1] + gap <= watermark);
        ended.extend(done.iter().map(|s| [s[0], s[1] + gap, s[2], s[3], s[4]]));
        *open = going;
    };
    for b in input {
        let column = |i: usize| b.column(i).as_primitive::<Int64Type>().values().to_vec();
        let (auction, price) = (column(0), column(1));
        let times = b.column(2).as_primitive::<TimestampMillisecondType>();
        let watermark = newest.map(|t| t - 2_000);
        for r in 0..b.num_rows() {
            let (k, p, t) = (auction[r], price[r], times.value(r));
            if watermark.is_some_and(|w| t + gap <= w) {
                continue;
            }
            let (touched, rest): (Vec<[i64; 5]>, Vec<[i64; 5]>) = open
                .iter()
                .partition(|s| s[2] == k && s[0] < t + gap && t < s[1] + gap);
            let merged = touched.iter().fold([t, t, k, 1, p], |m, s| {
                [
                    m[0].min(s[0]),
                    m[1].max(s[1]),
                    k,
                    m[3] + s[3],
                    m[4].max(s[4]),
                ]
            });
            open = rest;
            open.push(merged);
        }
        newest = newest.max(times.iter().flatten().max());
        if let Some(t) = newest {
            close(&mut open, t - 2_000);
        }
    }
    close(&mut open, i64::MAX - gap);
    ended.sort_unstable();
    ended
}

/// The session operator, serial and in 3 instances restored in 2 midway, gives the
/// model's sessions: none ends before its last row's time plus the gap, however late
/// that row came.
#[tokio::test]
async fn sessions_are_the_models_sessions() {
    let sql = &bursts(10);
    let input = jittered_bids();
    let expected = session_model(&input, 10_000);
    assert!(expected.len() > 50, "{expected:?}");
    assert!(
        expected.iter().any(|s| s[3] > 2),
        "some sessions hold several rows"
    );
    for (parallelism, restore) in [(1, None), (3, Some((input.len() / 2, 2)))] {
        let (rows, _) = drive(sql, &input, parallelism, restore).await;
        let mut got = Vec::new();
        for b in &rows {
            let time = |i: usize| b.column(i).as_primitive::<TimestampMillisecondType>();
            let int = |i: usize| b.column(i).as_primitive::<Int64Type>();
            for r in 0..b.num_rows() {
                got.push([
                    time(0).value(r),
                    time(1).value(r),
                    int(2).value(r),
                    int(3).value(r),
                    int(4).value(r),
                ]);
            }
        }
        got.sort_unstable();
        assert_eq!(got, expected, "at parallelism {parallelism}");
    }
}

/// A session that ended but waits for its evaluation when a checkpoint is taken stays
/// ended after a restore (at any parallelism): a row that would have touched it starts
/// a session of its own, as it does without the restore.
#[tokio::test]
async fn a_restored_ended_session_stays_ended() {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, auction, count(*) AS n \
               FROM SESSION(bids, date_time, INTERVAL '5' SECOND) GROUP BY window_start, window_end, auction";
    async fn run(sql: &str, restore_in: Option<usize>) -> Vec<String> {
        let mut op = plan(sql).await.expect("plans").operator;
        let mut out = Collector::default();
        op.process(&batch(&[(1, 1, 0)]), None, &mut out)
            .expect("process");
        // Ends auction 1's session and evaluates it.
        op.on_watermark(6_500, &mut out).expect("watermark");
        op.process(&batch(&[(2, 1, 2_000)]), Some(6_500), &mut out)
            .expect("process");
        // Ends auction 2's session [2 s, 7 s); its evaluation waits (less than 1 s of
        // event time since the last).
        op.on_watermark(7_200, &mut out).expect("watermark");
        assert_eq!(op.open_windows(), 1, "one ended session waits");
        if let Some(n) = restore_in {
            let state = op.snapshot().expect("snapshot");
            op = plan(sql).await.expect("plans").operator;
            op.set_parallelism(n).expect("set");
            op.restore(&state).expect("restore");
            assert_eq!(op.open_windows(), 1, "restored: one ended session waits");
        }
        // Not late (2.5 s + 5 s is past the watermark), and within auction 2's ended
        // session: it starts a session of its own.
        op.process(&batch(&[(2, 1, 2_500)]), Some(7_200), &mut out)
            .expect("process");
        // Still within 1 s of the last evaluation (kept across the restore): auction 2's
        // ended session still waits.
        op.on_watermark(7_400, &mut out).expect("watermark");
        let emitted: usize = out.rows.iter().map(|b| b.num_rows()).sum();
        assert_eq!(emitted, 1, "only auction 1's session is evaluated");
        op.on_watermark(i64::MAX, &mut out).expect("end");
        assert!(out.late.is_empty());
        datafusion::arrow::util::pretty::pretty_format_batches(&out.rows)
            .expect("format")
            .to_string()
            .lines()
            .filter(|l| l.starts_with("| 1970"))
            .map(str::to_string)
            .collect()
    }
    let uninterrupted = run(sql, None).await;
    assert_eq!(
        uninterrupted,
        [
            "| 1970-01-01T00:00:00     | 1970-01-01T00:00:05     | 1       | 1 |",
            "| 1970-01-01T00:00:02     | 1970-01-01T00:00:07     | 2       | 1 |",
            "| 1970-01-01T00:00:02.500 | 1970-01-01T00:00:07.500 | 2       | 1 |",
        ]
    );
    assert_eq!(run(sql, Some(1)).await, uninterrupted);
    assert_eq!(run(sql, Some(3)).await, uninterrupted);
}

/// Sessions that end together wait as one batch, counted as the sessions they are, in
/// a checkpoint too; a checkpoint written before (a batch per ended session, uncounted)
/// restores to the same count and the same rows.
#[tokio::test]
async fn ended_sessions_wait_together_and_count_as_sessions() {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, auction, count(*) AS n \
               FROM SESSION(bids, date_time, INTERVAL '5' SECOND) GROUP BY window_start, window_end, auction";
    let mut op = plan(sql).await.expect("plans").operator;
    op.set_parallelism(2).expect("set");
    let mut out = Collector::default();
    op.process(&batch(&[(0, 1, 1_000)]), None, &mut out)
        .expect("process");
    // Evaluated: the next ended sessions wait for 1 s of event time.
    op.on_watermark(6_100, &mut out).expect("watermark");
    let rows = (1..=6).map(|k| (k, 1, 1_000 + k * 10)).collect::<Vec<_>>();
    op.process(&batch(&rows), None, &mut out).expect("process");
    op.process(&batch(&[(1, 2, 1_500), (7, 1, 9_000)]), None, &mut out)
        .expect("process");
    op.on_watermark(6_800, &mut out).expect("watermark");
    assert_eq!(op.open_windows(), 7, "six ended and waiting, one open");
    let state = op.snapshot().expect("snapshot");
    let text = |rows: &[RecordBatch]| {
        datafusion::arrow::util::pretty::pretty_format_batches(rows)
            .expect("format")
            .to_string()
    };
    let finish = |mut op: Box<dyn Operator>| {
        let mut out = Collector::default();
        op.on_watermark(i64::MAX, &mut out).expect("end");
        text(&out.rows)
    };
    let uninterrupted = finish(op);
    let rows = uninterrupted
        .lines()
        .filter(|l| l.starts_with("| 1970"))
        .count();
    assert_eq!(rows, 7, "{uninterrupted}");
    // The same state as a batch per ended session, uncounted.
    let mut before = Vec::new();
    for b in &state {
        let meta = b.schema().metadata().clone();
        if meta.get("weir.session").map(String::as_str) != Some("ended") {
            before.push(b.clone());
            continue;
        }
        assert_eq!(meta.get("weir.sessions").map(String::as_str), Some("6"));
        let mut meta = meta;
        meta.remove("weir.sessions");
        let schema = std::sync::Arc::new(b.schema().as_ref().clone().with_metadata(meta));
        let starts = b
            .column(b.num_columns() - 2)
            .as_primitive::<TimestampMillisecondType>();
        let mut from = 0;
        for r in 1..=b.num_rows() {
            if r == b.num_rows() || starts.value(r) != starts.value(from) {
                let one = b.slice(from, r - from);
                let one = RecordBatch::try_new(schema.clone(), one.columns().to_vec());
                before.push(one.expect("schema"));
                from = r;
            }
        }
    }
    for (state, parallelism) in [(&state, 1), (&state, 3), (&before, 1), (&before, 2)] {
        let mut op = plan(sql).await.expect("plans").operator;
        op.set_parallelism(parallelism).expect("set");
        op.restore(state).expect("restore");
        assert_eq!(op.open_windows(), 7, "restored at {parallelism}");
        assert_eq!(finish(op), uninterrupted, "restored at {parallelism}");
    }
    // A count that is not a number is refused, not read as some number of sessions.
    let garbled: Vec<RecordBatch> = state
        .iter()
        .map(|b| {
            let mut meta = b.schema().metadata().clone();
            if meta.contains_key("weir.sessions") {
                meta.insert("weir.sessions".into(), "six".into());
            }
            let schema = std::sync::Arc::new(b.schema().as_ref().clone().with_metadata(meta));
            RecordBatch::try_new(schema, b.columns().to_vec()).expect("schema")
        })
        .collect();
    let mut op = plan(sql).await.expect("plans").operator;
    let e = op
        .restore(&garbled)
        .expect_err("a garbled count")
        .to_string();
    assert!(e.contains("counts \"six\" ended sessions"), "{e}");
}
