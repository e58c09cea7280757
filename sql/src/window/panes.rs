//! The rows of open windows, held once. A HOP window of size `s` sliding by `d` holds
//! each row in `s / d` windows; copied into each (Nexmark q5: five), the copies cost
//! more than the query over them. Rows are held instead by pane: the rows whose event
//! times fall between two multiples of the slide, which are the rows whose latest
//! window starts at that multiple. A window's rows are the panes it covers, shared,
//! not copied; the last one cut at the window's end when the size is not a multiple of
//! the slide.
//!
//! A window takes only the rows that came while it was open, as when each window held
//! its own copy: each batch is held with the watermark it came at, and a window takes
//! the batches that came before its end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Scalar, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::kernels::cmp::lt;
use datafusion::arrow::compute::{filter_record_batch, min, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::Result;
use crate::window::{Windowing, event_times, split_by_pane};

/// One batch of a pane, with the watermark it came at (`None`: before any).
#[derive(Clone)]
struct Held {
    came_at: Option<i64>,
    /// The earliest event time among the rows.
    earliest: i64,
    rows: RecordBatch,
}

impl Held {
    fn new(came_at: Option<i64>, rows: RecordBatch, time_column: usize) -> Result<Self> {
        let earliest = min(event_times(rows.column(time_column))?).unwrap_or(i64::MAX);
        Ok(Self {
            came_at,
            earliest,
            rows,
        })
    }

    /// Whether any of these rows is in the window ending at `end`, which holds their
    /// pane's start: whether the window was open when they came, and (the last pane of
    /// a window whose size is not a multiple of its slide) one is before its end.
    fn in_window_ending(&self, end: i64) -> bool {
        self.came_at.is_none_or(|w| end > w) && self.earliest < end
    }
}

/// Rows of one input by pane start, in the input's kept columns (no window columns).
#[derive(Clone, Default)]
pub struct Panes(BTreeMap<i64, Vec<Held>>);

impl Panes {
    /// Hold the rows of `batch` (an input's kept columns) in their panes; the indices of
    /// the rows whose windows have all closed at `watermark` (late), not held.
    pub fn hold(
        &mut self,
        windowing: Windowing,
        time_column: usize,
        batch: &RecordBatch,
        watermark: Option<i64>,
    ) -> Result<Option<UInt32Array>> {
        let times = event_times(batch.column(time_column))?;
        let split = split_by_pane(times, windowing, watermark);
        // Every slice first: an error leaves the panes as they were (the runtime
        // dead-letters the whole batch).
        let mut slices = Vec::with_capacity(split.windows.len());
        for (start, rows) in split.windows {
            let rows = match rows {
                None => batch.clone(),
                Some(rows) => take_record_batch(batch, &rows)?,
            };
            slices.push((start, Held::new(watermark, rows, time_column)?));
        }
        for (start, held) in slices {
            self.0.entry(start).or_default().push(held);
        }
        Ok(split.late)
    }

    /// Rows held as a window's rows were checkpointed (`rows` of the window starting at
    /// `start`, with window columns): its own pane's, which every open window holding
    /// that pane holds too. `came_at` keeps them out of the windows closed before.
    pub fn restore(
        &mut self,
        windowing: Windowing,
        time_column: usize,
        start: i64,
        rows: &RecordBatch,
        came_at: Option<i64>,
    ) -> Result<()> {
        let kept = rows.project(&(0..rows.num_columns() - 2).collect::<Vec<_>>())?;
        let times = event_times(kept.column(time_column))?;
        let own: Vec<u32> = (0..kept.num_rows())
            .filter(|&i| times.is_valid(i) && windowing.start(times.value(i)) == start)
            .map(|i| i as u32)
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        let rows = take_record_batch(&kept, &UInt32Array::from(own))?;
        let held = Held::new(came_at, rows, time_column)?;
        self.0.entry(start).or_default().push(held);
        Ok(())
    }

    /// Starts of the windows that hold rows, are still open after `closed_at`, and
    /// close by `until` (any, when `None`), in order.
    pub fn open_starts(
        &self,
        windowing: Windowing,
        closed_at: Option<i64>,
        until: Option<i64>,
    ) -> BTreeSet<i64> {
        let slide = windowing.slide();
        // Window starts are multiples of the slide: those whose end is after
        // `closed_at` and at or before `until`.
        let first = first_open(windowing, closed_at);
        let last = until.map(|u| windowing.start(u.saturating_sub(windowing.size())));
        let mut starts = BTreeSet::new();
        let panes = match until {
            // A window closing by `until` holds only panes before it.
            Some(u) => self.0.range(..u),
            None => self.0.range(..),
        };
        for (&pane, held) in panes {
            let lowest = lowest_window_over(windowing, pane);
            let mut start = first.map_or(lowest, |f| f.max(lowest));
            let highest = last.map_or(pane, |l| l.min(pane));
            while start <= highest {
                let end = windowing.end(start);
                if held.iter().any(|h| h.in_window_ending(end)) {
                    starts.insert(start);
                }
                match start.checked_add(slide) {
                    Some(next) => start = next,
                    None => break,
                }
            }
        }
        starts
    }

    /// How many windows after `closed_at` hold these panes: [`Panes::open_starts`]
    /// counted in one pass over the panes, as an upper bound (a window over only rows
    /// that came after it closed is counted).
    pub fn open_count(&self, windowing: Windowing, closed_at: Option<i64>) -> usize {
        let slide = windowing.slide();
        let first = first_open(windowing, closed_at);
        let mut counted_to: Option<i64> = None;
        let mut count = 0usize;
        for &pane in self.0.keys() {
            let lowest = lowest_window_over(windowing, pane);
            let from = [
                Some(lowest),
                first,
                counted_to.map(|c| c.saturating_add(slide)),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(lowest);
            if from <= pane {
                count += (pane.saturating_sub(from) / slide) as usize + 1;
                counted_to = Some(pane);
            }
        }
        count
    }

    /// The rows of the window starting at `start`, with its window columns, in
    /// `windowed_schema` (the kept columns and the two window columns).
    pub fn window_rows(
        &self,
        windowing: Windowing,
        time_column: usize,
        windowed_schema: &SchemaRef,
        start: i64,
    ) -> Result<Vec<RecordBatch>> {
        let end = windowing.end(start);
        let taken: Vec<(i64, &RecordBatch)> = self
            .0
            .range(start..end)
            .flat_map(|(&pane, held)| {
                held.iter()
                    .filter(|h| h.in_window_ending(end))
                    .map(move |h| (pane, &h.rows))
            })
            .filter(|(_, rows)| rows.num_rows() > 0)
            .collect();
        let longest = taken.iter().map(|(_, r)| r.num_rows()).max().unwrap_or(0);
        // One array of each bound, sliced for every batch.
        let starts: ArrayRef = Arc::new(TimestampMillisecondArray::from_value(start, longest));
        let ends: ArrayRef = Arc::new(TimestampMillisecondArray::from_value(end, longest));
        let end_scalar = Scalar::new(TimestampMillisecondArray::from_value(end, 1));
        let mut rows = Vec::with_capacity(taken.len());
        for (pane, batch) in taken {
            // The last pane of a window whose size is not a multiple of its slide.
            let batch = if pane.saturating_add(windowing.slide()) > end {
                let mask = lt(event_times(batch.column(time_column))?, &end_scalar)?;
                filter_record_batch(batch, &mask)?
            } else {
                batch.clone()
            };
            let n = batch.num_rows();
            if n == 0 {
                continue;
            }
            let mut columns = batch.columns().to_vec();
            columns.push(starts.slice(0, n));
            columns.push(ends.slice(0, n));
            rows.push(RecordBatch::try_new(windowed_schema.clone(), columns)?);
        }
        Ok(rows)
    }

    /// Let go of the panes whose every window has closed at `closed_at`.
    pub fn drop_closed(&mut self, windowing: Windowing, closed_at: i64) {
        self.0
            .retain(|&pane, _| !windowing.is_closed(pane, Some(closed_at)));
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.0
            .values()
            .flatten()
            .map(|h| h.rows.get_array_memory_size())
            .sum()
    }
}

/// The start of the earliest window over the pane starting at `pane` (the windows over
/// it start at the multiples of the slide in `(pane - size, pane]`).
fn lowest_window_over(windowing: Windowing, pane: i64) -> i64 {
    windowing
        .start(pane.saturating_sub(windowing.size()))
        .saturating_add(windowing.slide())
}

/// The start of the earliest window still open after the watermark `closed_at` (whose
/// end is after it); `None`: every window is open.
fn first_open(windowing: Windowing, closed_at: Option<i64>) -> Option<i64> {
    closed_at.map(|c| lowest_window_over(windowing, c))
}

#[cfg(test)]
mod tests;
