//! One shape for every source connector. A connector parses its own `WITH (...)`
//! options into a typed struct when the source is created ([`open`]), says what its
//! rows look like, starts reading from a checkpoint's position or from its configured
//! start, and hears when a checkpoint that covers a position is durable. Adding a
//! connector is a folder under `source/` and one line in [`CONNECTORS`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::TrySendError;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, SchemaRef};
use prometheus::{IntCounter, IntGaugeVec};
use serde::Serialize;

use super::heard::ChunkSender;
use super::http::IngestReport;
use super::{Chunk, SourceRuntime, file, http, kafka, kinesis, nexmark};
use crate::checkpoint::Position;
use crate::config::RuntimeConfig;
use crate::connectors::Described;
use crate::deadletter::{DeadLetterStore, NewDeadLetter};
use crate::decode::{Columns, ColumnsRead};
use crate::options::CommonOptions;
use crate::{Error, Result};
use weir_sql::WatermarkSpec;
use weir_sql::parser::METADATA_KEY;

/// How a connector is made from a `CREATE SOURCE` statement.
type Open = fn(&SourceDef) -> Result<Box<dyn Connector>>;

/// Every connector, by the name `WITH (connector = ...)` gives, with what the API
/// says of it (crate::connectors).
const CONNECTORS: &[(&str, Open, &Described)] = &[
    ("http", http::open, &http::DESCRIBED),
    ("nexmark", nexmark::open, &nexmark::DESCRIBED),
    ("file", file::open, &file::DESCRIBED),
    ("kafka", kafka::open, &kafka::DESCRIBED),
    ("kinesis", kinesis::open, &kinesis::DESCRIBED),
];

/// What the API says of every source connector.
pub(crate) fn described() -> impl Iterator<Item = &'static Described> {
    CONNECTORS.iter().map(|(_, _, d)| *d)
}

/// What a `CREATE SOURCE` statement says, for its connector.
pub struct SourceDef<'a> {
    pub name: &'a str,
    /// Declared columns (empty when the connector brings its own).
    pub columns: &'a [Field],
    pub options: &'a BTreeMap<String, String>,
    pub common: &'a CommonOptions,
    pub config: &'a RuntimeConfig,
    /// Created again from the catalog at start: accepted before, so not refused for
    /// what may be passing (a topic a broker does not list for a moment).
    pub restoring: bool,
    /// The engine takes checkpoints (it has a data dir): what a connector keeps on
    /// disk (an http source's log) lives there.
    pub checkpointed: bool,
}

impl SourceDef<'_> {
    /// Refuse `METADATA FROM` columns: this connector's records have no envelope.
    pub fn no_metadata_columns(&self) -> Result<()> {
        match self
            .columns
            .iter()
            .find(|f| f.metadata().contains_key(METADATA_KEY))
        {
            Some(f) => Err(Error::BadRequest(format!(
                "source {}: column {} is METADATA FROM '{}', but the {} connector has no metadata columns",
                self.name,
                f.name(),
                f.metadata()[METADATA_KEY],
                self.common.connector
            ))),
            None => Ok(()),
        }
    }

    /// Refuse `properties.*` options: this connector has no client library to pass
    /// them to.
    pub fn no_properties(&self) -> Result<()> {
        match self.options.keys().find(|k| k.starts_with("properties.")) {
            Some(k) => Err(Error::BadRequest(format!(
                "source {}: unknown option '{k}': the {} connector takes no properties.* options",
                self.name, self.common.connector
            ))),
            None => Ok(()),
        }
    }

    /// Refuse any format but JSON.
    pub fn json_only(&self) -> Result<()> {
        match self.common.format.as_deref() {
            Some(f) if !f.eq_ignore_ascii_case("json") => Err(Error::BadRequest(format!(
                "source {}: format '{f}' is not supported by the {} connector; use 'json'",
                self.name, self.common.connector
            ))),
            _ => Ok(()),
        }
    }

    /// The declared columns, which a source of this connector needs.
    pub fn declared_columns(&self) -> Result<&[Field]> {
        if self.columns.is_empty() {
            return Err(Error::BadRequest(format!(
                "source {name}: declare its columns, e.g. CREATE SOURCE {name} (id BIGINT, ts TIMESTAMP) WITH (...)",
                name = self.name
            )));
        }
        Ok(self.columns)
    }
}

/// The connector of `def`, its options checked.
pub fn open(def: &SourceDef) -> Result<Box<dyn Connector>> {
    let connector = def.common.connector.as_str();
    match CONNECTORS.iter().find(|(name, _, _)| *name == connector) {
        Some((_, open, _)) => open(def),
        None => Err(Error::BadRequest(format!(
            "source {}: connector '{connector}' is not supported; use one of {}",
            def.name,
            CONNECTORS
                .iter()
                .map(|(n, _, _)| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Wait, until `until` at most, for a connector's reader thread to end (its last commit
/// made), and join it; warn, naming `source`, if it did not end in time.
pub fn join_reader(
    reader: &parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    source: &str,
    until: Instant,
) {
    let Some(thread) = reader.lock().take() else {
        return;
    };
    while !thread.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    if thread.is_finished() {
        let _ = thread.join();
    } else {
        tracing::warn!(source, "the reader did not stop in time");
    }
}

/// A source's connector: where its rows come from.
pub trait Connector: Send + Sync {
    /// The rows' schema: the declared columns, or the connector's own.
    fn schema(&self) -> SchemaRef;

    /// The watermark of a source whose statement declares none.
    fn default_watermark(&self) -> Option<WatermarkSpec> {
        None
    }

    /// Start sending rows to `feed`, from `resume` (the position of the checkpoint the
    /// source was restored from) or else from the configured start. A connector whose
    /// rows are pushed to it (http) has nothing to start.
    fn start(&self, feed: Feed, resume: Option<Position>) -> Result<()>;

    /// Whether the connector reads only once a view needs its rows (a generator, a
    /// file, a topic), rather than taking what is pushed to it (http).
    fn waits_for_a_view(&self) -> bool {
        true
    }

    /// Whether a checkpoint's position `resume` is this source's to resume from (an
    /// http source's log must be the one the position names).
    fn accepts(&self, _resume: &Position) -> bool {
        true
    }

    /// Chunks queued for the pipeline and not taken yet, for a connector that counts
    /// them to refuse work when full (http).
    fn queued(&self) -> Option<Arc<std::sync::atomic::AtomicUsize>> {
        None
    }

    /// A checkpoint is about to name this source's position: make what it names
    /// durable first (an http source syncs its log).
    fn before_checkpoint(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// A checkpoint that covers `position` is durable: what it names may be
    /// acknowledged upstream (a Kafka group's offsets committed).
    fn checkpoint_durable(&self, _position: &Position) {}

    /// The checkpoints kept now hold these positions of the source (none where a
    /// checkpoint does not know it): what no kept one needs may go.
    fn checkpoints_kept(&self, _source: &str, _positions: &[Option<&Position>]) {}

    /// After the catalog is restored: queue again what the source accepted after the
    /// checkpoint (an http source's log), before new records are served. Where it
    /// started and how many records, if it replayed anything.
    fn replay(&self, _source: &SourceRuntime) -> Result<Option<(u64, usize)>> {
        Ok(None)
    }

    /// Records posted to `POST /api/v1/sources/{name}/records`: an http source takes
    /// them; a connector with a log of its own writes them to it to read them back like
    /// any other (Kafka: produced to its topic); `None`: it takes none.
    fn write_records(
        &self,
        _source: &SourceRuntime,
        _body: &[u8],
        _idempotency_key: Option<&str>,
        _dead_letters: &DeadLetterStore,
    ) -> Option<Result<IngestReport>> {
        None
    }

    /// The source is dropped: remove what the connector keeps on disk.
    fn dropped(&self, _source: &str) {}

    /// The source was told to stop: wait, until `until` at most, for the connector's
    /// own last work (a Kafka reader's final commit).
    fn wait_stopped(&self, _until: Instant) {}

    /// What the API shows beyond the common counters.
    fn status(&self) -> ConnectorStatus {
        ConnectorStatus::default()
    }
}

/// A connector's own part of a source's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectorStatus {
    /// Set while the connector cannot read yet (`connecting`), with why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// One entry per partition, shard or split read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionStatus>,
    /// Where a bounded read ends (per partition), once known.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub end_offsets: BTreeMap<String, i64>,
    /// A Kinesis source: its stream as read, and the shard count its write rate needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

/// A Kinesis source's stream. The shard count its write rate needs (a shard takes 1,000
/// records or 1 MiB a second) comes from the rates its shards are read at while caught up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    /// Shards being read now.
    pub open: usize,
    /// Shards the observed rate needs; absent while a shard is catching up (its read
    /// rate is not the write rate).
    pub needed: Option<usize>,
    pub records_per_second: f64,
    pub bytes_per_second: f64,
    /// With a lease table: this process's name in it, and the processes holding leases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<usize>,
    /// GetRecords calls throttled (ProvisionedThroughputExceeded) and retried.
    pub throttled: u64,
    /// Shard iterators that expired and were fetched again from the last position.
    pub expired_iterators: u64,
    /// With `autoscale = true`: the last change of the shard count, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change: Option<String>,
}

/// One partition (or shard) of a source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionStatus {
    pub partition: String,
    /// The next offset to read.
    pub position: Option<i64>,
    /// The log's end offset when last asked.
    pub high_watermark: Option<i64>,
    /// Records not read yet.
    pub lag: Option<i64>,
    /// A Kinesis shard: where it is (a sequence number, `seq/sub` inside a KPL
    /// aggregated record, `trim_horizon`, `at:<ms>` or `finished`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
    /// A Kinesis shard: milliseconds behind its tip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis_behind_latest: Option<i64>,
    /// A Kinesis shard: records and bytes read per second, over the last few seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<f64>,
}

/// Where a connector sends what it reads, and what it counts.
pub struct Feed {
    pub source: String,
    pub schema: SchemaRef,
    pub tx: ChunkSender,
    pub stop: Arc<AtomicBool>,
    /// Set when the first view attaches.
    pub active: Arc<AtomicBool>,
    /// Why the connector stopped, if it stopped on an error (see [`Feed::fail`]).
    pub failure: Arc<parking_lot::Mutex<Option<String>>>,
    pub records_in: IntCounter,
    pub dead_letter_count: IntCounter,
    pub dead_letters: Arc<DeadLetterStore>,
    /// The columns the source's views read now: all a decoder need build.
    pub columns_read: Arc<ColumnsRead>,
    /// Rows per chunk a generator should aim for.
    pub chunk_rows: usize,
    /// `weir_source_lag{source, partition}`.
    pub lag: IntGaugeVec,
    /// A Kinesis shard's lag and rates.
    pub shard_metrics: crate::metrics::ShardMetrics,
}

impl Feed {
    /// A feed into a channel of `capacity` chunks that nothing else reads, with its own
    /// in-memory dead-letter store, active at once (connectors' unit tests).
    #[cfg(test)]
    pub fn for_test(
        schema: SchemaRef,
        capacity: usize,
    ) -> (Self, std::sync::mpsc::Receiver<Chunk>, Arc<DeadLetterStore>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let counter = || IntCounter::new("c", "c").expect("counter");
        let dead_letters = Arc::new(DeadLetterStore::open(None, 10).expect("store"));
        let feed = Feed {
            source: "f".into(),
            schema,
            tx: ChunkSender::new(tx, Default::default()),
            stop: Arc::new(AtomicBool::new(false)),
            active: Arc::new(AtomicBool::new(true)),
            failure: Default::default(),
            records_in: counter(),
            dead_letter_count: counter(),
            dead_letters: dead_letters.clone(),
            columns_read: Default::default(),
            chunk_rows: 4096,
            lag: IntGaugeVec::new(prometheus::Opts::new("l", "l"), &["source", "partition"])
                .expect("gauge"),
            shard_metrics: crate::metrics::ShardMetrics::for_test(),
        };
        (feed, rx, dead_letters)
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Wait for the first view: a source without views has nothing to feed, and a
    /// finite one would be read past before anyone looked. False if stopped first.
    pub fn wait_for_a_view(&self) -> bool {
        while !self.active.load(Ordering::Relaxed) {
            if self.stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Send rows of split `split` (a partition, or 0) and the position after them;
    /// false once the pipeline is gone.
    pub fn send(&self, batch: RecordBatch, position: Position, split: u32) -> bool {
        self.send_decoded(batch, Columns::ALL, position, split)
    }

    /// [`Feed::send`] rows of which only `columns` were decoded.
    pub fn send_decoded(
        &self,
        batch: RecordBatch,
        columns: Columns,
        position: Position,
        split: u32,
    ) -> bool {
        self.records_in.inc_by(batch.num_rows() as u64);
        self.tx
            .send(Chunk::Rows {
                batch,
                columns,
                received: Instant::now(),
                position,
                split,
            })
            .is_ok()
    }

    /// Send like [`Feed::send`], but while the pipeline is behind (its channel full)
    /// call `wait` between tries instead of blocking, so a consumer goes on polling its
    /// group. False once the pipeline is gone or the source stops.
    pub fn send_polling(
        &self,
        batch: RecordBatch,
        position: Position,
        split: u32,
        mut wait: impl FnMut(),
    ) -> bool {
        self.records_in.inc_by(batch.num_rows() as u64);
        let mut chunk = Chunk::Rows {
            batch,
            columns: Columns::ALL,
            received: Instant::now(),
            position,
            split,
        };
        loop {
            match self.tx.try_send(chunk) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(again)) => {
                    if self.stopped() {
                        return false;
                    }
                    chunk = again;
                    wait();
                }
            }
        }
    }

    /// Split `split` is no longer read by this process.
    pub fn split_gone(&self, split: u32) {
        let _ = self.tx.send(Chunk::SplitGone(split));
    }

    /// The connector stops on an error it does not retry: the source shows as failed,
    /// saying `why`, once its pipeline has processed what was sent before.
    pub fn fail(&self, why: impl std::fmt::Display) {
        tracing::error!(source = %self.source, error = %why, "the source stopped");
        *self.failure.lock() = Some(why.to_string());
    }

    /// The source has no more rows.
    pub fn end(&self) {
        let _ = self.tx.send(Chunk::End);
    }

    /// Store dead letters and count them.
    pub fn dead_letter(&self, letters: impl IntoIterator<Item = NewDeadLetter>) {
        let n = self.dead_letters.push_all(letters);
        self.dead_letter_count.inc_by(n as u64);
    }
}
