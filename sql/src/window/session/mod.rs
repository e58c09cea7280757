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
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{concat_batches, interleave_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::aggregate::shards::{Router, each_owned_shard};
use crate::batch::{BatchQuery, WindowRows};
use crate::operator::{Collector, Operator, tagged};
use crate::parallel::lock;
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
/// How many sessions a snapshot's batch of ended sessions holds.
const SESSIONS: &str = "weir.sessions";

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
    plan: Arc<SessionPlan>,
    router: Router,
    /// Each shared with the work on it ([`each_owned_shard`]).
    shards: Vec<Arc<Mutex<Sessions>>>,
    /// Ended sessions not yet evaluated, with their window columns: a batch per
    /// watermark that ended some (each session's rows together), and how many sessions
    /// each holds.
    ended: Vec<(RecordBatch, usize)>,
    ended_rows: usize,
    /// The watermark of the last evaluation.
    evaluated_at: Option<i64>,
}

impl SessionQuery {
    pub fn new(plan: SessionPlan) -> Result<Self> {
        Ok(Self {
            router: Router::new(1),
            shards: vec![Arc::new(Mutex::new(Sessions::new(&plan)?))],
            plan: Arc::new(plan),
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
            lock(&self.shards[0]).add_rows(plan, batch, watermark)?
        } else {
            let parts = self
                .router
                .route(&key_arrays(plan, &batch), batch.num_rows())?;
            // Each shard takes its rows itself, on its own core; its late rows come back
            // as rows of the whole batch.
            let plan = Arc::clone(plan);
            let late = each_owned_shard(&self.shards, parts, move |shard, numbers| {
                let rows = take_record_batch(&batch, &numbers)?;
                let late = shard.add_rows(&plan, rows, watermark)?;
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
        let shards = self.shards.len();
        let ending = self.shards.iter().any(|s| lock(s).may_end_by(watermark));
        let closed = if ending {
            let plan = Arc::clone(&self.plan);
            each_owned_shard(&self.shards, vec![(); shards], move |s, ()| {
                s.close(&plan, watermark)
            })?
        } else {
            Vec::new()
        };
        // In a fixed order (not the hash map's, nor the shards'), so a replay, at any
        // parallelism, emits the same rows in the same order.
        if let Some((rows, sessions)) = in_order(closed)? {
            self.ended_rows += rows.num_rows();
            self.ended.push((rows, sessions));
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
        let rows: Vec<RecordBatch> = std::mem::take(&mut self.ended)
            .into_iter()
            .map(|(rows, _)| rows)
            .collect();
        match self.plan.query.run(&self.plan.table, rows.clone()) {
            Ok(result) => result.into_iter().for_each(|b| out.emit(b)),
            Err(e) => out.failed(
                concat_batches(&self.plan.windowed_schema, &rows)?,
                format!("closed sessions could not be evaluated: {e}"),
            ),
        }
        Ok(())
    }

    /// One batch per open session (its rows with their window columns), the ended
    /// sessions not evaluated yet as they wait (marked so, with how many sessions each
    /// batch holds), and the watermark of the last evaluation.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(lock(shard).snapshot(&self.plan)?);
        }
        for (batch, sessions) in &self.ended {
            let schema = self.plan.windowed_schema.as_ref().clone().with_metadata(
                std::collections::HashMap::from([
                    (PART_KEY.to_string(), ENDED.to_string()),
                    (SESSIONS.to_string(), sessions.to_string()),
                ]),
            );
            out.push(batch.clone().with_schema(Arc::new(schema))?);
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
            .map(|_| Ok(Arc::new(Mutex::new(Sessions::new(&self.plan)?))))
            .collect::<Result<_>>()?;
        self.ended.clear();
        self.ended_rows = 0;
        self.evaluated_at = None;
        let width = self.plan.windowed_schema.fields().len();
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let meta = batch.schema().metadata().clone();
            let part = meta.get(PART_KEY).cloned();
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
                // Checkpoints before sessions were gathered held one per batch.
                let sessions = match meta.get(SESSIONS) {
                    None => 1,
                    Some(n) => n.parse().map_err(|_| {
                        Error::Execution(format!("a checkpoint counts {n:?} ended sessions"))
                    })?,
                };
                self.ended_rows += batch.num_rows();
                self.ended.push((batch, sessions));
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
            lock(&self.shards[shard]).restore(&self.plan, batch)?;
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
        let held: usize = self.shards.iter().map(|s| lock(s).held_bytes()).sum();
        let ended: usize = self
            .ended
            .iter()
            .map(|(rows, _)| rows.get_array_memory_size())
            .sum();
        held + ended
    }

    fn open_windows(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).open_sessions())
            .sum::<usize>()
            + self.ended.iter().map(|(_, n)| n).sum::<usize>()
    }
}

/// The rows of the sessions that the shards ended, in one batch, in the order of the
/// sessions' start and key (each shard's are in that order already), and how many
/// sessions there are; `None` when none ended.
fn in_order(mut ended: Vec<Ended>) -> Result<Option<(RecordBatch, usize)>> {
    ended.retain(|e| !e.sessions.is_empty());
    let sessions = ended.iter().map(|e| e.sessions.len()).sum();
    if ended.len() <= 1 {
        return Ok(ended.pop().map(|e| (e.rows, sessions)));
    }
    // (start, key, shard, first row, end row) of every session, in order.
    let mut order = Vec::with_capacity(sessions);
    for (shard, e) in ended.iter().enumerate() {
        let mut from = 0;
        for (start, key, to) in &e.sessions {
            order.push((*start, &**key, shard, from, *to));
            from = *to;
        }
    }
    order.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let indices: Vec<(usize, usize)> = order
        .iter()
        .flat_map(|&(_, _, shard, from, to)| (from..to).map(move |row| (shard, row)))
        .collect();
    let batches: Vec<&RecordBatch> = ended.iter().map(|e| &e.rows).collect();
    Ok(Some((
        interleave_record_batch(&batches, &indices)?,
        sessions,
    )))
}
