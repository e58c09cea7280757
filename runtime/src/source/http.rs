//! The `http` connector: records pushed to `POST /api/v1/sources/{name}/records`.
//! Bodies are decoded on the request's thread; decoded chunks wait in a bounded buffer
//! for the pipeline. A request first reserves a place in that buffer, so a full buffer
//! answers 429 before any work is done and a retried request is never counted twice.
//!
//! With a data dir every accepted body is in the source's write-ahead log ([`Wal`])
//! before the request answers, and a request that carries an idempotency key already
//! logged is answered again without being counted again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::connector::{Connector, Feed, SourceDef};
use super::heard::ChunkSender;
use super::wal::Wal;
use super::{Chunk, SourceRuntime, SourceState};
use crate::checkpoint::Position;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::deadletter::{DeadLetterStore, NewDeadLetter};
use crate::decode::JsonDecoder;
use crate::{Error, Result};

/// Options of `WITH (connector = 'http', ...)` beyond the common ones: none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpOptions {}

/// A source whose records are posted to it.
struct HttpSource {
    schema: SchemaRef,
    /// Chunks queued for the pipeline and not taken yet, at most `capacity`.
    buffered: Arc<AtomicUsize>,
    capacity: usize,
    /// With a data dir: every accepted body, before the request answers.
    wal: Option<Arc<Wal>>,
    /// The push side, once the source has started.
    input: OnceLock<HttpInput>,
}

pub fn open(def: &SourceDef) -> Result<Box<dyn Connector>> {
    def.json_only()?;
    def.no_properties()?;
    def.no_metadata_columns()?;
    let _: HttpOptions = crate::options::parse_own(def.name, def.options)?;
    let schema = Arc::new(Schema::new(def.declared_columns()?.to_vec()));
    let wal = match def.checkpointed {
        true => Some(Arc::new(open_wal(def)?)),
        false => None,
    };
    Ok(Box::new(HttpSource {
        schema,
        buffered: Arc::new(AtomicUsize::new(0)),
        capacity: def.config.http.buffer_chunks.max(1),
        wal,
        input: OnceLock::new(),
    }))
}

/// The source's write-ahead log. A source created outside a restart starts a new log:
/// one left by an earlier source of the name is removed.
fn open_wal(def: &SourceDef) -> Result<Wal> {
    let dir = def
        .config
        .data_dir
        .join("wal")
        .join(crate::durable::file_name(def.name));
    if !def.restoring && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Wal::open(&dir).map_err(|e| {
        Error::Unavailable(format!(
            "source {}: cannot open its write-ahead log in {}: {e}",
            def.name,
            dir.display()
        ))
    })
}

impl Connector for HttpSource {
    fn waits_for_a_view(&self) -> bool {
        false
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// A checkpoint taken on another log (an earlier source of this name) says nothing
    /// of this one.
    fn accepts(&self, resume: &Position) -> bool {
        self.wal
            .as_ref()
            .is_none_or(|wal| resume.0.get(WAL_ID).map(String::as_str) == Some(wal.id()))
    }

    /// Rows come with requests: ready to take them, and to replay the log from
    /// `resume` once the catalog is restored.
    fn start(&self, feed: Feed, resume: Option<Position>) -> Result<()> {
        let replay_from = self.wal.as_ref().map(|wal| {
            let from = resume.and_then(|p| p.offset(WAL_POSITION)).unwrap_or(0);
            tracing::info!(source = %feed.source, from, end = wal.end(), "write-ahead log opened");
            from
        });
        let input = HttpInput {
            tx: feed.tx,
            buffered: self.buffered.clone(),
            capacity: self.capacity,
            decoder: JsonDecoder::new(self.schema.clone()),
            next_position: AtomicU64::new(0),
            wal: self.wal.clone(),
            replay_from: Mutex::new(replay_from),
        };
        self.input
            .set(input)
            .map_err(|_| Error::Internal("the http source started twice".into()))
    }

    fn queued(&self) -> Option<Arc<AtomicUsize>> {
        Some(self.buffered.clone())
    }

    fn write_records(
        &self,
        source: &SourceRuntime,
        body: &[u8],
        idempotency_key: Option<&str>,
        dead_letters: &DeadLetterStore,
    ) -> Option<Result<IngestReport>> {
        let input = self.input.get()?;
        if *source.state.lock() != SourceState::Running {
            return Some(Err(Error::Conflict(format!(
                "source {} is not running",
                source.name
            ))));
        }
        Some(input.ingest(source, body, idempotency_key, dead_letters))
    }

    fn replay(&self, source: &SourceRuntime) -> Result<Option<(u64, usize)>> {
        let Some(input) = self.input.get() else {
            return Ok(None);
        };
        let Some(from) = input.replay_from.lock().take() else {
            return Ok(None);
        };
        input
            .replay(source, from)
            .map(|records| Some((from, records)))
    }

    /// A checkpoint may name log offsets only once they are on disk: a power loss
    /// could otherwise leave the log shorter than the checkpoint says.
    fn before_checkpoint(&self) -> std::io::Result<()> {
        match &self.wal {
            Some(wal) => wal.sync_to(wal.end()),
            None => Ok(()),
        }
    }

    /// Remove log segments that no kept checkpoint needs.
    fn checkpoints_kept(&self, source: &str, positions: &[Option<&Position>]) {
        let Some(wal) = &self.wal else {
            return;
        };
        // A checkpoint without this log's position would replay it from the start.
        let floor = positions
            .iter()
            .map(|p| {
                p.filter(|p| self.accepts(p))
                    .and_then(|p| p.offset(WAL_POSITION))
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        match wal.prune_before(floor) {
            Ok(0) => {}
            Ok(n) => tracing::info!(source, segments = n, "write-ahead log segments removed"),
            Err(e) => {
                tracing::warn!(source, error = %e, "cannot remove old write-ahead log segments")
            }
        }
    }

    fn dropped(&self, source: &str) {
        if let Some(wal) = &self.wal
            && let Err(e) = wal.destroy()
        {
            tracing::warn!(source, error = %e, "cannot remove the write-ahead log of a dropped source");
        }
    }
}

/// The push side of an HTTP source.
pub struct HttpInput {
    pub(crate) tx: ChunkSender,
    /// Chunks sent but not yet taken by the pipeline.
    pub(crate) buffered: Arc<AtomicUsize>,
    pub(crate) capacity: usize,
    pub(crate) decoder: JsonDecoder,
    pub(crate) next_position: AtomicU64,
    /// None for an in-memory engine.
    pub(crate) wal: Option<Arc<Wal>>,
    /// Where the log is replayed from once the catalog is restored.
    pub(crate) replay_from: Mutex<Option<u64>>,
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
        let decoded = (self.decoder).decode_columns(body, source.columns_read.get());
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
                columns: decoded.columns,
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
                sequence_number: None,
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
            let decoded = (self.decoder).decode_columns(&entry.body, source.columns_read.get());
            let rows = decoded.batch.num_rows();
            if rows == 0 {
                return true;
            }
            self.buffered.fetch_add(1, Ordering::AcqRel);
            let chunk = Chunk::Rows {
                batch: decoded.batch,
                columns: decoded.columns,
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

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "http",
        kind: "source",
        doc: "Records pushed over HTTP: POST JSON to /api/v1/sources/NAME/records; each request is in the write-ahead log before it is answered.",
        declares_columns: true,
        passes_through: None,
        options: [crate::connectors::COMMON_SOURCE_OPTIONS, &OWN_OPTIONS[..]].concat(),
    },
    fields: field_names::<HttpOptions>,
    test: crate::connectors::nothing_to_test,
};

const OWN_OPTIONS: [OptionDoc; 0] = [];

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64};

    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use prometheus::{IntCounter, IntGauge};

    use super::*;
    use crate::source::heard::Heard;

    fn source(capacity: usize) -> (SourceRuntime, std::sync::mpsc::Receiver<Chunk>) {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let counter = || IntCounter::new("c", "c").expect("counter");
        let input = HttpSource {
            schema: schema.clone(),
            buffered: Arc::new(AtomicUsize::new(0)),
            capacity,
            wal: None,
            input: OnceLock::new(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicBool::new(true));
        let heard = Arc::new(Heard::default());
        input
            .start(
                Feed {
                    source: "s".into(),
                    schema: schema.clone(),
                    tx: ChunkSender::new(tx, heard.clone()),
                    stop: stop.clone(),
                    active: active.clone(),
                    failure: Default::default(),
                    records_in: counter(),
                    dead_letter_count: counter(),
                    dead_letters: Arc::new(DeadLetterStore::open(None, 10).expect("store")),
                    columns_read: Default::default(),
                    chunk_rows: 100,
                    lag: prometheus::IntGaugeVec::new(
                        prometheus::Opts::new("l", "l"),
                        &["source", "partition"],
                    )
                    .expect("gauge"),
                    shard_metrics: crate::metrics::ShardMetrics::for_test(),
                },
                None,
            )
            .expect("starts");
        let s = SourceRuntime {
            name: "s".into(),
            connector: "http".into(),
            sql: String::new(),
            schema,
            watermark: None,
            views: Mutex::new(Vec::new()),
            columns_read: Default::default(),
            state: Mutex::new(SourceState::Running),
            ended: Default::default(),
            current_watermark: AtomicI64::new(i64::MIN),
            stop,
            active,
            input: Box::new(input),
            records_in: counter(),
            batches: counter(),
            dead_letters: counter(),
            watermark_gauge: IntGauge::new("g", "g").expect("gauge"),
            checkpoint: Default::default(),
            checkpointed: false,
            heard,
            failure: Default::default(),
        };
        (s, rx)
    }

    #[test]
    fn a_full_buffer_answers_backpressure_and_positions_continue() {
        let (s, rx) = source(1);
        let dlq = DeadLetterStore::open(None, 10).expect("store");
        let ingest = |body: &[u8]| {
            s.input
                .write_records(&s, body, None, &dlq)
                .expect("an http source takes records")
        };
        let r = ingest(b"{\"id\":1}\n{\"id\":\"bad\"}").expect("accepted");
        assert_eq!(
            r,
            IngestReport {
                accepted: 1,
                dead_lettered: 1,
                duplicate: false
            }
        );
        assert_eq!(dlq.recent(None, None, 10)[0].position, Some(1));
        let e = ingest(b"{\"id\":2}").expect_err("buffer full");
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
        s.input
            .queued()
            .expect("counted")
            .fetch_sub(1, Ordering::Relaxed);
        let r = ingest(b"{\"id\":\"x\"}\n{\"id\":3}").expect("accepted");
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
