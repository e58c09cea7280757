//! An updating aggregate (GROUP BY without a window) over 1 thousand to 10 million
//! distinct keys: the rate per event should not depend on how many groups the view
//! holds. Each case first loads every key once, then measures micro-batches of 8,192
//! rows with keys drawn evenly from all of them, through the operator and into the
//! view's rows (as the runtime keeps them, by group).
//!
//! Run: `cargo bench -p weir-benches --bench updating` (KEYS=1000,1000000 for some).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{Collector, ContinuousQuery, KeyedRows, Statement, parse_statement};

const BATCH: usize = 8_192;
/// Batches measured per iteration.
const BATCHES: usize = 16;

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

fn plan() -> ContinuousQuery {
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT auction, count(*) AS n, max(price) AS top, \
               avg(price) AS mean FROM bids GROUP BY auction";
    let Ok(Statement::CreateView(view)) = parse_statement(sql) else {
        panic!("not a view: {sql}")
    };
    let catalog = SourceCatalog::from([(
        "bids".to_string(),
        SourceInfo {
            schema: schema(),
            watermark: None,
        },
    )]);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(ContinuousQuery::plan(&view, &catalog))
        .expect("plans")
}

fn batch(auctions: Vec<i64>) -> RecordBatch {
    let n = auctions.len();
    let prices: Vec<i64> = auctions
        .iter()
        .map(|a| a.wrapping_mul(7919) % 10_000)
        .collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(auctions)),
            Arc::new(Int64Array::from(prices)),
            Arc::new(TimestampMillisecondArray::from(vec![0i64; n])),
        ],
    )
    .expect("batch")
}

/// Keys spread evenly over 0..keys (a multiplicative hash of a counter).
fn random_batches(keys: u64, count: usize, seed: u64) -> Vec<RecordBatch> {
    let mut x = seed;
    (0..count)
        .map(|_| {
            batch(
                (0..BATCH)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((x >> 33) % keys) as i64
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The operator and the view's rows, holding every one of `keys` groups.
fn loaded(keys: u64) -> (ContinuousQuery, KeyedRows) {
    let mut q = plan();
    let mut view = KeyedRows::new(q.output_schema.clone());
    let mut next = 0u64;
    while next < keys {
        let end = (next + BATCH as u64).min(keys);
        let mut out = Collector::default();
        q.operator
            .process(&batch((next as i64..end as i64).collect()), None, &mut out)
            .expect("load");
        apply(&mut view, out);
        next = end;
    }
    assert_eq!(view.len() as u64, keys);
    (q, view)
}

fn apply(view: &mut KeyedRows, out: Collector) {
    for change in &out.keyed {
        black_box(view.apply(change).expect("apply"));
    }
}

fn benches(c: &mut Criterion) {
    let sizes: Vec<u64> = std::env::var("KEYS")
        .map(|s| s.split(',').filter_map(|k| k.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![1_000, 10_000, 100_000, 1_000_000, 10_000_000]);
    let mut g = c.benchmark_group("updating");
    g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    g.sample_size(10);
    for keys in sizes {
        let (mut q, mut view) = loaded(keys);
        let mut seed = 1;
        g.bench_function(format!("count_max_avg_by_key/{keys}_keys"), |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    random_batches(keys, BATCHES, seed)
                },
                |batches| {
                    for b in &batches {
                        let mut out = Collector::default();
                        q.operator.process(b, None, &mut out).expect("process");
                        apply(&mut view, out);
                    }
                },
                criterion::BatchSize::PerIteration,
            )
        });
        assert_eq!(view.len() as u64, keys, "every group is still shown");
    }
    g.finish();
}

criterion_group!(updating, benches);
criterion_main!(updating);
