//! Windowed aggregation: one [`GroupState`] per open window. A micro-batch is split by
//! window; each slice is prepared (evaluated) first and folded in only when every slice
//! succeeded. When the watermark passes a window's end, its groups are emitted and its
//! state dropped, so memory is bounded by the open windows, not by history.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, TimestampMillisecondArray};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::{GroupState, GroupedPlan};
use crate::Result;
use crate::operator::{Collector, Operator};
use crate::window::{Windowing, event_times, split_by_window};

/// The shape of a `TUMBLE` or `HOP` + `GROUP BY` query, as lowered by the planner.
#[derive(Debug, Clone)]
pub struct WindowedAggregatePlan {
    pub windowing: Windowing,
    /// Index of the event-time column in the source schema.
    pub time_column: usize,
    /// Source schema plus `window_start` and `window_end`.
    pub windowed_schema: SchemaRef,
    pub grouped: GroupedPlan,
}

/// The running operator of a windowed aggregate view.
pub struct WindowedAggregate {
    plan: WindowedAggregatePlan,
    windows: BTreeMap<i64, GroupState>,
    /// Reused buffer of group indices for the rows of one slice.
    group_indices: Vec<usize>,
}

impl WindowedAggregate {
    pub fn new(plan: WindowedAggregatePlan) -> Self {
        Self {
            plan,
            windows: BTreeMap::new(),
            group_indices: Vec::new(),
        }
    }

    /// The slice's rows with their window's `window_start` and `window_end` columns.
    fn with_window(&self, start: i64, slice: &RecordBatch) -> Result<RecordBatch> {
        let rows = slice.num_rows();
        let end = self.plan.windowing.end(start);
        let mut columns = slice.columns().to_vec();
        columns.push(Arc::new(TimestampMillisecondArray::from_value(start, rows)) as ArrayRef);
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, rows)) as ArrayRef);
        Ok(RecordBatch::try_new(
            self.plan.windowed_schema.clone(),
            columns,
        )?)
    }
}

impl Operator for WindowedAggregate {
    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let times = event_times(batch.column(self.plan.time_column))?;
        let split = split_by_window(times, self.plan.windowing, watermark);
        let mut prepared = Vec::with_capacity(split.windows.len());
        for (start, rows) in split.windows {
            let slice = match rows {
                None => batch.clone(),
                Some(rows) => take_record_batch(batch, &rows)?,
            };
            if let Some(p) = self
                .plan
                .grouped
                .prepare(self.with_window(start, &slice)?)?
            {
                prepared.push((start, p));
            }
        }
        // Nothing has changed yet: an error above leaves the whole batch to the caller.
        for (start, p) in prepared {
            let state = match self.windows.get_mut(&start) {
                Some(s) => s,
                None => self
                    .windows
                    .entry(start)
                    .or_insert(self.plan.grouped.new_state()?),
            };
            state.fold(&p, &mut self.group_indices)?;
        }
        if let Some(late) = &split.late {
            out.late(take_record_batch(batch, late)?);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        while let Some(entry) = self.windows.first_entry() {
            if !self.plan.windowing.is_closed(*entry.key(), Some(watermark)) {
                break;
            }
            let start = *entry.key();
            let mut state = entry.remove();
            let aggregated = state.emit(&self.plan.grouped.aggregate_schema)?;
            match self.plan.grouped.finish(aggregated) {
                (_, Ok(rows)) => out.emit(rows),
                // Keep the window's aggregated rows rather than lose them.
                (aggregated, Err(e)) => out.failed(
                    aggregated,
                    format!("window starting at {start} ms could not be finished: {e}"),
                ),
            }
        }
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.windows.values().map(GroupState::size).sum()
    }

    fn open_windows(&self) -> usize {
        self.windows.len()
    }
}
