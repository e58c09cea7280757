//! Window-local queries evaluated whole, one window at a time.
//!
//! Some queries over `TUMBLE` or `HOP` are not a chain the incremental operators cover:
//! a join of a windowed aggregate with an aggregate over it (Nexmark q5's hottest
//! auctions), `rank()` or `row_number()` per window (q7's highest bids), a subquery
//! per window. When every part of such a query stays inside one window (aggregates group
//! by `window_start`, window functions partition by it, joins match on it), the query's
//! answer for a window depends on that window's rows only. [`PerWindowQuery`] keeps the
//! rows of the open windows, each row once ([`super::panes`]), and, once the watermark
//! closes a window, runs the whole query with DataFusion in batch mode over exactly its
//! rows, with the window's bounds as constants ([`super::bounds`]). Memory is bounded by
//! the rows of the open windows.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;

use crate::batch::{BatchQuery, WindowRows};
use crate::operator::{Collector, Operator, tag_input, tagged_input};
use crate::window::Windowing;
use crate::window::panes::Panes;
use crate::{Error, Result};

/// What a [`PerWindowQuery`] runs.
pub struct PerWindowPlan {
    pub windowing: Windowing,
    /// Index of the event-time column among the kept source columns.
    pub time_column: usize,
    /// The source columns the query reads, when not all: only those are kept.
    pub source_columns: Option<Vec<usize>>,
    /// The kept source columns plus `window_start` and `window_end`.
    pub windowed_schema: SchemaRef,
    /// The query; its scans read `table`.
    pub query: BatchQuery,
    pub table: Arc<WindowRows>,
    /// Further sources of a join of several sources (input 1, 2, ...), windowed alike.
    pub others: Vec<OtherInput>,
}

impl PerWindowPlan {
    /// The same plan reading tables of its own, so that copies (a join's keyed
    /// instances) can run side by side.
    pub fn copy(&self) -> Result<PerWindowPlan> {
        let tables: Vec<&Arc<WindowRows>> = std::iter::once(&self.table)
            .chain(self.others.iter().map(|o| &o.table))
            .collect();
        let (query, tables) = self.query.with_own_tables(&tables)?;
        let mut tables = tables.into_iter();
        let table = tables.next().expect("the query's own table");
        let others = self
            .others
            .iter()
            .zip(tables)
            .map(|(o, table)| OtherInput {
                time_column: o.time_column,
                source_columns: o.source_columns.clone(),
                windowed_schema: o.windowed_schema.clone(),
                table,
            })
            .collect();
        Ok(PerWindowPlan {
            windowing: self.windowing,
            time_column: self.time_column,
            source_columns: self.source_columns.clone(),
            windowed_schema: self.windowed_schema.clone(),
            query,
            table,
            others,
        })
    }
}

/// Another source a per-window join reads.
pub struct OtherInput {
    /// Index of the event-time column among the kept source columns.
    pub time_column: usize,
    /// The source columns the query reads, when not all: only those are kept.
    pub source_columns: Option<Vec<usize>>,
    pub windowed_schema: SchemaRef,
    pub table: Arc<WindowRows>,
}

/// The running operator: the open windows' rows, held by pane, until the watermark
/// closes each window.
pub struct PerWindowQuery {
    plan: PerWindowPlan,
    /// The latest watermark windows were closed at: a window is evaluated once, when
    /// the watermark first reaches its end. A join's inputs run on threads of their
    /// own: a batch's watermark, read before it got here, may be older than one another
    /// input has closed windows at meanwhile.
    closed_at: Option<i64>,
    panes: Panes,
    /// The open windows' rows of each further input.
    other_panes: Vec<Panes>,
}

impl PerWindowQuery {
    pub fn new(plan: PerWindowPlan) -> Self {
        Self {
            closed_at: None,
            other_panes: plan.others.iter().map(|_| Panes::default()).collect(),
            plan,
            panes: Panes::default(),
        }
    }

    /// The query's answer over `rows`, the rows of the window starting at `start`.
    fn evaluate(&self, start: i64, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let window = (start, self.plan.windowing.end(start));
        self.plan
            .query
            .run_in_window(&self.plan.table, rows, Some(window))
    }

    /// Input 0's rows of the window starting at `start`, with its window columns.
    fn window_rows(&self, start: i64) -> Result<Vec<RecordBatch>> {
        self.panes.window_rows(
            self.plan.windowing,
            self.plan.time_column,
            &self.plan.windowed_schema,
            start,
        )
    }

    /// The window starting at `start` evaluated: its input-0 rows and the answer.
    fn evaluate_window(&self, start: i64) -> Closed {
        let rows = match self.window_rows(start) {
            Ok(rows) => rows,
            Err(e) => {
                return Closed {
                    start,
                    rows: Vec::new(),
                    result: Err(e),
                };
            }
        };
        let windowing = self.plan.windowing;
        let mut result = Ok(());
        for (input, panes) in self.plan.others.iter().zip(&self.other_panes) {
            match panes.window_rows(windowing, input.time_column, &input.windowed_schema, start) {
                Ok(rows) => input.table.set(rows),
                Err(e) => result = Err(e),
            }
        }
        let result = result.and_then(|()| self.evaluate(start, rows.clone()));
        for input in &self.plan.others {
            input.table.set(Vec::new());
        }
        Closed {
            start,
            rows,
            result,
        }
    }

    /// Starts of the windows that hold rows of any input, are still open, and close by
    /// `until` (any, when `None`).
    fn open_starts(&self, until: Option<i64>) -> BTreeSet<i64> {
        let windowing = self.plan.windowing;
        let mut starts = self.panes.open_starts(windowing, self.closed_at, until);
        for panes in &self.other_panes {
            starts.extend(panes.open_starts(windowing, self.closed_at, until));
        }
        starts
    }

    /// The watermark windows were closed at (see [`PerWindowQuery::carry_closed_at`]).
    pub fn closed_at(&self) -> Option<i64> {
        self.closed_at
    }

    /// Take on the watermark the instance this one replaces had closed windows at: a
    /// batch with an older watermark (a join's other input) must not open them again.
    pub fn carry_closed_at(&mut self, closed_at: Option<i64>) {
        self.closed_at = self.closed_at.max(closed_at);
    }
}

/// A window the watermark closed: its start, input 0's rows, and the query's answer.
pub struct Closed {
    pub start: i64,
    pub rows: Vec<RecordBatch>,
    pub result: Result<Vec<RecordBatch>>,
}

/// Why a window's rows went to the dead-letter store.
pub fn closed_failure(start: i64, e: &Error) -> String {
    format!("the window starting at {start} ms could not be evaluated: {e}")
}

impl PerWindowQuery {
    /// Close the windows `watermark` completes, in order of their start: each one's
    /// rows and answer.
    pub fn close(&mut self, watermark: i64) -> Vec<Closed> {
        let windowing = self.plan.windowing;
        let closing = self.open_starts(Some(watermark));
        let closed = closing
            .into_iter()
            .map(|start| self.evaluate_window(start))
            .collect();
        let closed_at = self.closed_at.max(Some(watermark)).unwrap_or(watermark);
        self.closed_at = Some(closed_at);
        self.panes.drop_closed(windowing, closed_at);
        for panes in &mut self.other_panes {
            panes.drop_closed(windowing, closed_at);
        }
        closed
    }

    /// The starts of input 0's open windows (what [`Operator::open_windows`] counts).
    pub fn window_starts(&self) -> impl Iterator<Item = i64> + use<> {
        self.panes
            .open_starts(self.plan.windowing, self.closed_at, None)
            .into_iter()
    }

    /// Input `input`'s columns the query reads, of `batch` (a batch of that source).
    pub fn kept(&self, input: usize, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = match input {
            0 => &self.plan.source_columns,
            n => {
                &self
                    .plan
                    .others
                    .get(n - 1)
                    .ok_or_else(|| Error::Execution(format!("the query has no input {n}")))?
                    .source_columns
            }
        };
        Ok(match columns {
            Some(columns) => batch.project(columns)?,
            None => batch.clone(),
        })
    }

    /// Hold `kept`, rows of input `input` in its kept columns ([`PerWindowQuery::kept`]),
    /// by pane; the indices of its late rows, which are not held.
    pub fn hold_kept(
        &mut self,
        input: usize,
        kept: &RecordBatch,
        watermark: Option<i64>,
    ) -> Result<Option<UInt32Array>> {
        let watermark = watermark.max(self.closed_at);
        let windowing = self.plan.windowing;
        match input {
            0 => self
                .panes
                .hold(windowing, self.plan.time_column, kept, watermark),
            n => {
                let time_column = self
                    .plan
                    .others
                    .get(n - 1)
                    .ok_or_else(|| Error::Execution(format!("the query has no input {n}")))?
                    .time_column;
                self.other_panes[n - 1].hold(windowing, time_column, kept, watermark)
            }
        }
    }
}

impl Operator for PerWindowQuery {
    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let kept = self.kept(input, batch)?;
        // Late rows go to the dead-letter store whole, with every source column.
        if let Some(late) = self.hold_kept(input, &kept, watermark)? {
            out.late(take_record_batch(batch, &late)?);
        }
        Ok(())
    }

    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        self.process_input(0, batch, watermark, out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        for closed in self.close(watermark) {
            match closed.result {
                Ok(result) => result.into_iter().for_each(|b| out.emit(b)),
                // Keep the window's rows rather than lose them.
                Err(e) => out.failed(
                    concat_batches(&self.plan.windowed_schema, &closed.rows)?,
                    closed_failure(closed.start, &e),
                ),
            }
        }
        Ok(())
    }

    /// Each open window's rows, with its window columns, as each window held its own
    /// copy (the form restored); rows of a further input of a join carry its number in
    /// their schema's metadata.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut state = Vec::new();
        for start in self.open_starts(None) {
            state.extend(self.window_rows(start)?);
            for (n, (input, panes)) in self.plan.others.iter().zip(&self.other_panes).enumerate() {
                let tagged = tag_input(&input.windowed_schema, n + 1);
                for batch in panes.window_rows(
                    self.plan.windowing,
                    input.time_column,
                    &input.windowed_schema,
                    start,
                )? {
                    state.push(batch.with_schema(tagged.clone())?);
                }
            }
        }
        Ok(state)
    }

    /// Each input's panes again from the open windows' rows. The windows before the
    /// earliest one restored had closed: no rows restored go to them.
    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let windowing = self.plan.windowing;
        let mut windows: Vec<(usize, i64, RecordBatch)> = Vec::new();
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let n = tagged_input(batch)?;
            let schema = match n {
                0 => &self.plan.windowed_schema,
                n => match self.plan.others.get(n - 1) {
                    Some(other) => &other.windowed_schema,
                    None => {
                        return Err(Error::Execution(format!(
                            "the checkpoint holds rows of input {n}; this query has {} inputs",
                            self.plan.others.len() + 1
                        )));
                    }
                },
            };
            let (start, batch) = restored_window(schema, batch)?;
            windows.push((n, start, batch));
        }
        let mut panes = Panes::default();
        let mut other_panes: Vec<Panes> =
            self.plan.others.iter().map(|_| Panes::default()).collect();
        if let Some(earliest) = windows.iter().map(|(_, start, _)| *start).min() {
            // The end of the window before the earliest: the rows came after it closed.
            let came_at = earliest
                .checked_sub(windowing.slide())
                .map(|before| windowing.end(before));
            for (n, start, batch) in &windows {
                let (panes, time_column) = match n {
                    0 => (&mut panes, self.plan.time_column),
                    n => (&mut other_panes[n - 1], self.plan.others[n - 1].time_column),
                };
                panes.restore(windowing, time_column, *start, batch, came_at)?;
            }
        }
        self.panes = panes;
        self.other_panes = other_panes;
        self.closed_at = None;
        Ok(())
    }

    fn state_size(&self) -> usize {
        std::iter::once(&self.panes)
            .chain(&self.other_panes)
            .map(Panes::size)
            .sum()
    }

    /// Counted from the panes held, in one pass (this runs after every batch).
    fn open_windows(&self) -> usize {
        self.panes.open_count(self.plan.windowing, self.closed_at)
    }
}

/// A checkpointed batch of one window's rows, in `schema`, and the window's start.
fn restored_window(schema: &SchemaRef, batch: &RecordBatch) -> Result<(i64, RecordBatch)> {
    if batch.schema().fields().len() != schema.fields().len() {
        return Err(Error::Execution(
            "the checkpointed window rows have other columns than this query".into(),
        ));
    }
    let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
    let start = batch
        .column(schema.fields().len() - 2)
        .as_primitive_opt::<TimestampMillisecondType>()
        .filter(|s| s.is_valid(0))
        .map(|s| s.value(0))
        .ok_or_else(|| Error::Execution("a checkpointed window has no start".into()))?;
    Ok((start, batch))
}
