//! Window assignment. A tumbling window of size `s` holds the event times
//! `[start, start + s)` with `start = t - t mod s` (aligned to the Unix epoch).
//! [`split_by_window`] groups a batch's rows by window and sets aside late rows: those
//! whose window the watermark has already closed.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, ArrayRef, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use crate::{Error, Result};

/// Tumbling windows of a fixed size, in the unit of the time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tumble {
    size: i64,
}

impl Tumble {
    /// Windows of `size` time units; `size` must be positive.
    pub fn new(size: i64) -> Result<Self> {
        if size <= 0 {
            return Err(Error::InvalidSql(
                "a TUMBLE window size must be positive".into(),
            ));
        }
        Ok(Self { size })
    }

    /// The window size in time units.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// Start of the window holding event time `t`.
    pub fn start(&self, t: i64) -> i64 {
        // Saturating: an absurd event time near i64::MIN must not panic the pipeline.
        t.saturating_sub(t.rem_euclid(self.size))
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

/// The rows of one batch grouped by window.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// (window start, row indices); `None` means every row of the batch.
    pub windows: Vec<(i64, Option<UInt32Array>)>,
    /// Rows whose window is already closed, or that have no event time.
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

/// Group rows by tumbling window; rows of windows closed by `watermark` are late.
pub fn split_by_window(
    times: &TimestampMillisecondArray,
    tumble: Tumble,
    watermark: Option<i64>,
) -> Split {
    let values = times.values();
    if values.is_empty() {
        return Split::default();
    }
    // Fast path: the whole batch falls in one open window (the common case).
    let first = tumble.start(values[0]);
    if times.null_count() == 0
        && !tumble.is_closed(first, watermark)
        && values
            .iter()
            .all(|&t| t >= first && t < first.saturating_add(tumble.size()))
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
        let start = tumble.start(t);
        if times.is_null(i) || tumble.is_closed(start, watermark) {
            late.push(row);
        } else {
            windows.entry(start).or_default().push(row);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch_including_negative_times() {
        let t = Tumble::new(10_000).expect("size");
        assert_eq!(t.start(0), 0);
        assert_eq!(t.start(9_999), 0);
        assert_eq!(t.start(10_000), 10_000);
        assert_eq!(t.start(-1), -10_000);
        assert_eq!(t.end(10_000), 20_000);
        assert!(Tumble::new(0).is_err());
    }

    #[test]
    fn one_open_window_takes_the_fast_path() {
        let times = TimestampMillisecondArray::from(vec![10_000, 15_000, 19_999]);
        let s = split_by_window(&times, Tumble::new(10_000).expect("size"), Some(5_000));
        assert_eq!(
            s,
            Split {
                windows: vec![(10_000, None)],
                late: None
            }
        );
    }

    #[test]
    fn rows_are_grouped_by_window_and_late_rows_set_aside() {
        let times = TimestampMillisecondArray::from(vec![
            Some(25_000),
            Some(3_000),
            Some(12_000),
            None,
            Some(21_000),
            Some(9_999),
        ]);
        // Watermark 10_000 closes [0, 10000): rows 1 and 5 are late, row 3 has no time.
        let s = split_by_window(&times, Tumble::new(10_000).expect("size"), Some(10_000));
        assert_eq!(
            s.windows,
            vec![
                (10_000, Some(UInt32Array::from(vec![2]))),
                (20_000, Some(UInt32Array::from(vec![0, 4])))
            ]
        );
        assert_eq!(s.late, Some(UInt32Array::from(vec![1, 3, 5])));
    }

    #[test]
    fn window_ending_exactly_at_the_watermark_is_closed() {
        let t = Tumble::new(10).expect("size");
        assert!(t.is_closed(0, Some(10)));
        assert!(!t.is_closed(0, Some(9)));
        assert!(!t.is_closed(0, None));
    }
}
