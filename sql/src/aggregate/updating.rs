//! GROUP BY without a window: an updating aggregate. One [`GroupState`] holds every
//! group; after each batch the view's rows are replaced by the current value of every
//! group, and the groups the batch touched are emitted as changes (the SSE stream).
//!
//! DataFusion 55's accumulators have no non-destructive read, so reading the current
//! values drains the state and rebuilds it from its intermediate form (`state` ->
//! `merge_batch`): O(groups) per batch. Memory is bounded by the number of groups.

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::logical_expr::EmitTo;

use super::{GroupState, GroupedPlan};
use crate::Result;
use crate::operator::{Collector, Operator};

/// The running operator of an updating (unwindowed) aggregate view.
pub struct UpdatingAggregate {
    plan: GroupedPlan,
    state: GroupState,
    group_indices: Vec<usize>,
}

impl UpdatingAggregate {
    pub fn new(plan: GroupedPlan) -> Result<Self> {
        let state = plan.new_state()?;
        Ok(Self {
            plan,
            state,
            group_indices: Vec::new(),
        })
    }

    /// Every group's keys and current values, leaving the state as it was.
    fn current(&mut self) -> Result<RecordBatch> {
        let n = self.state.len();
        let keys = self.state.groups.emit(EmitTo::All)?;
        let states = self
            .state
            .accumulators
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut kept = self.plan.new_state()?;
        let mut read = self.plan.new_state()?;
        // Unique keys into empty group values get the indices 0..n, in order.
        kept.groups.intern(&keys, &mut self.group_indices)?;
        let mut columns: Vec<ArrayRef> = keys;
        for ((keep, out), state) in kept
            .accumulators
            .iter_mut()
            .zip(read.accumulators.iter_mut())
            .zip(&states)
        {
            keep.merge_batch(state, &self.group_indices, n)?;
            out.merge_batch(state, &self.group_indices, n)?;
            columns.push(out.evaluate(EmitTo::All)?);
        }
        self.state = kept;
        Ok(RecordBatch::try_new(
            self.plan.aggregate_schema.clone(),
            columns,
        )?)
    }
}

impl Operator for UpdatingAggregate {
    fn process(
        &mut self,
        batch: &RecordBatch,
        _watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let Some(prepared) = self.plan.prepare(batch.clone())? else {
            return Ok(());
        };
        self.state.fold(&prepared, &mut self.group_indices)?;
        let mut touched = vec![false; self.state.len()];
        for &g in &self.group_indices {
            touched[g] = true;
        }
        let current = self.current()?;
        let changed = filter_record_batch(&current, &BooleanArray::from(touched))?;
        match (self.plan.finish(current), self.plan.finish(changed)) {
            ((_, Ok(all)), (_, Ok(changes))) => {
                out.replace(all);
                out.emit(changes);
            }
            (_, (changed, Err(e))) | ((_, Err(e)), (changed, _)) => {
                out.failed(
                    changed,
                    format!("updated groups could not be finished: {e}"),
                );
            }
        }
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.state.size()
    }
}
