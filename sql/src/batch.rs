//! Batch-mode runs over rows an operator holds. The operators that keep rows (per
//! window, per session, interval and lookup joins) answer with DataFusion in batch mode:
//! the rows are put in a [`WindowRows`] table that the query's scans read, and
//! `run_batch` runs the planned query over them.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::{Error, Result};

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
