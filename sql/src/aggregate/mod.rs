//! Incremental windowed aggregation on DataFusion's vectorized grouping machinery.
//!
//! Each open window owns one `GroupValues` (group key -> dense group index) and one
//! `GroupsAccumulator` per aggregate, exactly the pieces DataFusion's hash aggregation
//! uses. A micro-batch is split by window; each slice is interned and fed to the
//! accumulators with one vectorized call each. When the watermark passes a window's
//! end, its groups are emitted with `EmitTo::All` and the window's state is dropped, so
//! memory is bounded by the open windows, not by history.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, TimestampMillisecondArray};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::operator::{Collector, Operator};
use crate::planner::steps::Steps;
use crate::window::{Windowing, event_times, split_by_window};
use crate::{Error, Result};

/// One aggregate call of the query: the function, its argument expressions and its
/// optional `FILTER (WHERE ...)`.
#[derive(Debug, Clone)]
pub struct AggregateCall {
    pub function: Arc<AggregateFunctionExpr>,
    /// The function's argument expressions (kept to avoid rebuilding them per batch).
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggregateCall {
    fn accumulator(&self) -> Result<Box<dyn GroupsAccumulator>> {
        if self.function.groups_accumulator_supported() {
            Ok(self.function.create_groups_accumulator()?)
        } else {
            // Rare aggregates without a grouped form: one Accumulator per group.
            let f = Arc::clone(&self.function);
            Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                f.create_accumulator()
            })))
        }
    }
}

/// The shape of a `TUMBLE` or `HOP` + `GROUP BY` query, as lowered by the planner.
#[derive(Debug, Clone)]
pub struct WindowedAggregatePlan {
    pub windowing: Windowing,
    /// Index of the event-time column in the source schema.
    pub time_column: usize,
    /// Source schema plus `window_start` and `window_end`.
    pub windowed_schema: SchemaRef,
    /// From the windowed source rows to the aggregate's input.
    pub pre: Steps,
    pub group_by: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the group key columns.
    pub group_schema: SchemaRef,
    pub aggregates: Vec<AggregateCall>,
    /// Output of the aggregate: group keys, then aggregate values.
    pub aggregate_schema: SchemaRef,
    /// From the aggregate's output to the view's rows (HAVING, final projection).
    pub post: Steps,
}

struct WindowState {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

impl WindowState {
    fn new(plan: &WindowedAggregatePlan) -> Result<Self> {
        Ok(Self {
            groups: new_group_values(plan.group_schema.clone(), &GroupOrdering::None)?,
            accumulators: plan
                .aggregates
                .iter()
                .map(AggregateCall::accumulator)
                .collect::<Result<_>>()?,
        })
    }
}

/// The running operator of a windowed aggregate view.
pub struct WindowedAggregate {
    plan: WindowedAggregatePlan,
    windows: BTreeMap<i64, WindowState>,
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

    /// Evaluate everything a window slice needs, without touching any state, so that
    /// a failing expression leaves every window as it was.
    fn prepare(&self, start: i64, slice: RecordBatch) -> Result<Option<Prepared>> {
        let rows = slice.num_rows();
        let end = self.plan.windowing.end(start);
        let mut columns = slice.columns().to_vec();
        columns.push(Arc::new(TimestampMillisecondArray::from_value(start, rows)) as ArrayRef);
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, rows)) as ArrayRef);
        let windowed = RecordBatch::try_new(self.plan.windowed_schema.clone(), columns)?;
        let input = self.plan.pre.apply(windowed)?;
        let rows = input.num_rows();
        if rows == 0 {
            return Ok(None);
        }
        let keys = evaluate(&self.plan.group_by, &input)?;
        let mut arguments = Vec::with_capacity(self.plan.aggregates.len());
        for call in &self.plan.aggregates {
            let values = evaluate(&call.args, &input)?;
            let filter = match &call.filter {
                Some(f) => Some(boolean(f.evaluate(&input)?.into_array(rows)?)?),
                None => None,
            };
            arguments.push((values, filter));
        }
        Ok(Some(Prepared {
            start,
            keys,
            arguments,
        }))
    }

    /// Fold a prepared slice into its window's groups and accumulators.
    fn apply(&mut self, prepared: Prepared) -> Result<()> {
        let Self {
            plan,
            windows,
            group_indices,
        } = self;
        let state = match windows.entry(prepared.start) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(WindowState::new(plan)?),
        };
        state.groups.intern(&prepared.keys, group_indices)?;
        let total_groups = state.groups.len();
        for (acc, (values, filter)) in state.accumulators.iter_mut().zip(&prepared.arguments) {
            acc.update_batch(values, group_indices, filter.as_ref(), total_groups)?;
        }
        Ok(())
    }

    /// The window's rows before and after the post-aggregate steps (HAVING, projection).
    fn emit_window(&self, mut state: WindowState) -> Result<(RecordBatch, Result<RecordBatch>)> {
        let mut columns = state.groups.emit(EmitTo::All)?;
        for acc in &mut state.accumulators {
            columns.push(acc.evaluate(EmitTo::All)?);
        }
        let aggregated = RecordBatch::try_new(self.plan.aggregate_schema.clone(), columns)?;
        let rows = self.plan.post.apply(aggregated.clone());
        Ok((aggregated, rows))
    }
}

/// One window's share of a batch, evaluated and ready to fold in.
struct Prepared {
    start: i64,
    keys: Vec<ArrayRef>,
    arguments: Vec<(Vec<ArrayRef>, Option<BooleanArray>)>,
}

fn evaluate(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| {
            e.evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(Error::from)
        })
        .collect()
}

fn boolean(array: ArrayRef) -> Result<BooleanArray> {
    array.as_boolean_opt().cloned().ok_or_else(|| {
        Error::Execution(format!(
            "aggregate FILTER returned {}, not BOOLEAN",
            array.data_type()
        ))
    })
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
            prepared.extend(self.prepare(start, slice)?);
        }
        // Nothing has changed yet: an error above leaves the whole batch to the caller.
        for p in prepared {
            self.apply(p)?;
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
            let state = entry.remove();
            let (aggregated, rows) = self.emit_window(state)?;
            match rows {
                Ok(rows) => out.emit(rows),
                // Keep the window's aggregated rows rather than lose them.
                Err(e) => out.failed(
                    aggregated,
                    format!("window starting at {start} ms could not be finished: {e}"),
                ),
            }
        }
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.windows
            .values()
            .map(|w| w.groups.size() + w.accumulators.iter().map(|a| a.size()).sum::<usize>())
            .sum()
    }

    fn open_windows(&self) -> usize {
        self.windows.len()
    }
}
