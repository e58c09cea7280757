//! The `http` connector: records pushed to `POST /api/v1/sources/{name}/records`.
//! Bodies are decoded on the request's thread; decoded chunks wait in a bounded buffer
//! for the pipeline. A request first reserves a place in that buffer, so a full buffer
//! answers 429 before any work is done and a retried request is never counted twice.
//!
//! With a data dir every accepted body is in the source's write-ahead log ([`Wal`])
//! before the request answers, and a request that carries an idempotency key already
//! logged is answered again without being counted again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::connector::{Connector, Feed, SourceDef};
use super::wal::Wal;
use super::{Chunk, SourceRuntime};
use crate::checkpoint::Position;
use crate::deadletter::{DeadLetterStore, NewDeadLetter};
use crate::decode::JsonDecoder;
use crate::{Error, Result};

/// Options of `WITH (connector = 'http', ...)` beyond the common ones: none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpOptions {}

/// A source whose records are posted to it; the engine's [`HttpInput`] takes them.
struct HttpSource {
    schema: SchemaRef,
}

pub fn open(def: &SourceDef) -> Result<Box<dyn Connector>> {
    def.json_only()?;
    def.no_properties()?;
    def.no_metadata_columns()?;
    let _: HttpOptions = crate::options::parse_own(def.name, def.options)?;
    Ok(Box::new(HttpSource {
        schema: Arc::new(Schema::new(def.declared_columns()?.to_vec())),
    }))
}

impl Connector for HttpSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows come with requests: nothing to start.
    fn start(&self, _feed: Feed, _resume: Option<Position>) -> Result<()> {
        Ok(())
    }
}

/// The push side of an HTTP source.
pub struct HttpInput {
    pub(crate) tx: SyncSender<Chunk>,
    /// Chunks sent but not yet taken by the pipeline.
    pub(crate) buffered: Arc<AtomicUsize>,
    pub(crate) capacity: usize,
    pub(crate) decoder: JsonDecoder,
    pub(crate) next_position: AtomicU64,
    /// None for an in-memory engine.
    pub(crate) wal: Option<Wal>,
    /// Where the log is replayed from once the catalog is restored.
    pub(crate) replay_from: parking_lot::Mutex<Option<u64>>,
}

/// The answer to one ingest request.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct IngestReport {
    /// Records decoded and queued for the pipeline.
    pub accepted: usize,
    /// Records sent to the dead-letter store.
    pub dead_lettered: usize,
    /// The idempotency key was seen before: this is the first answer again, and
    /// nothing was counted twice.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl HttpInput {
    /// Decode `body`, log it and queue its rows; malformed records go to the
    /// dead-letter store. A request whose `key` was logged before is answered as then.
    pub fn ingest(
        &self,
        source: &SourceRuntime,
        body: &[u8],
        key: Option<&str>,
        dead_letters: &DeadLetterStore,
    ) -> Result<IngestReport> {
        let logged = |(accepted, dead_lettered): (u32, u32)| IngestReport {
            accepted: accepted as usize,
            dead_lettered: dead_lettered as usize,
            duplicate: true,
        };
        if let (Some(wal), Some(k)) = (&self.wal, key)
            && let Some(report) = wal.answered(k).map_err(|e| unavailable(&source.name, &e))?
        {
            return Ok(logged(report));
        }
        // Reserve a place in the buffer before any work, so a 429 has no side effects.
        if self
            .buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_err()
        {
            return Err(backpressure(&source.name));
        }
        let release = || self.buffered.fetch_sub(1, Ordering::AcqRel);
        let received = Instant::now();
        let decoded = self.decoder.decode(body);
        let accepted = decoded.batch.num_rows();
        let rejected = decoded.rejected.len();
        let first = self
            .next_position
            .fetch_add(decoded.records as u64, Ordering::Relaxed);
        let queue = |position: Position| -> Result<()> {
            if accepted == 0 {
                release();
                return Ok(());
            }
            // The reservation guarantees room: the channel holds at most `capacity` chunks.
            let chunk = Chunk::Rows {
                batch: decoded.batch.clone(),
                received,
                position,
                split: 0,
            };
            if self.tx.try_send(chunk).is_err() {
                release();
                return Err(Error::Unavailable(format!(
                    "source {} has stopped: its pipeline ended (see the log); retry once it runs again",
                    source.name
                )));
            }
            Ok(())
        };
        match &self.wal {
            Some(wal) => {
                let appended = wal.append(accepted as u32, rejected as u32, key, body, |end| {
                    queue(wal_position(wal, end)).map(|()| end)
                });
                let end = match appended {
                    Ok(queued) => queued?,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        // The same key raced in: the first request was logged.
                        release();
                        let first = match key {
                            Some(k) => wal
                                .answered(k)
                                .map_err(|e| unavailable(&source.name, &e))?
                                .unwrap_or_default(),
                            None => (0, 0),
                        };
                        return Ok(logged(first));
                    }
                    Err(e) => {
                        release();
                        return Err(unavailable(&source.name, &e));
                    }
                };
                wal.sync_to(end).map_err(|e| {
                    // Logged and queued, but maybe not on disk: the outcome is unknown.
                    Error::Io(std::io::Error::other(format!(
                        "source {}: the request was logged but the log could not be synced ({e}); \
                         whether it survives a crash is unknown. Retry with the same Idempotency-Key \
                         once the data dir is healthy and weir restarted",
                        source.name
                    )))
                })?;
            }
            None => queue(Position::at("records", first + decoded.records as u64))?,
        }
        source.records_in.inc_by(accepted as u64);
        let dead_lettered =
            dead_letters.push_all(decoded.rejected.into_iter().map(|r| NewDeadLetter {
                source: source.name.clone(),
                view: None,
                partition: None,
                position: Some(first + r.index as u64),
                reason: r.reason.into(),
                raw: r.raw,
            }));
        source.dead_letters.inc_by(dead_lettered as u64);
        Ok(IngestReport {
            accepted,
            dead_lettered,
            duplicate: false,
        })
    }

    /// Queue again the logged requests after `from` (at start, after a crash), in log
    /// order; their malformed records were dead-lettered when they first came.
    pub(crate) fn replay(&self, source: &SourceRuntime, from: u64) -> Result<usize> {
        let Some(wal) = &self.wal else { return Ok(0) };
        let mut records = 0;
        let mut stopped = false;
        // One log segment in memory at a time.
        wal.for_each_from(from, |entry| {
            let decoded = self.decoder.decode(&entry.body);
            let rows = decoded.batch.num_rows();
            if rows == 0 {
                return true;
            }
            self.buffered.fetch_add(1, Ordering::AcqRel);
            let chunk = Chunk::Rows {
                batch: decoded.batch,
                received: Instant::now(),
                position: wal_position(wal, entry.end),
                split: 0,
            };
            if self.tx.send(chunk).is_err() {
                stopped = true;
                return false;
            }
            source.records_in.inc_by(rows as u64);
            records += rows;
            true
        })?;
        if stopped {
            return Err(Error::Unavailable(format!(
                "source {} has stopped: its pipeline ended (see the log); retry once it runs again",
                source.name
            )));
        }
        Ok(records)
    }
}

/// The partition names of an HTTP source's position: the write-ahead log's offset and
/// which log it is.
pub const WAL_POSITION: &str = "wal";
pub const WAL_ID: &str = "wal_id";

/// Where an HTTP source is after the log entry that ends at `end`.
pub fn wal_position(wal: &Wal, end: u64) -> Position {
    let mut p = Position::at(WAL_POSITION, end);
    p.0.insert(WAL_ID.into(), wal.id().to_string());
    p
}

fn unavailable(source: &str, e: &std::io::Error) -> Error {
    Error::Unavailable(format!(
        "source {source} cannot log the request in the data dir's write-ahead log ({e}); \
         nothing was accepted; retry once the data dir is writable"
    ))
}

fn backpressure(source: &str) -> Error {
    Error::Backpressure {
        message: format!("source {source} is busy: its buffer is full; retry after a second"),
        retry_after_secs: 1,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64};

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use parking_lot::Mutex;
    use prometheus::{IntCounter, IntGauge};

    use super::*;
    use crate::source::SourceState;

    fn source(capacity: usize) -> (SourceRuntime, std::sync::mpsc::Receiver<Chunk>) {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let counter = || IntCounter::new("c", "c").expect("counter");
        let http = HttpInput {
            tx,
            buffered: Arc::new(AtomicUsize::new(0)),
            capacity,
            decoder: JsonDecoder::new(schema.clone()),
            next_position: AtomicU64::new(0),
            wal: None,
            replay_from: Default::default(),
        };
        let s = SourceRuntime {
            name: "s".into(),
            connector: "http".into(),
            sql: String::new(),
            schema,
            watermark: None,
            views: Mutex::new(Vec::new()),
            state: Mutex::new(SourceState::Running),
            current_watermark: AtomicI64::new(i64::MIN),
            stop: Arc::new(AtomicBool::new(false)),
            active: Arc::new(AtomicBool::new(true)),
            http: Some(http),
            input: Box::new(HttpSource {
                schema: Arc::new(Schema::empty()),
            }),
            records_in: counter(),
            batches: counter(),
            dead_letters: counter(),
            watermark_gauge: IntGauge::new("g", "g").expect("gauge"),
            checkpoint: Default::default(),
            last_chunk_ms: AtomicI64::new(0),
        };
        (s, rx)
    }

    #[test]
    fn a_full_buffer_answers_backpressure_and_positions_continue() {
        let (s, rx) = source(1);
        let dlq = DeadLetterStore::open(None, 10).expect("store");
        let http = s.http.as_ref().expect("http");
        let r = http
            .ingest(&s, b"{\"id\":1}\n{\"id\":\"bad\"}", None, &dlq)
            .expect("accepted");
        assert_eq!(
            r,
            IngestReport {
                accepted: 1,
                dead_lettered: 1,
                duplicate: false
            }
        );
        assert_eq!(dlq.recent(None, None, 10)[0].position, Some(1));
        let e = http
            .ingest(&s, b"{\"id\":2}", None, &dlq)
            .expect_err("buffer full");
        assert!(
            matches!(
                e,
                Error::Backpressure {
                    retry_after_secs: 1,
                    ..
                }
            ),
            "{e}"
        );
        // The pipeline takes the chunk: room again.
        assert!(matches!(rx.recv(), Ok(Chunk::Rows { .. })));
        http.buffered.fetch_sub(1, Ordering::Relaxed);
        let r = http
            .ingest(&s, b"{\"id\":\"x\"}\n{\"id\":3}", None, &dlq)
            .expect("accepted");
        assert_eq!(
            r,
            IngestReport {
                accepted: 1,
                dead_lettered: 1,
                duplicate: false
            }
        );
        assert_eq!(
            dlq.recent(None, None, 10)[1].position,
            Some(2),
            "positions count every record received"
        );
        assert_eq!(s.records_in.get(), 2);
    }
}
