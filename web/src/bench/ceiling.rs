//! The input alone, in the same process after the run: what `weir bench` prints as the
//! ceiling of a query's rate.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use weir_runtime::decode::{Columns, JsonDecoder};
use weir_runtime::source::nexmark::{Generator, GeneratorConfig, Table};

use super::nexmark_table;

/// Events/s of the generator alone, over the same events of the same tables, each with
/// the columns the run read from it, in chunks of `chunk` events side by side on the
/// worker threads, as the unthrottled source makes them at more than one core (at one,
/// it makes them one after another on a thread of its own).
pub(super) fn generator_ceiling(
    tables: &[(&str, Columns)],
    events: u64,
    chunk: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut rows = 0u64;
    for &(t, wanted) in tables {
        let config = GeneratorConfig {
            table: nexmark_table(t)?,
            seed: 1,
            events: Some(events),
            event_rate: 100_000,
            start_time_ms: 0,
        };
        rows += (0..events.div_ceil(chunk))
            .into_par_iter()
            .map_init(
                || Generator::new(config),
                |g, k| {
                    g.seek(k * chunk);
                    (g.next_batch_of(chunk, wanted)).map_or(0, |(b, _)| b.num_rows() as u64)
                },
            )
            .sum::<u64>();
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// Records/s of the JSON decoder alone over the file: blocks of whole lines of about
/// 1 MiB, decoded on the worker threads with every column, as the file source decodes
/// them (a view that reads fewer columns may go a few per cent faster).
pub(super) fn decoder_ceiling(input: &Path, table: Table) -> anyhow::Result<f64> {
    const BLOCK: usize = 1 << 20;
    let data = std::fs::read(input)?;
    let decoder = JsonDecoder::new(table.schema());
    let start = Instant::now();
    let mut blocks = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let cut = if rest.len() <= BLOCK {
            rest.len()
        } else {
            // The block ends after its last whole line (a longer line is a block alone).
            memchr::memrchr(b'\n', &rest[..BLOCK]).map_or_else(
                || memchr::memchr(b'\n', &rest[BLOCK..]).map_or(rest.len(), |i| BLOCK + i + 1),
                |i| i + 1,
            )
        };
        let (block, after) = rest.split_at(cut);
        blocks.push(block);
        rest = after;
    }
    let rows: usize = (blocks.par_iter())
        .map(|block| decoder.decode(block).batch.num_rows())
        .sum();
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}
