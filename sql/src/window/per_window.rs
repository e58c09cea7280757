//! Window-local queries evaluated whole, one window at a time.
//!
//! Some queries over `TUMBLE` or `HOP` are not a chain the incremental operators cover:
//! a join of a windowed aggregate with an aggregate over it (Nexmark q5's hottest
//! auctions), `rank()` or `row_number()` per window (q7's highest bids), a subquery
//! per window. When every part of such a query stays inside one window (aggregates group
//! by `window_start`, window functions partition by it, joins match on it), the query's
//! answer for a window depends on that window's rows only. [`PerWindowQuery`] keeps the
//! rows of each open window and, once the watermark closes it, runs the whole query with
//! DataFusion in batch mode over exactly those rows. Memory is bounded by the rows of the
//! open windows.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;

use crate::batch::{BatchQuery, WindowRows};
use crate::operator::{Collector, Operator, tag_input, tagged_input};
use crate::window::{Windowing, event_times, split_by_window, with_window_columns};
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

/// The running operator: each open window's rows, until the watermark closes it.
pub struct PerWindowQuery {
    plan: PerWindowPlan,
    /// The latest watermark windows were closed at. A join's inputs run on threads of
    /// their own: a batch's watermark, read before it got here, may be older than one
    /// another input has closed windows at meanwhile.
    closed_at: Option<i64>,
    windows: BTreeMap<i64, Vec<RecordBatch>>,
    /// The open windows' rows of each further input.
    other_windows: Vec<BTreeMap<i64, Vec<RecordBatch>>>,
}

impl PerWindowQuery {
    pub fn new(plan: PerWindowPlan) -> Self {
        Self {
            closed_at: None,
            other_windows: plan.others.iter().map(|_| BTreeMap::new()).collect(),
            plan,
            windows: BTreeMap::new(),
        }
    }

    /// The query's answer over `rows` (one window's).
    fn evaluate(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.plan.query.run(&self.plan.table, rows)
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
        self.closed_at = self.closed_at.max(Some(watermark));
        let windowing = self.plan.windowing;
        let mut closed: Vec<i64> = self
            .windows
            .keys()
            .chain(self.other_windows.iter().flat_map(|w| w.keys()))
            .copied()
            .filter(|&s| windowing.is_closed(s, Some(watermark)))
            .collect();
        closed.sort_unstable();
        closed.dedup();
        closed
            .into_iter()
            .map(|start| {
                let rows = self.windows.remove(&start).unwrap_or_default();
                for (input, windows) in self.plan.others.iter().zip(&mut self.other_windows) {
                    input.table.set(windows.remove(&start).unwrap_or_default());
                }
                let result = self.evaluate(rows.clone());
                for input in &self.plan.others {
                    input.table.set(Vec::new());
                }
                Closed {
                    start,
                    rows,
                    result,
                }
            })
            .collect()
    }

    /// The starts of input 0's open windows (what [`Operator::open_windows`] counts).
    pub fn window_starts(&self) -> impl Iterator<Item = i64> + '_ {
        self.windows.keys().copied()
    }

    /// Rows of a further input, split by window like input 0's.
    fn process_other(
        &mut self,
        other: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let input = self
            .plan
            .others
            .get(other)
            .ok_or_else(|| Error::Execution(format!("the query has no input {}", other + 1)))?;
        let kept = match &input.source_columns {
            Some(columns) => batch.project(columns)?,
            None => batch.clone(),
        };
        hold_by_window(
            &mut self.other_windows[other],
            &input.windowed_schema,
            self.plan.windowing,
            input.time_column,
            (&kept, batch),
            watermark,
            out,
        )
    }
}

/// Add the rows of `batch` (kept columns, and the batch as received) to the open windows
/// they fall in, with their window columns; rows whose windows have all closed go back as
/// late, with every column.
fn hold_by_window(
    windows: &mut BTreeMap<i64, Vec<RecordBatch>>,
    windowed_schema: &SchemaRef,
    windowing: Windowing,
    time_column: usize,
    (batch, whole): (&RecordBatch, &RecordBatch),
    watermark: Option<i64>,
    out: &mut Collector,
) -> Result<()> {
    let times = event_times(batch.column(time_column))?;
    let split = split_by_window(times, windowing, watermark);
    // Every slice first: an error leaves the windows as they were (the runtime
    // dead-letters the whole batch).
    let mut slices = Vec::with_capacity(split.windows.len());
    for (start, rows) in split.windows {
        let slice = match rows {
            None => batch.clone(),
            Some(rows) => take_record_batch(batch, &rows)?,
        };
        slices.push((
            start,
            with_window_columns(windowed_schema, windowing, start, &slice)?,
        ));
    }
    for (start, slice) in slices {
        windows.entry(start).or_default().push(slice);
    }
    if let Some(late) = &split.late {
        out.late(take_record_batch(whole, late)?);
    }
    Ok(())
}

impl Operator for PerWindowQuery {
    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let watermark = watermark.max(self.closed_at);
        match input {
            0 => self.process(batch, watermark, out),
            n => self.process_other(n - 1, batch, watermark, out),
        }
    }

    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let kept = match &self.plan.source_columns {
            Some(columns) => batch.project(columns)?,
            None => batch.clone(),
        };
        // Late rows go to the dead-letter store whole, with every source column.
        hold_by_window(
            &mut self.windows,
            &self.plan.windowed_schema,
            self.plan.windowing,
            self.plan.time_column,
            (&kept, batch),
            watermark,
            out,
        )
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

    /// The open windows' rows as they are held (shared, not copied); each batch carries
    /// its window in its window columns. Rows of a further input of a join carry its
    /// number in their schema's metadata.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut state: Vec<RecordBatch> = self.windows.values().flatten().cloned().collect();
        for (n, windows) in self.other_windows.iter().enumerate() {
            let tagged = tag_input(&self.plan.others[n].windowed_schema, n + 1);
            for batch in windows.values().flatten() {
                state.push(batch.clone().with_schema(tagged.clone())?);
            }
        }
        Ok(state)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let mut windows = BTreeMap::new();
        let mut other_windows: Vec<_> = self.plan.others.iter().map(|_| BTreeMap::new()).collect();
        for batch in state.iter().filter(|b| b.num_rows() > 0) {
            let (schema, windows) = match tagged_input(batch)? {
                0 => (&self.plan.windowed_schema, &mut windows),
                n => match (self.plan.others.get(n - 1), other_windows.get_mut(n - 1)) {
                    (Some(other), Some(w)) => (&other.windowed_schema, w),
                    _ => {
                        return Err(Error::Execution(format!(
                            "the checkpoint holds rows of input {n}; this query has {} inputs",
                            self.plan.others.len() + 1
                        )));
                    }
                },
            };
            let (start, batch) = restored_window(schema, batch)?;
            windows.entry(start).or_insert_with(Vec::new).push(batch);
        }
        self.windows = windows;
        self.other_windows = other_windows;
        Ok(())
    }

    fn state_size(&self) -> usize {
        std::iter::once(&self.windows)
            .chain(&self.other_windows)
            .flat_map(|w| w.values().flatten())
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    fn open_windows(&self) -> usize {
        self.windows.len()
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
