//! `SESSION(src, time_col, gap)`: per key, a session is a run of rows whose event times
//! are less than `gap` apart; it spans from its first row's time to its last row's time
//! plus the gap (`window_start`, `window_end`). The keys are the query's GROUP BY columns
//! besides the window columns.
//!
//! [`SessionQuery`] keeps each open session's rows, merging sessions that a row
//! bridges. Once the watermark reaches a session's end no row can extend it: the rows of
//! every such session get their window columns and the whole query runs over them in
//! batch mode (as [`super::per_window`] does for fixed windows). A row whose own
//! session `[t, t + gap)` ends at or before the watermark is late (as in Flink).
//! The open sessions live in keyed shards ([`shard`]), one per parallel instance.
//! [`plan`] plans a SESSION view.

pub mod plan;
mod shard;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::aggregate::shards::{Router, each_shard};
use crate::batch::{BatchQuery, WindowRows};
use crate::operator::{Collector, Operator, tagged};
use crate::{Error, Result};
use shard::{Ended, Sessions, key_arrays};

/// Ended sessions wait for one batch evaluation until this much event time (ms) has
/// passed since the last one, or this many rows are waiting: sessions end all the time,
/// and one DataFusion run per watermark step would cost more than the sessions.
const EVALUATE_EVERY_MS: i64 = 1_000;
const EVALUATE_AT_ROWS: usize = 65_536;

/// The schema metadata that marks a snapshot's batches other than open sessions (whose
/// batches carry none, as in checkpoints written before ended sessions were marked).
const PART_KEY: &str = "weir.session";
const ENDED: &str = "ended";
const EVALUATED_AT: &str = "evaluated-at";

/// What a [`SessionQuery`] runs.
pub struct SessionPlan {
    /// In time units (ms).
    pub gap: i64,
    /// Index of the event-time column among the kept source columns.
    pub time_column: usize,
    /// Indices of the key columns among the kept source columns.
    pub key_columns: Vec<usize>,
    /// The source columns the query reads, when not all.
    pub source_columns: Option<Vec<usize>>,
    /// The kept source columns plus `window_start` and `window_end`.
    pub windowed_schema: SchemaRef,
    /// The query; its scans read `table`.
    pub query: BatchQuery,
    pub table: Arc<WindowRows>,
}

/// The running operator of a SESSION view. Its open sessions are kept in keyed shards
/// (one, or one per parallel instance, rows routed by a hash of the session key), each
/// worked on by its own core; the sessions that end are evaluated together, in the
/// order of their start and key whatever the shards, so a run gives the same rows in
/// the same order at any parallelism.
pub struct SessionQuery {
    plan: SessionPlan,
    router: Router,
    shards: Vec<Sessions>,
    /// Ended sessions (one batch each, with window columns) not yet evaluated.
    ended: Vec<RecordBatch>,
    ended_rows: usize,
    /// The watermark of the last evaluation.
    evaluated_at: Option<i64>,
}

impl SessionQuery {
    pub fn new(plan: SessionPlan) -> Result<Self> {
        Ok(Self {
            router: Router::new(1),
            shards: vec![Sessions::new(&plan)?],
            plan,
            ended: Vec::new(),
            ended_rows: 0,
            evaluated_at: None,
        })
    }
}

impl Operator for SessionQuery {
    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let whole = batch;
        let batch = match &self.plan.source_columns {
            Some(columns) => batch.project(columns)?,
            None => batch.clone(),
        };
        let plan = &self.plan;
        let mut late = if self.shards.len() == 1 {
            self.shards[0].add_rows(plan, batch, watermark)?
        } else {
            let parts = self
                .router
                .route(&key_arrays(plan, &batch), batch.num_rows())?;
            let parts = parts
                .into_iter()
                .map(|rows| Ok((take_record_batch(&batch, &rows)?, rows)))
                .collect::<Result<Vec<_>>>()?;
            // Each shard's late rows, as rows of the whole batch.
            let late = each_shard(&mut self.shards, parts, |shard, (rows, numbers)| {
                let late = shard.add_rows(plan, rows, watermark)?;
                Ok(late
                    .into_iter()
                    .map(|i| numbers.value(i as usize))
                    .collect::<Vec<u32>>())
            })?;
            late.concat()
        };
        if !late.is_empty() {
            late.sort_unstable();
            out.late(take_record_batch(whole, &UInt32Array::from(late))?);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let plan = &self.plan;
        let shards = self.shards.len();
        let ending = self.shards.iter().any(|s| s.may_end_by(watermark));
        let closed = if ending {
            each_shard(&mut self.shards, vec![(); shards], |s, ()| {
                s.close(plan, watermark)
            })?
        } else {
            Vec::new()
        };
        let mut closed: Vec<Ended> = closed.into_iter().flatten().collect();
        // In a fixed order (not the hash map's, nor the shards'), so a replay, at any
        // parallelism, emits the same rows in the same order.
        closed.sort_unstable_by(|a, b| (a.start, &a.key).cmp(&(b.start, &b.key)));
        for ended in closed {
            self.ended_rows += ended.rows.num_rows();
            self.ended.push(ended.rows);
        }
        let due = watermark == i64::MAX
            || self.ended_rows >= EVALUATE_AT_ROWS
            || self
                .evaluated_at
                .is_none_or(|at| watermark.saturating_sub(at) >= EVALUATE_EVERY_MS);
        if self.ended.is_empty() || !due {
            return Ok(());
        }
        self.evaluated_at = Some(watermark);
        self.ended_rows = 0;
        let rows: Vec<RecordBatch> = std::mem::take(&mut self.ended);
        match self.plan.query.run(&self.plan.table, rows.clone()) {
            Ok(result) => result.into_iter().for_each(|b| out.emit(b)),
            Err(e) => out.failed(
                concat_batches(&self.plan.windowed_schema, &rows)?,
                format!("closed sessions could not be evaluated: {e}"),
            ),
        }
        Ok(())
    }

    /// One batch per open session (its rows with their window columns), one per ended
    /// session not evaluated yet (marked so), and the watermark of the last evaluation.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(shard.snapshot(&self.plan)?);
        }
        let ended = tagged(&self.plan.windowed_schema, PART_KEY, ENDED);
        for batch in &self.ended {
            out.push(batch.clone().with_schema(ended.clone())?);
        }
        if let Some(at) = self.evaluated_at {
            let schema = Arc::new(Schema::new(vec![Field::new("at", DataType::Int64, false)]));
            out.push(RecordBatch::try_new(
                tagged(&schema, PART_KEY, EVALUATED_AT),
                vec![Arc::new(Int64Array::from(vec![at]))],
            )?);
        }
        Ok(out)
    }

    /// Each open session of a snapshot into the shard of its key (at this parallelism),
    /// each ended one back among the ended: it stays ended, whatever rows come next.
    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.shards = (0..self.router.shards())
            .map(|_| Sessions::new(&self.plan))
            .collect::<Result<_>>()?;
        self.ended.clear();
        self.ended_rows = 0;
        self.evaluated_at = None;
        let width = self.plan.windowed_schema.fields().len();
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let part = batch.schema().metadata().get(PART_KEY).cloned();
            if part.as_deref() == Some(EVALUATED_AT) {
                self.evaluated_at = batch
                    .column(0)
                    .as_primitive_opt::<Int64Type>()
                    .map(|a| a.value(0));
                continue;
            }
            if batch.num_columns() != width {
                return Err(Error::Execution(
                    "the checkpointed sessions have other columns than this query".into(),
                ));
            }
            let batch =
                RecordBatch::try_new(self.plan.windowed_schema.clone(), batch.columns().to_vec())?;
            if part.as_deref() == Some(ENDED) {
                self.ended_rows += batch.num_rows();
                self.ended.push(batch);
                continue;
            }
            let shard = if self.shards.len() == 1 {
                0
            } else {
                let keys: Vec<ArrayRef> = key_arrays(&self.plan, &batch)
                    .iter()
                    .map(|k| k.slice(0, 1))
                    .collect();
                let parts = self.router.route(&keys, 1)?;
                parts.iter().position(|p| !p.is_empty()).unwrap_or(0)
            };
            self.shards[shard].restore(&self.plan, batch)?;
        }
        Ok(())
    }

    /// Sessions are kept per key: `n` shards unless the view has no session key (one
    /// session stream), which runs serially.
    fn set_parallelism(&mut self, n: usize) -> Result<usize> {
        let n = if self.plan.key_columns.is_empty() {
            1
        } else {
            n.max(1)
        };
        if n != self.shards.len() {
            let state = self.snapshot()?;
            self.router = Router::new(n);
            self.restore(&state)?;
        }
        Ok(n)
    }

    fn state_size(&self) -> usize {
        let held: usize = self.shards.iter().map(Sessions::held_bytes).sum();
        let ended: usize = self
            .ended
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        held + ended
    }

    fn open_windows(&self) -> usize {
        self.shards
            .iter()
            .map(Sessions::open_sessions)
            .sum::<usize>()
            + self.ended.len()
    }
}
