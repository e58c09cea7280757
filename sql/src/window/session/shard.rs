//! The open sessions of the keys routed to one shard: rows placed in sessions as they
//! come, sessions merged when a row bridges them, ended sessions handed out with their
//! window columns once the watermark passes their end. A key's sessions live in exactly
//! one shard, so shards never meet (see [`super::SessionQuery`]).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::SessionPlan;
use crate::window::event_times;
use crate::{Error, Result};

struct Session {
    start: i64,
    last: i64,
    /// (arena batch, row) of each row of the session.
    rows: Vec<(usize, usize)>,
    /// The arena batches it holds a reference on (once per batch it took rows from).
    batches: Vec<usize>,
}

/// A session that ended: its start and key (the order sessions are evaluated in) and
/// its rows with their window columns.
pub(super) struct Ended {
    pub start: i64,
    pub key: Vec<u8>,
    pub rows: RecordBatch,
}

/// The open sessions of one shard's keys.
pub(super) struct Sessions {
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
    /// No open session ends before this (`i64::MAX` when none is open): a watermark
    /// below it ends nothing, and `close` need not look at every session.
    earliest_end: i64,
}

impl Sessions {
    pub fn new(plan: &SessionPlan) -> Result<Self> {
        let fields = plan
            .key_columns
            .iter()
            .map(|&i| SortField::new(plan.windowed_schema.field(i).data_type().clone()))
            .collect();
        Ok(Self {
            keys: RowConverter::new(fields)?,
            open: HashMap::new(),
            sessions: Vec::new(),
            free: Vec::new(),
            arena: Vec::new(),
            refs: Vec::new(),
            arena_free: Vec::new(),
            earliest_end: i64::MAX,
        })
    }

    /// Whether a watermark of `watermark` may end one of these sessions.
    pub fn may_end_by(&self, watermark: i64) -> bool {
        self.earliest_end <= watermark
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

    /// Place the rows of `batch` (the query's source columns) in their keys' sessions;
    /// returns the rows that are late (no event time, or a session of their own that
    /// ends at or before `watermark`).
    pub fn add_rows(
        &mut self,
        plan: &SessionPlan,
        batch: RecordBatch,
        watermark: Option<i64>,
    ) -> Result<Vec<u32>> {
        let gap = plan.gap;
        let times = event_times(batch.column(plan.time_column))?.clone();
        let rows = self.keys.convert_columns(&key_arrays(plan, &batch))?;
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
            // Without keys (one session for the whole stream) there are no rows to
            // read: every row has the empty key.
            let row = (!plan.key_columns.is_empty()).then(|| rows.row(i));
            let key: &[u8] = row.as_ref().map_or(&[], |r| r.as_ref());
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
                    // A session's end only grows as rows extend it or sessions merge.
                    self.earliest_end = self.earliest_end.min(t.saturating_add(gap));
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
        Ok(late)
    }

    /// Take out the sessions that end at or before `watermark`.
    pub fn close(&mut self, plan: &SessionPlan, watermark: i64) -> Result<Vec<Ended>> {
        if !self.may_end_by(watermark) {
            return Ok(Vec::new());
        }
        let gap = plan.gap;
        let mut closed = Vec::new();
        let mut earliest_end = i64::MAX;
        self.open.retain(|key, ids| {
            ids.retain(|&id| {
                let Some(s) = self.sessions[id].as_ref() else {
                    return false;
                };
                let end = s.last.saturating_add(gap);
                if end <= watermark {
                    closed.push((s.start, key.clone(), id));
                    return false;
                }
                earliest_end = earliest_end.min(end);
                true
            });
            !ids.is_empty()
        });
        self.earliest_end = earliest_end;
        let mut ended = Vec::with_capacity(closed.len());
        for (start, key, id) in closed {
            if let Some(s) = self.sessions[id].take() {
                let rows = self.with_bounds(plan, &s)?;
                self.release(&s);
                ended.push(Ended { start, key, rows });
            }
            self.free.push(id);
        }
        Ok(ended)
    }

    /// One batch per open session: its rows with their window columns.
    pub fn snapshot(&self, plan: &SessionPlan) -> Result<Vec<RecordBatch>> {
        self.sessions
            .iter()
            .flatten()
            .map(|s| self.with_bounds(plan, s))
            .collect()
    }

    /// Open again a session of a snapshot: its rows (one key) with their window
    /// columns.
    pub fn restore(&mut self, plan: &SessionPlan, batch: RecordBatch) -> Result<()> {
        let width = plan.windowed_schema.fields().len();
        let bound = |i: usize| {
            batch
                .column(i)
                .as_primitive_opt::<TimestampMillisecondType>()
                .filter(|a| a.is_valid(0))
                .map(|a| a.value(0))
                .ok_or_else(|| Error::Execution("a checkpointed session lacks its bounds".into()))
        };
        let (start, end) = (bound(width - 2)?, bound(width - 1)?);
        self.earliest_end = self.earliest_end.min(end);
        let keys = self.keys.convert_columns(&key_arrays(plan, &batch))?;
        let key = match plan.key_columns.is_empty() {
            true => Vec::new(),
            false => keys.row(0).as_ref().to_vec(),
        };
        let source_part = batch.project(&(0..width - 2).collect::<Vec<_>>())?;
        let n = source_part.num_rows();
        let b = self.store(source_part);
        self.refs[b] = 1;
        let id = self.add(Session {
            start,
            last: end - plan.gap,
            rows: (0..n).map(|r| (b, r)).collect(),
            batches: vec![b],
        });
        self.open.entry(key).or_default().push(id);
        Ok(())
    }

    /// Bytes of the input rows held.
    pub fn held_bytes(&self) -> usize {
        self.arena
            .iter()
            .flatten()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.iter().flatten().count()
    }

    /// The rows of one session, gathered into one batch, with its window columns.
    fn with_bounds(&self, plan: &SessionPlan, session: &Session) -> Result<RecordBatch> {
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
            let n = plan.windowed_schema.fields().len() - 2;
            RecordBatch::new_empty(Arc::new(
                plan.windowed_schema.project(&(0..n).collect::<Vec<_>>())?,
            ))
        } else {
            interleave_record_batch(&batches, &indices)?
        };
        let n = rows.num_rows();
        let end = session.last.saturating_add(plan.gap);
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(TimestampMillisecondArray::from_value(
            session.start,
            n,
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, n)));
        Ok(RecordBatch::try_new(plan.windowed_schema.clone(), columns)?)
    }
}

/// The session key columns of `batch` (the query's source columns, or those and the
/// window columns).
pub(super) fn key_arrays(plan: &SessionPlan, batch: &RecordBatch) -> Vec<ArrayRef> {
    plan.key_columns
        .iter()
        .map(|&i| batch.column(i).clone())
        .collect()
}
