//! The one place that decides when a micro-batch closes.

use std::time::Duration;

use crate::config::BatchConfig;

/// Close a batch at `max_rows` rows or `max_delay` after its first row, whichever first.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    config: BatchConfig,
}

impl BatchPolicy {
    pub fn new(config: BatchConfig) -> Self {
        Self {
            config: BatchConfig {
                max_rows: config.max_rows.max(1),
                ..config
            },
        }
    }

    /// Whether a batch holding `rows` rows, opened `elapsed` ago, should close now.
    pub fn should_flush(&self, rows: usize, elapsed: Duration) -> bool {
        rows >= self.config.max_rows || (rows > 0 && elapsed >= self.config.max_delay)
    }

    /// How long an open batch may still wait for rows.
    pub fn remaining(&self, elapsed: Duration) -> Duration {
        self.config.max_delay.saturating_sub(elapsed)
    }

    pub fn max_rows(&self) -> usize {
        self.config.max_rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_rows_or_delay_whichever_first() {
        let p = BatchPolicy::new(BatchConfig {
            max_rows: 100,
            max_delay: Duration::from_millis(50),
        });
        assert!(
            !p.should_flush(0, Duration::from_secs(10)),
            "an empty batch never closes"
        );
        assert!(!p.should_flush(99, Duration::from_millis(49)));
        assert!(p.should_flush(100, Duration::ZERO));
        assert!(p.should_flush(1, Duration::from_millis(50)));
        assert_eq!(
            p.remaining(Duration::from_millis(20)),
            Duration::from_millis(30)
        );
        assert_eq!(p.remaining(Duration::from_millis(70)), Duration::ZERO);
    }

    #[test]
    fn without_a_delay_a_batch_closes_once_nothing_more_is_queued() {
        // The pipeline takes every chunk already queued, then asks: with max_delay 0 a
        // batch with rows closes at once rather than waiting for more.
        let p = BatchPolicy::new(BatchConfig {
            max_delay: Duration::ZERO,
            ..BatchConfig::default()
        });
        assert!(p.should_flush(1, Duration::ZERO));
        assert!(!p.should_flush(0, Duration::ZERO));
        assert_eq!(p.remaining(Duration::ZERO), Duration::ZERO);
    }
}
