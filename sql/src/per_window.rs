//! Window-local queries evaluated whole, one window at a time.
//!
//! Some queries over `TUMBLE` or `HOP` are not a chain the incremental operators cover:
//! a join of a windowed aggregate with an aggregate over it (Nexmark q5's hottest
//! auctions), `rank()` or `row_number()` per window (q7's highest bids), a subquery
//! per window. When every part of such a query stays inside one window (aggregates group
//! by `window_start`, window functions partition by it, joins match on it), the query's
//! answer for a window depends on that window's rows only. [`PerWindowQuery`] keeps the
//! rows of each open window and, once the watermark closes it, runs the whole query with
//! DataFusion in batch mode over exactly those rows. Memory is bounded by the rows of the
//! open windows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::operator::{Collector, Operator};
use crate::window::{Windowing, event_times, split_by_window, with_window_columns};
use crate::{Error, Result, unsupported};

/// The table a per-window query reads: the rows of the window being evaluated.
#[derive(Debug)]
pub struct WindowRows {
    schema: SchemaRef,
    rows: Mutex<Vec<RecordBatch>>,
}

impl WindowRows {
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            rows: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn set(&self, rows: Vec<RecordBatch>) {
        *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = rows;
    }
}

#[async_trait]
impl TableProvider for WindowRows {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(MemorySourceConfig::try_new_exec(
            &[rows],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// What a [`PerWindowQuery`] runs.
pub struct PerWindowPlan {
    pub windowing: Windowing,
    /// Index of the event-time column among the kept source columns.
    pub time_column: usize,
    /// The source columns the query reads, when not all: only those are kept.
    pub source_columns: Option<Vec<usize>>,
    /// The kept source columns plus `window_start` and `window_end`.
    pub windowed_schema: SchemaRef,
    /// The optimized query; its scans read `table`.
    pub plan: LogicalPlan,
    pub session: SessionState,
    pub table: Arc<WindowRows>,
    /// Further sources of a join of several sources (input 1, 2, ...), windowed alike.
    pub others: Vec<OtherInput>,
}

/// Another source a per-window join reads.
pub struct OtherInput {
    /// Index of the event-time column among the kept source columns.
    pub time_column: usize,
    /// The source columns the query reads, when not all: only those are kept.
    pub source_columns: Option<Vec<usize>>,
    pub windowed_schema: SchemaRef,
    pub table: Arc<WindowRows>,
}

/// The running operator: each open window's rows, until the watermark closes it.
pub struct PerWindowQuery {
    plan: PerWindowPlan,
    /// The latest watermark windows were closed at. A join's inputs run on threads of
    /// their own: a batch's watermark, read before it got here, may be older than one
    /// another input has closed windows at meanwhile.
    closed_at: Option<i64>,
    windows: BTreeMap<i64, Vec<RecordBatch>>,
    /// The open windows' rows of each further input.
    other_windows: Vec<BTreeMap<i64, Vec<RecordBatch>>>,
}

impl PerWindowQuery {
    pub fn new(plan: PerWindowPlan) -> Self {
        Self {
            closed_at: None,
            other_windows: plan.others.iter().map(|_| BTreeMap::new()).collect(),
            plan,
            windows: BTreeMap::new(),
        }
    }

    /// The query's answer over `rows` (one window's).
    fn evaluate(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        run_batch(&self.plan.plan, &self.plan.session, &self.plan.table, rows)
    }
}

/// Run `plan` in batch mode over `rows` (the rows its scans of `table` read).
pub(crate) fn run_batch(
    plan: &LogicalPlan,
    session: &SessionState,
    table: &WindowRows,
    rows: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    table.set(rows);
    // On a thread of its own, outside any async runtime: the plan is one partition
    // (target_partitions = 1), so DataFusion runs it on this thread alone.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            futures::executor::block_on(async {
                let physical = session.create_physical_plan(plan).await?;
                datafusion::physical_plan::collect(physical, session.task_ctx()).await
            })
        })
        .join()
    });
    table.set(Vec::new());
    match result {
        // Results are kept by the view: copy them into buffers of their own size (a
        // join's few output rows may otherwise pin buffers sized for a whole batch).
        Ok(batches) => batches?
            .iter()
            .map(|b| {
                let all = UInt32Array::from_iter_values(0..b.num_rows() as u32);
                Ok(take_record_batch(b, &all)?)
            })
            .collect(),
        Err(_) => Err(Error::Execution(
            "the per-window query panicked".to_string(),
        )),
    }
}

impl PerWindowQuery {
    /// Rows of a further input, split by window like input 0's.
    fn process_other(
        &mut self,
        other: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let input = self
            .plan
            .others
            .get(other)
            .ok_or_else(|| Error::Execution(format!("the query has no input {}", other + 1)))?;
        let kept = match &input.source_columns {
            Some(columns) => batch.project(columns)?,
            None => batch.clone(),
        };
        hold_by_window(
            &mut self.other_windows[other],
            &input.windowed_schema,
            self.plan.windowing,
            input.time_column,
            (&kept, batch),
            watermark,
            out,
        )
    }
}

/// Add the rows of `batch` (kept columns, and the batch as received) to the open windows
/// they fall in, with their window columns; rows whose windows have all closed go back as
/// late, with every column.
fn hold_by_window(
    windows: &mut BTreeMap<i64, Vec<RecordBatch>>,
    windowed_schema: &SchemaRef,
    windowing: Windowing,
    time_column: usize,
    (batch, whole): (&RecordBatch, &RecordBatch),
    watermark: Option<i64>,
    out: &mut Collector,
) -> Result<()> {
    let times = event_times(batch.column(time_column))?;
    let split = split_by_window(times, windowing, watermark);
    // Every slice first: an error leaves the windows as they were (the runtime
    // dead-letters the whole batch).
    let mut slices = Vec::with_capacity(split.windows.len());
    for (start, rows) in split.windows {
        let slice = match rows {
            None => batch.clone(),
            Some(rows) => take_record_batch(batch, &rows)?,
        };
        slices.push((
            start,
            with_window_columns(windowed_schema, windowing, start, &slice)?,
        ));
    }
    for (start, slice) in slices {
        windows.entry(start).or_default().push(slice);
    }
    if let Some(late) = &split.late {
        out.late(take_record_batch(whole, late)?);
    }
    Ok(())
}

impl Operator for PerWindowQuery {
    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let watermark = watermark.max(self.closed_at);
        match input {
            0 => self.process(batch, watermark, out),
            n => self.process_other(n - 1, batch, watermark, out),
        }
    }

    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let kept = match &self.plan.source_columns {
            Some(columns) => batch.project(columns)?,
            None => batch.clone(),
        };
        // Late rows go to the dead-letter store whole, with every source column.
        hold_by_window(
            &mut self.windows,
            &self.plan.windowed_schema,
            self.plan.windowing,
            self.plan.time_column,
            (&kept, batch),
            watermark,
            out,
        )
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        self.closed_at = self.closed_at.max(Some(watermark));
        let windowing = self.plan.windowing;
        let mut closed: Vec<i64> = self
            .windows
            .keys()
            .chain(self.other_windows.iter().flat_map(|w| w.keys()))
            .copied()
            .filter(|&s| windowing.is_closed(s, Some(watermark)))
            .collect();
        closed.sort_unstable();
        closed.dedup();
        for start in closed {
            let rows = self.windows.remove(&start).unwrap_or_default();
            for (input, windows) in self.plan.others.iter().zip(&mut self.other_windows) {
                input.table.set(windows.remove(&start).unwrap_or_default());
            }
            let result = self.evaluate(rows.clone());
            for input in &self.plan.others {
                input.table.set(Vec::new());
            }
            match result {
                Ok(result) => result.into_iter().for_each(|b| out.emit(b)),
                // Keep the window's rows rather than lose them.
                Err(e) => {
                    let rows = concat_batches(&self.plan.windowed_schema, &rows)?;
                    out.failed(
                        rows,
                        format!("the window starting at {start} ms could not be evaluated: {e}"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The open windows' rows as they are held (shared, not copied); each batch carries
    /// its window in its window columns. Rows of a further input of a join carry its
    /// number in their schema's metadata.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut state: Vec<RecordBatch> = self.windows.values().flatten().cloned().collect();
        for (n, windows) in self.other_windows.iter().enumerate() {
            let tagged = tag_input(&self.plan.others[n].windowed_schema, n + 1);
            for batch in windows.values().flatten() {
                state.push(batch.clone().with_schema(tagged.clone())?);
            }
        }
        Ok(state)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let mut windows = BTreeMap::new();
        let mut other_windows: Vec<_> = self.plan.others.iter().map(|_| BTreeMap::new()).collect();
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let (schema, windows) = match tagged_input(batch)? {
                0 => (&self.plan.windowed_schema, &mut windows),
                n => match (self.plan.others.get(n - 1), other_windows.get_mut(n - 1)) {
                    (Some(other), Some(w)) => (&other.windowed_schema, w),
                    _ => {
                        return Err(Error::Execution(format!(
                            "the checkpoint holds rows of input {n}; this query has {} inputs",
                            self.plan.others.len() + 1
                        )));
                    }
                },
            };
            let (start, batch) = restored_window(schema, batch)?;
            windows.entry(start).or_insert_with(Vec::new).push(batch);
        }
        self.windows = windows;
        self.other_windows = other_windows;
        Ok(())
    }

    fn state_size(&self) -> usize {
        std::iter::once(&self.windows)
            .chain(&self.other_windows)
            .flat_map(|w| w.values().flatten())
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

/// The schema metadata key that numbers a further input's rows in a snapshot.
const INPUT_KEY: &str = "weir.input";

/// `schema` marked as input `input`'s, for a snapshot of an operator of several inputs.
pub(crate) fn tag_input(schema: &SchemaRef, input: usize) -> SchemaRef {
    tagged(schema, INPUT_KEY, &input.to_string())
}

/// `schema` with the metadata `key = value` only: snapshots of operators with several
/// parts mark each part's batches so (the checkpoint keeps schemas with their metadata).
pub(crate) fn tagged(schema: &SchemaRef, key: &str, value: &str) -> SchemaRef {
    Arc::new(
        schema
            .as_ref()
            .clone()
            .with_metadata(HashMap::from([(key.to_string(), value.to_string())])),
    )
}

/// Which input a snapshot batch holds rows of (untagged: input 0).
pub(crate) fn tagged_input(batch: &RecordBatch) -> Result<usize> {
    match batch.schema().metadata().get(INPUT_KEY) {
        None => Ok(0),
        Some(n) => n
            .parse()
            .map_err(|_| Error::Execution(format!("a checkpointed batch names input {n:?}"))),
    }
}

/// A checkpointed batch of one window's rows, in `schema`, and the window's start.
fn restored_window(schema: &SchemaRef, batch: &RecordBatch) -> Result<(i64, RecordBatch)> {
    if batch.schema().fields().len() != schema.fields().len() {
        return Err(Error::Execution(
            "the checkpointed window rows have other columns than this query".into(),
        ));
    }
    let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
    let start = batch
        .column(schema.fields().len() - 2)
        .as_primitive_opt::<TimestampMillisecondType>()
        .filter(|s| s.is_valid(0))
        .map(|s| s.value(0))
        .ok_or_else(|| Error::Execution("a checkpointed window has no start".into()))?;
    Ok((start, batch))
}

/// Check that every part of `plan` stays inside one window, so that evaluating it per
/// window equals evaluating it over the whole stream. ORDER BY and LIMIT are allowed at
/// the top only (they rank each window's result).
pub fn check_window_local(plan: &LogicalPlan) -> Result<()> {
    check(plan, true)
}

fn is_window_column(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == "window_start" || c.name == "window_end")
}

fn check(plan: &LogicalPlan, top: bool) -> Result<()> {
    let stays_top = top
        && matches!(
            plan,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::SubqueryAlias(_)
        );
    match plan {
        LogicalPlan::TableScan(_)
        | LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Union(_) => {}
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) if top => {}
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            return Err(unsupported!(
                "ORDER BY / LIMIT inside a subquery of a windowed view is not supported: \
                 rank per window with row_number() OVER (PARTITION BY window_start ORDER BY ...)"
            ));
        }
        LogicalPlan::Aggregate(a) => {
            if !a.group_expr.iter().any(is_window_column) {
                return Err(unsupported!(
                    "every aggregation in a windowed view must GROUP BY window_start or window_end \
                     (keep those names in subqueries), so it stays inside one window"
                ));
            }
        }
        LogicalPlan::Window(w) => {
            for e in &w.window_expr {
                let Expr::WindowFunction(f) = e.clone().unalias() else {
                    continue;
                };
                if !f.params.partition_by.iter().any(is_window_column) {
                    return Err(unsupported!(
                        "window functions in a windowed view must PARTITION BY window_start or \
                         window_end, so they stay inside one window: {e}"
                    ));
                }
            }
        }
        LogicalPlan::Join(j) => {
            let same_window_column = |l: &Expr, r: &Expr| match (l, r) {
                (Expr::Column(a), Expr::Column(b)) => {
                    is_window_column(l) && is_window_column(r) && a.name == b.name
                }
                _ => false,
            };
            if !j.on.iter().any(|(l, r)| same_window_column(l, r)) {
                return Err(unsupported!(
                    "a join inside a windowed view must match window_start (or window_end) on \
                     both sides, so it stays inside one window"
                ));
            }
        }
        LogicalPlan::Distinct(_) => {
            if plan
                .schema()
                .field_with_unqualified_name("window_start")
                .is_err()
            {
                return Err(unsupported!(
                    "SELECT DISTINCT in a windowed view must keep window_start among its columns"
                ));
            }
        }
        other => {
            return Err(unsupported!(
                "{} in a windowed view is not supported",
                other.display()
            ));
        }
    }
    for input in plan.inputs() {
        check(input, stays_top)?;
    }
    Ok(())
}
