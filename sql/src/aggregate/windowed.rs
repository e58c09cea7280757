//! Windowed aggregation: one [`GroupState`] per open window. A micro-batch is split by
//! window; each slice is prepared (evaluated) first and folded in only when every slice
//! succeeded. When the watermark passes a window's end, its groups are emitted and its
//! state dropped, so memory is bounded by the open windows, not by history.
//!
//! With allowed lateness a window is emitted when the watermark reaches its end but kept
//! until the watermark passes its end plus the lateness; late rows in between update it
//! and the window is emitted again, as an upsert that replaces its earlier rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::expressions::Column;

use super::{GroupState, GroupedPlan, state_batch};
use crate::operator::{Collector, Operator};
use crate::window::{Windowing, event_times, split_by_window, with_window_columns};
use crate::{Error, Result};

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

/// One window's state and whether its rows were emitted already.
struct Window {
    state: GroupState,
    emitted: bool,
}

/// The running operator of a windowed aggregate view.
pub struct WindowedAggregate {
    plan: WindowedAggregatePlan,
    windows: BTreeMap<i64, Window>,
}

impl WindowedAggregate {
    pub fn new(plan: WindowedAggregatePlan) -> Self {
        Self {
            plan,
            windows: BTreeMap::new(),
        }
    }

    /// The slice's rows with their window's `window_start` and `window_end` columns.
    fn with_window(&self, start: i64, slice: &RecordBatch) -> Result<RecordBatch> {
        with_window_columns(
            &self.plan.windowed_schema,
            self.plan.windowing,
            start,
            slice,
        )
    }
}

impl WindowedAggregate {
    /// Emit a window's rows: destructively when it is `last` (its state goes next), else
    /// by reading its state and keeping it for late rows.
    fn emit(&mut self, start: i64, last: bool, out: &mut Collector) -> Result<()> {
        let Some(window) = self.windows.get_mut(&start) else {
            return Ok(());
        };
        let grouped = &self.plan.grouped;
        let aggregated = if last {
            window.state.emit(&grouped.aggregate_schema)?
        } else {
            window.state.read(grouped)?
        };
        window.emitted = true;
        match grouped.finish(aggregated) {
            // Without lateness a window is emitted once: append. With it, upsert by start.
            (_, Ok(rows)) if self.plan.windowing.lateness() == 0 => out.emit(rows),
            (_, Ok(rows)) => out.upsert(start, rows),
            // Keep the window's aggregated rows rather than lose them.
            (aggregated, Err(e)) => out.failed(
                aggregated,
                format!("window starting at {start} ms could not be finished: {e}"),
            ),
        }
        Ok(())
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
        let mut changed_emitted = Vec::new();
        for (start, p) in prepared {
            let window = match self.windows.get_mut(&start) {
                Some(w) => w,
                None => self.windows.entry(start).or_insert(Window {
                    state: self.plan.grouped.new_state()?,
                    emitted: false,
                }),
            };
            window.state.fold(&p)?;
            if window.emitted {
                changed_emitted.push(start);
            }
        }
        // Late rows within the allowed lateness changed emitted windows: emit them again.
        for start in changed_emitted {
            self.emit(start, false, out)?;
        }
        if let Some(late) = &split.late {
            out.late(take_record_batch(batch, late)?);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let windowing = self.plan.windowing;
        let closed: Vec<i64> = self
            .windows
            .keys()
            .copied()
            .take_while(|&s| windowing.is_closed(s, Some(watermark)))
            .collect();
        for start in closed {
            let last = !windowing.accepts(start, Some(watermark));
            let emitted = self.windows.get(&start).is_some_and(|w| w.emitted);
            if last {
                // Final: emit unless already emitted (and unchanged since), then drop.
                if !emitted {
                    self.emit(start, true, out)?;
                }
                self.windows.remove(&start);
            } else if !emitted {
                self.emit(start, false, out)?;
            }
        }
        Ok(())
    }

    /// One batch per open window: its start, whether it was emitted, then its groups'
    /// keys and intermediate aggregate states.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::with_capacity(self.windows.len());
        for (&start, window) in &mut self.windows {
            let groups = window.state.snapshot(&self.plan.grouped)?;
            let rows = window.state.len();
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_value(start, rows)),
                Arc::new(BooleanArray::from(vec![window.emitted; rows])),
            ];
            columns.extend(groups);
            batches.push(state_batch(columns)?);
        }
        Ok(batches)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let mut windows = BTreeMap::new();
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let header = |i: usize| {
                batch.columns().get(i).cloned().ok_or_else(|| {
                    Error::Execution("a checkpointed window lacks its start or flag".into())
                })
            };
            let start = header(0)?;
            let emitted = header(1)?;
            let (Some(start), Some(emitted)) = (
                start.as_primitive_opt::<Int64Type>(),
                emitted.as_boolean_opt(),
            ) else {
                return Err(Error::Execution(
                    "a checkpointed window's start or flag has the wrong type".into(),
                ));
            };
            let window = Window {
                state: GroupState::restore(&self.plan.grouped, &batch.columns()[2..])?,
                emitted: emitted.value(0),
            };
            windows.insert(start.value(0), window);
        }
        self.windows = windows;
        Ok(())
    }

    fn set_parallelism(&mut self, n: usize) -> Result<usize> {
        // Only keys beside the window's own spread a window's groups over shards.
        let window_columns = self.plan.windowed_schema.fields().len().saturating_sub(2);
        let keyed = self.plan.grouped.group_by.iter().any(|e| {
            e.downcast_ref::<Column>()
                .is_none_or(|c| c.index() < window_columns)
        });
        let n = if keyed { n.max(1) } else { 1 };
        if n != self.plan.grouped.shards {
            let state = self.snapshot()?;
            self.plan.grouped.shards = n;
            self.restore(&state)?;
        }
        Ok(n)
    }

    fn state_size(&self) -> usize {
        self.windows.values().map(|w| w.state.size()).sum()
    }

    fn open_windows(&self) -> usize {
        self.windows.len()
    }

    fn stages(&self) -> Vec<crate::operator::Stage> {
        self.plan.grouped.stages()
    }
}
