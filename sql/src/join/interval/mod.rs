//! Interval joins of two sources: rows of each are matched with rows of the other whose
//! event time lies within fixed bounds of theirs, e.g.
//! `b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '2' SECOND`, or within a
//! declared `state_ttl` of each other for a join without such bounds (Nexmark q3).
//!
//! Each input keeps its rows that may still find a partner. A batch of one input is
//! joined with the other's kept rows by DataFusion in batch mode (the view's own query,
//! which only filters and projects around one inner join, so the result is the union of
//! these per-batch results), and then kept itself: every matching pair is produced once,
//! when the later of its two rows arrives. The watermark (the minimum of both inputs')
//! frees rows that no future row can match; rows behind it are late. State is the rows
//! of the bounds' span of event time, never the history.
//!
//! [`plan`] plans such a join; [`bounds`] reads the time bounds off its condition;
//! [`rewrite`] checks its shape and reshapes its plan to read each side's kept rows;
//! [`aggregate`] runs an aggregate over the join's rows, closing each group once the
//! join has freed the rows it could still match.

pub mod aggregate;
pub mod bounds;
pub mod plan;
pub mod rewrite;

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::compute::kernels::cmp::{gt_eq, lt};
use datafusion::arrow::compute::{filter_record_batch, max, min};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::aggregate::shards::each_shard;
use crate::batch::{BatchQuery, WindowRows};
use crate::join::keyed::{JoinKeys, KeyExprs};
use crate::operator::{Collector, Operator, tag_input, tagged_input};
use crate::window::event_times;
use crate::{Error, Result};

pub use aggregate::{JoinAggregate, JoinAggregatePlan};
pub(crate) use plan::plan_interval_join;

/// One input of the join. Its rows are filtered and projected by its side of the query
/// (`side`, reading `source`) as they arrive, and only what the join reads is kept (in
/// `kept`, the table the join's query reads this side through).
pub struct JoinInput {
    pub source: Arc<WindowRows>,
    /// The source's event-time column, for late rows.
    pub source_time: usize,
    pub side: BatchQuery,
    pub kept: Arc<WindowRows>,
    pub kept_schema: SchemaRef,
    /// The event-time column among the kept columns.
    pub kept_time: usize,
}

/// What an [`IntervalJoin`] runs: `t0 - t1` (input 0's event time minus input 1's, in
/// ms) lies in `bounds` for every pair the query can match. `plan` reads each input's
/// kept rows.
pub struct IntervalJoinPlan {
    pub query: BatchQuery,
    pub inputs: [JoinInput; 2],
    pub bounds: (i64, i64),
    /// Each input's side of the join's equality key, over its kept rows (`None`: the
    /// join has none, and runs in one instance).
    pub keys: Option<[KeyExprs; 2]>,
}

/// The running operator: the rows of each input that may still find a partner, in
/// keyed instances (one unless [`Operator::set_parallelism`] says more).
pub struct IntervalJoin {
    plan: IntervalJoinPlan,
    instances: Vec<Instance>,
    /// Routes kept rows to the instances.
    keys: Option<JoinKeys>,
    /// The latest watermark rows were freed at (see `process_input`).
    freed_at: Option<i64>,
}

/// One keyed instance of the join: its copy of the query, the tables it reads each
/// input's kept rows through, and the kept rows.
struct Instance {
    query: BatchQuery,
    tables: [Arc<WindowRows>; 2],
    kept: [Vec<RecordBatch>; 2],
    /// The earliest and latest time of each kept batch, so a watermark touches only
    /// the batches it frees rows of.
    ranges: [Vec<(i64, i64)>; 2],
}

impl Instance {
    fn new(plan: &IntervalJoinPlan) -> Result<Self> {
        let (query, tables) = plan
            .query
            .with_own_tables(&[&plan.inputs[0].kept, &plan.inputs[1].kept])?;
        let [t0, t1]: [Arc<WindowRows>; 2] = tables
            .try_into()
            .map_err(|_| Error::Execution("an interval join reads two tables".into()))?;
        Ok(Self {
            query,
            tables: [t0, t1],
            kept: [Vec::new(), Vec::new()],
            ranges: [Vec::new(), Vec::new()],
        })
    }

    /// Keep rows of `input` (its event time in column `time`), with their earliest and
    /// latest time (rows without a time match nothing: dropped).
    fn keep(&mut self, input: usize, time: usize, rows: RecordBatch) -> Result<()> {
        let times = event_times(rows.column(time))?;
        if let (Some(lo), Some(hi)) = (min(times), max(times)) {
            self.kept[input].push(rows);
            self.ranges[input].push((lo, hi));
        }
        Ok(())
    }

    /// `rows` of `input` joined with the other input's kept rows.
    fn join(&self, input: usize, rows: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        if rows.is_empty() || self.kept[1 - input].iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        let other = &self.tables[1 - input];
        other.set(self.kept[1 - input].clone());
        let result = self.query.run(&self.tables[input], rows.to_vec());
        other.set(Vec::new());
        result
    }

    /// Free the rows of `input` (time in column `time`) before `from`.
    fn free(&mut self, input: usize, time: usize, from: i64) -> Result<()> {
        let batches = std::mem::take(&mut self.kept[input]);
        let ranges = std::mem::take(&mut self.ranges[input]);
        for (batch, (lo, hi)) in batches.into_iter().zip(ranges) {
            if lo >= from {
                self.kept[input].push(batch);
                self.ranges[input].push((lo, hi));
            } else if hi >= from {
                self.keep(input, time, split_at(&batch, time, from)?.0)?;
            }
        }
        Ok(())
    }
}

impl IntervalJoin {
    pub fn new(plan: IntervalJoinPlan) -> Result<Self> {
        Ok(Self {
            instances: vec![Instance::new(&plan)?],
            keys: plan.keys.clone().map(|k| JoinKeys::new(k.into())),
            plan,
            freed_at: None,
        })
    }

    /// New instances (as many as the keys route to) holding `kept`, each input's kept
    /// rows, routed by key: all or nothing.
    fn instances_with(&mut self, kept: [Vec<RecordBatch>; 2]) -> Result<Vec<Instance>> {
        let n = self.keys.as_ref().map_or(1, JoinKeys::instances);
        let mut instances = (0..n)
            .map(|_| Instance::new(&self.plan))
            .collect::<Result<Vec<_>>>()?;
        for (input, batches) in kept.into_iter().enumerate() {
            let time = self.plan.inputs[input].kept_time;
            for (instance, part) in instances.iter_mut().zip(self.route(input, batches)?) {
                for b in part {
                    instance.keep(input, time, b)?;
                }
            }
        }
        Ok(instances)
    }

    /// Each instance's rows of `rows` (kept rows of `input`), as many parts as the keys
    /// route to (one without keys).
    fn route(&mut self, input: usize, rows: Vec<RecordBatch>) -> Result<Vec<Vec<RecordBatch>>> {
        match &mut self.keys {
            Some(keys) => keys.route(input, rows),
            None => Ok(vec![rows]),
        }
    }

    /// The earliest event time a row of `input` must have to be kept at `watermark`:
    /// a future row of the other input is at or after the watermark.
    fn keep_from(&self, input: usize, watermark: i64) -> i64 {
        let (lo, hi) = self.plan.bounds;
        match input {
            // t0 matches t1 in [t0 - hi, t0 - lo]: needed while t0 - lo >= watermark.
            0 => watermark.saturating_add(lo),
            // t1 matches t0 in [t1 + lo, t1 + hi]: needed while t1 + hi >= watermark.
            _ => watermark.saturating_sub(hi),
        }
    }

    /// The instances' kept rows, per input.
    fn kept(&self) -> [Vec<RecordBatch>; 2] {
        let of = |input: usize| {
            self.instances
                .iter()
                .flat_map(|i| i.kept[input].iter().cloned())
                .collect()
        };
        [of(0), of(1)]
    }
}

/// The rows of `batch` whose time (column `time`) is at or after `from`, and the rest.
fn split_at(batch: &RecordBatch, time: usize, from: i64) -> Result<(RecordBatch, RecordBatch)> {
    let times = event_times(batch.column(time))?;
    let from = TimestampMillisecondArray::new_scalar(from);
    let keep: BooleanArray = gt_eq(times, &from)?;
    let drop: BooleanArray = lt(times, &from)?;
    // A NULL time can match nothing: neither kept nor late.
    Ok((
        filter_record_batch(batch, &keep)?,
        filter_record_batch(batch, &drop)?,
    ))
}

impl Operator for IntervalJoin {
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
        if input > 1 {
            return Err(Error::Execution(format!(
                "an interval join has two inputs, not input {input}"
            )));
        }
        let this = &self.plan.inputs[input];
        // The other input may have freed rows at a later watermark meanwhile.
        let watermark = watermark.max(self.freed_at);
        // Rows behind the watermark may have lost their partners: late, with every column.
        let rows = match watermark {
            Some(w) => {
                let (on_time, late) = split_at(batch, this.source_time, w)?;
                out.late(late);
                on_time
            }
            None => batch.clone(),
        };
        if rows.num_rows() == 0 {
            return Ok(());
        }
        // Only what the join reads is kept: the side's filters and projections first.
        let rows = this.side.run(&this.source, vec![rows])?;
        if rows.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let rows: Vec<RecordBatch> = rows
            .into_iter()
            .map(|b| RecordBatch::try_new(this.kept_schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        // Every instance joins first; only then are the rows kept, so a failing batch
        // leaves the state as it was.
        let time = this.kept_time;
        let parts = self.route(input, rows)?;
        let joined = each_shard(&mut self.instances, parts.clone(), |instance, part| {
            instance.join(input, &part)
        })?;
        joined.into_iter().flatten().for_each(|b| out.emit(b));
        for (instance, part) in self.instances.iter_mut().zip(parts) {
            for b in part {
                instance.keep(input, time, b)?;
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Collector) -> Result<()> {
        self.freed_at = self.freed_at.max(Some(watermark));
        let from = [self.keep_from(0, watermark), self.keep_from(1, watermark)];
        let time = [self.plan.inputs[0].kept_time, self.plan.inputs[1].kept_time];
        let parts = vec![(); self.instances.len()];
        each_shard(&mut self.instances, parts, |instance, ()| {
            (0..2).try_for_each(|input| instance.free(input, time[input], from[input]))
        })?;
        Ok(())
    }

    /// The kept rows of both inputs; input 1's carry their number in their schema.
    /// In the serial form whatever the instances: a checkpoint restores at any
    /// parallelism.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let [mut state, kept_1] = self.kept();
        let tagged = tag_input(&self.plan.inputs[1].kept_schema, 1);
        for b in &kept_1 {
            state.push(b.clone().with_schema(tagged.clone())?);
        }
        Ok(state)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let mut kept = [Vec::new(), Vec::new()];
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let input = tagged_input(batch)?;
            let schema = &self
                .plan
                .inputs
                .get(input)
                .ok_or_else(|| {
                    Error::Execution(format!("the checkpoint holds rows of join input {input}"))
                })?
                .kept_schema;
            if batch.schema().fields() != schema.fields() {
                return Err(Error::Execution(
                    "the checkpointed join rows have other columns than this query".into(),
                ));
            }
            kept[input].push(RecordBatch::try_new(
                schema.clone(),
                batch.columns().to_vec(),
            )?);
        }
        self.instances = self.instances_with(kept)?;
        Ok(())
    }

    /// `n` instances, the kept rows routed anew by key; one for a join without an
    /// equality key.
    fn set_parallelism(&mut self, n: usize) -> Result<usize> {
        let Some(before) = self.keys.as_ref().map(JoinKeys::instances) else {
            return Ok(1);
        };
        let n = n.max(1);
        let kept = self.kept();
        let set = |join: &mut Self, n: usize| {
            if let Some(keys) = &mut join.keys {
                keys.set_instances(n);
            }
        };
        set(self, n);
        match self.instances_with(kept) {
            Ok(instances) => {
                self.instances = instances;
                Ok(n)
            }
            Err(e) => {
                set(self, before);
                Err(e)
            }
        }
    }

    fn state_size(&self) -> usize {
        self.instances
            .iter()
            .flat_map(|i| i.kept.iter().flatten())
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }
}
