//! Joins of two sources in 1 and 2 keyed instances, the operator alone: an interval
//! join (rows matched within 1 s of event time) and a join per 1-second TUMBLE window,
//! both on `auction`. Each iteration feeds 8 micro-batches of 8,192 rows to each input
//! (82,000 rows per second of event time, 100,000 auctions) and advances the watermark
//! after each pair, so rows are freed and windows close as in a stream.
//!
//! Run: `cargo bench -p weir-benches --bench joins`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use weir_sql::WatermarkSpec;
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{Collector, ContinuousQuery, Statement, parse_statement};

const BATCH: usize = 8_192;
/// Batches per input per iteration.
const BATCHES: usize = 8;
/// Event time a batch spans.
const BATCH_MS: i64 = 100;
const AUCTIONS: u64 = 100_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn plan(sql: &str) -> ContinuousQuery {
    let Ok(Statement::CreateView(view)) = parse_statement(sql) else {
        panic!("not a view: {sql}")
    };
    let info = || SourceInfo {
        schema: schema(),
        watermark: Some(WatermarkSpec {
            column: "date_time".into(),
            delay: std::time::Duration::ZERO,
        }),
    };
    let catalog = SourceCatalog::from([("bids".to_string(), info()), ("asks".to_string(), info())]);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(ContinuousQuery::plan(&view, &catalog))
        .expect("plans")
}

/// Batch `n` of an input: times from `n * BATCH_MS`, auctions from a multiplicative
/// hash of the row number (`salt` tells the inputs apart).
fn batch(n: i64, salt: u64) -> RecordBatch {
    let rows = 0..BATCH as u64;
    let auctions: Vec<i64> = rows
        .clone()
        .map(|i| {
            let x = (n as u64 * BATCH as u64 + i + salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((x >> 33) % AUCTIONS) as i64
        })
        .collect();
    let prices: Vec<i64> = auctions.iter().map(|a| a % 1_000).collect();
    let times: Vec<i64> = rows
        .map(|i| n * BATCH_MS + (i as i64 * BATCH_MS) / BATCH as i64)
        .collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(auctions)),
            Arc::new(Int64Array::from(prices)),
            Arc::new(TimestampMillisecondArray::from(times)),
        ],
    )
    .expect("batch")
}

fn benches(c: &mut Criterion) {
    let views = [
        (
            "interval",
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction, b.price, a.price AS ask FROM bids AS b \
             JOIN asks AS a ON b.auction = a.auction \
             AND a.date_time BETWEEN b.date_time AND b.date_time + INTERVAL '1' SECOND",
        ),
        (
            "per_window",
            "CREATE MATERIALIZED VIEW v AS SELECT b.auction, b.price, a.price AS ask, b.window_start \
             FROM TUMBLE(bids, date_time, INTERVAL '1' SECOND) AS b \
             JOIN TUMBLE(asks, date_time, INTERVAL '1' SECOND) AS a \
             ON b.auction = a.auction AND b.window_start = a.window_start",
        ),
    ];
    let mut g = c.benchmark_group("joins");
    g.throughput(Throughput::Elements((2 * BATCH * BATCHES) as u64));
    g.sample_size(10);
    for (name, sql) in views {
        for instances in [1, 2] {
            let mut q = plan(sql);
            assert_eq!(
                q.operator.set_parallelism(instances).expect("set"),
                instances
            );
            let mut next = 0i64;
            g.bench_function(format!("{name}/{instances}_instances"), |b| {
                b.iter_batched(
                    || {
                        let batches: Vec<_> = (next..next + BATCHES as i64)
                            .map(|n| (n, batch(n, 0), batch(n, 7)))
                            .collect();
                        next += BATCHES as i64;
                        batches
                    },
                    |batches| {
                        let mut out = Collector::default();
                        for (n, bids, asks) in &batches {
                            let watermark = Some(n * BATCH_MS - 1);
                            q.operator
                                .process_input(0, bids, watermark, &mut out)
                                .expect("bids");
                            q.operator
                                .process_input(1, asks, watermark, &mut out)
                                .expect("asks");
                            q.operator
                                .on_watermark((n + 1) * BATCH_MS - 1, &mut out)
                                .expect("watermark");
                        }
                        assert!(out.late.is_empty() && out.failed.is_empty());
                        black_box(out.rows);
                    },
                    criterion::BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(joins, benches);
criterion_main!(joins);
