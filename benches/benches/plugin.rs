//! The cost of the Wasm plugin path against native SQL, per batch and per row.
//!
//! - `to_eur`: Nexmark q1's conversion as a plugin scalar function (host encodes the
//!   argument as Arrow IPC, one guest call, guest decodes, computes, encodes, host
//!   decodes and checks) against `0.908 * CAST(price AS DOUBLE)` as a DataFusion
//!   physical expression.
//! - `passthrough`: a transform that returns its input (three Int64 columns).
//!
//! At 1k, 8k and 64k rows per batch; the fixed cost and the cost per row follow from
//! the slope (docs/PERFORMANCE.md).
//!
//! Build the plugins first (`scripts/build-plugins.sh`), then
//! `cargo bench -p weir-benches --bench plugin`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{cast, col, lit};
use datafusion::physical_expr::create_physical_expr;
use weir_runtime::config::PluginConfig;
use weir_runtime::plugin::{PluginHost, Plugins};

const SIZES: [usize; 3] = [1_024, 8_192, 65_536];

fn wasm(name: &str) -> Vec<u8> {
    let exe = std::env::current_exe().expect("bench path");
    let target: PathBuf = exe
        .ancestors()
        .find(|d| d.join("wasm32-unknown-unknown").exists())
        .expect("a target dir with wasm32 plugins: run scripts/build-plugins.sh")
        .join("wasm32-unknown-unknown/plugin")
        .join(format!("{name}.wasm"));
    std::fs::read(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()))
}

fn prices(rows: usize) -> RecordBatch {
    let price: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..rows as i64).map(|i| 100 + i * 37 % 10_000),
    ));
    RecordBatch::try_from_iter([("price", price)]).expect("batch")
}

fn three_columns(rows: usize) -> RecordBatch {
    let column = |k: i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| i * k),
        ))
    };
    RecordBatch::try_from_iter([
        ("auction", column(1)),
        ("bidder", column(3)),
        ("price", column(7)),
    ])
    .expect("batch")
}

fn bench_plugins(c: &mut Criterion) {
    let plugins = Plugins::open(
        PluginHost::new(PluginConfig::default(), None).expect("host"),
        None,
    )
    .expect("plugins");
    let currency = plugins
        .install("currency", &wasm("weir_plugin_currency"))
        .expect("currency installs");
    let passthrough = plugins
        .install("passthrough", &wasm("weir_plugin_passthrough"))
        .expect("passthrough installs");

    let schema = Arc::new(Schema::new(vec![Field::new(
        "price",
        DataType::Int64,
        false,
    )]));
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).expect("schema");
    let native = create_physical_expr(
        &(lit(0.908) * cast(col("price"), DataType::Float64)),
        &df_schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .expect("native expression");

    let mut group = c.benchmark_group("to_eur");
    for rows in SIZES {
        let batch = prices(rows);
        let args = RecordBatch::try_from_iter([("arg0", batch.column(0).clone())]).expect("args");
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new("wasm", rows), &args, |b, args| {
            b.iter(|| {
                currency
                    .call_function("to_eur", black_box(args.clone()), &DataType::Float64)
                    .expect("converts")
            })
        });
        group.bench_with_input(BenchmarkId::new("native", rows), &batch, |b, batch| {
            b.iter(|| native.evaluate(black_box(batch)).expect("evaluates"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("passthrough");
    for rows in SIZES {
        let batch = three_columns(rows);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::new("wasm", rows), &batch, |b, batch| {
            b.iter(|| {
                passthrough
                    .call_transform("passthrough", black_box(batch))
                    .expect("passes")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plugins);
criterion_main!(benches);
