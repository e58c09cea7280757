//! KPL de-aggregation: Kinesis records written by the Kinesis Producer Library's
//! aggregation (magic bytes, protobuf, MD5) split into their user records, in MB/s of
//! aggregated records, for aggregates of 10, 100 and 1,000 small JSON records.
//!
//! Run: `cargo bench -p weir-benches --bench kpl`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_runtime::source::kinesis::kpl::{Unpacked, aggregate, unpack};

/// Aggregates of `per` small JSON bids each, about 1 MiB in all.
fn aggregates(per: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut i = 0u64;
    while bytes < 1 << 20 {
        let records: Vec<(String, String)> = (0..per)
            .map(|_| {
                i += 1;
                (
                    format!("u{}", i % 10_000),
                    format!(
                        r#"{{"id":{i},"user_id":{},"price":{},"ts":{}}}"#,
                        i % 10_000,
                        i % 997,
                        1_700_000_000_000 + i
                    ),
                )
            })
            .collect();
        let data = aggregate(records.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        bytes += data.len();
        out.push(Bytes::from(data));
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("kpl");
    for per in [10, 100, 1000] {
        let data = aggregates(per);
        let total: usize = data.iter().map(Bytes::len).sum();
        group.throughput(Throughput::Bytes(total as u64));
        group.bench_function(format!("unpack/{per}-per-aggregate"), |b| {
            b.iter(|| {
                let mut users = 0;
                for d in &data {
                    if let Unpacked::Aggregated(a) = unpack(black_box(d)) {
                        users += a.records.len();
                    }
                }
                black_box(users)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
