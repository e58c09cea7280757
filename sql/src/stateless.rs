//! The operator of a view that only projects and filters: each batch in, its surviving
//! rows out, with no state. With no state to route, a view's parallel instances are
//! slices of the batch, run side by side on rayon's pool (the workers that decode) and
//! the pipeline thread ([`crate::parallel::run_owned`]), and the slices' rows go out
//! together, in the input's order, as one batch.
//! Outside calls the slices make (a plugin's function) settle once for the batch
//! ([`crate::settle`]).

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;

use std::sync::Arc;

use crate::Result;
use crate::operator::{Collector, Operator, Stage};
use crate::planner::steps::Steps;
use crate::settle::{self, Ledger};

/// Rows below which a slice is not worth a core: the handoff costs more than the work.
const MIN_SLICE_ROWS: usize = 1024;

/// A view of projections and filters: each batch in, its surviving rows out.
pub struct Stateless {
    steps: Arc<Steps>,
    /// Whether [`Operator::set_parallelism`] may cut batches into slices.
    sliceable: bool,
    /// Slices a batch is cut into and run side by side (1: the caller's thread alone).
    instances: usize,
}

impl Stateless {
    /// Steps within another operator (after a join's aggregate): always serial.
    pub fn new(steps: Steps) -> Self {
        Self {
            steps: Arc::new(steps),
            sliceable: false,
            instances: 1,
        }
    }

    /// A view's own steps: in slices when parallel, if the steps allow it
    /// ([`Steps::sliceable`]).
    pub fn view(steps: Steps) -> Self {
        Self {
            sliceable: steps.sliceable(),
            ..Self::new(steps)
        }
    }
}

/// `rows` rows cut into at most `instances` slices of at least [`MIN_SLICE_ROWS`]
/// rows: (offset, length) of each, in order.
fn slices(rows: usize, instances: usize) -> Vec<(usize, usize)> {
    let n = instances.min(rows / MIN_SLICE_ROWS).max(1);
    let (size, extra) = (rows / n, rows % n);
    let mut offset = 0;
    (0..n)
        .map(|i| {
            let len = size + usize::from(i < extra);
            let slice = (offset, len);
            offset += len;
            slice
        })
        .collect()
}

impl Operator for Stateless {
    fn process(
        &mut self,
        batch: &RecordBatch,
        _watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        let parts = slices(batch.num_rows(), self.instances);
        if parts.len() == 1 {
            out.emit(self.steps.apply(batch.clone())?);
            return Ok(());
        }
        // Work that owns what it uses: the pipeline thread then never waits for a
        // worker, busy decoding, to pick up a slice it has already run.
        let (steps, whole) = (Arc::clone(&self.steps), batch.clone());
        let slice = move |(offset, len): (usize, usize)| {
            // A panic stays in its slice, so every slice's ledger comes back.
            settle::in_slice(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    steps.apply_slice(whole.slice(offset, len), offset == 0)
                }))
                .unwrap_or_else(|_| {
                    Err(crate::Error::Execution(
                        "a slice of the batch panicked".into(),
                    ))
                })
            })
        };
        let (done, ledgers): (Vec<Result<RecordBatch>>, Vec<Ledger>) =
            crate::parallel::run_owned(parts, Arc::new(slice))
                .into_iter()
                .unzip();
        Ledger::settle_all(ledgers);
        // All or nothing: a failing slice fails the batch, as it would serially, with the
        // first failure in row order.
        let done = done.into_iter().collect::<Result<Vec<RecordBatch>>>()?;
        // One change per input batch, as serially: subscribers and sinks see no more.
        out.emit(concat_batches(&done[0].schema(), &done)?);
        Ok(())
    }

    fn set_parallelism(&mut self, n: usize) -> Result<usize> {
        self.instances = if self.sliceable { n.max(1) } else { 1 };
        Ok(self.instances)
    }

    fn stages(&self) -> Vec<Stage> {
        self.steps
            .clocks()
            .map(|(l, c)| Stage::Step(l, c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_into_ordered_slices_that_cover_it_once() {
        for (rows, instances) in [
            (0, 4),
            (100, 4),
            (2047, 2),
            (2048, 2),
            (3680, 3),
            (1 << 20, 7),
        ] {
            let parts = slices(rows, instances);
            assert!(parts.len() <= instances.max(1));
            let mut next = 0;
            for &(offset, len) in &parts {
                assert_eq!(offset, next, "{rows} rows in {instances}: {parts:?}");
                assert!(parts.len() == 1 || len >= MIN_SLICE_ROWS, "{parts:?}");
                next += len;
            }
            assert_eq!(next, rows, "{rows} rows in {instances}: {parts:?}");
        }
        assert_eq!(slices(2047, 2).len(), 1);
        assert_eq!(slices(2048, 2).len(), 2);
        assert_eq!(slices(3680, 3).len(), 3);
        assert_eq!(slices(1 << 20, 7).len(), 7);
    }
}
