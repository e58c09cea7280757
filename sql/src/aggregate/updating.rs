//! GROUP BY without a window: an updating aggregate. Each batch changes the groups it
//! touches; the view shows every group's current row, kept by group ([`KeyedChange`]).
//!
//! Each group's intermediate state (DataFusion's partial-aggregate form, what a partial
//! aggregation hands to a final one) is kept in a [`KeyedRows`]. A batch is aggregated
//! on its own, merged with the stored states of the groups it touched, and only those
//! groups' rows go out: a batch costs its rows and the groups it touched, however many
//! groups are held. For aggregates that keep every value of a group (count DISTINCT,
//! array_agg, median) a touched group costs in proportion to its state; EXPLAIN says so.
//! (ORDER BY and LIMIT over all groups, which would need every group per batch, are
//! refused by the planner.)

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::expressions::Literal;
use std::sync::{Arc, Mutex};

use super::shards::{Router, each_owned_shard, take_rows};
use super::{GroupedPlan, KeyedChange, KeyedRows, Prepared};
use crate::operator::{Collector, Operator};
use crate::parallel::lock;
use crate::{Error, Result};

/// The running operator of an updating (unwindowed) aggregate view.
pub struct UpdatingAggregate {
    plan: Arc<GroupedPlan>,
    /// The groups, split by a hash of their key ([`GroupedPlan::shards`]). Group `g` of
    /// shard `s` of `n` has the id `g * n + s` in the view. Each is shared with the
    /// work on it ([`each_owned_shard`]).
    shards: Vec<Arc<Mutex<Shard>>>,
    router: Router,
    /// Whether some aggregate's state holds values of variable size (lists, strings,
    /// bytes): a touched group then costs in proportion to its state.
    state_grows: bool,
}

/// One shard's groups and their states.
struct Shard {
    /// Group key -> group index, for every group seen.
    groups: Box<dyn GroupValues>,
    /// By group index: the group's keys, then each aggregate's intermediate state.
    states: KeyedRows,
    /// Scratch: each input row's group in its batch.
    row_groups: Vec<usize>,
    /// Scratch: each of a batch's groups' index.
    ids: Vec<usize>,
}

/// What one shard made of a batch, not stored yet: the groups it touched (by shard
/// index), their new states and their rows.
struct Touched {
    ids: Vec<u32>,
    states: RecordBatch,
    aggregated: RecordBatch,
}

impl UpdatingAggregate {
    pub fn new(plan: GroupedPlan) -> Result<Self> {
        let mut state_grows = false;
        for call in &plan.aggregates {
            state_grows |= call.function.state_fields()?.iter().any(|f| {
                matches!(
                    f.data_type(),
                    DataType::List(_)
                        | DataType::LargeList(_)
                        | DataType::FixedSizeList(..)
                        | DataType::Binary
                        | DataType::LargeBinary
                        | DataType::BinaryView
                        | DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Map(..)
                )
            });
        }
        Ok(Self {
            shards: new_shards(&plan)?,
            router: Router::new(plan.shards),
            state_grows,
            plan: Arc::new(plan),
        })
    }

    /// What a batch costs, for EXPLAIN.
    pub fn path(&self) -> &'static str {
        if self.state_grows {
            "updating by group: a batch costs its rows and the state of the groups it \
             touches (an aggregate keeps values of variable size)"
        } else {
            "updating by group: a batch costs its rows and the groups it touches"
        }
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
        let n = self.shards.len();
        let parts = if n == 1 {
            vec![Some(prepared)]
        } else {
            prepared.route(&mut self.router)?
        };
        let plan = Arc::clone(&self.plan);
        let touched = each_owned_shard(&self.shards, parts, move |shard, part| match part {
            Some(part) => shard.fold(&plan, &part).map(Some),
            None => Ok(None),
        })?;
        // Every shard folded its rows and every id fits: only now is anything stored, so
        // a failing batch leaves every group as it was.
        let view_ids = touched
            .iter()
            .enumerate()
            .map(|(s, t)| {
                t.as_ref()
                    .map_or(Ok(Vec::new()), |t| view_ids(&t.ids, s, n))
            })
            .collect::<Result<Vec<_>>>()?;
        let touched = each_owned_shard(&self.shards, touched, |shard, touched| {
            let Some(Touched {
                ids,
                states,
                aggregated,
            }) = touched
            else {
                return Ok(None);
            };
            shard.states.set(&ids, states)?;
            Ok(Some(aggregated))
        })?;
        let plan = &self.plan;
        for (aggregated, ids) in touched.into_iter().zip(view_ids) {
            let Some(aggregated) = aggregated else {
                continue;
            };
            // A failure here leaves the groups' rows as they were until they change
            // again; their new values are dead-lettered.
            match plan.post.apply_keyed(aggregated.clone(), ids.clone()) {
                Ok((rows, kept)) => out.keyed(KeyedChange {
                    touched: ids,
                    ids: kept,
                    rows,
                }),
                Err(e) => out.failed(
                    aggregated,
                    format!("updated groups could not be finished: {e}"),
                ),
            }
        }
        Ok(())
    }

    /// Every shard's groups, a batch per instance that holds any (restored at any
    /// parallelism): joined into one, they were copied a second time (a fifth of a
    /// final checkpoint of 9 million groups).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let parts = vec![(); self.shards.len()];
        let states = each_owned_shard(&self.shards, parts, |shard, ()| {
            let states = shard.states.all()?.1;
            if states.num_rows() == 0 {
                return Ok(None);
            }
            super::state_batch(states.columns().to_vec()).map(Some)
        })?;
        Ok(states.into_iter().flatten().collect())
    }

    /// Any number of batches (one per instance, or one from before), routed again.
    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let joined;
        let columns = match state {
            [] => None,
            [batch] => Some(batch.columns()),
            batches => {
                let width = batches[0].num_columns();
                if batches.iter().any(|b| b.num_columns() != width) {
                    return Err(Error::Execution(
                        "an updating aggregate's checkpoint holds batches of different widths"
                            .into(),
                    ));
                }
                let columns = batches.iter().map(|b| b.columns().to_vec()).collect();
                joined = super::concat_columns(columns)?;
                Some(&joined[..])
            }
        };
        self.shards = new_shards(&self.plan)?;
        let Some(columns) = columns else {
            return Ok(());
        };
        let (keys, _) = self.plan.split_state(columns)?;
        let rows = columns.first().map_or(0, |c| c.len());
        let parts = self.router.route(keys, rows)?;
        let (plan, columns) = (Arc::clone(&self.plan), columns.to_vec());
        each_owned_shard(&self.shards, parts, move |shard, part| {
            shard.restore(&plan, &take_rows(&columns, &part)?)
        })?;
        Ok(())
    }

    /// Every group's row now, as one change (a restored view's rows).
    fn keyed_rows(&mut self) -> Result<Option<KeyedChange>> {
        let n = self.shards.len();
        let (mut touched, mut kept, mut batches) = (Vec::new(), Vec::new(), Vec::new());
        for (s, shard) in self.shards.iter().enumerate() {
            let (ids, states) = lock(shard).states.all()?;
            let aggregated = values(&self.plan, states.columns(), ids.len())?;
            let ids = view_ids(&ids, s, n)?;
            let (rows, ids_kept) = self.plan.post.apply_keyed(aggregated, ids.clone())?;
            touched.extend(ids);
            kept.extend(ids_kept);
            batches.push(rows);
        }
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let rows = datafusion::arrow::compute::concat_batches(&first.schema(), &batches)?;
        Ok(Some(KeyedChange {
            touched,
            ids: kept,
            rows,
        }))
    }

    fn set_parallelism(&mut self, n: usize) -> Result<usize> {
        // One global group (no key, or the constant key of an aggregate without GROUP
        // BY) has nothing to route by.
        let n = if self
            .plan
            .group_by
            .iter()
            .all(|e| e.downcast_ref::<Literal>().is_some())
        {
            1
        } else {
            n.max(1)
        };
        if n != self.shards.len() {
            let state = self.snapshot()?;
            Arc::make_mut(&mut self.plan).shards = n;
            self.router = Router::new(n);
            self.restore(&state)?;
        }
        Ok(n)
    }

    fn stages(&self) -> Vec<crate::operator::Stage> {
        self.plan.stages()
    }

    fn state_size(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = lock(s);
                s.groups.size() + s.states.size()
            })
            .sum()
    }
}

fn new_shards(plan: &GroupedPlan) -> Result<Vec<Arc<Mutex<Shard>>>> {
    (0..plan.shards.max(1))
        .map(|_| {
            Ok(Arc::new(Mutex::new(Shard {
                groups: new_group_values(plan.group_schema.clone(), &GroupOrdering::None)?,
                states: KeyedRows::new(state_schema(plan)?),
                row_groups: Vec::new(),
                ids: Vec::new(),
            })))
        })
        .collect()
}

impl Shard {
    /// Fold a batch's rows of this shard: the batch is aggregated on its own (O(its
    /// rows)), then merged with the earlier states of the groups it touched (O(those
    /// groups)). Their new states and aggregated rows, by shard index, for the caller
    /// to store once every shard has succeeded.
    fn fold(&mut self, plan: &GroupedPlan, prepared: &Prepared) -> Result<Touched> {
        // The batch's own groups, 0..k.
        let mut local = new_group_values(plan.group_schema.clone(), &GroupOrdering::None)?;
        local.intern(&prepared.keys, &mut self.row_groups)?;
        let k = local.len();
        let keys = local.emit(EmitTo::All)?;
        // Their ids among all groups, and the states of those seen before.
        self.groups.intern(&keys, &mut self.ids)?;
        let ids = group_ids(&self.ids)?;
        let (seen, earlier) = self.states.get(&ids)?;
        let (_, earlier) = plan.split_state(earlier.columns())?;
        // The earlier state, then the batch's rows, in each group.
        let mut states = keys;
        for ((acc, earlier), (values, filter)) in plan
            .accumulators()?
            .iter_mut()
            .zip(&earlier)
            .zip(&prepared.arguments)
        {
            if !seen.is_empty() {
                acc.merge_batch(earlier, &seen, k)?;
            }
            acc.update_batch(values, &self.row_groups, filter.as_ref(), k)?;
            states.extend(acc.state(EmitTo::All)?);
        }
        let aggregated = values(plan, &states, k)?;
        Ok(Touched {
            ids,
            states: RecordBatch::try_new(self.states.schema().clone(), states)?,
            aggregated,
        })
    }

    /// Hold exactly the groups of `columns` (in the form of [`state_schema`]).
    fn restore(&mut self, plan: &GroupedPlan, columns: &[ArrayRef]) -> Result<()> {
        let (keys, _) = plan.split_state(columns)?;
        self.groups.intern(keys, &mut self.ids)?;
        let ids = group_ids(&self.ids)?;
        let batch = RecordBatch::try_new(self.states.schema().clone(), columns.to_vec())?;
        self.states.set(&ids, batch)
    }
}

/// The view's ids of shard `s` of `n`'s groups `ids`.
fn view_ids(ids: &[u32], s: usize, n: usize) -> Result<Vec<u32>> {
    ids.iter()
        .map(|&g| {
            (g as usize)
                .checked_mul(n)
                .and_then(|id| u32::try_from(id + s).ok())
                .ok_or_else(|| Error::Execution("more than 4 billion groups".into()))
        })
        .collect()
}

/// Group indices as the ids of [`KeyedRows`].
fn group_ids(indices: &[usize]) -> Result<Vec<u32>> {
    indices
        .iter()
        .map(|&g| u32::try_from(g))
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|_| Error::Execution("more than 4 billion groups".into()))
}

/// The aggregate's rows (keys, then final values) of `n` groups in the form of
/// [`state_schema`] (reading a value drains an accumulator, so a fresh one merges the
/// state first).
fn values(plan: &GroupedPlan, states: &[ArrayRef], n: usize) -> Result<RecordBatch> {
    let (keys, states) = plan.split_state(states)?;
    let all: Vec<usize> = (0..n).collect();
    let mut columns = keys.to_vec();
    for (mut acc, state) in plan.accumulators()?.into_iter().zip(&states) {
        acc.merge_batch(state, &all, n)?;
        columns.push(acc.evaluate(EmitTo::All)?);
    }
    Ok(RecordBatch::try_new(
        plan.aggregate_schema.clone(),
        columns,
    )?)
}

/// The group keys, then each aggregate's state columns, named by position (as in a
/// checkpoint).
fn state_schema(plan: &GroupedPlan) -> Result<SchemaRef> {
    let (types, _) = plan.state_types()?;
    Ok(Arc::new(Schema::new(
        types
            .into_iter()
            .enumerate()
            .map(|(i, t)| Field::new(format!("c{i}"), t, true))
            .collect::<Vec<_>>(),
    )))
}
