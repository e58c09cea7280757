//! A view over a derived stream: the stream's plugin transform runs on each batch of
//! the source, then the view's own operator on the result.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use weir_sql::{Collector, Operator};

use super::PluginEntry;

pub struct TransformThen {
    pub plugin: Arc<PluginEntry>,
    pub transform: String,
    pub then: Box<dyn Operator>,
}

impl Operator for TransformThen {
    fn process(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        out: &mut Collector,
    ) -> weir_sql::Result<()> {
        let transformed = self
            .plugin
            .call_transform(&self.transform, batch)
            .map_err(|e| weir_sql::Error::Execution(e.to_string()))?;
        self.then.process(&transformed, watermark, out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> weir_sql::Result<()> {
        self.then.on_watermark(watermark, out)
    }

    fn snapshot(&mut self) -> weir_sql::Result<Vec<RecordBatch>> {
        self.then.snapshot()
    }

    fn restore(&mut self, state: &[RecordBatch]) -> weir_sql::Result<()> {
        self.then.restore(state)
    }

    fn state_size(&self) -> usize {
        self.then.state_size()
    }

    fn open_windows(&self) -> usize {
        self.then.open_windows()
    }
}
