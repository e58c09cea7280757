//! GROUP BY without a window: an updating aggregate. One [`GroupState`] holds every
//! group; after each batch the view's rows are replaced by the current value of every
//! group, and the groups the batch touched are emitted as changes (the SSE stream).
//!
//! Reading the current values costs O(groups) per batch (see [`GroupState::read`]).
//! Memory is bounded by the number of groups.

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;

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
        let current = self.state.read(&self.plan, &mut self.group_indices)?;
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

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let columns = self.state.snapshot(&self.plan, &mut self.group_indices)?;
        Ok(vec![super::state_batch(columns)?])
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.state = match state {
            [] => self.plan.new_state()?,
            [batch] => GroupState::restore(&self.plan, batch.columns(), &mut self.group_indices)?,
            _ => {
                return Err(crate::Error::Execution(format!(
                    "an updating aggregate's checkpoint is one batch, not {}",
                    state.len()
                )));
            }
        };
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.state.size()
    }
}
