//! Test helpers shared by the planner's, the windows' and the joins' tests: a `bids`
//! source, batches of it (and with the columns a view does not read made nonsense), and
//! a driver that runs a view the way the runtime does.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::Result;
use crate::operator::Collector;
use crate::parser::{Statement, WatermarkSpec, parse_statement};
use crate::planner::{ContinuousQuery, SourceCatalog, SourceInfo};
use crate::schema::TIMESTAMP;
use crate::watermark::Watermark;

pub(crate) fn catalog() -> SourceCatalog {
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

pub(crate) fn batch(rows: &[(i64, i64, i64)]) -> RecordBatch {
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

pub(crate) async fn plan(sql: &str) -> Result<ContinuousQuery> {
    let Statement::CreateView(view) = parse_statement(sql).expect("parses") else {
        panic!("not a view")
    };
    ContinuousQuery::plan(&view, &catalog()).await
}

/// Drive a query like the runtime does: process with the old watermark, then advance.
pub(crate) fn run(
    q: &mut ContinuousQuery,
    batches: &[RecordBatch],
    finish: bool,
) -> (Vec<RecordBatch>, usize) {
    let out = run_collecting(q, batches, finish);
    (out.rows, out.late.iter().map(|b| b.num_rows()).sum())
}

/// [`run`], keeping everything the operator gave out.
pub(crate) fn run_collecting(
    q: &mut ContinuousQuery,
    batches: &[RecordBatch],
    finish: bool,
) -> Collector {
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
    out
}

/// Bids over 20 s with repeated auctions and prices, in event-time order.
pub(crate) fn bids_for_checkpoints() -> Vec<RecordBatch> {
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

/// `batches` with every integer column not in `read` (when given) made nonsense.
pub(crate) fn scrambled(batches: Vec<RecordBatch>, read: Option<Vec<usize>>) -> Vec<RecordBatch> {
    let Some(read) = read else {
        return batches;
    };
    batches
        .iter()
        .map(|b| {
            let nonsense = Arc::new(Int64Array::from_iter_values(
                (0..b.num_rows() as i64).map(|i| 1_000_003 * i + 17),
            ));
            let columns = (0..b.num_columns())
                .map(
                    |c| match b.column(c).as_any().downcast_ref::<Int64Array>() {
                        Some(_) if !read.contains(&c) => nonsense.clone() as _,
                        _ => b.column(c).clone(),
                    },
                )
                .collect();
            RecordBatch::try_new(b.schema(), columns).expect("batch")
        })
        .collect()
}
