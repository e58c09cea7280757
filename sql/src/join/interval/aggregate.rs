//! An aggregate over an interval join (Nexmark q4's maximum bid per auction): each group
//! is final once the join can add no row to it, and then handed on once.

use std::sync::Arc;

use datafusion::arrow::compute::{concat_batches, min};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::execution_props::ExecutionProps;

use super::rewrite::replace_with_scan;
use super::{IntervalJoin, split_at};
use crate::aggregate::{KeyedChange, UpdatingAggregate};
use crate::batch::{BatchQuery, WindowRows};
use crate::operator::{Collector, Operator, tagged};
use crate::parser::CreateView;
use crate::planner::lower::{describe, linearize, lower_aggregate, lower_chain};
use crate::stateless::Stateless;
use crate::window::event_times;
use crate::{Error, Result, unsupported};

/// The schema metadata key that marks the parts of a [`JoinAggregate`] snapshot.
const PART_KEY: &str = "weir.part";

fn tag_part(batch: &RecordBatch, part: &str) -> Result<RecordBatch> {
    Ok(batch
        .clone()
        .with_schema(tagged(&batch.schema(), PART_KEY, part))?)
}

/// What a [`JoinAggregate`] runs besides its join: the aggregate over the join's rows
/// (grouped by one side's time column among others), and what the view does with the
/// aggregate's final rows.
pub struct JoinAggregatePlan {
    /// The side (input) whose time column the aggregate groups by.
    pub side: usize,
    /// That column among the join's output columns.
    pub close_column: usize,
    /// The aggregate, reading `joined`.
    pub aggregate: BatchQuery,
    pub joined: Arc<WindowRows>,
    pub joined_schema: SchemaRef,
    /// Run over the aggregate's final rows: an updating aggregate (Nexmark q4's average
    /// per category), or projections and filters.
    pub then: Box<dyn Operator>,
}

/// An aggregate over an interval join. A group that includes a side's time column is
/// final once the join has freed that side's rows of that time: no later row can join
/// them. The join's rows wait per group until then; each final group's row is handed
/// to `then` once, so an aggregate over it (an average of maximums) needs no retraction.
/// State: the join's kept rows and the rows of groups not yet final.
pub struct JoinAggregate {
    join: IntervalJoin,
    plan: JoinAggregatePlan,
    /// Joined rows of groups not final yet, with the earliest group time of each batch.
    pending: Vec<(RecordBatch, i64)>,
}

impl JoinAggregate {
    pub fn new(join: IntervalJoin, plan: JoinAggregatePlan) -> Self {
        Self {
            join,
            plan,
            pending: Vec::new(),
        }
    }

    /// Keep joined rows until their groups close, with the earliest group time among
    /// them (rows without a time belong to no group that can close: dropped).
    fn hold(&mut self, rows: RecordBatch) -> Result<()> {
        if let Some(earliest) = min(event_times(rows.column(self.plan.close_column))?) {
            self.pending.push((rows, earliest));
        }
        Ok(())
    }
}

impl Operator for JoinAggregate {
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
        let mut joined = Collector::default();
        self.join
            .process_input(input, batch, watermark, &mut joined)?;
        out.late.extend(joined.late);
        out.failed.extend(joined.failed);
        for b in joined.rows {
            let b = RecordBatch::try_new(self.plan.joined_schema.clone(), b.columns().to_vec())?;
            self.hold(b)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        self.join.on_watermark(watermark, out)?;
        // A group of time T is final once no new row of the side can have time T (T is
        // behind the watermark) and the side's rows of time T can match nothing new
        // (the join has freed them).
        let from = watermark.min(self.join.keep_from(self.plan.side, watermark));
        let mut closed = Vec::new();
        // Only batches with a group to close are split; the others wait as they are.
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, earliest)| *earliest < from);
        self.pending = waiting;
        for (batch, _) in ready {
            let (still, done) = split_at(&batch, self.plan.close_column, from)?;
            if done.num_rows() > 0 {
                closed.push(done);
            }
            self.hold(still)?;
        }
        if closed.is_empty() {
            return Ok(());
        }
        let finals = match self.plan.aggregate.run(&self.plan.joined, closed.clone()) {
            Ok(finals) => finals,
            // Keep the closed groups' rows rather than lose them.
            Err(e) => {
                let rows = concat_batches(&self.plan.joined_schema, closed.iter())?;
                out.failed(
                    rows,
                    format!("the closed groups could not be aggregated: {e}"),
                );
                return Ok(());
            }
        };
        // One call with every closed group: an updating `then` reports one change,
        // with the rows it replaced, per call.
        let Some(schema) = finals.first().map(RecordBatch::schema) else {
            return Ok(());
        };
        let finals = concat_batches(&schema, finals.iter())?;
        if finals.num_rows() > 0 {
            self.plan.then.process(&finals, None, out)?;
        }
        Ok(())
    }

    /// The join's state, the rows of groups not final yet, and `then`'s state, each
    /// part marked in its schema's metadata.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut state = self.join.snapshot()?;
        for (b, _) in &self.pending {
            state.push(tag_part(b, "pending")?);
        }
        for b in self.plan.then.snapshot()? {
            state.push(tag_part(&b, "then")?);
        }
        Ok(state)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let part = |b: &RecordBatch| b.schema().metadata().get(PART_KEY).cloned();
        let join: Vec<RecordBatch> = state
            .iter()
            .filter(|b| part(b).is_none())
            .cloned()
            .collect();
        let then: Vec<RecordBatch> = state
            .iter()
            .filter(|b| part(b).as_deref() == Some("then"))
            .map(|b| {
                let plain = Arc::new(
                    b.schema()
                        .as_ref()
                        .clone()
                        .with_metadata(Default::default()),
                );
                RecordBatch::try_new(plain, b.columns().to_vec())
            })
            .collect::<std::result::Result<_, _>>()?;
        let mut pending = Vec::new();
        for b in state
            .iter()
            .filter(|b| part(b).as_deref() == Some("pending"))
        {
            if b.schema().fields() != self.plan.joined_schema.fields() {
                return Err(Error::Execution(
                    "the checkpointed join rows have other columns than this query".into(),
                ));
            }
            pending.push(RecordBatch::try_new(
                self.plan.joined_schema.clone(),
                b.columns().to_vec(),
            )?);
        }
        self.join.restore(&join)?;
        self.plan.then.restore(&then)?;
        self.pending.clear();
        for b in pending {
            self.hold(b)?;
        }
        Ok(())
    }

    fn keyed_rows(&mut self) -> Result<Option<KeyedChange>> {
        self.plan.then.keyed_rows()
    }

    /// The join in `n` keyed instances (its EXPLAIN line says whether it has a key to
    /// route by) and `then` too, whose answer this is; the aggregate over the join's
    /// closed groups runs once per watermark over all of them.
    fn set_parallelism(&mut self, n: usize) -> Result<usize> {
        self.join.set_parallelism(n)?;
        self.plan.then.set_parallelism(n)
    }

    fn state_size(&self) -> usize {
        self.join.state_size()
            + self
                .pending
                .iter()
                .map(|(b, _)| b.get_array_memory_size())
                .sum::<usize>()
            + self.plan.then.state_size()
    }
}

/// What a view does with the final rows of an aggregate over an interval join: the
/// rest of its plan, over those rows, lowered like a view over one source (projections
/// and filters, or an updating aggregate such as an average of the maximums).
pub(crate) fn plan_after_join_aggregate(
    view: &CreateView,
    whole: &LogicalPlan,
    aggregate: &datafusion::logical_expr::Aggregate,
) -> Result<(Box<dyn Operator>, String)> {
    let (rest, _, _) =
        replace_with_scan(whole.clone(), &LogicalPlan::Aggregate(aggregate.clone()))?;
    let chain = linearize(&rest)?;
    if chain
        .iter()
        .any(|p| matches!(p, LogicalPlan::Sort(_) | LogicalPlan::Limit(_)))
    {
        return Err(unsupported!(
            "view {}: ORDER BY / LIMIT over a join's aggregate is not supported: use them in an ad hoc SELECT over the view",
            view.name
        ));
    }
    let props = ExecutionProps::new();
    match chain
        .iter()
        .filter(|p| matches!(p, LogicalPlan::Aggregate(_)))
        .count()
    {
        0 => Ok((
            Box::new(Stateless::new(lower_chain(&chain, &props)?)),
            format!("append: {}", describe(&chain)),
        )),
        1 => {
            let at = chain
                .iter()
                .position(|p| matches!(p, LogicalPlan::Aggregate(_)))
                .unwrap_or(0);
            let grouped = lower_aggregate(&chain, at, false, &props)?;
            let then = UpdatingAggregate::new(grouped)?;
            let description = format!("{}: {}", then.path(), describe(&chain));
            Ok((Box::new(then), description))
        }
        _ => Err(unsupported!(
            "view {}: more than two levels of aggregation over a join are not supported",
            view.name
        )),
    }
}
