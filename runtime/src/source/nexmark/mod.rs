//! The `nexmark` connector: a generator thread producing one Nexmark table, throttled
//! to `rate` events per second (0 = as fast as possible), ending after `events` events
//! (0 = never) with a final watermark that closes every window. Generation starts when
//! the first view attaches, so a finite run is seen whole by that view. Unthrottled, it
//! generates chunks on the worker threads, each as soon as a worker is free and up to
//! `runtime.parallelism` and one more at once (events are generated from their number
//! alone), and sends them in order.

pub mod generator;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::datatypes::SchemaRef;
use serde::Deserialize;

use super::connector::{Connector, Feed, SourceDef};
use super::in_order::InOrder;
use crate::checkpoint::Position;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::{Error, Result};
pub use generator::{Generator, GeneratorConfig, Table};
use weir_sql::WatermarkSpec;

/// A generated Nexmark table.
pub struct NexmarkSource {
    options: NexmarkOptions,
    parallelism: usize,
}

pub fn open(def: &SourceDef) -> Result<Box<dyn Connector>> {
    def.json_only()?;
    def.no_properties()?;
    if !def.columns.is_empty() {
        return Err(Error::BadRequest(format!(
            "source {}: nexmark sources take their columns from the generator; leave out the column list",
            def.name
        )));
    }
    let options: NexmarkOptions = crate::options::parse_own(def.name, def.options)?;
    options.generator_config()?;
    Ok(Box::new(NexmarkSource {
        options,
        parallelism: def.config.parallelism.max(1),
    }))
}

impl Connector for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        self.options.table.schema()
    }

    fn default_watermark(&self) -> Option<WatermarkSpec> {
        Some(WatermarkSpec {
            column: "date_time".into(),
            delay: Duration::from_secs(4),
        })
    }

    fn start(&self, feed: Feed, resume: Option<Position>) -> Result<()> {
        let start_event = resume.and_then(|p| p.offset(POSITION)).unwrap_or(0);
        spawn(&self.options, start_event, self.parallelism, feed)
    }
}

/// Options of the nexmark connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct NexmarkOptions {
    /// `person`, `auction` or `bid`.
    pub table: Table,
    /// Events per second of wall-clock time over all three streams; 0 = as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Total events over all three streams; 0 = unbounded.
    #[serde(default)]
    pub events: u64,
    /// Generator seed; the same seed gives the same rows. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Events per second of event time; defaults to `rate`, or 10,000 when `rate` is 0.
    #[serde(default)]
    pub event_rate: Option<u64>,
    /// Event time of the first event: ms since the epoch, or 'now'. Default 2015-07-15T00:00:00Z.
    #[serde(default)]
    pub start_time: Option<String>,
}

/// The benchmark's customary epoch, 2015-07-15T00:00:00Z, for reproducible runs.
const DEFAULT_START_MS: i64 = 1_436_918_400_000;

impl NexmarkOptions {
    pub fn generator_config(&self) -> Result<GeneratorConfig> {
        let start_time_ms = match self.start_time.as_deref() {
            None => DEFAULT_START_MS,
            Some(s) if s.eq_ignore_ascii_case("now") => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(DEFAULT_START_MS),
            Some(s) => s.parse().map_err(|_| {
                Error::BadRequest(format!(
                    "nexmark start_time '{s}' must be milliseconds since the epoch or 'now'"
                ))
            })?,
        };
        Ok(GeneratorConfig {
            table: self.table,
            seed: self.seed,
            events: (self.events > 0).then_some(self.events),
            event_rate: self
                .event_rate
                .unwrap_or(if self.rate > 0 { self.rate } else { 10_000 })
                .max(1),
            start_time_ms,
        })
    }
}

/// The partition name of the generator's position: the number of the next event.
pub const POSITION: &str = "event";

/// Run the generator on its own thread, from event `start_event`, until it ends or
/// the source stops; unthrottled, on the workers (see [`generate_in_parallel`]).
fn spawn(options: &NexmarkOptions, start_event: u64, parallelism: usize, feed: Feed) -> Result<()> {
    let config = options.generator_config()?;
    let mut generator = Generator::new(config);
    generator.seek(start_event);
    let rate = options.rate;
    let chunk = chunk_events(feed.chunk_rows, parallelism, rate);
    std::thread::Builder::new()
        .name(format!("nexmark-{}", feed.source))
        .spawn(move || {
            if !feed.wait_for_a_view() {
                return;
            }
            let started = Instant::now();
            if rate == 0 && parallelism > 1 {
                generate_in_parallel(config, start_event, chunk, parallelism, &feed);
                return;
            }
            while !feed.stopped() {
                if rate > 0 {
                    let sent = generator.next_event() - start_event;
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait.min(Duration::from_millis(100)));
                        continue;
                    }
                }
                match generator.next_batch_of(chunk, feed.columns_read.get()) {
                    Some((batch, made)) => {
                        let position = Position::at(POSITION, generator.next_event());
                        if batch.num_rows() > 0 && !feed.send_decoded(batch, made, position, 0) {
                            return;
                        }
                    }
                    None => {
                        feed.end();
                        return;
                    }
                }
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the nexmark generator: {e}")))?;
    Ok(())
}

/// The events of a chunk the generator makes at a time: `chunk_rows` is a batch's
/// `max_rows`, `rate` the events per second (0: as fast as it can).
pub fn chunk_events(chunk_rows: usize, parallelism: usize, rate: u64) -> u64 {
    if rate > 0 {
        // Throttled runs send small chunks often, so batches close on time.
        (rate / 100).clamp(1, chunk_rows.clamp(1, 4096) as u64)
    } else if parallelism > 1 {
        // Two batches' worth of events per job on the workers: each job costs wake-ups
        // and hand-offs between the cores (7% of the samples of q2 at 2 cores were the
        // kernel's, waking threads), and the pipeline cuts a chunk into batches of
        // `max_rows` without copying. But not a huge `max_rows`' worth: `parallelism` +
        // 1 are held at once.
        chunk_rows.saturating_mul(2).clamp(1, 1 << 16) as u64
    } else {
        chunk_rows.clamp(1, 4096) as u64
    }
}

/// Generate as fast as possible, chunks of `chunk` events on the workers (each as soon
/// as one is free, up to `parallelism` and one more ahead of the one being sent), sent
/// in event order.
fn generate_in_parallel(
    config: GeneratorConfig,
    start_event: u64,
    chunk: u64,
    parallelism: usize,
    feed: &Feed,
) {
    let mut generating = InOrder::new(parallelism + 1);
    let mut next = start_event;
    let last = config.events.unwrap_or(u64::MAX);
    while !feed.stopped() {
        while next < last && generating.has_room() {
            let (from, wanted) = (next, feed.columns_read.get());
            generating.spawn((), move || {
                // Every chunk from the fourth on, so that some batches go through before.
                if from >= start_event.saturating_add(chunk.saturating_mul(3)) {
                    crate::failpoint::panic_point("nexmark-chunk-panic");
                }
                let mut g = Generator::new(config);
                g.seek(from);
                (g.next_batch_of(chunk, wanted)).map(|(b, made)| (b, made, g.next_event()))
            });
            next = next.saturating_add(chunk);
        }
        let Some(((), generated)) = generating.next() else {
            feed.end();
            return;
        };
        match generated {
            Ok(Some((batch, made, after))) => {
                let position = Position::at(POSITION, after);
                if batch.num_rows() > 0 && !feed.send_decoded(batch, made, position, 0) {
                    return;
                }
            }
            Ok(None) => {
                feed.end();
                return;
            }
            Err(why) => {
                feed.fail(format!("the nexmark generator stopped: {why}"));
                return;
            }
        }
    }
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "nexmark",
        kind: "source",
        doc: "The built-in Nexmark generator: persons, auctions and bids, with their own columns.",
        declares_columns: false,
        passes_through: None,
        options: [crate::connectors::COMMON_SOURCE_OPTIONS, &OWN_OPTIONS[..]].concat(),
    },
    fields: field_names::<NexmarkOptions>,
    test: crate::connectors::nothing_to_test,
};

const OWN_OPTIONS: [OptionDoc; 6] = [
    OptionDoc {
        name: "table",
        kind: "choice",
        choices: &["person", "auction", "bid"],
        required: true,
        default: None,
        doc: "Which Nexmark table the source holds.",
    },
    OptionDoc {
        name: "rate",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("0"),
        doc: "Events per second of wall-clock time over the three tables; 0 runs as fast as possible.",
    },
    OptionDoc {
        name: "events",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("0"),
        doc: "Total events over the three tables; 0 is unbounded.",
    },
    OptionDoc {
        name: "seed",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("0"),
        doc: "Generator seed: the same seed gives the same rows.",
    },
    OptionDoc {
        name: "event_rate",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("rate, or 10000 when rate is 0"),
        doc: "Events per second of event time.",
    },
    OptionDoc {
        name: "start_time",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("1436918400000 (2015-07-15T00:00:00Z)"),
        doc: "Event time of the first event: milliseconds since the epoch, or 'now'.",
    },
];

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::compute::concat_batches;

    use super::*;
    use crate::decode::Columns;
    use crate::source::Chunk;

    /// Throttled: a hundredth of a second's events, at most a batch's worth and 4,096,
    /// and at least one. Unthrottled: two batches' worth on the workers (at most
    /// 65,536), one batch's (at most 4,096) alone.
    #[test]
    fn a_chunk_is_sized_by_the_rate_the_cores_and_the_batch() {
        for (chunk_rows, parallelism, rate, events) in [
            (8192, 2, 0, 16_384),
            (8192, 4, 0, 16_384),
            (100_000, 2, 0, 65_536),
            (0, 2, 0, 1),
            (8192, 1, 0, 4096),
            (100, 1, 0, 100),
            (0, 1, 0, 1),
            (8192, 2, 100_000, 1000),
            (8192, 1, 1_000_000, 4096),
            (500, 2, 1_000_000, 500),
            (8192, 2, 50, 1),
            (0, 1, 50, 1),
        ] {
            assert_eq!(
                chunk_events(chunk_rows, parallelism, rate),
                events,
                "{chunk_rows} rows a batch, {parallelism} cores, {rate} events/s"
            );
        }
    }

    #[test]
    fn chunks_generated_side_by_side_are_the_serial_rows_in_order() {
        let config = GeneratorConfig {
            table: Table::Bid,
            seed: 3,
            events: Some(50_500),
            event_rate: 10_000,
            start_time_ms: DEFAULT_START_MS,
        };
        let schema = config.table.schema();
        let serial = {
            let mut g = Generator::new(config);
            g.seek(1_000);
            let batches: Vec<RecordBatch> = std::iter::from_fn(|| g.next_batch(4096)).collect();
            concat_batches(&schema, &batches).expect("concat")
        };
        let (feed, rx, _) = Feed::for_test(schema.clone(), 1024);
        // No view reads `extra`: it is left out, and the chunks say so.
        feed.columns_read.set(Columns::of([0, 5]));
        generate_in_parallel(config, 1_000, 1_000, 3, &feed);
        let (mut batches, mut positions) = (Vec::new(), Vec::new());
        let chunks: Vec<Chunk> = rx.try_iter().collect();
        assert!(
            matches!(chunks.last(), Some(Chunk::End)),
            "the end comes last"
        );
        for chunk in chunks {
            match chunk {
                Chunk::Rows {
                    batch,
                    position,
                    columns,
                    ..
                } => {
                    assert_eq!(columns, Columns::of(0..6));
                    batches.push(batch);
                    positions.push(position.offset(POSITION).expect("event"));
                }
                Chunk::End => {}
                Chunk::SplitGone(_) => unreachable!("one split"),
            }
        }
        let all = concat_batches(&schema, &batches).expect("concat");
        assert_eq!(all.columns()[..6], serial.columns()[..6]);
        // Each chunk's position is the event after it: 2,000, 3,000, ... 50,000, 50,500.
        let mut expected: Vec<u64> = (2..=50).map(|k| k * 1_000).collect();
        expected.push(50_500);
        assert_eq!(positions, expected);
        // Resumed at the end: nothing more, and the end.
        let (feed, rx, _) = Feed::for_test(schema, 16);
        generate_in_parallel(config, 50_500, 1_000, 3, &feed);
        assert!(matches!(
            rx.try_iter().collect::<Vec<_>>()[..],
            [Chunk::End]
        ));
    }
}
