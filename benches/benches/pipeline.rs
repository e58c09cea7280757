//! Throughput of weir's hot paths on one core, on the built-in Nexmark bid stream:
//! generating events, decoding JSON, a stateless filter view and a tumbling-window
//! aggregate view (per-batch processing plus window emission).
//!
//! Run: `cargo bench -p weir-benches --bench pipeline`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::json::LineDelimitedWriter;
use weir_runtime::decode::{Columns, JsonDecoder};
use weir_runtime::source::nexmark::{Generator, GeneratorConfig, Table};
use weir_sql::planner::{SourceCatalog, SourceInfo};
use weir_sql::{Collector, ContinuousQuery, Statement, Watermark, WatermarkSpec, parse_statement};

const BATCH_EVENTS: u64 = 8_192 * 50 / 46;
const EVENTS: u64 = 2_000_000;

fn bids(events: u64) -> Vec<RecordBatch> {
    let mut g = Generator::new(GeneratorConfig {
        table: Table::Bid,
        seed: 1,
        events: Some(events),
        event_rate: 100_000,
        start_time_ms: 0,
    });
    std::iter::from_fn(|| g.next_batch(BATCH_EVENTS)).collect()
}

fn plan(sql: &str) -> ContinuousQuery {
    let Ok(Statement::CreateView(view)) = parse_statement(sql) else {
        panic!("not a view: {sql}")
    };
    let catalog = SourceCatalog::from([(
        "bids".to_string(),
        SourceInfo {
            schema: Table::Bid.schema(),
            watermark: Some(WatermarkSpec {
                column: "date_time".into(),
                delay: std::time::Duration::from_secs(4),
            }),
        },
    )]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(ContinuousQuery::plan(&view, &catalog))
        .expect("plans")
}

/// Drive a query over all batches the way a pipeline does; returns rows emitted.
fn drive(query: &mut ContinuousQuery, batches: &[RecordBatch]) -> usize {
    let mut watermark = Watermark::new(4_000);
    let time = Table::Bid
        .schema()
        .index_of("date_time")
        .expect("date_time");
    let mut out = Collector::default();
    for b in batches {
        query
            .operator
            .process(b, watermark.current(), &mut out)
            .expect("process");
        let max = datafusion::arrow::compute::max(
            b.column(time)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::TimestampMillisecondArray>()
                .expect("ts"),
        );
        if let Some(w) = max.and_then(|m| watermark.observe(m)) {
            query.operator.on_watermark(w, &mut out).expect("watermark");
        }
    }
    if let Some(w) = watermark.finish() {
        query.operator.on_watermark(w, &mut out).expect("finish");
    }
    out.rows.iter().map(RecordBatch::num_rows).sum()
}

fn benches(c: &mut Criterion) {
    let batches = bids(EVENTS);
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();

    let mut g = c.benchmark_group("nexmark");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    g.bench_function("generate_bids", |b| b.iter(|| black_box(bids(EVENTS))));
    g.finish();

    let mut g = c.benchmark_group("view");
    g.throughput(Throughput::Elements(rows));
    g.sample_size(10);
    g.bench_function("filter_project", |b| {
        b.iter_batched(
            || plan("CREATE MATERIALIZED VIEW v AS SELECT auction, price * 0.908 AS euros FROM bids WHERE price > 1000000"),
            |mut q| drive(&mut q, &batches),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("tumble_count_sum_max_by_auction", |b| {
        b.iter_batched(
            || {
                plan(
                    "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, auction, count(*) AS n, \
                     sum(price) AS total, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) \
                     GROUP BY window_start, window_end, auction",
                )
            },
            |mut q| drive(&mut q, &batches),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("tumble_avg_by_channel", |b| {
        b.iter_batched(
            || {
                plan(
                    "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, channel, avg(price) AS mean \
                     FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end, channel",
                )
            },
            |mut q| drive(&mut q, &batches),
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // JSON decoding of one 8192-row micro-batch of bids.
    let mut writer = LineDelimitedWriter::new(Vec::new());
    writer.write(&batches[0]).expect("json");
    writer.finish().expect("json");
    let body = writer.into_inner();
    let decoder = JsonDecoder::new(Table::Bid.schema());
    let records: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    // In bytes: the target is MB/s per core. Beside weir's decoder (simd-json's
    // fast path), serde_json
    // into a `Value` per record (the floor any decoder must beat) and serde's syntax
    // check alone (what the decoder no longer runs on records that decode).
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("json_bids_8k", |b| {
        b.iter(|| black_box(decoder.decode(&body)))
    });
    // The same bids as one JSON array (an HTTP body of the other form), and with `\r\n`
    // line ends (a file written on Windows).
    let array = [&b"["[..], &records.join(&b","[..]), b"]"].concat();
    assert_eq!(decoder.decode(&array).batch, decoder.decode(&body).batch);
    g.bench_function("json_bids_8k_array", |b| {
        b.iter(|| black_box(decoder.decode(&array)))
    });
    let crlf = records.join(&b"\r\n"[..]);
    assert_eq!(decoder.decode(&crlf).batch, decoder.decode(&body).batch);
    g.bench_function("json_bids_8k_crlf", |b| {
        b.iter(|| black_box(decoder.decode(&crlf)))
    });
    // The same bids as messages (Kafka, Kinesis): each checked on its own, or, kept end
    // to end in one buffer as the Kafka and Kinesis readers keep them, checked at once.
    g.bench_function("json_bids_8k_messages", |b| {
        b.iter(|| black_box(decoder.decode_records(records.iter().copied())))
    });
    let end_to_end: Vec<u8> = records.concat();
    let mut at = 0;
    let in_buffer: Vec<&[u8]> = records
        .iter()
        .map(|r| {
            at += r.len();
            &end_to_end[at - r.len()..at]
        })
        .collect();
    g.bench_function("json_bids_8k_messages_in_one_buffer", |b| {
        b.iter(|| black_box(decoder.decode_records_in(in_buffer.iter().copied(), &end_to_end)))
    });
    // arrow-json alone (weir's decoder before the simd-json fast path, and its fallback),
    // and simd-json's raw parse alone: the fast path's ceiling.
    let arrow_only = JsonDecoder::arrow_only(Table::Bid.schema());
    assert_eq!(
        decoder.decode(&body).batch,
        arrow_only.decode(&body).batch,
        "both paths decode the same rows"
    );
    g.bench_function("arrow_json_bids_8k", |b| {
        b.iter(|| black_box(arrow_only.decode(&body)))
    });
    g.bench_function("simd_json_tape_8k", |b| {
        let mut buffers = simd_json::Buffers::default();
        let mut scratch = Vec::new();
        b.iter(|| {
            for r in &records {
                scratch.clear();
                scratch.extend_from_slice(r);
                let tape =
                    simd_json::to_tape_with_buffers(&mut scratch, &mut buffers).expect("json");
                black_box(tape.0.len());
            }
        })
    });
    g.bench_function("serde_value_per_record_8k", |b| {
        b.iter(|| {
            for r in &records {
                black_box(serde_json::from_slice::<serde_json::Value>(r).expect("json"));
            }
        })
    });
    g.bench_function("serde_syntax_check_8k", |b| {
        b.iter(|| {
            for r in &records {
                black_box(serde_json::from_slice::<serde::de::IgnoredAny>(r).expect("json"));
            }
        })
    });
    g.finish();

    // Only the columns q2 reads (auction, price, and date_time for the watermark):
    // the others are checked but not built. Times as epoch milliseconds, as
    // scripts/bench-duckdb.sh writes them (parsing them as text costs as much as the
    // columns left unbuilt).
    let q2_columns = Columns::of([0, 2, 5]);
    let millis_body = {
        let bids = &batches[0];
        let mut columns = bids.columns().to_vec();
        columns[5] = cast(&columns[5], &DataType::Int64).expect("cast");
        let mut writer = LineDelimitedWriter::new(Vec::new());
        let schema = bids.schema();
        let names = schema.fields().iter().map(|f| f.name().clone());
        let bids = RecordBatch::try_from_iter(names.zip(columns)).expect("batch");
        writer.write(&bids).expect("json");
        writer.finish().expect("json");
        writer.into_inner()
    };
    assert_eq!(
        decoder.decode(&millis_body).batch,
        decoder.decode(&body).batch
    );
    assert_eq!(
        decoder.decode_columns(&millis_body, q2_columns).columns,
        q2_columns
    );
    let mut g = c.benchmark_group("decode_millis");
    g.throughput(Throughput::Bytes(millis_body.len() as u64));
    g.bench_function("json_bids_8k", |b| {
        b.iter(|| black_box(decoder.decode(&millis_body)))
    });
    g.bench_function("json_bids_8k_q2_columns", |b| {
        b.iter(|| black_box(decoder.decode_columns(&millis_body, q2_columns)))
    });
    let copies: Vec<Vec<u8>> = (0..128).map(|_| millis_body.clone()).collect();
    let mut next = 0;
    g.bench_function("json_bids_8k_cold", |b| {
        b.iter(|| {
            next = (next + 1) % copies.len();
            black_box(decoder.decode(&copies[next]))
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
