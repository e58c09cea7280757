//! Keyed instances of a join: each input's rows routed by a hash of its side of the
//! join's equality key, so a row and every row it can match land in the same instance.
//! An instance then joins its own rows only, on its own core; what the instances emit
//! is put side by side. Checkpoints hold every instance's rows in the serial form,
//! routed again on restore, so a checkpoint restores at any parallelism.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{ExprSchemable, Join};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::aggregate::shards::{Router, each_shard};
use crate::operator::{Collector, Operator, tagged_input};
use crate::window::per_window::{PerWindowPlan, PerWindowQuery, closed_failure};
use crate::{Error, Result};

/// The expressions of one side of a join's equality key.
pub type KeyExprs = Vec<Arc<dyn PhysicalExpr>>;

/// What EXPLAIN's join line says of a join that can run in keyed instances.
pub const KEYED: &str = "keyed by the join's equality key";

/// Routes each input's rows to the join's instances by its side of the equality key.
pub struct JoinKeys {
    /// Per input, its side of the key, over the rows routed.
    exprs: Vec<KeyExprs>,
    router: Router,
}

impl JoinKeys {
    /// Keys `exprs` (one list per input, the same types at each place) for one instance.
    pub fn new(exprs: Vec<KeyExprs>) -> Self {
        Self {
            exprs,
            router: Router::new(1),
        }
    }

    pub fn set_instances(&mut self, n: usize) {
        self.router = Router::new(n);
    }

    pub fn instances(&self) -> usize {
        self.router.shards()
    }

    /// Each instance's rows of `batch` (a batch of input `input`), as row indices.
    pub fn route_rows(&mut self, input: usize, batch: &RecordBatch) -> Result<Vec<UInt32Array>> {
        let keys: Vec<ArrayRef> = self.exprs[input]
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<datafusion::error::Result<_>>()?;
        self.router.route(&keys, batch.num_rows())
    }

    /// Each instance's rows of `rows` (rows of input `input`), in order.
    pub fn route(&mut self, input: usize, rows: Vec<RecordBatch>) -> Result<Vec<Vec<RecordBatch>>> {
        let n = self.router.shards();
        if n == 1 {
            return Ok(vec![rows]);
        }
        let mut parts = vec![Vec::new(); n];
        for batch in rows.iter().filter(|b| b.num_rows() > 0) {
            for (part, rows) in parts.iter_mut().zip(self.route_rows(input, batch)?) {
                if rows.len() == batch.num_rows() {
                    part.push(batch.clone());
                } else if !rows.is_empty() {
                    part.push(take_record_batch(batch, &rows)?);
                }
            }
        }
        Ok(parts)
    }
}

/// Each side's part of `join`'s equality key (left, right), as expressions over that
/// side's output, when it has one and both sides' parts have the same types (equal
/// values then hash alike). `None`: the join cannot be split by key.
pub fn equality_keys(join: &Join) -> Option<[KeyExprs; 2]> {
    if join.on.is_empty() {
        return None;
    }
    let props = ExecutionProps::new();
    let pctx = PhysicalPlanningContext::default();
    let (left, right) = (join.left.schema(), join.right.schema());
    let mut keys = [Vec::new(), Vec::new()];
    for (l, r) in &join.on {
        if l.get_type(left).ok()? != r.get_type(right).ok()? {
            return None;
        }
        keys[0].push(create_physical_expr(l, left, &props, &pctx).ok()?);
        keys[1].push(create_physical_expr(r, right, &props, &pctx).ok()?);
    }
    Some(keys)
}

/// A join of sources read through the same window, in keyed instances: each instance
/// holds the open windows' rows of its keys and runs the query over them as a window
/// closes. Every instance sees every watermark, so windows close together.
pub struct KeyedWindowJoin {
    /// What every instance runs; never run itself, only copied.
    plan: PerWindowPlan,
    instances: Vec<PerWindowQuery>,
    /// Routes each input's rows as they arrive (in the source's columns).
    arriving: JoinKeys,
    /// Routes each input's held rows (in its windowed columns), on a restore.
    held: JoinKeys,
}

impl KeyedWindowJoin {
    pub fn new(plan: PerWindowPlan, arriving: Vec<KeyExprs>, held: Vec<KeyExprs>) -> Result<Self> {
        Ok(Self {
            instances: vec![PerWindowQuery::new(plan.copy()?)],
            plan,
            arriving: JoinKeys::new(arriving),
            held: JoinKeys::new(held),
        })
    }

    /// New instances (as many as `held` routes to) holding `state`, a snapshot's rows,
    /// each routed by key: all or nothing.
    fn restored(&mut self, state: &[RecordBatch]) -> Result<Vec<PerWindowQuery>> {
        let n = self.held.instances();
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let input = tagged_input(batch)?;
            if input > self.plan.others.len() {
                return Err(Error::Execution(format!(
                    "the checkpoint holds rows of input {input}; this query has {} inputs",
                    self.plan.others.len() + 1
                )));
            }
            for (part, rows) in parts
                .iter_mut()
                .zip(self.held.route(input, vec![batch.clone()])?)
            {
                part.extend(rows);
            }
        }
        parts
            .into_iter()
            .map(|part| {
                let mut instance = PerWindowQuery::new(self.plan.copy()?);
                instance.restore(&part)?;
                Ok(instance)
            })
            .collect()
    }
}

impl Operator for KeyedWindowJoin {
    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        self.process_input(0, batch, watermark, out)
    }

    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        if self.instances.len() == 1 {
            return self.instances[0].process_input(input, batch, watermark, out);
        }
        if input > self.plan.others.len() {
            return Err(Error::Execution(format!("the query has no input {input}")));
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // Routed by the whole rows' keys; each instance gets only the columns it keeps.
        let kept = self.instances[0].kept(input, batch)?;
        let parts = self
            .arriving
            .route_rows(input, batch)?
            .into_iter()
            .map(|rows| {
                let part = match rows.len() == kept.num_rows() {
                    true => kept.clone(),
                    false => take_record_batch(&kept, &rows)?,
                };
                Ok((part, rows))
            })
            .collect::<Result<Vec<_>>>()?;
        let late = each_shard(&mut self.instances, parts, |instance, (part, rows)| {
            let late = instance.hold_kept(input, &part, watermark)?;
            // As rows of the batch received.
            Ok(late
                .iter()
                .flat_map(|l| l.values().iter().map(|&i| rows.value(i as usize)))
                .collect::<Vec<u32>>())
        })?;
        let mut late = late.concat();
        if !late.is_empty() {
            late.sort_unstable();
            // Late rows go to the dead-letter store whole, with every source column.
            out.late(take_record_batch(batch, &UInt32Array::from(late))?);
        }
        Ok(())
    }

    /// Each closed window whole, as run serially: its rows from every instance, in the
    /// order of the windows' starts; a window that fails in any instance fails whole,
    /// every instance's rows of it dead-lettered and none of its rows emitted.
    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let parts = vec![(); self.instances.len()];
        let closed = each_shard(&mut self.instances, parts, |instance, ()| {
            Ok(instance.close(watermark))
        })?;
        // Per window: its input-0 rows, its answers, its first failure.
        type Window = (Vec<RecordBatch>, Vec<RecordBatch>, Option<Error>);
        let mut windows: BTreeMap<i64, Window> = BTreeMap::new();
        for window in closed.into_iter().flatten() {
            let (rows, results, failure) = windows.entry(window.start).or_default();
            rows.extend(window.rows);
            match window.result {
                Ok(r) => results.extend(r),
                Err(e) => *failure = failure.take().or(Some(e)),
            }
        }
        for (start, (rows, results, failure)) in windows {
            match failure {
                None => results.into_iter().for_each(|b| out.emit(b)),
                Some(e) => out.failed(
                    concat_batches(&self.plan.windowed_schema, &rows)?,
                    closed_failure(start, &e),
                ),
            }
        }
        Ok(())
    }

    /// The instances' held rows together, in the serial form: a checkpoint restores at
    /// any parallelism.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut state = Vec::new();
        for instance in &mut self.instances {
            state.extend(instance.snapshot()?);
        }
        Ok(state)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.instances = self.restored(state)?;
        Ok(())
    }

    fn set_parallelism(&mut self, n: usize) -> Result<usize> {
        let n = n.max(1);
        let state = self.snapshot()?;
        let before = self.held.instances();
        self.held.set_instances(n);
        match self.restored(&state) {
            Ok(mut instances) => {
                // Every instance saw every watermark: none may open a closed window.
                let closed_at = self
                    .instances
                    .iter()
                    .filter_map(PerWindowQuery::closed_at)
                    .max();
                instances
                    .iter_mut()
                    .for_each(|i| i.carry_closed_at(closed_at));
                self.instances = instances;
                self.arriving.set_instances(n);
                Ok(n)
            }
            Err(e) => {
                self.held.set_instances(before);
                Err(e)
            }
        }
    }

    fn state_size(&self) -> usize {
        self.instances.iter().map(Operator::state_size).sum()
    }

    /// The most any instance holds: the instances hold rows of the same times, so
    /// mostly of the same windows (counted in one pass; this runs after every batch).
    fn open_windows(&self) -> usize {
        self.instances
            .iter()
            .map(Operator::open_windows)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::col;

    use super::*;

    /// Rows of both inputs with equal keys meet in one instance, whatever other
    /// columns they carry, and every row goes somewhere, in order.
    #[test]
    fn equal_keys_of_both_inputs_meet_in_one_instance() -> Result<()> {
        let left = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let right = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("seller", DataType::Int64, true),
        ]));
        let ids: Vec<i64> = (0..500).map(|i| i % 61).collect();
        let l = RecordBatch::try_new(
            left.clone(),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("p{i}")),
                )),
            ],
        )?;
        let r = RecordBatch::try_new(
            right.clone(),
            vec![
                Arc::new(Int64Array::from((0..500).collect::<Vec<i64>>())),
                Arc::new(Int64Array::from(
                    ids.iter().rev().copied().collect::<Vec<_>>(),
                )),
            ],
        )?;
        let mut keys = JoinKeys::new(vec![vec![col("id", &left)?], vec![col("seller", &right)?]]);
        keys.set_instances(3);
        let (lp, rp) = (keys.route(0, vec![l])?, keys.route(1, vec![r])?);
        let values = |b: &RecordBatch, c: usize| -> Vec<i64> {
            b.column(c)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("ints")
                .values()
                .to_vec()
        };
        let mut instance_of = std::collections::HashMap::new();
        let mut rows = 0;
        for (n, (lp, rp)) in lp.iter().zip(&rp).enumerate() {
            for b in lp {
                rows += b.num_rows();
                for id in values(b, 0) {
                    assert_eq!(*instance_of.entry(id).or_insert(n), n);
                }
            }
            for b in rp {
                rows += b.num_rows();
                for seller in values(b, 1) {
                    assert_eq!(
                        *instance_of.entry(seller).or_insert(n),
                        n,
                        "seller {seller}"
                    );
                }
                // Order within an instance is kept.
                assert!(values(b, 0).windows(2).all(|w| w[0] < w[1]));
            }
        }
        assert_eq!(rows, 1000);
        assert_eq!(
            instance_of
                .values()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
        Ok(())
    }
}
