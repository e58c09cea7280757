//! Sources: where rows come from. Every source runs one pipeline thread (see
//! [`crate::pipeline`]) fed through a bounded channel of [`Chunk`]s; connectors (one
//! shape, [`connector::Connector`]) differ only in who sends the chunks: HTTP requests
//! ([`http`], logged by [`wal`]), a generator thread ([`nexmark`]), a file reader
//! thread ([`file`]) or a Kafka consumer thread ([`kafka`]).

pub mod connector;
pub mod file;
pub mod front_door;
pub mod heard;
pub mod http;
pub mod in_order;
pub mod kafka;
pub mod kinesis;
pub mod nexmark;
pub mod value;
pub mod wal;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;

use crate::checkpoint::{CheckpointSlot, Position};
use crate::decode::{Columns, ColumnsRead};
use crate::view::{ColumnInfo, ViewRuntime};
use weir_sql::WatermarkSpec;

/// What a connector sends to its source's pipeline.
#[derive(Debug)]
pub enum Chunk {
    /// Decoded rows, when they arrived, and the source's position after them. Rows of
    /// one split (a Kafka partition; 0 for sources read as one) are in order, and each
    /// split has its own watermark.
    Rows {
        batch: RecordBatch,
        /// The columns of `batch` decoded; the others hold placeholders, and a view
        /// that reads one of them does not see these rows (it was created after they
        /// were decoded).
        columns: Columns,
        received: Instant,
        position: Position,
        split: u32,
    },
    /// A split is no longer read here (its partition went to another process of the
    /// group): it no longer holds the source's watermark back.
    SplitGone(u32),
    /// A finite source has no more rows: flush everything.
    End,
}

/// Life cycle of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Created, but its connector cannot read yet (a broker that does not answer).
    Connecting,
    Running,
    /// A finite source delivered all its rows and closed all windows.
    Finished,
    Stopped,
    /// Its connector stopped on an error it does not retry (the status's `error` says
    /// which). Its views keep the rows it read; a join it feeds no longer waits for it.
    Failed,
}

/// A running source.
pub struct SourceRuntime {
    pub name: String,
    pub connector: String,
    pub sql: String,
    pub schema: SchemaRef,
    pub watermark: Option<WatermarkSpec>,
    /// Changed through [`SourceRuntime::attach`] and [`SourceRuntime::detach`].
    pub(crate) views: Mutex<Vec<Arc<ViewRuntime>>>,
    /// The columns its views read now: its decoders build only those.
    pub(crate) columns_read: Arc<ColumnsRead>,
    pub(crate) state: Mutex<SourceState>,
    /// Current watermark in ms; `i64::MIN` before the first batch.
    pub(crate) current_watermark: AtomicI64,
    pub(crate) stop: Arc<AtomicBool>,
    /// Set when the first view attaches: generators wait for it so no view misses rows.
    pub(crate) active: Arc<AtomicBool>,
    /// Where the rows come from.
    pub(crate) input: Box<dyn connector::Connector>,
    pub(crate) records_in: IntCounter,
    pub(crate) batches: IntCounter,
    pub(crate) dead_letters: IntCounter,
    pub(crate) watermark_gauge: IntGauge,
    /// Where the pipeline leaves its snapshots for checkpoints.
    pub(crate) checkpoint: CheckpointSlot,
    /// Whether the engine takes checkpoints: without them no snapshot is ever read.
    pub(crate) checkpointed: bool,
    /// Why its connector stopped, once it has (see [`SourceState::Failed`]).
    pub(crate) failure: Arc<Mutex<Option<String>>>,
    /// Its pipeline is gone (the source finished or failed) and, when checkpoints run,
    /// left a final snapshot that serves every checkpoint from now on.
    pub(crate) ended: AtomicBool,
    /// When the source and its splits last sent a chunk (idle inputs and splits stop
    /// holding watermarks back).
    pub(crate) heard: Arc<heard::Heard>,
}

/// What the API shows of a source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub connector: String,
    pub sql: String,
    pub status: SourceState,
    pub records_in: u64,
    pub batches: u64,
    pub dead_letters: u64,
    /// Milliseconds since the epoch; absent before the first batch or without a WATERMARK.
    pub watermark_ms: Option<i64>,
    /// Why the connector stopped (status `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub views: Vec<String>,
    /// Previews of queries over this source running now (the console's).
    pub previews: usize,
    pub columns: Vec<ColumnInfo>,
    #[serde(flatten)]
    pub connector_status: connector::ConnectorStatus,
}

impl SourceRuntime {
    /// The columns its views read now, which its connector builds.
    pub fn columns_read(&self) -> crate::decode::Columns {
        self.columns_read.get()
    }

    pub fn status(&self) -> SourceStatus {
        let wm = self.current_watermark.load(Ordering::Relaxed);
        let connector_status = self.input.status();
        let (previews, views): (Vec<_>, Vec<_>) =
            self.views.lock().iter().cloned().partition(|v| v.preview);
        let previews = previews.len();
        let status = match self.state.lock().clone() {
            SourceState::Running if connector_status.waiting.is_some() => SourceState::Connecting,
            state => state,
        };
        let error = (status == SourceState::Failed)
            .then(|| self.failure.lock().clone())
            .flatten();
        SourceStatus {
            name: self.name.clone(),
            connector: self.connector.clone(),
            sql: crate::options::redact_secrets(&self.sql),
            status,
            records_in: self.records_in.get(),
            batches: self.batches.get(),
            dead_letters: self.dead_letters.get(),
            watermark_ms: (wm != i64::MIN).then_some(wm),
            error,
            views: views.iter().map(|v| v.name.clone()).collect(),
            previews,
            columns: ColumnInfo::of(&self.schema),
            connector_status,
        }
    }

    /// Feed `view` (a view or a preview) from now on, decoding the columns it reads
    /// too: rows decoded before without them never reach it.
    pub(crate) fn attach(&self, view: Arc<ViewRuntime>) {
        let mut views = self.views.lock();
        views.push(view);
        self.columns_read.set(self.columns_read_by(&views));
    }

    /// Stop feeding the views `remove` picks.
    pub(crate) fn detach(&self, remove: impl Fn(&ViewRuntime) -> bool) {
        let mut views = self.views.lock();
        views.retain(|v| !remove(v));
        self.columns_read.set(self.columns_read_by(&views));
    }

    /// What `views` read of this source, and its time column (for the watermark).
    /// Every column while it has no view but previews: the first view sees the rows
    /// already queued, as it would without previews.
    fn columns_read_by(&self, views: &[Arc<ViewRuntime>]) -> Columns {
        if views.iter().all(|v| v.preview) {
            return Columns::ALL;
        }
        let time = (self.watermark.as_ref()).and_then(|w| self.schema.index_of(&w.column).ok());
        (views.iter()).fold(Columns::of(time), |read, v| {
            read.union(v.columns_read_of(&self.name))
        })
    }

    /// Ask the source's threads to stop.
    pub(crate) fn shut_down(&self) {
        self.stop.store(true, Ordering::Relaxed);
        *self.state.lock() = SourceState::Stopped;
    }
}

impl std::fmt::Debug for SourceRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceRuntime")
            .field("name", &self.name)
            .field("connector", &self.connector)
            .finish()
    }
}
