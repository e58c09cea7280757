//! Stateless per-batch steps lowered from DataFusion logical plan nodes: column
//! selection (a scan's projection), filters and projections, each evaluated with
//! vectorized DataFusion physical expressions over the whole batch; and, over the rows of
//! one emitted window, sort and limit (top-N per window).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::{filter_record_batch, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};

use crate::{Error, Result};

/// One stateless transformation of a batch.
#[derive(Debug, Clone)]
pub enum Step {
    /// Keep these columns, in this order.
    Select(Vec<usize>),
    /// Keep the rows where the predicate is true (null counts as false).
    Filter(Arc<dyn PhysicalExpr>),
    /// Compute new columns into the given schema.
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
    /// Sort the batch, keeping the first `fetch` rows (top-N of an emitted window).
    Sort(Vec<PhysicalSortExpr>, Option<usize>),
    /// Skip `skip` rows and keep at most `fetch`.
    Limit(usize, Option<usize>),
}

impl Step {
    /// The operator EXPLAIN names this step by (`select` has no line of its own).
    pub fn label(&self) -> &'static str {
        match self {
            Step::Select(_) => "select",
            Step::Filter(_) => "filter",
            Step::Project(..) => "project",
            Step::Sort(..) | Step::Limit(..) => "top-n",
        }
    }
}

/// What one step has done so far: rows in and out, batches and time; the runtime
/// reads it for the operator graph and `/metrics`.
#[derive(Debug, Default)]
pub struct StepClock {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub batches: AtomicU64,
    pub nanos: AtomicU64,
}

impl StepClock {
    fn record(&self, rows_in: usize, rows_out: usize, started: Instant, count_batch: bool) {
        let nanos = started.elapsed().as_nanos() as u64;
        self.rows_in.fetch_add(rows_in as u64, Ordering::Relaxed);
        self.rows_out.fetch_add(rows_out as u64, Ordering::Relaxed);
        self.batches
            .fetch_add(u64::from(count_batch), Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// A chain of steps applied in order, each timed (two clock reads per step and batch).
/// Clones share the clocks, so parallel instances add up.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    steps: Vec<Step>,
    clocks: Vec<Arc<StepClock>>,
}

impl Steps {
    pub fn new(steps: Vec<Step>) -> Self {
        let clocks = steps.iter().map(|_| Arc::default()).collect();
        Self { steps, clocks }
    }

    /// `first`, then these steps.
    pub fn after(mut self, first: Step) -> Self {
        self.steps.insert(0, first);
        self.clocks.insert(0, Arc::default());
        self
    }

    /// Each step's label and clock, in order.
    pub fn clocks(&self) -> impl Iterator<Item = (&'static str, Arc<StepClock>)> + '_ {
        (self.steps.iter().map(Step::label)).zip(self.clocks.iter().cloned())
    }

    /// Run every step over `batch`.
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        self.run(batch, None, true)
    }

    /// Run every step over one slice of a batch; the batch is counted once, with its
    /// `first` slice (rows and time add up over the slices).
    pub fn apply_slice(&self, slice: RecordBatch, first: bool) -> Result<RecordBatch> {
        self.run(slice, None, first)
    }

    /// Whether a batch may be cut into slices run apart: every step works row by row
    /// (no sort or limit) and at least one computes something. Volatile functions may be
    /// sliced: DataFusion's (`random()`, `uuid()`) draw per row, and a plugin's function
    /// is called once per slice and settles its failures once per batch
    /// ([`crate::settle`]). A volatile function whose result depends on which rows share
    /// its call would need to be refused here.
    pub fn sliceable(&self) -> bool {
        self.steps.iter().any(|s| !matches!(s, Step::Select(_)))
            && self
                .steps
                .iter()
                .all(|s| !matches!(s, Step::Sort(..) | Step::Limit(..)))
    }

    /// Run row-wise steps (no sort or limit, which the planner refuses over an updating
    /// aggregate) over `batch`, whose row `i` is the row of `ids[i]`: the rows that come
    /// out, with their ids.
    pub fn apply_keyed(
        &self,
        batch: RecordBatch,
        mut ids: Vec<u32>,
    ) -> Result<(RecordBatch, Vec<u32>)> {
        let batch = self.run(batch, Some(&mut ids), true)?;
        Ok((batch, ids))
    }

    /// Run every step; `ids`, one per row, follow the rows a filter keeps; the clocks
    /// count a batch only when `count_batch`.
    fn run(
        &self,
        mut batch: RecordBatch,
        mut ids: Option<&mut Vec<u32>>,
        count_batch: bool,
    ) -> Result<RecordBatch> {
        for (step, clock) in self.steps.iter().zip(&self.clocks) {
            let (started, rows_in) = (Instant::now(), batch.num_rows());
            batch = match step {
                Step::Select(cols) => batch.project(cols)?,
                Step::Filter(predicate) => {
                    let mask = mask(predicate, &batch)?;
                    if mask.true_count() == batch.num_rows() {
                        batch
                    } else {
                        if let Some(ids) = ids.as_deref_mut() {
                            let mut kept = mask.iter().map(|m| m == Some(true));
                            ids.retain(|_| kept.next().unwrap_or(false));
                        }
                        filter_record_batch(&batch, &mask)?
                    }
                }
                Step::Project(exprs, schema) => project(exprs, schema, &batch)?,
                Step::Sort(..) | Step::Limit(..) if ids.is_some() => {
                    return Err(Error::Execution(
                        "a sort or limit does not keep rows apart by key".into(),
                    ));
                }
                Step::Sort(order, fetch) => {
                    let columns = order
                        .iter()
                        .map(|e| e.evaluate_to_sort_column(&batch))
                        .collect::<datafusion::error::Result<Vec<_>>>()?;
                    let indices = lexsort_to_indices(&columns, *fetch)?;
                    take_record_batch(&batch, &indices)?
                }
                Step::Limit(skip, fetch) => {
                    let start = (*skip).min(batch.num_rows());
                    let len = fetch.map_or(batch.num_rows() - start, |f| {
                        f.min(batch.num_rows() - start)
                    });
                    batch.slice(start, len)
                }
            };
            clock.record(rows_in, batch.num_rows(), started, count_batch);
        }
        Ok(batch)
    }
}

/// Where `predicate` holds over `batch`.
fn mask(predicate: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let mask = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    mask.as_boolean_opt().cloned().ok_or_else(|| {
        Error::Execution(format!(
            "filter {predicate} returned {}, not BOOLEAN",
            mask.data_type()
        ))
    })
}

/// New columns computed from `batch`.
fn project(
    exprs: &[Arc<dyn PhysicalExpr>],
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let columns = exprs
        .iter()
        .map(|e| e.evaluate(batch).and_then(|v| v.into_array(rows)))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}
