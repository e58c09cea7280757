//! The open sessions of the keys routed to one shard: rows placed in sessions as they
//! come, sessions merged when a row bridges them, ended sessions handed out with their
//! window columns once the watermark passes their end. A key's sessions live in exactly
//! one shard, so shards never meet (see [`super::SessionQuery`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use foldhash::HashMapExt;

use super::SessionPlan;
use crate::window::event_times;
use crate::{Error, Result};

struct Session {
    /// The session key, in arrow's row format.
    key: Box<[u8]>,
    start: i64,
    last: i64,
    /// (arena batch, row) of each row of the session.
    rows: Vec<(usize, usize)>,
    /// The arena batches it holds a reference on (once per batch it took rows from).
    batches: Vec<usize>,
}

/// The sessions one watermark ended in one shard, in the order of their start and key,
/// their rows gathered into one batch: a session's rows together, with its window
/// columns. One batch, not one per session: sessions are small and many, and each
/// batch costs the evaluation as much as hundreds of rows.
pub(super) struct Ended {
    /// Each session's start and key, and where its rows end in `rows`.
    pub sessions: Vec<(i64, Box<[u8]>, usize)>,
    pub rows: RecordBatch,
}

/// The open sessions of one shard's keys.
pub(super) struct Sessions {
    keys: RowConverter,
    /// Open sessions per key, as indices into `sessions`.
    open: foldhash::HashMap<Box<[u8]>, Vec<usize>>,
    sessions: Vec<Option<Session>>,
    /// Bumped each time an id is given to a session, so `ends` can tell an entry of the
    /// id's earlier session from one of its current session.
    generation: Vec<u64>,
    free: Vec<usize>,
    /// (end, id, generation) of each open session, earliest first. An end is where the
    /// session ended when it was pushed: rows may have moved the session's end later
    /// since (it is pushed again then, when the watermark reaches the old end), so a
    /// watermark only looks at the sessions that may have ended, not at all of them.
    ends: BinaryHeap<Reverse<(i64, usize, u64)>>,
    /// Input batches that open sessions take rows from, with how many sessions do: a
    /// session keeps row indices, not copies, and a batch goes when no session needs it.
    arena: Vec<Option<RecordBatch>>,
    refs: Vec<usize>,
    arena_free: Vec<usize>,
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
            open: foldhash::HashMap::new(),
            sessions: Vec::new(),
            generation: Vec::new(),
            free: Vec::new(),
            ends: BinaryHeap::new(),
            arena: Vec::new(),
            refs: Vec::new(),
            arena_free: Vec::new(),
        })
    }

    /// Whether a watermark of `watermark` may end one of these sessions.
    pub fn may_end_by(&self, watermark: i64) -> bool {
        self.ends.peek().is_some_and(|e| e.0.0 <= watermark)
    }

    fn add(&mut self, session: Session, gap: i64) -> usize {
        let end = session.last.saturating_add(gap);
        let id = match self.free.pop() {
            Some(id) => {
                self.sessions[id] = Some(session);
                id
            }
            None => {
                self.sessions.push(Some(session));
                self.generation.push(0);
                self.sessions.len() - 1
            }
        };
        self.generation[id] += 1;
        self.ends.push(Reverse((end, id, self.generation[id])));
        id
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
        let mut forward: foldhash::HashMap<usize, usize> = foldhash::HashMap::new();
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
            let overlaps =
                |s: &Session| s.start < t.saturating_add(gap) && t < s.last.saturating_add(gap);
            let (first, more) = match self.open.get(key) {
                None => (None, false),
                Some(ids) => {
                    let mut touching = ids
                        .iter()
                        .copied()
                        .filter(|&id| self.sessions[id].as_ref().is_some_and(overlaps));
                    (touching.next(), touching.next().is_some())
                }
            };
            let id = match (first, more) {
                // A new session allocates its key (and its key's entry, for a key with
                // no open session); a row that extends one allocates nothing.
                (None, _) => {
                    let id = self.add(
                        Session {
                            key: key.into(),
                            start: t,
                            last: t,
                            rows: Vec::new(),
                            batches: Vec::new(),
                        },
                        gap,
                    );
                    match self.open.get_mut(key) {
                        Some(ids) => ids.push(id),
                        None => {
                            self.open.insert(key.into(), vec![id]);
                        }
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
                    let ids = self.open.get(key).map_or(&[][..], |ids| ids.as_slice());
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
        // This batch's rows, per session (following merges), each session's in order.
        if !forward.is_empty() {
            for (id, _) in &mut assigned {
                while let Some(&next) = forward.get(id) {
                    *id = next;
                }
            }
        }
        assigned.sort_unstable();
        let b = self.store(batch);
        for rows in assigned.chunk_by(|x, y| x.0 == y.0) {
            if let Some(s) = self.sessions[rows[0].0].as_mut() {
                s.rows.extend(rows.iter().map(|&(_, r)| (b, r as usize)));
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
    pub fn close(&mut self, plan: &SessionPlan, watermark: i64) -> Result<Ended> {
        let gap = plan.gap;
        let mut ended = Vec::new();
        while let Some(&Reverse((end, id, generation))) = self.ends.peek() {
            if end > watermark {
                break;
            }
            self.ends.pop();
            if self.generation[id] != generation {
                continue;
            }
            let Some(s) = self.sessions[id].as_ref() else {
                continue;
            };
            let end = s.last.saturating_add(gap);
            if end > watermark {
                // Rows moved its end: it waits for that.
                self.ends.push(Reverse((end, id, generation)));
                continue;
            }
            if let Some(s) = self.sessions[id].take() {
                if let Some(ids) = self.open.get_mut(&s.key) {
                    ids.retain(|&other| other != id);
                    if ids.is_empty() {
                        self.open.remove(&s.key);
                    }
                }
                ended.push(s);
            }
            self.free.push(id);
        }
        ended.sort_unstable_by(|a, b| (a.start, &a.key).cmp(&(b.start, &b.key)));
        let (rows, to) = self.gather(plan, ended.iter().collect())?;
        for s in &ended {
            self.release(s);
        }
        let sessions = ended
            .into_iter()
            .zip(to)
            .map(|(s, to)| (s.start, s.key, to))
            .collect();
        Ok(Ended { sessions, rows })
    }

    /// One batch per open session: its rows with their window columns.
    pub fn snapshot(&self, plan: &SessionPlan) -> Result<Vec<RecordBatch>> {
        self.sessions
            .iter()
            .flatten()
            .map(|s| Ok(self.gather(plan, vec![s])?.0))
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
        let keys = self.keys.convert_columns(&key_arrays(plan, &batch))?;
        let key: Box<[u8]> = match plan.key_columns.is_empty() {
            true => Box::default(),
            false => keys.row(0).as_ref().into(),
        };
        let source_part = batch.project(&(0..width - 2).collect::<Vec<_>>())?;
        let n = source_part.num_rows();
        let b = self.store(source_part);
        self.refs[b] = 1;
        let id = self.add(
            Session {
                key: key.clone(),
                start,
                last: end - plan.gap,
                rows: (0..n).map(|r| (b, r)).collect(),
                batches: vec![b],
            },
            plan.gap,
        );
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
        // An id is free or holds an open session (between batches).
        self.sessions.len() - self.free.len()
    }

    /// The rows of `sessions`, gathered into one batch (each session's rows together,
    /// in its order), with their window columns; and where each session's rows end.
    fn gather(
        &self,
        plan: &SessionPlan,
        sessions: Vec<&Session>,
    ) -> Result<(RecordBatch, Vec<usize>)> {
        // Each arena batch's place among the batches gathered from.
        let mut local: foldhash::HashMap<usize, usize> = foldhash::HashMap::new();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let rows: usize = sessions.iter().map(|s| s.rows.len()).sum();
        let mut indices = Vec::with_capacity(rows);
        let mut starts = Vec::with_capacity(rows);
        let mut ends = Vec::with_capacity(rows);
        let mut to = Vec::with_capacity(sessions.len());
        for session in sessions {
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
            let n = session.rows.len();
            starts.extend(std::iter::repeat_n(session.start, n));
            let end = session.last.saturating_add(plan.gap);
            ends.extend(std::iter::repeat_n(end, n));
            to.push(indices.len());
        }
        let rows = if batches.is_empty() {
            let n = plan.windowed_schema.fields().len() - 2;
            RecordBatch::new_empty(Arc::new(
                plan.windowed_schema.project(&(0..n).collect::<Vec<_>>())?,
            ))
        } else {
            interleave_record_batch(&batches, &indices)?
        };
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
        columns.push(Arc::new(TimestampMillisecondArray::from(ends)));
        Ok((
            RecordBatch::try_new(plan.windowed_schema.clone(), columns)?,
            to,
        ))
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
