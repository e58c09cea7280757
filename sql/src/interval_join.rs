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

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::compute::kernels::cmp::{gt_eq, lt};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, max, min};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    BinaryExpr, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, Operator as Op, lit,
};

use crate::operator::{Collector, Operator};
use crate::per_window::{WindowRows, run_batch, tag_input, tagged, tagged_input};
use crate::window::event_times;
use crate::{Error, Result, unsupported};

/// One input of the join. Its rows are filtered and projected by its side of the query
/// (`side`, reading `source`) as they arrive, and only what the join reads is kept (in
/// `kept`, the table the join's query reads this side through).
pub struct JoinInput {
    pub source: Arc<WindowRows>,
    /// The source's event-time column, for late rows.
    pub source_time: usize,
    pub side: LogicalPlan,
    pub kept: Arc<WindowRows>,
    pub kept_schema: SchemaRef,
    /// The event-time column among the kept columns.
    pub kept_time: usize,
}

/// What an [`IntervalJoin`] runs: `t0 - t1` (input 0's event time minus input 1's, in
/// ms) lies in `bounds` for every pair the query can match. `plan` reads each input's
/// kept rows.
pub struct IntervalJoinPlan {
    pub plan: LogicalPlan,
    pub session: SessionState,
    pub inputs: [JoinInput; 2],
    pub bounds: (i64, i64),
}

/// The running operator: the rows of each input that may still find a partner.
pub struct IntervalJoin {
    plan: IntervalJoinPlan,
    kept: [Vec<RecordBatch>; 2],
    /// The earliest and latest time of each kept batch, so a watermark touches only
    /// the batches it frees rows of.
    ranges: [Vec<(i64, i64)>; 2],
    /// The latest watermark rows were freed at (see `process_input`).
    freed_at: Option<i64>,
}

impl IntervalJoin {
    pub fn new(plan: IntervalJoinPlan) -> Self {
        Self {
            plan,
            kept: [Vec::new(), Vec::new()],
            ranges: [Vec::new(), Vec::new()],
            freed_at: None,
        }
    }

    /// Keep rows of `input`, with their earliest and latest time (rows without a time
    /// match nothing: dropped).
    fn keep(&mut self, input: usize, rows: RecordBatch) -> Result<()> {
        let times = event_times(rows.column(self.plan.inputs[input].kept_time))?;
        if let (Some(lo), Some(hi)) = (min(times), max(times)) {
            self.kept[input].push(rows);
            self.ranges[input].push((lo, hi));
        }
        Ok(())
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
        let rows = run_batch(&this.side, &self.plan.session, &this.source, vec![rows])?;
        if rows.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let rows: Vec<RecordBatch> = rows
            .into_iter()
            .map(|b| RecordBatch::try_new(this.kept_schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        let other = &self.plan.inputs[1 - input];
        if self.kept[1 - input].iter().any(|b| b.num_rows() > 0) {
            other.kept.set(self.kept[1 - input].clone());
            let result = run_batch(
                &self.plan.plan,
                &self.plan.session,
                &this.kept,
                rows.clone(),
            );
            other.kept.set(Vec::new());
            result?.into_iter().for_each(|b| out.emit(b));
        }
        for b in rows {
            self.keep(input, b)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Collector) -> Result<()> {
        self.freed_at = self.freed_at.max(Some(watermark));
        for input in 0..2 {
            let from = self.keep_from(input, watermark);
            let time = self.plan.inputs[input].kept_time;
            let batches = std::mem::take(&mut self.kept[input]);
            let ranges = std::mem::take(&mut self.ranges[input]);
            for (batch, (lo, hi)) in batches.into_iter().zip(ranges) {
                if lo >= from {
                    self.kept[input].push(batch);
                    self.ranges[input].push((lo, hi));
                } else if hi >= from {
                    self.keep(input, split_at(&batch, time, from)?.0)?;
                }
            }
        }
        Ok(())
    }

    /// The kept rows of both inputs; input 1's carry their number in their schema.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut state = self.kept[0].clone();
        let tagged = tag_input(&self.plan.inputs[1].kept_schema, 1);
        for b in &self.kept[1] {
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
        self.kept = [Vec::new(), Vec::new()];
        self.ranges = [Vec::new(), Vec::new()];
        for (input, batches) in kept.into_iter().enumerate() {
            for b in batches {
                self.keep(input, b)?;
            }
        }
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.kept
            .iter()
            .flatten()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }
}

/// A time column of the join's inputs, plus a constant offset in ms.
struct TimeTerm {
    /// 0 or 1: the input whose time column it is.
    input: usize,
    offset_ms: i64,
}

/// The bounds on `t0 - t1` that the join condition `filter` states, as far as it does:
/// conjuncts comparing the two time columns (`time_of` names a column's input, when it
/// is that input's time column), each plus or minus a constant interval.
pub fn bounds_in(
    filter: Option<&Expr>,
    time_of: &dyn Fn(&Column) -> Option<usize>,
) -> (Option<i64>, Option<i64>) {
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    let mut conjuncts = Vec::new();
    if let Some(f) = filter {
        split_and(f, &mut conjuncts);
    }
    for c in conjuncts {
        let mut comparisons = Vec::new();
        match c {
            Expr::Between(b) if !b.negated => {
                comparisons.push((b.expr.as_ref(), Op::GtEq, b.low.as_ref()));
                comparisons.push((b.expr.as_ref(), Op::LtEq, b.high.as_ref()));
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                comparisons.push((left.as_ref(), *op, right.as_ref()));
            }
            _ => {}
        }
        for (l, op, r) in comparisons {
            let (Some(a), Some(b)) = (time_term(l, time_of), time_term(r, time_of)) else {
                continue;
            };
            if a.input == b.input {
                continue;
            }
            // a.t + a.off  op  b.t + b.off, as t0 - t1 op v.
            let (op, v) = if a.input == 0 {
                (op, b.offset_ms.saturating_sub(a.offset_ms))
            } else {
                let Some(flipped) = op.swap() else { continue };
                (flipped, a.offset_ms.saturating_sub(b.offset_ms))
            };
            match op {
                Op::Lt => hi = Some(hi.map_or(v.saturating_sub(1), |h| h.min(v.saturating_sub(1)))),
                Op::LtEq => hi = Some(hi.map_or(v, |h| h.min(v))),
                Op::Gt => lo = Some(lo.map_or(v.saturating_add(1), |l| l.max(v.saturating_add(1)))),
                Op::GtEq => lo = Some(lo.map_or(v, |l| l.max(v))),
                Op::Eq => {
                    lo = Some(lo.map_or(v, |l| l.max(v)));
                    hi = Some(hi.map_or(v, |h| h.min(v)));
                }
                _ => {}
            }
        }
    }
    (lo, hi)
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Op::And,
            right,
        }) => {
            split_and(left, out);
            split_and(right, out);
        }
        other => out.push(other),
    }
}

fn time_term(e: &Expr, time_of: &dyn Fn(&Column) -> Option<usize>) -> Option<TimeTerm> {
    match e {
        Expr::Column(c) => time_of(c).map(|input| TimeTerm {
            input,
            offset_ms: 0,
        }),
        // A cast to a coarser type (a DATE, whole seconds) would make the bounds wrong.
        Expr::Cast(c)
            if matches!(
                c.field.data_type(),
                DataType::Timestamp(
                    TimeUnit::Millisecond | TimeUnit::Microsecond | TimeUnit::Nanosecond,
                    _
                )
            ) =>
        {
            time_term(&c.expr, time_of)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let t = time_term(left, time_of)?;
            let ms = interval_ms(right)?;
            match op {
                Op::Plus => Some(TimeTerm {
                    offset_ms: t.offset_ms.checked_add(ms)?,
                    ..t
                }),
                Op::Minus => Some(TimeTerm {
                    offset_ms: t.offset_ms.checked_sub(ms)?,
                    ..t
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A constant interval or duration literal in ms (no months: their length varies).
fn interval_ms(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::IntervalDayTime(Some(d)) => {
            Some(i64::from(d.days) * 86_400_000 + i64::from(d.milliseconds))
        }
        // Bounds are whole milliseconds, as event times are.
        ScalarValue::IntervalMonthDayNano(Some(d))
            if d.months == 0 && d.nanoseconds % 1_000_000 == 0 =>
        {
            i64::from(d.days)
                .checked_mul(86_400_000)?
                .checked_add(d.nanoseconds / 1_000_000)
        }
        ScalarValue::DurationMillisecond(Some(ms)) => Some(*ms),
        ScalarValue::DurationSecond(Some(s)) => s.checked_mul(1_000),
        _ => None,
    }
}

/// Check that `plan` only filters and projects around one inner join of two sources
/// that each side only filters and projects: then the query over the union of batches
/// is the union of its results per batch.
pub fn check_shape(plan: &LogicalPlan) -> Result<()> {
    fn below(plan: &LogicalPlan) -> Result<()> {
        match plan {
            LogicalPlan::TableScan(_) => Ok(()),
            LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
                plan.inputs().into_iter().try_for_each(below)
            }
            other => Err(unsupported!(
                "{} inside an interval join of two sources is not supported: each side may only filter and project its source",
                other.display()
            )),
        }
    }
    match plan {
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            plan.inputs().into_iter().try_for_each(check_shape)
        }
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            below(&j.left)?;
            below(&j.right)
        }
        LogicalPlan::Join(j) => Err(unsupported!(
            "{} joins of two sources are not supported: only inner joins, whose matches are final",
            j.join_type
        )),
        other => Err(unsupported!(
            "{} over a join of two sources without a window is not supported: an interval join \
             may only be filtered and projected; aggregate it per window instead \
             (join TUMBLE(a, ...) with TUMBLE(b, ...) on window_start)",
            other.display()
        )),
    }
}

/// `plan` with its join's condition also requiring `|t_left - t_right| <= ttl_ms`: a
/// join without time bounds keeps rows for a `state_ttl`, and the condition makes that
/// exact rather than a matter of when rows happen to be freed.
pub fn with_ttl(
    plan: LogicalPlan,
    left_time: Column,
    right_time: Column,
    ttl_ms: i64,
) -> Result<LogicalPlan> {
    // A duration, not an interval: timestamp plus duration is plain integer arithmetic.
    let within = |ms: i64| lit(ScalarValue::DurationMillisecond(Some(ms)));
    let condition = Expr::Column(left_time.clone())
        .gt_eq(Expr::Column(right_time.clone()) - within(ttl_ms))
        .and(Expr::Column(left_time).lt_eq(Expr::Column(right_time) + within(ttl_ms)));
    let plan = plan.transform_up(|node| match node {
        LogicalPlan::Join(mut j) => {
            j.filter = Some(match j.filter.take() {
                Some(f) => f.and(condition.clone()),
                None => condition.clone(),
            });
            Ok(Transformed::yes(LogicalPlan::Join(j)))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(plan.data)
}

/// One side of the join as it is kept: the side's own plan, the table of its kept rows
/// and their schema.
pub type KeptSide = (LogicalPlan, Arc<WindowRows>, SchemaRef);

/// Replace each side of the join in `plan` by a scan of the rows kept for it: the
/// side's output, computed as rows arrive. Returns the plan and, per side (left, right),
/// the side's own plan, the kept table and its schema.
pub fn read_kept_rows(plan: LogicalPlan) -> Result<(LogicalPlan, [KeptSide; 2])> {
    let mut sides = Vec::with_capacity(2);
    let plan = plan
        .transform_up(|node| match node {
            LogicalPlan::Join(mut j) => {
                for side in [&mut j.left, &mut j.right] {
                    let (scan, table, schema) = kept_scan(side)
                        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                    sides.push((side.as_ref().clone(), table, schema));
                    *side = Arc::new(scan);
                }
                Ok(Transformed::yes(LogicalPlan::Join(j)))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let mut sides = sides.into_iter();
    match (sides.next(), sides.next(), sides.next()) {
        (Some(left), Some(right), None) => Ok((plan, [left, right])),
        _ => Err(unsupported!("an interval join has exactly one join")),
    }
}

/// A scan of a new table of `side`'s rows that yields exactly `side`'s schema (the same
/// qualified names), so the expressions above it still resolve.
fn kept_scan(side: &LogicalPlan) -> Result<(LogicalPlan, Arc<WindowRows>, SchemaRef)> {
    let fields: Vec<datafusion::arrow::datatypes::Field> = side
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}")))
        .collect();
    let schema: SchemaRef = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    let table = Arc::new(WindowRows::new(schema.clone()));
    let exprs: Vec<Expr> = side
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (qualifier, f))| {
            Expr::Column(Column::new(Some("kept"), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), f.name())
        })
        .collect();
    let scan = LogicalPlanBuilder::scan(
        "kept",
        datafusion::datasource::provider_as_source(table.clone()),
        None,
    )?
    .project(exprs)?
    .build()?;
    Ok((scan, table, schema))
}

/// Whether `side` passes its source's column `time` through unchanged (projections may
/// keep it, not compute it): the bounds and the freeing of rows read that column.
pub fn passes_time_through(side: &LogicalPlan, time: &str) -> bool {
    match side {
        LogicalPlan::Projection(p) => {
            p.expr
                .iter()
                .zip(p.schema.fields())
                .filter(|(_, f)| f.name() == time)
                .all(|(e, _)| matches!(e.clone().unalias(), Expr::Column(c) if c.name == time))
                && passes_time_through(&p.input, time)
        }
        other => other
            .inputs()
            .into_iter()
            .all(|i| passes_time_through(i, time)),
    }
}

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
    pub aggregate: LogicalPlan,
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
        let finals = match run_batch(
            &self.plan.aggregate,
            &self.join.plan.session,
            &self.plan.joined,
            closed.clone(),
        ) {
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
        for batch in finals.iter().filter(|b| b.num_rows() > 0) {
            self.plan.then.process(batch, None, out)?;
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

/// The lowest aggregate above the join in `plan`, if any: the one over the join's rows.
pub fn aggregate_over_join(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::Aggregate> {
    let mut found = None;
    let mut node = plan;
    loop {
        if let LogicalPlan::Aggregate(a) = node {
            found = Some(a);
        }
        match node {
            LogicalPlan::Join(_) => return found,
            other => match other.inputs().as_slice() {
                [one] => node = one,
                _ => return None,
            },
        }
    }
}

/// `plan` with `node` (a part of it) replaced by a scan of a new table of its rows.
pub fn replace_with_scan(
    plan: LogicalPlan,
    node: &LogicalPlan,
) -> Result<(LogicalPlan, Arc<WindowRows>, SchemaRef)> {
    let (scan, table, schema) = kept_scan(node)?;
    let mut scan = Some(scan);
    let plan = plan
        .transform_down(|n| {
            if &n == node
                && let Some(scan) = scan.take()
            {
                return Ok(Transformed::new(
                    scan,
                    true,
                    datafusion::common::tree_node::TreeNodeRecursion::Jump,
                ));
            }
            Ok(Transformed::no(n))
        })?
        .data;
    Ok((plan, table, schema))
}

/// The column of `plan`'s output `column` as it leaves the join below, when every
/// projection on the way passes it through unchanged (qualified, not computed).
pub fn column_at_join(plan: &LogicalPlan, column: &Column) -> Option<Column> {
    column.relation.as_ref()?;
    match plan {
        LogicalPlan::Join(_) => Some(column.clone()),
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column(column).ok()?;
            match p.expr.get(i)?.clone().unalias() {
                Expr::Column(c) => column_at_join(&p.input, &c),
                _ => None,
            }
        }
        LogicalPlan::Filter(f) => column_at_join(&f.input, column),
        _ => None,
    }
}
