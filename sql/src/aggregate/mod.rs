//! Incremental aggregation on DataFusion's vectorized grouping machinery.
//!
//! A [`GroupState`] is one `GroupValues` (group key -> dense group index) and one
//! `GroupsAccumulator` per aggregate, exactly the pieces DataFusion's hash aggregation
//! uses, so every DataFusion aggregate function works without being re-implemented. A
//! batch is interned and fed to the accumulators with one vectorized call each.
//!
//! Two operators use it: [`windowed::WindowedAggregate`] keeps one state per open window
//! and emits a window once the watermark passes its end; [`updating::UpdatingAggregate`]
//! (GROUP BY without a window) keeps one state and re-emits the groups each batch changes.

pub mod keyed;
pub mod shards;
pub mod updating;
pub mod windowed;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::planner::steps::Steps;
use crate::{Error, Result};
use shards::{Router, each_shard, take_rows};

pub use keyed::{KeyedChange, KeyedRows};
pub use updating::UpdatingAggregate;
pub use windowed::{WindowedAggregate, WindowedAggregatePlan};

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

/// A grouped aggregation as lowered by the planner: the stateless steps before it, the
/// group keys and aggregate calls, and the steps after it (HAVING, final projection).
#[derive(Debug, Clone)]
pub struct GroupedPlan {
    /// From the operator's input rows to the aggregate's input.
    pub pre: Steps,
    pub group_by: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the group key columns.
    pub group_schema: SchemaRef,
    pub aggregates: Vec<AggregateCall>,
    /// Output of the aggregate: group keys, then aggregate values.
    pub aggregate_schema: SchemaRef,
    /// From the aggregate's output to the view's rows.
    pub post: Steps,
    /// Keyed parallel instances: the state is split into this many shards by a hash of
    /// the group key, worked on by as many cores (see [`shards`]). 1 runs serially.
    pub shards: usize,
}

/// Keys and aggregate arguments of some input rows, evaluated and ready to fold in.
#[derive(Clone)]
pub struct Prepared {
    keys: Vec<ArrayRef>,
    arguments: Vec<(Vec<ArrayRef>, Option<BooleanArray>)>,
    rows: usize,
}

impl GroupedPlan {
    /// The steps before the aggregate, the aggregate, and the steps after it.
    pub fn stages(&self) -> Vec<crate::operator::Stage> {
        use crate::operator::Stage;
        let step = |(l, c)| Stage::Step(l, c);
        (self.pre.clocks().map(step))
            .chain([Stage::Core])
            .chain(self.post.clocks().map(step))
            .collect()
    }

    /// Evaluate what `input` contributes, without touching any state, so that a failing
    /// expression leaves every state as it was. `None` when no row survives `pre`.
    pub fn prepare(&self, input: RecordBatch) -> Result<Option<Prepared>> {
        let input = self.pre.apply(input)?;
        let rows = input.num_rows();
        if rows == 0 {
            return Ok(None);
        }
        let keys = evaluate(&self.group_by, &input)?;
        let mut arguments = Vec::with_capacity(self.aggregates.len());
        for call in &self.aggregates {
            let values = evaluate(&call.args, &input)?;
            let filter = match &call.filter {
                Some(f) => Some(boolean(f.evaluate(&input)?.into_array(rows)?)?),
                None => None,
            };
            arguments.push((values, filter));
        }
        Ok(Some(Prepared {
            keys,
            arguments,
            rows,
        }))
    }

    /// An empty state for this aggregation, in [`GroupedPlan::shards`] shards.
    pub fn new_state(&self) -> Result<GroupState> {
        Ok(GroupState {
            shards: (0..self.shards.max(1))
                .map(|_| Shard::new(self))
                .collect::<Result<_>>()?,
            router: Router::new(self.shards),
        })
    }

    /// Columns in the form of [`GroupState::snapshot`], checked against this query and
    /// split into the group keys and each aggregate's state columns.
    pub(crate) fn split_state<'a>(
        &self,
        columns: &'a [ArrayRef],
    ) -> Result<(&'a [ArrayRef], Vec<Vec<ArrayRef>>)> {
        let key_count = self.group_schema.fields().len();
        let (types, widths) = self.state_types()?;
        let found: Vec<&DataType> = columns.iter().map(|c| c.data_type()).collect();
        if found.len() != types.len() || found.iter().zip(&types).any(|(a, b)| *a != b) {
            return Err(Error::Execution(format!(
                "checkpointed aggregate state has the columns {found:?}; this query needs {types:?}"
            )));
        }
        let (keys, mut rest) = columns.split_at(key_count);
        let mut states = Vec::with_capacity(widths.len());
        for width in widths {
            let (state, tail) = rest.split_at(width);
            states.push(state.to_vec());
            rest = tail;
        }
        Ok((keys, states))
    }

    /// The types of the state columns (group keys, then each aggregate's state), and
    /// how many columns each aggregate's state takes.
    pub(crate) fn state_types(&self) -> Result<(Vec<DataType>, Vec<usize>)> {
        let mut widths = Vec::with_capacity(self.aggregates.len());
        let mut types: Vec<DataType> = self
            .group_schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        for call in &self.aggregates {
            let fields = call.function.state_fields()?;
            widths.push(fields.len());
            types.extend(fields.iter().map(|f| f.data_type().clone()));
        }
        Ok((types, widths))
    }

    /// Fresh accumulators, one per aggregate call.
    pub(crate) fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggregates
            .iter()
            .map(AggregateCall::accumulator)
            .collect()
    }

    /// Run the post-aggregate steps, handing back the aggregated rows on failure so the
    /// caller can dead-letter them instead of losing them.
    pub fn finish(&self, aggregated: RecordBatch) -> (RecordBatch, Result<RecordBatch>) {
        let rows = self.post.apply(aggregated.clone());
        (aggregated, rows)
    }
}

/// The groups and accumulators of one aggregation (one window, or the whole stream),
/// split into shards by group key (one shard unless the plan asks for more).
pub struct GroupState {
    shards: Vec<Shard>,
    router: Router,
}

impl GroupState {
    /// Fold prepared rows in, each shard its own rows on its own core.
    pub fn fold(&mut self, prepared: &Prepared) -> Result<()> {
        if let [shard] = &mut self.shards[..] {
            return shard.fold(prepared);
        }
        let parts = prepared.route(&mut self.router)?;
        each_shard(&mut self.shards, parts, |shard, part| match part {
            Some(part) => shard.fold(&part),
            None => Ok(()),
        })?;
        Ok(())
    }

    /// Emit every group (keys, then final values) and reset the state.
    pub fn emit(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let parts = vec![(); self.shards.len()];
        let batches = each_shard(&mut self.shards, parts, |shard, ()| shard.emit(schema))?;
        concat(schema, batches)
    }

    /// Every group's keys and current values, leaving the state as it was.
    pub fn read(&mut self, plan: &GroupedPlan) -> Result<RecordBatch> {
        let parts = vec![(); self.shards.len()];
        let batches = each_shard(&mut self.shards, parts, |shard, ()| shard.read(plan))?;
        concat(&plan.aggregate_schema, batches)
    }

    /// The state in DataFusion's intermediate form, for a checkpoint: the group keys,
    /// then each aggregate's state columns (what a partial aggregation hands to a final
    /// one), every shard's groups together. The state stays as it was.
    pub fn snapshot(&mut self, plan: &GroupedPlan) -> Result<Vec<ArrayRef>> {
        let parts = vec![(); self.shards.len()];
        let shards = each_shard(&mut self.shards, parts, |shard, ()| shard.snapshot(plan))?;
        concat_columns(shards)
    }

    /// A state from the columns of [`GroupState::snapshot`], taken at any parallelism:
    /// the groups are routed to this plan's shards by key.
    pub fn restore(plan: &GroupedPlan, columns: &[ArrayRef]) -> Result<Self> {
        let mut state = plan.new_state()?;
        if let [shard] = &mut state.shards[..] {
            *shard = Shard::restore(plan, columns)?;
            return Ok(state);
        }
        let (keys, _) = plan.split_state(columns)?;
        let rows = columns.first().map_or(0, |c| c.len());
        let parts = state.router.route(keys, rows)?;
        each_shard(&mut state.shards, parts, |shard, part| {
            *shard = Shard::restore(plan, &take_rows(columns, &part)?)?;
            Ok(())
        })?;
        Ok(state)
    }

    /// Bytes held by the groups and accumulators.
    pub fn size(&self) -> usize {
        self.shards.iter().map(Shard::size).sum()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.groups.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shards' batches as one.
fn concat(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    match <[RecordBatch; 1]>::try_from(batches) {
        Ok([one]) => Ok(one),
        Err(batches) => Ok(datafusion::arrow::compute::concat_batches(
            schema, &batches,
        )?),
    }
}

/// The shards' columns as one set of columns.
pub(crate) fn concat_columns(shards: Vec<Vec<ArrayRef>>) -> Result<Vec<ArrayRef>> {
    let mut shards = shards.into_iter();
    let Some(first) = shards.next() else {
        return Ok(Vec::new());
    };
    let rest: Vec<Vec<ArrayRef>> = shards.collect();
    if rest.is_empty() {
        return Ok(first);
    }
    (0..first.len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = std::iter::once(first[c].as_ref())
                .chain(rest.iter().map(|s| s[c].as_ref()))
                .collect();
            Ok(datafusion::arrow::compute::concat(&arrays)?)
        })
        .collect()
}

/// One shard's groups and accumulators.
struct Shard {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Scratch: each folded row's group index.
    indices: Vec<usize>,
}

impl Shard {
    fn new(plan: &GroupedPlan) -> Result<Self> {
        Ok(Self {
            groups: new_group_values(plan.group_schema.clone(), &GroupOrdering::None)?,
            accumulators: plan.accumulators()?,
            indices: Vec::new(),
        })
    }

    fn fold(&mut self, prepared: &Prepared) -> Result<()> {
        self.groups.intern(&prepared.keys, &mut self.indices)?;
        let total_groups = self.groups.len();
        for (acc, (values, filter)) in self.accumulators.iter_mut().zip(&prepared.arguments) {
            acc.update_batch(values, &self.indices, filter.as_ref(), total_groups)?;
        }
        Ok(())
    }

    fn emit(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let mut columns = self.groups.emit(EmitTo::All)?;
        for acc in &mut self.accumulators {
            columns.push(acc.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }

    /// DataFusion 55's accumulators have no non-destructive read, so this drains the
    /// shard and rebuilds it from its intermediate form (`state` -> `merge_batch`):
    /// O(groups).
    fn read(&mut self, plan: &GroupedPlan) -> Result<RecordBatch> {
        let (keys, states) = self.drain()?;
        *self = Self::rebuild(plan, &keys, &states)?;
        // `indices` maps each group's old index to its new one: 0..n again, unless two
        // keys' hashes collided while interning. Values come out by new index, so the
        // keys are put in that order too.
        let indices = &self.indices;
        let n = self.groups.len();
        let keys = if is_identity(indices) {
            keys
        } else {
            let mut old_of_new = vec![0u32; n];
            for (old, &new) in indices.iter().enumerate() {
                old_of_new[new] = old as u32;
            }
            let order = datafusion::arrow::array::UInt32Array::from(old_of_new);
            keys.iter()
                .map(|k| datafusion::arrow::compute::take(k, &order, None))
                .collect::<std::result::Result<_, _>>()?
        };
        let mut columns: Vec<ArrayRef> = keys;
        for (mut out, state) in plan.accumulators()?.into_iter().zip(&states) {
            out.merge_batch(state, indices, n)?;
            columns.push(out.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(
            plan.aggregate_schema.clone(),
            columns,
        )?)
    }

    fn snapshot(&mut self, plan: &GroupedPlan) -> Result<Vec<ArrayRef>> {
        let (keys, states) = self.drain()?;
        *self = Self::rebuild(plan, &keys, &states)?;
        Ok(keys
            .into_iter()
            .chain(states.into_iter().flatten())
            .collect())
    }

    fn restore(plan: &GroupedPlan, columns: &[ArrayRef]) -> Result<Self> {
        let (keys, states) = plan.split_state(columns)?;
        Self::rebuild(plan, keys, &states)
    }

    /// Take the keys and each accumulator's intermediate state out, leaving it empty.
    fn drain(&mut self) -> Result<(Vec<ArrayRef>, Vec<Vec<ArrayRef>>)> {
        let keys = self.groups.emit(EmitTo::All)?;
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok((keys, states))
    }

    /// A shard holding exactly `keys` (unique) with the given intermediate states;
    /// `indices` maps each key to its group.
    fn rebuild(plan: &GroupedPlan, keys: &[ArrayRef], states: &[Vec<ArrayRef>]) -> Result<Self> {
        let mut shard = Self::new(plan)?;
        // Unique keys into empty group values get the indices 0..n, in order.
        shard.groups.intern(keys, &mut shard.indices)?;
        let n = shard.groups.len();
        for (acc, columns) in shard.accumulators.iter_mut().zip(states) {
            acc.merge_batch(columns, &shard.indices, n)?;
        }
        Ok(shard)
    }

    fn size(&self) -> usize {
        self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }
}

/// Whether `indices` is 0, 1, 2, ...
pub(crate) fn is_identity(indices: &[usize]) -> bool {
    indices.iter().enumerate().all(|(i, &g)| i == g)
}

/// Columns of a checkpointed state as a batch: positional names, every column nullable,
/// so that the states of all windows of one query share one schema.
pub(crate) fn state_batch(columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    let rows = columns.first().map_or(0, |c| c.len());
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
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
