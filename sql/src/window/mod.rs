//! Window assignment. A window of size `s` holds the event times `[start, start + s)`.
//! Tumbling windows start at multiples of `s`; hopping windows at multiples of their
//! slide, so they overlap (all aligned to the Unix epoch). [`split_by_window`] groups a
//! batch's rows by window and sets aside late rows: those whose windows the watermark
//! has all closed already.
//!
//! The operators that hold a window's rows live beside it: [`per_window`] runs a query
//! whole per closed TUMBLE or HOP window ([`local`] checks that it stays inside one),
//! [`session`] per ended SESSION. Windowed aggregates that are a chain run
//! incrementally in [`crate::aggregate::windowed`].

pub mod bounds;
pub mod local;
pub mod panes;
pub mod per_window;
pub mod session;

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, ArrayRef, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use crate::{Error, Result};

/// Windows of a fixed `size` starting every `slide` time units (aligned to the Unix
/// epoch): a tumbling window has `slide == size`, a hopping window a smaller slide, so
/// each event time falls in `ceil(size / slide)` windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    size: i64,
    slide: i64,
    /// How long after its end a window still accepts late rows (allowed lateness).
    lateness: i64,
}

impl Windowing {
    /// `TUMBLE`: back-to-back windows of `size` time units.
    pub fn tumble(size: i64) -> Result<Self> {
        Self::hop(size, size)
    }

    /// `HOP`: windows of `size` starting every `slide`; `0 < slide <= size`.
    pub fn hop(slide: i64, size: i64) -> Result<Self> {
        if size <= 0 || slide <= 0 {
            return Err(Error::InvalidSql(
                "window sizes and slides must be positive".into(),
            ));
        }
        if slide > size {
            return Err(Error::InvalidSql(format!(
                "a HOP slide ({slide} ms) larger than its size ({size} ms) would skip events; use a slide of at most the size"
            )));
        }
        let per_row = (size - 1) / slide + 1; // ceil(size / slide), both positive
        if per_row > 1000 {
            return Err(Error::InvalidSql(format!(
                "a HOP window of {size} ms sliding by {slide} ms puts every event in {per_row} windows; keep it at most 1000"
            )));
        }
        Ok(Self {
            size,
            slide,
            lateness: 0,
        })
    }

    /// Keep accepting rows for `lateness` time units after a window closes: the window is
    /// emitted when the watermark reaches its end and re-emitted when late rows change it.
    pub fn with_lateness(self, lateness: i64) -> Self {
        Self {
            lateness: lateness.max(0),
            ..self
        }
    }

    /// The allowed lateness in time units.
    pub fn lateness(&self) -> i64 {
        self.lateness
    }

    /// Whether the window starting at `start` still takes rows: until the watermark
    /// passes its end plus the allowed lateness.
    pub fn accepts(&self, start: i64, watermark: Option<i64>) -> bool {
        watermark.is_none_or(|w| self.end(start).saturating_add(self.lateness) > w)
    }

    /// The window size in time units.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// The slide in time units (equal to the size for tumbling windows).
    pub fn slide(&self) -> i64 {
        self.slide
    }

    fn is_tumbling(&self) -> bool {
        self.slide == self.size
    }

    /// Start of the latest window holding event time `t`.
    pub fn start(&self, t: i64) -> i64 {
        // Saturating: an absurd event time near i64::MIN must not panic the pipeline.
        t.saturating_sub(t.rem_euclid(self.slide))
    }

    /// Starts of every window holding `t`, latest first.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> + use<> {
        let (slide, earliest) = (self.slide, t.saturating_sub(self.size));
        std::iter::successors(Some(self.start(t)), move |s| s.checked_sub(slide))
            .take_while(move |&s| s > earliest)
    }

    /// End (exclusive) of the window starting at `start`.
    pub fn end(&self, start: i64) -> i64 {
        start.saturating_add(self.size)
    }

    /// A window is closed once the watermark has reached its end.
    pub fn is_closed(&self, start: i64, watermark: Option<i64>) -> bool {
        watermark.is_some_and(|w| self.end(start) <= w)
    }
}

/// Rows of one window with its `window_start` and `window_end` columns appended.
pub fn with_window_columns(
    windowed_schema: &datafusion::arrow::datatypes::SchemaRef,
    windowing: Windowing,
    start: i64,
    slice: &datafusion::arrow::record_batch::RecordBatch,
) -> Result<datafusion::arrow::record_batch::RecordBatch> {
    let rows = slice.num_rows();
    let mut columns = slice.columns().to_vec();
    columns
        .push(std::sync::Arc::new(TimestampMillisecondArray::from_value(start, rows)) as ArrayRef);
    columns.push(std::sync::Arc::new(TimestampMillisecondArray::from_value(
        windowing.end(start),
        rows,
    )) as ArrayRef);
    Ok(datafusion::arrow::record_batch::RecordBatch::try_new(
        windowed_schema.clone(),
        columns,
    )?)
}

/// The rows of one batch grouped by window.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// (window start, row indices); `None` means every row of the batch.
    pub windows: Vec<(i64, Option<UInt32Array>)>,
    /// Rows whose windows are all closed already, or that have no event time.
    pub late: Option<UInt32Array>,
}

/// The millisecond timestamps of a time column.
pub fn event_times(column: &ArrayRef) -> Result<&TimestampMillisecondArray> {
    column
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| {
            Error::InvalidSql(format!(
                "the window time column must be a TIMESTAMP ({:?}), not {}",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                column.data_type()
            ))
        })
}

/// Group rows by window; rows whose windows no longer accept rows (closed by `watermark`,
/// plus any allowed lateness) are late. With hopping windows a row appears in each of its
/// windows that still accept it.
pub fn split_by_window(
    times: &TimestampMillisecondArray,
    windowing: Windowing,
    watermark: Option<i64>,
) -> Split {
    let values = times.values();
    if values.is_empty() {
        return Split::default();
    }
    // Fast path: a tumbling window holds the whole batch and is open (the common case).
    let first = windowing.start(values[0]);
    if windowing.is_tumbling()
        && times.null_count() == 0
        && windowing.accepts(first, watermark)
        && values
            .iter()
            .all(|&t| t >= first && t < windowing.end(first))
    {
        return Split {
            windows: vec![(first, None)],
            late: None,
        };
    }
    let mut windows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    let mut late = Vec::new();
    for (i, &t) in values.iter().enumerate() {
        let row = i as u32;
        let mut placed = false;
        if times.is_valid(i) {
            for start in windowing
                .starts(t)
                .filter(|&s| !windowing.is_closed(s, watermark))
            {
                windows.entry(start).or_default().push(row);
                placed = true;
            }
        }
        if !placed {
            late.push(row);
        }
    }
    Split {
        windows: windows
            .into_iter()
            .map(|(s, rows)| (s, Some(UInt32Array::from(rows))))
            .collect(),
        late: (!late.is_empty()).then(|| UInt32Array::from(late)),
    }
}

/// Group rows by pane, the multiple of the slide their event times round down to (the
/// start of their latest window, see [`panes`]); rows whose latest window the watermark
/// has closed, and rows with no event time, are late. That is [`split_by_window`] over
/// tumbling windows of the slide, each closed when its latest window is: `size - slide`
/// later.
pub fn split_by_pane(
    times: &TimestampMillisecondArray,
    windowing: Windowing,
    watermark: Option<i64>,
) -> Split {
    let panes = Windowing {
        size: windowing.slide,
        slide: windowing.slide,
        lateness: 0,
    };
    let behind = windowing.size - windowing.slide;
    split_by_window(times, panes, watermark.map(|w| w.saturating_sub(behind)))
}

#[cfg(test)]
mod tests;
