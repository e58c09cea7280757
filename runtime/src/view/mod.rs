//! A materialized view at run time: its operator, its sinks and committed readers,
//! checkpoint and restore, status, and the table that ad hoc SQL reads. The rows it
//! holds and how changes reach subscribers are in `rows.rs` (bounded by `max_rows`,
//! default `runtime.view-max-rows`: the newest are kept and how many were released is
//! shown).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::{Mutex, RwLock};
use prometheus::{Histogram, IntCounter};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::checkpoint::ViewSnapshot;
use crate::metrics::ViewMetrics;
use crate::plugin::PluginEntry;
use crate::sink::feed::{Change, ChangeKind, Outbox, SinkFeed};
use weir_sql::{KeyedRows, Operator};

pub use published::Published;

mod graph;
mod published;
mod rows;

pub use graph::OperatorStatus;

/// Epochs of changes kept for committed readers while checkpoints fail.
const MAX_SEALED_EPOCHS: usize = 64;
/// Changes a committed reader may fall behind by: a checkpoint releases a whole
/// interval's changes at once.
const COMMITTED_CHANNEL: usize = 16_384;

/// A batch a paused view keeps to run later, as it came: with the watermark before it
/// and the source's columns decoded in it (for any view), which its dead letters show
/// if it fails when run.
pub(crate) struct Held {
    pub batch: RecordBatch,
    pub watermark_before: Option<i64>,
    pub decoded: crate::decode::Columns,
}

/// A running view.
pub struct ViewRuntime {
    /// Unique in this process: a dropped and re-created view of the same name is
    /// another view.
    pub(crate) id: u64,
    pub name: String,
    pub source: String,
    pub sql: String,
    pub description: String,
    /// Operators from source to view with what they do (EXPLAIN VIEW).
    pub operators: Vec<(String, String)>,
    pub schema: SchemaRef,
    pub(crate) operator: Mutex<Box<dyn Operator>>,
    /// Held from running the operator until its output is in the view (see
    /// [`ViewRuntime::in_order`]).
    order: Mutex<()>,
    /// Emitted batches, oldest first; a key marks a window's rows that an upsert replaces.
    rows: RwLock<VecDeque<(Option<i64>, RecordBatch)>>,
    /// An updating view kept by group holds its rows here instead (changed under the
    /// write lock of `rows`, so that sinks see each change once).
    by_group: Mutex<Option<KeyedRows>>,
    /// Every row of `by_group` as last read, until the next change.
    by_group_read: Mutex<Option<RecordBatch>>,
    row_count: AtomicUsize,
    /// The rows kept, newest first; `None` keeps every row.
    max_rows: Option<usize>,
    /// Rows released to stay within `max_rows`.
    rows_released: AtomicU64,
    updates: broadcast::Sender<Arc<Published>>,
    pub(crate) late_rows: IntCounter,
    pub(crate) rows_emitted: IntCounter,
    /// See `Metrics::end_to_end_latency`.
    pub(crate) end_to_end_latency: Histogram,
    /// Each change's latency as well, when asked for (see `Metrics::keep_latency_samples`).
    pub(crate) latency_samples: Option<crate::metrics::LatencySamples>,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Published after each operator call, so status pages never wait for the operator.
    open_windows: AtomicUsize,
    /// As last measured on read (see `state_bytes()`).
    state_bytes: AtomicUsize,
    /// Plugins whose functions the view calls; a failed one pauses the view.
    pub plugins: Vec<Arc<PluginEntry>>,
    /// The derived stream the view reads, if it reads one (its source is the stream's).
    pub stream: Option<String>,
    /// The columns it reads of each source it is fed by (of a source not listed: every
    /// column): it is fed only rows decoded with them.
    columns_read: Vec<(String, crate::decode::Columns)>,
    /// Batches kept while the view is paused.
    held: Mutex<Vec<Held>>,
    /// Changes since the last snapshot, kept while a client follows committed changes.
    uncommitted: Mutex<Vec<Arc<Published>>>,
    /// Changes of snapshots that no written checkpoint holds yet, by epoch.
    sealed: Mutex<Vec<(u64, Vec<Arc<Published>>)>>,
    /// Changes once a written checkpoint holds them, with its epoch.
    committed: broadcast::Sender<(u64, Arc<Published>)>,
    /// The rows as of the newest written checkpoint.
    committed_rows: RwLock<Vec<RecordBatch>>,
    /// Whether checkpoints run (else nothing is ever committed, nor kept for it).
    checkpointed: bool,
    /// For a join of several sources: the sources in input order (input 0 is `source`),
    /// and the minimum watermark of those that are not idle, as far as it has closed
    /// windows. Empty for a view over one source.
    pub(crate) inputs: Vec<std::sync::Weak<crate::source::SourceRuntime>>,
    pub(crate) input_names: Vec<String>,
    pub(crate) combined_watermark: std::sync::atomic::AtomicI64,
    /// Views whose rows this view joins its source with (kept while it exists).
    pub(crate) tables: Vec<String>,
    /// A preview of a query in the console: never in a checkpoint or the catalog.
    pub(crate) preview: bool,
    /// The operator's parts, and its time as a whole, for the operator graph.
    stages: Vec<weir_sql::Stage>,
    clock: graph::OperatorClock,
    /// The feeds of the sinks that write this view's changes.
    sinks: Mutex<Vec<Arc<SinkFeed>>>,
    /// From the checkpoint restored: each sink's undelivered epochs, and the epoch of
    /// that checkpoint, until the sink is created again.
    restored_outboxes: Mutex<(u64, Vec<Outbox>)>,
}

/// What the API shows of a view.
#[derive(Debug, Clone, Serialize)]
pub struct ViewStatus {
    pub name: String,
    pub source: String,
    pub sql: String,
    pub plan: String,
    pub status: &'static str,
    pub error: Option<String>,
    pub rows: usize,
    pub rows_emitted: u64,
    pub late_rows: u64,
    pub open_windows: usize,
    pub state_bytes: usize,
    /// The rows the view keeps (its newest); `None` keeps every row.
    pub max_rows: Option<usize>,
    /// Older rows released to stay within `max_rows`.
    pub rows_released: u64,
    /// Something the user should know though nothing failed (rows released, say).
    pub warning: Option<String>,
    pub columns: Vec<ColumnInfo>,
    /// The operators EXPLAIN lists, with their rows, batches and time.
    pub operators: Vec<OperatorStatus>,
    /// Views that join this one's rows (it cannot be dropped before them).
    pub read_by: Vec<String>,
}

/// A column's name and type.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    pub data_type: String,
}

impl ColumnInfo {
    /// The columns of a schema, for status pages.
    pub fn of(schema: &SchemaRef) -> Vec<Self> {
        schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect()
    }
}

impl ViewRuntime {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        source: String,
        sql: String,
        description: String,
        operators: Vec<(String, String)>,
        schema: SchemaRef,
        operator: Box<dyn Operator>,
        max_rows: Option<usize>,
        metrics: ViewMetrics,
    ) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            source,
            sql,
            description,
            operators,
            schema,
            stages: operator.stages(),
            clock: Default::default(),
            operator: Mutex::new(operator),
            order: Mutex::new(()),
            rows: RwLock::new(VecDeque::new()),
            by_group: Mutex::new(None),
            by_group_read: Mutex::new(None),
            row_count: AtomicUsize::new(0),
            max_rows,
            rows_released: AtomicU64::new(0),
            updates: broadcast::channel(256).0,
            late_rows: metrics.late_rows,
            rows_emitted: metrics.rows_emitted,
            end_to_end_latency: metrics.end_to_end_latency,
            latency_samples: metrics.latency_samples,
            last_error: Mutex::new(None),
            open_windows: AtomicUsize::new(0),
            state_bytes: AtomicUsize::new(0),
            plugins: Vec::new(),
            stream: None,
            columns_read: Vec::new(),
            held: Mutex::new(Vec::new()),
            uncommitted: Mutex::new(Vec::new()),
            sealed: Mutex::new(Vec::new()),
            committed: broadcast::channel(COMMITTED_CHANNEL).0,
            committed_rows: RwLock::new(Vec::new()),
            checkpointed: false,
            inputs: Vec::new(),
            input_names: Vec::new(),
            combined_watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            tables: Vec::new(),
            preview: false,
            sinks: Mutex::new(Vec::new()),
            restored_outboxes: Mutex::default(),
        }
    }

    /// It reads only these columns of these sources.
    pub(crate) fn with_columns_read(
        mut self,
        columns: Vec<(String, crate::decode::Columns)>,
    ) -> Self {
        self.columns_read = columns;
        self
    }

    /// The columns it reads of `source`.
    pub(crate) fn columns_read_of(&self, source: &str) -> crate::decode::Columns {
        self.columns_read
            .iter()
            .find(|(name, _)| name == source)
            .map_or(crate::decode::Columns::ALL, |(_, columns)| *columns)
    }

    /// A preview: left out of checkpoints.
    pub(crate) fn with_preview(mut self, preview: bool) -> Self {
        self.preview = preview;
        self
    }

    /// A stream-table join reads these views' rows.
    pub(crate) fn with_tables(mut self, tables: Vec<String>) -> Self {
        self.tables = tables;
        self
    }

    /// A join of several sources reads these, in input order.
    pub(crate) fn with_inputs(mut self, sources: &[Arc<crate::source::SourceRuntime>]) -> Self {
        self.inputs = sources.iter().map(Arc::downgrade).collect();
        self.input_names = sources.iter().map(|s| s.name.clone()).collect();
        self
    }

    /// Whether the view joins several sources.
    pub fn is_join(&self) -> bool {
        !self.input_names.is_empty()
    }

    /// Which input of the view `source` is (0 for a view over one source).
    pub(crate) fn input_index(&self, source: &str) -> usize {
        self.input_names
            .iter()
            .position(|n| n == source)
            .unwrap_or(0)
    }

    /// Keep changes for committed readers (checkpoints run).
    pub(crate) fn with_checkpoints(mut self, on: bool) -> Self {
        self.checkpointed = on;
        self
    }

    pub(crate) fn with_stream(mut self, stream: Option<String>) -> Self {
        self.stream = stream;
        self
    }

    pub(crate) fn with_plugins(mut self, plugins: Vec<Arc<PluginEntry>>) -> Self {
        self.plugins = plugins;
        self
    }

    /// Why the view is paused: a plugin it calls is marked failed.
    pub fn paused(&self) -> Option<String> {
        self.plugins.iter().find_map(|p| {
            p.failed().map(|reason| {
                format!(
                    "plugin {} is failed ({reason}); upload a fixed version to resume",
                    p.name
                )
            })
        })
    }

    /// Keep a batch for later; returns how many are held.
    pub(crate) fn hold(&self, batch: Held) -> usize {
        let mut held = self.held.lock();
        held.push(batch);
        held.len()
    }

    /// Put batches back in front of those held (a replay that stopped part way).
    pub(crate) fn hold_front(&self, batches: Vec<Held>) {
        let mut held = self.held.lock();
        let later = std::mem::take(&mut *held);
        *held = batches;
        held.extend(later);
    }

    pub(crate) fn held_batches(&self) -> usize {
        self.held.lock().len()
    }

    pub(crate) fn take_held(&self) -> Vec<Held> {
        std::mem::take(&mut *self.held.lock())
    }

    /// Hold while running the operator and putting its output into the view: a join's
    /// sources run it from several threads, and changes by group must reach the view
    /// (and its sinks) in the order the operator made them. Checkpoints hold it too, so
    /// that the operator's state and the rows they save agree.
    pub(crate) fn in_order(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.order.lock()
    }

    /// Call the operator; a panic in it is contained and reported as an error of this
    /// batch, so one bad view cannot take its source's pipeline down.
    pub(crate) fn run_operator(
        &self,
        call: impl FnOnce(&mut dyn Operator) -> weir_sql::Result<()>,
    ) -> weir_sql::Result<()> {
        let mut op = self.operator.lock();
        // Plugin calls made for the batch count once for it (weir_sql::settle).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            weir_sql::settle::per_batch(|| call(op.as_mut()))
        }))
        .unwrap_or_else(|panic| {
            Err(weir_sql::Error::Execution(format!(
                "internal error (panic) in the operator: {}",
                crate::error::panic_message(panic.as_ref())
            )))
        });
        self.open_windows
            .store(op.open_windows(), Ordering::Relaxed);
        // state_size walks every held buffer: it is measured when read, not per batch.
        result
    }

    /// The bytes the operator holds: measured now if the operator is free, else as
    /// last measured (a status page never waits for a batch to finish).
    fn state_bytes(&self) -> usize {
        match self.operator.try_lock() {
            Some(op) => {
                let bytes = op.state_size();
                self.state_bytes.store(bytes, Ordering::Relaxed);
                bytes
            }
            None => self.state_bytes.load(Ordering::Relaxed),
        }
    }

    /// A change to every sink. Called under the rows' write lock, so that a sink
    /// attached meanwhile gets each change once: in its snapshot or here.
    fn to_sinks(&self, change: Change) {
        for feed in self.sinks.lock().iter() {
            feed.push(change.clone());
        }
    }

    /// Feed a new sink: the view's current rows first, then every change. Restored
    /// (during the catalog replay), it takes what the checkpoint held for it instead; a
    /// sink the checkpoint does not know (created after it) starts with the rows.
    pub(crate) fn attach_sink(&self, sink: &str, sql: &str, restored: bool) -> Arc<SinkFeed> {
        let rows = self.rows.write();
        let saved = {
            let mut outboxes = self.restored_outboxes.lock();
            let epoch = outboxes.0;
            let found = outboxes
                .1
                .iter()
                .position(|o| o.sink == sink && o.sql == sql.trim());
            found.map(|i| (epoch, outboxes.1.swap_remove(i)))
        };
        let feed = Arc::new(match saved {
            Some((epoch, outbox)) if restored => SinkFeed::restored(outbox, epoch),
            _ => {
                let feed = SinkFeed::new(sink, sql, self.checkpointed);
                for b in self.current_rows(&rows) {
                    feed.push(Change::new(b, ChangeKind::Snapshot));
                }
                feed
            }
        });
        self.sinks.lock().push(feed.clone());
        drop(rows);
        feed
    }

    pub(crate) fn detach_sink(&self, sink: &str) {
        self.sinks.lock().retain(|f| f.sink != sink);
    }

    /// Whether sinks have changes the next snapshot must seal.
    pub(crate) fn sink_changes_open(&self) -> bool {
        self.sinks.lock().iter().any(|f| f.has_open())
    }

    /// Changes as they become durable: each with the epoch of the checkpoint that
    /// holds it, so no crash can take one back.
    pub fn subscribe_committed(&self) -> broadcast::Receiver<(u64, Arc<Published>)> {
        self.committed.subscribe()
    }

    /// The rows as of the newest written (or restored) checkpoint.
    pub fn committed_snapshot(&self) -> Vec<RecordBatch> {
        self.committed_rows.read().clone()
    }

    /// Checkpoint `epoch`, which holds this view as `rows`, is on disk: publish the
    /// changes it covers.
    pub(crate) fn commit(&self, epoch: u64, rows: Vec<RecordBatch>) {
        *self.committed_rows.write() = rows;
        for feed in self.sinks.lock().iter() {
            feed.durable(epoch);
        }
        let mut sealed = self.sealed.lock();
        let (done, later): (Vec<_>, Vec<_>) = std::mem::take(&mut *sealed)
            .into_iter()
            .partition(|(e, _)| *e <= epoch);
        *sealed = later;
        drop(sealed);
        for (e, changes) in done {
            for b in changes {
                // No subscribers is fine.
                let _ = self.committed.send((e, b));
            }
        }
    }

    /// The operator's state and the rows, for checkpoint `epoch`; the changes so far
    /// are sealed under it.
    pub(crate) fn checkpoint(&self, epoch: u64) -> weir_sql::Result<ViewSnapshot> {
        // Sealed without the text live readers made: committed readers encode once
        // more, and changes held while checkpoints fail hold only their rows.
        let changes: Vec<_> = std::mem::take(&mut *self.uncommitted.lock())
            .into_iter()
            .map(|c| {
                if c.removed {
                    Published::removal(c.rows.clone())
                } else {
                    Published::new(c.rows.clone())
                }
            })
            .collect();
        if !changes.is_empty() {
            let mut sealed = self.sealed.lock();
            sealed.push((epoch, changes));
            // While checkpoints keep failing, keep only the newest epochs' changes;
            // committed readers miss the older ones (and are told in the log).
            if sealed.len() > MAX_SEALED_EPOCHS {
                let dropped = sealed.len() - MAX_SEALED_EPOCHS;
                sealed.drain(..dropped);
                tracing::warn!(view = %self.name, dropped, "checkpoints keep failing: changes of older epochs will not reach committed readers");
            }
        }
        let _order = self.in_order();
        let outboxes = self.sinks.lock().iter().map(|f| f.seal(epoch)).collect();
        let mut state = Vec::new();
        self.run_operator(|op| {
            state = op.snapshot()?;
            Ok(())
        })?;
        Ok(ViewSnapshot {
            view_id: self.id,
            name: self.name.clone(),
            sql: self.sql.clone(),
            schema: self.schema.clone(),
            state,
            rows: self.saved_rows(&self.rows.read()),
            outboxes,
        })
    }

    /// Keep what checkpoint `epoch` held for the view's sinks until they are created.
    pub(crate) fn restore_outboxes(&self, epoch: u64, outboxes: Vec<Outbox>) {
        *self.restored_outboxes.lock() = (epoch, outboxes);
    }

    /// Take the operator state and rows of a checkpoint (before the view runs).
    pub(crate) fn restore(
        &self,
        state: &[RecordBatch],
        rows: Vec<(Option<i64>, RecordBatch)>,
    ) -> weir_sql::Result<()> {
        // In the view's own schema; columns of other types are refused here.
        let rows = rows
            .into_iter()
            .map(|(k, b)| {
                RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()).map(|b| (k, b))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                weir_sql::Error::Execution(format!(
                    "the checkpointed rows do not fit the view's columns: {e}"
                ))
            })?;
        let mut by_group = None;
        self.run_operator(|op| {
            op.restore(state)?;
            match op.keyed_rows() {
                Ok(rows) => by_group = rows,
                // The view starts empty then: so does the operator.
                Err(e) => {
                    op.restore(&[])?;
                    return Err(e);
                }
            }
            Ok(())
        })?;
        *self.committed_rows.write() = rows.iter().map(|(_, b)| b.clone()).collect();
        let mut held = self.rows.write();
        // A view kept by group takes its rows from the restored state (the checkpoint's
        // rows do not say which group each row is).
        let count = match by_group {
            Some(change) => {
                let mut kept = KeyedRows::new(change.rows.schema());
                kept.apply(&change)?;
                let count = kept.len();
                *self.by_group.lock() = Some(kept);
                *self.by_group_read.lock() = None;
                held.clear();
                count
            }
            None => {
                *held = rows.into();
                held.iter().map(|(_, b)| b.num_rows()).sum()
            }
        };
        self.row_count.store(count, Ordering::Relaxed);
        // The bound may have been lowered since the checkpoint.
        self.release_oldest(&mut held);
        Ok(())
    }

    pub fn status(&self) -> ViewStatus {
        let open_windows = self.open_windows.load(Ordering::Relaxed);
        let state_bytes = self.state_bytes();
        let paused = self.paused();
        let error = paused.clone().or_else(|| self.last_error.lock().clone());
        ViewStatus {
            name: self.name.clone(),
            source: self.source.clone(),
            sql: self.sql.clone(),
            plan: self.description.clone(),
            status: if paused.is_some() {
                "paused"
            } else if error.is_some() {
                "degraded"
            } else {
                "running"
            },
            error,
            rows: self.row_count.load(Ordering::Relaxed),
            rows_emitted: self.rows_emitted.get(),
            late_rows: self.late_rows.get(),
            open_windows,
            state_bytes,
            max_rows: self.max_rows,
            rows_released: self.rows_released(),
            warning: self.rows_cut(),
            columns: ColumnInfo::of(&self.schema),
            operators: self.operator_graph(state_bytes, open_windows),
            read_by: Vec::new(),
        }
    }
}

/// The table ad hoc SQL sees for a view: a snapshot of its rows at scan time.
#[derive(Debug)]
pub struct ViewTable(pub Arc<ViewRuntime>);

impl std::fmt::Debug for ViewRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewRuntime")
            .field("name", &self.name)
            .finish()
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let batches = self.0.snapshot();
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.0.schema.clone(),
            projection.cloned(),
        )?)
    }
}
