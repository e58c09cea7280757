//! GROUP BY without a window: an updating aggregate. One [`GroupState`] holds every
//! group; after each batch the view's rows are replaced by the current value of every
//! group, and the groups the batch touched are emitted as changes (the SSE stream),
//! with the rows those groups showed before (what sinks need for a group's previous
//! values and for a group that left the view through HAVING).
//!
//! Reading the current values costs O(groups) per batch (see [`GroupState::read`]).
//! Memory is bounded by the number of groups.

use datafusion::arrow::array::{BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};

use super::{GroupState, GroupedPlan};
use crate::Result;
use crate::operator::{Collector, Operator};

/// The running operator of an updating (unwindowed) aggregate view.
pub struct UpdatingAggregate {
    plan: GroupedPlan,
    state: GroupState,
    group_indices: Vec<usize>,
    /// Every group's aggregated values after the previous batch, by group index (group
    /// indices are stable: [`GroupState::read`] rebuilds the groups in order).
    previous: Option<RecordBatch>,
}

impl UpdatingAggregate {
    pub fn new(plan: GroupedPlan) -> Result<Self> {
        let state = plan.new_state()?;
        Ok(Self {
            plan,
            state,
            group_indices: Vec::new(),
            previous: None,
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
        let known = self.previous.as_ref().map_or(0, RecordBatch::num_rows);
        let touched_known: UInt32Array = touched[..known]
            .iter()
            .enumerate()
            .filter(|(_, t)| **t)
            .map(|(g, _)| g as u32)
            .collect();
        let current = self.state.read(&self.plan, &mut self.group_indices)?;
        if !super::is_identity(&self.group_indices) {
            // The groups were renumbered (see `GroupState::read`): follow them.
            let mut renumbered = vec![false; touched.len()];
            for (old, &new) in self.group_indices.iter().enumerate() {
                renumbered[new] = touched[old];
            }
            touched = renumbered;
        }
        let changed = filter_record_batch(&current, &BooleanArray::from(touched))?;
        let before = match &self.previous {
            Some(previous) => Some(take_record_batch(previous, &touched_known)?),
            None => None,
        };
        let finished = (
            self.plan.finish(current.clone()).1,
            self.plan.finish(changed),
            before.map(|b| self.plan.finish(b).1).transpose(),
        );
        match finished {
            (Ok(all), (_, Ok(changes)), Ok(replaced)) => {
                out.replace(all);
                out.emit(changes);
                if let Some(replaced) = replaced.filter(|r| r.num_rows() > 0) {
                    out.replaced(replaced);
                }
                self.previous = Some(current);
            }
            (_, (changed, Err(e)), _) | (Err(e), (changed, _), _) | (_, (changed, _), Err(e)) => {
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
        if !super::is_identity(&self.group_indices) && self.previous.is_some() {
            // Renumbered groups (a hash collision): `previous` follows the new order.
            self.previous = Some(self.state.read(&self.plan, &mut self.group_indices)?);
        }
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
        // What the restored view shows, so the next batch knows the groups' rows before.
        self.previous = Some(self.state.read(&self.plan, &mut self.group_indices)?);
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.state.size()
            + self
                .previous
                .as_ref()
                .map_or(0, RecordBatch::get_array_memory_size)
    }
}
