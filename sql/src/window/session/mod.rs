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
//! [`plan`] plans a SESSION view.

pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, interleave_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::batch::{BatchQuery, WindowRows};
use crate::operator::{Collector, Operator};
use crate::window::event_times;
use crate::{Error, Result};

/// Ended sessions wait for one batch evaluation until this much event time (ms) has
/// passed since the last one, or this many rows are waiting: sessions end all the time,
/// and one DataFusion run per watermark step would cost more than the sessions.
const EVALUATE_EVERY_MS: i64 = 1_000;
const EVALUATE_AT_ROWS: usize = 65_536;

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

struct Session {
    start: i64,
    last: i64,
    /// (arena batch, row) of each row of the session.
    rows: Vec<(usize, usize)>,
    /// The arena batches it holds a reference on (once per batch it took rows from).
    batches: Vec<usize>,
}

/// The running operator of a SESSION view.
pub struct SessionQuery {
    plan: SessionPlan,
    keys: RowConverter,
    /// Open sessions per key (the key columns in arrow's row format), as indices into
    /// `sessions`.
    open: HashMap<Vec<u8>, Vec<usize>>,
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    /// Input batches that open sessions take rows from, with how many sessions do: a
    /// session keeps row indices, not copies, and a batch goes when no session needs it.
    arena: Vec<Option<RecordBatch>>,
    refs: Vec<usize>,
    arena_free: Vec<usize>,
    /// Ended sessions (one batch each, with window columns) not yet evaluated.
    ended: Vec<RecordBatch>,
    ended_rows: usize,
    /// The watermark of the last evaluation.
    evaluated_at: Option<i64>,
}

impl SessionQuery {
    pub fn new(plan: SessionPlan) -> Result<Self> {
        let fields = plan
            .key_columns
            .iter()
            .map(|&i| SortField::new(plan.windowed_schema.field(i).data_type().clone()))
            .collect();
        Ok(Self {
            keys: RowConverter::new(fields)?,
            plan,
            open: HashMap::new(),
            sessions: Vec::new(),
            free: Vec::new(),
            arena: Vec::new(),
            refs: Vec::new(),
            arena_free: Vec::new(),
            ended: Vec::new(),
            ended_rows: 0,
            evaluated_at: None,
        })
    }

    fn add(&mut self, session: Session) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.sessions[id] = Some(session);
                id
            }
            None => {
                self.sessions.push(Some(session));
                self.sessions.len() - 1
            }
        }
    }

    fn key_arrays(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.plan
            .key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect()
    }

    /// Keep an input batch for the sessions that take rows from it.
    fn store(&mut self, batch: RecordBatch) -> usize {
        match self.arena_free.pop() {
            Some(b) => {
                self.arena[b] = Some(batch);
                self.refs[b] = 0;
                b
            }
            None => {
                self.arena.push(Some(batch));
                self.refs.push(0);
                self.arena.len() - 1
            }
        }
    }

    /// Drop one reference on each batch a session used.
    fn release(&mut self, session: &Session) {
        for &b in &session.batches {
            self.refs[b] = self.refs[b].saturating_sub(1);
            if self.refs[b] == 0 && self.arena[b].take().is_some() {
                self.arena_free.push(b);
            }
        }
    }

    /// The rows of one session, gathered into one batch, with its window columns.
    fn with_bounds(&self, session: &Session) -> Result<RecordBatch> {
        let mut local: HashMap<usize, usize> = HashMap::new();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let mut indices = Vec::with_capacity(session.rows.len());
        for &(b, row) in &session.rows {
            let l = match local.get(&b) {
                Some(&l) => l,
                None => {
                    let batch = self.arena[b].as_ref().ok_or_else(|| {
                        Error::Execution("a session's rows were released early".into())
                    })?;
                    batches.push(batch);
                    local.insert(b, batches.len() - 1);
                    batches.len() - 1
                }
            };
            indices.push((l, row));
        }
        let rows = if batches.is_empty() {
            let n = self.plan.windowed_schema.fields().len() - 2;
            RecordBatch::new_empty(Arc::new(
                self.plan
                    .windowed_schema
                    .project(&(0..n).collect::<Vec<_>>())?,
            ))
        } else {
            interleave_record_batch(&batches, &indices)?
        };
        let n = rows.num_rows();
        let end = session.last.saturating_add(self.plan.gap);
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(TimestampMillisecondArray::from_value(
            session.start,
            n,
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, n)));
        Ok(RecordBatch::try_new(
            self.plan.windowed_schema.clone(),
            columns,
        )?)
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
        let gap = self.plan.gap;
        let times = event_times(batch.column(self.plan.time_column))?.clone();
        let rows = self.keys.convert_columns(&self.key_arrays(&batch))?;
        // Each row's session; a session merged into another forwards to it.
        let mut assigned: Vec<(usize, u32)> = Vec::with_capacity(batch.num_rows());
        let mut forward: HashMap<usize, usize> = HashMap::new();
        // Ids of sessions merged away: reused only after this batch's rows are placed,
        // or a new session could take an id that `forward` still points from.
        let mut freed = Vec::new();
        let mut late = Vec::new();
        for i in 0..batch.num_rows() {
            if !times.is_valid(i) {
                late.push(i as u32);
                continue;
            }
            let t = times.value(i);
            if watermark.is_some_and(|w| t.saturating_add(gap) <= w) {
                late.push(i as u32);
                continue;
            }
            let key = rows.row(i);
            let key: &[u8] = key.as_ref();
            // A key's first row allocates its entry; later rows only look it up.
            if !self.open.contains_key(key) {
                self.open.insert(key.to_vec(), Vec::new());
            }
            let overlaps =
                |s: &Session| s.start < t.saturating_add(gap) && t < s.last.saturating_add(gap);
            let ids = &self.open[key];
            let mut touching = ids
                .iter()
                .copied()
                .filter(|&id| self.sessions[id].as_ref().is_some_and(overlaps));
            let first = touching.next();
            let more = touching.next().is_some();
            let id = match (first, more) {
                // The common cases allocate nothing: a new session, or one extended.
                (None, _) => {
                    let id = self.add(Session {
                        start: t,
                        last: t,
                        rows: Vec::new(),
                        batches: Vec::new(),
                    });
                    if let Some(ids) = self.open.get_mut(key) {
                        ids.push(id);
                    }
                    id
                }
                (Some(id), false) => {
                    let s = self.sessions[id].as_mut().expect("open session");
                    s.start = s.start.min(t);
                    s.last = s.last.max(t);
                    id
                }
                // The row bridges several sessions: merge them into the first.
                (Some(into), true) => {
                    let (others, mut rest): (Vec<usize>, Vec<usize>) = ids
                        .iter()
                        .copied()
                        .filter(|&id| id != into)
                        .partition(|&id| self.sessions[id].as_ref().is_some_and(overlaps));
                    for other in others {
                        let merged = self.sessions[other].take().expect("open session");
                        freed.push(other);
                        forward.insert(other, into);
                        let s = self.sessions[into].as_mut().expect("open session");
                        s.start = s.start.min(merged.start);
                        s.last = s.last.max(merged.last);
                        s.rows.extend(merged.rows);
                        s.batches.extend(merged.batches);
                    }
                    let s = self.sessions[into].as_mut().expect("open session");
                    s.start = s.start.min(t);
                    s.last = s.last.max(t);
                    rest.push(into);
                    if let Some(ids) = self.open.get_mut(key) {
                        *ids = rest;
                    }
                    into
                }
            };
            assigned.push((id, i as u32));
        }
        // This batch's rows, per session (following merges).
        let mut per_session: HashMap<usize, Vec<u32>> = HashMap::new();
        for (mut id, row) in assigned {
            while let Some(&next) = forward.get(&id) {
                id = next;
            }
            per_session.entry(id).or_default().push(row);
        }
        let b = self.store(batch);
        for (id, rows) in per_session {
            if let Some(s) = self.sessions[id].as_mut() {
                s.rows.extend(rows.into_iter().map(|r| (b, r as usize)));
                s.batches.push(b);
                self.refs[b] += 1;
            }
        }
        if self.refs[b] == 0 && self.arena[b].take().is_some() {
            self.arena_free.push(b);
        }
        self.free.extend(freed);
        if !late.is_empty() {
            out.late(take_record_batch(whole, &UInt32Array::from(late))?);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        let gap = self.plan.gap;
        let mut closed = Vec::new();
        self.open.retain(|key, ids| {
            ids.retain(|&id| {
                let start = self.sessions[id]
                    .as_ref()
                    .filter(|s| s.last.saturating_add(gap) <= watermark)
                    .map(|s| s.start);
                if let Some(start) = start {
                    closed.push((start, key.clone(), id));
                }
                start.is_none()
            });
            !ids.is_empty()
        });
        // In a fixed order (not the hash map's), so a replay emits the same rows in the
        // same order.
        closed.sort_unstable();
        for (_, _, id) in closed {
            if let Some(s) = self.sessions[id].take() {
                let rows = self.with_bounds(&s)?;
                self.release(&s);
                self.ended_rows += rows.num_rows();
                self.ended.push(rows);
            }
            self.free.push(id);
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

    /// One batch per open session: its rows with their window columns.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for s in self.sessions.iter().flatten() {
            out.push(self.with_bounds(s)?);
        }
        // Ended sessions not evaluated yet: restored as sessions, they end again at once.
        out.extend(self.ended.iter().cloned());
        Ok(out)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.open.clear();
        self.sessions.clear();
        self.free.clear();
        self.ended.clear();
        self.ended_rows = 0;
        self.arena.clear();
        self.refs.clear();
        self.arena_free.clear();
        let width = self.plan.windowed_schema.fields().len();
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            if batch.num_columns() != width {
                return Err(Error::Execution(
                    "the checkpointed sessions have other columns than this query".into(),
                ));
            }
            let batch =
                RecordBatch::try_new(self.plan.windowed_schema.clone(), batch.columns().to_vec())?;
            let bound = |i: usize| {
                batch
                    .column(i)
                    .as_primitive_opt::<TimestampMillisecondType>()
                    .filter(|a| a.is_valid(0))
                    .map(|a| a.value(0))
                    .ok_or_else(|| {
                        Error::Execution("a checkpointed session lacks its bounds".into())
                    })
            };
            let (start, end) = (bound(width - 2)?, bound(width - 1)?);
            let key = self
                .keys
                .convert_columns(&self.key_arrays(&batch))?
                .row(0)
                .as_ref()
                .to_vec();
            let source_part = batch.project(&(0..width - 2).collect::<Vec<_>>())?;
            let n = source_part.num_rows();
            let b = self.store(source_part);
            self.refs[b] = 1;
            let id = self.add(Session {
                start,
                last: end - self.plan.gap,
                rows: (0..n).map(|r| (b, r)).collect(),
                batches: vec![b],
            });
            self.open.entry(key).or_default().push(id);
        }
        Ok(())
    }

    fn state_size(&self) -> usize {
        let held: usize = self
            .arena
            .iter()
            .flatten()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        let ended: usize = self
            .ended
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        held + ended
    }

    fn open_windows(&self) -> usize {
        self.sessions.iter().flatten().count() + self.ended.len()
    }
}
