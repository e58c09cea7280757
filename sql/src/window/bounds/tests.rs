use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

use super::*;
use crate::batch::{BatchQuery, WindowRows};
use crate::parser::{Statement, parse_statement};
use crate::planner::{logical_plan, planning_context, register};

const START: i64 = 10_000;
const END: i64 = 20_000;

fn windowed_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("window_start", TIMESTAMP, false),
        Field::new("window_end", TIMESTAMP, false),
    ]))
}

/// One window's rows, in two batches, some auctions and channels repeated.
fn window_rows(schema: &Arc<Schema>) -> Vec<RecordBatch> {
    let batch = |auctions: Vec<i64>, prices: Vec<i64>, channels: Vec<&str>| {
        let n = auctions.len();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(auctions)),
                Arc::new(Int64Array::from(prices)),
                Arc::new(StringArray::from(channels)),
                Arc::new(TimestampMillisecondArray::from_value(START, n)),
                Arc::new(TimestampMillisecondArray::from_value(END, n)),
            ],
        )
        .expect("a batch")
    };
    vec![
        batch(
            vec![1, 2, 2, 3, 1, 2],
            vec![10, 20, 30, 30, 5, 7],
            vec!["a", "b", "a", "c", "a", "b"],
        ),
        batch(vec![3, 3, 4], vec![1, 30, 2], vec!["c", "c", "a"]),
    ]
}

/// A query's rows, sorted, as text.
fn sorted(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).expect("prints").to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Each query, with its window columns as constants where it groups by them and by
/// another key, answers exactly as it did over the columns; the rest of the plan keeps
/// its schema. How many group keys each query loses is stated, so a rewrite that
/// stops happening (or happens where it must not) fails here.
#[test]
fn bounds_leave_the_group_by_and_answer_as_the_columns_did() {
    let cases: &[(&str, usize)] = &[
        // Nexmark q5: both inner aggregates lose their two window keys; the outer one,
        // keyed by the window alone, keeps them.
        (
            "SELECT a.auction, a.num, a.window_start, a.window_end \
             FROM (SELECT auction, count(*) AS num, window_start, window_end FROM bid \
                   GROUP BY auction, window_start, window_end) AS a \
             JOIN (SELECT max(c.num) AS maxn, c.window_start, c.window_end \
                   FROM (SELECT count(*) AS num, window_start, window_end FROM bid \
                         GROUP BY auction, window_start, window_end) AS c \
                   GROUP BY c.window_start, c.window_end) AS m \
             ON a.window_start = m.window_start AND a.window_end = m.window_end \
                AND a.num >= m.maxn",
            4,
        ),
        (
            "SELECT auction, window_start, count(*) AS n, max(price) AS top FROM bid \
             GROUP BY window_start, auction, window_end HAVING count(*) > 1",
            2,
        ),
        // Through a subquery's alias, into a second aggregate.
        (
            "SELECT s.window_start, s.channel, sum(s.n) AS n FROM \
             (SELECT channel, auction, count(*) AS n, window_start FROM bid \
              GROUP BY channel, auction, window_start) AS s \
             GROUP BY s.window_start, s.channel",
            2,
        ),
        // Keyed by the window alone: one row per window, so nothing to take out.
        (
            "SELECT window_start, window_end, max(price) AS top FROM bid \
             GROUP BY window_start, window_end",
            0,
        ),
        // An outer join's unmatched rows have no window: not a constant there.
        (
            "SELECT a.auction, b.window_start, count(*) AS n FROM bid AS a \
             LEFT JOIN bid AS b ON a.auction = b.price GROUP BY a.auction, b.window_start",
            0,
        ),
        // An inner join's rows all have it.
        (
            "SELECT a.auction, b.window_start, count(*) AS n FROM bid AS a \
             JOIN bid AS b ON a.auction = b.auction GROUP BY a.auction, b.window_start",
            1,
        ),
        // An expression of a bound is left as it is.
        (
            "SELECT auction, window_start + INTERVAL '1' SECOND AS later, count(*) AS n \
             FROM bid GROUP BY auction, window_start + INTERVAL '1' SECOND",
            0,
        ),
        (
            "SELECT auction, price, window_start FROM \
             (SELECT auction, price, window_start, \
                     rank() OVER (PARTITION BY window_start ORDER BY price DESC) AS r \
              FROM bid) WHERE r = 1",
            0,
        ),
    ];
    let schema = windowed_schema();
    for (sql, taken_out) in cases {
        let table = Arc::new(WindowRows::new(schema.clone()));
        let ctx = planning_context(&[]);
        register(&ctx, "bid", table.clone()).expect("registers");
        let state = ctx.state();
        let Ok(Statement::CreateView(view)) =
            parse_statement(&format!("CREATE MATERIALIZED VIEW v AS {sql}"))
        else {
            panic!("parses: {sql}")
        };
        let plan = futures::executor::block_on(logical_plan(&state, view.query)).expect("plans");
        let plan = state.optimize(&plan).expect("optimizes");
        let rewritten = window_bounds_as_constants(plan.clone(), &["bid"]).expect("rewrites");
        assert_eq!(rewritten.schema(), plan.schema(), "{sql}");
        let shown = rewritten.display_indent().to_string();
        let bounds = shown.matches("evaluated_window_").count();
        // Each key taken out is given back once, as a function.
        assert_eq!(bounds, *taken_out, "{sql}:\n{shown}");

        let window = Some((START, END));
        let before = BatchQuery::new(plan, state.clone())
            .run_in_window(&table, window_rows(&schema), window)
            .expect("the query runs");
        let after = BatchQuery::new(rewritten, state)
            .run_in_window(&table, window_rows(&schema), window)
            .expect("the rewritten query runs");
        assert!(
            before.iter().map(RecordBatch::num_rows).sum::<usize>() > 0,
            "{sql}"
        );
        assert_eq!(sorted(&after), sorted(&before), "{sql}");
    }
}

/// A bound read by a query run outside a window's evaluation is an error, never a
/// value.
#[test]
fn a_bound_read_outside_a_window_is_an_error() {
    let schema = windowed_schema();
    let table = Arc::new(WindowRows::new(schema.clone()));
    let ctx = planning_context(&[]);
    register(&ctx, "bid", table.clone()).expect("registers");
    let state = ctx.state();
    let Ok(Statement::CreateView(view)) = parse_statement(
        "CREATE MATERIALIZED VIEW v AS SELECT auction, window_start, count(*) AS n \
         FROM bid GROUP BY auction, window_start",
    ) else {
        panic!("parses")
    };
    let plan = futures::executor::block_on(logical_plan(&state, view.query)).expect("plans");
    let plan = state.optimize(&plan).expect("optimizes");
    let query = BatchQuery::new(
        window_bounds_as_constants(plan, &["bid"]).expect("rewrites"),
        state,
    );
    let e = query
        .run(&table, window_rows(&schema))
        .expect_err("no window is being evaluated");
    assert!(
        e.to_string()
            .contains("evaluated_window_start was read outside the evaluation of a window"),
        "{e}"
    );
    let rows = query
        .run_in_window(&table, window_rows(&schema), Some((START, END)))
        .expect("inside a window it runs");
    assert!(
        sorted(&rows)
            .iter()
            .any(|l| l.contains("1970-01-01T00:00:10"))
    );
}

/// EXPLAIN's `query` line of a per-window view shows the bounds taken out of the GROUP
/// BY, as SQL.md says.
#[tokio::test]
async fn explain_shows_the_bounds_above_the_aggregate() {
    let q = crate::testing::plan(
        "CREATE MATERIALIZED VIEW v AS SELECT a.auction, a.num, a.window_start FROM \
         (SELECT auction, count(*) AS num, window_start, window_end \
          FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
          GROUP BY auction, window_start, window_end) AS a \
         JOIN (SELECT max(price) AS top, window_start FROM \
               HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY window_start) AS m \
         ON a.window_start = m.window_start AND a.num >= m.top",
    )
    .await
    .expect("plans");
    let query = q
        .operators
        .iter()
        .find(|(op, _)| op == "query")
        .map(|(_, detail)| detail.clone())
        .expect("a query line");
    assert!(
        query.contains("evaluated_window_start() AS window_start")
            && query.contains("evaluated_window_end() AS window_end")
            && query.contains("groupBy=[[bids.auction]]"),
        "{query}"
    );
}
