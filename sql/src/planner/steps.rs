//! Stateless per-batch steps lowered from DataFusion logical plan nodes: column
//! selection (a scan's projection), filters and projections, each evaluated with
//! vectorized DataFusion physical expressions over the whole batch; and, over the rows of
//! one emitted window, sort and limit (top-N per window).

use std::sync::Arc;

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

/// A chain of steps applied in order.
#[derive(Debug, Clone, Default)]
pub struct Steps(pub Vec<Step>);

impl Steps {
    /// Run every step over `batch`.
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        self.run(batch, None)
    }

    /// Run row-wise steps (no sort or limit, which the planner refuses over an updating
    /// aggregate) over `batch`, whose row `i` is the row of `ids[i]`: the rows that come
    /// out, with their ids.
    pub fn apply_keyed(
        &self,
        batch: RecordBatch,
        mut ids: Vec<u32>,
    ) -> Result<(RecordBatch, Vec<u32>)> {
        let batch = self.run(batch, Some(&mut ids))?;
        Ok((batch, ids))
    }

    /// Run every step; `ids`, one per row, follow the rows a filter keeps.
    fn run(&self, mut batch: RecordBatch, mut ids: Option<&mut Vec<u32>>) -> Result<RecordBatch> {
        for step in &self.0 {
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
