//! The operator of a view that only projects and filters: each batch in, its surviving
//! rows out, with no state.

use datafusion::arrow::record_batch::RecordBatch;

use crate::Result;
use crate::operator::{Collector, Operator, Stage};
use crate::planner::steps::Steps;

/// A view of projections and filters: each batch in, its surviving rows out.
pub struct Stateless {
    steps: Steps,
}

impl Stateless {
    pub fn new(steps: Steps) -> Self {
        Self { steps }
    }
}

impl Operator for Stateless {
    fn process(
        &mut self,
        batch: &RecordBatch,
        _watermark: Option<i64>,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(self.steps.apply(batch.clone())?);
        Ok(())
    }

    fn stages(&self) -> Vec<Stage> {
        self.steps
            .clocks()
            .map(|(l, c)| Stage::Step(l, c))
            .collect()
    }
}
