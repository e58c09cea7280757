//! Event-time watermarks: the point in event time before which a source promises no
//! more rows. Declared per source as `WATERMARK FOR col AS col - INTERVAL 'n' SECOND`.

/// A monotonically advancing watermark: the largest event time seen minus a delay.
/// Values are in the unit of the source's time column (milliseconds for `TIMESTAMP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    delay: i64,
    current: Option<i64>,
}

impl Watermark {
    /// A watermark that trails the largest event time by `delay` time units.
    pub fn new(delay: i64) -> Self {
        Self {
            delay,
            current: None,
        }
    }

    /// The current watermark; `None` before the first row.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Observe the largest event time of a batch. Returns the new watermark if it advanced.
    pub fn observe(&mut self, max_event_time: i64) -> Option<i64> {
        self.advance_to(max_event_time.saturating_sub(self.delay))
    }

    /// Move the watermark to `value` if that is later. Returns the new watermark if it advanced.
    pub fn advance_to(&mut self, value: i64) -> Option<i64> {
        match self.current {
            Some(c) if c >= value => None,
            _ => {
                self.current = Some(value);
                self.current
            }
        }
    }

    /// The final watermark of a finite source: every window closes.
    pub fn finish(&mut self) -> Option<i64> {
        self.advance_to(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_max_event_time_and_never_goes_back() {
        let mut w = Watermark::new(4_000);
        assert_eq!(w.current(), None);
        assert_eq!(w.observe(10_000), Some(6_000));
        assert_eq!(
            w.observe(9_000),
            None,
            "an older batch must not move it back"
        );
        assert_eq!(w.current(), Some(6_000));
        assert_eq!(w.observe(12_500), Some(8_500));
        assert_eq!(w.finish(), Some(i64::MAX));
    }
}
